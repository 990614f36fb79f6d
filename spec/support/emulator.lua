-- Helper for busted specs: start/stop a local RDS emulator
-- (tools/rds-emulator/rds-emulator). LuaJIT / Lua 5.1 compatible.
--
--   local emu = require "spec.support.emulator"
--   local e = assert(emu.start{ tls13 = false, ssl = true, region = "us-east-1" })
--   (also: service = "dsql", dir = DIR, umask = "077")
--   assert(e:add_key("AKIDEXAMPLE", "secret", nil, os.time() + 3600))
--   -- connect to e.host:e.port, db e.db, user e.iam_users[1], CA file e.ca
--   print(e:log())
--   e:stop()
--
-- Needs root (the script creates a PostgreSQL cluster and a PAM service file).
-- Specs run from the repository root; set RDS_EMULATOR to override the script.

local util = require "spec.support.util"
local quote = util.shell_quote
local read_file = util.read_file
local M = {}


local function script_path()
  local env = os.getenv("RDS_EMULATOR")
  if env and env ~= "" then
    return env
  end
  local src = debug.getinfo(1, "S").source or ""
  if src:sub(1, 1) == "@" then
    local root = src:sub(2):match("^(.*)/spec/support/[^/]*$")
    if root then
      return (root == "" and "/" or root) .. "/tools/rds-emulator/rds-emulator"
    end
  end
  return "tools/rds-emulator/rds-emulator"
end

M.script = script_path()


-- Run a shell command; returns stdout, exit code, stderr.
local function run(cmd)
  local errf = os.tmpname()
  local p = assert(io.popen(cmd .. " 2>" .. quote(errf) .. '; echo "__RC=$?"', "r"))
  local out = p:read("*a")
  p:close()
  local err = read_file(errf) or ""
  os.remove(errf)
  local body, rc = out:match("^(.*)__RC=(%d+)\n?$")
  return body or out, tonumber(rc) or -1, err
end

