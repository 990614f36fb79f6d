//! The LuaJIT FFI door to the hot calls of a connection over a cosocket:
//! starting a query, feeding it what the cosocket received, keepalive.
//!
//! A pooled connect, a query and a keepalive are a handful of calls into
//! Rust, each a few microseconds of real work. Through mlua each also paid
//! about as much again in argument conversion, userdata borrowing,
//! protected calls and result pushing, which made the cycle slower than
//! pgmoon's Lua. These functions take plain C data instead (the query text
//! and the received bytes are pointers into the Lua strings, no copy) and
//! hand back pointers into a per-thread scratch ([`FfiIo`]), valid until the
//! next call.
//!
//! A connection is named by a number (`conn:door_id()`) registered while its
//! Lua object lives; a number that is no connection (any more) answers
//! [`DOOR_GONE`], never touches freed memory. Nothing here runs Lua code or
//! calls into the Lua VM (an FFI call must not re-enter Lua; the one mlua
//! value that can be dropped here is a rows table left by a broken query,
//! which `piped_stop` and `piped_finish` clear first): what needs Lua tables
//! comes back as a status that tells api.lua which connection method to
//! call (`piped_rows`, `piped_finish`), or, for one small result of plain
//! values, as C cells api.lua turns into tables itself.

use std::cell::RefCell;
use std::ffi::c_int;
use std::ptr::NonNull;
use std::time::Duration;

use super::connection::Conn;
use super::cosocket::Parsed;
use crate::connection::{Evicted, Handle};
use crate::error::guarded;
use crate::ffi::contract::*;
use crate::ffi::{FfiIo, FfiValue, Numbers};
use crate::pg::value::{self, Cell};
use crate::pg::{Messages, QueryFailure, QueryOutput};

/// What the door keeps of a connection between calls: a finished (or
/// refused) query, for `piped_finish`.
#[derive(Default)]
pub struct Kept {
    /// The connection's number (0: none).
    number: u64,
    done: Option<(Result<QueryOutput, QueryFailure>, Messages)>,
}

impl Kept {
    /// The connection's number at the door (0: none).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The finished query's outcome and messages (`piped_finish`).
    pub fn take_done(&mut self) -> Option<(Result<QueryOutput, QueryFailure>, Messages)> {
        self.done.take()
    }
}

/// What the last call handed out (valid until the next call on any
/// connection): one per thread, as calls never overlap, so its buffers keep
/// their capacity from call to call.
#[derive(Default)]
struct Scratch {
    /// The bytes `io.out` points to.
    out: bytes::BytesMut,
    /// The message `io.msg` points to.
    msg: String,
    /// A small result shown as cells: they point into its rows and `owned`.
    shown: Option<QueryOutput>,
    cells: Vec<FfiValue>,
    owned: Vec<u8>,
    /// Where owned strings go once `owned` stops growing: (cell, start).
    fixups: Vec<(usize, usize)>,
}

impl Scratch {
    fn clear(&mut self) {
        self.out.clear();
        self.msg.clear();
        self.shown = None;
        self.cells.clear();
        self.owned.clear();
        self.fixups.clear();
    }
}

/// Rows waiting (in a running query) before api.lua is told to turn them
/// into tables: fewer stay in Rust until the end, in one build.
const ROW_BATCH: usize = 256;
/// The most cells (names included) a result shown as C cells has; larger
/// ones are built in Rust.
const MAX_CELLS: usize = 512;

thread_local! {
    // Per thread: Lua (one nginx worker's VM) runs on one thread, and a
    // connection object is made and collected there.
    static REGISTRY: RefCell<Numbers<NonNull<Conn>>> = RefCell::new(Numbers::default());
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    // Parsed confs (api.lua's memo holds their objects), for checkouts.
    static CONFS: RefCell<Numbers<NonNull<Parsed>>> = RefCell::new(Numbers::default());
    // The connection the last checkout took, until an object takes it.
    static TAKEN: RefCell<Option<Handle>> = const { RefCell::new(None) };
}

