//! The binding of [`crate::service_tokens`]: `core.elasticache_token`,
//! `core.dsql_token`, and `core.sign_service_token` (`rds.sign_token` with a
//! `kind`). api.lua checked the field types; values are read here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mlua::{Lua, MultiValue, Result as LuaResult, Table, Value};

use crate::error::{guarded, Error, Result};
use crate::service_tokens::{CacheRequest, DsqlRequest};
use crate::signer::{self, SigningParams};
use crate::token::Token;

/// Adds the functions to `core`.
pub fn register(lua: &Lua, core: &Table) -> LuaResult<()> {
    core.set("elasticache_token", lua.create_function(lua_elasticache_token)?)?;
    core.set("dsql_token", lua.create_function(lua_dsql_token)?)?;
    core.set("sign_service_token", lua.create_function(lua_sign_service_token)?)?;
    // The endpoint rules, defined once here, for explain.lua.
    core.set(
        "cache_endpoint",
        lua.create_function(|_, host: mlua::LuaString| {
            Ok(match crate::service_tokens::cache_endpoint(&host.to_string_lossy()) {
                None => (None, None),
                Some((memorydb, region)) => (Some(if memorydb { "memorydb" } else { "elasticache" }), region),
            })
        })?,
    )?;
    core.set("host_region", lua.create_function(|_, host: mlua::LuaString| Ok(crate::region::from_host(&host.to_string_lossy())))?)?;
    Ok(())
}

/// `token, err, expires_at = core.elasticache_token(req)`
fn lua_elasticache_token(lua: &Lua, req: Table) -> LuaResult<MultiValue> {
    let parsed = cache_request(&req);
    answer(lua, guarded(|| crate::service_tokens::cache_token(&parsed?)))
}

/// `token, err, expires_at = core.dsql_token(req)`
fn lua_dsql_token(lua: &Lua, req: Table) -> LuaResult<MultiValue> {
    let parsed = dsql_request(&req);
    answer(lua, guarded(|| crate::service_tokens::dsql_token(&parsed?)))
}

/// `token, err = core.sign_service_token(params)`: explicit credentials and time.
fn lua_sign_service_token(lua: &Lua, p: Table) -> LuaResult<MultiValue> {
    let signed = (|| -> Result<String> {
        let kind: String = text(&p, "kind")?.unwrap_or_default();
        let region = text(&p, "region")?.unwrap_or_default();
        if !crate::region::is_valid(&region) {
            return Err(Error::config(format!("region must be an AWS region like us-east-1, got {region:?}")));
        }
        let (kind, host, user) = match kind.as_str() {
            "elasticache" | "memorydb" => {
                let mut req = cache_request(&p)?;
                req.memorydb = kind == "memorydb";
                (req.kind(), req.cache_name, req.user)
            }
            "dsql" => {
                let req = dsql_request(&p)?;
                (req.kind(), req.host, String::new())
            }
            other => return Err(Error::config(format!("kind must be rds, elasticache, memorydb or dsql, got {other:?}"))),
        };
        let access_key_id = text(&p, "access_key_id")?.unwrap_or_default();
        let secret_access_key = text(&p, "secret_access_key")?.unwrap_or_default();
        let session_token = text(&p, "session_token")?;
        Ok(signer::sign(&SigningParams {
            kind,
            host: &host,
            port: 0,
            user: &user,
            region: &region,
            access_key_id: &access_key_id,
            secret_access_key: &secret_access_key,
            session_token: session_token.as_deref(),
            time: signing_time(&p)?,
        }))
    })();
    match signed {
        Ok(token) => Ok(MultiValue::from_iter([Value::String(lua.create_string(&token)?)])),
        Err(e) => Ok(MultiValue::from_iter([Value::Nil, Value::String(lua.create_string(e.message())?)])),
    }
}

