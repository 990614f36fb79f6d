//! The Lua binding: the only part of the crate that knows Lua.
//!
//! `luaopen_kong_rds_iam` freezes the AWS environment and returns the module
//! table. It starts no thread and no runtime (those start on first use in
//! each process). The public functions are defined in `api.lua`, which checks
//! argument types (raising Lua strings, as Lua libraries do) and calls the
//! Rust functions here. Those return `nil, "message"` on every runtime
//! failure: a Rust error never reaches Lua as an error object.

mod conf_source;
mod connection;
mod cosocket;
mod door;
mod facts;
mod service_tokens;

use mlua::{Lua, MultiValue, Result as LuaResult, Table, Value};

use crate::conf::{key, ConnectConf, Endpoint, Side};
use crate::connection::Handle;
use crate::error::{guarded, Error, Result as CrateResult};
use crate::signer::{self, SigningParams};
use crate::token::Issued;
use crate::{credentials, env_snapshot, io_thread, jobs, token};
use conf_source::{LuaConf, LuaValues};

/// The module entry point, `require "kong_rds_iam"`.
#[mlua::lua_module(skip_memory_check)]
fn kong_rds_iam(lua: &Lua) -> LuaResult<Table> {
    let snapshot = env_snapshot::freeze();
    quiet_panics();
    // Before nginx forks its workers, so that they share the buckets.
    crate::rate::map_at_load();
    let library_path = pin_library();
    let core = lua.create_table()?;
    // For ffi_token.lua: where LuaJIT's ffi.load finds kong_rds_iam_token.
    if let Some(path) = library_path {
        core.set("library_path", lua.create_string(path.as_bytes())?)?;
    }
    core.set("version", env!("CARGO_PKG_VERSION"))?;
    core.set("null", connection::null())?;
    core.set("connect", lua.create_function(lua_connect)?)?;
    core.set("token", lua.create_function(lua_token)?)?;
    core.set("credentials_source", lua.create_function(lua_credentials_source)?)?;
    core.set("settings", lua.create_function(lua_settings)?)?;
    core.set("sign_token", lua.create_function(lua_sign_token)?)?;
    core.set("rds_ca_bundle", lua.create_function(lua_rds_ca_bundle)?)?;
    service_tokens::register(lua, &core)?;
    cosocket::register(lua, &core)?;
    facts::register(lua, &core)?;
    core.set("token_keys", token_keys(lua)?)?;
    core.set("contract", contract(lua)?)?;
    // The non-blocking path (api.lua's wait): see src/io_thread.rs.
    core.set("yield_enabled", snapshot.yield_enabled())?;
    core.set("wake_address", lua.create_function(lua_wake_address)?)?;
    core.set("connect_start", lua.create_function(lua_connect_start)?)?;
    core.set("connect_finish", lua.create_function(lua_connect_finish)?)?;
    core.set("fetch_start", lua.create_function(lua_fetch_start)?)?;
    core.set("fetch_finish", lua.create_function(lua_fetch_finish)?)?;
    core.set("nop_start", lua.create_function(|_, ()| Ok(jobs::submit(|_| async {}).ok().map(|id| id as f64)))?)?;
    core.set("nop_finish", lua.create_function(|_, job: f64| Ok(jobs::take::<()>(job as u64).is_ok()))?)?;
    core.set(
        "abandon",
        lua.create_function(|_, job: f64| {
            jobs::abandon(job as u64);
            Ok(())
        })?,
    )?;
    core.set("stats", lua.create_function(lua_stats)?)?;
    core.set("take_warnings", lua.create_function(lua_take_warnings)?)?;
    core.set("token_epoch", lua.create_function(|_, ()| Ok(token::epoch()))?)?;
    core.set("open_handles", lua.create_function(|_, ()| Ok(crate::stats::open_handles()))?)?;
    if let Some(isyieldable) = isyieldable_function(lua)? {
        core.set("isyieldable", isyieldable)?;
    }
    // LuaJIT's FFI route to token() (nil elsewhere): see src/lua/ffi.rs.
    let ffi_token: Value = lua.load(include_str!("ffi_token.lua")).set_name("=kong_rds_iam.ffi_token").call(&core)?;
    core.set("ffi_token", ffi_token)?;
    // And to a cosocket connection's hot calls: see src/lua/door.rs.
    let ffi_door: Value = lua.load(include_str!("ffi_door.lua")).set_name("=kong_rds_iam.ffi_door").call(&core)?;
    core.set("ffi_door", ffi_door)?;
    lua.load(include_str!("api.lua")).set_name("=kong_rds_iam").call(core)
}

