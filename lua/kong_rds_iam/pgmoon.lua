--- kong_rds_iam.pgmoon: a pgmoon-compatible class over the native connection.
--
--   local pgmoon = require "kong_rds_iam.pgmoon"
--   local pg = pgmoon.new { host = "db.example", port = 5432, user = "kong",
--                           password = "...", database = "kong" }   -- no I/O
--   pg:settimeout(5000)
--   assert(pg:connect())                        -- true, or nil, err
--   local res, num_queries, notifications, notices = pg:query("select 1 as one")
--   pg:keepalive(60000)                         -- or pg:disconnect()
--
-- It answers what Kong's Postgres strategy (kong/db/strategies/postgres/
-- connector.lua and init.lua) asks of pgmoon, so that the strategy works with
-- its two requires changed to "kong_rds_iam.pgmoon" and
-- "kong_rds_iam.pgmoon.arrays". The work is done by rds.connect and the
-- connection it returns (TLS, password or IAM auth, simple query protocol,
-- value decoding); this file maps pgmoon's options and results onto it.
--
-- Options of new(opts), pgmoon's names, and the module conf keys they become:
--   host (default "127.0.0.1") -> pg_host      port (5432) -> pg_port
--   user ("postgres")          -> pg_user      password    -> pg_password
--   database (required)        -> pg_database  timeout     -> pg_timeout (ms)
--   ssl -> pg_ssl   ssl_verify -> pg_ssl_verify   ssl_required -> pg_ssl_required
--   ssl_version -> pg_ssl_version ("tlsv1_2", "tlsv1_3", "any")
--   cafile -> pg_ssl_cafile   cert -> pg_ssl_cert   key -> pg_ssl_cert_key
--   iam_auth, iam_auth_region, iam_auth_assume_role_arn,
--   iam_auth_role_session_name, iam_auth_sts_endpoint_url, iam_auth_host,
--   iam_auth_port, iam_auth_ssl_verify -> pg_iam_auth...
--   cafile is Kong's lua_ssl_trusted_certificate_combined (what Kong's
--   connector passes): it becomes lua_ssl_trusted_certificate, a trust list
--   to which IAM connections add the RDS CA bundle; any other file is
--   pg_ssl_cafile, trusted alone (pinning).
--   application_name (default "pgmoon") -> pg_application_name
--   pool_size -> pg_pool_size (also keepalive's default)   backlog -> pg_backlog
--   schema (not pgmoon's: Kong's connector config carries it) -> pg_schema:
--   the session's search_path, set at startup, and part of the pool key, so
--   sessions of two schemas never stand in for each other ("" is none).
--   pool (or pgmoon's pool_name): not used; the native pool is keyed by
--   the connection's settings (host, port, database, user, schema, TLS, IAM,
--   application name).
--   socket_type: only reported back as pg.sock_type (see below).
--   convert_null: the initial value of pg.convert_null.
-- settimeout(ms) before connect() sets pg_timeout for the connect too.
--
-- IAM without IAM options. Kong's connector hands pgmoon.new only pgmoon's
-- own options. When none of the iam_* options is given (an explicit option,
-- even iam_auth = false, always wins) and a global `kong.configuration`
-- exists, connect() takes IAM from it: the connection's host, port, user
-- and database are compared with the read-write side (pg_host, pg_port,
-- pg_user, pg_database; Kong's defaults 127.0.0.1, 5432, kong, kong), then
-- with the read-only side (pg_ro_* falling back to pg_*). The first side
-- that matches decides, with its own rule and keys:
--   rw: IAM if pg_iam_auth; pg_iam_auth_region, pg_iam_auth_assume_role_arn,
--       pg_iam_auth_role_session_name, pg_iam_auth_sts_endpoint_url,
--       pg_iam_auth_host, pg_iam_auth_port, pg_iam_auth_ssl_verify
--   ro: IAM if pg_ro_iam_auth or pg_iam_auth; each pg_ro_iam_auth_* key,
--       falling back to its pg_iam_auth_* key
-- Kong OSS drops kong.conf keys it does not know, so a key missing from
-- kong.configuration is read from KONG_PG_IAM_AUTH, KONG_PG_IAM_AUTH_REGION,
-- ..._ASSUME_ROLE_ARN, ..._ROLE_SESSION_NAME, ..._STS_ENDPOINT_URL, ..._HOST,
-- ..._PORT, ..._SSL_VERIFY and their
-- KONG_PG_RO_IAM_AUTH* twins, as read when this module was first required
-- (see read_env below). Booleans read as kong.conf reads them: on/off,
-- true/false, yes/no; "" and "NONE" mean unset. No side matching: no IAM.
--
-- Results, as pgmoon:
--   query(sql)   -> res, num_queries, notifications, notices
--   on failure   -> nil, err, partial, num_queries, nil, nil
--   res: rows (array of tables by column name; `affected_rows` too for
--   INSERT/UPDATE/DELETE ... RETURNING), { affected_rows = n }, true (DDL,
--   SET, ...), or for several statements an array of those.
--   notifications: nil or an array of { operation = "notification", pid?,
--   channel, payload }; notices: nil or an array of "NOTICE: text" strings
--   (both only when the native build reports them).
-- SQL NULL: when pg.convert_null is false (the default), a NULL column is
--   absent from its row (the key is removed); when true it is pg.NULL.
--   pg.NULL defaults to rds.null, the NULL light userdata, equal to ngx.null
--   and cjson.null (pgmoon's default is a private table; Kong sets
--   connection.NULL = ngx.null, the same value as ours). NULL inside arrays
--   and JSON null inside json/jsonb values are always rds.null, whatever
--   convert_null says: pgmoon gives pg.NULL for array elements and
--   cjson.null for JSON, which is the same value unless pg.NULL is changed.
--   Decoded arrays carry no PostgresArray metatable.
-- Errors: a server error reads as pgmoon writes it,
--     "<SEVERITY>: <message>[ (<position>)][\n<detail>]"
--   e.g. 'ERROR: duplicate key value violates unique constraint "t_pkey"\n
--   Key (id)=(1) already exists.', which is the text Kong's error parser
--   matches ("violates unique constraint", "is still referenced from table",
--   ...). It is built from the ErrorResponse fields the native query returns
--   (6th value on failure) when it does, else from its "message (detail)"
--   text. A timeout reads "<what happened>: timeout", ending in "timeout" as
--   Kong's is_timeout() wants (the statement was cancelled and the
--   connection closed); other I/O errors and "closed" pass through.
-- SQLSTATE: pgmoon's failure returns are taken (the 5th and 6th values are
--   notifications and notices), so the code lives on the object:
--   pg.last_sqlstate (e.g. "23505"; nil after a success or a non-server
--   error) and pg.last_error_fields (the ErrorResponse fields table, when
--   the native build provides it), set by every connect() and query().
--
-- Other methods: disconnect(), keepalive(max_idle_ms, pool_size) (alias
-- setkeepalive), settimeout(ms), escape_literal(v), escape_identifier(v),
-- encode_bytea(s), decode_bytea(s), extended_query(sql, ...) (query(sql, ...)
-- with parameters goes there too), wait_for_notification(). pg.sock has
-- getreusedtimes() (0 for a new physical connection), settimeout(),
-- setkeepalive() and close(); pg.sock_type is "nginx" inside nginx (except in
-- init_by_lua), else "luasocket", or the socket_type asked for.
--
-- Fallbacks while the native build lacks a method:
--   - keepalive without conn:keepalive closes the connection and returns true
--     (there is no pool to return it to); getreusedtimes() is then always 0.
--   - extended_query without conn:extended_query substitutes $1..$n on the
--     client with escape_literal (NULL for nil and pg.NULL; tables through
--     their pgmoon_serialize metamethod, cast to the type they name). Only $n
--     outside quotes, quoted identifiers, dollar-quoted strings and comments
--     are replaced, and not inside a name ("a$1"). Parameters are then
--     untyped literals, not pgmoon's text/numeric-typed binds.
-- Not provided: pgmoon's own type machinery (PG_TYPES, set_type_deserializer,
-- setup_hstore: the native side decodes values itself), unix sockets
-- (socket_path), cqueues. In nginx request phases calls yield; elsewhere
-- (init, init_worker, plain Lua) they block, as rds.connect does.

