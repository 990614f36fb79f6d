-- stand-in for kong.cmd.utils.log: forwards to ngx.log
local fmt = string.format
local M = {}
local function mk(level)
  return function(msg, ...)
    if select("#", ...) > 0 then msg = fmt(msg, ...) end
    ngx.log(level, "[kong stand-in log] ", tostring(msg))
  end
end
M.debug = mk(ngx.DEBUG)
M.verbose = mk(ngx.INFO)
M.info = mk(ngx.INFO)
M.warn = mk(ngx.WARN)
M.error = mk(ngx.ERR)
setmetatable(M, { __call = function(_, ...) return M.info(...) end })
return M
