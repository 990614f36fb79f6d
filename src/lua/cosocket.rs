//! Opening connections over nginx cosockets (api.lua's yielding path; see
//! src/pg/pipe.rs): an idle pooled one at once, else a job that prepares a
//! new one (backlog, rate guard, token, addresses) and a login that api.lua
//! drives over the cosocket it connected.

use mlua::{Lua, LuaString, MultiValue, Result as LuaResult, Table, UserData, UserDataMethods, Value};

use super::conf_source::LuaConf;
use super::connection::{bytes_value, LuaConnection};
use super::{failure, side};
use crate::conf::ConnectConf;
use crate::connection::{Connecting, Handle, Opening, Prepared, Progress};
use crate::error::{guarded, Error, Result as CrateResult};
use crate::jobs;
use crate::pool::Lease;

pub fn register(lua: &Lua, core: &Table) -> LuaResult<()> {
    core.set("parse_conf", lua.create_function(parse_conf)?)?;
    core.set("piped_taken", lua.create_function(piped_taken)?)?;
    core.set("piped_prepare_start", lua.create_function(piped_prepare_start)?)?;
    core.set("piped_prepare_finish", lua.create_function(piped_prepare_finish)?)?;
    core.set("stale_connection", lua.create_function(|lua, ()| lua.create_userdata(LuaConnection::new(Handle::stale())))?)?;
    Ok(())
}

/// A conf parsed once, for api.lua's memo (see [`parse_conf`]), with its
/// cosocket pool key: boxed at a fixed address and numbered, so that the
/// FFI door's checkout (`kong_rds_iam_take`, src/lua/door.rs) names it.
pub struct ParsedConf {
    parsed: std::ptr::NonNull<Parsed>,
    number: u64,
}

/// The settings and their cosocket pool key.
pub struct Parsed(pub ConnectConf, pub std::sync::Arc<crate::pool::Key>);

impl ParsedConf {
    fn new(parsed: Parsed) -> ParsedConf {
        let parsed = std::ptr::NonNull::from(Box::leak(Box::new(parsed)));
        ParsedConf { parsed, number: super::door::number_conf(parsed) }
    }
}

impl std::ops::Deref for ParsedConf {
    type Target = Parsed;
    fn deref(&self) -> &Parsed {
        // SAFETY: the box leaked in `new`, freed only in `drop`; only ever read.
        unsafe { self.parsed.as_ref() }
    }
}

impl Drop for ParsedConf {
    fn drop(&mut self) {
        // The door forgets the number first, so no checkout reaches the box.
        super::door::forget_conf(self.number);
        // SAFETY: the box leaked in `new`, not referenced any more.
        drop(unsafe { Box::from_raw(self.parsed.as_ptr()) });
    }
}

impl UserData for ParsedConf {}

/// `parsed, names, number = core.parse_conf(conf, mode)`: the settings,
/// every key the parse read (in order; api.lua compares exactly these before
/// it reuses `parsed` for the same table) and its number at the door (0:
/// none), or `nil, err`.
fn parse_conf(lua: &Lua, (conf, mode): (Table, Option<LuaString>)) -> LuaResult<MultiValue> {
    let source = Recording { conf: LuaConf(conf), names: std::cell::RefCell::new(Vec::new()) };
    match guarded(|| ConnectConf::parse(&source, side(mode)?)) {
        Ok(parsed) => {
            let names = lua.create_sequence_from(source.names.into_inner())?;
            let key = std::sync::Arc::new(crate::pool::Key::piped(&parsed));
            let parsed = ParsedConf::new(Parsed(parsed, key));
            let number = parsed.number as f64;
            Ok(MultiValue::from_iter([Value::UserData(lua.create_userdata(parsed)?), Value::Table(names), Value::Number(number)]))
        }
        Err(e) => failure(lua, &e),
    }
}

/// A conf that remembers which keys were read.
struct Recording {
    conf: LuaConf,
    names: std::cell::RefCell<Vec<String>>,
}

