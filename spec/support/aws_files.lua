-- AWS shared credentials files (profiles, $HOME/.aws) for the credential specs.
local util = require "spec.support.util"
local M = {}

--- A credentials-file section `[name]` with a key pair.
function M.key_section(name, akid, secret)
  return ("[%s]\naws_access_key_id = %s\naws_secret_access_key = %s\n"):format(name, akid, secret)
end

--- The environment for AWS_PROFILE=kong in DIR/credentials, which holds `key`
-- as [kong] and a decoy as [default] (written on the first call), with no
-- config file.
function M.profile_env(dir, key)
  local path = dir .. "/credentials"
  if not util.exists(path) then
    util.write_file(path, M.key_section("default", "AKIDDECOYDEFAULT0001", "decoy") .. "\n"
      .. M.key_section("kong", key.akid, key.secret))
  end
  return { AWS_PROFILE = "kong", AWS_SHARED_CREDENTIALS_FILE = path, AWS_CONFIG_FILE = dir .. "/no-config" }
end

--- Makes DIR a home directory whose .aws/credentials holds `key` as the
-- default profile; returns DIR.
function M.home_dir(dir, key)
  util.succeeds("mkdir -p " .. util.shell_quote(dir .. "/.aws"))
  util.write_file(dir .. "/.aws/credentials", M.key_section("default", key.akid, key.secret))
  return dir
end

return M
