-- Proof that a child process logged in with IAM end to end (busted
-- assertions): the emulator's independent verifier logged ACCEPT for the
-- access key its token was signed with, and a token for that key signed with
-- the wrong secret is refused with REJECT. `e` is a spec.support.emulator,
-- `res, out` what spec.support.iam_probe.run returned.
local assert = require "luassert"
local rds = require "kong_rds_iam"
local iam_token = require "spec.support.iam_token"
local M = {}

--- Lines of the verifier log (`text`, default e:log()) about one access key.
function M.log_lines(e, akid, text)
  local lines = {}
  for line in (text or e:log()):gmatch("[^\n]+") do
    if line:find('akid="' .. akid .. '"', 1, true) then
      lines[#lines + 1] = line
    end
  end
  return lines
end

--- Whether a verifier log line about `akid` contains `what` (plain text).
function M.has_line(e, akid, what)
  for _, line in ipairs(M.log_lines(e, akid)) do
    if line:find(what, 1, true) then return true end
  end
  return false
end

--- The probe connected with IAM as `user` (default iam_user) and the
-- verifier accepted its key; returns the key id.
function M.accepted(e, res, out, user)
  user = user or "iam_user"
  assert.is_nil(res.token_err, out)
  assert.is_nil(res.connect_err, out)
  assert.is_nil(res.query_err, out)
  assert.equal(user, res.user, out)
  local akid = iam_token.akid(res.token)
  assert.truthy(akid, out)
  assert.is_true(M.has_line(e, akid, ('user="%s" akid="%s" ACCEPT'):format(user, akid)),
    "no ACCEPT for " .. akid .. " in the verifier log:\n" .. e:log())
  return akid
end

--- A token for the same key id (and session token) signed with another
-- secret is refused by the server and the verifier says why.
function M.wrong_secret_rejected(e, token)
  local akid = assert(iam_token.akid(token))
  local wrong = rds.sign_token {
    host = "localhost", port = e.port, user = "iam_user", region = "us-east-1",
    access_key_id = akid, secret_access_key = "not-the-secret-of-" .. akid,
    session_token = iam_token.session_token(token),
  }
  local c, err = rds.connect { pg_host = "localhost", pg_port = e.port, pg_user = "iam_user",
    pg_password = wrong, pg_ssl = true, pg_timeout = 10000 }
  assert.is_nil(c)
  assert.is_string(err)
  assert.is_true(M.has_line(e, akid, ('akid="%s" REJECT reason="signature mismatch"'):format(akid)),
    "no signature REJECT for " .. akid .. ":\n" .. e:log())
end

--- `source` was the credentials source before and after, the login was
-- accepted and the wrong secret rejected; returns the key id.
function M.end_to_end(e, res, out, source)
  assert.is_nil(res.source_err, out)
  assert.equal(source, res.source, out)
  assert.equal(source, res.source_after, out)
  local akid = M.accepted(e, res, out)
  M.wrong_secret_rejected(e, res.token)
  return akid
end

return M
