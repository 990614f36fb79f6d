-- kong_rds_iam.redis, the lua-resty-redis helper for ElastiCache / MemoryDB
-- IAM: its pool names (the 11-hour bucket, injected clock) and a test of its
-- wiring against a local redis-server. A local server cannot verify SigV4: its
-- ACL user simply has, as password, the token rds.elasticache_token gives, so
-- this checks that the helper asks for the right token, sends `AUTH user
-- token` on a new physical connection only, and never pools a failed one.
-- The client is spec/support/resp_client.lua, a LuaSocket stand-in with
-- lua-resty-redis's method names and cosocket pool behaviour.
local redis_iam = require "kong_rds_iam.redis"
local rds = require "kong_rds_iam"
local stub = require "spec.support.resp_client"
local redis_server = require "spec.support.redis_server"

local BUCKET = redis_iam.BUCKET_SECONDS

describe("kong_rds_iam.redis pool names", function()
  local opts = { host = "my-cache-x7ab2c.serverless.use1.cache.amazonaws.com", port = 6379,
    cache_name = "my-cache", user = "iam-user-01" }
  local t0 = 4242 * BUCKET -- a bucket boundary

  it("use an 11-hour bucket", function()
    assert.equal(11 * 3600, BUCKET)
  end)

  it("change across an 11-hour boundary, and not within a bucket", function()
    local before, at, last = redis_iam.pool_name(opts, t0 - 1), redis_iam.pool_name(opts, t0),
      redis_iam.pool_name(opts, t0 + BUCKET - 1)
    assert.not_equal(before, at)
    assert.equal(at, last)
    assert.not_equal(at, redis_iam.pool_name(opts, t0 + BUCKET))
  end)

  it("follow an injected clock", function()
    local now = t0 - 1
    local o = { host = opts.host, cache_name = opts.cache_name, user = opts.user, clock = function() return now end }
    local a = redis_iam.pool_name(o)
    assert.equal(redis_iam.pool_name(opts, t0 - 1), a)
    now = t0
    assert.not_equal(a, redis_iam.pool_name(o))
  end)

  it("read ngx.time() when there is an ngx, else os.time()", function()
    local saved = rawget(_G, "ngx")
    _G.ngx = { time = function() return t0 end }
    local with_ngx = redis_iam.pool_name(opts)
    _G.ngx = saved
    assert.equal(redis_iam.pool_name(opts, t0), with_ngx)
    assert.equal(redis_iam.pool_name(opts, os.time()), redis_iam.pool_name(opts))
  end)

  it("differ by user, cache, service, host, port and TLS", function()
    local base = redis_iam.pool_name(opts, t0)
    for k, v in pairs { user = "iam-user-02", cache_name = "other-cache", service = "memorydb",
      host = "other.serverless.use1.cache.amazonaws.com", port = 6380, ssl = false, ssl_verify = true,
      server_name = "sni.example" } do
      local o = {}
      for k2, v2 in pairs(opts) do o[k2] = v2 end
      o[k] = v
      assert.not_equal(base, redis_iam.pool_name(o, t0), k)
    end
  end)

  it("do not mix up values that hold the separators", function()
    local a = redis_iam.pool_name({ host = "h", cache_name = "c", user = "a@b" }, t0)
    local b = redis_iam.pool_name({ host = "b@h", cache_name = "c", user = "a" }, t0)
    assert.not_equal(a, b)
  end)

  it("take opts.pool as the base, keeping the bucket", function()
    local o = { host = opts.host, cache_name = opts.cache_name, user = opts.user, pool = "my-pool" }
    assert.equal("my-pool#" .. math.floor(t0 / BUCKET), redis_iam.pool_name(o, t0))
  end)

  it("raise for wrong arguments", function()
    assert.has_error(function() redis_iam.pool_name("x") end, "bad argument #1 to 'pool_name' (table expected, got string)")
    assert.has_error(function() redis_iam.pool_name { host = "h", cache_name = "c" } end)
    assert.has_error(function() redis_iam.connect(stub.new(), { host = "h", user = "u" }) end)
    assert.has_error(function() redis_iam.connect(nil, opts) end)
  end)
end)

describe("kong_rds_iam.redis.connect hands the client", function()
  it("the pool name, TLS on and SNI = host by default", function()
    local seen
    local fake = { connect = function(_, host, port, o) seen = { host = host, port = port, opts = o } return nil, "refused" end }
    local opts = { host = "my-cache-x7ab2c.serverless.use1.cache.amazonaws.com", cache_name = "my-cache", user = "u" }
    local ok, err = redis_iam.connect(fake, opts)
    assert.is_nil(ok)
    assert.equal("failed to connect to redis: refused", err)
    assert.equal(opts.host, seen.host)
    assert.equal(6379, seen.port)
    assert.equal(redis_iam.pool_name(opts), seen.opts.pool)
    assert.is_true(seen.opts.ssl)
    assert.equal(opts.host, seen.opts.server_name)
  end)

  it("ssl = false, ssl_verify, server_name, pool_size and backlog as given", function()
    local seen
    local fake = { connect = function(_, _, _, o) seen = o return nil, "refused" end }
    redis_iam.connect(fake, { host = "h", port = 7000, cache_name = "c", user = "u", ssl = false, pool_size = 7, backlog = 3 })
    assert.is_false(seen.ssl)
    assert.is_nil(seen.server_name)
    assert.equal(7, seen.pool_size)
    assert.equal(3, seen.backlog)
    redis_iam.connect(fake, { host = "h", cache_name = "c", user = "u", ssl_verify = true, server_name = "sni" })
    assert.is_true(seen.ssl_verify)
    assert.equal("sni", seen.server_name)
  end)
end)

