//! `token()`'s one entry, and its door for the LuaJIT FFI.
//!
//! Both doors, `core.token` (mlua, PUC Lua) and `kong_rds_iam_token` (the
//! FFI, LuaJIT), hand [`issue`] the same positional values: the conf's
//! values for [`key::token_names`] of a side, read once by api.lua. The
//! cross-language contract (value kinds, side and result numbers, the C
//! structs) is defined once, in [`contract`], handed to Lua as
//! `core.contract`, and checked against LuaJIT's view by a spec.
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
use std::time::Duration;

use crate::conf::{key, ConfSource, Endpoint, RawValue, Side};
use crate::error::{guarded, Error, Result};
use crate::token::{self, Issued};

/// The numbers and C declarations both languages use, defined once.
pub mod contract {
    use std::ffi::c_int;

    /// A value's Lua type, as `FfiValue::kind` carries it.
    pub const KIND_NIL: c_int = 0;
    /// `boolean` (`number` is 1 or 0).
    pub const KIND_BOOLEAN: c_int = 1;
    /// `number`.
    pub const KIND_NUMBER: c_int = 2;
    /// `string` (`ptr`, `len`).
    pub const KIND_STRING: c_int = 3;
    /// `table`.
    pub const KIND_TABLE: c_int = 4;
    /// `function`.
    pub const KIND_FUNCTION: c_int = 5;
    /// `thread`.
    pub const KIND_THREAD: c_int = 6;
    /// `userdata` (other than the NULL sentinel, which is nil).
    pub const KIND_USERDATA: c_int = 7;
    /// Any other value.
    pub const KIND_OTHER: c_int = 8;

    /// The kinds by Lua type name, for `core.contract.kinds`.
    pub const KINDS: &[(&str, c_int)] = &[
        ("nil", KIND_NIL),
        ("boolean", KIND_BOOLEAN),
        ("number", KIND_NUMBER),
        ("string", KIND_STRING),
        ("table", KIND_TABLE),
        ("function", KIND_FUNCTION),
        ("thread", KIND_THREAD),
        ("userdata", KIND_USERDATA),
        ("other", KIND_OTHER),
    ];

    /// The read-write side (`pg_*`).
    pub const SIDE_RW: c_int = 0;
    /// The read-only side (`pg_ro_*`, falling back to `pg_*`).
    pub const SIDE_RO: c_int = 1;
    /// Added to a side: the caller can wait for a fetch job instead of blocking.
    pub const SIDE_DEFER: c_int = 2;

    /// The token did not fit in `out`: `result.len` says how much is needed.
    pub const RESULT_TOO_SMALL: c_int = -1;
    /// A runtime failure: `out` holds the message.
    pub const RESULT_ERROR: c_int = 0;
    /// `out` holds the token.
    pub const RESULT_TOKEN: c_int = 1;
    /// Credentials must be fetched first: `out` holds `"<job> <wait_ms>"`.
    pub const RESULT_FETCHING: c_int = 2;

    /// The connection door (src/lua/door.rs): the number is no connection
    /// (any more), or the call panicked; api.lua closes the connection.
    pub const DOOR_GONE: c_int = 0;
    /// Send `io.out` (query start: `io.number` is the exchange timeout in
    /// ms), then receive and feed.
    pub const DOOR_SEND: c_int = 1;
    /// The query goes on: send `io.out` if any, receive, feed again.
    pub const DOOR_MORE: c_int = 2;
    /// As [`DOOR_MORE`], and rows wait to become tables: call `piped_rows`.
    pub const DOOR_ROWS: c_int = 3;
    /// The query is over (or was refused): `piped_finish` gives its values.
    pub const DOOR_DONE: c_int = 4;
    /// The query is over with one small result of plain values: `io.cells`
    /// holds the `io.ncols` column names, then the cells row by row;
    /// `io.number` is the affected row count, or -1.
    pub const DOOR_RESULT: c_int = 5;
    /// Kept alive: its cosocket goes to nginx's pool for `io.number` ms.
    /// `io.ncells` cells in pairs: the idle connections it pushed out of the
    /// pool, each the nginx pool of its cosocket (number: its pipe) and the
    /// bytes to send there before closing that cosocket.
    pub const DOOR_POOLED: c_int = 6;
    /// Closed instead (not an error): send `io.out`, close the cosocket.
    pub const DOOR_CLOSED: c_int = 7;
    /// Refused with `io.msg`: send `io.out`, close the cosocket; or, when
    /// `io.number` is 1, the connection is busy and nothing changed.
    pub const DOOR_REFUSED: c_int = 8;
    /// Checkout: an idle pooled connection was taken for the conf and
    /// waits for its object (`kong_rds_iam_adopt`, else `piped_taken`):
    /// `io.pipe` is its pipe, `io.reused` how often it was handed out
    /// before, `io.number` the exchange timeout in ms.
    pub const DOOR_TAKEN: c_int = 9;
    /// Checkout: none is idle; open one.
    pub const DOOR_NONE: c_int = 10;
    /// Checkout: `pg_cosocket` is off for the conf.
    pub const DOOR_OFF: c_int = 11;
    /// The kept object has the taken connection: `io.conn` is its new number.
    pub const DOOR_ADOPTED: c_int = 12;
    /// The connection types rows as pgmoon does from now on.
    pub const DOOR_TYPED: c_int = 13;

