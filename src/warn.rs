//! Warnings for the operator, each kind once per process: recorded here,
//! printed by the Lua side (`ngx.log(ngx.WARN, ...)` inside nginx, stderr
//! elsewhere), which drains them after each call that may add one.
//!
//! A warning's text must never hold a secret. Each process (an nginx
//! worker, after the fork) warns once of its own.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

use crate::process;

#[derive(Default)]
struct Warnings {
    generation: u64,
    seen: HashSet<&'static str>,
    pending: Vec<String>,
}

static WARNINGS: Mutex<Option<Warnings>> = Mutex::new(None);

/// Whether a warning waits to be taken (1) or not (0), so that [`take`]
/// costs an atomic load when none does. api.lua reads it through the LuaJIT
/// FFI as the C symbol `kong_rds_iam_warnings_pending` (an `int32_t`) and
/// asks for the warnings only when it is set.
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static kong_rds_iam_warnings_pending: AtomicI32 = AtomicI32::new(0);
use kong_rds_iam_warnings_pending as PENDING;

fn with<T>(f: impl FnOnce(&mut Warnings) -> T) -> T {
    let mut guard = WARNINGS.lock().unwrap_or_else(|p| p.into_inner());
    let generation = process::generation();
    if guard.as_ref().is_none_or(|w| w.generation != generation) {
        *guard = Some(Warnings { generation, ..Warnings::default() });
    }
    f(guard.get_or_insert_with(Warnings::default))
}

/// Records `text` unless this process already warned of `kind`.
pub fn once(kind: &'static str, text: String) {
    with(|w| {
        if w.seen.insert(kind) {
            w.pending.push(text);
            PENDING.store(1, Ordering::Release);
        }
    });
}

/// The warnings recorded since the last call, oldest first.
pub fn take() -> Vec<String> {
    if PENDING.swap(0, Ordering::AcqRel) == 0 {
        return Vec::new();
    }
    with(|w| std::mem::take(&mut w.pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_recorded_once_and_taken_once() {
        once("test-kind-a", "first a".into());
        once("test-kind-a", "second a".into());
        once("test-kind-b", "first b".into());
        let taken = take();
        // Other tests may record kinds of their own meanwhile.
        let ours: Vec<&String> = taken.iter().filter(|t| t.ends_with(" a") || t.ends_with(" b")).collect();
        assert_eq!(ours, ["first a", "first b"]);
        once("test-kind-a", "third a".into());
        assert!(!take().iter().any(|t| t == "third a"));
    }
}
