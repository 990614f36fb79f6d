-- token(): published vectors, the kong.conf model, regions, the cache, the
-- frozen environment, and secrets kept out of errors.
local rds = require "kong_rds_iam"
local socket = require "socket"
local test_env = require "spec.support.test_env"
local lua_process = require "spec.support.lua_process"

local function param(token, name)
  return token:match("[?&]" .. name .. "=([^&]*)")
end

local function credential_scope(token)
  return (param(token, "X%-Amz%-Credential"):gsub("%%2F", "/"))
end

local RDS_HOST = "mydb.abcdefghijkl.us-east-1.rds.amazonaws.com"

-- Sleeps past the next whole second: a token signed after this carries another
-- X-Amz-Date (and signature) than one signed before, unless it came from the cache.
local function next_second()
  local now = socket.gettime()
  socket.sleep(math.floor(now) + 1.05 - now)
end

describe("sign_token reproduces the published vectors", function()
  local kong_host = "test_database.test_cluster.us-east-1.rds.amazonaws.com"
  local cases = {
    { key = "test_id", secret = "test_key", time = 1667543171,
      sig = "ff72d46f1937c1f5917f69d694929ca814b781619b8d730451c7ffef050059b0" },
    { key = "test_id2", secret = "test_key2", session = "test_token2", time = 1667543171,
      sig = "7fcb20a161bb493b405686590604bfb864f8ac68dea84b903cd551e93f850ac5" },
    { key = "test_access_key", secret = "test_secret_key", session = "\n      test_session_token\n    ",
      time = 1982903181, sig = "31aa805cd9c7e5929b4a0e25718d933d006ae130156f8b66b60861548fc771ce" },
  }
  for i, c in ipairs(cases) do
    it("vector " .. i, function()
      local token = assert(rds.sign_token {
        host = kong_host, port = 443, user = "test_user", region = "us-east-1",
        access_key_id = c.key, secret_access_key = c.secret, session_token = c.session, time = c.time,
      })
      assert.equal(c.sig, param(token, "X%-Amz%-Signature"))
    end)
  end

  it("vector 4, the exact token", function()
    local token = rds.sign_token {
      host = "prod-instance.us-east-1.rds.amazonaws.com", port = 3306, user = "peccy", region = "us-east-1",
      access_key_id = "akid", secret_access_key = "secret", time = 1724709600,
    }
    assert.equal("prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=peccy"
      .. "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request"
      .. "&X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
      .. "&X-Amz-Signature=dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89", token)
  end)

  it("token() with env credentials at the vector's time gives the same token", function()
    local out = lua_process.run([[
      local rds = require "kong_rds_iam"
      io.write((assert(rds.token{ pg_host = "prod-instance.us-east-1.rds.amazonaws.com", pg_port = 3306, pg_user = "peccy" })))
    ]], { AWS_ACCESS_KEY_ID = "akid", AWS_SECRET_ACCESS_KEY = "secret", AWS_EC2_METADATA_DISABLED = "true" },
      { prefix = "faketime -f '@2024-08-26 22:00:00 x0.0001'" })
    assert.equal("prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=peccy"
      .. "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request"
      .. "&X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
      .. "&X-Amz-Signature=dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89", out)
  end)

  it("percent-encodes the user as botocore does", function()
    local base = { host = "H.us-east-1.rds.amazonaws.com", port = 5432, region = "us-east-1",
      access_key_id = "AKID", secret_access_key = "s", time = 1724709600 }
    base.user = "a b"
    assert.equal("a%20b", param(rds.sign_token(base), "DBUser"))
    base.user = "a+b"
    assert.equal("a%2Bb", param(rds.sign_token(base), "DBUser"))
    base.user = "ünï/=&"
    assert.equal("%C3%BCn%C3%AF%2F%3D%26", param(rds.sign_token(base), "DBUser"))
    assert.truthy(rds.sign_token(base):find("^h%.us%-east%-1%.rds%.amazonaws%.com:5432/%?"))
  end)

  it("returns nil, err for out-of-range numbers", function()
    local p = { host = "h", port = 5432.5, user = "u", region = "us-east-1", access_key_id = "A", secret_access_key = "s" }
    local tok, err = rds.sign_token(p)
    assert.is_nil(tok)
    assert.equal("port must be an integer 1-65535, got 5432.5", err)
    p.port, p.time = 5432, 1e300
    tok, err = rds.sign_token(p)
    assert.is_nil(tok)
    assert.truthy(err:find("^time must be a unix timestamp"))
    p.time = 0 / 0
    assert.is_nil((rds.sign_token(p)))
    p.time = -1
    assert.is_nil((rds.sign_token(p)))
    p.time, p.user = nil, "caf\233"
    tok, err = rds.sign_token(p)
    assert.is_nil(tok)
    assert.equal("user must be valid utf-8", err)
  end)

  it("raises for wrong argument types", function()
    assert.has_error(function() rds.sign_token() end, "bad argument #1 to 'sign_token' (table expected, got nil)")
    assert.has_error(function() rds.sign_token { host = 1 } end)
  end)
end)