describe("kong_rds_iam.redis wiring against a local redis-server (the ACL password is the token; no SigV4 check)", function()
  local server, admin
  local REGION = "us-east-1"

  local function opts(user, extra)
    local o = { host = "127.0.0.1", port = server.port, ssl = false, cache_name = "wiring-cache", user = user,
      region = REGION }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
  end

  -- The token the helper will send: elasticache_token for the same inputs
  -- (cached, so the helper's call a moment later gets the same one).
  local function expected_token(o)
    return assert(rds.elasticache_token { cache_name = o.cache_name, user = o.user, endpoint = o.host,
      region = o.region, serverless = o.serverless, service = o.service })
  end

  local function acl_user(user, password)
    assert.equal("OK", admin:acl("SETUSER", user, "reset", "on", ">" .. password, "~*", "+@all"))
  end

  lazy_setup(function()
    server = assert(redis_server.start())
    admin = stub.new()
    assert(admin:connect("127.0.0.1", server.port, { pool = "admin" }))
  end)

  lazy_teardown(function()
    stub.reset()
    if admin then admin:close() end
    if server then server:stop() end
  end)

  after_each(function()
    stub.reset() -- closes the idle pooled connections (admin is not pooled)
  end)

  it("authenticates a new connection with AUTH user token, and sends nothing on a pooled one", function()
    local o = opts("iam-user-01")
    acl_user(o.user, expected_token(o))
    local red = stub.new()
    local reused, err = redis_iam.connect(red, o)
    assert.is_nil(err)
    assert.equal(0, reused)
    assert.same({ "auth" }, red.sent)
    assert.equal(o.user, red:acl("WHOAMI"))
    assert.equal("OK", red:set("wiring", "yes"))
    assert(red:set_keepalive())

    local red2 = stub.new()
    assert.equal(1, (redis_iam.connect(red2, o)))
    assert.same({}, red2.sent)
    assert.equal(o.user, red2:acl("WHOAMI"))
    assert.equal("yes", red2:get("wiring"))
    assert(red2:set_keepalive())
  end)

  it("opens and authenticates a new connection in the next 11-hour bucket", function()
    local now = 1000 * BUCKET - 1
    local o = opts("iam-user-02", { clock = function() return now end })
    acl_user(o.user, expected_token(o))
    local old_pool = redis_iam.pool_name(o)
    local red = stub.new()
    assert.equal(0, (redis_iam.connect(red, o)))
    assert(red:set_keepalive())
    assert.equal(1, stub.idle(old_pool))

    now = now + 1
    local red2 = stub.new()
    local reused, err = redis_iam.connect(red2, o)
    assert.is_nil(err)
    assert.equal(0, reused)
    assert.same({ "auth" }, red2.sent)
    assert.not_equal(old_pool, red2.pool)
    assert.equal(o.user, red2:acl("WHOAMI"))
    assert.equal(1, stub.idle(old_pool)) -- the old bucket's connection is left to its keepalive timeout
    red2:close()
  end)

  it("returns the server's refusal and closes the connection, never pooling it", function()
    local o = opts("iam-user-03")
    acl_user(o.user, "not-the-token")
    local red = stub.new()
    local reused, err = redis_iam.connect(red, o)
    assert.is_nil(reused)
    assert.truthy(err:find("WRONGPASS", 1, true), err)
    assert.truthy(err:find("^redis iam auth failed: "), err)
    assert.is_nil(red.sock)
    assert.is_nil(red:set_keepalive())
    assert.equal(0, stub.idle(redis_iam.pool_name(o)))
  end)

  it("sends no AUTH when there is no token, and closes the connection", function()
    local o = opts("iam-user-04")
    o.region = nil -- 127.0.0.1 names no region, and the busted process has no AWS_REGION
    local red = stub.new()
    local reused, err = redis_iam.connect(red, o)
    assert.is_nil(reused)
    assert.truthy(err:find("cannot tell the aws region", 1, true), err)
    assert.same({}, red.sent)
    assert.is_nil(red.sock)
  end)

  it("asks for the token of the cache, user, serverless flag and service given", function()
    local o = opts("iam-user-05", { serverless = true, service = "memorydb" })
    local token = expected_token(o)
    assert.equal("ServerlessCache", token:match("[?&]ResourceType=([^&]*)"))
    assert.truthy(token:find("%%2Fmemorydb%%2Faws4_request"))
    acl_user(o.user, token)
    local red = stub.new()
    assert.equal(0, (redis_iam.connect(red, o)))
    assert.equal(o.user, red:acl("WHOAMI"))
    red:close()
  end)
end)