/// Gives a connection's state a new number (never 0; 0 when there is none
/// to give, and then the door answers gone), in its [`Kept`].
pub fn number(mut conn: NonNull<Conn>) {
    let number = REGISTRY.try_with(|r| r.borrow_mut().insert(conn)).unwrap_or(0);
    // SAFETY: the caller's live box; no reference to it is held across this.
    unsafe { conn.as_mut() }.3.number = number;
}

/// Forgets a connection's number: a call with it answers gone from now on.
pub fn forget(kept: &mut Kept) {
    let number = std::mem::take(&mut kept.number);
    kept.done = None;
    let _ = REGISTRY.try_with(|r| r.borrow_mut().remove(number));
}

/// Gives `conn` a new number (forgetting its old one), for an object that
/// is handed out again: whoever kept the old number finds nothing with it.
fn renumber(conn: &mut Conn) -> u64 {
    forget(&mut conn.3);
    let at = NonNull::from(&mut *conn);
    let number = REGISTRY.try_with(|r| r.borrow_mut().insert(at)).unwrap_or(0);
    conn.3.number = number;
    number
}

/// Numbers a parsed conf's box for checkouts (0 when there is none to give:
/// then its checkouts answer gone, and api.lua takes the mlua way).
pub fn number_conf(parsed: NonNull<Parsed>) -> u64 {
    CONFS.try_with(|c| c.borrow_mut().insert(parsed)).unwrap_or(0)
}

/// Forgets a parsed conf's number, before its box is freed.
pub fn forget_conf(number: u64) {
    let _ = CONFS.try_with(|c| c.borrow_mut().remove(number));
}

/// The connection the last checkout took, for a new object
/// (`core.piped_taken`).
pub fn take_taken() -> Option<Handle> {
    TAKEN.try_with(|t| t.borrow_mut().take()).ok().flatten()
}

/// The connection numbered `id`, if its object lives.
fn find(id: u64) -> Option<NonNull<Conn>> {
    REGISTRY.try_with(|r| r.borrow().get(id)).ok().flatten()
}

/// Runs `f` on connection `id` with a cleared `io`: its status, or
/// [`DOOR_GONE`]. A panic (a bug) reads as gone too: api.lua then stops and
/// closes the connection and answers with an error.
///
/// # Safety
///
/// `io` must point to a writable [`FfiIo`].
unsafe fn with_conn(id: u64, io: *mut FfiIo, f: impl FnOnce(&mut Conn, &mut Scratch, &mut FfiIo) -> c_int) -> c_int {
    if io.is_null() {
        return DOOR_GONE;
    }
    // SAFETY: the caller's contract.
    let io = unsafe { &mut *io };
    *io = FfiIo::EMPTY;
    let Some(mut conn) = find(id) else { return DOOR_GONE };
    // SAFETY: a registered pointer is the live box of a connection object
    // (unregistered before it is freed). Lua runs on this one thread and
    // nothing here runs Lua code, so no mlua method holds the state now.
    let conn = unsafe { conn.as_mut() };
    SCRATCH
        .try_with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else { return DOOR_GONE };
            scratch.clear();
            guarded(|| Ok(f(conn, &mut scratch, io))).unwrap_or(DOOR_GONE)
        })
        .unwrap_or(DOOR_GONE)
}

fn hand_out(scratch: &mut Scratch, io: &mut FfiIo, out: bytes::BytesMut) {
    scratch.out = out;
    io.out = scratch.out.as_ptr();
    io.out_len = scratch.out.len();
}

fn hand_msg(scratch: &mut Scratch, io: &mut FfiIo, msg: &str) {
    scratch.msg.push_str(msg);
    io.msg = scratch.msg.as_ptr();
    io.msg_len = scratch.msg.len();
}

