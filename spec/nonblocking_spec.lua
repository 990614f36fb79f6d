-- Non-blocking connect()/query()/token() inside OpenResty (issue 9), in a real
-- nginx against the local RDS emulator: calls in yieldable phases (rewrite,
-- access, content, timers) wait on a cosocket so the worker keeps serving;
-- calls that cannot yield (init, init_worker, set_by_lua, header_filter,
-- body_filter, log, a table.sort comparator) block as before; KONG_RDS_IAM_YIELD=off is the
-- negative control. Also: the event-loop stall probe, single-flight credential
-- fetches from a slow IMDS, one connection across phases, "connection busy",
-- abandoned waits (client abort, cosocket timeout, pg_timeout) leaving no job
-- and no backend behind, programmer errors as Lua strings, the I/O thread
-- (lazy start, name, signal mask), the wake socket's directory and clean-up,
-- and HUP reloads under load.
--
-- Needs root (the RDS emulator), Debian's nginx-light, libnginx-mod-http-lua,
-- lua-resty-core and python3 (the concurrent HTTP client). Traffic stays on
-- 127.0.0.1. Timing bounds assume an otherwise idle machine.
local nginx = require "spec.support.nginx"
local emu = require "spec.support.emulator"
local fake = require "spec.support.fake_aws"
local util = require "spec.support.util"
local test_env = require "spec.support.test_env"
local cjson = require "cjson"
local socket = require "socket"

local quote, read_file, write_file = util.shell_quote, util.read_file, util.write_file

local exists = util.exists

if nginx.missing() then
  describe("non-blocking calls in OpenResty", function() pending(nginx.missing()) end)
  return
end

-- The spec is for the non-blocking build: it has rds.stats. Another build
-- fails here with one clear message (NONBLOCKING_SPEC_ANY_BUILD=1 runs the
-- cases anyway, to debug the spec itself).
local loaded, rds = pcall(require, "kong_rds_iam")
if not (loaded and type(rds) == "table" and type(rds.stats) == "function")
    and os.getenv("NONBLOCKING_SPEC_ANY_BUILD") ~= "1" then
  describe("non-blocking calls in OpenResty", function()
    it("needs the non-blocking build of the module (target/lua/kong_rds_iam.so with rds.stats)", function()
      error(loaded and "require('kong_rds_iam').stats is " .. tostring(type(rds) == "table" and rds.stats)
        .. ": not the non-blocking build" or ("cannot load kong_rds_iam: " .. tostring(rds)))
    end)
  end)
  return
end

---------------------------------------------------------------- helpers --

local PYTHON = exists("/usr/bin/python3") and "/usr/bin/python3" or "python3"

-- Bounds (see the cases for why).
local CONCURRENT = 20         -- requests per burst in one worker, each pg_sleep(0.2)
local PW_WALL = 1.0           -- s, 20 password connect+sleep+close, yielding
-- Every IAM login runs the emulator's verifier in a new python3 process
-- (PAM -> verifier.py, tens of ms of CPU each): 20 of them share the 2 cores
-- with PostgreSQL, nginx and the client. The burst measured 0.58-0.71 s on an
-- idle 2-core machine but 1.21 s with another build running, all of it
-- verifier CPU, not waiting in the module. So the IAM case gets 2 s, still
-- far below the ~5 s of the blocking path; the password case keeps 1 s.
local IAM_WALL = 2.0
local BLOCKING_WALL = 3.0     -- s, the same 20 password requests must take longer with YIELD=off
local MAX_GAP_MS = 100        -- largest event-loop gap while calls yield
local PING_MS = 200           -- a /ping answered while 50 token() calls wait

local measured = {}           -- numbers reported at the end

local hex = util.hex

local merge = util.merge

-- stdout of a shell command (stderr is not captured).
local sh = util.sh

-- Static credentials only the nginx master gets (the emulator learns them).
local AKID, SECRET, SESSION, MASTER_ENV = test_env.master_credentials("nb")

