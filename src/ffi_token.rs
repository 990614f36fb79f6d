//! `token()` over the LuaJIT FFI: the same work as `core.token`, without the
//! Lua C API in between.
//!
//! Part of the Lua binding, but plain Rust (it knows the C ABI, not mlua),
//! so it is built and unit-tested with or without a Lua feature.
//!
//! Under LuaJIT, `lua/ffi_token.lua` calls [`kong_rds_iam_token`] with the conf
//! values api.lua read, as plain C data: strings are pointers into the Lua
//! strings (no copy, no registry reference), numbers are doubles. The token
//! comes back in a caller-owned buffer. A call through the FFI costs a few
//! nanoseconds where an mlua callback costs around a microsecond of argument
//! conversion, protection and reference bookkeeping; the token path is where
//! that shows. PUC Lua builds (no FFI) keep using `core.token`.
//!
//! Only api.lua's helper calls this, with its own buffers; even so every
//! pointer and length is checked, and no panic crosses the C boundary.

use std::borrow::Cow;
use std::ffi::c_int;

use crate::conf::{key, ConfSource, Endpoint, RawValue, Side};
use crate::error::{guarded, Error};
use crate::token::{self, Issued};

/// One conf value (the `kong_rds_iam_value` C struct in `ffi_token.lua`).
#[repr(C)]
pub struct FfiValue {
    /// One of the `KIND_*` constants.
    kind: c_int,
    /// The number, or 1/0 for a boolean.
    number: f64,
    /// The string's bytes (`KIND_STRING` only).
    ptr: *const u8,
    /// The string's length in bytes.
    len: usize,
}

const KIND_NIL: c_int = 0;
const KIND_BOOLEAN: c_int = 1;
const KIND_NUMBER: c_int = 2;
const KIND_STRING: c_int = 3;
const KIND_TABLE: c_int = 4;
const KIND_FUNCTION: c_int = 5;
const KIND_THREAD: c_int = 6;
const KIND_USERDATA: c_int = 7;

/// What a call produced, besides the bytes written to `out`.
#[repr(C)]
pub struct FfiResult {
    /// Bytes of token (or error message) the call has; when more than the
    /// buffer holds, nothing was written and the caller retries with this many.
    len: usize,
    /// The token's expiry (Unix seconds).
    expires_at: f64,
    /// Until when api.lua's memo may serve it (Unix seconds).
    valid_until: f64,
}

/// The token did not fit in `out`: `result.len` says how much is needed.
const RESULT_TOO_SMALL: c_int = -1;
/// A runtime failure: `out` holds the message.
const RESULT_ERROR: c_int = 0;
/// `out` holds the token.
const RESULT_TOKEN: c_int = 1;
/// Credentials must be fetched first: `out` holds `"<job> <wait_ms>"`, the
/// fetch to wait for (see `crate::jobs`); then call again.
const RESULT_FETCHING: c_int = 2;

/// Added to `side`: the caller can wait for a fetch job instead of blocking.
const SIDE_DEFER: c_int = 2;

/// Issues the token for `values` (the conf's values for
/// [`key::token_names`] of `side`: 0 read-write, 1 read-only, in order;
/// plus [`SIDE_DEFER`] when the caller can wait for a credential fetch).
///
/// # Safety
///
/// `values` must point to `n` initialized [`FfiValue`]s whose string
/// pointers are valid for their lengths, `out` to `cap` writable bytes and
/// `result` to a writable [`FfiResult`]; all for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn kong_rds_iam_token(
    side: c_int,
    values: *const FfiValue,
    n: usize,
    out: *mut u8,
    cap: usize,
    result: *mut FfiResult,
) -> c_int {
    if values.is_null() || out.is_null() || result.is_null() {
        return RESULT_ERROR;
    }
    let defer = side & SIDE_DEFER != 0;
    let side = if side & 1 == 1 { Side::ReadOnly } else { Side::ReadWrite };
    // SAFETY: the caller's contract (non-null was checked above).
    let (values, out, result) =
        unsafe { (std::slice::from_raw_parts(values, n), std::slice::from_raw_parts_mut(out, cap), &mut *result) };
    if values.len() != key::token_names(side).len() {
        return write(out, result, b"internal error: token values do not match the token keys", RESULT_ERROR);
    }
    let issued = guarded(|| {
        let endpoint: Cow<'_, Endpoint> = Cow::Owned(Endpoint::parse(&FfiValues { side, values }, side)?);
        let timeout = endpoint.timeout;
        if defer {
            token::issue_or_fetch(endpoint).map(|i| (i, timeout))
        } else {
            token::issue(endpoint).map(|t| (Issued::Token(t), timeout))
        }
    });
    match issued {
        Ok((Issued::Fetching(job), timeout)) => {
            result.expires_at = 0.0;
            result.valid_until = 0.0;
            write(out, result, format!("{job} {}", timeout.as_millis()).as_bytes(), RESULT_FETCHING)
        }
        Ok((Issued::Token(t), _)) => {
            result.expires_at = token::unix_seconds(t.expires_at) as f64;
            result.valid_until = token::unix_seconds(t.valid_until) as f64;
            write(out, result, t.token.as_bytes(), RESULT_TOKEN)
        }
        Err(e) => error(out, result, &e),
    }
}

