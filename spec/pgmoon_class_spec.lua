-- kong_rds_iam.pgmoon: the pgmoon-compatible class, against the local RDS
-- emulator (tools/rds-emulator), on the blocking path (plain LuaJIT, as in
-- init/init_worker). What Kong's Postgres strategy asks of pgmoon: new
-- without I/O, connect, result shapes, convert_null/NULL, error text its
-- parser matches, timeouts ending in "timeout", escaping with and without a
-- connection, sock:getreusedtimes(), keepalive/disconnect, IAM taken from
-- kong.configuration and the KONG_PG_IAM_AUTH* environment.
local rds = require "kong_rds_iam"
local pgmoon = require "kong_rds_iam.pgmoon"
local emu = require "spec.support.emulator"
local test_env = require "spec.support.test_env"
local lua_process = require "spec.support.lua_process"
local socket = require "socket"
local util = require "spec.support.util"

local Postgres = pgmoon.Postgres
local REGION = "us-east-1" -- the emulator's region; its host is an IP, so say it

local merge = util.merge

local function keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- A TCP port on 127.0.0.1 with nothing listening.
local closed_port = util.free_port

-- A name no other run uses, for tables in the emulator's database.
local counter = 0
local function unique(prefix)
  counter = counter + 1
  return ("%s_%d_%d_%d"):format(prefix, os.time(), math.random(1e6), counter)
end

