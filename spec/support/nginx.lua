-- Helper for specs that run a real nginx with the Lua module (Debian's
-- nginx-light + libnginx-mod-http-lua + lua-resty-core). LuaJIT / Lua 5.1.
--
--   local nginx = require "spec.support.nginx"
--   local n = assert(nginx.start {
--     workers = 2,                       -- worker_processes
--     env = { AWS_ACCESS_KEY_ID = "..." },  -- the master's whole environment (plus PATH)
--     main = "...",                      -- extra main-context directives
--     http = "init_by_lua_block { ... }", -- extra http-context directives
--     server = "location /t { ... }",     -- directives of the one server block
--     files = { ["lua/t.lua"] = "..." },  -- files to write into the prefix (directories made)
--     daemon = false,                    -- `daemon off` in the background (default: daemon on)
--   })
--   local status, body = n:get("/t")
--   n:master_pid(); n:worker_pids(); n:threads(pid); n:reload(); n:error_log()
--   n:tasks(pid)                      -- { {tid=, comm=, sigblk=}, ... } of /proc/PID/task
--   local ok, secs = n:quit(5)         -- nginx -s quit, wait for the master to go
--   n:stop()                           -- quit, then SIGKILL if still running; removes the prefix
--
-- The prefix (a temp directory) holds conf/nginx.conf, logs/error.log,
-- logs/nginx.pid and the temp paths. nginx runs with `daemon on` (or, with
-- `daemon = false`, `daemon off` as a background job: then the master is the
-- very process that ran init_by_lua) as the current user (`user root;` when
-- that is root). lua_package_path covers the
-- repository (./?.lua, lua/?.lua, lua/?/init.lua), PREFIX/lua (both forms) and
-- /usr/share/lua/5.1 (resty.core); lua_package_cpath the repository's
-- target/lua/?.so and Debian's Lua 5.1 C modules (cjson).

local socket = require "socket"

local util = require "spec.support.util"
local quote = util.shell_quote
local read_file = util.read_file
local write_file = util.write_file
local M = {}

M.bin = os.getenv("NGINX_BIN") or "/usr/sbin/nginx"
M.modules_dir = os.getenv("NGINX_MODULES_DIR") or "/usr/lib/nginx/modules"

--- Why a spec cannot start nginx here (nil when it can): for `pending`.
function M.missing()
  if util.exists(M.bin) and util.exists(M.modules_dir .. "/ngx_http_lua_module.so") then return nil end
  return "needs nginx and its Lua module (" .. M.bin .. ", " .. M.modules_dir .. ")"
end




-- stdout, exit code of a shell command (stderr folded into stdout).
local function run(cmd)
  local p = assert(io.popen(cmd .. ' 2>&1; echo "__RC=$?"', "r"))
  local out = p:read("*a")
  p:close()
  local body, rc = out:match("^(.*)__RC=(%d+)\n?$")
  return body or out, tonumber(rc) or -1
end
M.run = run

local function repo_root()
  local src = debug.getinfo(1, "S").source or ""
  if src:sub(1, 1) == "@" then
    local root = src:sub(2):match("^(.*)/spec/support/[^/]*$")
    if root and root ~= "" then
      if root:sub(1, 1) ~= "/" then
        local p = io.popen("pwd")
        local cwd = p:read("*l")
        p:close()
        root = root == "." and cwd or (cwd .. "/" .. root)
      end
      return root
    end
  end
  local p = io.popen("pwd")
  local cwd = p:read("*l")
  p:close()
  return cwd
end

M.root = repo_root()

function M.sleep(s)
  socket.sleep(s)
end

function M.now()
  return socket.gettime()
end

--- A free TCP port on 127.0.0.1 (bound and released).
M.free_port = util.free_port

local function alive(pid)
  if not pid then
    return false
  end
  local stat = read_file("/proc/" .. pid .. "/stat")
  if not stat then
    return false
  end
  -- a zombie is gone for our purposes
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= "Z" and state ~= "X"
end
M.alive = alive

local function is_root()
  local out = run("id -u")
  return out:match("^0%s*$") ~= nil
end

local Nginx = {}
Nginx.__index = Nginx