describe("token(conf)", function()
  it("signs for host:port and user with the frozen environment credentials", function()
    local before = os.time()
    local token, err, expires_at = rds.token { pg_host = RDS_HOST, pg_port = 5432, pg_user = "kong" }
    assert.is_nil(err)
    assert.truthy(token:find("^" .. RDS_HOST:gsub("%p", "%%%0") .. ":5432/%?Action=connect&DBUser=kong&"))
    assert.truthy(credential_scope(token):find("^" .. test_env.access_key_id .. "/%d+/us%-east%-1/rds%-db/aws4_request$"))
    assert.equal("900", param(token, "X%-Amz%-Expires"))
    assert.is_nil(param(token, "X%-Amz%-Security%-Token"))
    assert.is_number(expires_at)
    assert.is_true(expires_at >= before + 899 and expires_at <= os.time() + 900)
  end)

  it("re-derives to the same signature as sign_token with the same inputs", function()
    local token = assert(rds.token { pg_host = RDS_HOST, pg_user = "verify_me" })
    local date = param(token, "X%-Amz%-Date")
    local y, mo, d, h, mi, s = date:match("^(%d%d%d%d)(%d%d)(%d%d)T(%d%d)(%d%d)(%d%d)Z$")
    -- os.time reads a local time; compute the UTC epoch by removing the local offset.
    local t = { year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = tonumber(h), min = tonumber(mi), sec = tonumber(s) }
    local now = os.time()
    local offset = os.time(os.date("*t", now)) - os.time(os.date("!*t", now))
    local epoch = os.time(t) + offset
    local again = rds.sign_token { host = RDS_HOST, port = 5432, user = "verify_me", region = "us-east-1",
      access_key_id = test_env.access_key_id, secret_access_key = test_env.secret_access_key, time = epoch }
    assert.equal(token, again)
  end)

  it("reuses a cached token and keys the cache by user, host, port and region", function()
    local conf = { pg_host = RDS_HOST, pg_user = "cache_user" }
    local a, _, exp_a = rds.token(conf)
    next_second()
    local b, _, exp_b = rds.token(conf)
    assert.equal(a, b)
    assert.equal(exp_a, exp_b)
    local other = rds.token { pg_host = RDS_HOST, pg_user = "cache_user2" }
    assert.not_equal(a, other)
    assert.not_equal(param(a, "X%-Amz%-Date"), param(other, "X%-Amz%-Date")) -- a second went by
    assert.not_equal(a, rds.token { pg_host = RDS_HOST, pg_user = "cache_user", pg_port = 5433 })
    assert.not_equal(a, rds.token { pg_host = RDS_HOST, pg_user = "cache_user", pg_iam_auth_region = "eu-west-1" })
  end)

  it("notices when the same conf table changes between calls", function()
    local conf = { pg_host = RDS_HOST, pg_user = "memo_a" }
    local a = assert(rds.token(conf))
    assert.equal(a, (rds.token(conf)))
    conf.pg_user = "memo_b"
    local b = assert(rds.token(conf))
    assert.equal("memo_b", param(b, "DBUser"))
    conf.pg_port = 6543
    assert.truthy(assert(rds.token(conf)):find(":6543/", 1, true))
    conf.pg_iam_auth_region = "eu-west-3"
    assert.truthy(credential_scope(assert(rds.token(conf))):find("/eu%-west%-3/"))
    conf.pg_ro_user = "memo_ro"
    assert.equal("memo_ro", param(assert(rds.token(conf, "ro")), "DBUser"))
    assert.equal("memo_b", param(assert(rds.token(conf)), "DBUser"))
    conf.pg_port = "bad"
    local none, err = rds.token(conf)
    assert.is_nil(none)
    assert.equal('pg_port must be an integer 1-65535, got "bad"', err)
  end)

  it("notices changes behind a proxy table's __index", function()
    local backing = { pg_host = RDS_HOST, pg_user = "proxy_a" }
    local conf = setmetatable({}, { __index = backing })
    assert.equal("proxy_a", param(assert(rds.token(conf)), "DBUser"))
    backing.pg_user = "proxy_b"
    assert.equal("proxy_b", param(assert(rds.token(conf)), "DBUser"))
  end)

  it("signs a new token once the cached one is within 15 s of its 900 s life", function()
    -- The clock runs 1000x fast: a real second is 1000 s of token life.
    local out = lua_process.run([[
      local rds = require "kong_rds_iam"
      local conf = { pg_host = "mydb.abcdefghijkl.us-east-1.rds.amazonaws.com" }
      local t1, _, e1 = assert(rds.token(conf))
      local start = os.time()
      local t2 = assert(rds.token(conf))
      while os.time() < start + 880 do end
      local t3 = assert(rds.token(conf))
      while os.time() < start + 890 do end
      local t4, _, e4 = assert(rds.token(conf))
      print(t1 == t2, t1 == t3, t1 ~= t4, e4 - e1 >= 885)
    ]], { AWS_ACCESS_KEY_ID = "AKIDFAST", AWS_SECRET_ACCESS_KEY = "fast", AWS_EC2_METADATA_DISABLED = "true" },
      { prefix = "faketime -f '+0 x1000'" })
    assert.equal("true\ttrue\ttrue\ttrue\n", out)
  end)

  it("reads the read-only view with mode 'ro', falling back to pg_* keys", function()
    local conf = { pg_host = RDS_HOST, pg_port = 6000, pg_user = "writer", pg_ro_user = "reader",
      pg_ro_host = "replica.abcdefghijkl.eu-west-2.rds.amazonaws.com" }
    local rw = assert(rds.token(conf))
    local ro = assert(rds.token(conf, "ro"))
    assert.equal("writer", param(rw, "DBUser"))
    assert.equal("reader", param(ro, "DBUser"))
    assert.truthy(ro:find("^replica%.abcdefghijkl%.eu%-west%-2%.rds%.amazonaws%.com:6000/"))
    assert.truthy(credential_scope(ro):find("/eu%-west%-2/rds%-db/"))
    local rw_only = { pg_host = RDS_HOST, pg_user = "writer" }
    assert.equal("writer", param(assert(rds.token(rw_only, "ro")), "DBUser"))
  end)

  it("accepts kong.conf strings and kong.configuration's parsed values alike", function()
    local a = assert(rds.token { pg_host = RDS_HOST, pg_port = "5432", pg_user = "same", pg_timeout = "5000" })
    local b = assert(rds.token { pg_host = RDS_HOST, pg_port = 5432, pg_user = "same", pg_timeout = 5000 })
    assert.equal(a, b)
  end)

  it("reads a read-only proxy table like kong.configuration", function()
    local conf = setmetatable({}, {
      __index = { pg_host = RDS_HOST, pg_user = "proxied" },
      __newindex = function() error("read-only", 2) end,
    })
    assert.equal("proxied", param(assert(rds.token(conf)), "DBUser"))
  end)

  it("ignores unknown keys", function()
    assert.truthy(rds.token { pg_host = RDS_HOST, admin_listen = { "127.0.0.1:8001" }, nginx_worker_processes = "auto", [1] = true })
  end)

  it("raises only for a non-table conf or a non-string mode", function()
    assert.has_error(function() rds.token() end, "bad argument #1 to 'token' (table expected, got nil)")
    assert.has_error(function() rds.token("x") end, "bad argument #1 to 'token' (table expected, got string)")
    assert.has_error(function() rds.token({}, 1) end, "bad argument #2 to 'token' (string expected, got number)")
    local tok, err = rds.token({ pg_host = RDS_HOST }, "rx")
    assert.is_nil(tok)
    assert.equal('mode must be "rw" or "ro", got "rx"', err)
  end)
end)