    /// The door's statuses by name, for `core.contract.door`.
    pub const DOOR: &[(&str, c_int)] = &[
        ("gone", DOOR_GONE),
        ("send", DOOR_SEND),
        ("more", DOOR_MORE),
        ("rows", DOOR_ROWS),
        ("done", DOOR_DONE),
        ("result", DOOR_RESULT),
        ("pooled", DOOR_POOLED),
        ("closed", DOOR_CLOSED),
        ("refused", DOOR_REFUSED),
        ("taken", DOOR_TAKEN),
        ("none", DOOR_NONE),
        ("off", DOOR_OFF),
        ("adopted", DOOR_ADOPTED),
        ("typed", DOOR_TYPED),
    ];

    /// The C declarations of this ABI, for `ffi.cdef`.
    pub const CDEF: &str = "\
typedef struct { int kind; double number; const char *ptr; size_t len; } kong_rds_iam_value_v1;
typedef struct { size_t len; double expires_at; double valid_until; } kong_rds_iam_result_v1;
int kong_rds_iam_token(int side, const kong_rds_iam_value_v1 *values, size_t n,
                       char *out, size_t cap, kong_rds_iam_result_v1 *result);
extern const int32_t kong_rds_iam_token_epoch;
extern const int32_t kong_rds_iam_open_handles;
extern const int32_t kong_rds_iam_warnings_pending;
typedef struct { const char *out; size_t out_len; const char *msg; size_t msg_len; double number;
                 const kong_rds_iam_value_v1 *cells; size_t ncells; size_t ncols;
                 double conn; double pipe; double reused; } kong_rds_iam_io_v1;
int kong_rds_iam_take(uint64_t conf, kong_rds_iam_io_v1 *io);
int kong_rds_iam_adopt(uint64_t conn, kong_rds_iam_io_v1 *io);
int kong_rds_iam_query_start(uint64_t conn, const char *sql, size_t len, kong_rds_iam_io_v1 *io);
int kong_rds_iam_query_feed(uint64_t conn, const char *data, size_t len, int closed, kong_rds_iam_io_v1 *io);
int kong_rds_iam_keepalive(uint64_t conn, double max_idle_ms, double pool_size, kong_rds_iam_io_v1 *io);
int kong_rds_iam_pgmoon_types(uint64_t conn, kong_rds_iam_io_v1 *io);
";
}

use contract::*;

/// The values of [`key::token_names`] of a side, by position.
pub trait Positional {
    /// The value at `i`, `None` when unset.
    fn value(&self, i: usize) -> Option<RawValue>;
    /// How many values there are.
    fn len(&self) -> usize;

    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The one entry behind both doors: parses the endpoint from the positional
/// `values` for `side` (a [`contract`] side number, maybe plus
/// [`SIDE_DEFER`]) and issues its token, or, deferring, names the credential
/// fetch to wait for. The timeout is the conf's `pg_timeout`, for that wait.
pub fn issue(side: c_int, values: &dyn Positional) -> Result<(Issued, Duration)> {
    let defer = side & SIDE_DEFER != 0;
    let side = if side & SIDE_RO != 0 { Side::ReadOnly } else { Side::ReadWrite };
    if values.len() != key::token_names(side).len() {
        return Err(Error::new(crate::error::ErrorKind::Runtime, "internal error: token values do not match the token keys"));
    }
    let endpoint: Cow<'_, Endpoint> = Cow::Owned(Endpoint::parse(&ByPosition { side, values }, side)?);
    let timeout = endpoint.timeout;
    if defer {
        token::issue_or_fetch(endpoint).map(|i| (i, timeout))
    } else {
        token::issue(endpoint).map(|t| (Issued::Token(t), timeout))
    }
}

/// Positional values seen as a [`ConfSource`] by name.
struct ByPosition<'a> {
    side: Side,
    values: &'a dyn Positional,
}

impl ConfSource for ByPosition<'_> {
    fn get(&self, name: &str) -> Option<RawValue> {
        // A name outside the list reads as unset; conf's tests hold the
        // parser to the list.
        self.values.value(key::token_index(self.side, name)?)
    }
}