local function config_text(self, o)
  local root = M.root
  local lpath = table.concat({
    root .. "/?.lua", root .. "/lua/?.lua", root .. "/lua/?/init.lua",
    self.prefix .. "/lua/?.lua", self.prefix .. "/lua/?/init.lua",
    "/usr/share/lua/5.1/?.lua", "/usr/share/lua/5.1/?/init.lua", ";",
  }, ";")
  local cpath = table.concat({
    root .. "/target/lua/?.so", "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so", ";",
  }, ";")
  return table.concat({
    ("load_module %s/ndk_http_module.so;"):format(M.modules_dir),
    ("load_module %s/ngx_http_lua_module.so;"):format(M.modules_dir),
    is_root() and "user root;" or "",
    o.daemon == false and "daemon off;" or "daemon on;",
    "master_process on;",
    ("worker_processes %d;"):format(o.workers or 2),
    "pid logs/nginx.pid;",
    ("error_log logs/error.log %s;"):format(o.log_level or "info"),
    "worker_shutdown_timeout 10s;",
    o.main or "",
    "events { worker_connections 512; }",
    "http {",
    "  access_log off;",
    "  client_body_temp_path temp/body;",
    "  proxy_temp_path temp/proxy;",
    "  fastcgi_temp_path temp/fastcgi;",
    "  uwsgi_temp_path temp/uwsgi;",
    "  scgi_temp_path temp/scgi;",
    ("  lua_package_path %q;"):format(lpath),
    ("  lua_package_cpath %q;"):format(cpath),
    o.http or "",
    "  server {",
    ("    listen 127.0.0.1:%d%s;"):format(self.port, o.reuseport == false and "" or " reuseport"),
    o.server or "",
    "  }",
    "}",
    "",
  }, "\n")
end