describe("a conf proxy whose __index raises", function()
  it("gives nil, err even when the error object's __tostring raises too", function()
    local bad = setmetatable({}, { __tostring = function() error("no text for you") end })
    local conf = setmetatable({}, { __index = function() error(bad) end })
    local token, err = rds.token(conf)
    assert.is_nil(token)
    assert.equal("cannot read conf: its __index raised: an error object that cannot be shown", err)
    local ok_conf = setmetatable({}, { __index = function() error("plain text") end })
    local _, err2 = rds.token(ok_conf)
    assert.matches("its __index raised: .*plain text", err2)
  end)
end)

describe("conf validation names the key", function()
  local bad = {
    { { pg_port = "abc" }, 'pg_port must be an integer 1-65535, got "abc"' },
    { { pg_port = 0 }, "pg_port must be an integer 1-65535, got 0" },
    { { pg_port = 65536 }, "pg_port must be an integer 1-65535, got 65536" },
    { { pg_port = 5432.5 }, "pg_port must be an integer 1-65535, got 5432.5" },
    { { pg_port = true }, "pg_port must be an integer 1-65535, got true" },
    { { pg_port = {} }, "pg_port must be an integer 1-65535, got a table" },
    { { pg_host = " " }, 'pg_host must be a non-empty string, got " "' },
    { { pg_host = 12 }, "pg_host must be a non-empty string, got 12" },
    { { pg_host = "a b.example" }, 'pg_host must be a host name or address, got "a b.example"' },
    { { pg_user = false }, "pg_user must be a non-empty string, got false" },
    { { pg_user = "  " }, 'pg_user must be a non-empty string, got "  "' },
    { { pg_timeout = 0 }, "pg_timeout must be an integer 1-3600000, got 0" },
    { { pg_timeout = "soon" }, 'pg_timeout must be an integer 1-3600000, got "soon"' },
    { { pg_iam_auth_region = "US-EAST-1" }, 'pg_iam_auth_region must be an AWS region like us-east-1, got "US-EAST-1"' },
    { { pg_iam_auth_region = 1 }, "pg_iam_auth_region must be a string, got 1" },
    { { pg_iam_auth_assume_role_arn = "my-role" }, 'pg_iam_auth_assume_role_arn must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME), got "my-role"' },
    { { pg_iam_auth_assume_role_arn = "arn:aws:iam::123456789012:role/r", pg_iam_auth_role_session_name = 5 },
      "pg_iam_auth_role_session_name must be a non-empty string, got 5" },
    { { pg_iam_auth_assume_role_arn = "arn:aws:iam::123456789012:role/r", pg_iam_auth_sts_endpoint_url = "sts.internal" },
      'pg_iam_auth_sts_endpoint_url must be an http(s) URL, got "sts.internal"' },
  }
  for _, case in ipairs(bad) do
    local conf, want = case[1], case[2]
    it(want, function()
      conf.pg_host = conf.pg_host or RDS_HOST
      local tok, err = rds.token(conf)
      assert.is_nil(tok)
      assert.equal(want, err)
    end)
  end

  it("takes an empty string as unset, as kong.conf does", function()
    local token = assert(rds.token({ pg_host = RDS_HOST, pg_user = "writer", pg_ro_user = "", pg_port = "" }, "ro"))
    assert.equal("writer", param(token, "DBUser"))
    assert.truthy(token:find(":5432/", 1, true))
  end)

  it("names the pg_ro_ key it read in read-only mode", function()
    local tok, err = rds.token({ pg_host = RDS_HOST, pg_ro_port = "x" }, "ro")
    assert.is_nil(tok)
    assert.equal('pg_ro_port must be an integer 1-65535, got "x"', err)
  end)

  it("cuts long values in messages", function()
    local _, err = rds.token { pg_host = RDS_HOST, pg_port = string.rep("9", 200) }
    assert.truthy(#err < 120)
  end)
end)

describe("region", function()
  local table_ = {
    { "mydb.abcdefghijkl.us-east-1.rds.amazonaws.com", "us-east-1" },
    { "aurora.cluster-abcdefghijkl.eu-west-1.rds.amazonaws.com", "eu-west-1" },
    { "aurora.cluster-ro-abcdefghijkl.ap-southeast-2.rds.amazonaws.com", "ap-southeast-2" },
    { "aurora.cluster-custom-abcdefghijkl.ca-central-1.rds.amazonaws.com", "ca-central-1" },
    { "proxy1.proxy-abcdefghijkl.sa-east-1.rds.amazonaws.com", "sa-east-1" },
    { "mydb.abcdefghijkl.af-south-1.rds.amazonaws.com", "af-south-1" },
    { "mydb.abcdefghijkl.il-central-1.rds.amazonaws.com", "il-central-1" },
    { "mydb.abcdefghijkl.mx-central-1.rds.amazonaws.com", "mx-central-1" },
    { "mydb.abcdefghijkl.cn-north-1.rds.amazonaws.com.cn", "cn-north-1" },
    { "mydb.abcdefghijkl.us-gov-west-1.rds.amazonaws.com", "us-gov-west-1" },
    { "mydb.abcdefghijkl.us-iso-east-1.rds.c2s.ic.gov", "us-iso-east-1" },
    { "mydb.abcdefghijkl.us-isob-east-1.rds.sc2s.sgov.gov", "us-isob-east-1" },
    { "MyDB.ABCDEFGHIJKL.EU-CENTRAL-1.RDS.AMAZONAWS.COM", "eu-central-1" },
  }
  for _, case in ipairs(table_) do
    it("of " .. case[1] .. " is " .. case[2], function()
      local token = assert(rds.token { pg_host = case[1] })
      assert.truthy(credential_scope(token):find("/" .. case[2]:gsub("%-", "%%-") .. "/rds%-db/aws4_request$"))
      assert.equal(case[1]:lower(), token:match("^([^:]+):"))
    end)
  end

  it("comes from pg_iam_auth_region over the host", function()
    local token = assert(rds.token { pg_host = RDS_HOST, pg_iam_auth_region = "eu-north-1" })
    assert.truthy(credential_scope(token):find("/eu%-north%-1/"))
  end)

  it("is an error naming the keys to set when nothing gives it", function()
    local tok, err = rds.token { pg_host = "db.internal.example.com" }
    assert.is_nil(tok)
    assert.truthy(err:find("cannot tell the aws region of db.internal.example.com", 1, true))
    assert.truthy(err:find("pg_iam_auth_region", 1, true))
    assert.truthy(err:find("AWS_REGION", 1, true))
  end)

  it("falls back to the frozen AWS_REGION, then the profile's region", function()
    local env = { AWS_ACCESS_KEY_ID = "AKIDX", AWS_SECRET_ACCESS_KEY = "s", AWS_EC2_METADATA_DISABLED = "true",
      AWS_REGION = "ap-northeast-3" }
    local code = [[ local rds = require "kong_rds_iam"; io.write((assert(rds.token{ pg_host = "db.internal" }))) ]]
    assert.truthy(lua_process.run(code, env):find("%%2Fap%-northeast%-3%%2Frds%-db%%2F"))
    local config = os.tmpname()
    local f = assert(io.open(config, "w"))
    f:write("[default]\nregion = eu-south-2\n")
    f:close()
    env.AWS_REGION = nil
    env.AWS_CONFIG_FILE = config
    local out = lua_process.run(code, env)
    os.remove(config)
    assert.truthy(out:find("%%2Feu%-south%-2%%2Frds%-db%%2F"), out)
  end)
end)

describe("the frozen environment", function()
  it("keeps signing with the credentials present at load after the environment changes or is wiped", function()
    local out = lua_process.run([[
      local ffi = require "ffi"
      ffi.cdef "int setenv(const char*, const char*, int); int unsetenv(const char*); int clearenv(void);"
      local rds = require "kong_rds_iam"
      local conf = { pg_host = "mydb.abcdefghijkl.us-east-1.rds.amazonaws.com", pg_user = "u1" }
      ffi.C.setenv("AWS_ACCESS_KEY_ID", "AKIDCHANGED", 1)
      ffi.C.setenv("AWS_SECRET_ACCESS_KEY", "changed", 1)
      ffi.C.unsetenv("AWS_EC2_METADATA_DISABLED")
      local t1 = assert(rds.token(conf))
      ffi.C.clearenv()
      conf.pg_user = "u2"
      local t2 = assert(rds.token(conf))
      print(t1)
      print(t2)
      print(rds.credentials_source())
    ]], { AWS_ACCESS_KEY_ID = "AKIDORIGINAL", AWS_SECRET_ACCESS_KEY = "original-secret", AWS_EC2_METADATA_DISABLED = "true" })
    local t1, t2, source = out:match("^(%S+)\n(%S+)\n(%S+)\n$")
    assert.truthy(t1, out)
    for _, token in ipairs { t1, t2 } do
      assert.truthy(token:find("X-Amz-Credential=AKIDORIGINAL%2F", 1, true))
      local epoch_date = param(token, "X%-Amz%-Date")
      assert.truthy(epoch_date)
    end
    assert.equal("environment", source)
    -- The signature is the one the original secret gives.
    local date = param(t1, "X%-Amz%-Date")
    local y, mo, d, h, mi, s = date:match("^(%d%d%d%d)(%d%d)(%d%d)T(%d%d)(%d%d)(%d%d)Z$")
    local now = os.time()
    local offset = os.time(os.date("*t", now)) - os.time(os.date("!*t", now))
    local epoch = os.time { year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = tonumber(h), min = tonumber(mi), sec = tonumber(s) } + offset
    assert.equal(t1, rds.sign_token { host = "mydb.abcdefghijkl.us-east-1.rds.amazonaws.com", port = 5432, user = "u1",
      region = "us-east-1", access_key_id = "AKIDORIGINAL", secret_access_key = "original-secret", time = epoch })
  end)

  it("is taken at load, not at first use", function()
    local out = lua_process.run([[
      local ffi = require "ffi"
      ffi.cdef "int setenv(const char*, const char*, int);"
      local rds = require "kong_rds_iam"
      ffi.C.setenv("AWS_ACCESS_KEY_ID", "AKIDLATE", 1)
      ffi.C.setenv("AWS_SECRET_ACCESS_KEY", "late", 1)
      print(rds.token { pg_host = "mydb.abcdefghijkl.us-east-1.rds.amazonaws.com" })
    ]], { AWS_EC2_METADATA_DISABLED = "true" })
    assert.truthy(out:find("^nil\tcould not get aws credentials"), out)
    assert.falsy(out:find("AKIDLATE", 1, true))
  end)

  it("starts no thread when loaded", function()
    local out = lua_process.run([[
      local function threads()
        local f = assert(io.open("/proc/self/status"))
        local n = f:read("*a"):match("Threads:%s*(%d+)")
        f:close()
        return tonumber(n)
      end
      local before = threads()
      local rds = require "kong_rds_iam"
      assert(rds.token { pg_host = "mydb.abcdefghijkl.us-east-1.rds.amazonaws.com" })
      io.write(before, " ", threads())
    ]], { AWS_ACCESS_KEY_ID = "AKIDT", AWS_SECRET_ACCESS_KEY = "t", AWS_EC2_METADATA_DISABLED = "true" })
    local before, after = out:match("^(%d+) (%d+)$")
    assert.truthy(before, out)
    assert.equal(before, after)
  end)
end)

describe("secrets", function()
  local secret = test_env.secret_access_key

  it("never appear in errors", function()
    local confs = {
      { pg_host = "db.internal" },
      { pg_host = RDS_HOST, pg_port = "x" },
      { pg_host = RDS_HOST, pg_password = 12345678 },
    }
    for _, conf in ipairs(confs) do
      local _, err = rds.token(conf)
      local _, err2 = rds.connect(conf)
      for _, e in ipairs { err, err2 } do
        assert.is_string(e)
        assert.falsy(e:find(secret, 1, true))
        assert.falsy(e:find("12345678", 1, true))
      end
    end
  end)

  it("never appear in a failure without credentials", function()
    local out = lua_process.run([[
      local rds = require "kong_rds_iam"
      print(rds.token { pg_host = "mydb.abcdefghijkl.us-east-1.rds.amazonaws.com" })
      print(rds.credentials_source())
    ]], { AWS_SECRET_ACCESS_KEY = "only-the-secret-is-set", AWS_EC2_METADATA_DISABLED = "true",
          AWS_SESSION_TOKEN = "and-a-session-token" })
    assert.truthy(out:find("could not get aws credentials", 1, true), out)
    assert.falsy(out:find("only-the-secret-is-set", 1, true))
    assert.falsy(out:find("and-a-session-token", 1, true))
  end)

  it("credentials_source names the provider, never keys", function()
    local source = assert(rds.credentials_source())
    assert.equal("environment", source)
  end)
end)
