//! The job table: work a yielding Lua caller hands to this process's I/O
//! thread, and the results it takes back.
//!
//! A job is a future stored under a number. The caller submits it (nothing
//! runs yet), then names the number on its wake socket; the I/O thread's
//! listener starts the job, and writes one byte back when it is done (see
//! [`io_thread`](crate::io_thread)). The caller then [`take`]s the output.
//! A caller that goes away [`abandon`]s its job: a job not started yet is
//! dropped, a running one is told through its [`Abandon`] signal (a query
//! uses it to cancel the statement) and its output is dropped when it ends.
//!
//! The same futures run on the blocking path through
//! [`process::block_on`](crate::process::block_on), with a signal that
//! never fires: one code path for both.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::error::{Error, ErrorKind, Result};
use crate::process::PerProcess;

/// What a job produced, type-erased; [`take`] gives it its type back.
pub type Output = Box<dyn Any + Send>;

/// A submitted job, not started yet.
pub type Job = Pin<Box<dyn Future<Output = Output> + Send>>;

/// Tells a running job that nobody waits for it any more.
#[derive(Default)]
pub struct Abandon {
    abandoned: AtomicBool,
    notify: Notify,
}

impl Abandon {
    /// A signal for a new job (raised if its caller goes away).
    pub fn new_signal() -> Arc<Abandon> {
        Arc::new(Abandon::default())
    }

    /// A signal that no caller will raise (the blocking path's).
    pub fn never() -> Arc<Abandon> {
        Arc::new(Abandon::default())
    }

    /// Whether the caller went away.
    pub fn is_raised(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// Completes once the caller went away (never, if it does not).
    pub async fn raised(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_raised() {
                return;
            }
            notified.await;
        }
    }

    fn raise(&self) {
        self.abandoned.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

enum Entry {
    /// Submitted; starts when its number arrives on the wake socket.
    Pending(Job, Arc<Abandon>),
    /// Started by the listener.
    Running(Arc<Abandon>),
    /// Finished; waiting for [`take`].
    Done(Output),
}

#[derive(Default)]
struct Table {
    next: u64,
    entries: HashMap<u64, Entry>,
}

static TABLE: PerProcess<Mutex<Table>> = PerProcess::new();

fn table() -> Result<MutexGuard<'static, Table>> {
    let table = TABLE.get_or_try_init(|| Ok(Mutex::new(Table::default())))?;
    Ok(table.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// Stores the job `make` builds and returns its number. `make` gets the
/// job's abandon signal.
pub fn submit<T, F>(make: impl FnOnce(Arc<Abandon>) -> F) -> Result<u64>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let abandon = Arc::new(Abandon::default());
    let future = make(abandon.clone());
    submit_with(abandon, future)
}

/// [`submit`] for a job built beforehand with `abandon` as its signal
/// ([`Abandon::new_signal`]), when building it may fail.
pub fn submit_with<T, F>(abandon: Arc<Abandon>, future: F) -> Result<u64>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let job: Job = Box::pin(async move { Box::new(future.await) as Output });
    crate::stats::bump(&crate::stats::JOBS_SUBMITTED);
    let mut t = table()?;
    t.next += 1;
    let id = t.next;
    t.entries.insert(id, Entry::Pending(job, abandon));
    Ok(id)
}

/// Takes the output of finished job `id`, as the type it was submitted with.
pub fn take<T: 'static>(id: u64) -> Result<T> {
    let mut t = table()?;
    match t.entries.remove(&id) {
        Some(Entry::Done(output)) => match output.downcast::<T>() {
            Ok(value) => Ok(*value),
            Err(other) if other.is::<Panicked>() => Err(Error::internal()),
            Err(_) => Err(Error::new(ErrorKind::Runtime, "internal error: job result of another kind")),
        },
        Some(other) => {
            t.entries.insert(id, other);
            Err(Error::new(ErrorKind::Runtime, "internal error: job not finished"))
        }
        None => Err(Error::new(ErrorKind::Runtime, "internal error: no such job")),
    }
}