/// `[sizeof value, offsetof kind, number, ptr, len, sizeof result, sizeof
/// io, offsetof out, out_len, msg, msg_len, number, cells, ncells, ncols,
/// conn, pipe, reused]`,
/// as Rust lays the structs out: `core.contract.layout`, compared with
/// LuaJIT's `ffi.sizeof`/`ffi.offsetof` of [`contract::CDEF`] by a spec.
pub fn layout() -> [usize; 18] {
    use std::mem::{offset_of, size_of};
    [
        size_of::<FfiValue>(),
        offset_of!(FfiValue, kind),
        offset_of!(FfiValue, number),
        offset_of!(FfiValue, ptr),
        offset_of!(FfiValue, len),
        size_of::<FfiResult>(),
        size_of::<FfiIo>(),
        offset_of!(FfiIo, out),
        offset_of!(FfiIo, out_len),
        offset_of!(FfiIo, msg),
        offset_of!(FfiIo, msg_len),
        offset_of!(FfiIo, number),
        offset_of!(FfiIo, cells),
        offset_of!(FfiIo, ncells),
        offset_of!(FfiIo, ncols),
        offset_of!(FfiIo, conn),
        offset_of!(FfiIo, pipe),
        offset_of!(FfiIo, reused),
    ]
}

/// Numbers for live objects, as the connection door names connections: a
/// number is an index and the generation of its slot, so a number whose
/// object is gone (and whose slot was reused) finds nothing.
pub struct Numbers<T> {
    slots: Vec<(u64, Option<T>)>,
    free: Vec<usize>,
}

impl<T> Default for Numbers<T> {
    fn default() -> Self {
        Numbers { slots: Vec::new(), free: Vec::new() }
    }
}

/// Index bits of a number; above them, the slot's generation.
const INDEX_BITS: u32 = 24;
/// Generations stay below 2^29, so a number is below 2^53 (a Lua number holds it).
const MAX_GENERATION: u64 = (1 << 29) - 1;

impl<T: Copy> Numbers<T> {
    /// `value`'s number (never 0), or 0 when all 2^24 slots are taken.
    pub fn insert(&mut self, value: T) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None if self.slots.len() < 1 << INDEX_BITS => {
                self.slots.push((0, None));
                self.slots.len() - 1
            }
            None => return 0,
        };
        let slot = &mut self.slots[index];
        slot.0 = slot.0 % MAX_GENERATION + 1;
        slot.1 = Some(value);
        slot.0 << INDEX_BITS | index as u64
    }

    /// The value numbered `id`, if it was not removed.
    pub fn get(&self, id: u64) -> Option<T> {
        match self.slots.get((id & ((1 << INDEX_BITS) - 1)) as usize) {
            Some((generation, value)) if *generation == id >> INDEX_BITS => *value,
            _ => None,
        }
    }

    /// Forgets the value numbered `id` (a number that is not live: nothing).
    pub fn remove(&mut self, id: u64) {
        let index = (id & ((1 << INDEX_BITS) - 1)) as usize;
        if let Some(slot) = self.slots.get_mut(index).filter(|s| s.1.is_some() && s.0 == id >> INDEX_BITS) {
            slot.1 = None;
            self.free.push(index);
        }
    }
}

/// What a connection door call hands back besides its status (the
/// `kong_rds_iam_io_v1` C struct of [`contract::CDEF`]). The pointers are
/// into the connection's own buffers, valid until its next call.
#[repr(C)]
pub struct FfiIo {
    /// Bytes to send over the cosocket.
    pub out: *const u8,
    /// Their length.
    pub out_len: usize,
    /// An error message.
    pub msg: *const u8,
    /// Its length.
    pub msg_len: usize,
    /// A timeout, an idle time or a row count, as the status says.
    pub number: f64,
    /// A small result's names and cells ([`contract::DOOR_RESULT`]).
    pub cells: *const FfiValue,
    /// How many there are.
    pub ncells: usize,
    /// How many of them are column names (and so cells per row).
    pub ncols: usize,
    /// A connection's new number at the door (adopt, pooled keepalive).
    pub conn: f64,
    /// The pipe (physical connection) a checkout took.
    pub pipe: f64,
    /// How many times that connection was handed out before.
    pub reused: f64,
}

impl FfiIo {
    /// An io with nothing in it.
    pub const EMPTY: FfiIo = FfiIo {
        out: std::ptr::null(),
        out_len: 0,
        msg: std::ptr::null(),
        msg_len: 0,
        number: 0.0,
        cells: std::ptr::null(),
        ncells: 0,
        ncols: 0,
        conn: 0.0,
        pipe: 0.0,
        reused: 0.0,
    };
}