/// `{ rw = {...}, ro = {...} }`: the conf keys a token depends on, in the
/// order `core.token` takes their values (api.lua's memo compares exactly
/// these).
fn token_keys(lua: &Lua) -> LuaResult<Table> {
    let sides = lua.create_table()?;
    for side in [Side::ReadWrite, Side::ReadOnly] {
        sides.set(side.as_str(), lua.create_sequence_from(key::token_names(side).iter().copied())?)?;
    }
    Ok(sides)
}

/// `core.contract`: the numbers and C declarations of `src/lua/ffi.rs`'s
/// contract, so that ffi_token.lua and api.lua use them instead of literals.
fn contract(lua: &Lua) -> LuaResult<Table> {
    use crate::ffi::contract as c;
    let t = lua.create_table()?;
    let kinds = lua.create_table()?;
    for (name, n) in c::KINDS {
        kinds.set(*name, *n)?;
    }
    t.set("kinds", kinds)?;
    let sides = lua.create_table()?;
    sides.set("rw", c::SIDE_RW)?;
    sides.set("ro", c::SIDE_RO)?;
    sides.set("defer", c::SIDE_DEFER)?;
    t.set("sides", sides)?;
    let results = lua.create_table()?;
    results.set("too_small", c::RESULT_TOO_SMALL)?;
    results.set("error", c::RESULT_ERROR)?;
    results.set("token", c::RESULT_TOKEN)?;
    results.set("fetching", c::RESULT_FETCHING)?;
    t.set("results", results)?;
    let door = lua.create_table()?;
    for (name, n) in c::DOOR {
        door.set(*name, *n)?;
    }
    t.set("door", door)?;
    t.set("cdef", c::CDEF)?;
    t.set("layout", lua.create_sequence_from(crate::ffi::layout())?)?;
    Ok(t)
}

/// `nil, message[, sqlstate]`: how every runtime failure reaches Lua.
fn failure(lua: &Lua, err: &Error) -> LuaResult<MultiValue> {
    let mut out = vec![Value::Nil, Value::String(lua.create_string(err.message())?)];
    if let Some(state) = err.sqlstate() {
        out.push(Value::String(lua.create_string(state)?));
    }
    Ok(MultiValue::from_iter(out))
}

fn side(mode: Option<mlua::LuaString>) -> Result<Side, Error> {
    let mode = mode.map(|m| m.to_string_lossy());
    Side::parse(mode.as_deref())
}

/// `token, err, expires_at, valid_until, job, wait_ms = core.token(values,
/// mode, defer)`, where `values` holds the conf's values for
/// `core.token_keys[mode]`, in order (`valid_until` feeds api.lua's memo; it
/// is not part of the public API). With `defer`, credentials that must be
/// fetched come back as a job to wait for (then ask again).
fn lua_token(lua: &Lua, (values, mode, defer): (Table, Option<mlua::LuaString>, Option<bool>)) -> LuaResult<TokenResult> {
    use crate::ffi::contract::{SIDE_DEFER, SIDE_RO, SIDE_RW};
    let issued = guarded(|| {
        let side = side(mode)?;
        let code = match side {
            Side::ReadWrite => SIDE_RW,
            Side::ReadOnly => SIDE_RO,
        } + if defer == Some(true) { SIDE_DEFER } else { 0 };
        crate::ffi::issue(code, &LuaValues { side, values })
    });
    // A tuple goes onto the Lua stack as is (no MultiValue in between).
    Ok(match issued {
        Ok((Issued::Token(t), _)) => (
            Some(lua.create_string(&t.token)?),
            None,
            Some(crate::clock::local_unix_seconds(t.expires_at)),
            Some(crate::clock::local_unix_seconds(t.valid_until)),
            None,
            None,
        ),
        Ok((Issued::Fetching(job), timeout)) => (None, None, None, None, Some(job as f64), Some(timeout.as_millis() as f64)),
        Err(e) => (None, Some(lua.create_string(e.message())?), None, None, None, None),
    })
}

