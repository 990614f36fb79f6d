-- Runs Lua code in a fresh LuaJIT process with exactly the environment given
-- (plus PATH), so each case freezes its own AWS configuration at load.
local util = require "spec.support.util"
local shell_quote = util.shell_quote
local M = {}


local function cwd()
  local p = assert(io.popen("pwd"))
  local dir = p:read("*l")
  p:close()
  return dir
end

--- out, ok, code = run(code, env, opts)
-- env: table of variables (nothing else is inherited but PATH and HOME unless
-- opts.home is false); opts.prefix: a command to run luajit under (faketime).
function M.run(code, env, opts)
  opts = opts or {}
  local root = cwd()
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(string.format("package.path = %q .. package.path\n", root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;"))
  f:write(string.format("package.cpath = %q .. package.cpath\n", root .. "/target/lua/?.so;"))
  f:write(code)
  f:close()
  local parts = { "env", "-i", "PATH=" .. shell_quote(os.getenv("PATH")) }
  if opts.home ~= false then parts[#parts + 1] = "HOME=" .. shell_quote(opts.home or "/nonexistent-home") end
  for k, v in pairs(env or {}) do parts[#parts + 1] = k .. "=" .. shell_quote(v) end
  if opts.prefix then parts[#parts + 1] = opts.prefix end
  parts[#parts + 1] = "luajit " .. shell_quote(script) .. " 2>&1"
  local p = assert(io.popen(table.concat(parts, " ")))
  local out = p:read("*a")
  local ok, _, code = p:close()
  os.remove(script)
  return out, ok, code
end

return M
