//! The IAM authentication rate guard: RDS throttles new IAM authentications
//! at about 200 per second per instance, so new IAM logins to one database
//! host are spaced out, node-wide, to `pg_iam_auth_max_rate` per second.
//!
//! The buckets live in an anonymous shared mapping made when the module is
//! loaded ([`map_at_load`]): loaded in the nginx master (init_by_lua, as
//! Kong loads it), every forked worker shares them; loaded in a worker, the
//! guard is that process's alone. Making the mapping starts no thread.
//!
//! Each bucket is a GCRA ("generic cell rate algorithm", a token bucket as
//! one number): the theoretical arrival time of the next login, on the
//! system-wide monotonic clock, moved forward by one interval per login with
//! compare-and-swap, so processes need no lock. Hosts are hashed into a
//! fixed number of buckets; two hosts that share one are limited together
//! (a conservative error).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// How many buckets (hosts) the mapping holds.
const BUCKETS: usize = 256;

/// Where the buckets are: 0 until [`map_at_load`] (or the first use) made them.
static MAPPED: AtomicU64 = AtomicU64::new(0);

/// Makes the shared buckets; called when the module is loaded, so that
/// processes forked afterwards share them. Later calls change nothing.
pub fn map_at_load() {
    if MAPPED.load(Ordering::Acquire) != 0 {
        return;
    }
    let size = BUCKETS * std::mem::size_of::<AtomicI64>();
    // SAFETY: a fresh anonymous shared mapping; zero-filled by the kernel,
    // and an all-zero AtomicI64 is a valid 0.
    let ptr = unsafe {
        libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)
    };
    if ptr == libc::MAP_FAILED {
        return; // then the guard is off: logins are not spaced
    }
    if MAPPED.compare_exchange(0, ptr as u64, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // SAFETY: our own mapping, unused.
        unsafe { libc::munmap(ptr, size) };
    }
}

fn buckets() -> Option<&'static [AtomicI64]> {
    let mut ptr = MAPPED.load(Ordering::Acquire);
    if ptr == 0 {
        map_at_load();
        ptr = MAPPED.load(Ordering::Acquire);
    }
    if ptr == 0 {
        return None;
    }
    // SAFETY: the mapping is BUCKETS AtomicI64 long, never unmapped once published.
    Some(unsafe { std::slice::from_raw_parts(ptr as *const AtomicI64, BUCKETS) })
}

/// Nanoseconds on the monotonic clock, which all processes share.
fn now_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes the time into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// FNV-1a: the same bucket for a host in every process.
fn bucket_of(host: &str, port: u16) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes().chain(port.to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % BUCKETS as u64) as usize
}

/// What [`reserve`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Go ahead after this long (zero: now).
    After(Duration),
    /// The wait would be longer than the caller may wait: nothing reserved.
    TooLong(Duration),
}

/// Reserves a login to `host:port` at `per_second` (0: no limit), allowing
/// a burst of a twentieth of a second's worth; a wait longer than `budget`
/// reserves nothing.
pub fn reserve(host: &str, port: u16, per_second: u32, budget: Duration) -> Slot {
    let Some(buckets) = buckets().filter(|_| per_second > 0) else { return Slot::After(Duration::ZERO) };
    let interval = 1_000_000_000 / i64::from(per_second);
    let tolerance = interval * i64::from((per_second / 20).max(1) - 1);
    let bucket = &buckets[bucket_of(host, port)];
    loop {
        let now = now_ns();
        let current = bucket.load(Ordering::Acquire);
        let tat = current.max(now);
        let wait = (tat - now - tolerance).max(0);
        let wait_for = Duration::from_nanos(wait as u64);
        if wait_for > budget {
            return Slot::TooLong(wait_for);
        }
        if bucket.compare_exchange(current, tat + interval, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return Slot::After(wait_for);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_spaced_to_the_rate_after_a_small_burst() {
        map_at_load();
        let host = format!("rate-test-{}.example", std::process::id());
        let mut waits = Vec::new();
        for _ in 0..10 {
            match reserve(&host, 5432, 20, Duration::from_secs(10)) {
                Slot::After(w) => waits.push(w),
                Slot::TooLong(w) => panic!("refused after {w:?}"),
            }
        }
        // 20/s with a burst of 1: the n-th login waits about (n - 1) x 50 ms.
        assert_eq!(waits[0], Duration::ZERO);
        let last = waits[9].as_millis();
        assert!((400..=460).contains(&last), "{waits:?}");
        assert!(matches!(reserve(&host, 5432, 20, Duration::from_millis(10)), Slot::TooLong(_)));
        assert_eq!(reserve(&host, 5432, 0, Duration::ZERO), Slot::After(Duration::ZERO));
    }

    #[test]
    fn buckets_are_shared_with_a_forked_child() {
        map_at_load();
        let host = format!("rate-fork-{}.example", std::process::id());
        assert_eq!(reserve(&host, 1, 10, Duration::from_secs(5)), Slot::After(Duration::ZERO));
        // SAFETY: the child only reserves (atomics on the shared mapping) and _exits.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                let ok = matches!(reserve(&host, 1, 10, Duration::from_secs(5)), Slot::After(w) if w >= Duration::from_millis(90));
                libc::_exit(if ok { 0 } else { 1 });
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child did not see the parent's login");
        }
        // and the parent sees the child's: the third login waits ~200 ms
        assert!(matches!(reserve(&host, 1, 10, Duration::from_secs(5)), Slot::After(w) if w >= Duration::from_millis(180)));
    }
}
