-- The `kong-rds-iam` command line (bin/kong-rds-iam) from the build tree:
-- token (accepted by the emulator's independent verifier), check (exit 0 for
-- a working IAM login, 1 with the cause named for a wrong region),
-- elasticache-token --explain (the report, exit 1 without a token), --json,
-- --help, usage errors (exit 2), kong.conf from -c or from KONG_* alone,
-- vault references and bad lines as one-line errors. Each run is a fresh
-- process with exactly the environment given.
local rds = require "kong_rds_iam"
local emu = require "spec.support.emulator"
local test_env = require "spec.support.test_env"
local iam_token = require "spec.support.iam_token"
local iam_proof = require "spec.support.iam_proof"
local util = require "spec.support.util"
local cjson = require "cjson.safe"

local shell_quote = util.shell_quote
local RDS_HOST = "mydb.abcdefghijkl.us-east-1.rds.amazonaws.com"

local function cwd()
  return (util.sh("pwd"):gsub("\n$", ""))
end
local CLI = cwd() .. "/bin/kong-rds-iam"

-- stdout, stderr, exit code of `kong-rds-iam args...` with `env` (plus PATH,
-- HOME and the test AWS credentials unless env.AWS_ACCESS_KEY_ID is false)
local function run(args, env, opts)
  opts = opts or {}
  env = util.merge(test_env.vars, env)
  local parts = { "env", "-i", "PATH=" .. shell_quote(os.getenv("PATH")), "HOME=/nonexistent-home" }
  for k, v in pairs(env) do
    if v ~= false then parts[#parts + 1] = k .. "=" .. shell_quote(v) end
  end
  parts[#parts + 1] = opts.interpreter or ""
  parts[#parts + 1] = shell_quote(opts.cli or CLI)
  for _, a in ipairs(args) do parts[#parts + 1] = shell_quote(a) end
  local out, err = os.tmpname(), os.tmpname()
  local code = util.sh(table.concat(parts, " ") .. " >" .. out .. " 2>" .. err .. "; echo $?")
  local stdout, stderr = util.read_file(out), util.read_file(err)
  os.remove(out)
  os.remove(err)
  return stdout, stderr, tonumber(code)
end

local function one_line(s)
  assert.is_string(s)
  assert.matches("^kong%-rds%-iam: [^\n]+\n$", s)
end

describe("kong-rds-iam", function()
  local e
  local tmp = {}
  local function conf_file(text)
    local path = os.tmpname()
    tmp[#tmp + 1] = path
    return util.write_file(path, text)
  end

  -- a kong.conf for an IAM login as iam_user that works
  local function iam_kong_conf(extra)
    return conf_file(table.concat({
      "# kong.conf for the emulator",
      "pg_host = localhost",
      "pg_port = " .. e.port .. "   # the emulator's port",
      "pg_user = iam_user",
      "pg_database = " .. e.db,
      "pg_iam_auth = on",
      "pg_iam_auth_region = us-east-1",
      "pg_ssl_cafile = " .. e.ca,
      extra or "",
    }, "\n") .. "\n")
  end

  lazy_setup(function()
    e = assert(emu.start { region = "us-east-1" })
    assert(e:add_key(test_env.access_key_id, test_env.secret_access_key))
    assert(e:allow_host(RDS_HOST))
  end)

  lazy_teardown(function()
    for _, p in ipairs(tmp) do os.remove(p) end
    if e then e:stop() end
  end)

  describe("usage", function()
    it("--help prints the usage and exits 0", function()
      local out, err, code = run { "--help" }
      assert.equal(0, code)
      assert.matches("usage: kong-rds-iam <command>", out, 1, true)
      for _, c in ipairs { "token", "check", "elasticache-token", "dsql-token", "--json", "--ro", "-c, --conf", "--explain" } do
        assert.matches(c, out, 1, true)
      end
      assert.equal("", err)
      assert.equal(0, select(3, run { "check", "-h" }))
    end)

    it("exits 2 with one line on stderr for usage errors", function()
      for _, args in ipairs {
        {}, { "frobnicate" }, { "token", "--bogus" }, { "token", "-c" }, { "check", "--cache-name", "x" },
        { "token", "--json=yes" }, { "elasticache-token", "--user", "u" }, { "elasticache-token", "--cache-name", "c" },
        { "dsql-token" }, { "dsql-token", "--host", "h", "--expires-in", "soon" },
        { "check", "--explain" }, { "dsql-token", "--host", "h", "--explain" },
        { "elasticache-token", "--cache-name", "c", "--user", "u", "--explain=yes" },
        { "elasticache-token", "--explain", "--user", "u" },
      } do
        local out, err, code = run(args)
        assert.equal(2, code, table.concat(args, " ") .. ": " .. err)
        assert.equal("", out)
        one_line(err)
      end
    end)
  end)

  describe("token", function()
    it("prints a token from kong.conf that the emulator's verifier accepts", function()
      local out, err, code = run { "token", "-c", iam_kong_conf() }
      assert.equal(0, code, err)
      local token = out:match("^([^\n]+)\n$")
      assert.truthy(token, out)
      assert.matches("^localhost:" .. e.port .. "/%?Action=connect&DBUser=iam_user&", token)
      assert.equal(test_env.access_key_id, iam_token.akid(token))
      e:clear_log()
      local conn, cerr = rds.connect { pg_host = "localhost", pg_port = e.port, pg_user = "iam_user",
        pg_password = token, pg_ssl = true, pg_ssl_required = true, pg_timeout = 10000 }
      assert.truthy(conn, cerr)
      assert.equal("iam_user", conn:query("select current_user as u")[1].u)
      conn:close()
      assert.is_true(iam_proof.has_line(e, test_env.access_key_id,
        ('user="iam_user" akid="%s" ACCEPT'):format(test_env.access_key_id)), e:log())
    end)

    it("--ro signs for the read-only side, --json gives the token and its expiry", function()
      local out, err, code = run { "token", "--ro", "--json", "-c", iam_kong_conf("pg_ro_host = localhost\npg_ro_user = iam_user2") }
      assert.equal(0, code, err)
      local res = assert(cjson.decode(out), out)
      assert.equal("iam_user2", iam_token.param(res.token, "DBUser"))
      assert.is_near(os.time() + 900, res.expires_at, 5)
      assert.is_near(900, res.expires_in, 5)
    end)

    it("reads Kong's default paths and KONG_* variables without -c", function()
      if util.exists("/etc/kong/kong.conf") or util.exists("/etc/kong.conf") then
        pending("this machine has a kong.conf in Kong's default paths")
        return
      end
      local out, err, code = run({ "token" }, {
        KONG_PG_HOST = RDS_HOST, KONG_PG_PORT = "6432", KONG_PG_USER = "env_user", KONG_PG_IAM_AUTH = "on",
      })
      assert.equal(0, code, err)
      assert.matches("^" .. RDS_HOST:gsub("%p", "%%%0") .. ":6432/%?Action=connect&DBUser=env_user&", out)
      assert.matches("%%2Fus%-east%-1%%2Frds%-db%%2F", out) -- the host's region
    end)

    it("KONG_* variables override -c's file", function()
      local out, err, code = run({ "token", "-c", iam_kong_conf() }, { KONG_PG_USER = "iam_user2" })
      assert.equal(0, code, err)
      assert.equal("iam_user2", iam_token.param(out, "DBUser"))
    end)

    it("refuses a vault reference in a key the token is made from, in one line", function()
      local out, err, code = run { "token", "-c", iam_kong_conf("pg_user = {vault://env/kong-pg-user}") }
      assert.equal(1, code)
      assert.equal("", out)
      assert.equal("kong-rds-iam: pg_user holds a vault reference ({vault://...}), which only Kong can resolve\n", err)
      -- in pg_password (not part of a token) it does not matter
      local _, err2, code2 = run { "token", "-c", iam_kong_conf("pg_password = {vault://env/pw}") }
      assert.equal(0, code2, err2)
    end)

    it("fails in one line naming the file and line of a bad kong.conf line, or a missing file", function()
      local path = conf_file("pg_host = x\nthis is not kong.conf\n")
      local out, err, code = run { "token", "-c", path }
      assert.equal(1, code)
      assert.equal("", out)
      assert.equal("kong-rds-iam: cannot read kong.conf: " .. path .. ":2: expected `key = value`\n", err)
      local _, err2, code2 = run { "token", "-c", "/nonexistent/kong.conf" }
      assert.equal(1, code2)
      assert.equal("kong-rds-iam: cannot read kong.conf: no file at: /nonexistent/kong.conf\n", err2)
    end)

    it("fails in one line when no credentials can be found", function()
      local out, err, code = run({ "token", "-c", iam_kong_conf() },
        { AWS_ACCESS_KEY_ID = false, AWS_SECRET_ACCESS_KEY = false })
      assert.equal(1, code)
      assert.equal("", out)
      one_line(err)
      assert.matches("credentials", err, 1, true)
    end)
  end)

  describe("check", function()
    it("exits 0 for a working IAM login and says so, one fact a line", function()
      local out, err, code = run { "check", "-c", iam_kong_conf() }
      assert.equal(0, code, out .. err)
      for _, l in ipairs {
        "\ncredentials: environment, access key " .. ("*"):rep(16) .. test_env.access_key_id:sub(-4),
        "\nregion: us-east-1 (from pg_iam_auth_region)",
        "\nsigned for: localhost:" .. e.port .. " (host from pg_host)",
        "\ntoken: user iam_user, X-Amz-Date ",
        "\nlogin: ok as iam_user, a member of rds_iam\n",
        "\nclock offset: unknown: static keys",
      } do
        assert.matches(l, out, 1, true)
      end
      assert.is_nil(out:find(test_env.secret_access_key, 1, true))
      assert.is_nil(out:find("X-Amz-Signature", 1, true))
    end)

    it("exits 1 for a wrong region and names it among the causes", function()
      local path = iam_kong_conf("pg_iam_auth_host = " .. RDS_HOST .. "\npg_iam_auth_region = eu-west-1\npg_iam_auth_ssl_verify = off")
      local out, err, code = run { "check", "-c", path }
      assert.equal(1, code, out .. err)
      assert.matches("\nlogin: failed: PAM authentication failed", out, 1, true)
      assert.matches("[SQLSTATE 28000]", out, 1, true)
      assert.matches("\npossible causes:\n", out, 1, true)
      assert.matches("\n  - The token is signed for eu-west-1 (pg_iam_auth_region) but the host name is in us-east-1.\n",
        out, 1, true)
    end)

    it("--json is explain's table with the login, and the exit code follows the login", function()
      local out, err, code = run { "check", "--json", "-c", iam_kong_conf() }
      assert.equal(0, code, err)
      local r = assert(cjson.decode(out), out)
      assert.is_true(r.connect.ok)
      assert.is_true(r.connect.rds_iam)
      assert.equal("iam_user", r.token.user)
      assert.same({ "signing_host" }, r.cause_ids)
      assert.equal(r.conf.path:match("[^/]+$"), tmp[#tmp]:match("[^/]+$"))

      local out2, _, code2 = run { "check", "--json", "--ro", "-c", iam_kong_conf("pg_ro_host = localhost\npg_ro_port = 1") }
      assert.equal(1, code2)
      local r2 = assert(cjson.decode(out2), out2)
      assert.equal("ro", r2.mode)
      assert.is_false(r2.connect.ok)
      assert.is_string(r2.connect.error)
    end)

    it("says which key holds a vault reference", function()
      local out, _, code = run { "check", "-c", iam_kong_conf("pg_password = {vault://env/kong-pg-password}") }
      assert.equal(0, code) -- IAM ignores pg_password; the reference is still named
      assert.matches("\n  - pg_password holds a vault reference ({vault://...}), which only Kong can resolve\n", out, 1, true)
    end)
  end)

  describe("other services' tokens", function()
    it("elasticache-token prints a token from rds.elasticache_token", function()
      if not rds.elasticache_token then
        local _, err, code = run { "elasticache-token", "--cache-name", "c", "--user", "u" }
        assert.equal(1, code)
        assert.equal("kong-rds-iam: this kong_rds_iam build has no elasticache_token\n", err)
        pending("rds.elasticache_token is not in this build")
        return
      end
      local out, err, code = run { "elasticache-token", "--cache-name", "my-cache", "--user", "app", "--region", "us-east-1" }
      assert.equal(0, code, err)
      assert.matches("^my%-cache/%?Action=connect&", out)
      assert.matches("[?&]User=app&", out)
      assert.matches("X-Amz-Expires=900", out, 1, true)
      local out2, err2, code2 = run { "elasticache-token", "--cache-name", "my-cache", "--user", "app",
        "--region", "us-east-1", "--serverless", "--json" }
      assert.equal(0, code2, err2)
      local res = assert(cjson.decode(out2), out2)
      assert.matches("ResourceType=ServerlessCache", res.token, 1, true)
      assert.is_number(res.expires_at)
    end)

    it("elasticache-token --explain prints rds.explain's report one fact a line, never the token", function()
      if not rds.elasticache_token then
        pending("rds.elasticache_token is not in this build")
        return
      end
      local ep = "my-cache-x7ab2c.serverless.use1.cache.amazonaws.com"
      local out, err, code = run { "elasticache-token", "--cache-name", "My-Cache", "--user", "App", "--endpoint", ep,
        "--explain" }
      assert.equal(0, code, out .. err)
      assert.equal("", err)
      for _, l in ipairs {
        "service: elasticache\n",
        "\ncache: my-cache, serverless (from the endpoint's .serverless. label)\n",
        "\nuser: App\n",
        "\nendpoint: " .. ep .. ", region us-east-1\n",
        "\ncredentials: environment, access key " .. ("*"):rep(16) .. test_env.access_key_id:sub(-4) .. ", no expiry known\n",
        "\nregion: us-east-1 (from the endpoint's region code)\n",
        "\ntoken: user App, action connect, ResourceType ServerlessCache, service elasticache, X-Amz-Date ",
        "\nclock offset: unknown: static keys",
        "\npossible causes of a refused AUTH:\n  - user App is not a user id as ElastiCache stores it: ",
      } do
        assert.matches(l, out, 1, true)
      end
      for _, secret in ipairs { test_env.secret_access_key, test_env.access_key_id, "X-Amz-Signature", "my-cache/?" } do
        assert.is_nil(out:find(secret, 1, true), secret)
      end
      -- nothing to point at
      local clean = run { "elasticache-token", "--cache-name", "c", "--user", "app", "--region", "eu-west-1", "--explain" }
      assert.matches("\nregion: eu-west-1 (from --region)\n", clean, 1, true)
      assert.matches("\ncache: c, node-based (the default)\n", clean, 1, true)
      assert.matches("\npossible causes of a refused AUTH: none of the checked ones holds\n$", clean)
    end)

    it("elasticache-token --explain --json is the report; exit 1 when no token can be signed", function()
      if not rds.elasticache_token then
        pending("rds.elasticache_token is not in this build")
        return
      end
      local out, err, code = run { "elasticache-token", "--cache-name", "c", "--user", "app", "--region", "eu-west-1",
        "--endpoint", "master.g.x7ab2c.use1.cache.amazonaws.com", "--service", "memorydb", "--explain", "--json" }
      assert.equal(0, code, err)
      local r = assert(cjson.decode(out), out)
      assert.same({ "memorydb", "eu-west-1", "region", "us-east-1" }, { r.service, r.region, r.region_from, r.endpoint_region })
      assert.same({ "region_mismatch", "service_mismatch" }, r.cause_ids)
      assert.equal("memorydb", r.token.service)
      assert.is_nil(out:find(test_env.secret_access_key, 1, true))
      assert.is_nil(out:find("X-Amz-Signature", 1, true))
      -- no region anywhere: exit 1, the cause named
      local out2, err2, code2 = run { "elasticache-token", "--cache-name", "c", "--user", "app", "--explain" }
      assert.equal(1, code2, err2)
      assert.matches("\ntoken: none: cannot tell the aws region", out2, 1, true)
      assert.matches("\n  - No region for the token: give region or an endpoint host name", out2, 1, true)
      local out3, _, code3 = run { "elasticache-token", "--cache-name", "c", "--user", "app", "--explain", "--json" }
      assert.equal(1, code3)
      assert.same({ "cache_region_unknown" }, assert(cjson.decode(out3), out3).cause_ids)
      -- no credentials: exit 1
      local out4, _, code4 = run({ "elasticache-token", "--cache-name", "c", "--user", "app", "--region", "us-east-1",
        "--explain" }, { AWS_ACCESS_KEY_ID = false, AWS_SECRET_ACCESS_KEY = false })
      assert.equal(1, code4)
      assert.matches("\ncredentials: not available: ", out4, 1, true)
      assert.matches("\n  - AWS credentials could not be fetched", out4, 1, true)
    end)

    it("dsql-token prints a token from rds.dsql_token", function()
      if not rds.dsql_token then
        local _, err, code = run { "dsql-token", "--host", "h.dsql.us-east-1.on.aws" }
        assert.equal(1, code)
        assert.equal("kong-rds-iam: this kong_rds_iam build has no dsql_token\n", err)
        pending("rds.dsql_token is not in this build")
        return
      end
      local host = "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"
      local out, err, code = run { "dsql-token", "--host", host, "--admin", "--expires-in", "600" }
      assert.equal(0, code, err)
      assert.matches("^" .. host:gsub("%p", "%%%0") .. "/%?Action=DbConnectAdmin&", out)
      assert.matches("X-Amz-Expires=600", out, 1, true)
    end)
  end)

  it("runs under PUC Lua 5.1 too", function()
    if not util.succeeds("command -v lua5.1 >/dev/null") then
      pending("no lua5.1")
      return
    end
    local out, err, code = run({ "token", "-c", iam_kong_conf() }, nil, { interpreter = "lua5.1" })
    assert.equal(0, code, err)
    assert.matches("DBUser=iam_user&", out, 1, true)
  end)
end)
