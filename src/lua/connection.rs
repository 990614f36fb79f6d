//! The connection object Lua sees, pgmoon-compatible:
//! `res, err, partial, num_queries, sqlstate = conn:query(sql)`.

use std::time::Duration;

use mlua::{Lua, LuaString, MultiValue, Result as LuaResult, UserData, UserDataMethods, Value};

use crate::connection::Handle;
use crate::pg::value::{self, Cell};
use crate::pg::{QueryOutput, Statement};

/// `conn` in Lua.
pub struct LuaConnection(pub Handle);

/// The NULL light userdata: `rds.null`, equal to `ngx.null` and `cjson.null`.
pub fn null() -> Value {
    Value::LightUserData(mlua::LightUserData(std::ptr::null_mut()))
}

impl UserData for LuaConnection {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method_mut("query", |lua, this, sql: LuaString| query(lua, &mut this.0, &sql.as_bytes()));
        methods.add_method_mut("close", |lua, this, ()| match this.0.close() {
            Ok(()) => Ok(MultiValue::from_iter([Value::Boolean(true)])),
            Err(e) => super::failure(lua, &e),
        });
        methods.add_method_mut("disconnect", |lua, this, ()| match this.0.close() {
            Ok(()) => Ok(MultiValue::from_iter([Value::Boolean(true)])),
            Err(e) => super::failure(lua, &e),
        });
        methods.add_method_mut("settimeout", |_, this, ms: f64| {
            if !(ms >= 1.0 && ms <= 3_600_000.0) {
                return Err(mlua::Error::runtime("bad argument #1 to 'settimeout' (milliseconds 1-3600000 expected)"));
            }
            this.0.set_timeout(Duration::from_millis(ms as u64));
            Ok(true)
        });
        methods.add_method("escape_literal", |lua, _, v: Value| escape_literal(lua, v));
        methods.add_method("escape_identifier", |lua, _, v: Value| {
            let text = match &v {
                Value::String(s) => s.as_bytes().to_vec(),
                other => other.to_string()?.into_bytes(),
            };
            lua.create_string(quoted(b'"', &text))
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

/// As pgmoon: numbers bare, booleans TRUE/FALSE, nil/null NULL, strings quoted.
fn escape_literal(lua: &Lua, v: Value) -> LuaResult<LuaString> {
    match v {
        Value::Nil => lua.create_string("NULL"),
        Value::LightUserData(ud) if ud.0.is_null() => lua.create_string("NULL"),
        Value::Boolean(b) => lua.create_string(if b { "TRUE" } else { "FALSE" }),
        Value::Integer(_) | Value::Number(_) => lua.create_string(v.to_string()?),
        Value::String(s) => lua.create_string(quoted(b'\'', &s.as_bytes())),
        other => Err(mlua::Error::runtime(format!("bad argument #1 to 'escape_literal' (cannot escape a {})", other.type_name()))),
    }
}

/// `text` between `quote`s, each `quote` inside doubled; bytes pass through.
fn quoted(quote: u8, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    out.push(quote);
    for &b in text {
        if b == quote {
            out.push(quote);
        }
        out.push(b);
    }
    out.push(quote);
    out
}

fn query(lua: &Lua, handle: &mut Handle, sql: &[u8]) -> LuaResult<MultiValue> {
    match handle.query(sql) {
        Ok(out) => {
            let n = out.len() as i64;
            Ok(MultiValue::from_iter([results(lua, &out)?, Value::Integer(n)]))
        }
        Err(failure) => {
            let n = failure.partial.len() as i64;
            let partial = if failure.partial.is_empty() { Value::Nil } else { results(lua, &failure.partial)? };
            let sqlstate = match failure.error.sqlstate() {
                Some(s) => Value::String(lua.create_string(s)?),
                None => Value::Nil,
            };
            Ok(MultiValue::from_iter([
                Value::Nil,
                Value::String(lua.create_string(failure.error.message())?),
                partial,
                Value::Integer(n),
                sqlstate,
            ]))
        }
    }
}

/// One result as pgmoon shapes it; several statements give an array of them.
fn results(lua: &Lua, out: &QueryOutput) -> LuaResult<Value> {
    if out.len() == 1 {
        return statement(lua, &out[0]);
    }
    let all = lua.create_table_with_capacity(out.len(), 0)?;
    for (i, s) in out.iter().enumerate() {
        all.raw_set(i + 1, statement(lua, s)?)?;
    }
    Ok(Value::Table(all))
}

fn statement(lua: &Lua, s: &Statement) -> LuaResult<Value> {
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
                Some(raw) => cell(lua, value::decode(column.type_oid, raw))?,
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

