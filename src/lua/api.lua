-- The public functions of kong_rds_iam. The Rust core does the work; this
-- file checks argument types, raising Lua errors for programmer mistakes
-- (as Lua libraries do), and leaves runtime failures as `nil, err` returns.
local core = ...

local type, error, format, setmetatable, getmetatable, pcall, tostring, rawequal =
  type, error, string.format, setmetatable, getmetatable, pcall, tostring, rawequal
-- Whole seconds: ngx.time() is nginx's cached clock; os.time() elsewhere.
local now = (ngx and ngx.time) or os.time

-- `rawequal(value, nil)`: a NULL cdata equals nil under `==`.
local function check(fname, n, value, wanted, optional)
  local t = type(value)
  if t ~= wanted and not (optional and rawequal(value, nil)) then
    error(format("bad argument #%d to '%s' (%s expected, got %s)", n, fname, wanted, t), 3)
  end
end

local M = {
  version = core.version,
  -- SQL NULL and JSON null: the NULL light userdata, equal to ngx.null and cjson.null.
  null = core.null,
  -- src/lua/ffi.rs's cross-language contract, for the spec that checks it.
  _contract = core.contract,
  -- The wake cosocket times out this long after the job's own bound (a
  -- safety net: Rust enforces pg_timeout). Tests lower it to exercise a
  -- waiter that goes away.
  _wait_slack_ms = 1000,
}

-- Yielding or blocking, decided per call. In the nginx phases where
-- cosockets work, and where the running coroutine can yield (not inside a
-- metamethod, a table.sort callback or a module's top level during
-- require), a call hands its work to this process's I/O thread as a job and
-- waits on a cosocket (see src/io_thread.rs), so the worker serves other
-- requests meanwhile. Everywhere else (init, init_worker, filters, log,
-- balancer, plain Lua) it blocks, as Lua libraries do there.
local YIELDING = {
  rewrite = true, server_rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true, preread = true,
}
local get_phase = ngx and ngx.get_phase
local socket_tcp = ngx and ngx.socket and ngx.socket.tcp
-- nginx's coroutine table has no isyieldable; the core brings LuaJIT's.
local isyieldable = core.isyieldable or coroutine.isyieldable or function() return true end
local prefix = ngx and ngx.config and ngx.config.prefix and ngx.config.prefix() or nil

local function yieldable()
  return YIELDING[get_phase()] == true and isyieldable()
end
if not (core.yield_enabled and get_phase and socket_tcp) then
  yieldable = function() return false end
end

-- Warnings the core recorded (src/warn.rs: each kind once per process,
-- never a secret): to nginx's error log at WARN inside nginx, else stderr.
-- Only opening a connection records any, so connect() prints them.
local take_warnings = core.take_warnings
local ngx_log, NGX_WARN = ngx and ngx.log, ngx and ngx.WARN
local function print_warnings()
  local pending = take_warnings()
  if not pending then return end
  for i = 1, #pending do
    local text = "kong_rds_iam: " .. pending[i]
    if ngx_log and NGX_WARN then ngx_log(NGX_WARN, text)
    else io.stderr:write(text, "\n") end
  end
end

-- Wake connections kept per worker, and for how long an idle one is kept:
-- a burst of concurrent calls leaves at most this many (2 fds each) behind.
local WAKE_POOL_SIZE, WAKE_IDLE_MS = 128, 60000

-- Waits (yielding) until job `job` is done; true, or nil, err after
-- abandoning it. `bound_ms` is how long the job may take.
local function wait(job, bound_ms)
  local address, err = core.wake_address(prefix)
  if not address then
    core.abandon(job)
    return nil, err
  end
  local sock = socket_tcp()
  local slack = tonumber(M._wait_slack_ms) or 1000
  sock:settimeout(math.max(1, bound_ms + slack))
  local ok
  ok, err = sock:connect(address)
  if not ok then
    core.abandon(job)
    return nil, "cannot reach the i/o thread: " .. tostring(err)
  end
  local byte
  ok, err = sock:send(format("%d\n", job))
  if ok then byte, err = sock:receive(1) end
  if not byte then
    sock:close()
    core.abandon(job)
    if err == "timeout" then
      return nil, format("timeout: no result within %d ms", math.max(1, bound_ms + slack))
    end
    return nil, "waiting for the i/o thread failed: " .. tostring(err)
  end
  sock:setkeepalive(WAKE_IDLE_MS, WAKE_POOL_SIZE)
  if byte ~= "1" then return nil, "internal error: job lost" end
  return true
end

