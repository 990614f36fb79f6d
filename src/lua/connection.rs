//! The connection object Lua sees, pgmoon-compatible:
//! `res, err, partial, num_queries, sqlstate = conn:query(sql)`.

use std::time::Duration;

use mlua::{Lua, LuaString, MultiValue, Result as LuaResult, UserData, UserDataMethods, Value};

use crate::connection::{Handle, QueryDone};
use crate::jobs::{self, Abandon};
use crate::pg::query::Column;
use crate::pg::value::{self, Cell, Decoding};
use crate::pg::{escape, Messages, Notification, QueryFailure, QueryOutput, Statement};
use postgres_protocol::message::backend::DataRowBody;

/// `conn` in Lua: its state, boxed at a fixed address so that the LuaJIT
/// FFI door (src/lua/door.rs) reaches it by number as well as mlua's
/// methods do.
pub struct LuaConnection {
    conn: std::ptr::NonNull<Conn>,
}

/// A connection's state: the handle, how its rows are typed, (over a
/// cosocket) the row tables of the running query built so far, and what
/// the FFI door keeps between its calls (its number there included).
pub struct Conn(pub Handle, pub Decoding, pub Vec<Building>, pub super::door::Kept);

impl LuaConnection {
    /// A connection object for `handle`, typing rows this module's way.
    pub fn new(handle: Handle) -> LuaConnection {
        let conn = Box::new(Conn(handle, Decoding::default(), Vec::new(), Default::default()));
        let this = LuaConnection { conn: std::ptr::NonNull::from(Box::leak(conn)) };
        super::door::number(this.conn);
        this
    }

    /// Its number at the FFI door (0: none).
    pub fn door_id(&self) -> u64 {
        self.3.number()
    }
}

impl Conn {
    /// The state again, for `handle` (api.lua keeps the objects of
    /// connections it put into the pool, by their pipes, and hands one out
    /// again with the next checkout of that pipe instead of making one,
    /// through the door's `kong_rds_iam_adopt`, which also numbers it anew).
    /// It starts as new: this module's row types, nothing built.
    pub fn adopt(&mut self, handle: Handle) {
        self.0 = handle;
        self.1 = Decoding::default();
        self.2.clear();
    }
}

impl std::ops::Deref for LuaConnection {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        // SAFETY: `conn` is the box leaked in `new`, freed only in `drop`.
        // Lua runs on one thread and neither an mlua method nor a door call
        // runs Lua code, so the two never hold the state at once.
        unsafe { self.conn.as_ref() }
    }
}

impl std::ops::DerefMut for LuaConnection {
    fn deref_mut(&mut self) -> &mut Conn {
        // SAFETY: as in `deref`.
        unsafe { self.conn.as_mut() }
    }
}

impl Drop for LuaConnection {
    fn drop(&mut self) {
        // The door forgets the number first, so no call can reach the box.
        super::door::forget(&mut self.3);
        // SAFETY: the box leaked in `new`, not referenced any more.
        drop(unsafe { Box::from_raw(self.conn.as_ptr()) });
    }
}

/// A result's rows table, filled as its rows arrive (over a cosocket the
/// tables are built while the server is still sending, not all at the end).
pub struct Building {
    /// The statement's number among the query's.
    index: usize,
    rows: Rows,
}

/// A rows table being filled.
struct Rows {
    table: mlua::Table,
    count: usize,
    /// The column names as a sequence of Lua strings, made once.
    names: mlua::Table,
}

/// The NULL light userdata: `rds.null`, equal to `ngx.null` and `cjson.null`.
pub fn null() -> Value {
    Value::LightUserData(mlua::LightUserData(std::ptr::null_mut()))
}