/// `token, err, expires_at, valid_until, job, wait_ms`.
type TokenResult = (Option<mlua::LuaString>, Option<mlua::LuaString>, Option<i64>, Option<i64>, Option<f64>, Option<f64>);

/// `conn, err, sqlstate = core.connect(conf, mode)`
fn lua_connect(lua: &Lua, (conf, mode): (Table, Option<mlua::LuaString>)) -> LuaResult<MultiValue> {
    let conf = LuaConf(conf);
    match guarded(|| Handle::open(&ConnectConf::parse(&conf, side(mode)?)?)) {
        Ok(handle) => Ok(MultiValue::from_iter([Value::UserData(lua.create_userdata(connection::LuaConnection::new(handle))?)])),
        Err(e) => failure(lua, &e),
    }
}

/// `job, wait_ms = core.connect_start(conf, mode)`: the connect as a job;
/// or `conn` itself when an idle pooled connection could be taken at once.
fn lua_connect_start(lua: &Lua, (conf, mode): (Table, Option<mlua::LuaString>)) -> LuaResult<MultiValue> {
    let conf = LuaConf(conf);
    let submitted = guarded(|| {
        let conf = ConnectConf::parse(&conf, side(mode)?)?;
        if let Some(handle) = Handle::from_pool(&conf) {
            return Ok(Err(handle));
        }
        let bound = Handle::open_bound(&conf);
        Ok(Ok((jobs::submit(move |_| Handle::open_job(conf))?, bound)))
    });
    match submitted {
        Ok(Ok((job, bound))) => Ok(MultiValue::from_iter([Value::Number(job as f64), Value::Number(bound.as_millis() as f64)])),
        Ok(Err(handle)) => Ok(MultiValue::from_iter([Value::UserData(lua.create_userdata(connection::LuaConnection::new(handle))?)])),
        Err(e) => failure(lua, &e),
    }
}

/// `conn, err, sqlstate = core.connect_finish(job)`
fn lua_connect_finish(lua: &Lua, job: f64) -> LuaResult<MultiValue> {
    match jobs::take::<CrateResult<Handle>>(job as u64).and_then(|opened| opened) {
        Ok(handle) => Ok(MultiValue::from_iter([Value::UserData(lua.create_userdata(connection::LuaConnection::new(handle))?)])),
        Err(e) => failure(lua, &e),
    }
}

/// `job, wait_ms = core.fetch_start(conf, mode)`: the credential fetch
/// `credentials_source` would wait for, as a job; nothing (no job) when the
/// credentials are cached.
fn lua_fetch_start(lua: &Lua, (conf, mode): (Option<Table>, Option<mlua::LuaString>)) -> LuaResult<MultiValue> {
    let submitted = guarded(|| {
        let endpoint = source_endpoint(conf, mode)?;
        if credentials::cached(endpoint.assume_role.as_ref()).is_some() {
            return Ok(None);
        }
        let region = source_region(&endpoint)?;
        let (role, timeout) = (endpoint.assume_role.clone(), endpoint.timeout);
        let job = jobs::submit(move |_| async move { credentials::get_async(role, region, timeout).await.map(drop) })?;
        Ok(Some((job, timeout)))
    });
    match submitted {
        Ok(None) => Ok(MultiValue::new()),
        Ok(Some((job, timeout))) => Ok(MultiValue::from_iter([Value::Number(job as f64), Value::Number(timeout.as_millis() as f64)])),
        Err(e) => failure(lua, &e),
    }
}

/// `true | nil, err = core.fetch_finish(job)`
fn lua_fetch_finish(lua: &Lua, job: f64) -> LuaResult<MultiValue> {
    match jobs::take::<CrateResult<()>>(job as u64).and_then(|fetched| fetched) {
        Ok(()) => Ok(MultiValue::from_iter([Value::Boolean(true)])),
        Err(e) => failure(lua, &e),
    }
}