impl crate::conf::ConfSource for Recording {
    fn get(&self, key: &str) -> Option<crate::conf::RawValue> {
        let mut names = self.names.borrow_mut();
        if !names.iter().any(|n| n == key) {
            names.push(key.to_owned());
        }
        self.conf.get(key)
    }
}

/// `conn, door` (a new object and its number at the door) for the idle
/// connection the door's checkout took (`kong_rds_iam_take`) when api.lua
/// has no free object of its pipe; `nil, err` when there is none.
fn piped_taken(lua: &Lua, (): ()) -> LuaResult<MultiValue> {
    let Some(handle) = super::door::take_taken() else {
        return failure(lua, &Error::closed());
    };
    let conn = LuaConnection::new(handle);
    let door = conn.door_id() as f64;
    Ok(MultiValue::from_iter([Value::UserData(lua.create_userdata(conn)?), Value::Number(door)]))
}

/// `conn, door, pipe, timeout_ms`, after `prefix` values.
fn reuse_values(lua: &Lua, handle: Handle, prefix: Option<&str>) -> LuaResult<MultiValue> {
    let Some(pipe) = handle.pipe_id() else {
        return failure(lua, &Error::closed());
    };
    let timeout = handle.timeout_ms();
    let mut out = Vec::with_capacity(5);
    if let Some(p) = prefix {
        out.push(Value::String(lua.create_string(p)?));
    }
    let conn = LuaConnection::new(handle);
    let door = conn.door_id();
    out.push(Value::UserData(lua.create_userdata(conn)?));
    out.push(Value::Number(door as f64));
    out.push(Value::Number(pipe as f64));
    out.push(Value::Number(timeout as f64));
    Ok(MultiValue::from_iter(out))
}

/// `job, wait_ms`: prepares a new connection over a cosocket.
fn piped_prepare_start(lua: &Lua, parsed: mlua::UserDataRef<ParsedConf>) -> LuaResult<MultiValue> {
    let submitted = guarded(|| {
        let conf = parsed.0.clone();
        let bound = Handle::open_bound(&conf);
        Ok((jobs::submit(move |_| Handle::prepare_job(conf))?, bound))
    });
    job_values(lua, submitted)
}

fn job_values(lua: &Lua, submitted: CrateResult<(u64, std::time::Duration)>) -> LuaResult<MultiValue> {
    match submitted {
        Ok((job, bound)) => Ok(MultiValue::from_iter([Value::Number(job as f64), Value::Number(bound.as_millis() as f64)])),
        Err(e) => failure(lua, &e),
    }
}

/// `"reuse", conn, door, pipe, timeout_ms` | `"open", opening` | `nil, err, sqlstate`.
fn piped_prepare_finish(lua: &Lua, job: f64) -> LuaResult<MultiValue> {
    match jobs::take::<CrateResult<Prepared>>(job as u64).and_then(|prepared| prepared) {
        Ok(Prepared::Reuse(handle)) => reuse_values(lua, handle, Some("reuse")),
        Ok(Prepared::Open(opening)) => Ok(MultiValue::from_iter([
            Value::String(lua.create_string("open")?),
            Value::UserData(lua.create_userdata(LuaOpening(Stage::Ready(opening)))?),
        ])),
        Err(e) => failure(lua, &e),
    }
}

/// A new connection over a cosocket, from preparation to login.
struct LuaOpening(Stage);

enum Stage {
    Ready(Opening),
    LoggingIn(Connecting),
    /// Refused with a cached token: prepare again (once).
    Refused(ConnectConf, Lease),
    Over,
}

