-- The keep-alive pool inside a real nginx (the yielding path), against the
-- local RDS emulator: kong_rds_iam.pgmoon driven as Kong's connector drives
-- it (session SETs on a new physical connection only, reuse across requests
-- of one worker, one IAM login for two requests), backlog waits that yield
-- and a backlog that overflows at once, nothing pooled in the nginx master
-- (init_by_lua), idle connections reaped by the I/O thread without another
-- pool access, a connection in a transaction not pooled, one the server
-- closed while idle replaced at checkout (reused 0, and no stray dial to the
-- server), idle connections past pg_pool_size closed at once, and a soak of
-- 10,000 requests over 2 workers (connections opened, fds, threads, RSS,
-- no backend left in a transaction). The blocking path is in pool_spec.
--
-- Needs root (the RDS emulator), Debian's nginx-light, libnginx-mod-http-lua,
-- lua-resty-core and python3 (the concurrent HTTP client). Traffic stays on
-- 127.0.0.1. Timing bounds assume a 2-core machine without other heavy work.
local nginx = require "spec.support.nginx"
local emu = require "spec.support.emulator"
local util = require "spec.support.util"
local test_env = require "spec.support.test_env"
local tcp_forward = require "spec.support.tcp_forward"
local cjson = require "cjson"

local quote, read_file, write_file = util.shell_quote, util.read_file, util.write_file

local exists = util.exists

if nginx.missing() then
  describe("the keep-alive pool in nginx", function() pending(nginx.missing()) end)
  return
end

local loaded, rds = pcall(require, "kong_rds_iam")
if not (loaded and type(rds) == "table" and type(rds.stats) == "function") then
  describe("the keep-alive pool in nginx", function()
    it("needs the build with the pool (rds.stats)", function()
      error(loaded and "require('kong_rds_iam').stats is missing" or ("cannot load kong_rds_iam: " .. tostring(rds)))
    end)
  end)
  return
end

---------------------------------------------------------------- helpers --

local PYTHON = exists("/usr/bin/python3") and "/usr/bin/python3" or "python3"
local REGION = "us-east-1"

-- Soak bounds.
local SOAK_REQUESTS = 10000
local SOAK_CLIENTS = 50
local SOAK_TIME_LIMIT = 60      -- s: the soak stops there even if not done
local SOAK_POOL_SIZE = 10
local SOAK_BACKLOG = 100
local WARMUP_REQUESTS = 400
local WARM_WAITERS = 60         -- concurrent yielding calls per worker in the 2nd warm-up
local MAX_FD_GROWTH = 5
local MAX_RSS_GROWTH_KB = 20 * 1024

local measured = {}             -- numbers reported at the end

local merge = util.merge

local sh = util.sh

local count = util.count

-- Credentials only the nginx master's environment has; the emulator learns them.
local AKID, SECRET, SESSION, MASTER_ENV = test_env.master_credentials("pn")

