-- Where credentials come from (issue #4): every source of the default chain,
-- assume role on top of each, the STS endpoint, the frozen environment,
-- refresh near expiry, and faults. Each case runs in its own luajit process
-- (the module freezes AWS_* and HOME when it is first loaded) and is proven end
-- to end: the process connects with IAM to the RDS emulator, `select
-- current_user` answers, the emulator's independent verifier logs ACCEPT for
-- the access key the module used, and a token signed for that key with the
-- wrong secret is REJECTed.
--
-- Network: only 127.0.0.1. A case either sets AWS_EC2_METADATA_DISABLED=true
-- or points IMDS at the fake; the regional-STS case runs in a private network
-- namespace (loopback only) behind a recording proxy that tunnels nothing.
local util = require "spec.support.util"
local shell_quote = util.shell_quote
local read_file = util.read_file
local write_file = util.write_file

local rds = require "kong_rds_iam"
local emu = require "spec.support.emulator"
local fake = require "spec.support.fake_aws"
local lua_process = require "spec.support.lua_process"
local iam_probe = require "spec.support.iam_probe"
local iam_proof = require "spec.support.iam_proof"
local iam_token = require "spec.support.iam_token"
local aws_keys = require "spec.support.aws_keys"
local aws_files = require "spec.support.aws_files"
local connect_proxy = require "spec.support.connect_proxy"
local cjson = require "cjson.safe"
local socket = require "socket"

local ROLE_ARN = "arn:aws:iam::123456789012:role/kong-db-access"
local LIFETIME = 20          -- s, credentials issued by the fake in the refresh case
local REFRESH_RUN = 32       -- s, how long the refresh case keeps connecting
local MARGIN = 15            -- s, the module refreshes credentials with less life left

local e, f, tmp

---------------------------------------------------------------- helpers --
-- They live in spec/support (see its README.md); the ones that need this
-- spec's emulator `e` or fake `f` are bound to them here.

local exists, merge, contains, sh = util.exists, util.merge, util.contains, util.succeeds
local random_string = aws_keys.random_string
local akid_of, session_token_of = iam_token.akid, iam_token.session_token
local env_with, result_of = iam_probe.env_with, iam_probe.result_of
local spawn, collect = lua_process.spawn, lua_process.collect
local issued = fake.issued_akids

local function static_key(prefix) return aws_keys.static(e, f, prefix) end
-- IAM connections verify the server's certificate: trust the emulator's CA.
local function trusting(extra) return util.merge({ pg_ssl_cafile = e.ca }, extra) end
local function conf_source(extra) return iam_probe.conf_source(e.port, trusting(extra)) end
local function probe(env, conf_extra, opts) return iam_probe.run(e.port, env, trusting(conf_extra), opts) end
local function log_lines(akid, text) return iam_proof.log_lines(e, akid, text) end
local function has_line(akid, what) return iam_proof.has_line(e, akid, what) end
local function assert_accepted(res, out, user) return iam_proof.accepted(e, res, out, user) end
local function assert_wrong_secret_rejected(token) return iam_proof.wrong_secret_rejected(e, token) end
local function assert_end_to_end(res, out, source) return iam_proof.end_to_end(e, res, out, source) end
local function requests(service, pred) return f:requests_where(service, pred) end
local function sts_requests(action) return f:sts_requests(action) end
local function credential_of(akid) return f:credential(akid) end

----------------------------------------------------------------- cases --

describe("credentials", function()
  local static, session_key, profile_key, home_key, cp_key

  lazy_setup(function()
    e = assert(emu.start { region = "us-east-1" })
    f = assert(fake.start { emulator_dir = e.dir, lifetime = 3600 })
    local p = assert(io.popen("mktemp -d /tmp/credentials_spec.XXXXXX"))
    tmp = p:read("*l")
    p:close()
    static = static_key("AKIDENV")
    session_key = static_key("ASIAENV")
    session_key.session_token = "IQoJb3JpZ2luX2VjE" .. random_string(300, "abcdefghijklmnopqrstuvwxyz0123456789+/=")
    assert(e:add_key(session_key.akid, session_key.secret, session_key.session_token, os.time() + 3600))
    profile_key = static_key("AKIDPROFILE")
    home_key = static_key("AKIDHOME")
  end)

  lazy_teardown(function()
    if f then f:stop() end
    if e then e:stop() end
    if tmp and tmp:match("^/tmp/credentials_spec%.") then sh("rm -rf " .. shell_quote(tmp)) end
  end)

  before_each(function()
    assert(f:reset(true))
  end)

  local env_keys = aws_keys.env
  -- AWS_PROFILE=kong in a credentials file whose [default] is a decoy.
  local function profile_env() return aws_files.profile_env(tmp, profile_key) end
  local function home_dir(name, key) return aws_files.home_dir(tmp .. "/" .. name, key) end

  describe("each source, end to end", function()
    it("environment keys without a session token", function()
      local res, out = probe(env_with(env_keys(static)))
      assert.equal(static.akid, assert_end_to_end(res, out, "environment"))
      assert.is_nil(session_token_of(res.token))
      assert.equal("environment", res.base_source)
    end)

    it("environment keys with AWS_SESSION_TOKEN", function()
      local res, out = probe(env_with(env_keys(session_key)))
      assert.equal(session_key.akid, assert_end_to_end(res, out, "environment"))
      assert.equal(session_key.session_token, session_token_of(res.token))
      -- The same key without its session token is refused too.
      local bare = rds.sign_token { host = "localhost", port = e.port, user = "iam_user", region = "us-east-1",
        access_key_id = session_key.akid, secret_access_key = session_key.secret }
      assert.is_nil((rds.connect { pg_host = "localhost", pg_port = e.port, pg_user = "iam_user",
        pg_password = bare, pg_ssl = true }))
      assert.is_true(has_line(session_key.akid, 'REJECT reason="missing X-Amz-Security-Token"'), e:log())
    end)

    it("AWS_PROFILE in AWS_SHARED_CREDENTIALS_FILE", function()
      local res, out = probe(env_with(profile_env()))
      assert.equal(profile_key.akid, assert_end_to_end(res, out, "profile"))
    end)

    it("the default profile in $HOME/.aws/credentials", function()
      local home = home_dir("home", home_key)
      local res, out = probe(env_with {}, nil, { home = home })
      assert.equal(home_key.akid, assert_end_to_end(res, out, "profile"))
    end)

    it("a profile with credential_process (JSON Version 1), run once and cached", function()
      cp_key = {
        akid = "ASIACP" .. random_string(14), secret = random_string(40),
        session_token = "cp-session-" .. random_string(200, "abcdefghijklmnopqrstuvwxyz0123456789+/="),
      }
      local expires = os.time() + 3600
      assert(e:add_key(cp_key.akid, cp_key.secret, cp_key.session_token, expires))
      local count = tmp .. "/cp.count"
      local doc = assert(cjson.encode {
        Version = 1, AccessKeyId = cp_key.akid, SecretAccessKey = cp_key.secret,
        SessionToken = cp_key.session_token, Expiration = os.date("!%Y-%m-%dT%H:%M:%SZ", expires),
      })
      local script = write_file(tmp .. "/credential_process.sh",
        ("#!/bin/sh\necho run >> %s\ncat <<'EOF'\n%s\nEOF\n"):format(shell_quote(count), doc))
      local config = write_file(tmp .. "/cp-config",
        ("[default]\nregion = us-east-1\n\n[profile kongcp]\ncredential_process = /bin/sh %s\n"):format(script))
      local res, out = probe(env_with { AWS_PROFILE = "kongcp", AWS_CONFIG_FILE = config,
        AWS_SHARED_CREDENTIALS_FILE = tmp .. "/no-credentials" })
      assert.equal(cp_key.akid, assert_end_to_end(res, out, "credential_process"))
      assert.equal(cp_key.session_token, session_token_of(res.token))
      assert.equal("run\n", read_file(count), "credential_process ran more than once")
    end)

    -- Clock skew: SigV4 allows +-5 min. The offset is learnt from IMDS's Date
    -- header and tokens are signed with the corrected time.
    for _, skew in ipairs { "+10m", "-10m" } do
      it("a host clock " .. skew .. " off still logs in with IMDS credentials (offset from IMDS's Date)", function()
        local res, out = probe(f:env("imds"), nil, { prefix = "faketime -f '" .. skew .. "'" })
        assert_end_to_end(res, out, "imds")
        -- the token's X-Amz-Date is the real time, not the skewed clock
        local signed = res.token:match("X%-Amz%-Date=(%d+T%d+Z)")
        local y, mo, d, h, mi, sec = signed:match("(%d%d%d%d)(%d%d)(%d%d)T(%d%d)(%d%d)(%d%d)")
        local at = os.time { year = y, month = mo, day = d, hour = h, min = mi, sec = sec, isdst = false }
          - os.time { year = 1970, month = 1, day = 1, hour = 0, isdst = false }
        assert.is_true(math.abs(at - os.time()) < 120, "signed at " .. signed .. "\n" .. out)
      end)
    end

    it("stats() reports the clock offset learnt from IMDS (nil before any AWS answer)", function()
      local out = lua_process.run(([[
        local rds = require "kong_rds_iam"
        io.write("BEFORE ", tostring(rds.stats().clock_offset), "\n")
        assert(rds.token(%s))
        local s = rds.stats()
        io.write("AFTER ", tostring(s.clock_offset), " ", tostring(s.clock_source), "\n")
      ]]):format(conf_source()), iam_probe.env_with(f:env("imds")), { prefix = "faketime -f '+10m'" })
      assert.equal("nil", out:match("BEFORE (%S+)"), out)
      local offset, source = out:match("AFTER (%S+) (%S+)")
      assert.is_true(math.abs(tonumber(offset) + 600) <= 5, out)
      assert.equal("imds", source)
    end)

    it("a host clock 10 minutes fast fails with static keys (no AWS answer, no offset): the negative control", function()
      local res, out = probe(env_with(env_keys(static)), nil, { prefix = "faketime -f '+10m'" })
      assert.is_string(res.connect_err, out)
      assert.matches("PAM authentication failed", res.connect_err, nil, true)
      assert.is_true(has_line(static.akid, "X-Amz-Date is in the future"), e:log())
    end)

    it("names the source that failed, in one short sentence, also when a profile is configured", function()
      local listener = socket.bind("127.0.0.1", 0)
      local _, closed = listener:getsockname()
      listener:close()
      for _, extra in ipairs { {}, { AWS_PROFILE = "nosuch", AWS_CONFIG_FILE = "/nonexistent/kong-rds-iam/config" } } do
        local res, out = probe(merge({ AWS_EC2_METADATA_SERVICE_ENDPOINT = "http://127.0.0.1:" .. closed, AWS_REGION = "us-east-1" }, extra))
        assert.matches("^could not get aws credentials from imds: could not communicate with IMDS: ", res.token_err, nil, false)
        assert.is_true(#res.token_err < 200, res.token_err)
        assert.is_nil(res.token_err:find("Attempted", 1, true), out)
      end
    end)

    it("EC2 IMDSv2 (token required)", function()
      assert(f:set_mode("imds", "imdsv2"))
      finally(function() f:set_mode("imds", "v1v2") end)
      local res, out = probe(f:env("imds"))
      local akid = assert_end_to_end(res, out, "imds")
      local put = requests("imds", function(r) return r.method == "PUT" end)
      assert.is_true(#put >= 1)
      for _, r in ipairs(put) do assert.equal("21600", r.ttl) end
      local creds = requests("imds", function(r) return r.issued_akid end)
      assert.equal(1, #creds)
      assert.equal(akid, creds[1].issued_akid)
      assert.equal("/latest/meta-data/iam/security-credentials/" .. f.role_name, creds[1].path)
      assert.is_true(creds[1].token_valid)
    end)

    it("ECS: AWS_CONTAINER_CREDENTIALS_FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN", function()
      local res, out = probe(env_with(f:env("ecs")))
      local akid = assert_end_to_end(res, out, "ecs")
      local r = requests("ecs")
      assert.equal(1, #r)
      assert.equal("/creds", r[1].path)
      assert.equal("env", r[1].auth_source)
      assert.equal(akid, r[1].issued_akid)
    end)

    it("EKS Pod Identity: FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", function()
      local res, out = probe(env_with(f:env("eks")))
      local akid = assert_end_to_end(res, out, "ecs")
      local r = requests("ecs")
      assert.equal(1, #r)
      assert.equal("/v1/credentials", r[1].path)
      assert.equal("file", r[1].auth_source)
      assert.equal(akid, r[1].issued_akid)
    end)

    it("EKS IRSA: web identity token file + role through STS (AWS_ENDPOINT_URL_STS wins over AWS_STS_REGIONAL_ENDPOINTS)", function()
      local res, out = probe(env_with(f:env("irsa"), {
        AWS_ROLE_SESSION_NAME = "kong-irsa-session", AWS_REGION = "us-west-2", AWS_STS_REGIONAL_ENDPOINTS = "regional",
      }))
      local akid = assert_end_to_end(res, out, "web_identity")
      local r = sts_requests("AssumeRoleWithWebIdentity")
      assert.equal(1, #r)
      assert.equal(f.role_arn, r[1].role_arn)
      assert.equal("kong-irsa-session", r[1].role_session_name)
      assert.is_true(r[1].web_identity_token_ok)
      assert.equal(akid, r[1].issued_akid)
      assert.equal(0, #requests("imds") + #requests("ecs"))
    end)

    it("IRSA without AWS_ROLE_SESSION_NAME uses aws-config's generated session name", function()
      local res, out = probe(env_with(f:env("irsa"), { AWS_REGION = "us-east-1" }))
      assert_accepted(res, out)
      local r = sts_requests("AssumeRoleWithWebIdentity")
      assert.equal(1, #r)
      assert.truthy(r[1].role_session_name:match("^web%-identity%-token%-%d+$"), r[1].role_session_name)
    end)

    it("environment keys win over the other sources configured at the same time", function()
      local res, out = probe(merge(env_keys(static), profile_env(), f:env("ecs"), f:env("imds"),
        { AWS_REGION = "us-east-1" }))
      assert.equal(static.akid, assert_end_to_end(res, out, "environment"))
      assert.equal(0, #requests())
    end)
  end)

  describe("assume role (pg_iam_auth_assume_role_arn) on top of", function()
    local bases = {
      { source = "environment", env = function() return env_with(env_keys(static)) end,
        base_akids = function() return { static.akid } end, session = false },
      { source = "profile", env = function() return env_with(profile_env()) end,
        base_akids = function() return { profile_key.akid } end, session = false },
      { source = "imds", env = function() return f:env("imds") end,
        base_akids = function() return issued(requests("imds")) end, session = true },
      { source = "ecs", env = function() return env_with(f:env("ecs")) end,
        base_akids = function() return issued(requests("ecs")) end, session = true },
      { source = "web_identity", env = function() return env_with(f:env("irsa"), { AWS_REGION = "us-east-1" }) end,
        base_akids = function() return issued(sts_requests("AssumeRoleWithWebIdentity")) end, session = true },
    }
    for _, base in ipairs(bases) do
      it(base.source .. ", with the default session name KongPostgres", function()
        local res, out = probe(base.env(), { pg_iam_auth_assume_role_arn = ROLE_ARN,
          pg_iam_auth_sts_endpoint_url = f.sts_url })
        local akid = assert_end_to_end(res, out, "assume_role(" .. base.source .. ")")
        assert.equal(base.source, res.base_source)
        local r = sts_requests("AssumeRole")
        assert.equal(1, #r, out)
        assert.equal(ROLE_ARN, r[1].role_arn)
        assert.equal("KongPostgres", r[1].role_session_name)
        -- Signed with credentials of the base source (the role provider
        -- fetches its own: one base fetch for credentials_source(), one for the role).
        local base_akids = base.base_akids()
        assert.is_true(#base_akids >= 1)
        assert.is_true(contains(base_akids, r[1].caller_akid), r[1].caller_akid)
        assert.is_true(r[1].signature_valid)
        assert.equal("us-east-1", r[1].signing_region)
        assert.equal(base.session, r[1].security_token_present)
        assert.equal(akid, r[1].issued_akid)
        assert.equal(ROLE_ARN, credential_of(akid).role_arn)
      end)
    end

    it("environment, with a custom pg_iam_auth_role_session_name", function()
      local res, out = probe(env_with(env_keys(static)), { pg_iam_auth_assume_role_arn = ROLE_ARN,
        pg_iam_auth_role_session_name = "kong-node-7", pg_iam_auth_sts_endpoint_url = f.sts_url })
      local akid = assert_end_to_end(res, out, "assume_role(environment)")
      local r = sts_requests("AssumeRole")
      assert.equal(1, #r)
      assert.equal("kong-node-7", r[1].role_session_name)
      assert.equal(akid, r[1].issued_akid)
    end)
  end)

  describe("the STS endpoint", function()
    local netns = sh("unshare -n true >/dev/null 2>&1") and sh("command -v ip >/dev/null 2>&1")

    -- Runs `conf` in a private network namespace (loopback only) with
    -- HTTPS_PROXY pointing at connect_proxy.py; returns the proxy's log lines.
    local function through_proxy(env, conf_extra, after_require)
      return connect_proxy.token(e.port, env, conf_extra, after_require)
    end

    local function assert_only_connects_to(lines, hostport, out)
      assert.is_true(#lines >= 1, "the proxy saw nothing:\n" .. out)
      for _, line in ipairs(lines) do
        assert.equal("CONNECT " .. hostport .. " HTTP/1.1", line)
      end
    end

    local function irsa_without_endpoint(extra)
      local env = env_with(f:env("irsa"), extra)
      env.AWS_ENDPOINT_URL_STS = nil
      return env
    end

    it("is regional with AWS_STS_REGIONAL_ENDPOINTS=regional (seen through HTTPS_PROXY)", function()
      if not netns then return pending("needs root and unshare -n") end
      local res, lines, out = through_proxy(irsa_without_endpoint {
        AWS_REGION = "us-west-2", AWS_STS_REGIONAL_ENDPOINTS = "regional" })
      assert_only_connects_to(lines, "sts.us-west-2.amazonaws.com:443", out)
      assert.is_nil(res.token)
      assert.truthy(res.err:find("could not get aws credentials from web_identity", 1, true), res.err)
      assert.truthy(res.err:find("tunnel", 1, true), res.err)
    end)

    it("is regional with AWS_STS_REGIONAL_ENDPOINTS=legacy too (the Rust SDK does not read it)", function()
      if not netns then return pending("needs root and unshare -n") end
      local _, lines, out = through_proxy(irsa_without_endpoint {
        AWS_REGION = "us-west-2", AWS_STS_REGIONAL_ENDPOINTS = "legacy" })
      assert_only_connects_to(lines, "sts.us-west-2.amazonaws.com:443", out)
    end)

    it("keeps the proxy of the environment frozen at load, after it is wiped", function()
      if not netns then return pending("needs root and unshare -n") end
      local res, lines, out = through_proxy(env_with(env_keys(static)),
        { pg_iam_auth_region = "eu-west-3", pg_iam_auth_assume_role_arn = ROLE_ARN },
        [[local ffi = require "ffi"; ffi.cdef "int clearenv(void);"; ffi.C.clearenv()]])
      assert_only_connects_to(lines, "sts.eu-west-3.amazonaws.com:443", out)
      assert.truthy(res.err:find("sts assume role " .. ROLE_ARN, 1, true), res.err)
    end)

    it("for assume role without AWS_REGION is the database's region", function()
      if not netns then return pending("needs root and unshare -n") end
      local res, lines, out = through_proxy(env_with(env_keys(static)),
        { pg_iam_auth_region = "eu-west-3", pg_iam_auth_assume_role_arn = ROLE_ARN })
      assert_only_connects_to(lines, "sts.eu-west-3.amazonaws.com:443", out)
      assert.truthy(res.err:find("sts assume role " .. ROLE_ARN, 1, true), res.err)
    end)
  end)

  describe("the frozen environment", function()
    it("web identity stays the source after AWS_* are changed, removed and cleared (and on refetch)", function()
      assert(f:set_lifetime(MARGIN + 4))
      finally(function() f:set_lifetime(3600) end)
      local env = env_with(f:env("irsa"), { AWS_REGION = "us-east-1", AWS_ROLE_SESSION_NAME = "kong-frozen" })
      local code = ([[
        local cjson = require "cjson"
        local socket = require "socket"
        local ffi = require "ffi"
        ffi.cdef "int setenv(const char*, const char*, int); int unsetenv(const char*); int clearenv(void);"
        local rds = require "kong_rds_iam"
        -- Live changes that would win the chain if the module read them.
        ffi.C.setenv("AWS_ACCESS_KEY_ID", "AKIDDECOYLIVE0000001", 1)
        ffi.C.setenv("AWS_SECRET_ACCESS_KEY", "decoy-secret", 1)
        ffi.C.setenv("AWS_ROLE_SESSION_NAME", "changed-live", 1)
        ffi.C.unsetenv("AWS_WEB_IDENTITY_TOKEN_FILE")
        ffi.C.unsetenv("AWS_ROLE_ARN")
        ffi.C.unsetenv("AWS_ENDPOINT_URL_STS")
        local conf = %s
        local out = {}
        out.source1 = rds.credentials_source()
        local c, err = rds.connect(conf)
        out.err1 = err
        out.user1 = c and c:query("select current_user")[1].current_user
        out.token1 = rds.token(conf)
        if c then c:close() end
        ffi.C.clearenv()
        ffi.C.setenv("AWS_EC2_METADATA_DISABLED", "true", 1)   -- safety net only
        socket.sleep(4.5)   -- the credentials now have < 15 s left: the next use fetches again
        conf.pg_user = "iam_user2"
        c, err = rds.connect(conf)
        out.err2 = err
        out.user2 = c and c:query("select current_user")[1].current_user
        out.token2 = rds.token(conf)
        out.source2 = rds.credentials_source()
        io.write("RESULT ", cjson.encode(out), "\n")
      ]]):format(conf_source())
      local out = lua_process.run(code, env)
      local res = result_of(out)
      assert.is_nil(res.err1, out)
      assert.is_nil(res.err2, out)
      assert.equal("iam_user", res.user1)
      assert.equal("iam_user2", res.user2)
      assert.equal("web_identity", res.source1)
      assert.equal("web_identity", res.source2)
      local a1, a2 = akid_of(res.token1), akid_of(res.token2)
      assert.not_equal(a1, a2)
      assert.is_true(has_line(a1, 'user="iam_user" akid="' .. a1 .. '" ACCEPT'), e:log())
      assert.is_true(has_line(a2, 'user="iam_user2" akid="' .. a2 .. '" ACCEPT'), e:log())
      assert.falsy(out:find("AKIDDECOYLIVE", 1, true))
      local r = sts_requests("AssumeRoleWithWebIdentity")
      assert.equal(2, #r)
      for i, akid in ipairs { a1, a2 } do
        assert.equal("kong-frozen", r[i].role_session_name)
        assert.equal(f.role_arn, r[i].role_arn)
        assert.equal(akid, r[i].issued_akid)
      end
      assert_wrong_secret_rejected(res.token2)
    end)

    it("HOME, AWS_PROFILE and AWS_SHARED_CREDENTIALS_FILE changed after load are ignored", function()
      local home = home_dir("home-frozen", home_key)
      local decoy_home = home_dir("home-decoy", { akid = "AKIDDECOYHOME0000001", secret = "decoy" })
      local decoy_file = write_file(tmp .. "/decoy-credentials",
        "[other]\naws_access_key_id = AKIDDECOYFILE0000001\naws_secret_access_key = decoy\n")
      local code = ([[
        local cjson = require "cjson"
        local ffi = require "ffi"
        ffi.cdef "int setenv(const char*, const char*, int); int clearenv(void);"
        local rds = require "kong_rds_iam"
        ffi.C.setenv("HOME", %q, 1)
        ffi.C.setenv("AWS_PROFILE", "other", 1)
        ffi.C.setenv("AWS_SHARED_CREDENTIALS_FILE", %q, 1)
        local conf = %s
        local out = { source = rds.credentials_source() }
        local c, err = rds.connect(conf)
        out.err = err
        out.user = c and c:query("select current_user")[1].current_user
        out.token = rds.token(conf)
        ffi.C.clearenv()
        out.source_after = rds.credentials_source()
        io.write("RESULT ", cjson.encode(out), "\n")
      ]]):format(decoy_home, decoy_file, conf_source())
      local out = lua_process.run(code, env_with {}, { home = home })
      local res = result_of(out)
      assert.is_nil(res.err, out)
      assert.equal("iam_user", res.user)
      assert.equal("profile", res.source)
      assert.equal("profile", res.source_after)
      assert.equal(home_key.akid, akid_of(res.token))
      assert.is_true(has_line(home_key.akid, "ACCEPT"))
      assert.falsy(e:log():find("AKIDDECOY", 1, true))
    end)
  end)

  describe("refresh near expiry", function()
    it("keeps connecting across expiry, fetching only when less than 15 s are left (imds, ecs, irsa, assume role)", function()
      assert(f:set_lifetime(LIFETIME))
      finally(function() f:set_lifetime(3600) end)
      local log_start = #e:log()
      local code = ([[
        local cjson = require "cjson"
        local socket = require "socket"
        local rds = require "kong_rds_iam"
        local conf = CONF
        -- Asked first: it resolves credentials too, so asked last it could
        -- fetch a set that no token uses and spoil the fetch count.
        io.write("SOURCE ", tostring(rds.credentials_source(conf)), "\n")
        local t0 = socket.gettime()
        while socket.gettime() - t0 < %d do
          local t = socket.gettime()
          local tok, terr, exp = rds.token(conf)
          local c, cerr = rds.connect(conf)
          local user
          if c then
            local rows = c:query("select current_user")
            user = rows and rows[1] and rows[1].current_user
            c:close()
          end
          io.write("ITER ", cjson.encode { t = t, token = tok, exp = exp, err = terr or cerr, user = user }, "\n")
          socket.sleep(1)
        end
      ]]):format(REFRESH_RUN)
      local function code_for(extra)
        return (code:gsub("CONF", function() return conf_source(extra) end))
      end
      local runs = {
        { name = "imds", source = "imds", pipe = spawn(code_for(), merge(f:env("imds"), { AWS_REGION = "us-east-1" })),
          fetched = function() return issued(requests("imds")) end },
        { name = "ecs", source = "ecs", pipe = spawn(code_for(), env_with(f:env("ecs"))),
          fetched = function() return issued(requests("ecs")) end },
        { name = "irsa", source = "web_identity",
          pipe = spawn(code_for(), env_with(f:env("irsa"), { AWS_REGION = "us-east-1" })),
          fetched = function() return issued(sts_requests("AssumeRoleWithWebIdentity")) end },
        { name = "assume role", source = "assume_role(environment)",
          pipe = spawn(code_for { pg_iam_auth_assume_role_arn = ROLE_ARN, pg_iam_auth_sts_endpoint_url = f.sts_url },
            env_with(env_keys(static))),
          fetched = function() return issued(sts_requests("AssumeRole")) end },
      }
      for _, run in ipairs(runs) do run.out = collect(run.pipe) end
      local verifier = e:log():sub(log_start + 1)

      for _, run in ipairs(runs) do
        local out = run.out
        assert.truthy(out:find("SOURCE " .. run.source:gsub("%p", "%%%0") .. "\n"), run.name .. ":\n" .. out)
        local iters = {}
        for json in out:gmatch("ITER ([^\n]*)") do iters[#iters + 1] = assert(cjson.decode(json)) end
        assert.is_true(#iters >= 20, run.name .. ": only " .. #iters .. " iterations\n" .. out)
        local akids, order, first_at = {}, {}, {}
        for i, it in ipairs(iters) do
          assert.is_nil(it.err, run.name .. " iteration " .. i .. ": " .. tostring(it.err))
          assert.equal("iam_user", it.user)
          local akid = akid_of(it.token)
          if not akids[akid] then
            akids[akid] = it.exp
            order[#order + 1] = akid
            first_at[akid] = it.t
          end
          -- Never signed with credentials that had 15 s or less to live.
          assert.is_true(it.exp - it.t > MARGIN - 0.5,
            ("%s iteration %d: credentials with %.1f s left were used"):format(run.name, i, it.exp - it.t))
          assert.is_true(it.exp - it.t <= LIFETIME + 1)
        end
        -- The run outlived the first credentials.
        assert.is_true(iters[#iters].t > akids[order[1]], run.name)
        -- Each refetch happened only once the previous credentials were near expiry.
        for k = 2, #order do
          local prev_exp = akids[order[k - 1]]
          assert.is_true(first_at[order[k]] >= prev_exp - MARGIN - 1.5,
            ("%s: refetched with %.1f s left"):format(run.name, prev_exp - first_at[order[k]]))
        end
        -- The source was asked once per credential: far fewer times than
        -- tokens were made, and every set it gave was used (by a token, or
        -- by the connect() of the last iteration, which can be the one to
        -- find the credentials near expiry).
        local fetched = run.fetched()
        for _, akid in ipairs(fetched) do
          assert.is_true(akids[akid] ~= nil or #log_lines(akid, verifier) > 0,
            ("%s: fetched %s and never used it"):format(run.name, akid))
        end
        assert.is_true(#fetched - #order <= 1, run.name)
        local expected = REFRESH_RUN / (LIFETIME - MARGIN)
        assert.is_true(#fetched >= expected - 2 and #fetched <= expected + 2,
          ("%s: %d fetches over %d s"):format(run.name, #fetched, REFRESH_RUN))
        assert.is_true(#fetched * 3 <= #iters, run.name)
        -- The verifier accepted every login with these credentials.
        for _, akid in ipairs(order) do
          local lines = log_lines(akid, verifier)
          assert.is_true(#lines >= 1, akid)
          for _, line in ipairs(lines) do
            assert.truthy(line:find(" ACCEPT$"), line)
          end
        end
      end
      assert.falsy(verifier:find("expired", 1, true), verifier)
      assert.falsy(verifier:find("REJECT", 1, true), verifier)
    end)
  end)

  describe("faults", function()
    -- Per source: how the case is configured, which service gets the fault,
    -- what the error must name, and the cause each mode must show. When
    -- aws-config's retries outlast pg_timeout the cause is the module's
    -- "timed out after N ms" (still naming the source).
    local TIMED_OUT = "timed out after %d+ ms getting aws credentials from "
    local sources = {
      { name = "imds", service = "imds", env = function() return merge(f:env("imds"), { AWS_REGION = "us-east-1" }) end,
        names = "aws credentials from imds",
        -- 500 on the token PUT: once aws-config's retries are used up it reads
        -- the last 500 as a token without TTL header.
        causes = { refuse = { "Connection reset by peer", TIMED_OUT },
          ["500"] = { "500", "failed to load IMDS session token", TIMED_OUT },
          garbage = { "invalid JSON", TIMED_OUT } } },
      { name = "ecs", service = "ecs", env = function() return env_with(f:env("ecs")) end,
        names = "aws credentials from ecs",
        causes = { refuse = { "Connection reset by peer", TIMED_OUT }, ["500"] = { "http status 500", TIMED_OUT },
          garbage = { "invalid JSON", TIMED_OUT } } },
      { name = "irsa", service = "sts", env = function() return env_with(f:env("irsa"), { AWS_REGION = "us-east-1" }) end,
        names = "aws credentials from web_identity",
        causes = { refuse = { "Connection reset by peer", TIMED_OUT }, ["500"] = { "InternalFailure", TIMED_OUT },
          garbage = { "error parsing XML", TIMED_OUT } } },
      { name = "assume role", service = "sts", env = function() return env_with(env_keys(static)) end,
        conf = function() return { pg_iam_auth_assume_role_arn = ROLE_ARN, pg_iam_auth_sts_endpoint_url = f.sts_url } end,
        names = "aws credentials from sts assume role " .. ROLE_ARN,
        -- A truncated AssumeRole answer parses (aws-sdk-sts fills missing
        -- required members with defaults: an empty key, expiry 1970): that is
        -- reported as an answer without usable credentials, not as expired.
        causes = { refuse = { "Connection reset by peer", TIMED_OUT }, ["500"] = { "InternalFailure", TIMED_OUT },
          garbage = { "error parsing XML", "its answer held no usable credentials %(incomplete or not understood%)", TIMED_OUT } } },
    }
    local modes = {
      { mode = "refuse", timeout = 3000 },
      { mode = "500", timeout = 3000 },
      { mode = "timeout", timeout = 1500, opts = { seconds = 5 } },
      { mode = "garbage", timeout = 3000,
        imds_opts = function() return { path = "/latest/meta-data/iam/security-credentials/" .. f.role_name } end },
    }
    local function secrets()
      local list = { static.secret, f.container_token, f.container_file_token, f.web_identity_token }
      for _, c in ipairs(assert(f:credentials())) do
        list[#list + 1] = c.secret_access_key
        list[#list + 1] = c.session_token
      end
      return list
    end

    local code = [[
      local cjson = require "cjson"
      local socket = require "socket"
      local rds = require "kong_rds_iam"
      local conf = @CONF@
      local out = {}
      local t0 = socket.gettime()
      local c, err = rds.connect(conf)
      out.elapsed, out.failed, out.err = socket.gettime() - t0, c == nil, err
      local fh = io.open(@PHASE@ .. ".tmp", "w"); fh:write("done"); fh:close()
      os.rename(@PHASE@ .. ".tmp", @PHASE@)
      local deadline = socket.gettime() + 30
      while socket.gettime() < deadline do
        local go = io.open(@GO@)
        if go then go:close() break end
        socket.sleep(0.05)
      end
      c, err = rds.connect(conf)
      out.recovered_err = err
      if c then out.user = c:query("select current_user")[1].current_user; c:close() end
      out.token = rds.token(conf)
      out.source = rds.credentials_source(conf)
      io.write("RESULT ", cjson.encode(out), "\n")
    ]]

    for _, m in ipairs(modes) do
      it(("%s: nil, err within pg_timeout naming the source and cause, no secret; the next call after recovery works"):format(m.mode), function()
        finally(function() f:set_mode("all", "ok") end)
        local go = os.tmpname()
        os.remove(go)
        for _, svc in ipairs { "imds", "ecs", "sts" } do
          local opts = (svc == "imds" and m.imds_opts) and m.imds_opts() or m.opts
          assert(f:set_mode(svc, m.mode, opts))
        end
        local runs = {}
        for i, s in ipairs(sources) do
          local phase = ("%s.%d"):format(go, i)
          local src = code:gsub("@CONF@", function() return conf_source(merge(s.conf and s.conf(), { pg_timeout = m.timeout })) end)
            :gsub("@PHASE@", function() return ("%q"):format(phase) end)
            :gsub("@GO@", function() return ("%q"):format(go) end)
          runs[i] = { source = s, phase = phase, pipe = spawn(src, s.env()) }
        end
        -- Recover once every process has failed (or after a deadline).
        local deadline = socket.gettime() + 20
        local function all_failed()
          for _, run in ipairs(runs) do
            if not exists(run.phase) then return false end
          end
          return true
        end
        while not all_failed() and socket.gettime() < deadline do socket.sleep(0.05) end
        assert(f:set_mode("all", "ok"))
        write_file(go, "go")
        for _, run in ipairs(runs) do
          run.out = collect(run.pipe)
          os.remove(run.phase)
        end
        os.remove(go)

        for _, run in ipairs(runs) do
          local s, out = run.source, run.out
          local res = result_of(out)
          local label = s.name .. " " .. m.mode
          if os.getenv("CREDENTIALS_SPEC_VERBOSE") then
            io.stderr:write(("\n%s: %.2f s: %s\n"):format(label, res.elapsed or -1, tostring(res.err)))
          end
          assert.is_true(res.failed, label .. " did not fail:\n" .. out)
          assert.is_string(res.err, label)
          for _, secret in ipairs(secrets()) do
            assert.falsy(res.err:find(secret, 1, true), label .. ": a secret in the error: " .. res.err)
          end
          assert.is_true(res.elapsed <= m.timeout / 1000 + 0.5,
            ("%s took %.2f s (pg_timeout %d ms)"):format(label, res.elapsed, m.timeout))
          assert.truthy(res.err:find(s.names, 1, true), label .. ": " .. res.err)
          -- timeout: the module's own bound, or the source client's (IMDS: 1 s per attempt).
          local causes = s.causes[m.mode] or { "timed out", "timeout" }
          local named = false
          for _, pattern in ipairs(causes) do
            named = named or res.err:find(pattern) ~= nil
          end
          assert.is_true(named, label .. ": cause not named: " .. res.err)
          -- Recovery in the same process: credentials fetched again, connected, accepted.
          assert.is_nil(res.recovered_err, label .. ":\n" .. out)
          assert.equal("iam_user", res.user, label)
          local akid = akid_of(res.token)
          assert.is_true(has_line(akid, 'akid="' .. akid .. '" ACCEPT'), label .. ":\n" .. e:log())
        end
      end)
    end
  end)

  describe("regressions", function()
    -- aws-config's default credentials chain looks up a region itself when
    -- it is given none, through IMDS (twice: the credentials and the SSO token
    -- chains), before any source is tried. Without AWS_REGION and with IMDS
    -- not disabled but not answering (not on EC2, or a container with an IMDS
    -- hop limit of 1), the first credentials of each process wait ~2 s, past
    -- a short pg_timeout, although the conf names the region.
    it("does not ask IMDS for a region when the conf gives one (env keys, no AWS_REGION)", function()
      assert(f:set_mode("imds", "timeout", { seconds = 10 }))
      finally(function() f:set_mode("imds", "ok") end)
      local code = ([[
        local cjson = require "cjson"
        local socket = require "socket"
        local rds = require "kong_rds_iam"
        local conf = %s
        local t0 = socket.gettime()
        local c, err = rds.connect(conf)
        local out = { elapsed = socket.gettime() - t0, err = err, token = rds.token(conf) }
        out.user = c and c:query("select current_user")[1].current_user
        io.write("RESULT ", cjson.encode(out), "\n")
      ]]):format(conf_source { pg_timeout = 1500 })
      local out = lua_process.run(code, merge(env_keys(static), { AWS_EC2_METADATA_SERVICE_ENDPOINT = f.imds_url }))
      local res = result_of(out)
      assert.equal(0, #requests("imds"), "IMDS was asked:\n" .. out)
      assert.is_nil(res.err, out)
      assert.equal("iam_user", res.user)
      assert.is_true(res.elapsed < 1, out)
    end)

    -- aws-sdk-sts takes a service-specific endpoint from the environment
    -- (AWS_ENDPOINT_URL_STS) over the SdkConfig endpoint the module sets from
    -- pg_iam_auth_sts_endpoint_url, so the conf key is silently ignored when
    -- the variable is set (e.g. by an IRSA setup pointing at another endpoint).
    it("pg_iam_auth_sts_endpoint_url wins over AWS_ENDPOINT_URL_STS for assume role", function()
      local res, out = probe(env_with(env_keys(static), { AWS_ENDPOINT_URL_STS = "http://127.0.0.1:9/",
        AWS_REGION = "us-west-2", AWS_STS_REGIONAL_ENDPOINTS = "regional" }),
        { pg_iam_auth_assume_role_arn = ROLE_ARN, pg_iam_auth_sts_endpoint_url = f.sts_url })
      assert_end_to_end(res, out, "assume_role(environment)")
      local r = sts_requests("AssumeRole")
      assert.equal(1, #r)
      assert.equal("us-west-2", r[1].signing_region)
    end)
  end)
end)