local function script(...)
  local parts = { quote(M.script) }
  for i = 1, select("#", ...) do
    parts[#parts + 1] = quote((select(i, ...)))
  end
  return table.concat(parts, " ")
end

local Emulator = {}
Emulator.__index = Emulator

local started = {}

-- opts: tls13 (bool, default false), ssl (bool, default true),
--       region (default "us-east-1"), dir (optional, must not exist or be empty),
--       service ("rds-db", the default, or "dsql": the verifier takes Aurora
--       DSQL tokens instead, and a role "admin" exists for DbConnectAdmin)
function M.start(opts)
  opts = opts or {}
  local args = { "start" }
  if opts.tls13 then
    args[#args + 1] = "--tls13"
  end
  if opts.ssl == false then
    args[#args + 1] = "--no-ssl"
  end
  if opts.region then
    args[#args + 1] = "--region"
    args[#args + 1] = opts.region
  end
  if opts.service then
    args[#args + 1] = "--service"
    args[#args + 1] = opts.service
  end
  if opts.dir then
    args[#args + 1] = "--dir"
    args[#args + 1] = opts.dir
  end
  local cmd = script(unpack(args))
  -- opts.umask: the file mode mask the script runs under (e.g. "077")
  if opts.umask then cmd = ("umask %s; %s"):format(quote(opts.umask), cmd) end
  local out, rc, err = run(cmd)
  if rc ~= 0 then
    return nil, ("rds-emulator start failed (exit %d): %s"):format(rc, err)
  end
  local env = {}
  for line in out:gmatch("[^\n]+") do
    local k, v = line:match("^([A-Z0-9_]+)=(.*)$")
    if k then
      env[k] = v
    end
  end
  if not env.RDS_EMU_DIR or not env.RDS_EMU_PORT then
    return nil, "rds-emulator start: unexpected output: " .. out
  end
  local e = setmetatable({
    env = env,
    dir = env.RDS_EMU_DIR,
    host = env.RDS_EMU_HOST,
    port = tonumber(env.RDS_EMU_PORT),
    region = env.RDS_EMU_REGION,
    service = env.RDS_EMU_SERVICE or "rds-db",
    db = env.RDS_EMU_DB,
    ssl = env.RDS_EMU_SSL == "1",
    tls13 = env.RDS_EMU_TLS13 == "1",
    ca = env.RDS_EMU_CA,
    other_ca = env.RDS_EMU_OTHER_CA,
    client_cert = env.RDS_EMU_CLIENT_CERT,
    client_key = env.RDS_EMU_CLIENT_KEY,
    socket_dir = env.RDS_EMU_SOCKET_DIR,
    superuser = env.RDS_EMU_SUPERUSER,
    iam_role = env.RDS_EMU_IAM_ROLE,
    iam_users = { env.RDS_EMU_IAM_USER, env.RDS_EMU_IAM_USER2 },
    -- password users: name -> password
    users = {
      [env.RDS_EMU_PW_SCRAM_USER] = env.RDS_EMU_PW_SCRAM_PASSWORD,
      [env.RDS_EMU_PW_MD5_USER] = env.RDS_EMU_PW_MD5_PASSWORD,
      [env.RDS_EMU_PW_CLEAR_USER] = env.RDS_EMU_PW_CLEAR_PASSWORD,
    },
    pam_service = env.RDS_EMU_PAM_SERVICE,
    verifier_log = env.RDS_EMU_VERIFIER_LOG,
    pg_log = env.RDS_EMU_PG_LOG,
  }, Emulator)
  started[e.dir] = e
  return e
end

local function result(rc, err)
  if rc == 0 then
    return true
  end
  return nil, err ~= "" and err or ("exit " .. rc)
end

-- Register an access key. session_token and expires (unix time) are optional.
function Emulator:add_key(akid, secret, session_token, expires)
  local args = { "add-key", self.dir, akid, secret }
  if session_token ~= nil and session_token ~= false and session_token ~= "" then
    args[#args + 1] = session_token
  end
  if expires ~= nil then
    args[#args + 1] = "--expires"
    args[#args + 1] = (expires % 1 == 0) and ("%d"):format(expires) or ("%.3f"):format(expires)
  end
  local _, rc, err = run(script(unpack(args)))
  return result(rc, err)
end

function Emulator:remove_key(akid)
  local _, rc, err = run(script("remove-key", self.dir, akid))
  return result(rc, err)
end

-- Accept tokens signed for NAME (at the emulator's port) or NAME:PORT.
function Emulator:allow_host(name)
  local _, rc, err = run(script("allow-host", self.dir, name))
  return result(rc, err)
end

-- Verifier log (one line per authentication attempt).
function Emulator:log()
  return read_file(self.verifier_log) or ""
end

function Emulator:clear_log()
  local f = io.open(self.verifier_log, "w")
  if not f then
    return nil, "cannot truncate " .. self.verifier_log
  end
  f:close()
  return true
end

-- PostgreSQL server log.
function Emulator:pg_log_text()
  return read_file(self.pg_log) or ""
end

-- Run SQL as the postgres superuser over the unix socket (database kong unless
-- dbname given). Returns the unaligned, tuples-only output, or nil, error.
function Emulator:psql(sql, dbname)
  local args = { "psql", self.dir, "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1" }
  if dbname then
    args[#args + 1] = "-d"
    args[#args + 1] = dbname
  end
  args[#args + 1] = "-c"
  args[#args + 1] = sql
  local out, rc, err = run(script(unpack(args)))
  if rc ~= 0 then
    return nil, err ~= "" and err or ("psql exit " .. rc)
  end
  return (out:gsub("\n$", ""))
end

function Emulator:stop()
  if self.stopped then
    return true
  end
  local _, rc, err = run(script("stop", self.dir))
  if rc == 0 then
    self.stopped = true
    started[self.dir] = nil
  end
  return result(rc, err)
end

-- Stop every emulator this process started and has not stopped yet.
function M.stop_all()
  for _, e in pairs(started) do
    e:stop()
  end
end

return M
