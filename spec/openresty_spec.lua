-- kong_rds_iam inside a real nginx (OpenResty's Lua module): the AWS
-- environment only in the master, tokens and connections from init,
-- init_worker, timers and request handlers in 2 workers, a master connection
-- used in a worker, HUP reloads under load, quit, and what reaches error.log.
--
-- Needs root (the RDS emulator), Debian's nginx-light, libnginx-mod-http-lua
-- and lua-resty-core. Traffic stays on 127.0.0.1.
local nginx = require "spec.support.nginx"
local emu = require "spec.support.emulator"
local cjson = require "cjson"
local util = require "spec.support.util"
local test_env = require "spec.support.test_env"

if nginx.missing() then
  describe("OpenResty", function() pending(nginx.missing()) end)
  return
end

-- Credentials only the nginx master gets (through its environment); the
-- emulator learns them with add-key.
local AKID, SECRET, SESSION, MASTER_ENV = test_env.master_credentials("nginx")

-- The Lua code nginx runs: prefix/lua/t.lua. `testconf` is written next to it.
local T_LUA = [==[
local rds = require "kong_rds_iam"
local kong_iam = require "kong_rds_iam.kong"
local cjson = require "cjson.safe"
local conf = require "testconf"
local bit = require "bit"

local M = { conf = conf }

local function now()
  ngx.update_time()
  return ngx.now()
end

-- What a token looks like, never the token itself.
function M.token_summary(mode)
  local token, err, expires_at = rds.token(conf, mode)
  if not token then
    ngx.log(ngx.WARN, "token() failed: ", err)
    return { ok = false, err = err }
  end
  local prefix = ("localhost:%d/?Action=connect&DBUser=%s&"):format(conf.pg_port, conf.pg_user)
  return {
    ok = true,
    shape = token:sub(1, #prefix) == prefix and token:find("X-Amz-Security-Token=", 1, true) ~= nil,
    len = #token,
    expires_at = expires_at,
  }
end

function M.query_summary(sql)
  local t0 = now()
  local conn, err, sqlstate = rds.connect(conf)
  if not conn then
    ngx.log(ngx.WARN, "connect() failed: ", err)
    return { ok = false, err = err, sqlstate = sqlstate }
  end
  local res, qerr = conn:query(sql or "select current_user as u, ssl_is_used() as tls, pg_backend_pid() as bp")
  local closed, cerr = conn:close()
  if not res then
    ngx.log(ngx.WARN, "query() failed: ", qerr)
    return { ok = false, err = qerr }
  end
  return { ok = true, user = res[1].u, tls = res[1].tls, backend = res[1].bp,
           closed = closed == true, close_err = cerr, ms = (now() - t0) * 1000 }
end

function M.both(where)
  return {
    where = where,
    pid = ngx.worker.pid(),
    phase = ngx.get_phase(),
    token = M.token_summary(),
    query = M.query_summary(),
  }
end

function M.reply(t)
  t.worker_pid = ngx.worker.pid()
  ngx.header.content_type = "application/json"
  ngx.say(cjson.encode(t))
end

-- Deliberately failing calls, so error.log holds the module's error texts.
function M.failures()
  local out = {}
  local bad = setmetatable({ pg_iam_auth_region = "eu-west-3" }, { __index = conf })
  local conn, err = rds.connect(bad)  -- signed for the wrong region: rejected
  out.wrong_region = err
  ngx.log(ngx.WARN, "expected failure, wrong region: ", err)
  if conn then conn:close() end
  bad = setmetatable({ pg_user = "no_such_user" }, { __index = conf })
  conn, err = rds.connect(bad)
  out.wrong_user = err
  ngx.log(ngx.WARN, "expected failure, unknown user: ", err)
  if conn then conn:close() end
  bad = setmetatable({ pg_host = "localhost", pg_port = 1 }, { __index = conf })
  conn, err = rds.connect(bad)
  out.refused = err
  ngx.log(ngx.WARN, "expected failure, refused: ", err)
  return out
end

-- A minimal PostgreSQL client on a cosocket, driven by the options of
-- kong_rds_iam.kong (what pgmoon does with them): SSLRequest, TLS with
-- verification, startup, cleartext password (the IAM token), one query.
local function int32(n)
  return string.char(bit.band(bit.rshift(n, 24), 255), bit.band(bit.rshift(n, 16), 255),
    bit.band(bit.rshift(n, 8), 255), bit.band(n, 255))
end
local function get_int32(s, i)
  local a, b, c, d = s:byte(i, i + 3)
  return bit.bor(bit.lshift(a, 24), bit.lshift(b, 16), bit.lshift(c, 8), d)
end
local function receive_message(sock)
  local head, err = sock:receive(5)
  if not head then return nil, err end
  local body = ""
  local len = get_int32(head, 2) - 4
  if len > 0 then
    body, err = sock:receive(len)
    if not body then return nil, err end
  end
  return head:sub(1, 1), body
end

function M.cosocket(mode)
  local opts, err = kong_iam.pgmoon_options(conf, mode)
  if not opts then return { ok = false, err = err } end
  local sock = ngx.socket.tcp()
  sock:settimeouts(opts.timeout, opts.timeout, opts.timeout)
  -- nginx resolves names only with a `resolver`; the token is signed for
  -- "localhost" and TLS checks that name, the TCP connection goes to its address.
  local ok
  ok, err = sock:connect(opts.host == "localhost" and "127.0.0.1" or opts.host, opts.port)
  if not ok then return { ok = false, err = "connect: " .. err } end
  local reused = sock:getreusedtimes()
  if opts.ssl then
    sock:send(int32(8) .. int32(80877103))
    local answer = sock:receive(1)
    if answer ~= "S" then return { ok = false, err = "server refused TLS" } end
    ok, err = sock:sslhandshake(nil, opts.host, opts.ssl_verify)
    if not ok then return { ok = false, err = "tls: " .. err } end
  end
  local params = "user\0" .. opts.user .. "\0database\0" .. opts.database .. "\0application_name\0"
    .. opts.application_name .. "\0\0"
  sock:send(int32(8 + #params) .. int32(196608) .. params)
  local authenticated, user
  while true do
    local t, body = receive_message(sock)
    if not t then return { ok = false, err = "receive: " .. body } end
    if t == "R" then
      local code = get_int32(body, 1)
      if code == 3 then
        sock:send("p" .. int32(4 + #opts.password + 1) .. opts.password .. "\0")
      elseif code == 0 then
        authenticated = true
      else
        return { ok = false, err = "unexpected auth request " .. code }
      end
    elseif t == "E" then
      return { ok = false, err = "server: " .. (body:match("M([^%z]*)") or "?") }
    elseif t == "Z" then
      break
    end
  end
  local sql = "select current_user"
  sock:send("Q" .. int32(4 + #sql + 1) .. sql .. "\0")
  while true do
    local t, body = receive_message(sock)
    if not t then return { ok = false, err = "receive: " .. body } end
    if t == "D" then
      local len = get_int32(body, 3)
      user = body:sub(7, 6 + len)
    elseif t == "E" then
      return { ok = false, err = "server: " .. (body:match("M([^%z]*)") or "?") }
    elseif t == "Z" then
      break
    end
  end
  sock:send("X" .. int32(4))
  sock:close()
  return { ok = authenticated == true, user = user, iam = opts.iam_auth, ssl = opts.ssl,
           ssl_verify = opts.ssl_verify, reused = reused }
end

return M
]==]

local function testconf_lua(e)
  return ("return %s\n"):format(([[{
  pg_host = "localhost",
  pg_port = %d,
  pg_user = %q,
  pg_database = %q,
  pg_timeout = 5000,
  pg_iam_auth = true,
  pg_iam_auth_region = "us-east-1",
  pg_ssl_verify = true,
  pg_ssl_cafile = %q,
}]]):format(e.port, e.iam_users[1], e.db, e.ca))
end

-- Locations both configurations serve.
local SERVER = [[
    location = /token { content_by_lua_block { local t = require "t"
      local s = t.token_summary()
      s.aws_env_in_worker = os.getenv("AWS_ACCESS_KEY_ID") ~= nil or os.getenv("AWS_SECRET_ACCESS_KEY") ~= nil
      s.source = require("kong_rds_iam").credentials_source()
      t.reply(s) } }
    location = /query { content_by_lua_block { local t = require "t"; t.reply(t.query_summary()) } }
    location = /both { content_by_lua_block { local t = require "t"; t.reply(t.both("request")) } }
    location = /cosocket { content_by_lua_block { local t = require "t"; t.reply(t.cosocket("rw")) } }
    location = /failures { content_by_lua_block { local t = require "t"; t.reply(t.failures()) } }
    location = /init { content_by_lua_block { local t = require "t"
      t.reply({ init = require("cjson").decode(ngx.shared.results:get("init") or "null"),
                init_worker = t.init_worker, timer = t.timer }) } }
    location = /master_conn { content_by_lua_block { local t = require "t"
      if not t.master_conn then return t.reply({ err = "no master connection" }) end
      ngx.update_time(); local t0 = ngx.now()
      local res, err = t.master_conn:query("select 1 as one")
      ngx.update_time(); local ms = (ngx.now() - t0) * 1000
      local closed, cerr = t.master_conn:close()
      local closed2, cerr2 = t.master_conn:close()
      local res2, err2 = t.master_conn:query("select 1 as one")
      t.reply({ res = res, err = err, ms = ms, closed = closed, close_err = cerr,
                closed2 = closed2, close_err2 = cerr2, err_after_close = err2,
                str = tostring(t.master_conn) }) } }
]]

-- Only requires the module (and the test code) in the master.
local LAZY_HTTP = [[
  lua_shared_dict results 1m;
  lua_ssl_trusted_certificate %s;
  init_by_lua_block {
    require "kong_rds_iam"
    require "t"
  }
]]

-- Uses the module in init_by_lua, init_worker_by_lua and a timer too.
local EAGER_HTTP = [[
  lua_shared_dict results 1m;
  lua_ssl_trusted_certificate %s;
  init_by_lua_block {
    local t = require "t"
    local cjson = require "cjson"
    local r = t.both("init")
    r.aws_env_in_master = os.getenv("AWS_ACCESS_KEY_ID") ~= nil
    ngx.shared.results:set("init", cjson.encode(r))
    -- kept open in the master; workers inherit the (forked) object
    local conn, err = require("kong_rds_iam").connect(t.conf)
    t.master_conn = conn
    if not conn then ngx.log(ngx.ERR, "master connect failed: ", err) end
  }
  init_worker_by_lua_block {
    local t = require "t"
    t.init_worker = t.both("init_worker")
    local ok, err = ngx.timer.at(0, function(premature)
      if premature then return end
      t.timer = t.both("timer")
    end)
    if not ok then ngx.log(ngx.ERR, "timer: ", err) end
  }
]]

local function get_json(n, path)
  local status, body = n:get(path)
  assert(status, body)
  assert.equal(200, status, body)
  local ok, t = pcall(cjson.decode, body)
  assert(ok, "not JSON: " .. tostring(body))
  return t
end

local count = util.count

local function assert_clean_log(n)
  local log = n:error_log()
  assert.is_nil(log:find("panicked", 1, true), log)
  assert.is_nil(log:find("exited on signal", 1, true), log)
  assert.is_nil(log:find(SECRET, 1, true), "secret key in error.log")
  assert.is_nil(log:find(SESSION, 1, true), "session token in error.log")
  assert.is_nil(log:find(SESSION:sub(15, 60), 1, true), "part of the session token in error.log")
  assert.is_nil(log:find("X-Amz-Signature", 1, true), "a token in error.log")
  assert.is_nil(log:find("Action=connect", 1, true), "a token in error.log")
  assert.is_nil(log:find("X-Amz-Credential", 1, true), "a token in error.log")
  return log
end

-- nginx here uses no thread pools: a master with more than its main thread
-- 5 s after its last call into the module has leaked one.
local function assert_single_threaded(n, pid)
  local count, ok = n:settle_threads(pid, 1, 5)
  assert(ok, ("process %d still has %s threads"):format(pid, tostring(count)))
end

-- A worker that yielded has one thread more, its I/O thread
-- (kong_rds_iam-io); 5 s after its last call, DNS threads have exited.
local function assert_worker_threads(n, pid)
  local count, ok = n:settle_threads(pid, 2, 5)
  assert(ok, ("worker %d still has %s threads"):format(pid, tostring(count)))
end

local function assert_query_ok(r, e)
  assert.is_true(r.ok, r.err)
  assert.equal(e.iam_users[1], r.user)
  assert.is_true(r.tls)
  assert.is_true(r.closed)
end

local function assert_token_ok(r)
  assert.is_true(r.ok, r.err)
  assert.is_true(r.shape)
  assert.is_true(r.expires_at > os.time() + 800)
end

describe("OpenResty", function()
  local e

  setup(function()
    e = assert(emu.start { region = "us-east-1" })
    assert(e:add_key(AKID, SECRET, SESSION, os.time() + 3600))
  end)

  teardown(function()
    if e then e:stop() end
  end)

  local function files()
    return { ["lua/t.lua"] = T_LUA, ["lua/testconf.lua"] = testconf_lua(e) }
  end

  describe("module required in init_by_lua with AWS_* only in the master's environment", function()
    local n

    setup(function()
      local err
      n, err = nginx.start {
        workers = 2, env = MASTER_ENV, files = files(),
        http = LAZY_HTTP:format(e.ca), server = SERVER,
      }
      assert(n, err)
    end)

    teardown(function()
      if n then n:stop() end
    end)

    it("2 workers (no env directive, empty worker environment) sign tokens and connect", function()
      assert(e:clear_log())
      local pids, seen = {}, 0
      for _ = 1, 60 do
        local tok = get_json(n, "/token")
        assert_token_ok(tok)
        assert.is_false(tok.aws_env_in_worker)
        assert.equal("environment", tok.source)
        local q = get_json(n, "/query")
        assert_query_ok(q, e)
        for _, pid in ipairs { tok.worker_pid, q.worker_pid } do
          if not pids[pid] then pids[pid], seen = true, seen + 1 end
        end
        if seen >= 2 then break end
      end
      assert.equal(2, seen)
      local log = e:log()
      assert.truthy(log:find('akid="' .. AKID .. '" ACCEPT', 1, true), log)
      assert.is_nil(log:find("REJECT", 1, true), log)
    end)

    it("kong_rds_iam.kong options drive a cosocket client in the request phase", function()
      assert(e:clear_log())
      for _ = 1, 4 do
        local r = get_json(n, "/cosocket")
        assert.is_true(r.ok, r.err)
        assert.equal(e.iam_users[1], r.user)
        assert.is_true(r.iam)
        assert.is_true(r.ssl_verify)
      end
      local log = e:log()
      assert.equal(4, count(log, " ACCEPT"), log)
    end)

    it("reports failures as nil, err without leaking secrets", function()
      local r = get_json(n, "/failures")
      assert.is_string(r.wrong_region)
      assert.is_string(r.wrong_user)
      assert.is_string(r.refused)
      assert_clean_log(n)
    end)

    it("survives HUP reloads under load without crashes or leaked threads", function()
      -- warm up both workers; once the blocking-pool threads (DNS look-ups)
      -- have idled out (1 s), every nginx process is single-threaded again
      for _ = 1, 6 do get_json(n, "/both") end
      local master = assert(n:master_pid())
      assert_single_threaded(n, master)
      local before = n:live_workers()
      for _, pid in ipairs(before) do assert_worker_threads(n, pid) end

      -- two background clients hammer /both while the master reloads 5 times
      local script = n.prefix .. "/loadgen.lua"
      local f = assert(io.open(script, "w"))
      f:write(([=[
package.path = %q .. package.path
local nginx = require "spec.support.nginx"
local h = nginx.at(%d)
local ok, bad, errs = 0, 0, {}
local stop = nginx.now() + %f
while nginx.now() < stop do
  local status, body = h:get(%q, 20)
  if status == 200 and body:find('"ok":true', 1, true) and not body:find('"ok":false', 1, true) then
    ok = ok + 1
  else
    bad = bad + 1
    errs[#errs + 1] = tostring(status) .. " " .. tostring(body)
  end
end
io.write("ok=", ok, " bad=", bad, "\n", table.concat(errs, "\n"))
]=]):format(nginx.root .. "/?.lua;", n.port, 4.0, "/both"))
      f:close()
      local outs = {}
      for i = 1, 2 do
        outs[i] = n.prefix .. "/loadgen" .. i .. ".out"
        os.execute(("cd %s && (luajit %s > %s.tmp 2>&1; mv %s.tmp %s) &"):format(nginx.root, script, outs[i], outs[i], outs[i]))
      end
      nginx.sleep(0.5)
      for _ = 1, 5 do
        assert.is_true(n:reload())
        nginx.sleep(0.6)
      end
      -- wait for the clients
      local results = {}
      local deadline = nginx.now() + 30
      for i = 1, 2 do
        while nginx.now() < deadline do
          local rf = io.open(outs[i])
          if rf then results[i] = rf:read("*a"); rf:close(); break end
          nginx.sleep(0.1)
        end
        assert(results[i], "load generator " .. i .. " did not finish")
        local good, bad = results[i]:match("^ok=(%d+) bad=(%d+)")
        assert(good, results[i])
        assert.equal(0, tonumber(bad), results[i])
        assert.is_true(tonumber(good) > 5, results[i])
      end

      assert.is_true(n:wait_workers(2, 15), "old workers did not exit")
      assert.equal(master, n:master_pid())

      -- tokens made after the reloads are accepted
      assert(e:clear_log())
      for _ = 1, 6 do
        local r = get_json(n, "/both")
        assert_token_ok(r.token)
        assert_query_ok(r.query, e)
      end
      local log = e:log()
      assert.truthy(log:find(" ACCEPT", 1, true), log)
      assert.is_nil(log:find("REJECT", 1, true), log)

      assert_single_threaded(n, master)
      local after = n:live_workers()
      assert.equal(2, #after)
      assert.are_not.same(before, after)
      for _, pid in ipairs(after) do assert_worker_threads(n, pid) end
      local elog = assert_clean_log(n)
      assert.is_true(count(elog, "reconfiguring") >= 5, elog)
    end)

    it("nginx -s quit exits cleanly within a few seconds", function()
      local master = assert(n:master_pid())
      local workers = n:worker_pids()
      local ok, secs = n:quit(5)
      assert.is_true(ok, "master still running after " .. secs .. " s")
      for _, pid in ipairs(workers) do
        assert.is_false(nginx.alive(pid))
      end
      assert.is_false(nginx.alive(master))
      local log = assert_clean_log(n)
      assert.truthy(log:find("exit", 1, true))
    end)
  end)

  describe("calls in init_by_lua, init_worker_by_lua and ngx.timer.at", function()
    local n

    setup(function()
      assert(e:clear_log())
      local err
      -- daemon off: the master is the process that ran init_by_lua (its
      -- runtime, its connection), as with Kong in a container
      n, err = nginx.start {
        workers = 2, env = MASTER_ENV, files = files(), daemon = false,
        http = EAGER_HTTP:format(e.ca), server = SERVER,
      }
      assert(n, err)
    end)

    teardown(function()
      if n then n:stop() end
    end)

    it("init_by_lua (master) signs a token and runs a query", function()
      local r = get_json(n, "/init")
      assert.equal("init", r.init.where)
      assert.equal("init", r.init.phase)
      assert.equal(n:master_pid(), r.init.pid)
      assert.is_true(r.init.aws_env_in_master)
      assert_token_ok(r.init.token)
      assert_query_ok(r.init.query, e)
    end)

    it("init_worker_by_lua and a timer in every worker do too", function()
      -- The timer yields while it connects, so requests are served
      -- meanwhile: ask until both workers report it (bounded).
      local workers = {}
      local deadline = nginx.now() + 15
      while nginx.now() < deadline do
        local r = get_json(n, "/init")
        assert.equal("init_worker", r.init_worker.phase)
        assert.equal(r.worker_pid, r.init_worker.pid)
        assert_token_ok(r.init_worker.token)
        assert_query_ok(r.init_worker.query, e)
        if r.timer then
          assert.equal("timer", r.timer.phase)
          assert.equal(r.worker_pid, r.timer.pid)
          assert_token_ok(r.timer.token)
          assert_query_ok(r.timer.query, e)
          workers[r.worker_pid] = true
        end
        local c = 0
        for _ in pairs(workers) do c = c + 1 end
        if c >= 2 then break end
        nginx.sleep(0.02)
      end
      local c = 0
      for _ in pairs(workers) do c = c + 1 end
      assert.equal(2, c)
      -- 1 (init) + 2 x (init_worker + timer) + requests' worth: all accepted
      local log = e:log()
      assert.is_true(count(log, " ACCEPT") >= 5, log)
      assert.is_nil(log:find("REJECT", 1, true), log)
    end)

    it("request handlers work in a worker after the master used the module", function()
      local r = get_json(n, "/both")
      assert_token_ok(r.token)
      assert_query_ok(r.query, e)
    end)

    it("a connection made in the master fails clearly in a worker, without hanging", function()
      local r = get_json(n, "/master_conn")
      assert.is_nil(r.res)
      assert.matches("^connection belongs to another process", r.err)
      assert.is_true(r.ms < 100, "took " .. r.ms .. " ms")
      assert.is_string(r.str)
      -- the worker can still drop its inherited copy, and a closed one says so
      assert.is_true(r.closed, r.close_err)
      assert.is_string(r.err_after_close)
      -- the worker still works
      local q = get_json(n, "/query")
      assert_query_ok(q, e)
    end)

    it("reloads (init_by_lua connecting again in the master) and quits cleanly", function()
      local master = assert(n:master_pid())
      assert_single_threaded(n, master)
      for _ = 1, 3 do
        assert.is_true(n:reload())
        nginx.sleep(0.4)
        get_json(n, "/both")
      end
      assert.is_true(n:wait_workers(2, 15), "old workers did not exit")
      assert.equal(master, n:master_pid())
      assert(e:clear_log())
      local r = get_json(n, "/init")
      assert_token_ok(r.init.token)
      assert_query_ok(r.init.query, e)
      r = get_json(n, "/both")
      assert_query_ok(r.query, e)
      assert.is_nil(e:log():find("REJECT", 1, true))
      assert_single_threaded(n, master)
      for _, pid in ipairs(n:live_workers()) do assert_worker_threads(n, pid) end
      local ok, secs = n:quit(5)
      assert.is_true(ok, "master still running after " .. secs .. " s")
      assert_clean_log(n)
    end)
  end)
end)
