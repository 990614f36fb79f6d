-- stand-in for kong.db.strategies.connector (the base class Kong sets as
-- the postgres connector's "super"): connection storage as Kong's does it,
-- in ngx.ctx once past the init phase, else on the object.
local Connector = {}
local past_init
function Connector:init() return true end
function Connector:init_worker() return true end
function Connector:store_connection(conn, operation)
  if not past_init and ngx.get_phase() ~= "init" then past_init = true end
  if past_init then
    ngx.ctx["connection_" .. (operation or "write")] = conn
  else
    self.connection = conn
  end
end
function Connector:get_stored_connection(operation)
  if not past_init and ngx.get_phase() ~= "init" then past_init = true end
  if past_init then
    return ngx.ctx["connection_" .. (operation or "write")]
  end
  return self.connection
end
return Connector
