-- The keep-alive pool on the blocking path (plain LuaJIT): keepalive and
-- getreusedtimes, what splits the pool and what does not, connections that
-- must not be reused, idle and lifetime limits, the pool size, the backlog
-- for a blocking caller, liveness at checkout, stats, and a forked child's
-- empty pool. Against the local RDS emulator. The yielding path (backlog
-- waits, the nginx master, reuse across requests, a soak) is in
-- pool_nginx_spec.
local rds = require "kong_rds_iam"
local emu = require "spec.support.emulator"
local test_env = require "spec.support.test_env"
local socket = require "socket"
local util = require "spec.support.util"

local REGION = "us-east-1"

local merge = util.merge

describe("the keep-alive pool", function()
  local e

  lazy_setup(function()
    e = assert(emu.start { region = REGION })
    assert(e:add_key(test_env.access_key_id, test_env.secret_access_key))
  end)

  lazy_teardown(function()
    if e then e:stop() end
  end)

  local function pw(extra)
    return merge({
      pg_host = e.host, pg_port = e.port, pg_database = e.db, pg_user = "pw_scram",
      pg_password = e.users.pw_scram, pg_ssl = true, pg_ssl_required = true,
    }, extra)
  end

  local function iam(extra)
    return merge({
      pg_host = e.host, pg_port = e.port, pg_database = e.db, pg_user = e.iam_users[1],
      pg_iam_auth = true, pg_iam_auth_region = REGION, pg_ssl_verify = true, pg_ssl_cafile = e.ca,
    }, extra)
  end

  local function backend(conn)
    return assert(conn:query("select pg_backend_pid() as pid"))[1].pid
  end

  local function label(conf)
    return ("%s@%s:%d/%s/%s"):format(conf.pg_user, conf.pg_host, conf.pg_port, conf.pg_database, conf.pg_schema)
  end

  local function figures(conf)
    return rds.stats().pool[label(conf)] or {}
  end

  -- A pool key of its own per test: the schema splits the pool.
  local n = 0
  local function fresh(conf_fn, extra)
    n = n + 1
    return conf_fn(merge({ pg_schema = "pool_spec_" .. n }, extra))
  end

  it("reuses a kept-alive connection: same backend, getreusedtimes counts up", function()
    local conf = fresh(pw)
    local c1 = assert(rds.connect(conf))
    assert.equal(0, c1:getreusedtimes())
    local pid = backend(c1)
    assert.is_true(c1:keepalive())
    -- the object is detached
    local res, err = c1:query("select 1")
    assert.is_nil(res)
    assert.equal("closed", err)
    local c2 = assert(rds.connect(conf))
    assert.equal(1, c2:getreusedtimes())
    assert.equal(pid, backend(c2))
    assert.is_true(c2:setkeepalive(0, 10))
    local c3 = assert(rds.connect(conf))
    assert.equal(2, c3:getreusedtimes())
    assert.equal(pid, backend(c3))
    local f = figures(conf)
    assert.equal(1, f.opened)
    assert.equal(2, f.reused)
    assert.equal(1, f.busy)
    assert.equal(0, f.idle)
    assert(c3:close())
    f = figures(conf)
    assert.equal(0, f.busy)
  end)

  it("reuses IAM connections without a new token and keeps them apart from password ones", function()
    local conf = fresh(iam)
    local c1 = assert(rds.connect(conf))
    local pid = backend(c1)
    assert.is_true(c1:keepalive())
    local before = select(2, e:log():gsub(" ACCEPT", ""))
    local c2 = assert(rds.connect(conf))
    assert.equal(1, c2:getreusedtimes())
    assert.equal(pid, backend(c2))
    assert.equal(before, select(2, e:log():gsub(" ACCEPT", "")), "a reused connection authenticated again")
    assert.is_true(c2:keepalive())
    -- another user, same host/port/database: its own pool key
    local other = assert(rds.connect(merge(conf, { pg_iam_auth = false, pg_user = "pw_scram", pg_password = e.users.pw_scram, pg_ssl = true })))
    assert.equal(0, other:getreusedtimes())
    assert.not_equal(pid, backend(other))
    assert(other:close())
  end)

  it("counts IAM logins, tokens, credential fetches and open handles in rds.stats()", function()
    local before = rds.stats()
    local conf = fresh(iam)
    local c = assert(rds.connect(conf))
    local mid = rds.stats()
    assert.equal(before.iam_auth_ok + 1, mid.iam_auth_ok)
    assert.equal(before.open_handles + 1, mid.open_handles)
    assert.is_true(mid.tokens_signed + mid.token_cache_hits > before.tokens_signed + before.token_cache_hits)
    assert.is_true((mid.credential_fetches.environment or 0) >= 1, require("cjson").encode(mid.credential_fetches))
    assert.is_true(c:keepalive())
    local again = assert(rds.connect(conf)) -- reused: no new login
    assert.equal(mid.iam_auth_ok, rds.stats().iam_auth_ok)
    assert(again:close())
    local bad = merge(conf, { pg_user = "no_such_iam_user" })
    assert.is_nil((rds.connect(bad)))
    local after = rds.stats()
    assert.is_true((after.iam_auth_failed["28000"] or 0) + (after.iam_auth_failed["28P01"] or 0) >= 1, require("cjson").encode(after.iam_auth_failed))
    assert.is_nil(after.credentials_expire_in) -- static keys from the environment carry no expiry
  end)

  it("splits the pool by database settings but not by password", function()
    local conf = fresh(pw)
    local c1 = assert(rds.connect(conf))
    assert.is_true(c1:keepalive())
    -- TLS settings are part of the key
    local plain = assert(rds.connect(merge(conf, { pg_ssl = false, pg_ssl_required = false })))
    assert.equal(0, plain:getreusedtimes())
    assert(plain:close())
    -- a password does not split it (it only counts at authentication)
    local c2 = assert(rds.connect(merge(conf, { pg_password = "not-checked-on-reuse" })))
    assert.equal(1, c2:getreusedtimes())
    assert(c2:close())
  end)

  it("closes instead of pooling a connection inside a transaction", function()
    local conf = fresh(pw)
    local c = assert(rds.connect(conf))
    assert(c:query("begin"))
    local ok, err = c:keepalive()
    assert.is_nil(ok)
    assert.matches("dubious state", err)
    local again = assert(rds.connect(conf))
    assert.equal(0, again:getreusedtimes())
    assert(again:close())
  end)

  it("does not pool a connection that saw a failover or shutdown error (25006)", function()
    local conf = fresh(pw)
    local c = assert(rds.connect(conf))
    assert(c:query("set default_transaction_read_only = on"))
    local res, err, _, _, sqlstate = c:query("create temp table pool_spec_ro (x int)")
    assert.is_nil(res, err)
    assert.equal("25006", sqlstate)
    local ok, kerr = c:keepalive()
    assert.is_nil(ok)
    assert.matches("25006", kerr)
    assert.equal(0, assert(rds.connect(conf)):getreusedtimes())
  end)

  it("discards at checkout a pooled connection the server closed", function()
    local conf = fresh(pw)
    local c = assert(rds.connect(conf))
    local pid = backend(c)
    assert.is_true(c:keepalive())
    local killer = assert(rds.connect(pw()))
    assert(killer:query("select pg_terminate_backend(" .. pid .. ")"))
    assert(killer:close())
    socket.sleep(0.2)
    local fresh_conn = assert(rds.connect(conf))
    assert.equal(0, fresh_conn:getreusedtimes())
    assert.not_equal(pid, backend(fresh_conn))
    assert.is_true(figures(conf).closed >= 1)
    assert(fresh_conn:close())
  end)

  it("closes idle connections past their idle timeout", function()
    local conf = fresh(pw)
    local c = assert(rds.connect(conf))
    assert.is_true(c:keepalive(100))
    socket.sleep(0.3)
    local again = assert(rds.connect(conf))
    assert.equal(0, again:getreusedtimes())
    assert.is_true(again:keepalive()) -- pg_keepalive_timeout, 60 s by default
    socket.sleep(0.3)
    local kept = assert(rds.connect(conf))
    assert.equal(1, kept:getreusedtimes())
    assert(kept:close())
  end)

  it("retires connections past pg_max_lifetime (jittered)", function()
    local conf = fresh(pw, { pg_max_lifetime = 200 })
    local c = assert(rds.connect(conf))
    local pid = backend(c)
    assert.is_true(c:keepalive())
    local young = assert(rds.connect(conf))
    assert.equal(1, young:getreusedtimes())
    socket.sleep(0.35) -- past 200 ms + 10 %
    assert.is_true(young:keepalive()) -- closed instead of pooled: not an error
    local old = assert(rds.connect(conf))
    assert.equal(0, old:getreusedtimes())
    assert.not_equal(pid, backend(old))
    assert(old:close())
  end)

  it("keeps at most pool_size idle connections per key", function()
    local conf = fresh(pw, { pg_pool_size = 2 })
    local conns = {}
    for i = 1, 3 do conns[i] = assert(rds.connect(conf)) end
    for i = 1, 3 do assert.is_true(conns[i]:keepalive()) end
    local f = figures(conf)
    assert.equal(2, f.idle)
    assert.equal(1, f.closed)
    for i = 1, 2 do conns[i] = assert(rds.connect(conf)) end
    assert.equal(1, conns[1]:getreusedtimes())
    assert.equal(1, conns[2]:getreusedtimes())
    local third = assert(rds.connect(conf))
    assert.equal(0, third:getreusedtimes())
    for _, c in ipairs { conns[1], conns[2], third } do assert(c:close()) end
  end)

  it("with a backlog, a blocking caller over pool_size fails at once instead of waiting", function()
    local conf = fresh(pw, { pg_pool_size = 1, pg_backlog = 5 })
    local busy = assert(rds.connect(conf))
    local t0 = socket.gettime()
    local c, err = rds.connect(conf)
    assert.is_nil(c)
    assert.equal("too many waiting connect operations", err)
    assert.is_true(socket.gettime() - t0 < 0.5)
    assert.is_true(busy:keepalive())
    local reused = assert(rds.connect(conf))
    assert.equal(1, reused:getreusedtimes())
    assert(reused:close())
    -- without a backlog, pool_size only limits idle connections
    local unlimited = fresh(pw, { pg_pool_size = 1 })
    local a, b = assert(rds.connect(unlimited)), assert(rds.connect(unlimited))
    assert(a:close()); assert(b:close())
  end)

  it("rejects bad keepalive arguments with Lua string errors and bad pool keys with nil, err", function()
    local c = assert(rds.connect(fresh(pw)))
    for _, bad in ipairs { { -1 }, { "x" }, { 10, -2 }, { 0 / 0 } } do
      local ok, err = pcall(c.keepalive, c, bad[1], bad[2])
      assert.is_false(ok)
      assert.is_string(err)
    end
    assert(c:close())
    for key, value in pairs { pg_pool_size = 0, pg_backlog = -1, pg_keepalive_timeout = "soon", pg_max_lifetime = 0 } do
      local conn, err = rds.connect(pw { [key] = value })
      assert.is_nil(conn)
      assert.matches(key, err, 1, true)
    end
  end)

  it("a forked child starts with an empty pool and leaves the parent's idle connections working", function()
    local ffi = require "ffi"
    pcall(ffi.cdef, [[ int fork(void); int waitpid(int pid, int *status, int options); void _exit(int status); ]])
    local conf = fresh(pw)
    local c = assert(rds.connect(conf))
    local pid = backend(c)
    assert.is_true(c:keepalive())
    local child = ffi.C.fork()
    if child == 0 then
      local code = 1
      local ok = pcall(function()
        local mine = assert(rds.connect(conf))
        if mine:getreusedtimes() == 0 and backend(mine) ~= pid then code = 0 end
        mine:close()
      end)
      ffi.C._exit(ok and code or 2)
    end
    local status = ffi.new("int[1]")
    ffi.C.waitpid(child, status, 0)
    assert.equal(0, status[0])
    local again = assert(rds.connect(conf))
    assert.equal(1, again:getreusedtimes())
    assert.equal(pid, backend(again))
    assert(again:close())
  end)
end)

