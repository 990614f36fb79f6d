--- kong_rds_iam.conf: reads a kong.conf the way Kong's conf loader does, for
-- scripts and the `kong-rds-iam` command line.
--
--   local kconf = require "kong_rds_iam.conf"
--   local conf, err, info = kconf.load("/etc/kong/kong.conf")  -- or load() for Kong's default paths
--   local token = require("kong_rds_iam").token(conf)
--
-- What it reads, as Kong does (kong/conf_loader, Penlight's pl.config):
--   * `key = value` lines; blank lines and lines whose first non-blank
--     character is `#` or `;` are skipped; a line ending with `\` continues
--     on the next line;
--   * a value ends at the first `#` not preceded by a backslash (with the
--     blanks before it); `\#` then stands for `#`; surrounding blanks are
--     trimmed; a key's characters other than letters and digits become `_`;
--   * without a path: the first of /etc/kong/kong.conf, /etc/kong.conf that
--     exists (none: defaults only);
--   * then KONG_<KEY> environment variables win over the file (their values
--     are taken as they are: no comment stripping), and keys set nowhere get
--     Kong's defaults (pg_host 127.0.0.1, pg_port 5432, ...);
--   * `NONE` and empty values mean unset (nil).
-- Values stay strings ("5432", "tlsv1_2"), which the module reads as
-- kong.conf has them; the boolean keys (pg_ssl, pg_iam_auth, ...) become Lua
-- booleans when they hold on/off, true/false or yes/no (any case), so that
-- `if conf.pg_iam_auth then` means what it says.
--
-- A value that is a Kong vault reference (`{vault://...}`) is kept as it is:
-- only Kong can resolve it. vault_keys(conf) lists the keys that hold one and
-- vault_message(key) says so in one sentence.
--
-- Not done (Kong's typed parsing beyond booleans): Penlight turns values that
-- look like numbers into numbers (`1e3` -> 1000) and Kong turns its boolean
-- keys' values other than on/true into false; this reader keeps the text.

local M = {}

local type, pairs, ipairs, tostring, format = type, pairs, ipairs, tostring, string.format
local open, getenv = io.open, os.getenv

--- Kong's default kong.conf locations, searched in order by load() without
--- a path (kong/conf_loader's DEFAULT_PATHS).
M.DEFAULT_PATHS = { "/etc/kong/kong.conf", "/etc/kong.conf" }

-- The pg_* keys this module reads, without the prefix; each comes as
-- pg_<name> and pg_ro_<name>.
local PG_KEYS = {
  "host", "port", "user", "password", "database", "schema", "timeout",
  "iam_auth", "iam_auth_region", "iam_auth_assume_role_arn", "iam_auth_role_session_name",
  "iam_auth_sts_endpoint_url", "iam_auth_host", "iam_auth_port", "iam_auth_ssl_verify",
  "iam_auth_max_rate", "ssl", "ssl_required", "ssl_verify", "ssl_version", "ssl_cert",
  "ssl_cert_key", "ssl_cafile", "keepalive_timeout", "pool_size", "backlog", "max_lifetime",
  "application_name", "max_concurrent_queries", "semaphore_timeout", "cosocket",
}

local BOOLEAN_KEYS = { "iam_auth", "iam_auth_ssl_verify", "ssl", "ssl_required", "ssl_verify", "cosocket" }

--- Kong's defaults for the keys this module reads (kong/templates/kong_defaults.lua),
--- as kong.conf text. The pg_ro_* keys default to unset (they fall back to pg_*).
M.DEFAULTS = {
  database = "postgres",
  pg_host = "127.0.0.1",
  pg_port = "5432",
  pg_timeout = "5000",
  pg_user = "kong",
  pg_database = "kong",
  pg_ssl = "off",
  pg_ssl_required = "off",
  pg_ssl_verify = "off",
  pg_ssl_version = "tlsv1_2",
  pg_max_concurrent_queries = "0",
  pg_semaphore_timeout = "60000",
  pg_iam_auth = "off",
  pg_ro_iam_auth = "off",
  pg_iam_auth_role_session_name = "KongPostgres",
  lua_ssl_trusted_certificate = "system",
  lua_ssl_verify_depth = "1",
}

-- Every key whose KONG_ variable is looked up even when the environment
-- cannot be listed (PUC Lua without the FFI, or a lookup function).
local KNOWN = {
  "database", "lua_ssl_trusted_certificate", "lua_ssl_verify_depth",
  "lua_package_path", "lua_package_cpath", "prefix",
}
local BOOLEAN = {}
for _, name in ipairs(PG_KEYS) do
  KNOWN[#KNOWN + 1] = "pg_" .. name
  KNOWN[#KNOWN + 1] = "pg_ro_" .. name
end
for _, name in ipairs(BOOLEAN_KEYS) do
  BOOLEAN["pg_" .. name] = true
  BOOLEAN["pg_ro_" .. name] = true
end
M.BOOLEAN_KEYS = BOOLEAN

local TRUTH = { on = true, ["true"] = true, yes = true, off = false, ["false"] = false, no = false }

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- The value of a `key = value` line as Kong keeps it: cut at the first `#`
-- not preceded by a backslash (with the blanks before it), `\#` -> `#`.
local function strip_comment(value)
  local i = 1
  while true do
    local at = value:find("#", i, true)
    if not at then break end
    if at == 1 or value:sub(at - 1, at - 1) ~= "\\" then
      value = value:sub(1, at - 1):gsub("%s+$", "")
      break
    end
    i = at + 1
  end
  return (value:gsub("\\#", "#"))
end

--- Whether `value` is a Kong vault reference (`{vault://...}`).
function M.is_vault_reference(value)
  return type(value) == "string" and value:sub(1, 9) == "{vault://" and value:sub(-1) == "}"
end

--- keys = vault_keys(conf): the keys of `conf` whose value is a vault
--- reference, sorted.
function M.vault_keys(conf)
  local keys = {}
  for k, v in pairs(conf) do
    if type(k) == "string" and M.is_vault_reference(v) then keys[#keys + 1] = k end
  end
  table.sort(keys)
  return keys
end

--- The sentence for a key that holds a vault reference.
function M.vault_message(key)
  return format("%s holds a vault reference ({vault://...}), which only Kong can resolve", key)
end

--- file_conf, err = parse(text, name): the `key = value` pairs of kong.conf
--- text (no defaults, no environment), values as Kong keeps them (strings,
--- comments stripped). `name` is for error messages ("kong.conf" when nil).
--- An error names the file and line and does not show the line (it may hold
--- a secret).
function M.parse(text, name)
  name = name or "kong.conf"
  local conf = {}
  local pending, pending_line = nil, nil
  local n = 0
  -- every line, the last one with or without its newline
  for line in (text:gsub("\r\n", "\n") .. (text:sub(-1) == "\n" and "" or "\n")):gmatch("([^\n]*)\n") do
    n = n + 1
    if line:match("%S") and not line:match("^%s*[;#]") then
      local cut = line:find("\\%s*$")
      if cut then
        -- continued on the next line (pl.config.lines)
        pending_line = pending_line or n
        pending = (pending or "") .. line:sub(1, cut - 1)
      else
        local at = pending_line or n
        if pending then line, pending, pending_line = pending .. line, nil, nil end
        line = line:gsub("^%s+", "")
        if line:sub(1, 1) == "[" then
          return nil, format("%s:%d: a [section] line is not kong.conf syntax (Kong would drop the keys after it)",
            name, at)
        end
        local s, e = line:find("%s*=%s*")
        if not s or s == 1 then
          return nil, format("%s:%d: expected `key = value`", name, at)
        end
        local key = line:sub(1, s - 1):gsub("[^%w]", "_")
        conf[key] = strip_comment(trim(line:sub(e + 1)))
      end
    end
  end
  if pending then
    -- a `\` on the last line: Penlight drops the unfinished line
    return nil, format("%s:%d: the line continues (ends with `\\`) past the end of the file", name, pending_line)
  end
  return conf
end

-- The value as this reader returns it: nil for NONE and empty, booleans for
-- the boolean keys, else the trimmed string.
local function value_of(key, v)
  if type(v) ~= "string" then return v end
  v = trim(v)
  if v == "" or v == "NONE" then return nil end
  if BOOLEAN[key] then
    local b = TRUTH[v:lower()]
    if b ~= nil then return b end
  end
  return v
end

-- The KONG_* variables of this process, as { name = value }, when the
-- environment can be listed (LuaJIT's FFI); nil otherwise.
local function kong_environment()
  local ok, ffi = pcall(require, "ffi")
  if not ok then return nil end
  pcall(ffi.cdef, "extern char **environ;") -- raises when declared already
  local found, environ = pcall(function() return ffi.C.environ end)
  if not found or environ == nil then return nil end
  local out, i = {}, 0
  while environ[i] ~= nil do
    local entry = ffi.string(environ[i])
    local name, value = entry:match("^(KONG_[^=]*)=(.*)$")
    if name then out[name] = value end
    i = i + 1
  end
  return out
end

local function read_file(path)
  local f, err = open(path, "rb")
  if not f then return nil, err end
  local text = f:read("*a")
  f:close()
  if not text then return nil, path .. ": cannot be read" end
  return text
end

local function missing(err)
  return tostring(err):find("No such file", 1, true) ~= nil
end

--- conf, err, info = load(path?, env?, opts?)
---
--- `path`: a kong.conf file; nil searches opts.search (default
--- M.DEFAULT_PATHS) and takes the first that exists (none: defaults only).
--- `env`: nil for this process's environment (os.getenv; the KONG_*
--- variables are listed through the FFI where there is one), a table
--- { KONG_PG_HOST = "..." } standing for the whole environment, or a
--- function(name) -> value.
--- `info`: { path = the file read or nil, from_env = { keys set by KONG_*
--- variables, sorted } }.
function M.load(path, env, opts)
  if path ~= nil and type(path) ~= "string" then
    error(format("bad argument #1 to 'load' (string expected, got %s)", type(path)), 2)
  end
  opts = opts or {}
  local text, err
  if path then
    text, err = read_file(path)
    if not text then
      if missing(err) then return nil, "no file at: " .. path end
      return nil, "cannot read " .. tostring(err)
    end
  else
    for _, candidate in ipairs(opts.search or M.DEFAULT_PATHS) do
      text, err = read_file(candidate)
      if text then
        path = candidate
        break
      elseif not missing(err) then
        return nil, "cannot read " .. tostring(err)
      end
    end
  end

  local file_conf = {}
  if text then
    file_conf, err = M.parse(text, path)
    if not file_conf then return nil, err end
  end

  local lookup, listed
  if env == nil then
    lookup, listed = getenv, kong_environment()
  elseif type(env) == "table" then
    lookup = function(name) return env[name] end
    listed = env
  elseif type(env) == "function" then
    lookup = env
  else
    error(format("bad argument #2 to 'load' (table, function or nil expected, got %s)", type(env)), 2)
  end

  -- the keys whose KONG_ variable counts: the known ones, the file's, and
  -- every KONG_* variable there is
  local keys = {}
  for _, k in ipairs(KNOWN) do keys[k] = true end
  for k in pairs(M.DEFAULTS) do keys[k] = true end
  for k in pairs(file_conf) do keys[k] = true end
  for name in pairs(listed or {}) do
    local k = type(name) == "string" and name:match("^KONG_(.+)$")
    if k then keys[k:lower()] = true end
  end

  local conf, from_env = {}, {}
  for k in pairs(keys) do
    local v = file_conf[k]
    local from = lookup("KONG_" .. k:upper())
    if from ~= nil then
      v = from
      from_env[#from_env + 1] = k
    end
    if v == nil then v = M.DEFAULTS[k] end
    conf[k] = value_of(k, v)
  end
  table.sort(from_env)
  return conf, nil, { path = path, from_env = from_env }
end

return M
