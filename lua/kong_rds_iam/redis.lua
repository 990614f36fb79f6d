-- IAM authentication to ElastiCache / MemoryDB (Valkey 7.2+, Redis OSS 7.0+)
-- for lua-resty-redis, or any client with its method names (`connect(host,
-- port, opts)`, `get_reused_times()`, `auth(user, password)`, `close()`).
--
--   local redis = require "resty.redis"
--   local redis_iam = require "kong_rds_iam.redis"
--   local red = redis:new()
--   red:set_timeouts(1000, 1000, 1000)
--   local reused, err = redis_iam.connect(red, {
--     host = "my-cache-x7ab2c.serverless.use1.cache.amazonaws.com", port = 6379,
--     cache_name = "my-cache", user = "my-iam-user",
--   })
--   if not reused then return nil, err end
--   -- ... red:get(...) ...
--   red:set_keepalive(10000, 100)
--
-- A new physical connection (get_reused_times() == 0) sends `AUTH user token`
-- with a token from rds.elasticache_token (cached as RDS tokens are); a pooled
-- one is already authenticated and sends nothing. ElastiCache closes an IAM
-- connection 12 hours after its AUTH, and a pooled cosocket's age is unknown,
-- so the pool name carries an 11-hour time bucket: a connection is only ever
-- taken from the pool of the bucket it was opened in, and none outlives it by
-- more than one use (keep a connection out of the pool for less than an hour).
-- Connections of an older bucket idle in their pool until its keepalive
-- timeout closes them.
--
-- Plain Lua over the public API; it needs no nginx (the clock is ngx.time()
-- when there is one, else os.time()).
local rds = require "kong_rds_iam"

local M = {}

--- Seconds of one pool-name time bucket (11 h: a bucket's last connection is
--- still under ElastiCache's 12 h limit an hour later).
M.BUCKET_SECONDS = 11 * 3600

local function clock()
  local ngx = rawget(_G, "ngx")
  if type(ngx) == "table" and type(ngx.time) == "function" then
    return ngx.time()
  end
  return os.time()
end

-- Percent-escapes the pool name's separators in a free-form value.
local function esc(s)
  return (tostring(s):gsub("[%%/@:#|]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function check(opts, fn)
  if type(opts) ~= "table" then
    error(("bad argument #%d to '%s' (table expected, got %s)"):format(fn == "connect" and 2 or 1, fn, type(opts)), 3)
  end
  for _, k in ipairs { "host", "user", "cache_name" } do
    if type(opts[k]) ~= "string" or opts[k] == "" then
      error(("%s: opts.%s must be a non-empty string, got %s"):format(fn, k, type(opts[k])), 3)
    end
  end
  if opts.port ~= nil and type(opts.port) ~= "number" then
    error(("%s: opts.port must be a number, got %s"):format(fn, type(opts.port)), 3)
  end
  if opts.clock ~= nil and type(opts.clock) ~= "function" then
    error(("%s: opts.clock must be a function, got %s"):format(fn, type(opts.clock)), 3)
  end
end

local function tls_part(opts)
  if opts.ssl == false then
    return "plain"
  end
  return "tls:" .. esc(opts.server_name or opts.host) .. (opts.ssl_verify and ":verify" or "")
end

--- name = pool_name(opts, now?)
-- The cosocket pool name for opts at Unix time `now` (default opts.clock(),
-- else ngx.time() / os.time()): everything that makes a connection's
-- authentication (user, cache, service, host, port, TLS) and the 11-hour
-- bucket. opts.pool, when given, replaces all but the bucket.
function M.pool_name(opts, now)
  check(opts, "pool_name")
  now = now or (opts.clock or clock)()
  local base = opts.pool or ("kong_rds_iam.redis|%s@%s:%d|%s|%s|%s"):format(
    esc(opts.user), esc(opts.host), opts.port or 6379, esc(opts.cache_name:lower()),
    opts.service or "elasticache", tls_part(opts))
  return ("%s#%d"):format(base, math.floor(now / M.BUCKET_SECONDS))
end

--- reused, err = connect(red, opts)
-- Connects `red` and, on a new physical connection, authenticates it with
-- IAM. opts: host (the endpoint), port (6379), cache_name and user (the
-- ElastiCache user whose id equals its name), region / endpoint / serverless /
-- service as rds.elasticache_token takes them (endpoint defaults to host, so
-- the region and serverless come from an AWS endpoint name), ssl (default
-- true: IAM needs TLS), ssl_verify, server_name (default host), pool (a name
-- to use instead of the computed one), pool_size, backlog, clock (a function
-- returning Unix seconds, for the bucket). Returns get_reused_times() (0 for a
-- new connection, which then is authenticated), or nil and an error; on an
-- error after the TCP connect the connection is closed, never pooled.
function M.connect(red, opts)
  if type(red) ~= "table" and type(red) ~= "userdata" then
    error(("bad argument #1 to 'connect' (redis object expected, got %s)"):format(type(red)), 2)
  end
  check(opts, "connect")
  local ssl = opts.ssl ~= false
  local ok, err = red:connect(opts.host, opts.port or 6379, {
    pool = M.pool_name(opts),
    pool_size = opts.pool_size,
    backlog = opts.backlog,
    ssl = ssl,
    ssl_verify = ssl and opts.ssl_verify or nil,
    server_name = ssl and (opts.server_name or opts.host) or nil,
  })
  if not ok then
    return nil, "failed to connect to redis: " .. tostring(err)
  end
  local reused
  reused, err = red:get_reused_times()
  if not reused then
    red:close()
    return nil, "failed to get reused times: " .. tostring(err)
  end
  if reused > 0 then
    return reused
  end
  local token
  token, err = rds.elasticache_token {
    cache_name = opts.cache_name, user = opts.user, endpoint = opts.endpoint or opts.host,
    region = opts.region, serverless = opts.serverless, service = opts.service,
  }
  if not token then
    red:close()
    return nil, err
  end
  ok, err = red:auth(opts.user, token)
  if not ok then
    red:close()
    return nil, "redis iam auth failed: " .. tostring(err)
  end
  return 0
end

return M
