-- kong_rds_iam.pgmoon.escape: the default SQL literal and identifier quoting
-- of the pgmoon helpers (kong_rds_iam.pgmoon.arrays, kong_rds_iam.pgmoon.json),
-- used when a caller passes no escape function of its own, as Kong's Postgres
-- strategy does with encode_array and encode_json.
--
-- The same rules as src/pg/escape.rs, which follows libpq's PQescapeLiteral,
-- for a connection whose client_encoding is UTF8 (what the driver asks for at
-- startup):
--
--   strings   '...' with ' doubled; with a backslash in the value, every
--             backslash is doubled too and the form is " E'...'" (libpq's
--             leading space keeps the E from gluing to a preceding word).
--             Right whether standard_conforming_strings is on or off.
--             A zero byte, or bytes that are not UTF-8, raise an error
--             ("value contains a zero byte", "incomplete multibyte
--             character", "invalid multibyte character"): under another
--             client encoding (SJIS, GBK, BIG5...) a value must be escaped
--             by the connection, which knows its encoding, not by this
--             default.
--   numbers   integers below 2^53 as digits, other finite numbers as the
--             shortest %g text that reads back exactly, NaN and infinities
--             as 'NaN'::float8, 'Infinity'::float8, '-Infinity'::float8;
--             negative numbers start with a space (" -5") so that a
--             preceding "-" cannot make a "--" comment.
--   booleans  TRUE, FALSE
--   NULL      nil, or the NULL light userdata (ngx.null, cjson.null: the
--             same value) -> NULL
--
-- Anything else raises "don't know how to escape value: ..." as pgmoon does.
--
-- Does not load the kong_rds_iam Rust module.

local cjson = require "cjson"

local byte = string.byte
local find = string.find
local format = string.format
local gsub = string.gsub
local tostring = tostring
local tonumber = tonumber
local type = type
local error = error

local huge = math.huge
local EXACT = 2 ^ 53

local M = {}

-- SQL NULL as pgmoon's NULL would be in Kong (connection.NULL = ngx.null);
-- ngx.null and cjson.null are both the NULL light userdata, so equal.
local NULL = cjson.null
M.NULL = NULL

-- nil when `s` is valid UTF-8, else the error message. The server's rule:
-- no overlong forms, no surrogates, nothing above U+10FFFF.
local function utf8_error(s)
  local i, n = 1, #s
  while i <= n do
    local c = byte(s, i)
    if c < 0x80 then
      i = i + 1
    else
      local len, lo, hi = 0, 0x80, 0xBF
      if c >= 0xC2 and c <= 0xDF then
        len = 2
      elseif c >= 0xE0 and c <= 0xEF then
        len = 3
        if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
      elseif c >= 0xF0 and c <= 0xF4 then
        len = 4
        if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
      elseif c >= 0xC0 and c <= 0xF7 then
        len = c < 0xE0 and 2 or c < 0xF0 and 3 or 4 -- never valid, but sized
      else
        return "invalid multibyte character"
      end
      if i + len - 1 > n then
        return "incomplete multibyte character"
      end
      if c < 0xC2 or c > 0xF4 then
        return "invalid multibyte character"
      end
      local second = byte(s, i + 1)
      if second < lo or second > hi then
        return "invalid multibyte character"
      end
      for j = i + 2, i + len - 1 do
        local t = byte(s, j)
        if t < 0x80 or t > 0xBF then
          return "invalid multibyte character"
        end
      end
      i = i + len
    end
  end
  return nil
end

-- nil when `s` can be quoted (no zero byte, valid UTF-8), else why not.
local function text_error(s)
  if find(s, "\0", 1, true) then
    return "value contains a zero byte"
  end
  if find(s, "[\128-\255]") then
    return utf8_error(s)
  end
  return nil
end

-- The shortest %g text that reads back as `n` (finite, not integral-small).
local function shortest(n)
  local s
  for precision = 1, 17 do
    s = format("%." .. precision .. "g", n)
    if tonumber(s) == n then
      break
    end
  end
  -- 1e+300 -> 1e300, 1e-07 -> 1e-7 (as the Rust side writes them).
  return (gsub(s, "e([-+])0*(%d)", function(sign, d)
    return "e" .. (sign == "-" and "-" or "") .. d
  end))
end

-- SQL text for a Lua number.
local function number_literal(n)
  if n ~= n then
    return "'NaN'::float8"
  elseif n == huge then
    return "'Infinity'::float8"
  elseif n == -huge then
    return "'-Infinity'::float8"
  end
  local s
  if n == 0 then
    s = 1 / n < 0 and "-0" or "0"
  elseif n % 1 == 0 and n > -EXACT and n < EXACT then
    s = format("%d", n)
  else
    s = shortest(n)
  end
  if byte(s, 1) == 45 then -- "-"
    s = " " .. s
  end
  return s
end

M.number_literal = number_literal

-- Quotes a string checked by text_error as a literal (see the header).
local function string_literal(s)
  if find(s, "\\", 1, true) then
    return " E'" .. gsub(gsub(s, "\\", "\\\\"), "'", "''") .. "'"
  end
  return "'" .. gsub(s, "'", "''") .. "'"
end

--- pgmoon's escape_literal for a UTF8 connection (see the header).
function M.literal(val)
  if val == nil or val == NULL then
    return "NULL"
  end
  local t = type(val)
  if t == "string" then
    local err = text_error(val)
    if err then
      error(err, 2)
    end
    return string_literal(val)
  elseif t == "number" then
    return number_literal(val)
  elseif t == "boolean" then
    return val and "TRUE" or "FALSE"
  end
  error("don't know how to escape value: " .. tostring(val), 2)
end

--- pgmoon's escape_identifier for a UTF8 connection: "..." with " doubled
-- (tostring first, as pgmoon does); zero bytes and bad UTF-8 raise.
function M.identifier(ident)
  local s = tostring(ident)
  local err = text_error(s)
  if err then
    error(err, 2)
  end
  return '"' .. gsub(s, '"', '""') .. '"'
end

return M
