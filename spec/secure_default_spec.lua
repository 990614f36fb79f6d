-- Secure by default (issue #11, High 1): an IAM token is a bearer credential,
-- so it never goes to a server whose certificate was not verified, whatever
-- pg_ssl_verify says (Kong's default, as kong.configuration carries it, is
-- off). A hostile TLS server with a self-signed certificate that asks for a
-- cleartext password stands in for a man in the middle; it records every
-- password it receives.
local test_env = require "spec.support.test_env"
local rds = require "kong_rds_iam"
local util = require "spec.support.util"
local socket = require "socket"

local here = "spec/support"

-- Starts fake_pg_tls.py with a fresh self-signed certificate for 127.0.0.1.
local function hostile_server()
  local dir = util.sh("mktemp -d"):gsub("%s+$", "")
  local cert, key = dir .. "/cert.pem", dir .. "/key.pem"
  assert(util.succeeds(("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost"
    .. " -addext subjectAltName=DNS:localhost,IP:127.0.0.1"
    .. " -addext basicConstraints=critical,CA:FALSE -keyout %s -out %s 2>/dev/null")
    :format(util.shell_quote(key), util.shell_quote(cert))))
  local port_file, record = dir .. "/port", dir .. "/received"
  local proc = assert(io.popen(("exec %s %s/fake_pg_tls.py %s %s %s %s"):format(util.python(), here,
    util.shell_quote(port_file), util.shell_quote(record), util.shell_quote(cert), util.shell_quote(key)), "w"))
  local deadline = socket.gettime() + 10
  local port
  repeat
    local text = util.read_file(port_file)
    port = text and tonumber(text)
    if not port then socket.sleep(0.02) end
  until port or socket.gettime() > deadline
  assert(port, "fake_pg_tls.py did not start")
  return {
    port = port,
    cert = cert,
    received = function() return util.read_file(record) or "" end,
    stop = function() proc:close(); util.sh("rm -rf " .. util.shell_quote(dir)) end,
  }
end

-- The conf as kong.configuration holds it for pg_iam_auth = on: every key
-- present, pg_ssl and pg_ssl_verify off, lua_ssl_trusted_certificate = system.
local function kong_configuration(port, extra)
  return util.merge({
    pg_host = "127.0.0.1", pg_port = port, pg_user = "kong", pg_database = "kong", pg_timeout = 3000,
    pg_password = nil, pg_ssl = false, pg_ssl_required = false, pg_ssl_verify = false, pg_ssl_version = "tlsv1_2",
    pg_iam_auth = true, pg_iam_auth_region = "us-east-1", lua_ssl_trusted_certificate = { "system" },
    pg_ro_ssl = false, pg_ro_ssl_verify = false,
  }, extra)
end

describe("an IAM token never goes to an unverified server", function()
  local fake

  lazy_setup(function() fake = hostile_server() end)
  lazy_teardown(function() if fake then fake.stop() end end)

  for _, mode in ipairs { "rw", "ro" } do
    it("with kong.configuration's defaults (" .. mode .. ")", function()
      local conf = kong_configuration(fake.port)
      local conn, err = rds.connect(conf, mode)
      assert.is_nil(conn)
      -- (rustls ranks a self-signed certificate's failure as a bad signature)
      assert.matches("^tls handshake failed: the server's certificate ", err)
      assert.equal("", fake.received())
    end)
  end

  it("through kong_rds_iam.pgmoon with Kong's options and kong.configuration", function()
    local pgmoon = require "kong_rds_iam.pgmoon"
    _G.kong = { configuration = kong_configuration(fake.port) }
    finally(function() _G.kong = nil end)
    local pg = pgmoon.new { host = "127.0.0.1", port = fake.port, user = "kong", database = "kong",
      ssl = false, ssl_verify = false }
    local ok, err = pg:connect()
    assert.is_nil(ok)
    assert.matches("^tls handshake failed: the server's certificate ", err)
    assert.equal("", fake.received())
  end)

  it("the one opt-out, pg_iam_auth_ssl_verify = off, does send it (the test's negative control)", function()
    local conf = kong_configuration(fake.port, { pg_iam_auth_ssl_verify = "off" })
    local token = assert(rds.token(conf))
    local conn, err = rds.connect(conf)
    assert.is_nil(conn)
    assert.matches("password authentication failed", err)
    -- (twice: a refused login is retried once with fresh credentials)
    assert.equal(token, fake.received():match("^[^\n]+"))
  end)
end)

describe("the RDS CA bundle", function()
  local bundle = util.read_file("data/rds-ca-bundle.pem")

  local function certificates()
    local list = {}
    for pem in bundle:gmatch("%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-.-%-%-%-%-%-END CERTIFICATE%-%-%-%-%-") do
      list[#list + 1] = pem
    end
    return list
  end

  it("holds only CA certificates that OpenSSL parses", function()
    local certs = certificates()
    assert.is_true(#certs >= 50, "only " .. #certs .. " certificates")
    local tmp = os.tmpname()
    finally(function() os.remove(tmp) end)
    for i, pem in ipairs(certs) do
      util.write_file(tmp, pem .. "\n")
      local out = util.sh("openssl x509 -noout -subject -ext basicConstraints -in " .. util.shell_quote(tmp) .. " 2>&1")
      assert.matches("CA:TRUE", out, "certificate " .. i .. ": " .. out)
    end
  end)

  it("names its origin, and README its earliest expiry", function()
    assert.matches("aws%-ssl%-profiles %d+%.%d+%.%d+ %(MIT", bundle)
    local tmp = os.tmpname()
    finally(function() os.remove(tmp) end)
    local earliest
    for _, pem in ipairs(certificates()) do
      util.write_file(tmp, pem .. "\n")
      local date = util.sh("date -u -d \"$(openssl x509 -noout -enddate -in " .. util.shell_quote(tmp)
        .. " | cut -d= -f2)\" +%F"):gsub("%s+$", "")
      if not earliest or date < earliest then earliest = date end
    end
    local readme = util.read_file("README.md")
    assert.truthy(readme:find("earliest expiry among them: " .. earliest, 1, true),
      "README should say: earliest expiry among them: " .. earliest)
  end)

  it("is installed next to the module, as the module embeds it", function()
    local path = assert(rds.rds_ca_bundle())
    assert.matches("/kong_rds_iam/rds%-ca%-bundle%.pem$", path)
    assert.equal(bundle, util.read_file(path))
  end)

  it("is what kong_rds_iam.kong hands pgmoon as its cafile under IAM without one", function()
    local opts = assert(require("kong_rds_iam.kong").pgmoon_options {
      pg_host = "db.abc.us-east-1.rds.amazonaws.com", pg_iam_auth = true, pg_ssl_verify = false })
    assert.is_true(opts.ssl_verify)
    assert.equal(rds.rds_ca_bundle(), opts.cafile)
  end)
end)
