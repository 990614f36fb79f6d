-- kong_rds_iam.explain: the facts of a conf (credentials, region and where
-- it came from, the signed host and user, the token's dates, clock, TLS, a
-- live login with the rds_iam membership query), never a secret, and the
-- causes of the catalogue, each exactly when its condition holds; the same
-- for ElastiCache / MemoryDB token requests (rds.explain{ cache_name = ... }).
-- Against the local RDS emulator (IAM logins checked by its independent
-- verifier) and the fake AWS endpoints; cases that need another AWS
-- environment run in a child luajit (the module freezes AWS_* at load).
local rds = require "kong_rds_iam"
local explain_mod = require "kong_rds_iam.explain"
local emu = require "spec.support.emulator"
local fake = require "spec.support.fake_aws"
local test_env = require "spec.support.test_env"
local lua_process = require "spec.support.lua_process"
local iam_probe = require "spec.support.iam_probe"
local iam_proof = require "spec.support.iam_proof"
local util = require "spec.support.util"
local cjson = require "cjson.safe"

local merge = util.merge
local RDS_HOST = "mydb.abcdefghijkl.us-east-1.rds.amazonaws.com"

local function explain(conf, mode, opts, module)
  return explain_mod.explain(module or rds, conf, mode, opts)
end

-- explain's JSON holds neither the secret key, the session token (raw or
-- percent-encoded), the token, its signature nor the whole key id; the
-- masked key id (its last 4 characters) is there.
local function assert_no_secret(json, token, secret, session, akid)
  local signature = token:match("X%-Amz%-Signature=(%x+)")
  assert.truthy(signature)
  for what, needle in pairs {
    secret = secret, session_token = session, encoded_session_token = (session:gsub("[/+=]", function(c)
      return ("%%%02X"):format(c:byte())
    end)), token = token, signature = signature, akid = akid,
  } do
    assert.is_nil(json:find(needle, 1, true), what .. " in explain's JSON: " .. json)
  end
  assert.matches(akid:sub(-4) .. '"', json, 1, true)
end

local function has(report, id)
  return util.contains(report.cause_ids, id)
end

local function cause_text(report, id)
  for i, cid in ipairs(report.cause_ids) do
    if cid == id then return report.causes[i] end
  end
end

