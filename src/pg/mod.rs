//! A small PostgreSQL client for the simple query protocol, with TLS and
//! every password method the server may ask for (cleartext, which is how
//! an IAM token travels; md5; SCRAM-SHA-256).
//!
//! Why not tokio-postgres: its simple-query API hides column types, and its
//! typed API costs two round trips per ad-hoc statement. pgmoon semantics
//! (typed rows, several statements per call) need the simple protocol with
//! the `RowDescription` types, one round trip. The message codec and SCRAM
//! come from postgres-protocol, tokio-postgres's own wire layer.

mod server_error;
mod startup;
mod stream;
pub mod query;
pub mod value;

pub use query::{QueryFailure, QueryOutput, Statement};
pub use startup::connect;

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use stream::MessageStream;

/// An open, authenticated connection.
pub struct Connection {
    stream: MessageStream,
    buf: BytesMut,
    server_version: String,
    backend_pid: i32,
}

impl Connection {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// The server's `server_version` parameter.
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// The server process serving this connection.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Closes the socket without touching the runtime it is registered with.
    ///
    /// For a connection inherited across `fork`: the epoll instance behind
    /// its registration is shared with the parent, so the usual drop (which
    /// deregisters the socket) would silently break the parent's copy. Here
    /// the value is forgotten and only this process's descriptor is closed.
    pub fn abandon(self) {
        let fd = self.stream.raw_fd();
        std::mem::forget(self);
        // SAFETY: `fd` belongs to the forgotten stream, which will never use
        // or close it again; closing it drops this process's reference only.
        unsafe {
            libc::close(fd);
        }
    }

    /// Says goodbye (`Terminate`) and closes the socket.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.buf);
        let _ = self.stream.send(&mut self.buf).await;
        self.stream.shutdown().await;
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("tls", &self.is_tls())
            .field("server_version", &self.server_version)
            .field("backend_pid", &self.backend_pid)
            .finish()
    }
}
