//! `connect()`: a token (or the password), then a TLS PostgreSQL session,
//! all bounded by `pg_timeout`, wrapped in a handle that callers drive
//! either blocking (nginx init phases, the CLI) or as jobs for the I/O
//! thread (yielding nginx phases): the same futures either way.
//!
//! A handle works only in the process that opened it: its socket is
//! registered with that process's runtime, which a forked child cannot run.
//! While a query runs as a job, the job owns the connection and the handle
//! is busy; the job hands it back with its result.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conf::{ConnectConf, PoolConf};
use crate::error::{Error, ErrorKind, Result};
use crate::jobs::{self, Abandon, First};
use crate::pg::{self, QueryFailure, QueryOutput};
use crate::pool::{self, Checkout, Idle, Lease};
use crate::{credentials, process, rate, token};

/// A connection opened by [`Handle::open`] or [`Handle::open_job`].
pub struct Handle {
    state: State,
    /// The [`process::generation`] that opened it.
    owner: u64,
    timeout: Duration,
    label: String,
    /// Counts it as busy in its pool key while it is open.
    lease: Option<Lease>,
    /// How many times the pool handed this physical connection out before.
    reused: u32,
    /// When `pg_max_lifetime` (jittered) says to stop reusing it.
    retire_at: Option<Instant>,
    pool: PoolConf,
    /// Why it must not go back to the pool (a shutdown or failover error).
    not_reusable: Option<String>,
    /// The escaping session last seen, for escapes while a query runs.
    last_session: pg::escape::Session,
}

// The connection is held inline: a handle is made once per connection and
// moved rarely, so boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum State {
    Open(pg::Connection),
    /// A query job owns the connection.
    Busy,
    Closed,
}

/// What a query job hands back: the connection when it is still usable,
/// and the outcome.
pub struct QueryDone {
    conn: Option<pg::Connection>,
    result: std::result::Result<QueryOutput, QueryFailure>,
}

impl Handle {
    /// A connection as `conf` says, blocking the caller: an idle one from
    /// this process's pool when there is one, else a new one. The same
    /// future as [`Handle::open_job`], polled on the calling thread (host
    /// names resolve inline there, credentials are fetched in place), except
    /// that a blocking caller never waits for the backlog.
    pub fn open(conf: &ConnectConf) -> Result<Handle> {
        process::block_on(Self::opening(conf.clone(), false))?
    }

