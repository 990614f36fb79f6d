-- The local RDS emulator (tools/rds-emulator) as the specs depend on it:
-- what its start leaves behind must not depend on the caller's umask. Its
-- verifier runs as the postgres user (PAM inside a backend) and reads the
-- files the script wrote as root; one it cannot read used to refuse every
-- IAM login without a line in its log.
local rds = require "kong_rds_iam"
local emu = require "spec.support.emulator"
local test_env = require "spec.support.test_env"
local util = require "spec.support.util"

local function iam_connect(e)
  return rds.connect {
    pg_host = e.host, pg_port = e.port, pg_database = e.db, pg_user = e.iam_users[1],
    pg_iam_auth = true, pg_iam_auth_region = "us-east-1", pg_ssl_cafile = e.ca,
  }
end

describe("the RDS emulator started under umask 077", function()
  local e

  lazy_setup(function()
    e = assert(emu.start { region = "us-east-1", umask = "077" })
    assert(e:add_key(test_env.access_key_id, test_env.secret_access_key))
  end)

  lazy_teardown(function()
    if e then e:stop() end
  end)

  it("verifies IAM logins: an IAM connect succeeds and the verifier logs ACCEPT", function()
    local conn, err = iam_connect(e)
    assert.is_nil(err)
    assert.truthy(conn)
    assert.same({ { one = 1 } }, (conn:query("select 1 as one")))
    conn:close()
    assert.matches("ACCEPT", e:log())
  end)

  it("says in the verifier's log when it cannot read its host list (the login is refused)", function()
    local hosts = e.dir .. "/allowed_hosts"
    assert(util.succeeds("chmod 600 " .. util.shell_quote(hosts)))
    local conn, err = iam_connect(e)
    assert(util.succeeds("chmod 644 " .. util.shell_quote(hosts)))
    assert.is_nil(conn)
    assert.matches("PAM authentication failed", err, 1, true)
    assert.matches("emulator setup: cannot read allowed_hosts (PermissionError)", e:log(), 1, true)
  end)
end)