describe("connections left to the garbage collector", function()
  local e

  lazy_setup(function()
    e = assert(emu.start { region = "us-east-1" })
  end)

  lazy_teardown(function()
    rds._gc_floor = 256
    if e then e:stop() end
  end)

  local function conf()
    return { pg_host = e.host, pg_port = e.port, pg_database = e.db, pg_user = "pw_scram",
             pg_password = e.users.pw_scram, pg_application_name = "gc_spec" }
  end

  local function leak(n)
    local failed
    for _ = 1, n do
      local c, err, sqlstate = rds.connect(conf())
      if not c then failed = tostring(sqlstate) .. " " .. tostring(err) break end
      assert(c:query("select 1"))
      c = nil -- never closed: left to the collector
    end
    return failed
  end

  it("are collected by connect() once many are open, so the server is not exhausted", function()
    collectgarbage("collect")
    rds._gc_floor = 20
    assert.is_nil(leak(150)) -- the emulator's PostgreSQL takes 100 connections
    assert.is_true(rds.stats().open_handles <= 45, tostring(rds.stats().open_handles))
    collectgarbage("collect")
  end)

  it("exhaust it without that (negative control)", function()
    collectgarbage("collect")
    collectgarbage("stop")
    rds._gc_floor = 1e9
    local err = leak(150)
    collectgarbage("restart")
    collectgarbage("collect")
    -- 53300 too_many_connections ("too many clients" or "remaining connection slots are reserved")
    assert.matches("^53300 ", err or "no failure")
  end)
end)
