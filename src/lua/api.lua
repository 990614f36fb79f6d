-- The public functions of kong_rds_iam. The Rust core does the work; this
-- file checks argument types, raising Lua errors for programmer mistakes
-- (as Lua libraries do), and leaves runtime failures as `nil, err` returns.
local core = ...

local type, error, format, setmetatable, getmetatable, pcall, tostring =
  type, error, string.format, setmetatable, getmetatable, pcall, tostring
-- Whole seconds: ngx.time() is nginx's cached clock; os.time() elsewhere.
local now = (ngx and ngx.time) or os.time

local function check(fname, n, value, wanted, optional)
  local t = type(value)
  if t ~= wanted and not (optional and value == nil) then
    error(format("bad argument #%d to '%s' (%s expected, got %s)", n, fname, wanted, t), 3)
  end
end

local M = {
  version = core.version,
  -- SQL NULL and JSON null: the NULL light userdata, equal to ngx.null and cjson.null.
  null = core.null,
}

-- The token cache lives in Rust. In front of it, a memo per conf table lets
-- a repeated token(conf) skip the call into Rust: it serves the token last
-- issued for this table while every key the token depends on (core.token_keys,
-- the names the Rust parser reads) still holds the same value, and until the
-- token's valid_until (min(900 s, credentials expiry) - 15 s), as Rust would.
-- On a miss the same values go to Rust as an array, read once, here: Lua
-- reads a table (or a proxy such as kong.configuration) far faster than Rust
-- can through the C API.
local token_keys = core.token_keys
local no_keys = {}
-- LuaJIT: the same call through the FFI, several times cheaper (nil on PUC Lua).
local ffi_token = core.ffi_token
local SIDE = { rw = 0, ro = 1 }
local memo = setmetatable({}, { __mode = "k" })

local function unchanged(conf, keys, values)
  for i = 1, #keys do
    if conf[keys[i]] ~= values[i] then return false end
  end
  return true
end

local function read(conf, keys, values)
  for i = 1, #keys do values[i] = conf[keys[i]] end
end

--- token, err, expires_at = rds.token(conf, mode)
function M.token(conf, mode)
  check("token", 1, conf, "table")
  check("token", 2, mode, "string", true)
  -- A proxy's __index may raise: that fails this call (nil, err), it does
  -- not raise from it.
  local proxy = getmetatable(conf) ~= nil
  local entry = memo[conf]
  if entry and entry.mode == mode and now() < entry.valid_until then
    local ok, same
    if proxy then ok, same = pcall(unchanged, conf, entry.keys, entry.values)
    else ok, same = true, unchanged(conf, entry.keys, entry.values) end
    if ok and same then return entry.token, nil, entry.expires_at end
  end
  -- An unknown mode reads nothing; Rust names the mistake.
  local keys = token_keys[mode or "rw"] or no_keys
  if not entry or entry.mode ~= mode then
    entry = { mode = mode, keys = keys, values = {} }
  end
  local values = entry.values
  if proxy then
    local ok, err = pcall(read, conf, keys, values)
    if not ok then
      memo[conf] = nil
      return nil, "cannot read conf: its __index raised: " .. tostring(err):sub(1, 200)
    end
  else
    read(conf, keys, values)
  end
  local token, err, expires_at, valid_until
  local side = SIDE[mode or "rw"]
  if ffi_token and side then
    token, err, expires_at, valid_until = ffi_token(values, #keys, side)
  else
    token, err, expires_at, valid_until = core.token(values, mode)
  end
  if not token then
    memo[conf] = nil
    return nil, err
  end
  entry.token, entry.expires_at, entry.valid_until = token, expires_at, valid_until
  memo[conf] = entry
  return token, nil, expires_at
end

--- conn, err, sqlstate = rds.connect(conf, mode)
function M.connect(conf, mode)
  check("connect", 1, conf, "table")
  check("connect", 2, mode, "string", true)
  return core.connect(conf, mode)
end

--- settings, err = rds.settings(conf, mode)
function M.settings(conf, mode)
  check("settings", 1, conf, "table")
  check("settings", 2, mode, "string", true)
  return core.settings(conf, mode)
end

--- source, err = rds.credentials_source([conf[, mode]])
function M.credentials_source(conf, mode)
  check("credentials_source", 1, conf, "table", true)
  check("credentials_source", 2, mode, "string", true)
  return core.credentials_source(conf, mode)
end

local sign_fields = {
  host = "string", port = "number", user = "string", region = "string",
  access_key_id = "string", secret_access_key = "string",
}

--- token, err = rds.sign_token{host=, port=, user=, region=, access_key_id=,
---   secret_access_key=, session_token=, time=}
function M.sign_token(params)
  check("sign_token", 1, params, "table")
  for field, wanted in pairs(sign_fields) do
    if type(params[field]) ~= wanted then
      error(format("bad argument #1 to 'sign_token' (field '%s': %s expected, got %s)",
        field, wanted, type(params[field])), 2)
    end
  end
  if params.session_token ~= nil and type(params.session_token) ~= "string" then
    error(format("bad argument #1 to 'sign_token' (field 'session_token': string expected, got %s)",
      type(params.session_token)), 2)
  end
  if params.time ~= nil and type(params.time) ~= "number" then
    error(format("bad argument #1 to 'sign_token' (field 'time': number expected, got %s)",
      type(params.time)), 2)
  end
  return core.sign_token(params)
end

return M
