-- kong_rds_iam.conf: kong.conf read as Kong's conf loader reads it (comments,
-- `\#`, whitespace, NONE, booleans, KONG_* overrides, default paths, vault
-- references, errors with file and line). No network, no module needed.
local kconf = require "kong_rds_iam.conf"
local util = require "spec.support.util"

local tmp_files = {}
local function file(text)
  local path = os.tmpname()
  tmp_files[#tmp_files + 1] = path
  return util.write_file(path, text)
end

-- load() of a kong.conf text with an environment of its own (nothing from this process)
local function load(text, env)
  return kconf.load(file(text), env or {})
end

describe("kong.conf reader", function()
  teardown(function()
    for _, p in ipairs(tmp_files) do os.remove(p) end
  end)

  it("reads key = value lines, skips blank and comment lines (# and ;)", function()
    local c = assert(load("# a comment\n\n   # indented comment\n; semicolon comment\npg_host = db.example\n\t\npg_user=alice\n"))
    assert.equal("db.example", c.pg_host)
    assert.equal("alice", c.pg_user)
  end)

  it("cuts a value at # and keeps an escaped \\# as #", function()
    local c = assert(load("pg_password = ab\\#cd # the password\npg_database = kong#no space\npg_schema = a\\#b\\#c\n"))
    assert.equal("ab#cd", c.pg_password)
    assert.equal("kong", c.pg_database)
    assert.equal("a#b#c", c.pg_schema)
  end)

  it("trims whitespace around keys and values, and takes CRLF files", function()
    local c = assert(load("   pg_host   =    spaced.example   \r\npg_user\t=\tbob\t\r\n"))
    assert.equal("spaced.example", c.pg_host)
    assert.equal("bob", c.pg_user)
  end)

  it("joins a line that ends with a backslash to the next one, as Penlight does", function()
    local c = assert(load("pg_host = db.\\\nexample.com\n"))
    assert.equal("db.example.com", c.pg_host)
  end)

  it("turns other characters of a key into _ (Penlight's variabilize)", function()
    local c = assert(load("pg-host = dashed\n"))
    assert.equal("dashed", c.pg_host)
  end)

  it("reads NONE and empty values as unset, also over a default", function()
    local c = assert(load("pg_password = NONE\npg_host = NONE\npg_schema =\n"))
    assert.is_nil(c.pg_password)
    assert.is_nil(c.pg_host)
    assert.is_nil(c.pg_schema)
  end)

  it("gives Kong's defaults to the keys set nowhere", function()
    local c = assert(load(""))
    assert.equal("127.0.0.1", c.pg_host)
    assert.equal("5432", c.pg_port)
    assert.equal("kong", c.pg_user)
    assert.equal("kong", c.pg_database)
    assert.equal("5000", c.pg_timeout)
    assert.equal("tlsv1_2", c.pg_ssl_version)
    assert.equal("KongPostgres", c.pg_iam_auth_role_session_name)
    assert.equal("system", c.lua_ssl_trusted_certificate)
    assert.is_false(c.pg_ssl)
    assert.is_false(c.pg_iam_auth)
    assert.is_nil(c.pg_password)
    assert.is_nil(c.pg_ro_host)
  end)

  it("turns on/off, true/false and yes/no (any case) into booleans for the boolean keys only", function()
    local c = assert(load(table.concat({
      "pg_ssl = ON", "pg_ssl_required = true", "pg_ssl_verify = yes", "pg_iam_auth = on",
      "pg_ro_ssl = off", "pg_ro_ssl_required = False", "pg_ro_ssl_verify = no", "pg_ro_iam_auth = off",
      "pg_iam_auth_ssl_verify = off", "pg_user = on", "pg_ro_iam_auth_region = yes",
    }, "\n")))
    assert.is_true(c.pg_ssl)
    assert.is_true(c.pg_ssl_required)
    assert.is_true(c.pg_ssl_verify)
    assert.is_true(c.pg_iam_auth)
    assert.is_false(c.pg_ro_ssl)
    assert.is_false(c.pg_ro_ssl_required)
    assert.is_false(c.pg_ro_ssl_verify)
    assert.is_false(c.pg_ro_iam_auth)
    assert.is_false(c.pg_iam_auth_ssl_verify)
    assert.equal("on", c.pg_user)              -- not a boolean key
    assert.equal("yes", c.pg_ro_iam_auth_region)
  end)

  it("leaves a boolean key's other value as text, for the module to refuse by name", function()
    local c = assert(load("pg_ssl = maybe\n"))
    assert.equal("maybe", c.pg_ssl)
    local rds = require "kong_rds_iam"
    local _, err = rds.settings(c)
    assert.matches("pg_ssl must be a boolean", err, 1, true)
  end)

  it("the module reads what it returns: rds.settings agrees with the file", function()
    local rds = require "kong_rds_iam"
    local c = assert(load("pg_host = db.example\npg_port = 6543\npg_ssl = on\npg_timeout = 1234 # ms\n"))
    local s = assert(rds.settings(c))
    assert.equal("db.example", s.host)
    assert.equal(6543, s.port)
    assert.is_true(s.ssl)
    assert.equal(1234, s.timeout)
  end)

  describe("KONG_* environment variables", function()
    it("override the file's values and the defaults (KONG_PG_HOST -> pg_host)", function()
      local c, _, info = load("pg_host = from.file\npg_user = fileuser\n",
        { KONG_PG_HOST = "from.env", KONG_PG_PORT = "7777", KONG_PG_IAM_AUTH = "on" })
      assert.equal("from.env", c.pg_host)
      assert.equal("7777", c.pg_port)
      assert.is_true(c.pg_iam_auth)
      assert.equal("fileuser", c.pg_user)
      assert.same({ "pg_host", "pg_iam_auth", "pg_port" }, info.from_env)
    end)

    it("are taken as they are (no comment stripping), trimmed; empty or NONE unsets", function()
      local c = load("pg_password = filepw\npg_schema = s\n",
        { KONG_PG_DATABASE = " db # not a comment ", KONG_PG_PASSWORD = "", KONG_PG_SCHEMA = "NONE" })
      assert.equal("db # not a comment", c.pg_database)
      assert.is_nil(c.pg_password)
      assert.is_nil(c.pg_schema)
    end)

    it("bring keys the file does not have, known or not", function()
      local c = load("", { KONG_PG_RO_HOST = "replica", KONG_SOMETHING_ELSE = "x" })
      assert.equal("replica", c.pg_ro_host)
      assert.equal("x", c.something_else)
    end)

    it("can be a lookup function (no listing: the known keys are asked for)", function()
      local asked = {}
      local c = load("", function(name)
        asked[name] = true
        if name == "KONG_PG_IAM_AUTH_HOST" then return "signed.example" end
      end)
      assert.equal("signed.example", c.pg_iam_auth_host)
      assert.is_true(asked.KONG_PG_RO_IAM_AUTH_REGION)
    end)

    it("come from this process's environment by default", function()
      local ffi = require "ffi"
      pcall(ffi.cdef, "int setenv(const char *, const char *, int); int unsetenv(const char *);")
      ffi.C.setenv("KONG_PG_APPLICATION_NAME", "from-process-env", 1)
      ffi.C.setenv("KONG_RDS_IAM_SPEC_UNKNOWN_KEY", "listed", 1)
      local c = kconf.load(file(""))
      ffi.C.unsetenv("KONG_PG_APPLICATION_NAME")
      ffi.C.unsetenv("KONG_RDS_IAM_SPEC_UNKNOWN_KEY")
      assert.equal("from-process-env", c.pg_application_name)
      assert.equal("listed", c.rds_iam_spec_unknown_key) -- found by listing the environment
    end)
  end)

  describe("without a path", function()
    it("reads the first file of the search list that exists", function()
      local second = file("pg_host = second\n")
      local third = file("pg_host = third\n")
      local c, err, info = kconf.load(nil, {}, { search = { "/nonexistent/kong.conf", second, third } })
      assert.is_nil(err)
      assert.equal("second", c.pg_host)
      assert.equal(second, info.path)
    end)

    it("uses the defaults alone when no file of the list exists", function()
      local c, err, info = kconf.load(nil, { KONG_PG_USER = "envuser" }, { search = { "/nonexistent/a", "/nonexistent/b" } })
      assert.is_nil(err)
      assert.is_nil(info.path)
      assert.equal("127.0.0.1", c.pg_host)
      assert.equal("envuser", c.pg_user)
    end)

    it("searches Kong's default paths, /etc/kong/kong.conf then /etc/kong.conf", function()
      assert.same({ "/etc/kong/kong.conf", "/etc/kong.conf" }, kconf.DEFAULT_PATHS)
    end)
  end)

  describe("vault references", function()
    it("are kept as they are and listed by vault_keys, with one sentence each", function()
      local c = assert(load("pg_password = {vault://env/pg-password}\npg_user = {vault://aws/kong-user}\npg_host = db\n"))
      assert.equal("{vault://env/pg-password}", c.pg_password)
      assert.same({ "pg_password", "pg_user" }, kconf.vault_keys(c))
      assert.equal("pg_password holds a vault reference ({vault://...}), which only Kong can resolve",
        kconf.vault_message("pg_password"))
    end)

    it("also from the environment; a plain value is none", function()
      local c = load("pg_password = plain{vault://not-at-start}\n", { KONG_PG_RO_PASSWORD = "{vault://env/ro}" })
      assert.same({ "pg_ro_password" }, kconf.vault_keys(c))
    end)
  end)

  describe("errors", function()
    it("name the file and line of a line that is not key = value, without showing it", function()
      local path = file("pg_host = ok\n# fine\npg_password hunter2-secret\n")
      local c, err = kconf.load(path, {})
      assert.is_nil(c)
      assert.equal(path .. ":3: expected `key = value`", err)
      assert.is_nil(err:find("hunter2", 1, true))
    end)

    it("name the line of a [section] and of a continuation that never ends", function()
      local path = file("pg_host = ok\n[database]\n")
      local _, err = kconf.load(path, {})
      assert.matches("^" .. path:gsub("%p", "%%%0") .. ":2: a %[section%] line", err)
      local path2 = file("pg_host = ok\npg_user = a\\\n")
      _, err = kconf.load(path2, {})
      assert.matches(":2: the line continues", err, 1, true)
      assert.not_matches("\n", err)
    end)

    it("say when a given file does not exist", function()
      local c, err = kconf.load("/nonexistent/kong.conf", {})
      assert.is_nil(c)
      assert.equal("no file at: /nonexistent/kong.conf", err)
    end)
  end)
end)