/// `"unix:/path" | nil, err = core.wake_address(prefix)`: starts this
/// process's I/O thread on first use.
fn lua_wake_address(lua: &Lua, prefix: Option<mlua::LuaString>) -> LuaResult<MultiValue> {
    let prefix = prefix.map(|p| std::path::PathBuf::from(p.to_string_lossy()));
    match guarded(|| io_thread::wake_address(prefix.as_deref())) {
        Ok(address) => Ok(MultiValue::from_iter([Value::String(lua.create_string(address)?)])),
        Err(e) => failure(lua, &e),
    }
}

/// `core.stats()`: this process's counters.
/// The warnings recorded since the last call (see [`crate::warn`]), or
/// nil when there are none.
fn lua_take_warnings(lua: &Lua, (): ()) -> LuaResult<Option<Table>> {
    let pending = crate::warn::take();
    if pending.is_empty() {
        return Ok(None);
    }
    lua.create_sequence_from(pending).map(Some)
}

fn lua_stats(lua: &Lua, (): ()) -> LuaResult<Table> {
    let t = lua.create_table()?;
    t.set("jobs", jobs::count())?;
    t.set("io_thread", io_thread::running())?;
    let s = crate::stats::snapshot();
    t.set("rate_waits", s.rate_waits)?;
    t.set("tokens_signed", s.tokens_signed)?;
    t.set("token_cache_hits", s.token_cache_hits)?;
    t.set("iam_auth_ok", s.iam_auth_ok)?;
    t.set("open_handles", s.open_handles)?;
    t.set("jobs_submitted", s.jobs_submitted)?;
    t.set("scram_channel_bound", s.scram_channel_bound)?;
    let by_name = |map: &std::collections::BTreeMap<String, u64>| -> LuaResult<Table> {
        let t = lua.create_table()?;
        for (k, v) in map {
            t.set(k.as_str(), *v)?;
        }
        Ok(t)
    };
    t.set("credential_fetches", by_name(&s.credential_fetches)?)?;
    t.set("credential_failures", by_name(&s.credential_failures)?)?;
    t.set("iam_auth_failed", by_name(&s.iam_auth_failed)?)?;
    t.set("last_credential_error", s.last_credential_error)?;
    t.set("credentials_expire_in", credentials::seconds_left(None))?;
    if let Some((offset, source)) = crate::clock::offset() {
        t.set("clock_offset", offset)?;
        t.set("clock_source", source)?;
    }
    let pools = lua.create_table()?;
    for f in crate::pool::figures() {
        let p = lua.create_table()?;
        p.set("idle", f.idle)?;
        p.set("busy", f.busy)?;
        p.set("waiting", f.waiting)?;
        p.set("opened", f.opened)?;
        p.set("reused", f.reused)?;
        p.set("closed", f.closed)?;
        pools.set(f.label, p)?;
    }
    t.set("pool", pools)?;
    Ok(t)
}

