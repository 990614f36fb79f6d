-- The other AWS "connect" tokens: ElastiCache / MemoryDB IAM (Valkey, Redis
-- OSS) and Aurora DSQL. sign_token{kind=...} and the chain-credential doors
-- rds.elasticache_token / rds.dsql_token against botocore byte for byte, region
-- and default rules, bounds, argument errors, the cache, and connect() to a
-- DSQL-style server (the RDS emulator in DSQL mode).
--
-- The vectors below come from botocore (spec/support/gen_token_vectors.py;
-- regenerate with its --update). No SDK ships an ElastiCache generator: those
-- are botocore's SigV4QueryAuth over the URL AWS documents. The DSQL ones are
-- botocore's own dsql client. AWS's ElastiCache IAM page gives Java code but no
-- full token; the DSQL CLI page shows an output whose key and secret are not
-- given, so neither can be reproduced.
local rds = require "kong_rds_iam"
local emu = require "spec.support.emulator"
local lua_process = require "spec.support.lua_process"
local test_env = require "spec.support.test_env"
local socket = require "socket"

-- BEGIN VECTORS (spec/support/gen_token_vectors.py --update)
-- botocore 1.44.8; keys AKIDEXAMPLE / wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY; session token IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+example/session=token
local AKID, SECRET, SESSION = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+example/session=token"
local VECTORS = {
  { name = "elasticache, node-based, long-term keys", kind = "elasticache", cache_name = "my-cache", user = "iam-user-01", region = "us-east-1", serverless = false,
    access_key_id = AKID, secret_access_key = SECRET, session_token = nil, time = 1724709600,
    token = "my-cache/?Action=connect&User=iam-user-01&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240826%2Fus-east-1%2Felasticache%2Faws4_request&X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=bbfc779f6a451ac28a60ef468b62379e54e612bc2e945aa31a7d3012e24db142" },
  { name = "elasticache, serverless, session token", kind = "elasticache", cache_name = "my-serverless-cache", user = "iam-user-01", region = "eu-west-1", serverless = true,
    access_key_id = AKID, secret_access_key = SECRET, session_token = SESSION, time = 1724709600,
    token = "my-serverless-cache/?Action=connect&User=iam-user-01&ResourceType=ServerlessCache&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240826%2Feu-west-1%2Felasticache%2Faws4_request&X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEJr%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEaCXVzLWVhc3QtMSJHMEUCIQ%2Bexample%2Fsession%3Dtoken&X-Amz-Signature=1155437b705a111496ef6682488d6bf94647af56df4dfab623d89325570cc625" },
  { name = "elasticache, user needing percent-encoding", kind = "elasticache", cache_name = "my-cache", user = "app user+1/\195\188=&", region = "us-east-1", serverless = false,
    access_key_id = AKID, secret_access_key = SECRET, session_token = nil, time = 1767225599,
    token = "my-cache/?Action=connect&User=app%20user%2B1%2F%C3%BC%3D%26&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20251231%2Fus-east-1%2Felasticache%2Faws4_request&X-Amz-Date=20251231T235959Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=86df101b2838b14b6acf3a47e65731e9def324484fc8e2a15487187ef538591f" },
  { name = "elasticache, upper-case cache name (lowercased)", kind = "elasticache", cache_name = "MyCache-PROD", user = "iam-user-01", region = "ap-southeast-2", serverless = false,
    access_key_id = AKID, secret_access_key = SECRET, session_token = SESSION, time = 1767225599,
    token = "mycache-prod/?Action=connect&User=iam-user-01&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20251231%2Fap-southeast-2%2Felasticache%2Faws4_request&X-Amz-Date=20251231T235959Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEJr%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEaCXVzLWVhc3QtMSJHMEUCIQ%2Bexample%2Fsession%3Dtoken&X-Amz-Signature=d00ad807e23ea71474812b578939a10640f0ec4f0568557c7b35bda161776c6a" },
  { name = "memorydb, long-term keys", kind = "memorydb", cache_name = "my-memorydb-cluster", user = "iam-user-01", region = "us-east-1", serverless = false,
    access_key_id = AKID, secret_access_key = SECRET, session_token = nil, time = 1724709600,
    token = "my-memorydb-cluster/?Action=connect&User=iam-user-01&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240826%2Fus-east-1%2Fmemorydb%2Faws4_request&X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=3351e74a1d0c3c4d192a7c70d7abbd53afbf026978c5808420c5bbe4c9ffade0" },
  { name = "memorydb, session token", kind = "memorydb", cache_name = "my-memorydb-cluster", user = "iam-user-01", region = "eu-central-1", serverless = false,
    access_key_id = AKID, secret_access_key = SECRET, session_token = SESSION, time = 1767225599,
    token = "my-memorydb-cluster/?Action=connect&User=iam-user-01&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20251231%2Feu-central-1%2Fmemorydb%2Faws4_request&X-Amz-Date=20251231T235959Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEJr%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEaCXVzLWVhc3QtMSJHMEUCIQ%2Bexample%2Fsession%3Dtoken&X-Amz-Signature=2602ea0cb1460455a14635cf021e256f703b00e35d3ed1f28d502f491b29e6e6" },
  { name = "dsql DbConnect, 900 s, long-term keys", kind = "dsql", host = "abc0def1baz2quux3quuux4.dsql.us-west-2.on.aws", region = "us-west-2", admin = false, expires_in = 900,
    access_key_id = AKID, secret_access_key = SECRET, session_token = nil, time = 1724709600,
    token = "abc0def1baz2quux3quuux4.dsql.us-west-2.on.aws/?Action=DbConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240826%2Fus-west-2%2Fdsql%2Faws4_request&X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=fbd765313e86ad7a4b46450ab96619fb1e5cf65a678aa0da10569b551971b297" },
  { name = "dsql DbConnectAdmin, 900 s, session token", kind = "dsql", host = "abc0def1baz2quux3quuux4.dsql.us-west-2.on.aws", region = "us-west-2", admin = true, expires_in = 900,
    access_key_id = AKID, secret_access_key = SECRET, session_token = SESSION, time = 1724709600,
    token = "abc0def1baz2quux3quuux4.dsql.us-west-2.on.aws/?Action=DbConnectAdmin&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240826%2Fus-west-2%2Fdsql%2Faws4_request&X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEJr%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEaCXVzLWVhc3QtMSJHMEUCIQ%2Bexample%2Fsession%3Dtoken&X-Amz-Signature=a558bd66fcb796126582480839b9ad9202ed7700b30aeb2bb6fe7cbb5e5d9fc0" },
  { name = "dsql DbConnect, 3600 s, session token", kind = "dsql", host = "abc0def1baz2quux3quuux4.dsql.us-west-2.on.aws", region = "us-west-2", admin = false, expires_in = 3600,
    access_key_id = AKID, secret_access_key = SECRET, session_token = SESSION, time = 1767225599,
    token = "abc0def1baz2quux3quuux4.dsql.us-west-2.on.aws/?Action=DbConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20251231%2Fus-west-2%2Fdsql%2Faws4_request&X-Amz-Date=20251231T235959Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEJr%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEaCXVzLWVhc3QtMSJHMEUCIQ%2Bexample%2Fsession%3Dtoken&X-Amz-Signature=9c3b604e5ab0f3ac2368e14f1d9633d4d1b8f913938f2b3a2d26654c063746a2" },
  { name = "dsql DbConnectAdmin, 3600 s, long-term keys", kind = "dsql", host = "kiabc2defghijklmnopqrstuvw.dsql.eu-west-1.on.aws", region = "eu-west-1", admin = true, expires_in = 3600,
    access_key_id = AKID, secret_access_key = SECRET, session_token = nil, time = 1767225599,
    token = "kiabc2defghijklmnopqrstuvw.dsql.eu-west-1.on.aws/?Action=DbConnectAdmin&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20251231%2Feu-west-1%2Fdsql%2Faws4_request&X-Amz-Date=20251231T235959Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=baa92fd7f2b0299550e4724232c28781f8274c4380d1cc2ee3b9966bc526c81b" },
}
-- END VECTORS

