-- kong_rds_iam.pgmoon.json: JSON values for the pgmoon-compatible class,
-- with the API of pgmoon's pgmoon.json:
--
--   encode_json(tbl [, escape_literal]) -> the JSON text of `tbl` (lua-cjson)
--                                          as an SQL literal
--   decode_json(str) -> the Lua value of a json/jsonb column's text (JSON
--                       null is cjson.null, the NULL light userdata)
--
-- The default escape_literal is kong_rds_iam.pgmoon.escape.literal (a UTF8
-- connection; right under either setting of standard_conforming_strings).
-- lua-cjson writes "/" as "\/", so most JSON holding URLs or paths comes out
-- in the E'...' form. Does not load the kong_rds_iam Rust module.

local cjson = require "cjson"
local escape = require "kong_rds_iam.pgmoon.escape"

local encode = cjson.encode
local decode = cjson.decode

local M = {}

--- `tbl` as JSON text, quoted by `escape_literal` (default: escape.literal).
-- Raises as cjson.encode does for values JSON cannot hold.
function M.encode_json(tbl, escape_literal)
  escape_literal = escape_literal or escape.literal
  return escape_literal(encode(tbl))
end

--- The Lua value of JSON text; raises as cjson.decode does on bad JSON.
function M.decode_json(str)
  return decode(str)
end

return M
