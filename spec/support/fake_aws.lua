-- Helper for busted specs: fake AWS credential endpoints (EC2 IMDS, ECS/EKS
-- container credentials, STS) served by spec/support/fake_aws.py.
-- LuaJIT / Lua 5.1 compatible; needs lua-cjson and lua-socket.
--
--   local fake = require "spec.support.fake_aws"
--   local f = assert(fake.start{ emulator_dir = e.dir, lifetime = 3600 })
--   -- f.imds_url, f.ecs_url, f.sts_url, f.web_identity_token_file, f.role_arn,
--   -- f.container_token, f.container_token_file, f:env("irsa"), ...
--   f:set_mode("imds", "500")                      -- or timeout/garbage/expired/refuse/ok
--   f:set_mode("sts", "timeout", { seconds = 3, count = 1 })
--   f:set_lifetime(20)
--   local c = f:counts()          -- c.imds["/latest/api/token"], c.sts.AssumeRole, c.ecs.total
--   local log = f:requests("sts") -- list of request records (see README.md)
--   f:reset()                     -- clear counts/log and faults
--   f:stop()
--
-- The server is started in the background and exits by itself when this Lua
-- process exits (it watches our pid), so a failing spec never leaves it behind.

local cjson = require "cjson.safe"
local http = require "socket.http"
local ltn12 = require "ltn12"
local socket = require "socket"

local util = require "spec.support.util"
local quote = util.shell_quote
local read_file = util.read_file
local M = {}



local function here()
  local src = debug.getinfo(1, "S").source or ""
  local dir = src:sub(1, 1) == "@" and src:sub(2):match("^(.*)/[^/]*$")
  return dir or "spec/support"
end

M.script = here() .. "/fake_aws.py"

local function python()
  local env = os.getenv("FAKE_AWS_PYTHON")
  if env and env ~= "" then
    return env
  end
  return util.python()
end

-- Our own pid: /proc/self is the process that opens it.
local function own_pid()
  local stat = read_file("/proc/self/stat")
  return stat and tonumber(stat:match("^(%d+)"))
end

-- Running and not a zombie (the server is reparented when its shell exits).
local function alive(pid)
  local stat = read_file("/proc/" .. tostring(pid) .. "/stat")
  return stat ~= nil and stat:match("^%d+ %b() (%a)") ~= "Z"
end

local function mktemp_dir()
  local p = assert(io.popen("mktemp -d /tmp/fake_aws.XXXXXX", "r"))
  local dir = p:read("*l")
  p:close()
  assert(dir and dir ~= "", "mktemp -d failed")
  return dir
end