impl UserData for LuaConnection {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method_mut("query", |lua, this, sql: LuaString| {
            let outcome = this.0.query(&sql.as_bytes());
            outcome_values(lua, outcome, this.0.take_messages(), this.1, &mut Vec::new())
        });
        // The query as a job (api.lua's yielding path): `job, wait_ms`, or
        // `nil, err` (busy, closed) with nothing submitted.
        methods.add_method_mut("query_start", |lua, this, sql: LuaString| {
            let bound = this.0.query_bound();
            let abandon = Abandon::new_signal();
            let submitted = match this.0.query_job(sql.as_bytes().to_vec(), abandon.clone()) {
                Ok(job) => jobs::submit_with(abandon, job),
                Err(refused) => return super::failure(lua, &refused.error),
            };
            match submitted {
                Ok(job) => Ok(MultiValue::from_iter([Value::Number(job as f64), Value::Number(bound.as_millis() as f64)])),
                Err(e) => {
                    // The job (and the connection in it) is gone.
                    this.0.abandon_query();
                    super::failure(lua, &e)
                }
            }
        });
        methods.add_method_mut("query_finish", |lua, this, job: f64| {
            let outcome = match jobs::take::<QueryDone>(job as u64) {
                Ok(done) => this.0.finish_query(done),
                Err(e) => {
                    this.0.abandon_query();
                    Err(QueryFailure { error: e, partial: Vec::new() })
                }
            };
            outcome_values(lua, outcome, this.0.take_messages(), this.1, &mut Vec::new())
        });
        // Over a cosocket (api.lua sends and receives; see src/pg/pipe.rs),
        // through the FFI door (src/lua/door.rs): this connection's number,
        // and what the door's calls leave to mlua.
        methods.add_method("door_id", |_, this, ()| Ok(this.door_id() as f64));
        methods.add_method("pipe_id", |_, this, ()| Ok(this.0.pipe_id().map(|n| n as f64)));
        // After DOOR_ROWS: the rows received so far become tables.
        methods.add_method_mut("piped_rows", |lua, this, ()| {
            let Conn(handle, decoding, building, _) = &mut **this;
            if let Some((index, columns, bodies)) = handle.piped_take_rows() {
                let at = match building.iter().position(|b| b.index == index) {
                    Some(at) => at,
                    None => {
                        building.push(Building { index, rows: Rows::new(lua, columns, 0)? });
                        building.len() - 1
                    }
                };
                building[at].rows.push(lua, columns, &bodies, *decoding)?;
            }
            Ok(())
        });
        // After DOOR_DONE: the values of `query`.
        methods.add_method_mut("piped_finish", |lua, this, ()| {
            let Conn(_, decoding, building, kept) = &mut **this;
            let Some((outcome, messages)) = kept.take_done() else {
                return super::failure(lua, &crate::error::Error::closed());
            };
            let values = outcome_values(lua, outcome, messages, *decoding, building);
            building.clear();
            values
        });
        methods.add_method_mut("piped_wait_start", |lua, this, ()| match this.0.notification_piped_start() {
            Ok(()) => Ok(MultiValue::from_iter([Value::Boolean(true)])),
            Err(e) => super::failure(lua, &e),
        });
        // `false` until a notification is there, then `notification` or `nil, err`.
        methods.add_method_mut("piped_wait_feed", |lua, this, data: Option<LuaString>| {
            let outcome = match &data {
                Some(d) => this.0.notification_piped_feed(Some(&d.as_bytes())),
                None => this.0.notification_piped_feed(None),
            };
            match outcome {
                None => Ok(MultiValue::from_iter([Value::Boolean(false)])),
                Some(outcome) => notification_values(lua, outcome),
            }
        });
        methods.add_method_mut("piped_stop", |_, this, keep: bool| {
            this.2.clear();
            this.0.piped_stop(keep);
            Ok(())
        });
        methods.add_method("piped_output", |lua, this, ()| match this.0.piped_output() {
            Some(out) => Ok(Value::String(lua.create_string(&out)?)),
            None => Ok(Value::Nil),
        });
        // `pool_name` or nil: where the idle cosocket waits in nginx's pool.
        methods.add_method("cosocket_pool", |_, this, ()| Ok(this.0.cosocket_pool()));
        methods.add_method("is_open", |_, this, ()| Ok(this.0.is_open()));
        methods.add_method("timeout_ms", |_, this, ()| Ok(this.0.timeout_ms() as f64));
        // kong_rds_iam.pgmoon: type rows exactly as pgmoon does from now on.
        methods.add_method_mut("pgmoon_types", |_, this, ()| {
            this.1 = Decoding::Pgmoon;
            Ok(())
        });
        methods.add_method_mut("query_abandon", |_, this, job: f64| {
            jobs::abandon(job as u64);
            this.0.abandon_query();
            Ok(())
        });
        methods.add_method_mut("close", |lua, this, ()| match this.0.close() {
            Ok(()) => Ok(MultiValue::from_iter([Value::Boolean(true)])),
            Err(e) => super::failure(lua, &e),
        });
        methods.add_method_mut("disconnect", |lua, this, ()| match this.0.close() {
            Ok(()) => Ok(MultiValue::from_iter([Value::Boolean(true)])),
            Err(e) => super::failure(lua, &e),
        });
        // LISTEN/NOTIFY: `notification` or `nil, err`, blocking; and as a job.
        methods.add_method_mut("wait_for_notification", |lua, this, ()| {
            let outcome = this.0.wait_for_notification();
            notification_values(lua, outcome)
        });
        methods.add_method_mut("wait_start", |lua, this, ()| {
            let bound = this.0.query_bound();
            let abandon = Abandon::new_signal();
            let submitted = match this.0.notification_job(abandon.clone()) {
                Ok(job) => jobs::submit_with(abandon, job),
                Err(e) => return super::failure(lua, &e),
            };
            match submitted {
                Ok(job) => Ok(MultiValue::from_iter([Value::Number(job as f64), Value::Number(bound.as_millis() as f64)])),
                Err(e) => {
                    this.0.abandon_query();
                    super::failure(lua, &e)
                }
            }
        });
        methods.add_method_mut("wait_finish", |lua, this, job: f64| {
            let outcome = match jobs::take::<(Option<crate::pg::Connection>, crate::error::Result<Notification>)>(job as u64) {
                Ok(done) => this.0.finish_wait(done),
                Err(e) => {
                    this.0.abandon_query();
                    Err(e)
                }
            };
            notification_values(lua, outcome)
        });
        // `keepalive(max_idle_ms?, pool_size?, in_master)`: api.lua checked the types.
        methods.add_method_mut("keepalive", |lua, this, (max_idle, size, in_master): (Option<f64>, Option<f64>, bool)| {
            let max_idle = max_idle.map(|ms| Duration::from_millis(ms as u64));
            let size = size.map(|n| n as usize);
            // Only a connection over a cosocket (the door's) can evict any.
            match this.0.keepalive(max_idle, size, in_master) {
                Ok(_) => Ok(MultiValue::from_iter([Value::Boolean(true)])),
                Err(e) => super::failure(lua, &e),
            }
        });
        // A closed (or kept-alive, so detached) handle answers nil, "closed", as a cosocket does.
        methods.add_method("getreusedtimes", |_, this, ()| {
            Ok(if this.0.is_open() { (Some(this.0.reused_times()), None) } else { (None, Some("closed")) })
        });
        methods.add_method_mut("settimeout", |_, this, ms: f64| {
            // NaN is not contained either: it is refused too.
            if !(1.0..=3_600_000.0).contains(&ms) {
                return Err(mlua::Error::runtime("bad argument #1 to 'settimeout' (milliseconds 1-3600000 expected)"));
            }
            if !this.0.is_open() {
                return Ok((None, Some("closed")));
            }
            this.0.set_timeout(Duration::from_millis(ms as u64));
            Ok((Some(true), None))
        });
        // As libpq's PQescapeLiteral / PQescapeIdentifier for this session's
        // client encoding (src/pg/escape.rs); api.lua checked the types.
        methods.add_method("escape_literal", |lua, this, v: Value| {
            let session = this.0.escape_session();
            escape_literal(lua, v, session)
        });
        methods.add_method("escape_identifier", |lua, this, name: LuaString| {
            let escaped = this.0.escape_session().and_then(|s| escape::identifier(&name.as_bytes(), &s).map_err(escape_error));
            match escaped {
                Ok(text) => Ok(MultiValue::from_iter([Value::String(lua.create_string(text)?)])),
                Err(e) => super::failure(lua, &e),
            }
        });
        methods.add_meta_method("__tostring", |_, this, ()| {
            let state = match (this.0.is_open(), this.0.is_tls()) {
                (false, _) => "closed",
                (true, true) => "open, tls",
                (true, false) => "open",
            };
            Ok(format!("kong_rds_iam connection: {} ({state})", this.0.label()))
        });
    }
}

