//! Warnings for the operator (certificate verification turned off for IAM,
//! a plaintext fallback): each kind once per process, never with a secret.
//!
//! Rust only queues them; the Lua side drains the queue after a call and
//! writes them where an operator looks: `ngx.log(ngx.WARN, ...)` inside
//! nginx, stderr elsewhere. Nothing here logs by itself, so a warning never
//! comes from a thread or a lock nginx does not know about.

use std::sync::Mutex;

use crate::process::PerProcess;

#[derive(Default)]
struct Queue {
    /// Kinds already warned about in this process.
    seen: Vec<&'static str>,
    /// Warnings not yet taken by the Lua side.
    pending: Vec<String>,
}

static QUEUE: PerProcess<Mutex<Queue>> = PerProcess::new();

/// Queues `text` unless a warning of `kind` was already given in this
/// process. `text` must not hold a secret.
pub fn once(kind: &'static str, text: impl FnOnce() -> String) {
    let Ok(queue) = QUEUE.get_or_try_init(|| Ok(Mutex::new(Queue::default()))) else { return };
    let Ok(mut q) = queue.lock() else { return };
    if q.seen.contains(&kind) {
        return;
    }
    q.seen.push(kind);
    let text = text();
    q.pending.push(text);
}

/// The warnings queued since the last call (usually none: no allocation then).
pub fn take() -> Vec<String> {
    match QUEUE.get().and_then(|q| q.lock().ok()) {
        Some(mut q) if !q.pending.is_empty() => std::mem::take(&mut q.pending),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_once() {
        once("test-a", || "first a".into());
        once("test-a", || "second a".into());
        once("test-b", || "b".into());
        let got = take();
        assert!(got.contains(&"first a".to_owned()) && got.contains(&"b".to_owned()));
        assert!(!got.contains(&"second a".to_owned()));
        once("test-a", || "third a".into());
        assert!(!take().contains(&"third a".to_owned()));
    }
}
