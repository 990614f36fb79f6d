-- conn:query(): pgmoon-shaped results, the type mapping, NULL, several
-- statements per call, server errors (with the partial results before them),
-- and the escape functions, against the local RDS emulator.
local rds = require "kong_rds_iam"
local emu = require "spec.support.emulator"
local cjson = require "cjson"

-- The value of `select <expr> as v`.
local function value(conn, expr)
  local res, err = conn:query("select " .. expr .. " as v")
  assert(res, ("select %s failed: %s"):format(expr, tostring(err)))
  assert.equal(1, #res)
  return res[1].v
end

local NULL = rds.null
local function is_nan(v) return type(v) == "number" and v ~= v end

describe("conn:query()", function()
  local e, conn

  lazy_setup(function()
    e = assert(emu.start {})
    conn = assert(rds.connect {
      pg_host = e.host, pg_port = e.port, pg_database = e.db,
      pg_user = "pw_scram", pg_password = e.users.pw_scram, pg_ssl = true,
    })
    assert(conn:query("set timezone = 'UTC'"))
  end)

  lazy_teardown(function()
    if conn then conn:close() end
    if e then e:stop() end
  end)

  describe("result shapes", function()
    it("SELECT gives an array of rows keyed by column name, and n = 1", function()
      local res, n = conn:query("select x as id, 'row ' || x as name from generate_series(1, 3) x")
      assert.same({ { id = 1, name = "row 1" }, { id = 2, name = "row 2" }, { id = 3, name = "row 3" } }, res)
      assert.equal(1, n)
      assert.is_nil(res.affected_rows)
    end)

    it("SELECT without rows gives an empty table", function()
      local res = conn:query("select 1 as one where false")
      assert.same({}, res)
    end)

    it("DDL gives true", function()
      assert.same({ true, 1 }, { conn:query("create temp table shapes (id int primary key, v text)") })
    end)

    it("INSERT, UPDATE and DELETE without RETURNING give affected_rows", function()
      assert(conn:query("create temp table dml (id int primary key, v text)"))
      assert.same({ affected_rows = 3 }, conn:query("insert into dml values (1, 'a'), (2, 'b'), (3, 'c')"))
      assert.same({ affected_rows = 2 }, conn:query("update dml set v = 'z' where id > 1"))
      assert.same({ affected_rows = 0 }, conn:query("update dml set v = 'z' where id > 100"))
      assert.same({ affected_rows = 1 }, conn:query("delete from dml where id = 3"))
    end)

    it("RETURNING gives the rows plus affected_rows", function()
      assert(conn:query("create temp table ret (id int primary key, v text)"))
      assert.same({ { id = 1 }, { id = 2 }, affected_rows = 2 },
        conn:query("insert into ret values (1, 'a'), (2, 'b') returning id"))
      assert.same({ { id = 2, v = "b" }, affected_rows = 1 }, conn:query("delete from ret where id = 2 returning *"))
    end)

    it("several statements give an array of results, and n = the number of statements", function()
      local res, n = conn:query([[
        create temp table multi (x int);
        insert into multi values (1), (2);
        select x from multi order by x;
        select 'done' as status
      ]])
      assert.equal(4, n)
      assert.same({ true, { affected_rows = 2 }, { { x = 1 }, { x = 2 } }, { { status = "done" } } }, res)
    end)

    it("types each statement by its own columns, also right after one with the same names", function()
      -- The connection reuses the last column description when the next
      -- is the same: a name, type or count that differs must not be.
      local res = conn:query("select 1 as v, 2 as w; select '1'::text as v, 2 as w; select 1 as v; select 1 as v, 2 as z")
      assert.same({ { { v = 1, w = 2 } }, { { v = "1", w = 2 } }, { { v = 1 } }, { { v = 1, z = 2 } } }, res)
      for _, case in ipairs { { "select 1 as v", 1 }, { "select '1'::text as v", "1" }, { "select 1 as v", 1 },
        { "select true as v", true }, { "select 1.5::float8 as v", 1.5 } } do
        local r = assert(conn:query(case[1]))
        assert.same({ { v = case[2] } }, r, case[1])
      end
    end)

    it("returns 10,000 rows", function()
      local res = conn:query("select x from generate_series(1, 10000) x")
      assert.equal(10000, #res)
      assert.equal(1, res[1].x)
      assert.equal(10000, res[10000].x)
    end)

    it("returns notices as the 4th value, as pgmoon does (no notification: 3rd nil)", function()
      assert.same({ true, 1, nil, { "NOTICE: hello" } }, { conn:query("do $$ begin raise notice 'hello'; end $$") })
      assert.same({ true, 1 }, { conn:query("do $$ begin perform 1; end $$") })
    end)
  end)

  describe("types", function()
    local cases = {
      -- booleans
      { "true", true }, { "false", false },
      -- integers
      { "42::int2", 42 }, { "'-2147483648'::int4", -2147483648 }, { "'pg_class'::regclass::oid", 1259 },
      { "1234567890123::int8", 1234567890123 }, { "'-9007199254740992'::int8", -9007199254740992 },
      { "9007199254740992::int8", 9007199254740992 },
      { "9007199254740993::int8", "9007199254740993" }, -- beyond 2^53: text, exact
      { "'-9223372036854775808'::int8", "-9223372036854775808" },
      -- floating point and numeric
      { "1.5::float4", 1.5 }, { "-0.25::float8", -0.25 }, { "12.250::numeric", 12.25 },
      { "'1e300'::float8", 1e300 }, { "'Infinity'::float8", math.huge }, { "'-Infinity'::float8", -math.huge },
      { "'NaN'::float8", is_nan }, { "'NaN'::numeric", is_nan },
      -- json and jsonb
      { [['{"a": [1, null, "x"], "b": {"c": true}}'::jsonb]], { a = { 1, NULL, "x" }, b = { c = true } } },
      { [['{"n": 1.5, "s": "ünï"}'::json]], { n = 1.5, s = "ünï" } },
      { "'null'::jsonb", NULL }, { [['"str"'::json]], "str" }, { "'[]'::json", {} }, { "'7'::jsonb", 7 },
      -- arrays
      { "'{1,2,NULL}'::int[]", { 1, 2, NULL } },
      { [[array['a', 'b c', 'q"x', 'x,y', '{z}', 'a\b', 'NULL', null]::text[] ]],
        { "a", "b c", 'q"x', "x,y", "{z}", "a\\b", "NULL", NULL } },
      { "'{t,f,NULL}'::bool[]", { true, false, NULL } },
      { "'{1.5,-2,1e10}'::float8[]", { 1.5, -2, 1e10 } },
      { "'{1.25,2}'::numeric[]", { 1.25, 2 } },
      { "'{{1,2},{3,4}}'::int[]", { { 1, 2 }, { 3, 4 } } },
      { "'{{a,b},{c,NULL}}'::text[]", { { "a", "b" }, { "c", NULL } } },
      { "'{}'::text[]", {} },
      { "'[0:1]={5,6}'::int[]", { 5, 6 } },
      { "array[1, 9007199254740993]::int8[]", { 1, "9007199254740993" } },
      { "array[1, 2]::int2[]", { 1, 2 } },
      { [[array['{"a":1}'::jsonb, null] ]], { { a = 1 }, NULL } },
      { [[array['\x00ff'::bytea] ]], { "\0\255" } },
      { "array['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid]", { "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" } },
      { "array['x'::varchar, 'y']", { "x", "y" } },
      -- bytea: raw bytes
      { [['\x00ff41'::bytea]], "\0\255A" }, { "''::bytea", "" },
      { "decode(repeat('00ff', 1000), 'hex')", ("\0\255"):rep(1000) },
      -- text and everything else as text
      { "'ünï text'::text", "ünï text" }, { "'ab'::char(3)", "ab " }, { "'v'::varchar(5)", "v" },
      { "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" },
      { "'2024-08-26 22:00:00'::timestamp", "2024-08-26 22:00:00" },
      { "'2024-08-26 22:00:00+00'::timestamptz", "2024-08-26 22:00:00+00" },
      { "'2024-08-26'::date", "2024-08-26" }, { "'1 day 02:00'::interval", "1 day 02:00:00" },
      { "'10.0.0.1'::inet", "10.0.0.1" }, { "'kong'::name", "kong" },
      -- SQL NULL of any type
      { "null", NULL }, { "null::int", NULL }, { "null::int8", NULL }, { "null::bool", NULL },
      { "null::text", NULL }, { "null::jsonb", NULL }, { "null::int[]", NULL }, { "null::bytea", NULL },
      { "null::numeric", NULL }, { "null::uuid", NULL },
    }

    for _, case in ipairs(cases) do
      local expr, want = case[1], case[2]
      local shown = type(want) == "function" and "NaN" or want == NULL and "rds.null"
        or type(want) == "table" and cjson.encode(want) or ("%q"):format(tostring(want))
      it(("%s -> %s"):format(expr, shown), function()
        local v = value(conn, expr)
        if type(want) == "function" then
          assert.is_true(want(v), "got " .. tostring(v))
        else
          assert.equal(type(want), type(v))
          assert.same(want, v)
        end
      end)
    end

    it("returns every column of a wide row with its own type", function()
      local row = conn:query([[
        select 1 as i, 'x' as t, true as b, null as n, 2.5::float8 as f, '{"k":null}'::json as j, '{1}'::int[] as a
      ]])[1]
      assert.same({ i = 1, t = "x", b = true, n = NULL, f = 2.5, j = { k = NULL }, a = { 1 } }, row)
    end)

    it("rds.null is the NULL light userdata, equal to cjson.null", function()
      assert.equal("userdata", type(rds.null))
      assert.equal(cjson.null, rds.null)
      assert.is_true(value(conn, "null::text") == cjson.null)
    end)
  end)

  describe("errors", function()
    it("gives nil, the server's message, no partial, 0, the SQLSTATE and the server's fields", function()
      assert.same({ nil, 'relation "nope" does not exist', nil, 0, "42P01",
        { severity = "ERROR", severity_nonlocalized = "ERROR", code = "42P01",
          message = 'relation "nope" does not exist', position = "15" } },
        { conn:query("select * from nope") })
    end)

    it("keeps the connection usable after a server error", function()
      assert.is_nil(conn:query("select 1/0"))
      assert.same({ { one = 1 } }, conn:query("select 1 as one"))
    end)

    it("reports syntax errors and constraint violations with their detail", function()
      local _, err, _, _, sqlstate = conn:query("selec 1")
      assert.same({ 'syntax error at or near "selec"', "42601" }, { err, sqlstate })
      assert(conn:query("create temp table uniq (id int primary key); insert into uniq values (1)"))
      _, err, _, _, sqlstate = conn:query("insert into uniq values (1)")
      assert.equal("23505", sqlstate)
      assert.equal('duplicate key value violates unique constraint "uniq_pkey" (Key (id)=(1) already exists.)', err)
    end)

    it("returns the results before the failing statement and skips the rest", function()
      assert(conn:query("create temp table after_failure (x int)"))
      local res, err, partial, num_queries, sqlstate =
        conn:query("select 1 as one; select * from nope; insert into after_failure values (2)")
      assert.is_nil(res)
      assert.equal('relation "nope" does not exist', err)
      assert.same({ { one = 1 } }, partial)
      assert.equal(1, num_queries)
      assert.equal("42P01", sqlstate)
      assert.same({}, conn:query("select * from after_failure"))
    end)

    it("returns an array of partial results when several statements completed", function()
      local res, _, partial, num_queries, sqlstate = conn:query("select 1 as a; select 2 as b; select 1/0; select 3")
      assert.is_nil(res)
      assert.same({ { { a = 1 } }, { { b = 2 } } }, partial)
      assert.same({ 2, "22012" }, { num_queries, sqlstate })
    end)

    it("refuses a query with a zero byte and stays usable", function()
      local res, err = conn:query("select 'a\0b'")
      assert.is_nil(res)
      assert.equal("query must not contain a zero byte", err)
      assert.same({ { one = 1 } }, conn:query("select 1 as one"))
    end)

    it("answers a query that is not valid UTF-8 with nil, err (as the server rejects it) and stays usable", function()
      local ok, res, err = pcall(conn.query, conn, "select 'caf\233' as v") -- Latin-1 bytes
      assert.is_true(ok, "query raised: " .. tostring(res))
      assert.is_nil(res)
      assert.is_string(err)
      assert.same({ { one = 1 } }, conn:query("select 1 as one"))
    end)

    it("refuses COPY FROM STDIN and stays usable", function()
      assert(conn:query("create temp table copy_in (x int)"))
      local res, err = conn:query("copy copy_in from stdin")
      assert.is_nil(res)
      assert.is_string(err)
      assert.same({ { one = 1 } }, conn:query("select 1 as one"))
    end)
  end)

  describe("escaping", function()
    it("escape_literal quotes as libpq does", function()
      assert.equal("'it''s'", conn:escape_literal("it's"))
      assert.equal("''", conn:escape_literal(""))
      assert.equal(" E'a\\\\b'", conn:escape_literal("a\\b"))
      assert.equal("12", conn:escape_literal(12))
      -- a space first, so that `x-` .. literal never starts a `--` comment
      assert.equal(" -3.5", conn:escape_literal(-3.5))
      assert.equal("'NaN'::float8", conn:escape_literal(0 / 0))
      assert.equal("'Infinity'::float8", conn:escape_literal(math.huge))
      assert.equal("'-Infinity'::float8", conn:escape_literal(-math.huge))
      assert.equal("TRUE", conn:escape_literal(true))
      assert.equal("FALSE", conn:escape_literal(false))
      assert.equal("NULL", conn:escape_literal(nil))
      assert.equal("NULL", conn:escape_literal(rds.null))
      local ok, err = pcall(conn.escape_literal, conn, {})
      assert.is_false(ok)
      assert.equal("string", type(err))
    end)

    it("escape_literal round-trips through the server", function()
      for _, v in ipairs { "it's", "a\\b", "''", "ünï", "--", "x'; drop table y; --", "", 12, -3.5, 2 ^ 53, true, false } do
        assert.same(v, value(conn, conn:escape_literal(v)))
      end
      -- glued after a minus sign, a negative number is still a number, not a comment
      assert.same(4.5, value(conn, "1-" .. conn:escape_literal(-3.5)))
      assert.equal(NULL, value(conn, conn:escape_literal(nil)))
    end)

    it("refuse bytes that are not characters of the client encoding, as libpq does", function()
      local lit, err = conn:escape_literal("caf\233 l'\255")
      assert.is_nil(lit)
      assert.matches("multibyte", err)
      local id, ierr = conn:escape_identifier('caf\233 "\255')
      assert.is_nil(id)
      assert.matches("multibyte", ierr)
      assert.is_nil((conn:escape_literal("a\0b")))
    end)

    it("escape_identifier doubles quotes and takes strings only", function()
      assert.equal('"a""b"', conn:escape_identifier('a"b'))
      assert.equal('"select"', conn:escape_identifier("select"))
      for _, bad in ipairs { 1, {}, true } do
        local ok, err = pcall(conn.escape_identifier, conn, bad)
        assert.is_false(ok)
        assert.equal("string", type(err))
      end
      local ok, err = pcall(conn.escape_identifier, conn, nil)
      assert.is_false(ok)
      assert.matches("string expected, got nil", err)
    end)

    -- libpq's rules hold where doubling quotes alone breaks: with
    -- standard_conforming_strings off a backslash escapes the closing
    -- quote; in SJIS, GBK and BIG5 a character's second byte can be 0x5C.
    -- Each hostile value must come back from the server byte for byte and
    -- run nothing else.
    local HOSTILE = {
      UTF8 = { "\\'; select 1/0; --", "ünï\\'", "'||pg_sleep(0)||'" },
      SJIS = { "\131\92'; select 1/0; --", "\131\92\\'" },   -- ソ = 0x83 0x5C
      GBK = { "\129\92'; select 1/0; --", "\129\92\\'" },
      BIG5 = { "\179\92'; select 1/0; --", "\179\92\\'" },  -- 許 = 0xB3 0x5C
    }
    for _, scs in ipairs { "on", "off" } do
      for _, encoding in ipairs { "UTF8", "SJIS", "GBK", "BIG5" } do
        it(("escape_literal is safe with standard_conforming_strings %s in %s"):format(scs, encoding), function()
          assert(conn:query(("set client_encoding = '%s'; set standard_conforming_strings = %s"):format(encoding, scs)))
          for _, v in ipairs(HOSTILE[encoding]) do
            local lit = assert(conn:escape_literal(v))
            local res, n = conn:query("select " .. lit .. " as v")
            assert.is_table(res, n)
            assert.equal(1, n)
            assert.equal(v, res[1].v)
          end
          assert(conn:query("set client_encoding = 'UTF8'; set standard_conforming_strings = on"))
        end)
      end
    end

    it("escape_identifier round-trips through the server", function()
      local name = 'Odd "col" name'
      local res = conn:query("select 1 as " .. conn:escape_identifier(name))
      assert.same({ { [name] = 1 } }, res)
    end)
  end)
end)