-- Waits for a credential fetch job; true, or nil, err.
local function fetched(job, bound_ms)
  local ok, err = wait(job, bound_ms)
  if not ok then return nil, err end
  return core.fetch_finish(job)
end

-- Where the call can yield, fetches the credentials of `conf` (nil: the base
-- chain) if they are not cached, so that the call after it finds them and
-- does not block the worker. true, or nil, err (the fetch's or the conf's).
local function prefetch(conf, mode)
  if not yieldable() then return true end
  local job, bound_ms = core.fetch_start(conf, mode)
  if job then return fetched(job, bound_ms) end
  if bound_ms then return nil, bound_ms end
  return true
end

-- The token cache lives in Rust. In front of it, a memo per conf table lets
-- a repeated token(conf) skip the call into Rust: it serves the token last
-- issued for this table while every key the token depends on (core.token_keys,
-- the names the Rust parser reads) still holds the same value, and until the
-- token's valid_until (min(900 s, credentials expiry) - 15 s), as Rust would.
-- On a miss the same values go to Rust as an array, read once, here: Lua
-- reads a table (or a proxy such as kong.configuration) far faster than Rust
-- can through the C API.
local token_keys = core.token_keys
-- Bumped by Rust when it drops cached tokens (a server refused one): a memo
-- entry of an older epoch is not served.
local token_epoch = core.token_epoch
local no_keys = {}
-- LuaJIT: the same call through the FFI, several times cheaper (nil on PUC Lua).
local ffi_token = core.ffi_token
local SIDE = { rw = core.contract.sides.rw, ro = core.contract.sides.ro } -- src/lua/ffi.rs
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
  if entry and entry.mode == mode and now() < entry.valid_until and entry.epoch == token_epoch() then
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
      -- the error object's own __tostring may raise too
      local shown, text = pcall(tostring, err)
      if not shown or type(text) ~= "string" then text = "an error object that cannot be shown" end
      return nil, "cannot read conf: its __index raised: " .. text:sub(1, 200)
    end
  else
    read(conf, keys, values)
  end
  local token, err, expires_at, valid_until, job, bound_ms
  local epoch_now = token_epoch()
  local side = SIDE[mode or "rw"]
  local defer = yieldable()
  if ffi_token and side then
    token, err, expires_at, valid_until, job, bound_ms = ffi_token(values, #keys, side, defer)
  else
    token, err, expires_at, valid_until, job, bound_ms = core.token(values, mode, defer)
  end
  if job then
    -- The credentials are being fetched: wait, then sign with them.
    local ok
    ok, err = fetched(job, bound_ms)
    if ok then
      if ffi_token and side then
        token, err, expires_at, valid_until = ffi_token(values, #keys, side)
      else
        token, err, expires_at, valid_until = core.token(values, mode)
      end
    end
  end
  if not token then
    memo[conf] = nil
    return nil, err
  end
  entry.token, entry.expires_at, entry.valid_until, entry.epoch = token, expires_at, valid_until, epoch_now
  memo[conf] = entry
  return token, nil, expires_at
end

-- The connection object: Lua methods in front of the Rust handle, so that
-- argument mistakes raise Lua strings and each call chooses its path.
local Connection = {}
Connection.__index = Connection
local HANDLE = {} -- private key of the Rust handle in a connection table

local function handle_of(fname, self)
  if type(self) ~= "table" or getmetatable(self) ~= Connection then
    error(format("bad argument #1 to '%s' (connection expected, got %s)", fname, type(self)), 3)
  end
  return self[HANDLE]
end

--- res, err, partial, num_queries, sqlstate = conn:query(sql)
function Connection.query(self, sql)
  local h = handle_of("query", self)
  check("query", 1, sql, "string")
  if not yieldable() then return h:query(sql) end
  local job, bound_ms = h:query_start(sql)
  if not job then return nil, bound_ms end -- busy or closed: nothing was sent
  local ok, err = wait(job, bound_ms)
  if not ok then
    h:query_abandon(job) -- the job cancels the statement and closes the connection
    return nil, err
  end
  return h:query_finish(job)
end

--- notification, err = conn:wait_for_notification(): the next NOTIFY on a
--- channel this connection LISTENs on (a table { operation = "notification",
--- pid, channel, payload }), waiting up to the connection's timeout
--- (yielding where calls yield); a timeout leaves the connection usable.
function Connection.wait_for_notification(self)
  local h = handle_of("wait_for_notification", self)
  if not yieldable() then return h:wait_for_notification() end
  local job, bound_ms = h:wait_start()
  if not job then return nil, bound_ms end
  local ok, err = wait(job, bound_ms)
  if not ok then
    h:query_abandon(job)
    return nil, err
  end
  return h:wait_finish(job)
end

--- ok, err = conn:close()
function Connection.close(self)
  return handle_of("close", self):close()
end

--- ok, err = conn:disconnect()
function Connection.disconnect(self)
  return handle_of("disconnect", self):close()
end

local function optional_count(fname, n, value, max)
  if rawequal(value, nil) then return nil end
  if type(value) ~= "number" or value < 0 or value > max or value ~= value then
    error(format("bad argument #%d to '%s' (number 0-%d expected, got %s)", n, fname, max, type(value)), 3)
  end
  return value
end

--- ok, err = conn:keepalive(max_idle_ms?, pool_size?)
--- Puts the connection into this process's pool (then `conn` is closed);
--- in the nginx master, which forks, it is closed instead.
function Connection.keepalive(self, max_idle_ms, pool_size)
  local h = handle_of("keepalive", self)
  max_idle_ms = optional_count("keepalive", 1, max_idle_ms, 86400000)
  pool_size = optional_count("keepalive", 2, pool_size, 100000)
  if pool_size == 0 then pool_size = nil end
  return h:keepalive(max_idle_ms, pool_size, get_phase ~= nil and get_phase() == "init")
end
Connection.setkeepalive = Connection.keepalive

--- n = conn:getreusedtimes(): 0 for a new physical connection.
function Connection.getreusedtimes(self)
  return handle_of("getreusedtimes", self):getreusedtimes()
end

--- conn:settimeout(ms)
function Connection.settimeout(self, ms)
  local h = handle_of("settimeout", self)
  if type(ms) ~= "number" or not (ms >= 1 and ms <= 3600000) then
    error("bad argument #1 to 'settimeout' (milliseconds 1-3600000 expected)", 2)
  end
  return h:settimeout(ms)
end

local LITERALS = { ["nil"] = true, boolean = true, number = true, string = true }

--- sql = conn:escape_literal(value): as libpq quotes it for this
--- connection's client encoding; nil, err for a value that cannot be quoted
--- (a zero byte, a broken multibyte character).
function Connection.escape_literal(self, value)
  local h = handle_of("escape_literal", self)
  if not LITERALS[type(value)] and not rawequal(value, M.null) then
    error(format("bad argument #1 to 'escape_literal' (cannot escape a %s)", type(value)), 2)
  end
  return h:escape_literal(value)
end

--- sql = conn:escape_identifier(name)
function Connection.escape_identifier(self, name)
  local h = handle_of("escape_identifier", self)
  check("escape_identifier", 1, name, "string")
  return h:escape_identifier(name)
end

--- conn:_pgmoon_types(): rows typed exactly as pgmoon types them from now
--- on (int8 always a number, oid as text); for kong_rds_iam.pgmoon.
function Connection._pgmoon_types(self)
  return handle_of("_pgmoon_types", self):pgmoon_types()
end

function Connection.__tostring(self)
  return tostring(self[HANDLE])
end

-- A connection left to the garbage collector keeps its server session until
-- the collector runs, and a handle is too small a userdata to make it run:
-- thousands of unclosed ones exhaust the server. So when this process has
-- many handles open, connect() runs a full collection first, and then waits
-- for twice as many before the next one (amortized).
M._gc_floor = 256
local gc_mark

local function collect_unclosed()
  local open = core.open_handles()
  if open >= (gc_mark or M._gc_floor) then
    collectgarbage("collect")
    gc_mark = math.max(M._gc_floor, 2 * core.open_handles())
  end
end

local function connected(h, err, sqlstate)
  print_warnings()
  if not h then return nil, err, sqlstate end
  return setmetatable({ [HANDLE] = h }, Connection)
end

--- conn, err, sqlstate = rds.connect(conf, mode)
function M.connect(conf, mode)
  check("connect", 1, conf, "table")
  check("connect", 2, mode, "string", true)
  collect_unclosed()
  local h, err, sqlstate
  if yieldable() then
    local job, bound_ms = core.connect_start(conf, mode)
    if not job then return nil, bound_ms end
    if type(job) == "userdata" then
      h = job -- an idle pooled connection, taken at once: no hand-off
    else
      local ok, werr = wait(job, bound_ms)
      if not ok then return nil, werr end
      h, err, sqlstate = core.connect_finish(job)
    end
  else
    h, err, sqlstate = core.connect(conf, mode)
  end
  return connected(h, err, sqlstate)
end

--- facts, err = rds._facts(conf, mode): what explain() reports from (no secret).
function M._facts(conf, mode)
  check("_facts", 1, conf, "table")
  check("_facts", 2, mode, "string", true)
  prefetch(conf, mode) -- a failure is reported in the facts
  return core.facts(conf, mode)
end

--- service, region = rds._cache_endpoint(host); region = rds._host_region(host):
--- the endpoint name rules of src/service_tokens.rs and src/region.rs.
function M._cache_endpoint(host)
  if type(host) ~= "string" then return nil end
  return core.cache_endpoint(host)
end
function M._host_region(host)
  if type(host) ~= "string" then return nil end
  return core.host_region(host)
end

--- report = rds.explain(conf, mode?, opts?): why an IAM login would fail
--- (lua/kong_rds_iam/explain.lua; never a secret).
function M.explain(conf, mode, opts)
  return require("kong_rds_iam.explain").explain(M, conf, mode, opts)
end

--- path, err = rds.rds_ca_bundle(): the Amazon RDS CA bundle as a file,
--- for nginx's lua_ssl_trusted_certificate.
function M.rds_ca_bundle()
  return core.rds_ca_bundle()
end

--- stats = rds.stats(): this process's figures.
function M.stats()
  return core.stats()
end

--- ok = rds._nop(): one no-op job through the wake mechanism (yields where
--- calls yield), for measuring its cost.
function M._nop()
  if not yieldable() then return true end
  local job = core.nop_start()
  local ok, err = wait(job, 1000)
  if not ok then return nil, err end
  return core.nop_finish(job)
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
  local ok, err = prefetch(conf, mode)
  if not ok then return nil, err end
  return core.credentials_source(conf, mode)
end

local sign_fields = {
  host = "string", port = "number", user = "string", region = "string",
  access_key_id = "string", secret_access_key = "string",
}

-- Field types of the other token kinds (src/service_tokens.rs); `true`:
-- required. Values are checked in Rust.
local REQUEST_FIELDS = {
  elasticache = {
    cache_name = { "string", true }, user = { "string", true }, endpoint = { "string" }, region = { "string" },
    serverless = { "boolean" }, service = { "string" }, timeout = { "number" },
  },
  dsql = {
    host = { "string", true }, user = { "string" }, region = { "string" }, admin = { "boolean" },
    expires_in = { "number" }, timeout = { "number" },
  },
}
local SIGN_FIELDS = {
  access_key_id = { "string", true }, secret_access_key = { "string", true }, session_token = { "string" },
  time = { "number" }, kind = { "string", true },
}

local function check_fields(fname, t, ...)
  for i = 1, select("#", ...) do
    for field, spec in pairs((select(i, ...))) do
      local v = t[field]
      if (v ~= nil or spec[2]) and type(v) ~= spec[1] then
        error(format("bad argument #1 to '%s' (field '%s': %s expected, got %s)", fname, field, spec[1], type(v)), 3)
      end
    end
  end
end


--- token, err, expires_at = rds.elasticache_token{cache_name=, user=, endpoint=?,
---   region=?, serverless=?, service=?}
function M.elasticache_token(req)
  check("elasticache_token", 1, req, "table")
  check_fields("elasticache_token", req, REQUEST_FIELDS.elasticache)
  local ok, err = prefetch()
  if not ok then return nil, err end
  return core.elasticache_token(req)
end

--- token, err, expires_at = rds.dsql_token{host=, user=?, region=?, admin=?, expires_in=?}
function M.dsql_token(req)
  check("dsql_token", 1, req, "table")
  check_fields("dsql_token", req, REQUEST_FIELDS.dsql)
  local ok, err = prefetch()
  if not ok then return nil, err end
  return core.dsql_token(req)
end

--- token, err = rds.sign_token{host=, port=, user=, region=, access_key_id=,
---   secret_access_key=, session_token=, time=}; with kind = "elasticache",
---   "memorydb" or "dsql", the fields of elasticache_token / dsql_token.
function M.sign_token(params)
  check("sign_token", 1, params, "table")
  local kind = params.kind
  if kind ~= nil and kind ~= "rds" then
    local fields = REQUEST_FIELDS[kind == "memorydb" and "elasticache" or kind]
    if not fields then
      error(format("bad argument #1 to 'sign_token' (field 'kind': rds, elasticache, memorydb or dsql expected, got %s)",
        type(kind) == "string" and kind or "a " .. type(kind)), 2)
    end
    check_fields("sign_token", params, fields, SIGN_FIELDS, { region = { "string", true } })
    return core.sign_service_token(params)
  end
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