/// Numbers bare (non-finite ones as `'NaN'::float8` ...; a negative one
/// after a space, so that it never glues to a `-` into a comment), booleans
/// TRUE/FALSE, nil/null NULL, strings as libpq quotes them. A value that
/// cannot be quoted (a zero byte, a broken multibyte character) gives
/// `nil, err`.
fn escape_literal(lua: &Lua, v: Value, session: crate::error::Result<escape::Session>) -> LuaResult<MultiValue> {
    let text: Vec<u8> = match v {
        Value::Nil => b"NULL".to_vec(),
        Value::LightUserData(ud) if ud.0.is_null() => b"NULL".to_vec(),
        Value::Boolean(b) => {
            if b {
                b"TRUE".to_vec()
            } else {
                b"FALSE".to_vec()
            }
        }
        Value::Integer(i) if i.unsigned_abs() < (1 << 53) => escape::float_literal(i as f64),
        Value::Integer(i) => {
            if i < 0 {
                format!(" {i}").into_bytes()
            } else {
                i.to_string().into_bytes()
            }
        }
        Value::Number(n) => escape::float_literal(n),
        Value::String(s) => match session.and_then(|session| escape::literal(&s.as_bytes(), &session).map_err(escape_error)) {
            Ok(text) => text,
            Err(e) => return super::failure(lua, &e),
        },
        other => return Err(mlua::Error::runtime(format!("bad argument #1 to 'escape_literal' (cannot escape a {})", other.type_name()))),
    };
    Ok(MultiValue::from_iter([Value::String(lua.create_string(text)?)]))
}

