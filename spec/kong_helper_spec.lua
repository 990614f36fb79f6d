-- kong_rds_iam.kong.pgmoon_options: pgmoon options for Kong's Postgres
-- strategy, from Kong-shaped configuration tables.
local kong_iam = require "kong_rds_iam.kong"
local rds = require "kong_rds_iam"
local socket = require "socket"
local test_env = require "spec.support.test_env"

local RDS_HOST = "kong-db.abcdefghijkl.us-east-1.rds.amazonaws.com"
local RO_HOST = "kong-db-ro.abcdefghijkl.us-east-1.rds.amazonaws.com"
local VERIFIER = "tools/rds-emulator/verifier.py"

local MTLS_RW = "mTLS connection to postgres cannot be used when pg_iam_auth is enabled, "
  .. "so pg_ssl_cert and pg_ssl_cert_key must not be specified"
local MTLS_RO = "mTLS connection to postgres cannot be used when pg_ro_iam_auth is enabled, "
  .. "so pg_ro_ssl_cert and pg_ro_ssl_cert_key must not be specified"

-- A subset of kong.configuration as Kong hands it over: defaults applied,
-- booleans parsed, numbers as numbers, lua_ssl_trusted_certificate an array,
-- pg_ro_iam_auth turned into false when unset, plenty of unrelated keys.
local function kong_conf(overrides)
  local c = {
    prefix = "/usr/local/kong",
    proxy_listen = { "0.0.0.0:8000", "0.0.0.0:8443 ssl" },
    database = "postgres",
    pg_host = "127.0.0.1",
    pg_port = 5432,
    pg_timeout = 5000,
    pg_user = "kong",
    pg_database = "kong",
    pg_ssl = false,
    pg_ssl_required = false,
    pg_ssl_verify = false,
    pg_ssl_version = "tlsv1_2",
    pg_iam_auth = false,
    pg_ro_iam_auth = false,
    pg_iam_auth_role_session_name = "KongPostgres",
    pg_max_concurrent_queries = 0,
    pg_semaphore_timeout = 60000,
    lua_ssl_trusted_certificate = { "/etc/ssl/certs/ca-certificates.crt" },
    lua_ssl_verify_depth = 1,
  }
  for k, v in pairs(overrides or {}) do
    if v == "<nil>" then
      c[k] = nil
    else
      c[k] = v
    end
  end
  return c
end

-- Like kong.configuration: an empty table whose __index reads the real one,
-- and which refuses writes.
local function proxy(t)
  return setmetatable({}, {
    __index = t,
    __newindex = function() error("cannot write to the configuration", 2) end,
  })
end

local function param(token, name)
  return token:match("[?&]" .. name .. "=([^&]*)")
end

local write_file = require("spec.support.util").write_file

-- Checks a token with the emulator's independent verifier (offline mode):
-- "ACCEPT" or "REJECT: reason".
local keys_file
local function verify(token, user, hosts)
  if not keys_file then
    keys_file = os.tmpname()
    write_file(keys_file, ('{"%s": {"secret": "%s", "session_token": null, "expires": null}}')
      :format(test_env.access_key_id, test_env.secret_access_key))
  end
  local tok = os.tmpname()
  write_file(tok, token)
  local p = assert(io.popen(("/usr/bin/python3 -I -S %s --check --user '%s' --region us-east-1 --keys %s --hosts '%s' < %s 2>&1")
    :format(VERIFIER, user, keys_file, hosts, tok)))
  local out = p:read("*a")
  p:close()
  os.remove(tok)
  return (out:gsub("%s+$", ""))
end

teardown(function()
  if keys_file then os.remove(keys_file) end
end)

