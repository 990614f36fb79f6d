-- Random AWS-shaped key material for the credential specs, and the AWS_*
-- variables that hand a key pair to a process.
local socket = require "socket"
local M = {}

math.randomseed(math.floor(socket.gettime() * 1000) % 2147483647)

--- n random characters of `alphabet` (default: uppercase letters and digits).
function M.random_string(n, alphabet)
  alphabet = alphabet or "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
  local t = {}
  for i = 1, n do
    local k = math.random(#alphabet)
    t[i] = alphabet:sub(k, k)
  end
  return table.concat(t)
end

--- A long-term key pair { akid, secret } (akid: `prefix` padded to 20
-- characters) that the emulator `e` and the fake STS verifier of `f` know.
function M.static(e, f, prefix)
  local k = {
    akid = (prefix .. M.random_string(20)):sub(1, 20),
    secret = M.random_string(40, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"),
  }
  assert(e:add_key(k.akid, k.secret))
  assert(f:add_key(k.akid, k.secret))
  return k
end

--- The environment keys of a pair (AWS_SESSION_TOKEN when it has one).
function M.env(k)
  return { AWS_ACCESS_KEY_ID = k.akid, AWS_SECRET_ACCESS_KEY = k.secret, AWS_SESSION_TOKEN = k.session_token }
end

return M
