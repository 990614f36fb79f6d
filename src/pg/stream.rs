//! The socket under a connection: plain TCP or TLS over TCP (driven by
//! tokio), or the same over a cosocket's [`pipe`](super::pipe), with a
//! buffer of received bytes parsed into backend messages.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::pipe::{self, PipeEnd, PipeIo};

/// Plain or TLS transport.
pub enum Transport {
    /// No TLS.
    Plain(TcpStream),
    /// TLS (boxed: the session state is large).
    Tls(Box<TlsStream<TcpStream>>),
    /// No TLS, over a cosocket.
    Piped(PipeIo),
    /// TLS over a cosocket.
    PipedTls(Box<TlsStream<PipeIo>>),
}

/// What a transport can run over: a TCP socket or a cosocket's pipe.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// This socket as a plain transport.
    fn plain(self) -> Transport;
    /// TLS over this socket as a transport.
    fn tls(stream: TlsStream<Self>) -> Transport;
}

impl Socket for TcpStream {
    fn plain(self) -> Transport {
        Transport::Plain(self)
    }
    fn tls(stream: TlsStream<Self>) -> Transport {
        Transport::Tls(Box::new(stream))
    }
}

impl Socket for PipeIo {
    fn plain(self) -> Transport {
        Transport::Piped(self)
    }
    fn tls(stream: TlsStream<Self>) -> Transport {
        Transport::PipedTls(Box::new(stream))
    }
}

impl Transport {
    /// Whether the transport is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_) | Transport::PipedTls(_))
    }

    /// Lua's end of the pipe, for a transport over a cosocket.
    pub fn pipe(&self) -> Option<PipeEnd> {
        match self {
            Transport::Piped(p) => Some(p.end()),
            Transport::PipedTls(s) => Some(s.get_ref().0.end()),
            Transport::Plain(_) | Transport::Tls(_) => None,
        }
    }

    /// The peer certificate chain's first certificate, over TLS.
    pub fn peer_certificate(&self) -> Option<&rustls::pki_types::CertificateDer<'static>> {
        match self {
            Transport::Tls(s) => s.get_ref().1.peer_certificates().and_then(<[_]>::first),
            Transport::PipedTls(s) => s.get_ref().1.peer_certificates().and_then(<[_]>::first),
            Transport::Plain(_) | Transport::Piped(_) => None,
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Piped(s) => Pin::new(s).poll_read(cx, buf),
            Transport::PipedTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Piped(s) => Pin::new(s).poll_write(cx, buf),
            Transport::PipedTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Piped(s) => Pin::new(s).poll_flush(cx),
            Transport::PipedTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Piped(s) => Pin::new(s).poll_shutdown(cx),
            Transport::PipedTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")
}

/// A transport with framing: writes whole frontend buffers, reads whole
/// backend messages.
pub struct MessageStream {
    transport: Transport,
    read_buf: BytesMut,
}

impl MessageStream {
    /// Wraps a connected transport.
    pub fn new(transport: Transport) -> Self {
        MessageStream { transport, read_buf: BytesMut::with_capacity(16 * 1024) }
    }

    /// Whether the transport is encrypted.
    pub fn is_tls(&self) -> bool {
        self.transport.is_tls()
    }

    /// Sends `buf` (and empties it).
    pub async fn send(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        self.transport.write_all(buf).await?;
        self.transport.flush().await?;
        buf.clear();
        Ok(())
    }

    /// The next backend message.
    pub async fn recv(&mut self) -> io::Result<Message> {
        loop {
            if let Some(message) = Message::parse(&mut self.read_buf)? {
                return Ok(message);
            }
            if self.read_buf.capacity() - self.read_buf.len() < 8 * 1024 {
                self.read_buf.reserve(64 * 1024);
            }
            if self.transport.read_buf(&mut self.read_buf).await? == 0 {
                return Err(closed());
            }
        }
    }

    /// Over a pipe: sends `buf` (and empties it) at once, since a pipe
    /// takes every write.
    pub fn send_now(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        if let Transport::Piped(p) = &self.transport {
            p.write_now(buf);
            buf.clear();
            return Ok(());
        }
        let mut sent = std::pin::pin!(self.send(buf));
        match pipe::poll_now(sent.as_mut()) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => Err(io::Error::new(io::ErrorKind::WouldBlock, "the transport cannot take the bytes now")),
        }
    }

    /// Over a pipe: the next backend message among the bytes received so
    /// far, or `None` until more arrive.
    pub fn recv_now(&mut self) -> io::Result<Option<Message>> {
        // Without TLS the pipe's bytes are the messages: no future needed.
        while let Transport::Piped(p) = &self.transport {
            if let Some(message) = Message::parse(&mut self.read_buf)? {
                return Ok(Some(message));
            }
            match p.read_into(&mut self.read_buf) {
                pipe::Input::Bytes => {}
                pipe::Input::Empty => return Ok(None),
                pipe::Input::Eof => return Err(closed()),
            }
        }
        let mut next = std::pin::pin!(self.recv());
        match pipe::poll_now(next.as_mut()) {
            Poll::Ready(outcome) => outcome.map(Some),
            Poll::Pending => Ok(None),
        }
    }

    /// Lua's end of the pipe, for a transport over a cosocket.
    pub fn pipe(&self) -> Option<PipeEnd> {
        self.transport.pipe()
    }

    /// Whether bytes were received that no message has consumed yet.
    pub fn has_buffered_input(&self) -> bool {
        !self.read_buf.is_empty()
    }

    /// The socket's file descriptor (none over a cosocket: nginx owns it).
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match &self.transport {
            Transport::Plain(s) => Some(s.as_raw_fd()),
            Transport::Tls(s) => Some(s.get_ref().0.as_raw_fd()),
            Transport::Piped(_) | Transport::PipedTls(_) => None,
        }
    }

    /// Shuts the transport down (TLS close_notify, then FIN).
    pub async fn shutdown(&mut self) {
        let _ = self.transport.shutdown().await;
    }
}
