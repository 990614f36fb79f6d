-- token() through the LuaJIT FFI: calls kong_rds_iam_token (src/lua/ffi.rs)
-- with the conf values as C data instead of going through an mlua callback.
-- Returns `issue(values, n, side)`, or nil where there is no FFI (PUC Lua)
-- or the library cannot be opened by its path; api.lua then uses core.token.
local core = ...

if not jit or not core.library_path then return nil end
local ok, ffi = pcall(require, "ffi")
if not ok then return nil end

-- Declared once per Lua state: loading the module again (package.loaded
-- cleared) finds them declared, which is fine.
-- The declarations and numbers are src/lua/ffi.rs's contract, defined there once.
local contract = core.contract
pcall(ffi.cdef, contract.cdef)
local lib
ok, lib = pcall(ffi.load, core.library_path)
if not ok then return nil end
local token_c
ok, token_c = pcall(function() return lib.kong_rds_iam_token end)
if not ok then return nil end

local type, tonumber, ffi_string, ffi_new = type, tonumber, ffi.string, ffi.new

-- The token epoch (src/token.rs): read in place, a plain load per call.
local epoch_ok = pcall(function() return lib.kong_rds_iam_token_epoch end)
if epoch_ok then
  core.token_epoch = function() return lib.kong_rds_iam_token_epoch end
end
local null = core.null

local KINDS = contract.kinds
local NIL, BOOLEAN, NUMBER, STRING, OTHER_KIND = KINDS["nil"], KINDS.boolean, KINDS.number, KINDS.string, KINDS.other
local OTHER = { table = KINDS.table, ["function"] = KINDS["function"], thread = KINDS.thread, userdata = KINDS.userdata }
local R = contract.results

-- One set of buffers per Lua state: a call runs to completion without
-- yielding, so calls never overlap.
local MAX_VALUES = 0
for _, keys in pairs(core.token_keys) do MAX_VALUES = math.max(MAX_VALUES, #keys) end
local values_c = ffi_new("kong_rds_iam_value_v1[?]", MAX_VALUES)
local result = ffi_new("kong_rds_iam_result_v1[1]")
local cap = 4096 -- a token with a session token is ~2 KB; grown on demand
local out = ffi_new("char[?]", cap)

--- token, err, expires_at, valid_until, job, wait_ms = issue(values, n, side, defer)
--- `values[1..n]` are the conf's values for core.token_keys[side]; they must
--- stay referenced during the call (the C side reads their bytes in place).
--- With `defer`, credentials that must be fetched come back as the job of
--- that fetch (wait for it, then call again) instead of blocking.
local DEFER = contract.sides.defer
local match = string.match
return function(values, n, side, defer)
  if n > MAX_VALUES then return nil, "internal error: too many token values" end
  for i = 1, n do
    local v, slot = values[i], values_c[i - 1]
    local t = type(v)
    if t == "string" then
      slot.kind, slot.ptr, slot.len = STRING, v, #v
    elseif t == "number" then
      slot.kind, slot.number = NUMBER, v
    elseif t == "nil" then
      slot.kind = NIL
    elseif t == "boolean" then
      slot.kind, slot.number = BOOLEAN, v and 1 or 0
    elseif t == "userdata" and v == null then
      slot.kind = NIL
    else
      slot.kind = OTHER[t] or OTHER_KIND
    end
  end
  if defer then side = side + DEFER end
  local status = token_c(side, values_c, n, out, cap, result)
  if status == R.too_small then
    cap = tonumber(result[0].len) + 1
    out = ffi_new("char[?]", cap)
    status = token_c(side, values_c, n, out, cap, result)
  end
  local len = tonumber(result[0].len)
  if status == R.token then
    return ffi_string(out, len), nil, result[0].expires_at, result[0].valid_until
  end
  if status == R.fetching then
    local job, wait_ms = match(ffi_string(out, len), "^(%d+) (%d+)$")
    return nil, nil, nil, nil, tonumber(job), tonumber(wait_ms)
  end
  return nil, status == R.error and ffi_string(out, len) or "internal error: token buffer"
end
