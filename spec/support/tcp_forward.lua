-- A TCP forwarder on 127.0.0.1 (tcp_forward.py): a stand-in for a tunnel or
-- a load balancer in front of the database.
--
--   local fwd = tcp_forward.start("127.0.0.1", e.port)  -- fwd.port: where to dial
--   fwd:connections()  -- how many connections it accepted so far
--   fwd:stop()
local socket = require "socket"
local util = require "spec.support.util"

local M = {}
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/support"

function M.start(host, port)
  local port_file, count_file = os.tmpname(), os.tmpname()
  os.remove(port_file)
  local cmd = ("exec python3 %s %s %s %d %s"):format(util.shell_quote(here .. "/tcp_forward.py"),
    util.shell_quote(port_file), util.shell_quote(host), port, util.shell_quote(count_file))
  local proc = assert(io.popen(cmd, "w"))
  local deadline = socket.gettime() + 10
  while socket.gettime() < deadline do
    local f = io.open(port_file)
    if f then
      local listening = tonumber(f:read("*a"))
      f:close()
      os.remove(port_file)
      return {
        port = listening,
        connections = function()
          local c = io.open(count_file)
          local text = c and c:read("*a") or ""
          if c then c:close() end
          return select(2, text:gsub("\n", ""))
        end,
        stop = function()
          proc:close()
          os.remove(count_file)
        end,
      }
    end
    socket.sleep(0.02)
  end
  proc:close()
  os.remove(count_file)
  error("tcp_forward.py did not start")
end

return M
