-- LuaJIT side of bench/run. Prints result lines `name value value ...`;
-- bench/report.py turns them into the table. Timings are wall-clock
-- (CLOCK_MONOTONIC); nothing here is a test.
--
--   luajit bench.lua token   ROUNDS ITERS_FRESH ITERS_CACHED
--   luajit bench.lua other_tokens ROUNDS ITERS_FRESH ITERS_CACHED   (ElastiCache, DSQL)
--   luajit bench.lua connect SECONDS pw|iam        (one round)
--   luajit bench.lua query   SECONDS               (one round)
--   luajit bench.lua decode  ROUNDS
--   luajit bench.lua memory  N_TOKENS N_CONNECTS
--
-- Environment: the emulator's RDS_EMU_* variables, AWS_ACCESS_KEY_ID /
-- AWS_SECRET_ACCESS_KEY (a key the emulator knows), BENCH_SO_DIR.

local ffi = require "ffi"
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local cts = ffi.new("bench_timespec")
local function cpu_now() -- process CPU time, all threads
  ffi.C.clock_gettime(2, cts) -- CLOCK_PROCESS_CPUTIME_ID
  return tonumber(cts.tv_sec) + tonumber(cts.tv_nsec) * 1e-9
end

local function rss_kb()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

local rss_before_require = rss_kb()
package.cpath = (os.getenv("BENCH_SO_DIR") or "target/lua") .. "/?.so;" .. package.cpath
local rds = require "kong_rds_iam"
local rss_after_require = rss_kb()

local E = os.getenv
local function emit(name, values)
  local out = {}
  for i, v in ipairs(values) do out[i] = string.format("%.3f", v) end
  io.write(name, " ", table.concat(out, " "), "\n")
  io.flush()
end

local function die(...)
  io.stderr:write("bench.lua: ", string.format(...), "\n")
  os.exit(1)
end

