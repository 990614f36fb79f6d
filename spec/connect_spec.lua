-- connect(): IAM and password authentication, TLS versions and verification,
-- servers without TLS, timeouts, the read-only conf, pg_schema, the
-- connection object's lifecycle, and resource use, all against the local RDS
-- emulator (tools/rds-emulator). Query results and types: types_spec.lua.
local rds = require "kong_rds_iam"
local emu = require "spec.support.emulator"
local test_env = require "spec.support.test_env"
local lua_process = require "spec.support.lua_process"
local socket = require "socket"
local lfs = require "lfs"
local util = require "spec.support.util"
local fake_pg = require "spec.support.fake_pg"

local REGION = "us-east-1" -- the emulator's region; the host is an IP, so say it

---------------------------------------------------------------------------
-- helpers
---------------------------------------------------------------------------

local merge = util.merge
local tcp_forward = require "spec.support.tcp_forward"

-- conf for an IAM login as the emulator's first IAM user. IAM connections
-- verify the server's certificate, so the conf trusts the emulator's CA
-- (pg_ssl_cafile = "" below leaves trust to lua_ssl_trusted_certificate).
local function iam_conf(e, extra)
  return merge({
    pg_host = e.host, pg_port = e.port, pg_database = e.db, pg_user = e.iam_users[1],
    pg_iam_auth = true, pg_iam_auth_region = REGION, pg_ssl_cafile = e.ca,
  }, extra)
end

-- conf for a password login (pw_scram, pw_md5 or pw_clear)
local function pw_conf(e, user, extra)
  return merge({
    pg_host = e.host, pg_port = e.port, pg_database = e.db, pg_user = user, pg_password = e.users[user],
  }, extra)
end

-- Text that must never show up in an error or in tostring(conn).
local secrets = { test_env.secret_access_key }

local function assert_no_secrets(text, ...)
  text = tostring(text)
  for _, s in ipairs(secrets) do
    assert.is_nil(text:find(s, 1, true), "secret leaked into: " .. text)
  end
  for i = 1, select("#", ...) do
    local s = select(i, ...)
    if s then assert.is_nil(text:find(s, 1, true), "token leaked into: " .. text) end
  end
  assert.is_nil(text:find("X-Amz-Signature", 1, true), "token leaked into: " .. text)
  assert.is_nil(text:find("X-Amz-Credential", 1, true), "token leaked into: " .. text)
end

local SESSION_SQL = [[
  select current_user as user, public.ssl_is_used() as tls, host(inet_server_addr()) as addr,
         current_schema() as schema,
         (select version from pg_stat_ssl where pid = pg_backend_pid()) as tls_version,
         (select client_dn from pg_stat_ssl where pid = pg_backend_pid()) as client_dn
]]

-- Connects, describes the session, closes. Returns the row and tostring(conn).
local function session(conf, mode)
  local conn, err, sqlstate = rds.connect(conf, mode)
  assert(conn, ("connect failed: %s [%s]"):format(tostring(err), tostring(sqlstate)))
  local rows = assert(conn:query(SESSION_SQL))
  local label = tostring(conn)
  assert.is_true(conn:close())
  return rows[1], label
end

-- A closed connection answers query and close with nil, "closed".
local function assert_closed(conn)
  local res, err = conn:query("select 1")
  assert.is_nil(res)
  assert.equal("closed", err)
  assert.same({ nil, "closed" }, { conn:close() })
  assert.same({ nil, "closed" }, { conn:getreusedtimes() })
  assert.same({ nil, "closed" }, { conn:settimeout(1000) })
  assert.matches("(closed)", tostring(conn), 1, true)
end

-- Connects expecting a failure; returns err, sqlstate, seconds taken.
local function refused(conf, mode)
  local t0 = socket.gettime()
  local conn, err, sqlstate = rds.connect(conf, mode)
  local took = socket.gettime() - t0
  if conn then conn:close() end
  assert.is_nil(conn, "connect unexpectedly succeeded")
  assert.is_string(err)
  assert_no_secrets(err)
  return err, sqlstate, took
end