/// `settings, err = core.settings(conf, mode)`: the parse connect() uses,
/// as a table (pgmoon's option names where they exist).
fn lua_settings(lua: &Lua, (conf, mode): (Table, Option<mlua::LuaString>)) -> LuaResult<MultiValue> {
    let parsed = guarded(|| ConnectConf::parse(&LuaConf(conf), side(mode)?));
    let c = match parsed {
        Ok(c) => c,
        Err(e) => return failure(lua, &e),
    };
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let t = lua.create_table()?;
    t.set("host", c.address.host.as_str())?;
    t.set("port", c.address.port)?;
    // What the token is signed for and the certificate checked against.
    t.set("iam_host", c.endpoint.host.as_str())?;
    t.set("iam_port", c.endpoint.port)?;
    t.set("user", c.endpoint.user.as_str())?;
    t.set("database", c.database.as_str())?;
    t.set("schema", c.schema.as_deref())?;
    t.set("timeout", c.endpoint.timeout.as_millis() as i64)?;
    t.set("iam", c.auth.is_iam())?;
    t.set("password", c.auth.password())?;
    t.set("region", c.endpoint.region.as_deref())?;
    if let Some(role) = &c.endpoint.assume_role {
        t.set("assume_role_arn", role.role_arn.as_str())?;
        t.set("role_session_name", role.session_name.as_str())?;
        t.set("sts_endpoint_url", role.sts_endpoint_url.as_deref())?;
    }
    t.set("ssl", c.tls.enabled)?;
    t.set("ssl_required", c.tls.required)?;
    t.set("ssl_verify", c.tls.verify)?;
    t.set(
        "ssl_version",
        match c.tls.version {
            crate::conf::TlsVersion::Tls12 => "tlsv1_2",
            crate::conf::TlsVersion::Tls13 => "tlsv1_3",
            crate::conf::TlsVersion::Any => "any",
        },
    )?;
    if let Some((cert, key)) = &c.tls.client_cert {
        t.set("cert", path(cert))?;
        t.set("key", path(key))?;
    }
    t.set("cafile", c.tls.cafile.as_deref().map(path))?;
    let trusted = lua.create_table()?;
    for source in &c.tls.trusted {
        trusted.raw_push(match source {
            crate::conf::CaSource::System => "system".to_owned(),
            crate::conf::CaSource::File(p) => path(p),
            crate::conf::CaSource::RdsBundle => "rds".to_owned(),
        })?;
    }
    t.set("trusted", trusted)?;
    let ca_source = match (&c.tls.cafile, c.auth.is_iam()) {
        (Some(_), _) => "pg_ssl_cafile",
        (None, true) => "lua_ssl_trusted_certificate and the rds ca bundle",
        (None, false) => "lua_ssl_trusted_certificate",
    };
    t.set("ca_source", ca_source)?;
    Ok(MultiValue::from_iter([Value::Table(t)]))
}

/// `path, err = core.rds_ca_bundle()`: the installed RDS CA bundle file.
fn lua_rds_ca_bundle(lua: &Lua, (): ()) -> LuaResult<MultiValue> {
    match crate::tls::rds_ca_bundle_path() {
        Ok(path) => Ok(MultiValue::from_iter([Value::String(lua.create_string(path.as_os_str().as_encoded_bytes())?)])),
        Err(e) => failure(lua, &e),
    }
}

/// `source, err = core.credentials_source(conf, mode)`
fn lua_credentials_source(lua: &Lua, (conf, mode): (Option<Table>, Option<mlua::LuaString>)) -> LuaResult<MultiValue> {
    let result = guarded(|| {
        let endpoint = source_endpoint(conf, mode)?;
        let region = source_region(&endpoint)?;
        credentials::get(endpoint.assume_role.as_ref(), region.as_deref(), endpoint.timeout).map(|id| id.source().to_owned())
    });
    match result {
        Ok(source) => Ok(MultiValue::from_iter([Value::String(lua.create_string(&source)?)])),
        Err(e) => failure(lua, &e),
    }
}

fn source_endpoint(conf: Option<Table>, mode: Option<mlua::LuaString>) -> CrateResult<Endpoint> {
    match conf {
        Some(conf) => Endpoint::parse(&LuaConf(conf), side(mode)?),
        None => Endpoint::parse(&std::collections::HashMap::new(), Side::ReadWrite),
    }
}

/// The region matters for STS (web identity, assume role); without one from
/// conf, host or environment, aws-config is left to find it.
fn source_region(endpoint: &Endpoint) -> CrateResult<Option<String>> {
    crate::region::for_credentials(endpoint)
}