local rds = require "kong_rds_iam"

local type, tostring, tonumber, pairs, select, error = type, tostring, tonumber, pairs, select, error
local setmetatable, getmetatable, rawget, rawequal, pcall = setmetatable, getmetatable, rawget, rawequal, pcall
local byte, sub, find, gsub, format, lower, match = string.byte, string.sub, string.find, string.gsub,
  string.format, string.lower, string.match
local concat, ipairs = table.concat, ipairs

local null = rds.null

local M = {
  VERSION = rds.version,
}

---------------------------------------------------------------------------
-- IAM settings from kong.configuration and the KONG_* environment
---------------------------------------------------------------------------

-- The IAM keys of both sides (kong.conf names; the variable is KONG_<KEY>).
-- IAM suffixes: pg_iam_auth<suffix> and pg_ro_iam_auth<suffix>.
local IAM_SUFFIXES = {
  "", "_region", "_assume_role_arn", "_role_session_name", "_sts_endpoint_url",
  "_host", "_port", "_ssl_verify",
}
local IAM_KEYS = {}
for _, suffix in ipairs(IAM_SUFFIXES) do IAM_KEYS[#IAM_KEYS + 1] = "pg_iam_auth" .. suffix end
for _, suffix in ipairs(IAM_SUFFIXES) do IAM_KEYS[#IAM_KEYS + 1] = "pg_ro_iam_auth" .. suffix end
local BOOLEAN_KEY = {
  pg_iam_auth = true, pg_ro_iam_auth = true, pg_iam_auth_ssl_verify = true, pg_ro_iam_auth_ssl_verify = true,
}

-- IAM suffixes: option name (pgmoon side) <-> conf key suffix.
local IAM_OPTIONS = {
  iam_auth = "pg_iam_auth",
  iam_auth_region = "pg_iam_auth_region",
  iam_auth_assume_role_arn = "pg_iam_auth_assume_role_arn",
  iam_auth_role_session_name = "pg_iam_auth_role_session_name",
  iam_auth_sts_endpoint_url = "pg_iam_auth_sts_endpoint_url",
  iam_auth_host = "pg_iam_auth_host",
  iam_auth_port = "pg_iam_auth_port",
  iam_auth_ssl_verify = "pg_iam_auth_ssl_verify",
}

local BOOLEAN_WORDS = { on = true, ["true"] = true, yes = true, off = false, ["false"] = false, no = false }

-- A kong.conf value: booleans as kong.conf parses them, "" and "NONE" unset.
-- A string that is no boolean word is kept, so rds.connect names the key.
local function conf_value(key, v)
  if type(v) == "string" then
    local trimmed = match(v, "^%s*(.-)%s*$")
    if trimmed == "" or trimmed == "NONE" then return nil end
    if BOOLEAN_KEY[key] then
      local b = BOOLEAN_WORDS[lower(trimmed)]
      if b ~= nil then return b end
    end
    return trimmed
  end
  return v
end

--- env = pgmoon._iam_from_env(getenv): the KONG_PG_IAM_AUTH* and
--- KONG_PG_RO_IAM_AUTH* variables through `getenv` (os.getenv, or a test's
--- function), as a table of kong.conf keys to values (set ones only).
function M._iam_from_env(getenv)
  local out = {}
  for _, key in ipairs(IAM_KEYS) do
    local ok, raw = pcall(getenv, "KONG_" .. key:upper())
    if ok then out[key] = conf_value(key, raw) end
  end
  return out
end

-- Read once, now, at the first require. In Kong (and any nginx set-up that
-- loads this module from init_by_lua) that is the nginx master, whose
-- environment is intact; nginx workers start with an emptied environment
-- (only `env` directives survive), so os.getenv there would find nothing.
local ENV_IAM = M._iam_from_env(os.getenv)
M._env_iam = ENV_IAM

local function same_endpoint(a, b)
  return lower(tostring(a.host)) == lower(tostring(b.host))
    and tonumber(a.port) == tonumber(b.port)
    and tostring(a.user) == tostring(b.user)
    and tostring(a.database) == tostring(b.database)
end

--- iam, side = pgmoon._iam_for(kconf, endpoint, env): the IAM conf keys
--- (pg_iam_auth, pg_iam_auth_region, ...: the read-write names, whichever
--- side decided) for a connection to endpoint {host, port, user, database},
--- from kong.configuration `kconf`, with `env` (as _iam_from_env returns)
--- for keys kconf lacks; side is "rw", "ro" or nil (no side matches: nil).
function M._iam_for(kconf, endpoint, env)
  env = env or ENV_IAM
  local function get(key)
    local v = conf_value(key, kconf[key])
    if v == nil then v = env[key] end
    return v
  end
  local rw = {
    host = get("pg_host") or "127.0.0.1",
    port = get("pg_port") or 5432,
    user = get("pg_user") or "kong",
    database = get("pg_database") or "kong",
  }
  local side
  if same_endpoint(endpoint, rw) then
    side = "rw"
  else
    local ro = {
      host = get("pg_ro_host") or rw.host,
      port = get("pg_ro_port") or rw.port,
      user = get("pg_ro_user") or rw.user,
      database = get("pg_ro_database") or rw.database,
    }
    if same_endpoint(endpoint, ro) then side = "ro" end
  end
  if not side then return nil end
  local iam = {}
  for _, suffix in ipairs(IAM_SUFFIXES) do
    local key = "pg_iam_auth" .. suffix
    local v = get(key)
    if side == "ro" then
      local ro_v = get("pg_ro_iam_auth" .. suffix)
      if suffix == "" then
        -- pg_ro_iam_auth or pg_iam_auth. A word that is no boolean is passed
        -- on (it is a string), so that rds.connect names the mistake.
        if ro_v == true or v == true then
          v = true
        elseif type(ro_v) == "string" then
          v = ro_v
        elseif type(v) ~= "string" then
          v = ro_v or v
        end
      elseif ro_v ~= nil then
        v = ro_v
      end
    end
    iam[key] = v
  end
  return iam, side
end

---------------------------------------------------------------------------
-- error text
---------------------------------------------------------------------------

-- pgmoon's text for a server error: SEVERITY: message[ (position)][\ndetail]
local function pgmoon_text(fields)
  local msg = tostring(fields.severity or "ERROR") .. ": " .. tostring(fields.message)
  if fields.position then msg = msg .. " (" .. tostring(fields.position) .. ")" end
  if fields.detail then msg = msg .. "\n" .. tostring(fields.detail) end
  return msg
end

-- The native "message (detail)" text back into fields: the detail is the
-- last parenthesized part that starts with a capital letter (the server's
-- details do: "Key (id)=(1) ...", "Failing row contains ...").
local function fields_of_text(err, severity)
  local fields = { severity = severity, message = err }
  if sub(err, -1) == ")" then
    local start = 1
    while true do
      local s = find(err, " (", start, true)
      if not s then break end
      if find(err, "^%u", s + 2) then
        fields.message = sub(err, 1, s - 1)
        fields.detail = sub(err, s + 2, -2)
        break
      end
      start = s + 1
    end
  end
  return fields
end

-- The error text of a failed call: server errors in pgmoon's form, native
-- timeouts ("timeout: no result within 200 ms") as "...: timeout".
local function error_text(err, sqlstate, fields, severity)
  if type(fields) == "table" and fields.message then
    return pgmoon_text(fields)
  end
  if type(err) ~= "string" then return err end
  if sqlstate then
    return pgmoon_text(fields_of_text(err, severity))
  end
  local rest = match(err, "^timeout: (.*)$")
  if rest then return rest .. ": timeout" end
  return err
end

---------------------------------------------------------------------------
-- escaping without a connection
---------------------------------------------------------------------------

-- Used when there is no live connection to ask (Postgres.escape_literal(nil,
-- v), or called with another object as self, as Kong's connector does):
-- kong_rds_iam.pgmoon.escape, which assumes what the native connection asks
-- for at startup (UTF-8, standard_conforming_strings on) and writes
-- literals that read the same with it off.
local escape = require "kong_rds_iam.pgmoon.escape"
local literal_without_connection, identifier_without_connection = escape.literal, escape.identifier

---------------------------------------------------------------------------
-- the class
---------------------------------------------------------------------------

local Postgres = {
  convert_null = false,
  NULL = null,
  default_config = {
    application_name = "pgmoon",
    user = "postgres",
    host = "127.0.0.1",
    port = 5432,
  },
}
Postgres.__index = Postgres
Postgres.__name = "Postgres"
M.Postgres = Postgres
M.NULL = null

local SOCKET_TYPES = { nginx = true, luasocket = true, cqueues = true, luaposix = true }

-- The socket stand-in Kong looks at (pg.sock, pg.sock:getreusedtimes()).
local Sock = {}
Sock.__index = Sock

function Sock:getreusedtimes()
  local conn = self.pg._conn
  if conn and conn.getreusedtimes then
    return conn:getreusedtimes()
  end
  return 0
end

function Sock:settimeout(ms)
  return self.pg:settimeout(ms)
end

function Sock:setkeepalive(...)
  return self.pg:keepalive(...)
end

function Sock:close()
  return self.pg:disconnect()
end

function Sock:__tostring()
  return tostring(self.pg._conn or "kong_rds_iam connection: not connected")
end

local function default_socket_type()
  if ngx and ngx.get_phase and ngx.get_phase() ~= "init" then
    return "nginx"
  end
  return "luasocket"
end

-- pg.config reads the options, then pgmoon's defaults. Both sit in the
-- view's own metatable, so that new() makes no closure: making one is not
-- compiled by LuaJIT, and would leave every caller of new() (Kong makes one
-- object per query) to the interpreter.
local OPTS, DEFAULTS = {}, {}
local function config_index(view, key)
  local mt = getmetatable(view)
  local v = mt[OPTS][key]
  if v == nil then return mt[DEFAULTS][key] end
  return v
end

--- pg = pgmoon.new(opts): no I/O.
function M.new(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error(format("bad argument #1 to 'new' (table expected, got %s)", type(opts)), 2)
  end
  local socket_type = opts.socket_type
  if socket_type == nil then
    socket_type = default_socket_type()
  elseif not SOCKET_TYPES[socket_type] then
    error("got unknown or unset socket type: " .. tostring(socket_type), 2)
  end
  local defaults = Postgres.default_config
  -- One constructor: the table is made with room for every field (set one
  -- by one, it would be rehashed as it grows).
  local self = setmetatable({
    _config = opts, _defaults = defaults,
    config = setmetatable({}, { __index = config_index, [OPTS] = opts, [DEFAULTS] = defaults }),
    convert_null = opts.convert_null, sock_type = socket_type, sock = false,
  }, Postgres)
  self.sock = setmetatable({ pg = self }, Sock)
  return self
end

setmetatable(Postgres, {
  __call = function(_, opts) return M.new(opts) end,
})

-- What _conf reads from the options (pgmoon's defaults behind them),
-- besides the timeout and kong.configuration.
local CONF_OPTIONS = { "socket_path", "database", "host", "port", "user", "password", "timeout", "ssl",
  "ssl_verify", "ssl_required", "ssl_version", "cafile", "cert", "key", "application_name", "schema",
  "pool_size", "backlog" }
for option in pairs(IAM_OPTIONS) do CONF_OPTIONS[#CONF_OPTIONS + 1] = option end

-- The confs _conf built, by options table. Kong hands pgmoon.new the same
-- table for every connection. rds.connect reuses its parse of a conf table
-- it has seen; a new table costs a parse in Rust, which made a pooled
-- connect + query + keepalive cost nearly four times the instructions
-- (callgrind: 144k against 38k). An entry serves while each option it was
-- built from (as read through the defaults), the timeout and
-- kong.configuration (by identity: Kong's is read-only) are the same.
local conf_memo = setmetatable({}, { __mode = "k" })

-- The option values _conf reads, in CONF_OPTIONS order, through the
-- object's config view (options, then defaults).
local function option_values(config)
  local values = {}
  for i = 1, #CONF_OPTIONS do values[i] = config[CONF_OPTIONS[i]] end
  return values
end

-- same_options(opts, defaults, values): whether each option, read as the
-- config view reads it, is as in `values` (option_values'). Straight-line
-- code written once from CONF_OPTIONS: in a loop, one comparison meets
-- strings, numbers, booleans and nils in turn, and LuaJIT's trace leaves
-- through a side exit at most keys; here each comparison meets one type.
local same_options = (function()
  local src = { "local rawequal = rawequal\nreturn function(opts, defaults, values)\n  local v\n" }
  for i, key in ipairs(CONF_OPTIONS) do
    src[#src + 1] = format("  v = opts[%q]; if v == nil then v = defaults[%q] end\n"
      .. "  if not rawequal(v, values[%d]) then return false end\n", key, key, i)
  end
  src[#src + 1] = "  return true\nend\n"
  local chunk = assert((loadstring or load)(concat(src), "=kong_rds_iam.pgmoon options check"))
  return chunk()
end)()

local function memo_holds(memo, opts, defaults, timeout, kconf)
  return memo ~= nil and rawequal(memo.timeout, timeout) and rawequal(memo.kconf, kconf)
    and same_options(opts, defaults, memo.values)
end

-- The conf for rds.connect, or nil, err.
function Postgres:_conf()
  local opts, defaults, timeout = self._config, self._defaults, self._timeout
  local kong = rawget(_G, "kong")
  local kconf = type(kong) == "table" and kong.configuration or nil
  local memo = conf_memo[opts]
  if memo_holds(memo, opts, defaults, timeout, kconf) then return memo.conf end
  local conf, err = self:_build_conf(kconf)
  if conf then
    -- the memo checks the options; rds.connect need not check the conf
    rds._frozen(conf)
    conf_memo[opts] = { conf = conf, values = option_values(self.config), timeout = timeout, kconf = kconf }
  end
  return conf, err
end

-- A new conf for rds.connect from the options and `kconf`
-- (kong.configuration, when there is one), or nil, err.
function Postgres:_build_conf(kconf)
  local c = self.config
  if c.socket_path then
    return nil, "socket_path is not supported by kong_rds_iam.pgmoon"
  end
  if c.database == nil then
    return nil, "missing database for connect"
  end
  local conf = {
    pg_host = c.host,
    pg_port = c.port,
    pg_user = c.user,
    pg_password = c.password,
    pg_database = c.database,
    pg_timeout = self._timeout or c.timeout,
    pg_ssl = c.ssl,
    pg_ssl_verify = c.ssl_verify,
    pg_ssl_required = c.ssl_required,
    pg_ssl_version = c.ssl_version,
    pg_ssl_cafile = c.cafile,
    pg_ssl_cert = c.cert,
    pg_ssl_cert_key = c.key,
    pg_application_name = c.application_name,
    pg_schema = c.schema ~= "" and c.schema or nil,
    pg_pool_size = c.pool_size,
    pg_backlog = c.backlog,
  }
  local explicit = false
  for option, key in pairs(IAM_OPTIONS) do
    local v = c[option]
    if v ~= nil then
      explicit = true
      conf[key] = v
    end
  end
  if c.cafile ~= nil and type(kconf) == "table" then
    local ok, combined = pcall(function() return kconf.lua_ssl_trusted_certificate_combined end)
    if ok and combined ~= nil and combined == c.cafile then
      conf.pg_ssl_cafile, conf.lua_ssl_trusted_certificate = nil, c.cafile
    end
  end
  if not explicit then
    if type(kconf) == "table" then
      local ok, iam = pcall(M._iam_for, kconf, {
        host = c.host, port = c.port, user = c.user, database = c.database,
      })
      if not ok then
        return nil, "cannot read kong.configuration: " .. tostring(iam)
      end
      if iam then
        for key, v in pairs(iam) do conf[key] = v end
      end
    end
  end
  return conf
end

--- ok, err = pg:connect()
function Postgres:connect()
  local old = self._conn
  if old then
    self._conn = nil
    old:close()
  end
  self.last_sqlstate, self.last_error_fields = nil, nil
  local conf, err = self:_conf()
  if not conf then return nil, err end
  local conn, sqlstate, fields
  conn, err, sqlstate, fields = rds.connect(conf)
  if not conn then
    self.last_sqlstate = sqlstate
    if type(fields) == "table" then self.last_error_fields = fields end
    return nil, error_text(err, sqlstate, fields, "FATAL")
  end
  conn:_pgmoon_types() -- int8 always a number, oid as text: pgmoon's types
  self._conn = conn
  return true
end

--- pg:settimeout(ms): for the connect (when called before it) and every
--- later query.
function Postgres:settimeout(ms)
  ms = tonumber(ms)
  if not ms then
    error("bad argument #1 to 'settimeout' (milliseconds expected)", 2)
  end
  if ms < 1 then ms = 1 elseif ms > 3600000 then ms = 3600000 end
  self._timeout = ms
  local conn = self._conn
  if conn then conn:settimeout(ms) end
  return true
end

--- ok, err = pg:disconnect()
function Postgres:disconnect()
  local conn = self._conn
  if not conn then return nil, "closed" end
  self._conn = nil
  local ok, err = conn:close()
  if not ok and err == "closed" then
    -- Already closed by a timeout or an I/O error: nothing left to release.
    return true
  end
  return ok, err
end

-- A number in 0..max, or nil.
local function count(v, max)
  v = tonumber(v)
  if not v or v ~= v or v < 0 then return nil end
  if v > max then return max end
  return v
end

--- ok, err = pg:keepalive(max_idle_ms, pool_size): back to the pool.
function Postgres:keepalive(max_idle_ms, pool_size)
  local conn = self._conn
  if not conn then return nil, "closed" end
  self._conn = nil
  if not conn.keepalive then
    -- No pool in this build: release the connection.
    local ok, err = conn:close()
    if not ok and err ~= "closed" then return nil, err end
    return true
  end
  if pool_size == nil then pool_size = self.config.pool_size end
  -- The native method raises outside its ranges (nginx's does not): clamp.
  return conn:keepalive(count(max_idle_ms, 86400000), count(pool_size, 100000))
end
Postgres.setkeepalive = Postgres.keepalive

-- Per statement result: the NULL light userdata in rows -> pg.NULL or gone.
local function convert_rows(result, replacement)
  if type(result) ~= "table" then return end
  for i = 1, #result do
    local row = result[i]
    if type(row) == "table" then
      for k, v in pairs(row) do
        if rawequal(v, null) then row[k] = replacement end
      end
    end
  end
end

local function convert_result(self, res, num_queries)
  if type(res) ~= "table" then return end
  local replacement
  if self.convert_null then
    replacement = self.NULL
    if rawequal(replacement, null) then return end -- already so (Kong's case)
  end
  if (num_queries or 1) > 1 then
    for i = 1, #res do convert_rows(res[i], replacement) end
  else
    convert_rows(res, replacement)
  end
end

local function notices_of(list)
  if type(list) ~= "table" or #list == 0 then return nil end
  local out = {}
  for i = 1, #list do
    local n = list[i]
    if type(n) == "table" then
      n = pgmoon_text(n)
    elseif type(n) == "string" and not find(n, "^%u+: ") then
      n = "NOTICE: " .. n
    end
    out[i] = n
  end
  return out
end

local function notifications_of(list)
  if type(list) ~= "table" or #list == 0 then return nil end
  for i = 1, #list do
    local n = list[i]
    if type(n) == "table" and n.operation == nil then n.operation = "notification" end
  end
  return list
end

-- The results of a native query call in pgmoon's shape.
local function finish(self, res, a, b, c, d, e)
  if res ~= nil then
    self.last_sqlstate, self.last_error_fields = nil, nil
    convert_result(self, res, a)
    return res, a, notifications_of(b), notices_of(c)
  end
  -- a = err, b = partial, c = num_queries, d = sqlstate, e = fields
  self.last_sqlstate = d
  self.last_error_fields = type(e) == "table" and e or nil
  if b ~= nil then convert_result(self, b, c) end
  return nil, error_text(a, d, e, "ERROR"), b, c, nil, nil
end

-- pg:query(sql) without parameters, also pgmoon's simple_query(sql).
local function simple_query(self, sql)
  if type(sql) == "string" and find(sql, "\0", 1, true) then
    return nil, "invalid null byte in query"
  end
  local conn = self._conn
  if not conn then return nil, "closed" end
  local res, a, b, c, d, e = conn:query(sql)
  return finish(self, res, a, b, c, d, e)
end
Postgres.simple_query = simple_query

--- res, num_queries, notifications, notices = pg:query(sql, ...)
--- (with parameters: pg:extended_query(sql, ...))
function Postgres:query(sql, ...)
  if select("#", ...) > 0 then
    return self:extended_query(sql, ...)
  end
  -- A tail call, which leaves no frame of this vararg function on the stack
  -- while the query waits for the server. Below one, the code that runs
  -- after the cosocket's answer (LuaJIT starts a trace there) could not be
  -- compiled ("NYI: return to lower frame") and ran in the interpreter.
  return simple_query(self, sql)
end

-- PostgreSQL type names for the OIDs pgmoon_serialize returns.
local CAST = {
  [16] = "boolean", [17] = "bytea", [25] = "text", [114] = "json", [3802] = "jsonb",
  [1700] = "numeric", [1000] = "boolean[]", [1231] = "numeric[]", [1009] = "text[]",
  [199] = "json[]", [3807] = "jsonb[]",
}

-- SQL text for parameter `idx` of extended_query's client-side fallback.
local function param_literal(self, idx, v)
  if v == nil or rawequal(v, null) or rawequal(v, self.NULL) then
    return "NULL"
  end
  if type(v) == "table" then
    local mt = getmetatable(v)
    local serialize = mt and mt.pgmoon_serialize
    if not serialize then
      return nil, "pgmoon: param " .. idx .. ": table does not implement pgmoon_serialize, can't serialize"
    end
    local oid, text = serialize(v, self)
    if oid == nil then
      return nil, "pgmoon: param " .. idx .. ": " .. tostring(text or "failed to serialize type: table")
    end
    local cast = CAST[tonumber(oid)]
    local lit = self:escape_literal(tostring(text))
    return cast and (lit .. "::" .. cast) or lit
  end
  local lit = self:escape_literal(v)
  if byte(lit, 1) == 45 then lit = " " .. lit end -- "-": no "--" comment after a "-"
  return lit
end

local function is_word_byte(c)
  return c and (c == 95 or c == 36 or (c >= 48 and c <= 57) or (c >= 65 and c <= 90)
    or (c >= 97 and c <= 122) or c >= 128)
end

-- `sql` with $1..$n outside quotes and comments replaced by `literals[n]`;
-- or nil, err.
local function substitute(sql, literals, n)
  local out, from, i, len = {}, 1, 1, #sql
  while i <= len do
    local c = byte(sql, i)
    if c == 39 then -- '...': E'...' (backslash escapes) when E precedes
      local p = byte(sql, i - 1)
      local escapes = (p == 69 or p == 101) and not is_word_byte(byte(sql, i - 2))
      local j = i + 1
      while j <= len do
        local d = byte(sql, j)
        if d == 92 and escapes then
          j = j + 2
        elseif d == 39 then
          if byte(sql, j + 1) == 39 then j = j + 2 else break end
        else
          j = j + 1
        end
      end
      i = j + 1
    elseif c == 34 then -- "identifier"
      local j = i + 1
      while j <= len do
        if byte(sql, j) == 34 then
          if byte(sql, j + 1) == 34 then j = j + 2 else break end
        else
          j = j + 1
        end
      end
      i = j + 1
    elseif c == 45 and byte(sql, i + 1) == 45 then -- -- comment
      local e = find(sql, "\n", i + 2, true)
      i = e and e + 1 or len + 1
    elseif c == 47 and byte(sql, i + 1) == 42 then -- /* nested */ comment
      local depth, j = 1, i + 2
      while j <= len and depth > 0 do
        if byte(sql, j) == 47 and byte(sql, j + 1) == 42 then
          depth, j = depth + 1, j + 2
        elseif byte(sql, j) == 42 and byte(sql, j + 1) == 47 then
          depth, j = depth - 1, j + 2
        else
          j = j + 1
        end
      end
      i = j
    elseif c == 36 and not is_word_byte(byte(sql, i - 1)) then
      local digits = match(sql, "^%d+", i + 1)
      if digits then
        local k = tonumber(digits)
        if k < 1 or k > n then
          return nil, "there is no parameter $" .. digits
        end
        out[#out + 1] = sub(sql, from, i - 1)
        out[#out + 1] = literals[k]
        i = i + 1 + #digits
        from = i
      else
        local tag = match(sql, "^%$[%a_\128-\255][%w_\128-\255]*%$", i) or match(sql, "^%$%$", i)
        if tag then -- $tag$ ... $tag$
          local _, e = find(sql, tag, i + #tag, true)
          i = e and e + 1 or len + 1
        else
          i = i + 1
        end
      end
    else
      i = i + 1
    end
  end
  out[#out + 1] = sub(sql, from)
  return concat(out)
end

-- For the spec: sql = pgmoon._substitute(sql, literals, n), or nil, err.
M._substitute = substitute

--- res, num_queries, notifications, notices = pg:extended_query(sql, ...)
function Postgres:extended_query(sql, ...)
  if type(sql) == "string" and find(sql, "\0", 1, true) then
    return nil, "invalid null byte in query"
  end
  local conn = self._conn
  if not conn then return nil, "closed" end
  if conn.extended_query then
    return finish(self, conn:extended_query(sql, ...))
  end
  if type(sql) ~= "string" then
    error(format("bad argument #1 to 'extended_query' (string expected, got %s)", type(sql)), 2)
  end
  local n = select("#", ...)
  local literals = {}
  for idx = 1, n do
    local lit, err = param_literal(self, idx, (select(idx, ...)))
    if not lit then return nil, err end
    literals[idx] = lit
  end
  local text, err = substitute(sql, literals, n)
  if not text then return nil, err end
  return finish(self, conn:query(text))
end

--- notification, err = pg:wait_for_notification()
function Postgres:wait_for_notification()
  local conn = self._conn
  if not conn then return nil, "closed" end
  local n, err = conn:wait_for_notification()
  if type(n) == "table" and n.operation == nil then n.operation = "notification" end
  return n, err
end

-- The live native connection of `self`, if it is one of ours and connected.
local function live(self)
  if type(self) == "table" and getmetatable(self) == Postgres then
    return rawget(self, "_conn")
  end
  return nil
end

--- sql = pg:escape_literal(v); also Postgres.escape_literal(nil, v) and with
--- any other table as self (see literal_without_connection).
function Postgres.escape_literal(self, v)
  local pg_null = (type(self) == "table" and self.NULL) or Postgres.NULL
  if v == nil or rawequal(v, pg_null) or rawequal(v, null) then
    return "NULL"
  end
  local t = type(v)
  if t ~= "string" and t ~= "number" and t ~= "boolean" then
    error("don't know how to escape value: " .. tostring(v), 2)
  end
  local conn = live(self)
  if not conn then return literal_without_connection(v) end
  local text, err = conn:escape_literal(v)
  if not text then error(err, 2) end
  return text
end

--- sql = pg:escape_identifier(name); also without a connection.
function Postgres.escape_identifier(self, v)
  local conn = live(self)
  if not conn then return identifier_without_connection(v) end
  local text, err = conn:escape_identifier(tostring(v))
  if not text then error(err, 2) end
  return text
end

--- The bytes of a bytea in PostgreSQL's text output (hex or escape form).
function Postgres.decode_bytea(_, str)
  if sub(str, 1, 2) == "\\x" then
    return (gsub(sub(str, 3), "%x%x", function(h) return string.char(tonumber(h, 16)) end))
  end
  return (gsub(gsub(str, "\\(%d%d%d)", function(o) return string.char(tonumber(o, 8)) end), "\\\\", "\\"))
end

--- A bytea literal for `str` (E'\\x...').
function Postgres.encode_bytea(_, str)
  return "E'\\\\x" .. gsub(str, ".", function(ch) return format("%02x", byte(ch)) end) .. "'"
end

function Postgres:__tostring()
  return "<Postgres socket: " .. tostring(self.sock) .. ">"
end

return M
