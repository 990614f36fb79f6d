//! A connection whose bytes travel through an nginx cosocket.
//!
//! In a yielding nginx phase the socket to the server is a cosocket, which
//! only Lua can read and write; nginx's event loop waits on it, as it does
//! for pgmoon, so a query costs no hand-off to another thread. The
//! connection's protocol and TLS state stay here: the [`PipeIo`] under its
//! transport holds the bytes the cosocket received (fed in by Lua) and the
//! bytes to send (taken out by Lua). Reading an empty pipe is `Pending`;
//! whoever polls (see [`poll_now`]) then hands control back to Lua, which
//! receives more and polls again. Writes never wait.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The bytes between a connection and its cosocket.
#[derive(Default)]
struct Buffers {
    /// Received by the cosocket, not read by the connection yet.
    inbox: BytesMut,
    /// Written by the connection, not sent by the cosocket yet.
    outbox: BytesMut,
    /// The cosocket saw the server close the connection.
    eof: bool,
}

/// The transport end of a pipe (under a connection's TLS, if any).
pub struct PipeIo {
    id: u64,
    shared: Arc<Mutex<Buffers>>,
    name: Arc<str>,
}

/// Lua's end of a pipe: feeds received bytes in, takes bytes to send out.
#[derive(Clone)]
pub struct PipeEnd {
    id: u64,
    shared: Arc<Mutex<Buffers>>,
    name: Arc<str>,
}

/// A new pipe: its transport end and Lua's end. Each pipe has a number,
/// unique in the process, that names its cosocket's keep-alive pool.
pub fn new() -> (PipeIo, PipeEnd) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let shared = Arc::new(Mutex::new(Buffers::default()));
    let name: Arc<str> = format!("kong_rds_iam#{}#{id}", std::process::id()).into();
    (PipeIo { id, shared: shared.clone(), name: name.clone() }, PipeEnd { id, shared, name })
}

fn lock(shared: &Mutex<Buffers>) -> MutexGuard<'_, Buffers> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`PipeIo::read_into`] found in the pipe.
pub enum Input {
    /// Received bytes, now appended to the buffer.
    Bytes,
    /// Nothing yet: the cosocket has to receive more.
    Empty,
    /// Nothing, and the server closed the connection.
    Eof,
}

impl PipeIo {
    /// The pipe's number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Moves the bytes received so far to the end of `buf`: what
    /// [`AsyncRead`] does, without a future, for a reader that knows it
    /// holds a pipe (the connection's hot path over a cosocket).
    pub fn read_into(&self, buf: &mut BytesMut) -> Input {
        let mut b = lock(&self.shared);
        if b.inbox.is_empty() {
            return if b.eof { Input::Eof } else { Input::Empty };
        }
        buf.extend_from_slice(&b.inbox);
        b.inbox.clear();
        Input::Bytes
    }

    /// Queues `data` to send: what [`AsyncWrite`] does, without a future.
    pub fn write_now(&self, data: &[u8]) {
        lock(&self.shared).outbox.extend_from_slice(data);
    }

    /// Lua's end of this pipe.
    pub fn end(&self) -> PipeEnd {
        PipeEnd { id: self.id, shared: self.shared.clone(), name: self.name.clone() }
    }
}

impl PipeEnd {
    /// The pipe's number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The name of the nginx keep-alive pool for this pipe's cosocket
    /// (`kong_rds_iam#<pid>#<number>`): one per physical connection.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes the cosocket received.
    pub fn feed(&self, data: &[u8]) {
        lock(&self.shared).inbox.extend_from_slice(data);
    }

    /// The cosocket saw the server close the connection.
    pub fn close_input(&self) {
        lock(&self.shared).eof = true;
    }

    /// The bytes to send, taken out (empty when there are none).
    pub fn take_output(&self) -> BytesMut {
        lock(&self.shared).outbox.split()
    }
}

impl AsyncRead for PipeIo {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut b = lock(&self.shared);
        if b.inbox.is_empty() {
            // Nothing to wake: the poller feeds the pipe and polls again.
            return if b.eof { Poll::Ready(Ok(())) } else { Poll::Pending };
        }
        let n = b.inbox.len().min(buf.remaining());
        buf.put_slice(&b.inbox[..n]);
        // Advancing keeps the inbox one buffer (split_to would share it).
        bytes::Buf::advance(&mut b.inbox, n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PipeIo {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.write_now(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Polls `future` once on the calling thread. Over a pipe, `Pending` means
/// "the pipe is empty": nothing will wake the future, its poller feeds the
/// pipe and polls again.
pub fn poll_now<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn bytes_go_through_and_an_empty_pipe_is_pending() {
        let (mut io, end) = new();
        assert_ne!(io.id(), new().0.id(), "each pipe has its own number");
        let mut buf = [0u8; 8];
        {
            let mut read = std::pin::pin!(io.read(&mut buf));
            assert!(poll_now(read.as_mut()).is_pending());
        }
        end.feed(b"abc");
        let mut read = std::pin::pin!(io.read(&mut buf));
        assert!(matches!(poll_now(read.as_mut()), Poll::Ready(Ok(3))));
        let mut write = std::pin::pin!(io.write_all(b"xyz"));
        assert!(matches!(poll_now(write.as_mut()), Poll::Ready(Ok(()))));
        assert_eq!(&end.take_output()[..], b"xyz");
        assert!(end.take_output().is_empty());
        end.close_input();
        let mut read = std::pin::pin!(io.read(&mut buf));
        assert!(matches!(poll_now(read.as_mut()), Poll::Ready(Ok(0))), "eof reads as 0 bytes");
    }

    #[test]
    fn read_into_and_write_now_go_around_the_futures() {
        let (io, end) = new();
        let mut buf = BytesMut::from(&b"ab"[..]);
        assert!(matches!(io.read_into(&mut buf), Input::Empty));
        end.feed(b"cd");
        end.feed(b"e");
        assert!(matches!(io.read_into(&mut buf), Input::Bytes));
        assert_eq!(&buf[..], b"abcde", "appended, in order");
        assert!(matches!(io.read_into(&mut buf), Input::Empty), "the inbox was emptied");
        io.write_now(b"xy");
        io.write_now(b"z");
        assert_eq!(&end.take_output()[..], b"xyz");
        end.close_input();
        assert!(matches!(io.read_into(&mut buf), Input::Eof));
        end.feed(b"f");
        assert!(matches!(io.read_into(&mut buf), Input::Bytes), "bytes before eof are still read");
    }
}