fn cache_request(t: &Table) -> Result<CacheRequest> {
    let name = text(t, "cache_name")?.unwrap_or_default();
    let user = text(t, "user")?.unwrap_or_default();
    let mut req = CacheRequest::new(&name, &user)?;
    req.region = region(t)?;
    req.endpoint = text(t, "endpoint")?;
    req.serverless = t.get::<Option<bool>>("serverless").map_err(|_| Error::config("serverless must be a boolean".to_owned()))?;
    req.memorydb = match text(t, "service")?.as_deref() {
        None | Some("elasticache") => false,
        Some("memorydb") => true,
        Some(other) => return Err(Error::config(format!("service must be elasticache or memorydb, got {other:?}"))),
    };
    if let Some(ms) = timeout(t)? {
        req.timeout = ms;
    }
    Ok(req)
}

fn dsql_request(t: &Table) -> Result<DsqlRequest> {
    let host = text(t, "host")?.unwrap_or_default();
    let expires = match t.get::<Option<f64>>("expires_in").map_err(|_| Error::config("expires_in must be a number".to_owned()))? {
        None => None,
        Some(n) if n.fract() == 0.0 && n.abs() < 1e15 => Some(n as i64),
        Some(n) => return Err(Error::config(format!("expires_in must be an integer 1-604800, got {n}"))),
    };
    let mut req = DsqlRequest::new(&host, expires)?;
    req.user = text(t, "user")?;
    req.region = region(t)?;
    req.admin = t.get::<Option<bool>>("admin").map_err(|_| Error::config("admin must be a boolean".to_owned()))?;
    if let Some(ms) = timeout(t)? {
        req.timeout = ms;
    }
    Ok(req)
}

/// A string field (api.lua checked its type); text that is not UTF-8 is a bad value.
fn text(t: &Table, name: &str) -> Result<Option<String>> {
    match t.get::<Option<mlua::LuaString>>(name) {
        Ok(None) => Ok(None),
        Ok(Some(s)) => match s.to_str() {
            Ok(s) => Ok(Some(s.to_owned())),
            Err(_) => Err(Error::config(format!("{name} must be valid utf-8"))),
        },
        Err(_) => Err(Error::config(format!("{name} must be a string"))),
    }
}

fn region(t: &Table) -> Result<Option<String>> {
    match text(t, "region")? {
        Some(r) if !crate::region::is_valid(&r) => Err(Error::config(format!("region must be an AWS region like us-east-1, got {r:?}"))),
        other => Ok(other),
    }
}

fn timeout(t: &Table) -> Result<Option<Duration>> {
    match t.get::<Option<f64>>("timeout").map_err(|_| Error::config("timeout must be a number".to_owned()))? {
        None => Ok(None),
        Some(ms) if (1.0..=3_600_000.0).contains(&ms) => Ok(Some(Duration::from_millis(ms as u64))),
        Some(ms) => Err(Error::config(format!("timeout must be 1-3600000 ms, got {ms}"))),
    }
}

/// The `time` field of `sign_token` (default now), up to the year 9999 as
/// `X-Amz-Date` has four digits for the year.
pub(super) fn signing_time(t: &Table) -> Result<SystemTime> {
    match t.get::<Option<f64>>("time").map_err(|_| Error::config("time must be a number".to_owned()))? {
        None => Ok(SystemTime::now()),
        Some(s) if (0.0..253_402_300_800.0).contains(&s) => Ok(UNIX_EPOCH + Duration::from_secs(s as u64)),
        Some(s) => Err(Error::config(format!("time must be a unix timestamp from 0 to 253402300799, got {s}"))),
    }
}

fn answer(lua: &Lua, issued: Result<std::sync::Arc<Token>>) -> LuaResult<MultiValue> {
    match issued {
        Ok(t) => Ok(MultiValue::from_iter([
            Value::String(lua.create_string(&t.token)?),
            Value::Nil,
            Value::Number(crate::clock::local_unix_seconds(t.expires_at) as f64),
        ])),
        Err(e) => Ok(MultiValue::from_iter([Value::Nil, Value::String(lua.create_string(e.message())?)])),
    }
}