-- A concurrent HTTP/1.0 client. argv[1]: JSON.
--   {"mode": "batch", "port": P, "timeout": S, "groups": [{"path", "count", "delay"}]}
--     every request on its own thread, all released at once (each group's
--     requests after `delay` s); prints {"wall", "results": [{group, path,
--     status, body, err, t0, t1}]}, times in s since the release.
--   {"mode": "loop", "port": P, "paths": [...], "clients": N, "duration": S, "max_requests": M}
--     N clients (client i uses paths[i % #paths]) loop requests for S s (at
--     most M each); prints {"ok": n, "bad": [records], "requests": n}; a
--     request is ok when it answers 200 with "ok":true in the body.
local CLIENT_PY = [=[
import json, socket, sys, threading, time

def one(port, path, timeout):
    rec = {"path": path, "t0": time.monotonic()}
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            s.sendall(("GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" % path).encode())
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        finally:
            s.close()
        data = b"".join(chunks)
        head, _, body = data.partition(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        rec["status"] = int(parts[1]) if head.startswith(b"HTTP/") and len(parts) > 1 else None
        rec["body"] = body.decode("utf-8", "replace")
    except Exception as e:
        rec["err"] = repr(e)
    rec["t1"] = time.monotonic()
    return rec

def batch(spec):
    port, timeout = spec["port"], spec.get("timeout", 30)
    jobs = []
    for g, grp in enumerate(spec["groups"]):
        for _ in range(grp.get("count", 1)):
            jobs.append((g + 1, grp["path"], grp.get("delay", 0)))
    barrier = threading.Barrier(len(jobs) + 1)
    results = [None] * len(jobs)
    def run(k, g, path, delay):
        barrier.wait()
        if delay:
            time.sleep(delay)
        r = one(port, path, timeout)
        r["group"] = g
        results[k] = r
    threads = [threading.Thread(target=run, args=(k,) + j) for k, j in enumerate(jobs)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.monotonic()
    for t in threads:
        t.join()
    end = time.monotonic()
    for r in results:
        r["t0"] -= start
        r["t1"] -= start
    return {"wall": end - start, "results": results}

def loop(spec):
    port, paths, timeout = spec["port"], spec["paths"], spec.get("timeout", 20)
    stop = time.monotonic() + spec["duration"]
    limit = spec.get("max_requests", 1000)
    lock = threading.Lock()
    out = {"ok": 0, "bad": [], "requests": 0}
    def run(i):
        path = paths[i % len(paths)]
        n = 0
        while time.monotonic() < stop and n < limit:
            n += 1
            r = one(port, path, timeout)
            good = r.get("status") == 200 and '"ok":true' in r.get("body", "")
            with lock:
                out["requests"] += 1
                if good:
                    out["ok"] += 1
                else:
                    r["body"] = r.get("body", "")[:400]
                    out["bad"].append(r)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(spec["clients"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out

spec = json.loads(sys.argv[1])
print(json.dumps(batch(spec) if spec["mode"] == "batch" else loop(spec)))
]=]

local tmp_dir, client_path

local function client(spec)
  local out = sh(("%s %s %s 2>&1"):format(PYTHON, quote(client_path), quote(cjson.encode(spec))))
  local ok, res = pcall(cjson.decode, out)
  assert(ok and type(res) == "table", "http client failed: " .. out)
  return res
end

--- All requests of `groups` at once; the decoded result (see CLIENT_PY).
local function burst(n, groups, timeout)
  return client { mode = "batch", port = n.port, groups = groups, timeout = timeout or 30 }
end

--- Starts looping clients in the background; returns a function that waits
--- for and returns their decoded result.
local function loop_in_background(n, paths, clients, duration)
  local out = ("%s/loop.%s.json"):format(tmp_dir, hex(4))
  local spec = cjson.encode { mode = "loop", port = n.port, paths = paths, clients = clients,
                              duration = duration, max_requests = 1000 }
  os.execute(("(%s %s %s > %s.tmp 2>&1; mv %s.tmp %s) &"):format(PYTHON, quote(client_path), quote(spec),
    quote(out), quote(out), quote(out)))
  return function(timeout)
    local deadline = nginx.now() + (timeout or 60)
    while nginx.now() < deadline do
      local text = read_file(out)
      if text then
        local ok, res = pcall(cjson.decode, text)
        assert(ok, "load generator output: " .. text)
        return res
      end
      nginx.sleep(0.1)
    end
    error("load generator did not finish")
  end
end

--- The decoded JSON bodies of one group's results, each asserted 200.
local function bodies(res, group)
  local out = {}
  for _, r in ipairs(res.results) do
    if group == nil or r.group == group then
      assert(r.status == 200, ("%s: status %s, err %s, body %s"):format(r.path, tostring(r.status),
        tostring(r.err), tostring(r.body)))
      local ok, t = pcall(cjson.decode, r.body)
      assert(ok and type(t) == "table", "not JSON: " .. tostring(r.body))
      t._t0, t._t1 = r.t0, r.t1
      out[#out + 1] = t
    end
  end
  return out
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
--- `timeout` s pass; returns its last results.
local function wait_for(fn, timeout, interval)
  local deadline = nginx.now() + timeout
  local r = { fn() }
  while not r[1] and nginx.now() < deadline do
    nginx.sleep(interval or 0.05)
    r = { fn() }
  end
  return unpack(r)
end

--- rds.stats() of the (single) worker.
local function stats(n)
  return get_json(n, "/stats")
end

--- Waits (up to timeout s) until the worker's job table is empty; the last stats.
local function wait_idle(n, timeout)
  local last
  wait_for(function()
    last = stats(n)
    return last.jobs == 0
  end, timeout or 3, 0.05)
  return last
end

local function assert_idle(n, what)
  local s = wait_idle(n, 3)
  assert.equal(0, s.jobs, (what or "") .. ": jobs left in the job table: " .. cjson.encode(s))
end

--- Backends (other than ours) whose current or last statement contains tag:
--- list of "pid|state|user" strings.
local function tagged_backends(e, tag)
  local out = assert(e:psql(("select pid || '|' || coalesce(state, '') || '|' || coalesce(usename, '') "
    .. "from pg_stat_activity where query like '%%%s%%' and pid <> pg_backend_pid()"):format(tag)))
  local rows = {}
  for line in out:gmatch("[^\n]+") do rows[#rows + 1] = line end
  return rows
end

local function idle_in_transaction(e)
  return tonumber(assert(e:psql("select count(*) from pg_stat_activity where state like 'idle in transaction%'")))
end

--- PostgreSQL logged the cancellation of the statement tagged `tag`.
local function cancelled_in_log(e, tag)
  return e:pg_log_text():find("canceling statement due to user request\n[^\n]*STATEMENT:[^\n]*" .. tag) ~= nil
end

local function unique_tag(what)
  return ("nb_%s_%s"):format(what, hex(4))
end

--- Threads named kong_rds_iam-io in process pid.
local function io_threads(n, pid)
  local out = {}
  for _, t in ipairs(n:tasks(pid)) do
    if t.comm == "kong_rds_iam-io" then out[#out + 1] = t end
  end
  return out
end

--- Signals (1..64) missing from a SigBlk mask, except SIGKILL (9), SIGSTOP
--- (19), which cannot be blocked, and glibc's internal 32 and 33.
local function unblocked_signals(mask)
  local missing = {}
  mask = ("%016s"):format(mask):gsub(" ", "0")
  for sig = 1, 64 do
    if sig ~= 9 and sig ~= 19 and sig ~= 32 and sig ~= 33 then
      local b = sig - 1
      local digit = tonumber(mask:sub(16 - math.floor(b / 4), 16 - math.floor(b / 4)), 16)
      if math.floor(digit / 2 ^ (b % 4)) % 2 ~= 1 then missing[#missing + 1] = sig end
    end
  end
  return missing
end

--- Names of kong_rds_iam.<pid>.sock files in dir.
local function socket_files(dir)
  local out = {}
  for name in sh("ls -1 " .. quote(dir) .. " 2>/dev/null"):gmatch("[^\n]+") do
    if name:match("^kong_rds_iam%.%d+%.sock$") then out[#out + 1] = name end
  end
  table.sort(out)
  return out
end

local function is_socket(path)
  return sh("test -S " .. quote(path) .. " && echo yes"):match("yes") ~= nil
end

local function mode_of(path)
  return (sh("stat -c %a " .. quote(path)):gsub("%s+$", ""))
end

local count = util.count

local function assert_clean_log(n)
  local log = n:error_log()
  for _, bad in ipairs { "panicked", "exited on signal", "attempt to yield across", "[alert]", "[emerg]",
                         "[crit]", "failed to run", "runtime error" } do
    assert.is_nil(log:find(bad, 1, true), ("%q in error.log:\n%s"):format(bad, log))
  end
  assert.is_nil(log:find(SECRET, 1, true), "secret key in error.log")
  assert.is_nil(log:find(SESSION, 1, true), "session token in error.log")
  assert.is_nil(log:find("X-Amz-Signature", 1, true), "a token in error.log")
  return log
end

local function assert_cycle(r, user, what)
  assert.is_true(r.ok, (what or "request") .. ": " .. cjson.encode(r))
  assert.equal(user, r.user)
  assert.is_true(r.tls)
  assert.is_true(r.closed, cjson.encode(r))
end

local function own_pid()
  return tonumber((read_file("/proc/self/stat") or ""):match("^(%d+)"))
end

-- A pid no process has (a shell that has exited).
local function dead_pid()
  local pid = tonumber(sh("sh -c 'echo $$'"):match("%d+"))
  assert(not nginx.alive(pid))
  return pid
end

-------------------------------------------------------- code in nginx --

-- prefix/lua/nb.lua; nbconf.lua next to it holds the confs.
local NB_LUA = [==[
local rds = require "kong_rds_iam"
local cjson = require "cjson.safe"
local confs = require "nbconf"

local M = { confs = confs, gap = { max = 0, ticks = 0 } }

local function now()
  ngx.update_time()
  return ngx.now()
end
M.now = now

local function copy(t, extra)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

function M.reply(t)
  t.worker_pid = ngx.worker.pid()
  ngx.header.content_type = "application/json"
  ngx.say(cjson.encode(t))
end

-- res, nil or nil, err (conn:query's 2nd value is num_queries on success)
local function query(c, sql)
  local res, err = c:query(sql)
  if res == nil then return nil, err end
  return res
end

local function tag_of(s)
  s = tostring(s or "")
  return s:match("^[%w_]+$") and s or "nb_notag"
end

local function sql_for(sleep, tag)
  return ("select /* %s */ pg_sleep(%.3f) as s, current_user as u, ssl_is_used() as tls, pg_backend_pid() as bp")
    :format(tag_of(tag), tonumber(sleep) or 0)
end

function M.stats()
  local out = {}
  for k, v in pairs(rds.stats()) do out[k] = v end
  return out
end

function M.nop()
  local t0 = now()
  local ok, res, err = pcall(rds._nop)
  return { raised = (not ok) and tostring(res) or nil, res = ok and res or nil, err = err,
           phase = ngx.get_phase(), ms = (now() - t0) * 1000, stats = M.stats() }
end

-- connect + query (+ pg_sleep) + close
function M.cycle(who, sleep, tag, conf)
  local t0 = now()
  local c, err, sqlstate = rds.connect(conf or confs[who or "pw"] or confs.pw)
  if not c then
    ngx.log(ngx.WARN, "nb connect failed: ", err)
    return { ok = false, err = err, sqlstate = sqlstate, phase = ngx.get_phase() }
  end
  local res, qerr = c:query(sql_for(sleep, tag))
  local closed, cerr = c:close()
  local out = { phase = ngx.get_phase(), ms = (now() - t0) * 1000, closed = closed == true, close_err = cerr }
  if not res then
    ngx.log(ngx.WARN, "nb query failed: ", qerr)
    out.ok, out.err = false, qerr
    return out
  end
  out.ok, out.user, out.tls, out.backend = true, res[1].u, res[1].tls, res[1].bp
  return out
end

-- The stall probe: a 5 ms timer recording the largest gap between ticks.
function M.start_probe()
  local g = M.gap
  local ok, err = ngx.timer.every(0.005, function(premature)
    if premature then return end
    local t = now()
    if g.last then
      local d = t - g.last
      if d > g.max then g.max = d end
    end
    g.last = t
    g.ticks = g.ticks + 1
  end)
  if not ok then ngx.log(ngx.ERR, "nb probe: ", err) end
end

function M.gap_reset()
  M.gap.max, M.gap.ticks, M.gap.last = 0, 0, nil
end

function M.gap_read()
  return { max_ms = M.gap.max * 1000, ticks = M.gap.ticks }
end

-- A yielding call from a timer started in init_worker (starts the I/O thread).
function M.nop_timer()
  local ok, err = ngx.timer.at(0, function(premature)
    if premature then return end
    M.nop_timer_result = M.nop()
  end)
  if not ok then ngx.log(ngx.ERR, "nb nop timer: ", err) end
end

function M.token_summary(who)
  local conf = confs[who or "iam"]
  local t0 = now()
  local token, err, expires_at = rds.token(conf)
  local out = { ms = (now() - t0) * 1000, phase = ngx.get_phase() }
  if not token then
    ngx.log(ngx.WARN, "nb token failed: ", err)
    out.ok, out.err = false, err
    return out
  end
  local prefix = ("localhost:%d/?Action=connect&DBUser=%s&"):format(conf.pg_port, conf.pg_user)
  local cred = token:match("X%-Amz%-Credential=([^&]*)")
  out.ok = true
  out.md5 = ngx.md5(token)
  out.shape = token:sub(1, #prefix) == prefix
  out.akid = cred and ngx.unescape_uri(cred):match("^([^/]+)/")
  out.expires_at = expires_at
  return out
end

function M.timer_start(n, sleep)
  M.timer_result = nil
  local ok, err = ngx.timer.at(0, function(premature)
    if premature then return end
    local t0 = now()
    local results = {}
    for i = 1, n do results[i] = M.cycle("pw", sleep, "nb_timer") end
    M.timer_result = { results = results, ms = (now() - t0) * 1000, phase = ngx.get_phase() }
  end)
  return { ok = ok, err = err }
end

-- A connection opened in init_worker_by_lua (blocking), used later.
function M.open_iw_conn()
  local c, err = rds.connect(confs.pw)
  M.iw = { phase = ngx.get_phase(), err = err, type = type(c), str = c and tostring(c) }
  if c then
    local res, qerr = query(c, "select pg_backend_pid() as bp")
    M.iw.backend, M.iw.qerr = res and res[1].bp, qerr
  end
  M.iw_conn = c
end

function M.iw_query(sleep)
  local c = M.iw_conn
  if not c then return { ok = false, err = "no init_worker connection", iw = M.iw } end
  local t0 = now()
  local res, err = query(c, ("select pg_sleep(%.3f) as s, pg_backend_pid() as bp, 'content' as src")
    :format(tonumber(sleep) or 0))
  return { ok = res ~= nil, err = err, backend = res and res[1].bp, src = res and res[1].src, iw = M.iw,
           ms = (now() - t0) * 1000, phase = ngx.get_phase() }
end

-- A connection opened in content (yielding), kept for other requests and
-- phases: with pg_cosocket off (`thread`), else over a cosocket.
function M.store_open(thread)
  local c, err = rds.connect(thread and confs.pw_thread or confs.pw)
  if not c then return { ok = false, err = err } end
  local res, qerr = query(c, "select pg_backend_pid() as bp")
  M.stored, M.stored_backend, M.stored_results = c, res and res[1].bp, {}
  return { ok = res ~= nil, err = qerr, backend = M.stored_backend, phase = ngx.get_phase() }
end

function M.stored_query(label)
  local c = M.stored
  local r = { phase = ngx.get_phase() }
  if not c then
    r.err = "no stored connection"
  else
    local ok, res, err = pcall(c.query, c, "select '" .. label .. "' as label, pg_backend_pid() as bp")
    if not ok then r.raised = tostring(res)
    elseif not res then r.err = err
    else r.ok, r.label, r.backend = true, res[1].label, res[1].bp end
  end
  M.stored_results[label] = r
  ngx.log(ngx.NOTICE, "nb stored query in ", r.phase, ": ", cjson.encode(r))
  return r
end

-- keepalive() of the stored connection from another request.
function M.store_keepalive()
  local ok, err = M.stored:keepalive()
  local res, qerr = M.stored:query("select 1 as one")
  return { ok = ok, err = err, after = res ~= nil, after_err = qerr, str = tostring(M.stored) }
end

function M.store_results()
  local after = M.stored_query("content_after")
  local closed, cerr = M.stored:close()
  return { backend = M.stored_backend, results = M.stored_results, after = after,
           closed = closed, close_err = cerr }
end

-- set_by_lua, content, header_filter and log of one request (/phases).
function M.set_phase()
  local s = M.cycle("pw", 0, "nb_set")
  local nop_ok, nop = pcall(rds._nop)
  return ("%s %s %s"):format(ngx.get_phase(), s.ok and "ok" or ("fail:" .. tostring(s.err)),
    nop_ok and tostring(nop) or ("raised:" .. tostring(nop)))
end

function M.phases_content(set_result)
  local c, err = rds.connect(confs.pw_thread)
  ngx.ctx.conn = c
  M.phases = { set = set_result, content = { ok = c ~= nil, err = err, phase = ngx.get_phase() } }
  ngx.say("ok")
end

function M.phases_step(label)
  local c = ngx.ctx.conn
  local r = { phase = ngx.get_phase() }
  local ok, e = pcall(function()
    if not c then r.err = "no connection"; return end
    local res, err = query(c, "select '" .. label .. "' as label")
    r.label, r.err = res and res[1].label, err
    r.nop = rds._nop()
    local token, terr = rds.token(confs.iam)
    r.token, r.token_err = token ~= nil, terr
    if label == "log" then
      r.closed = c:close()
      local s = M.cycle("pw", 0, "nb_log_phase")
      r.cycle_ok, r.cycle_err = s.ok, s.err
    end
  end)
  if not ok then r.raised = tostring(e) end
  M.phases[label] = r
  ngx.log(ngx.NOTICE, "nb phase ", label, ": ", cjson.encode(r))
end

-- Module calls inside a table.sort comparator (a C boundary: cannot yield).
function M.sort()
  local out = {}
  local arr = { 3, 1, 2 }
  local ok, err = pcall(table.sort, arr, function(a, b)
    if not out.done then
      out.done = true
      out.isyieldable = coroutine.isyieldable and tostring(coroutine.isyieldable()) or "(no coroutine.isyieldable)"
      out.cycle = M.cycle("pw", 0.05, "nb_sort")
      local nop_ok, nop = pcall(rds._nop)
      out.nop = nop_ok and nop or ("raised: " .. tostring(nop))
      local token, terr = rds.token(confs.iam)
      out.token, out.token_err = token ~= nil, terr
    end
    return a < b
  end)
  out.sort_ok, out.sort_err = ok, (not ok) and tostring(err) or nil
  out.sorted = table.concat(arr, ",")
  return out
end

-- Two light threads on one connection.
function M.busy()
  local c, err = rds.connect(confs.pw)
  if not c then return { ok = false, err = err } end
  local out = {}
  local t1 = ngx.thread.spawn(function()
    local t0 = now()
    local res, qerr = query(c, "select pg_sleep(0.3) as s, 'first' as who")
    return res and res[1].who, qerr, (now() - t0) * 1000
  end)
  local t2 = ngx.thread.spawn(function()
    local t0 = now()
    local res, qerr = query(c, "select 'second' as who")
    return res and res[1].who, qerr, (now() - t0) * 1000
  end)
  local ok1, who1, err1, ms1 = ngx.thread.wait(t1)
  local ok2, who2, err2, ms2 = ngx.thread.wait(t2)
  out.first = { ok = ok1, who = who1, err = err1, ms = ms1 }
  out.second = { ok = ok2, who = who2, err = err2, ms = ms2 }
  local res, qerr = query(c, "select 'after' as who")
  out.after, out.after_err = res and res[1].who, qerr
  out.closed = c:close()
  out.stats = M.stats()
  return out
end

-- close() while a query runs on another light thread.
function M.busy_close()
  local c, err = rds.connect(confs.pw)
  if not c then return { ok = false, err = err } end
  local out = {}
  local t1 = ngx.thread.spawn(function()
    local res, qerr = query(c, "select pg_sleep(0.3) as s, 'first' as who")
    return res and res[1].who, qerr
  end)
  local t0 = now()
  local closed, cerr = c:close()
  out.close = { res = closed, err = cerr, ms = (now() - t0) * 1000 }
  local ok1, who1, err1 = ngx.thread.wait(t1)
  out.first = { ok = ok1, who = who1, err = err1 }
  local res, qerr = query(c, "select 'after' as who")
  out.after, out.after_err = res and res[1].who, qerr
  out.closed = c:close()
  return out
end

-- A large, several-statement result over a cosocket (row tables built while
-- the server sends) and over the I/O thread's socket (built at the end).
local BIG = "select g as id, repeat('x', 200) || g as t, null::int as n, "
  .. "('{\"a\":[' || g || ',2],\"b\":null}')::jsonb as j, array[g, g + 1] as arr "
  .. "from generate_series(1, 6000) g; select 1 as one; "
  .. "select g as k from generate_series(1, 3000) g"
function M.big_result()
  local out = {}
  for _, v in ipairs { { "cosocket", confs.pw }, { "thread", confs.pw_thread } } do
    local c, err = rds.connect(v[2])
    if not c then return { err = err } end
    local res, a = c:query(BIG)
    local r = { cosocket = c:_is_cosocket() }
    if res then r.n = a else r.err = a end
    if res then
      r.counts = { #res[1], #res[2], #res[3] }
      r.digest = ngx.md5(cjson.encode(res))
      local row = res[1][4321]
      r.sample = { id = row.id, t = row.t, n_is_null = row.n == rds.null, a1 = row.j.a[1], b_is_null = row.j.b == rds.null,
                   arr2 = row.arr[2], one = res[2][1].one, k = res[3][3000].k }
    end
    c:keepalive()
    out[v[1]] = r
  end
  return out
end

-- Results over a cosocket through the FFI door (small plain ones become
-- tables in Lua, from C cells; the rest are built in Rust) and over the I/O
-- thread's socket (built in Rust): every return value, in a canonical form. The collector runs between queries (the door's C buffers
-- must survive it).
local DOOR_QUERIES = {
  "select 1 as x",
  "select null::int as n, true as t, false as f, 1.5::float8 as d, 'h\195\169llo' as s, "
    .. "'\\x00ff41'::bytea as b, 9007199254740993::int8 as big, 42::int8 as i8, "
    .. "'00000000-0000-0000-0000-000000000001'::uuid as u, ''::text as e, 1 as x, 2 as x",
  "select g as i, g::text as s, g % 2 = 0 as even from generate_series(1, 40) g",
  "select x from generate_series(1, 600) x",
  "select '{\"a\":[1,2]}'::jsonb as j, array[1, 2] as a",
  "select 1 as a where false",
  "create temp table if not exists door_t (a int); insert into door_t values (1), (2) returning a",
  "insert into door_t values (3) returning a, 'x' as b",
  "update door_t set a = a where a < 0 returning a",
  "select 1 / 0",
  "set application_name = 'door'",
  "select 1 as one; select 2 as two",
  "do $$ begin raise warning 'door'; end $$; select 1 as x",
}
local function canonical(v, seen)
  local t = type(v)
  if v == rds.null then return "NULL" end
  if t == "number" then return ("%.17g"):format(v) end
  if t == "string" then return ("%q"):format(v) end
  if t ~= "table" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = canonical(k) .. "=" .. canonical(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end
function M.door_results()
  local out = { door_open = rds._door() }
  for _, route in ipairs { { "door", confs.pw }, { "thread", confs.pw_thread } } do
    local c, err = rds.connect(route[2])
    if not c then return { err = err } end
    local r = { cosocket = c:_is_cosocket(), results = {} }
    c:query("set client_min_messages = warning") -- the temp table may exist: no notice
    for i, sql in ipairs(DOOR_QUERIES) do
      collectgarbage()
      local values = { c:query(sql) } -- (trailing nils differ by route)
      r.results[i] = canonical(values)
    end
    r.kept = c:keepalive()
    out[route[1]] = r
  end
  return out
end

-- A connection object kept alive, then its physical connection checked
-- out again: the old object answers as a closed one and never reaches the
-- session (whose object api.lua hands out again).
-- The Rust object in a connection table (its only userdata value).
local function object_of(c)
  for _, v in pairs(c) do
    if type(v) == "userdata" then return v end
  end
end

function M.stale_object()
  local c1, err = rds.connect(confs.pw)
  if not c1 then return { err = err } end
  assert(c1:query("select 1"))
  local pid1 = c1:query("select pg_backend_pid() as p")[1].p
  local object1 = object_of(c1)
  local kept = c1:keepalive()
  local c2 = assert(rds.connect(confs.pw))
  local out = { kept = kept, reused = c2:getreusedtimes(), same_backend = c2:query("select pg_backend_pid() as p")[1].p == pid1 }
  -- the checkout of that pipe got the kept object back (the door's adopt)
  out.same_object = object1 ~= nil and rawequal(object_of(c2), object1)
  local q, qerr = c1:query("select 1")
  out.old_query = { q ~= nil, qerr }
  out.old_reused = { c1:getreusedtimes() }
  out.old_timeout = { c1:settimeout(100) }
  out.old_keepalive = { c1:keepalive() }
  out.old_close = { c1:close() }
  out.old_str = tostring(c1)
  out.old_cosocket = c1:_is_cosocket()
  -- the new object still has its session, untouched
  local r, rerr = c2:query("select 2 as two")
  out.new_query = r and r[1].two or rerr
  out.new_reused = c2:getreusedtimes()
  out.new_kept = c2:keepalive()
  -- a checked out connection closed, or failed over its cosocket, answers
  -- getreusedtimes() as closed, though its count is known in Lua
  local c3 = assert(rds.connect(confs.pw))
  out.third_reused = c3:getreusedtimes()
  c3:close()
  out.closed_reused = { c3:getreusedtimes() }
  return out
end

-- The pooled cycle (connect from the pool, query, keepalive) under
-- LuaJIT's trace compiler: the traces of our chunks that aborted with a
-- code-shape error LuaJIT keeps hitting (it blacklists the function, which
-- then runs in the interpreter for good), found through jit.attach.
-- Counted: a root trace that started at one of our functions' entry and
-- aborted with "leaving loop in root trace" (a tail call to a fast function
-- that returns into the caller's frame, such as `return setmetatable(...)`),
-- and "NYI: return to lower frame" anywhere in our chunks. Loop traces of
-- loops that ran once abort too; they are not counted (LuaJIT compiles the
-- function around them).
local OUR_CHUNKS = { ["=kong_rds_iam"] = true, ["=kong_rds_iam.ffi_door"] = true, ["=kong_rds_iam.ffi_token"] = true }
function M.jit_aborts(cycles)
  if not jit then return { err = "not LuaJIT" } end
  local jutil, vmdef = require "jit.util", require "jit.vmdef"
  local function ours(func)
    local info = jutil.funcinfo(func)
    return info and OUR_CHUNKS[info.source] and info or nil
  end
  local starts, aborts, traces = {}, {}, 0
  local function on_trace(what, tr, func, pc, otr, oex)
    if what == "start" then
      local info = ours(func)
      starts[tr] = info and jutil.funcinfo(func, pc).currentline == info.linedefined and info or nil
      traces = traces + 1
    elseif what == "abort" then
      local msg = vmdef.traceerr[otr]
      if type(msg) == "string" and oex then msg = msg:format(oex) end
      local at = ours(func)
      if (starts[tr] and msg == "leaving loop in root trace") or (at and msg:find("return to lower frame", 1, true)) then
        local f = starts[tr] or at
        aborts[#aborts + 1] = ("%s:%d: %s"):format(f.source, f.linedefined, msg)
      end
      starts[tr] = nil
    end
  end
  jit.flush() -- record everything anew, with the callback attached
  jit.attach(on_trace, "trace")
  local ok, err = pcall(function()
    for _ = 1, cycles do
      local c = assert(rds.connect(confs.pw))
      local r = assert(c:query("select 1 as x"))
      assert(r[1].x == 1)
      assert(c:keepalive())
    end
  end)
  jit.attach(on_trace)
  return { err = (not ok) and tostring(err) or nil, aborts = aborts, traces = traces, cycles = cycles }
end

-- Programmer errors in conn methods.
function M.errors()
  local c, err = rds.connect(confs.pw)
  if not c then return { ok = false, err = err } end
  local out = { type = type(c), str = tostring(c), cases = {} }
  local cases = {
    { "query()", function() return c:query() end, true },
    { "query({})", function() return c:query({}) end, true },
    { "query(nil self)", function() return c.query(nil, "select 1") end, true },
    { "query(string self)", function() return c.query("x", "select 1") end, false },
    { "close(nil self)", function() return c.close(nil) end, false },
    { "settimeout('soon')", function() return c:settimeout("soon") end, false },
    { "escape_literal({})", function() return c:escape_literal({}) end, false },
    { "escape_identifier({})", function() return c:escape_identifier({}) end, false },
  }
  for i, case in ipairs(cases) do
    local ok, e = pcall(case[2])
    out.cases[i] = { name = case[1], must_raise = case[3], raised = not ok, etype = type(e),
                     msg = tostring(e) }
  end
  local res, qerr = query(c, "select 1 as one")
  out.after, out.after_err = res and res[1].one, qerr
  out.closed = c:close()
  return out
end

-- A query the client abandons (lua_check_client_abort on).
function M.abandon(tag)
  local c, err = rds.connect(confs.pw_thread)
  if not c then return M.reply { ok = false, err = err } end
  local res, qerr = query(c, ("select /* %s */ pg_sleep(10) as s"):format(tag_of(tag)))
  M.abandon_returned = { tag = tag, ok = res ~= nil, err = qerr }  -- only if the handler runs on
  c:close()
  M.reply(M.abandon_returned)
end

-- A cosocket wait that times out: a query's wait is bounded by pg_timeout
-- plus 2 s for the cancel, plus the slack: 1000 + 2000 - 2800 = 200 ms.
function M.slack(tag)
  local c, err = rds.connect(copy(confs.pw_thread, { pg_timeout = 1000 }))
  if not c then return { ok = false, err = err } end
  local old = rds._wait_slack_ms
  rds._wait_slack_ms = -2800
  local t0 = now()
  local res, qerr = query(c, ("select /* %s */ pg_sleep(10) as s"):format(tag_of(tag)))
  local ms = (now() - t0) * 1000
  rds._wait_slack_ms = old
  local closed, cerr = c:close()
  return { ok = res ~= nil, err = qerr, ms = ms, old_slack = old, closed = closed, close_err = cerr }
end

-- pg_timeout fires on a query: cancelled, connection closed.
function M.pg_timeout(tag)
  local c, err = rds.connect(copy(confs.pw, { pg_timeout = 500 }))
  if not c then return { ok = false, err = err } end
  local t0 = now()
  local res, qerr = query(c, ("select /* %s */ pg_sleep(10) as s"):format(tag_of(tag)))
  local ms = (now() - t0) * 1000
  local res2, qerr2 = query(c, "select 1 as one")
  return { ok = res ~= nil, err = qerr, ms = ms, after = res2 and res2[1].one, after_err = qerr2,
           str = tostring(c) }
end

return M
]==]

local function nbconf_lua(e)
  return ([[
return {
  iam = { pg_host = "localhost", pg_port = %d, pg_user = %q, pg_database = %q, pg_timeout = 5000,
          pg_iam_auth = true, pg_iam_auth_region = "us-east-1", pg_ssl_verify = true, pg_ssl_cafile = %q },
  pw = { pg_host = "127.0.0.1", pg_port = %d, pg_user = "pw_scram", pg_password = %q, pg_database = %q,
         pg_timeout = 5000, pg_ssl = true, pg_ssl_required = true, pg_ssl_verify = true, pg_ssl_cafile = %q },
  -- the I/O thread owns the socket: usable across requests and phases
  pw_thread = { pg_host = "127.0.0.1", pg_port = %d, pg_user = "pw_scram", pg_password = %q, pg_database = %q,
         pg_timeout = 5000, pg_ssl = true, pg_ssl_required = true, pg_ssl_verify = true, pg_ssl_cafile = %q,
         pg_cosocket = false },
}
]]):format(e.port, e.iam_users[1], e.db, e.ca, e.port, e.users.pw_scram, e.db, e.ca,
           e.port, e.users.pw_scram, e.db, e.ca)
end

-- http-context directives. o.probe: the 5 ms stall probe; o.iw_conn: a
-- connection opened in init_worker; o.nop_timer: a yielding call from a
-- timer in every worker; o.init: module calls in init_by_lua (the master);
-- o.client_abort: lua_check_client_abort on.
local function http_block(o)
  o = o or {}
  return table.concat({
    "lua_shared_dict nb 1m;",
    o.client_abort and "lua_check_client_abort on;" or "",
    "init_by_lua_block {",
    "  require 'kong_rds_iam'",
    "  local nb = require 'nb'",
    o.init and [[
  local r = nb.cycle("pw", 0, "nb_init")
  local ok, nop = pcall(require("kong_rds_iam")._nop)
  r.nop = ok and nop or ("raised: " .. tostring(nop))
  r.stats = nb.stats()
  ngx.shared.nb:set("init", require("cjson").encode(r))]] or "",
    "}",
    "init_worker_by_lua_block {",
    "  local nb = require 'nb'",
    o.probe and "  nb.start_probe()" or "",
    o.iw_conn and "  nb.open_iw_conn()" or "",
    o.nop_timer and "  nb.nop_timer()" or "",
    "}",
  }, "\n")
end

local SERVER = [[
    location = /ping { content_by_lua_block { ngx.say("pong") } }
    location = /stats { content_by_lua_block { local nb = require "nb"; nb.reply(nb.stats()) } }
    location = /nop { content_by_lua_block { local nb = require "nb"; nb.reply(nb.nop()) } }
    location = /q { content_by_lua_block { local nb = require "nb"
      nb.reply(nb.cycle(ngx.var.arg_who, ngx.var.arg_s, ngx.var.arg_tag)) } }
    location = /rewrite_q {
      rewrite_by_lua_block { ngx.ctx.r = require("nb").cycle(ngx.var.arg_who, ngx.var.arg_s, "nb_rewrite") }
      content_by_lua_block { require("nb").reply(ngx.ctx.r) } }
    location = /access_q {
      access_by_lua_block { ngx.ctx.r = require("nb").cycle(ngx.var.arg_who, ngx.var.arg_s, "nb_access") }
      content_by_lua_block { require("nb").reply(ngx.ctx.r) } }
    location = /gap { content_by_lua_block { local nb = require "nb"; nb.reply(nb.gap_read()) } }
    location = /gap_reset { content_by_lua_block { local nb = require "nb"; nb.gap_reset(); nb.reply({ ok = true }) } }
    location = /token { content_by_lua_block { local nb = require "nb"; nb.reply(nb.token_summary(ngx.var.arg_who)) } }
    location = /timer_start { content_by_lua_block { local nb = require "nb"
      nb.reply(nb.timer_start(tonumber(ngx.var.arg_n) or 1, ngx.var.arg_s)) } }
    location = /timer_result { content_by_lua_block { local nb = require "nb"
      nb.reply({ result = nb.timer_result, nop_timer = nb.nop_timer_result }) } }
    location = /iw_info { content_by_lua_block { local nb = require "nb"; nb.reply({ iw = nb.iw }) } }
    location = /iw_query { content_by_lua_block { local nb = require "nb"; nb.reply(nb.iw_query(ngx.var.arg_s)) } }
    location = /store_open { content_by_lua_block { local nb = require "nb"; nb.reply(nb.store_open(ngx.var.arg_thread == "1")) } }
    location = /store_keepalive { content_by_lua_block { local nb = require "nb"; nb.reply(nb.store_keepalive()) } }
    location = /store_use {
      content_by_lua_block { ngx.say("used") }
      header_filter_by_lua_block { require("nb").stored_query("header_filter") }
      log_by_lua_block { require("nb").stored_query("log") } }
    location = /store_results { content_by_lua_block { local nb = require "nb"; nb.reply(nb.store_results()) } }
    location = /phases {
      set_by_lua_block $nb_set { return require("nb").set_phase() }
      content_by_lua_block { require("nb").phases_content(ngx.var.nb_set) }
      header_filter_by_lua_block { require("nb").phases_step("header_filter") }
      body_filter_by_lua_block { if not ngx.ctx.body_filter_ran then ngx.ctx.body_filter_ran = true
        require("nb").phases_step("body_filter") end }
      log_by_lua_block { require("nb").phases_step("log") } }
    location = /phases_result { content_by_lua_block { local nb = require "nb"; nb.reply(nb.phases or {}) } }
    location = /sort { content_by_lua_block { local nb = require "nb"; nb.reply(nb.sort()) } }
    location = /busy { content_by_lua_block { local nb = require "nb"; nb.reply(nb.busy()) } }
    location = /busy_close { content_by_lua_block { local nb = require "nb"; nb.reply(nb.busy_close()) } }
    location = /errors { content_by_lua_block { local nb = require "nb"; nb.reply(nb.errors()) } }
    location = /stale_object { content_by_lua_block { local nb = require "nb"; nb.reply(nb.stale_object()) } }
    location = /jit_aborts { content_by_lua_block { local nb = require "nb"; nb.reply(nb.jit_aborts(2000)) } }
    location = /door_results { content_by_lua_block { local nb = require "nb"; nb.reply(nb.door_results()) } }
    location = /big_result { content_by_lua_block { local nb = require "nb"; nb.reply(nb.big_result()) } }
    location = /abandon { content_by_lua_block { require("nb").abandon(ngx.var.arg_tag) } }
    location = /abandon_returned { content_by_lua_block { local nb = require "nb"
      nb.reply({ returned = nb.abandon_returned }) } }
    location = /slack { content_by_lua_block { local nb = require "nb"; nb.reply(nb.slack(ngx.var.arg_tag)) } }
    location = /pg_timeout { content_by_lua_block { local nb = require "nb"; nb.reply(nb.pg_timeout(ngx.var.arg_tag)) } }
    location = /init_result { content_by_lua_block { local nb = require "nb"
      nb.reply({ init = require("cjson").decode(ngx.shared.nb:get("init") or "null") }) } }
]]

------------------------------------------------------------------ specs --

describe("non-blocking calls in OpenResty", function()
  local e

  setup(function()
    tmp_dir = (sh("mktemp -d /tmp/nb-spec.XXXXXXXX"):gsub("%s+$", ""))
    client_path = write_file(tmp_dir .. "/client.py", CLIENT_PY)
    e = assert(emu.start { region = "us-east-1" })
    assert(e:add_key(AKID, SECRET, SESSION, os.time() + 3600))
  end)

  teardown(function()
    if e then e:stop() end
    fake.stop_all()
    if tmp_dir and tmp_dir:match("^/tmp/nb%-spec%.") then sh("rm -rf " .. quote(tmp_dir)) end
    local parts = {}
    for k, v in pairs(measured) do parts[#parts + 1] = ("%s=%s"):format(k, type(v) == "number" and ("%.3f"):format(v) or tostring(v)) end
    table.sort(parts)
    io.stderr:write("\nnonblocking_spec measurements: ", table.concat(parts, " "), "\n")
  end)

  local function start(o)
    local n, err = nginx.start(merge({
      workers = 1, env = MASTER_ENV, server = SERVER,
      files = { ["lua/nb.lua"] = NB_LUA, ["lua/nbconf.lua"] = nbconf_lua(e) },
    }, o))
    assert(n, err)
    return n
  end

  describe("in one worker (yielding)", function()
    local n

    setup(function()
      n = start { http = http_block { probe = true, iw_conn = true } }
    end)

    teardown(function()
      if n then n:stop() end
    end)

    it("20 concurrent password (TLS) connect + pg_sleep(0.2) + close answer in well under 1 s", function()
      local res = burst(n, { { path = "/q?who=pw&s=0.2&tag=nb_c20pw", count = CONCURRENT } })
      local backends = {}
      for _, r in ipairs(bodies(res)) do
        assert_cycle(r, "pw_scram", "password request")
        backends[r.backend] = true
      end
      local distinct = 0
      for _ in pairs(backends) do distinct = distinct + 1 end
      assert.equal(CONCURRENT, distinct)
      measured.wall_pw_yield = res.wall
      assert.is_true(res.wall < PW_WALL, ("20 concurrent password requests took %.3f s"):format(res.wall))
      assert_idle(n)
    end)

    it("20 concurrent IAM connect + pg_sleep(0.2) + close answer concurrently", function()
      assert(e:clear_log())
      local res = burst(n, { { path = "/q?who=iam&s=0.2&tag=nb_c20iam", count = CONCURRENT } })
      for _, r in ipairs(bodies(res)) do
        assert_cycle(r, e.iam_users[1], "IAM request")
      end
      measured.wall_iam_yield = res.wall
      assert.is_true(res.wall < IAM_WALL, ("20 concurrent IAM requests took %.3f s"):format(res.wall))
      local log = e:log()
      assert.equal(CONCURRENT, count(log, 'akid="' .. AKID .. '" ACCEPT'), log)
      assert.is_nil(log:find("REJECT", 1, true), log)
      assert_idle(n)
    end)

    it("stall probe: the event loop never stalls 100 ms while 20 connects + queries run", function()
      for _, who in ipairs { "iam", "pw" } do
        get_json(n, "/gap_reset")
        local res = burst(n, { { path = ("/q?who=%s&s=0.2&tag=nb_gap"):format(who), count = CONCURRENT } })
        for _, r in ipairs(bodies(res)) do assert.is_true(r.ok, cjson.encode(r)) end
        local gap = get_json(n, "/gap")
        measured["gap_ms_" .. who .. "_yield"] = gap.max_ms
        measured["gap_ticks_" .. who .. "_yield"] = gap.ticks
        -- ~1 s at 5 ms: the probe really ticked through the burst
        assert.is_true(gap.ticks >= 20, "probe ticks: " .. cjson.encode(gap))
        assert.is_true(gap.max_ms < MAX_GAP_MS, ("%s: largest event-loop gap %.1f ms"):format(who, gap.max_ms))
      end
    end)

    it("rewrite_by_lua and access_by_lua calls yield too", function()
      local res = burst(n, {
        { path = "/rewrite_q?who=pw&s=0.2", count = 5 },
        { path = "/access_q?who=pw&s=0.2", count = 5 },
      })
      for _, r in ipairs(bodies(res, 1)) do
        assert_cycle(r, "pw_scram", "rewrite")
        assert.equal("rewrite", r.phase)
      end
      for _, r in ipairs(bodies(res, 2)) do
        assert_cycle(r, "pw_scram", "access")
        assert.equal("access", r.phase)
      end
      measured.wall_rewrite_access = res.wall
      -- blocking, 10 x 0.2 s would take 2 s
      assert.is_true(res.wall < 0.8, ("10 rewrite/access requests took %.3f s"):format(res.wall))
    end)

    it("calls in an ngx.timer yield: the probe keeps ticking through 3 x (connect + pg_sleep(0.2))", function()
      get_json(n, "/gap_reset")
      assert.truthy(get_json(n, "/timer_start?n=3&s=0.2").ok)
      local r = wait_for(function() return get_json(n, "/timer_result").result end, 10, 0.1)
      assert(r, "the timer did not finish")
      assert.equal("timer", r.phase)
      for _, c in ipairs(r.results) do assert_cycle(c, "pw_scram", "timer") end
      assert.is_true(r.ms >= 600, cjson.encode(r))
      local gap = get_json(n, "/gap")
      measured.gap_ms_timer = gap.max_ms
      assert.is_true(gap.max_ms < MAX_GAP_MS, ("largest gap %.1f ms while the timer queried"):format(gap.max_ms))
    end)

    it("a connection opened in init_worker_by_lua (blocking) queries in content (yielding)", function()
      local iw = get_json(n, "/iw_info").iw
      assert(iw, "init_worker did not run")
      assert.equal("init_worker", iw.phase)
      assert.is_nil(iw.err)
      assert.is_nil(iw.qerr)
      assert.equal("table", iw.type)
      assert.matches("^kong_rds_iam connection: pw_scram@127%.0%.0%.1:%d+/kong %(open, tls%)$", iw.str)
      assert.is_number(iw.backend)
      -- the query sleeps 0.3 s; a /ping sent 0.1 s later is answered at once
      local res = burst(n, { { path = "/iw_query?s=0.3" }, { path = "/ping", delay = 0.1 } })
      local q = bodies(res, 1)[1]
      assert.is_true(q.ok, cjson.encode(q))
      assert.equal("content", q.src)
      assert.equal(iw.backend, q.backend)   -- the same session
      for _, r in ipairs(res.results) do
        if r.group == 2 then
          assert.equal(200, r.status)
          assert.equal("pong\n", r.body)
          assert.is_true(r.t1 - r.t0 < 0.15, ("/ping took %.3f s"):format(r.t1 - r.t0))
          assert.is_true(r.t1 < q._t1, "/ping was answered only after the query")
        end
      end
      -- and again: still usable
      q = get_json(n, "/iw_query?s=0")
      assert.is_true(q.ok, cjson.encode(q))
      assert.equal(iw.backend, q.backend)
    end)

    it("over a cosocket (the default) a connection answers nil, err outside its request, as cosockets cannot be used there", function()
      local o = get_json(n, "/store_open")
      assert.is_true(o.ok, cjson.encode(o))
      local status, body = n:get("/store_use")
      assert.equal(200, status, body)
      local r = get_json(n, "/store_results")
      local hf, log = r.results.header_filter, r.results.log
      assert(hf and log, cjson.encode(r))
      for _, p in ipairs { hf, log, r.after } do
        assert.is_nil(p.raised, cjson.encode(p))
        assert.is_nil(p.ok, cjson.encode(p))
        assert.matches("cosocket, which cannot be used here", p.err, 1, true)
      end
      -- keepalive from another request closes it instead: nginx could not
      -- pool its cosocket from there
      o = get_json(n, "/store_open")
      assert.is_true(o.ok, cjson.encode(o))
      local k = get_json(n, "/store_keepalive")
      assert.is_nil(k.ok, cjson.encode(k))
      assert.matches("cosocket, which cannot be used here", k.err, 1, true)
      assert.equal("closed", k.after_err, cjson.encode(k))
      assert.matches("(closed)", k.str, 1, true)
      assert_clean_log(n)
    end)

    it("with pg_cosocket off a connection opened in content (yielding) queries in header_filter and log (blocking) and again in content", function()
      local o = get_json(n, "/store_open?thread=1")
      assert.is_true(o.ok, cjson.encode(o))
      assert.equal("content", o.phase)
      local status, body = n:get("/store_use")
      assert.equal(200, status, body)
      assert.equal("used\n", body)
      local r = get_json(n, "/store_results")
      local hf, log = r.results.header_filter, r.results.log
      assert(hf and log, cjson.encode(r))
      assert.is_true(hf.ok, cjson.encode(hf))
      assert.equal("header_filter", hf.phase)
      assert.equal("header_filter", hf.label)
      assert.equal(o.backend, hf.backend)
      assert.is_true(log.ok, cjson.encode(log))
      assert.equal("log", log.phase)
      assert.equal("log", log.label)
      assert.equal(o.backend, log.backend)
      assert.is_true(r.after.ok, cjson.encode(r.after))
      assert.equal(o.backend, r.after.backend)
      assert.is_true(r.closed, cjson.encode(r))
      assert.truthy(n:error_log():find('nb stored query in log: {', 1, true))
    end)

    it("calls that cannot yield block instead of failing: table.sort comparator", function()
      local r = get_json(n, "/sort")
      assert.is_true(r.sort_ok, cjson.encode(r))
      assert.equal("1,2,3", r.sorted)
      assert.is_true(r.done)
      assert_cycle(r.cycle, "pw_scram", "connect + query in a comparator")
      assert.is_true(r.nop, cjson.encode(r))
      assert.is_true(r.token, cjson.encode(r))
    end)

    it("calls that cannot yield block instead of failing: set_by_lua, header_filter, body_filter, log (pg_cosocket off)", function()
      local status, body = n:get("/phases")
      assert.equal(200, status, body)
      local r = get_json(n, "/phases_result")
      assert.equal("set ok true", r.set)
      assert.is_true(r.content.ok, cjson.encode(r))
      for _, phase in ipairs { "header_filter", "body_filter", "log" } do
        local p = r[phase]
        assert(p, phase .. " did not run: " .. cjson.encode(r))
        assert.is_nil(p.raised, cjson.encode(p))
        assert.equal(phase, p.phase)
        assert.equal(phase, p.label, cjson.encode(p))
        assert.is_true(p.nop, cjson.encode(p))
        assert.is_true(p.token, cjson.encode(p))
      end
      assert.is_true(r.log.closed, cjson.encode(r.log))
      assert.is_true(r.log.cycle_ok, cjson.encode(r.log))
    end)

    it("a second concurrent call on one connection gets nil, 'connection busy' at once", function()
      local r = get_json(n, "/busy")
      assert.is_true(r.first.ok)
      assert.equal("first", r.first.who, cjson.encode(r))
      assert.is_nil(r.first.err)
      assert.is_true(r.first.ms >= 250, cjson.encode(r))
      assert.is_true(r.second.ok)
      assert.is_nil(r.second.who, cjson.encode(r))
      assert.equal("connection busy", r.second.err)
      assert.is_true(r.second.ms < 50, cjson.encode(r))
      assert.equal("after", r.after, cjson.encode(r))
      assert.is_true(r.closed)
      assert_idle(n)
    end)

    it("close() during a running query gets 'connection busy' and does not disturb the query", function()
      local r = get_json(n, "/busy_close")
      assert.is_nil(r.close.res, cjson.encode(r))
      assert.equal("connection busy", r.close.err)
      assert.is_true(r.close.ms < 50, cjson.encode(r))
      assert.equal("first", r.first.who, cjson.encode(r))
      assert.equal("after", r.after, cjson.encode(r))
      assert.is_true(r.closed, cjson.encode(r))
      assert_idle(n)
    end)

    it("a large result of three statements over a cosocket (rows built as they arrive) equals the I/O thread's", function()
      local r = get_json(n, "/big_result")
      local co, th = r.cosocket, r.thread
      assert(co and th, cjson.encode(r))
      assert.is_true(co.cosocket)
      assert.is_false(th.cosocket)
      for _, x in ipairs { co, th } do
        assert.is_nil(x.err, cjson.encode(x))
        assert.equal(3, x.n)
        assert.same({ 6000, 1, 3000 }, x.counts)
        assert.same({ id = 4321, t = ("x"):rep(200) .. "4321", n_is_null = true, a1 = 4321, b_is_null = true,
                      arr2 = 4322, one = 1, k = 3000 }, x.sample)
      end
      assert.equal(th.digest, co.digest)
    end)

    it("results through the FFI door equal those of the I/O thread", function()
      local r = get_json(n, "/door_results")
      assert.is_nil(r.err, cjson.encode(r))
      assert.is_true(r.door_open) -- LuaJIT in nginx: the door is open
      assert.is_true(r.door.cosocket)
      assert.is_false(r.thread.cosocket)
      assert.is_true(r.door.kept)
      local d, th = r.door.results, r.thread.results
      assert.equal(13, #d)
      for i = 1, 13 do
        assert.equal(th[i], d[i], "query " .. i)
      end
      -- the queries mean what they say
      assert.matches('"x"=1', d[1], 1, true)
      assert.matches('"big"="9007199254740993"', d[2], 1, true)
      assert.matches('"n"=NULL', d[2], 1, true)
      assert.matches('"affected_rows"=1', d[8], 1, true)
      assert.matches("division by zero", d[10], 1, true)
      assert.matches("WARNING: door", d[13], 1, true)
    end)

    it("the pooled cycle's Lua stays compiled under LuaJIT: no function of ours is left to the interpreter", function()
      local r = get_json(n, "/jit_aborts")
      assert.is_nil(r.err, cjson.encode(r))
      assert.is_true(r.traces > 0, cjson.encode(r)) -- the callback saw the compiler at work
      assert.same({}, r.aborts)
    end)

    it("an object kept alive answers as closed after its connection was checked out again, and never reaches it", function()
      local r = get_json(n, "/stale_object")
      assert.is_nil(r.err, cjson.encode(r))
      assert.is_true(r.kept)
      assert.is_true(r.reused > 0, cjson.encode(r))
      assert.is_true(r.same_backend, cjson.encode(r)) -- the very physical connection
      assert.same({ false, "closed" }, r.old_query)
      for _, what in ipairs { "old_reused", "old_timeout", "old_keepalive", "old_close" } do
        assert.same({ cjson.null, "closed" }, r[what], what)
      end
      assert.matches("(closed)", r.old_str, 1, true)
      assert.is_false(r.old_cosocket)
      assert.equal(2, r.new_query)
      assert.equal(r.reused, r.new_reused)
      assert.is_true(r.new_kept)
      assert.is_true(r.same_object, cjson.encode(r))
      assert.equal(r.reused + 1, r.third_reused)
      assert.same({ cjson.null, "closed" }, r.closed_reused)
    end)

    it("programmer errors in connection methods raise Lua strings (content handler)", function()
      local r = get_json(n, "/errors")
      assert.equal("table", r.type)
      assert.matches("^kong_rds_iam connection: pw_scram@127%.0%.0%.1:%d+/kong %(open, tls%)$", r.str)
      for _, c in ipairs(r.cases) do
        if c.must_raise then
          assert.is_true(c.raised, c.name .. " did not raise: " .. cjson.encode(c))
          assert.matches("bad argument", c.msg, 1, true)
          assert.matches("query", c.msg, 1, true)
        end
        if c.raised then
          assert.equal("string", c.etype, c.name .. " raised a " .. c.etype .. ": " .. c.msg)
        end
      end
      assert.equal(1, r.after, cjson.encode(r))
      assert.is_true(r.closed)
    end)

    it("rds._nop and rds.stats: a no-op job, an empty job table when idle", function()
      local r = get_json(n, "/nop")
      assert.is_nil(r.raised)
      assert.is_true(r.res)
      assert.equal("content", r.phase)
      assert.is_true(r.stats.io_thread)
      assert_idle(n)
    end)

    it("leaves a clean error log", function()
      assert_clean_log(n)
    end)
  end)

  describe("with KONG_RDS_IAM_YIELD=off (negative control: every call blocks)", function()
    local n

    setup(function()
      n = start { env = merge(MASTER_ENV, { KONG_RDS_IAM_YIELD = "off" }), http = http_block { probe = true } }
    end)

    teardown(function()
      if n then n:stop() end
    end)

    it("20 concurrent password connect + pg_sleep(0.2) take over 3 s", function()
      local res = burst(n, { { path = "/q?who=pw&s=0.2&tag=nb_c20off", count = CONCURRENT } })
      for _, r in ipairs(bodies(res)) do assert_cycle(r, "pw_scram", "blocking request") end
      measured.wall_pw_blocking = res.wall
      assert.is_true(res.wall > BLOCKING_WALL, ("20 blocking requests took only %.3f s"):format(res.wall))
    end)

    it("the stall probe sees the blocking: a larger gap than the yielding path's", function()
      get_json(n, "/gap_reset")
      local res = burst(n, { { path = "/q?who=iam&s=0.2&tag=nb_gapoff", count = 4 } })
      for _, r in ipairs(bodies(res)) do assert_cycle(r, e.iam_users[1], "blocking IAM request") end
      local gap = get_json(n, "/gap")
      measured.gap_ms_iam_blocking = gap.max_ms
      assert.is_true(gap.max_ms > 150, ("blocking: largest gap only %.1f ms"):format(gap.max_ms))
      if measured.gap_ms_iam_yield then
        assert.is_true(gap.max_ms > measured.gap_ms_iam_yield,
          ("blocking gap %.1f ms <= yielding gap %.1f ms"):format(gap.max_ms, measured.gap_ms_iam_yield))
      end
    end)

    it("rds._nop still works (blocking)", function()
      local r = get_json(n, "/nop")
      assert.is_nil(r.raised)
      assert.is_true(r.res)
      assert_clean_log(n)
    end)
  end)

  describe("credentials from a slow IMDS (500 ms)", function()
    local n, f
    local creds_path

    setup(function()
      f = assert(fake.start { emulator_dir = e.dir })
      creds_path = "/latest/meta-data/iam/security-credentials/" .. f.role_name
      n = start {
        env = merge(f:env("imds"), {
          AWS_CONFIG_FILE = "/nonexistent/kong-rds-iam-nb/config",
          AWS_SHARED_CREDENTIALS_FILE = "/nonexistent/kong-rds-iam-nb/credentials",
        }),
        http = http_block {},
      }
    end)

    teardown(function()
      if n then n:stop() end
      if f then f:stop() end
    end)

    it("50 concurrent first token() calls share one fetch while /ping is answered at once", function()
      assert(f:set_mode("imds", "timeout", { seconds = 0.5, path = creds_path }))
      assert(f:reset(true))
      local res = burst(n, { { path = "/token?who=iam", count = 50 }, { path = "/ping", delay = 0.15 } })
      local tokens = bodies(res, 1)
      assert.equal(50, #tokens)
      local ping
      for _, r in ipairs(res.results) do if r.group == 2 then ping = r end end
      assert.equal(200, ping.status, tostring(ping.err))
      assert.equal("pong\n", ping.body)
      measured.ping_ms_during_imds = (ping.t1 - ping.t0) * 1000
      assert.is_true(ping.t1 - ping.t0 < PING_MS / 1000, ("/ping took %.3f s"):format(ping.t1 - ping.t0))

      local creds = assert(f:credentials())
      assert.equal(1, #creds, cjson.encode(creds))
      local first_done = math.huge
      for _, t in ipairs(tokens) do
        assert.is_true(t.ok, cjson.encode(t))
        assert.is_true(t.shape)
        assert.equal(tokens[1].md5, t.md5)
        assert.equal(creds[1].access_key_id, t.akid)
        assert.is_true(t.expires_at > os.time() + 800)
        first_done = math.min(first_done, t._t1)
      end
      -- they really waited for IMDS, and /ping came back while they did
      assert.is_true(first_done > 0.45, ("a token came back after %.3f s"):format(first_done))
      assert.is_true(ping.t1 < first_done, "/ping was answered only after the tokens")

      local c = assert(f:counts())
      assert.equal(1, c.imds[creds_path], cjson.encode(c.imds))

      -- the token is valid: a connection with it is accepted
      assert(e:clear_log())
      local q = get_json(n, "/q?who=iam")
      assert_cycle(q, e.iam_users[1], "IAM connect with IMDS credentials")
      assert.truthy(e:log():find('akid="' .. creds[1].access_key_id .. '" ACCEPT', 1, true), e:log())
      assert.equal(1, assert(f:counts()).imds[creds_path])
      assert_idle(n)
    end)
  end)

  describe("abandoned waits (lua_check_client_abort on)", function()
    local n

    setup(function()
      n = start { http = http_block { client_abort = true } }
    end)

    teardown(function()
      if n then n:stop() end
    end)

    -- Polls up to 3 s for an empty job table and no backend left with `tag`.
    local function assert_abandoned_cleanly(tag)
      local last_stats, rows
      local done = wait_for(function()
        last_stats = stats(n)
        rows = tagged_backends(e, tag)
        return last_stats.jobs == 0 and #rows == 0
      end, 3, 0.1)
      assert.equal(0, last_stats.jobs, "jobs left: " .. cjson.encode(last_stats))
      assert.same({}, rows, "backends still there (pid|state|user)")
      assert.is_truthy(done)
      assert.equal(0, idle_in_transaction(e))
      assert.is_true(wait_for(function() return cancelled_in_log(e, tag) end, 2, 0.1),
        "PostgreSQL did not log the cancellation of " .. tag)
    end

    it("a client that disconnects mid-query leaves no job and no backend behind (pg_cosocket off)", function()
      local tag = unique_tag("abort")
      local c = socket.tcp()
      c:settimeout(5)
      assert(c:connect("127.0.0.1", n.port))
      local t0 = nginx.now()
      assert(c:send(("GET /abandon?tag=%s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"):format(tag)))
      local running = wait_for(function()
        for _, row in ipairs(tagged_backends(e, tag)) do
          if row:find("|active|", 1, true) then return true end
        end
      end, 3, 0.05)
      assert.is_true(running, "the query never ran")
      local wait = 0.3 - (nginx.now() - t0)
      if wait > 0 then nginx.sleep(wait) end
      c:close()
      assert_abandoned_cleanly(tag)
      -- the worker is fine
      assert_cycle(get_json(n, "/q?who=pw"), "pw_scram", "after the abort")
    end)

    it("a wake cosocket wait that times out (_wait_slack_ms = -2800, pg_timeout 1000, pg_cosocket off) returns and leaves nothing behind", function()
      local tag = unique_tag("slack")
      local r = get_json(n, "/slack?tag=" .. tag)
      measured.slack_wait_ms = r.ms
      assert.equal(1000, r.old_slack)
      assert.is_false(r.ok)
      assert.is_string(r.err)
      -- the 200 ms cosocket timeout, not pg_timeout's 1000 ms
      assert.is_true(r.ms >= 150 and r.ms < 900, cjson.encode(r))
      assert_abandoned_cleanly(tag)
      assert_cycle(get_json(n, "/q?who=pw"), "pw_scram", "after the cosocket timeout")
    end)

    it("pg_timeout on a query cancels the statement and closes the connection", function()
      local tag = unique_tag("pgtimeout")
      local r = get_json(n, "/pg_timeout?tag=" .. tag)
      assert.is_false(r.ok)
      assert.matches("^timeout", r.err)
      assert.is_true(r.ms >= 400 and r.ms < 1500, cjson.encode(r))
      assert.equal("closed", r.after_err, cjson.encode(r))
      assert_abandoned_cleanly(tag)
      assert_clean_log(n)
    end)
  end)

  describe("the I/O thread and the wake socket", function()
    local n

    setup(function()
      -- daemon off: the master is the very process that ran init_by_lua
      n = start { daemon = false, http = http_block { init = true } }
    end)

    teardown(function()
      if n then n:stop() end
    end)

    it("starts lazily in the worker, on its first yielding call", function()
      local worker = assert(n:worker_pids()[1])
      local s = stats(n)
      assert.equal(0, s.jobs)
      assert.is_false(s.io_thread)
      assert.same({}, io_threads(n, worker))
      local r = get_json(n, "/nop")
      assert.is_true(r.res)
      assert.is_true(r.stats.io_thread)
      assert.equal(1, #io_threads(n, worker))
      assert.is_true(stats(n).io_thread)
    end)

    it("init_by_lua (the master) blocks and works; the master has no I/O thread", function()
      local r = get_json(n, "/init_result").init
      assert(r, "init_by_lua did not record")
      assert.equal("init", r.phase)
      assert_cycle(r, "pw_scram", "init_by_lua")
      assert.is_true(r.nop)
      assert.is_false(r.stats.io_thread)
      local master = assert(n:master_pid())
      local count_, ok = n:settle_threads(master, 1, 5)
      assert(ok, ("master has %s threads"):format(tostring(count_)))
      assert.same({}, io_threads(n, master))
    end)

    it("is named kong_rds_iam-io and blocks every blockable signal", function()
      local worker = assert(n:worker_pids()[1])
      assert.is_true(get_json(n, "/nop").res)
      local t = io_threads(n, worker)
      assert.equal(1, #t)
      assert(t[1].sigblk, "no SigBlk")
      measured.io_sigblk = t[1].sigblk
      assert.same({}, unblocked_signals(t[1].sigblk), "SigBlk " .. t[1].sigblk .. " misses these signals")
      local count_, ok = n:settle_threads(worker, 2, 5)
      assert(ok, ("worker has %s threads"):format(tostring(count_)))
    end)

    it("wakes through <prefix>/sockets/kong_rds_iam.<pid>.sock (dir mode 0700), removed at exit", function()
      local worker = assert(n:worker_pids()[1])
      assert.is_true(get_json(n, "/nop").res)
      local dir = n.prefix .. "/sockets"
      assert.equal("700", mode_of(dir))
      assert.same({ ("kong_rds_iam.%d.sock"):format(worker) }, socket_files(dir))
      assert.is_true(is_socket(("%s/kong_rds_iam.%d.sock"):format(dir, worker)))
      assert_clean_log(n)
      local ok, secs = n:quit(10)
      assert.is_true(ok, "master still running after " .. secs .. " s")
      assert.is_false(nginx.alive(worker))
      assert.same({}, socket_files(dir))
    end)
  end)

  describe("KONG_RDS_IAM_SOCKET_DIR", function()
    local n, dir, stale, live

    setup(function()
      dir = (sh("mktemp -d /tmp/nb-sockets.XXXXXXXX"):gsub("%s+$", ""))
      stale = ("kong_rds_iam.%d.sock"):format(dead_pid())
      live = ("kong_rds_iam.%d.sock"):format(own_pid())
      -- two leftover sockets: one of a dead pid, one of a live process
      sh(("%s -c 'import socket, sys\nfor p in sys.argv[1:]: socket.socket(socket.AF_UNIX).bind(p)' %s %s")
        :format(PYTHON, quote(dir .. "/" .. stale), quote(dir .. "/" .. live)))
      assert(is_socket(dir .. "/" .. stale) and is_socket(dir .. "/" .. live))
      n = start { env = merge(MASTER_ENV, { KONG_RDS_IAM_SOCKET_DIR = dir }), http = http_block {} }
    end)

    teardown(function()
      if n then n:stop() end
      if dir and dir:match("^/tmp/nb%-sockets%.") then sh("rm -rf " .. quote(dir)) end
    end)

    it("puts the wake socket there, sweeps dead pids' files, keeps live ones, removes its own at exit", function()
      local r = get_json(n, "/nop")
      assert.is_true(r.res)
      local mine = ("kong_rds_iam.%d.sock"):format(r.worker_pid)
      local files = socket_files(dir)
      local want = { mine, live }
      table.sort(want)
      assert.same(want, files)
      assert.is_true(is_socket(dir .. "/" .. mine))
      assert.same({}, socket_files(n.prefix .. "/sockets"))
      local ok = n:quit(10)
      assert.is_true(ok)
      assert.same({ live }, socket_files(dir))
    end)
  end)

  describe("socket directory fallback", function()
    local n, tmpdir

    setup(function()
      tmpdir = (sh("mktemp -d /tmp/nb-tmpdir.XXXXXXXX"):gsub("%s+$", ""))
      -- <prefix>/sockets is a regular file: the module must fall back to mkdtemp
      n = start { env = merge(MASTER_ENV, { TMPDIR = tmpdir }), http = http_block {},
                  files = { ["lua/nb.lua"] = NB_LUA, ["lua/nbconf.lua"] = nbconf_lua(e),
                            sockets = "not a directory\n" } }
    end)

    teardown(function()
      if n then n:stop() end
      if tmpdir and tmpdir:match("^/tmp/nb%-tmpdir%.") then sh("rm -rf " .. quote(tmpdir)) end
    end)

    it("uses a fresh $TMPDIR/kong_rds_iam.XXXXXX when <prefix>/sockets is unusable", function()
      local r = get_json(n, "/nop")
      assert.is_true(r.res)
      assert.is_true(get_json(n, "/q?who=pw").ok)
      local name = ("kong_rds_iam.%d.sock"):format(r.worker_pid)
      -- $TMPDIR of the master's environment; /tmp if the module reads TMPDIR
      -- in the worker (whose environment nginx empties)
      local found = sh(("ls -d %s/kong_rds_iam.*/%s /tmp/kong_rds_iam.*/%s 2>/dev/null"):format(
        quote(tmpdir), name, name)):match("[^\n]+")
      assert(found, "no " .. name .. " under " .. tmpdir .. "/kong_rds_iam.* or /tmp/kong_rds_iam.*")
      measured.fallback_socket = found
      local d = found:match("^(.*)/[^/]*$")
      assert.matches("/kong_rds_iam%.[%w]+$", d)
      assert.equal("700", mode_of(d))
      assert.is_true(n:quit(10))
      assert.is_false(exists(found) or is_socket(found))
      if d:match("^/tmp/kong_rds_iam%.") then sh("rmdir " .. quote(d) .. " 2>/dev/null") end
    end)
  end)

  describe("HUP reloads under load (2 workers)", function()
    local n

    setup(function()
      -- reuseport off: with SO_REUSEPORT the kernel resets connections queued
      -- on an old worker's socket at a reload, which is nginx's business
      n = start { workers = 2, reuseport = false, http = http_block { nop_timer = true } }
    end)

    teardown(function()
      if n then n:stop() end
    end)

    it("answers every request, leaks no thread, blocks signals in the I/O thread, and quits without leftovers", function()
      local master = assert(n:master_pid())
      local first_workers = n:worker_pids()
      local wait_load = loop_in_background(n, { "/q?who=pw&tag=nb_reload", "/q?who=pw&tag=nb_reload",
                                                "/q?who=iam&tag=nb_reload" }, 10, 4.5)
      nginx.sleep(0.5)
      for _ = 1, 5 do
        assert.is_true(n:reload())
        nginx.sleep(0.7)
      end
      local load = wait_load(60)
      measured.reload_requests = load.requests
      assert.same({}, load.bad, "failed requests")
      assert.is_true(load.ok > 50, cjson.encode(load))

      assert.is_true(n:wait_workers(2, 15), "old workers did not exit")
      assert.equal(master, n:master_pid())
      local workers = n:live_workers()
      assert.equal(2, #workers)
      for _, pid in ipairs(first_workers) do assert.is_false(nginx.alive(pid)) end

      -- every worker's init_worker timer made a yielding call: I/O thread up
      for _, pid in ipairs(workers) do
        local t = wait_for(function() local list = io_threads(n, pid); return #list == 1 and list end, 5, 0.1)
        assert(t, ("worker %d has no single kong_rds_iam-io thread: %s"):format(pid, cjson.encode(n:tasks(pid))))
        assert.same({}, unblocked_signals(t[1].sigblk), ("worker %d SigBlk %s"):format(pid, t[1].sigblk))
        local c, ok = n:settle_threads(pid, 2, 5)
        assert(ok, ("worker %d still has %s threads: %s"):format(pid, tostring(c), cjson.encode(n:tasks(pid))))
      end
      local c, ok = n:settle_threads(master, 1, 5)
      assert(ok, ("master has %s threads: %s"):format(tostring(c), cjson.encode(n:tasks(master))))
      assert.same({}, io_threads(n, master))

      -- one wake socket per live worker; the old workers removed theirs
      local dir = n.prefix .. "/sockets"
      local want = {}
      for _, pid in ipairs(workers) do want[#want + 1] = ("kong_rds_iam.%d.sock"):format(pid) end
      table.sort(want)
      assert.same(want, socket_files(dir))

      local log = assert_clean_log(n)
      assert.is_true(count(log, "reconfiguring") >= 5, log)

      local quit_ok, secs = n:quit(10)
      assert.is_true(quit_ok, "master still running after " .. secs .. " s")
      for _, pid in ipairs(workers) do assert.is_false(nginx.alive(pid)) end
      assert.same({}, socket_files(dir))
      assert_clean_log(n)
    end)
  end)

  describe("outside nginx (busted's own LuaJIT, blocking)", function()
    local function pw_connect()
      return assert(rds.connect {
        pg_host = "127.0.0.1", pg_port = e.port, pg_user = "pw_scram", pg_password = e.users.pw_scram,
        pg_database = e.db, pg_ssl = true, pg_ssl_required = true, pg_ssl_cafile = e.ca, pg_ssl_verify = true,
      })
    end

    it("programmer errors in connection methods raise Lua strings", function()
      local c = pw_connect()
      for name, fn in pairs {
        ["query()"] = function() return c:query() end,
        ["query({})"] = function() return c:query({}) end,
        ["query(nil self)"] = function() return c.query(nil, "select 1") end,
      } do
        local ok, err = pcall(fn)
        assert.is_false(ok, name .. " did not raise")
        assert.equal("string", type(err), name .. " raised a " .. type(err))
        assert.matches("bad argument", err, 1, true)
      end
      assert.equal(1, assert(c:query("select 1 as one"))[1].one)
      assert.is_true(c:close())
      assert.equal(0, rds.stats().jobs)
    end)

    it("the connection is a Lua table with the same tostring", function()
      local c = pw_connect()
      assert.matches("^kong_rds_iam connection: pw_scram@127%.0%.0%.1:%d+/kong %(open, tls%)$", tostring(c))
      assert.equal("table", type(c))
      assert.is_true(c:close())
    end)
  end)
end)
