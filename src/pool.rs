//! The keep-alive pool: idle connections of this process, by what makes a
//! session the same (host, port, database, user, schema, TLS settings and
//! whether IAM is on; a token or password never splits it: they only count
//! at authentication), as a cosocket pool keeps them.
//!
//! A connection is handed out under a [`Lease`], which counts it as busy for
//! its key until it is closed or put back; with a backlog (`pg_backlog`) at
//! most `pg_pool_size` connections of a key are busy at once and up to the
//! backlog callers wait (yielding) for one to come back. Idle connections
//! past their idle timeout are closed by a task on the I/O thread, or,
//! where a process has none, on the next access to the pool. A forked
//! child starts with an empty pool and closes its copies of the parent's
//! descriptors without touching the parent's sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::conf::{ConnectConf, PoolConf, TlsConf};
use crate::error::{Error, ErrorKind, Result};
use crate::pg;
use crate::process;

/// What makes two connections interchangeable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The hash of the fields below, computed once: a checkout and a
    /// keepalive each look the key up, and it is mostly strings.
    hash: u64,
    host: String,
    port: u16,
    /// The signing host:port (differs from host:port with pg_iam_auth_host).
    signed: (String, u16),
    database: String,
    user: String,
    schema: Option<String>,
    application_name: String,
    tls: TlsConf,
    iam: bool,
    /// Over an nginx cosocket (see [`crate::pg::pipe`]): usable only where
    /// cosockets work, so pooled apart from the I/O thread's connections.
    piped: bool,
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Key {
    /// The key of connections opened with `conf` over a cosocket.
    pub fn piped(conf: &ConnectConf) -> Key {
        Key { piped: true, ..Key::fields(conf) }.hashed()
    }

    /// The key of connections opened with `conf`.
    pub fn of(conf: &ConnectConf) -> Key {
        Key::fields(conf).hashed()
    }

    fn hashed(mut self) -> Key {
        use std::hash::{BuildHasher, Hash, Hasher};
        static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
        let mut h = SEED.get_or_init(Default::default).build_hasher();
        (&self.host, self.port, &self.signed, &self.database, &self.user, &self.schema).hash(&mut h);
        (&self.application_name, &self.tls, self.iam, self.piped).hash(&mut h);
        self.hash = h.finish();
        self
    }

    fn fields(conf: &ConnectConf) -> Key {
        Key {
            hash: 0,
            host: conf.address.host.clone(),
            port: conf.address.port,
            signed: (conf.endpoint.host.clone(), conf.endpoint.port),
            database: conf.database.clone(),
            user: conf.endpoint.user.clone(),
            schema: conf.schema.clone(),
            application_name: conf.application_name.clone(),
            tls: conf.tls.clone(),
            iam: conf.auth.is_iam(),
            piped: false,
        }
    }

    /// `user@host:port/database`, with `/schema` when one is set: how
    /// stats name a pool (keys that differ only in TLS settings, IAM or
    /// the kind of socket share a name, and their figures are summed).
    pub fn label(&self) -> String {
        match &self.schema {
            None => format!("{}@{}:{}/{}", self.user, self.host, self.port, self.database),
            Some(schema) => format!("{}@{}:{}/{}/{}", self.user, self.host, self.port, self.database, schema),
        }
    }
}

/// An idle connection.
pub struct Idle {
    /// The connection.
    pub conn: pg::Connection,
    /// How many times it was handed out before.
    pub reused: u32,
    /// When it must be closed (its jittered `pg_max_lifetime`), if ever.
    pub retire_at: Option<Instant>,
    /// `user@host:port/database`, made once per physical connection.
    pub label: Arc<str>,
    idle_until: Option<Instant>,
}

/// Counters and idle connections of one key.
#[derive(Default)]
struct Slot {
    idle: Vec<Idle>,
    busy: usize,
    waiting: usize,
    opened: u64,
    reused: u64,
    closed: u64,
    returned: Arc<Notify>,
}

