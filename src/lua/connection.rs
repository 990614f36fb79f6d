//! The connection object Lua sees, pgmoon-compatible:
//! `res, err, partial, num_queries, sqlstate = conn:query(sql)`.

use std::time::Duration;

use mlua::{Lua, LuaString, MultiValue, Result as LuaResult, UserData, UserDataMethods, Value};

use crate::connection::{Handle, QueryDone};
use crate::jobs::{self, Abandon};
use crate::pg::value::{self, Cell, Decoding};
use crate::pg::{escape, Messages, Notification, QueryFailure, QueryOutput, Statement};

/// `conn` in Lua: the handle, and how its rows are typed.
pub struct LuaConnection(pub Handle, pub Decoding);

/// The NULL light userdata: `rds.null`, equal to `ngx.null` and `cjson.null`.
pub fn null() -> Value {
    Value::LightUserData(mlua::LightUserData(std::ptr::null_mut()))
}

impl UserData for LuaConnection {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method_mut("query", |lua, this, sql: LuaString| {
            let outcome = this.0.query(&sql.as_bytes());
            outcome_values(lua, outcome, this.0.take_messages(), this.1)
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
            outcome_values(lua, outcome, this.0.take_messages(), this.1)
        });
        // Over a cosocket (api.lua sends and receives; see src/pg/pipe.rs):
        // `out` to send, or the failure values of `query`.
        methods.add_method_mut("piped_query_start", |lua, this, sql: LuaString| match this.0.query_piped_start(&sql.as_bytes()) {
            Ok(out) => Ok(MultiValue::from_iter([Value::String(lua.create_string(&out)?)])),
            Err(refused) => outcome_values(lua, Err(refused), crate::pg::Messages::default(), this.1),
        });
        // `false, out?` while the result is incomplete, then the values of `query`.
        methods.add_method_mut("piped_query_feed", |lua, this, data: Option<LuaString>| {
            let (outcome, out) = match &data {
                Some(d) => this.0.query_piped_feed(Some(&d.as_bytes())),
                None => this.0.query_piped_feed(None),
            };
            match outcome {
                None => Ok(MultiValue::from_iter([Value::Boolean(false), bytes_value(lua, &out)?])),
                Some(outcome) => outcome_values(lua, outcome, this.0.take_messages(), this.1),
            }
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
            this.0.piped_stop(keep);
            Ok(())
        });
        methods.add_method("piped_output", |lua, this, ()| match this.0.piped_output() {
            Some(out) => Ok(Value::String(lua.create_string(&out)?)),
            None => Ok(Value::Nil),
        });
        // `pool_name, ip, port`: where the idle cosocket waits in nginx's pool.
        methods.add_method("cosocket_pool", |lua, this, ()| match this.0.cosocket_pool() {
            Some((name, addr)) => Ok(MultiValue::from_iter([
                Value::String(lua.create_string(&name)?),
                Value::String(lua.create_string(addr.ip().to_string())?),
                Value::Integer(addr.port().into()),
            ])),
            None => Ok(MultiValue::new()),
        });
        methods.add_method("is_piped", |_, this, ()| Ok(this.0.is_piped()));
        methods.add_method("is_open", |_, this, ()| Ok(this.0.is_open()));
        methods.add_method("timeout_ms", |_, this, ()| Ok(this.0.timeout_ms() as f64));
        methods.add_method("keepalive_ms", |_, this, max_idle: Option<f64>| {
            Ok(this.0.keepalive_ms(max_idle.map(|ms| Duration::from_millis(ms as u64))) as f64)
        });
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
            match this.0.keepalive(max_idle, size, in_master) {
                Ok(()) => Ok(MultiValue::from_iter([Value::Boolean(true)])),
                Err(e) => super::failure(lua, &e),
            }
        });
        // Over a cosocket: `true, idle_ms` (pooled: its cosocket goes to
        // nginx's pool for idle_ms, 0 = no limit), `true, nil, out` (closed
        // instead: send out, close) or `nil, err, out`.
        methods.add_method_mut("piped_keepalive", |lua, this, (max_idle, size): (Option<f64>, Option<f64>)| {
            let max_idle = max_idle.map(|ms| Duration::from_millis(ms as u64));
            let idle_ms = this.0.keepalive_ms(max_idle) as f64;
            let outcome = this.0.keepalive(max_idle, size.map(|n| n as usize), false);
            let out = match this.0.piped_output() {
                Some(out) => Value::String(lua.create_string(&out)?),
                None => Value::Nil,
            };
            match outcome {
                Ok(()) if out.is_nil() => Ok(MultiValue::from_iter([Value::Boolean(true), Value::Number(idle_ms)])),
                Ok(()) => Ok(MultiValue::from_iter([Value::Boolean(true), Value::Nil, out])),
                Err(e) => Ok(MultiValue::from_iter([Value::Nil, Value::String(lua.create_string(e.message())?), out])),
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
fn outcome_values(
    lua: &Lua,
    outcome: std::result::Result<QueryOutput, QueryFailure>,
    messages: Messages,
    decoding: Decoding,
) -> LuaResult<MultiValue> {
    match outcome {
        Ok(out) => {
            let n = out.len() as i64;
            let mut values = vec![results(lua, &out, decoding)?, Value::Integer(n)];
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
            let partial = if failure.partial.is_empty() { Value::Nil } else { results(lua, &failure.partial, decoding)? };
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
fn results(lua: &Lua, out: &QueryOutput, decoding: Decoding) -> LuaResult<Value> {
    if out.len() == 1 {
        return statement(lua, &out[0], decoding);
    }
    let all = lua.create_table_with_capacity(out.len(), 0)?;
    for (i, s) in out.iter().enumerate() {
        all.raw_set(i + 1, statement(lua, s, decoding)?)?;
    }
    Ok(Value::Table(all))
}

fn statement(lua: &Lua, s: &Statement, decoding: Decoding) -> LuaResult<Value> {
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
    let names: Vec<LuaString> = columns.iter().map(|c| lua.create_string(&c.name)).collect::<LuaResult<_>>()?;
    let rows = lua.create_table_with_capacity(s.rows.len(), 1)?;
    for i in 0..s.rows.len() {
        let row = lua.create_table_with_capacity(0, columns.len())?;
        for (j, field) in s.row_fields(i).into_iter().enumerate() {
            let (Some(name), Some(column)) = (names.get(j), columns.get(j)) else { break };
            let v = match field {
                None => null(),
                Some(raw) => cell(lua, value::decode_as(decoding, column.type_oid, raw))?,
            };
            row.raw_set(name, v)?;
        }
        rows.raw_set(i + 1, row)?;
    }
    if s.command() != "SELECT" {
        if let Some(n) = s.affected_rows() {
            rows.raw_set("affected_rows", n)?;
        }
    }
    Ok(Value::Table(rows))
}

fn cell(lua: &Lua, c: Cell<'_>) -> LuaResult<Value> {
    Ok(match c {
        Cell::Null => null(),
        Cell::Bool(b) => Value::Boolean(b),
        Cell::Int(n) => Value::Number(n as f64),
        Cell::Float(f) => Value::Number(f),
        Cell::Text(t) => Value::String(lua.create_string(t.as_bytes())?),
        Cell::Bytes(b) => Value::String(lua.create_string(b)?),
        Cell::Json(j) => json(lua, &j)?,
        Cell::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.into_iter().enumerate() {
                t.raw_set(i + 1, cell(lua, item)?)?;
            }
            Value::Table(t)
        }
    })
}

fn json(lua: &Lua, j: &serde_json::Value) -> LuaResult<Value> {
    use serde_json::Value as J;
    Ok(match j {
        J::Null => null(),
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => Value::String(lua.create_string(s)?),
        J::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, json(lua, item)?)?;
            }
            Value::Table(t)
        }
        J::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, v) in map {
                t.raw_set(k.as_str(), json(lua, v)?)?;
            }
            Value::Table(t)
        }
    })
}
