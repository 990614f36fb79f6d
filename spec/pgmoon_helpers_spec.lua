-- kong_rds_iam.pgmoon.{escape,arrays,json}: the pgmoon.arrays / pgmoon.json
-- helpers of the pgmoon-compatible class. Pure Lua (lua-cjson only): runs
-- without the Rust module and without a server. The array texts in the
-- decode_array cases are what PostgreSQL 15 prints for the SQL quoted beside
-- them.
package.path = "./lua/?.lua;" .. package.path

local escape = require "kong_rds_iam.pgmoon.escape"
local arrays = require "kong_rds_iam.pgmoon.arrays"
local json = require "kong_rds_iam.pgmoon.json"
local cjson = require "cjson"

local encode_array = arrays.encode_array
local decode_array = arrays.decode_array
local PostgresArray = arrays.PostgresArray
local NULL = arrays.NULL

local function serialize(t)
  return PostgresArray(t).pgmoon_serialize(t)
end

describe("pgmoon helpers", function()
  it("load without the Rust module", function()
    assert.is_nil(package.loaded["kong_rds_iam"])
  end)

  it("use the NULL light userdata of cjson (and so of ngx.null)", function()
    assert.equal("userdata", type(NULL))
    assert.equal(cjson.null, NULL)
    assert.equal(escape.NULL, NULL)
  end)
end)

