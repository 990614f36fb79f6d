-- nginx side of bench/nginx/run: request handlers of the one nginx worker
-- that bench/nginx/drive.py loads. Each /q request takes an open connection
-- from this worker's free list (or opens one), runs K `select 1 as x`
-- queries on it one after another, timing each with CLOCK_MONOTONIC, and
-- gives the connection back. Nothing here is a test.
--
--   /q?v=VARIANT&k=K   K queries; VARIANT: rds_tls, rds_plain (our module;
--                      yielding or blocking depends on the instance's
--                      KONG_RDS_IAM_YIELD), pgmoon_plain (pgmoon, cosockets)
--   /reset             forget the recorded per-query times
--   /stats[?v=VARIANT] JSON: queries, p50/p99/p999 (us) since /reset (of
--                      the /q requests, or of VARIANT's /cycle requests), and
--                      rds.stats() (jobs: the job table's size, 0 when idle;
--                      io_thread)
--   /drain?v=VARIANT   close this worker's idle connections of VARIANT
--   /nop?n=N           N calls of rds._nop(), each timed: median/p99/mean (us)
--   /info              JSON: what the module offers (_nop, stats), versions
--   /cycle?v=VARIANT   (also pgmoon_tls, and class_plain/class_tls: our
--                      kong_rds_iam.pgmoon with pgmoon's options) one connect
--                      (from the pool after the first) + one
--                      `select 1 as x` + keepalive, timed as a whole, in a
--                      buffer of its own per variant (/stats?v=VARIANT; the
--                      paths of an interleaved window stay apart), which also
--                      counts the new physical connections
--   /decode?v=VARIANT  connect (pooled) + the 10,000-row query of
--                      bench/sql/rows_mixed.sql, timed, + keepalive: JSON
--                      with us (the query() call), rows, types checked
--   /pooldrain?v=V     close the idle connections of rds's own keep-alive
--                      pool for V (rds_tls, rds_plain) in this worker
--
-- Connections: ours are Rust objects, not tied to a request, so a per-worker
-- free list keeps them open across requests. pgmoon's cosockets belong to
-- the request that made them, so pgmoon goes the way Kong uses it: connect
-- (a socket from the cosocket keepalive pool, no new login once warm), K
-- queries, keepalive().
local ffi = require "ffi"
local cjson = require "cjson.safe"
local rds = require "kong_rds_iam"

pcall(ffi.cdef, [[
  typedef struct { long tv_sec; long tv_nsec; } bench_ngx_timespec;
  int clock_gettime(int clk, bench_ngx_timespec *ts);
]])
local C = ffi.C
local ts = ffi.new("bench_ngx_timespec")
local function clock()
  C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local E = os.getenv -- the worker sees these through `env` directives
local SQL = "select 1 as x"
-- 10,000 rows x 6 columns: int4, int8, text, bool, float8, timestamptz
-- (table made by bench/sql/rows_mixed.sql; int8 values stay below 2^53, so
-- both drivers give numbers).
local DECODE_SQL = "select id, big, name, flag, score, created from bench_rows_mixed order by id"
local DECODE_ROWS = 10000

local function conf_of(ssl)
  return {
    pg_host = E "RDS_EMU_HOST" or "127.0.0.1", pg_port = tonumber(E "RDS_EMU_PORT"),
    pg_database = E "RDS_EMU_DB" or "kong",
    pg_user = E "RDS_EMU_PW_MD5_USER", pg_password = E "RDS_EMU_PW_MD5_PASSWORD",
    pg_ssl = ssl, pg_ssl_required = ssl, pg_ssl_verify = false,
  }
end
local CONFS = { rds_tls = conf_of(true), rds_plain = conf_of(false) }

local pgmoon_ok, pgmoon = pcall(require, "pgmoon")
if not pgmoon_ok then pgmoon = nil end
local PGMOON_POOL = 128
local pg_cfg = {
  host = E "RDS_EMU_HOST" or "127.0.0.1", port = E "RDS_EMU_PORT",
  database = E "RDS_EMU_DB" or "kong",
  user = E "RDS_EMU_PW_MD5_USER", password = E "RDS_EMU_PW_MD5_PASSWORD",
  ssl = false, pool_size = PGMOON_POOL,
}
-- pgmoon over TLS (md5 user: its SCRAM over TLS would need lua-resty-openssl),
-- certificate not verified as ours (pg_ssl_verify = false); its own pool
-- name, since pgmoon's default (host:port:database:user) would mix the two.
-- pgmoon's option is `pool_name` (`pool` is ignored): a reused socket skips
-- the TLS handshake, so in the shared pool this path would take the plain
-- path's sockets and run without TLS.
local pg_cfg_tls = { ssl = true, ssl_verify = false, pool_name = "bench_pgmoon_tls" }
for k, v in pairs(pg_cfg) do if pg_cfg_tls[k] == nil then pg_cfg_tls[k] = v end end
local PG_CFGS = { pgmoon_plain = pg_cfg, pgmoon_tls = pg_cfg_tls, class_plain = pg_cfg, class_tls = pg_cfg_tls }
-- Our pgmoon class (kong_rds_iam.pgmoon): the driver Kong runs on once its
-- requires name it, with the very options pgmoon gets.
local class = require "kong_rds_iam.pgmoon"
local DRIVERS = { pgmoon_plain = pgmoon, pgmoon_tls = pgmoon, class_plain = class, class_tls = class }

local M = {}

-- Times (seconds) since the last /reset: per query of the /q requests in
-- `QUERIES`, per cycle in one buffer per /cycle variant (made at its first
-- use). Fixed buffers; the count goes on past them (the percentiles then
-- cover the first `cap`).
local function new_times(cap)
  return { buf = ffi.new("double[?]", cap), cap = cap, n = 0, count = 0, new_conns = 0 }
end
local QUERIES = new_times(1000000)
local cycles = {}
local function cycle_times(v)
  local t = cycles[v]
  if not t then
    t = new_times(300000)
    cycles[v] = t
  end
  return t
end

local function record(t, dt)
  if t.n < t.cap then
    t.buf[t.n] = dt
    t.n = t.n + 1
  end
  t.count = t.count + 1
end

local function stats_now()
  if type(rds.stats) ~= "function" then return nil end
  local ok, s = pcall(rds.stats)
  if ok and type(s) == "table" then return s end
  return nil
end

local function reply(status, t)
  ngx.status = status
  ngx.header.content_type = "application/json"
  ngx.print(cjson.encode(t))
end

local function fail(msg)
  ngx.log(ngx.ERR, "bench: ", msg)
  return reply(500, { error = msg })
end

local pools = { rds_tls = {}, rds_plain = {} }

-- Over a cosocket (yielding, the default) a connection belongs to its
-- request, as pgmoon's: connect (pooled) and keepalive per request. The
-- blocking instance's connections are Rust objects, kept in a free list.
local function q_rds(v, k)
  local pool = pools[v]
  local conn = pool[#pool]
  if conn then
    pool[#pool] = nil
  else
    local err
    conn, err = rds.connect(CONFS[v])
    if not conn then return fail("connect " .. v .. ": " .. tostring(err)) end
  end
  local per_request = conn:_is_cosocket()
  for _ = 1, k do
    local t0 = clock()
    local res, err = conn:query(SQL)
    local dt = clock() - t0
    if not res or not res[1] or res[1].x ~= 1 then
      pcall(conn.close, conn)
      return fail("query " .. v .. ": " .. tostring(err))
    end
    record(QUERIES, dt)
  end
  if per_request then
    local ok, kerr = conn:keepalive()
    if not ok then return fail("keepalive " .. v .. ": " .. tostring(kerr)) end
  else
    pool[#pool + 1] = conn
  end
  ngx.print("ok")
end

local function q_pgmoon(k)
  if not pgmoon then return fail("pgmoon not present") end
  local pg = pgmoon.new(pg_cfg)
  local ok, err = pg:connect()
  if not ok then return fail("pgmoon connect: " .. tostring(err)) end
  for _ = 1, k do
    local t0 = clock()
    local res, qerr = pg:query(SQL)
    local dt = clock() - t0
    if not res or not res[1] or res[1].x ~= 1 then
      pcall(pg.disconnect, pg)
      return fail("pgmoon query: " .. tostring(qerr))
    end
    record(QUERIES, dt)
  end
  local kok, kerr = pg:keepalive(60000, PGMOON_POOL)
  if not kok then return fail("pgmoon keepalive: " .. tostring(kerr)) end
  ngx.print("ok")
end

function M.query()
  local args = ngx.req.get_uri_args()
  local v, k = args.v, tonumber(args.k) or 100
  if v == "pgmoon_plain" then return q_pgmoon(k) end
  if not pools[v] then return fail("unknown variant " .. tostring(v)) end
  return q_rds(v, k)
end

-- connect + one query + keepalive, as Kong's Postgres strategy does per
-- request. Ours: rds.connect takes an idle connection from the module's
-- per-worker pool; pgmoon: the cosocket keepalive pool.

local function cycle_rds(v)
  local t0 = clock()
  local conn, err = rds.connect(CONFS[v])
  if not conn then return fail("connect " .. v .. ": " .. tostring(err)) end
  local res, qerr = conn:query(SQL)
  if not res or not res[1] or res[1].x ~= 1 then
    pcall(conn.close, conn)
    return fail("query " .. v .. ": " .. tostring(qerr))
  end
  local reused = conn:getreusedtimes()
  local ok, kerr = conn:keepalive()
  if not ok then return fail("keepalive " .. v .. ": " .. tostring(kerr)) end
  local t = cycle_times(v)
  record(t, clock() - t0)
  if reused == 0 then t.new_conns = t.new_conns + 1 end
  ngx.print("ok")
end

local function cycle_pgmoon(v, cfg)
  local driver = DRIVERS[v]
  if not driver then return fail("pgmoon not present") end
  local t0 = clock()
  -- as Kong's connector (reconnect, setkeepalive) does per query
  local pg = driver.new(cfg)
  pg.convert_null = true
  pg.NULL = ngx.null
  pg:settimeout(5000)
  local ok, err = pg:connect()
  if not ok then return fail("pgmoon connect: " .. tostring(err)) end
  local reused = pg.sock:getreusedtimes()
  local res, qerr = pg:query(SQL)
  if not res or not res[1] or res[1].x ~= 1 then
    pcall(pg.disconnect, pg)
    return fail("pgmoon query: " .. tostring(qerr))
  end
  local kok, kerr = pg:keepalive(60000, PGMOON_POOL)
  if not kok then return fail("pgmoon keepalive: " .. tostring(kerr)) end
  local t = cycle_times(v)
  record(t, clock() - t0)
  if reused == 0 then t.new_conns = t.new_conns + 1 end
  ngx.print("ok")
end

function M.cycle()
  local v = ngx.req.get_uri_args().v
  if PG_CFGS[v] then return cycle_pgmoon(v, PG_CFGS[v]) end
  if not CONFS[v] then return fail("unknown variant " .. tostring(v)) end
  return cycle_rds(v)
end

-- The first row's types as both drivers should give them.
local function check_rows(res)
  if type(res) ~= "table" or #res ~= DECODE_ROWS then
    return "expected " .. DECODE_ROWS .. " rows, got " .. (type(res) == "table" and #res or tostring(res))
  end
  local r = res[DECODE_ROWS]
  if r.id ~= DECODE_ROWS or type(r.big) ~= "number" or type(r.name) ~= "string" or type(r.flag) ~= "boolean"
      or type(r.score) ~= "number" or type(r.created) ~= "string" then
    return "unexpected row: " .. cjson.encode(r)
  end
  return nil
end

-- One 10,000-row query on a pooled connection, timed around query() only;
-- a full GC first so that every measurement starts from the same heap (the
-- GC work the decode itself causes is in the time).
function M.decode()
  local v = ngx.req.get_uri_args().v
  local res, err, dt, reused
  if v == "pgmoon_plain" then
    if not pgmoon then return fail("pgmoon not present") end
    local pg = pgmoon.new(pg_cfg)
    local ok, cerr = pg:connect()
    if not ok then return fail("pgmoon connect: " .. tostring(cerr)) end
    collectgarbage()
    local t0 = clock()
    res, err = pg:query(DECODE_SQL)
    dt = clock() - t0
    if not res then
      pcall(pg.disconnect, pg)
      return fail("pgmoon decode query: " .. tostring(err))
    end
    reused = pg.sock:getreusedtimes()
    local kok, kerr = pg:keepalive(60000, PGMOON_POOL)
    if not kok then return fail("pgmoon keepalive: " .. tostring(kerr)) end
  elseif CONFS[v] then
    local conn, cerr = rds.connect(CONFS[v])
    if not conn then return fail("connect " .. v .. ": " .. tostring(cerr)) end
    collectgarbage()
    local t0 = clock()
    res, err = conn:query(DECODE_SQL)
    dt = clock() - t0
    if not res then
      pcall(conn.close, conn)
      return fail("decode query " .. v .. ": " .. tostring(err))
    end
    reused = conn:getreusedtimes()
    local kok, kerr = conn:keepalive()
    if not kok then return fail("keepalive " .. v .. ": " .. tostring(kerr)) end
  else
    return fail("unknown variant " .. tostring(v))
  end
  local bad = check_rows(res)
  if bad then return fail(v .. ": " .. bad) end
  local rows = #res
  res = nil -- luacheck: ignore
  reply(200, { us = dt * 1e6, rows = rows, reused = reused, kb = collectgarbage("count") })
end

-- Closes the idle connections of the module's own pool for variant v:
-- check out (LIFO) and close until a new one (reused 0) comes, which is
-- closed too.
local function pool_drain(v)
  local closed = 0
  for _ = 1, 1000 do
    local conn = rds.connect(CONFS[v])
    if not conn then break end
    local reused = conn:getreusedtimes()
    conn:close()
    if reused == 0 then break end
    closed = closed + 1
  end
  return closed
end

function M.pooldrain()
  local v = ngx.req.get_uri_args().v
  reply(200, { closed = CONFS[v] and pool_drain(v) or 0 })
end

function M.reset()
  QUERIES.n, QUERIES.count = 0, 0
  for _, t in pairs(cycles) do
    t.n, t.count, t.new_conns = 0, 0, 0
  end
  reply(200, { ok = true })
end

-- The q-th quantile (0..1) of a sorted Lua array, nearest rank.
local function quantile(sorted, q)
  local n = #sorted
  if n == 0 then return nil end
  local i = math.max(1, math.min(n, math.ceil(q * n)))
  return sorted[i]
end

local function summary(buf, n)
  local t = {}
  for i = 0, n - 1 do t[i + 1] = buf[i] end
  table.sort(t)
  local sum = 0
  for i = 1, n do sum = sum + t[i] end
  return {
    n = n,
    p50_us = (quantile(t, 0.5) or 0) * 1e6,
    p99_us = (quantile(t, 0.99) or 0) * 1e6,
    p999_us = (quantile(t, 0.999) or 0) * 1e6,
    mean_us = n > 0 and sum / n * 1e6 or 0,
  }
end

function M.stats()
  local v = ngx.req.get_uri_args().v
  local t = v and (cycles[v] or new_times(1)) or QUERIES
  local out = summary(t.buf, t.n)
  out.queries = t.count
  out.new_conns = t.new_conns
  local s1 = stats_now()
  if s1 then
    out.io_thread = s1.io_thread
    out.jobs = tonumber(s1.jobs)
  end
  reply(200, out)
end

function M.drain()
  local v = ngx.req.get_uri_args().v
  local closed = 0
  if PG_CFGS[v] then
    local driver = DRIVERS[v]
    if driver then
      -- Take the pooled sockets one by one (LIFO) and close them; stop at
      -- the first new one (reused 0), which is closed too.
      for _ = 1, PGMOON_POOL + 1 do
        local pg = driver.new(PG_CFGS[v])
        if not pg:connect() then break end
        local reused = pg.sock:getreusedtimes()
        pg:disconnect()
        if reused == 0 then break end
        closed = closed + 1
      end
    end
  elseif pools[v] then
    local pool = pools[v]
    for i = #pool, 1, -1 do
      pcall(pool[i].close, pool[i])
      pool[i] = nil
      closed = closed + 1
    end
    -- connections over a cosocket went back to the module's pool instead
    closed = closed + pool_drain(v)
  end
  reply(200, { closed = closed })
end

function M.nop()
  local n = tonumber(ngx.req.get_uri_args().n) or 20000
  local nop = rds._nop
  if type(nop) ~= "function" then return reply(200, { missing = true }) end
  for _ = 1, 200 do nop() end -- warm-up: first jobs, JIT
  local buf = ffi.new("double[?]", n)
  local t_all = clock()
  for i = 0, n - 1 do
    local t0 = clock()
    nop()
    buf[i] = clock() - t0
  end
  t_all = clock() - t_all
  local out = summary(buf, n)
  out.wall_per_call_us = t_all / n * 1e6
  local s1 = stats_now()
  out.jobs = s1 and tonumber(s1.jobs)
  out.io_thread = s1 and s1.io_thread
  reply(200, out)
end

function M.info()
  local s = stats_now()
  reply(200, {
    has_nop = type(rds._nop) == "function",
    has_stats = type(rds.stats) == "function",
    stats = s,
    io_thread = s and s.io_thread,
    pgmoon = pgmoon ~= nil,
    pgmoon_version = pgmoon and pgmoon.VERSION,
    module_version = rds.version,
    ngx_lua_version = ngx.config.ngx_lua_version,
    nginx_version = ngx.config.nginx_version,
    jit = jit and jit.version,
    yield_env = E "KONG_RDS_IAM_YIELD",
    phase = ngx.get_phase(),
  })
end

return M
