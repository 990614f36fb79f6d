-- The nginx side of spec/kong_connector_spec.lua: Kong's own Postgres
-- connector (its copy in the nginx prefix, requiring kong_rds_iam.pgmoon)
-- made and initialised in the nginx master as Kong.init() does, then driven
-- by /api?op=NAME requests; each op answers a JSON object the spec checks.
-- The kong.configuration stand-in is PREFIX/conf/kongconf.lua; keys that
-- start with "_" are this app's own (the test table, the other CA).

local cjson = require "cjson.safe"

local App = {}

local KCONF            -- kong.configuration
local CONNECTOR        -- made in the master, as Kong's is
local connector_mod
local MASTER = {}      -- what init_by_lua saw

local function now()
  ngx.update_time()
  return ngx.now()
end

local copy = require("spec.support.util").merge -- copy(t): a shallow copy

local function is_null(v) return v == ngx.null end

-- As kong/db/strategies/init.lua does: the base connector as `super`.
local function new_connector(conf)
  local c, err = connector_mod.new(conf)
  if not c then return nil, err end
  local base = require "kong.db.strategies.connector"
  local mt = getmetatable(c)
  if not getmetatable(mt) then
    setmetatable(mt, { __index = function(_, k)
      if k == "super" then return base end
      return base[k]
    end })
  end
  return c
end

--- init_by_lua: kong.configuration, the connector, connector:init().
function App.init_master()
  -- Kong's files here must reach the native driver only.
  package.preload["pgmoon"] = function() error("the real pgmoon was required", 2) end
  KCONF = assert(dofile(ngx.config.prefix() .. "conf/kongconf.lua"))
  _G.kong = {
    configuration = KCONF,
    vault = { try = function(cb, opts) return cb(opts) end },
    log = { trace = function() end },
  }
  connector_mod = require "kong.db.strategies.postgres.connector"
  CONNECTOR = assert(new_connector(KCONF))
  local ok, err = CONNECTOR:init()
  MASTER.init_ok, MASTER.init_err = ok, err
  MASTER.major_version = CONNECTOR.major_version
  MASTER.phase = ngx.get_phase()
  MASTER.native = package.loaded["kong_rds_iam.pgmoon"] ~= nil
end

-- A strategy of a table with a ttl column, as init_worker reads one.
local function ttl_strategy(name)
  return { schema = { name = name, ttl = true, each_field = function() return function() end end } }
end

--- init_worker_by_lua: Kong's TTL cleanup timer (worker 0, with admin
--- listeners), every _debug_pg_ttl_cleanup_interval seconds.
function App.init_worker()
  local ok, err = CONNECTOR:init_worker({ ttl_strategy(KCONF._table .. "_ttl") })
  if not ok then ngx.log(ngx.WARN, "kong connector app: init_worker: ", err) end
end

local function stored(c)
  return c:get_stored_connection("write")
end

local function reused(c)
  local conn = stored(c)
  if conn and conn.sock then return conn.sock:getreusedtimes() end
  return nil
end

local OPS = {}

-- connector:init() again in a request, and infos()
function OPS.init()
  local ok, err = CONNECTOR:init()
  return { master = MASTER, request_init_ok = ok, request_init_err = err,
           major_version = CONNECTOR.major_version, infos = CONNECTOR:infos() }
end

function OPS.setup()
  local T = KCONF._table
  local res, err, _, nq = CONNECTOR:query(
    "DROP TABLE IF EXISTS " .. T .. ";\n" ..
    "CREATE TABLE " .. T .. " (id serial PRIMARY KEY, name text UNIQUE, tags text[], data jsonb, note text, n int);\n" ..
    "DROP TABLE IF EXISTS " .. T .. "_child; DROP TABLE IF EXISTS " .. T .. "_parent;\n" ..
    "CREATE TABLE " .. T .. "_parent (id int PRIMARY KEY);\n" ..
    "CREATE TABLE " .. T .. "_child (id int PRIMARY KEY, parent_id int REFERENCES " .. T .. "_parent (id));")
  return { ok = res ~= nil, err = err, num_queries = nq }