/// Per-key figures for `stats()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    /// `user@host:port/database`.
    pub label: String,
    /// Idle connections kept.
    pub idle: usize,
    /// Connections handed out and not back yet.
    pub busy: usize,
    /// Callers waiting for one (backlog).
    pub waiting: usize,
    /// Physical connections opened.
    pub opened: u64,
    /// Check-outs of an idle connection.
    pub reused: u64,
    /// Idle or returned connections closed by the pool.
    pub closed: u64,
}

/// The pool of the process of generation `.0`.
struct Pool(u64, HashMap<Arc<Key>, Slot, KeyHash>);

/// Hashes a [`Key`] as the hash it computed once (a checkout and a
/// keepalive each look their key up: rehashing it would be wasted work).
#[derive(Default, Clone, Copy)]
struct KeyHash;

impl std::hash::BuildHasher for KeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// Takes the `u64` that [`Key`]'s `Hash` writes (mixing in anything else
/// written, should a key ever hash more).
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(32) ^ n;
    }
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// This process's pool. In a forked child the inherited one is emptied:
/// its descriptors are closed, the parent's sessions left alone.
fn pool() -> MutexGuard<'static, Option<Pool>> {
    let mut guard = POOL.lock().unwrap_or_else(|p| p.into_inner());
    let generation = process::generation();
    if guard.as_ref().is_none_or(|p| p.0 != generation) {
        if let Some(inherited) = guard.take() {
            for slot in inherited.1.into_values() {
                for idle in slot.idle {
                    idle.conn.abandon();
                }
            }
        }
        *guard = Some(Pool(generation, HashMap::default()));
    }
    guard
}

fn with_slot<T>(key: &Arc<Key>, f: impl FnOnce(&mut Slot) -> T) -> T {
    let mut guard = pool();
    let p = guard.get_or_insert_with(|| Pool(process::generation(), HashMap::default()));
    if let Some(slot) = p.1.get_mut(key) {
        return f(slot); // the usual case: no clone of the key
    }
    f(p.1.entry(key.clone()).or_default())
}

/// Counts one busy connection of a key until dropped.
pub struct Lease {
    key: Arc<Key>,
    generation: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.generation == process::generation() {
            with_slot(&self.key, count_back);
        }
    }
}

impl Lease {
    /// The key it counts against.
    pub fn key(&self) -> &Arc<Key> {
        &self.key
    }
}

/// One connection of `slot`'s key is no longer busy: a waiter may now
/// take one.
fn count_back(slot: &mut Slot) {
    slot.busy = slot.busy.saturating_sub(1);
    slot.returned.notify_one();
}

/// The generation of a lease already counted back: no process has it
/// (the generation counts forks from 0).
const RELEASED: u64 = u64::MAX;

/// What [`checkout`] found.
pub enum Checkout {
    /// An idle connection, alive when checked.
    Reuse(Idle, Lease),
    /// None idle: open a new one under this lease.
    Open(Lease),
}

/// An idle connection for `key`, or a lease to open a new one. With a
/// backlog and `size` connections busy, waits (when `may_wait`; a blocking
/// caller cannot, since only its own frozen worker could free one) up to
/// `timeout` for one to come back.
pub async fn checkout(key: Key, conf: &PoolConf, may_wait: bool, timeout: Duration) -> Result<Checkout> {
    enum Step {
        Reuse(Idle),
        Open,
        Wait(Arc<Notify>),
    }
    let key = Arc::new(key);
    let deadline = Instant::now() + timeout;
    let mut waited = false;
    loop {
        let mut dead = Vec::new();
        let step = with_slot(&key, |slot| {
            if waited {
                slot.waiting = slot.waiting.saturating_sub(1);
            }
            let now = Instant::now();
            while let Some(idle) = slot.idle.pop() {
                if idle.expired(now) || !idle.conn.is_alive() {
                    slot.closed += 1;
                    dead.push(idle);
                    continue;
                }
                slot.busy += 1;
                slot.reused += 1;
                return Ok(Step::Reuse(idle));
            }
            match conf.backlog {
                Some(backlog) if slot.busy >= conf.size => {
                    if !may_wait || slot.waiting >= backlog {
                        return Err(Error::new(ErrorKind::Busy, "too many waiting connect operations"));
                    }
                    slot.waiting += 1;
                    Ok(Step::Wait(slot.returned.clone()))
                }
                _ => {
                    slot.busy += 1;
                    slot.opened += 1;
                    Ok(Step::Open)
                }
            }
        });
        close_all(dead).await;
        let lease = || Lease { key: key.clone(), generation: process::generation() };
        match step? {
            Step::Reuse(idle) => return Ok(Checkout::Reuse(idle, lease())),
            Step::Open => return Ok(Checkout::Open(lease())),
            Step::Wait(returned) => {
                waited = true;
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, returned.notified()).await.is_err() {
                    with_slot(&key, |slot| slot.waiting = slot.waiting.saturating_sub(1));
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!("timeout: no pooled connection came back within {} ms", timeout.as_millis()),
                    ));
                }
            }
        }
    }
}

