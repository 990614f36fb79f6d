//! Configuration values as the caller handed them over, where they are read
//! from, and the coercions (kong.conf strings or parsed values into typed
//! ones) with their error messages, which name the key and never show a
//! secret.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// A configuration value as the caller handed it over, before validation.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    /// A boolean.
    Bool(bool),
    /// An integral number.
    Int(i64),
    /// A number with a fractional part.
    Float(f64),
    /// A string (kong.conf text or an already parsed string value).
    Str(String),
    /// An array of strings (e.g. `lua_ssl_trusted_certificate` in `kong.configuration`).
    List(Vec<String>),
    /// Any other value; the string names its type for error messages.
    Other(&'static str),
}

impl RawValue {
    /// A Lua number: integral values (all of them below 2^53 exactly
    /// representable) are [`RawValue::Int`].
    pub fn from_number(n: f64) -> RawValue {
        if n.fract() == 0.0 && n.abs() < 9.0e15 {
            RawValue::Int(n as i64)
        } else {
            RawValue::Float(n)
        }
    }
}

/// Where configuration values are read from: a Lua table in production,
/// a map in tests. `None` means the key is unset.
pub trait ConfSource {
    /// The value of `key`, or `None` when unset.
    fn get(&self, key: &str) -> Option<RawValue>;
}

impl ConfSource for HashMap<String, RawValue> {
    fn get(&self, key: &str) -> Option<RawValue> {
        HashMap::get(self, key).cloned()
    }
}

pub(super) fn is_empty_string(v: &RawValue) -> bool {
    matches!(v, RawValue::Str(s) if s.is_empty())
}

pub(super) fn boolean(key: &str, v: RawValue) -> Result<bool> {
    match &v {
        RawValue::Bool(b) => Ok(*b),
        RawValue::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" => Ok(true),
            "off" | "false" | "no" => Ok(false),
            _ => Err(Error::config(format!("{key} must be a boolean (on/off, true/false, yes/no), got {}", show(&v)))),
        },
        _ => Err(Error::config(format!("{key} must be a boolean (on/off, true/false, yes/no), got {}", show(&v)))),
    }
}

pub(super) fn integer(key: &str, v: RawValue, min: i64, max: i64) -> Result<i64> {
    let n = match &v {
        RawValue::Int(n) => Some(*n),
        RawValue::Str(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(Error::config(format!("{key} must be an integer {min}-{max}, got {}", show(&v)))),
    }
}

pub(super) fn non_empty_string(key: &str, v: RawValue) -> Result<String> {
    match v {
        RawValue::Str(s) if !s.trim().is_empty() => Ok(trimmed(s)),
        other => Err(Error::config(format!("{key} must be a non-empty string, got {}", show(&other)))),
    }
}

/// `s` without surrounding whitespace, reusing its buffer when it has none.
pub(super) fn trimmed(s: String) -> String {
    if s.trim().len() == s.len() {
        s
    } else {
        s.trim().to_owned()
    }
}

/// An optional string: empty means unset (as an empty kong.conf value does).
/// `secret` keeps the value out of the error message.
pub(super) fn optional_string(key: &str, v: RawValue, secret: bool) -> Result<Option<String>> {
    match v {
        RawValue::Str(s) if s.is_empty() => Ok(None),
        RawValue::Str(s) if secret => Ok(Some(s)),
        RawValue::Str(s) => Ok(Some(trimmed(s))),
        other if secret => Err(Error::config(format!("{key} must be a string, got a {}", type_name(&other)))),
        other => Err(Error::config(format!("{key} must be a string, got {}", show(&other)))),
    }
}

pub(super) fn type_name(v: &RawValue) -> &'static str {
    match v {
        RawValue::Bool(_) => "boolean",
        RawValue::Int(_) | RawValue::Float(_) => "number",
        RawValue::Str(_) => "string",
        RawValue::List(_) => "table",
        RawValue::Other(t) => t,
    }
}

/// A value for an error message: strings quoted and cut, others by value or type.
pub(super) fn show(v: &RawValue) -> String {
    match v {
        RawValue::Bool(b) => b.to_string(),
        RawValue::Int(n) => n.to_string(),
        RawValue::Float(f) => f.to_string(),
        RawValue::Str(s) => quote(s),
        RawValue::List(_) => "a table".to_owned(),
        RawValue::Other(t) => format!("a {t}"),
    }
}

pub(super) fn quote(s: &str) -> String {
    const MAX: usize = 64;
    let mut cut: String = s.chars().take(MAX).collect();
    if cut.len() < s.len() {
        cut.push_str("...");
    }
    format!("{cut:?}")
}
