-- A stand-in for lua-resty-redis (Debian does not ship it) over LuaSocket,
-- with its method names and its cosocket pool's behaviour, for testing the
-- wiring of kong_rds_iam.redis against a real redis-server:
--
--   red:connect(host, port, { pool = name, ssl = ... })  -- takes an idle
--       connection of pool `name` (default "host:port") if there is one
--   red:get_reused_times()   -- 0 for a new connection, n for its n-th reuse
--   red:set_keepalive()      -- back into its pool; red is closed
--   red:close()
--   red:<any command>(...)   -- RESP; error replies give false, "ERR ..."
--                               as lua-resty-redis does
--
-- Plain TCP only (`ssl = true` is refused: the local server has no TLS).
-- `red.sent` lists the command names sent on this object (lowercase);
-- `red.connect_opts` the options of the last connect. M.pools holds the idle
-- connections by pool name; M.reset() closes them all.
local socket = require "socket"

local M = {}
M.pools = {}

local Red = {}

local function command(self, name, ...)
  if not self.sock then
    return nil, "closed"
  end
  local args = { name, ... }
  local out = { "*" .. #args .. "\r\n" }
  for i, a in ipairs(args) do
    a = tostring(a)
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
    args[i] = a
  end
  self.sent[#self.sent + 1] = name:lower()
  local ok, err = self.sock:send(table.concat(out))
  if not ok then
    return nil, err
  end
  return self:read_reply()
end

function Red:read_reply()
  local line, err = self.sock:receive("*l")
  if not line then
    return nil, err
  end
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "+" then
    return rest
  elseif kind == "-" then
    return false, rest
  elseif kind == ":" then
    return tonumber(rest)
  elseif kind == "$" then
    local n = tonumber(rest)
    if n < 0 then
      return M.null
    end
    local data, e = self.sock:receive(n + 2)
    if not data then
      return nil, e
    end
    return data:sub(1, n)
  elseif kind == "*" then
    local n = tonumber(rest)
    if n < 0 then
      return M.null
    end
    local arr = {}
    for i = 1, n do
      local v, e = self:read_reply()
      if v == nil then
        return nil, e
      end
      arr[i] = v
    end
    return arr
  end
  return nil, "bad reply: " .. line
end

-- The object's own fields; any other missing key is a command.
local FIELDS = { sock = true, reused = true, pool = true, connect_opts = true, sent = true }

Red.__index = function(_, k)
  local m = rawget(Red, k)
  if m or FIELDS[k] then
    return m
  end
  return function(self, ...) return command(self, k, ...) end
end

M.null = setmetatable({}, { __tostring = function() return "null" end })

function M.new()
  return setmetatable({ sent = {} }, Red)
end

function Red:connect(host, port, opts)
  opts = opts or {}
  self.connect_opts = opts
  self.pool = opts.pool or (host .. ":" .. tostring(port))
  local idle = M.pools[self.pool]
  if idle and #idle > 0 then
    local c = table.remove(idle)
    self.sock, self.reused = c.sock, c.reused + 1
    return 1
  end
  if opts.ssl then
    return nil, "the stand-in speaks no tls"
  end
  local sock, err = socket.tcp()
  if not sock then
    return nil, err
  end
  sock:settimeout(5)
  local ok
  ok, err = sock:connect(host, port)
  if not ok then
    sock:close()
    return nil, err
  end
  self.sock, self.reused = sock, 0
  return 1
end

function Red:get_reused_times()
  if not self.sock then
    return nil, "closed"
  end
  return self.reused
end

function Red:set_keepalive()
  if not self.sock then
    return nil, "closed"
  end
  M.pools[self.pool] = M.pools[self.pool] or {}
  table.insert(M.pools[self.pool], { sock = self.sock, reused = self.reused })
  self.sock = nil
  return 1
end

function Red:close()
  if not self.sock then
    return nil, "closed"
  end
  self.sock:close()
  self.sock = nil
  return 1
end

function M.idle(pool)
  return M.pools[pool] and #M.pools[pool] or 0
end

function M.reset()
  for _, idle in pairs(M.pools) do
    for _, c in ipairs(idle) do c.sock:close() end
  end
  M.pools = {}
end

return M
