-- Robustness by fuzzing (issue #11, "Tests"): seeded random input to every
-- function of the module, in child processes, asserting
--
--   * no crash: the child prints its summary line and exits 0;
--   * every raised error is a string, and only arguments of a wrong type
--     raise (programmer errors);
--   * every failure is `nil, non-empty string`;
--   * no call takes longer than the pg_timeout in play + 1 s;
--   * no secret (the secret key, the session token raw or percent-encoded, a
--     token's signature, what a credential_process printed, a password) in
--     any error, returned value, tostring() or the child's stderr.
--
-- Two children run at once: "environment" (static keys with a session token
-- in AWS_*; the emulator knows them, so IAM logins work) and
-- "credential_process" (a profile whose credential_process prints secrets on
-- stdout and stderr and fails, in turns of several ways). Each fuzzes 10,000
-- confs (token, settings; connect and explain for a sample), 3,000 method
-- calls on real connections and sign_token / elasticache_token / dsql_token
-- with random fields (spec/support/fuzz_child.lua has the loop and the
-- checks).
--
-- The seed is fixed and printed; FUZZ_SEED=n busted --lua=luajit
-- spec/fuzz_spec.lua repeats or varies it. A violation names the call, its
-- arguments and the position in the run (confs / method_calls / token_calls).
-- FUZZ_VERBOSE=1 prints per-function counts and slow calls (2: also the
-- distinct error texts and the children's stderr); FUZZ_SCALE=0.1 shrinks
-- the run while working on the spec. About 30 s on 2 cores.
local emu = require "spec.support.emulator"
local fake = require "spec.support.fake_aws"
local lua_process = require "spec.support.lua_process"
local util = require "spec.support.util"
local socket = require "socket"

local DEFAULT_SEED = 11011
local SEED = tonumber(os.getenv("FUZZ_SEED") or "") or DEFAULT_SEED
local CHILD_TIMEOUT_S = 240 -- a child still running then is killed (a hang)
-- FUZZ_SCALE=0.1 for a quick run while working on the spec (CI: 1)
local SCALE = tonumber(os.getenv("FUZZ_SCALE") or "") or 1

local PHASES = {
  environment = { confs = 10000, method_calls = 3000, token_calls = 1000, connect_every = 20, explain_every = 50 },
  -- every credential fetch runs the command: fewer confs, same checks
  credential_process = { confs = 3000, method_calls = 3000, token_calls = 300, connect_every = 20, explain_every = 50 },
}
for _, sizes in pairs(PHASES) do
  for _, k in ipairs { "confs", "method_calls", "token_calls" } do sizes[k] = math.ceil(sizes[k] * SCALE) end
end

local function scratch()
  local dir = os.tmpname()
  os.remove(dir)
  assert(util.succeeds("mkdir -p " .. util.shell_quote(dir)))
  return dir
end

local closed_port = util.free_port

-- As the token encodes a value: everything but A-Z a-z 0-9 - . _ ~.
local function percent_encode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- A Lua literal of a table of strings, numbers, booleans and tables.
local function literal(v)
  local t = type(v)
  if t == "string" then return ("%q"):format(v) end
  if t == "number" or t == "boolean" then return tostring(v) end
  assert(t == "table", "cannot write a " .. t)
  local parts = {}
  for k, x in pairs(v) do parts[#parts + 1] = "[" .. literal(k) .. "] = " .. literal(x) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

-- The credential_process of the second child: prints `out` (on stdout, in
-- what it prints) and `err` (on stderr), then fails in one of several ways,
-- in turn (a counter file), never with usable credentials.
local function credential_script(dir, out, err)
  local q = util.shell_quote
  return table.concat({
    "#!/bin/sh",
    "D=" .. q(dir),
    "S=" .. q(out),
    'n=$(cat "$D/count" 2>/dev/null || echo 0)',
    'echo $((n + 1)) > "$D/count"',
    "echo " .. q("credential helper failed: " .. err) .. " >&2",
    'case $((n % 8)) in',
    [[0) printf '{"Version": 1, "AccessKeyId": "AKIDCPFUZZ", "SecretAccessKey": "%s"}\n' "$S"; exit 3;;]],
    [[1) printf '{"Version": 1, "AccessKeyId": "AKIDCPFUZZ", "SessionToken": "%s"}\n' "$S"; exit 0;;]],
    [[2) printf 'not json: %s\n' "$S"; exit 0;;]],
    [[3) printf '{"Version": 2, "AccessKeyId": "AKIDCPFUZZ", "SecretAccessKey": "%s"}\n' "$S"; exit 0;;]],
    [[4) printf '%s' "$S"; head -c 1200000 /dev/zero | tr '\0' 'x'; exit 0;;]],
    [[5) i=0; while [ $i -lt 200 ]; do echo "$S" >&2; i=$((i + 1)); done; exit 1;;]],
    [[6) printf '{"Version": 1, "AccessKeyId": "AKIDCPFUZZ", "SecretAccessKey": "%s", "Expiration": "soon"}\n' "$S"; exit 0;;]],
    [[*) printf '{"Version": 1, "AccessKeyId": "AKIDCPFUZZ", "SecretAccessKey": "%s' "$S"; exit 0;;]],
    "esac",
  }, "\n") .. "\n"
