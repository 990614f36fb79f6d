-- A credential provider that panics on an answer it cannot use (aws-config's
-- IMDS client on a role name that is no URI path) gives a clear nil, err,
-- and what reaches stderr is one line, never a backtrace; a credential
-- process that fails is reported without what it printed, and one that hangs
-- is killed with its children when pg_timeout runs out. Fake IMDS on
-- 127.0.0.1, the module in a child process.
local fake = require "spec.support.fake_aws"
local lua_process = require "spec.support.lua_process"
local util = require "spec.support.util"
local socket = require "socket"

-- A new temporary directory.
local function scratch()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. util.shell_quote(dir)))
  return dir
end

-- Whether process `pid` runs (a zombie does not: PID 1 may not reap here).
local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read("*a")
  f:close()
  local state = stat:match("%)%s+(%S)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

describe("a credential provider that panics", function()
  local f

  lazy_setup(function()
    f = assert(fake.start {})
  end)

  lazy_teardown(function()
    if f then f:stop() end
  end)

  it("gives nil and a clear error, and one line on stderr", function()
    assert(f:configure_imds { role_name = "bad role" })
    local out = lua_process.run([[
      local rds = require "kong_rds_iam"
      local source, err = rds.credentials_source()
      local token, terr = rds.token { pg_host = "db.abc.us-east-1.rds.amazonaws.com", pg_user = "u" }
      io.write("@@", tostring(source), "|", tostring(err), "|", tostring(token), "|", tostring(terr), "\n")
    ]], util.merge(f:env("imds"), { RUST_BACKTRACE = "1" }))
    local result = out:match("@@([^\n]*)")
    assert.truthy(result, out)
    local source, err, token, terr = result:match("^(.-)|(.-)|(.-)|(.*)$")
    assert.equal("nil", source)
    assert.equal("could not get aws credentials from imds: the provider failed on an answer it could not use (malformed data from the endpoint)", err)
    assert.equal("nil", token)
    assert.equal(err, terr)
    local stderr = out:gsub("@@[^\n]*\n?", "")
    local _, lines = stderr:gsub("[^\n]+", "")
    assert.is_true(lines <= 2, "stderr: " .. stderr) -- one line per panic, no backtrace
    assert.is_nil(stderr:find("stack backtrace", 1, true), stderr)
    assert.truthy(stderr:find("kong_rds_iam: internal error", 1, true), stderr)
  end)
end)

describe("a credential_process that fails", function()
  it("is reported with its exit status, never with what it printed", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. util.shell_quote(dir)))
    local script = util.write_file(dir .. "/creds.sh",
      "#!/bin/sh\necho 'SECRET-ON-STDERR-0123456789' >&2\necho '{\"SecretAccessKey\": \"SECRET-ON-STDOUT\"}'\nexit 3\n")
    assert(os.execute("chmod +x " .. util.shell_quote(script)))
    local config = util.write_file(dir .. "/config", "[default]\ncredential_process = " .. script .. "\n")
    local out = lua_process.run([[
      local rds = require "kong_rds_iam"
      local source, err = rds.credentials_source()
      io.write("@@", tostring(source), "|", tostring(err), "\n")
    ]], { AWS_CONFIG_FILE = config, AWS_SHARED_CREDENTIALS_FILE = dir .. "/none", AWS_EC2_METADATA_DISABLED = "true" })
    os.execute("rm -rf " .. util.shell_quote(dir))
    local result = assert(out:match("@@([^\n]*)"), out)
    assert.matches("^nil|could not get aws credentials from ", result)
    assert.matches("credential_process exited with status 3", result, 1, true)
    assert.is_nil(out:find("SECRET-ON-STDERR", 1, true), out)
    assert.is_nil(out:find("SECRET-ON-STDOUT", 1, true), out)
  end)
end)

describe("a credential_process that hangs", function()
  it("is killed with the child it started when pg_timeout runs out", function()
    local dir = scratch()
    finally(function() os.execute("rm -rf " .. util.shell_quote(dir)) end)
    local q = util.shell_quote(dir)
    local script = util.write_file(dir .. "/creds.sh", table.concat({
      "#!/bin/sh",
      "sleep 30 &",
      "echo $! > " .. q .. "/grandchild",
      "echo $$ > " .. q .. "/child",
      "sleep 30",
    }, "\n") .. "\n")
    assert(os.execute("chmod +x " .. util.shell_quote(script)))
    local config = util.write_file(dir .. "/config", "[default]\ncredential_process = " .. script .. "\n")
    local started = socket.gettime()
    local out = lua_process.run([[
      local rds = require "kong_rds_iam"
      local token, err = rds.token { pg_host = "db.abc.us-east-1.rds.amazonaws.com", pg_user = "u", pg_timeout = 1000 }
      io.write("@@", tostring(token), "|", tostring(err), "\n")
    ]], { AWS_CONFIG_FILE = config, AWS_SHARED_CREDENTIALS_FILE = dir .. "/none", AWS_EC2_METADATA_DISABLED = "true" })
    local result = assert(out:match("@@([^\n]*)"), out)
    -- named as the source it is, not as the profile it was found in
    assert.equal("nil|timed out after 1000 ms getting aws credentials from credential_process", result)
    local child = tonumber(util.read_file(dir .. "/child") or "")
    local grandchild = tonumber(util.read_file(dir .. "/grandchild") or "")
    assert.truthy(child and grandchild, "the script did not start")
    -- pg_timeout (1 s) + 1 s after the call started, neither runs any more.
    while (alive(child) or alive(grandchild)) and socket.gettime() < started + 2 do socket.sleep(0.05) end
    local left = {}
    for _, pid in ipairs { child, grandchild } do
      if alive(pid) then
        left[#left + 1] = pid
        os.execute("kill -9 " .. pid)
      end
    end
    assert.same({}, left, "still running after pg_timeout + 1 s")
  end)
end)
