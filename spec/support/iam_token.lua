-- Reads an RDS IAM auth token (a presigned URL without scheme): its query
-- parameters, the access key id it was signed for and its session token.
local M = {}

local function url_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- The raw (still URL-encoded) value of a query parameter; `name` is a Lua
-- pattern ("X%-Amz%-Credential"). nil for a nil token or a missing parameter.
function M.param(token, name)
  return token and token:match("[?&]" .. name .. "=([^&]*)")
end

--- The access key id of X-Amz-Credential, or nil.
function M.akid(token)
  local cred = M.param(token, "X%-Amz%-Credential")
  return cred and url_decode(cred):match("^([^/]+)/")
end

--- The decoded X-Amz-Security-Token, or nil when the token has none.
function M.session_token(token)
  local v = M.param(token, "X%-Amz%-Security%-Token")
  return v and url_decode(v)
end

return M