/// Bytes as a Lua string, or nil when there are none.
pub(super) fn bytes_value(lua: &Lua, bytes: &[u8]) -> LuaResult<Value> {
    if bytes.is_empty() {
        return Ok(Value::Nil);
    }
    Ok(Value::String(lua.create_string(bytes)?))
}

fn escape_error(e: escape::EscapeError) -> crate::error::Error {
    crate::error::Error::config(format!("cannot escape the value: {e}"))
}

/// `res, num_queries, notifications, notices` or `nil, err, partial,
/// num_queries, sqlstate, fields` (fields: the server's error fields by name).
/// `built`: row tables filled while the query ran, by statement number.
fn outcome_values(
    lua: &Lua,
    outcome: std::result::Result<QueryOutput, QueryFailure>,
    messages: Messages,
    decoding: Decoding,
    built: &mut Vec<Building>,
) -> LuaResult<MultiValue> {
    match outcome {
        Ok(out) => {
            let n = out.len() as i64;
            let mut values = vec![results(lua, &out, decoding, built)?, Value::Integer(n)];
            if !messages.notifications.is_empty() || !messages.notices.is_empty() {
                values.push(notifications(lua, &messages.notifications)?);
                values.push(if messages.notices.is_empty() {
                    Value::Nil
                } else {
                    Value::Table(lua.create_sequence_from(messages.notices.iter().map(|n| n.as_str()))?)
                });
            }
            Ok(MultiValue::from_iter(values))
        }
        Err(failure) => {
            let n = failure.partial.len() as i64;
            let partial = if failure.partial.is_empty() { Value::Nil } else { results(lua, &failure.partial, decoding, built)? };
            let sqlstate = match failure.error.sqlstate() {
                Some(s) => Value::String(lua.create_string(s)?),
                None => Value::Nil,
            };
            let fields = match failure.error.server_fields() {
                Some(fields) => {
                    let t = lua.create_table()?;
                    for (name, value) in fields.iter() {
                        t.raw_set(name, value)?;
                    }
                    Value::Table(t)
                }
                None => Value::Nil,
            };
            Ok(MultiValue::from_iter([
                Value::Nil,
                Value::String(lua.create_string(failure.error.message())?),
                partial,
                Value::Integer(n),
                sqlstate,
                fields,
            ]))
        }
    }
}

