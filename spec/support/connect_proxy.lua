-- Lua side of connect_proxy.py: asks the module for a token in a child luajit
-- that runs in a private network namespace (loopback only, needs root,
-- `unshare -n` and `ip`) with HTTPS_PROXY pointing at the recording proxy,
-- which tunnels nothing; so it shows where the module would connect.
--
--   local res, lines, out = connect_proxy.token(e.port, env, conf_extra, after_require)
--   -- res: { token, err, elapsed }; lines: the proxy's request lines
--   -- ("CONNECT sts.us-west-2.amazonaws.com:443 HTTP/1.1"); out: the child's output
local util = require "spec.support.util"
local lua_process = require "spec.support.lua_process"
local iam_probe = require "spec.support.iam_probe"
local shell_quote = util.shell_quote
local M = {}

--- Runs rds.token(conf) (iam_probe.conf_source(port, conf_extra) with a
-- pg_timeout of 3000 unless conf_extra sets one) with `env` plus HTTPS_PROXY;
-- `after_require` is Lua code run right after the module is loaded.
function M.token(port, env, conf_extra, after_require)
  local log = os.tmpname()
  local ready = os.tmpname()
  os.remove(ready)
  local code = ([[
    local cjson = require "cjson"
    local socket = require "socket"
    local proxy = io.popen(%q, "w")
    local deadline = socket.gettime() + 10
    while socket.gettime() < deadline do
      local fh = io.open(%q)
      if fh then fh:close() break end
      socket.sleep(0.02)
    end
    local rds = require "kong_rds_iam"
    %s
    local t0 = socket.gettime()
    local tok, err = rds.token(%s)
    io.write("RESULT ", cjson.encode { token = tok, err = err, elapsed = socket.gettime() - t0 }, "\n")
    proxy:close()
  ]]):format(("%s spec/support/connect_proxy.py 3128 %s %s"):format(util.python(), shell_quote(log), shell_quote(ready)),
    ready, after_require or "", iam_probe.conf_source(port, util.merge({ pg_timeout = 3000 }, conf_extra)))
  local out = lua_process.run(code, util.merge(env, { HTTPS_PROXY = "http://127.0.0.1:3128" }),
    { prefix = [[unshare -n sh -c 'ip link set lo up && exec "$@"' sh]] })
  local lines = {}
  for line in (util.read_file(log) or ""):gmatch("[^\n]+") do lines[#lines + 1] = line end
  os.remove(log)
  os.remove(ready)
  return iam_probe.result_of(out), lines, out
end

return M