local V = {}
for _, v in ipairs(VECTORS) do V[v.name] = v end

local function param(token, name)
  return token and token:match("[?&]" .. name .. "=([^&]*)")
end

local function credential_scope(token)
  return (param(token, "X%-Amz%-Credential") or ""):gsub("%%2F", "/")
end

local function scope_region(token)
  return credential_scope(token):match("^[^/]+/%d+/([^/]+)/")
end

-- The vector's inputs, as sign_token takes them.
local SIGN_KEYS = { "kind", "cache_name", "user", "region", "serverless", "host", "admin", "expires_in",
  "access_key_id", "secret_access_key", "session_token", "time" }
local function sign_params(v, extra)
  local p = {}
  for _, k in ipairs(SIGN_KEYS) do p[k] = v[k] end
  for k, x in pairs(extra or {}) do p[k] = x end
  return p
end

-- The Unix time of a token's X-Amz-Date.
local function signed_at(token)
  local y, mo, d, h, mi, s = param(token, "X%-Amz%-Date"):match("^(%d%d%d%d)(%d%d)(%d%d)T(%d%d)(%d%d)(%d%d)Z$")
  local now = os.time()
  local offset = os.time(os.date("*t", now)) - os.time(os.date("!*t", now))
  return os.time { year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = tonumber(h),
    min = tonumber(mi), sec = tonumber(s) } + offset
