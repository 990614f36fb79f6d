-- Under LuaJIT token() goes through the FFI (src/ffi_token.rs) instead of an
-- mlua callback. Both routes must give the same answer for every conf: the
-- same token, expiry and error message. One process loads the module twice,
-- once as usual and once with the ffi library hidden, and compares.
local lua_process = require "spec.support.lua_process"
local cjson = require "cjson"

local CODE = [==[
local cjson = require "cjson"
local ffi = require "ffi"

-- Count the calls that reach kong_rds_iam_token through ffi.load's namespace.
local calls, real_load = 0, ffi.load
ffi.load = function(path)
  local lib = real_load(path)
  return setmetatable({}, { __index = function(_, name)
    local f = lib[name]
    if name ~= "kong_rds_iam_token" then return f end
    return function(...) calls = calls + 1; return f(...) end
  end })
end
local via_ffi = require "kong_rds_iam"
ffi.load = real_load

-- The same library again, its Lua side loaded with no ffi to find.
package.loaded.kong_rds_iam, package.loaded.ffi = nil, nil
package.preload.ffi = function() error("ffi hidden by the test") end
local via_mlua = require "kong_rds_iam"
assert(via_mlua ~= via_ffi)

local HOST = "mydb.abcdefghijkl.eu-west-3.rds.amazonaws.com"
local KEYS = { "host", "port", "user", "timeout", "iam_auth_region", "iam_auth_assume_role_arn",
  "iam_auth_role_session_name", "iam_auth_sts_endpoint_url" }
local VALUES = { true, false, 0, -1, 0.5, 2 ^ 53, 1 / 0, 0 / 0, "", " ", "x", "6432", " padded ",
  "caf\233", "a\0b", {}, { "a" }, print, coroutine.create(print), io.stdout, via_ffi.null }

local function answer(rds, conf, mode)
  local tok, err, exp = rds.token(conf, mode)
  return { tok = tok, err = err, exp = exp }
end

local out = { mismatches = {}, cases = 0, tokens = 0, errors = 0 }
local function compare(label, conf, mode)
  local before = calls
  local a = answer(via_ffi, conf, mode)
  local through_ffi = calls > before
  local b = answer(via_mlua, conf, mode)
  out.cases = out.cases + 1
  if a.tok then out.tokens = out.tokens + 1 else out.errors = out.errors + 1 end
  if calls ~= before + (through_ffi and 1 or 0) then
    out.mismatches[#out.mismatches + 1] = label .. ": the mlua module called the ffi"
  end
  if mode ~= "bogus" and not through_ffi then
    out.mismatches[#out.mismatches + 1] = label .. ": token() did not go through the ffi"
  end
  if a.tok ~= b.tok or a.err ~= b.err or a.exp ~= b.exp then
    out.mismatches[#out.mismatches + 1] = ("%s: ffi %s / %s, mlua %s / %s"):format(
      label, tostring(a.tok and "token" or nil), tostring(a.err), tostring(b.tok and "token" or nil), tostring(b.err))
  end
end

for _, mode in ipairs { "rw", "ro" } do
  local prefix = mode == "rw" and "pg_" or "pg_ro_"
  compare(mode .. " plain", { pg_host = HOST, pg_user = "u_" .. mode }, mode)
  compare(mode .. " mixed case host, string port", { pg_host = "MyDB.abcdefghijkl.EU-WEST-3.rds.amazonaws.com",
    pg_port = "6432", pg_user = "u2_" .. mode }, mode)
  for _, key in ipairs(KEYS) do
    for i, value in ipairs(VALUES) do
      local conf = { pg_host = HOST, pg_user = "user_" .. mode .. "_" .. key .. "_" .. i }
      conf[prefix .. key] = value
      compare(("%s %s%s = value #%d"):format(mode, prefix, key, i), conf, mode)
    end
  end
end
compare("unknown mode", { pg_host = HOST }, "bogus")
-- A read-only conf whose pg_ro_* keys fall back to pg_*.
compare("ro fallback", { pg_host = HOST, pg_user = "rw_user", pg_ro_user = "" }, "ro")
io.write("RESULT ", cjson.encode(out), "\n")
]==]

describe("token() through the LuaJIT FFI", function()
  it("answers exactly as the mlua route for every conf value", function()
    local out = lua_process.run(CODE, {
      AWS_ACCESS_KEY_ID = "AKIDFFIROUTE0000001", AWS_SECRET_ACCESS_KEY = "ffi-route-secret",
      AWS_EC2_METADATA_DISABLED = "true",
    })
    local json = out:match("RESULT ([^\n]+)")
    assert.truthy(json, out)
    local res = cjson.decode(json)
    assert.same({}, res.mismatches)
    -- Both kinds of answer were compared, many times over.
    assert.is_true(res.cases > 300, out)
    assert.is_true(res.tokens > 50, out)
    assert.is_true(res.errors > 100, out)
  end)
end)

describe("the cross-language contract of src/lua/ffi.rs", function()
  local rds = require "kong_rds_iam"
  local ffi = require "ffi"
  local contract = rds._contract

  it("lays the C structs out in LuaJIT as Rust does", function()
    pcall(ffi.cdef, contract.cdef)
    local layout = contract.layout
    assert.same({
      ffi.sizeof("kong_rds_iam_value_v1"),
      ffi.offsetof("kong_rds_iam_value_v1", "kind"),
      ffi.offsetof("kong_rds_iam_value_v1", "number"),
      ffi.offsetof("kong_rds_iam_value_v1", "ptr"),
      ffi.offsetof("kong_rds_iam_value_v1", "len"),
      ffi.sizeof("kong_rds_iam_result_v1"),
      ffi.sizeof("kong_rds_iam_io_v1"),
      ffi.offsetof("kong_rds_iam_io_v1", "out"),
      ffi.offsetof("kong_rds_iam_io_v1", "out_len"),
      ffi.offsetof("kong_rds_iam_io_v1", "msg"),
      ffi.offsetof("kong_rds_iam_io_v1", "msg_len"),
      ffi.offsetof("kong_rds_iam_io_v1", "number"),
      ffi.offsetof("kong_rds_iam_io_v1", "cells"),
      ffi.offsetof("kong_rds_iam_io_v1", "ncells"),
      ffi.offsetof("kong_rds_iam_io_v1", "ncols"),
      ffi.offsetof("kong_rds_iam_io_v1", "conn"),
      ffi.offsetof("kong_rds_iam_io_v1", "pipe"),
      ffi.offsetof("kong_rds_iam_io_v1", "reused"),
    }, layout)
  end)

  it("numbers every Lua type, both sides and every result distinctly", function()
    local seen = {}
    for _, t in ipairs { "nil", "boolean", "number", "string", "table", "function", "thread", "userdata", "other" } do
      local n = contract.kinds[t]
      assert.is_number(n, t)
      assert.is_nil(seen[n], "kind number used twice: " .. tostring(n))
      seen[n] = t
    end
    assert.equal(0, contract.kinds["nil"]) -- zeroed slots read as nil
    assert.not_equal(contract.sides.rw, contract.sides.ro)
    -- defer is a flag added to a side: it must not collide with either
    assert.equal(0, bit.band(contract.sides.defer, contract.sides.ro))
    local results = {}
    for _, name in ipairs { "too_small", "error", "token", "fetching" } do
      assert.is_number(contract.results[name], name)
      assert.is_nil(results[contract.results[name]], name)
      results[contract.results[name]] = name
    end
    local door = {}
    for _, name in ipairs { "gone", "send", "more", "rows", "done", "result", "pooled", "closed", "refused",
                            "taken", "none", "off", "adopted", "typed" } do
      assert.is_number(contract.door[name], name)
      assert.is_nil(door[contract.door[name]], name)
      door[contract.door[name]] = name
    end
    assert.equal(0, contract.door.gone) -- a zeroed status reads as no connection
  end)
end)
