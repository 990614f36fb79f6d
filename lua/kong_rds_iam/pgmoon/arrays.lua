-- kong_rds_iam.pgmoon.arrays: PostgreSQL arrays for the pgmoon-compatible
-- class, with the API of pgmoon's pgmoon.arrays (the names Kong's Postgres
-- strategy and pgmoon itself use):
--
--   encode_array(tbl [, escape_literal]) -> "ARRAY[...]" SQL text
--   decode_array(str [, convert_fn [, pg]]) -> Lua array from PostgreSQL's
--                                              array text output
--   PostgresArray(tbl) -> tbl, marked as an array (metatable
--                         PostgresArray.__base, with pgmoon_serialize)
--   NULL -> the NULL light userdata (ngx.null / cjson.null) used by default
--
-- Written without lpeg; does not load the kong_rds_iam Rust module.

local escape = require "kong_rds_iam.pgmoon.escape"
local cjson = require "cjson"

local byte = string.byte
local sub = string.sub
local find = string.find
local gsub = string.gsub
local lower = string.lower
local concat = table.concat
local getmetatable = getmetatable
local setmetatable = setmetatable
local type = type
local tostring = tostring
local error = error

local M = {}

local NULL = escape.NULL
M.NULL = NULL

-- Array type OIDs by Lua element type, as pgmoon binds them.
local ARRAY_OIDS = {
  boolean = 1000, -- bool[]
  number = 1231, -- numeric[]
  string = 1009, -- text[]
}
-- OIDs whose serialized text is itself array text, to embed unquoted.
local IS_ARRAY_OID = {
  [1000] = true,
  [1231] = true,
  [1009] = true,
  [199] = true, -- json[]
  [3807] = true, -- jsonb[]
}

-- The PostgresArray marker: a callable class table whose __base is the
-- metatable of marked arrays (pgmoon is written in MoonScript; the same
-- shape keeps `getmetatable(x) == PostgresArray.__base` checks working).
local base = {}
base.__index = base
local PostgresArray = setmetatable({ __base = base, __name = "PostgresArray" }, {
  __call = function(_, tbl)
    local marked = setmetatable(tbl or {}, base) -- a local: see decode_array's end
    return marked
  end,
})
base.__class = PostgresArray
M.PostgresArray = PostgresArray

-- Whether `v` is a Lua table to treat as a (sub)array: no metatable, the
-- PostgresArray mark, or lua-cjson's array marks (tables decoded from JSON
-- arrays under OpenResty's cjson carry them).
local function is_array_table(v)
  if type(v) ~= "table" then
    return false
  end
  local mt = getmetatable(v)
  return mt == nil or mt == base or (mt ~= nil and (mt == cjson.array_mt or mt == cjson.empty_array_mt))
end

-- encode_array ------------------------------------------------------------

