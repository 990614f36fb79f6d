-- Nothing Lua passes in may crash or raise: every known key gets values of
-- every Lua type, and token/settings/connect either succeed or return
-- nil, "message". Only the argument types of the functions themselves raise.
local rds = require "kong_rds_iam"

local KEYS = {
  "host", "port", "user", "password", "database", "schema", "timeout", "iam_auth",
  "iam_auth_region", "iam_auth_assume_role_arn", "iam_auth_role_session_name",
  "iam_auth_sts_endpoint_url", "ssl", "ssl_required", "ssl_verify", "ssl_version",
  "ssl_cert", "ssl_cert_key", "ssl_cafile",
}

local VALUES = {
  true, false, 0, -1, 1, 2 ^ 53, -2 ^ 63, 1e308, -1e308, 1 / 0, -1 / 0, 0 / 0, 0.5,
  "", " ", "x", "on", "65536", "-1", "1e3", "\0", "caf\233", string.rep("a", 100000),
  {}, { 1, 2 }, { "a", "b" }, setmetatable({}, { __index = function() error("boom") end }),
  print, coroutine.create(function() end), io.stdout, rds.null,
}

local function check(fname, ...)
  local ok, a, b = pcall(rds[fname], ...)
  assert.is_true(ok, "raised: " .. tostring(a))
  if a == nil then
    assert.is_string(b)
    assert.is_true(#b > 0 and #b < 600, "message length " .. #b)
  end
  return a, b
end

describe("no conf value makes a call raise", function()
  for _, side in ipairs { "rw", "ro" } do
    local prefix = side == "rw" and "pg_" or "pg_ro_"
    it("token/settings/connect, mode " .. side, function()
      for _, key in ipairs(KEYS) do
        for _, value in ipairs(VALUES) do
          -- A closed port and short timeout keep connect attempts instant.
          local conf = { pg_host = "127.0.0.1", pg_port = 1, pg_timeout = 200, pg_iam_auth_region = "us-east-1" }
          conf[prefix .. key] = value
          check("token", conf, side)
          check("settings", conf, side)
          local conn = check("connect", conf, side)
          if conn then conn:close() end
        end
      end
    end)
  end

  it("lua_ssl_trusted_certificate of any shape", function()
    for _, value in ipairs(VALUES) do
      check("settings", { lua_ssl_trusted_certificate = value })
      check("connect", { pg_port = 1, pg_timeout = 200, pg_ssl = true, pg_ssl_verify = true,
        lua_ssl_trusted_certificate = value })
    end
  end)

  it("a conf whose every read raises", function()
    local hostile = setmetatable({}, { __index = function() error("no reads today") end })
    check("token", hostile)
    check("settings", hostile)
    check("connect", hostile)
  end)

  it("sign_token with out-of-range numbers and odd strings", function()
    for _, n in ipairs { 0, -1, 65536, 0.5, 1 / 0, 0 / 0, 2 ^ 63 } do
      check("sign_token", { host = "h", port = n, user = "u", region = "r", access_key_id = "a", secret_access_key = "s" })
      check("sign_token", { host = "h", port = 1, user = "u", region = "r", access_key_id = "a", secret_access_key = "s", time = n * 1e12 })
    end
    check("sign_token", { host = "\0", port = 1, user = string.rep("\255", 1000), region = "", access_key_id = "", secret_access_key = "" })
  end)
end)