/// The caller of `id` went away: a pending job is dropped unstarted, a
/// running one is signalled and forgotten, a finished one's output dropped.
pub fn abandon(id: u64) {
    let Ok(mut t) = table() else { return };
    let removed = t.entries.remove(&id);
    drop(t);
    // Dropped outside the lock: a job's output may own a connection.
    match removed {
        Some(Entry::Pending(_, abandon)) | Some(Entry::Running(abandon)) => abandon.raise(),
        Some(Entry::Done(_)) | None => {}
    }
}

/// How many jobs the table holds (pending, running, or finished but not taken).
pub fn count() -> usize {
    table().map(|t| t.entries.len()).unwrap_or(0)
}

/// For the listener: marks `id` running and hands its future over, or
/// `None` when there is no pending job of that number.
pub(crate) fn start(id: u64) -> Option<Job> {
    let mut t = table().ok()?;
    match t.entries.remove(&id)? {
        Entry::Pending(job, abandon) => {
            t.entries.insert(id, Entry::Running(abandon));
            Some(job)
        }
        other => {
            t.entries.insert(id, other);
            None
        }
    }
}

/// For the listener: stores the output of running job `id`; returns false
/// (and drops the output) when the job was abandoned meanwhile.
pub(crate) fn finish(id: u64, output: Output) -> bool {
    let Ok(mut t) = table() else { return false };
    if let Some(entry @ Entry::Running(_)) = t.entries.get_mut(&id) {
        *entry = Entry::Done(output);
        return true;
    }
    drop(t);
    drop(output);
    false
}

/// Which of two futures finished first.
pub enum First<A, B> {
    /// The first one (polled first, so it wins a tie).
    Left(A),
    /// The second one.
    Right(B),
}

/// Runs `a` and `b` together until one finishes; the other is dropped.
pub async fn first<A: Future, B: Future>(a: A, b: B) -> First<A::Output, B::Output> {
    tokio::pin!(a);
    tokio::pin!(b);
    std::future::poll_fn(|cx| {
        use std::task::Poll;
        if let Poll::Ready(out) = a.as_mut().poll(cx) {
            return Poll::Ready(First::Left(out));
        }
        if let Poll::Ready(out) = b.as_mut().poll(cx) {
            return Poll::Ready(First::Right(out));
        }
        Poll::Pending
    })
    .await
}

/// Runs `future`, turning a panic while it is polled into `Err(())`: for
/// third-party futures that panic on input they did not expect (aws-config's
/// IMDS client on a malformed role name), so that the caller can say what
/// failed instead of "internal error".
pub async fn catching<F: Future>(future: F) -> std::result::Result<F::Output, ()> {
    tokio::pin!(future);
    std::future::poll_fn(|cx| match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
        Ok(std::task::Poll::Ready(out)) => std::task::Poll::Ready(Ok(out)),
        Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
        Err(_) => std::task::Poll::Ready(Err(())),
    })
    .await
}

/// The output of a job that panicked.
pub(crate) struct Panicked;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_runs_when_started_and_its_output_is_taken_once() {
        let id = submit(|_| async { 41 + 1 }).unwrap();
        assert!(take::<i32>(id).is_err(), "not finished yet");
        let job = start(id).unwrap();
        assert!(start(id).is_none(), "started twice");
        let output = crate::process::block_on(job).unwrap();
        assert!(finish(id, output));
        assert_eq!(take::<i32>(id).unwrap(), 42);
        assert_eq!(take::<i32>(id).unwrap_err().message(), "internal error: no such job");
    }

    #[test]
    fn abandoning_drops_or_signals() {
        let id = submit(|_| async {}).unwrap();
        abandon(id);
        assert!(start(id).is_none());
        let seen = Arc::new(AtomicBool::new(false));
        let s = seen.clone();
        let id = submit(move |abandon| async move {
            abandon.raised().await;
            s.store(true, Ordering::SeqCst);
        })
        .unwrap();
        let job = start(id).unwrap();
        abandon(id);
        let output = crate::process::block_on(job).unwrap();
        assert!(seen.load(Ordering::SeqCst), "the running job saw the signal");
        assert!(!finish(id, output), "an abandoned job's output is dropped");
    }

    #[test]
    fn a_panicked_job_reads_as_an_internal_error() {
        let id = submit(|_| async {}).unwrap();
        drop(start(id).unwrap());
        assert!(finish(id, Box::new(Panicked)));
        assert!(take::<()>(id).unwrap_err().message().starts_with("internal error"));
    }
}
