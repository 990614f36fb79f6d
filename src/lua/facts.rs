//! `core.facts(conf, mode)`: what `rds.explain` (lua/kong_rds_iam/explain.lua)
//! builds its report from. Never a secret: the access key id is masked, and
//! neither the secret key, the session token nor a token is in it.

use mlua::{Lua, MultiValue, Result as LuaResult, Table, Value};

use super::conf_source::LuaConf;
use crate::conf::{key, ConfSource, ConnectConf};
use crate::error::guarded;
use crate::{credentials, env_snapshot, region, token};

/// Adds `core.facts` to `core`.
pub fn register(lua: &Lua, core: &Table) -> LuaResult<()> {
    core.set("facts", lua.create_function(lua_facts)?)
}

/// `facts, err = core.facts(conf, mode)`
fn lua_facts(lua: &Lua, (conf, mode): (Table, Option<mlua::LuaString>)) -> LuaResult<MultiValue> {
    let src = LuaConf(conf);
    let parsed = guarded(|| {
        let side = super::side(mode)?;
        let c = ConnectConf::parse(&src, side)?;
        let iam_host_set = [key::IAM_HOST.name(side), key::IAM_HOST.rw]
            .iter()
            .any(|name| matches!(src.get(name), Some(crate::conf::RawValue::Str(s)) if !s.trim().is_empty()));
        Ok((side, c, iam_host_set))
    });
    let (side, c, iam_host_set) = match parsed {
        Ok(p) => p,
        Err(e) => return super::failure(lua, &e),
    };
    let t = lua.create_table()?;
    let e = &c.endpoint;
    t.set("mode", side.as_str())?;
    t.set("iam", c.auth.is_iam())?;
    t.set("host", c.address.host.as_str())?;
    t.set("port", c.address.port)?;
    t.set("signed_host", e.host.as_str())?;
    t.set("signed_port", e.port)?;
    t.set("signed_host_from", if iam_host_set { "pg_iam_auth_host" } else { "pg_host" })?;
    t.set("user", e.user.as_str())?;
    t.set(
        "service",
        match e.service {
            crate::conf::Service::Rds => "rds",
            crate::conf::Service::Dsql => "dsql",
        },
    )?;
    t.set("host_region", region::from_host(&e.host))?;
    let (found, from) = region_and_origin(&c);
    t.set("region", found)?;
    t.set("region_from", from)?;
    let region_for_credentials = region::for_credentials(e).ok().flatten();
    match guarded(|| credentials::get(e.assume_role.as_ref(), region_for_credentials.as_deref(), e.timeout)) {
        Ok(id) => {
            let creds = lua.create_table()?;
            creds.set("source", id.source())?;
            creds.set("access_key_id", mask(id.access_key_id()))?;
            if let Some(expiry) = id.expiry() {
                creds.set("expires_at", crate::clock::local_unix_seconds(expiry))?;
                creds.set("expires_in", token::unix_seconds(expiry) - token::unix_seconds(crate::clock::now()))?;
            }
            t.set("credentials", creds)?;
        }
        Err(err) => t.set("credentials_error", err.message())?,
    }
    if let Some((offset, source)) = crate::clock::offset() {
        t.set("clock_offset", offset)?;
        t.set("clock_source", source)?;
    }
    Ok(MultiValue::from_iter([Value::Table(t)]))
}

/// The region a token is signed for and the key or place it came from.
fn region_and_origin(c: &ConnectConf) -> (Option<String>, Option<&'static str>) {
    let e = &c.endpoint;
    if let Some(r) = &e.region {
        return (Some(r.clone()), Some("pg_iam_auth_region"));
    }
    if let Some(r) = region::from_host(&e.host) {
        return (Some(r), Some("host"));
    }
    let snapshot = env_snapshot::get();
    for name in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        if let Some(r) = snapshot.var(name) {
            return (Some(r.to_owned()), Some(name));
        }
    }
    match region::configured(e.timeout) {
        Ok(Some(r)) => (Some(r), Some("profile")),
        _ => (None, None),
    }
}

/// All but the last 4 characters as `*`.
fn mask(access_key_id: &str) -> String {
    let n = access_key_id.chars().count();
    access_key_id.chars().enumerate().map(|(i, c)| if i + 4 < n { '*' } else { c }).collect()
}