/// Starts a query: [`DOOR_SEND`] with the bytes to send and the timeout, or
/// [`DOOR_DONE`] (refused: busy, closed; nothing was sent).
///
/// # Safety
///
/// `sql` must be valid for `len` bytes and `io` point to a writable [`FfiIo`].
#[no_mangle]
pub unsafe extern "C" fn kong_rds_iam_query_start(id: u64, sql: *const u8, len: usize, io: *mut FfiIo) -> c_int {
    if sql.is_null() {
        return DOOR_GONE;
    }
    // SAFETY: the caller's contract.
    let sql = unsafe { std::slice::from_raw_parts(sql, len) };
    // SAFETY: the caller's contract.
    unsafe {
        with_conn(id, io, |Conn(handle, _, building, kept), scratch, io| {
            building.clear();
            match handle.query_piped_start(sql) {
                Ok(out) => {
                    hand_out(scratch, io, out);
                    io.number = handle.timeout_ms() as f64;
                    DOOR_SEND
                }
                Err(refused) => {
                    kept.done = Some((Err(refused), Messages::default()));
                    DOOR_DONE
                }
            }
        })
    }
}

/// Feeds the running query what the cosocket received (`closed`: the server
/// closed it): [`DOOR_MORE`] or [`DOOR_ROWS`] with maybe bytes to send,
/// [`DOOR_RESULT`] or [`DOOR_DONE`].
///
/// # Safety
///
/// `data` must be valid for `len` bytes (unless `closed`) and `io` point to
/// a writable [`FfiIo`].
#[no_mangle]
pub unsafe extern "C" fn kong_rds_iam_query_feed(id: u64, data: *const u8, len: usize, closed: c_int, io: *mut FfiIo) -> c_int {
    let data = if closed != 0 || data.is_null() {
        None
    } else {
        // SAFETY: the caller's contract.
        Some(unsafe { std::slice::from_raw_parts(data, len) })
    };
    // SAFETY: the caller's contract.
    unsafe {
        with_conn(id, io, |Conn(handle, decoding, building, kept), scratch, io| {
            let (outcome, out) = handle.query_piped_feed(data);
            let Some(outcome) = outcome else {
                hand_out(scratch, io, out);
                return if handle.piped_pending_rows() >= ROW_BATCH { DOOR_ROWS } else { DOOR_MORE };
            };
            let messages = handle.take_messages();
            match outcome {
                Ok(output) if building.is_empty() && messages.notifications.is_empty() && messages.notices.is_empty() => {
                    match show(scratch, io, output, *decoding) {
                        Ok(()) => DOOR_RESULT,
                        Err(output) => {
                            kept.done = Some((Ok(output), messages));
                            DOOR_DONE
                        }
                    }
                }
                outcome => {
                    kept.done = Some((outcome, messages));
                    DOOR_DONE
                }
            }
        })
    }
}

/// Shows `output` as cells when it is one result of at most [`MAX_CELLS`]
/// plain values (nil, booleans, numbers, strings), else gives it back.
fn show(scratch: &mut Scratch, io: &mut FfiIo, output: QueryOutput, decoding: value::Decoding) -> Result<(), QueryOutput> {
    let [statement] = output.as_slice() else { return Err(output) };
    let Some(columns) = &statement.columns else { return Err(output) };
    let ncols = columns.len();
    let ncells = ncols.saturating_mul(statement.rows.len() + 1);
    if ncols == 0 || ncells > MAX_CELLS {
        return Err(output);
    }
    let Scratch { cells, owned, fixups, .. } = scratch;
    let string = |bytes: &[u8]| FfiValue { kind: KIND_STRING, number: 0.0, ptr: bytes.as_ptr(), len: bytes.len() };
    let plain = |kind, number| FfiValue { kind, number, ptr: std::ptr::null(), len: 0 };
    for c in columns.iter() {
        cells.push(string(c.name.as_bytes()));
    }
    use fallible_iterator::FallibleIterator;
    for body in &statement.rows {
        let buffer = body.buffer();
        let mut ranges = body.ranges();
        let mut j = 0;
        while let Ok(Some(range)) = ranges.next() {
            let Some(column) = columns.get(j) else { break };
            let cell = match range.and_then(|r| buffer.get(r)) {
                None => plain(KIND_NIL, 0.0),
                Some(raw) => match value::decode_as(decoding, column.type_oid, raw) {
                    Cell::Null => plain(KIND_NIL, 0.0),
                    Cell::Bool(b) => plain(KIND_BOOLEAN, if b { 1.0 } else { 0.0 }),
                    Cell::Int(n) => plain(KIND_NUMBER, n as f64),
                    Cell::Float(f) => plain(KIND_NUMBER, f),
                    Cell::Text(std::borrow::Cow::Borrowed(t)) => string(t.as_bytes()),
                    Cell::Text(std::borrow::Cow::Owned(t)) => owned_string(owned, fixups, cells.len(), t.as_bytes()),
                    Cell::Bytes(b) => owned_string(owned, fixups, cells.len(), &b),
                    Cell::Json(_) | Cell::Array(_) => {
                        cells.clear();
                        owned.clear();
                        return Err(output);
                    }
                },
            };
            cells.push(cell);
            j += 1;
        }
        // A short row (never from a sane server) reads as NULLs.
        for _ in j..ncols {
            cells.push(plain(KIND_NIL, 0.0));
        }
    }
    let affected = if statement.command() != "SELECT" { statement.affected_rows() } else { None };
    io.number = affected.map_or(-1.0, |n| n as f64);
    hand_cells(cells, owned, fixups, io, ncols);
    // The rows the cells point into stay until the next call.
    scratch.shown = Some(output);
    Ok(())
}