/// `{ operation = "notification", pid, channel, payload }`, or `nil, err`.
fn notification_values(lua: &Lua, outcome: crate::error::Result<Notification>) -> LuaResult<MultiValue> {
    match outcome {
        Ok(n) => match notifications(lua, std::slice::from_ref(&n))? {
            Value::Table(list) => Ok(MultiValue::from_iter([list.raw_get::<Value>(1)?])),
            other => Ok(MultiValue::from_iter([other])),
        },
        Err(e) => super::failure(lua, &e),
    }
}

/// `{ operation = "notification", pid, channel, payload }` each, or nil.
fn notifications(lua: &Lua, list: &[Notification]) -> LuaResult<Value> {
    if list.is_empty() {
        return Ok(Value::Nil);
    }
    let all = lua.create_table_with_capacity(list.len(), 0)?;
    for (i, n) in list.iter().enumerate() {
        let t = lua.create_table_with_capacity(0, 4)?;
        t.raw_set("operation", "notification")?;
        t.raw_set("pid", n.process_id)?;
        t.raw_set("channel", n.channel.as_str())?;
        t.raw_set("payload", n.payload.as_str())?;
        all.raw_set(i + 1, t)?;
    }
    Ok(Value::Table(all))
}

/// One result as pgmoon shapes it; several statements give an array of them.
fn results(lua: &Lua, out: &QueryOutput, decoding: Decoding, built: &mut Vec<Building>) -> LuaResult<Value> {
    let mut prebuilt = |i: usize| built.iter().position(|b| b.index == i).map(|at| built.swap_remove(at).rows);
    if out.len() == 1 {
        return statement(lua, &out[0], decoding, prebuilt(0));
    }
    let all = lua.create_table_with_capacity(out.len(), 0)?;
    for (i, s) in out.iter().enumerate() {
        all.raw_set(i + 1, statement(lua, s, decoding, prebuilt(i))?)?;
    }
    Ok(Value::Table(all))
}

