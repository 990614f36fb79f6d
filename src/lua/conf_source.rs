//! Reads configuration keys from a Lua table (honouring `__index`, since
//! `kong.configuration` is a read-only proxy table).

use mlua::{Table, Value};

use crate::conf::{key, ConfSource, RawValue, Side};

/// A Lua table seen as a [`ConfSource`].
pub struct LuaConf(pub Table);

impl ConfSource for LuaConf {
    fn get(&self, key: &str) -> Option<RawValue> {
        match self.0.get::<Value>(key) {
            Ok(value) => raw_value(value),
            Err(_) => Some(RawValue::Other("value whose __index failed")),
        }
    }
}

/// Values read by Lua (api.lua) in the order of `names`, one per name, as a
/// plain array: the Rust side reads them by index, which costs far less than
/// a keyed read of the conf table. (Lua reads the conf once anyway, for its
/// memo, and handles `__index` proxies natively.)
pub struct LuaValues {
    /// Whose names the values are ([`key::token_names`] of this side).
    pub side: Side,
    /// `values[i + 1]` is the value of `key::token_names(side)[i]`.
    pub values: Table,
}

impl crate::ffi::Positional for LuaValues {
    fn len(&self) -> usize {
        key::token_names(self.side).len()
    }

    fn value(&self, i: usize) -> Option<RawValue> {
        match self.values.raw_get::<Value>(i + 1) {
            Ok(value) => raw_value(value),
            Err(_) => Some(RawValue::Other("value")),
        }
    }
}

/// `None` for nil and the null sentinel (`ngx.null`, `cjson.null`).
pub fn raw_value(value: Value) -> Option<RawValue> {
    Some(match value {
        Value::Nil => return None,
        Value::LightUserData(ud) if ud.0.is_null() => return None,
        Value::Boolean(b) => RawValue::Bool(b),
        Value::Integer(i) => RawValue::Int(i),
        Value::Number(n) => RawValue::from_number(n),
        Value::String(s) => match s.to_str() {
            Ok(s) => RawValue::Str(s.to_owned()),
            Err(_) => RawValue::Other("non-utf-8 string"),
        },
        Value::Table(t) => match string_array(&t) {
            Some(list) => RawValue::List(list),
            None => RawValue::Other("table"),
        },
        Value::Function(_) => RawValue::Other("function"),
        Value::Thread(_) => RawValue::Other("thread"),
        Value::UserData(_) | Value::LightUserData(_) => RawValue::Other("userdata"),
        _ => RawValue::Other("value"),
    })
}

/// The table as an array of strings, if it is one.
fn string_array(t: &Table) -> Option<Vec<String>> {
    let len = t.raw_len();
    let mut out = Vec::with_capacity(len);
    for i in 1..=len {
        match t.raw_get::<Value>(i).ok()? {
            Value::String(s) => out.push(s.to_str().ok()?.to_owned()),
            _ => return None,
        }
    }
    Some(out)
}