describe("kong_rds_iam.pgmoon.escape", function()
  local literal, identifier = escape.literal, escape.identifier

  it("quotes strings, doubling quotes", function()
    assert.equal("'abc'", literal("abc"))
    assert.equal("''", literal(""))
    assert.equal("'it''s'", literal("it's"))
    assert.equal("''''", literal("'"))
    assert.equal("'''; drop table x; --'", literal("'; drop table x; --"))
    assert.equal("'ü€😀'", literal("ü€😀"))
  end)

  it("uses the E form with doubled backslashes when a backslash is present", function()
    assert.equal(" E'a\\\\b'", literal("a\\b"))
    assert.equal(" E'\\\\'", literal("\\"))
    assert.equal(" E'\\\\'''", literal("\\'"))
    assert.equal(" E'\\\\''; select 1; --'", literal("\\'; select 1; --"))
    assert.equal(" E'%1 \\\\%'", literal("%1 \\%")) -- no gsub pattern leaks
  end)

  it("refuses zero bytes and bad UTF-8", function()
    assert.has_error(function() literal("a\0b") end, "value contains a zero byte")
    assert.has_error(function() literal("abc\226\130") end, "incomplete multibyte character")
    assert.has_error(function() literal("\195") end, "incomplete multibyte character")
    assert.has_error(function() literal("\195(") end, "invalid multibyte character")
    assert.has_error(function() literal("\128") end, "invalid multibyte character")
    assert.has_error(function() literal("\192\167") end, "invalid multibyte character") -- overlong '
    assert.has_error(function() literal("\237\160\128") end, "invalid multibyte character") -- surrogate
    assert.has_error(function() literal("\244\144\128\128") end, "invalid multibyte character")
    -- SJIS "ソ" (0x83 0x5C) is not UTF-8: the UTF8 default cannot split it.
    assert.has_error(function() literal("\131\\") end, "invalid multibyte character")
  end)

  it("writes numbers exactly, guarding negative ones", function()
    assert.equal("3", literal(3))
    assert.equal("0", literal(0))
    assert.equal(" -12", literal(-12))
    assert.equal("0.1", literal(0.1))
    assert.equal(" -2.5", literal(-2.5))
    assert.equal("1e300", literal(1e300))
    assert.equal("1e-7", literal(1e-7))
    assert.equal("9007199254740991", literal(2 ^ 53 - 1))
    assert.equal("0.3333333333333333", literal(1 / 3))
    assert.equal("'NaN'::float8", literal(0 / 0))
    assert.equal("'Infinity'::float8", literal(math.huge))
    assert.equal("'-Infinity'::float8", literal(-math.huge))
    for _, n in ipairs({ 0.1, 1 / 3, 1e300, 1e-7, 2 ^ 60, -123.456e-20, 5e-324 }) do
      assert.equal(n, tonumber(literal(n)))
    end
    -- "10-" .. literal(-5) must not become a "--" comment.
    assert.equal("10- -5", "10-" .. literal(-5))
  end)

  it("writes booleans and NULL", function()
    assert.equal("TRUE", literal(true))
    assert.equal("FALSE", literal(false))
    assert.equal("NULL", literal(nil))
    assert.equal("NULL", literal(NULL))
  end)

  it("refuses other values as pgmoon does", function()
    assert.has_error(function() literal({}) end)
    assert.has_error(function() literal(print) end)
    local ok, err = pcall(literal, {})
    assert.is_false(ok)
    assert.matches("don't know how to escape value", err, 1, true)
  end)

  it("quotes identifiers", function()
    assert.equal('"users"', identifier("users"))
    assert.equal('"we""ird"', identifier('we"ird'))
    assert.equal([["a\b'c"]], identifier([[a\b'c]]))
    assert.equal('"42"', identifier(42))
    assert.has_error(function() identifier("a\0") end, "value contains a zero byte")
  end)
end)

describe("kong_rds_iam.pgmoon.arrays.encode_array", function()
  it("encodes flat arrays of each type", function()
    assert.equal("ARRAY['a','b']", encode_array({ "a", "b" }))
    assert.equal("ARRAY[1,2.5, -3]", encode_array({ 1, 2.5, -3 }))
    assert.equal("ARRAY[TRUE,FALSE]", encode_array({ true, false }))
    assert.equal("ARRAY['x',NULL,'NULL']", encode_array({ "x", NULL, "NULL" }))
  end)

  it("escapes tricky strings", function()
    assert.equal("ARRAY['it''s', E'a\\\\b','with,comma','{brace}','\"q\"','']",
      encode_array({ "it's", "a\\b", "with,comma", "{brace}", '"q"', "" }))
    assert.equal("ARRAY[ E'\\\\''); drop table t; --']", encode_array({ "\\'); drop table t; --" }))
  end)

  it("encodes nested arrays", function()
    assert.equal("ARRAY[[1,2],[3,4]]", encode_array({ { 1, 2 }, { 3, 4 } }))
    assert.equal("ARRAY[[['a'],['b']]]", encode_array({ { { "a" }, { "b" } } }))
    assert.equal("ARRAY[[1,2],[3,4]]", encode_array({ PostgresArray({ 1, 2 }), { 3, 4 } }))
  end)

  it("encodes empty arrays (the caller casts them)", function()
    assert.equal("ARRAY[]", encode_array({}))
    assert.equal("ARRAY[[]]", encode_array({ {} }))
  end)

  it("uses the given escape function", function()
    local seen = {}
    local function esc(v)
      seen[#seen + 1] = v
      return "<" .. tostring(v) .. ">"
    end
    assert.equal("ARRAY[<a>,[<1>,<true>]]", encode_array({ "a", { 1, true } }, esc))
    assert.same({ "a", 1, true }, seen)
  end)

  it("refuses elements the escape function refuses", function()
    assert.has_error(function() encode_array({ setmetatable({}, {}) }) end)
    assert.has_error(function() encode_array({ "a\0" }) end, "value contains a zero byte")
  end)
end)

describe("kong_rds_iam.pgmoon.arrays.decode_array", function()
  it("decodes flat text arrays", function()
    assert.same({ "a", "b" }, decode_array("{a,b}"))
    -- select ARRAY['plain','it''s',E'a\\b','with,comma','{brace}','NULL',NULL,'',' lead','q"uote',
    --              E'new\nline','ü']::text
    local got = decode_array('{plain,it\'s,"a\\\\b","with,comma","{brace}","NULL",NULL,""," lead",'
      .. '"q\\"uote","new\nline",ü}')
    assert.same({ "plain", "it's", "a\\b", "with,comma", "{brace}", "NULL", NULL, "", " lead", 'q"uote',
      "new\nline", "ü" }, got)
  end)

  it("tells NULL from \"NULL\"", function()
    local got = decode_array('{NULL,"NULL",null,"null",Null}')
    assert.equal(NULL, got[1])
    assert.equal("NULL", got[2])
    assert.equal(NULL, got[3])
    assert.equal("null", got[4])
    assert.equal(NULL, got[5])
    -- An escaped unquoted NULL is text.
    assert.equal("NULL", decode_array("{\\NULL}")[1])
  end)

  it("uses pg.NULL when given", function()
    local pg = { NULL = { "NULL" } }
    local got = decode_array("{a,NULL}", nil, pg)
    assert.equal(pg.NULL, got[2])
  end)

  it("decodes empty and nested arrays", function()
    assert.same({}, decode_array("{}"))
    assert.same({ { "1", "2" }, { "3", NULL } }, decode_array("{{1,2},{3,NULL}}"))
    assert.same({ { { "a" } }, { {} } }, decode_array("{{{a}},{{}}}"))
  end)

  it("marks the result with PostgresArray", function()
    local got = decode_array("{1}")
    assert.equal(PostgresArray.__base, getmetatable(got))
    assert.equal(PostgresArray.__base, getmetatable(decode_array("{}")))
  end)

  it("drops dimension decorations", function()
    -- select '[0:1]={a,b}'::text[]
    assert.same({ "a", "b" }, decode_array("[0:1]={a,b}"))
    -- select '[0:1][2:3]={{a,b},{c,d}}'::text[]
    assert.same({ { "a", "b" }, { "c", "d" } }, decode_array("[0:1][2:3]={{a,b},{c,d}}"))
    assert.same({ "x" }, decode_array("[-5:-5]={x}"))
  end)

  it("converts non-NULL elements with convert_fn", function()
    assert.same({ 1, 2.5, NULL, -3 }, decode_array("{1,2.5,NULL,-3}", tonumber))
    -- select ARRAY[true,false,NULL]::text
    assert.same({ true, false, NULL }, decode_array("{t,f,NULL}", function(s) return s == "t" end))
    assert.same({ { 1, 2 }, { 3, 4 } }, decode_array("{{1,2},{3,4}}", tonumber))
    -- select ARRAY['{"a": 1}'::json, '[1, "x,y"]', 'null']::text
    local got = decode_array('{"{\\"a\\": 1}","[1, \\"x,y\\"]","null"}', json.decode_json)
    assert.same({ { a = 1 }, { 1, "x,y" }, cjson.null }, got)
  end)

  it("accepts whitespace around elements, as array_in does", function()
    assert.same({ "a", "b c", "d" }, decode_array(" { a , \"b c\" ,d } "))
    assert.same({ "a b" }, decode_array("{a b}"))
    assert.same({ "a " }, decode_array("{a\\ }"))
  end)

  it("handles backslashes in quoted and unquoted elements", function()
    assert.same({ 'a"b', "c\\d", "x" }, decode_array('{"a\\"b","c\\\\d","\\x"}'))
    assert.same({ "a,b" }, decode_array("{a\\,b}"))
  end)

  it("refuses malformed input", function()
    for _, bad in ipairs({ "", "a", "{", "{a", "{a,}", "{,}", "{a,,b}", '{"a}', '{"a\\', "{a}x", "{a}{b}",
      '{a"b"}', "[0:1]{a}", "[0:x]={a}", "{a{b}}", "}" }) do
      local ok, err = pcall(decode_array, bad)
      assert.is_false(ok, bad)
      assert.matches("^failed to parse postgresql array", err)
    end
    assert.has_error(function() decode_array(nil) end)
  end)
end)

describe("kong_rds_iam.pgmoon.arrays.PostgresArray", function()
  it("marks a table and returns it", function()
    local t = { 1, 2 }
    assert.equal(t, PostgresArray(t))
    assert.equal(PostgresArray.__base, getmetatable(t))
    assert.equal("PostgresArray", PostgresArray.__name)
    assert.same({}, PostgresArray())
  end)

  it("serializes to array text with an OID from the first element", function()
    assert.same({ 1009, '{"a","b c"}' }, { serialize({ "a", "b c" }) })
    assert.same({ 1231, "{1,-2.5,NULL}" }, { serialize({ 1, -2.5, NULL }) })
    assert.same({ 1000, "{t,f}" }, { serialize({ true, false }) })
    assert.same({ 1009, '{NULL,"x"}' }, { serialize({ NULL, "x" }) })
    assert.same({ 1231, "{{1,2},{3,4}}" }, { serialize({ { 1, 2 }, { 3, 4 } }) })
    assert.same({ 0, "{}" }, { serialize({}) })
    assert.same({ 1231, "{NaN,Infinity,-Infinity}" }, { serialize({ 0 / 0, math.huge, -math.huge }) })
  end)

  it("escapes quotes and backslashes in elements", function()
    assert.same({ 1009, [[{"a\"b","c\\d","{,}","NULL"}]] }, { serialize({ 'a"b', "c\\d", "{,}", "NULL" }) })
  end)

  it("embeds values of tables with pgmoon_serialize", function()
    local mt = { pgmoon_serialize = function(v) return 114, v.text end }
    local obj = setmetatable({ text = '{"k":"v"}' }, mt)
    assert.same({ 0, [[{"{\"k\":\"v\"}"}]] }, { serialize({ obj }) })
    local arr = setmetatable({}, { pgmoon_serialize = function() return 1009, '{"x"}' end })
    assert.same({ 1009, '{{"x"}}' }, { serialize({ arr }) })
  end)

  it("reports tables it cannot serialize", function()
    local oid, err = serialize({ setmetatable({}, {}) })
    assert.is_nil(oid)
    assert.equal("table does not implement pgmoon_serialize, can't serialize", err)
  end)

  it("takes pg.NULL as NULL", function()
    local pg = { NULL = { "NULL" } }
    local t = PostgresArray({ "a", pg.NULL })
    assert.same({ 1009, '{"a",NULL}' }, { t.pgmoon_serialize(t, pg) })
  end)
end)

describe("round trips through decode_array", function()
  local function same_shape(a, b)
    if type(a) ~= "table" or type(b) ~= "table" then
      return a == b
    end
    if #a ~= #b then
      return false
    end
    for i = 1, #a do
      if not same_shape(a[i], b[i]) then
        return false
      end
    end
    return true
  end

  local values = {
    { "plain", "it's", "a\\b", "\\'", "'\\", "with,comma", "{brace}", "}", "{", "NULL", "null", "", " lead",
      "trail ", "q\"uote", "\\\"", "new\nline", "tab\t", "ü€😀", NULL, "a\\'; select 1; --" },
    { NULL },
    { { "a", "b" }, { "c,d", NULL } },
    { { { "x\\", "'y" } }, { { "{z}", "\"" } } },
    {},
    { {} },
  }

  for i, v in ipairs(values) do
    it("text values #" .. i, function()
      local _, text = serialize(v)
      assert.is_true(same_shape(v, decode_array(text)), text)
    end)
  end

  it("numbers and booleans", function()
    local nums = { 1, -2, 0.5, 1e300, 1e-7, 2 ^ 53, 1 / 3, NULL }
    local _, text = serialize(nums)
    assert.is_true(same_shape(nums, decode_array(text, tonumber)), text)
    local bools = { true, false, NULL }
    _, text = serialize(bools)
    assert.is_true(same_shape(bools, decode_array(text, function(s) return s == "t" end)), text)
  end)
end)

describe("kong_rds_iam.pgmoon.json", function()
  it("encodes a table as an escaped literal", function()
    assert.equal([['{"a":1}']], json.encode_json({ a = 1 }))
    assert.equal([['["it''s"]']], json.encode_json({ "it's" }))
    -- cjson writes "/" as "\/": the E form with doubled backslashes.
    assert.equal([[ E'["http:\\/\\/x","c\\\\d"]']], json.encode_json({ "http://x", "c\\d" }))
    assert.equal("'null'", json.encode_json(cjson.null))
  end)

  it("uses the given escape function", function()
    assert.equal("<[1]>", json.encode_json({ 1 }, function(s) return "<" .. s .. ">" end))
  end)

  it("decodes JSON text", function()
    assert.same({ a = { 1, "x" }, b = cjson.null }, json.decode_json('{"a":[1,"x"],"b":null}'))
    assert.equal(cjson.null, json.decode_json("null"))
    assert.has_error(function() json.decode_json("{") end)
  end)

  it("round-trips through its own text", function()
    local v = { name = "it's \\ \"q\"", list = { 1, 2.5, true }, nested = { k = "v" } }
    local lit = json.encode_json(v, function(s) return s end)
    assert.same(v, json.decode_json(lit))
  end)
end)