-- Times `body(iters, state)` (state = setup(round, iters)) for rounds + 1
-- rounds, the first a warm-up, and emits ns per iteration: wall time as
-- `name`, process CPU time as `name_cpu`.
local function timed(rounds, name, iters, setup, body)
  local res, cpu = {}, {}
  for r = 0, rounds do
    local state = setup and setup(r, iters) or nil
    local t0, c0 = now(), cpu_now()
    body(iters, state)
    local dt, dc = now() - t0, cpu_now() - c0
    if r > 0 then
      res[#res + 1] = dt / iters * 1e9
      cpu[#cpu + 1] = dc / iters * 1e9
    end
  end
  emit(name, res)
  emit(name .. "_cpu", cpu)
end

local host, port = E "RDS_EMU_HOST" or "127.0.0.1", tonumber(E "RDS_EMU_PORT")
local region = E "RDS_EMU_REGION" or "us-east-1"

local pw_conf = {
  pg_host = host, pg_port = port, pg_database = E "RDS_EMU_DB" or "kong",
  pg_user = E "RDS_EMU_PW_SCRAM_USER", pg_password = E "RDS_EMU_PW_SCRAM_PASSWORD",
  pg_ssl = true, pg_ssl_required = true, pg_ssl_verify = false,
}
local iam_conf = {
  pg_host = host, pg_port = port, pg_database = E "RDS_EMU_DB" or "kong",
  pg_user = E "RDS_EMU_IAM_USER" or "iam_user",
  -- IAM connections verify the server: trust the emulator's CA
  pg_ssl = true, pg_ssl_required = true, pg_ssl_cafile = E "RDS_EMU_CA",
  pg_iam_auth = true, pg_iam_auth_region = region,
}

local mode = arg[1]

-- Same endpoint and key as the botocore / rds-signer / Rust loops.
local SIGN_HOST, SIGN_PORT, SIGN_USER = "bench-db.abc123.us-east-1.rds.amazonaws.com", 5432, "iam_user"

if mode == "token" then
  local rounds, iters_fresh, iters_cached = tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4])
  local params = {
    host = SIGN_HOST, port = SIGN_PORT, user = SIGN_USER, region = "us-east-1",
    access_key_id = assert(E "AWS_ACCESS_KEY_ID"), secret_access_key = assert(E "AWS_SECRET_ACCESS_KEY"),
  }
  local conf = { pg_host = SIGN_HOST, pg_port = SIGN_PORT, pg_user = SIGN_USER, pg_iam_auth_region = "us-east-1" }
  local t, err = rds.token(conf)
  if not t then die("token: %s", tostring(err)) end
  local t2 = rds.sign_token(params)
  -- Same shape as the peers' tokens (signature differs only by time).
  if t:gsub("X%-Amz%-Date=%w+", ""):gsub("X%-Amz%-Signature=%x+", ""):gsub("%%2F%d+%%2F", "")
      ~= t2:gsub("X%-Amz%-Date=%w+", ""):gsub("X%-Amz%-Signature=%x+", ""):gsub("%%2F%d+%%2F", "") then
    die("token() and sign_token() disagree:\n%s\n%s", t, t2)
  end

  local function bench(name, iters, setup, body) timed(rounds, name, iters, setup, body) end

  local sign_token, token = rds.sign_token, rds.token
  bench("lua_sign_token", iters_fresh, nil, function(n)
    for _ = 1, n do
      local tok = sign_token(params)
      if not tok then die("sign_token failed") end
    end
  end)
  -- token() with a user never seen before: a token-cache miss every call
  -- (the day's signing key stays cached, as in production). The user names
  -- are made before the clock starts.
  local seq = 0
  bench("lua_token_fresh", iters_fresh, function(_, n)
    local users = {}
    for i = 1, n do seq = seq + 1; users[i] = "bench_u" .. seq end
    return users
  end, function(n, users)
    local c = { pg_host = SIGN_HOST, pg_port = SIGN_PORT, pg_user = SIGN_USER, pg_iam_auth_region = "us-east-1" }
    for i = 1, n do
      c.pg_user = users[i]
      local tok, e = token(c)
      if not tok then die("token: %s", tostring(e)) end
    end
  end)
  bench("lua_token_cached", iters_cached, nil, function(n)
    for _ = 1, n do
      local tok = token(conf)
      if not tok then die("token failed") end
    end
  end)

elseif mode == "other_tokens" then
  -- ElastiCache and DSQL tokens, the same three ways as RDS tokens above:
  -- sign_token (explicit keys), a cache miss, a cache hit. Same key as the
  -- botocore loops in bench/py/token_botocore_other.py.
  local rounds, iters_fresh, iters_cached = tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4])
  if not rds.elasticache_token or not rds.dsql_token then
    die("this build has no rds.elasticache_token / rds.dsql_token")
  end
  local akid, secret = assert(E "AWS_ACCESS_KEY_ID"), assert(E "AWS_SECRET_ACCESS_KEY")
  local EC = { cache_name = "bench-cache", user = "iam_user", region = "us-east-1" }
  local DSQL_HOST = "benchabcdefghijklmnopqrstu.dsql.us-east-1.on.aws"
  local DS = { host = DSQL_HOST, user = "admin" }
  local ec_params = { kind = "elasticache", cache_name = EC.cache_name, user = EC.user, region = "us-east-1",
    access_key_id = akid, secret_access_key = secret }
  local ds_params = { kind = "dsql", host = DSQL_HOST, region = "us-east-1", admin = true,
    access_key_id = akid, secret_access_key = secret }
  local function shape(t)
    return (t:gsub("X%-Amz%-Date=%w+", ""):gsub("X%-Amz%-Signature=%x+", ""):gsub("%%2F%d+%%2F", ""))
  end
  for _, pair in ipairs { { rds.elasticache_token(EC), rds.sign_token(ec_params) },
                          { rds.dsql_token(DS), rds.sign_token(ds_params) } } do
    if not pair[1] or not pair[2] or shape(pair[1]) ~= shape(pair[2]) then
      die("chain and sign_token tokens disagree:\n%s\n%s", tostring(pair[1]), tostring(pair[2]))
    end
  end

  local function bench(name, iters, setup, body) timed(rounds, name, iters, setup, body) end
  -- Names never seen before for the cache-miss loops, made before the clock starts.
  local seq = 0
  local function fresh_names(prefix, suffix)
    return function(_, n)
      local names = {}
      for i = 1, n do seq = seq + 1; names[i] = prefix .. seq .. suffix end
      return names
    end
  end
  local sign_token, ec_token, dsql_token = rds.sign_token, rds.elasticache_token, rds.dsql_token

  bench("lua_ec_sign_token", iters_fresh, nil, function(n)
    for _ = 1, n do if not sign_token(ec_params) then die("sign_token elasticache failed") end end
  end)
  bench("lua_ec_token_fresh", iters_fresh, fresh_names("bench_u", ""), function(n, users)
    local a = { cache_name = EC.cache_name, user = "", region = "us-east-1" }
    for i = 1, n do
      a.user = users[i]
      local tok, e = ec_token(a)
      if not tok then die("elasticache_token: %s", tostring(e)) end
    end
  end)
  bench("lua_ec_token_cached", iters_cached, nil, function(n)
    for _ = 1, n do if not ec_token(EC) then die("elasticache_token failed") end end
  end)

  bench("lua_dsql_sign_token", iters_fresh, nil, function(n)
    for _ = 1, n do if not sign_token(ds_params) then die("sign_token dsql failed") end end
  end)
  bench("lua_dsql_token_fresh", iters_fresh, fresh_names("bench", ".dsql.us-east-1.on.aws"), function(n, hosts)
    local a = { host = "", user = "admin" }
    for i = 1, n do
      a.host = hosts[i]
      local tok, e = dsql_token(a)
      if not tok then die("dsql_token: %s", tostring(e)) end
    end
  end)
  bench("lua_dsql_token_cached", iters_cached, nil, function(n)
    for _ = 1, n do if not dsql_token(DS) then die("dsql_token failed") end end
  end)

