-- A smoke test for PUC Lua builds (run by scripts/test under lua5.1 and lua5.4):
-- the module loads, signs the published vector, reads conf, and keeps the
-- nil, err convention; kong_rds_iam.pgmoon loads and builds its conf. Prints "N passed, N failed" and exits non-zero on failure.
local rds = require "kong_rds_iam"

local passed, failed = 0, 0
local function check(name, cond, detail)
  if cond then
    passed = passed + 1
  else
    failed = failed + 1
    io.stderr:write("FAIL ", name, detail and (": " .. tostring(detail)) or "", "\n")
  end
end

local token = rds.sign_token {
  host = "prod-instance.us-east-1.rds.amazonaws.com", port = 3306, user = "peccy", region = "us-east-1",
  access_key_id = "akid", secret_access_key = "secret", time = 1724709600,
}
check("vector", token:sub(-64) == "dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89", token)

local t, err, exp = rds.token { pg_host = "db.abcdefghijkl.eu-west-1.rds.amazonaws.com", pg_user = "smoke" }
check("token from env", t and t:find("DBUser=smoke&", 1, true) and t:find("%2Feu-west-1%2F", 1, true), err)
check("expiry", type(exp) == "number" and exp > os.time(), exp)

local none, msg = rds.token { pg_port = "nope" }
check("nil, err", none == nil and msg == 'pg_port must be an integer 1-65535, got "nope"', msg)

local ok, raised = pcall(rds.token, 42)
check("raises for non-table", not ok and tostring(raised):find("table expected, got number", 1, true), raised)

check("null sentinel", rds.null ~= nil and type(rds.null) == "userdata")
check("source", rds.credentials_source() == "environment")

-- kong_rds_iam.pgmoon, from this checkout's lua/ (scripts/test runs from the
-- repository's root): no I/O, so no server is needed
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local has, pgmoon = pcall(require, "kong_rds_iam.pgmoon")
check("pgmoon class loads", has, pgmoon)
if has then
  local opts = { host = "127.0.0.1", port = 5432, database = "smoke", user = "u", password = "p" }
  local first = pgmoon.new(opts):_conf()
  check("pgmoon class: one conf per options table", first ~= nil and first == pgmoon.new(opts):_conf())
  opts.database = "other"
  local other = pgmoon.new(opts):_conf()
  check("pgmoon class: a changed option is seen", other ~= first and other.pg_database == "other",
    other and other.pg_database)
  check("pgmoon class: pgmoon's defaults", pgmoon.new(opts).config.application_name == "pgmoon")
  check("pgmoon class: escape without a connection", pgmoon.Postgres.escape_literal(nil, "it's") == "'it''s'")
end

print(("%s: %d passed, %d failed"):format(_VERSION, passed, failed))
os.exit(failed == 0 and 0 or 1)
