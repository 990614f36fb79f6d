-- stand-in for kong.tools.time
local M = {}
function M.get_updated_now()
  ngx.update_time()
  return ngx.now()
end
return M
