-- Checks the spec.support.fake_aws helper itself (no Rust module needed).
-- busted --lua=luajit spec/support/fake_aws_spec.lua
local fake = require "spec.support.fake_aws"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local function get(url, headers)
  local chunks = {}
  local ok, status = http.request{ url = url, headers = headers, sink = ltn12.sink.table(chunks) }
  return ok and status, table.concat(chunks)
end

describe("spec.support.fake_aws", function()
  local f

  setup(function()
    f = assert(fake.start{ lifetime = 20 })
  end)

  teardown(function()
    f:stop()
  end)

  before_each(function()
    assert(f:reset())
  end)

  it("starts with URLs and token files", function()
    assert.matches("^http://127%.0%.0%.1:%d+$", f.imds_url)
    assert.matches("^http://127%.0%.0%.1:%d+/creds$", f.ecs_url)
    assert.matches("^http://127%.0%.0%.1:%d+$", f.sts_url)
    local fh = assert(io.open(f.container_token_file))
    assert.equal(f.container_file_token, fh:read("*a"))
    fh:close()
    assert.is_string(f.container_token)
    assert.is_string(f.web_identity_token_file)
  end)

  it("serves ECS credentials with the configured lifetime and counts them", function()
    local status, body = get(f.ecs_url, { authorization = f.container_token })
    assert.equal(200, status)
    local doc = cjson.decode(body)
    assert.matches("^ASIA[A-Z0-9]+$", doc.AccessKeyId)
    assert.equal(20, #doc.AccessKeyId)
    assert.is_true(#doc.Token >= 300)
    local last = f:last_credential("ecs")
    assert.equal(doc.AccessKeyId, last.access_key_id)
    assert.is_true(math.abs(last.expiration - (os.time() + 20)) <= 2)
    local counts = f:counts()
    assert.equal(1, counts.ecs.total)
    assert.equal(1, counts.ecs["/creds"])
    assert.equal(0, counts.imds.total)
    assert.equal(200, (get(f.eks_url, { authorization = f.container_file_token })))
    assert.equal("file", f:requests("ecs")[2].auth_source)
  end)

  it("injects faults and resets them", function()
    assert(f:set_mode("imds", "503", { count = 1 }))
    assert.equal(503, (get(f.imds_url .. "/latest/meta-data/placement/region")))
    assert.equal(200, (get(f.imds_url .. "/latest/meta-data/placement/region")))
    assert(f:set_mode("imds", "imdsv2"))
    assert.equal(401, (get(f.imds_url .. "/latest/meta-data/placement/region")))
    assert(f:reset())
    assert.equal(200, (get(f.imds_url .. "/latest/meta-data/placement/region")))
    local reqs = f:requests("imds")
    assert.equal(1, #reqs)
    assert.equal("ok", reqs[1].mode)
    assert.is_nil(f:set_mode("imds", "bogus"))
  end)

  it("builds environments for each credential source", function()
    assert.equal(f.imds_url, f:env("imds").AWS_EC2_METADATA_SERVICE_ENDPOINT)
    assert.equal(f.container_token_file, f:env("eks").AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)
    local irsa = f:env("irsa")
    assert.equal(f.role_arn, irsa.AWS_ROLE_ARN)
    assert.equal(f.sts_url, irsa.AWS_ENDPOINT_URL_STS)
  end)

  it("rotates tokens", function()
    local old = f.container_file_token
    assert(f:rotate_tokens())
    assert.not_equal(old, f.container_file_token)
    assert.equal(401, (get(f.ecs_url, { authorization = old })))
    assert.equal(200, (get(f.ecs_url, { authorization = f.container_file_token })))
  end)
end)
