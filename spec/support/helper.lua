-- Runs once before any spec, in the busted process: gives the module a known,
-- offline AWS environment to freeze on its first require, so no spec can reach
-- a real AWS endpoint (IMDS is disabled, no profile files are read).
local ffi = require "ffi"
ffi.cdef [[
  int setenv(const char *name, const char *value, int overwrite);
  int unsetenv(const char *name);
  extern char **environ;
]]

local test_env = require "spec.support.test_env"

-- Drop every AWS_* variable the caller may have, then set ours.
local names = {}
local i = 0
while ffi.C.environ[i] ~= nil do
  local entry = ffi.string(ffi.C.environ[i])
  local name = entry:match("^(AWS_[^=]*)=")
  if name then names[#names + 1] = name end
  i = i + 1
end
for _, name in ipairs(names) do ffi.C.unsetenv(name) end
for name, value in pairs(test_env.vars) do ffi.C.setenv(name, value, 1) end