/// A statement's result; its first rows may be in `prebuilt` already.
fn statement(lua: &Lua, s: &Statement, decoding: Decoding, prebuilt: Option<Rows>) -> LuaResult<Value> {
    let Some(columns) = &s.columns else {
        return Ok(match s.affected_rows() {
            Some(n) => {
                let t = lua.create_table_with_capacity(0, 1)?;
                t.raw_set("affected_rows", n)?;
                Value::Table(t)
            }
            None => Value::Boolean(true),
        });
    };
    let affected = if s.command() != "SELECT" { s.affected_rows() } else { None };
    if let Some(mut rows) = prebuilt {
        rows.push(lua, columns, &s.rows, decoding)?;
        if let Some(n) = affected {
            rows.table.raw_set("affected_rows", n)?;
        }
        return Ok(Value::Table(rows.table));
    }
    // The whole result in one protected call: on LuaJIT every safe-API
    // constructor is a protected call of its own, which for a small result
    // costs more than the result.
    // SAFETY: the closure starts on an empty stack (no arguments), builds the
    // rows table (index 1) and the names (index 2) with the C API, stores
    // rows with raw sets (string and integer keys: only memory exhaustion
    // can raise, which the protected call turns into an error) and leaves
    // exactly the rows table as its one result.
    let table = unsafe {
        lua.exec_raw::<mlua::Table>((), |state| {
            ffi::lua_createtable(state, c_int_of(s.rows.len()), affected.is_some() as std::os::raw::c_int);
            push_names(state, columns);
            push_rows(state, 0, columns, &s.rows, decoding);
            if let Some(n) = affected {
                push_bytes(state, b"affected_rows");
                ffi::lua_pushinteger(state, n.min(i64::MAX as u64) as ffi::lua_Integer);
                ffi::lua_rawset(state, 1);
            }
            ffi::lua_settop(state, 1);
        })?
    };
    Ok(Value::Table(table))
}

impl Rows {
    fn new(lua: &Lua, columns: &[Column], capacity: usize) -> LuaResult<Rows> {
        // SAFETY: as in `statement`: two new tables, left as the two results.
        let (table, names) = unsafe {
            lua.exec_raw::<(mlua::Table, mlua::Table)>((), |state| {
                ffi::lua_createtable(state, c_int_of(capacity), 1);
                push_names(state, columns);
            })?
        };
        Ok(Rows { table, count: 0, names })
    }

    /// Appends a row table per DataRow, keyed by column name. Through the
    /// raw C API (in a protected call): a result is tens of thousands of
    /// fields, and each safe-API set costs several times the raw one.
    fn push(&mut self, lua: &Lua, columns: &[Column], bodies: &[DataRowBody], decoding: Decoding) -> LuaResult<()> {
        if bodies.is_empty() {
            return Ok(());
        }
        let count = std::cell::Cell::new(self.count);
        // SAFETY: the closure only uses the stack as the Lua C API allows:
        // the rows table and the names are arguments 1 and 2, each row is
        // built on top and stored with rawseti, and the stack is emptied at
        // the end (no results). Keys are strings and integers, so raw sets
        // can only raise on memory exhaustion, which the protected call turns
        // into an error.
        unsafe {
            lua.exec_raw::<()>((&self.table, &self.names), |state| {
                count.set(push_rows(state, count.get(), columns, bodies, decoding));
                ffi::lua_settop(state, 0);
            })?;
        }
        self.count = count.get();
        Ok(())
    }
}

fn c_int_of(n: usize) -> std::os::raw::c_int {
    n.min(i32::MAX as usize) as std::os::raw::c_int
}

/// Pushes the column names as a sequence (it becomes stack index 2).
unsafe fn push_names(state: *mut ffi::lua_State, columns: &[Column]) {
    ffi::lua_createtable(state, c_int_of(columns.len()), 0);
    for (j, c) in columns.iter().enumerate() {
        push_bytes(state, c.name.as_bytes());
        ffi::lua_rawseti(state, -2, (j + 1) as ffi::lua_Integer);
    }
}

/// Appends a row table per DataRow to the rows table at index 1 (names at
/// index 2) after its first `count` rows; the new count.
unsafe fn push_rows(state: *mut ffi::lua_State, mut count: usize, columns: &[Column], bodies: &[DataRowBody], decoding: Decoding) -> usize {
    let ncols = c_int_of(columns.len());
    for body in bodies {
        let n = count + 1;
        if n > i32::MAX as usize || ffi::lua_checkstack(state, 4) == 0 {
            break;
        }
        ffi::lua_createtable(state, 0, ncols);
        push_fields(state, columns, body, decoding);
        ffi::lua_rawseti(state, 1, n as ffi::lua_Integer);
        count = n;
    }
    count
}

