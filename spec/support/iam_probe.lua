-- Runs the module in a fresh luajit with a given environment
-- (spec.support.lua_process) against the RDS emulator and reads back what it
-- printed on its `RESULT <json>` line.
--
--   local res, out = iam_probe.run(e.port, env, conf_extra, opts)
--   -- res.base_source(_err), res.source(_err), res.token(_err), res.expires_at,
--   -- res.connect_err, res.user, res.query_err, res.source_after
local cjson = require "cjson.safe"
local util = require "spec.support.util"
local lua_process = require "spec.support.lua_process"
local M = {}

local function lua_literal(v)
  if type(v) == "string" then return ("%q"):format(v) end
  return tostring(v)
end

--- The conf every case connects with (IAM user iam_user at localhost:port,
-- region us-east-1, pg_timeout 5000, plus `extra`), as Lua source.
function M.conf_source(port, extra)
  local conf = util.merge({
    pg_host = "localhost", pg_port = port, pg_user = "iam_user", pg_iam_auth = true,
    pg_iam_auth_region = "us-east-1", pg_timeout = 5000,
  }, extra)
  local parts = {}
  for k, v in pairs(conf) do
    parts[#parts + 1] = ("%s = %s"):format(k, lua_literal(v))
  end
  table.sort(parts)
  return "{ " .. table.concat(parts, ", ") .. " }"
end

--- The tables merged into the environment of a case: IMDS off unless the
-- case points it at the fake.
function M.env_with(...)
  local env = util.merge(...)
  if not env.AWS_EC2_METADATA_SERVICE_ENDPOINT then
    env.AWS_EC2_METADATA_DISABLED = "true"
  end
  return env
end

--- The decoded `RESULT <json>` line of a child's output (raises with the
-- output when there is none).
function M.result_of(out)
  local json = out:match("RESULT ([^\n]*)")
  local res = json and cjson.decode(json)
  assert(res, "subprocess failed:\n" .. out)
  return res
end

-- What every source case runs: source, token, connect + query, source again.
M.CODE = [[
local cjson = require "cjson"
local rds = require "kong_rds_iam"
local conf = CONF
local out = {}
out.base_source, out.base_source_err = rds.credentials_source()
out.source, out.source_err = rds.credentials_source(conf)
out.token, out.token_err, out.expires_at = rds.token(conf)
local c, cerr = rds.connect(conf)
out.connect_err = cerr
if c then
  local rows, qerr = c:query("select current_user")
  out.user = rows and rows[1] and rows[1].current_user
  if not rows then out.query_err = qerr end
  c:close()
end
out.source_after = rds.credentials_source(conf)
io.write("RESULT ", cjson.encode(out), "\n")
]]

--- res, out = run(port, env, conf_extra, opts): M.CODE with
-- conf_source(port, conf_extra) in a child with `env` (opts as lua_process.run).
function M.run(port, env, conf_extra, opts)
  local code = M.CODE:gsub("CONF", function() return M.conf_source(port, conf_extra) end)
  local out = lua_process.run(code, env, opts)
  return M.result_of(out), out
end

return M
