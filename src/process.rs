//! Per-process state, for fork safety.
//!
//! A tokio runtime (and any HTTP client or socket registered with it) made
//! before `fork` is dead in the child: nginx's master loads the module, then
//! forks workers. So nothing here is created at load time; each piece is
//! created on first use in a process and remembered with the process
//! [`generation`]. A new generation means a forked child: it gets new ones,
//! and the inherited ones are leaked on purpose (dropping them would try to
//! stop threads that do not exist in the child).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static WATCH_FORKS: Once = Once::new();

/// What the child of every `fork` runs, before anything else in it: the
/// crate's one fork handler. Only atomic stores (async-signal-safe).
extern "C" fn forked_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
    crate::stats::zero_in_child();
}

/// Registers [`forked_child`] with `pthread_atfork`, once per process tree
/// (a child inherits the registration). Called before any per-process value
/// or count exists, so none can predate it.
pub fn watch_forks() {
    WATCH_FORKS.call_once(|| {
        // SAFETY: registers a handler that only stores into atomics; the
        // library is never unmapped (see the Lua binding's pin), so it stays
        // valid.
        unsafe {
            libc::pthread_atfork(None, None, Some(forked_child));
        }
    });
}

/// Which process this is, cheaply: a number that changes in the child of
/// every `fork`. The fork handler bumps it, so checking it costs an atomic
/// load where `getpid` costs a system call (once per query and per token).
pub fn generation() -> u64 {
    watch_forks();
    GENERATION.load(Ordering::Relaxed)
}

use crate::error::{Error, ErrorKind, Result};

/// A value created once per process, on first use.
pub struct PerProcess<T: 'static> {
    slot: Mutex<Option<(u64, &'static T)>>,
}

impl<T: Send + Sync + 'static> PerProcess<T> {
    /// An empty slot.
    pub const fn new() -> Self {
        PerProcess { slot: Mutex::new(None) }
    }

    /// This process's value, if it was created.
    pub fn get(&self) -> Option<&'static T> {
        let generation = generation();
        let slot = self.slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match *slot {
            Some((owner, value)) if owner == generation => Some(value),
            _ => None,
        }
    }

    /// This process's value, created with `init` if this process has none.
    pub fn get_or_try_init(&self, init: impl FnOnce() -> Result<T>) -> Result<&'static T> {
        let generation = generation();
        let mut slot = self.slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((owner, value)) = *slot {
            if owner == generation {
                return Ok(value);
            }
        }
        let value: &'static T = Box::leak(Box::new(init()?));
        *slot = Some((generation, value));
        Ok(value)
    }
}

impl<T: Send + Sync + 'static> Default for PerProcess<T> {
    fn default() -> Self {
        Self::new()
    }
}

static RUNTIME: PerProcess<tokio::runtime::Runtime> = PerProcess::new();

/// This process's runtime, created on first use.
///
/// The runtime is current-thread: it starts no worker thread, and runs only
/// while a thread blocks on it: a blocking caller, or this process's I/O
/// thread once a yielding call started it (see [`io_thread`](crate::io_thread)).
/// With the I/O thread running, a blocking caller still works: it polls its
/// own future while the I/O thread drives timers and sockets. Blocking DNS
/// look-ups on the I/O thread use tokio's blocking pool, whose threads exit
/// after a second idle; a blocking caller resolves inline.
pub fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    RUNTIME.get_or_try_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Blocking-pool threads (DNS on the I/O thread), named for /proc.
            .thread_name("kong_rds_iam-dns")
            .thread_keep_alive(Duration::from_secs(1))
            .build()
            .map_err(|e| Error::new(ErrorKind::Runtime, format!("could not start the async runtime: {e}")))
    })
}

/// Runs `future` to completion on this process's runtime, blocking the caller.
pub fn block_on<F: Future>(future: F) -> Result<F::Output> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::new(ErrorKind::Runtime, "cannot block inside an async context"));
    }
    Ok(runtime()?.block_on(future))
}

/// Runs `future` in the background on the I/O thread; false (and nothing
/// runs) when this process has no I/O thread to drive it.
pub fn spawn_background<F: Future<Output = ()> + Send + 'static>(future: F) -> bool {
    if !crate::io_thread::running() {
        return false;
    }
    match RUNTIME.get() {
        Some(runtime) => {
            drop(runtime.spawn(future));
            true
        }
        None => false,
    }
}

/// Runs `future` with a deadline; `None` when it did not finish in time.
/// The timer is created inside the runtime, where tokio needs it.
pub fn block_on_timeout<F: Future>(timeout: Duration, future: F) -> Result<Option<F::Output>> {
    block_on(async move { tokio::time::timeout(timeout, future).await.ok() })
}

/// The file this library was loaded from (dladdr of one of its functions).
pub fn library_path() -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: dladdr only reads the loader's tables for an address inside
    // this library; the name it reports lives as long as the library.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let addr = library_path as *const () as *const libc::c_void;
        if libc::dladdr(addr, &mut info) != 0 && !info.dli_fname.is_null() {
            let name = std::ffi::CStr::from_ptr(info.dli_fname);
            return Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes())));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_process_value_is_created_once() {
        static SLOT: PerProcess<u32> = PerProcess::new();
        let a = SLOT.get_or_try_init(|| Ok(1)).unwrap();
        let b = SLOT.get_or_try_init(|| Ok(2)).unwrap();
        assert_eq!((*a, *b), (1, 1));
    }

    #[test]
    fn generation_changes_in_a_forked_child_only() {
        let before = generation();
        assert_eq!(generation(), before);
        // SAFETY: the child only reads an atomic and calls _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::_exit(if generation() != before { 0 } else { 1 });
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child saw the same generation");
        }
        assert_eq!(generation(), before);
    }

    #[test]
    fn block_on_runs_futures_and_refuses_nesting() {
        assert_eq!(block_on(async { 7 }).unwrap(), 7);
        let nested = block_on(async { block_on(async { 1 }) }).unwrap();
        assert_eq!(nested.unwrap_err().message(), "cannot block inside an async context");
    }

    #[test]
    fn block_on_timeout_reports_expiry() {
        assert_eq!(block_on_timeout(Duration::from_secs(5), async { 3 }).unwrap(), Some(3));
        let slow = block_on_timeout(Duration::from_millis(20), async { tokio::time::sleep(Duration::from_secs(5)).await }).unwrap();
        assert_eq!(slow, None);
    }
}
