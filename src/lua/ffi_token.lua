-- token() through the LuaJIT FFI: calls kong_rds_iam_token (src/ffi_token.rs)
-- with the conf values as C data instead of going through an mlua callback.
-- Returns `issue(values, n, side)`, or nil where there is no FFI (PUC Lua)
-- or the library cannot be opened by its path; api.lua then uses core.token.
local core = ...

if not jit or not core.library_path then return nil end
local ok, ffi = pcall(require, "ffi")
if not ok then return nil end

-- Declared once per Lua state: loading the module again (package.loaded
-- cleared) finds them declared, which is fine.
pcall(ffi.cdef, [[
typedef struct { int kind; double number; const char *ptr; size_t len; } kong_rds_iam_value_v1;
typedef struct { size_t len; double expires_at; double valid_until; } kong_rds_iam_result_v1;
int kong_rds_iam_token(int side, const kong_rds_iam_value_v1 *values, size_t n,
                       char *out, size_t cap, kong_rds_iam_result_v1 *result);
extern const int32_t kong_rds_iam_token_epoch;
]])
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

-- The kinds src/ffi_token.rs knows (nil is 0).
local BOOLEAN, NUMBER, STRING = 1, 2, 3
local OTHER = { table = 4, ["function"] = 5, thread = 6, userdata = 7 }

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
local DEFER = 2 -- SIDE_DEFER in src/ffi_token.rs
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
      slot.kind = 0
    elseif t == "boolean" then
      slot.kind, slot.number = BOOLEAN, v and 1 or 0
    elseif t == "userdata" and v == null then
      slot.kind = 0
    else
      slot.kind = OTHER[t] or 8
    end
  end
  if defer then side = side + DEFER end
  local status = token_c(side, values_c, n, out, cap, result)
  if status == -1 then
    cap = tonumber(result[0].len) + 1
    out = ffi_new("char[?]", cap)
    status = token_c(side, values_c, n, out, cap, result)
  end
  local len = tonumber(result[0].len)
  if status == 1 then
    return ffi_string(out, len), nil, result[0].expires_at, result[0].valid_until
  end
  if status == 2 then
    local job, wait_ms = match(ffi_string(out, len), "^(%d+) (%d+)$")
    return nil, nil, nil, nil, tonumber(job), tonumber(wait_ms)
  end
  return nil, status == 0 and ffi_string(out, len) or "internal error: token buffer"
end