use mlua::ffi;

/// Sets the fields of one DataRow into the table on top of the stack
/// (names at index 2).
unsafe fn push_fields(state: *mut ffi::lua_State, columns: &[Column], body: &DataRowBody, decoding: Decoding) {
    use fallible_iterator::FallibleIterator;
    let buffer = body.buffer();
    let mut ranges = body.ranges();
    let mut j = 0usize;
    while let Ok(Some(range)) = ranges.next() {
        let Some(column) = columns.get(j) else { break };
        ffi::lua_rawgeti(state, 2, (j + 1) as ffi::lua_Integer);
        match range.and_then(|r| buffer.get(r)) {
            None => ffi::lua_pushlightuserdata(state, std::ptr::null_mut()),
            Some(raw) => push_cell(state, value::decode_as(decoding, column.type_oid, raw), 0),
        }
        ffi::lua_rawset(state, -3);
        j += 1;
    }
}

/// How deep JSON and arrays nest before the rest reads as nil (each level
/// takes Lua stack slots).
const MAX_DEPTH: usize = 200;

/// Pushes a decoded value: NULL as `rds.null`, numbers, booleans, strings,
/// JSON and arrays as tables.
unsafe fn push_cell(state: *mut ffi::lua_State, c: Cell<'_>, depth: usize) {
    match c {
        Cell::Null => ffi::lua_pushlightuserdata(state, std::ptr::null_mut()),
        Cell::Bool(b) => ffi::lua_pushboolean(state, b as std::os::raw::c_int),
        Cell::Int(n) => ffi::lua_pushnumber(state, n as f64),
        Cell::Float(f) => ffi::lua_pushnumber(state, f),
        Cell::Text(t) => push_bytes(state, t.as_bytes()),
        Cell::Bytes(b) => push_bytes(state, &b),
        Cell::Json(j) => push_json(state, &j, depth),
        Cell::Array(items) => {
            if depth >= MAX_DEPTH || ffi::lua_checkstack(state, 3) == 0 {
                return ffi::lua_pushnil(state);
            }
            ffi::lua_createtable(state, items.len().min(i32::MAX as usize) as std::os::raw::c_int, 0);
            for (i, item) in items.into_iter().enumerate() {
                push_cell(state, item, depth + 1);
                ffi::lua_rawseti(state, -2, (i + 1) as ffi::lua_Integer);
            }
        }
    }
}

unsafe fn push_bytes(state: *mut ffi::lua_State, bytes: &[u8]) {
    ffi::lua_pushlstring(state, bytes.as_ptr().cast(), bytes.len());
}

unsafe fn push_json(state: *mut ffi::lua_State, j: &serde_json::Value, depth: usize) {
    use serde_json::Value as J;
    match j {
        J::Null => ffi::lua_pushlightuserdata(state, std::ptr::null_mut()),
        J::Bool(b) => ffi::lua_pushboolean(state, *b as std::os::raw::c_int),
        J::Number(n) => ffi::lua_pushnumber(state, n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => push_bytes(state, s.as_bytes()),
        J::Array(_) | J::Object(_) if depth >= MAX_DEPTH || ffi::lua_checkstack(state, 3) == 0 => ffi::lua_pushnil(state),
        J::Array(items) => {
            ffi::lua_createtable(state, items.len().min(i32::MAX as usize) as std::os::raw::c_int, 0);
            for (i, item) in items.iter().enumerate() {
                push_json(state, item, depth + 1);
                ffi::lua_rawseti(state, -2, (i + 1) as ffi::lua_Integer);
            }
        }
        J::Object(map) => {
            ffi::lua_createtable(state, 0, map.len().min(i32::MAX as usize) as std::os::raw::c_int);
            for (k, v) in map {
                push_bytes(state, k.as_bytes());
                push_json(state, v, depth + 1);
                ffi::lua_rawset(state, -3);
            }
        }
    }
}