    /// The same as a job: an idle pooled connection, else a new one with an
    /// IAM token when IAM is on (credentials fetched without blocking), or
    /// `pg_password`. Waiting for a pooled connection (`pg_backlog`), the
    /// rate guard, the token and the session each get `pg_timeout`.
    pub fn open_job(conf: ConnectConf) -> impl Future<Output = Result<Handle>> + Send + 'static {
        Self::opening(conf, true)
    }

    async fn opening(conf: ConnectConf, may_wait: bool) -> Result<Handle> {
        let timeout = conf.endpoint.timeout;
        let lease = match pool::checkout(pool::Key::of(&conf), &conf.pool, may_wait, timeout).await? {
            Checkout::Reuse(idle, lease) => return Ok(Handle::reused(idle, lease, &conf)),
            Checkout::Open(lease) => lease,
        };
        if !conf.auth.is_iam() {
            let conn = Self::session(&conf, conf.auth.password()).await?;
            return Ok(Handle::new(conn, &conf, lease));
        }
        let started = std::time::SystemTime::now();
        rate_guard(&conf).await?;
        let token = token::issue_async(&conf.endpoint).await?;
        let conn = match Self::session(&conf, Some(&token.token)).await.inspect_err(count_refusal) {
            // RDS refused a token from the cache: its credentials may have been
            // revoked or rotated early. Drop it, refresh the credentials (at
            // most once per source per 30 s) and try once more with a new one,
            // as the AWS JDBC wrapper does.
            Err(e) if refused(&e) && token.signed_at < started => {
                token::forget(&conf.endpoint);
                credentials::invalidate(conf.endpoint.assume_role.as_ref());
                rate_guard(&conf).await?;
                let fresh = token::issue_async(&conf.endpoint).await?;
                Self::session(&conf, Some(&fresh.token)).await.inspect_err(count_refusal)?
            }
            other => other?,
        };
        crate::stats::bump(&crate::stats::IAM_AUTH_OK);
        Ok(Handle::new(conn, &conf, lease))
    }

    /// TCP, TLS, startup and authentication, within `pg_timeout`.
    async fn session(conf: &ConnectConf, password: Option<&str>) -> Result<pg::Connection> {
        tokio::time::timeout(conf.endpoint.timeout, pg::connect(conf, password)).await.map_err(|_| connect_timeout(conf))?
    }

    /// An idle pooled connection for `conf`, taken at once without any
    /// I/O, when there is one (the yielding path tries this before it hands
    /// a connect to the I/O thread).
    pub fn from_pool(conf: &ConnectConf) -> Option<Handle> {
        let (idle, lease) = pool::take_idle(pool::Key::of(conf))?;
        Some(Handle::reused(idle, lease, conf))
    }

    /// How long a caller may wait for [`Handle::open_job`]: each of its
    /// steps is bounded by `pg_timeout`; this bounds them all.
    pub fn open_bound(conf: &ConnectConf) -> Duration {
        // checkout, rate guard, token, session; and once more after a refusal
        conf.endpoint.timeout * 7
    }

    fn new(conn: pg::Connection, conf: &ConnectConf, lease: Lease) -> Handle {
        let label = format!("{}@{}/{}", conf.endpoint.user, conf.address, conf.database);
        let last_session = conn.escape_session().unwrap_or_default();
        crate::stats::bump(&crate::stats::OPEN_HANDLES);
        Handle {
            last_session,
            state: State::Open(conn),
            owner: process::generation(),
            timeout: conf.endpoint.timeout,
            label,
            lease: Some(lease),
            reused: 0,
            retire_at: pool::retire_at(conf.pool.max_lifetime),
            pool: conf.pool,
            not_reusable: None,
        }
    }

    fn reused(idle: Idle, lease: Lease, conf: &ConnectConf) -> Handle {
        let mut handle = Handle::new(idle.conn, conf, lease);
        handle.reused = idle.reused + 1;
        handle.retire_at = idle.retire_at;
        handle
    }

    /// How many times the pool handed this physical connection out before
    /// (0 for a new one), as a cosocket's `getreusedtimes`.
    pub fn reused_times(&self) -> u32 {
        self.reused
    }

    /// Puts the connection into this process's pool (then this handle is
    /// closed): for `max_idle` (zero: no limit; default `pg_keepalive_timeout`),
    /// keeping at most `size` idle ones of its key (default `pg_pool_size`).
    /// Where nothing may be pooled (`in_master`: the nginx master, which
    /// forks), or the connection is past `pg_max_lifetime`, it is closed
    /// instead, which is not an error; one in a transaction, or one that saw
    /// a shutdown or failover error, is closed and the error says why.
    pub fn keepalive(&mut self, max_idle: Option<Duration>, size: Option<usize>, in_master: bool) -> Result<()> {
        let conn = self.take_open()?;
        let lease = self.lease.take();
        if self.owner != process::generation() {
            conn.abandon();
            return Ok(());
        }
        let (Some(lease), None, false) = (lease, &self.not_reusable, in_master) else {
            process::block_on_timeout(self.timeout, conn.close())?;
            return match self.not_reusable.take() {
                Some(why) => Err(Error::new(ErrorKind::Closed, format!("connection closed instead of kept alive: {why}"))),
                None => Ok(()),
            };
        };
        let max_idle = max_idle.unwrap_or(self.pool.keepalive_timeout);
        let size = size.unwrap_or(self.pool.size);
        process::block_on(pool::put_back(lease, conn, self.reused, self.retire_at, max_idle, size))?
    }

    /// The open connection, taken out (the handle is closed after this).
    fn take_open(&mut self) -> Result<pg::Connection> {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Open(conn) => Ok(conn),
            State::Busy => {
                self.state = State::Busy;
                Err(Error::busy())
            }
            State::Closed => Err(Error::closed()),
        }
    }

    /// Runs `sql`, blocking the caller. A server error leaves the connection
    /// usable; a timeout (after which the statement is cancelled) or an I/O
    /// failure closes it.
    pub fn query(&mut self, sql: &[u8]) -> std::result::Result<QueryOutput, QueryFailure> {
        let job = self.query_job(sql.to_vec(), Abandon::never())?;
        match process::block_on(job) {
            Ok(done) => self.finish_query(done),
            Err(e) => {
                // No runtime: the connection went with the job.
                self.state = State::Closed;
                self.lease = None;
                Err(failure(e))
            }
        }
    }

    /// Takes the connection out for a query job, which hands it back in its
    /// [`QueryDone`] (see [`Handle::finish_query`]). When `abandon` is
    /// raised (the caller went away), or `pg_timeout` passes, the job cancels
    /// the statement and closes the connection.
    pub fn query_job(
        &mut self,
        sql: Vec<u8>,
        abandon: Arc<Abandon>,
    ) -> std::result::Result<impl Future<Output = QueryDone> + Send + 'static, QueryFailure> {
        self.check_owner().map_err(failure)?;
        let mut conn = match std::mem::replace(&mut self.state, State::Busy) {
            State::Open(conn) => conn,
            other => {
                let busy = matches!(other, State::Busy);
                self.state = other;
                return Err(failure(if busy { Error::busy() } else { Error::closed() }));
            }
        };
        let timeout = self.timeout;
        Ok(async move {
            let cancel = conn.cancel_token();
            let outcome = match jobs::first(tokio::time::timeout(timeout, conn.query(&sql)), abandon.raised()).await {
                First::Left(outcome) => outcome.ok(),
                First::Right(()) => None,
            };
            match outcome {
                Some(Ok(out)) => QueryDone { conn: Some(conn), result: Ok(out) },
                Some(Err(f)) => {
                    let usable = f.error.leaves_session_usable();
                    QueryDone { conn: usable.then_some(conn), result: Err(f) }
                }
                None => {
                    // The exchange stopped midway: stop the statement, and
                    // drop the connection, whose state is unknown.
                    cancel.cancel().await;
                    drop(conn);
                    let e = Error::new(ErrorKind::Timeout, format!("timeout: no result within {} ms", timeout.as_millis()));
                    QueryDone { conn: None, result: Err(failure(e)) }
                }
            }
        })
    }

    /// Takes the connection out to wait for a notification (LISTEN/NOTIFY)
    /// for up to `pg_timeout`, as a job or blocking; it comes back with
    /// [`Handle::finish_wait`]. A wait that times out leaves the connection
    /// usable (nothing was sent); one that is abandoned closes it.
    pub fn notification_job(
        &mut self,
        abandon: Arc<Abandon>,
    ) -> Result<impl Future<Output = (Option<pg::Connection>, Result<pg::Notification>)> + Send + 'static> {
        self.check_owner()?;
        let mut conn = match std::mem::replace(&mut self.state, State::Busy) {
            State::Open(conn) => conn,
            other => {
                let busy = matches!(other, State::Busy);
                self.state = other;
                return Err(if busy { Error::busy() } else { Error::closed() });
            }
        };
        let timeout = self.timeout;
        Ok(async move {
            let outcome = match jobs::first(tokio::time::timeout(timeout, conn.wait_for_notification()), abandon.raised()).await {
                First::Left(Ok(Ok(n))) => Ok(n),
                First::Left(Ok(Err(e))) => return (None, Err(e)),
                First::Left(Err(_)) => {
                    Err(Error::new(ErrorKind::Timeout, format!("timeout: no notification within {} ms", timeout.as_millis())))
                }
                First::Right(()) => return (None, Err(Error::closed())),
            };
            (Some(conn), outcome)
        })
    }

    /// Puts the connection a notification wait handed back into place.
    pub fn finish_wait(&mut self, done: (Option<pg::Connection>, Result<pg::Notification>)) -> Result<pg::Notification> {
        let (conn, outcome) = done;
        self.state = match (conn, &self.state) {
            (Some(conn), State::Busy) => State::Open(conn),
            _ => {
                self.lease = None;
                State::Closed
            }
        };
        outcome
    }

    /// [`Handle::notification_job`], blocking the caller.
    pub fn wait_for_notification(&mut self) -> Result<pg::Notification> {
        let job = self.notification_job(Abandon::never())?;
        match process::block_on(job) {
            Ok(done) => self.finish_wait(done),
            Err(e) => {
                self.state = State::Closed;
                self.lease = None;
                Err(e)
            }
        }
    }

    /// How long a caller may wait for a query job: `pg_timeout`, then the cancel.
    pub fn query_bound(&self) -> Duration {
        self.timeout + Duration::from_secs(2)
    }

    /// Puts the connection a query job handed back into place, and gives the
    /// job's outcome.
    pub fn finish_query(&mut self, done: QueryDone) -> std::result::Result<QueryOutput, QueryFailure> {
        self.state = match (done.conn, &self.state) {
            (Some(conn), State::Busy) => {
                self.last_session = conn.escape_session().unwrap_or(self.last_session);
                State::Open(conn)
            }
            _ => {
                self.lease = None;
                State::Closed
            }
        };
        if let Err(f) = &done.result {
            if let Some(state) = f.error.sqlstate().filter(|s| NOT_REUSABLE.contains(s)) {
                self.not_reusable = Some(format!("the server reported {state} ({})", f.error.message()));
            }
        }
        done.result
    }

    /// The query job's caller went away: the job closes the connection.
    pub fn abandon_query(&mut self) {
        if matches!(self.state, State::Busy) {
            self.state = State::Closed;
            self.lease = None;
        }
    }

    /// Closes the connection; a second close says `closed`, a close while a
    /// query runs `connection busy`.
    pub fn close(&mut self) -> Result<()> {
        let conn = self.take_open()?;
        self.lease = None;
        if self.owner != process::generation() {
            // Inherited across fork: close our descriptor, leave the parent's session alone.
            conn.abandon();
            return Ok(());
        }
        process::block_on_timeout(self.timeout, conn.close())?;
        Ok(())
    }

    /// How to escape values for this connection (see [`pg::escape`]): its
    /// session's encoding as last seen, or UTF-8 while a query runs.
    pub fn escape_session(&self) -> Result<pg::escape::Session> {
        match &self.state {
            State::Open(conn) => conn.escape_session(),
            _ => Ok(self.last_session),
        }
    }

    /// The notices and notifications the connection received so far.
    pub fn take_messages(&mut self) -> pg::Messages {
        match &mut self.state {
            State::Open(conn) => conn.take_messages(),
            _ => pg::Messages::default(),
        }
    }

    /// Sets the timeout for later queries.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Whether the connection is open (a running query counts as open).
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed)
    }

    /// `user@host:port/database`, for `tostring`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(&self.state, State::Open(conn) if conn.is_tls())
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

