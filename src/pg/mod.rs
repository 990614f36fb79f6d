//! A small PostgreSQL client for the simple query protocol, with TLS and
//! every password method the server may ask for (cleartext, which is how
//! an IAM token travels; md5; SCRAM-SHA-256).
//!
//! Why not tokio-postgres: its simple-query API hides column types, and its
//! typed API costs two round trips per ad-hoc statement. pgmoon semantics
//! (typed rows, several statements per call) need the simple protocol with
//! the `RowDescription` types, one round trip. The message codec and SCRAM
//! come from postgres-protocol, tokio-postgres's own wire layer.

mod cancel;
mod channel_binding;
pub mod escape;
pub mod pipe;
pub mod query;
pub mod require_auth;
mod server_error;
mod startup;
mod stream;
pub mod value;

pub use cancel::CancelToken;
pub use query::{QueryFailure, QueryOutput, QueryRun, Statement};
pub use startup::{connect, connect_piped};

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use stream::MessageStream;

/// An open, authenticated connection.
///
/// Its state is boxed: a pooled connection moves between the pool and a
/// handle (and through their functions) on every checkout and keepalive,
/// and a pointer moves where the whole state (a few hundred bytes, cold in
/// the cache when the pool is large) would be copied each time.
pub struct Connection(Box<Session>);

/// A connection's state (see [`Connection`]).
pub struct Session {
    stream: MessageStream,
    buf: BytesMut,
    server_version: String,
    cancel: CancelToken,
    /// The transaction status of the last ReadyForQuery: `I` idle, `T` in
    /// a transaction, `E` in a failed transaction.
    status: u8,
    /// Notices and notifications received since they were last taken.
    messages: Messages,
    /// `client_encoding`, as the server last reported it.
    client_encoding: String,
    /// That encoding as the escaper knows it (`None`: one it does not know).
    encoding: Option<escape::Encoding>,
    /// `standard_conforming_strings`, as the server last reported it.
    standard_conforming_strings: bool,
    /// The columns of the last row description (see `columns_of`).
    last_columns: Option<std::sync::Arc<[query::Column]>>,
}

/// What the server said besides results: `NOTIFY` payloads and notices.
#[derive(Debug, Default)]
pub struct Messages {
    /// Notifications (LISTEN/NOTIFY), oldest first.
    pub notifications: Vec<Notification>,
    /// Notices, as `SEVERITY: message` text.
    pub notices: Vec<String>,
}

/// One `NOTIFY` that reached this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The notifying backend.
    pub process_id: i32,
    /// The channel.
    pub channel: String,
    /// The payload.
    pub payload: String,
}

impl Connection {
    fn new(session: Session) -> Connection {
        Connection(Box::new(session))
    }

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
        self.cancel.process_id
    }

    /// How to escape values for this session: its client encoding and
    /// `standard_conforming_strings`, as the server last reported them (an
    /// encoding the escaper does not know is an error, never a guess).
    pub fn escape_session(&self) -> Result<escape::Session, crate::error::Error> {
        let encoding = self
            .encoding
            .ok_or_else(|| crate::error::Error::config(format!("cannot escape values for client_encoding {:?}", self.client_encoding)))?;
        Ok(escape::Session { encoding, standard_conforming_strings: self.standard_conforming_strings })
    }

    /// Notes a `ParameterStatus` the escaper depends on.
    fn parameter(&mut self, name: &str, value: &str) {
        match name {
            "client_encoding" => {
                self.client_encoding = value.to_owned();
                self.encoding = escape::Encoding::from_name(value);
            }
            "standard_conforming_strings" => self.standard_conforming_strings = value == "on",
            _ => {}
        }
    }

    /// Takes the notices and notifications received so far.
    pub fn take_messages(&mut self) -> Messages {
        std::mem::take(&mut self.messages)
    }

    /// Whether the session is idle: not in a transaction (ReadyForQuery 'I').
    pub fn is_idle(&self) -> bool {
        self.status == b'I'
    }

    /// Whether the server still holds the connection: nothing arrived while
    /// it was idle (no EOF, no unsolicited error such as an administrator's
    /// shutdown), checked without blocking.
    ///
    /// Over a cosocket nginx watches the idle socket instead: it closes one
    /// the server closed, and the next checkout then finds it gone.
    pub fn is_alive(&self) -> bool {
        if self.stream.has_buffered_input() {
            return false;
        }
        let Some(fd) = self.stream.raw_fd() else { return true };
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local buffer on our own socket; it
        // neither blocks (MSG_DONTWAIT) nor consumes anything (MSG_PEEK).
        let n = unsafe { libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        n < 0 && matches!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
    }

    /// Lua's end of the pipe, for a connection over a cosocket.
    pub fn pipe(&self) -> Option<pipe::PipeEnd> {
        self.stream.pipe()
    }

    /// Says goodbye (`Terminate`) over a cosocket: the bytes wait in the
    /// pipe for Lua to send before it closes the cosocket.
    pub fn close_piped(mut self) {
        frontend::terminate(&mut self.buf);
        let _ = self.send_buffered_now();
    }

    /// What [`CancelToken::cancel`] needs to stop this connection's statement.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel
    }

    /// Closes the socket without touching the runtime it is registered with.
    ///
    /// For a connection inherited across `fork`: the epoll instance behind
    /// its registration is shared with the parent, so the usual drop (which
    /// deregisters the socket) would silently break the parent's copy. Here
    /// the value is forgotten and only this process's descriptor is closed.
    pub fn abandon(self) {
        let Some(fd) = self.stream.raw_fd() else { return };
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
        let _ = self.send_buffered().await;
        self.stream.shutdown().await;
    }
}

impl Session {
    /// Sends the messages written into `buf`.
    async fn send_buffered(&mut self) -> std::io::Result<()> {
        self.stream.send(&mut self.buf).await
    }

    /// [`Session::send_buffered`] without waiting (over a pipe).
    fn send_buffered_now(&mut self) -> std::io::Result<()> {
        self.stream.send_now(&mut self.buf)
    }
}

impl std::ops::Deref for Connection {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.0
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.0
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("tls", &self.is_tls())
            .field("server_version", &self.server_version)
            .field("backend_pid", &self.cancel.process_id)
            .finish()
    }
}
