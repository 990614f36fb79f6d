-- The connection door through the LuaJIT FFI (src/lua/door.rs): a query's
-- start and feed and keepalive over a cosocket as plain C calls instead of
-- mlua callbacks. Returns the door, or nil where there is no FFI (PUC Lua)
-- or the library cannot be opened by its path; api.lua then calls the
-- connection's methods.
local core = ...

if not jit or not core.library_path then return nil end
local ok, ffi = pcall(require, "ffi")
if not ok then return nil end

local contract = core.contract
pcall(ffi.cdef, contract.cdef) -- declared once per Lua state; again is fine
local lib
ok, lib = pcall(ffi.load, core.library_path)
if not ok then return nil end
local start, feed, keepalive, take, adopt, pgmoon_types
ok = pcall(function()
  start, feed, keepalive = lib.kong_rds_iam_query_start, lib.kong_rds_iam_query_feed, lib.kong_rds_iam_keepalive
  take, adopt, pgmoon_types = lib.kong_rds_iam_take, lib.kong_rds_iam_adopt, lib.kong_rds_iam_pgmoon_types
  return lib.kong_rds_iam_open_handles + lib.kong_rds_iam_warnings_pending
end)
if not ok then return nil end

local ffi_string, tonumber = ffi.string, tonumber
local D = contract.door
local KINDS = contract.kinds
local STRING, NUMBER, BOOLEAN = KINDS.string, KINDS.number, KINDS.boolean
local null = core.null
local new_table = (function()
  local has, nt = pcall(require, "table.new")
  if has then return nt end
  return function() return {} end
end)()

-- One io struct per Lua state: a door call runs to completion and its
-- results are read before the next one (calls never overlap).
-- The array is kept (in `door`): a reference to its element does not keep
-- it alive.
local io_array = ffi.new("kong_rds_iam_io_v1[1]")
local io = io_array[0]

local door = { D = D, io = io, io_array = io_array }

-- The functions below keep a C call's result in a local before returning
-- it: LuaJIT cannot compile a tail call to a C function (or to ffi.string)
-- that returns into the caller's frame, and aborts a trace that starts
-- there ("leaving loop in root trace"); these are on the hot path.

--- status = door.start(id, sql): io.out, io.number (timeout ms) on D.send.
function door.start(id, sql)
  local status = start(id, sql, #sql, io)
  return status
end

--- status = door.feed(id, data): data nil when the server closed the cosocket.
function door.feed(id, data)
  local status
  if data == nil then
    status = feed(id, nil, 0, 1, io)
  else
    status = feed(id, data, #data, 0, io)
  end
  return status
end

--- status = door.keepalive(id, max_idle_ms?, pool_size?)
function door.keepalive(id, max_idle_ms, pool_size)
  local status = keepalive(id, max_idle_ms or -1, pool_size or -1, io)
  return status
end

--- status = door.take(conf_id): checkout of an idle pooled connection for
--- a parsed conf; on D.taken io.pipe, io.reused and io.number (timeout ms).
function door.take(conf_id)
  local status = take(conf_id, io)
  return status
end

--- status = door.adopt(id): the taken connection into the kept object
--- numbered `id`; on D.adopted io.conn is the object's new number.
function door.adopt(id)
  local status = adopt(id, io)
  return status
end

--- status = door.pgmoon_types(id): D.typed, or D.gone.
function door.pgmoon_types(id)
  local status = pgmoon_types(id, io)
  return status
end

--- Connection handles holding a session in this process, and whether
--- warnings wait (src/stats.rs, src/warn.rs): read in place.
function door.open_handles()
  return lib.kong_rds_iam_open_handles
end
function door.warnings_pending()
  return lib.kong_rds_iam_warnings_pending ~= 0
end

--- The bytes to send (io.out), or nil.
function door.out()
  local n = tonumber(io.out_len)
  if n == 0 then return nil end
  local out = ffi_string(io.out, n)
  return out
end

--- The message of a refusal.
function door.msg()
  local msg = ffi_string(io.msg, tonumber(io.msg_len))
  return msg
end

--- The idle connections a pooling keepalive (D.pooled) pushed out of the
--- pool, or nil: a list of { pipe, nginx pool name, bytes to send }.
function door.evicted()
  local n = tonumber(io.ncells)
  if n == 0 then return nil end
  local cells, list = io.cells, {}
  for i = 0, n - 2, 2 do
    local pool, bye = cells[i], cells[i + 1]
    list[#list + 1] = { tonumber(pool.number), ffi_string(pool.ptr, pool.len), ffi_string(bye.ptr, bye.len) }
  end
  return list
end

--- res, 1: the small result of D.result as tables, shaped as the
--- connection's query returns it (rows keyed by column name, NULL as rds.null).
function door.result()
  local cells, ncols = io.cells, tonumber(io.ncols)
  local nrows = (tonumber(io.ncells) - ncols) / ncols
  local names = new_table(ncols, 0)
  for j = 0, ncols - 1 do
    local c = cells[j]
    names[j + 1] = ffi_string(c.ptr, c.len)
  end
  local affected = io.number
  local rows = new_table(nrows, affected >= 0 and 1 or 0)
  local k = ncols
  for i = 1, nrows do
    local row = new_table(0, ncols)
    for j = 1, ncols do
      local c = cells[k]
      local kind, v = c.kind, null
      if kind == STRING then
        v = ffi_string(c.ptr, c.len)
      elseif kind == NUMBER then
        v = c.number
      elseif kind == BOOLEAN then
        v = c.number ~= 0
      end
      row[names[j]] = v
      k = k + 1
    end
    rows[i] = row
  end
  if affected >= 0 then rows.affected_rows = affected end
  return rows, 1
end

return door
