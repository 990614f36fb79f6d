-- stand-in for kong.tools.string
local M = {}
function M.strip(s)
  if s == nil then return "" end
  return (tostring(s):gsub("^%s+", ""):gsub("%s+$", ""))
end
return M
