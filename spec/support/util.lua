-- Small file, shell and table helpers shared by the specs and their support modules.
local M = {}

--- The string single-quoted for /bin/sh.
function M.shell_quote(s)
  return "'" .. (tostring(s):gsub("'", "'\\''")) .. "'"
end

--- The whole file, or nil when it cannot be opened.
function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

--- Writes text to path (raises on failure) and returns path.
function M.write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

--- A random hex string of `nbytes` bytes (2 x nbytes characters).
function M.hex(nbytes)
  local f = assert(io.open("/dev/urandom", "rb"))
  local s = f:read(nbytes)
  f:close()
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

--- The tables' keys merged into a new table, later ones winning (nil skipped).
function M.merge(...)
  local out = {}
  for i = 1, select("#", ...) do
    for k, v in pairs((select(i, ...)) or {}) do out[k] = v end
  end
  return out
end

--- A Lua chunk that returns a copy of `t` (strings, numbers, booleans,
--- nested tables): cjson writes it, the chunk decodes it.
function M.lua_returning(t)
  return "return require('cjson').decode(" .. ("%q"):format(require("cjson").encode(t)) .. ")\n"
end

--- Whether a file can be opened for reading.
function M.exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

--- How many times `needle` (plain text) occurs in `haystack`.
function M.count(haystack, needle)
  local n, i = 0, 1
  while true do
    local s, e = haystack:find(needle, i, true)
    if not s then return n end
    n, i = n + 1, e + 1
  end
end

--- What a shell command printed on stdout.
function M.sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

--- Whether a list holds `value`.
function M.contains(list, value)
  for _, v in ipairs(list) do
    if v == value then return true end
  end
  return false
end

--- Whether a shell command exits 0 (os.execute of Lua 5.1 and 5.2+).
function M.succeeds(cmd)
  local r = os.execute(cmd)
  return r == 0 or r == true
end

--- The python3 to run helper scripts with.
--- A free TCP port on 127.0.0.1 (bound and released: nothing listens on it).
function M.free_port()
  local s = assert(require("socket").bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

function M.python()
  return M.exists("/usr/bin/python3") and "/usr/bin/python3" or "python3"
end

return M
