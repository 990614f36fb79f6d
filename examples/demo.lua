-- Connects to a PostgreSQL that wants AWS RDS IAM auth, as Kong would with
-- pg_iam_auth = on, and prints what the database says about the session.
-- scripts/demo runs it against the local RDS emulator; point the PG* style
-- variables below at a real RDS instance to run it there.
local rds = require "kong_rds_iam"

local conf = {
  pg_host = os.getenv("DEMO_PG_HOST") or "localhost",
  pg_port = os.getenv("DEMO_PG_PORT") or "5432",
  pg_user = os.getenv("DEMO_PG_USER") or "kong",
  pg_database = os.getenv("DEMO_PG_DATABASE") or "kong",
  pg_iam_auth = "on",
  pg_iam_auth_region = os.getenv("DEMO_REGION"), -- nil: read from the RDS host name
  pg_ssl_verify = "on",
  lua_ssl_trusted_certificate = os.getenv("DEMO_CA_FILE") or "system",
}

print(("kong_rds_iam %s: IAM auth to %s:%s as %s"):format(rds.version, conf.pg_host, conf.pg_port, conf.pg_user))
print("credentials from: " .. assert(rds.credentials_source()))

local token, err, expires_at = rds.token(conf)
if not token then
  io.stderr:write("token: ", err, "\n")
  os.exit(1)
end
-- A token is a credential for 15 minutes: show its shape, never the signature.
print(("token: %d bytes, %s..., valid until %s"):format(#token, token:match("^[^&]+&[^&]+"),
  os.date("!%Y-%m-%dT%H:%M:%SZ", expires_at)))

local conn, cerr, sqlstate = rds.connect(conf)
if not conn then
  io.stderr:write("connect: ", cerr, sqlstate and (" [" .. sqlstate .. "]") or "", "\n")
  os.exit(1)
end
print("connected: " .. tostring(conn))

local res, qerr = conn:query([[
  select current_user as "user",
         ssl.version as tls_version,
         ssl.cipher as cipher,
         pg_has_role(current_user, 'rds_iam', 'member') as is_rds_iam,
         current_setting('server_version') as server_version
    from pg_stat_ssl ssl where ssl.pid = pg_backend_pid()
]])
if not res then
  io.stderr:write("query: ", qerr, "\n")
  os.exit(1)
end
local row = res[1]
for _, k in ipairs { "user", "is_rds_iam", "tls_version", "cipher", "server_version" } do
  print(("  %-15s %s"):format(k, tostring(row[k])))
end
conn:close()
print("ok")
