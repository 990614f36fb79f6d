--- kong_rds_iam.explain: what the module would do for a conf, and what
-- could make RDS refuse the IAM login, as one table without a secret in it;
-- the same for an ElastiCache / MemoryDB token request (a table with
-- cache_name, as rds.elasticache_token takes it) and a refused AUTH.
--
--   local explain = require "kong_rds_iam.explain"
--   local report = explain.explain(rds, conf, mode, { connect = true })
--   local report = explain.explain(rds, { cache_name = "c", user = "u", endpoint = host })
--
-- RDS answers every IAM mistake with the same `PAM authentication failed`,
-- so the causes come from a fixed catalogue (explain.CAUSES), each listed
-- only when its condition, checked here, holds. The fields are described in
-- README.md (### explain).
--
-- Never in the table: the token, the secret key, the session token, the
-- password. The access key id appears masked but for its last 4 characters.
-- The token is asked for (rds.token) only to read its X-Amz-Date, expiry,
-- user, host and credential scope; it is not kept.
--
-- The facts come from rds._facts(conf, mode) when the module has it, else
-- they are read here from rds.settings, rds.credentials_source and the token.

local kconf = require "kong_rds_iam.conf"

local type, pairs, ipairs, tostring, tonumber, format, concat, rawequal, setmetatable, getmetatable, pcall =
  type, pairs, ipairs, tostring, tonumber, string.format, table.concat, rawequal, setmetatable, getmetatable, pcall
local now = (ngx and ngx.time) or os.time

local M = {}

--- How long an RDS IAM token is valid (X-Amz-Expires), s.
M.TOKEN_LIFE = 900
--- A clock offset above this (s) is named as a cause.
M.MAX_CLOCK_OFFSET = 60

--- The membership check run after a live connect.
M.MEMBERSHIP_SQL = "select current_user as login_user, (select rolname from pg_roles where "
  .. "pg_has_role(current_user, oid, 'member') and rolname = 'rds_iam') as rds_iam_role"

--- The catalogue of causes, by id, in the order they are listed. `%s` are
--- filled with the values that made the condition hold (never a secret).
--- `cache`: the text for an ElastiCache / MemoryDB request, where it differs.
M.CAUSES = {
  { id = "iam_off", text = "IAM authentication is off for this side (%s), so the login uses pg_password, not a token." },
  { id = "vault_reference", text = "%s" },
  { id = "no_credentials", text = "AWS credentials could not be fetched, so no token can be signed (see credentials_error)." },
  { id = "token_failed", text = "No token could be signed (see token_error)." },
  { id = "cache_region_unknown", text = "No region for the token: give region or an endpoint host name (or set AWS_REGION before the module is loaded)." },
  { id = "credentials_expire", text = "The AWS credentials expire in %d s, within a token's 900 s life: RDS refuses a token whose credentials expired.",
    cache = "The AWS credentials expire in %d s, within a token's 900 s life: AUTH refuses a token whose credentials expired." },
  { id = "clock_offset", text = "This machine's clock is %d s off AWS's (more than 60 s); RDS refuses tokens dated more than 5 minutes off.",
    cache = "This machine's clock is %d s off AWS's (more than 60 s); AWS refuses SigV4 signatures dated more than 5 minutes off." },
  { id = "region_mismatch", text = "The token is signed for %s (%s) but the host name is in %s.",
    cache = "The token is signed for %s (%s) but the endpoint is in %s." },
  { id = "cache_name_endpoint", text = "cache_name %s looks like an endpoint host name: the token must name the cache (replication group, cluster or serverless cache), not its endpoint." },
  { id = "cache_user_id", text = "user %s is not a user id as %s stores it: lowercase letters, digits and hyphens, starting with a letter." },
  { id = "serverless_mismatch", text = "serverless is %s but the endpoint %s %s .serverless. label: ResourceType=ServerlessCache must match the cache's kind." },
  { id = "service_mismatch", text = "The endpoint %s is %s's, but the token is signed for service %s." },
  { id = "signing_host", text = "The token is signed for %s, %s, and pg_iam_auth_host is not set: RDS only accepts tokens signed for its endpoint name." },
  { id = "user_mismatch", text = "The token is signed for user %s but the login is as %s." },
  { id = "rds_iam_member", text = "%s" },
  { id = "tls_off", text = "TLS is off (pg_ssl): the password crosses the network readable, and RDS with rds.force_ssl refuses the login." },
  { id = "tls_unverified", text = "The server certificate is not verified (pg_ssl_verify off): anyone on the path can pose as the database and take the token or password." },
}
local ORDER, TEXT, CACHE_TEXT = {}, {}, {}
for i, c in ipairs(M.CAUSES) do ORDER[c.id], TEXT[c.id], CACHE_TEXT[c.id] = i, c.text, c.cache or c.text end

-- Arrays carry this metatable so that to_json writes an empty one as [].
local ARRAY = { __jsontype = "array" }
M.ARRAY = ARRAY
local function array(t) return setmetatable(t or {}, ARRAY) end

--- region = host_region(host): the region named in an RDS (or Aurora DSQL)
--- endpoint host name, or nil for any other host (a CNAME, an IP,
--- localhost): src/region.rs's rule, through the module.
function M.host_region(host)
  return require("kong_rds_iam")._host_region(host)
end

--- Whether `host` is an IP address (v4, or v6 with or without brackets).
function M.is_ip(host)
  if type(host) ~= "string" then return false end
  if host:match("^%d+%.%d+%.%d+%.%d+$") then return true end
  return host:find(":", 1, true) ~= nil
end

--- The access key id masked but for its last 4 characters.
function M.mask(akid)
  if type(akid) ~= "string" then return nil end
  if #akid <= 4 then return ("*"):rep(#akid) end
  return ("*"):rep(#akid - 4) .. akid:sub(-4)
end

local function url_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function utc_seconds(amz_date)
  local y, mo, d, h, mi, s = tostring(amz_date):match("^(%d%d%d%d)(%d%d)(%d%d)T(%d%d)(%d%d)(%d%d)Z$")
  if not y then return nil end
  -- days from the civil date (proleptic Gregorian), no os.time (local time)
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (mo + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)
end
M._utc_seconds = utc_seconds

--- What a token says about itself (no secret: no signature, no session
--- token, the key id masked): host, port, user (DBUser, or User in an
--- ElastiCache / MemoryDB token), action, resource_type, service and region
--- (of the credential scope), date (X-Amz-Date), signed_at (Unix s), expires
--- (X-Amz-Expires, s), access_key_id (masked), session_token (whether it
--- carries one).
function M.token_facts(token)
  if type(token) ~= "string" then return nil end
  -- RDS signs host:port, DSQL the host alone
  local host, port = token:match("^([^/?]+):(%d+)/%?")
  -- DSQL and ElastiCache / MemoryDB tokens: no port
  if not host then host = token:match("^([^/?:]+)/%?") end
  local function param(name)
    local v = token:match("[?&]" .. name .. "=([^&]*)")
    return v and url_decode(v)
  end
  local scope = param("X%-Amz%-Credential") or ""
  local akid, _, region, service = scope:match("^([^/]+)/(%d+)/([^/]+)/([^/]+)/aws4_request$")
  local date = param("X%-Amz%-Date")
  return {
    host = host,
    port = tonumber(port),
    user = param("DBUser") or param("User"), -- RDS, ElastiCache / MemoryDB
    action = param("Action"),
    resource_type = param("ResourceType"), -- ServerlessCache: a serverless cache's token
    service = service,
    region = region,
    date = date,
    signed_at = utc_seconds(date),
    expires = tonumber(param("X%-Amz%-Expires")),
    access_key_id = M.mask(akid),
    session_token = token:find("[?&]X%-Amz%-Security%-Token=") ~= nil,
  }
end

-- What the token `sign(...)` returns says about itself (M.token_facts),
-- with its expiry as the call gave it and seconds left at `t`; the token
-- itself is not kept. nil, err when none was signed.
-- What a token tells of the credentials that signed it: the key id, and
-- their expiry when it came before the token's own (the token's expiry is
-- the earlier of signing + lifetime and the credentials' expiry).
local function credentials_from_token(c, tf, t)
  if not (c and tf) then return end
  c.access_key_id = c.access_key_id or tf.access_key_id
  if not c.expires_at and tf.expires_at and tf.signed_at and tf.expires
    and tf.expires_at < tf.signed_at + tf.expires then
    c.expires_at = tf.expires_at
    c.expires_in = tf.expires_at - t
  end
end

local function signed_token_facts(t, sign, ...)
  local ok, token, err, expires_at = pcall(sign, ...)
  if not ok then return nil, tostring(token) end
  if not token then return nil, err end
  local tf = M.token_facts(token)
  tf.expires_at = expires_at
  tf.expires_in = expires_at and (expires_at - t) or nil
  return tf
end

local function copy_array(t)
  local out = array()
  if type(t) == "table" then for i, v in ipairs(t) do out[i] = v end
  elseif t ~= nil then out[1] = t end
  return out
end

-- The facts the Rust side gives (rds._facts), or nil, err.
local function rust_facts(rds, conf, mode)
  local f = rds._facts
  if type(f) ~= "function" then return nil end
  local ok, facts, err = pcall(f, conf, mode)
  if not ok then return nil, tostring(facts) end
  if type(facts) ~= "table" then return nil, err end
  return facts
end

-- ElastiCache / MemoryDB requests ---------------------------------------

--- service, region = cache_endpoint(endpoint): "elasticache" for a
--- `*.cache.amazonaws.com(.cn)` host name, "memorydb" for a
--- `*.memorydb.<region>.amazonaws.com(.cn)` one, else nil; and the region
--- it names (ElastiCache: its short code, e.g. use1), as
--- rds.elasticache_token reads it: src/service_tokens.rs's rule, through
--- the module.
function M.cache_endpoint(endpoint)
  return require("kong_rds_iam")._cache_endpoint(endpoint)
end

local CACHE_FIELDS = {
  { "cache_name", "string", true }, { "user", "string", true }, { "endpoint", "string" }, { "region", "string" },
  { "serverless", "boolean" }, { "service", "string" }, { "timeout", "number" },
}
local SERVICE_NAME = { elasticache = "ElastiCache", memorydb = "MemoryDB" }

-- The causes found, and a finish() that puts them in catalogue order into
-- report.causes / report.cause_ids.
local function collector(report, texts)
  local found = {}
  local function cause(id, ...)
    found[#found + 1] = { id = id, text = format(texts[id], ...) }
  end
  local function finish()
    table.sort(found, function(a, b)
      if ORDER[a.id] ~= ORDER[b.id] then return ORDER[a.id] < ORDER[b.id] end
      return a.text < b.text
    end)
    for i, c in ipairs(found) do report.causes[i], report.cause_ids[i] = c.text, c.id end
    return report
  end
  return cause, finish
end

-- The clock part of a report, from the facts and the credentials' source.
local function clock_of(facts, source)
  local clock = {
    offset = facts and facts.clock_offset or nil,
    source = facts and facts.clock_source or nil,
  }
  if clock.offset == nil then
    if source == "environment" or source == "profile" then
      clock.note = "static keys from the environment or files bring no AWS answer, so no clock offset is known"
    elseif facts then
      clock.note = "no AWS answer with a Date header seen yet, so no clock offset is known"
    else
      clock.note = "this build does not measure the clock offset"
    end
  end
  return clock
end

--- report = explain_cache(rds, req): what rds.elasticache_token does with
--- `req` (elasticache_token's table) and which causes of a refused AUTH
--- hold. No login: AUTH needs a Redis client (kong_rds_iam.redis).
function M.explain_cache(rds, req)
  for _, f in ipairs(CACHE_FIELDS) do
    local v = req[f[1]]
    if (v ~= nil or f[3]) and type(v) ~= f[2] then
      error(format("bad argument #1 to 'explain' (field '%s': %s expected, got %s)", f[1], f[2], type(v)), 3)
    end
  end
  local t = now()
  local service = req.service or "elasticache"
  local report = { service = service, checked_at = t, causes = array(), cause_ids = array() }
  local cause, finish = collector(report, CACHE_TEXT)

  local name = req.cache_name:gsub("^%s+", ""):gsub("%s+$", ""):lower()
  report.cache_name, report.user, report.endpoint = name, req.user, req.endpoint
  local endpoint_service, endpoint_region = M.cache_endpoint(req.endpoint)
  report.endpoint_service, report.endpoint_region = endpoint_service, endpoint_region
  local label = req.endpoint ~= nil and req.endpoint:lower():find(".serverless.", 1, true) ~= nil
  if req.serverless ~= nil then
    report.serverless, report.serverless_from = req.serverless, "serverless"
  elseif label then
    report.serverless, report.serverless_from = true, "endpoint"
  else
    report.serverless, report.serverless_from = false, "default"
  end

  -- the base chain's credentials, region and clock (a conf without keys:
  -- no pg_iam_auth_region, no RDS host name)
  local facts, facts_err = rust_facts(rds, {}, nil)
  report.facts_error = facts_err
  if facts then
    if facts.credentials then
      local c = facts.credentials
      report.credentials = {
        source = c.source, access_key_id = c.access_key_id, expires_at = c.expires_at, expires_in = c.expires_in,
      }
    end
    report.credentials_error = facts.credentials_error
  else
    local source, serr = rds.credentials_source()
    if source then report.credentials = { source = source } else report.credentials_error = serr end
  end

  -- the region and where it comes from, as rds.elasticache_token decides
  local region, region_from
  if req.region ~= nil then
    region, region_from = req.region, "region"
  elseif endpoint_region then
    region, region_from = endpoint_region, "endpoint"
  elseif facts and facts.region then
    region, region_from = facts.region, facts.region_from
  end

  -- the token, read and dropped
  if report.credentials then
    report.token, report.token_error = signed_token_facts(t, rds.elasticache_token, req)
  end
  local tf = report.token

  local c = report.credentials
  if tf then
    report.cache_name = tf.host or report.cache_name
    report.service = tf.service or report.service
    report.serverless = tf.resource_type == "ServerlessCache"
    -- the token is the truth: a region it was not signed for came from elsewhere
    if tf.region and tf.region ~= region then region, region_from = tf.region, nil end
    credentials_from_token(c, tf, t)
  end
  report.region, report.region_from = region, region_from
  if c and not c.expires_at and type(rds.stats) == "function" then
    local stats = rds.stats()
    local left = type(stats) == "table" and stats.credentials_expire_in
    if type(left) == "number" then c.expires_in, c.expires_at = left, t + left end
  end
  report.clock = clock_of(facts, c and c.source)

  -- causes
  if report.credentials_error then cause("no_credentials") end
  if not region and not tf then
    cause("cache_region_unknown")
  elseif report.token_error then
    cause("token_failed")
  end
  if c and c.expires_in and c.expires_in < M.TOKEN_LIFE then cause("credentials_expire", c.expires_in) end
  local offset = report.clock.offset
  if offset and (offset > M.MAX_CLOCK_OFFSET or offset < -M.MAX_CLOCK_OFFSET) then cause("clock_offset", offset) end
  if req.region ~= nil and endpoint_region and req.region ~= endpoint_region then
    cause("region_mismatch", req.region, "region", endpoint_region)
  end
  if name:find(".amazonaws.com", 1, true) then cause("cache_name_endpoint", name) end
  if not req.user:match("^[a-z][a-z0-9%-]*$") then
    cause("cache_user_id", req.user, SERVICE_NAME[service] or "ElastiCache")
  end
  if req.serverless ~= nil and endpoint_service == "elasticache" and req.serverless ~= label then
    cause("serverless_mismatch", tostring(req.serverless), req.endpoint, label and "has a" or "has no")
  end
  if endpoint_service and SERVICE_NAME[service] and endpoint_service ~= service then
    cause("service_mismatch", req.endpoint, SERVICE_NAME[endpoint_service], service)
  end
  return finish()
end

--- report = explain(rds, conf, mode?, opts?)
--- `rds` is the kong_rds_iam module (rds.explain passes itself), `opts.connect`
--- true adds a live connect and the rds_iam membership query.
function M.explain(rds, conf, mode, opts)
  if type(rds) ~= "table" then
    error(format("bad argument #1 to 'explain' (the kong_rds_iam module expected, got %s)", type(rds)), 2)
  end
  if type(conf) ~= "table" then
    error(format("bad argument #1 to 'explain' (table expected, got %s)", type(conf)), 2)
  end
  -- elasticache_token's request table: no mode, no live check
  if rawget(conf, "cache_name") ~= nil then
    if mode ~= nil then
      error(format("bad argument #2 to 'explain' (an ElastiCache / MemoryDB request takes no mode, got %s)", type(mode)), 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
      error(format("bad argument #3 to 'explain' (table expected, got %s)", type(opts)), 2)
    end
    return M.explain_cache(rds, conf)
  end
  if mode ~= nil and type(mode) ~= "string" then
    error(format("bad argument #2 to 'explain' (string expected, got %s)", type(mode)), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(format("bad argument #3 to 'explain' (table expected, got %s)", type(opts)), 2)
  end
  opts = opts or {}
  local t = now()
  local report = { mode = mode or "rw", checked_at = t, causes = array(), cause_ids = array() }
  local cause, finish = collector(report, TEXT)

  -- vault references: read plainly (a proxy such as kong.configuration lists
  -- nothing, and Kong has resolved its references anyway)
  local listed = getmetatable(conf) == nil and kconf.vault_keys(conf) or {}
  report.vault_keys = array(listed)
  for _, key in ipairs(listed) do cause("vault_reference", kconf.vault_message(key)) end

  local s, err = rds.settings(conf, mode)
  if not s then
    report.error = err
    return finish()
  end
  local ro = (mode == "ro")
  local prefix = ro and "pg_ro_" or "pg_"
  report.iam = s.iam == true
  report.host, report.port, report.user, report.database = s.host, s.port, s.user, s.database
  report.tls = {
    ssl = s.ssl, ssl_required = s.ssl_required, ssl_verify = s.ssl_verify, ssl_version = s.ssl_version,
    cafile = s.cafile, trusted = copy_array(s.trusted), ca_source = s.ca_source,
  }

  local facts, facts_err = rust_facts(rds, conf, mode)
  report.facts_error = facts_err

  if report.iam then
    -- credentials
    if facts then
      if facts.credentials then
        local c = facts.credentials
        report.credentials = {
          source = c.source, access_key_id = c.access_key_id,
          expires_at = c.expires_at, expires_in = c.expires_in,
        }
      end
      report.credentials_error = facts.credentials_error
    else
      local source, serr = rds.credentials_source(conf, mode)
      if source then
        report.credentials = { source = source }
      else
        report.credentials_error = serr
      end
    end

    -- the token, read and dropped
    if report.credentials then
      report.token, report.token_error = signed_token_facts(t, rds.token, conf, mode)
    end
    local tf = report.token

    local c = report.credentials
    credentials_from_token(c, tf, t)

    -- the base chain's credentials expiry, from stats, when no role is assumed
    if c and not c.expires_at and not s.assume_role_arn and type(rds.stats) == "function" then
      local stats = rds.stats()
      local left = type(stats) == "table" and stats.credentials_expire_in
      if type(left) == "number" then c.expires_in, c.expires_at = left, t + left end
    end

    -- where the token goes and for which region
    if facts then
      report.signed_host, report.signed_port = facts.signed_host, facts.signed_port
      report.signed_host_from = facts.signed_host_from
      report.region, report.region_from, report.host_region = facts.region, facts.region_from, facts.host_region
      report.service = facts.service
    end
    if tf then
      report.signed_host = report.signed_host or tf.host
      report.signed_port = report.signed_port or tf.port
      report.region = report.region or tf.region
    end
    if not report.signed_host_from then
      -- no facts: pg_iam_auth_host (its pg_ro_ twin first) when set
      local explicit = conf[prefix .. "iam_auth_host"]
      if ro and (explicit == nil or explicit == "") then explicit = conf.pg_iam_auth_host end
      explicit = type(explicit) == "string" and explicit ~= "" and explicit ~= "NONE" and explicit or nil
      -- a module that does not read the key signed for pg_host: say so
      if explicit and tf and tf.host ~= explicit:lower() then explicit = nil end
      report.signed_host_from = explicit and "pg_iam_auth_host" or "pg_host"
      -- without a token, the host it would be signed for
      report.signed_host = report.signed_host or (explicit and explicit:lower()) or s.host:lower()
    end
    report.host_region = report.host_region or M.host_region(report.signed_host)
    if not report.region_from then
      if s.region and s.region == report.region then
        report.region_from = "pg_iam_auth_region"
      elseif report.host_region and report.host_region == report.region then
        report.region_from = "host"
      end
    end

    -- the clock
    report.clock = clock_of(facts, c and c.source)

    -- causes
    if report.credentials_error then cause("no_credentials") end
    if report.token_error then cause("token_failed") end
    if c and c.expires_in and c.expires_in < M.TOKEN_LIFE then cause("credentials_expire", c.expires_in) end
    local offset = report.clock.offset
    if offset and (offset > M.MAX_CLOCK_OFFSET or offset < -M.MAX_CLOCK_OFFSET) then
      cause("clock_offset", offset)
    end
    if report.region_from == "pg_iam_auth_region" and report.host_region and report.region
      and report.region ~= report.host_region then
      cause("region_mismatch", report.region, prefix .. "iam_auth_region", report.host_region)
    end
    local sh = report.signed_host
    if sh and report.signed_host_from ~= "pg_iam_auth_host" then
      if M.is_ip(sh) then
        cause("signing_host", sh, "an IP address")
      elseif not (report.host_region or M.host_region(sh)) then
        cause("signing_host", sh, "not an RDS endpoint name (*.<region>.rds.amazonaws.com)")
      end
    end
    if tf and tf.user and tf.user ~= s.user then cause("user_mismatch", tf.user, s.user) end
  else
    cause("iam_off", ro and "pg_ro_iam_auth, pg_iam_auth" or "pg_iam_auth")
  end

  if not s.ssl then
    cause("tls_off")
  elseif not s.ssl_verify then
    cause("tls_unverified")
  end

  if opts.connect then
    local cr = {}
    report.connect = cr
    local conn, cerr, sqlstate = rds.connect(conf, mode)
    if conn then
      cr.ok = true
      local rows, qerr, _, _, qstate = conn:query(M.MEMBERSHIP_SQL)
      conn:close()
      if rows and rows[1] then
        local row = rows[1]
        cr.user = type(row.login_user) == "string" and row.login_user or nil
        cr.rds_iam = row.rds_iam_role == "rds_iam"
      else
        cr.query_error, cr.query_sqlstate = qerr or "no row", qstate
      end
    else
      cr.ok = false
      cr.error, cr.sqlstate = cerr, sqlstate
    end
    if cr.user and cr.user ~= s.user then cause("user_mismatch", cr.user, s.user) end
    if report.iam and cr.rds_iam ~= true then
      if cr.query_error then
        cause("rds_iam_member", format("Whether %s is a member of rds_iam could not be checked (the query failed); RDS accepts IAM logins only for members.", s.user))
      elseif cr.ok then
        cause("rds_iam_member", format("%s is not a member of rds_iam: RDS accepts IAM logins only for members (GRANT rds_iam TO %s).", s.user, s.user))
      elseif type(cr.sqlstate) == "string" and cr.sqlstate:sub(1, 2) == "28" then
        -- the server refused the login (not a network or TLS failure)
        cause("rds_iam_member", format("Whether %s is a member of rds_iam could not be checked (the login was refused); RDS accepts IAM logins only for members (GRANT rds_iam TO %s).", s.user, s.user))
      end
    end
  end
  return finish()
end

-- JSON ----------------------------------------------------------------------

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', function(ch)
    return ESCAPES[ch] or format("\\u%04x", ch:byte())
  end) .. '"'
end

local function is_array(t)
  if getmetatable(t) == ARRAY then return true end
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

local function encode(v, out)
  local tv = type(v)
  if tv == "string" then
    out[#out + 1] = encode_string(v)
  elseif tv == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      out[#out + 1] = "null"
    elseif v == math.floor(v) and v > -1e15 and v < 1e15 then
      out[#out + 1] = format("%d", v)
    else
      out[#out + 1] = format("%.17g", v)
    end
  elseif tv == "boolean" then
    out[#out + 1] = tostring(v)
  elseif tv == "table" then
    if is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = encode_string(k)
        out[#out + 1] = ":"
        local value = v[k]
        if value == nil then value = v[tonumber(k)] end
        encode(value, out)
      end
      out[#out + 1] = "}"
    end
  else
    out[#out + 1] = "null" -- nil, rds.null, functions
  end
end

--- JSON text of a report (objects with sorted keys; arrays marked with
--- explain.ARRAY or plain sequences).
function M.to_json(v)
  local out = {}
  encode(v, out)
  return concat(out)
end

return M
