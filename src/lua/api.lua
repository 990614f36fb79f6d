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
local warnings_pending = core.ffi_door and core.ffi_door.warnings_pending
local ngx_log, NGX_WARN = ngx and ngx.log, ngx and ngx.WARN
local function print_warnings()
  -- through the FFI a flag says whether there are any (most calls: none)
  if warnings_pending and not warnings_pending() then return end
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

-- Whether each of a memo entry's keys still holds the value it had; an
-- __index that raises (a proxy's) counts as a change.
local function still_same(conf, proxy, entry)
  if not proxy then return unchanged(conf, entry.keys, entry.values) end
  local ok, same = pcall(unchanged, conf, entry.keys, entry.values)
  return ok and same
end

--- token, err, expires_at = rds.token(conf, mode)
function M.token(conf, mode)
  check("token", 1, conf, "table")
  check("token", 2, mode, "string", true)
  -- A proxy's __index may raise: that fails this call (nil, err), it does
  -- not raise from it.
  local proxy = getmetatable(conf) ~= nil
  local entry = memo[conf]
  if entry and entry.mode == mode and now() < entry.valid_until and entry.epoch == token_epoch()
      and still_same(conf, proxy, entry) then
    return entry.token, nil, entry.expires_at
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
-- Private key of the cosocket, for a connection opened where calls yield
-- (pg_cosocket on, the default): nginx's event loop waits on it as on any
-- cosocket, and the Rust handle keeps the protocol and TLS state, Lua
-- carrying the bytes (src/pg/pipe.rs). Like every cosocket, it belongs to
-- the request (or timer) that opened it.
local SOCK, REQ = {}, {}
-- Private key of how many times its physical connection was handed out
-- before (getreusedtimes()), known at checkout, while over its cosocket.
local REUSED = {}
-- Private key of its number at the FFI door (src/lua/door.rs), through
-- which its hot calls go under LuaJIT.
local DOOR = {}
-- Private key of its pipe's number (src/pg/pipe.rs): its physical connection.
local PIPE = {}
-- Private key of the timeout (ms) its cosocket has, when known: a query
-- sets the cosocket's only when the connection's differs (a C call less
-- per query of a pooled checkout).
local TIMEOUT = {}

-- The objects of connections over cosockets that keepalive put into the
-- pool, by pipe number: the next checkout of that pipe gets its object
-- again (the door's take, then adopt) instead of a new one, which costs
-- more than the rest of a pooled checkout. Only idle ones are here: one in
-- use belongs to its connection table alone, so that one left to the
-- collector closes. The table that kept it alive gets the stale stand-in,
-- which answers as a closed connection. Entries whose sessions the pool
-- dropped meanwhile are dropped wholesale now and then. `host_ids`: each
-- kept object's number at the door while it waits (the door's adopt takes
-- it), known to this table alone.
local hosts, host_ids, nhosts = {}, {}, 0
-- The object kept for `pipe` and its number, taken out of the table.
local function unkeep(pipe)
  local h, id = hosts[pipe], host_ids[pipe]
  if h then hosts[pipe], host_ids[pipe], nhosts = nil, nil, nhosts - 1 end
  return h, id
end
local STALE
local function stale()
  STALE = STALE or core.stale_connection()
  return STALE
end
-- Without the door (no FFI, or the library not found by its path) queries
-- do not go over cosockets: connections use the I/O thread's socket.
local door = core.ffi_door
local D = door and door.D
local RECV_MAX = 65536
-- The request (or timer) a cosocket belongs to: nginx raises if another
-- one touches it, so the connection checks first. The request's address
-- (resty.core's get_request: a pointer read, no allocation) tells live
-- requests apart. The next request on the same client connection may get
-- the address of one that ended, but nginx closed that one's cosockets when
-- it ended, which `usable_here` checks. Without resty.core, ngx.ctx (a new
-- table per request, made at its first use, which costs more).
local get_request = (function()
  local has, base = false, nil
  if socket_tcp then has, base = pcall(require, "resty.core.base") end
  if has and type(base) == "table" and type(base.get_request) == "function" then return base.get_request end
  return function() return ngx.ctx end
end)()
local NOT_HERE = "this connection runs over an nginx cosocket, which cannot be used here "
  .. "(use it in the request or timer that opened it, outside metamethods and iterators)"

-- The cosocket failed (or timed out) during a query: the statement is
-- cancelled and the connection closed, as its state is unknown.
local function piped_broken(self, h, sock, err, timeout)
  h:piped_stop(false)
  sock:close()
  self[SOCK], self[REUSED] = nil, nil
  if err == "timeout" then return nil, format("timeout: no result within %d ms", timeout) end
  return nil, "connection failed: " .. tostring(err)
end

-- Whether the cosocket of `self`, `sock`, may be used here: in a phase
-- that yields, in its request, and still open (a later request with the
-- address of the one that opened it finds it closed: getreusedtimes() is
-- then nil, "closed", where the other calls would log an error).
local function usable_here(self, sock)
  return yieldable() and self[REQ] == get_request() and sock:getreusedtimes() ~= nil
end

-- The query's values once the door said it is over.
local function piped_finish(self, h, sock)
  local res, a, b, c, d, e = h:piped_finish()
  if res == nil and not h:is_open() then
    sock:close()
    self[SOCK] = nil
  end
  return res, a, b, c, d, e
end

-- A door call answered gone: a bug (a panic in Rust, or a number api.lua
-- lost), never a server's doing.
local DOOR_GONE_MSG = "internal error: the connection door closed"

local function door_query(self, h, sock, sql, id)
  local status = door.start(id, sql)
  if status ~= D.send then
    if status == D.done then return piped_finish(self, h, sock) end
    return piped_broken(self, h, sock, DOOR_GONE_MSG, 0)
  end
  local timeout = door.io.number
  if timeout ~= self[TIMEOUT] then
    sock:settimeout(timeout)
    self[TIMEOUT] = timeout
  end
  local ok, serr = sock:send(door.out())
  if not ok then return piped_broken(self, h, sock, serr, timeout) end
  while true do
    local data, rerr = sock:receiveany(RECV_MAX)
    if not data and rerr ~= "closed" then return piped_broken(self, h, sock, rerr, timeout) end
    status = door.feed(id, data)
    if status == D.result then return door.result() end
    if status == D.done then return piped_finish(self, h, sock) end
    if status ~= D.more and status ~= D.rows then return piped_broken(self, h, sock, DOOR_GONE_MSG, timeout) end
    local out = door.out()
    if out then
      ok, serr = sock:send(out)
      if not ok then return piped_broken(self, h, sock, serr, timeout) end
    end
    if status == D.rows then h:piped_rows() end
  end
end

local function piped_query(self, h, sock, sql)
  if not usable_here(self, sock) then return nil, NOT_HERE end
  return door_query(self, h, sock, sql, self[DOOR])
end

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
  local sock = self[SOCK]
  if sock then return piped_query(self, h, sock, sql) end
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
  local sock = self[SOCK]
  if sock then
    if not usable_here(self, sock) then return nil, NOT_HERE end
    local ok, err = h:piped_wait_start()
    if not ok then return nil, err end
    local timeout = h:timeout_ms()
    sock:settimeout(timeout)
    self[TIMEOUT] = timeout
    local n, nerr = h:piped_wait_feed("")
    while n == false do
      local data, rerr = sock:receiveany(RECV_MAX)
      if not data and rerr ~= "closed" then
        -- a timeout leaves the connection usable: nothing was sent
        h:piped_stop(rerr == "timeout")
        if rerr == "timeout" then return nil, format("timeout: no notification within %d ms", timeout) end
        sock:close()
        self[SOCK] = nil
        return nil, "connection failed: " .. tostring(rerr)
      end
      n, nerr = h:piped_wait_feed(data)
    end
    if not n and not h:is_open() then
      sock:close()
      self[SOCK] = nil
    end
    return n, nerr
  end
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

-- Closes a connection; over a cosocket, sends the Terminate the handle
-- left in its pipe (where cosockets work) and closes the cosocket.
local function close(fname, self)
  local h = handle_of(fname, self)
  local ok, err = h:close()
  local sock = self[SOCK]
  if ok and sock then
    self[SOCK] = nil
    -- elsewhere nginx closes the cosocket when its request ends
    if usable_here(self, sock) then
      local out = h:piped_output()
      if out then sock:send(out) end
      sock:close()
    end
  end
  return ok, err
end

--- ok, err = conn:close()
function Connection.close(self)
  return close("close", self)
end

--- ok, err = conn:disconnect()
function Connection.disconnect(self)
  return close("disconnect", self)
end

-- The idle cosocket waiting in nginx's keep-alive pool named in `options`
-- (`{ pool = name }`), or nil when nginx closed it meanwhile (the server
-- closed it while idle). The connect names this process's wake socket as
-- its address: nginx takes a pooled socket without dialling anything, and
-- with the pool empty it reaches the I/O thread, never the database (which
-- would see a stray connection).
local function pooled_cosocket(address, options, timeout)
  local sock = socket_tcp()
  sock:settimeout(timeout)
  local ok = sock:connect(address, options)
  if ok and sock:getreusedtimes() > 0 then return sock end
  if ok then sock:close() end
  return nil
end

-- The cosocket pool options and the wake socket of each pipe (physical
-- connection) by its number, which is unique in the process: made once
-- per physical connection, not at every checkout. Entries of closed ones
-- are dropped wholesale now and then.
local pool_of, pools = {}, 0
local function cosocket_pool(h, pipe)
  local p = pool_of[pipe]
  if p then return p[1], p[2] end
  local name = h:cosocket_pool()
  local address = name and core.wake_address(prefix)
  if not address then return nil end
  if pools >= 4096 then pool_of, pools = {}, 0 end
  p = { { pool = name }, address }
  pool_of[pipe], pools = p, pools + 1
  return p[1], p[2]
end

-- A pooled session's cosocket back from nginx's pool (named after that
-- physical connection), or nil when it is gone: then the session is
-- forgotten.
local function reclaim(h, pipe, timeout)
  local options, address = cosocket_pool(h, pipe)
  local sock = options and pooled_cosocket(address, options, timeout)
  if sock then return sock end
  h:piped_stop(false)
  return nil
end

-- The idle connections a keepalive pushed out of the pool (past its
-- pool_size) close now, as nginx closes the oldest of a full cosocket
-- pool: each cosocket is taken back from nginx's pool, says goodbye and
-- closes, so its server session ends with it. `list`: door.evicted()'s.
local function close_evicted(list, timeout)
  local address = core.wake_address(prefix)
  for i = 1, #list do
    local pipe, name, goodbye = list[i][1], list[i][2], list[i][3]
    unkeep(pipe)
    if pool_of[pipe] then pool_of[pipe], pools = nil, pools - 1 end
    local sock = address and pooled_cosocket(address, { pool = name }, timeout)
    if sock then
      sock:send(goodbye)
      sock:close()
    end
  end
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
  local sock = self[SOCK]
  if not sock then return h:keepalive(max_idle_ms, pool_size, get_phase ~= nil and get_phase() == "init") end
  if not usable_here(self, sock) then
    -- its cosocket cannot go to nginx's pool from here: close instead
    h:close()
    self[SOCK] = nil
    return nil, NOT_HERE
  end
  -- The session is pooled in Rust, its socket in nginx's pool of the same
  -- name (one per physical connection), with the same idle timeout.
  local status = door.keepalive(self[DOOR], max_idle_ms, pool_size)
  if status == D.pooled then
    local evicted = door.evicted()
    self[SOCK], self[REUSED] = nil, nil
    local pipe = self[PIPE]
    if pipe then
      if nhosts >= 4096 then hosts, host_ids, nhosts = {}, {}, 0 end
      if not hosts[pipe] then nhosts = nhosts + 1 end
      hosts[pipe], host_ids[pipe] = h, door.io.conn
      self[HANDLE] = stale()
    end
    local idle_ms = door.io.number
    if evicted then close_evicted(evicted, h:timeout_ms()) end
    local kept, kerr = sock:setkeepalive(idle_ms, 1)
    if not kept then return nil, "cannot keep the cosocket alive: " .. tostring(kerr) end
    return true
  end
  local out, err = door.out(), status == D.refused and door.msg() or nil
  if err and door.io.number == 1 then return nil, err end -- busy: nothing changed
  -- closed instead (a Terminate to send), or refused
  if status == D.gone then h:piped_stop(false) end
  self[SOCK] = nil
  if out then sock:send(out) end
  sock:close()
  if status == D.closed then return true end
  return nil, err or "closed"
end
Connection.setkeepalive = Connection.keepalive

--- n = conn:getreusedtimes(): 0 for a new physical connection.
function Connection.getreusedtimes(self)
  local h = handle_of("getreusedtimes", self)
  local n = self[REUSED]
  if n and self[SOCK] then return n end -- over its cosocket: still open
  return h:getreusedtimes()
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
  local h = handle_of("_pgmoon_types", self)
  local id = self[DOOR]
  -- at every kong_rds_iam.pgmoon connect: the door's plain C call
  if id and door and door.pgmoon_types(id) == D.typed then return end
  return h:pgmoon_types()
end

--- conn:_is_cosocket(): whether the connection runs over a cosocket
--- (then it belongs to the request that opened it).
function Connection._is_cosocket(self)
  handle_of("_is_cosocket", self)
  return self[SOCK] ~= nil
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

local open_handles = door and door.open_handles or core.open_handles
local function collect_unclosed()
  local open = open_handles()
  if open >= (gc_mark or M._gc_floor) then
    collectgarbage("collect")
    gc_mark = math.max(M._gc_floor, 2 * open_handles())
  end
end

local function connected(h, err, sqlstate, sock, id, pipe, reused, timeout)
  print_warnings()
  if not h then return nil, err, sqlstate end
  if sock and not id then id, pipe = h:door_id(), h:pipe_id() end
  -- Not `return setmetatable(...)`: LuaJIT cannot compile a tail call
  -- to it that returns into a lower frame, and the function falls back to
  -- the interpreter for good (jit.v: "leaving loop in root trace").
  local conn = setmetatable({ [HANDLE] = h, [SOCK] = sock, [REQ] = sock and get_request(), [DOOR] = id,
    [PIPE] = pipe, [REUSED] = reused, [TIMEOUT] = timeout }, Connection)
  return conn
end

local piped_open

-- Logs in over a new cosocket: `h, sock` or `nil, err, sqlstate`.
local function login(opening, retried)
  local timeout = opening:timeout_ms()
  local name, target = opening:pool_name()
  local sock, ok, err, i = nil, nil, nil, 1
  while true do
    local ip, port = opening:address(i)
    if not ip then break end
    sock = socket_tcp()
    sock:settimeout(timeout)
    ok, err = sock:connect(ip, port, { pool = name })
    if ok then break end
    i = i + 1
  end
  if not ok then
    opening:stop()
    return nil, format("could not connect to %s: %s", target, tostring(err))
  end
  opening:begin(i)
  local status, out, a, b = opening:step()
  while true do
    if out then
      local sent, serr = sock:send(out)
      if not sent then
        sock:close()
        return nil, opening:stop(serr)
      end
    end
    if status == "done" then return a, sock end
    if status == "failed" then
      sock:close()
      return nil, a, b
    end
    if status == "retry" then
      sock:close()
      if retried then return nil, "internal error: login retried twice" end
      local job, bound = opening:retry_start()
      if not job then return nil, bound end
      return piped_open(nil, job, bound, true)
    end
    local data, rerr = sock:receiveany(RECV_MAX)
    if not data and rerr ~= "closed" then
      sock:close()
      return nil, opening:stop(rerr)
    end
    status, out, a, b = opening:step(data, data == nil)
    if data == nil and status == "more" then
      sock:close()
      return nil, opening:stop("closed")
    end
  end
end

-- A new connection over a cosocket: `h, sock` or `nil, err, sqlstate`.
-- The job prepares it (backlog, rate guard, token, addresses).
function piped_open(parsed, job, bound, retried)
  if not job then
    job, bound = core.piped_prepare_start(parsed)
    if not job then return nil, bound end
  end
  local ok, err = wait(job, bound)
  if not ok then return nil, err end
  local kind, a, b, c, d = core.piped_prepare_finish(job)
  if kind == "open" then return login(a, retried) end
  if kind == "reuse" then -- one came back while we waited (pg_backlog)
    local sock = reclaim(a, c, d)
    if sock then return a, sock, b, c end
    if parsed == nil then return nil, "connection lost while logging in again" end
    return piped_open(parsed)
  end
  return nil, a, b
end

-- Parsed confs, per conf table: Rust parses a table once (reading its
-- keys through the C API costs far more than the pooled checkout), and
-- names every key it read; the parse is reused while each of those keys
-- holds the same value (a table value by identity), as token()'s memo does.
local conf_memo = setmetatable({}, { __mode = "k" })
-- Conf tables whose maker promised never to change them (rds._frozen):
-- their parse is reused without comparing their keys.
local frozen = setmetatable({}, { __mode = "k" })

local function parsed_conf(conf, mode)
  local entry = conf_memo[conf]
  local proxy = getmetatable(conf) ~= nil
  if entry and entry.mode == mode and (frozen[conf] or still_same(conf, proxy, entry)) then
    return entry.parsed, nil, entry.id
  end
  local parsed, keys, id = core.parse_conf(conf, mode)
  if not parsed then
    conf_memo[conf] = nil
    return nil, keys
  end
  local values = {}
  if proxy then
    if not pcall(read, conf, keys, values) then return parsed, nil, id end
  else
    read(conf, keys, values)
  end
  conf_memo[conf] = { mode = mode, keys = keys, values = values, parsed = parsed, id = id }
  return parsed, nil, id
end

-- An idle pooled connection the door's checkout took (its pipe numbered
-- `pipe`) in an object: the one kept for that pipe when there is one, else
-- a new one. `h, door_id` or `nil, err`.
local function taken(pipe)
  local h, kept = unkeep(pipe)
  if h and door.adopt(kept) == D.adopted then return h, door.io.conn end
  return core.piped_taken()
end

-- `h, sock, door_id?, pipe?, reused?, timeout?` (the one the cosocket
-- has), `nil, err, sqlstate`, or false when pg_cosocket is off.
local function piped_connect(conf, mode)
  if not door then return false end
  local parsed, perr, conf_id = parsed_conf(conf, mode)
  if not parsed then return nil, perr end
  local io = door.io
  while true do
    local status = door.take(conf_id)
    if status == D.none then return piped_open(parsed) end
    if status == D.off then return false end
    if status ~= D.taken then return nil, DOOR_GONE_MSG end
    local pipe, timeout, reused = io.pipe, io.number, io.reused
    local h, id = taken(pipe)
    if not h then return nil, id end
    local sock = reclaim(h, pipe, timeout)
    if sock then return h, sock, id, pipe, reused, timeout end
  end
end

--- conn, err, sqlstate = rds.connect(conf, mode)
function M.connect(conf, mode)
  check("connect", 1, conf, "table")
  check("connect", 2, mode, "string", true)
  collect_unclosed()
  local h, err, sqlstate
  if yieldable() then
    local sock, pipe, reused, timeout
    h, sock, sqlstate, pipe, reused, timeout = piped_connect(conf, mode)
    if h then return connected(h, nil, nil, sock, sqlstate, pipe, reused, timeout) end
    if h == nil then return connected(nil, sock, sqlstate) end
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

--- conf = rds._frozen(conf): marks a conf table its maker never changes
--- again (kong_rds_iam.pgmoon's, one per options table): a connect where
--- calls yield then reuses its parse without comparing its keys. A frozen
--- table that does change keeps being read there as it was first parsed.
function M._frozen(conf)
  check("_frozen", 1, conf, "table")
  frozen[conf] = true
  return conf
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

--- rds._door(): whether connections over cosockets (and their FFI door) are there.
function M._door()
  return door ~= nil
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