/// An idle, live connection for `key` right now, if there is one: what
/// [`checkout`] would reuse, without waiting for anything (a yielding
/// caller then needs no hand-off to the I/O thread). Dead or expired idle
/// connections met on the way are closed in the background.
pub fn take_idle(key: Arc<Key>) -> Option<(Idle, Lease)> {
    let mut dead = Vec::new();
    let found = with_slot(&key, |slot| {
        let now = Instant::now();
        while let Some(idle) = slot.idle.pop() {
            if idle.expired(now) || !idle.conn.is_alive() {
                slot.closed += 1;
                dead.push(idle);
                continue;
            }
            slot.busy += 1;
            slot.reused += 1;
            return Some(idle);
        }
        None
    });
    if !dead.is_empty() {
        // Without an I/O thread to say goodbye from, the sockets just close.
        let _ = process::spawn_background(close_all(dead));
    }
    // A lease only for a connection handed out: dropping one counts it back.
    found.map(|idle| (idle, Lease { key, generation: process::generation() }))
}

/// A connection coming back to the pool.
pub struct Returning {
    /// The lease it was handed out under.
    pub lease: Lease,
    /// The connection.
    pub conn: pg::Connection,
    /// How many times it was handed out before.
    pub reused: u32,
    /// Its jittered `pg_max_lifetime` deadline, if any.
    pub retire_at: Option<Instant>,
    /// Its label (see [`Idle::label`]).
    pub label: Arc<str>,
    /// How long it may stay idle (zero: no limit).
    pub max_idle: Duration,
    /// How many idle ones its key keeps.
    pub size: usize,
}

/// Puts a connection back as idle under its lease's key. A connection that
/// is in a transaction or holds unread input is closed instead (an error
/// says why); so is one past `retire_at` (that is not an error). Past
/// `size` idle connections, the one idle longest is closed.
pub async fn put_back(returning: Returning) -> Result<()> {
    let (outcome, to_close) = put_back_now(returning);
    close_all(to_close).await;
    outcome
}

/// [`put_back`] without the goodbyes: the connections to close come back
/// (the caller closes them; over a cosocket that needs no waiting).
pub fn put_back_now(returning: Returning) -> (Result<()>, Vec<Idle>) {
    let Returning { mut lease, conn, reused, retire_at, label, max_idle, size } = returning;
    let now = Instant::now();
    if !conn.is_idle() {
        count_closed(&lease, 1);
        let e = Error::new(ErrorKind::Closed, "connection in dubious state (in a transaction): closed instead of kept alive");
        return (Err(e), vec![Idle { conn, reused, retire_at, label, idle_until: None }]);
    }
    if !conn.is_alive() {
        drop(conn);
        count_closed(&lease, 1);
        return (
            Err(Error::new(ErrorKind::Closed, "connection in dubious state (unread input): closed instead of kept alive")),
            Vec::new(),
        );
    }
    let idle = Idle { conn, reused, retire_at, label, idle_until: (!max_idle.is_zero()).then(|| now + max_idle) };
    if idle.expired(now) {
        count_closed(&lease, 1);
        return (Ok(()), vec![idle]);
    }
    let generation = process::generation();
    let evicted = with_slot(&lease.key, |slot| {
        slot.idle.push(idle);
        let excess = slot.idle.len().saturating_sub(size.max(1));
        let evicted: Vec<Idle> = if excess == 0 { Vec::new() } else { slot.idle.drain(..excess).collect() };
        slot.closed += evicted.len() as u64;
        // The connection is no longer busy (counted back under the same lock).
        if lease.generation == generation {
            count_back(slot);
            lease.generation = RELEASED;
        }
        evicted
    });
    drop(lease);
    reap_in_background();
    (Ok(()), evicted)
}