local function log_lines(e, pattern)
  local out = {}
  for line in e:log():gmatch("[^\n]+") do
    if line:find(pattern) then out[#out + 1] = line end
  end
  return out
end

-- A TCP port on 127.0.0.1 with nothing listening.
local closed_port = util.free_port

local function fd_count()
  local n = 0
  for name in lfs.dir("/proc/self/fd") do
    if name ~= "." and name ~= ".." then n = n + 1 end
  end
  return n
end

-- Lua literal for a flat table of strings, numbers and booleans.
local function literal(t)
  local parts = {}
  for k, v in pairs(t) do
    local value = type(v) == "string" and ("%q"):format(v) or tostring(v)
    parts[#parts + 1] = ("[%q] = %s"):format(k, value)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

-- In a fresh luajit (its own frozen AWS environment `env`): token(conf), then
-- connect(conf) and the session's user and TLS state. Returns a table with
-- token, err, sqlstate, user, tls, label (whatever applies).
local CHILD = [==[
local rds = require "kong_rds_iam"
local conf = CONF
local out = {}
out.token, out.token_err = rds.token(conf)
local conn, err, sqlstate = rds.connect(conf)
out.err, out.sqlstate = err, sqlstate
if conn then
  local rows = assert(conn:query("select current_user as u, ssl_is_used() as tls"))
  out.user, out.tls, out.label = rows[1].u, rows[1].tls, tostring(conn)
  conn:close()
end
local parts = {}
for k, v in pairs(out) do
  parts[#parts + 1] = ("[%q] = %s"):format(k, type(v) == "string" and ("%q"):format(v) or tostring(v))
end
io.write("\n@@RESULT@@{", table.concat(parts, ", "), "}\n")
]==]

local function connect_in_child(conf, env, opts)
  local code = CHILD:gsub("CONF", function() return literal(conf) end)
  local out = lua_process.run(code, merge({ AWS_EC2_METADATA_DISABLED = "true" }, env), opts)
  local body = out:match("@@RESULT@@(.-)\n$")
  assert(body, "child process failed: " .. out)
  return assert(loadstring("return " .. body))()
end

-- A session token like STS hands out (base64 with + / =), `n` characters.
local function session_token(n)
  local chunk = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+kong/rds+iam=="
  return (chunk:rep(math.ceil(n / #chunk))):sub(1, n)
end

---------------------------------------------------------------------------

describe("connect()", function()
  local e

  lazy_setup(function()
    e = assert(emu.start { region = REGION })
    assert(e:add_key(test_env.access_key_id, test_env.secret_access_key))
    for _, password in pairs(e.users) do secrets[#secrets + 1] = password end
  end)

  lazy_teardown(function()
    if e then e:stop() end
  end)

  describe("with IAM auth", function()
    it("logs in as the IAM user over TLS with a token from the environment's credentials", function()
      e:clear_log()
      local s = session(iam_conf(e))
      assert.equal("iam_user", s.user)
      assert.is_true(s.tls)
      local accepted = log_lines(e, 'user="iam_user" akid="' .. test_env.access_key_id .. '" ACCEPT')
      assert.equal(1, #accepted)
    end)

    it("signs for the configured user (second IAM user)", function()
      local s = session(iam_conf(e, { pg_user = e.iam_users[2] }))
      assert.equal("iam_user2", s.user)
    end)

    it("accepts kong.conf strings for the settings", function()
      local s = session(iam_conf(e, { pg_iam_auth = "on", pg_port = tostring(e.port), pg_timeout = "5000" }))
      assert.equal("iam_user", s.user)
    end)

    it("forces TLS on even with pg_ssl = off and pg_ssl_required = off", function()
      local s, label = session(iam_conf(e, { pg_ssl = false, pg_ssl_required = "off" }))
      assert.is_true(s.tls)
      assert.equal("TLSv1.2", s.tls_version)
      assert.matches("(open, tls)", label, 1, true)
    end)

    it("ignores pg_password", function()
      local s = session(iam_conf(e, { pg_password = "not-the-token" }))
      assert.equal("iam_user", s.user)
    end)

    it("is needed: the server refuses the IAM user's non-TLS password login (as RDS does)", function()
      local token = assert(rds.token(iam_conf(e)))
      local err, sqlstate = refused(iam_conf(e, { pg_iam_auth = false, pg_password = token }))
      assert.equal("28000", sqlstate)
      assert.matches("pg_hba.conf rejects connection", err, 1, true)
      assert_no_secrets(err, token)
    end)

    it("refuses a client certificate, with Kong's message", function()
      local err = refused(iam_conf(e, { pg_ssl_cert = e.client_cert, pg_ssl_cert_key = e.client_key }))
      assert.equal("mTLS connection to postgres cannot be used when pg_iam_auth is enabled, "
        .. "so pg_ssl_cert and pg_ssl_cert_key must not be specified", err)
      local ro_err = refused(merge(pw_conf(e, "pw_scram"), {
        pg_ro_host = e.host, pg_ro_user = "iam_user", pg_ro_iam_auth = true, pg_ro_iam_auth_region = REGION,
        pg_ro_ssl_cert = e.client_cert, pg_ro_ssl_cert_key = e.client_key,
      }), "ro")
      assert.equal("mTLS connection to postgres cannot be used when pg_ro_iam_auth is enabled, "
        .. "so pg_ro_ssl_cert and pg_ro_ssl_cert_key must not be specified", ro_err)
    end)

    it("passes a >1 KB token made with a session token whole (subprocess)", function()
      local akid, secret, st = "ASIAKONGRDSIAMSESS01", "session-secret-for-the-spec-0001", session_token(1400)
      assert(e:add_key(akid, secret, st))
      local r = connect_in_child(iam_conf(e), {
        AWS_ACCESS_KEY_ID = akid, AWS_SECRET_ACCESS_KEY = secret, AWS_SESSION_TOKEN = st,
      })
      assert.is_string(r.token, r.token_err)
      assert.is_true(#r.token > 1024, "token is only " .. #r.token .. " bytes")
      assert.truthy(r.token:find("X-Amz-Security-Token=", 1, true))
      assert.is_nil(r.err)
      assert.equal("iam_user", r.user)
      assert.is_true(r.tls)
      assert.equal(1, #log_lines(e, 'akid="' .. akid .. '" ACCEPT'))
    end)

    it("is rejected with the server's auth error when the secret key is wrong (subprocess)", function()
      local akid = "AKIDKONGRDSIAMWRONG1"
      assert(e:add_key(akid, "the-secret-the-server-knows-0001"))
      local wrong = "a-secret-the-server-does-not-know"
      local r = connect_in_child(iam_conf(e), { AWS_ACCESS_KEY_ID = akid, AWS_SECRET_ACCESS_KEY = wrong })
      assert.is_string(r.err)
      assert.matches("^28", r.sqlstate)
      assert.matches('authentication failed for user "iam_user"', r.err, 1, true)
      assert.is_nil(r.err:find(wrong, 1, true))
      assert_no_secrets(r.err, r.token)
      -- the cached token (the child asked token() first), then one retry with a fresh one
      assert.equal(2, #log_lines(e, 'akid="' .. akid .. '" REJECT reason="signature mismatch"'))
    end)

    it("is rejected when the session token is not the one issued with the key (subprocess)", function()
      local akid, secret = "ASIAKONGRDSIAMSESS02", "session-secret-for-the-spec-0002"
      assert(e:add_key(akid, secret, session_token(900)))
      local r = connect_in_child(iam_conf(e), {
        AWS_ACCESS_KEY_ID = akid, AWS_SECRET_ACCESS_KEY = secret, AWS_SESSION_TOKEN = session_token(901),
      })
      assert.matches("^28", r.sqlstate)
      assert_no_secrets(r.err, r.token, session_token(901))
      assert.equal(2, #log_lines(e, 'akid="' .. akid .. '" REJECT reason="wrong X%-Amz%-Security%-Token"'))
    end)

    it("is rejected when the token has expired (subprocess, clock 20 min behind)", function()
      local akid, secret = "AKIDKONGRDSIAMEXPIR1", "expired-secret-for-the-spec-0001"
      assert(e:add_key(akid, secret))
      local r = connect_in_child(iam_conf(e, { pg_ssl_verify = false }),
        { AWS_ACCESS_KEY_ID = akid, AWS_SECRET_ACCESS_KEY = secret },
        { prefix = "faketime -f '-20m'" })
      assert.is_string(r.token, r.token_err)
      assert.is_string(r.err)
      assert.matches("^28", r.sqlstate)
      assert_no_secrets(r.err, r.token)
      assert.equal(2, #log_lines(e, 'akid="' .. akid .. '" REJECT reason="token expired"'))
    end)

    it("never puts the secret key or the token in errors", function()
      local port = closed_port()
      local cases = {
        iam_conf(e, { pg_ssl_verify = true, pg_ssl_cafile = e.other_ca }),
        iam_conf(e, { pg_host = "127.0.0.2", pg_ssl_verify = true, pg_ssl_cafile = e.ca }),
        iam_conf(e, { pg_ssl_version = "tlsv1_3" }),
        iam_conf(e, { pg_port = port }),
        iam_conf(e, { pg_user = "pw_scram" }), -- not an IAM user: the server asks for a scram password
        iam_conf(e, { pg_database = "no_such_db" }),
      }
      for _, conf in ipairs(cases) do
        local token = assert(rds.token(conf))
        local err = refused(conf)
        assert_no_secrets(err, token, token:match("X%-Amz%-Signature=(%x+)"))
      end
    end)
  end)

  describe("with a password user", function()
    for _, user in ipairs { "pw_scram", "pw_md5", "pw_clear" } do
      -- A cleartext password goes over plain TCP only when pg_require_auth names it.
      local plain_ok = user == "pw_clear" and { pg_require_auth = "password" } or {}

      it(user .. " logs in over plain TCP", function()
        local s, label = session(pw_conf(e, user, plain_ok))
        assert.equal(user, s.user)
        assert.is_false(s.tls)
        assert.matches("(open)", label, 1, true)
      end)

      it(user .. " logs in over TLS", function()
        local s, label = session(pw_conf(e, user, { pg_ssl = true, pg_ssl_required = true }))
        assert.equal(user, s.user)
        assert.is_true(s.tls)
        assert.matches("(open, tls)", label, 1, true)
      end)

      it(user .. " with a wrong password is refused with 28P01", function()
        local err, sqlstate = refused(pw_conf(e, user, merge({ pg_password = "wrong-password" }, plain_ok)))
        assert.equal("28P01", sqlstate)
        assert.equal(('password authentication failed for user "%s"'):format(user), err)
      end)
    end

    it("without pg_password says the server asked for one", function()
      local conf = pw_conf(e, "pw_scram")
      conf.pg_password = nil
      local err = refused(conf)
      assert.equal('the server asks for a password for user "pw_scram" but pg_password is not set', err)
    end)

    it("sends a client certificate (mTLS) when pg_ssl_cert and pg_ssl_cert_key are set", function()
      local s = session(pw_conf(e, "pw_scram", { pg_ssl = true, pg_ssl_cert = e.client_cert, pg_ssl_cert_key = e.client_key }))
      assert.is_true(s.tls)
      assert.matches("CN=rds-emulator-client", s.client_dn, 1, true)
    end)

    it("reports the server's error for an unknown database", function()
      local err, sqlstate = refused(pw_conf(e, "pw_scram", { pg_database = "no_such_db" }))
      assert.equal("3D000", sqlstate)
      assert.equal('database "no_such_db" does not exist', err)
    end)
  end)

  describe("pg_require_auth", function()
    local function bound() return rds.stats().scram_channel_bound end

    it("refuses a cleartext password over plain TCP by default, and allows it when the list names password", function()
      local err, sqlstate = refused(pw_conf(e, "pw_clear"))
      assert.equal("the server asked for a cleartext password over a connection without tls, "
        .. "which pg_require_auth does not allow unless it names password", err)
      assert.is_nil(sqlstate)
      assert.equal("pw_clear", session(pw_conf(e, "pw_clear", { pg_require_auth = "password" })).user)
      assert.equal("pw_clear", session(pw_conf(e, "pw_clear", { pg_require_auth = { "scram-sha-256", "password" } })).user)
      -- Over TLS it is answered by default (how an IAM token travels).
      assert.is_true(session(pw_conf(e, "pw_clear", { pg_ssl = true })).tls)
    end)

    it("refuses an md5 request when only scram-sha-256 is allowed", function()
      local err, sqlstate = refused(pw_conf(e, "pw_md5", { pg_require_auth = "scram-sha-256" }))
      assert.equal("the server asked for md5 authentication, which pg_require_auth does not allow", err)
      assert.is_nil(sqlstate)
      assert.equal("pw_md5", session(pw_conf(e, "pw_md5", { pg_require_auth = "md5,scram-sha-256" })).user)
    end)

    it("refuses what a negated list excludes, and a password request when only none is allowed", function()
      local err = refused(pw_conf(e, "pw_clear", { pg_ssl = true, pg_require_auth = "!password" }))
      assert.equal("the server asked for password authentication, which pg_require_auth does not allow", err)
      err = refused(pw_conf(e, "pw_scram", { pg_require_auth = "none" }))
      assert.equal("the server asked for scram-sha-256 authentication, which pg_require_auth does not allow", err)
      err = refused(pw_conf(e, "pw_scram", { pg_ro_require_auth = "md5" }), "ro")
      assert.equal("the server asked for scram-sha-256 authentication, which pg_ro_require_auth does not allow", err)
    end)

    it("is a config error naming the key for an unknown method", function()
      assert.equal('pg_require_auth must list password, md5, scram-sha-256 or none (or !method), got "gss"',
        refused(pw_conf(e, "pw_scram", { pg_require_auth = "scram-sha-256, gss" })))
      assert.equal("pg_iam_auth sends the token as a cleartext password (over tls), so pg_require_auth must allow password",
        refused(iam_conf(e, { pg_require_auth = "scram-sha-256" })))
    end)

    it("leaves IAM (a token as a cleartext password over TLS) working by default", function()
      assert.equal(e.iam_users[1], session(iam_conf(e)).user)
      assert.equal(e.iam_users[1], session(iam_conf(e, { pg_require_auth = "password" })).user)
    end)

    it("binds SCRAM to the server certificate over TLS (SCRAM-SHA-256-PLUS), and not over plain TCP", function()
      -- PostgreSQL accepts a SCRAM-SHA-256-PLUS login only if the binding is
      -- the hash of its own certificate, so a login that counts as bound
      -- shows both the mechanism and the hash.
      local before = bound()
      assert.is_true(session(pw_conf(e, "pw_scram", { pg_ssl = true, pg_require_auth = "scram-sha-256" })).tls)
      assert.equal(before + 1, bound())
      assert.is_false(session(pw_conf(e, "pw_scram")).tls)
      assert.is_true(session(pw_conf(e, "pw_md5", { pg_ssl = true })).tls)
      assert.equal(before + 1, bound())
    end)

    describe("against a fake server", function()
      local function fake(auth)
        local f = assert(fake_pg.start(auth))
        finally(function() f:stop() end)
        return f
      end
      local function conf(f, extra)
        return merge({ pg_host = "127.0.0.1", pg_port = f.port, pg_user = "u", pg_password = "PW-NEVER-SENT-0123",
          pg_timeout = 2000 }, extra)
      end

      it("sends nothing to a server asking for a cleartext password over plain TCP", function()
        local f = fake("cleartext")
        local _, err = rds.connect(conf(f, { pg_ssl = true }))
        assert.matches("cleartext password over a connection without tls", err, 1, true)
        assert.same({ "" }, f:received(1))
        -- Named in the list, the password is sent: the fake does see it.
        rds.connect(conf(f, { pg_require_auth = "password" }))
        local got = f:received(2)[2]
        assert.truthy(got and got:find("PW-NEVER-SENT-0123", 1, true), got)
      end)

      it("sends nothing to a server asking for md5 when only scram-sha-256 is allowed", function()
        local f = fake("md5")
        local _, err = rds.connect(conf(f, { pg_require_auth = "scram-sha-256" }))
        assert.equal("the server asked for md5 authentication, which pg_require_auth does not allow", err)
        assert.same({ "" }, f:received(1))
      end)
    end)
  end)

  describe("TLS version against a TLS-1.2-only server", function()
    it("tlsv1_2 connects with TLS 1.2", function()
      assert.equal("TLSv1.2", session(iam_conf(e, { pg_ssl_version = "tlsv1_2" })).tls_version)
    end)

    it("is tlsv1_2 by default", function()
      assert.equal("TLSv1.2", session(pw_conf(e, "pw_scram", { pg_ssl = true })).tls_version)
    end)

    it("tlsv1_3 fails with a tls error", function()
      local err, sqlstate = refused(iam_conf(e, { pg_ssl_version = "tlsv1_3" }))
      assert.matches("^tls handshake failed: %l", err)
      assert.is_nil(err:find("%u%l+%u")) -- no Rust CamelCase names
      assert.is_nil(sqlstate)
    end)

    it("any connects with TLS 1.2", function()
      assert.equal("TLSv1.2", session(iam_conf(e, { pg_ssl_version = "any" })).tls_version)
    end)
  end)

  describe("TLS version against a TLS 1.3 server", function()
    local e13

    lazy_setup(function()
      e13 = assert(emu.start { region = REGION, tls13 = true })
      assert(e13:add_key(test_env.access_key_id, test_env.secret_access_key))
    end)

    lazy_teardown(function()
      if e13 then e13:stop() end
    end)

    it("tlsv1_3 connects with TLS 1.3 (IAM)", function()
      local s = session(iam_conf(e13, { pg_ssl_version = "tlsv1_3" }))
      assert.equal("iam_user", s.user)
      assert.equal("TLSv1.3", s.tls_version)
    end)

    it("any prefers TLS 1.3", function()
      assert.equal("TLSv1.3", session(iam_conf(e13, { pg_ssl_version = "any" })).tls_version)
    end)

    it("tlsv1_2 stays at TLS 1.2", function()
      assert.equal("TLSv1.2", session(iam_conf(e13, { pg_ssl_version = "tlsv1_2" })).tls_version)
    end)
  end)

  describe("certificate verification", function()
    it("succeeds with pg_ssl_verify on and the server's CA in pg_ssl_cafile", function()
      local s = session(iam_conf(e, { pg_ssl_verify = true, pg_ssl_cafile = e.ca }))
      assert.equal("iam_user", s.user)
    end)

    it("fails with another CA", function()
      local err = refused(iam_conf(e, { pg_ssl_verify = true, pg_ssl_cafile = e.other_ca }))
      -- a short sentence, not rustls's UnknownIssuer
      assert.equal("tls handshake failed: the server's certificate is not signed by a trusted ca", err)
    end)

    it("fails for a host name not in the certificate (127.0.0.2)", function()
      local err = refused(iam_conf(e, { pg_host = "127.0.0.2", pg_ssl_verify = true, pg_ssl_cafile = e.ca }))
      assert.equal("tls handshake failed: the server's certificate is not valid for 127.0.0.2", err)
    end)

    it("fails with only the system store (the CA is not in it)", function()
      local err = refused(iam_conf(e, { pg_ssl_verify = true, pg_ssl_cafile = "", lua_ssl_trusted_certificate = "system" }))
      assert.equal("tls handshake failed: the server's certificate is not signed by a trusted ca", err)
    end)

    it("fails naming a CA file that does not exist", function()
      local err = refused(iam_conf(e, { pg_ssl_verify = true, pg_ssl_cafile = "/nonexistent/ca.pem" }))
      assert.equal("could not read ca file /nonexistent/ca.pem: no such file or directory (os error 2)", err)
    end)

    it("reads lua_ssl_trusted_certificate as a comma list with system", function()
      local s = session(iam_conf(e, { pg_ssl_verify = true, pg_ssl_cafile = "", lua_ssl_trusted_certificate = "system, " .. e.ca }))
      assert.equal("iam_user", s.user)
    end)

    it("reads lua_ssl_trusted_certificate as an array", function()
      local conf = iam_conf(e, { pg_ssl_verify = true, pg_ssl_cafile = "", lua_ssl_trusted_certificate = { e.other_ca, e.ca } })
      assert.equal("iam_user", session(conf).user)
    end)

    it("prefers pg_ssl_cafile over lua_ssl_trusted_certificate", function()
      local conf = iam_conf(e, { pg_ssl_verify = true, pg_ssl_cafile = e.ca, lua_ssl_trusted_certificate = e.other_ca })
      assert.equal("iam_user", session(conf).user)
    end)

    it("accepts a wrong CA and a wrong host name with pg_ssl_verify off, for a password login", function()
      local tls = { pg_ssl = true, pg_ssl_verify = false }
      assert.is_true(session(pw_conf(e, "pw_scram", merge(tls, { pg_ssl_cafile = e.other_ca }))).tls)
      assert.is_true(session(pw_conf(e, "pw_scram", merge(tls, { pg_host = "127.0.0.2", pg_ssl_cafile = e.ca }))).tls)
    end)

    it("verifies an IAM connection whatever pg_ssl_verify says (Kong's default is off)", function()
      local err = refused(iam_conf(e, { pg_ssl_verify = false, pg_ssl_cafile = e.other_ca }))
      assert.equal("tls handshake failed: the server's certificate is not signed by a trusted ca", err)
      err = refused(iam_conf(e, { pg_host = "127.0.0.2", pg_ssl_verify = false }))
      assert.equal("tls handshake failed: the server's certificate is not valid for 127.0.0.2", err)
      -- by default: lua_ssl_trusted_certificate (system) and the RDS CAs, neither of which has the emulator's CA
      err = refused(iam_conf(e, { pg_ssl_cafile = "" }))
      assert.equal("tls handshake failed: the server's certificate is not signed by a trusted ca", err)
    end)

    it("trusts lua_ssl_trusted_certificate for IAM, with the RDS CAs added", function()
      local s = session(iam_conf(e, { pg_ssl_cafile = "", lua_ssl_trusted_certificate = e.ca }))
      assert.equal("iam_user", s.user)
      local settings = assert(rds.settings(iam_conf(e, { pg_ssl_cafile = "", lua_ssl_trusted_certificate = e.ca })))
      assert.same({ e.ca, "rds" }, settings.trusted)
      assert.is_true(settings.ssl_verify)
      assert.equal("lua_ssl_trusted_certificate and the rds ca bundle", settings.ca_source)
      -- pg_ssl_cafile still wins alone (pinning): no RDS CAs next to it
      assert.same({ e.ca }, assert(rds.settings(iam_conf(e))).trusted)
    end)

    it("pg_iam_auth_ssl_verify = off is the one opt-out, with one warning per process", function()
      local conf = iam_conf(e, { pg_iam_auth_ssl_verify = "off", pg_ssl_cafile = e.other_ca })
      local out = lua_process.run(([[
        local rds = require "kong_rds_iam"
        local conf = %s
        for _ = 1, 2 do
          local conn, err = rds.connect(conf)
          io.stdout:write(conn and "connected\n" or ("failed: " .. tostring(err) .. "\n"))
          if conn then conn:close() end
        end
        io.stdout:write("token=", (assert(rds.token(conf))), "\n")
      ]]):format(literal(conf)), {
        AWS_EC2_METADATA_DISABLED = "true",
        AWS_ACCESS_KEY_ID = test_env.access_key_id, AWS_SECRET_ACCESS_KEY = test_env.secret_access_key,
      })
      local _, connected = out:gsub("connected\n", "")
      assert.equal(2, connected, out)
      local warnings = {}
      for line in out:gmatch("[^\n]+") do
        if line:find("pg_iam_auth_ssl_verify is off", 1, true) then warnings[#warnings + 1] = line end
      end
      assert.equal(1, #warnings, out)
      assert.matches("iam tokens %(bearer credentials%) go to 127%.0%.0%.1:%d+ without checking its certificate", warnings[1])
      assert_no_secrets(warnings[1], out:match("token=(%S+)"))
      -- with pg_ssl_verify on as well, it verifies
      local err = refused(iam_conf(e, { pg_iam_auth_ssl_verify = "off", pg_ssl_verify = true, pg_ssl_cafile = e.other_ca }))
      assert.equal("tls handshake failed: the server's certificate is not signed by a trusted ca", err)
    end)
  end)

  describe("a signing host apart from the dialled one (pg_iam_auth_host, pg_iam_auth_port)", function()
    lazy_setup(function() assert(e:allow_host("localhost")) end)

    it("signs for and verifies the certificate against pg_iam_auth_host while dialling pg_host", function()
      -- 127.0.0.2 is not in the certificate (DNS:localhost, IP:127.0.0.1)
      assert.equal("tls handshake failed: the server's certificate is not valid for 127.0.0.2",
        (refused(iam_conf(e, { pg_host = "127.0.0.2" }))))
      local conf = iam_conf(e, { pg_host = "127.0.0.2", pg_iam_auth_host = "LocalHost" })
      local token = assert(rds.token(conf))
      assert.equal("localhost:" .. e.port .. "/?Action=connect", token:match("^[^&]*"))
      local s = session(conf)
      assert.same({ "iam_user", "127.0.0.2", true }, { s.user, s.addr, s.tls })
      local settings = assert(rds.settings(conf))
      assert.same({ "127.0.0.2", e.port, "localhost", e.port },
        { settings.host, settings.port, settings.iam_host, settings.iam_port })
    end)

    it("goes through a tunnel on another port with pg_iam_auth_port", function()
      local fwd = tcp_forward.start("127.0.0.1", e.port)
      finally(function() fwd:stop() end)
      local through = { pg_port = fwd.port, pg_iam_auth_host = "localhost" }
      -- signed for the tunnel's port, the token is refused by the server
      local err, sqlstate = refused(iam_conf(e, through))
      assert.equal("28000", sqlstate, err)
      local s = session(iam_conf(e, merge(through, { pg_iam_auth_port = e.port })))
      assert.same({ "iam_user", true }, { s.user, s.tls })
    end)

    it("reads the region from the signing host", function()
      local conf = { pg_host = "127.0.0.1", pg_user = "u", pg_iam_auth_host = "db.abc123.eu-west-3.rds.amazonaws.com" }
      local token = assert(rds.token(conf))
      assert.matches("^db%.abc123%.eu%-west%-3%.rds%.amazonaws%.com:5432/", token)
      assert.matches("%%2Feu%-west%-3%%2Frds%-db%%2F", token)
    end)

    it("rejects a bad signing host or port, naming the key", function()
      assert.equal('pg_iam_auth_host must be a host name or address, got "a b"',
        select(2, rds.token { pg_iam_auth_host = "a b", pg_iam_auth_region = REGION }))
      assert.equal("pg_ro_iam_auth_port must be an integer 1-65535, got 0",
        select(2, rds.token({ pg_ro_iam_auth_port = 0, pg_iam_auth_region = REGION }, "ro")))
    end)
  end)

  describe("against a server without TLS", function()
    local plain

    lazy_setup(function()
      plain = assert(emu.start { region = REGION, ssl = false })
      assert(plain:add_key(test_env.access_key_id, test_env.secret_access_key))
      for _, password in pairs(plain.users) do secrets[#secrets + 1] = password end
    end)

    lazy_teardown(function()
      if plain then plain:stop() end
    end)

    it("fails when pg_ssl_required is on", function()
      local err, sqlstate = refused(pw_conf(plain, "pw_scram", { pg_ssl = true, pg_ssl_required = true }))
      assert.equal("the server does not support tls, but pg_ssl_required is on", err)
      assert.is_nil(sqlstate)
    end)

    it("falls back to plain TCP when pg_ssl is on but not required", function()
      local s, label = session(pw_conf(plain, "pw_scram", { pg_ssl = true, pg_ssl_required = false }))
      assert.equal("pw_scram", s.user)
      assert.is_false(s.tls)
      assert.matches("(open)", label, 1, true)
    end)

    it("warns once per process on stderr when it falls back to plain text", function()
      local conf = pw_conf(plain, "pw_scram", { pg_ssl = true, pg_ssl_required = false })
      local out = lua_process.run(([[
        local rds = require "kong_rds_iam"
        for _ = 1, 3 do
          local conn, err = rds.connect(%s)
          io.stdout:write(conn and "CONNECTED\n" or ("FAILED " .. tostring(err) .. "\n"))
          io.stdout:flush()
          if conn then conn:close() end
        end
      ]]):format(literal(conf)), {})
      local _, connected = out:gsub("CONNECTED\n", "")
      assert.equal(3, connected, out)
      local warning = ("kong_rds_iam: the server %s:%d does not support tls: the session goes on in plain text "
        .. "(pg_ssl is on, pg_ssl_required is off; warned once per process)"):format(plain.host, plain.port)
      local _, warned = out:gsub(warning:gsub("%p", "%%%0"), "")
      assert.equal(1, warned, out)
      assert_no_secrets(out)
      assert.is_nil(out:find(plain.users.pw_scram, 1, true), out)
    end)

    it("fails with IAM, which requires TLS", function()
      local conf = iam_conf(plain)
      local token = assert(rds.token(conf))
      local err = refused(conf)
      assert.equal("the server does not support tls, which iam authentication requires", err)
      assert_no_secrets(err, token)
    end)
  end)

  describe("timeouts and unreachable servers", function()
    it("fails at once on a closed port", function()
      local port = closed_port()
      local err, _, took = refused(pw_conf(e, "pw_scram", { pg_port = port, pg_timeout = 5000 }))
      assert.matches("could not connect to 127.0.0.1:" .. port, err, 1, true)
      assert.is_true(took < 1, ("took %.2f s"):format(took))
    end)

    it("fails at once on a closed port with IAM", function()
      local port = closed_port()
      local err, _, took = refused(iam_conf(e, { pg_port = port, pg_timeout = 5000 }))
      assert.matches("could not connect to 127.0.0.1:" .. port, err, 1, true)
      assert.is_true(took < 1, ("took %.2f s"):format(took))
    end)

    it("times out within pg_timeout on a server that accepts but never answers", function()
      local server = assert(socket.bind("127.0.0.1", 0))
      local _, port = server:getsockname()
      local err, _, took = refused(iam_conf(e, { pg_port = tonumber(port), pg_timeout = 400 }))
      server:close()
      assert.matches("^timeout", err)
      assert.is_true(took >= 0.38 and took < 1.4, ("took %.2f s"):format(took))
    end)

    it("times out within pg_timeout when the TCP connect itself hangs (full accept queue)", function()
      local server = socket.tcp()
      assert(server:bind("127.0.0.1", 0))
      assert(server:listen(0))
      local _, port = server:getsockname()
      local fillers = {}
      for i = 1, 4 do
        fillers[i] = socket.tcp()
        fillers[i]:settimeout(0)
        fillers[i]:connect("127.0.0.1", port)
      end
      local err, _, took = refused(pw_conf(e, "pw_scram", { pg_port = tonumber(port), pg_timeout = 400 }))
      for _, s in ipairs(fillers) do s:close() end
      server:close()
      assert.matches("^timeout", err)
      assert.is_true(took >= 0.38 and took < 1.4, ("took %.2f s"):format(took))
    end)

    it("times a query out after pg_timeout and closes the connection", function()
      local conn = assert(rds.connect(pw_conf(e, "pw_scram", { pg_timeout = 300 })))
      local t0 = socket.gettime()
      local res, err = conn:query("select pg_sleep(3)")
      local took = socket.gettime() - t0
      assert.is_nil(res)
      assert.matches("^timeout", err)
      assert.is_true(took >= 0.28 and took < 1.3, ("took %.2f s"):format(took))
      assert_closed(conn)
    end)

    it("conn:settimeout(ms) bounds later queries; a timeout leaves the connection closed", function()
      local conn = assert(rds.connect(iam_conf(e)))
      assert(conn:query("select pg_sleep(0.3)")) -- pg_timeout 5000 still applies
      assert.is_true(conn:settimeout(200))
      local t0 = socket.gettime()
      local res, err = conn:query("select pg_sleep(3)")
      local took = socket.gettime() - t0
      assert.is_nil(res)
      assert.matches("^timeout", err)
      assert.is_true(took >= 0.18 and took < 1.2, ("took %.2f s"):format(took))
      assert_closed(conn)
    end)

    it("conn:settimeout rejects nonsense", function()
      local conn = assert(rds.connect(pw_conf(e, "pw_scram")))
      assert.has_error(function() conn:settimeout(0) end)
      assert.has_error(function() conn:settimeout(-5) end)
      assert.is_true(conn:close())
    end)
  end)

  describe("read-only conf", function()
    it("inherits every pg_* key when only pg_ro_host is set", function()
      local conf = pw_conf(e, "pw_scram", { pg_host = "127.0.0.2", pg_ro_host = "127.0.0.1", pg_ssl = true })
      local rw, ro = session(conf, "rw"), session(conf, "ro")
      assert.same({ "pw_scram", "127.0.0.2", true }, { rw.user, rw.addr, rw.tls })
      assert.same({ "pw_scram", "127.0.0.1", true }, { ro.user, ro.addr, ro.tls })
      assert.equal("127.0.0.2", session(conf).addr) -- no mode = rw
    end)

    it("uses the read-only user and password when set", function()
      local conf = pw_conf(e, "pw_scram", {
        pg_ro_host = "127.0.0.2", pg_ro_user = "pw_md5", pg_ro_password = e.users.pw_md5,
      })
      assert.equal("pw_scram", session(conf, "rw").user)
      local ro = session(conf, "ro")
      assert.same({ "pw_md5", "127.0.0.2" }, { ro.user, ro.addr })
    end)

    it("pg_iam_auth covers read-only too", function()
      -- 127.0.0.2 is not in the certificate: sign and verify for 127.0.0.1
      local conf = iam_conf(e, { pg_ro_host = "127.0.0.2", pg_ro_user = e.iam_users[2], pg_ro_iam_auth_host = "127.0.0.1" })
      local ro = session(conf, "ro")
      assert.same({ "iam_user2", "127.0.0.2", true }, { ro.user, ro.addr, ro.tls })
    end)

    it("pg_ro_iam_auth alone makes read-only IAM and leaves read-write on its password", function()
      local conf = pw_conf(e, "pw_scram", {
        pg_ro_host = e.host, pg_ro_user = "iam_user", pg_ro_iam_auth = true, pg_ro_iam_auth_region = REGION,
        pg_ro_ssl_cafile = e.ca,
      })
      local rw, ro = session(conf, "rw"), session(conf, "ro")
      assert.same({ "pw_scram", false }, { rw.user, rw.tls })
      assert.same({ "iam_user", true }, { ro.user, ro.tls })
    end)

    it("rejects a mode other than rw and ro", function()
      assert.equal('mode must be "rw" or "ro", got "rx"', (refused(pw_conf(e, "pw_scram"), "rx")))
      assert.has_error(function() rds.connect(pw_conf(e, "pw_scram"), 1) end)
    end)
  end)

  describe("pg_schema", function()
    lazy_setup(function()
      assert(e:psql([[
        create schema kong_app; create table kong_app.marker (v text); insert into kong_app.marker values ('kong_app');
        create schema "Odd ""Schema"""; create table "Odd ""Schema""".marker (v text);
        insert into "Odd ""Schema""".marker values ('odd');
        grant usage on schema kong_app, "Odd ""Schema""" to public;
        grant select on kong_app.marker, "Odd ""Schema""".marker to public;
      ]]))
    end)

    it("sets the search_path", function()
      local conn = assert(rds.connect(pw_conf(e, "pw_scram", { pg_schema = "kong_app" })))
      assert.equal("kong_app", conn:query("select current_schema() as s")[1].s)
      assert.matches("kong_app", conn:query("show search_path")[1].search_path, 1, true)
      assert.equal("kong_app", conn:query("select v from marker")[1].v)
      conn:close()
    end)

    it("quotes the schema name", function()
      local s = session(iam_conf(e, { pg_schema = 'Odd "Schema"' }))
      assert.equal('Odd "Schema"', s.schema)
    end)

    it("leaves the default search_path when unset", function()
      assert.equal("public", session(pw_conf(e, "pw_scram")).schema)
    end)
  end)

  describe("the connection object", function()
    it("closes once; then close and query say closed", function()
      local conn = assert(rds.connect(pw_conf(e, "pw_scram")))
      assert.is_true(conn:close())
      assert_closed(conn)
    end)

    it("tostring names user@host:port/db and the state, and no token or secret", function()
      local conf = iam_conf(e)
      local token = assert(rds.token(conf))
      local conn = assert(rds.connect(conf))
      local label = tostring(conn)
      assert.equal(("kong_rds_iam connection: iam_user@127.0.0.1:%d/kong (open, tls)"):format(e.port), label)
      assert_no_secrets(label, token)
      conn:close()
      assert.equal(("kong_rds_iam connection: iam_user@127.0.0.1:%d/kong (closed)"):format(e.port), tostring(conn))
    end)

    it("tostring shows no password", function()
      local conn = assert(rds.connect(pw_conf(e, "pw_clear", { pg_require_auth = "password" })))
      local label = tostring(conn)
      assert.equal(("kong_rds_iam connection: pw_clear@127.0.0.1:%d/kong (open)"):format(e.port), label)
      assert_no_secrets(label)
      conn:close()
    end)

    it("really ends the server session on close", function()
      local conn = assert(rds.connect(pw_conf(e, "pw_scram")))
      local pid = conn:query("select pg_backend_pid() as pid")[1].pid
      conn:close()
      local left
      for _ = 1, 40 do
        left = e:psql("select count(*) from pg_stat_activity where pid = " .. pid)
        if left == "0" then break end
        socket.sleep(0.05)
      end
      assert.equal("0", left)
    end)
  end)

  describe("a connection the server ends", function()
    it("reports an error on the next query, then says closed", function()
      local conn = assert(rds.connect(pw_conf(e, "pw_scram")))
      local pid = conn:query("select pg_backend_pid() as pid")[1].pid
      assert.equal("t", e:psql("select pg_terminate_backend(" .. pid .. ")"))
      local res, err = conn:query("select 1")
      assert.is_nil(res)
      assert.is_string(err)
      assert.not_equal("closed", err)
      assert_closed(conn)
    end)
  end)

  describe("resource use", function()
    local function backends()
      return tonumber(e:psql("select count(*) from pg_stat_activity where application_name = 'kong_rds_iam'"))
    end

    local function settle(before)
      local n
      for _ = 1, 60 do
        n = backends()
        if n <= before then break end
        socket.sleep(0.05)
      end
      return n
    end

    it("1,000 password and 50 IAM connect/close cycles leak no file descriptors or sessions", function()
      local server_before = backends()
      local fds_before = fd_count()
      for i = 1, 1000 do
        local conn = assert(rds.connect(pw_conf(e, "pw_md5", { pg_ssl = (i % 2 == 0) })))
        assert.is_true(conn:close())
      end
      for _ = 1, 50 do
        local conn = assert(rds.connect(iam_conf(e)))
        assert.is_true(conn:close())
      end
      local fds_after = fd_count()
      assert.is_true(fds_after <= fds_before + 3, ("fds %d -> %d"):format(fds_before, fds_after))
      assert.is_true(settle(server_before) <= server_before)
    end)

    it("failed connects and timed-out queries leak no file descriptors", function()
      local port = closed_port()
      local fds_before = fd_count()
      for _ = 1, 200 do refused(pw_conf(e, "pw_scram", { pg_password = "wrong" })) end
      for _ = 1, 200 do refused(pw_conf(e, "pw_scram", { pg_port = port })) end
      for _ = 1, 50 do refused(iam_conf(e, { pg_ssl_verify = true, pg_ssl_cafile = e.other_ca })) end
      for _ = 1, 3 do
        local conn = assert(rds.connect(pw_conf(e, "pw_scram", { pg_timeout = 100 })))
        assert.is_nil(conn:query("select pg_sleep(1)"))
      end
      local fds_after = fd_count()
      assert.is_true(fds_after <= fds_before + 3, ("fds %d -> %d"):format(fds_before, fds_after))
    end)

    it("connections dropped without close are released by the garbage collector", function()
      collectgarbage()
      local fds_before = fd_count()
      local conns = {}
      for i = 1, 40 do conns[i] = assert(rds.connect(pw_conf(e, "pw_md5"))) end
      assert.is_true(fd_count() >= fds_before + 40)
      conns = nil -- drop the only references
      collectgarbage()
      collectgarbage()
      local fds_after = fd_count()
      assert.is_true(fds_after <= fds_before + 3, ("fds %d -> %d"):format(fds_before, fds_after))
    end)
  end)
end)

describe("CA, certificate and key files", function()
  local e

  lazy_setup(function()
    e = assert(emu.start { region = REGION })
  end)

  lazy_teardown(function()
    if e then e:stop() end
  end)

  local function conf(extra)
    return merge({
      pg_host = e.host, pg_port = e.port, pg_database = e.db, pg_user = "pw_scram",
      pg_password = e.users.pw_scram, pg_ssl = true, pg_ssl_verify = true, pg_timeout = 3000,
    }, extra)
  end

  it("are read only when they are regular files: a device, a FIFO or a directory fails at once", function()
    local fifo = os.tmpname()
    os.remove(fifo)
    assert(os.execute("mkfifo " .. util.shell_quote(fifo)))
    for _, path in ipairs { "/dev/zero", fifo, "/tmp" } do
      local t0 = socket.gettime()
      local c, err = rds.connect(conf { pg_ssl_cafile = path })
      assert.is_nil(c)
      assert.equal("ca file " .. path .. " is not a regular file", err)
      assert.is_true(socket.gettime() - t0 < 1, path .. " took too long")
      c, err = rds.connect(conf { pg_ssl_cert = path, pg_ssl_cert_key = e.client_key })
      assert.is_nil(c)
      assert.equal("client certificate " .. path .. " is not a regular file", err)
    end
    os.remove(fifo)
    -- a regular file still works
    assert(assert(rds.connect(conf { pg_ssl_cafile = e.ca })):close())
  end)

  it("larger than 16 MB are refused", function()
    local big = os.tmpname()
    assert(os.execute("truncate -s 17M " .. util.shell_quote(big)))
    local c, err = rds.connect(conf { pg_ssl_cafile = big })
    os.remove(big)
    assert.is_nil(c)
    assert.equal("ca file " .. big .. " is larger than 16 MB", err)
  end)
end)