/// The idle connections a pooling keepalive evicted, as cells in pairs
/// (`io.ncols` 2): the nginx pool of its cosocket (the cell's number is the
/// pipe's), and what to send on it before closing it.
fn show_evicted(scratch: &mut Scratch, io: &mut FfiIo, evicted: &[Evicted]) {
    if evicted.is_empty() {
        return;
    }
    let Scratch { cells, owned, fixups, .. } = scratch;
    for e in evicted {
        let mut pool = owned_string(owned, fixups, cells.len(), e.pool.as_bytes());
        pool.number = e.pipe as f64;
        cells.push(pool);
        let goodbye = owned_string(owned, fixups, cells.len(), &e.goodbye);
        cells.push(goodbye);
    }
    hand_cells(cells, owned, fixups, io, 2);
}

/// Points the owned strings' cells into `owned` (which has stopped growing)
/// and hands the cells out, `ncols` to a row.
fn hand_cells(cells: &mut [FfiValue], owned: &[u8], fixups: &[(usize, usize)], io: &mut FfiIo, ncols: usize) {
    for &(i, start) in fixups {
        cells[i].ptr = owned[start..].as_ptr();
    }
    io.cells = cells.as_ptr();
    io.ncells = cells.len();
    io.ncols = ncols;
}

fn owned_string(owned: &mut Vec<u8>, fixups: &mut Vec<(usize, usize)>, cell: usize, bytes: &[u8]) -> FfiValue {
    fixups.push((cell, owned.len()));
    owned.extend_from_slice(bytes);
    FfiValue { kind: KIND_STRING, number: 0.0, ptr: std::ptr::null(), len: bytes.len() }
}

/// Puts the connection into the pool (`max_idle_ms`, `pool_size`: negative
/// for the conf's): [`DOOR_POOLED`] (the object's new number in `io.conn`),
/// [`DOOR_CLOSED`] or [`DOOR_REFUSED`].
///
/// # Safety
///
/// `io` must point to a writable [`FfiIo`].
#[no_mangle]
pub unsafe extern "C" fn kong_rds_iam_keepalive(id: u64, max_idle_ms: f64, pool_size: f64, io: *mut FfiIo) -> c_int {
    // api.lua checked the ranges; NaN reads as unset.
    let max_idle = (max_idle_ms >= 0.0).then(|| Duration::from_millis(max_idle_ms as u64));
    let size = (pool_size >= 1.0).then_some(pool_size as usize);
    // SAFETY: the caller's contract.
    unsafe {
        with_conn(id, io, |conn, scratch, io| {
            let handle = &mut conn.0;
            let idle_ms = handle.keepalive_ms(max_idle) as f64;
            let outcome = handle.keepalive(max_idle, size, false);
            if let Some(out) = handle.piped_output() {
                hand_out(scratch, io, out);
            }
            let busy = handle.is_open();
            match outcome {
                Ok(evicted) if io.out_len == 0 => {
                    show_evicted(scratch, io, &evicted);
                    io.number = idle_ms;
                    // The object waits for the next checkout of its pipe
                    // under a number only api.lua's table of kept objects
                    // knows (kong_rds_iam_adopt).
                    io.conn = renumber(conn) as f64;
                    DOOR_POOLED
                }
                // Closed instead of pooled: it evicted nothing.
                Ok(_) => DOOR_CLOSED,
                Err(e) => {
                    hand_msg(scratch, io, e.message());
                    io.number = if busy { 1.0 } else { 0.0 };
                    DOOR_REFUSED
                }
            }
        })
    }
}