elseif mode == "connect" then
  local seconds, kind = tonumber(arg[2]), arg[3]
  local conf = kind == "iam" and iam_conf or pw_conf
  local function once()
    local c, err = rds.connect(conf)
    if not c then die("connect (%s): %s", kind, tostring(err)) end
    local res, qerr = c:query("select 1 as one")
    if not res or res[1].one ~= 1 then die("select 1: %s", tostring(qerr)) end
    c:close()
  end
  once() -- warm-up: runtime, TLS config, credentials, token
  local n, t0 = 0, now()
  local deadline = t0 + seconds
  local t = t0
  while t < deadline do
    once()
    n = n + 1
    t = now()
  end
  emit("lua_connect_" .. kind, { n / (t - t0) })

elseif mode == "query" then
  local seconds = tonumber(arg[2])
  local c, err = rds.connect(pw_conf)
  if not c then die("connect: %s", tostring(err)) end
  for _ = 1, 200 do c:query("select 1") end
  local n, t0 = 0, now()
  local deadline, t = t0 + seconds, t0
  while t < deadline do
    for _ = 1, 50 do
      local res = c:query("select 1")
      if not res then die("select 1 failed") end
    end
    n = n + 50
    t = now()
  end
  c:close()
  emit("lua_query", { n / (t - t0) })

elseif mode == "decode" then
  local rounds = tonumber(arg[2])
  local c, err = rds.connect(pw_conf)
  if not c then die("connect: %s", tostring(err)) end
  local sql = "select id, name, flag, score, created, doc from bench_rows order by id"
  local res = assert(c:query(sql))
  -- Sanity: 10,000 rows, six Lua types as decoded.
  local r1 = res[1]
  if #res ~= 10000 or type(r1.id) ~= "number" or type(r1.name) ~= "string" or type(r1.flag) ~= "boolean"
      or type(r1.score) ~= "number" or type(r1.created) ~= "string" or type(r1.doc) ~= "table" then
    die("unexpected result shape: %d rows, id=%s name=%s flag=%s score=%s created=%s doc=%s", #res,
      type(r1.id), type(r1.name), type(r1.flag), type(r1.score), type(r1.created), type(r1.doc))
  end
  res = nil
  collectgarbage()
  local q, qs = {}, {}
  for r = 1, rounds do
    local t0 = now()
    local rows = c:query(sql)
    local dt = now() - t0
    if #rows ~= 10000 then die("short result") end
    rows = nil
    q[r] = 10000 / dt
    -- Same rows, no Lua tables: `select count(*)` over the identical scan
    -- separates server + wire time from decoding (context only).
    local t1 = now()
    c:query("select count(*) from (select id, name, flag, score, created, doc from bench_rows order by id) s")
    qs[r] = (now() - t1) * 1e3
    collectgarbage()
  end
  c:close()
  emit("lua_decode_rows_per_s", q)
  emit("lua_decode_server_only_ms", qs)

