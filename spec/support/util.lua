-- Small file and shell helpers shared by the spec support modules.
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

return M
