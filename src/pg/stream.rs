//! The socket under a connection: plain TCP or TLS over TCP, with a buffer
//! of received bytes parsed into backend messages.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Plain or TLS transport.
pub enum Transport {
    /// No TLS.
    Plain(TcpStream),
    /// TLS (boxed: the session state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// Whether the transport is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
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
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
            }
        }
    }

    /// Whether bytes were received that no message has consumed yet.
    pub fn has_buffered_input(&self) -> bool {
        !self.read_buf.is_empty()
    }

    /// The socket's file descriptor.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match &self.transport {
            Transport::Plain(s) => s.as_raw_fd(),
            Transport::Tls(s) => s.get_ref().0.as_raw_fd(),
        }
    }

    /// Shuts the transport down (TLS close_notify, then FIN).
    pub async fn shutdown(&mut self) {
        let _ = self.transport.shutdown().await;
    }
}