elseif mode == "memory" then
  local n_tokens, n_connects = tonumber(arg[2]), tonumber(arg[3])
  local conf = { pg_host = SIGN_HOST, pg_port = SIGN_PORT, pg_user = SIGN_USER, pg_iam_auth_region = "us-east-1" }
  local function settle()
    collectgarbage("collect"); collectgarbage("collect")
    return rss_kb()
  end
  local out = {}
  out.rss_before_require = rss_before_require
  out.rss_after_require = rss_after_require
  -- cached token(): warm-up then N calls
  for _ = 1, 1000 do assert(rds.token(conf)) end
  out.rss_token_warm = settle()
  for _ = 1, n_tokens do
    local tok = rds.token(conf)
    if not tok then die("token failed") end
  end
  out.rss_token_cached_after = settle()
  -- token() with a new user each call (token cache churns at its 1024 cap)
  local c = { pg_host = SIGN_HOST, pg_port = SIGN_PORT, pg_user = "", pg_iam_auth_region = "us-east-1" }
  for i = 1, 2000 do c.pg_user = "mem_w" .. i; assert(rds.token(c)) end
  out.rss_token_fresh_warm = settle()
  for i = 1, n_tokens do
    c.pg_user = "mem_u" .. i
    local tok = rds.token(c)
    if not tok then die("token failed") end
  end
  out.rss_token_fresh_after = settle()
  -- connect / select 1 / close
  local function cycle()
    local conn, err = rds.connect(pw_conf)
    if not conn then die("connect: %s", tostring(err)) end
    assert(conn:query("select 1"))
    conn:close()
  end
  for _ = 1, 100 do cycle() end
  out.rss_connect_warm = settle()
  for _ = 1, n_connects do cycle() end
  out.rss_connect_after = settle()
  for _, k in ipairs { "rss_before_require", "rss_after_require", "rss_token_warm", "rss_token_cached_after",
                       "rss_token_fresh_warm", "rss_token_fresh_after", "rss_connect_warm", "rss_connect_after" } do
    emit("mem_" .. k, { out[k] })
  end
  emit("mem_n_tokens", { n_tokens })
  emit("mem_n_connects", { n_connects })

elseif mode == "loop" then
  -- Untimed loops for bench/profile (perf / callgrind): one code path each.
  local what, n = arg[2], tonumber(arg[3])
  local params = {
    host = SIGN_HOST, port = SIGN_PORT, user = SIGN_USER, region = "us-east-1",
    access_key_id = assert(E "AWS_ACCESS_KEY_ID"), secret_access_key = assert(E "AWS_SECRET_ACCESS_KEY"),
  }
  if what == "sign_token" then
    for _ = 1, n do assert(rds.sign_token(params)) end
  elseif what == "token_fresh" then
    local c = { pg_host = SIGN_HOST, pg_port = SIGN_PORT, pg_user = "", pg_iam_auth_region = "us-east-1" }
    for i = 1, n do c.pg_user = "loop_u" .. i; assert(rds.token(c)) end
  elseif what == "token_cached" then
    local c = { pg_host = SIGN_HOST, pg_port = SIGN_PORT, pg_user = SIGN_USER, pg_iam_auth_region = "us-east-1" }
    for _ = 1, n do assert(rds.token(c)) end
  elseif what == "query" then
    local c = assert(rds.connect(pw_conf))
    for _ = 1, n do assert(c:query("select 1")) end
    c:close()
  elseif what == "connect" then
    for _ = 1, n do
      local c = assert(rds.connect(pw_conf))
      assert(c:query("select 1"))
      c:close()
    end
  elseif what == "decode" then
    local c = assert(rds.connect(pw_conf))
    for _ = 1, n do assert(c:query("select id, name, flag, score, created, doc from bench_rows order by id")) end
    c:close()
  else
    die("unknown loop %s", tostring(what))
  end

else
  die("unknown mode %s", tostring(mode))
end
