-- connect()'s own keys: each bad value is refused before any network traffic,
-- with a message naming the key; IAM's rules are applied.
local rds = require "kong_rds_iam"
local gettime = require("socket").gettime

local function refused(conf, mode)
  local started = gettime()
  local conn, err = rds.connect(conf, mode)
  assert.is_nil(conn)
  assert.is_true(gettime() - started < 0.5)
  return err
end

describe("connect() conf validation", function()
  local bad = {
    { { pg_ssl = "maybe" }, 'pg_ssl must be a boolean (on/off, true/false, yes/no), got "maybe"' },
    { { pg_ssl_required = 2 }, "pg_ssl_required must be a boolean (on/off, true/false, yes/no), got 2" },
    { { pg_ssl_verify = {} }, "pg_ssl_verify must be a boolean (on/off, true/false, yes/no), got a table" },
    { { pg_iam_auth = "enabled" }, 'pg_iam_auth must be a boolean (on/off, true/false, yes/no), got "enabled"' },
    { { pg_ro_iam_auth = 1 }, "pg_ro_iam_auth must be a boolean (on/off, true/false, yes/no), got 1", "ro" },
    { { pg_ssl_version = "tlsv1_1" }, 'pg_ssl_version must be one of tlsv1_2, tlsv1_3, any, got "tlsv1_1"' },
    { { pg_ssl_version = 1.2 }, "pg_ssl_version must be one of tlsv1_2, tlsv1_3, any, got 1.2" },
    { { pg_database = " " }, 'pg_database must be a non-empty string, got " "' },
    { { pg_database = false }, "pg_database must be a non-empty string, got false" },
    { { pg_schema = true }, "pg_schema must be a string, got true" },
    { { pg_password = 1234 }, "pg_password must be a string, got a number" },
    { { pg_password = {} }, "pg_password must be a string, got a table" },
    { { pg_ssl_cert = "/c.pem" }, "pg_ssl_cert and pg_ssl_cert_key must be set together" },
    { { pg_ssl_cert_key = "/k.pem" }, "pg_ssl_cert and pg_ssl_cert_key must be set together" },
    { { pg_ssl_cafile = 5 }, "pg_ssl_cafile must be a string, got 5" },
    { { lua_ssl_trusted_certificate = true }, "lua_ssl_trusted_certificate must be a comma-separated string or an array of paths, got true" },
    { { lua_ssl_trusted_certificate = { "/a.pem", 3 } }, "lua_ssl_trusted_certificate must be a comma-separated string or an array of paths, got a table" },
    { { pg_ro_database = 7 }, "pg_ro_database must be a non-empty string, got 7", "ro" },
    { { pg_ro_ssl_version = "x" }, 'pg_ro_ssl_version must be one of tlsv1_2, tlsv1_3, any, got "x"', "ro" },
    { { pg_timeout = 3600001 }, "pg_timeout must be an integer 1-3600000, got 3600001" },
  }
  for _, case in ipairs(bad) do
    it(case[2], function()
      assert.equal(case[2], refused(case[1], case[3]))
    end)
  end

  it("refuses mTLS with IAM with Kong's message, for each side", function()
    assert.equal("mTLS connection to postgres cannot be used when pg_iam_auth is enabled, so pg_ssl_cert and pg_ssl_cert_key must not be specified",
      refused { pg_iam_auth = true, pg_ssl_cert = "/c.pem", pg_ssl_cert_key = "/k.pem" })
    assert.equal("mTLS connection to postgres cannot be used when pg_ro_iam_auth is enabled, so pg_ro_ssl_cert and pg_ro_ssl_cert_key must not be specified",
      refused({ pg_ro_iam_auth = "on", pg_ro_ssl_cert = "/c.pem", pg_ro_ssl_cert_key = "/k.pem" }, "ro"))
    -- IAM only for read-only leaves read-write mTLS alone: the failure is the missing file, not the rule.
    local err = refused { pg_ro_iam_auth = "on", pg_ssl = true, pg_ssl_cert = "/nonexistent/c.pem",
      pg_ssl_cert_key = "/nonexistent/k.pem", pg_port = 1 }
    assert.falsy(err:find("mTLS", 1, true))
  end)

  it("raises only for wrong argument types", function()
    assert.has_error(function() rds.connect() end, "bad argument #1 to 'connect' (table expected, got nil)")
    assert.has_error(function() rds.connect({}, false) end, "bad argument #2 to 'connect' (string expected, got boolean)")
    local conn, err = rds.connect({}, "write")
    assert.is_nil(conn)
    assert.equal('mode must be "rw" or "ro", got "write"', err)
  end)
end)
