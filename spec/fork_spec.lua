-- Fork safety without nginx: a process forked after the module was used gets a
-- new runtime and new clients, and a connection inherited from the parent
-- answers with a clear error instead of hanging.
local rds = require "kong_rds_iam"
local emu = require "spec.support.emulator"
local test_env = require "spec.support.test_env"
local ffi = require "ffi"

ffi.cdef [[
  int fork(void);
  int waitpid(int pid, int *status, int options);
  void _exit(int status);
  int pipe(int fds[2]);
  long write(int fd, const void *buf, unsigned long n);
  long read(int fd, void *buf, unsigned long n);
  int close(int fd);
]]

-- Runs fn in a forked child; returns what it returned (a string) and its exit status.
local function in_child(fn)
  local fds = ffi.new("int[2]")
  assert(ffi.C.pipe(fds) == 0)
  local pid = ffi.C.fork()
  assert(pid >= 0)
  if pid == 0 then
    ffi.C.close(fds[0])
    local ok, out = pcall(fn)
    out = (ok and "" or "error: ") .. tostring(out)
    ffi.C.write(fds[1], out, #out)
    ffi.C._exit(0)
  end
  ffi.C.close(fds[1])
  local chunks, buf = {}, ffi.new("char[4096]")
  while true do
    local n = tonumber(ffi.C.read(fds[0], buf, 4096))
    if n <= 0 then break end
    chunks[#chunks + 1] = ffi.string(buf, n)
  end
  ffi.C.close(fds[0])
  local status = ffi.new("int[1]")
  ffi.C.waitpid(pid, status, 0)
  return table.concat(chunks), status[0]
end

describe("after fork", function()
  local e, conf

  lazy_setup(function()
    e = assert(emu.start {})
    assert(e:add_key(test_env.access_key_id, test_env.secret_access_key))
    conf = { pg_host = "localhost", pg_port = e.port, pg_user = "iam_user", pg_iam_auth = true,
      pg_iam_auth_region = "us-east-1", pg_ssl_verify = true, pg_ssl_cafile = e.ca, pg_timeout = 3000 }
  end)

  lazy_teardown(function()
    if e then e:stop() end
  end)

  it("a parent's connection is refused in the child, and still works in the parent", function()
    local conn = assert(rds.connect(conf))
    local out, status = in_child(function()
      local res, err = conn:query("select 1 as one")
      return tostring(res) .. "|" .. tostring(err)
    end)
    assert.equal(0, status)
    assert.equal("nil|connection belongs to another process (opened before fork): open a new one in this process", out)
    assert.equal(1, assert(conn:query("select 1 as one"))[1].one)
    assert(conn:close())
  end)

  it("a child closing or collecting an inherited connection leaves the parent's working", function()
    local conn = assert(rds.connect(conf))
    local _, status = in_child(function()
      assert(conn:close())
      return "closed"
    end)
    assert.equal(0, status)
    local other = assert(rds.connect(conf))
    local _, status2 = in_child(function()
      other = nil
      collectgarbage()
      collectgarbage()
      return "collected"
    end)
    assert.equal(0, status2)
    for _, c in ipairs { conn, other } do
      local res, err = c:query("select 3 as three")
      assert.is_table(res, err)
      assert.equal(3, res[1].three)
      assert(c:close())
    end
  end)

  it("the child opens its own connections and signs its own tokens", function()
    assert(rds.connect(conf)):close() -- the parent's runtime and clients exist before the fork
    local accept = 'user="iam_user" akid="' .. test_env.access_key_id .. '" ACCEPT'
    local function accepted()
      local n = 0
      for line in e:log():gmatch("[^\n]+") do
        if line:find(accept, 1, true) then n = n + 1 end
      end
      return n
    end
    local before = accepted()
    local out, status = in_child(function()
      local c = assert(rds.connect(conf))
      local row = assert(c:query("select current_user as u, pg_backend_pid() as pid"))[1]
      c:close()
      return row.u
    end)
    assert.equal(0, status)
    assert.equal("iam_user", out)
    assert.equal(before + 1, accepted()) -- the child's own login, not one the parent made
  end)

  it("rds.stats() in the child counts from the fork (summed workers do not repeat the parent's work)", function()
    assert(rds.connect(conf)):close()
    local parent = rds.stats()
    assert.is_true(parent.iam_auth_ok >= 1 and parent.tokens_signed + parent.token_cache_hits >= 1)
    local out, status = in_child(function()
      local s0 = rds.stats()
      assert(rds.connect(conf)):close()
      local s1 = rds.stats()
      return table.concat({ s0.iam_auth_ok, s0.tokens_signed, s0.token_cache_hits, s1.iam_auth_ok }, ",")
    end)
    assert.equal(0, status)
    assert.equal("0,0,0,1", out)
    assert.equal(parent.iam_auth_ok, rds.stats().iam_auth_ok) -- the parent's own figures are unchanged
  end)
end)