fn count_closed(lease: &Lease, n: u64) {
    with_slot(lease.key(), |slot| slot.closed += n);
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.idle_until.is_some_and(|t| now >= t) || self.retire_at.is_some_and(|t| now >= t)
    }
}

/// Says goodbye to each connection (Terminate), briefly.
async fn close_all(list: Vec<Idle>) {
    for idle in list {
        let _ = tokio::time::timeout(Duration::from_millis(200), idle.conn.close()).await;
    }
}

/// Closes the idle connections past their time, in every key.
pub async fn reap() {
    let now = Instant::now();
    let dead: Vec<Idle> = {
        let mut guard = pool();
        let Some(p) = guard.as_mut() else { return };
        let mut dead = Vec::new();
        for slot in p.1.values_mut() {
            let (gone, kept): (Vec<Idle>, Vec<Idle>) = slot.idle.drain(..).partition(|i| i.expired(now));
            slot.closed += gone.len() as u64;
            slot.idle = kept;
            dead.extend(gone);
        }
        dead
    };
    close_all(dead).await;
}

/// Starts, once per process that has an I/O thread, a task closing idle
/// connections past their time every second.
fn reap_in_background() {
    static STARTED: Mutex<u64> = Mutex::new(u64::MAX);
    let generation = process::generation();
    let mut started = STARTED.lock().unwrap_or_else(|p| p.into_inner());
    if *started == generation {
        return;
    }
    if process::spawn_background(async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            reap().await;
        }
    }) {
        *started = generation;
    }
}

/// Every key's figures.
pub fn figures() -> Vec<Figures> {
    let guard = pool();
    let Some(p) = guard.as_ref() else { return Vec::new() };
    let mut by_label: std::collections::BTreeMap<String, Figures> = std::collections::BTreeMap::new();
    for (key, slot) in &p.1 {
        let label = key.label();
        let f = by_label.entry(label.clone()).or_insert_with(|| Figures {
            label,
            idle: 0,
            busy: 0,
            waiting: 0,
            opened: 0,
            reused: 0,
            closed: 0,
        });
        f.idle += slot.idle.len();
        f.busy += slot.busy;
        f.waiting += slot.waiting;
        f.opened += slot.opened;
        f.reused += slot.reused;
        f.closed += slot.closed;
    }
    by_label.into_values().collect()
}

/// A deadline `lifetime` +-10% from now, so that a fleet does not reconnect
/// in one burst.
pub fn retire_at(lifetime: Option<Duration>) -> Option<Instant> {
    use std::hash::{BuildHasher, Hasher};
    let lifetime = lifetime?;
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    // A factor in [0.9, 1.1].
    let factor = 0.9 + (random % 2001) as f64 / 10_000.0;
    Some(Instant::now() + lifetime.mul_f64(factor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_jittered_within_ten_percent() {
        let hour = Duration::from_secs(3600);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let at = retire_at(Some(hour)).unwrap();
            let d = at.saturating_duration_since(Instant::now());
            assert!(d >= hour.mul_f64(0.899) && d <= hour.mul_f64(1.1), "{d:?}");
            seen.insert(d.as_secs());
        }
        assert!(seen.len() > 5, "not jittered: {seen:?}");
        assert!(retire_at(None).is_none());
    }
}