local function append_sql(buf, values, escape_literal)
  local n = #values
  for i = 1, n do
    local item = values[i]
    if is_array_table(item) then
      buf[#buf + 1] = "["
      append_sql(buf, item, escape_literal)
      buf[#buf + 1] = "]"
    else
      buf[#buf + 1] = escape_literal(item)
    end
    if i < n then
      buf[#buf + 1] = ","
    end
  end
end

--- `tbl` (elements 1..#tbl) as an ARRAY constructor: ARRAY['a',2,NULL],
-- nested tables as sub-arrays (ARRAY[[1,2],[3,4]]). Each element goes
-- through `escape_literal` (default: kong_rds_iam.pgmoon.escape.literal,
-- which assumes a UTF8 connection and is right under either setting of
-- standard_conforming_strings). An empty table gives ARRAY[], which needs a
-- cast (ARRAY[]::text[]) from the caller, as with pgmoon.
function M.encode_array(tbl, escape_literal)
  escape_literal = escape_literal or escape.literal
  local buf = { "ARRAY[" }
  append_sql(buf, tbl, escape_literal)
  buf[#buf + 1] = "]"
  return concat(buf)
end

-- pgmoon_serialize --------------------------------------------------------

-- An element of array text input: "..." with \ and " backslash-escaped.
local function quote_element(s)
  return '"' .. gsub(s, '[\\"]', "\\%0") .. '"'
end

local function number_element(n)
  if n ~= n then
    return "NaN"
  elseif n == math.huge then
    return "Infinity"
  elseif n == -math.huge then
    return "-Infinity"
  end
  -- The SQL text without its guard space (" -5"): array text is no SQL.
  return (gsub(escape.number_literal(n), "^ ", ""))
end

-- Array text of `v` into `buf`; returns the array OID of its first non-NULL
-- element (0 if none or unknown), or nil and an error.
local function append_text(buf, v, null)
  local oid
  buf[#buf + 1] = "{"
  for i = 1, #v do
    if i > 1 then
      buf[#buf + 1] = ","
    end
    local val = v[i]
    local t = type(val)
    local elem_oid
    if val == null or val == NULL then
      buf[#buf + 1] = "NULL"
    elseif t == "number" then
      buf[#buf + 1] = number_element(val)
      elem_oid = ARRAY_OIDS.number
    elseif t == "string" then
      buf[#buf + 1] = quote_element(val)
      elem_oid = ARRAY_OIDS.string
    elseif t == "boolean" then
      buf[#buf + 1] = val and "t" or "f"
      elem_oid = ARRAY_OIDS.boolean
    elseif is_array_table(val) then
      local sub_oid, err = append_text(buf, val, null)
      if not sub_oid then
        return nil, err
      end
      elem_oid = sub_oid ~= 0 and sub_oid or nil
    elseif t == "table" and getmetatable(val).pgmoon_serialize then
      local val_oid, text = getmetatable(val).pgmoon_serialize(val, { NULL = null })
      if not val_oid then
        return nil, text
      end
      if IS_ARRAY_OID[val_oid] then
        buf[#buf + 1] = text
        elem_oid = val_oid
      else
        buf[#buf + 1] = quote_element(text)
      end
    else
      return nil, "table does not implement pgmoon_serialize, can't serialize"
    end
    oid = oid or elem_oid
  end
  buf[#buf + 1] = "}"
  return oid or 0
end

--- For pgmoon's parameter binding: `oid, text` of the array in PostgreSQL's
-- array text input form ({"a","b c",NULL,{1,2}}), the OID from the first
-- non-NULL element (text[], numeric[], bool[]; 0 lets the server decide);
-- nil, err for an element it cannot serialize. `pg.NULL` (if given) and the
-- NULL light userdata serialize as NULL.
function base.pgmoon_serialize(v, pg)
  local buf = {}
  local oid, err = append_text(buf, v, pg and pg.NULL or NULL)
  if not oid then
    return nil, err
  end
  return oid, concat(buf)
end

-- decode_array ------------------------------------------------------------

local UNQUOTED_NULL = {} -- parse-time mark of an unquoted NULL element

local function fail(str, pos, why)
  error("failed to parse postgresql array: " .. why .. " at byte " .. pos .. " of " .. #str, 0)
end

-- The position of the first byte at or after `pos` that is not whitespace
-- (array_in skips blanks, tabs, newlines, CR, VT and FF around elements).
local function skip_space(str, pos)
  local _, stop = find(str, "^[ \t\n\r\v\f]*", pos)
  return stop + 1
end

-- A "..." element starting at `pos`: its text and the position after it.
local function parse_quoted(str, pos)
  local parts = {}
  local i = pos + 1
  while true do
    local at = find(str, '["\\]', i)
    if not at then
      fail(str, pos, "unterminated quoted element")
    end
    parts[#parts + 1] = sub(str, i, at - 1)
    if byte(str, at) == 34 then -- closing "
      return concat(parts), at + 1
    end
    if at == #str then
      fail(str, at, "backslash at end of input")
    end
    parts[#parts + 1] = sub(str, at + 1, at + 1)
    i = at + 2
  end
end

-- An unquoted element starting at `pos`: its text (UNQUOTED_NULL for NULL,
-- in any case, as array_in reads it) and the position after it.
local function parse_unquoted(str, pos)
  local i = pos
  local escaped = false
  local keep = 0 -- leading bytes of `text` that trimming must keep (escaped)
  local text = ""
  while true do
    local at = find(str, '[,}{"\\]', i)
    if not at then
      fail(str, pos, "unterminated array")
    end
    local c = byte(str, at)
    text = text .. sub(str, i, at - 1)
    if c == 92 then -- backslash: next byte taken as it is
      if at == #str then
        fail(str, at, "backslash at end of input")
      end
      text = text .. sub(str, at + 1, at + 1)
      keep = #text
      escaped = true
      i = at + 2
    elseif c == 44 or c == 125 then -- , or }
      -- Trailing whitespace is not part of the element (unless escaped).
      local trimmed = gsub(text, "[ \t\n\r\v\f]+$", "")
      if #trimmed < keep then
        trimmed = sub(text, 1, keep)
      end
      if trimmed == "" then
        fail(str, pos, "empty element")
      end
      if not escaped and lower(trimmed) == "null" then
        return UNQUOTED_NULL, at
      end
      return trimmed, at
    else
      fail(str, at, "unexpected " .. sub(str, at, at))
    end
  end
end

-- A {...} starting at `pos` (which holds "{"): the elements and the
-- position after the closing "}".
local function parse_array(str, pos, depth)
  if depth > 100 then
    fail(str, pos, "arrays nested too deep")
  end
  local out = {}
  local i = skip_space(str, pos + 1)
  if byte(str, i) == 125 then -- {}
    return out, i + 1
  end
  while true do
    i = skip_space(str, i)
    local c = byte(str, i)
    local elem
    if c == 123 then -- {
      elem, i = parse_array(str, i, depth + 1)
    elseif c == 34 then -- "
      elem, i = parse_quoted(str, i)
    elseif c == nil then
      fail(str, i, "unexpected end")
    else
      elem, i = parse_unquoted(str, i)
    end
    out[#out + 1] = elem
    i = skip_space(str, i)
    c = byte(str, i)
    if c == 44 then -- ,
      i = i + 1
    elseif c == 125 then -- }
      return out, i + 1
    elseif c == nil then
      fail(str, i, "unexpected end")
    else
      fail(str, i, "expected , or } but got " .. sub(str, i, i))
    end
  end
end

-- Replaces NULL marks by `null` and converts the other leaves with `fn`.
local function convert(arr, fn, null)
  for i = 1, #arr do
    local v = arr[i]
    if v == UNQUOTED_NULL then
      arr[i] = null
    elseif type(v) == "table" then
      convert(v, fn, null)
    elseif fn then
      arr[i] = fn(v)
    end
  end
  return arr
end

--- Parses PostgreSQL's array text output ({a,"b c",NULL,{1,2}}) into a Lua
-- array, nested for multidimensional arrays, the outer one marked with
-- PostgresArray. Quoted elements may hold \" and \\ (any \x is x); an
-- unquoted NULL (any case) is `pg.NULL` when `pg` is given, else the NULL
-- light userdata, while a quoted "NULL" stays the string "NULL". Each
-- non-NULL element goes through `convert_fn` when given (tonumber, a
-- boolean reader, a JSON decoder...). A leading dimension decoration, as the
-- server writes for lower bounds other than 1 ([0:1]={a,b}), is checked and
-- dropped: the result is indexed from 1. Raises "failed to parse postgresql
-- array: ..." on malformed input.
function M.decode_array(str, convert_fn, pg)
  if type(str) ~= "string" then
    error("failed to parse postgresql array: string expected, got " .. type(str), 0)
  end
  local i = 1
  if byte(str, 1) == 91 then -- [
    local _, stop = find(str, "^%[%s*[-+]?%d+%s*:%s*[-+]?%d+%s*%]")
    local dims = 0
    while stop do
      dims = dims + 1
      i = stop + 1
      _, stop = find(str, "^%[%s*[-+]?%d+%s*:%s*[-+]?%d+%s*%]", i)
    end
    local _, eq = find(str, "^%s*=", i)
    if dims == 0 or not eq then
      fail(str, i, "bad dimension decoration")
    end
    i = eq + 1
  end
  i = skip_space(str, i)
  if byte(str, i) ~= 123 then
    fail(str, i, "expected {")
  end
  local out, stop = parse_array(str, i, 1)
  stop = skip_space(str, stop)
  if stop <= #str then
    fail(str, stop, "junk after array")
  end
  local null = NULL
  if pg and pg.NULL ~= nil then
    null = pg.NULL
  end
  convert(out, convert_fn, null)
  -- Not a tail call: LuaJIT cannot compile one to setmetatable that
  -- returns into the caller's frame.
  setmetatable(out, base)
  return out
end

return M