local function assert_token(token, host, port, user)
  assert.is_string(token)
  local prefix = ("%s:%d/?Action=connect&DBUser=%s&"):format(host, port, user)
  assert.equal(prefix, token:sub(1, #prefix))
  local scope = param(token, "X%-Amz%-Credential"):gsub("%%2F", "/")
  assert.matches("^" .. test_env.access_key_id .. "/%d%d%d%d%d%d%d%d/us%-east%-1/rds%-db/aws4_request$", scope)
  assert.equal("900", param(token, "X%-Amz%-Expires"))
  assert.equal("host", param(token, "X%-Amz%-SignedHeaders"))
  assert.matches("^%x+$", param(token, "X%-Amz%-Signature"))
  assert.falsy(token:find("://", 1, true))
  assert.equal("ACCEPT", verify(token, user, host .. ":" .. port))
end

describe("pgmoon_options, read-write", function()
  it("gives the defaults and pg_password without IAM", function()
    local opts = assert(kong_iam.pgmoon_options(kong_conf { pg_password = "hunter2" }))
    assert.same({
      host = "127.0.0.1", port = 5432, user = "kong", database = "kong", timeout = 5000,
      password = "hunter2", ssl = false, ssl_required = false, ssl_verify = false,
      ssl_version = "tlsv1_2", cafile = "/etc/ssl/certs/ca-certificates.crt",
      application_name = "kong", iam_auth = false,
    }, opts)
  end)

  it("follows pg_ssl, pg_ssl_required, pg_ssl_verify and the client certificate without IAM", function()
    local opts = assert(kong_iam.pgmoon_options(kong_conf {
      pg_ssl = true, pg_ssl_required = true, pg_ssl_verify = true, pg_ssl_version = "any",
      pg_ssl_cert = "/c.pem", pg_ssl_cert_key = "/k.pem", pg_password = "pw",
    }, "rw"))
    assert.is_true(opts.ssl)
    assert.is_true(opts.ssl_required)
    assert.is_true(opts.ssl_verify)
    assert.equal("any", opts.ssl_version)
    assert.equal("/c.pem", opts.cert)
    assert.equal("/k.pem", opts.key)
    assert.equal("pw", opts.password)
  end)

  it("uses an IAM token as the password, forces TLS on and ignores pg_password", function()
    local before = os.time()
    local opts = assert(kong_iam.pgmoon_options(kong_conf {
      pg_iam_auth = true, pg_host = RDS_HOST, pg_port = 5432, pg_user = "kong_iam",
      pg_password = "must-not-be-used", pg_ssl = false, pg_ssl_required = false, pg_ssl_verify = true,
      lua_ssl_trusted_certificate = { "system", "/etc/rds/global-bundle.pem" },
    }))
    assert.is_true(opts.iam_auth)
    assert.is_true(opts.ssl)
    assert.is_true(opts.ssl_required)
    assert.is_true(opts.ssl_verify)
    assert.equal("/etc/rds/global-bundle.pem", opts.cafile)
    assert.equal(RDS_HOST, opts.host)
    assert.equal("kong_iam", opts.user)
    assert.is_nil(opts.cert)
    assert_token(opts.password, RDS_HOST, 5432, "kong_iam")
    assert.is_true(opts.password_expires_at >= before + 880 and opts.password_expires_at <= os.time() + 900)
  end)

  it("gives the token rds.token gives for the same conf (the module's cache)", function()
    local conf = kong_conf { pg_iam_auth = true, pg_host = RDS_HOST, pg_user = "cached_user" }
    local opts = assert(kong_iam.pgmoon_options(conf))
    -- Past the next whole second an uncached token would carry another X-Amz-Date.
    local now = socket.gettime()
    socket.sleep(math.floor(now) + 1.05 - now)
    assert.equal(assert(rds.token(conf)), opts.password)
  end)

  it("signs for the region in pg_iam_auth_region when the host has none", function()
    local opts = assert(kong_iam.pgmoon_options(kong_conf {
      pg_iam_auth = true, pg_host = "localhost", pg_port = 6543, pg_user = "iam_user",
      pg_iam_auth_region = "us-east-1",
    }))
    assert_token(opts.password, "localhost", 6543, "iam_user")
  end)

  it("returns the module's error when no region can be found", function()
    local opts, err = kong_iam.pgmoon_options(kong_conf { pg_iam_auth = true, pg_host = "db.internal.example" })
    assert.is_nil(opts)
    assert.is_string(err)
    assert.matches("region", err)
  end)

  it("refuses a client certificate under IAM with Kong's message", function()
    local opts, err = kong_iam.pgmoon_options(kong_conf {
      pg_iam_auth = true, pg_host = RDS_HOST, pg_ssl_cert = "/c.pem", pg_ssl_cert_key = "/k.pem",
    })
    assert.is_nil(opts)
    assert.equal(MTLS_RW, err)
    opts, err = kong_iam.pgmoon_options(kong_conf { pg_iam_auth = true, pg_host = RDS_HOST, pg_ssl_cert_key = "/k.pem" })
    assert.is_nil(opts)
    assert.equal(MTLS_RW, err)
  end)
end)

describe("pgmoon_options, read-only", function()
  it("falls back to the pg_* keys when no pg_ro_* key is set", function()
    local conf = kong_conf { pg_host = "rw.example", pg_port = 6000, pg_user = "writer", pg_password = "wpw",
      pg_ssl = true, pg_timeout = 1234 }
    local rw = assert(kong_iam.pgmoon_options(conf, "rw"))
    local ro = assert(kong_iam.pgmoon_options(conf, "ro"))
    assert.same(rw, ro)
    assert.equal("rw.example", ro.host)
    assert.equal(6000, ro.port)
    assert.equal(1234, ro.timeout)
    assert.equal("wpw", ro.password)
  end)

  it("prefers pg_ro_* keys", function()
    local conf = kong_conf { pg_host = "rw.example", pg_user = "writer", pg_password = "wpw",
      pg_ro_host = "ro.example", pg_ro_port = 6001, pg_ro_user = "reader", pg_ro_password = "rpw",
      pg_ro_database = "replica", pg_ro_ssl = true, pg_ro_ssl_verify = true, pg_ro_timeout = 999 }
    local ro = assert(kong_iam.pgmoon_options(conf, "ro"))
    assert.equal("ro.example", ro.host)
    assert.equal(6001, ro.port)
    assert.equal("reader", ro.user)
    assert.equal("rpw", ro.password)
    assert.equal("replica", ro.database)
    assert.equal(999, ro.timeout)
    assert.is_true(ro.ssl)
    assert.is_true(ro.ssl_verify)
    -- Kong's operation name is an alias
    assert.same(ro, assert(kong_iam.pgmoon_options(conf, "read")))
    local rw = assert(kong_iam.pgmoon_options(conf, "write"))
    assert.equal("rw.example", rw.host)
    assert.equal("wpw", rw.password)
  end)

  it("IAM only for read-only: a token for pg_ro_user@pg_ro_host, pg_password for read-write", function()
    local conf = kong_conf { pg_host = "rw.example", pg_user = "writer", pg_password = "wpw",
      pg_ro_iam_auth = true, pg_ro_host = RO_HOST, pg_ro_user = "reader", pg_ro_password = "ignored" }
    local rw = assert(kong_iam.pgmoon_options(conf, "rw"))
    assert.is_false(rw.iam_auth)
    assert.equal("wpw", rw.password)
    assert.is_false(rw.ssl)
    local ro = assert(kong_iam.pgmoon_options(conf, "ro"))
    assert.is_true(ro.iam_auth)
    assert.is_true(ro.ssl)
    assert.is_true(ro.ssl_required)
    assert_token(ro.password, RO_HOST, 5432, "reader")
  end)

  it("pg_iam_auth covers read-only too (as Kong documents it), even with pg_ro_iam_auth = false", function()
    local conf = kong_conf { pg_iam_auth = true, pg_ro_iam_auth = false, pg_host = RDS_HOST, pg_user = "writer",
      pg_ro_host = RO_HOST, pg_ro_user = "reader", pg_ro_port = 5433 }
    local ro = assert(kong_iam.pgmoon_options(conf, "ro"))
    assert.is_true(ro.iam_auth)
    assert_token(ro.password, RO_HOST, 5433, "reader")
    local rw = assert(kong_iam.pgmoon_options(conf, "rw"))
    assert_token(rw.password, RDS_HOST, 5432, "writer")
  end)

  it("refuses a client certificate under read-only IAM with Kong's pg_ro_ message", function()
    local opts, err = kong_iam.pgmoon_options(kong_conf {
      pg_ro_iam_auth = true, pg_ro_host = RO_HOST, pg_ro_ssl_cert = "/c.pem", pg_ro_ssl_cert_key = "/k.pem",
    }, "ro")
    assert.is_nil(opts)
    assert.equal(MTLS_RO, err)
    -- the read-write side without IAM keeps its own certificate
    opts = assert(kong_iam.pgmoon_options(kong_conf {
      pg_ro_iam_auth = true, pg_ro_host = RO_HOST, pg_ssl_cert = "/c.pem", pg_ssl_cert_key = "/k.pem",
    }, "rw"))
    assert.equal("/c.pem", opts.cert)
    -- ... but read-only inherits it, as Kong's connector does, and refuses it
    opts, err = kong_iam.pgmoon_options(kong_conf {
      pg_ro_iam_auth = true, pg_ro_host = RO_HOST, pg_ssl_cert = "/c.pem", pg_ssl_cert_key = "/k.pem",
    }, "ro")
    assert.is_nil(opts)
    assert.equal(MTLS_RO, err)
  end)
end)

describe("pgmoon_options, configuration shapes", function()
  it("reads a read-only proxy table like kong.configuration", function()
    local conf = proxy(kong_conf { pg_iam_auth = true, pg_host = RDS_HOST, pg_user = "proxied",
      pg_ro_host = RO_HOST, pg_ro_user = "proxied_ro", pg_password = "pw" })
    local rw = assert(kong_iam.pgmoon_options(conf))
    assert_token(rw.password, RDS_HOST, 5432, "proxied")
    local ro = assert(kong_iam.pgmoon_options(conf, "ro"))
    assert_token(ro.password, RO_HOST, 5432, "proxied_ro")
    assert.is_nil(rawget(conf, "pg_host"))
  end)

  it("accepts kong.conf strings as well as parsed values", function()
    local parsed = assert(kong_iam.pgmoon_options(kong_conf {
      pg_port = 6432, pg_ssl = true, pg_ssl_required = true, pg_ssl_verify = true, pg_timeout = 250, pg_password = "x",
    }))
    local text = assert(kong_iam.pgmoon_options({
      pg_port = "6432", pg_ssl = "on", pg_ssl_required = "yes", pg_ssl_verify = "true", pg_timeout = "250",
      pg_password = "x", lua_ssl_trusted_certificate = "system, /etc/ssl/certs/ca-certificates.crt",
    }))
    assert.same(parsed, text)
    local iam = assert(kong_iam.pgmoon_options { pg_iam_auth = "on", pg_host = RDS_HOST, pg_ssl = "off" })
    assert.is_true(iam.ssl)
    assert_token(iam.password, RDS_HOST, 5432, "kong")
  end)

  it("treats nil, null and empty strings as unset", function()
    local opts = assert(kong_iam.pgmoon_options(kong_conf {
      pg_password = "", pg_ro_host = rds.null, pg_ro_user = "", pg_ssl_cert = "", pg_iam_auth = rds.null,
    }, "ro"))
    assert.is_nil(opts.password)
    assert.equal("127.0.0.1", opts.host)
    assert.equal("kong", opts.user)
    assert.is_nil(opts.cert)
  end)

  it("takes the CA file from pg_ssl_cafile, else Kong's combined file, else the first non-system entry", function()
    local function cafile(over)
      return assert(kong_iam.pgmoon_options(kong_conf(over))).cafile
    end
    assert.equal("/rds.pem", cafile { pg_ssl_cafile = "/rds.pem", lua_ssl_trusted_certificate_combined = "/comb.pem" })
    assert.equal("/comb.pem", cafile { lua_ssl_trusted_certificate_combined = "/comb.pem" })
    assert.equal("/a.pem", cafile { lua_ssl_trusted_certificate = { "system", "/a.pem", "/b.pem" } })
    assert.equal("/a.pem", cafile { lua_ssl_trusted_certificate = "system,/a.pem" })
    assert.is_nil(cafile { lua_ssl_trusted_certificate = { "system" } })
    assert.is_nil(cafile { lua_ssl_trusted_certificate = "<nil>" })
    assert.equal("/ro.pem", assert(kong_iam.pgmoon_options(kong_conf { pg_ssl_cafile = "/rw.pem",
      pg_ro_ssl_cafile = "/ro.pem" }, "ro")).cafile)
  end)

  it("returns nil, err naming the key for malformed values", function()
    local cases = {
      { { pg_port = "abc" }, "rw", 'pg_port must be an integer 1-65535, got "abc"' },
      { { pg_port = 70000 }, "rw", "pg_port must be an integer 1-65535, got 70000" },
      { { pg_ro_port = 5432.5 }, "ro", "pg_ro_port must be an integer 1-65535, got 5432.5" },
      { { pg_ssl = "maybe" }, "rw", 'pg_ssl must be a boolean (on/off, true/false, yes/no), got "maybe"' },
      { { pg_iam_auth = 1 }, "rw", "pg_iam_auth must be a boolean (on/off, true/false, yes/no), got 1" },
      { { pg_ro_iam_auth = "sure" }, "ro", 'pg_ro_iam_auth must be a boolean (on/off, true/false, yes/no), got "sure"' },
      { { pg_user = 3 }, "rw", "pg_user must be a non-empty string, got 3" },
      { { pg_password = 123456 }, "rw", "pg_password must be a string, got a number" },
    }
    for _, c in ipairs(cases) do
      local opts, err = kong_iam.pgmoon_options(kong_conf(c[1]), c[2])
      assert.is_nil(opts)
      assert.equal(c[3], err)
    end
  end)

  it("raises only for a non-table conf or an unknown mode", function()
    assert.has_error(function() kong_iam.pgmoon_options(nil) end,
      "bad argument #1 to 'pgmoon_options' (table expected, got nil)")
    assert.has_error(function() kong_iam.pgmoon_options({}, "readonly") end,
      "bad argument #2 to 'pgmoon_options' (\"rw\" or \"ro\" expected, got readonly)")
  end)

  it("never puts the secret key in the options", function()
    local opts = assert(kong_iam.pgmoon_options(kong_conf { pg_iam_auth = true, pg_host = RDS_HOST }))
    for _, v in pairs(opts) do
      assert.falsy(tostring(v):find(test_env.secret_access_key, 1, true))
    end
  end)
end)
