-- stand-in for kong.db.utils: topological_sort (dependencies first)
local M = {}
function M.topological_sort(items, get_neighbors)
  local visited, sorted = {}, {}
  local function visit(item, stack)
    if visited[item] == true then return true end
    if visited[item] == "visiting" then return nil, "cycle detected: " .. tostring(item) end
    visited[item] = "visiting"
    for _, n in ipairs(get_neighbors(item) or {}) do
      local ok, err = visit(n)
      if not ok then return nil, err end
    end
    visited[item] = true
    sorted[#sorted + 1] = item
    return true
  end
  for _, item in ipairs(items) do
    local ok, err = visit(item)
    if not ok then return nil, err end
  end
  return sorted
end
return M