/// One conf value (the `kong_rds_iam_value_v1` C struct of [`contract::CDEF`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FfiValue {
    /// One of the `KIND_*` constants.
    pub kind: c_int,
    /// The number, or 1/0 for a boolean.
    pub number: f64,
    /// The string's bytes (`KIND_STRING` only).
    pub ptr: *const u8,
    /// The string's length in bytes.
    pub len: usize,
}

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
    // SAFETY: the caller's contract (non-null was checked above).
    let (values, out, result) = unsafe { (std::slice::from_raw_parts(values, n), std::slice::from_raw_parts_mut(out, cap), &mut *result) };
    let issued = guarded(|| issue(side, &FfiValues(values)));
    match issued {
        Ok((Issued::Fetching(job), timeout)) => {
            result.expires_at = 0.0;
            result.valid_until = 0.0;
            write(out, result, format!("{job} {}", timeout.as_millis()).as_bytes(), RESULT_FETCHING)
        }
        Ok((Issued::Token(t), _)) => {
            result.expires_at = crate::clock::local_unix_seconds(t.expires_at) as f64;
            result.valid_until = crate::clock::local_unix_seconds(t.valid_until) as f64;
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

/// The C values by position: `values[i]` is the value of `key::token_names(side)[i]`.
struct FfiValues<'a>(&'a [FfiValue]);

impl Positional for FfiValues<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn value(&self, i: usize) -> Option<RawValue> {
        let v = self.0.get(i)?;
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
        let at = |name: &str| key::token_index(Side::ReadWrite, name).unwrap();
        let mut values: Vec<FfiValue> = names.iter().map(|_| nil()).collect();
        values[at("pg_host")] = string("db.example");
        values[at("pg_port")] = FfiValue { kind: KIND_NUMBER, number: 6432.0, ptr: std::ptr::null(), len: 0 };
        values[at("pg_user")] = FfiValue { kind: KIND_BOOLEAN, number: 1.0, ptr: std::ptr::null(), len: 0 };
        values[at("pg_iam_auth_region")] = FfiValue { kind: KIND_STRING, number: 0.0, ptr: b"\xff".as_ptr(), len: 1 };
        let src = ByPosition { side: Side::ReadWrite, values: &FfiValues(&values) };
        assert_eq!(src.get("pg_host"), Some(RawValue::Str("db.example".into())));
        assert_eq!(src.get("pg_port"), Some(RawValue::Int(6432)));
        assert_eq!(src.get("pg_user"), Some(RawValue::Bool(true)));
        assert_eq!(src.get("pg_iam_auth_region"), Some(RawValue::Other("non-utf-8 string")));
        assert_eq!(src.get("pg_timeout"), None);
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

    #[test]
    fn numbers_of_gone_values_find_nothing() {
        let mut n = Numbers::default();
        let a = n.insert('a');
        let b = n.insert('b');
        assert!(a != 0 && b != 0 && a != b);
        assert_eq!((n.get(a), n.get(b)), (Some('a'), Some('b')));
        n.remove(a);
        assert_eq!(n.get(a), None);
        // The slot is reused under a new number: the old one still finds nothing.
        let c = n.insert('c');
        assert_ne!(c, a);
        assert_eq!((n.get(a), n.get(c)), (None, Some('c')));
        n.remove(a); // not live: changes nothing
        assert_eq!(n.get(c), Some('c'));
        assert_eq!(n.get(0), None);
        assert_eq!(n.get(u64::MAX), None);
        assert!(c < 1 << 53);
    }

    /// The layout ffi.cdef declares in [`contract::CDEF`] is the one Rust
    /// uses; spec/ffi_route_spec.lua checks LuaJIT's side of it.
    #[test]
    fn the_c_structs_match_their_declaration() {
        use std::mem::{offset_of, size_of};
        assert!(CDEF.contains("typedef struct { int kind; double number; const char *ptr; size_t len; } kong_rds_iam_value_v1;"));
        assert_eq!(
            (offset_of!(FfiValue, kind), offset_of!(FfiValue, number), offset_of!(FfiValue, ptr), offset_of!(FfiValue, len)),
            (0, 8, 16, 24)
        );
        assert_eq!(size_of::<FfiValue>(), 32);
        assert!(CDEF.contains("typedef struct { size_t len; double expires_at; double valid_until; } kong_rds_iam_result_v1;"));
        assert_eq!((offset_of!(FfiResult, len), offset_of!(FfiResult, expires_at), offset_of!(FfiResult, valid_until)), (0, 8, 16));
        assert_eq!(size_of::<FfiResult>(), 24);
        assert_eq!(layout(), [32, 0, 8, 16, 24, 24, 88, 0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80]);
    }
}