end

-- Text of the violations of `kinds` in a summary, one a line.
local function violations(summary, kinds)
  local lines, total = {}, 0
  for _, kind in ipairs(kinds) do
    total = total + (summary.violation_counts[kind] or 0)
    for _, v in ipairs(summary.violations[kind] or {}) do
      lines[#lines + 1] = ("[%s] %s(%s): %s (at confs %d, method_calls %d, token_calls %d)"):format(kind, v.fname,
        v.args, v.detail, v.confs, v.method_calls, v.token_calls)
    end
  end
  return total, ("%d violation(s), seed %d (FUZZ_SEED=%d to repeat):\n%s"):format(total, summary.seed, summary.seed,
    table.concat(lines, "\n"))
end

describe("fuzzing (seeded, in child processes)", function()
  local e, f, dir
  local results = {} -- phase -> { summary, out, stderr, rc, progress, secrets, seconds }

  lazy_setup(function()
    print(("fuzz seed: %d (set FUZZ_SEED to change it)"):format(SEED))
    e = assert(emu.start { region = "us-east-1" })
    dir = scratch()
    local q = util.shell_quote
    assert(util.succeeds("mkfifo " .. q(dir .. "/fifo")))
    assert(util.succeeds("truncate -s 20M " .. q(dir .. "/big.pem")))
    assert(util.succeeds("mkdir -p " .. q(dir .. "/a-directory")))

    -- phase 1: static keys with a session token, known to the emulator
    local akid = "AKIDFUZZ" .. util.hex(6):upper()
    local secret = "FzSk" .. util.hex(18)
    local session = "FzSt" .. util.hex(8) .. "/" .. util.hex(150) .. "+" .. util.hex(8) .. "=="
    assert(e:add_key(akid, secret, session))
    -- phase 2: what the credential_process prints
    local cp_out = "FzCpOut" .. util.hex(12)
    local cp_err = "FzCpErr" .. util.hex(12)
    local cp_dir = dir .. "/cp"
    assert(util.succeeds("mkdir -p " .. q(cp_dir)))
    local script = util.write_file(cp_dir .. "/creds.sh", credential_script(cp_dir, cp_out, cp_err))
    assert(util.succeeds("chmod +x " .. q(script)))
    local config = util.write_file(cp_dir .. "/config", "[default]\ncredential_process = " .. script .. "\n")

    local passwords = { pg_password_marker = "FzPw" .. util.hex(10) }
    for user, password in pairs(e.users) do passwords["password of " .. user] = password end

    -- A fake STS for pg_iam_auth_assume_role_arn (the real one would be
    -- waited for until pg_timeout): it checks the signature of our key and
    -- registers the role credentials it issues with the emulator, so
    -- assumed-role logins work too. The child learns those secrets from its
    -- log as they are issued.
    f = assert(fake.start { emulator_dir = e.dir, static_keys = { [akid] = secret } })
    local common_env = {
      AWS_EC2_METADATA_DISABLED = "true", AWS_REGION = "us-east-1", RUST_BACKTRACE = "1",
      AWS_ENDPOINT_URL_STS = f.sts_url,
    }
    local phase_env = {
      environment = util.merge(common_env, {
        AWS_ACCESS_KEY_ID = akid, AWS_SECRET_ACCESS_KEY = secret, AWS_SESSION_TOKEN = session,
        AWS_CONFIG_FILE = "/nonexistent/kong-rds-iam-fuzz/config",
        AWS_SHARED_CREDENTIALS_FILE = "/nonexistent/kong-rds-iam-fuzz/credentials",
      }),
      credential_process = util.merge(common_env, {
        AWS_CONFIG_FILE = config, AWS_SHARED_CREDENTIALS_FILE = cp_dir .. "/none",
      }),
    }
    local phase_secrets = {
      environment = {
        ["the secret key"] = secret, ["the session token"] = session,
        ["the session token, percent-encoded"] = percent_encode(session),
      },
      credential_process = {
        ["what the credential_process printed on stdout"] = cp_out,
        ["what the credential_process printed on stderr"] = cp_err,
      },
    }

    local pipes, started = {}, socket.gettime()
    for phase, sizes in pairs(PHASES) do
      local secrets = phase_secrets[phase]
      -- a file that holds the secrets, offered as a CA / certificate / key path
      local secret_file = dir .. "/" .. phase .. "-secrets.pem"
      local body = { "-----BEGIN CERTIFICATE-----" }
      for _, s in pairs(secrets) do body[#body + 1] = s end
      body[#body + 1] = "-----END CERTIFICATE-----"
      util.write_file(secret_file, table.concat(body, "\n") .. "\n")
      local params = util.merge(sizes, {
        seed = SEED + (phase == "environment" and 0 or 1), phase = phase,
        progress = dir .. "/" .. phase .. ".progress",
        secrets = secrets, password_secrets = passwords,
        access_key_id = phase == "environment" and akid or nil,
        secret_access_key = phase == "environment" and secret or nil,
        session_token = phase == "environment" and session or nil,
        emu = {
          host = e.host, port = e.port, db = e.db, ca = e.ca, other_ca = e.other_ca, client_cert = e.client_cert,
          client_key = e.client_key, iam_users = e.iam_users, users = e.users,
        },
        closed_port = closed_port(), sts_url = f.sts_url, sts_log = f.credentials_log,
        paths = { fifo = dir .. "/fifo", big = dir .. "/big.pem", secret_file = secret_file,
          dir = dir .. "/a-directory" },
      })
      local stderr_file = dir .. "/" .. phase .. ".stderr"
      local prefix = ("sh -c %s sh"):format(q(("timeout -s KILL %d \"$@\" 2>%s; echo \"@@RC=$?\""):format(
        CHILD_TIMEOUT_S, q(stderr_file))))
      pipes[phase] = {
        pipe = lua_process.spawn(('require("spec.support.fuzz_child").run(%s)\n'):format(literal(params)),
          phase_env[phase], { prefix = prefix }),
        stderr_file = stderr_file, progress = params.progress,
        secrets = util.merge(secrets, passwords),
      }
    end
    for phase, p in pairs(pipes) do
      local out = lua_process.collect(p.pipe)
      local r = {
        out = out, stderr = util.read_file(p.stderr_file) or "",
        secrets = p.secrets, seconds = socket.gettime() - started,
        progress_line = (util.read_file(p.progress) or ""):gsub("%s+$", ""),
        rc = tonumber(out:match("@@RC=(%d+)")),
      }
      local body = out:match("@@FUZZ@@([^\n]*)\n")
      if body then r.summary = assert(loadstring("return " .. body))() end
      results[phase] = r
      if os.getenv("FUZZ_VERBOSE") and r.summary then
        for fname, c in pairs(r.summary.calls) do
          print(("  %-22s n %5d ok %5d failed %5d raised %5d  %.2f s, slowest %.3f s"):format(fname, c.n, c.ok,
            c.failed, c.raised, c.seconds, r.summary.slowest[fname] or 0))
        end
        for _, line in ipairs(r.summary.slow_samples or {}) do print("  slow: " .. line) end
        print(("  stderr: %d bytes, %d lines; role credentials seen %s, signatures %s"):format(#r.stderr,
          select(2, r.stderr:gsub("\n", "")), tostring(r.summary.role_credentials_seen), tostring(r.summary.signatures_seen)))
        if os.getenv("FUZZ_VERBOSE") == "2" then
          io.write(r.stderr:sub(1, 4000))
          for _, line in ipairs(r.summary.error_samples or {}) do print("  error: " .. line) end
        end
        for k, n in pairs(r.summary.raised) do print(("  raised %d x %s"):format(n, k)) end
      end
      print(("fuzz %s: %.1f s (confs %.1f s, methods %.1f s, tokens %.1f s), exit %s"):format(phase, r.seconds,
        r.summary and r.summary.conf_phase_seconds or -1, r.summary and r.summary.method_phase_seconds or -1,
        r.summary and r.summary.token_phase_seconds or -1, tostring(r.rc)))
    end
  end)

  lazy_teardown(function()
    if f then f:stop() end
    if e then e:stop() end
    if dir then os.execute("rm -rf " .. util.shell_quote(dir)) end
  end)

  for _, phase in ipairs { "environment", "credential_process" } do
    local sizes = PHASES[phase]
    describe(phase .. " credentials:", function()
      local function result()
        local r = results[phase]
        assert.truthy(r, "the child did not run")
        assert.truthy(r.summary, ("no summary: the child crashed or hung (exit status %s); last call: %s\n"
          .. "output (tail): %s\nstderr (tail): %s"):format(tostring(r.rc), r.progress_line, r.out:sub(-3000),
          r.stderr:sub(-3000)))
        return r, r.summary
      end

      it("the child finishes every call and exits 0 (no crash, no hang)", function()
        local r, s = result()
        assert.equal(0, r.rc, "exit status " .. tostring(r.rc) .. "; stderr: " .. r.stderr:sub(-3000))
        assert.equal(sizes.confs, s.confs)
        assert.is_true(s.method_calls >= sizes.method_calls)
        assert.equal(sizes.token_calls, s.token_calls)
        -- the fuzz reached real connections
        assert.is_true(s.connects_ok.password > 50 * SCALE, "password logins: " .. s.connects_ok.password)
        if phase == "environment" then
          assert.is_true(s.connects_ok.iam > 50 * SCALE, "IAM logins: " .. s.connects_ok.iam)
          assert.is_true(s.signatures_seen > 100 * SCALE, "tokens signed: " .. s.signatures_seen)
        end
      end)

      for _, rule in ipairs {
        { "raises only strings, and only for arguments of a wrong type", { "raised_non_string", "raised_on_valid_arguments" } },
        { "answers every failure with nil and a non-empty string", { "bad_failure" } },
        { "returns from every call within the pg_timeout in play + 1 s", { "slow" } },
      } do
        it(rule[1], function()
          local _, s = result()
          local n, text = violations(s, rule[2])
          assert.equal(0, n, text)
        end)
      end

      it("puts no secret in an error, a returned value, tostring() or stderr", function()
        local r, s = result()
        local n, text = violations(s, { "leak" })
        assert.equal(0, n, text)
        local stdout = r.out:gsub("@@FUZZ@@[^\n]*\n", ""):gsub("@@RC=%d+", "")
        for name, secret in pairs(r.secrets) do
          for _, piece in ipairs { secret, secret:sub(1, 12), secret:sub(-12) } do
            assert.is_nil(r.stderr:find(piece, 1, true), name .. " in the child's stderr:\n" .. r.stderr:sub(1, 3000))
            assert.is_nil(stdout:find(piece, 1, true), name .. " in the child's stdout:\n" .. stdout:sub(1, 3000))
          end
        end
        for _, fragment in ipairs { "X-Amz-Signature=", "X-Amz-Security-Token=" } do
          assert.is_nil(r.stderr:find(fragment, 1, true), "a token in the child's stderr:\n" .. r.stderr:sub(1, 3000))
        end
      end)

      it("writes no panic or backtrace to stderr", function()
        local r, s = result()
        assert.is_nil(r.stderr:find("panicked", 1, true), r.stderr:sub(1, 3000))
        assert.is_nil(r.stderr:find("stack backtrace", 1, true), r.stderr:sub(1, 3000))
        assert.equal(0, s.internal_errors, "errors saying \"internal error\": " .. s.internal_errors)
      end)
    end)
  end
end)
