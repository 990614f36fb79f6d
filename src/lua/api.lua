-- The public functions of kong_rds_iam. The Rust core does the work; this
-- file checks argument types, raising Lua errors for programmer mistakes
-- (as Lua libraries do), and leaves runtime failures as `nil, err` returns.
local core = ...

local type, error, format = type, error, string.format

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

--- token, err, expires_at = rds.token(conf, mode)
function M.token(conf, mode)
  check("token", 1, conf, "table")
  check("token", 2, mode, "string", true)
  return core.token(conf, mode)
end

--- conn, err, sqlstate = rds.connect(conf, mode)
function M.connect(conf, mode)
  check("connect", 1, conf, "table")
  check("connect", 2, mode, "string", true)
  return core.connect(conf, mode)
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