/// Waits for a slot of `pg_iam_auth_max_rate` for a new IAM login, or fails
/// when the wait would pass `pg_timeout`.
async fn rate_guard(conf: &ConnectConf) -> Result<()> {
    let timeout = conf.endpoint.timeout;
    match rate::reserve(&conf.endpoint.host, conf.endpoint.port, conf.iam_max_rate, timeout) {
        rate::Slot::After(wait) if wait.is_zero() => Ok(()),
        rate::Slot::After(wait) => {
            rate::WAITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(wait).await;
            Ok(())
        }
        rate::Slot::TooLong(wait) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "timeout: new iam logins to {}:{} are limited to {}/s (pg_iam_auth_max_rate), and the next slot is {} ms away, past pg_timeout",
                conf.endpoint.host,
                conf.endpoint.port,
                conf.iam_max_rate,
                wait.as_millis()
            ),
        )),
    }
}

/// Counts an IAM login the server refused, by SQLSTATE.
fn count_refusal(e: &Error) {
    if let Some(state) = e.sqlstate().filter(|_| e.is_auth()) {
        crate::stats::iam_auth_failed(state);
    }
}

/// Whether the server refused the login (bad password, PAM failure).
fn refused(e: &Error) -> bool {
    e.is_auth() && matches!(e.sqlstate(), Some("28000") | Some("28P01"))
}

/// SQLSTATEs after which a session is not reused: the server is shutting
/// down (admin, crash, cannot connect now) or the endpoint now points at a
/// read-only instance (an Aurora failover seen through a writer endpoint).
const NOT_REUSABLE: &[&str] = &["57P01", "57P02", "57P03", "25006"];

fn failure(error: Error) -> QueryFailure {
    QueryFailure { error, partial: Vec::new() }
}

fn connect_timeout(conf: &ConnectConf) -> Error {
    Error::new(ErrorKind::Timeout, format!("timeout: no connection to {} within {} ms", conf.address, conf.endpoint.timeout.as_millis()))
}

impl Drop for Handle {
    fn drop(&mut self) {
        crate::stats::OPEN_HANDLES.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if self.owner != process::generation() {
            if let State::Open(conn) = std::mem::replace(&mut self.state, State::Closed) {
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
