-- A throwaway redis-server (or valkey-server) on a free 127.0.0.1 port, for
-- the Redis helper's wiring spec: no persistence, its own directory, stopped
-- by its pid.
--
--   local redis_server = require "spec.support.redis_server"
--   local s = assert(redis_server.start())   -- s.port, s.binary, s.dir
--   s:stop()
local socket = require "socket"
local util = require "spec.support.util"
local quote = util.shell_quote
local M = {}

--- The server binary: $REDIS_SERVER, else valkey-server, else redis-server (nil if none).
function M.binary()
  local env = os.getenv("REDIS_SERVER")
  if env and env ~= "" then return env end
  for _, name in ipairs { "valkey-server", "redis-server" } do
    local path = util.sh("command -v " .. name .. " 2>/dev/null"):gsub("%s+$", "")
    if path ~= "" then return path end
  end
  return nil
end

local free_port = util.free_port

local function ping(port)
  local c = socket.tcp()
  c:settimeout(0.5)
  if not c:connect("127.0.0.1", port) then c:close() return false end
  c:send("PING\r\n")
  local line = c:receive("*l")
  c:close()
  return line == "+PONG"
end

local Server = {}
Server.__index = Server

function M.start()
  local bin = M.binary()
  if not bin then
    return nil, "no redis-server or valkey-server (apt-get install redis-server)"
  end
  for _ = 1, 5 do
    local dir = util.sh("mktemp -d /tmp/kong-rds-iam-redis.XXXXXXXX"):gsub("%s+$", "")
    local port = free_port()
    local pidfile = dir .. "/redis.pid"
    local cmd = table.concat({ quote(bin), "--port", port, "--bind", "127.0.0.1", "--daemonize", "yes",
      "--pidfile", quote(pidfile), "--dir", quote(dir), "--logfile", quote(dir .. "/redis.log"),
      "--save", "''", "--appendonly", "no", "--protected-mode", "yes" }, " ")
    util.succeeds(cmd)
    for _ = 1, 100 do
      if ping(port) then
        local pid = tonumber((util.read_file(pidfile) or ""):match("%d+"))
        return setmetatable({ port = port, binary = bin, dir = dir, pid = pid }, Server)
      end
      socket.sleep(0.05)
    end
    -- lost the port to someone else, or did not start: clean up and try another
    local pid = tonumber((util.read_file(pidfile) or ""):match("%d+"))
    if pid then util.succeeds("kill " .. pid .. " 2>/dev/null") end
    util.succeeds("rm -rf " .. quote(dir))
  end
  return nil, "redis-server did not start"
end

function Server:stop()
  if self.pid then
    util.succeeds("kill " .. self.pid .. " 2>/dev/null")
    for _ = 1, 100 do
      if not util.succeeds("kill -0 " .. self.pid .. " 2>/dev/null") then break end
      socket.sleep(0.05)
    end
    self.pid = nil
  end
  util.succeeds("rm -rf " .. quote(self.dir))
end

return M