end

-- connect, the session Kong set up, queries of every kind, setkeepalive
function OPS.main()
  local c = CONNECTOR
  local T = KCONF._table
  local arrays = require "kong_rds_iam.pgmoon.arrays"
  local out = {}
  local ok, err = c:connect()
  out.connect_ok, out.connect_err = ok and true or false, err
  if not ok then return out end
  local conn = stored(c)
  out.reused = conn.sock:getreusedtimes()
  out.sock_type = conn.sock_type

  local r, e = c:query("SELECT pg_backend_pid() AS pid, current_user AS usr, " ..
    "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS ssl, " ..
    "current_setting('TimeZone') AS tz, current_setting('application_name') AS app, current_schema() AS schema")
  out.session = r and r[1] or { err = e }

  local res, e2, _, nq = c:query("SELECT 1 AS one; SELECT 'two' AS two, NULL::text AS nothing; " ..
    "UPDATE " .. T .. " SET n = n WHERE false; DO $$ BEGIN END $$")
  out.multi = { err = e2, num_queries = nq }
  out.multi_ok = res ~= nil and nq == 4 and res[1][1].one == 1 and res[2][1].two == "two"
    and is_null(res[2][1].nothing) and res[3].affected_rows == 0 and res[4] == true

  -- INSERT ... RETURNING with an array (pgmoon.arrays' encode_array), jsonb and NULL
  local name = "row-" .. ngx.worker.pid() .. "-" .. string.format("%.3f", now())
  local tags = { "a", "b c", 'q"uote', "back\\slash", "it's" }
  local ins, e3 = c:query("INSERT INTO " .. T .. " (name, tags, data, note, n) VALUES (" ..
    c:escape_literal(name) .. ", " .. arrays.encode_array(tags) .. ", " ..
    c:escape_literal('{"k":[1,2.5,{"z":null}],"s":"\195\169","b":true}') .. "::jsonb, NULL, 7) RETURNING *")
  out.insert_err = e3
  local row = ins and ins[1]
  out.insert_ok = row ~= nil and ins.affected_rows == 1 and type(row.id) == "number" and row.name == name
    and type(row.tags) == "table" and #row.tags == 5 and row.tags[2] == "b c" and row.tags[3] == 'q"uote'
    and row.tags[4] == "back\\slash" and row.tags[5] == "it's"
    and type(row.data) == "table" and row.data.k[2] == 2.5 and is_null(row.data.k[3].z)
    and row.data.s == "\195\169" and row.data.b == true and is_null(row.note) and row.n == 7

  local arr, e4 = c:query("SELECT tags, ARRAY[1,NULL,3] AS ints, '{}'::text[] AS empty, " ..
    "ARRAY[[1,2],[3,4]] AS nested, ARRAY['x',NULL]::text[] AS tnull FROM " .. T ..
    " WHERE id = " .. tostring(row and row.id or -1))
  out.arrays_err = e4
  local a = arr and arr[1]
  out.arrays_ok = a ~= nil and a.tags[1] == "a" and a.ints[1] == 1 and is_null(a.ints[2]) and a.ints[3] == 3
    and type(a.empty) == "table" and #a.empty == 0 and a.nested[2][1] == 3 and is_null(a.tnull[2])

  local js, e5 = c:query([[SELECT '{"a":null,"b":[1,"x",true]}'::json AS j, '[{"n":1.5},null]'::jsonb AS jb, data FROM ]]
    .. T .. " WHERE id = " .. tostring(row and row.id or -1))
  out.json_err = e5
  local j = js and js[1]
  out.json_ok = j ~= nil and is_null(j.j.a) and j.j.b[2] == "x" and j.j.b[3] == true and j.jb[1].n == 1.5
    and is_null(j.jb[2]) and j.data.k[1] == 1

  -- the connector sets convert_null = true and NULL = ngx.null
  local nl, e6 = c:query("SELECT NULL::int AS i, NULL::text AS t, NULL::jsonb AS j, NULL::text[] AS a, " ..
    "NULL::bool AS b, 'x' AS x")
  out.nulls_err = e6
  local n = nl and nl[1]
  out.nulls_ok = n ~= nil and is_null(n.i) and is_null(n.t) and is_null(n.j) and is_null(n.a) and is_null(n.b)
    and n.x == "x"

  -- escaping through the connector (its methods call the driver's with the connector as self)
  local lit = "it's a \\ test \226\130\172"
  local es, e7 = c:query("SELECT " .. c:escape_literal(lit) .. " AS s, " .. c:escape_identifier('we"ird') ..
    ".x FROM (SELECT 1 AS x) AS " .. c:escape_identifier('we"ird'))
  out.escape_ok, out.escape_err = es ~= nil and es[1].s == lit, e7

  local kok, kerr = c:setkeepalive()
  out.keepalive_ok, out.keepalive_err, out.stored_after = kok, kerr, stored(c) ~= nil
  return out
end

-- the next request in the same worker: the pooled session again
function OPS.reuse()
  local c = CONNECTOR
  local out = {}
  local ok, err = c:connect()
  out.connect_ok, out.connect_err = ok and true or false, err
  if not ok then return out end
  out.reused = reused(c)
  local r, e = c:query("SELECT pg_backend_pid() AS pid, current_setting('TimeZone') AS tz")
  out.pid, out.tz, out.err = r and r[1] and r[1].pid, r and r[1] and r[1].tz, e
  out.keepalive_ok = c:setkeepalive()
  return out
end

-- two light threads in one request, each a connector query without a stored connection
function OPS.threads()
  local c = CONNECTOR
  local t0 = now()
  local function one()
    local r, e = c:query("SELECT pg_backend_pid() AS pid, pg_sleep(0.5)::text AS s")
    return { pid = r and r[1] and r[1].pid, err = e }
  end
  local th1, th2 = ngx.thread.spawn(one), ngx.thread.spawn(one)
  local _, r1 = ngx.thread.wait(th1)
  local _, r2 = ngx.thread.wait(th2)
  return { a = r1, b = r2, elapsed = now() - t0 }
end

-- a connector whose pg_timeout is 500 ms runs pg_sleep(2)
function OPS.timeout()
  local conf = copy(KCONF)
  conf.pg_timeout = 500
  local c = assert(new_connector(conf))
  local out = {}
  local ok, err = c:connect()
  out.connect_ok, out.connect_err = ok and true or false, err
  if not ok then return out end
  local r = c:query("SELECT pg_backend_pid() AS pid")
  out.pid_before = r and r[1] and r[1].pid
  local t0 = now()
  local res, e = c:query("SELECT pg_sleep(2)")
  out.ok, out.err, out.elapsed = res ~= nil, e, now() - t0
  local r2, e2 = c:query("SELECT pg_backend_pid() AS pid, 1 AS one")
  out.after = { pid = r2 and r2[1] and r2[1].pid, one = r2 and r2[1] and r2[1].one, err = e2 }
  -- the timed-out statement: cancelled with its connection, not left running
  local gone
  for _ = 1, 30 do
    local g = CONNECTOR:query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = "
      .. tostring(out.pid_before or -1))
    gone = g and g[1] and g[1].n == 0
    if gone then break end
    ngx.sleep(0.1)
  end
  out.old_backend_gone = gone
  return out
end

-- Kong's toerror(), an upvalue of its strategy's functions (not exported)
local function kong_toerror()
  local strategy = require "kong.db.strategies.postgres"
  local function upvalue(f, wanted)
    for i = 1, 200 do
      local name, val = debug.getupvalue(f, i)
      if not name then return nil end
      if name == wanted then return val end
    end
  end
  local mt = upvalue(strategy.new, "_mt")
  return mt and upvalue(mt.truncate, "toerror")
end

-- A schema as Kong's toerror() reads one: name, primary_key, fields,
-- each_field() in declaration order.
local function schema_of(name, list)
  local fields = {}
  for _, f in ipairs(list) do fields[f[1]] = f[2] end
  return {
    name = name, primary_key = { "id" }, fields = fields,
    each_field = function()
      local i = 0
      return function()
        i = i + 1
        if list[i] then return list[i][1], list[i][2] end
      end
    end,
  }
end

-- Kong's Errors methods toerror() calls, answering what they were given.
local ERRORS = {
  unique_violation = function(_, keys) return { "unique_violation", keys } end,
  primary_key_violation = function(_, pk) return { "primary_key_violation", pk } end,
  foreign_key_violation_restricted = function(_, name, table_name)
    return { "foreign_key_violation_restricted", name, table_name }
  end,
  foreign_key_violation_invalid_reference = function(_, key, field, schema)
    return { "foreign_key_violation_invalid_reference", key, field, schema }
  end,
  database_error = function(_, msg) return { "database_error", msg } end,
}

-- Server errors through the connector, and Kong's own parser on their text
-- (it reads the constraint and the table names out of the message and the
-- detail line, and calls the driver's escape_identifier).
function OPS.errors()
  local c = CONNECTOR
  local T = KCONF._table
  local toerror = assert(kong_toerror(), "toerror not found in Kong's strategy")
  local parent = schema_of(T .. "_parent", { { "id", { type = "integer" } } })
  local child = schema_of(T .. "_child", { { "id", { type = "integer" } },
    { "parent", { type = "foreign", schema = parent } } })
  local main = schema_of(T, { { "id", { type = "integer" } }, { "name", { type = "string", unique = true } } })
  local function parsed(schema, err, entity)
    local _, kerr = toerror({ schema = schema, errors = ERRORS, connector = c }, err, nil, entity)
    return kerr
  end
  local out = {}
  assert(c:query("DELETE FROM " .. T .. " WHERE name = 'dup'; DELETE FROM " .. T .. "_child; DELETE FROM "
    .. T .. "_parent; INSERT INTO " .. T .. " (name) VALUES ('dup'); INSERT INTO " .. T .. "_parent VALUES (1); "
    .. "INSERT INTO " .. T .. "_child VALUES (1, 1)"))

  local res, e = c:query("INSERT INTO " .. T .. " (name) VALUES ('dup') RETURNING id")
  out.unique = { ok = res ~= nil, err = e, kong = e and parsed(main, e, { name = "dup" }) }

  res, e = c:query("DELETE FROM " .. T .. "_parent WHERE id = 1")
  out.restricted = { ok = res ~= nil, err = e, kong = e and parsed(parent, e, {}) }

  res, e = c:query("INSERT INTO " .. T .. "_child VALUES (2, 99)")
  out.invalid_reference = { ok = res ~= nil, err = e, kong = e and parsed(child, e, { parent = { id = 99 } }) }

  local _, e3, partial3, nq3 = c:query("SELECT 1 AS one; INSERT INTO " .. T .. " (name) VALUES ('dup'); SELECT 2 AS two")
  out.multi = { err = e3, num_queries = nq3,
                -- one statement done: its rows, as pgmoon gives a single result
                partial_first = type(partial3) == "table" and partial3[1] and partial3[1].one or nil }
  local r4 = c:query("SELECT 1 AS one")
  out.after_ok = r4 ~= nil and r4[1].one == 1
  return out
end

-- What `kong migrations reset/bootstrap/up` and the cluster mutex ask of the
-- connector, on a connector of its own in schema PG_SCHEMA_m (Kong's CLI
-- runs these in a timer; a request is the same kind of yielding phase).
function OPS.migrations()
  local conf = copy(KCONF)
  conf.pg_schema = KCONF.pg_schema .. "_m"
  conf.pg_ro_host = nil -- as in Kong's CLI (ngx.IS_CLI): migrations never use a read-only side
  local c = assert(new_connector(conf))
  local out = {}
  local ok, err = c:connect_migrations()
  out.connect_ok, out.connect_err = ok and true or false, err
  if not ok then return out end
  out.reset = { c:schema_reset() }
  out.needs_bootstrap = c:schema_migrations() == nil
  out.bootstrap = { c:schema_bootstrap(60) }
  out.bootstrapped = c:schema_migrations()
  out.up = { c:run_up_migration("000_base", "CREATE TABLE IF NOT EXISTS kc_m (id int PRIMARY KEY)") }
  out.record = { c:record_migration("core", "000_base", "executed") }
  out.migrated = c:schema_migrations()
  -- a failing migration is rolled back whole: its first statement leaves nothing
  local bad, bad_err = c:run_up_migration("001_bad", "CREATE TABLE kc_m2 (id int); SELECT 1/0")
  out.bad_up = { ok = bad ~= nil, err = bad_err }
  local left = c:query("SELECT to_regclass('kc_m2') AS r")
  out.bad_left_nothing = left ~= nil and left[1].r == ngx.null
  out.locks = {
    first = c:insert_lock("migrations", 60, "owner-a"),
    second = c:insert_lock("migrations", 60, "owner-b"),
    held = c:read_lock("migrations"),
    removed = c:remove_lock("migrations", "owner-a"),
    held_after = c:read_lock("migrations"),
  }
  local seen = {}
  for row in c:iterate("SELECT generate_series(1, 3) AS i") do seen[#seen + 1] = row.i end
  out.iterated = seen
  out.schema = (c:query("SELECT current_schema() AS s") or {})[1]
  out.close = { c:close() }
  return out
end

-- a read through the connector: its read-only side when there is one
function OPS.read()
  local r, e = CONNECTOR:query("SELECT pg_backend_pid() AS pid, current_user AS usr, " ..
    "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS ssl", "read")
  local row = r and r[1] or {}
  return { pid = row.pid, usr = row.usr, ssl = row.ssl, err = e }
end

-- Expired rows for Kong's TTL cleanup timer, which runs its queries in an
-- ngx.timer; waits (up to 5 s) for them to go. The live row stays.
function OPS.ttl()
  local T = KCONF._table .. "_ttl"
  assert(CONNECTOR:query("INSERT INTO " .. T .. " (ttl) SELECT now() - interval '1 hour' FROM generate_series(1, 3); " ..
    "INSERT INTO " .. T .. " (ttl) VALUES (now() + interval '1 hour'); " ..
    "INSERT INTO cluster_events (expire_at) VALUES (now() - interval '1 hour')"))
  local t0, left = now(), nil
  repeat
    ngx.sleep(0.2)
    local r = CONNECTOR:query("SELECT (SELECT count(*) FROM " .. T .. " WHERE ttl < now())::int AS expired, " ..
      "(SELECT count(*) FROM " .. T .. " WHERE ttl > now())::int AS live, " ..
      "(SELECT count(*) FROM cluster_events)::int AS events")
    left = r and r[1]
  until (left and left.expired == 0 and left.events == 0) or now() - t0 > 5
  return { left = left, waited = now() - t0 }
end

-- a connector trusting an unrelated CA, or dialling a name the certificate lacks
local function refused(changes)
  local conf = copy(KCONF)
  for k, v in pairs(changes) do conf[k] = v end
  local c = assert(new_connector(conf))
  local ok, err = c:connect()
  if ok then c:setkeepalive() end
  return { connect_ok = ok and true or false, connect_err = err }
end

function OPS.badca()
  return refused { lua_ssl_trusted_certificate_combined = KCONF._other_ca }
end

function OPS.badhost()
  return refused { pg_host = "127.0.0.2" }
end

function OPS.stats()
  return { stats = require("kong_rds_iam").stats() }
end

--- content_by_lua: /api?op=NAME
function App.handle()
  local f = OPS[ngx.var.arg_op]
  if not f then
    ngx.status = 404
    ngx.say(cjson.encode({ error = "unknown op" }))
    return
  end
  local ok, res = xpcall(f, debug.traceback)
  if not ok then
    ngx.status = 500
    res = { raised = res }
  end
  ngx.header.content_type = "application/json"
  ngx.say(cjson.encode(res) or cjson.encode({ text = tostring(res) }))
end

return App
