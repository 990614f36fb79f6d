//! CancelRequest: asks the server to stop the statement a connection runs.
//!
//! PostgreSQL takes it on a new connection to the same server process'
//! postmaster, naming the backend by its process id and secret key (from
//! BackendKeyData). It is sent to the address the connection really
//! reached, not by host name again, so it cannot land on another server.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What it takes to cancel a connection's running statement.
#[derive(Clone, Copy)]
pub struct CancelToken {
    pub(super) addr: SocketAddr,
    pub(super) process_id: i32,
    pub(super) secret_key: i32,
}

impl CancelToken {
    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// How long a cancel may take; it is best effort.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

impl CancelToken {
    /// Sends the CancelRequest and waits for the server to close that
    /// connection (it answers nothing); errors are ignored.
    pub async fn cancel(self) {
        let _ = tokio::time::timeout(CANCEL_TIMEOUT, async move {
            let mut tcp = TcpStream::connect(self.addr).await?;
            let mut buf = BytesMut::with_capacity(16);
            frontend::cancel_request(self.process_id, self.secret_key, &mut buf);
            tcp.write_all(&buf).await?;
            let mut sink = [0u8; 16];
            while tcp.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await;
    }
}

impl std::fmt::Debug for CancelToken {
    /// The secret key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken").field("addr", &self.addr).field("process_id", &self.process_id).finish_non_exhaustive()
    }
}