describe("kong_rds_iam.pgmoon", function()
  local e

  -- pgmoon options for a password user / for the IAM user
  local function pw_opts(user, extra)
    return merge({ host = e.host, port = e.port, database = e.db, user = user, password = e.users[user] }, extra)
  end
  local function iam_opts(extra)
    return merge({
      host = e.host, port = e.port, database = e.db, user = e.iam_users[1],
      iam_auth = true, iam_auth_region = REGION, cafile = e.ca, -- IAM verifies the server
    }, extra)
  end

  local function connected(opts)
    local pg = pgmoon.new(opts)
    local ok, err = pg:connect()
    assert(ok, "connect failed: " .. tostring(err))
    return pg
  end

  -- Whether the native connection has the pool (conn:keepalive,
  -- conn:getreusedtimes): the pool tests run only then.
  local pool_native

  lazy_setup(function()
    e = assert(emu.start { region = REGION })
    assert(e:add_key(test_env.access_key_id, test_env.secret_access_key))
    local conn = assert(rds.connect { pg_host = e.host, pg_port = e.port, pg_database = e.db,
      pg_user = "pw_scram", pg_password = e.users.pw_scram })
    pool_native = conn.keepalive ~= nil and conn.getreusedtimes ~= nil
    conn:close()
  end)

  lazy_teardown(function()
    if e then e:stop() end
  end)

  -------------------------------------------------------------------------
  describe("new", function()
    it("does no I/O: an unreachable or closed address only fails at connect", function()
      local t0 = socket.gettime()
      local pg = pgmoon.new { host = "192.0.2.1", port = 5432, database = "kong", timeout = 300 }
      local pg2 = pgmoon.new { host = "127.0.0.1", port = closed_port(), database = "kong" }
      assert.is_true(socket.gettime() - t0 < 0.05)
      assert.is_table(pg.sock)
      assert.equal(0, pg.sock:getreusedtimes())
      local ok, err = pg2:connect()
      assert.is_nil(ok)
      assert.is_string(err)
    end)

    it("takes pgmoon's defaults and is also callable as the class", function()
      local pg = Postgres { database = "d" }
      assert.equal(Postgres, getmetatable(pg))
      assert.equal("127.0.0.1", pg.config.host)
      assert.equal(5432, pg.config.port)
      assert.equal("postgres", pg.config.user)
      assert.equal("pgmoon", pg.config.application_name)
      assert.is_false(pg.convert_null)
      assert.equal(rds.null, pg.NULL)
      assert.equal(rds.null, pgmoon.NULL)
      assert.is_true(pgmoon.new { database = "d", convert_null = true }.convert_null)
      assert.is_table(pgmoon.new())
    end)

    it("reports sock_type: luasocket outside nginx and in init, nginx elsewhere, or as asked", function()
      assert.equal("luasocket", pgmoon.new({}).sock_type)
      assert.equal("luasocket", pgmoon.new({ socket_type = "luasocket" }).sock_type)
      assert.equal("nginx", pgmoon.new({ socket_type = "nginx" }).sock_type)
      local saved = rawget(_G, "ngx")
      finally(function() rawset(_G, "ngx", saved) end)
      local phase = "content"
      rawset(_G, "ngx", { get_phase = function() return phase end })
      assert.equal("nginx", pgmoon.new({}).sock_type)
      phase = "init"
      assert.equal("luasocket", pgmoon.new({}).sock_type)
      phase = "init_worker"
      assert.equal("nginx", pgmoon.new({}).sock_type)
      assert.equal("luasocket", pgmoon.new({ socket_type = "luasocket" }).sock_type)
      assert.has_error(function() pgmoon.new { socket_type = "carrier-pigeon" } end,
        "got unknown or unset socket type: carrier-pigeon")
    end)

    it("maps pgmoon's options onto the module's conf keys", function()
      local conf = assert(pgmoon.new({
        host = "h", port = 6543, user = "u", password = "p", database = "d", timeout = 1234,
        ssl = true, ssl_verify = true, ssl_required = true, ssl_version = "tlsv1_3",
        cafile = "/ca.pem", cert = "/c.pem", key = "/k.pem", pool_size = 7,
      }):_conf())
      assert.same({
        pg_host = "h", pg_port = 6543, pg_user = "u", pg_password = "p", pg_database = "d",
        pg_timeout = 1234, pg_ssl = true, pg_ssl_verify = true, pg_ssl_required = true,
        pg_ssl_version = "tlsv1_3", pg_ssl_cafile = "/ca.pem", pg_ssl_cert = "/c.pem",
        pg_ssl_cert_key = "/k.pem", pg_application_name = "pgmoon", pg_pool_size = 7,
      }, conf)
      local pg = pgmoon.new { database = "d", timeout = 1234 }
      pg:settimeout(200)
      assert.equal(200, pg:_conf().pg_timeout)
      local _, err = pgmoon.new({}):connect()
      assert.equal("missing database for connect", err)
    end)
  end)

  -------------------------------------------------------------------------
  describe("connect", function()
    for _, user in ipairs { "pw_scram", "pw_md5", "pw_clear" } do
      it("returns true for " .. user .. " (plain TCP and TLS; pw_clear: TLS only)", function()
        if user == "pw_clear" then
          -- A cleartext password is never sent over plain TCP (pg_require_auth unset).
          local ok, err = pgmoon.new(pw_opts(user)):connect()
          assert.is_nil(ok)
          assert.matches("cleartext password over a connection without tls", err, 1, true)
        end
        for _, ssl in ipairs(user == "pw_clear" and { true } or { false, true }) do
          local pg = pgmoon.new(pw_opts(user, { ssl = ssl, ssl_required = ssl }))
          assert.is_true(pg:connect())
          local rows = assert(pg:query("select current_user as u, public.ssl_is_used() as tls"))
          assert.same({ { u = user, tls = ssl } }, rows)
          assert.is_true(pg:disconnect())
        end
      end)
    end

    it("returns true for the IAM user with iam_auth (TLS forced on)", function()
      local pg = connected(iam_opts())
      local rows = assert(pg:query("select current_user as u, public.ssl_is_used() as tls"))
      assert.same({ { u = "iam_user", tls = true } }, rows)
      assert.is_true(pg:disconnect())
    end)

    it("returns nil, err in pgmoon's form for a wrong password, with the SQLSTATE on the object", function()
      local pg = pgmoon.new(pw_opts("pw_scram", { password = "wrong-password" }))
      local ok, err = pg:connect()
      assert.is_nil(ok)
      assert.matches('^FATAL: password authentication failed for user "pw_scram"', err)
      assert.equal("28P01", pg.last_sqlstate)
      assert.is_nil(err:find("wrong-password", 1, true))
    end)

    it("returns nil, err for a closed port, without a SQLSTATE", function()
      local pg = pgmoon.new(pw_opts("pw_scram", { port = closed_port() }))
      local ok, err = pg:connect()
      assert.is_nil(ok)
      assert.is_string(err)
      assert.is_nil(pg.last_sqlstate)
    end)
  end)

  -------------------------------------------------------------------------
  describe("query", function()
    local pg
    before_each(function() pg = connected(pw_opts("pw_scram")) end)
    after_each(function() if pg then pg:disconnect() end end)

    it("returns rows and num_queries for a SELECT", function()
      local res, n = pg:query("select 1 as a, 'x' as b, true as c, 1.5::float8 as d")
      assert.same({ { a = 1, b = "x", c = true, d = 1.5 } }, res)
      assert.equal(1, n)
      assert.same({}, (pg:query("select 1 as a where false")))
    end)

    it("returns affected_rows for INSERT/UPDATE/DELETE, with rows for RETURNING, true for DDL and SET", function()
      local res, n = pg:query("create temp table t (id int primary key, v text)")
      assert.is_true(res)
      assert.equal(1, n)
      assert.same({ affected_rows = 2 }, (pg:query("insert into t values (1, 'a'), (2, 'b')")))
      local returning = pg:query("insert into t values (3, 'c') returning id")
      assert.same({ { id = 3 } }, { returning[1] })
      assert.equal(1, returning.affected_rows)
      assert.same({ affected_rows = 0 }, (pg:query("update t set v = 'z' where id = 99")))
      assert.same({ affected_rows = 3 }, (pg:query("delete from t")))
      assert.is_true((pg:query("set time zone 'UTC'")))
    end)

    it("returns an array of results and their count for several statements", function()
      local res, n = pg:query("select 1 as a; create temp table t2 (x int); insert into t2 values (1); select 2 as b")
      assert.equal(4, n)
      assert.same({ { { a = 1 } }, true, { affected_rows = 1 }, { { b = 2 } } }, res)
      res, n = pg:query("SET SCHEMA 'public';\nSET TIME ZONE 'UTC';")
      assert.same({ true, true }, res)
      assert.equal(2, n)
    end)

    it("leaves a NULL column out of its row when convert_null is off (the default)", function()
      local res = pg:query("select null::int as a, 1 as b, null::text as c")
      assert.same({ "b" }, keys(res[1]))
      -- also in every result of several statements
      res = pg:query("select null as a, 1 as b; select 2 as b, null as a")
      assert.same({ "b" }, keys(res[1][1]))
      assert.same({ "b" }, keys(res[2][1]))
    end)

    it("gives pg.NULL for a NULL column when convert_null is on", function()
      pg.convert_null = true
      local row = pg:query("select null::int as a, 1 as b")[1]
      assert.equal(rds.null, row.a)
      local sentinel = { "NULL" }
      pg.NULL = sentinel
      row = pg:query("select null::int as a, 1 as b")[1]
      assert.equal(sentinel, row.a)
      assert.equal(1, row.b)
    end)

    it("keeps rds.null (= cjson.null, ngx.null) for NULL array elements and JSON nulls", function()
      local cjson = require "cjson"
      for _, convert in ipairs { false, true } do
        pg.convert_null = convert
        local row = pg:query([[select array[1, null, 3]::int[] as arr, '{"k": null, "n": 1}'::json as j]])[1]
        assert.equal(cjson.null, row.arr[2])
        assert.equal(3, row.arr[3])
        assert.equal(cjson.null, row.j.k)
        assert.equal(1, row.j.n)
      end
    end)

    it("returns nil, \"closed\" on a disconnected object", function()
      assert.is_true(pg:disconnect())
      assert.same({ nil, "closed" }, { pg:query("select 1") })
      assert.same({ nil, "closed" }, { pg:disconnect() })
      pg = nil
    end)

    it("refuses a null byte as pgmoon does", function()
      assert.same({ nil, "invalid null byte in query" }, { pg:query("select 1\0") })
    end)

    it("passes notifications and notices through in pgmoon's shape (when the native build reports them)", function()
      local raw = assert(rds.connect { pg_host = e.host, pg_port = e.port, pg_database = e.db,
        pg_user = "pw_scram", pg_password = e.users.pw_scram })
      local probe = { raw:query("listen probe; notify probe, 'x'") }
      raw:close()
      if probe[3] == nil then
        pending("the native conn:query reports no notifications yet")
        return
      end
      local res, n, notifications, notices = pg:query("listen pgm_chan; notify pgm_chan, 'hello'")
      assert.same({ true, true }, res)
      assert.equal(2, n)
      assert.equal(1, #notifications)
      assert.equal("notification", notifications[1].operation)
      assert.equal("pgm_chan", notifications[1].channel)
      assert.equal("hello", notifications[1].payload)
      assert.is_nil(notices)
      res, n, notifications, notices = pg:query("do $$ begin raise notice 'hi there'; end $$")
      assert.is_true(res)
      assert.is_nil(notifications)
      assert.same({ "NOTICE: hi there" }, notices)
    end)
  end)

  -------------------------------------------------------------------------
  describe("errors", function()
    local pg, parent, child
    lazy_setup(function()
      parent, child = unique("pgm_parent"), unique("pgm_child")
      pg = connected(pw_opts("pw_scram"))
      assert(pg:query(("create table %s (id int primary key, name text unique not null); "
        .. "create table %s (id int primary key, pid int references %s (id))"):format(parent, child, parent)))
    end)
    lazy_teardown(function()
      if pg then
        pg:query(("drop table if exists %s; drop table if exists %s"):format(child, parent))
        pg:disconnect()
      end
    end)

    it("reads as pgmoon's text for a unique violation, with partial results and the SQLSTATE", function()
      assert(pg:query(("insert into %s values (1, 'one')"):format(parent)))
      local res, err, partial, n, notifications, notices =
        pg:query(("select 1 as a; insert into %s values (1, 'again')"):format(parent))
      assert.is_nil(res)
      assert.equal(('ERROR: duplicate key value violates unique constraint "%s_pkey"\n'
        .. "Key (id)=(1) already exists."):format(parent), err)
      assert.truthy(err:find("violates unique constraint", 1, true)) -- Kong's test
      assert.same({ { a = 1 } }, partial)
      assert.equal(1, n)
      assert.is_nil(notifications)
      assert.is_nil(notices)
      assert.equal("23505", pg.last_sqlstate)
      -- the connection stays usable, and the SQLSTATE is cleared by a success
      assert.same({ { one = 1 } }, (pg:query("select 1 as one")))
      assert.is_nil(pg.last_sqlstate)
      -- the unique column is named in the text, as Kong's parser looks for it
      local _, err2 = pg:query(("insert into %s values (2, 'one')"):format(parent))
      assert.truthy(err2:find("violates unique constraint", 1, true))
      assert.truthy(err2:find("name", 1, true))
      assert.truthy(err2:find("\nKey (name)=(one) already exists.", 1, true))
    end)

    it("reads as pgmoon's text for foreign-key violations, as Kong's parser takes them apart", function()
      assert(pg:query(("insert into %s values (10, 'ten'); insert into %s values (1, 10)"):format(parent, child)))
      -- deleting a referenced row: Kong cuts the table name out of the detail
      local res, err = pg:query(("delete from %s where id = 10"):format(parent))
      assert.is_nil(res)
      assert.equal("23503", pg.last_sqlstate)
      assert.matches("^ERROR: update or delete on table", err)
      assert.truthy(err:find("violates foreign key constraint", 1, true))
      local found, last = err:find("is still referenced from table", 1, true)
      assert.truthy(found)
      assert.equal(child, err:sub(last + 3, -3))
      -- a reference to a missing row: Kong finds the quoted parent table
      res, err = pg:query(("insert into %s values (2, 999)"):format(child))
      assert.is_nil(res)
      assert.truthy(err:find("violates foreign key constraint", 1, true))
      assert.truthy(err:find("is not present in table", 1, true))
      assert.truthy(err:find(pg:escape_identifier(parent), 1, true))
      assert.truthy(err:find("\nKey (pid)=(999) is not present in table", 1, true))
    end)

    it("reads as pgmoon's text for a not-null violation and a syntax error", function()
      local _, err = pg:query(("insert into %s (id) values (3)"):format(parent))
      assert.matches("^ERROR: null value in column \"name\"", err)
      assert.truthy(err:find("violates not-null constraint", 1, true))
      assert.equal("23502", pg.last_sqlstate)
      _, err = pg:query("selec 1")
      assert.equal("42601", pg.last_sqlstate)
      if pg.last_error_fields then
        -- the position comes with the native ErrorResponse fields
        assert.equal('ERROR: syntax error at or near "selec" (1)', err)
      else
        assert.equal('ERROR: syntax error at or near "selec"', err)
      end
    end)

    it("ends in \"timeout\" for a timeout (settimeout after connect), then the connection is closed", function()
      local p = connected(pw_opts("pw_scram"))
      p:settimeout(200)
      local t0 = socket.gettime()
      local res, err = p:query("select pg_sleep(1)")
      assert.is_true(socket.gettime() - t0 < 0.9)
      assert.is_nil(res)
      assert.equal("timeout", err:sub(-7))
      assert.is_nil(p.last_sqlstate)
      local _, err2 = p:query("select 1")
      assert.equal("closed", err2:sub(-6))
      assert.is_true(p:disconnect())
    end)

    it("ends in \"timeout\" for a timeout set before connect", function()
      local p = pgmoon.new(pw_opts("pw_scram"))
      p:settimeout(200)
      assert.is_true(p:connect())
      local res, err = p:query("select pg_sleep(1)")
      assert.is_nil(res)
      assert.equal("timeout", err:sub(-7))
      p:disconnect()
    end)
  end)

  -------------------------------------------------------------------------
  describe("escape_literal and escape_identifier", function()
    local strings = {
      "plain", "it's", "''", "back\\slash", "\\", "\\'", "end\\", "ünïcödé ✓", "E'x'", "", "$1",
      "-- not a comment", "a\nb", "/* c */", "$$dollar$$",
    }

    it("work without a connection, with nil or any table as self (UTF-8, standard_conforming_strings)", function()
      for _, self in ipairs { false, {}, pgmoon.new {} } do
        self = self or nil
        assert.equal("'it''s'", Postgres.escape_literal(self, "it's"))
        assert.equal(" E'a\\\\b'", Postgres.escape_literal(self, "a\\b"))
        assert.equal(" E'\\\\'''", Postgres.escape_literal(self, "\\'"))
        assert.equal("5", Postgres.escape_literal(self, 5))
        -- a space first, as the native escaper: `1-` .. literal must not become a comment
        assert.equal(" -2.5", Postgres.escape_literal(self, -2.5))
        assert.equal("0.1", Postgres.escape_literal(self, 0.1))
        assert.equal("1764627600.123", Postgres.escape_literal(self, 1764627600.123))
        assert.equal("TRUE", Postgres.escape_literal(self, true))
        assert.equal("FALSE", Postgres.escape_literal(self, false))
        assert.equal("NULL", Postgres.escape_literal(self, nil))
        assert.equal("NULL", Postgres.escape_literal(self, rds.null))
        assert.equal('"a""b"', Postgres.escape_identifier(self, 'a"b'))
        assert.equal('"12"', Postgres.escape_identifier(self, 12))
        assert.has_error(function() Postgres.escape_literal(self, {}) end)
      end
      local pg = pgmoon.new {}
      pg.NULL = { "NULL" }
      assert.equal("NULL", pg:escape_literal(pg.NULL))
    end)

    it("read back as the same value through a live connection, with and without one", function()
      local pg = connected(pw_opts("pw_scram"))
      finally(function() pg:disconnect() end)
      for _, v in ipairs(strings) do
        for _, lit in ipairs { pg:escape_literal(v), Postgres.escape_literal(nil, v) } do
          local res, err = pg:query("select " .. lit .. "::text as v")
          assert(res, ("%s: %s"):format(lit, tostring(err)))
          assert.equal(v, res[1].v)
        end
      end
      for _, n in ipairs { 0, 5, -5, 0.1, 1764627600.123, 2 ^ 40 } do
        assert.equal(n, pg:query("select " .. Postgres.escape_literal(nil, n) .. " as v")[1].v)
      end
      for _, name in ipairs { 'a"b', "MixedCase", "with space", "ü", "select" } do
        for _, ident in ipairs { pg:escape_identifier(name), Postgres.escape_identifier(nil, name) } do
          local row = assert(pg:query("select 1 as " .. ident))[1]
          assert.same({ name }, keys(row))
        end
      end
      assert.equal("'it''s'", pg:escape_literal("it's"))
      assert.equal("NULL", pg:escape_literal(nil))
    end)

    it("as Kong's connector uses them: copied from the object, called with the connector as self", function()
      local db = pgmoon.new { database = "kong" }
      local connector = { escape_literal = db.escape_literal, escape_identifier = db.escape_identifier }
      assert.equal("'UTC'", connector:escape_literal("UTC"))
      assert.equal('"ttl"', connector:escape_identifier("ttl"))
      assert.equal("NULL", connector:escape_literal(rds.null))
    end)
  end)

  -------------------------------------------------------------------------
  describe("extended_query", function()
    local pg
    before_each(function() pg = connected(pw_opts("pw_scram")) end)
    after_each(function() pg:disconnect() end)

    it("binds $1..$n (natively, or substituted outside quotes and comments)", function()
      local res = assert(pg:extended_query(
        "select $1::int as a, $2::text as b, '$1' as c, $3::text as d, 10 - $4 as e, \"$1\" from (select 1 as \"$1\") s",
        5, "x'y\\z", nil, -5))
      assert.same({ { a = 5, b = "x'y\\z", c = "$1", e = 15, ["$1"] = 1 } }, res)
      res = assert(pg:query("select $1::int + 1 as n -- $2\n, $$ $1 $$ as dq, $tag$ $1 $tag$ as t /* $1 */", 41))
      assert.same({ { n = 42, dq = " $1 ", t = " $1 " } }, res)
      pg.NULL = { "NULL" }
      res = assert(pg:query("select $1::int is null as isnull", pg.NULL))
      assert.same({ { isnull = true } }, res)
    end)

    it("substitutes client-side only outside quotes, names, dollar quotes and comments", function()
      local sub = pgmoon._substitute
      local L = { "'one'", "2", " -3" }
      assert.equal("select 'one', 2,  -3", sub("select $1, $2, $3", L, 3))
      -- E'\\'' $1': an escaped backslash, a doubled quote, still inside
      assert.equal("select '$1', E'\\\\'' $1', \"$1\", a$1, 'one'",
        sub("select '$1', E'\\\\'' $1', \"$1\", a$1, $1", L, 3))
      -- E'\'' is a whole literal (an escaped quote); a plain '\' ends at its quote
      assert.equal("select E'\\'', 'one', '\\', 2", sub("select E'\\'', $1, '\\', $2", L, 3))
      assert.equal("select 'it''s $1' , 2", sub("select 'it''s $1' , $2", L, 3))
      assert.equal("select $$ $1 $$, $t$ $1 $t$, 2", sub("select $$ $1 $$, $t$ $1 $t$, $2", L, 3))
      assert.equal("select 2 -- $1\n, 'one' /* $1 /* $2 */ $3 */", sub("select $2 -- $1\n, $1 /* $1 /* $2 */ $3 */", L, 3))
      assert.equal("select 10 -  -3", sub("select 10 - $3", L, 3))
      assert.same({ nil, "there is no parameter $4" }, { sub("select $4", L, 3) })
      assert.same({ nil, "there is no parameter $0" }, { sub("select $0", L, 3) })
      assert.equal("select 'unterminated $1", sub("select 'unterminated $1", L, 3))
    end)

    it("fails for a parameter that was not given", function()
      local res, err = pg:extended_query("select $2::int as v", 1)
      assert.is_nil(res)
      assert.matches("parameter %$2", err)
    end)

    it("binds a table through its pgmoon_serialize metamethod", function()
      local serializable = setmetatable({}, { pgmoon_serialize = function() return 1009, '{"a","b c"}' end })
      local res = assert(pg:extended_query("select $1 as arr", serializable))
      assert.same({ "a", "b c" }, res[1].arr)
      local _, err = pg:extended_query("select $1 as v", {})
      assert.matches("pgmoon_serialize", err)
    end)

    it("types int8 and oid exactly as pgmoon (the native connection keeps int8 text beyond 2^53)", function()
      local res = assert(pg:query("select 9007199254740993::int8 as big, 42::int8 as small, 26::oid as o"))
      assert.equal("number", type(res[1].big))
      assert.equal(42, res[1].small)
      assert.equal("26", res[1].o)
      local native = assert(rds.connect { pg_host = e.host, pg_port = e.port, pg_database = e.db, pg_user = "pw_scram", pg_password = e.users.pw_scram })
      local r = assert(native:query("select 9007199254740993::int8 as big, 26::oid as o"))
      assert.equal("9007199254740993", r[1].big)
      assert.equal(26, r[1].o)
      native:close()
    end)

    it("wait_for_notification returns a NOTIFY from another session, as pgmoon", function()
      assert(pg:query("listen pgmoon_class_wait"))
      local other = pgmoon.new(pw_opts("pw_scram"))
      assert(other:connect())
      assert(other:query("notify pgmoon_class_wait, 'hi'"))
      local n, err = pg:wait_for_notification()
      assert.is_table(n, err)
      assert.equal("notification", n.operation)
      assert.equal("pgmoon_class_wait", n.channel)
      assert.equal("hi", n.payload)
      assert(pg:query("unlisten pgmoon_class_wait"))
      other:disconnect()
      assert.same({ nil, "closed" }, { pgmoon.new({}):wait_for_notification() })
    end)
  end)

  -------------------------------------------------------------------------
  describe("as Kong's connector drives it", function()
    -- reconnect(config) of kong/db/strategies/postgres/connector.lua, step by step
    local function kong_config(extra)
      return merge({
        application_name = "kong", host = e.host, port = e.port, timeout = 5000,
        user = "pw_scram", password = e.users.pw_scram, database = e.db, schema = "",
        ssl = false, ssl_verify = false, sem_max = 0, sem_timeout = 60, pool_size = 10,
        keepalive_timeout = 60000, ttl_cleanup_interval = 300,
      }, extra)
    end

    local function reconnect(config)
      local connection = pgmoon.new(config)
      connection.convert_null = true
      connection.NULL = rds.null -- ngx.null
      if config.timeout then connection:settimeout(config.timeout) end
      local ok, err = connection:connect()
      if not ok then return nil, err end
      if config.schema == "" then
        local res = connection:query("SELECT CURRENT_SCHEMA AS schema")
        if res and res[1] and res[1].schema and res[1].schema ~= rds.null then
          config.schema = res[1].schema
        else
          config.schema = "public"
        end
      end
      local reused = connection.sock:getreusedtimes()
      if reused == 0 then
        ok, err = connection:query("SET SCHEMA " .. connection:escape_literal(config.schema) .. ";\n"
          .. "SET TIME ZONE " .. connection:escape_literal("UTC") .. ";")
        if not ok then return nil, err end
      end
      return connection, reused
    end

    it("connects, sets the session up, queries and disconnects (init/init_worker: luasocket)", function()
      local config = kong_config { socket_type = "luasocket" }
      local connection, reused = assert(reconnect(config))
      assert.equal(0, reused)
      assert.equal("luasocket", connection.sock_type)
      assert.equal("public", config.schema)
      local res = assert(connection:query("SHOW server_version_num;"))
      assert.truthy(tonumber(res[1].server_version_num) >= 100000)
      assert.equal("UTC", connection:query("SHOW TIME ZONE")[1].TimeZone)
      -- insert_lock's statement: 4 results, the INSERT's affected_rows third
      assert(connection:query("CREATE TEMP TABLE locks (key TEXT PRIMARY KEY, owner TEXT, ttl TIMESTAMP WITH TIME ZONE)"))
      local sql = table.concat {
        "BEGIN;\n",
        "  DELETE FROM locks WHERE ttl < CURRENT_TIMESTAMP AT TIME ZONE 'UTC';\n",
        "  INSERT INTO locks (key, owner, ttl) VALUES (", connection:escape_literal("k"), ", ",
        connection:escape_literal(rds.null), ", TO_TIMESTAMP(",
        connection:escape_literal(tonumber(("%.3f"):format(socket.gettime() + 60))),
        ") AT TIME ZONE 'UTC')\n  ON CONFLICT DO NOTHING;\n",
        "COMMIT;",
      }
      local res4, n = connection:query(sql)
      assert.equal(4, n)
      assert.same({ true, { affected_rows = 0 }, { affected_rows = 1 }, true }, res4)
      res4, n = connection:query(sql) -- the lock is held: ON CONFLICT DO NOTHING
      assert.equal(4, n)
      assert.equal(0, res4[3].affected_rows)
      -- NULLs come back as ngx.null (convert_null on)
      assert.equal(rds.null, connection:query("select owner from locks where key = 'k'")[1].owner)
      -- Kong's setkeepalive() for "luasocket": disconnect
      local _, err = connection:disconnect()
      assert.is_nil(err)
      assert.truthy(connection.sock)
    end)

    it("keeps the connection alive and a second new+connect reuses it (pool)", function()
      if not pool_native then
        pending("the native conn:keepalive / conn:getreusedtimes are not in this build yet")
        return
      end
      local config = kong_config()
      -- Kong.init(): the first connect learns the schema into config (then
      -- "public"), before the workers' pooled connects
      assert(assert(reconnect(config)):disconnect())
      assert.equal("public", config.schema)
      local first, reused = assert(reconnect(config))
      assert.equal(0, reused)
      local pid = first:query("select pg_backend_pid() as pid")[1].pid
      assert(first:query("SET TIME ZONE 'Europe/Paris'; SET TIME ZONE 'UTC'"))
      local _, err = first:keepalive(config.keepalive_timeout)
      assert.is_nil(err)
      assert.same({ nil, "closed" }, { first:query("select 1") })

      local second
      second, reused = assert(reconnect(config))
      assert.truthy(reused > 0, "getreusedtimes() = " .. tostring(reused))
      assert.equal(reused, second.sock:getreusedtimes())
      assert.equal(pid, second:query("select pg_backend_pid() as pid")[1].pid)
      assert.equal("UTC", second:query("SHOW TIME ZONE")[1].TimeZone) -- the session kept its SETs
      -- setkeepalive is the same; then disconnect closes it for good
      assert.is_true((second:setkeepalive(60000)))
      local third = connected(kong_config { schema = "public" })
      assert.truthy(third.sock:getreusedtimes() > 0)
      assert.is_true(third:disconnect())
      local fourth = connected(kong_config { schema = "public" })
      assert.equal(0, fourth.sock:getreusedtimes())
      assert.is_true(fourth:disconnect())
    end)

    it("pools the sessions of two schemas apart, each with its search_path from the start", function()
      if not pool_native then
        pending("the native conn:keepalive / conn:getreusedtimes are not in this build yet")
        return
      end
      assert(connected(kong_config()):query("CREATE SCHEMA IF NOT EXISTS kc_other AUTHORIZATION pw_scram"))
      local function session(schema)
        local c = connected(kong_config { schema = schema })
        local row = c:query("select pg_backend_pid() as pid, current_schema() as s")[1]
        return c, row.pid, row.s, c.sock:getreusedtimes()
      end
      local a, pid_a, s_a = session("kc_other")
      assert.equal("kc_other", s_a) -- before any SET SCHEMA
      assert.is_true((a:keepalive(60000)))
      -- another schema: not the idle kc_other session, though host, user and database match
      local b, pid_b, s_b, reused_b = session("public")
      assert.equal("public", s_b)
      assert.equal(0, reused_b)
      assert.not_equal(pid_a, pid_b)
      assert.is_true((b:keepalive(60000)))
      local c, pid_c, s_c, reused_c = session("kc_other")
      assert.equal(pid_a, pid_c)
      assert.equal("kc_other", s_c)
      assert.truthy(reused_c > 0)
      assert.is_true(c:disconnect())
      assert.equal("kc_other", pgmoon.new(kong_config { schema = "kc_other" }):_conf().pg_schema)
      assert.is_nil(pgmoon.new(kong_config { schema = "" }):_conf().pg_schema)
    end)

    it("keepalive over a native connection without a pool closes it and says true", function()
      -- a stand-in for a build without conn:keepalive / conn:getreusedtimes
      local closed = 0
      local connection = pgmoon.new(kong_config())
      connection._conn = { close = function() closed = closed + 1 return true end }
      assert.equal(0, connection.sock:getreusedtimes())
      assert.is_true(connection:keepalive(60000))
      assert.equal(1, closed)
      assert.same({ nil, "closed" }, { connection:query("select 1") })
      assert.same({ nil, "closed" }, { connection:keepalive() })
    end)

    it("keepalive and disconnect both work on the blocking path (init, init_worker)", function()
      for _, socket_type in ipairs { "luasocket", "nginx" } do
        local a = assert(reconnect(kong_config { socket_type = socket_type }))
        assert.is_true((a:keepalive(60000, 5)))
        local b = assert(reconnect(kong_config { socket_type = socket_type }))
        assert.is_true(b:disconnect())
        assert.same({ nil, "closed" }, { b:disconnect() })
        assert.same({ nil, "closed" }, { b:keepalive() })
      end
    end)
  end)

  -------------------------------------------------------------------------
  describe("one options table for every connection, as Kong passes it", function()
    local saved
    before_each(function() saved = rawget(_G, "kong") end)
    after_each(function() rawset(_G, "kong", saved) end)

    it("builds the conf once and again as soon as an option, the timeout or a default changes", function()
      local opts = pw_opts("pw_scram")
      local first = pgmoon.new(opts):_conf()
      assert.equal(first, pgmoon.new(opts):_conf()) -- the same table: rds.connect's parse is reused
      opts.application_name = "memo_app"
      local renamed = pgmoon.new(opts):_conf()
      assert.not_equal(first, renamed)
      assert.equal("memo_app", renamed.pg_application_name)
      local pg = connected(opts)
      assert.equal("memo_app", pg:query("SHOW application_name")[1].application_name)
      pg:disconnect()
      opts.application_name = nil
      assert.equal("pgmoon", pgmoon.new(opts):_conf().pg_application_name)
      Postgres.default_config.application_name = "memo_default"
      local ok, conf = pcall(function() return pgmoon.new(opts):_conf() end)
      Postgres.default_config.application_name = "pgmoon"
      assert.is_true(ok)
      assert.equal("memo_default", conf.pg_application_name)
      local timed = pgmoon.new(opts)
      timed:settimeout(1234)
      assert.equal(1234, timed:_conf().pg_timeout)
      assert.is_nil(pgmoon.new(opts):_conf().pg_timeout)
      opts.iam_auth = true
      assert.is_true(pgmoon.new(opts):_conf().pg_iam_auth)
      opts.iam_auth = nil
      opts.database = "memo_no_such_db"
      local _, err = pgmoon.new(opts):connect()
      assert.matches('database "memo_no_such_db" does not exist', err, 1, true)
      opts.database = e.db
      assert(pgmoon.new(opts):connect())
    end)

    it("builds it again when kong.configuration is another table", function()
      local opts = { host = e.host, port = e.port, user = e.iam_users[1], database = e.db, cafile = e.ca }
      local function kong_conf(iam)
        return { configuration = { pg_host = e.host, pg_port = e.port, pg_user = e.iam_users[1],
          pg_database = e.db, pg_iam_auth = iam, pg_iam_auth_region = REGION } }
      end
      rawset(_G, "kong", kong_conf(true))
      assert.is_true(pgmoon.new(opts):_conf().pg_iam_auth)
      rawset(_G, "kong", kong_conf(false))
      assert.is_falsy(pgmoon.new(opts):_conf().pg_iam_auth)
      rawset(_G, "kong", nil)
      assert.is_nil(pgmoon.new(opts):_conf().pg_iam_auth)
    end)
  end)

  describe("IAM from kong.configuration", function()
    local saved
    before_each(function() saved = rawget(_G, "kong") end)
    after_each(function() rawset(_G, "kong", saved) end)

    local EP = { host = "db.example", port = 5432, user = "kong", database = "kong" }

    it("decides by the read-write side first, with Kong's defaults", function()
      local iam, side = pgmoon._iam_for({ pg_iam_auth = true, pg_iam_auth_region = "eu-west-1" },
        { host = "127.0.0.1", port = 5432, user = "kong", database = "kong" }, {})
      assert.equal("rw", side)
      assert.is_true(iam.pg_iam_auth)
      assert.equal("eu-west-1", iam.pg_iam_auth_region)
      -- host case, port as a string
      iam, side = pgmoon._iam_for({ pg_host = "DB.example", pg_port = "5432", pg_iam_auth = "on" }, EP, {})
      assert.equal("rw", side)
      assert.is_true(iam.pg_iam_auth)
      -- another user, database, port or host: no side
      for k, v in pairs { user = "other", database = "other", port = 5433, host = "db2.example" } do
        assert.is_nil((pgmoon._iam_for({ pg_host = "db.example", pg_iam_auth = true }, merge(EP, { [k] = v }), {})))
      end
    end)

    it("takes the read-only side's rule and keys, falling back to pg_*", function()
      local kconf = {
        pg_host = "rw.example", pg_user = "writer", pg_iam_auth = false,
        pg_iam_auth_region = "us-east-1", pg_iam_auth_assume_role_arn = "arn:aws:iam::1:role/rw",
        pg_ro_host = "ro.example", pg_ro_iam_auth = "on", pg_ro_iam_auth_region = "eu-west-1",
      }
      local iam, side = pgmoon._iam_for(kconf, merge(EP, { host = "ro.example", user = "writer" }), {})
      assert.equal("ro", side)
      assert.is_true(iam.pg_iam_auth)
      assert.equal("eu-west-1", iam.pg_iam_auth_region)
      assert.equal("arn:aws:iam::1:role/rw", iam.pg_iam_auth_assume_role_arn) -- from pg_*
      -- pg_ro_user falls back to pg_user
      assert.is_nil((pgmoon._iam_for(kconf, merge(EP, { host = "ro.example", user = "kong" }), {})))
      iam, side = pgmoon._iam_for(merge(kconf, { pg_ro_user = "reader" }), merge(EP, { host = "ro.example", user = "reader" }), {})
      assert.equal("ro", side)
      -- the read-write side keeps its password
      iam, side = pgmoon._iam_for(kconf, { host = "rw.example", port = 5432, user = "writer", database = "kong" }, {})
      assert.equal("rw", side)
      assert.is_false(iam.pg_iam_auth)
      -- pg_iam_auth covers the read-only side too
      iam = pgmoon._iam_for({ pg_iam_auth = "yes", pg_ro_host = "ro.example" }, merge(EP, { host = "ro.example" }), {})
      assert.is_true(iam.pg_iam_auth)
      -- the same endpoint on both sides: read-write decides
      iam, side = pgmoon._iam_for({ pg_host = "db.example", pg_ro_host = "db.example", pg_ro_iam_auth = true }, EP, {})
      assert.equal("rw", side)
      assert.is_nil(iam.pg_iam_auth)
    end)

    it("reads keys kong.configuration lacks from the KONG_* environment; kong.configuration wins", function()
      local env = { pg_iam_auth = true, pg_iam_auth_region = "ap-south-1", pg_ro_iam_auth = true }
      local iam = pgmoon._iam_for({ pg_host = "db.example" }, EP, env)
      assert.is_true(iam.pg_iam_auth)
      assert.equal("ap-south-1", iam.pg_iam_auth_region)
      iam = pgmoon._iam_for({ pg_host = "db.example", pg_iam_auth = false, pg_iam_auth_region = "NONE" }, EP, env)
      assert.is_false(iam.pg_iam_auth)
      assert.equal("ap-south-1", iam.pg_iam_auth_region)
      -- a word that is no boolean is passed on, for rds.connect to name
      iam = pgmoon._iam_for({ pg_host = "db.example", pg_iam_auth = "maybe" }, EP, {})
      assert.equal("maybe", iam.pg_iam_auth)
    end)

    it("_iam_from_env reads the variables as kong.conf does (injected getenv)", function()
      local vars = {
        KONG_PG_IAM_AUTH = "on", KONG_PG_RO_IAM_AUTH = "No", KONG_PG_IAM_AUTH_REGION = "eu-central-1",
        KONG_PG_IAM_AUTH_ASSUME_ROLE_ARN = "", KONG_PG_IAM_AUTH_ROLE_SESSION_NAME = "Sess",
        KONG_PG_IAM_AUTH_STS_ENDPOINT_URL = "https://sts.example", KONG_PG_RO_IAM_AUTH_REGION = "NONE",
        KONG_PG_RO_IAM_AUTH_ASSUME_ROLE_ARN = "arn:aws:iam::2:role/ro",
        KONG_PG_HOST = "not-an-iam-key",
      }
      local asked = {}
      local env = pgmoon._iam_from_env(function(name) asked[#asked + 1] = name return vars[name] end)
      assert.same({
        pg_iam_auth = true, pg_ro_iam_auth = false, pg_iam_auth_region = "eu-central-1",
        pg_iam_auth_role_session_name = "Sess", pg_iam_auth_sts_endpoint_url = "https://sts.example",
        pg_ro_iam_auth_assume_role_arn = "arn:aws:iam::2:role/ro",
      }, env)
      assert.equal(16, #asked) -- 8 IAM keys per side
      for word, value in pairs { on = true, off = false, ["true"] = true, ["false"] = false, yes = true, no = false, TRUE = true, [" Off "] = false } do
        assert.equal(value, pgmoon._iam_from_env(function(n) return n == "KONG_PG_IAM_AUTH" and word or nil end).pg_iam_auth)
      end
      assert.same({}, pgmoon._iam_from_env(function() return nil end))
      assert.is_table(pgmoon._env_iam) -- what this process had at require time
    end)

    it("logs in with IAM for the read-write side of a fake kong.configuration", function()
      rawset(_G, "kong", { configuration = {
        pg_host = e.host, pg_port = e.port, pg_user = e.iam_users[1], pg_database = e.db,
        pg_iam_auth = true, pg_iam_auth_region = REGION, lua_ssl_trusted_certificate_combined = e.ca,
      } })
      e:clear_log()
      -- as Kong's connector: cafile = lua_ssl_trusted_certificate_combined
      local opts = { host = e.host, port = e.port, user = e.iam_users[1], database = e.db, cafile = e.ca }
      local conf = pgmoon.new(opts):_conf()
      assert.same({ nil, e.ca }, { conf.pg_ssl_cafile, conf.lua_ssl_trusted_certificate })
      assert.same({ e.ca, "rds" }, assert(rds.settings(conf)).trusted)
      local pg = connected(opts)
      local row = pg:query("select current_user as u, public.ssl_is_used() as tls")[1]
      assert.same({ u = "iam_user", tls = true }, row)
      pg:disconnect()
      assert.truthy(e:log():find('user="iam_user" akid="' .. test_env.access_key_id .. '" ACCEPT', 1, true))
    end)

    it("logs in with IAM for the read-only side only, the read-write side with its password", function()
      rawset(_G, "kong", { configuration = {
        pg_host = e.host, pg_port = e.port, pg_user = "pw_scram", pg_password = e.users.pw_scram,
        pg_database = e.db, pg_iam_auth = "off",
        pg_ro_host = e.host, pg_ro_user = e.iam_users[2], pg_ro_iam_auth = "on", pg_ro_iam_auth_region = REGION,
        lua_ssl_trusted_certificate_combined = e.ca,
      } })
      local ro = connected { host = e.host, port = e.port, user = e.iam_users[2], database = e.db, cafile = e.ca }
      assert.same({ u = "iam_user2", tls = true }, ro:query("select current_user as u, public.ssl_is_used() as tls")[1])
      ro:disconnect()
      local rw = connected(pw_opts("pw_scram"))
      assert.same({ u = "pw_scram", tls = false }, rw:query("select current_user as u, public.ssl_is_used() as tls")[1])
      rw:disconnect()
      assert.is_false(rw:_conf().pg_iam_auth)
    end)

    it("lets explicit options win over kong.configuration", function()
      rawset(_G, "kong", { configuration = {
        pg_host = e.host, pg_port = e.port, pg_user = "pw_scram", pg_database = e.db, pg_iam_auth = true,
        pg_iam_auth_region = REGION,
      } })
      -- kong.configuration says IAM for pw_scram (which would fail: not an IAM user)
      local pg = pgmoon.new(pw_opts("pw_scram"))
      assert.is_true(pg:_conf().pg_iam_auth)
      local ok, err = pg:connect()
      assert.is_nil(ok)
      assert.is_string(err)
      -- iam_auth = false given: the password
      local pw = connected(pw_opts("pw_scram", { iam_auth = false }))
      assert.equal("pw_scram", pw:query("select current_user as u")[1].u)
      pw:disconnect()
      local conf = pgmoon.new(pw_opts("pw_scram", { iam_auth_region = "eu-west-1" })):_conf()
      assert.equal("eu-west-1", conf.pg_iam_auth_region)
      assert.is_nil(conf.pg_iam_auth)
    end)

    it("takes KONG_PG_IAM_AUTH from the environment at require time (child process)", function()
      local code = ([==[
        local ffi = require "ffi"
        ffi.cdef "int unsetenv(const char *name);"
        _G.kong = { configuration = { pg_host = %q, pg_port = %d, pg_user = %q, pg_database = %q,
          lua_ssl_trusted_certificate_combined = %q } }
        local pgmoon = require "kong_rds_iam.pgmoon"
        -- later changes do not count: read when the module was required
        ffi.C.unsetenv("KONG_PG_IAM_AUTH")
        ffi.C.unsetenv("KONG_PG_IAM_AUTH_REGION")
        local pg = pgmoon.new { host = %q, port = %d, user = %q, database = %q, cafile = %q }
        local ok, err = pg:connect()
        local row = ok and pg:query("select current_user as u, public.ssl_is_used() as tls")[1] or {}
        io.write("\n@@", tostring(ok), "|", tostring(err), "|", tostring(row.u), "|", tostring(row.tls), "\n")
      ]==]):format(e.host, e.port, e.iam_users[1], e.db, e.ca, e.host, e.port, e.iam_users[1], e.db, e.ca)
      local out = lua_process.run(code, merge(test_env.vars, {
        KONG_PG_IAM_AUTH = "on", KONG_PG_IAM_AUTH_REGION = REGION,
      }))
      assert.equal("true|nil|iam_user|true", out:match("@@([^\n]*)"), out)
    end)
  end)
end)
