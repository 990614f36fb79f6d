-- Kong's own Postgres connector on kong_rds_iam.pgmoon, in a real nginx,
-- against the local RDS emulator: what issue 10 promises a Kong user who
-- changes the connector's two pgmoon requires.
--
-- Kong's files are not in this repository. This spec reads an unmodified
-- copy of kong/db/strategies/postgres/{connector,init}.lua at run time from
-- KONG_PEER_DIR, else ../shared/peers/kong beside the repository, changes
-- their pgmoon requires to kong_rds_iam.pgmoon (as a Kong user would), and
-- writes them into the nginx prefix next to small stand-ins of the kong.*
-- modules they need (spec/support/kong_standins). Without such a copy it is
-- pending (CI has none).
--
-- Per login kind (password over SCRAM; IAM from kong.configuration; IAM from
-- KONG_PG_IAM_AUTH in the master's environment, as Kong OSS users get it;
-- password read-write with an IAM read-only side),
-- one nginx with one worker: connector:init() in init_by_lua (the master,
-- as Kong.init() runs it), Kong's session setup on a new connection, its
-- queries (in its pg_schema), reuse of the pooled session by the next
-- request, two light threads, its timeout (the message it recognises, the
-- statement cancelled), constraint violations through Kong's own error
-- parser, what its migrations and cluster mutex ask (reset, bootstrap, up,
-- a failing migration rolled back, locks, iterate), its TTL cleanup timer,
-- refused certificates, and no secret in any log or answer.
--
-- Needs root (the RDS emulator), Debian's nginx-light, libnginx-mod-http-lua
-- and lua-resty-core. Traffic stays on 127.0.0.1.
local nginx = require "spec.support.nginx"
local emu = require "spec.support.emulator"
local util = require "spec.support.util"
local test_env = require "spec.support.test_env"
local cjson = require "cjson"

local exists, read_file, count = util.exists, util.read_file, util.count

local PEER = os.getenv("KONG_PEER_DIR") or (nginx.root .. "/../shared/peers/kong")
local STRATEGY_DIR = PEER .. "/kong/db/strategies/postgres"

if not exists(STRATEGY_DIR .. "/connector.lua") then
  describe("Kong's connector on kong_rds_iam.pgmoon", function()
    pending("needs a copy of Kong's kong/db/strategies/postgres/ in " .. PEER .. " (or KONG_PEER_DIR)")
  end)
  return
end
if nginx.missing() then
  describe("Kong's connector on kong_rds_iam.pgmoon", function() pending(nginx.missing()) end)
  return
end

local REGION = "us-east-1"
local AKID, SECRET, SESSION, MASTER_ENV = test_env.master_credentials("kc")

-- A Kong file with its pgmoon requires changed to the native driver's:
-- each must be there exactly once (else Kong's file changed and this spec
-- must look at it again).
local function natively(name, replacements)
  local text = assert(read_file(STRATEGY_DIR .. "/" .. name))
  for from, to in pairs(replacements) do
    local n
    text, n = text:gsub("require%s*%(?%s*([\"'])" .. from:gsub("%.", "%%.") .. "%1%s*%)?",
      ('require "%s"'):format(to))
    assert(n == 1, ("%s: expected one require of %q, found %d"):format(name, from, n))
  end
  return text
end

