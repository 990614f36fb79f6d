-- Lua side of fake_pg.py: a fake PostgreSQL server on a free 127.0.0.1 port
-- that asks for one authentication method and records what the client sends
-- back.
--
--   local f = assert(fake_pg.start("md5"))   -- "cleartext" | "md5" | "scram"
--   rds.connect { pg_host = "127.0.0.1", pg_port = f.port, ... }
--   f:received(1) -- per connection, oldest first: the bytes the client sent
--                 -- after the request ("" when it sent nothing)
--   f:stop()
local util = require "spec.support.util"
local socket = require "socket"
local shell_quote = util.shell_quote
local M = {}

local Fake = {}
Fake.__index = Fake

function M.start(auth)
  local log, ready = os.tmpname(), os.tmpname()
  os.remove(ready)
  local cmd = ("%s spec/support/fake_pg.py %s %s %s"):format(util.python(), shell_quote(auth), shell_quote(log), shell_quote(ready))
  local proc = io.popen(cmd, "w")
  local deadline = socket.gettime() + 10
  while socket.gettime() < deadline do
    local port = tonumber(util.read_file(ready) or "")
    if port then
      os.remove(ready)
      return setmetatable({ port = port, log = log, proc = proc }, Fake)
    end
    socket.sleep(0.02)
  end
  proc:close()
  return nil, "fake_pg.py did not start"
end

--- What the client sent on each connection so far (waiting up to 3 s for
--- `count` connections to be recorded).
function Fake:received(count)
  local deadline = socket.gettime() + 3
  while true do
    local out = {}
    for line in (util.read_file(self.log) or ""):gmatch("([^\n]*)\n") do
      out[#out + 1] = (line:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
    end
    if #out >= (count or 0) or socket.gettime() > deadline then return out end
    socket.sleep(0.02)
  end
end

function Fake:stop()
  if self.proc then self.proc:close() end
  self.proc = nil
  os.remove(self.log)
end

return M
