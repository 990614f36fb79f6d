-- What a query returns besides rows: LISTEN/NOTIFY notifications and
-- notices on success, the server's error fields on failure (the 6th value),
-- against the local RDS emulator.
local rds = require "kong_rds_iam"
local emu = require "spec.support.emulator"

describe("conn:query messages and error fields", function()
  local e, conn

  lazy_setup(function()
    e = assert(emu.start { region = "us-east-1" })
    conn = assert(rds.connect {
      pg_host = e.host, pg_port = e.port, pg_database = e.db, pg_user = "pw_scram",
      pg_password = e.users.pw_scram, pg_ssl = true,
    })
  end)

  lazy_teardown(function()
    if conn then conn:close() end
    if e then e:stop() end
  end)

  it("returns notifications as pgmoon does (3rd value)", function()
    assert(conn:query("listen messages_spec"))
    local res, n, notifications, notices = conn:query("select pg_notify('messages_spec', 'hello there') as x")
    assert.is_table(res)
    assert.equal(1, n)
    assert.is_nil(notices)
    assert.equal(1, #notifications)
    assert.same("notification", notifications[1].operation)
    assert.same("messages_spec", notifications[1].channel)
    assert.same("hello there", notifications[1].payload)
    assert.is_number(notifications[1].pid)
    -- taken once: the next query has none
    local _, _, again = conn:query("select 1")
    assert.is_nil(again)
    assert(conn:query("unlisten messages_spec"))
  end)

  it("waits for a notification from another session, and times out leaving the connection usable", function()
    local other = assert(rds.connect {
      pg_host = e.host, pg_port = e.port, pg_database = e.db, pg_user = "pw_scram",
      pg_password = e.users.pw_scram, pg_ssl = true,
    })
    assert(conn:query("listen messages_spec_wait"))
    assert(other:query("notify messages_spec_wait, 'from the other one'"))
    local n, err = conn:wait_for_notification()
    assert.is_table(n, err)
    assert.equal("notification", n.operation)
    assert.equal("messages_spec_wait", n.channel)
    assert.equal("from the other one", n.payload)
    assert.equal(assert(other:query("select pg_backend_pid() as p"))[1].p, n.pid)
    conn:settimeout(200)
    local t0 = os.clock()
    local none, terr = conn:wait_for_notification()
    assert.is_nil(none)
    assert.matches("^timeout", terr)
    assert.is_true(os.clock() - t0 < 1)
    conn:settimeout(5000)
    assert.same({ { one = 1 } }, (conn:query("select 1 as one")))
    assert(conn:query("unlisten messages_spec_wait"))
    assert(other:close())
  end)

  it("returns notices as pgmoon renders them (4th value)", function()
    local res, n, notifications, notices = conn:query("do $$ begin raise notice 'hi %', 42; raise warning 'careful'; end $$")
    assert.is_true(res)
    assert.equal(1, n)
    assert.is_nil(notifications)
    assert.same({ "NOTICE: hi 42", "WARNING: careful" }, notices)
  end)

  it("gives the server's error fields by name as the 6th value on failure", function()
    local res, err, partial, n, sqlstate, fields = conn:query("select 1 as a; select 1/0")
    assert.is_nil(res)
    assert.equal("division by zero", err)
    assert.equal(1, partial[1].a)
    assert.equal(1, n)
    assert.equal("22012", sqlstate)
    assert.equal("ERROR", fields.severity)
    assert.equal("22012", fields.code)
    assert.equal("division by zero", fields.message)
    assert(conn:query("create temp table messages_spec_u (k int constraint messages_spec_k unique)"))
    assert(conn:query("insert into messages_spec_u values (1)"))
    res, err, _, _, sqlstate, fields = conn:query("insert into messages_spec_u values (1)")
    assert.is_nil(res)
    assert.equal("23505", sqlstate)
    assert.equal("messages_spec_k", fields.constraint)
    assert.equal("messages_spec_u", fields.table)
    assert.matches("Key %(k%)=%(1%) already exists", fields.detail)
    assert.matches('violates unique constraint "messages_spec_k"', err, 1, true)
    res, err, _, _, _, fields = conn:query("select nope from messages_spec_u")
    assert.is_nil(res)
    assert.equal("8", fields.position)
    assert.equal("42703", fields.code)
  end)
end)