-- A concurrent HTTP/1.0 client (a new TCP connection per request). argv[1]: JSON.
--   {"mode": "batch", "port", "paths": [...], "timeout"}: one thread per
--     path, all released at once; prints {"wall", "results": [{path, status,
--     body, err, t0, t1}]} (times in s since the release).
--   {"mode": "soak", "port", "path", "clients", "total", "duration", "timeout"}:
--     `clients` threads share `total` requests and stop after `duration` s;
--     prints {"requests", "ok", "statuses", "bad" (first 20), "wall", "p50",
--     "p99", "max"}; a request is ok when it answers 200 "ok\n".
local CLIENT_PY = [=[
import json, socket, sys, threading, time

def request(port, path, timeout):
    out = {"path": path, "t0": time.monotonic()}
    try:
        conn = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            conn.sendall(("GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" % path).encode())
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            conn.close()
        head, _, body = data.partition(b"\r\n\r\n")
        words = head.split(b" ", 2)
        out["status"] = int(words[1]) if head.startswith(b"HTTP/") and len(words) > 1 else None
        out["body"] = body.decode("utf-8", "replace")
    except Exception as exc:
        out["err"] = repr(exc)
    out["t1"] = time.monotonic()
    return out

def batch(spec):
    paths = spec["paths"]
    results = [None] * len(paths)
    gate = threading.Barrier(len(paths) + 1)
    def run(i):
        gate.wait()
        results[i] = request(spec["port"], paths[i], spec.get("timeout", 30))
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    gate.wait()
    start = time.monotonic()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    for r in results:
        r["t0"] -= start
        r["t1"] -= start
    return {"wall": wall, "results": results}

def soak(spec):
    lock = threading.Lock()
    state = {"issued": 0, "requests": 0, "ok": 0, "statuses": {}, "bad": [], "lat": []}
    start = time.monotonic()
    stop = start + spec["duration"]
    def run():
        while True:
            with lock:
                if state["issued"] >= spec["total"] or time.monotonic() >= stop:
                    return
                state["issued"] += 1
            r = request(spec["port"], spec["path"], spec.get("timeout", 20))
            good = r.get("status") == 200 and r.get("body") == "ok\n"
            with lock:
                state["requests"] += 1
                key = str(r.get("status"))
                state["statuses"][key] = state["statuses"].get(key, 0) + 1
                state["lat"].append(r["t1"] - r["t0"])
                if good:
                    state["ok"] += 1
                elif len(state["bad"]) < 20:
                    r["body"] = r.get("body", "")[:300]
                    state["bad"].append(r)
    threads = [threading.Thread(target=run) for _ in range(spec["clients"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    lat = sorted(state.pop("lat")) or [0]
    state.update(wall=wall, p50=lat[len(lat) // 2], p99=lat[min(len(lat) - 1, int(len(lat) * 0.99))], max=lat[-1])
    return state

spec = json.loads(sys.argv[1])
print(json.dumps(batch(spec) if spec["mode"] == "batch" else soak(spec)))
]=]

local tmp_dir, client_path

local function client(spec)
  local out = sh(("%s %s %s 2>&1"):format(PYTHON, quote(client_path), quote(cjson.encode(spec))))
  local ok, res = pcall(cjson.decode, out)
  assert(ok and type(res) == "table", "http client failed: " .. out)
  return res
end

--- All paths requested at once; results with each body decoded (as `json`).
local function burst(n, paths, timeout)
  local res = client { mode = "batch", port = n.port, paths = paths, timeout = timeout or 30 }
  for _, r in ipairs(res.results) do
    assert(r.status == 200, ("%s: status %s, err %s, body %s"):format(r.path, tostring(r.status),
      tostring(r.err), tostring(r.body)))
    local ok, t = pcall(cjson.decode, r.body)
    assert(ok and type(t) == "table", "not JSON: " .. tostring(r.body))
    r.json = t
  end
  return res
end

local function soak(n, total, duration)
  return client { mode = "soak", port = n.port, path = "/soak", clients = SOAK_CLIENTS, total = total,
                  duration = duration, timeout = 20 }
end

local function get_json(n, path, timeout)
  local status, body = n:get(path, timeout)
  assert(status, body)
  assert.equal(200, status, body)
  local ok, t = pcall(cjson.decode, body)
  assert(ok and type(t) == "table", "not JSON: " .. tostring(body))
  return t
end

--- Polls fn() every `interval` s until it returns a truthy value or
--- `timeout` s pass; returns its last result.
local function wait_for(fn, timeout, interval)
  local deadline = nginx.now() + timeout
  local r = fn()
  while not r and nginx.now() < deadline do
    nginx.sleep(interval or 0.05)
    r = fn()
  end
  return r
end

--- Whether PostgreSQL has a backend with this pid.
local function backend_exists(e, pid)
  local out = assert(e:psql(("select count(*) from pg_stat_activity where pid = %d"):format(pid)))
  return tonumber(out) > 0
end

local function backend_state(e, pid)
  return assert(e:psql(("select coalesce(state, '') || '|' || coalesce(usename, '') || '|' || "
    .. "coalesce(application_name, '') from pg_stat_activity where pid = %d"):format(pid)))
end

local function fd_count(pid)
  local n = 0
  for _ in sh("ls -1 /proc/" .. pid .. "/fd 2>/dev/null"):gmatch("[^\n]+") do n = n + 1 end
  return n
end

--- What the fds of pid are: { total =, unix =, tcp_pg = (to the database),
--- tcp_listen =, tcp_other =, other = }, and a one-line summary.
local function fd_kinds(pid, pg_port)
  local inodes = {}
  for line in sh("ls -l /proc/" .. pid .. "/fd 2>/dev/null"):gmatch("[^\n]+") do
    local target = line:match("%-> (.*)$")
    if target then inodes[#inodes + 1] = target end
  end
  local tcp = {}
  for _, f in ipairs { "/proc/" .. pid .. "/net/tcp", "/proc/" .. pid .. "/net/tcp6" } do
    for line in (read_file(f) or ""):gmatch("[^\n]+") do
      local lport, rport, st, inode = line:match("^%s*%d+:%s+%x+:(%x+)%s+%x+:(%x+)%s+(%x+)%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+(%d+)")
      if inode then tcp[inode] = { lport = tonumber(lport, 16), rport = tonumber(rport, 16), state = st } end
    end
  end
  local unix = {}
  for line in (read_file("/proc/net/unix") or ""):gmatch("[^\n]+") do
    local inode, path = line:match("^%x+: %x+ %x+ %x+ %x+ %x+%s+(%d+)%s*(.*)$")
    if inode then unix[inode] = path end
  end
  local k = { total = #inodes, unix = 0, unix_wake = 0, tcp_pg = 0, tcp_listen = 0, tcp_other = 0, other = 0 }
  for _, target in ipairs(inodes) do
    local inode = target:match("^socket:%[(%d+)%]$")
    if inode and tcp[inode] then
      local t = tcp[inode]
      if t.state == "0A" then k.tcp_listen = k.tcp_listen + 1
      elseif t.rport == pg_port then k.tcp_pg = k.tcp_pg + 1
      else k.tcp_other = k.tcp_other + 1 end
    elseif inode and unix[inode] then
      if unix[inode]:find("kong_rds_iam", 1, true) then k.unix_wake = k.unix_wake + 1 else k.unix = k.unix + 1 end
    else
      k.other = k.other + 1
    end
  end
  local summary = ("total %d: pg %d, wake unix %d (named side), other unix %d, listen %d, other tcp %d, other %d")
    :format(k.total, k.tcp_pg, k.unix_wake, k.unix, k.tcp_listen, k.tcp_other, k.other)
  return k, summary
end

local function rss_kb(pid)
  return tonumber(((read_file("/proc/" .. pid .. "/status") or ""):match("VmRSS:%s*(%d+)")))
end

local function assert_clean_log(n)
  local log = n:error_log()
  for _, bad in ipairs { "panicked", "exited on signal", "attempt to yield across", "[alert]", "[emerg]",
                         "[crit]", "runtime error" } do
    assert.is_nil(log:find(bad, 1, true), ("%q in error.log:\n%s"):format(bad, log:sub(-4000)))
  end
  assert.is_nil(log:find(SECRET, 1, true), "secret key in error.log")
  assert.is_nil(log:find(SESSION, 1, true), "session token in error.log")
  assert.is_nil(log:find("X-Amz-Signature", 1, true), "a token in error.log")
end

-------------------------------------------------------- code in nginx --

-- prefix/lua/pn.lua; pnconf.lua next to it holds the confs.
local PN_LUA = [==[
local rds = require "kong_rds_iam"
local pgmoon = require "kong_rds_iam.pgmoon"
local cjson = require "cjson.safe"
local confs = require "pnconf"

local M = { confs = confs }

local function now()
  ngx.update_time()
  return ngx.now()
end

function M.reply(t)
  t.worker_pid = ngx.worker.pid()
  ngx.header.content_type = "application/json"
  ngx.say(cjson.encode(t))
end

function M.label(conf)
  local l = ("%s@%s:%d/%s"):format(conf.pg_user, conf.pg_host, conf.pg_port, conf.pg_database)
  if conf.pg_schema then l = l .. "/" .. conf.pg_schema end
  return l
end

function M.figures(conf)
  return rds.stats().pool[M.label(conf)]
end

function M.stats()
  local s = rds.stats()
  return { jobs = s.jobs, io_thread = s.io_thread, pool = s.pool, pid = ngx.worker.pid() }
end

-- Kong's connector, reduced: new, convert_null, NULL, settimeout, connect,
-- session SETs on a new physical connection only, a query, keepalive.
function M.kong_like(who)
  local opts = confs.pgmoon[who]
  local out = { who = who, phase = ngx.get_phase() }
  local pg = pgmoon.new(opts)
  pg.convert_null = true
  pg.NULL = ngx.null
  out.sock_type = pg.sock_type
  pg:settimeout(5000)
  local ok, err = pg:connect()
  if not ok then
    out.connect_err = err
    return out
  end
  out.reused = pg.sock:getreusedtimes()
  if out.reused == 0 then
    local res, serr = pg:query("SET TIME ZONE 'Pacific/Chatham'; SET application_name = 'pn_kong_" .. who .. "'")
    out.set_ok = res ~= nil
    if not res then out.set_err = serr end
  end
  local rows, qerr = pg:query("select pg_backend_pid() as bp, current_setting('TimeZone') as tz, "
    .. "current_setting('application_name') as app, current_user as u, ssl_is_used() as tls, null::text as n, "
    .. "9007199254740993::int8 as big, 26::oid as o")
  if not rows then
    out.query_err = qerr
  else
    local row = rows[1]
    out.bp, out.tz, out.app, out.user, out.tls = row.bp, row.tz, row.app, row.u, row.tls
    out.null_is_ngx_null = rawequal(row.n, ngx.null)
    -- pgmoon's types (int8 a number, oid text), a pooled object's too
    out.big_type, out.oid = type(row.big), row.o
  end
  local kok, kerr = pg:keepalive()
  out.keepalive, out.keepalive_err = kok, kerr
  out.figures = rds.stats().pool[M.label { pg_user = opts.user, pg_host = opts.host, pg_port = opts.port,
                                           pg_database = opts.database }]
  return out
end

-- connect (timed), pg_sleep, keepalive.
function M.cycle(key, sleep)
  local conf = confs[key]
  local out = { key = key }
  local t0 = now()
  local c, err = rds.connect(conf)
  out.connect_ms = (now() - t0) * 1000
  if c == nil then
    out.conn_nil, out.err, out.err_type = true, err, type(err)
    out.ms = out.connect_ms
    return out
  end
  out.reused = c:getreusedtimes()
  local res, qerr = c:query(("select pg_sleep(%.3f) as s, pg_backend_pid() as bp"):format(tonumber(sleep) or 0))
  out.ok = res ~= nil
  if not res then out.query_err = qerr end
  out.bp = res and res[1].bp
  out.keepalive, out.keepalive_err = c:keepalive()
  out.ms = (now() - t0) * 1000
  return out
end

-- `n` connections of the evict conf (pg_pool_size = 2) open at once, each
-- with its backend pid, then given back one after another.
function M.evict(n)
  local out, conns = { bps = {}, keepalive = {} }, {}
  for i = 1, tonumber(n) do
    local c, err = rds.connect(confs.evict)
    if not c then
      out.err = "connect: " .. tostring(err)
      return out
    end
    local res, qerr = c:query("select pg_backend_pid() as bp")
    if not res then
      out.err = "query: " .. tostring(qerr)
      return out
    end
    conns[i], out.bps[i] = c, res[1].bp
  end
  for i = 1, #conns do
    local ok, kerr = conns[i]:keepalive()
    out.keepalive[i] = ok or tostring(kerr)
  end
  out.figures = M.figures(confs.evict)
  return out
end

-- `n` pooled cycles (connect, query, keepalive) of conf `key`, and how many
-- jobs went to the I/O thread meanwhile.
function M.job_cycles(key, n)
  local conf = confs[key]
  local warm = M.cycle(key, 0)
  local before = rds.stats().jobs_submitted
  local reused, ok = 0, 0
  for _ = 1, tonumber(n) do
    local r = M.cycle(key, 0)
    if r.ok and r.keepalive then ok = ok + 1 end
    if (r.reused or 0) > 0 then reused = reused + 1 end
  end
  local c = assert(rds.connect(conf))
  local cosocket = c:_is_cosocket()
  c:keepalive()
  return { warm = warm, jobs = rds.stats().jobs_submitted - before, ok = ok, reused = reused, cosocket = cosocket }
end

-- In init_by_lua (the master): connect, keepalive, what the pool says.
function M.in_master()
  local conf = confs.master
  local out = { phase = ngx.get_phase() }
  local c, err = rds.connect(conf)
  if not c then
    out.connect_err = err
    return out
  end
  out.reused = c:getreusedtimes()
  local res, qerr = c:query("select pg_backend_pid() as bp")
  out.bp = res and res[1].bp
  if not res then out.query_err = qerr end
  local ok, kerr = c:keepalive()
  out.keepalive, out.keepalive_err = ok, kerr
  out.figures = M.figures(conf)
  out.has_pool_entry = out.figures ~= nil
  return out
end

-- The same conf in a worker.
function M.in_worker()
  local conf = confs.master
  local out = {}
  local c, err = rds.connect(conf)
  if not c then
    out.connect_err = err
    return out
  end
  out.reused = c:getreusedtimes()
  local res, qerr = c:query("select pg_backend_pid() as bp")
  out.bp = res and res[1].bp
  if not res then out.query_err = qerr end
  out.keepalive, out.keepalive_err = c:keepalive()
  out.figures = M.figures(conf)
  return out
end

-- connect, keepalive(200): the I/O thread must reap it.
function M.reap_start()
  local conf = confs.reap
  local out = {}
  local c, err = rds.connect(conf)
  if not c then
    out.connect_err = err
    return out
  end
  out.reused = c:getreusedtimes()
  local res, qerr = c:query("select pg_backend_pid() as bp")
  out.bp = res and res[1].bp
  if not res then out.query_err = qerr end
  out.keepalive, out.keepalive_err = c:keepalive(200)
  out.figures = M.figures(conf)
  return out
end

-- begin; keepalive; connect again.
-- Kong's per-query steps through kong_rds_iam.pgmoon, `n` times in one
-- request, with LuaJIT's trace log (jit.v) written to `path`: their code
-- must compile, or Kong's every query runs in the interpreter.
function M.jit_log(path, n)
  local v = require "jit.v"
  v.start(path)
  local out = { runs = 0 }
  for _ = 1, tonumber(n) do
    local pg = pgmoon.new(confs.pgmoon.pw)
    pg.convert_null = true
    pg.NULL = ngx.null
    pg:settimeout(5000)
    local ok, err = pg:connect()
    if not ok then out.err = err break end
    local reused = pg.sock:getreusedtimes()
    local res, qerr = pg:query("select 1 as x")
    if not res then out.err = qerr break end
    pg:keepalive()
    out.runs, out.reused = out.runs + 1, reused
  end
  v.off()
  return out
end

-- rds._frozen (kong_rds_iam.pgmoon freezes the confs it builds): a
-- yielding connect reuses a frozen conf's parse without reading the table
-- again, so a change made to it afterwards is not seen; the same change to
-- a conf that is not frozen is.
function M.frozen()
  local frozen, plain = {}, {}
  for k, v in pairs(confs.tmo) do frozen[k], plain[k] = v, v end
  frozen.pg_schema, plain.pg_schema = "pn_frozen", "pn_frozen_plain"
  assert(rds._frozen(frozen) == frozen)
  assert(assert(rds.connect(frozen)):keepalive())
  assert(assert(rds.connect(plain)):keepalive())
  frozen.pg_database, plain.pg_database = "pn_no_such_db", "pn_no_such_db"
  local out = {}
  local c, err = rds.connect(frozen)
  out.frozen_ok, out.frozen_err = c ~= nil, err
  out.frozen_reused = c and c:getreusedtimes()
  if c then c:close() end
  c, err = rds.connect(plain)
  out.plain_ok, out.plain_err = c ~= nil, err
  if c then c:close() end
  return out
end

-- conn:settimeout on a pooled checkout over a cosocket bounds its next
-- query (the cosocket came from nginx's pool with pg_timeout's 5000 ms);
-- a pooled checkout and query without one keep pg_timeout.
function M.timeout()
  local conf = confs.tmo
  local out = {}
  local function query(c, sql)
    local t0 = now()
    local res, err = c:query(sql)
    return res ~= nil, err, (now() - t0) * 1000
  end
  local c = assert(rds.connect(conf))
  assert(c:query("select 1"))
  assert(c:keepalive())
  c = assert(rds.connect(conf))
  out.reused = c:getreusedtimes()
  out.plain_ok, out.plain_err, out.plain_ms = query(c, "select pg_sleep(0.3)")
  assert(c:keepalive())
  c = assert(rds.connect(conf))
  out.reused2 = c:getreusedtimes()
  c:settimeout(150)
  out.short_ok, out.short_err, out.short_ms = query(c, "select pg_sleep(2)")
  c = assert(rds.connect(conf))
  out.after_reused = c:getreusedtimes()
  out.after_ok, out.after_err = query(c, "select 1")
  assert(c:keepalive())
  return out
end

function M.txn()
  local conf = confs.txn
  local out = {}
  local c, err = rds.connect(conf)
  if not c then
    out.connect_err = err
    return out
  end
  out.first_reused = c:getreusedtimes()
  local res, qerr = c:query("begin; select pg_backend_pid() as bp")
  out.begin_ok = res ~= nil
  if not res then out.begin_err = qerr end
  out.first_bp = res and res[2] and res[2][1] and res[2][1].bp
  local ok, kerr = c:keepalive()
  out.keepalive_nil, out.keepalive, out.keepalive_err = ok == nil, ok, kerr
  local after, aerr = c:query("select 1 as one")
  out.after_keepalive, out.after_keepalive_err = after ~= nil, aerr
  local c2, err2 = rds.connect(conf)
  if not c2 then
    out.second_err = err2
    return out
  end
  out.second_reused = c2:getreusedtimes()
  local res2, qerr2 = c2:query("select pg_backend_pid() as bp")
  out.second_bp = res2 and res2[1].bp
  if not res2 then out.second_query_err = qerr2 end
  out.second_keepalive, out.second_keepalive_err = c2:keepalive()
  out.figures = M.figures(conf)
  return out
end

-- n light threads at once, each connect (soak conf), select 1, keepalive:
-- n concurrent yielding calls in this worker (n - pg_pool_size of them wait
-- in the backlog).
function M.warm(n)
  local threads, out = {}, { n = n, ok = 0, errors = {} }
  for i = 1, n do
    threads[i] = ngx.thread.spawn(function()
      local c, err = rds.connect(confs.soak)
      if not c then return nil, "connect: " .. tostring(err) end
      local res, qerr = c:query("select 1 as one")
      if not res then return nil, "query: " .. tostring(qerr) end
      local ok, kerr = c:keepalive()
      if not ok then return nil, "keepalive: " .. tostring(kerr) end
      return true
    end)
  end
  for i = 1, n do
    local ran, ok, err = ngx.thread.wait(threads[i])
    if ran and ok then out.ok = out.ok + 1 else out.errors[#out.errors + 1] = tostring(ok) .. " " .. tostring(err) end
  end
  return out
end

-- The soak request: connect, select 1, keepalive.
function M.soak()
  local c, err = rds.connect(confs.soak)
  if not c then
    ngx.status = 500
    ngx.say("connect: ", err)
    return
  end
  local res, qerr = c:query("select 1 as one")
  if not res or res[1].one ~= 1 then
    ngx.status = 500
    ngx.say("query: ", tostring(qerr))
    c:close()
    return
  end
  local ok, kerr = c:keepalive()
  if not ok then
    ngx.status = 500
    ngx.say("keepalive: ", tostring(kerr))
    return
  end
  ngx.say("ok")
end

return M
]==]

local function pnconf_lua(e, fwd)
  local pw = { pg_host = "127.0.0.1", pg_port = e.port, pg_user = "pw_scram", pg_password = e.users.pw_scram,
               pg_database = e.db, pg_timeout = 5000, pg_ssl = true, pg_ssl_required = true,
               pg_ssl_verify = true, pg_ssl_cafile = e.ca }
  local confs = {
    pgmoon = {
      pw = { host = "127.0.0.1", port = e.port, database = e.db, user = "pw_scram", password = e.users.pw_scram,
             ssl = true, ssl_required = true, ssl_verify = true, cafile = e.ca },
      iam = { host = "127.0.0.1", port = e.port, database = e.db, user = e.iam_users[1],
              iam_auth = true, iam_auth_region = REGION, ssl_verify = true, cafile = e.ca },
    },
    b5 = merge(pw, { pg_schema = "pn_backlog5", pg_pool_size = 2, pg_backlog = 5 }),
    b1 = merge(pw, { pg_schema = "pn_backlog1", pg_pool_size = 2, pg_backlog = 1 }),
    master = merge(pw, { pg_schema = "pn_master" }),
    reap = merge(pw, { pg_schema = "pn_reap" }),
    txn = merge(pw, { pg_schema = "pn_txn" }),
    tmo = merge(pw, { pg_schema = "pn_tmo" }),
    -- through a forwarder that counts the connections dialled
    dead = merge(pw, { pg_schema = "pn_dead", pg_port = fwd.port }),
    evict = merge(pw, { pg_schema = "pn_evict", pg_pool_size = 2 }),
    jobs = merge(pw, { pg_schema = "pn_jobs" }),
    jobs_thread = merge(pw, { pg_schema = "pn_jobs", pg_cosocket = false }),
    soak = merge(pw, { pg_pool_size = SOAK_POOL_SIZE, pg_backlog = SOAK_BACKLOG }),
  }
  return util.lua_returning(confs), confs
end

local HTTP = [[
lua_shared_dict pn 1m;
init_by_lua_block {
  require "kong_rds_iam"
  local pn = require "pn"
  ngx.shared.pn:set("init", require("cjson").encode(pn.in_master()))
}
]]

local SERVER = [[
    location = /stats { content_by_lua_block { local pn = require "pn"; pn.reply(pn.stats()) } }
    location = /kong_like { content_by_lua_block { local pn = require "pn"; pn.reply(pn.kong_like(ngx.var.arg_who)) } }
    location = /job_cycles { content_by_lua_block { local pn = require "pn"
      pn.reply(pn.job_cycles(ngx.var.arg_key, ngx.var.arg_n)) } }
    location = /cycle { content_by_lua_block { local pn = require "pn"
      pn.reply(pn.cycle(ngx.var.arg_key, ngx.var.arg_s)) } }
    location = /evict { content_by_lua_block { local pn = require "pn"; pn.reply(pn.evict(ngx.var.arg_n)) } }
    location = /init_result { content_by_lua_block { local pn = require "pn"
      pn.reply({ init = require("cjson").decode(ngx.shared.pn:get("init") or "null") }) } }
    location = /in_worker { content_by_lua_block { local pn = require "pn"; pn.reply(pn.in_worker()) } }
    location = /reap_start { content_by_lua_block { local pn = require "pn"; pn.reply(pn.reap_start()) } }
    location = /txn { content_by_lua_block { local pn = require "pn"; pn.reply(pn.txn()) } }
    location = /timeout { content_by_lua_block { local pn = require "pn"; pn.reply(pn.timeout()) } }
    location = /frozen { content_by_lua_block { local pn = require "pn"; pn.reply(pn.frozen()) } }
    location = /jit_log { content_by_lua_block { local pn = require "pn"
      pn.reply(pn.jit_log(ngx.var.arg_path, ngx.var.arg_n)) } }
    location = /soak { content_by_lua_block { require("pn").soak() } }
    location = /warm { content_by_lua_block { local pn = require "pn"; pn.reply(pn.warm(tonumber(ngx.var.arg_n))) } }
]]

------------------------------------------------------------------ specs --

describe("the keep-alive pool in nginx", function()
  local e, fwd, confs

  setup(function()
    tmp_dir = (sh("mktemp -d /tmp/pn-spec.XXXXXXXX"):gsub("%s+$", ""))
    client_path = write_file(tmp_dir .. "/client.py", CLIENT_PY)
    e = assert(emu.start { region = REGION })
    assert(e:add_key(AKID, SECRET, SESSION, os.time() + 3600))
    fwd = tcp_forward.start("127.0.0.1", e.port)
  end)

  teardown(function()
    if fwd then fwd:stop() end
    if e then e:stop() end
    if tmp_dir and tmp_dir:match("^/tmp/pn%-spec%.") then sh("rm -rf " .. quote(tmp_dir)) end
    local parts = {}
    for k, v in pairs(measured) do
      parts[#parts + 1] = ("%s=%s"):format(k, type(v) == "number" and ("%.3f"):format(v) or tostring(v))
    end
    table.sort(parts)
    io.stderr:write("\npool_nginx_spec measurements: ", table.concat(parts, " "), "\n")
  end)

  local function start(o)
    local text
    text, confs = pnconf_lua(e, fwd)
    local n, err = nginx.start(merge({
      workers = 1, env = MASTER_ENV, http = HTTP, server = SERVER,
      files = { ["lua/pn.lua"] = PN_LUA, ["lua/pnconf.lua"] = text },
    }, o))
    assert(n, err)
    return n
  end

  local function label(conf)
    local l = ("%s@%s:%d/%s"):format(conf.pg_user, conf.pg_host, conf.pg_port, conf.pg_database)
    if conf.pg_schema then l = l .. "/" .. conf.pg_schema end
    return l
  end

  local function figures(n, key)
    return get_json(n, "/stats").pool[label(confs[key])]
  end

  describe("in one worker", function()
    local n

    setup(function()
      n = start {}
    end)

    teardown(function()
      if n then n:stop() end
    end)

    for _, who in ipairs { "pw", "iam" } do
      it(("kong_rds_iam.pgmoon as Kong's connector uses it (%s): SETs once, the session reused by the next request"):format(who), function()
        assert(e:clear_log())
        local r1 = get_json(n, "/kong_like?who=" .. who)
        local r2 = get_json(n, "/kong_like?who=" .. who)
        local user = who == "iam" and e.iam_users[1] or "pw_scram"
        for i, r in ipairs { r1, r2 } do
          local what = ("request %d: %s"):format(i, cjson.encode(r))
          assert.is_nil(r.connect_err, what)
          assert.is_nil(r.query_err, what)
          assert.equal("content", r.phase, what)
          assert.equal("nginx", r.sock_type, what)
          assert.equal(user, r.user, what)
          assert.is_true(r.tls, what)
          assert.is_true(r.null_is_ngx_null, what)
          assert.same({ "number", "26" }, { r.big_type, r.oid }, what)
          assert.is_true(r.keepalive, what)
          assert.is_nil(r.keepalive_err, what)
          assert.equal("Pacific/Chatham", r.tz, what)
          assert.equal("pn_kong_" .. who, r.app, what)
        end
        assert.equal(r1.worker_pid, r2.worker_pid)
        assert.equal(0, r1.reused, cjson.encode(r1))
        assert.is_true(r1.set_ok, cjson.encode(r1))
        assert.is_true(r2.reused > 0, cjson.encode(r2))
        assert.is_nil(r2.set_ok, "the second request ran the session SETs again")
        assert.equal(r1.bp, r2.bp, "not the same backend")
        -- the pool's figures, under "user@host:port/database"
        assert.is_table(r2.figures, "no pool entry " .. label { pg_user = user, pg_host = "127.0.0.1",
          pg_port = e.port, pg_database = e.db } .. ": " .. cjson.encode(get_json(n, "/stats")))
        assert.equal(1, r2.figures.opened, cjson.encode(r2.figures))
        assert.equal(1, r2.figures.reused, cjson.encode(r2.figures))
        assert.equal(1, r2.figures.idle, cjson.encode(r2.figures))
        assert.equal(0, r2.figures.busy, cjson.encode(r2.figures))
        -- the backend is the pooled session, idle, with its SET
        local state = backend_state(e, r2.bp)
        assert.equal("idle|" .. user .. "|pn_kong_" .. who, state)
        if who == "iam" then
          local log = e:log()
          assert.equal(1, count(log, 'akid="' .. AKID .. '" ACCEPT'), log)
          assert.equal(1, count(log, "ACCEPT"), log)
          assert.is_nil(log:find("REJECT", 1, true), log)
        end
      end)
    end

    it("a pooled connect, query and keepalive over a cosocket hand nothing to the I/O thread (pg_cosocket off: one job per query)", function()
      -- over a cosocket no job; the negative control, the I/O thread's
      -- socket (pg_cosocket off): a job per query
      for _, case in ipairs { { key = "jobs", cosocket = true, jobs = 0 }, { key = "jobs_thread", cosocket = false, jobs = 20 } } do
        local r = get_json(n, "/job_cycles?n=20&key=" .. case.key)
        assert.is_true(r.warm.ok, cjson.encode(r))
        assert.equal(case.cosocket, r.cosocket, cjson.encode(r))
        assert.equal(20, r.ok, cjson.encode(r))
        assert.equal(20, r.reused, cjson.encode(r))
        assert.equal(case.jobs, r.jobs, cjson.encode(r))
      end
    end)

    it("backlog: 6 concurrent requests with pg_pool_size = 2, pg_backlog = 5 wait (yielding) and reuse 2 connections", function()
      local paths = {}
      for i = 1, 6 do paths[i] = "/cycle?key=b5&s=0.3" end
      local res = burst(n, paths)
      local backends, reused = {}, 0
      for _, r in ipairs(res.results) do
        local t = r.json
        assert.is_true(t.ok, cjson.encode(t))
        assert.is_true(t.keepalive, cjson.encode(t))
        backends[t.bp] = true
        if t.reused > 0 then reused = reused + 1 end
      end
      local distinct = 0
      for _ in pairs(backends) do distinct = distinct + 1 end
      measured.backlog5_wall = res.wall
      assert.equal(2, distinct, "distinct backends")
      assert.equal(4, reused, "requests on a reused connection")
      -- 3 rounds of 0.3 s; serialised (blocking) it would be 1.8 s
      assert.is_true(res.wall >= 0.85, ("6 x 0.3 s through 2 connections took only %.3f s"):format(res.wall))
      assert.is_true(res.wall < 1.5, ("6 x 0.3 s through 2 connections took %.3f s"):format(res.wall))
      local f = figures(n, "b5")
      assert.is_table(f, cjson.encode(get_json(n, "/stats")))
      assert.equal(2, f.opened, cjson.encode(f))
      assert.equal(4, f.reused, cjson.encode(f))
      assert.equal(2, f.idle, cjson.encode(f))
      assert.equal(0, f.busy, cjson.encode(f))
      assert.equal(0, f.waiting, cjson.encode(f))
    end)

    it("backlog: with pg_backlog = 1, of 6 concurrent requests the overflow gets nil, 'too many waiting connect operations' at once", function()
      local paths = {}
      for i = 1, 6 do paths[i] = "/cycle?key=b1&s=0.3" end
      local res = burst(n, paths)
      local ok, refused, first_success, last_refusal = 0, 0, math.huge, 0
      for _, r in ipairs(res.results) do
        local t = r.json
        if t.conn_nil then
          refused = refused + 1
          assert.equal("too many waiting connect operations", t.err, cjson.encode(t))
          assert.is_true(t.connect_ms < 200, ("refused after %.1f ms"):format(t.connect_ms))
          last_refusal = math.max(last_refusal, r.t1)
        else
          assert.is_true(t.ok, cjson.encode(t))
          assert.is_true(t.keepalive, cjson.encode(t))
          ok = ok + 1
          first_success = math.min(first_success, r.t1)
        end
      end
      measured.backlog1_last_refusal_s = last_refusal
      -- at once: every refusal was answered before the first pg_sleep(0.3) ended
      assert.is_true(last_refusal < first_success,
        ("a refusal came %.3f s after the release, the first success at %.3f s"):format(last_refusal, first_success))
      measured.backlog1_ok, measured.backlog1_refused = ok, refused
      assert.equal(6, ok + refused)
      assert.is_true(refused >= 1, "no request was refused")
      -- 2 in use + 1 waiting at least
      assert.is_true(ok >= 3, ("only %d requests succeeded"):format(ok))
      local f = figures(n, "b1")
      assert.is_table(f, cjson.encode(get_json(n, "/stats")))
      assert.equal(2, f.opened, cjson.encode(f))
      assert.equal(ok - 2, f.reused, cjson.encode(f))
      assert.equal(0, f.waiting, cjson.encode(f))
      assert.equal(0, f.busy, cjson.encode(f))
    end)

    it("nothing is pooled in the nginx master (init_by_lua); the same conf pools in a worker", function()
      local init = get_json(n, "/init_result").init
      assert.is_table(init, "init_by_lua left no result")
      local what = cjson.encode(init)
      assert.equal("init", init.phase, what)
      assert.is_nil(init.connect_err, what)
      assert.is_nil(init.query_err, what)
      assert.equal(0, init.reused, what)
      assert.is_true(init.keepalive, what)
      assert.is_nil(init.keepalive_err, what)
      assert.is_true(init.has_pool_entry, "no pool entry for " .. label(confs.master) .. " in the master: " .. what)
      assert.equal(0, init.figures.idle, what)
      assert.equal(0, init.figures.busy, what)
      -- the master's session really ended
      assert.is_number(init.bp, what)
      assert.is_true(wait_for(function() return not backend_exists(e, init.bp) end, 2, 0.1),
        ("the master's backend %d still exists: %s"):format(init.bp, backend_state(e, init.bp)))

      local w = get_json(n, "/in_worker")
      what = cjson.encode(w)
      assert.is_nil(w.connect_err, what)
      assert.equal(0, w.reused, what)
      assert.is_true(w.keepalive, what)
      assert.is_table(w.figures, what)
      assert.equal(1, w.figures.idle, what)
      assert.equal("idle", backend_state(e, w.bp):match("^[^|]*"))
    end)

    it("an idle connection past its keepalive(200) is closed by the I/O thread, with no other pool access", function()
      local r = get_json(n, "/reap_start")
      local what = cjson.encode(r)
      assert.is_nil(r.connect_err, what)
      assert.equal(0, r.reused, what)
      assert.is_true(r.keepalive, what)
      assert.equal(1, r.figures.idle, what)
      assert.is_true(backend_exists(e, r.bp), "the pooled backend is not there")
      nginx.sleep(1.5)
      local f = figures(n, "reap")
      assert.equal(0, f.idle, cjson.encode(f))
      assert.is_true(f.closed >= 1, cjson.encode(f))
      assert.equal(1, f.opened, cjson.encode(f))
      assert.is_true(wait_for(function() return not backend_exists(e, r.bp) end, 1, 0.1),
        ("backend %d still exists after reaping: %s"):format(r.bp, backend_state(e, r.bp)))
    end)

    it("a connection in a transaction is not pooled: keepalive says 'connection in dubious state', the next connect is new", function()
      local r = get_json(n, "/txn")
      local what = cjson.encode(r)
      assert.is_nil(r.connect_err, what)
      assert.is_true(r.begin_ok, what)
      assert.is_number(r.first_bp, what)
      assert.is_true(r.keepalive_nil, what)
      assert.is_string(r.keepalive_err, what)
      assert.matches("^connection in dubious state", r.keepalive_err)
      assert.is_false(r.after_keepalive, what)
      assert.equal("closed", r.after_keepalive_err, what)
      assert.is_nil(r.second_err, what)
      assert.equal(0, r.second_reused, what)
      assert.is_nil(r.second_query_err, what)
      assert.not_equal(r.first_bp, r.second_bp, what)
      assert.is_true(r.second_keepalive, what)
      assert.equal(2, r.figures.opened, what)
      assert.equal(0, r.figures.reused, what)
      assert.is_true(r.figures.closed >= 1, what)
      assert.equal(1, r.figures.idle, what)
      assert.is_true(wait_for(function() return not backend_exists(e, r.first_bp) end, 2, 0.1),
        ("the backend left in a transaction still exists: %s"):format(backend_state(e, r.first_bp)))
      assert.equal("0", assert(e:psql("select count(*) from pg_stat_activity where state like 'idle in transaction%'")))
    end)

    it("conn:settimeout on a pooled checkout bounds its next query; one without keeps pg_timeout", function()
      local r = get_json(n, "/timeout")
      local what = cjson.encode(r)
      assert.is_true(r.reused > 0 and r.reused2 > r.reused, what)
      assert.is_true(r.plain_ok, what)
      assert.is_true(r.plain_ms >= 250, what)
      assert.is_false(r.short_ok, what)
      assert.equal("timeout", r.short_err:match("^timeout"), what)
      assert.is_true(r.short_ms < 1500, what)
      -- the timed-out session was closed, not pooled
      assert.equal(0, r.after_reused, what)
      assert.is_true(r.after_ok, what)
    end)

    it("kong_rds_iam.pgmoon's per-query steps compile in LuaJIT: no trace of them stops at an NYI", function()
      local path = tmp_dir .. "/jit_v.log"
      local r = get_json(n, "/jit_log?n=400&path=" .. path, 60)
      assert.is_nil(r.err, cjson.encode(r))
      assert.equal(400, r.runs)
      assert.is_true(r.reused > 0, cjson.encode(r))
      local f = assert(io.open(path))
      local log = f:read("*a")
      f:close()
      assert.truthy(log:find("[TRACE", 1, true), "jit.v logged nothing")
      -- An aborted trace reads "[TRACE --- <start> -- <reason> at <where>]".
      -- Aborts at a cosocket's yield are OpenResty's lot; an NYI (what
      -- LuaJIT cannot compile yet) in the module's frames is avoidable.
      local nyi = {}
      for line in log:gmatch("[^\n]+") do
        if line:find("[TRACE ---", 1, true) and line:find("NYI", 1, true)
          and (line:find("pgmoon.lua", 1, true) or line:find("kong_rds_iam", 1, true)) then
          nyi[#nyi + 1] = line
        end
      end
      assert.same({}, nyi)
    end)

    it("rds._frozen: a yielding connect reuses a frozen conf's parse; a conf not frozen is read again", function()
      local r = get_json(n, "/frozen")
      local what = cjson.encode(r)
      assert.is_true(r.frozen_ok, what)
      assert.is_true(r.frozen_reused > 0, what)
      assert.is_false(r.plain_ok, what)
      assert.matches('database "pn_no_such_db" does not exist', r.plain_err, 1, true)
    end)

    it("a pooled connection the server closed while idle is discarded at checkout: the next connect is new (reused 0)", function()
      local r1 = get_json(n, "/cycle?key=dead&s=0")
      assert.is_true(r1.ok and r1.keepalive, cjson.encode(r1))
      local r2 = get_json(n, "/cycle?key=dead&s=0")
      assert.is_true(r2.ok and r2.keepalive, cjson.encode(r2))
      assert.is_true(r2.reused > 0, cjson.encode(r2))
      assert.equal(r1.bp, r2.bp, "not pooled: " .. cjson.encode(r2))
      assert.equal(1, fwd:connections())
      -- the server ends the idle session (as a failover or an idle timeout does)
      assert.equal("t", e:psql("select pg_terminate_backend(" .. r1.bp .. ")"))
      assert.is_true(wait_for(function() return not backend_exists(e, r1.bp) end, 2, 0.05), "backend still there")
      local r3 = get_json(n, "/cycle?key=dead&s=0")
      local what = cjson.encode(r3)
      assert.is_nil(r3.err, what)
      assert.is_nil(r3.query_err, what)
      assert.is_true(r3.ok, what)
      assert.equal(0, r3.reused, what)
      assert.not_equal(r1.bp, r3.bp, what)
      assert.is_true(r3.keepalive, what)
      local f = figures(n, "dead")
      assert.equal(2, f.opened, cjson.encode(f))
      assert.equal(1, f.idle, cjson.encode(f))
      -- finding the idle cosocket gone dialled nothing: the server saw the
      -- first connection and the new one only
      assert.equal(2, fwd:connections())
      -- and the new one is pooled as usual
      local r4 = get_json(n, "/cycle?key=dead&s=0")
      assert.is_true(r4.ok and r4.reused > 0, cjson.encode(r4))
      assert.equal(r3.bp, r4.bp, cjson.encode(r4))
    end)

    it("idle connections past pg_pool_size are closed at once, their server sessions ended (the two newest kept)", function()
      local r = get_json(n, "/evict?n=5")
      local what = cjson.encode(r)
      assert.is_nil(r.err, what)
      assert.equal(5, #r.bps, what)
      for i = 1, 5 do assert.is_true(r.keepalive[i], what) end
      assert.equal(2, r.figures.idle, what)
      assert.equal(5, r.figures.opened, what)
      assert.equal(3, r.figures.closed, what)
      -- the first three given back made room for the later ones
      for i = 1, 3 do
        assert.is_true(wait_for(function() return not backend_exists(e, r.bps[i]) end, 2, 0.05),
          ("evicted backend %d still there: %s"):format(r.bps[i], backend_state(e, r.bps[i])))
      end
      for i = 4, 5 do assert.equal("idle", backend_state(e, r.bps[i]):match("^[^|]*"), what) end
      -- and the two kept are the ones the next requests get
      local kept = { [r.bps[4]] = true, [r.bps[5]] = true }
      for _ = 1, 2 do
        local c = get_json(n, "/cycle?key=evict&s=0")
        assert.is_true(c.ok and c.keepalive and c.reused > 0, cjson.encode(c))
        assert.is_true(kept[c.bp], cjson.encode(c))
      end
    end)

    it("leaves a clean error log", function()
      assert_clean_log(n)
    end)
  end)

  describe("soak: 2 workers, 50 clients", function()
    local n

    setup(function()
      n = start { workers = 2 }
    end)

    teardown(function()
      if n then n:stop() end
    end)

    --- rds.stats() of each worker, by pid (hits /stats until it has seen them all).
    local function all_stats(pids)
      local want = {}
      for _, pid in ipairs(pids) do want[pid] = true end
      local seen, left = {}, #pids
      for _ = 1, 400 do
        local s = get_json(n, "/stats")
        if want[s.pid] and not seen[s.pid] then
          seen[s.pid] = s
          left = left - 1
          if left == 0 then return seen end
        end
      end
      error("did not reach every worker through /stats: " .. cjson.encode(seen))
    end

    it(("%d requests (connect, select 1, keepalive; pg_pool_size = %d, pg_backlog = %d): all 200, bounded connections, no fd, thread or memory growth")
      :format(SOAK_REQUESTS, SOAK_POOL_SIZE, SOAK_BACKLOG), function()
      local pids = n:worker_pids()
      assert.equal(2, #pids)
      local key = label(confs.soak)

      -- Warm-up 1: a few hundred requests as the soak sends them.
      local warm = soak(n, WARMUP_REQUESTS, 30)
      assert.same({}, warm.bad, "warm-up failures")
      assert.equal(WARMUP_REQUESTS, warm.ok, cjson.encode(warm))
      nginx.sleep(0.5)
      local after_requests = {}
      for _, pid in ipairs(pids) do after_requests[pid] = fd_count(pid) end
      -- Warm-up 2: every yielding call waits on a cosocket to the I/O
      -- thread's unix socket, pooled with setkeepalive(0, 256): a worker
      -- keeps one connection (2 fds: nginx's end and the I/O thread's) per
      -- call it ever had waiting at once, for good. The soak's peak
      -- concurrency in a worker is at most SOAK_CLIENTS, and the warm-up
      -- above need not have reached it; so bring each worker to
      -- WARM_WAITERS (> SOAK_CLIENTS) concurrent calls first, and then
      -- the soak must add no fds at all (a per-request leak would show).
      local warmed = {}
      for _ = 1, 100 do
        local w = get_json(n, "/warm?n=" .. WARM_WAITERS, 30)
        assert.equal(WARM_WAITERS, w.ok, cjson.encode(w))
        warmed[w.worker_pid] = true
        if warmed[pids[1]] and warmed[pids[2]] then break end
      end
      assert(warmed[pids[1]] and warmed[pids[2]], "/warm did not reach both workers")
      nginx.sleep(0.5)
      local before = {}
      for i, pid in ipairs(pids) do
        local threads = n:settle_threads(pid, 2, 5)
        local kinds, summary = fd_kinds(pid, e.port)
        before[pid] = { fds = fd_count(pid), rss = rss_kb(pid), threads = threads, kinds = kinds, summary = summary }
        measured["soak_fd_after_warmup_requests_w" .. i] = after_requests[pid]
        measured["soak_wake_pairs_warmed_w" .. i] = kinds.unix_wake
      end
      local warm_stats = all_stats(pids)

      local run = soak(n, SOAK_REQUESTS, SOAK_TIME_LIMIT)
      measured.soak_requests = run.requests
      measured.soak_wall_s = run.wall
      measured.soak_rate_rps = run.requests / run.wall
      measured.soak_p50_ms = run.p50 * 1000
      measured.soak_p99_ms = run.p99 * 1000
      measured.soak_max_ms = run.max * 1000
      assert.same({}, run.bad, "failed requests: " .. cjson.encode(run.statuses))
      assert.equal(SOAK_REQUESTS, run.requests,
        ("only %d of %d requests within %d s (%.0f req/s)"):format(run.requests, SOAK_REQUESTS, SOAK_TIME_LIMIT,
          run.requests / run.wall))
      assert.equal(SOAK_REQUESTS, run.ok)

      -- the same workers still serve
      assert.same(pids, n:worker_pids())
      nginx.sleep(0.5)

      local stats = all_stats(pids)
      local opened_total = 0
      for i, pid in ipairs(pids) do
        local f = stats[pid].pool[key]
        assert.is_table(f, ("worker %d has no pool %s: %s"):format(pid, key, cjson.encode(stats[pid])))
        local what = cjson.encode(f)
        measured["soak_opened_w" .. i] = f.opened
        measured["soak_reused_w" .. i] = f.reused
        measured["soak_closed_w" .. i] = f.closed
        measured["soak_warm_opened_w" .. i] = (warm_stats[pid].pool[key] or {}).opened
        opened_total = opened_total + f.opened
        assert.is_true(f.opened <= 2 * SOAK_POOL_SIZE, ("worker %d opened %d connections"):format(pid, f.opened))
        assert.equal(0, f.busy, what)
        assert.equal(0, f.waiting, what)
        assert.is_true(f.idle <= SOAK_POOL_SIZE, what)
        assert.equal(0, stats[pid].jobs, cjson.encode(stats[pid]))
      end
      measured.soak_opened_total = opened_total
      assert.is_true(opened_total <= 2 * 2 * SOAK_POOL_SIZE, ("%d connections opened in all"):format(opened_total))

      for i, pid in ipairs(pids) do
        local threads, settled = n:settle_threads(pid, 2, 5)
        local fds, rss = fd_count(pid), rss_kb(pid)
        local b = before[pid]
        measured["soak_fd_before_w" .. i], measured["soak_fd_after_w" .. i] = b.fds, fds
        measured["soak_rss_kb_before_w" .. i], measured["soak_rss_kb_growth_w" .. i] = b.rss, rss - b.rss
        measured["soak_threads_w" .. i] = threads
        assert(settled, ("worker %d still has %s threads: %s"):format(pid, tostring(threads), cjson.encode(n:tasks(pid))))
        local kinds, summary = fd_kinds(pid, e.port)
        measured["soak_wake_pairs_after_w" .. i] = kinds.unix_wake
        measured["soak_pg_fds_after_w" .. i] = kinds.tcp_pg
        assert.is_true(fds - b.fds <= MAX_FD_GROWTH,
          ("worker %d: %d fds after the warm-up (%s), %d after the soak (%s)"):format(pid, b.fds, b.summary, fds, summary))
        -- the database connections are the pool's, no more
        assert.is_true(kinds.tcp_pg <= SOAK_POOL_SIZE, summary)
        -- the wake connections stay bounded by the concurrency seen, not the requests
        assert.is_true(kinds.unix_wake <= WARM_WAITERS + MAX_FD_GROWTH, summary)
        assert.is_true(rss - b.rss < MAX_RSS_GROWTH_KB,
          ("worker %d: VmRSS %d kB after the warm-up, %d kB after the soak"):format(pid, b.rss, rss))
      end

      local backends = tonumber(assert(e:psql("select count(*) from pg_stat_activity where usename = 'pw_scram'")))
      measured.soak_backends = backends
      assert.is_true(backends <= 2 * SOAK_POOL_SIZE, backends .. " pw_scram backends")
      assert.equal("0", assert(e:psql("select count(*) from pg_stat_activity where state like 'idle in transaction%'")))
      assert_clean_log(n)
    end)
  end)
end)