-- JSON request to the control port. Returns decoded body or nil, error.
local function control(self, method, path, body)
  local chunks = {}
  local payload = body and assert(cjson.encode(body)) or nil
  local ok, status = http.request{
    url = self.control_url .. path,
    method = method,
    headers = payload and {
      ["content-type"] = "application/json",
      ["content-length"] = tostring(#payload),
    } or nil,
    source = payload and ltn12.source.string(payload) or nil,
    sink = ltn12.sink.table(chunks),
  }
  if not ok then
    return nil, "fake_aws control " .. path .. ": " .. tostring(status)
  end
  local text = table.concat(chunks)
  local decoded = cjson.decode(text)
  if status ~= 200 then
    return nil, ("fake_aws control %s: HTTP %s %s"):format(path, tostring(status), text)
  end
  return decoded
end

local Fake = {}
Fake.__index = Fake

local started = {}

-- opts: emulator_dir, register_cmd, lifetime (s, default 3600), region,
--       role_name, static_keys ({akid = secret}), sts_auth ("lenient"|"strict"),
--       state_dir (default: a new temp dir, removed by stop() unless
--       keep_state), python, verbose, timeout (start-up, s)
function M.start(opts)
  opts = opts or {}
  local state_dir = opts.state_dir or mktemp_dir()
  local remove_state = not opts.state_dir and not opts.keep_state
  local ready = state_dir .. "/ready.json"
  local logfile = state_dir .. "/fake_aws.log"
  os.remove(ready)
  local pid = own_pid()
  local args = { quote(python()), quote(M.script), "--state-dir", quote(state_dir),
                 "--ready-file", quote(ready), "--parent-pid", tostring(pid or 0) }
  local function add(flag, value)
    if value ~= nil then
      args[#args + 1] = flag
      args[#args + 1] = quote(value)
    end
  end
  add("--emulator-dir", opts.emulator_dir)
  add("--register-cmd", opts.register_cmd)
  add("--lifetime", opts.lifetime)
  add("--region", opts.region)
  add("--role-name", opts.role_name)
  add("--sts-auth", opts.sts_auth)
  for akid, secret in pairs(opts.static_keys or {}) do
    add("--static-key", akid .. ":" .. secret)
  end
  if opts.verbose then
    args[#args + 1] = "--verbose"
  end
  local cmd = table.concat(args, " ") .. " </dev/null >" .. quote(logfile) .. " 2>&1 &"
  os.execute(cmd)

  local deadline = socket.gettime() + (opts.timeout or 15)
  local text
  repeat
    text = read_file(ready)
    if not text then
      socket.sleep(0.02)
    end
  until text or socket.gettime() > deadline
  local info = text and cjson.decode(text)
  if not info then
    return nil, "fake_aws did not start: " .. (read_file(logfile) or "(no log)")
  end
  info.log_file = logfile
  info.remove_state = remove_state
  local f = setmetatable(info, Fake)
  started[f] = true
  return f
end

-- Set a failure mode. service: "imds" | "ecs" | "sts" | "all".
-- mode: "ok" | "500" (any 3-digit status) | "timeout" | "garbage" | "expired" |
--       "refuse"; for imds also "imdsv1" (token PUT -> 403, or opts.status),
--       "imdsv2" (GET without token -> 401) and "v1v2" (default: both work).
-- opts: seconds (timeout delay / how long ago `expired` credentials expired),
--       path (only paths with this prefix), action (sts Action only),
--       count (only the next N matching requests).
function Fake:set_mode(service, mode, opts)
  local body = { service = service, mode = tostring(mode) }
  for k, v in pairs(opts or {}) do
    body[k] = v
  end
  return control(self, "POST", "/mode", body)
end

-- Lifetime (s) of credentials issued from now on (all services, or one).
function Fake:set_lifetime(seconds, service)
  return control(self, "POST", "/lifetime", { seconds = seconds, service = service })
end

-- Serve the same credential again while it has more than min_remaining s
-- left (like real IMDS); nil: a new credential per request (default).
function Fake:set_reuse(service, min_remaining)
  return control(self, "POST", "/reuse", { service = service, min_remaining = min_remaining })
end

-- { imds = { total = n, [path] = n }, ecs = {...}, sts = { total, ["/"], [Action] = n } }
function Fake:counts()
  return control(self, "GET", "/counts")
end

-- Request records, oldest first (all services, or one).
function Fake:requests(service)
  return control(self, "GET", "/requests" .. (service and ("?service=" .. service) or ""))
end

-- Request records of one service (all if nil), oldest first, for which
-- pred(record) is true (all without pred). Raises if the fake does not answer.
function Fake:requests_where(service, pred)
  local list = {}
  for _, r in ipairs(assert(self:requests(service))) do
    if not pred or pred(r) then list[#list + 1] = r end
  end
  return list
end

-- STS request records of one Action ("AssumeRole", ...).
function Fake:sts_requests(action)
  return self:requests_where("sts", function(r) return r.action == action end)
end

-- The access key ids issued in answer to a list of request records, in order.
function M.issued_akids(records)
  local akids = {}
  for _, r in ipairs(records) do
    if r.issued_akid then akids[#akids + 1] = r.issued_akid end
  end
  return akids
end

-- Every credential issued so far (access_key_id, secret_access_key,
-- session_token, expiration, service, role_arn, registered).
function Fake:credentials()
  return control(self, "GET", "/credentials")
end

-- The most recently issued credential (optionally of one service).
function Fake:last_credential(service)
  local all = assert(self:credentials())
  table.sort(all, function(a, b) return a.issued_at < b.issued_at end)
  for i = #all, 1, -1 do
    if service == nil or all[i].service == service then
      return all[i]
    end
  end
end

-- The issued credential with this access key id, or nil.
function Fake:credential(akid)
  for _, c in ipairs(assert(self:credentials())) do
    if c.access_key_id == akid then return c end
  end
end

-- Clear counts and request log; unless counts_only, also faults, lifetimes,
-- IMDS token policy/role/region and ECS/STS auth settings.
function Fake:reset(counts_only)
  return control(self, "POST", "/reset", { counts_only = counts_only and true or false })
end

-- New web identity token and container token file contents (files rewritten).
function Fake:rotate_tokens()
  local r, err = control(self, "POST", "/rotate_tokens", {})
  if r then
    self.web_identity_token = r.web_identity_token
    self.container_file_token = r.container_file_token
  end
  return r, err
end

-- Make the STS SigV4 verifier know a secret (e.g. static env keys).
function Fake:add_key(akid, secret)
  return control(self, "POST", "/keys", { akid = akid, secret = secret })
end

-- settings: role_name (false: no role -> 404), region, invalidate_tokens
function Fake:configure_imds(settings)
  return control(self, "POST", "/imds", settings or {})
end

-- settings: require_auth (default true)
function Fake:configure_ecs(settings)
  return control(self, "POST", "/ecs", settings or {})
end

-- settings: auth = "lenient" | "strict"
function Fake:configure_sts(settings)
  return control(self, "POST", "/sts", settings or {})
end

-- Environment variables that point aws-config at this fake for one source:
-- "imds", "ecs" (env token), "eks" (token file), "irsa" (web identity + STS),
-- "sts" (just the STS endpoint).
function Fake:env(source)
  local e = {}
  if source == "imds" then
    e.AWS_EC2_METADATA_SERVICE_ENDPOINT = self.imds_url
  elseif source == "ecs" then
    e.AWS_CONTAINER_CREDENTIALS_FULL_URI = self.ecs_url
    e.AWS_CONTAINER_AUTHORIZATION_TOKEN = self.container_token
  elseif source == "eks" then
    e.AWS_CONTAINER_CREDENTIALS_FULL_URI = self.eks_url
    e.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE = self.container_token_file
  elseif source == "irsa" then
    e.AWS_WEB_IDENTITY_TOKEN_FILE = self.web_identity_token_file
    e.AWS_ROLE_ARN = self.role_arn
    e.AWS_ENDPOINT_URL_STS = self.sts_url
  elseif source == "sts" then
    e.AWS_ENDPOINT_URL_STS = self.sts_url
  else
    error("unknown source " .. tostring(source))
  end
  return e
end

-- Server log (stdout/stderr of the python process).
function Fake:log()
  return read_file(self.log_file) or ""
end

function Fake:stop()
  if self.stopped then
    return true
  end
  control(self, "POST", "/shutdown", {})
  local deadline = socket.gettime() + 5
  while alive(self.pid) and socket.gettime() < deadline do
    socket.sleep(0.02)
  end
  if alive(self.pid) then
    os.execute("kill " .. tonumber(self.pid) .. " 2>/dev/null")
  end
  if self.remove_state and self.state_dir:match("^/tmp/fake_aws%.") then
    os.execute("rm -rf " .. quote(self.state_dir))
  end
  self.stopped = true
  started[self] = nil
  return true
end

function M.stop_all()
  for f in pairs(started) do
    f:stop()
  end
end

return M
