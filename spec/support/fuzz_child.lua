-- The fuzz loop of spec/fuzz_spec.lua, run in a child luajit (so that a
-- crash shows as a missing summary line and a signal exit status):
--
--   require("spec.support.fuzz_child").run(params)
--
-- It builds random confs (random subsets of every key the module reads, each
-- with values of every Lua type) and calls token, settings, and for samples
-- connect and explain with them; then random methods with random arguments
-- on real connection objects (IAM and password logins to the emulator), and
-- sign_token / elasticache_token / dsql_token with random fields. Every call
-- is pcall'ed and checked:
--
--   * a raised error is a string, and raises only for an argument of a wrong
--     type (a programmer error);
--   * a failure is `nil, non-empty string`;
--   * the call returns within the pg_timeout in play + 1 s;
--   * no error text, returned value or tostring() of one holds a secret
--     (params.secrets: the secret key, the session token raw and
--     percent-encoded, a credential_process's secret, passwords), a token
--     fragment (`X-Amz-Signature=`, ...) or the signature of a token this
--     process was given.
--
-- At the end it prints one line `@@FUZZ@@<Lua table literal>` (counts and
-- the first violations); nothing else goes to stdout. The randomness is a
-- small deterministic PRNG seeded with params.seed, so a run repeats.
--
-- params: seed, phase, confs, method_calls, token_calls, connect_every,
-- explain_every, progress (file), secrets ({ name = text }), password_secrets
-- ({ name = text }: also allowed in settings()'s `password`), emu = { host,
-- port, db, ca, other_ca, client_cert, client_key, iam_users, users = {
-- name = password } }, closed_port, paths = { fifo, big, secret_file, dir },
-- access_key_id, session_token, secret_access_key.
local M = {}

local socket = require "socket"
local ffi = require "ffi"
local gettime = socket.gettime
local floor, huge = math.floor, math.huge
local type, tostring, pcall, select, pairs, ipairs, setmetatable, getmetatable =
  type, tostring, pcall, select, pairs, ipairs, setmetatable, getmetatable

local MAX_VIOLATIONS = 10 -- kept per kind

---------------------------------------------------------------------------
-- PRNG: L'Ecuyer's combined LCG (1988), exact in doubles (every product is
-- below 2^53), so the sequence is the same on every Lua.
---------------------------------------------------------------------------
local function new_rng(seed)
  seed = floor(math.abs(tonumber(seed) or 1))
  local s1 = seed % 2147483562 + 1
  local s2 = floor(seed / 2147483562) % 2147483398 + 1
  local r = {}
  function r.next()
    s1 = (40014 * s1) % 2147483563
    s2 = (40692 * s2) % 2147483399
    local z = s1 - s2
    if z < 1 then z = z + 2147483562 end
    return (z - 1) / 2147483562
  end
  function r.int(a, b) return a + floor(r.next() * (b - a + 1)) end
  function r.pick(t) return t[r.int(1, #t)] end
  function r.chance(p) return r.next() < p end
  -- warm up: the first outputs of small seeds are close together
  for _ = 1, 10 do r.next() end
  return r
end

---------------------------------------------------------------------------
-- Text: escaping for the summary, short descriptions of values
---------------------------------------------------------------------------

-- A Lua string literal of s with every byte that is not printable ASCII
-- escaped (so a summary stays one line whatever it holds).
local function quote(s)
  return '"' .. s:gsub('[%c\128-\255"\\]', function(c) return ("\\%03d"):format(c:byte()) end) .. '"'
end

local function cut(s, n)
  n = n or 300
  if #s <= n then return s end
  return s:sub(1, n) .. ("...(%d bytes)"):format(#s)
end

-- Human-readable descriptions of generated values (proxies and functions
-- have no literal): value -> text.
local DESC = setmetatable({}, { __mode = "k" })

local function describe(v, depth, seen)
  depth = depth or 0
  local t = type(v)
  if t == "string" then return quote(cut(v, 120)) end
  if t == "number" then
    if v ~= v then return "0/0" end
    if v == huge then return "1/0" end
    if v == -huge then return "-1/0" end
    return ("%.17g"):format(v)
  end
  if t == "boolean" or t == "nil" then return tostring(v) end
  if (t == "table" or t == "userdata" or t == "function" or t == "thread" or t == "cdata") and DESC[v] then
    return DESC[v]
  end
  if t == "table" then
    seen = seen or {}
    if seen[v] then return "<cycle>" end
    if depth > 3 then return "{...}" end
    seen[v] = true
    local parts, n = {}, 0
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do
      n = n + 1
      if n > 40 then parts[#parts + 1] = "..."; break end
      local kd = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or ("[" .. describe(k, depth + 1, seen) .. "]")
      parts[#parts + 1] = kd .. " = " .. describe(v[k], depth + 1, seen)
    end
    seen[v] = nil
    return "{ " .. table.concat(parts, ", ") .. " }"
  end
  return "<" .. t .. ">"
end

local function describe_args(args)
  local parts = {}
  for i = 1, args.n do parts[i] = describe(args[i]) end
  return table.concat(parts, ", ")
end

-- tostring that cannot raise, for values handed back by the module
local function safe_tostring(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  return "<tostring raised>"
end

---------------------------------------------------------------------------

function M.run(P)
  local rds = require "kong_rds_iam"
  local r = new_rng(P.seed)
  local emu = P.emu
  local paths = P.paths

  local summary = {
    seed = P.seed, phase = P.phase, confs = 0, method_calls = 0, token_calls = 0,
    calls = {}, raised = {}, violations = {}, violation_counts = {}, violations_total = 0,
    connects_ok = { iam = 0, password = 0 }, slowest = {}, max_error_length = 0,
    distinct_errors = 0, internal_errors = 0,
  }
  local distinct = {}

  local progress = P.progress and io.open(P.progress, "w")
  local function at(text)
    if progress then
      progress:seek("set")
      text = text:sub(1, 200)
      progress:write(text, string.rep(" ", 200 - #text), "\n")
      progress:flush()
    end
  end

  local function violation(kind, fname, args, detail, extra)
    summary.violations_total = summary.violations_total + 1
    summary.violation_counts[kind] = (summary.violation_counts[kind] or 0) + 1
    local list = summary.violations[kind] or {}
    summary.violations[kind] = list
    if #list < MAX_VIOLATIONS then
      list[#list + 1] = {
        kind = kind, fname = fname, args = cut(describe_args(args), 1500),
        detail = cut(detail, 1500), extra = extra, confs = summary.confs, method_calls = summary.method_calls,
        token_calls = summary.token_calls,
      }
    end
  end

  -------------------------------------------------------------------------
  -- secrets and token fragments
  -------------------------------------------------------------------------
  local SECRETS = {} -- { name, text }: whole, and the first and last 12 bytes
  local function add_secret(name, text, password)
    if type(text) ~= "string" or #text < 8 then return end
    SECRETS[#SECRETS + 1] = { name = name, text = text, password = password }
    if #text >= 24 then
      SECRETS[#SECRETS + 1] = { name = name .. " (first 12 bytes)", text = text:sub(1, 12), password = password }
      SECRETS[#SECRETS + 1] = { name = name .. " (last 12 bytes)", text = text:sub(-12), password = password }
    end
  end
  for name, text in pairs(P.secrets or {}) do add_secret(name, text) end
  for name, text in pairs(P.password_secrets or {}) do add_secret(name, text, true) end
  local FRAGMENTS = { "X-Amz-Signature=", "X-Amz-Security-Token=", "X-Amz-Credential=" }
  local signatures = {} -- every signature of a token handed to this process
  local nsignatures = 0

  -- The leak found in `text`, or nil. `allow_password`: settings() returns
  -- pg_password by design.
  local function leak_in(text, allow_password)
    for i = 1, #SECRETS do
      local s = SECRETS[i]
      if not (allow_password and s.password) and text:find(s.text, 1, true) then return s.name end
    end
    for i = 1, #FRAGMENTS do
      if text:find(FRAGMENTS[i], 1, true) then return "token fragment " .. FRAGMENTS[i] end
    end
    if nsignatures > 0 then
      for run in text:gmatch("%x+") do
        if #run == 64 and signatures[run:lower()] then return "the signature of a token" end
      end
    end
    return nil
  end

  local function scan_text(text, where, fname, args, allow_password)
    local what = leak_in(text, allow_password)
    if what then violation("leak", fname, args, where .. " holds " .. what .. ": " .. text) end
  end

  -- Every string in a returned value (tables walked, tostring() of others).
  local function scan_value(v, where, fname, args, allow_password, depth, seen)
    local t = type(v)
    if t == "string" then
      scan_text(v, where, fname, args, allow_password)
    elseif t == "table" then
      depth = depth or 0
      seen = seen or {}
      if seen[v] or depth > 5 then return end
      seen[v] = true
      local mt = getmetatable(v)
      if mt and mt.__tostring then scan_text(safe_tostring(v), "tostring(" .. where .. ")", fname, args, allow_password) end
      local n = 0
      for k, x in pairs(v) do
        n = n + 1
        if n > 5000 then break end
        local sub = where .. "." .. tostring(k)
        scan_value(k, sub .. " (key)", fname, args, allow_password, depth + 1, seen)
        scan_value(x, sub, fname, args, allow_password, depth + 1, seen)
      end
    elseif t == "userdata" or t == "cdata" or t == "function" or t == "thread" then
      scan_text(safe_tostring(v), "tostring(" .. where .. ")", fname, args, allow_password)
    end
  end

  -- Role credentials the fake STS issued (its log: one JSON object a line).
  local sts_log, sts_size = P.sts_log and io.open(P.sts_log, "rb"), 0
  local sts_learned = 0
  local function learn_sts()
    if not sts_log then
      sts_log = P.sts_log and io.open(P.sts_log, "rb")
      if not sts_log then return end
    end
    local size = sts_log:seek("end")
    if not size or size == sts_size then return end
    sts_log:seek("set", sts_size)
    local text = sts_log:read(size - sts_size) or ""
    sts_size = size
    for secret, token in text:gmatch('"secret_access_key": "([^"]+)", "session_token": "([^"]+)"') do
      sts_learned = sts_learned + 1
      add_secret("an assumed role's secret key", secret)
      add_secret("an assumed role's session token", token)
      add_secret("an assumed role's session token, percent-encoded",
        (token:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end)))
    end
  end

  local function learn_token(token)
    if type(token) ~= "string" then return end
    local sig = token:match("X%-Amz%-Signature=(%x+)")
    if sig and not signatures[sig:lower()] then
      signatures[sig:lower()] = true
      nsignatures = nsignatures + 1
    end
  end

  -------------------------------------------------------------------------
  -- the checked call
  -------------------------------------------------------------------------
  local TOKEN_FUNCTIONS = { token = true, sign_token = true, elasticache_token = true, dsql_token = true }

  local function stat(fname)
    local s = summary.calls[fname]
    if not s then
      s = { n = 0, ok = 0, failed = 0, raised = 0, seconds = 0 }
      summary.calls[fname] = s
    end
    return s
  end

  local function note_error(err)
    if #err > summary.max_error_length then summary.max_error_length = #err end
    if err:find("internal error", 1, true) then summary.internal_errors = summary.internal_errors + 1 end
    local key = err:gsub("%d+", "N"):gsub(", got .*", ", got ..."):sub(1, 120)
    if not distinct[key] then
      distinct[key] = true
      summary.distinct_errors = summary.distinct_errors + 1
      summary.error_samples = summary.error_samples or {}
      if #summary.error_samples < 2000 then summary.error_samples[#summary.error_samples + 1] = cut(err, 200) end
    end
  end

  -- ok, results (packed, [1] the first return) = checked(fname, limit_s, valid, f, ...)
  -- `valid`: every argument has the documented type, so raising is a bug.
  local function checked(fname, limit_s, valid, f, ...)
    local args = { n = select("#", ...), ... }
    at(("confs %d method_calls %d token_calls %d: %s"):format(summary.confs, summary.method_calls,
      summary.token_calls, fname))
    local t0 = gettime()
    local res = { n = 0 }
    local packed = function(ok, ...) res = { n = select("#", ...), ok = ok, ... } end
    packed(pcall(f, ...))
    local dt = gettime() - t0
    learn_sts()
    local s = stat(fname)
    s.n = s.n + 1
    s.seconds = s.seconds + dt
    if dt > 0.2 then
      summary.over_200ms = (summary.over_200ms or 0) + 1
      if (summary.over_200ms or 0) <= 20 then
        summary.slow_samples = summary.slow_samples or {}
        summary.slow_samples[#summary.slow_samples + 1] = ("%.3f s %s(%s)"):format(dt, fname, cut(describe_args(args), 600))
      end
    end
    if dt > (summary.slowest[fname] or 0) then summary.slowest[fname] = dt end
    if dt > limit_s then
      violation("slow", fname, args, ("took %.3f s, the bound is %.3f s (pg_timeout in play + 1 s)"):format(dt, limit_s))
    end
    if not res.ok then
      s.raised = s.raised + 1
      local err = res[1]
      if type(err) ~= "string" then
        violation("raised_non_string", fname, args, "raised a " .. type(err) .. ": " .. safe_tostring(err))
      else
        note_error(err)
        scan_text(err, "the raised error", fname, args)
        if valid then
          violation("raised_on_valid_arguments", fname, args, "raised: " .. err)
        else
          local key = fname .. ": " .. err:gsub("0x%x+", "0x..."):sub(1, 160)
          summary.raised[key] = (summary.raised[key] or 0) + 1
        end
      end
      return false, res
    end
    local first = res[1]
    if first == nil or first == false then
      s.failed = s.failed + 1
      local err = res[2]
      if type(err) ~= "string" or err == "" then
        violation("bad_failure", fname, args, ("returned %s, %s (%d values)"):format(describe(first),
          type(err) == "string" and quote(err) or ("a " .. type(err)), res.n))
      else
        note_error(err)
      end
    else
      s.ok = s.ok + 1
    end
    local allow_password = fname == "settings"
    for i = 1, res.n do
      local v = res[i]
      if i == 1 and TOKEN_FUNCTIONS[fname] and type(v) == "string" then
        learn_token(v)
      else
        scan_value(v, ("value #%d"):format(i), fname, args, allow_password)
      end
    end
    return true, res
  end

  -------------------------------------------------------------------------
  -- values
  -------------------------------------------------------------------------
  local null = rds.null

  local function raiser(obj)
    return function() error(obj, 0) end
  end
  -- error objects an __index may raise
  local ERROR_OBJECTS = {
    "no reads today",
    setmetatable({}, { __tostring = function() error("the error object's __tostring raised too") end }),
    setmetatable({}, { __tostring = function() error(setmetatable({}, { __tostring = function() error({}) end })) end }),
    setmetatable({}, { __tostring = function() return {} end }),
    setmetatable({}, { __tostring = function() return "an error object" end }),
    {}, 42, true, false, null, io.stdout, coroutine.create(function() end),
  }
  for i, o in ipairs(ERROR_OBJECTS) do
    if type(o) == "table" then DESC[o] = "<error object #" .. i .. ">" end
  end

  local function raising_proxy()
    local obj = r.pick(ERROR_OBJECTS)
    local t = setmetatable({}, { __index = raiser(obj) })
    DESC[t] = "<proxy whose __index raises " .. describe(obj) .. ">"
    return t
  end

  local LONG = {
    string.rep("a", 100000),
    string.rep("\195\169", 40000),
    string.rep("7", 5000),
    string.rep("x", 64) .. "." .. string.rep("y", 64) .. ".us-east-1.rds.amazonaws.com",
    string.rep("'\\\"", 3000),
    string.rep("\0", 1000),
  }

  local e_port, closed = emu.port, P.closed_port
  local V = {}
  V.bool = { true, false, "on", "off", "true", "false", "yes", "no", "ON", "Off", "TRUE", "1", "0", "", " on", "on ",
    1, 0, "enabled" }
  V.port = { 5432, "5432", 0, -1, 65535, 65536, 1.5, "1e3", "0x1F90", " 5432", "5432 ", e_port, tostring(e_port),
    closed, 2 ^ 31, 0 / 0, 1 / 0, -1 / 0, 5432.0, "05432", "-1", "" }
  V.ms = { 200, 500, 1500, "1000", 0, -1, 1, 2 ^ 31, 2 ^ 53, 1e308, 0 / 0, 1 / 0, -1 / 0, 0.5, "5000ms", 3600000,
    3600001, 86400000, "abc", "", "1e3", -0.0 }
  V.host = { "127.0.0.1", "localhost", "db.abc.us-east-1.rds.amazonaws.com",
    "MyDB.CLUSTER-RO-xyz.eu-west-1.rds.amazonaws.com", "p.proxy-abc.ap-south-1.rds.amazonaws.com",
    "db.x.cn-north-1.rds.amazonaws.com.cn", "db.x.us-gov-west-1.rds.amazonaws.com", "::1", "[::1]", "10.0.0.1",
    "abc.dsql.us-east-1.on.aws", "host:5432", "host/path", "a b", "", "-", "..", "h\0st", "caf\233",
    string.rep("a", 64) .. ".com", LONG[4], "db.abc.il-central-1.rds.amazonaws.com", "UPPER.example" }
  V.region = { "us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1", "", "US-EAST-1", "us east 1", "x",
    "aws-global", "il-central-1", "us-east-1\0", "../../etc" }
  V.user = { "kong", "iam_user", "admin", "pw_scram", "u@x", 'u"q', "u'q", "\195\188ser", "", "u\0x",
    string.rep("u", 300), "u%2F", "u&DBUser=admin" }
  V.name = { "kong", "KongPostgres", "a b", string.rep("x", 100), "\195\169", "\0", "", "session/with/slashes",
    "x=y&z" }
  V.db = { "kong", emu.db, "no_such_db", "", "d b", "d\0b", "postgres", string.rep("d", 100) }
  V.arn = { "arn:aws:iam::123456789012:role/KongRole", "arn:aws:iam::123:role/x", "not-an-arn",
    "arn:aws-cn:iam::123456789012:role/x", "arn:aws:iam::123456789012:role/" .. string.rep("a", 200), "" }
  -- (a closed port costs pg_timeout: the SDK retries until then)
  V.url = { P.sts_url, P.sts_url, P.sts_url .. "/", P.sts_url .. "/x?y#z", "https://127.0.0.1:" .. closed,
    "not a url", "ftp://x", "http://[::1", "https://user:pass@" .. P.sts_url:match("//(.*)"), "",
    "http://" .. string.rep("h", 300), "sts.amazonaws.com" }
  V.version = { "tlsv1_2", "tlsv1_3", "any", "tlsv1_1", "tlsv1", "TLSv1_2", "ssl3", "", "tlsv1_2 " }
  V.path = { emu.ca, emu.other_ca, emu.client_cert, emu.client_key, "/dev/zero", paths.fifo, paths.big,
    "/dev/null", "/etc/passwd", "/proc/self/environ", "/proc/self/cmdline", paths.secret_file, "/nonexistent/x.pem",
    paths.dir, "", "system", "relative.pem", "/tmp/\0x", "/dev/urandom" }
  V.service = { "rds", "dsql", "RDS", "DSQL", " rds", "elasticache", "", "rds-db" }
  V.count = { 0, 1, 2, 256, -1, 1e9, 0 / 0, "10", "x", 100000, 2 ^ 53, 1.5, 1 / 0 }
  V.rate = { 0, 200, 0.001, 1e-9, -1, 1e308, 0 / 0, "200", "x", 1 / 0, 5 }
  V.require_auth = { "scram-sha-256", "md5", "password", "none", "!md5", "!password,!md5", "md5,scram-sha-256",
    "gss", "scram-sha-256, gss", "", { "password" }, { "scram-sha-256", "password" }, { "!md5", "md5" }, { 1 },
    "password,", "PASSWORD", { {} } }
  V.password = {}
  for _, text in pairs(P.password_secrets or {}) do V.password[#V.password + 1] = text end
  V.password[#V.password + 1] = ""
  V.password[#V.password + 1] = "{vault://env/pg-password}"
  local cyclic = {}
  cyclic[1] = cyclic
  DESC[cyclic] = "<cyclic array>"
  V.trusted = { "system", "system," .. emu.ca, { "system", emu.ca }, { paths.fifo }, { "/dev/zero" },
    emu.ca .. "," .. paths.fifo, {}, { 1, 2 }, { {} }, "", { "system", paths.big }, cyclic, " system , " .. emu.ca,
    { emu.ca, paths.secret_file }, "/proc/self/environ", { "system", "/dev/urandom" } }

  local function ffi_values()
    local out = {}
    local ok, v = pcall(ffi.new, "int", 5)
    if ok then out[#out + 1] = v; DESC[v] = "ffi.new('int', 5)" end
    ok, v = pcall(ffi.cast, "void *", 0)
    if ok then out[#out + 1] = v; DESC[v] = "ffi.cast('void *', 0)" end
    ok, v = pcall(loadstring, "return 5432LL")
    if ok and v then v = v(); out[#out + 1] = v; DESC[v] = "5432LL" end
    return out
  end
  local CDATA = ffi_values()

  local STRINGS = { "", " ", "\t\n", "on", "off", "NONE", "none", "nil", "null", "system", "any", "5432", "0", "-1",
    "1e3", "0x10", "inf", "nan", "abc", "a\0b", "\0", "caf\233", "\255\254", "\192\128", "\237\160\128", "'", "\\",
    '"', "%s%n%d", "{vault://env/x}", "${HOME}", "$(id)", "\r\n", "\27[31m" }

  local function random_string()
    local len = r.int(0, 40)
    local bytes = {}
    for i = 1, len do
      local k = r.next()
      if k < 0.6 then bytes[i] = string.char(r.int(97, 122))
      elseif k < 0.75 then bytes[i] = r.pick({ "'", "\\", '"', "%", "\0", " ", ",", "=", "&", "/", ":", "." })
      else bytes[i] = string.char(r.int(0, 255)) end
    end
    return table.concat(bytes)
  end

  local KINDS = { "bool", "port", "ms", "host", "region", "user", "name", "db", "arn", "url", "version", "path",
    "service", "count", "rate", "require_auth", "trusted" }

  local any_value
  local function random_table()
    local k = r.next()
    if k < 0.3 then return {} end
    if k < 0.55 then
      local t = {}
      for i = 1, r.int(1, 4) do t[i] = r.chance(0.7) and r.pick(r.pick({ V.path, V.host, STRINGS })) or any_value(1) end
      return t
    end
    if k < 0.7 then return { x = 1, [true] = "y", [1.5] = {} } end
    if k < 0.8 then return { { { {} } } } end
    if k < 0.9 then return raising_proxy() end
    return setmetatable({ "system" }, { __index = function() error("no") end, __len = raiser("len") })
  end

  function any_value(depth)
    local k = r.next()
    if k < 0.08 then return r.chance(0.5) end
    if k < 0.18 then
      return r.pick({ 0, 1, -1, 5432, 65535, 65536, 2 ^ 31, 2 ^ 53, -2 ^ 63, 2 ^ 64, r.int(-100000, 100000),
        r.int(0, 70000) })
    end
    if k < 0.24 then return r.pick({ 0.5, 1e308, -1e308, 1 / 0, -1 / 0, 0 / 0, 1e-300, 5432.0, 1500.5, -0.0 }) end
    if k < 0.45 then return r.pick(STRINGS) end
    if k < 0.55 then return random_string() end
    if k < 0.58 then return r.pick(LONG) end
    if k < 0.72 then return r.pick(V[r.pick(KINDS)]) end
    if k < 0.80 and (depth or 0) == 0 then return random_table() end
    if k < 0.83 then return r.pick({ print, function() error("called") end, function() return "x" end }) end
    if k < 0.85 then return coroutine.create(function() end) end
    if k < 0.90 then
      local u = r.pick({ io.stdout, null, newproxy and newproxy(true) or null })
      return u
    end
    if k < 0.93 and #CDATA > 0 then return r.pick(CDATA) end
    if (depth or 0) == 0 then return raising_proxy() end
    return nil
  end

  -- kong.conf keys by kind; each gets its pg_ro_ twin below
  local BASE = {
    host = "host", port = "port", user = "user", password = "password", database = "db", schema = "name",
    application_name = "name", timeout = "ms", iam_auth = "bool", iam_auth_region = "region",
    iam_auth_host = "host", iam_auth_port = "port", iam_auth_service = "service", iam_auth_ssl_verify = "bool",
    iam_auth_assume_role_arn = "arn", iam_auth_role_session_name = "name", iam_auth_sts_endpoint_url = "url",
    ssl = "bool", ssl_required = "bool", ssl_verify = "bool", ssl_version = "version", ssl_cert = "path",
    ssl_cert_key = "path", ssl_cafile = "path", require_auth = "require_auth", keepalive_timeout = "ms",
    pool_size = "count", backlog = "count", iam_auth_max_rate = "rate", max_lifetime = "ms",
  }
  local KEYS, KIND_OF = {}, {}
  local names = {}
  for name in pairs(BASE) do names[#names + 1] = name end
  table.sort(names) -- pairs order is not stable across runs; the PRNG's picks must be
  for _, name in ipairs(names) do
    for _, prefix in ipairs({ "pg_", "pg_ro_" }) do
      KEYS[#KEYS + 1] = prefix .. name
      KIND_OF[prefix .. name] = BASE[name]
    end
  end
  KEYS[#KEYS + 1] = "lua_ssl_trusted_certificate"
  KIND_OF.lua_ssl_trusted_certificate = "trusted"

  local function value_for(key)
    if r.chance(0.55) then return r.pick(V[KIND_OF[key]]) end
    return any_value()
  end

  local function shallow_copy(t)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    return c
  end

  -- conf (what the call gets), base (the plain table behind it, nil for a
  -- proxy that raises on every read)
  local function wrap(base)
    local k = r.next()
    if k < 0.04 then
      return raising_proxy(), nil
    elseif k < 0.09 then
      local n, every, obj = 0, r.int(1, 6), r.pick(ERROR_OBJECTS)
      local t = setmetatable({}, { __index = function(_, key)
        n = n + 1
        if n % every == 0 then error(obj, 0) end
        return base[key]
      end })
      DESC[t] = ("<proxy over %s that raises %s on every %d-th read>"):format(describe(base), describe(obj), every)
      return t, base
    elseif k < 0.16 then
      local t = setmetatable({}, { __index = base, __newindex = function() error("read-only") end })
      DESC[t] = ("<read-only proxy over %s>"):format(describe(base))
      return t, base
    end
    return base, base
  end

  local function gen_base()
    local base = {}
    for _ = 1, r.int(0, 12) do
      local key = r.pick(KEYS)
      base[key] = value_for(key)
    end
    if r.chance(0.75) then base.pg_timeout = r.chance(0.8) and r.int(200, 1500) or tostring(r.int(200, 1500)) end
    if r.chance(0.02) then base[r.pick({ 1, true, 2.5 })] = "odd key" end
    return base
  end

  local function gen_mode()
    local k = r.next()
    if k < 0.4 then return nil end
    if k < 0.65 then return "rw" end
    if k < 0.9 then return "ro" end
    if k < 0.97 then return r.pick({ "", "RO", "x", "rw\0", "ro ", string.rep("r", 1000) }) end
    return r.pick({ 1, {}, true, print })
  end

  local function mode_ok(mode) return mode == nil or type(mode) == "string" end

  -- The pg_timeout in play for conf `base` on `mode` (ms), as the module
  -- reads it: settings' timeout, else the default 5000.
  local function timeout_of(base, mode)
    if type(base) ~= "table" then return 5000 end
    local ok, s = pcall(rds.settings, base, mode)
    if ok and type(s) == "table" and type(s.timeout) == "number" then return s.timeout end
    return 5000
  end
  local function bound(ms) return ms / 1000 + 1 end

  -------------------------------------------------------------------------
  -- connections
  -------------------------------------------------------------------------
  local pw_users = {}
  for user in pairs(emu.users) do pw_users[#pw_users + 1] = user end
  table.sort(pw_users)

  -- A conf aimed at the emulator (or a closed port), from a random base.
  local function aim(base, mode)
    local c = r.chance(0.5) and shallow_copy(base) or {}
    if r.chance(0.3) then
      for _ = 1, r.int(1, 3) do local key = r.pick(KEYS); c[key] = value_for(key) end
    end
    local host = r.chance(0.9) and emu.host or "localhost"
    local port = r.chance(0.8) and emu.port or closed
    if r.chance(0.2) then port = tostring(port) end
    c.pg_host, c.pg_port = host, port
    if mode == "ro" or r.chance(0.3) then c.pg_ro_host, c.pg_ro_port = host, port end
    if r.chance(0.7) then
      local iam = r.chance(0.5)
      local user = iam and r.pick(emu.iam_users) or r.pick(pw_users)
      c.pg_user, c.pg_database = user, emu.db
      if mode == "ro" then c.pg_ro_user = user end
      if iam then
        c.pg_iam_auth = r.pick({ true, "on", true })
        if r.chance(0.8) then c.pg_ssl_cafile = emu.ca end
        if r.chance(0.1) then c.pg_iam_auth_ssl_verify = false end
      else
        c.pg_password = emu.users[user]
        if r.chance(0.3) then c.pg_ssl = true end
        if user == "pw_clear" and r.chance(0.5) then c.pg_require_auth = "password" end
        if c.pg_iam_auth and r.chance(0.7) then c.pg_iam_auth = nil end
      end
    end
    -- files are read when they are used (TLS): give the connect one of the odd ones
    if r.chance(0.3) then
      local key = r.pick({ "pg_ssl_cafile", "pg_ssl_cert", "pg_ssl_cert_key", "lua_ssl_trusted_certificate",
        "pg_ro_ssl_cafile" })
      c[key] = r.pick(key == "lua_ssl_trusted_certificate" and V.trusted or V.path)
      if key:find("cert") and r.chance(0.5) then
        c.pg_ssl_cert, c.pg_ssl_cert_key = r.pick(V.path), r.pick(V.path)
      end
      if r.chance(0.5) then c.pg_ssl, c.pg_ssl_verify = true, r.chance(0.5) end
    end
    if r.chance(0.9) then c.pg_timeout = r.int(200, 1500) end
    if c.pg_ro_timeout ~= nil and r.chance(0.8) then c.pg_ro_timeout = r.int(200, 1500) end
    if r.chance(0.5) then c.pg_iam_auth_max_rate = nil; c.pg_ro_iam_auth_max_rate = nil end
    return c
  end

  local function after_connect(conn, res, fname)
    if type(conn) ~= "table" then return end
    local ok, label = pcall(tostring, conn)
    if not ok or type(label) ~= "string" then
      violation("raised_non_string", "tostring(conn)", { n = 0 }, "tostring(conn) failed: " .. safe_tostring(label))
    else
      scan_text(label, "tostring(conn)", fname, { n = 0 })
    end
    local iam = type(label) == "string" and label:find("iam_user", 1, true)
    summary.connects_ok[iam and "iam" or "password"] = summary.connects_ok[iam and "iam" or "password"] + 1
    local k = r.next()
    if k < 0.15 then
      checked("query", 3, true, conn.query, conn, "select 1 as one")
    end
    if k < 0.6 then checked("close", 2, true, conn.close, conn)
    elseif k < 0.9 then checked("keepalive", 2, true, conn.keepalive, conn, r.pick({ nil, 100, 1000 }), nil)
    end -- else: left to the garbage collector
  end

  -------------------------------------------------------------------------
  -- phase A: confs
  -------------------------------------------------------------------------
  local t_start = gettime()
  for i = 1, P.confs do
    summary.confs = i
    local base = gen_base()
    local conf, plain = wrap(base)
    local mode = gen_mode()
    if r.chance(0.02) then conf = r.pick({ nil, "pg_host=x", 5432, true, print }) end
    local valid = type(conf) == "table" and mode_ok(mode)
    local limit = bound(timeout_of(plain, mode))
    checked("settings", limit, valid, rds.settings, conf, mode)
    local ok, res = checked("token", limit, valid, rds.token, conf, mode)
    if ok and plain and r.chance(0.1) then
      -- the memo in front of the Rust cache: change a key, ask again
      local key = r.pick(KEYS)
      plain[key] = value_for(key)
      checked("token", bound(timeout_of(plain, mode)), valid, rds.token, conf, mode)
    end
    if r.chance(0.05) then
      checked("credentials_source", limit, valid, rds.credentials_source, conf, mode)
    end
    local aimed
    if i % P.connect_every == 0 then
      local cmode = mode_ok(mode) and mode or (r.chance(0.5) and "ro" or nil)
      local c = aim(plain or {}, cmode)
      local cconf = wrap(c)
      aimed = c
      local climit = bound(timeout_of(c, cmode))
      local cok, cres = checked("connect", climit, true, rds.connect, cconf, cmode)
      if cok then after_connect(cres[1], cres, "connect") end
    end
    if i % P.explain_every == 0 then
      local econf, emode, opts = conf, mode, nil
      local k = r.next()
      if aimed and k < 0.5 then
        econf, opts = aimed, r.pick({ { connect = true }, { connect = true }, {}, nil })
        emode = mode_ok(mode) and mode or nil
      elseif k < 0.9 then
        opts = r.pick({ nil, {}, { connect = false } })
      else
        opts = r.pick({ "connect", 1, true })
      end
      local evalid = type(econf) == "table" and mode_ok(emode) and (opts == nil or type(opts) == "table")
      local elimit = bound(timeout_of(type(econf) == "table" and (econf == conf and plain or econf) or nil, emode))
      checked("explain", elimit, evalid, rds.explain, econf, emode, opts)
    end
    if i % 500 == 0 then collectgarbage() end
  end
  summary.conf_phase_seconds = gettime() - t_start

  -------------------------------------------------------------------------
  -- phase B: methods on real connections
  -------------------------------------------------------------------------
  t_start = gettime()
  local KINDS_OF_LOGIN = { "iam", "iam2", "pw_scram", "pw_md5", "pw_clear_tls", "pw_scram_tls" }
  local function login_conf(kind)
    local c = { pg_host = emu.host, pg_port = emu.port, pg_database = emu.db, pg_timeout = r.int(300, 1500) }
    if kind == "iam" or kind == "iam2" then
      c.pg_user = emu.iam_users[kind == "iam" and 1 or 2]
      c.pg_iam_auth = true
      c.pg_ssl_cafile = emu.ca
    else
      local user = kind:match("^pw_(%a+)")
      user = "pw_" .. user
      c.pg_user, c.pg_password = user, emu.users[user]
      if kind:find("_tls$") then c.pg_ssl = true end
    end
    if r.chance(0.2) then c.pg_schema = r.pick({ "public", "nope", "a b", '"q"' }) end
    if r.chance(0.2) then c.pg_application_name = r.pick(V.name) end
    if r.chance(0.2) then c.pg_pool_size = r.pick({ 1, 2, 10 }) end
    if r.chance(0.1) then c.pg_max_lifetime = r.pick({ 1, 100, 60000 }) end
    return c
  end

  local slots = {}
  local function open(i)
    local c = login_conf(r.pick(KINDS_OF_LOGIN))
    local ok, res = checked("connect", bound(c.pg_timeout), true, rds.connect, c)
    if ok and type(res[1]) == "table" then
      local label = tostring(res[1])
      local iam = label:find("iam_user", 1, true)
      summary.connects_ok[iam and "iam" or "password"] = summary.connects_ok[iam and "iam" or "password"] + 1
      slots[i] = { conn = res[1], timeout = c.pg_timeout, closed = false }
    else
      slots[i] = nil
    end
    return slots[i]
  end

  local SQLS = {
    "select 1", "select 1 as a, 'x' as b", "select $1", "select 'it''s'", "select E'a\\\\b'", "select '\\'",
    "select 1; select 2", "select * from nope", "select 1/0", "begin", "commit", "rollback", "begin; select 1",
    "listen fuzz_ch", "notify fuzz_ch, 'hello'", "listen fuzz_ch; notify fuzz_ch, 'p'", "select pg_sleep(0.05)",
    "set standard_conforming_strings = off", "set standard_conforming_strings = on",
    "set client_encoding = 'SJIS'", "set client_encoding = 'LATIN1'", "set client_encoding = 'UTF8'",
    "reset all", "select repeat('x', 1000000) as big", "select generate_series(1, 20000) as n",
    "select null::int as a, 'NaN'::float8 as b, 'infinity'::float8 as c, '{1,2}'::int[] as d, "
      .. "'{\"a\":null}'::jsonb as e, '\\x00ff'::bytea as f, 9223372036854775807::int8 as g",
    "copy (select 1) to stdout", "create temp table if not exists t(x int); copy t from stdin",
    "select pg_terminate_backend(pg_backend_pid())", "", ";", "select 'a\0b'",
    "select '" .. string.rep("'", 1001) .. "'", "do $$ begin raise notice 'n%', 1; end $$",
    "do $$ begin raise exception 'boom' using detail = 'd', hint = 'h'; end $$", "select current_user",
    "select set_config('search_path', 'x', false)", "discard all", "prepare p as select 1; execute p",
    "select 'caf\233'", "\255", "select '" .. string.rep("\\", 100) .. "'", "select 1 from pg_stat_ssl",
    "select array[1,2,3]::int[][] as a, '{{1,2},{3,4}}'::int[] as b", "select 1::numeric / 3 as x",
    "savepoint s", "select E'\\x'", "select 1 where false",
  }
  local function gen_sql()
    local k = r.next()
    if k < 0.001 then return "select pg_sleep(3)" end
    if k < 0.7 then return r.pick(SQLS) end
    if k < 0.8 then return random_string() end
    if k < 0.85 then return r.pick(LONG) end
    if k < 0.9 then return "select " .. random_string() end
    return any_value()
  end
  local ESCAPABLE = { "", "a", "it's", "a\\b", "\\'", "'\\", '"', "a\0b", "caf\233", "\255\254", "\195\169",
    "\130\92", "\92", 0, -1, 1.5, 0 / 0, 1 / 0, -1 / 0, 2 ^ 63, -0.0, 1e308, -2 ^ 53, true, false, null }
  local function gen_literal()
    local k = r.next()
    if k < 0.6 then return r.pick(ESCAPABLE), true end
    if k < 0.7 then return random_string(), true end
    if k < 0.75 then return r.pick(LONG), true end
    if k < 0.8 then return nil, true end
    local v = any_value()
    local t = type(v)
    return v, t == "nil" or t == "boolean" or t == "number" or t == "string" or rawequal(v, null)
  end

  local METHODS = {
    { "query", 30 }, { "escape_literal", 15 }, { "escape_identifier", 10 }, { "getreusedtimes", 5 },
    { "settimeout", 8 }, { "wait_for_notification", 2 }, { "close", 3 }, { "disconnect", 2 },
    { "keepalive", 4 }, { "setkeepalive", 2 }, { "tostring", 5 },
  }
  local total_weight = 0
  for _, m in ipairs(METHODS) do total_weight = total_weight + m[2] end
  local function pick_method()
    local x = r.next() * total_weight
    for _, m in ipairs(METHODS) do
      x = x - m[2]
      if x < 0 then return m[1] end
    end
    return METHODS[1][1]
  end

  local function optional_count_ok(v, max)
    return v == nil or (type(v) == "number" and v == v and v >= 0 and v <= max)
  end

  local nslots = 6
  local function method_call()
    local i = r.int(1, nslots)
    local slot = slots[i]
    if not slot or (slot.closed and r.chance(0.3)) then
      if slot and r.chance(0.5) and not slot.closed then slot.conn:close() end
      slot = open(i)
      if not slot then return end
    end
    local conn = slot.conn
    local name = pick_method()
    local self, self_ok = conn, true
    if r.chance(0.1) then
      self = r.pick({ "nil", {}, "conn", 1, "fake", io.stdout, null, print })
      if self == "nil" then self = nil end
      if self == "fake" then self = setmetatable({}, getmetatable(conn)); DESC[self] = "<a table with conn's metatable>" end
      self_ok = false
    end
    if DESC[conn] == nil then DESC[conn] = "conn" end
    local limit = bound(slot and slot.timeout or 5000)
    if name == "tostring" then
      summary.method_calls = summary.method_calls + 1
      checked("tostring", limit, true, tostring, self)
      return
    end
    local f = conn[name]
    local args, valid = { n = 0 }, self_ok
    if name == "query" then
      local sql = gen_sql()
      args = { n = 1, sql }
      valid = valid and type(sql) == "string"
    elseif name == "escape_literal" then
      local v, ok = gen_literal()
      args = { n = 1, v }
      valid = valid and ok
    elseif name == "escape_identifier" then
      local v = r.chance(0.8) and (r.chance(0.5) and r.pick(ESCAPABLE) or random_string()) or any_value()
      if type(v) ~= "string" and r.chance(0.5) then v = r.pick({ "public", 'a"b', "", "a\0b" }) end
      args = { n = 1, v }
      valid = valid and type(v) == "string"
    elseif name == "settimeout" then
      local ms = r.chance(0.6) and r.pick({ 1, 50, 200, 800, 1500, 2000, 1.5 })
        or r.pick({ 0, -1, 0 / 0, 1 / 0, 3600001, "100", {}, true, 1e308, -1 / 0 })
      args = { n = 1, ms }
      valid = valid and type(ms) == "number" and ms >= 1 and ms <= 3600000
    elseif name == "keepalive" or name == "setkeepalive" then
      local a = r.pick({ { n = 0 }, { n = 1, 0 }, { n = 1, 10 }, { n = 1, 86400000 }, { n = 1, 86400001 },
        { n = 1, -1 }, { n = 1, 0 / 0 }, { n = 1, "10" }, { n = 1, 1e308 }, { n = 2, 10, 0 }, { n = 2, 10, 1 },
        { n = 2, 10, 100000 }, { n = 2, 10, 100001 }, { n = 2, nil, 5 }, { n = 1, 1 / 0 }, { n = 2, 1.5, 2.5 },
        { n = 2, 10, {} } })
      args = a
      valid = valid and optional_count_ok(a[1], 86400000) and optional_count_ok(a[2], 100000)
    elseif name == "wait_for_notification" then
      -- it waits the connection's whole timeout: mostly a short one
      if slot and r.chance(0.95) then
        local ms = r.int(1, 100)
        summary.method_calls = summary.method_calls + 1
        local ok, res = checked("settimeout", limit, true, conn.settimeout, conn, ms)
        if ok and res[1] then slot.timeout = ms; limit = bound(ms) end
      end
    end
    summary.method_calls = summary.method_calls + 1
    local ok, res = checked(name, limit, valid, f, self, unpack(args, 1, args.n))
    if slot and self == conn then
      if name == "settimeout" and ok and res[1] and valid then slot.timeout = args[1] end
      if (name == "close" or name == "disconnect" or name == "keepalive" or name == "setkeepalive") and ok then
        slot.closed = true
      end
      if name == "query" and ok and res[1] == nil and type(res[2]) == "string"
        and (res[2]:find("closed", 1, true) or res[2]:find("^timeout")) then
        slot.closed = true
      end
    end
    -- tostring(conn) after every call
    local tok, label = pcall(tostring, conn)
    if not tok or type(label) ~= "string" then
      violation("raised_non_string", "tostring(conn)", { n = 0 }, "tostring(conn) raised " .. safe_tostring(label))
    else
      scan_text(label, "tostring(conn)", name, args)
    end
  end

  while summary.method_calls < P.method_calls do
    method_call()
    if summary.method_calls % 500 == 0 then collectgarbage() end
  end
  for i = 1, nslots do
    if slots[i] and r.chance(0.5) then slots[i].conn:close() end
  end
  summary.method_phase_seconds = gettime() - t_start

  -------------------------------------------------------------------------
  -- phase C: the token functions with random fields
  -------------------------------------------------------------------------
  t_start = gettime()
  local SIGN = {
    host = { "string", V.host }, port = { "number", V.port }, user = { "string", V.user },
    region = { "string", V.region }, access_key_id = { "string", { P.access_key_id or "AKIDFUZZ", "", "a" } },
    secret_access_key = { "string", { P.secret_access_key or "fuzz-secret-key-xx", "", "s" } },
    session_token = { "string", { P.session_token or "fuzz-session-token-xx", "", "t" } },
    time = { "number", { 0, -1, 1e12, 2 ^ 53, 0 / 0, 1 / 0, 1700000000, 1700000000.5, -2 ^ 63, 253402300800 } },
    cache_name = { "string", { "my-cache", "MyCache", "", "c\0", string.rep("c", 300) } },
    endpoint = { "string", { "my-cache-x7ab2c.serverless.use1.cache.amazonaws.com",
      "clustercfg.my-db.x7ab2c.memorydb.us-east-1.amazonaws.com", "", "10.0.0.1", "x.euc1.cache.amazonaws.com" } },
    serverless = { "boolean", { true, false } }, service = { "string", { "elasticache", "memorydb", "", "rds" } },
    timeout = { "number", V.ms }, admin = { "boolean", { true, false } },
    expires_in = { "number", { 1, 900, 604800, 604801, 0, -1, 0 / 0, 1.5, 1 / 0 } },
    kind = { "string", { "rds", "elasticache", "memorydb", "dsql", "x", "" } },
  }
  local FIELDS = {}
  for name in pairs(SIGN) do FIELDS[#FIELDS + 1] = name end
  table.sort(FIELDS)
  local REQUIRED = {
    sign_token = { rds = { "host", "port", "user", "region", "access_key_id", "secret_access_key" },
      elasticache = { "cache_name", "user", "region", "access_key_id", "secret_access_key" },
      dsql = { "host", "region", "access_key_id", "secret_access_key" } },
    elasticache_token = { "cache_name", "user" },
    dsql_token = { "host" },
  }
  local OPTIONAL = {
    rds = { "session_token", "time" },
    elasticache = { "endpoint", "serverless", "service", "timeout", "session_token", "time" },
    dsql = { "user", "admin", "expires_in", "timeout", "session_token", "time" },
    elasticache_token = { "endpoint", "region", "serverless", "service", "timeout" },
    dsql_token = { "user", "region", "admin", "expires_in", "timeout" },
  }
  local function typed(name) return r.pick(SIGN[name][2]) end

  local function gen_request(fname)
    local req, kind = {}, nil
    local fields
    if fname == "sign_token" then
      kind = r.pick({ "rds", "rds", "elasticache", "memorydb", "dsql", "none" })
      local k = kind == "memorydb" and "elasticache" or (kind == "none" and "rds" or kind)
      fields = { REQUIRED.sign_token[k], OPTIONAL[k] }
      if kind ~= "none" then req.kind = kind end
    else
      fields = { REQUIRED[fname], OPTIONAL[fname] }
    end
    for gi, group in ipairs(fields) do
      for _, name in ipairs(group) do
        if gi == 1 or r.chance(0.5) then req[name] = typed(name) end
      end
    end
    -- then mistakes: a wrong type, a missing field, a random extra field
    for _ = 1, (r.chance(0.6) and 0 or r.int(1, 3)) do
      local k = r.next()
      local name = r.pick(FIELDS)
      if k < 0.4 then req[name] = any_value(1)
      elseif k < 0.7 then req[name] = nil
      else req[name] = typed(name) end
    end
    if r.chance(0.03) then
      local odd = setmetatable({}, { __tostring = raiser({}) })
      DESC[odd] = "<a table whose __tostring raises a table>"
      req.kind = r.pick({ {}, 1, odd })
    end
    return req
  end

  -- whether every field has the type api.lua checks (so the call must not raise)
  local function request_ok(fname, req)
    local function has(name, required)
      local v = req[name]
      if v == nil then return not required end
      return type(v) == SIGN[name][1]
    end
    local group, optional
    if fname == "sign_token" then
      local kind = req.kind
      if kind ~= nil and type(kind) ~= "string" then return false end
      if kind == nil or kind == "rds" then group, optional = REQUIRED.sign_token.rds, OPTIONAL.rds
      elseif kind == "elasticache" or kind == "memorydb" then
        group, optional = REQUIRED.sign_token.elasticache, OPTIONAL.elasticache
      elseif kind == "dsql" then group, optional = REQUIRED.sign_token.dsql, OPTIONAL.dsql
      else return false end
    else
      group, optional = REQUIRED[fname], OPTIONAL[fname]
    end
    for _, name in ipairs(group) do if not has(name, true) then return false end end
    for _, name in ipairs(optional) do if not has(name, false) then return false end end
    return true
  end

  local TOKEN_FNS = { "sign_token", "sign_token", "elasticache_token", "dsql_token" }
  while summary.token_calls < P.token_calls do
    summary.token_calls = summary.token_calls + 1
    local fname = r.pick(TOKEN_FNS)
    local req = gen_request(fname)
    if r.chance(0.02) then req = r.pick({ nil, "x", 1 }) end
    local valid = type(req) == "table" and request_ok(fname, req)
    local t = type(req) == "table" and type(req.timeout) == "number" and req.timeout == req.timeout
      and req.timeout > 0 and req.timeout < 3600000 and req.timeout or 5000
    checked(fname, bound(math.max(t, 5000)), valid, rds[fname], req)
    if summary.token_calls % 100 == 0 then
      checked("stats", 1, true, rds.stats)
    end
  end
  summary.token_phase_seconds = gettime() - t_start

  checked("stats", 1, true, rds.stats)
  summary.signatures_seen = nsignatures
  summary.role_credentials_seen = sts_learned
  if progress then progress:close() end
  -- connections still open are collected at exit (a crash there shows as
  -- the exit status the parent reads)
  local parts = {}
  local function emit(v, depth)
    local t = type(v)
    if t == "string" then return quote(v) end
    if t == "number" then
      if v ~= v then return "0/0" end
      return ("%.17g"):format(v)
    end
    if t == "boolean" then return tostring(v) end
    if t == "table" then
      local out = {}
      for k, x in pairs(v) do
        out[#out + 1] = "[" .. emit(k, depth + 1) .. "] = " .. emit(x, depth + 1)
      end
      return "{ " .. table.concat(out, ", ") .. " }"
    end
    return quote(tostring(v))
  end
  parts[#parts + 1] = emit(summary, 0)
  io.stdout:write("\n@@FUZZ@@", parts[1], "\n")
  io.stdout:flush()
end

M.new_rng = new_rng
return M