--- Writes the prefix and starts nginx; returns the handle once it answers
--- TCP on its port, or nil, err (with the error log).
function M.start(o)
  o = o or {}
  local prefix = assert(run("mktemp -d /tmp/nginx-spec.XXXXXXXX")):gsub("%s+$", "")
  for _, d in ipairs { "conf", "logs", "lua", "temp" } do
    assert(run("mkdir -p " .. quote(prefix .. "/" .. d)))
  end
  local self = setmetatable({ prefix = prefix, port = o.port or M.free_port(), opts = o }, Nginx)
  for name, text in pairs(o.files or {}) do
    local dir = name:match("^(.*)/[^/]+$")
    if dir then assert(run("mkdir -p " .. quote(prefix .. "/" .. dir))) end
    write_file(prefix .. "/" .. name, text)
  end
  self.conf_path = prefix .. "/conf/nginx.conf"
  write_file(self.conf_path, config_text(self, o))
  self.pid_path = prefix .. "/logs/nginx.pid"
  self.log_path = prefix .. "/logs/error.log"

  local parts = { "env", "-i", "PATH=" .. quote(os.getenv("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin") }
  for k, v in pairs(o.env or {}) do
    parts[#parts + 1] = k .. "=" .. quote(v)
  end
  parts[#parts + 1] = quote(M.bin)
  parts[#parts + 1] = "-p " .. quote(prefix .. "/") .. " -c conf/nginx.conf -e logs/error.log"
  local cmd = table.concat(parts, " ")
  if o.daemon == false then
    -- the master stays in the foreground of a background shell job
    cmd = ("(%s < /dev/null > %s 2>&1 &)"):format(cmd, quote(prefix .. "/logs/stdout.log"))
  end
  local out, rc = run(cmd)
  self.start_output = out
  if rc ~= 0 then
    return nil, ("nginx failed to start (exit %d): %s\n%s"):format(rc, out, self:error_log()), self
  end
  local deadline = M.now() + (o.start_timeout or 15)
  while M.now() < deadline do
    if self:master_pid() then
      local c = socket.tcp()
      c:settimeout(0.5)
      local ok = c:connect("127.0.0.1", self.port)
      c:close()
      if ok then
        return self
      end
    end
    M.sleep(0.05)
  end
  return nil, "nginx did not come up:\n" .. self:error_log(), self
end

function Nginx:error_log()
  return read_file(self.log_path) or ""
end

function Nginx:master_pid()
  local s = read_file(self.pid_path)
  local pid = s and tonumber(s:match("%d+"))
  if pid and alive(pid) then
    return pid
  end
  return nil
end

--- Process ids whose parent is the master (workers, and old workers
--- shutting down after a reload).
function Nginx:worker_pids()
  local master = self:master_pid()
  if not master then
    return {}
  end
  local pids = {}
  -- every thread's children file: nginx forks from its main thread
  local p = io.popen("cat /proc/" .. master .. "/task/*/children 2>/dev/null")
  local s = p:read("*a")
  p:close()
  for pid in s:gmatch("%d+") do
    if alive(tonumber(pid)) then
      pids[#pids + 1] = tonumber(pid)
    end
  end
  table.sort(pids)
  return pids
end

--- Number of threads of a process (entries of /proc/PID/task), nil if gone.
function Nginx:threads(pid)
  local p = io.popen("ls /proc/" .. pid .. "/task 2>/dev/null")
  local s = p:read("*a")
  p:close()
  local n = 0
  for _ in s:gmatch("%d+") do
    n = n + 1
  end
  return n > 0 and n or nil
end

--- The threads of a process, sorted by id: { { tid = n, comm = "name",
--- sigblk = "hex mask of blocked signals" }, ... }; {} when it is gone.
function Nginx:tasks(pid)
  local p = io.popen("ls /proc/" .. pid .. "/task 2>/dev/null")
  local s = p:read("*a")
  p:close()
  local list = {}
  for tid in s:gmatch("%d+") do
    local dir = ("/proc/%d/task/%s/"):format(pid, tid)
    local comm = read_file(dir .. "comm")
    local status = read_file(dir .. "status")
    if comm then
      list[#list + 1] = { tid = tonumber(tid), comm = (comm:gsub("\n$", "")),
                          sigblk = status and status:match("SigBlk:%s*(%x+)") }
    end
  end
  table.sort(list, function(a, b) return a.tid < b.tid end)
  return list
end

--- Waits (up to `timeout` s) until process `pid` has at most `max` threads;
--- returns the last count seen and whether it got there.
function Nginx:settle_threads(pid, max, timeout)
  local deadline = M.now() + (timeout or 5)
  local n = self:threads(pid)
  while n and n > max and M.now() < deadline do
    M.sleep(0.1)
    n = self:threads(pid)
  end
  return n, n ~= nil and n <= max
end

--- Worker processes that are not shutting down (title "nginx: worker process",
--- not "... is shutting down").
function Nginx:live_workers()
  local out = {}
  for _, pid in ipairs(self:worker_pids()) do
    local cmd = (read_file("/proc/" .. pid .. "/cmdline") or ""):gsub("%z", " ")
    if cmd:find("worker process", 1, true) and not cmd:find("shutting down", 1, true) then
      out[#out + 1] = pid
    end
  end
  return out
end

--- A plain HTTP/1.0 GET on a new connection: status, body, or nil, err.
function Nginx:get(path, timeout)
  local c = socket.tcp()
  c:settimeout(timeout or 15)
  local ok, err = c:connect("127.0.0.1", self.port)
  if not ok then
    c:close()
    return nil, "connect: " .. tostring(err)
  end
  ok, err = c:send(("GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"):format(path))
  if not ok then
    c:close()
    return nil, "send: " .. tostring(err)
  end
  local data, rerr, partial = c:receive("*a")
  c:close()
  data = data or partial
  if not data or data == "" then
    return nil, "receive: " .. tostring(rerr)
  end
  local status = tonumber(data:match("^HTTP/%d%.%d (%d%d%d)"))
  local body = data:match("\r\n\r\n(.*)$") or ""
  return status, body
end

--- A handle for an nginx started elsewhere (e.g. by another process): only
--- get() is meaningful.
function M.at(port)
  return setmetatable({ port = port }, Nginx)
end

--- nginx -s SIGNAL (reload, quit, stop, reopen).
function Nginx:signal(sig)
  return run(("%s -p %s -c conf/nginx.conf -e logs/error.log -s %s"):format(quote(M.bin), quote(self.prefix .. "/"), sig))
end

--- HUP: re-read the configuration (new Lua VM in the master, new workers).
--- Sends SIGHUP to the master directly (same as `nginx -s reload`).
function Nginx:reload()
  local pid = self:master_pid()
  if not pid then
    return nil, "no master"
  end
  local _, rc = run("kill -HUP " .. pid)
  return rc == 0
end

--- Waits (up to `timeout` s) until no worker but the live ones remain and
--- there are `n` of them; true or nil.
function Nginx:wait_workers(n, timeout)
  local deadline = M.now() + (timeout or 10)
  while M.now() < deadline do
    local all, live = self:worker_pids(), self:live_workers()
    if #all == n and #live == n then
      return true
    end
    M.sleep(0.05)
  end
  return nil
end

--- nginx -s quit, then wait up to `timeout` s for the master to exit.
--- Returns true, seconds taken; or nil, seconds waited.
function Nginx:quit(timeout)
  local pid = self:master_pid()
  local t0 = M.now()
  if not pid then
    return true, 0
  end
  self:signal("quit")
  local deadline = t0 + (timeout or 5)
  while M.now() < deadline do
    if not alive(pid) then
      self.master_gone = true
      return true, M.now() - t0
    end
    M.sleep(0.02)
  end
  return nil, M.now() - t0
end

--- Stops nginx whatever its state (quit, then SIGKILL of the master and
--- its children), and removes the prefix unless keep is true.
function Nginx:stop(keep)
  local pid = self:master_pid()
  if pid then
    local children = self:worker_pids()
    local ok = self:quit(5)
    if not ok then
      for _, c in ipairs(children) do
        run("kill -KILL " .. c)
      end
      run("kill -KILL " .. pid)
    end
  end
  if not keep and not os.getenv("NGINX_SPEC_KEEP") then
    run("rm -rf " .. quote(self.prefix))
  end
  return true
end

return M
