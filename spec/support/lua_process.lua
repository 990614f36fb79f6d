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

-- The shell command that runs `code` (written to a new script file, with the
-- repository's lua/ and target/lua/ on the paths) and that script's path.
local function command(code, env, opts)
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
  return table.concat(parts, " "), script
end

--- out, ok, code = run(code, env, opts)
-- env: table of variables (nothing else is inherited but PATH and HOME unless
-- opts.home is false); opts.prefix: a command to run luajit under (faketime).
function M.run(code, env, opts)
  local cmd, script = command(code, env, opts)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  local ok, _, status = p:close()
  os.remove(script)
  return out, ok, status
end

--- pipe = spawn(code, env, opts): starts the same process as run() without
-- waiting for it (run several at once); read its output with collect(pipe).
function M.spawn(code, env, opts)
  local cmd, script = command(code, env, opts)
  return assert(io.popen(cmd .. "; rm -f " .. shell_quote(script)))
end

--- Everything a spawned process printed (stdout and stderr), once it has exited.
function M.collect(pipe)
  local out = pipe:read("*a")
  pipe:close()
  return out
end

return M