/// Types the rows of connection `conn` exactly as pgmoon does from now on
/// (`kong_rds_iam.pgmoon` asks at every connect: a pooled connection's
/// object starts with this module's types): [`DOOR_TYPED`] or
/// [`DOOR_GONE`].
///
/// # Safety
///
/// `io` must point to a writable [`FfiIo`].
#[no_mangle]
pub unsafe extern "C" fn kong_rds_iam_pgmoon_types(conn: u64, io: *mut FfiIo) -> c_int {
    // SAFETY: the caller's contract.
    unsafe {
        with_conn(conn, io, |conn, _, _| {
            conn.1 = value::Decoding::Pgmoon;
            DOOR_TYPED
        })
    }
}

/// Checkout for the parsed conf numbered `conf`: [`DOOR_TAKEN`] (an idle
/// pooled connection over a cosocket, which waits for its object:
/// [`kong_rds_iam_adopt`], else `core.piped_taken`), [`DOOR_NONE`] (none is
/// idle), [`DOOR_OFF`] (`pg_cosocket` is off) or [`DOOR_GONE`] (no such
/// conf, or a panic).
///
/// # Safety
///
/// `io` must point to a writable [`FfiIo`].
#[no_mangle]
pub unsafe extern "C" fn kong_rds_iam_take(conf: u64, io: *mut FfiIo) -> c_int {
    // SAFETY: the caller's contract.
    let Some(io) = (unsafe { io.as_mut() }) else { return DOOR_GONE };
    *io = FfiIo::EMPTY;
    let Some(parsed) = CONFS.try_with(|c| c.borrow().get(conf)).ok().flatten() else { return DOOR_GONE };
    // SAFETY: a registered pointer is the live box of a parsed conf object
    // (unregistered before it is freed), only ever read.
    let Parsed(conf, key) = unsafe { parsed.as_ref() };
    if !conf.pool.cosocket {
        return DOOR_OFF;
    }
    let taken = guarded(|| {
        let Some(handle) = Handle::piped_from_pool(conf, key) else { return Ok(DOOR_NONE) };
        let Some(pipe) = handle.pipe_id() else { return Ok(DOOR_NONE) };
        io.pipe = pipe as f64;
        io.number = handle.timeout_ms() as f64;
        io.reused = f64::from(handle.reused_times());
        let left = TAKEN.try_with(|t| t.borrow_mut().replace(handle));
        // One left by a checkout whose object never came closes here.
        drop(left);
        Ok(DOOR_TAKEN)
    });
    taken.unwrap_or(DOOR_GONE)
}

/// Puts the connection the last checkout took into the kept object numbered
/// `conn` (api.lua's, for that pipe): [`DOOR_ADOPTED`] with the object's new
/// number in `io.conn`, or [`DOOR_GONE`] when `conn` is no free object (the
/// connection then stays for `core.piped_taken`).
///
/// # Safety
///
/// `io` must point to a writable [`FfiIo`].
#[no_mangle]
pub unsafe extern "C" fn kong_rds_iam_adopt(conn: u64, io: *mut FfiIo) -> c_int {
    // SAFETY: the caller's contract.
    unsafe {
        with_conn(conn, io, |conn, _, io| {
            // Only an object the pool's keepalive left (a closed handle,
            // no rows tables: dropping one here would call into Lua).
            if conn.0.is_open() || !conn.2.is_empty() {
                return DOOR_GONE;
            }
            let Some(handle) = take_taken() else { return DOOR_GONE };
            conn.adopt(handle);
            io.conn = renumber(conn) as f64;
            DOOR_ADOPTED
        })
    }
}
