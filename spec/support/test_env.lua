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

return M
