-- IAM-specific connection behaviour: a login refused with a cached token is
-- retried once with a fresh token from refreshed credentials (the AWS JDBC
-- wrapper's rule), and new IAM logins are spaced node-wide to
-- pg_iam_auth_max_rate across nginx workers. Against the local RDS
-- emulator, fake IMDS on 127.0.0.1 and real nginx.
local emu = require "spec.support.emulator"
local fake = require "spec.support.fake_aws"
local lua_process = require "spec.support.lua_process"
local nginx = require "spec.support.nginx"
local util = require "spec.support.util"

local REGION = "us-east-1"

describe("IAM logins", function()
  local e, f

  lazy_setup(function()
    e = assert(emu.start { region = REGION })
    f = assert(fake.start { emulator_dir = e.dir })
  end)

  lazy_teardown(function()
    if f then f:stop() end
    if e then e:stop() end
  end)

  describe("refused with a cached token", function()
    -- The child caches a token (credentials A from IMDS), waits until the
    -- parent revoked A at the emulator, then connects: the cached token is
    -- refused, and the module forgets it, fetches credentials B and
    -- retries once.
    local CHILD = [[
      local rds = require "kong_rds_iam"
      local conf = CONF
      local flag = FLAG
      local function wait_for(path)
        for _ = 1, 200 do
          local fh = io.open(path)
          if fh then fh:close() return true end
          os.execute("sleep 0.05")
        end
      end
      local token = assert(rds.token(conf))
      local fh = io.open(flag .. ".ready", "w"); fh:write("x"); fh:close()
      assert(wait_for(flag .. ".go"), "parent never said go")
      local conn, err, sqlstate = rds.connect(conf)
      local same = conn and (rds.token(conf) == token)
      io.write("@@", tostring(conn ~= nil), " ", tostring(err), " ", tostring(sqlstate), " same=", tostring(same), "\n")
      if conn then conn:close() end
    ]]

    local function run_child(revoke)
      local flag = os.tmpname()
      os.remove(flag)
      local conf = ("{ pg_host = %q, pg_port = %d, pg_database = %q, pg_user = %q, pg_iam_auth = true, "
        .. "pg_iam_auth_region = %q, pg_ssl_verify = true, pg_ssl_cafile = %q, pg_timeout = 5000 }")
        :format(e.host, e.port, e.db, e.iam_users[1], REGION, e.ca)
      local code = CHILD:gsub("CONF", function() return conf end):gsub("FLAG", function() return ("%q"):format(flag) end)
      local script = os.tmpname()
      util.write_file(script .. ".lua", code)
      -- in the background, so the parent can revoke between the two calls
      local out_path = script .. ".out"
      local env = f:env("imds")
      local parts = {}
      for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. util.shell_quote(v) end
      local root = nginx.root
      os.execute(("cd %s && env -i PATH=%s HOME=/nonexistent %s luajit -e %s %s > %s 2>&1 &"):format(
        util.shell_quote(root), util.shell_quote(os.getenv("PATH")), table.concat(parts, " "),
        util.shell_quote("package.path='" .. root .. "/?.lua;'..package.path; package.cpath='" .. root .. "/target/lua/?.so;'..package.cpath"),
        util.shell_quote(script .. ".lua"), util.shell_quote(out_path)))
      local deadline = nginx.now() + 20
      while not util.read_file(flag .. ".ready") and nginx.now() < deadline do nginx.sleep(0.05) end
      assert(util.read_file(flag .. ".ready"), "child never got its token: " .. tostring(util.read_file(out_path)))
      local first = assert(f:last_credential("imds"))
      if revoke then assert(e:remove_key(first.access_key_id)) end
      util.write_file(flag .. ".go", "x")
      local out
      while nginx.now() < deadline do
        out = util.read_file(out_path) or ""
        if out:find("@@", 1, true) then break end
        nginx.sleep(0.05)
      end
      for _, p in ipairs { flag .. ".ready", flag .. ".go", script .. ".lua", out_path, script } do os.remove(p) end
      return out, first.access_key_id
    end

    it("is retried once with a fresh token from refreshed credentials", function()
      local before = f:counts().imds and f:counts().imds.total or 0
      local out, first = run_child(true)
      assert.truthy(out:find("@@true nil nil same=false", 1, true), out)
      local log = e:log()
      assert.truthy(log:find('akid="' .. first .. '" REJECT', 1, true), log)
      local second = assert(f:last_credential("imds")).access_key_id
      assert.not_equal(first, second)
      assert.truthy(log:find('akid="' .. second .. '" ACCEPT', 1, true), log)
      -- one fetch for the token, one after the refusal
      assert.is_true(f:counts().imds.total > before)
    end)

    it("is not retried when the token was not from the cache (negative control: no revoke, one login)", function()
      local out, first = run_child(false)
      assert.truthy(out:find("@@true nil nil same=true", 1, true), out)
      local log = e:log()
      local _, accepts = log:gsub('akid="' .. first:gsub("%p", "%%%0") .. '" ACCEPT', "")
      assert.equal(1, accepts)
      assert.is_nil(log:find('akid="' .. first .. '" REJECT', 1, true))
    end)
  end)

  describe("refused with a cached token, in nginx over a cosocket", function()
    local n
    local CONF

    lazy_setup(function()
      CONF = ("return { pg_host = %q, pg_port = %d, pg_database = %q, pg_user = %q, pg_iam_auth = true, "
        .. "pg_iam_auth_region = %q, pg_ssl_verify = true, pg_ssl_cafile = %q, pg_timeout = 5000 }")
        :format(e.host, e.port, e.db, e.iam_users[1], REGION, e.ca)
      n = assert(nginx.start {
        workers = 1,
        env = f:env("imds"),
        http = "init_by_lua_block { require 'kong_rds_iam' }",
        files = { ["lua/retryconf.lua"] = CONF },
        server = [[
          location /token { content_by_lua_block {
            local rds = require "kong_rds_iam"
            local token = assert(rds.token(require "retryconf"))
            package.loaded.retry_token = token
            ngx.say("ok")
          } }
          location /connect { content_by_lua_block {
            local rds = require "kong_rds_iam"
            local conf = require "retryconf"
            local jobs = rds.stats().jobs_submitted
            local c, err, sqlstate = rds.connect(conf)
            local out = { ok = c ~= nil, err = err, sqlstate = sqlstate, jobs = rds.stats().jobs_submitted - jobs }
            if c then
              out.cosocket = c:_is_cosocket()
              local res = c:query("select current_user as u")
              out.user = res and res[1].u
              out.same_token = rds.token(conf) == package.loaded.retry_token
              c:close()
            end
            ngx.say(require("cjson").encode(out))
          } }
        ]],
      })
    end)

    lazy_teardown(function()
      if n then n:stop() end
    end)

    it("logs in again once, over a new cosocket, with a fresh token from refreshed credentials", function()
      local status, body = n:get("/token")
      assert.equal(200, status, body)
      local first = assert(f:last_credential("imds"))
      assert(e:remove_key(first.access_key_id))
      local out
      status, body = n:get("/connect")
      assert.equal(200, status, body)
      out = require("cjson").decode(body)
      assert.is_true(out.ok, body)
      assert.is_true(out.cosocket, body)
      assert.equal(e.iam_users[1], out.user, body)
      assert.is_false(out.same_token, body)
      -- the first preparation, the credential refresh, the second preparation
      assert.is_true(out.jobs >= 2, body)
      local log = e:log()
      assert.truthy(log:find('akid="' .. first.access_key_id .. '" REJECT', 1, true), log)
      local second = assert(f:last_credential("imds")).access_key_id
      assert.not_equal(first.access_key_id, second)
      assert.truthy(log:find('akid="' .. second .. '" ACCEPT', 1, true), log)
    end)
  end)

  describe("the rate guard across two workers", function()
    local AKID, SECRET = "AKIDKONGRDSIAMRATE01", "rate-guard-secret-for-the-spec-01"

    local function start(max_rate)
      assert(e:add_key(AKID, SECRET))
      local conf = ([[return { pg_host = %q, pg_port = %d, pg_database = %q, pg_user = %q, pg_iam_auth = true,
        pg_iam_auth_region = %q, pg_ssl_verify = true, pg_ssl_cafile = %q, pg_timeout = 20000,
        pg_iam_auth_max_rate = %d }]]):format(e.host, e.port, e.db, e.iam_users[1], REGION, e.ca, max_rate)
      return assert(nginx.start {
        workers = 2,
        env = { AWS_ACCESS_KEY_ID = AKID, AWS_SECRET_ACCESS_KEY = SECRET, AWS_EC2_METADATA_DISABLED = "true" },
        http = "init_by_lua_block { require 'kong_rds_iam' }",
        files = { ["lua/rateconf.lua"] = conf },
        server = [[
          location /login { content_by_lua_block {
            local rds = require "kong_rds_iam"
            local c, err = rds.connect(require "rateconf")
            if not c then ngx.status = 500 ngx.say(err) return end
            c:close() -- not pooled: every request is a new IAM login
            ngx.say("ok ", rds.stats().rate_waits)
          } }
        ]],
      })
    end

    -- 100 logins at once from parallel clients; the wall time for all.
    local function burst(n, count)
      local script = os.tmpname()
      util.write_file(script, ([[
import threading, time, urllib.request
results = []
def one():
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/login", timeout=60) as r:
            results.append(r.read().decode().strip())
    except Exception as ex:
        results.append("error " + str(ex))
t0 = time.time()
threads = [threading.Thread(target=one) for _ in range(%d)]
for t in threads: t.start()
for t in threads: t.join()
print("%%.3f" %% (time.time() - t0))
for r in results: print(r)
]]):format(n.port, count))
      local out = nginx.run("python3 " .. util.shell_quote(script))
      os.remove(script)
      local secs = tonumber(out:match("^([%d.]+)"))
      local ok, waited = 0, 0
      for line in out:gmatch("[^\n]+") do
        local w = line:match("^ok (%d+)")
        if w then ok = ok + 1; if tonumber(w) > 0 then waited = waited + 1 end end
      end
      return secs, ok, out, waited
    end

    it("spreads 100 concurrent logins over >= 4.5 s at 20/s, none failing", function()
      local n = start(20)
      local secs, ok, out, waited = burst(n, 100)
      n:stop()
      assert.equal(100, ok, out)
      assert.is_true(secs >= 4.5, "100 logins at 20/s took only " .. tostring(secs) .. " s")
      assert.is_true(waited > 0, out)
    end)

    it("does not space them with pg_iam_auth_max_rate = 0 (negative control)", function()
      local n = start(0)
      -- 60, not 100: unspaced, they are all open at once, and the emulator's
      -- PostgreSQL takes 100 connections in all
      local secs, ok, out, waited = burst(n, 60)
      n:stop()
      assert.equal(60, ok, out)
      -- no login waited for the guard; the time is the emulator's Python
      -- verifier's (about 30 logins/s on 2 cores), not asserted
      assert.equal(0, waited)
      io.stderr:write(("iam_pool_spec: 60 unguarded logins took %.2f s\n"):format(secs))
    end)
  end)
end)