end

local function next_second()
  local now = socket.gettime()
  socket.sleep(math.floor(now) + 1.05 - now)
end

-- A Lua literal of a flat table of strings, numbers and booleans.
local function literal(t)
  local parts = {}
  for k, x in pairs(t) do
    parts[#parts + 1] = ("[%q] = %s"):format(k, type(x) == "string" and ("%q"):format(x) or tostring(x))
  end
  return "{ " .. table.concat(parts, ", ") .. " }"
end

-- What `rds.<fn>(args)` gives in a fresh luajit whose environment holds the
-- vector's keys, with the clock stopped at the vector's second.
local function at_vector_time(v, fn, args)
  local env = { AWS_ACCESS_KEY_ID = v.access_key_id, AWS_SECRET_ACCESS_KEY = v.secret_access_key,
    AWS_SESSION_TOKEN = v.session_token, AWS_EC2_METADATA_DISABLED = "true" }
  local out = lua_process.run(([[
    local rds = require "kong_rds_iam"
    local tok, err = rds.%s(%s)
    io.write(tok or ("nil, " .. tostring(err)))
  ]]):format(fn, literal(args)), env,
    { prefix = "faketime -f " .. ("'@%s x0.0001'"):format(os.date("!%Y-%m-%d %H:%M:%S", v.time)) })
  return out
end

-- The call raises, or returns nil and a lowercase message; either names `word`.
local function fails_naming(word, f)
  local ok, tok, err = pcall(f)
  if not ok then
    assert.truthy(tostring(tok):find(word, 1, true), tostring(tok))
    return
  end
  assert.is_nil(tok, "no error for a bad " .. word)
  assert.is_string(err)
  assert.truthy(err:find(word, 1, true), err)
  assert.equal(err:sub(1, 1):lower(), err:sub(1, 1))
end

describe("sign_token{kind=...} reproduces botocore's tokens byte for byte", function()
  assert(#VECTORS >= 10, "the vector block is empty: run spec/support/gen_token_vectors.py --update")
  for _, v in ipairs(VECTORS) do
    it(v.name, function()
      assert.equal(v.token, (rds.sign_token(sign_params(v))))
    end)
  end

  it("an upper-case cache name is signed and written lowercased", function()
    local v = V["elasticache, upper-case cache name (lowercased)"]
    assert.equal("MyCache-PROD", v.cache_name)
    local token = assert(rds.sign_token(sign_params(v)))
    assert.truthy(token:find("^mycache%-prod/%?Action=connect&User="))
  end)

  it("ResourceType=ServerlessCache goes right after User, only for a serverless cache", function()
    local v = V["elasticache, serverless, session token"]
    local plain = assert(rds.sign_token(sign_params(v, { serverless = false })))
    assert.is_nil(param(plain, "ResourceType"))
    assert.not_equal(v.token, plain)
    assert.truthy(v.token:find("&User=iam%-user%-01&ResourceType=ServerlessCache&X%-Amz%-Algorithm="))
  end)

  it("memorydb and elasticache sign the same request under their own service", function()
    local v = V["memorydb, long-term keys"]
    local ec = assert(rds.sign_token(sign_params(v, { kind = "elasticache" })))
    assert.truthy(credential_scope(ec):find("/elasticache/aws4_request$"))
    assert.equal(v.token:gsub("memorydb%%2Faws4_request.*", ""), (ec:gsub("elasticache%%2Faws4_request.*", "")))
  end)

  it("the rds kind is unchanged (README vector 4)", function()
    assert.equal("prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=peccy"
      .. "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request"
      .. "&X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
      .. "&X-Amz-Signature=dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89",
      rds.sign_token { host = "prod-instance.us-east-1.rds.amazonaws.com", port = 3306, user = "peccy",
        region = "us-east-1", access_key_id = "akid", secret_access_key = "secret", time = 1724709600 })
  end)
end)

describe("elasticache_token with env credentials at the vector's time", function()
  it("gives botocore's node-based token", function()
    local v = V["elasticache, node-based, long-term keys"]
    assert.equal(v.token, at_vector_time(v, "elasticache_token",
      { cache_name = v.cache_name, user = v.user, region = v.region }))
  end)

  it("gives botocore's serverless token, region and serverless read from the endpoint", function()
    local v = V["elasticache, serverless, session token"]
    assert.equal(v.token, at_vector_time(v, "elasticache_token",
      { cache_name = v.cache_name, user = v.user, endpoint = "my-serverless-cache-x7ab2c.serverless.euw1.cache.amazonaws.com" }))
  end)

  it("gives botocore's token for an upper-case cache name and a percent-encoded user", function()
    local v = V["elasticache, upper-case cache name (lowercased)"]
    assert.equal(v.token, at_vector_time(v, "elasticache_token",
      { cache_name = v.cache_name, user = v.user, endpoint = "master.mycache-prod.x7ab2c.apse2.cache.amazonaws.com" }))
    v = V["elasticache, user needing percent-encoding"]
    assert.equal(v.token, at_vector_time(v, "elasticache_token",
      { cache_name = v.cache_name, user = v.user, region = v.region }))
  end)

  it("gives botocore's memorydb token, the region read from a memorydb endpoint", function()
    local v = V["memorydb, session token"]
    assert.equal(v.token, at_vector_time(v, "elasticache_token", { cache_name = v.cache_name, user = v.user,
      service = "memorydb", endpoint = "clustercfg.my-memorydb-cluster.x7ab2c.memorydb.eu-central-1.amazonaws.com" }))
  end)
end)

describe("dsql_token with env credentials at the vector's time", function()
  it("gives botocore's DbConnect token, the region read from the host", function()
    local v = V["dsql DbConnect, 900 s, long-term keys"]
    assert.equal(v.token, at_vector_time(v, "dsql_token", { host = v.host, user = "app_reader" }))
  end)

  it("gives botocore's DbConnectAdmin token for the user admin", function()
    local v = V["dsql DbConnectAdmin, 900 s, session token"]
    assert.equal(v.token, at_vector_time(v, "dsql_token", { host = v.host, user = "admin" }))
  end)

  it("gives botocore's 3600 s tokens", function()
    local v = V["dsql DbConnect, 3600 s, session token"]
    assert.equal(v.token, at_vector_time(v, "dsql_token", { host = v.host, region = v.region, expires_in = 3600 }))
    v = V["dsql DbConnectAdmin, 3600 s, long-term keys"]
    assert.equal(v.token, at_vector_time(v, "dsql_token", { host = v.host, admin = true, expires_in = 3600 }))
  end)
end)

describe("elasticache_token", function()
  local function token(args)
    local tok, err, expires_at = rds.elasticache_token(args)
    assert.is_nil(err)
    assert.is_string(tok)
    return tok, expires_at
  end

  it("signs with the frozen environment credentials, 900 s, and tells when it expires", function()
    local before = os.time()
    local tok, expires_at = token { cache_name = "frozen-env", user = "u1", region = "us-east-1" }
    assert.truthy(tok:find("^frozen%-env/%?Action=connect&User=u1&X%-Amz%-Algorithm=AWS4%-HMAC%-SHA256&"))
    assert.truthy(credential_scope(tok):find("^" .. test_env.access_key_id .. "/%d+/us%-east%-1/elasticache/aws4_request$"))
    assert.equal("900", param(tok, "X%-Amz%-Expires"))
    assert.is_nil(param(tok, "X%-Amz%-Security%-Token"))
    assert.is_number(expires_at)
    assert.is_true(expires_at >= before + 899 and expires_at <= os.time() + 900)
  end)

  it("is the token sign_token gives for the same inputs and second", function()
    local tok = token { cache_name = "Rederive-Me", user = "u2", endpoint = "rederive-me-x7ab2c.serverless.use1.cache.amazonaws.com" }
    assert.equal(tok, rds.sign_token { kind = "elasticache", cache_name = "rederive-me", user = "u2", region = "us-east-1",
      serverless = true, access_key_id = test_env.access_key_id, secret_access_key = test_env.secret_access_key,
      time = signed_at(tok) })
  end)

  it("is cached, keyed by cache name, user, serverless and service", function()
    local args = { cache_name = "cached", user = "cu", region = "us-east-1" }
    local a, exp_a = token(args)
    next_second()
    local b, exp_b = token(args)
    assert.equal(a, b)
    assert.equal(exp_a, exp_b)
    for k, x in pairs { cache_name = "cached2", user = "cu2", serverless = true, service = "memorydb", region = "eu-west-1" } do
      local other = { cache_name = "cached", user = "cu", region = "us-east-1" }
      other[k] = x
      local c = token(other)
      assert.not_equal(a, c, k)
      assert.not_equal(param(a, "X%-Amz%-Date"), param(c, "X%-Amz%-Date"), k) -- a new signature, not a cached one
    end
  end)

  describe("region", function()
    -- ElastiCache names carry AWS's short region code (us-east-1 -> use1,
    -- ap-southeast-2 -> apse2, cn-north-1 -> cnn1, us-gov-west-1 -> usgw1)
    -- as the label before "cache"; MemoryDB names and DSQL hosts the full one.
    local cases = {
      { "my-cache-x7ab2c.serverless.use1.cache.amazonaws.com", "us-east-1" },
      { "my-cache-x7ab2c.serverless.euc1.cache.amazonaws.com", "eu-central-1" },
      { "my-cache-x7ab2c.serverless.apne1.cache.amazonaws.com", "ap-northeast-1" },
      { "clustercfg.my-cluster.x7ab2c.apse2.cache.amazonaws.com", "ap-southeast-2" },
      { "my-cluster.x7ab2c.clustercfg.usw2.cache.amazonaws.com", "us-west-2" },
      { "master.my-group.x7ab2c.cac1.cache.amazonaws.com", "ca-central-1" },
      { "replica.my-group.x7ab2c.euw2.cache.amazonaws.com", "eu-west-2" },
      { "my-group-0001-001.my-group.x7ab2c.sae1.cache.amazonaws.com", "sa-east-1" },
      { "my-group.x7ab2c.ng.0001.aps1.cache.amazonaws.com", "ap-south-1" },
      { "my-group-ro.x7ab2c.ng.0001.use2.cache.amazonaws.com", "us-east-2" },
      { "my-group-0001-001.x7ab2c.0001.eun1.cache.amazonaws.com", "eu-north-1" },
      { "replica.my-group.x7ab2c.cnn1.cache.amazonaws.com.cn", "cn-north-1" },
      { "replica.my-group.x7ab2c.cnnw1.cache.amazonaws.com.cn", "cn-northwest-1" },
      { "master.my-group.x7ab2c.usgw1.cache.amazonaws.com", "us-gov-west-1" },
      { "MASTER.MY-GROUP.X7AB2C.USE1.CACHE.AMAZONAWS.COM", "us-east-1" },
    }
    for _, c in ipairs(cases) do
      it("of " .. c[1] .. " is " .. c[2], function()
        assert.equal(c[2], scope_region(token { cache_name = "c", user = "u", endpoint = c[1] }))
      end)
    end

    local memorydb = {
      { "clustercfg.my-memorydb.x7ab2c.memorydb.us-east-1.amazonaws.com", "us-east-1" },
      { "my-memorydb.x7ab2c.clustercfg.memorydb.eu-west-1.amazonaws.com", "eu-west-1" },
      { "my-memorydb-0001-001.my-memorydb.x7ab2c.memorydb.ap-southeast-1.amazonaws.com", "ap-southeast-1" },
      { "clustercfg.my-memorydb.x7ab2c.memorydb.cn-north-1.amazonaws.com.cn", "cn-north-1" },
    }
    for _, c in ipairs(memorydb) do
      it("of memorydb's " .. c[1] .. " is " .. c[2], function()
        local tok = token { cache_name = "c", user = "u", service = "memorydb", endpoint = c[1] }
        assert.equal(c[2], scope_region(tok))
        assert.truthy(credential_scope(tok):find("/memorydb/aws4_request$"))
      end)
    end

    it("given explicitly wins over the endpoint's", function()
      assert.equal("eu-south-1", scope_region(token { cache_name = "c", user = "u", region = "eu-south-1",
        endpoint = "my-cache-x7ab2c.serverless.use1.cache.amazonaws.com" }))
    end)

    it("is an error naming region when neither it nor the endpoint gives one", function()
      for _, args in ipairs {
        { cache_name = "c", user = "u" },
        { cache_name = "c", user = "u", endpoint = "redis.internal.example.com" },
      } do
        local tok, err = rds.elasticache_token(args)
        assert.is_nil(tok)
        assert.truthy(err:find("cannot tell the aws region", 1, true), err)
        assert.truthy(err:find("region", 1, true))
      end
    end)

    it("falls back to the frozen AWS_REGION", function()
      local out = lua_process.run([[
        local rds = require "kong_rds_iam"
        io.write((assert(rds.elasticache_token { cache_name = "c", user = "u", endpoint = "redis.internal" })))
      ]], { AWS_ACCESS_KEY_ID = "AKIDX", AWS_SECRET_ACCESS_KEY = "s", AWS_EC2_METADATA_DISABLED = "true",
        AWS_REGION = "ap-northeast-3" })
      assert.truthy(out:find("%%2Fap%-northeast%-3%%2Felasticache%%2Faws4_request"), out)
    end)
  end)

  describe("serverless", function()
    it("defaults from .serverless. in the endpoint", function()
      local tok = token { cache_name = "c", user = "u", endpoint = "c-x7ab2c.serverless.use1.cache.amazonaws.com" }
      assert.equal("ServerlessCache", param(tok, "ResourceType"))
      tok = token { cache_name = "c", user = "u", endpoint = "master.c.x7ab2c.use1.cache.amazonaws.com" }
      assert.is_nil(param(tok, "ResourceType"))
      tok = token { cache_name = "c", user = "u", region = "us-east-1" }
      assert.is_nil(param(tok, "ResourceType"))
    end)

    it("given explicitly wins over the endpoint", function()
      local tok = token { cache_name = "c", user = "u", serverless = false,
        endpoint = "c-x7ab2c.serverless.use1.cache.amazonaws.com" }
      assert.is_nil(param(tok, "ResourceType"))
      tok = token { cache_name = "c", user = "u", serverless = true, endpoint = "master.c.x7ab2c.use1.cache.amazonaws.com" }
      assert.equal("ServerlessCache", param(tok, "ResourceType"))
    end)
  end)

  it("signs service elasticache by default, memorydb when asked", function()
    assert.truthy(credential_scope(token { cache_name = "c", user = "u", region = "us-east-1" })
      :find("/elasticache/aws4_request$"))
    assert.truthy(credential_scope(token { cache_name = "c", user = "u", region = "us-east-1", service = "memorydb" })
      :find("/memorydb/aws4_request$"))
  end)

  it("raises for a non-table argument", function()
    assert.has_error(function() rds.elasticache_token() end,
      "bad argument #1 to 'elasticache_token' (table expected, got nil)")
    assert.has_error(function() rds.elasticache_token("c") end,
      "bad argument #1 to 'elasticache_token' (table expected, got string)")
  end)

  it("refuses missing or wrong arguments, naming them", function()
    fails_naming("cache_name", function() return rds.elasticache_token { user = "u", region = "us-east-1" } end)
    fails_naming("cache_name", function() return rds.elasticache_token { cache_name = "", user = "u", region = "us-east-1" } end)
    fails_naming("cache_name", function() return rds.elasticache_token { cache_name = 7, user = "u", region = "us-east-1" } end)
    fails_naming("user", function() return rds.elasticache_token { cache_name = "c", region = "us-east-1" } end)
    fails_naming("user", function() return rds.elasticache_token { cache_name = "c", user = "caf\233", region = "us-east-1" } end)
    fails_naming("service", function() return rds.elasticache_token { cache_name = "c", user = "u", region = "us-east-1", service = "redis" } end)
    fails_naming("region", function() return rds.elasticache_token { cache_name = "c", user = "u", region = "US-EAST-1" } end)
    fails_naming("serverless", function() return rds.elasticache_token { cache_name = "c", user = "u", region = "us-east-1", serverless = "maybe" } end)
  end)

  it("never puts the secret into an error", function()
    local _, err = rds.elasticache_token { cache_name = "c", user = "u" }
    assert.falsy(err:find(test_env.secret_access_key, 1, true))
  end)
end)

describe("dsql_token", function()
  local HOST = "abc0def1baz2quux3quuux4.dsql.us-east-1.on.aws"
  local function token(args)
    local tok, err, expires_at = rds.dsql_token(args)
    assert.is_nil(err)
    assert.is_string(tok)
    return tok, expires_at
  end

  it("signs host/?Action=DbConnect without port, service dsql, 900 s", function()
    local before = os.time()
    local tok, expires_at = token { host = HOST, user = "app" }
    assert.truthy(tok:find("^" .. HOST:gsub("%p", "%%%0") .. "/%?Action=DbConnect&X%-Amz%-Algorithm=AWS4%-HMAC%-SHA256&"))
    assert.truthy(credential_scope(tok):find("^" .. test_env.access_key_id .. "/%d+/us%-east%-1/dsql/aws4_request$"))
    assert.equal("900", param(tok, "X%-Amz%-Expires"))
    assert.is_nil(param(tok, "DBUser"))
    assert.is_true(expires_at >= before + 899 and expires_at <= os.time() + 900)
  end)

  it("is the token sign_token gives for the same inputs and second", function()
    local tok = token { host = HOST, user = "admin", expires_in = 1800 }
    assert.equal(tok, rds.sign_token { kind = "dsql", host = HOST, region = "us-east-1", admin = true, expires_in = 1800,
      access_key_id = test_env.access_key_id, secret_access_key = test_env.secret_access_key, time = signed_at(tok) })
  end)

  describe("admin", function()
    it("defaults from the user: admin signs DbConnectAdmin, anyone else (or no one) DbConnect", function()
      assert.equal("DbConnectAdmin", param(token { host = HOST, user = "admin" }, "Action"))
      assert.equal("DbConnect", param(token { host = HOST, user = "app" }, "Action"))
      assert.equal("DbConnect", param(token { host = HOST, user = "Admin" }, "Action"))
      assert.equal("DbConnect", param(token { host = HOST }, "Action"))
    end)

    it("given explicitly wins over the user", function()
      assert.equal("DbConnectAdmin", param(token { host = HOST, user = "app", admin = true }, "Action"))
      assert.equal("DbConnect", param(token { host = HOST, user = "admin", admin = false }, "Action"))
    end)
  end)

  describe("expires_in", function()
    it("takes 1 to 604800 s, and expires_at follows it", function()
      local before = os.time()
      local tok, expires_at = token { host = HOST, expires_in = 1 }
      assert.equal("1", param(tok, "X%-Amz%-Expires"))
      assert.is_true(expires_at >= before + 1 and expires_at <= os.time() + 1)
      tok, expires_at = token { host = HOST, expires_in = 604800 }
      assert.equal("604800", param(tok, "X%-Amz%-Expires"))
      assert.is_true(expires_at >= before + 604800 and expires_at <= os.time() + 604800)
    end)

    it("outside 1..604800 is nil, err", function()
      for _, bad in ipairs { 0, -1, 604801, 1.5, 1e300, 0 / 0 } do
        local tok, err = rds.dsql_token { host = HOST, expires_in = bad }
        assert.is_nil(tok, tostring(bad))
        assert.truthy(err:find("^expires_in"), err)
        assert.truthy(err:find("604800", 1, true), err)
        tok, err = rds.sign_token { kind = "dsql", host = HOST, region = "us-east-1", expires_in = bad,
          access_key_id = "A", secret_access_key = "s" }
        assert.is_nil(tok, tostring(bad))
        assert.truthy(err:find("^expires_in"), err)
      end
    end)

    it("keys the cache, as does the action", function()
      local a = token { host = HOST, user = "app", expires_in = 900 }
      local b = token { host = HOST, user = "app", expires_in = 901 }
      assert.equal("901", param(b, "X%-Amz%-Expires"))
      assert.not_equal(param(a, "Action"), param(token { host = HOST, user = "admin", expires_in = 900 }, "Action"))
    end)
  end)

  describe("region", function()
    for _, c in ipairs {
      { "abc0def1baz2quux3quuux4.dsql.us-east-1.on.aws", "us-east-1" },
      { "abc0def1baz2quux3quuux4.dsql.ap-northeast-1.on.aws", "ap-northeast-1" },
      { "abc0def1baz2quux3quuux4.dsql.eu-west-2.on.aws", "eu-west-2" },
    } do
      it("of " .. c[1] .. " is " .. c[2], function()
        assert.equal(c[2], scope_region(token { host = c[1] }))
      end)
    end

    it("given explicitly wins over the host's", function()
      assert.equal("eu-north-1", scope_region(token { host = HOST, region = "eu-north-1" }))
    end)

    it("is an error naming region when nothing gives it", function()
      local tok, err = rds.dsql_token { host = "dsql.internal.example.com" }
      assert.is_nil(tok)
      assert.truthy(err:find("cannot tell the aws region", 1, true), err)
    end)
  end)

  it("raises for a non-table argument", function()
    assert.has_error(function() rds.dsql_token() end, "bad argument #1 to 'dsql_token' (table expected, got nil)")
    assert.has_error(function() rds.dsql_token(HOST) end, "bad argument #1 to 'dsql_token' (table expected, got string)")
  end)

  it("refuses missing or wrong arguments, naming them", function()
    fails_naming("host", function() return rds.dsql_token { region = "us-east-1" } end)
    fails_naming("host", function() return rds.dsql_token { host = "a b.example", region = "us-east-1" } end)
    fails_naming("admin", function() return rds.dsql_token { host = HOST, admin = "yes" } end)
    fails_naming("user", function() return rds.dsql_token { host = HOST, user = 5 } end)
    fails_naming("kind", function() return rds.sign_token { kind = "kafka", host = HOST, region = "us-east-1",
      access_key_id = "A", secret_access_key = "s" } end)
  end)
end)

describe("connect() with pg_iam_auth_service = dsql, to the emulator in DSQL mode", function()
  local e

  lazy_setup(function()
    e = assert(emu.start { service = "dsql" })
    assert(e:add_key(test_env.access_key_id, test_env.secret_access_key))
  end)

  lazy_teardown(function()
    if e then e:stop() end
  end)

  local function conf(user, extra)
    local c = { pg_host = e.host, pg_port = e.port, pg_database = e.db, pg_user = user, pg_iam_auth = true,
      pg_iam_auth_service = "dsql", pg_iam_auth_region = e.region, pg_ssl_cafile = e.ca, pg_timeout = 10000 }
    for k, x in pairs(extra or {}) do c[k] = x end
    return c
  end

  local function current_user(c)
    local conn, err = rds.connect(c)
    assert.is_nil(err)
    local rows = assert(conn:query("select current_user as u"))
    conn:close()
    return rows[1].u
  end

  local function accepted(user)
    return e:log():find(('user="%s" akid="%s" ACCEPT'):format(user, test_env.access_key_id), 1, true) ~= nil
  end

  it("logs in as admin with a DbConnectAdmin token", function()
    e:clear_log()
    assert.equal("admin", current_user(conf("admin")))
    assert.is_true(accepted("admin"), e:log())
  end)

  it("logs in as another role with a DbConnect token", function()
    e:clear_log()
    assert.equal("iam_user", current_user(conf("iam_user")))
    assert.is_true(accepted("iam_user"), e:log())
  end)

  it("is needed: an RDS token is refused by the DSQL-mode server", function()
    e:clear_log()
    local c = conf("iam_user")
    c.pg_iam_auth_service = nil
    local conn, err = rds.connect(c)
    assert.is_nil(conn)
    assert.truthy(err:find("PAM authentication failed", 1, true), err)
    assert.truthy(e:log():find("REJECT", 1, true))
    assert.is_false(accepted("iam_user"))
  end)

  it("refuses an unknown pg_iam_auth_service, naming the key", function()
    local conn, err = rds.connect(conf("iam_user", { pg_iam_auth_service = "s3" }))
    assert.is_nil(conn)
    assert.truthy(err:find("pg_iam_auth_service", 1, true), err)
  end)
end)