fn error(out: &mut [u8], result: &mut FfiResult, e: &Error) -> c_int {
    result.expires_at = 0.0;
    result.valid_until = 0.0;
    write(out, result, e.message().as_bytes(), RESULT_ERROR)
}

/// Copies `bytes` to `out` if they fit; `result.len` says how many there are.
fn write(out: &mut [u8], result: &mut FfiResult, bytes: &[u8], status: c_int) -> c_int {
    result.len = bytes.len();
    match out.get_mut(..bytes.len()) {
        Some(dest) => {
            dest.copy_from_slice(bytes);
            status
        }
        None => RESULT_TOO_SMALL,
    }
}

/// The values as a [`ConfSource`]: `values[i]` is the value of `key::token_names(side)[i]`.
struct FfiValues<'a> {
    side: Side,
    values: &'a [FfiValue],
}

impl ConfSource for FfiValues<'_> {
    fn get(&self, key: &str) -> Option<RawValue> {
        let i = key::token_index(self.side, key)?;
        let v = self.values.get(i)?;
        Some(match v.kind {
            KIND_NIL => return None,
            KIND_BOOLEAN => RawValue::Bool(v.number != 0.0),
            KIND_NUMBER => RawValue::from_number(v.number),
            KIND_STRING if v.ptr.is_null() => RawValue::Other("string"),
            KIND_STRING => {
                // SAFETY: the caller's contract: `ptr` is valid for `len` bytes.
                let bytes = unsafe { std::slice::from_raw_parts(v.ptr, v.len) };
                match std::str::from_utf8(bytes) {
                    Ok(s) => RawValue::Str(s.to_owned()),
                    Err(_) => RawValue::Other("non-utf-8 string"),
                }
            }
            KIND_TABLE => RawValue::Other("table"),
            KIND_FUNCTION => RawValue::Other("function"),
            KIND_THREAD => RawValue::Other("thread"),
            KIND_USERDATA => RawValue::Other("userdata"),
            _ => RawValue::Other("value"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> FfiValue {
        FfiValue { kind: KIND_STRING, number: 0.0, ptr: s.as_ptr(), len: s.len() }
    }

    fn nil() -> FfiValue {
        FfiValue { kind: KIND_NIL, number: 0.0, ptr: std::ptr::null(), len: 0 }
    }

    #[test]
    fn values_read_by_position_with_their_lua_types() {
        let names = key::token_names(Side::ReadWrite);
        let mut values: Vec<FfiValue> = names.iter().map(|_| nil()).collect();
        values[0] = string("db.example");
        values[1] = FfiValue { kind: KIND_NUMBER, number: 6432.0, ptr: std::ptr::null(), len: 0 };
        values[2] = FfiValue { kind: KIND_BOOLEAN, number: 1.0, ptr: std::ptr::null(), len: 0 };
        values[3] = FfiValue { kind: KIND_STRING, number: 0.0, ptr: b"\xff".as_ptr(), len: 1 };
        let src = FfiValues { side: Side::ReadWrite, values: &values };
        assert_eq!(src.get("pg_host"), Some(RawValue::Str("db.example".into())));
        assert_eq!(src.get("pg_port"), Some(RawValue::Int(6432)));
        assert_eq!(src.get("pg_user"), Some(RawValue::Bool(true)));
        assert_eq!(src.get(names[3]), Some(RawValue::Other("non-utf-8 string")));
        assert_eq!(src.get(names[4]), None);
        assert_eq!(src.get("pg_password"), None);
        let e = Endpoint::parse(&src, Side::ReadWrite).unwrap_err();
        assert_eq!(e.message(), "pg_user must be a non-empty string, got true");
    }

    #[test]
    fn errors_and_short_buffers() {
        let names = key::token_names(Side::ReadWrite);
        let mut values: Vec<FfiValue> = names.iter().map(|_| nil()).collect();
        values[1] = string("abc");
        let mut out = [0u8; 200];
        let mut result = FfiResult { len: 0, expires_at: 0.0, valid_until: 0.0 };
        let status = unsafe { kong_rds_iam_token(0, values.as_ptr(), values.len(), out.as_mut_ptr(), out.len(), &mut result) };
        assert_eq!(status, RESULT_ERROR);
        assert_eq!(&out[..result.len], b"pg_port must be an integer 1-65535, got \"abc\"");
        let status = unsafe { kong_rds_iam_token(0, values.as_ptr(), values.len(), out.as_mut_ptr(), 4, &mut result) };
        assert_eq!(status, RESULT_TOO_SMALL);
        assert_eq!(result.len, 45);
        let status = unsafe { kong_rds_iam_token(0, values.as_ptr(), 2, out.as_mut_ptr(), out.len(), &mut result) };
        assert_eq!(status, RESULT_ERROR);
        assert!(std::str::from_utf8(&out[..result.len]).unwrap().starts_with("internal error"));
    }
}
