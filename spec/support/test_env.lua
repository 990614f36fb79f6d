-- The AWS environment the busted process runs with (see helper.lua), and the
-- credentials the emulator must know to accept its tokens. Test values only.
local M = {}

M.access_key_id = "AKIDKONGRDSIAMTEST01"
M.secret_access_key = "kong-rds-iam-test-secret-key-0001"

M.vars = {
  AWS_ACCESS_KEY_ID = M.access_key_id,
  AWS_SECRET_ACCESS_KEY = M.secret_access_key,
  AWS_EC2_METADATA_DISABLED = "true",
  AWS_CONFIG_FILE = "/nonexistent/kong-rds-iam-test/config",
  AWS_SHARED_CREDENTIALS_FILE = "/nonexistent/kong-rds-iam-test/credentials",
}

--- akid, secret, session_token, env = master_credentials(tag): static
--- credentials only an nginx master's environment holds (the emulator learns
--- them with add_key), and that environment. A session token makes tokens
--- long and gives one more secret to look for in logs; `tag` keeps each
--- spec's keys apart in the verifier log.
function M.master_credentials(tag)
  local util = require "spec.support.util"
  local akid = "AKID" .. tag:upper() .. util.hex(6):upper()
  local secret = tag .. "-secret-" .. util.hex(12)
  local session = tag .. "-session/" .. util.hex(40) .. "+end="
  return akid, secret, session, {
    AWS_ACCESS_KEY_ID = akid,
    AWS_SECRET_ACCESS_KEY = secret,
    AWS_SESSION_TOKEN = session,
    AWS_EC2_METADATA_DISABLED = "true",
    AWS_CONFIG_FILE = "/nonexistent/kong-rds-iam-" .. tag .. "/config",
    AWS_SHARED_CREDENTIALS_FILE = "/nonexistent/kong-rds-iam-" .. tag .. "/credentials",
  }
end

return M