-- explain(conf, nil, opts) in a child luajit with environment `env`: the
-- decoded report, and the token the child signed for the same conf (to look
-- for it in the report's JSON).
local CHILD = [[
local rds = require "kong_rds_iam"
local explain = require "kong_rds_iam.explain"
local conf = CONF
local report = explain.explain(rds, conf, nil, OPTS)
io.write("REPORT ", explain.to_json(report), "\n")
io.write("TOKEN ", tostring((rds.token(conf))), "\n")
]]

local function explain_in_child(conf_source, env, opts, run_opts)
  local code = CHILD:gsub("CONF", function() return conf_source end)
                    :gsub("OPTS", function() return opts or "nil" end)
  local out = lua_process.run(code, iam_probe.env_with(env), run_opts)
  local json = out:match("REPORT ([^\n]*)")
  local report = json and cjson.decode(json)
  assert(report, "child failed:\n" .. out)
  return report, json, out:match("TOKEN ([^\n]*)"), out
end

describe("explain()", function()
  local e, f

  -- an IAM login as iam_user that works: localhost (the certificate's
  -- name), the emulator's CA, region us-east-1
  local function iam_conf(extra)
    return merge({
      pg_host = "localhost", pg_port = e.port, pg_database = e.db, pg_user = "iam_user",
      pg_iam_auth = true, pg_iam_auth_region = "us-east-1", pg_ssl_cafile = e.ca, pg_timeout = 5000,
    }, extra)
  end

  local function pw_conf(extra)
    return merge({
      pg_host = "localhost", pg_port = e.port, pg_database = e.db, pg_user = "pw_scram",
      pg_password = e.users.pw_scram, pg_timeout = 5000,
    }, extra)
  end

  lazy_setup(function()
    e = assert(emu.start { region = "us-east-1" })
    assert(e:add_key(test_env.access_key_id, test_env.secret_access_key))
    assert(e:allow_host(RDS_HOST))
    f = assert(fake.start { emulator_dir = e.dir })
  end)

  lazy_teardown(function()
    if f then f:stop() end
    if e then e:stop() end
  end)

  describe("facts", function()
    it("names the credentials, region, signed host and user, the token's dates and TLS", function()
      local before = os.time()
      local r = explain(iam_conf())
      assert.is_nil(r.error)
      assert.equal("rw", r.mode)
      assert.is_true(r.iam)
      assert.same({ "localhost", e.port, "iam_user", e.db }, { r.host, r.port, r.user, r.database })
      assert.equal("environment", r.credentials.source)
      assert.equal(("*"):rep(16) .. test_env.access_key_id:sub(-4), r.credentials.access_key_id)
      assert.is_nil(r.credentials.expires_at) -- static keys have none
      assert.is_nil(r.credentials_error)
      assert.equal("us-east-1", r.region)
      assert.equal("pg_iam_auth_region", r.region_from)
      assert.is_nil(r.host_region)
      assert.equal("localhost", r.signed_host)
      assert.equal(e.port, r.signed_port)
      assert.equal("pg_host", r.signed_host_from)
      local t = r.token
      assert.equal("iam_user", t.user)
      assert.equal("us-east-1", t.region)
      assert.matches("^%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ$", t.date)
      assert.is_true(t.signed_at >= before - 1 and t.signed_at <= os.time())
      assert.equal(os.date("!%Y%m%dT%H%M%SZ", t.signed_at), t.date)
      assert.equal(900, t.expires)
      assert.equal(t.signed_at + 900, t.expires_at)
      assert.is_false(t.session_token)
      assert.matches("static keys", r.clock.note, 1, true)
      assert.is_nil(r.clock.offset)
      assert.same({ true, true, true, "tlsv1_2", e.ca },
        { r.tls.ssl, r.tls.ssl_required, r.tls.ssl_verify, r.tls.ssl_version, r.tls.cafile })
      assert.is_nil(r.connect) -- not asked for
    end)

    it("with connect = true logs in for real and reads the rds_iam membership", function()
      e:clear_log()
      local r = explain(iam_conf(), nil, { connect = true })
      assert.is_true(r.connect.ok, r.connect.error)
      assert.equal("iam_user", r.connect.user)
      assert.is_true(r.connect.rds_iam)
      assert.is_true(iam_proof.has_line(e, test_env.access_key_id,
        ('user="iam_user" akid="%s" ACCEPT'):format(test_env.access_key_id)), e:log())
    end)

    it("reports the server's refusal with its SQLSTATE", function()
      local r = explain(iam_conf { pg_iam_auth_region = "eu-west-1" }, nil, { connect = true })
      assert.is_false(r.connect.ok)
      assert.matches("PAM authentication failed", r.connect.error, 1, true)
      assert.equal("28000", r.connect.sqlstate)
    end)

    it("takes the read-only side with mode ro", function()
      local r = explain(iam_conf { pg_ro_host = "localhost", pg_ro_user = "iam_user2" }, "ro", { connect = true })
      assert.equal("ro", r.mode)
      assert.equal("iam_user2", r.token.user)
      assert.equal("iam_user2", r.connect.user)
    end)

    it("names the host's region and the signed host's origin for an RDS endpoint via pg_iam_auth_host", function()
      -- (the certificate names localhost, and the module verifies it for the signed name)
      local r = explain(iam_conf { pg_iam_auth_host = RDS_HOST, pg_iam_auth_region = "", pg_iam_auth_ssl_verify = false },
        nil, { connect = true })
      assert.equal(RDS_HOST, r.signed_host)
      assert.equal("pg_iam_auth_host", r.signed_host_from)
      assert.equal("us-east-1", r.host_region)
      assert.equal("us-east-1", r.region)
      assert.equal("host", r.region_from)
      assert.is_true(r.connect.ok, r.connect.error) -- the emulator answers to that name too
    end)

    it("returns the conf's error as error", function()
      local r = explain({ pg_port = "nope" })
      assert.matches("pg_port must be an integer", r.error, 1, true)
    end)

    it("reads temporary credentials' expiry (IMDS) and the session token's presence", function()
      local r = explain_in_child(iam_probe.conf_source(e.port, { pg_ssl_cafile = e.ca }), f:env("imds"))
      assert.equal("imds", r.credentials.source)
      assert.is_near(3600, r.credentials.expires_in, 30)
      assert.is_true(r.token.session_token)
      assert.matches("^%*+" .. ("%w"):rep(4) .. "$", r.credentials.access_key_id)
    end)
  end)

  describe("never a secret", function()
    it("the secret key, the session token, the token and the full key id are not in its JSON", function()
      local akid, secret, session, env = test_env.master_credentials("explain")
      assert(e:add_key(akid, secret, session))
      local report, json, token = explain_in_child(iam_probe.conf_source(e.port, { pg_ssl_cafile = e.ca }),
        env, "{ connect = true }")
      assert.is_true(report.connect.ok, report.connect.error)
      assert.truthy(token and #token > 100)
      assert_no_secret(json, token, secret, session, akid)
    end)
  end)

  describe("causes", function()
    it("lists only the unavoidable one for a working IAM login on localhost", function()
      local r = explain(iam_conf(), nil, { connect = true })
      assert.same({ "signing_host" }, r.cause_ids)
      assert.equal(#r.cause_ids, #r.causes)
    end)

    it("none at all for an RDS endpoint name with verified TLS", function()
      local r = explain(iam_conf { pg_iam_auth_host = RDS_HOST })
      assert.same({}, r.cause_ids)
      assert.equal('{"cause_ids":[]', explain_mod.to_json({ cause_ids = r.cause_ids, z = 1 }):sub(1, 15))
    end)

    it("iam_off: IAM is off", function()
      local r = explain(pw_conf { pg_ssl = true, pg_ssl_verify = true, pg_ssl_cafile = e.ca }, nil, { connect = true })
      assert.is_true(r.connect.ok, r.connect.error)
      assert.same({ "iam_off" }, r.cause_ids)
      assert.is_nil(r.token)
    end)

    it("vault_reference: a key holds a vault reference", function()
      local r = explain(iam_conf { pg_password = "{vault://env/kong-pg-password}", pg_iam_auth_host = RDS_HOST })
      assert.same({ "vault_reference" }, r.cause_ids)
      assert.equal("pg_password holds a vault reference ({vault://...}), which only Kong can resolve",
        cause_text(r, "vault_reference"))
      assert.same({ "pg_password" }, r.vault_keys)
    end)

    it("no_credentials: the credentials cannot be fetched", function()
      local r = explain_in_child(iam_probe.conf_source(e.port, { pg_iam_auth_host = RDS_HOST }), {})
      assert.is_string(r.credentials_error)
      assert.same({ "no_credentials" }, r.cause_ids)
      assert.is_nil(r.token)
    end)

    it("token_failed: no token can be signed (no region for an IP)", function()
      local r = explain(iam_conf { pg_host = "127.0.0.1", pg_iam_auth_region = "" })
      assert.matches("cannot tell the aws region", r.token_error, 1, true)
      assert.is_true(has(r, "token_failed"))
      assert.is_false(has(r, "no_credentials"))
    end)

    it("credentials_expire: the credentials expire within the token's 900 s", function()
      f:set_lifetime(600)
      local ok, r = pcall(explain_in_child, iam_probe.conf_source(e.port, { pg_iam_auth_host = RDS_HOST }), f:env("imds"))
      f:set_lifetime(3600)
      assert(ok, r)
      assert.is_near(600, r.credentials.expires_in, 30)
      assert.same({ "credentials_expire" }, r.cause_ids)
      -- and not with an hour left
      local r2 = explain_in_child(iam_probe.conf_source(e.port, { pg_iam_auth_host = RDS_HOST }), f:env("imds"))
      assert.is_near(3600, r2.credentials.expires_in, 30)
      assert.same({}, r2.cause_ids)
    end)

    it("region_mismatch: pg_iam_auth_region differs from the host's region", function()
      local r = explain(iam_conf { pg_iam_auth_host = RDS_HOST, pg_iam_auth_region = "eu-west-1",
        pg_iam_auth_ssl_verify = false }, nil, { connect = true })
      assert.is_false(r.connect.ok)
      assert.equal("28000", r.connect.sqlstate)
      assert.equal("The token is signed for eu-west-1 (pg_iam_auth_region) but the host name is in us-east-1.",
        cause_text(r, "region_mismatch"))
      assert.same({ "region_mismatch", "rds_iam_member", "tls_unverified" }, r.cause_ids)
      -- the same region: none
      assert.same({}, explain(iam_conf { pg_iam_auth_host = RDS_HOST, pg_iam_auth_region = "us-east-1" }).cause_ids)
    end)

    it("signing_host: an IP or a name that is not an RDS endpoint, without pg_iam_auth_host", function()
      local ip = explain(iam_conf { pg_host = "127.0.0.1" })
      assert.same({ "signing_host" }, ip.cause_ids)
      assert.matches("127.0.0.1, an IP address", ip.causes[1], 1, true)
      local name = explain(iam_conf { pg_host = "db.internal.example" })
      assert.matches("not an RDS endpoint name", name.causes[1], 1, true)
      assert.same({}, explain(iam_conf { pg_host = RDS_HOST }).cause_ids)
      assert.same({}, explain(iam_conf { pg_iam_auth_host = RDS_HOST }).cause_ids)
      -- pg_iam_auth_host set: the operator chose the name, even one that is not an RDS endpoint's
      local chosen = explain(iam_conf { pg_iam_auth_host = "db.internal.example" })
      assert.equal("db.internal.example", chosen.signed_host)
      assert.same({}, chosen.cause_ids)
      -- a name that only ends like one is no RDS endpoint
      assert.same({ "signing_host" }, explain(iam_conf { pg_host = RDS_HOST .. ".evil.example" }).cause_ids)
    end)

    it("clock_offset: the measured offset is over 60 s (either way)", function()
      -- the facts as the Rust side hands them over, with a chosen offset
      local function with_offset(offset)
        return setmetatable({
          _facts = function(conf, mode)
            local facts = rds._facts and assert(rds._facts(conf, mode)) or {
              mode = "rw", iam = true, host = conf.pg_host, port = conf.pg_port, user = conf.pg_user,
              signed_host = RDS_HOST, signed_port = conf.pg_port, signed_host_from = "pg_iam_auth_host",
              region = "us-east-1", region_from = "host", host_region = "us-east-1",
              credentials = { source = "imds", access_key_id = "****************ABCD" },
            }
            facts.clock_offset, facts.clock_source = offset, "imds"
            return facts
          end,
        }, { __index = rds })
      end
      local conf = iam_conf { pg_iam_auth_host = RDS_HOST }
      assert.same({ "clock_offset" }, explain(conf, nil, nil, with_offset(120)).cause_ids)
      assert.same({ "clock_offset" }, explain(conf, nil, nil, with_offset(-61)).cause_ids)
      assert.same({}, explain(conf, nil, nil, with_offset(60)).cause_ids)
      assert.same({}, explain(conf, nil, nil, with_offset(-5)).cause_ids)
      local r = explain(conf, nil, nil, with_offset(-600))
      assert.equal(-600, r.clock.offset)
      assert.equal("imds", r.clock.source)
    end)

    it("clock_offset: measured for real from IMDS with a clock 10 minutes fast", function()
      if not rds._facts then
        pending("rds._facts (the clock offset) is not in this build")
        return
      end
      local r = explain_in_child(iam_probe.conf_source(e.port, { pg_iam_auth_host = RDS_HOST }), f:env("imds"),
        nil, { prefix = "faketime -f '+10m'" })
      assert.is_near(-600, r.clock.offset, 5)
      assert.same({ "clock_offset" }, r.cause_ids)
    end)

    it("knows DSQL tokens: the action, no port, no signing_host cause for a DSQL endpoint", function()
      local r = explain { pg_host = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws", pg_user = "admin",
        pg_database = "postgres", pg_iam_auth = true, pg_iam_auth_service = "dsql" }
      assert.equal("dsql", r.service)
      assert.same({ "DbConnectAdmin", "dsql", "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws", nil },
        { r.token.action, r.token.service, r.token.host, r.token.port })
      assert.equal("us-east-1", r.host_region)
      assert.is_false(has(r, "signing_host"))
      -- an RDS conf on the same host name does list it
      assert.is_true(has(explain { pg_host = "10.0.0.1", pg_user = "admin", pg_iam_auth = true,
        pg_iam_auth_region = "us-east-1" }, "signing_host"))
    end)

    it("user_mismatch: the token is signed for another user than the login's", function()
      local other = setmetatable({
        token = function(conf, mode)
          local token, err, exp = rds.token(conf, mode)
          return token and token:gsub("DBUser=[^&]*", "DBUser=someone_else"), err, exp
        end,
        _facts = false,
      }, { __index = rds })
      local r = explain(iam_conf { pg_iam_auth_host = RDS_HOST }, nil, nil, other)
      assert.same({ "user_mismatch" }, r.cause_ids)
      assert.equal("The token is signed for user someone_else but the login is as iam_user.", r.causes[1])
    end)

    it("rds_iam_member: the user is not a member, or the login was refused so it cannot be known", function()
      -- refused (wrong region): cannot be checked
      local refused = explain(iam_conf { pg_iam_auth_region = "eu-west-1" }, nil, { connect = true })
      assert.is_true(has(refused, "rds_iam_member"))
      assert.matches("could not be checked", cause_text(refused, "rds_iam_member"), 1, true)
      -- a login whose membership query says no
      local not_member = setmetatable({
        connect = function()
          return {
            query = function() return { { login_user = "iam_user", rds_iam_role = rds.null } } end,
            close = function() return true end,
          }
        end,
      }, { __index = rds })
      local r = explain(iam_conf { pg_iam_auth_host = RDS_HOST }, nil, { connect = true }, not_member)
      assert.same({ "rds_iam_member" }, r.cause_ids)
      assert.equal("iam_user is not a member of rds_iam: RDS accepts IAM logins only for members (GRANT rds_iam TO iam_user).",
        r.causes[1])
      assert.is_false(r.connect.rds_iam)
      -- a login that cannot reach the server says nothing about membership
      local unreachable = explain(iam_conf { pg_iam_auth_host = RDS_HOST, pg_port = 1 }, nil, { connect = true })
      assert.is_false(unreachable.connect.ok)
      assert.is_false(has(unreachable, "rds_iam_member"))
    end)

    it("tls_off and tls_unverified", function()
      local off = explain(pw_conf { pg_ssl = false }, nil, { connect = true })
      assert.is_true(off.connect.ok, off.connect.error)
      assert.same({ "iam_off", "tls_off" }, off.cause_ids)
      local unverified = explain(pw_conf { pg_ssl = true, pg_ssl_verify = false }, nil, { connect = true })
      assert.same({ "iam_off", "tls_unverified" }, unverified.cause_ids)
      local iam_unverified = explain(iam_conf { pg_iam_auth_host = RDS_HOST, pg_iam_auth_ssl_verify = false })
      assert.is_false(iam_unverified.tls.ssl_verify)
      assert.same({ "tls_unverified" }, iam_unverified.cause_ids)
    end)
  end)

  describe("ElastiCache / MemoryDB requests", function()
    local SERVERLESS_EP = "my-cache-x7ab2c.serverless.use1.cache.amazonaws.com"
    local NODE_EP = "master.my-group.x7ab2c.use1.cache.amazonaws.com"
    local MEMORYDB_EP = "clustercfg.my-db.x7ab2c.memorydb.eu-west-1.amazonaws.com"

    -- A Lua literal of a flat table of strings and booleans.
    local function literal(t)
      local parts = {}
      for k, v in pairs(t) do
        parts[#parts + 1] = ("[%q] = %s"):format(k, type(v) == "string" and ("%q"):format(v) or tostring(v))
      end
      table.sort(parts)
      return "{ " .. table.concat(parts, ", ") .. " }"
    end

    -- rds.explain(req) in a child luajit with environment `env`: the decoded
    -- report, its JSON, and the token the child signed for the same request.
    local CACHE_CHILD = [[
local rds = require "kong_rds_iam"
local explain = require "kong_rds_iam.explain"
local req = REQ
io.write("REPORT ", explain.to_json(rds.explain(req)), "\n")
io.write("TOKEN ", tostring((rds.elasticache_token(req))), "\n")
]]
    local function cache_in_child(req, env, run_opts)
      local code = CACHE_CHILD:gsub("REQ", function() return literal(req) end)
      local out = lua_process.run(code, iam_probe.env_with(env), run_opts)
      local json = out:match("REPORT ([^\n]*)")
      local report = json and cjson.decode(json)
      assert(report, "child failed:\n" .. out)
      return report, json, out:match("TOKEN ([^\n]*)")
    end

    -- a module whose facts carry a chosen clock offset
    local function with_offset(offset)
      return setmetatable({
        _facts = function(conf, mode)
          local facts = assert(rds._facts(conf, mode))
          facts.clock_offset, facts.clock_source = offset, "imds"
          return facts
        end,
      }, { __index = rds })
    end

    describe("facts", function()
      it("names the cache, user, serverless and region and where they came from, and the token's facts", function()
        local before = os.time()
        local r = rds.explain { cache_name = "My-Cache", user = "app-01", endpoint = SERVERLESS_EP }
        assert.equal("elasticache", r.service)
        assert.equal("my-cache", r.cache_name) -- lowercased, as signed
        assert.equal("app-01", r.user)
        assert.same({ SERVERLESS_EP, "elasticache", "us-east-1" }, { r.endpoint, r.endpoint_service, r.endpoint_region })
        assert.same({ true, "endpoint" }, { r.serverless, r.serverless_from })
        assert.same({ "us-east-1", "endpoint" }, { r.region, r.region_from })
        assert.equal("environment", r.credentials.source)
        assert.equal(("*"):rep(16) .. test_env.access_key_id:sub(-4), r.credentials.access_key_id)
        assert.is_nil(r.credentials.expires_at)
        local t = r.token
        assert.same({ "my-cache", "app-01", "connect", "ServerlessCache", "elasticache", "us-east-1", 900, false },
          { t.host, t.user, t.action, t.resource_type, t.service, t.region, t.expires, t.session_token })
        assert.matches("^%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ$", t.date)
        assert.is_true(t.signed_at >= before - 1 and t.signed_at <= os.time())
        assert.equal(t.signed_at + 900, t.expires_at)
        assert.is_nil(t.port)
        assert.matches("static keys", r.clock.note, 1, true)
        assert.same({}, r.cause_ids)
        assert.is_nil(r.mode) -- not a conf's report
        assert.is_nil(r.tls)
      end)

      it("serverless_from: given, the endpoint's label, or the default (false)", function()
        local given = rds.explain { cache_name = "c", user = "u", region = "us-east-1", serverless = true }
        assert.same({ true, "serverless", "ServerlessCache" }, { given.serverless, given.serverless_from, given.token.resource_type })
        local node = rds.explain { cache_name = "c", user = "u", endpoint = NODE_EP }
        assert.same({ false, "default", nil }, { node.serverless, node.serverless_from, node.token.resource_type })
        local none = rds.explain { cache_name = "c", user = "u", region = "us-east-1" }
        assert.same({ false, "default" }, { none.serverless, none.serverless_from })
      end)

      it("region_from: region, then the endpoint (short codes, MemoryDB's full name), else the environment", function()
        local r = rds.explain { cache_name = "c", user = "u", region = "eu-central-1" }
        assert.same({ "eu-central-1", "region", "eu-central-1" }, { r.region, r.region_from, r.token.region })
        local m = rds.explain { cache_name = "c", user = "u", endpoint = MEMORYDB_EP, service = "memorydb" }
        assert.same({ "memorydb", "eu-west-1", "endpoint", "memorydb", "eu-west-1" },
          { m.service, m.region, m.region_from, m.token.service, m.token.region })
        for env, want in pairs {
          AWS_REGION = { AWS_REGION = "ap-south-1", AWS_DEFAULT_REGION = "sa-east-1" },
          AWS_DEFAULT_REGION = { AWS_DEFAULT_REGION = "sa-east-1" },
        } do
          local c = cache_in_child({ cache_name = "c", user = "u" }, util.merge(test_env.vars, want))
          assert.same({ want[env], env, want[env] }, { c.region, c.region_from, c.token.region })
        end
        local config = os.tmpname()
        util.write_file(config, "[default]\nregion = ca-central-1\n")
        local p = cache_in_child({ cache_name = "c", user = "u" }, util.merge(test_env.vars, { AWS_CONFIG_FILE = config }))
        os.remove(config)
        assert.same({ "ca-central-1", "profile", "ca-central-1" }, { p.region, p.region_from, p.token.region })
      end)

      it("reads the endpoint's region as rds.elasticache_token does", function()
        for host, want in pairs {
          ["my-cache-abc123.serverless.use1.cache.amazonaws.com"] = { "elasticache", "us-east-1" },
          ["clustercfg.my-group.abc123.apse2.cache.amazonaws.com:6379"] = { "elasticache", "ap-southeast-2" },
          ["my-group.abc123.ng.0001.euc1.cache.amazonaws.com"] = { "elasticache", "eu-central-1" },
          ["x.abc.cnn1.cache.amazonaws.com.cn"] = { "elasticache", "cn-north-1" },
          ["master.g.abc.usgw1.cache.amazonaws.com"] = { "elasticache", "us-gov-west-1" },
          ["MASTER.G.ABC.USW2.CACHE.AMAZONAWS.COM."] = { "elasticache", "us-west-2" },
          ["x.zz9.cache.amazonaws.com"] = { "elasticache" },
          ["use1.cache.amazonaws.com"] = { "elasticache" },
          ["clustercfg.my-cluster.abc123.memorydb.eu-west-1.amazonaws.com"] = { "memorydb", "eu-west-1" },
          ["redis.internal.example"] = {},
        } do
          assert.same(want, { explain_mod.cache_endpoint(host) }, host)
          local region = not want[2] and "us-east-1" or nil
          local r = rds.explain { cache_name = "c", user = "u", endpoint = host, region = region }
          -- the region the token is signed for is the one read here
          assert.equal(want[2] or "us-east-1", r.token and r.token.region, host)
        end
      end)

      it("checks the request's fields and takes no mode", function()
        assert.has_error(function() rds.explain { cache_name = "c" } end,
          "bad argument #1 to 'explain' (field 'user': string expected, got nil)")
        assert.has_error(function() rds.explain { cache_name = "c", user = "u", serverless = "yes" } end,
          "bad argument #1 to 'explain' (field 'serverless': boolean expected, got string)")
        assert.has_error(function() rds.explain({ cache_name = "c", user = "u" }, "ro") end,
          "bad argument #2 to 'explain' (an ElastiCache / MemoryDB request takes no mode, got string)")
      end)
    end)

    describe("never a secret", function()
      it("the secret key, the session token, the token, its signature and the full key id are not in its JSON", function()
        local akid, secret, session, env = test_env.master_credentials("cachexp")
        local report, json, token = cache_in_child({ cache_name = "my-cache", user = "app", endpoint = SERVERLESS_EP }, env)
        assert.truthy(token and #token > 100, token)
        assert.truthy(report.token)
        assert.is_true(report.token.session_token)
        assert_no_secret(json, token, secret, session, akid)
      end)
    end)

    describe("causes", function()
      it("no_credentials: the credentials cannot be fetched", function()
        local r = cache_in_child({ cache_name = "c", user = "u", region = "us-east-1" }, {})
        assert.is_string(r.credentials_error)
        assert.same({ "no_credentials" }, r.cause_ids)
        assert.is_nil(r.token)
      end)

      it("cache_region_unknown: no region, no endpoint it can be read from, none in the environment", function()
        local r = rds.explain { cache_name = "c", user = "u" }
        assert.matches("cannot tell the aws region", r.token_error, 1, true)
        assert.same({ "cache_region_unknown" }, r.cause_ids)
        assert.is_nil(r.region)
        assert.same({ "cache_region_unknown" }, rds.explain { cache_name = "c", user = "u", endpoint = "redis.internal.example" }.cause_ids)
        assert.same({}, rds.explain { cache_name = "c", user = "u", endpoint = "redis.internal.example", region = "us-east-1" }.cause_ids)
        assert.same({}, rds.explain { cache_name = "c", user = "u", endpoint = NODE_EP }.cause_ids)
      end)

      it("token_failed: a region is known but no token can be signed", function()
        local r = rds.explain { cache_name = "bad name", user = "u", region = "us-east-1" }
        assert.matches("cache_name must be a cache name", r.token_error, 1, true)
        assert.same({ "token_failed" }, r.cause_ids)
      end)

      it("credentials_expire: the credentials expire within the token's 900 s", function()
        f:set_lifetime(600)
        local ok, r = pcall(cache_in_child, { cache_name = "c", user = "u", region = "us-east-1" }, f:env("imds"))
        f:set_lifetime(3600)
        assert(ok, r)
        assert.equal("imds", r.credentials.source)
        assert.is_near(600, r.credentials.expires_in, 30)
        assert.same({ "credentials_expire" }, r.cause_ids)
        assert.matches("AUTH refuses", r.causes[1], 1, true)
        local r2 = cache_in_child({ cache_name = "c", user = "u", region = "us-east-1" }, f:env("imds"))
        assert.is_near(3600, r2.credentials.expires_in, 30)
        assert.same({}, r2.cause_ids)
      end)

      it("clock_offset: the measured offset is over 60 s (either way)", function()
        local req = { cache_name = "c", user = "u", region = "us-east-1" }
        assert.same({ "clock_offset" }, explain_mod.explain(with_offset(120), req).cause_ids)
        assert.same({ "clock_offset" }, explain_mod.explain(with_offset(-61), req).cause_ids)
        assert.same({}, explain_mod.explain(with_offset(60), req).cause_ids)
        local r = explain_mod.explain(with_offset(-600), req)
        assert.same({ -600, "imds" }, { r.clock.offset, r.clock.source })
        assert.equal("This machine's clock is -600 s off AWS's (more than 60 s); AWS refuses SigV4 signatures dated more than 5 minutes off.",
          r.causes[1])
      end)

      it("region_mismatch: region differs from the endpoint's", function()
        local r = rds.explain { cache_name = "c", user = "u", region = "eu-west-1", endpoint = NODE_EP }
        assert.same({ "region_mismatch" }, r.cause_ids)
        assert.equal("The token is signed for eu-west-1 (region) but the endpoint is in us-east-1.", r.causes[1])
        assert.same({ "eu-west-1", "region" }, { r.region, r.region_from })
        assert.same({}, rds.explain { cache_name = "c", user = "u", region = "us-east-1", endpoint = NODE_EP }.cause_ids)
      end)

      it("cache_name_endpoint: cache_name is an endpoint host name", function()
        local r = rds.explain { cache_name = SERVERLESS_EP, user = "u" , endpoint = SERVERLESS_EP }
        assert.same({ "cache_name_endpoint" }, r.cause_ids)
        assert.matches("cache_name " .. SERVERLESS_EP .. " looks like an endpoint host name", r.causes[1], 1, true)
        assert.same({ "cache_name_endpoint" }, rds.explain { cache_name = MEMORYDB_EP, user = "u", service = "memorydb", region = "eu-west-1" }.cause_ids)
        assert.same({}, rds.explain { cache_name = "my-cache", user = "u", endpoint = SERVERLESS_EP }.cause_ids)
      end)

      it("cache_user_id: user is not a user id as ElastiCache / MemoryDB store it", function()
        for _, user in ipairs { "App", "app_user", "1app", "app user", "-app", "app.user" } do
          local r = rds.explain { cache_name = "c", user = user, region = "us-east-1" }
          assert.same({ "cache_user_id" }, r.cause_ids, user)
          assert.truthy(r.token, user) -- the token is signed all the same
        end
        assert.equal("user App is not a user id as MemoryDB stores it: lowercase letters, digits and hyphens, starting with a letter.",
          rds.explain { cache_name = "c", user = "App", region = "us-east-1", service = "memorydb" }.causes[1])
        for _, user in ipairs { "app", "app-user-01", "a" } do
          assert.same({}, rds.explain { cache_name = "c", user = user, region = "us-east-1" }.cause_ids, user)
        end
      end)

      it("serverless_mismatch: serverless given against the endpoint's .serverless. label", function()
        local off = rds.explain { cache_name = "c", user = "u", endpoint = SERVERLESS_EP, serverless = false }
        assert.same({ "serverless_mismatch" }, off.cause_ids)
        assert.equal("serverless is false but the endpoint " .. SERVERLESS_EP
          .. " has a .serverless. label: ResourceType=ServerlessCache must match the cache's kind.", off.causes[1])
        assert.is_nil(off.token.resource_type)
        local on = rds.explain { cache_name = "c", user = "u", endpoint = NODE_EP, serverless = true }
        assert.same({ "serverless_mismatch" }, on.cause_ids)
        assert.matches(" has no .serverless. label", on.causes[1], 1, true)
        assert.same({}, rds.explain { cache_name = "c", user = "u", endpoint = SERVERLESS_EP, serverless = true }.cause_ids)
        assert.same({}, rds.explain { cache_name = "c", user = "u", endpoint = NODE_EP, serverless = false }.cause_ids)
        -- not an AWS host name (a CNAME): nothing to compare with
        assert.same({}, rds.explain { cache_name = "c", user = "u", endpoint = "redis.internal.example",
          region = "us-east-1", serverless = true }.cause_ids)
      end)

      it("service_mismatch: the endpoint is the other service's", function()
        local r = rds.explain { cache_name = "c", user = "u", endpoint = NODE_EP, service = "memorydb" }
        assert.same({ "service_mismatch" }, r.cause_ids)
        assert.equal("The endpoint " .. NODE_EP .. " is ElastiCache's, but the token is signed for service memorydb.",
          r.causes[1])
        assert.same({ "service_mismatch" }, rds.explain { cache_name = "c", user = "u", endpoint = MEMORYDB_EP }.cause_ids)
        assert.same({}, rds.explain { cache_name = "c", user = "u", endpoint = MEMORYDB_EP, service = "memorydb" }.cause_ids)
      end)

      it("several at once, in catalogue order", function()
        local r = rds.explain { cache_name = NODE_EP, user = "App", endpoint = SERVERLESS_EP, region = "eu-west-1",
          serverless = false, service = "memorydb" }
        assert.same({ "region_mismatch", "cache_name_endpoint", "cache_user_id", "serverless_mismatch", "service_mismatch" },
          r.cause_ids)
        assert.equal(#r.cause_ids, #r.causes)
      end)
    end)
  end)
end)
