-- stand-in for kong.tools.table
local M = {}
function M.table_merge(t1, t2)
  local res = {}
  if t1 then for k, v in pairs(t1) do res[k] = v end end
  if t2 then for k, v in pairs(t2) do res[k] = v end end
  return res
end
function M.cycle_aware_deep_copy(orig, remove_metatable, deep_copy_keys, cycle_aware_cache)
  if type(orig) ~= "table" then return orig end
  cycle_aware_cache = cycle_aware_cache or {}
  if cycle_aware_cache[orig] then return cycle_aware_cache[orig] end
  local copy = {}
  cycle_aware_cache[orig] = copy
  for k, v in pairs(orig) do
    local nk = deep_copy_keys and M.cycle_aware_deep_copy(k, remove_metatable, deep_copy_keys, cycle_aware_cache) or k
    copy[nk] = M.cycle_aware_deep_copy(v, remove_metatable, deep_copy_keys, cycle_aware_cache)
  end
  if not remove_metatable then setmetatable(copy, getmetatable(orig)) end
  return copy
end
return M
