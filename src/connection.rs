//! `connect()`: a token (or the password), then a TLS PostgreSQL session,
//! all bounded by `pg_timeout`, wrapped in a handle that callers drive
//! synchronously (nginx init phases, timers, the CLI).
//!
//! A handle works only in the process that opened it: its socket is
//! registered with that process's runtime, which a forked child cannot run.

use std::borrow::Cow;
use std::time::Duration;

use crate::conf::ConnectConf;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::{self, QueryFailure, QueryOutput};
use crate::{process, token};

/// A connection opened by [`Handle::open`].
pub struct Handle {
    conn: Option<pg::Connection>,
    /// The [`process::generation`] that opened it.
    owner: u64,
    timeout: Duration,
    label: String,
}

impl Handle {
    /// Opens a connection as `conf` says: with an IAM token when IAM is on,
    /// else with `pg_password`.
    pub fn open(conf: &ConnectConf) -> Result<Handle> {
        let token = if conf.iam { Some(token::issue(Cow::Borrowed(&conf.endpoint))?) } else { None };
        let password = match &token {
            Some(t) => Some(t.token.as_str()),
            None => conf.password.as_deref(),
        };
        let timeout = conf.endpoint.timeout;
        let label = format!(
            "{}@{}:{}/{}",
            conf.endpoint.user, conf.endpoint.host, conf.endpoint.port, conf.database
        );
        let conn = process::block_on_timeout(timeout, pg::connect(conf, password))?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Timeout,
                    format!("timeout: no connection to {}:{} within {} ms", conf.endpoint.host, conf.endpoint.port, timeout.as_millis()),
                )
            })??;
        Ok(Handle { conn: Some(conn), owner: process::generation(), timeout, label })
    }

    /// Runs `sql`. A server error leaves the connection usable; a timeout
    /// or I/O failure closes it.
    pub fn query(&mut self, sql: &[u8]) -> std::result::Result<QueryOutput, QueryFailure> {
        let fail = |error: Error| QueryFailure { error, partial: Vec::new(), usable: false };
        self.check_owner().map_err(fail)?;
        let Some(conn) = self.conn.as_mut() else { return Err(fail(Error::closed())) };
        let timeout = self.timeout;
        let outcome = process::block_on_timeout(timeout, conn.query(sql)).map_err(fail)?;
        match outcome {
            Some(Ok(out)) => Ok(out),
            Some(Err(failure)) => {
                if !failure.usable {
                    self.conn = None;
                }
                Err(failure)
            }
            None => {
                // The exchange stopped midway: the connection cannot be trusted any more.
                self.conn = None;
                Err(fail(Error::new(ErrorKind::Timeout, format!("timeout: no result within {} ms", timeout.as_millis()))))
            }
        }
    }

    /// Closes the connection; a second close says `closed`.
    pub fn close(&mut self) -> Result<()> {
        let conn = self.conn.take().ok_or_else(Error::closed)?;
        if self.owner != process::generation() {
            // Inherited across fork: close our descriptor, leave the parent's session alone.
            conn.abandon();
            return Ok(());
        }
        let timeout = self.timeout;
        process::block_on_timeout(timeout, conn.close())?;
        Ok(())
    }

    /// Sets the timeout for later queries.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Whether the connection is open.
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// `user@host:port/database`, for `tostring`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.conn.as_ref().is_some_and(pg::Connection::is_tls)
    }

    fn check_owner(&self) -> Result<()> {
        if self.owner != process::generation() {
            return Err(Error::new(
                ErrorKind::Closed,
                "connection belongs to another process (opened before fork): open a new one in this process",
            ));
        }
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.owner != process::generation() {
            if let Some(conn) = self.conn.take() {
                conn.abandon();
            }
        }
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("label", &self.label).field("open", &self.is_open()).finish()
    }
}