-- spec/support/kong_standins/kong/**.lua as nginx prefix files.
local function standins(files)
  local base = nginx.root .. "/spec/support/kong_standins/"
  local list = assert(io.popen("cd " .. util.shell_quote(base) .. " && find kong -name '*.lua'"))
  for path in list:lines() do
    files["lua/" .. path] = assert(read_file(base .. path))
  end
  list:close()
  return files
end

local HTTP = [[
  init_by_lua_block {
    require "kong_rds_iam"
    require("spec.support.kong_connector_app").init_master()
  }
  init_worker_by_lua_block {
    require("spec.support.kong_connector_app").init_worker()
  }
]]
local SERVER = [[
    location /api {
      content_by_lua_block { require("spec.support.kong_connector_app").handle() }
    }
]]

describe("Kong's connector on kong_rds_iam.pgmoon", function()
  local e

  setup(function()
    e = assert(emu.start { region = REGION })
    assert(e:add_key(AKID, SECRET, SESSION, os.time() + 3600))
  end)

  teardown(function()
    if e then e:stop() end
  end)

  -- iam: how the read-write side logs in ("conf": pg_iam_auth, "env":
  -- KONG_PG_IAM_AUTH only, nil: password); ro_iam: a read-only side (pg_ro_*)
  -- as another user, logging in with IAM by pg_ro_iam_auth.
  local KINDS = {
    { name = "password (SCRAM)", table = "kc_pw" },
    { name = "IAM from kong.configuration", table = "kc_iam", iam = "conf" },
    { name = "IAM from KONG_PG_IAM_AUTH in the master's environment", table = "kc_iamenv", iam = "env" },
    { name = "password read-write, IAM read-only (pg_ro_iam_auth)", table = "kc_ro", ro_iam = true },
  }

  for _, kind in ipairs(KINDS) do
    describe(kind.name, function()
      local n, answers = nil, {}

      local function op(name)
        local status, body = n:get("/api?op=" .. name, 30)
        assert(status == 200, ("op %s: %s %s\n%s"):format(name, tostring(status), tostring(body), n:error_log()))
        answers[#answers + 1] = body
        return cjson.decode(body)
      end

      local rw_user = kind.iam and e.env.RDS_EMU_IAM_USER or e.env.RDS_EMU_PW_SCRAM_USER

      setup(function()
        local conf = {
          pg_host = e.host, pg_port = e.port, pg_database = e.db,
          pg_user = rw_user,
          pg_timeout = 5000, pg_ssl = true, pg_ssl_verify = true,
          pg_keepalive_timeout = 60000, pg_pool_size = 256,
          pg_max_concurrent_queries = 0, pg_semaphore_timeout = 60000,
          lua_ssl_trusted_certificate = { e.ca }, lua_ssl_trusted_certificate_combined = e.ca,
          admin_listeners = { "127.0.0.1:0" }, -- worker 0 then runs the TTL cleanup timer
          _debug_pg_ttl_cleanup_interval = 1,
          pg_schema = kind.table, -- Kong's SET SCHEMA on each new connection
          _table = kind.table, _other_ca = e.other_ca,
        }
        -- the schema, and the tables Kong's TTL cleanup visits (its two, and one of ours)
        local S = kind.table
        assert(e:psql(("DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s AUTHORIZATION %s; SET search_path = %s; "
          .. "CREATE TABLE cluster_events (id serial PRIMARY KEY, expire_at timestamptz); "
          .. "CREATE TABLE clustering_rpc_requests (id serial PRIMARY KEY, ttl timestamptz); "
          .. "CREATE TABLE %s_ttl (id serial PRIMARY KEY, ttl timestamptz); "
          .. "ALTER TABLE cluster_events OWNER TO %s; ALTER TABLE clustering_rpc_requests OWNER TO %s; "
          .. "ALTER TABLE %s_ttl OWNER TO %s")
          :format(S, S, rw_user, S, S, rw_user, rw_user, S, rw_user)))
        local env = util.merge(MASTER_ENV, { AWS_REGION = REGION })
        if kind.iam == "conf" then
          conf.pg_iam_auth, conf.pg_iam_auth_region = true, REGION
        elseif kind.iam == "env" then
          env.KONG_PG_IAM_AUTH = "on" -- kong.configuration has no IAM key at all (Kong OSS)
        else
          conf.pg_password = e.env.RDS_EMU_PW_SCRAM_PASSWORD
        end
        if kind.ro_iam then
          -- every pg_ro_* key, as Kong's conf loader fills them in from pg_*
          for _, k in ipairs { "host", "port", "database", "timeout", "ssl", "ssl_verify", "keepalive_timeout",
                               "pool_size", "max_concurrent_queries", "semaphore_timeout" } do
            conf["pg_ro_" .. k] = conf["pg_" .. k]
          end
          conf.pg_ro_user, conf.pg_ro_schema = e.env.RDS_EMU_IAM_USER, ""
          conf.pg_ro_iam_auth, conf.pg_iam_auth_region = true, REGION
        end
        local files = standins {
          ["conf/kongconf.lua"] = util.lua_returning(conf), -- kong.configuration
          ["lua/kong/db/strategies/postgres/connector.lua"] = natively("connector.lua", {
            ["pgmoon"] = "kong_rds_iam.pgmoon", ["pgmoon.arrays"] = "kong_rds_iam.pgmoon.arrays",
          }),
          ["lua/kong/db/strategies/postgres/init.lua"] = natively("init.lua", {
            ["pgmoon.arrays"] = "kong_rds_iam.pgmoon.arrays", ["pgmoon.json"] = "kong_rds_iam.pgmoon.json",
          }),
        }
        local err
        n, err = nginx.start { workers = 1, env = env, http = HTTP, server = SERVER, files = files }
        assert(n, err)
        assert(e:clear_log())
        local made = op("setup") -- the table the queries use
        assert(made.ok, tostring(made.err))
      end)

      teardown(function()
        if n then n:stop() end
      end)

      it("initialises in the nginx master (init_by_lua) and again in a request", function()
        local r = op("init")
        assert.is_true(r.master.init_ok, tostring(r.master.init_err))
        assert.equal("init", r.master.phase)
        assert.is_true(r.master.native)
        assert.is_true(r.master.major_version >= 10)
        assert.is_true(r.request_init_ok, tostring(r.request_init_err))
        assert.equal("PostgreSQL", r.infos.strategy)
      end)

      it("connects over verified TLS, runs Kong's session setup and its queries, and keeps alive", function()
        local r = op("main")
        assert.is_true(r.connect_ok, tostring(r.connect_err))
        assert.equal("nginx", r.sock_type)
        assert.is_true(r.session.ssl)
        assert.equal("UTC", r.session.tz)           -- Kong's SET TIME ZONE on a new connection
        assert.equal("kong", r.session.app)
        assert.equal(kind.table, r.session.schema)
        assert.equal(rw_user, r.session.usr)
        assert.is_true(r.multi_ok, cjson.encode(r.multi))
        assert.is_true(r.insert_ok, tostring(r.insert_err))
        assert.is_true(r.arrays_ok, tostring(r.arrays_err))
        assert.is_true(r.json_ok, tostring(r.json_err))
        assert.is_true(r.nulls_ok, tostring(r.nulls_err))
        assert.is_true(r.escape_ok, tostring(r.escape_err))
        assert.is_true(r.keepalive_ok, tostring(r.keepalive_err))
        assert.is_false(r.stored_after)
      end)

      it("reuses the pooled session in the next requests", function()
        local first = op("main")
        local a, b = op("reuse"), op("reuse")
        for _, r in ipairs { a, b } do
          assert.is_true(r.connect_ok, tostring(r.connect_err))
          assert.equal(first.session.pid, r.pid)
          assert.equal("UTC", r.tz)
          assert.is_true(r.keepalive_ok)
        end
        assert.is_true(a.reused > 0)
        assert.equal(a.reused + 1, b.reused)
      end)

      it("runs the queries of two light threads of one request at once", function()
        local r = op("threads")
        assert.is_nil(r.a.err)
        assert.is_nil(r.b.err)
        assert.not_equal(r.a.pid, r.b.pid) -- two sessions: one after the other would take 1 s
        assert.is_true(r.elapsed < 0.9, "elapsed " .. r.elapsed)
      end)

      it("times out with the message Kong's is_timeout matches, and the statement is cancelled", function()
        local r = op("timeout")
        assert.is_true(r.connect_ok, tostring(r.connect_err))
        assert.is_false(r.ok)
        assert.equal("timeout", r.err:sub(-7), r.err)
        assert.is_true(r.elapsed < 1.5, "elapsed " .. r.elapsed)
        assert.equal(1, r.after.one, tostring(r.after.err))
        assert.not_equal(r.pid_before, r.after.pid)
        assert.is_true(r.old_backend_gone)
      end)

      it("reports constraint violations in the text Kong's own error parser reads", function()
        local r = op("errors")
        local T = kind.table
        assert.is_false(r.unique.ok)
        assert.truthy(r.unique.err:find("violates unique constraint", 1, true), r.unique.err)
        assert.same({ "unique_violation", { name = "dup" } }, r.unique.kong)
        -- the referencing table's name comes out of the detail line's end
        assert.is_false(r.restricted.ok)
        assert.same({ "foreign_key_violation_restricted", T .. "_parent", T .. "_child" }, r.restricted.kong)
        -- found with the driver's escape_identifier, called with the connector as self
        assert.is_false(r.invalid_reference.ok)
        assert.same({ "foreign_key_violation_invalid_reference", { id = 99 }, "parent", T .. "_parent" },
          r.invalid_reference.kong)
        assert.equal(1, r.multi.num_queries)
        assert.equal(1, r.multi.partial_first)
        assert.is_true(r.after_ok)
      end)

      it("runs what Kong's migrations and cluster mutex ask: reset, bootstrap, up, locks, iterate", function()
        local r = op("migrations")
        assert.is_true(r.connect_ok, tostring(r.connect_err))
        assert.same({ true }, r.reset)
        assert.is_true(r.needs_bootstrap)
        assert.same({ true }, r.bootstrap)
        assert.same({}, r.bootstrapped)             -- bootstrapped, nothing migrated
        assert.same({ true }, r.up)
        assert.same({ true }, r.record)
        assert.equal(1, #r.migrated)
        assert.equal("core", r.migrated[1].subsystem)
        assert.same({ "000_base" }, r.migrated[1].executed)
        assert.equal("000_base", r.migrated[1].last_executed)
        assert.is_false(r.bad_up.ok)
        assert.equal("ERROR: division by zero", r.bad_up.err)
        assert.is_true(r.bad_left_nothing)
        assert.same({ first = true, second = false, held = true, removed = true, held_after = false }, r.locks)
        assert.same({ 1, 2, 3 }, r.iterated)
        assert.equal(kind.table .. "_m", r.schema.s)
        assert.same({ true }, r.close)
      end)

      it("serves the queries of Kong's TTL cleanup timer (an ngx.timer)", function()
        local r = op("ttl")
        assert.same({ expired = 0, live = 1, events = 0 }, r.left)
        assert.is_true(r.waited < 5, "waited " .. r.waited)
      end)

      it("refuses a server its CA did not sign, and a name the certificate does not hold", function()
        local ca, host = op("badca"), op("badhost")
        assert.is_false(ca.connect_ok)
        assert.truthy(ca.connect_err:find("not signed by a trusted ca", 1, true), ca.connect_err)
        assert.is_false(host.connect_ok)
        assert.truthy(host.connect_err:find("not valid for 127.0.0.2", 1, true), host.connect_err)
      end)

      if kind.ro_iam then
        it("reads through the read-only side as its own user, logged in with IAM, and reuses that session", function()
          -- The first read learns the side's schema (pg_ro_schema ""): Kong
          -- then asks for "public", a pool key of its own, from the next on.
          assert.is_nil(op("read").err)
          local a, b = op("read"), op("read")
          for _, r in ipairs { a, b } do
            assert.is_nil(r.err)
            assert.equal(e.env.RDS_EMU_IAM_USER, r.usr)
            assert.is_true(r.ssl)
          end
          assert.equal(a.pid, b.pid)
          local w = op("reuse") -- the read-write side still logs in with its password
          assert.is_true(w.connect_ok, tostring(w.connect_err))
          assert.not_equal(a.pid, w.pid)
        end)
      end

      local iam = kind.iam or kind.ro_iam
      it(iam and "logged in with IAM tokens the verifier accepted, and no secret was logged or answered"
        or "logged in without IAM, and no secret was logged or answered", function()
        local stats = op("stats").stats
        local log = e:log()
        if iam then
          assert.is_true(stats.iam_auth_ok > 0)
          assert.is_true(count(log, 'akid="' .. AKID .. '" ACCEPT') > 0, log)
          assert.is_nil(log:find("REJECT", 1, true), log)
        else
          assert.equal(0, stats.iam_auth_ok)
          assert.equal("", log)
        end
        local text = n:error_log() .. table.concat(answers, "\n")
        for _, secret in ipairs { SECRET, SESSION, e.env.RDS_EMU_PW_SCRAM_PASSWORD, "X-Amz-" } do
          assert.is_nil(text:find(secret, 1, true), "a secret in the log or an answer")
        end
      end)
    end)
  end
end)
