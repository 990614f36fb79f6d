--- kong_rds_iam.kong: pgmoon connection options for Kong's Postgres strategy.
--
--   local kong_iam = require "kong_rds_iam.kong"
--   local opts, err = kong_iam.pgmoon_options(kong.configuration, "rw") -- or "ro"
--   if not opts then return nil, err end
--   local pg = pgmoon.new(opts)
--
-- Call it for every NEW physical connection (Kong's `reconnect()` in
-- kong/db/strategies/postgres/connector.lua). A connection taken from the
-- cosocket keep-alive pool is not authenticated again, so its token does not
-- matter; pgmoon's pool name (host:port:database:user) never includes the
-- password, so fresh tokens do not split the pool.
--
-- `conf` is `kong.configuration` (booleans parsed, numbers as numbers,
-- `lua_ssl_trusted_certificate` an array) or any table with the same kong.conf
-- keys; kong.conf strings ("on", "5432") are accepted too. It is parsed by
-- rds.settings, the same parser rds.connect uses, so both read every key, and
-- refuse every bad value, alike.
--
-- `mode` is "rw" (default) or "ro" ("write" and "read", Kong's operation
-- names, are accepted as aliases). The read-only side reads `pg_ro_<key>` and
-- falls back to `pg_<key>` when unset. IAM is on for:
--   rw: pg_iam_auth
--   ro: pg_ro_iam_auth or pg_iam_auth (pg_iam_auth=on covers both, as Kong
--       documents it; the same rule as rds.token / rds.connect)
--
-- Under IAM: `password` is a fresh RDS IAM auth token from rds.token (cached
-- by the module until shortly before its credentials or its 900 s life end),
-- `ssl`, `ssl_required` and `ssl_verify` are forced on (`ssl_verify` unless
-- pg_iam_auth_ssl_verify is off), `pg_password` is ignored, and a
-- client certificate is refused with Kong's own message. Otherwise `password`
-- is pg_password and TLS follows pg_ssl / pg_ssl_required.
--
-- Returned fields (pgmoon option names): host, port, user, database, password,
-- timeout (ms; pgmoon does not read it: pass it to `settimeout`, as Kong's
-- connector does), ssl, ssl_required, ssl_verify, ssl_version, cafile (nil
-- when only the system store is configured), cert and key (mTLS, non-IAM
-- only), application_name ("kong"), and two informational fields pgmoon
-- ignores: iam_auth (boolean) and password_expires_at (unix seconds, IAM only).
--
-- rds.token blocks the calling worker while it signs (microseconds with
-- environment or cached credentials) and while it fetches credentials (IMDS,
-- ECS, STS: at start and near their expiry). That is fine in init,
-- init_worker and timers, and brief in request phases.
--
-- Errors are returned as `nil, err`; only a non-table conf or a bad mode raise.

local rds = require "kong_rds_iam"

local type, tostring, format = type, tostring, string.format

local M = {
  _VERSION = "0.1.0",
  APPLICATION_NAME = "kong",
}

local MODES = { rw = "rw", ro = "ro", write = "rw", read = "ro" }

-- The CA file for pgmoon (it takes one): pg_ssl_cafile; else Kong's combined
-- bundle (Kong writes lua_ssl_trusted_certificate, with `system` resolved, into
-- one file); else the first file in lua_ssl_trusted_certificate; else, under
-- IAM, the RDS CA bundle installed with the module. (Over nginx cosockets
-- pgmoon verifies against lua_ssl_trusted_certificate instead: see README.)
local function cafile(conf, settings)
  if settings.cafile then
    return settings.cafile
  end
  local combined = conf.lua_ssl_trusted_certificate_combined
  if type(combined) == "string" and combined ~= "" then
    return combined
  end
  for _, entry in ipairs(settings.trusted) do
    if entry ~= "system" and entry ~= "rds" then
      return entry
    end
  end
  if settings.iam then
    return (rds.rds_ca_bundle())
  end
  return nil
end

--- opts, err = pgmoon_options(conf, mode)
function M.pgmoon_options(conf, mode)
  if type(conf) ~= "table" then
    error(format("bad argument #1 to 'pgmoon_options' (table expected, got %s)", type(conf)), 2)
  end
  local side = MODES[mode == nil and "rw" or mode]
  if not side then
    error(format("bad argument #2 to 'pgmoon_options' (\"rw\" or \"ro\" expected, got %s)", tostring(mode)), 2)
  end

  local s, err = rds.settings(conf, side)
  if not s then
    return nil, err
  end
  local opts = {
    host = s.host,
    port = s.port,
    user = s.user,
    database = s.database,
    timeout = s.timeout,
    ssl = s.ssl,
    ssl_required = s.ssl_required,
    ssl_verify = s.ssl_verify,
    ssl_version = s.ssl_version,
    cafile = cafile(conf, s),
    cert = s.cert,
    key = s.key,
    application_name = M.APPLICATION_NAME,
    iam_auth = s.iam,
  }
  if s.iam then
    local token, expires_at
    token, err, expires_at = rds.token(conf, side)
    if not token then
      return nil, err
    end
    opts.password = token
    opts.password_expires_at = expires_at
  else
    opts.password = s.password
  end
  return opts
end

return M