/// `token = core.sign_token(params)`: signs with explicit credentials and
/// time; types were checked by api.lua.
fn lua_sign_token(lua: &Lua, p: Table) -> LuaResult<MultiValue> {
    let port: f64 = p.get("port")?;
    if !(1.0..=65535.0).contains(&port) || port.fract() != 0.0 {
        return failure(lua, &Error::config(format!("port must be an integer 1-65535, got {port}")));
    }
    let time = match service_tokens::signing_time(&p) {
        Ok(t) => t,
        Err(e) => return failure(lua, &e),
    };
    // Types were checked by api.lua; text that is not UTF-8 is a bad value.
    let mut fields: Vec<mlua::LuaString> = Vec::with_capacity(6);
    for name in ["host", "user", "region", "access_key_id", "secret_access_key"] {
        fields.push(p.get(name)?);
    }
    let session: Option<mlua::LuaString> = p.get("session_token")?;
    let mut text = Vec::with_capacity(6);
    for (field, name) in fields.iter().zip(["host", "user", "region", "access_key_id", "secret_access_key"]) {
        match field.to_str() {
            Ok(s) => text.push(s),
            Err(_) => return failure(lua, &Error::config(format!("{name} must be valid utf-8"))),
        }
    }
    let session_token = match &session {
        None => None,
        Some(t) => match t.to_str() {
            Ok(s) => Some(s),
            Err(_) => return failure(lua, &Error::config("session_token must be valid utf-8")),
        },
    };
    let token = signer::shared().sign(&SigningParams {
        kind: crate::signer::Kind::Rds,
        host: &text[0],
        port: port as u16,
        user: &text[1],
        region: &text[2],
        access_key_id: &text[3],
        secret_access_key: &text[4],
        session_token: session_token.as_deref(),
        time,
    });
    Ok(MultiValue::from_iter([Value::String(lua.create_string(&token)?)]))
}

/// `coroutine.isyieldable()` for the calling coroutine, as a C function (so
/// that the VM calls it in the caller's frame): nginx's Lua module replaces
/// the `coroutine` table and drops LuaJIT's own `isyieldable`, which api.lua
/// needs to tell a call inside `table.sort` or `require` (cannot yield)
/// from one in a handler (can). `lua_isyieldable` is looked up at run time,
/// since the LuaJIT build of the module is also loaded by PUC Lua 5.1, which
/// has none (then api.lua assumes a yieldable phase can yield).
fn isyieldable_function(lua: &Lua) -> LuaResult<Option<mlua::Function>> {
    type IsYieldable = unsafe extern "C-unwind" fn(*mut mlua::ffi::lua_State) -> std::ffi::c_int;
    static FOUND: once_cell::sync::OnceCell<Option<IsYieldable>> = once_cell::sync::OnceCell::new();
    let found = FOUND.get_or_init(|| {
        // SAFETY: dlsym only reads the loader's tables; a found symbol is
        // the Lua C API function of that name, of this signature.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"lua_isyieldable".as_ptr()) };
        (!sym.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, IsYieldable>(sym) })
    });
    if found.is_none() {
        return Ok(None);
    }
    unsafe extern "C-unwind" fn isyieldable(state: *mut mlua::ffi::lua_State) -> std::ffi::c_int {
        // SAFETY: `state` is the calling coroutine (the VM calls us with it);
        // the function pointer was found above (this function exists only then).
        unsafe {
            let yieldable = FOUND.get().copied().flatten().is_some_and(|f| f(state) != 0);
            mlua::ffi::lua_pushboolean(state, yieldable as std::ffi::c_int);
        }
        1
    }
    // SAFETY: a C function that pushes one boolean and touches nothing else.
    Ok(Some(unsafe { lua.create_c_function(isyieldable)? }))
}

/// A panic (a bug, here or in a dependency) is caught and answered as
/// `nil, "internal error ..."`; what reaches stderr (nginx's error log) is
/// this one line, never a backtrace, and never the panic's own text, which
/// could quote data.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            eprintln!("kong_rds_iam: internal error (a bug; please report it){place}");
        }));
    });
}

/// Keeps this library mapped for the life of the process; returns the path
/// it was loaded from.
///
/// `lua_close` (an nginx HUP reload, a test re-requiring the module) unloads
/// C modules with `dlclose`. Blocking-pool threads of a runtime may still be
/// winding down then; if the code under them were unmapped the process would
/// crash. Re-opening ourselves with `RTLD_NODELETE` makes the unload a no-op.
fn pin_library() -> Option<std::ffi::CString> {
    // SAFETY: dladdr only reads the loader's tables for an address inside
    // this library; dlopen of the path it reports bumps a reference count on
    // an object that is already loaded.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let addr = pin_library as *const () as *const libc::c_void;
        if libc::dladdr(addr, &mut info) != 0 && !info.dli_fname.is_null() {
            libc::dlopen(info.dli_fname, libc::RTLD_NOW | libc::RTLD_NODELETE | libc::RTLD_NOLOAD);
            return Some(std::ffi::CStr::from_ptr(info.dli_fname).to_owned());
        }
    }
    None
}