impl UserData for LuaOpening {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // `ip, port` of address `i` (1-based), or nothing past the last.
        methods.add_method("address", |lua, this, i: usize| {
            let Stage::Ready(opening) = &this.0 else { return Ok(MultiValue::new()) };
            match i.checked_sub(1).and_then(|i| opening.addresses().get(i)) {
                Some(addr) => Ok(MultiValue::from_iter([
                    Value::String(lua.create_string(addr.ip().to_string())?),
                    Value::Integer(addr.port().into()),
                ])),
                None => Ok(MultiValue::new()),
            }
        });
        methods.add_method("timeout_ms", |_, this, ()| {
            Ok(match &this.0 {
                Stage::Ready(o) => o.timeout_ms() as f64,
                _ => 0.0,
            })
        });
        // `pool_name, target`: what to connect the cosocket with, and the
        // `host:port` configured (for messages).
        methods.add_method("pool_name", |lua, this, ()| {
            let Stage::Ready(opening) = &this.0 else { return Ok(MultiValue::new()) };
            Ok(MultiValue::from_iter([
                Value::String(lua.create_string(opening.pool_name())?),
                Value::String(lua.create_string(opening.target())?),
            ]))
        });
        // The cosocket is connected to address `i`: the login starts.
        methods.add_method_mut("begin", |lua, this, i: usize| {
            let Stage::Ready(opening) = std::mem::replace(&mut this.0, Stage::Over) else {
                return failure(lua, &Error::closed());
            };
            let Some(addr) = i.checked_sub(1).and_then(|i| opening.addresses().get(i)).copied() else {
                return failure(lua, &Error::closed());
            };
            this.0 = Stage::LoggingIn(opening.begin(addr));
            Ok(MultiValue::from_iter([Value::Boolean(true)]))
        });
        // `status, out`: status "more" (send out, receive, step again),
        // "done" (then conn), "retry" (prepare again with retry_start) or
        // "failed" (then err, sqlstate). `data`: what the cosocket received
        // (nil at first); `closed`: the server closed it.
        methods.add_method_mut("step", |lua, this, (data, closed): (Option<LuaString>, Option<bool>)| {
            let Stage::LoggingIn(connecting) = &mut this.0 else {
                return failure(lua, &Error::closed());
            };
            let progress = guarded(|| Ok(connecting.step(data.as_ref().map(|d| d.as_bytes()).as_deref(), closed == Some(true))));
            let out = bytes_value(lua, &connecting.output())?;
            let status = |s: &str| lua.create_string(s).map(Value::String);
            match progress {
                Ok(Progress::More) => Ok(MultiValue::from_iter([status("more")?, out])),
                Ok(Progress::Done(handle)) => {
                    this.0 = Stage::Over;
                    let conn = Value::UserData(lua.create_userdata(LuaConnection::new(handle))?);
                    Ok(MultiValue::from_iter([status("done")?, out, conn]))
                }
                Ok(Progress::Retry(conf, lease)) => {
                    this.0 = Stage::Refused(conf, lease);
                    Ok(MultiValue::from_iter([status("retry")?, out]))
                }
                Ok(Progress::Failed(e)) | Err(e) => {
                    this.0 = Stage::Over;
                    let mut values = vec![status("failed")?, out];
                    values.extend(failure(lua, &e)?.into_iter().skip(1));
                    Ok(MultiValue::from_iter(values))
                }
            }
        });
        // `err`: the login timed out (or the cosocket failed with `why`).
        methods.add_method_mut("stop", |lua, this, why: Option<LuaString>| {
            let e = match std::mem::replace(&mut this.0, Stage::Over) {
                Stage::LoggingIn(mut c) => c.timed_out(),
                _ => Error::closed(),
            };
            let message = match why {
                Some(why) if why.as_bytes().as_ref() != b"timeout" => {
                    format!("connection failed while logging in: {}", why.to_string_lossy())
                }
                _ => e.message().to_owned(),
            };
            lua.create_string(message)
        });
        // `job, wait_ms`: after "retry", prepares once more with a fresh token.
        methods.add_method_mut("retry_start", |lua, this, ()| {
            let Stage::Refused(conf, lease) = std::mem::replace(&mut this.0, Stage::Over) else {
                return failure(lua, &Error::closed());
            };
            let bound = Handle::open_bound(&conf);
            job_values(lua, guarded(|| Ok((jobs::submit(move |_| Handle::prepare_retry(conf, lease))?, bound))))
        });
    }
}
