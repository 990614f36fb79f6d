//! This process's counters for `rds.stats()`: plain atomics bumped where
//! things happen (no allocation on the token fast path), and a few figures
//! read on demand. Counted since the process started: in a forked child
//! (an nginx worker) every counter starts from zero, so that summing the
//! workers' figures does not count the master's work once per worker.
//! [`OPEN_HANDLES`] is a level, not a count, and is inherited as it is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::process;

/// Tokens signed (cache misses on the Rust side).
pub static TOKENS_SIGNED: AtomicU64 = AtomicU64::new(0);
/// Tokens served from the Rust token cache (api.lua's memo hits are not counted).
pub static TOKEN_CACHE_HITS: AtomicU64 = AtomicU64::new(0);
/// New IAM logins the server accepted.
pub static IAM_AUTH_OK: AtomicU64 = AtomicU64::new(0);
/// SCRAM logins bound to the server's TLS certificate (SCRAM-SHA-256-PLUS).
pub static SCRAM_CHANNEL_BOUND: AtomicU64 = AtomicU64::new(0);
/// Connection handles holding a session: opened, and neither closed, kept
/// alive nor collected by Lua's GC yet. Read by api.lua through the LuaJIT
/// FFI as the C symbol `kong_rds_iam_open_handles` (an `int32_t`; a process
/// never holds 2^31 sessions), at every connect.
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static kong_rds_iam_open_handles: AtomicI32 = AtomicI32::new(0);
pub use kong_rds_iam_open_handles as OPEN_HANDLES;

/// [`OPEN_HANDLES`] as a count (never below zero).
pub fn open_handles() -> u64 {
    OPEN_HANDLES.load(Ordering::Relaxed).max(0) as u64
}
/// Jobs handed to the I/O thread (a yielding call that could not be done
/// on the nginx thread itself).
pub static JOBS_SUBMITTED: AtomicU64 = AtomicU64::new(0);
/// New IAM logins that waited for `pg_iam_auth_max_rate`'s guard.
pub static RATE_WAITS: AtomicU64 = AtomicU64::new(0);

/// The plain counters, zeroed in a forked child.
static COUNTS: [&AtomicU64; 6] = [&TOKENS_SIGNED, &TOKEN_CACHE_HITS, &IAM_AUTH_OK, &SCRAM_CHANNEL_BOUND, &JOBS_SUBMITTED, &RATE_WAITS];

/// Zeroes the plain counters: part of [`process`]'s fork handler.
pub(crate) fn zero_in_child() {
    for c in COUNTS {
        c.store(0, Ordering::Relaxed);
    }
}

/// Counters kept by name: credential fetches and failures by source, IAM
/// logins refused by SQLSTATE, and the last credential error.
#[derive(Default)]
struct Named {
    generation: u64,
    fetches: BTreeMap<String, u64>,
    fetch_failures: BTreeMap<String, u64>,
    iam_auth_failed: BTreeMap<String, u64>,
    last_credential_error: Option<String>,
}

static NAMED: Mutex<Option<Named>> = Mutex::new(None);

fn named<T>(f: impl FnOnce(&mut Named) -> T) -> T {
    let mut guard = NAMED.lock().unwrap_or_else(|p| p.into_inner());
    let generation = process::generation();
    if guard.as_ref().is_none_or(|n| n.generation != generation) {
        *guard = Some(Named { generation, ..Named::default() });
    }
    f(guard.get_or_insert_with(Named::default))
}

/// A credential fetch from `source` succeeded.
pub fn credential_fetched(source: &str) {
    named(|n| *n.fetches.entry(source.to_owned()).or_default() += 1);
}

/// A credential fetch from `source` failed with `message` (already scrubbed).
pub fn credential_failed(source: &str, message: &str) {
    named(|n| {
        *n.fetch_failures.entry(source.to_owned()).or_default() += 1;
        n.last_credential_error = Some(message.to_owned());
    });
}

/// The server refused an IAM login with `sqlstate`.
pub fn iam_auth_failed(sqlstate: &str) {
    named(|n| *n.iam_auth_failed.entry(sqlstate.to_owned()).or_default() += 1);
}

/// What `rds.stats()` shows of these counters.
pub struct Snapshot {
    /// See [`TOKENS_SIGNED`].
    pub tokens_signed: u64,
    /// See [`TOKEN_CACHE_HITS`].
    pub token_cache_hits: u64,
    /// See [`IAM_AUTH_OK`].
    pub iam_auth_ok: u64,
    /// See [`OPEN_HANDLES`].
    pub open_handles: u64,
    /// See [`SCRAM_CHANNEL_BOUND`].
    pub scram_channel_bound: u64,
    /// See [`JOBS_SUBMITTED`].
    pub jobs_submitted: u64,
    /// See [`RATE_WAITS`].
    pub rate_waits: u64,
    /// Credential fetches by source.
    pub credential_fetches: BTreeMap<String, u64>,
    /// Failed credential fetches by source.
    pub credential_failures: BTreeMap<String, u64>,
    /// Refused IAM logins by SQLSTATE.
    pub iam_auth_failed: BTreeMap<String, u64>,
    /// The last credential error's text.
    pub last_credential_error: Option<String>,
}

/// The counters now, since this process started (or was forked).
pub fn snapshot() -> Snapshot {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    named(|n| Snapshot {
        tokens_signed: load(&TOKENS_SIGNED),
        token_cache_hits: load(&TOKEN_CACHE_HITS),
        iam_auth_ok: load(&IAM_AUTH_OK),
        open_handles: open_handles(),
        scram_channel_bound: load(&SCRAM_CHANNEL_BOUND),
        jobs_submitted: load(&JOBS_SUBMITTED),
        rate_waits: load(&RATE_WAITS),
        credential_fetches: n.fetches.clone(),
        credential_failures: n.fetch_failures.clone(),
        iam_auth_failed: n.iam_auth_failed.clone(),
        last_credential_error: n.last_credential_error.clone(),
    })
}

/// Bumps a counter. The first bump registers the fork handler (if nothing
/// did before) that zeroes the counters in a child.
pub fn bump(counter: &AtomicU64) {
    process::watch_forks();
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_counters_add_up() {
        credential_fetched("stats-test-source");
        credential_fetched("stats-test-source");
        credential_failed("stats-test-other", "could not get aws credentials from imds: refused");
        iam_auth_failed("28000");
        let s = snapshot();
        assert_eq!(s.credential_fetches.get("stats-test-source"), Some(&2));
        assert_eq!(s.credential_failures.get("stats-test-other"), Some(&1));
        assert!(s.iam_auth_failed.get("28000").is_some_and(|n| *n >= 1));
        assert!(s.last_credential_error.is_some());
    }

    #[test]
    fn a_forked_child_counts_from_zero_and_the_parent_keeps_its_counts() {
        bump(&SCRAM_CHANNEL_BOUND);
        bump(&RATE_WAITS);
        let before = snapshot();
        assert!(before.scram_channel_bound >= 1 && before.rate_waits >= 1);
        // SAFETY: the child only reads atomics and calls _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                let zero = COUNTS.iter().all(|c| c.load(Ordering::Relaxed) == 0);
                bump(&RATE_WAITS);
                let one = RATE_WAITS.load(Ordering::Relaxed) == 1;
                libc::_exit(if zero && one { 0 } else { 1 });
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child inherited counts");
        }
        let after = snapshot();
        assert!(after.scram_channel_bound >= before.scram_channel_bound);
        assert!(after.rate_waits >= before.rate_waits);
    }
}
