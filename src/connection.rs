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
use crate::pg::pipe::{self as pg_pipe, PipeEnd};
use crate::pg::{self, QueryFailure, QueryOutput};
use crate::pool::{self, Checkout, Idle, Lease};
use crate::{credentials, process, rate, token};

/// A connection opened by [`Handle::open`] or [`Handle::open_job`].
pub struct Handle {
    state: State,
    /// The [`process::generation`] that opened it.
    owner: u64,
    timeout: Duration,
    label: Arc<str>,
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
    /// Lua's end of the pipe, for a connection over a cosocket.
    pipe: Option<PipeEnd>,
    /// What runs over the cosocket now, if anything.
    piped: Option<Piped>,
    /// Whether it counts in `stats::OPEN_HANDLES` (until it gives its
    /// connection up, or is dropped).
    counted: bool,
}

/// An exchange in progress over a cosocket.
enum Piped {
    Query(pg::QueryRun),
    Notification,
}

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
        let (idle, lease) = pool::take_idle(Arc::new(pool::Key::of(conf)))?;
        Some(Handle::reused(idle, lease, conf))
    }

    /// How long a caller may wait for [`Handle::open_job`]: each of its
    /// steps is bounded by `pg_timeout`; this bounds them all.
    pub fn open_bound(conf: &ConnectConf) -> Duration {
        // checkout, rate guard, token, session; and once more after a refusal
        conf.endpoint.timeout * 7
    }

    fn new(conn: pg::Connection, conf: &ConnectConf, lease: Lease) -> Handle {
        let label = format!("{}@{}/{}", conf.endpoint.user, conf.address, conf.database).into();
        Self::with_label(conn, conf, lease, label)
    }

    fn with_label(conn: pg::Connection, conf: &ConnectConf, lease: Lease, label: Arc<str>) -> Handle {
        let last_session = conn.escape_session().unwrap_or_default();
        crate::stats::OPEN_HANDLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Handle {
            pipe: conn.pipe(),
            piped: None,
            counted: true,
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

    /// A handle with no connection, ever: what api.lua gives a connection
    /// object that was kept alive, so that it answers as a closed one (its
    /// escapes as without a connection).
    pub fn stale() -> Handle {
        Handle {
            state: State::Closed,
            owner: process::generation(),
            timeout: Duration::from_secs(60),
            label: "kept alive".into(),
            lease: None,
            reused: 0,
            retire_at: None,
            pool: PoolConf::default(),
            not_reusable: None,
            last_session: Default::default(),
            pipe: None,
            piped: None,
            counted: false,
        }
    }

    fn reused(idle: Idle, lease: Lease, conf: &ConnectConf) -> Handle {
        let mut handle = Handle::with_label(idle.conn, conf, lease, idle.label);
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
    ///
    /// Over a cosocket, the idle connections of the key that had to make
    /// room (past `size`) come back as [`Evicted`]: their cosockets wait in
    /// nginx's pool, so only Lua can say goodbye on them and close them.
    pub fn keepalive(&mut self, max_idle: Option<Duration>, size: Option<usize>, in_master: bool) -> Result<Vec<Evicted>> {
        if self.piped.is_some() {
            return Err(Error::busy());
        }
        let conn = self.take_open()?;
        let lease = self.lease.take();
        if self.owner != process::generation() {
            conn.abandon();
            return Ok(Vec::new());
        }
        let (Some(lease), None, false) = (lease, &self.not_reusable, in_master) else {
            if conn.pipe().is_some() {
                conn.close_piped();
            } else {
                process::block_on_timeout(self.timeout, conn.close())?;
            }
            return match self.not_reusable.take() {
                Some(why) => Err(Error::new(ErrorKind::Closed, format!("connection closed instead of kept alive: {why}"))),
                None => Ok(Vec::new()),
            };
        };
        let max_idle = max_idle.unwrap_or(self.pool.keepalive_timeout);
        let size = size.unwrap_or(self.pool.size);
        let piped = conn.pipe().is_some();
        let returning =
            pool::Returning { lease, conn, reused: self.reused, retire_at: self.retire_at, label: self.label.clone(), max_idle, size };
        if piped {
            // Nothing to wait for: each goodbye waits in its pipe, this
            // connection's (dubious or expired) for this handle's caller,
            // the evicted ones' for the caller of `keepalive`.
            let (outcome, to_close) = pool::put_back_now(returning);
            let mine = self.pipe.as_ref().map(PipeEnd::id);
            let mut evicted = Vec::new();
            for Idle { conn, .. } in to_close {
                let Some(pipe) = conn.pipe() else { continue };
                conn.close_piped();
                if Some(pipe.id()) != mine {
                    evicted.push(Evicted { pipe: pipe.id(), pool: pool_name(&pipe), goodbye: pipe.take_output() });
                }
            }
            return outcome.map(|()| evicted);
        }
        process::block_on(pool::put_back(returning))?.map(|()| Vec::new())
    }

    /// The open connection, taken out (the handle is closed after this).
    fn take_open(&mut self) -> Result<pg::Connection> {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Open(conn) => {
                self.uncount();
                Ok(conn)
            }
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
        self.check_not_piped().map_err(failure)?;
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
        self.check_not_piped()?;
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
        if self.piped.is_some() {
            return Err(Error::busy());
        }
        let conn = self.take_open()?;
        self.lease = None;
        if conn.pipe().is_some() {
            // Terminate waits in the pipe; whoever holds the cosocket sends it.
            conn.close_piped();
            return Ok(());
        }
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

    fn check_not_piped(&self) -> Result<()> {
        if self.pipe.is_some() && self.is_open() {
            return Err(Error::new(
                ErrorKind::Closed,
                "this connection runs over an nginx cosocket: use it in the request (or timer) that opened it, where cosockets work",
            ));
        }
        Ok(())
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

/// What Lua needs to open a new connection over a cosocket: the lease, the
/// addresses to try, and the password (or a token) to log in with.
pub struct Opening {
    conf: ConnectConf,
    lease: Lease,
    /// Resolved now, for every new physical connection (no DNS cache).
    addresses: Vec<std::net::SocketAddr>,
    password: Option<String>,
    /// Whether a refused login may be retried once with a fresh token (the
    /// token came from the cache).
    may_retry: bool,
    /// The pipe the login will run through.
    pipe: (pg_pipe::PipeIo, PipeEnd),
}

/// What preparing a connection over a cosocket found.
#[allow(clippy::large_enum_variant)]
pub enum Prepared {
    /// An idle pooled connection came back while waiting (`pg_backlog`).
    Reuse(Handle),
    /// Open a new one.
    Open(Opening),
}

/// A login running over a cosocket (see [`Opening::begin`]).
pub struct Connecting {
    future: std::pin::Pin<Box<dyn Future<Output = Result<pg::Connection>> + Send>>,
    pipe: PipeEnd,
    /// `None` once the login is over.
    rest: Option<(ConnectConf, Lease, bool)>,
}

/// Where a login over a cosocket stands after [`Connecting::step`].
pub enum Progress {
    /// Send what [`Connecting::output`] gives, receive, step again.
    More,
    /// Logged in.
    Done(Handle),
    /// The server refused a token from the cache: open a new cosocket and
    /// prepare again with [`Handle::prepare_retry`] (once).
    Retry(ConnectConf, Lease),
    /// Failed.
    Failed(Error),
}

impl Handle {
    /// An idle pooled connection over a cosocket for `conf` (whose pool key
    /// is `key`, [`pool::Key::piped`]), taken at once.
    pub fn piped_from_pool(conf: &ConnectConf, key: &Arc<pool::Key>) -> Option<Handle> {
        let (idle, lease) = pool::take_idle(key.clone())?;
        Some(Handle::reused(idle, lease, conf))
    }

    /// The nginx keep-alive pool that holds this connection's cosocket while
    /// it is idle.
    pub fn cosocket_pool(&self) -> Option<String> {
        let pipe = self.pipe.as_ref()?;
        matches!(self.state, State::Open(_)).then(|| pool_name(pipe))
    }

    /// The number of this connection's pipe (unique in the process), while
    /// it is open: what [`Handle::cosocket_pool`] says never changes for it.
    pub fn pipe_id(&self) -> Option<u64> {
        let pipe = self.pipe.as_ref()?;
        matches!(self.state, State::Open(_)).then(|| pipe.id())
    }

    /// The job that prepares a new connection over a cosocket: checkout
    /// (waiting for the backlog), the rate guard, the token, the server's
    /// addresses. Each step gets `pg_timeout`.
    pub async fn prepare_job(conf: ConnectConf) -> Result<Prepared> {
        let timeout = conf.endpoint.timeout;
        let lease = match pool::checkout(pool::Key::piped(&conf), &conf.pool, true, timeout).await? {
            Checkout::Reuse(idle, lease) => return Ok(Prepared::Reuse(Handle::reused(idle, lease, &conf))),
            Checkout::Open(lease) => lease,
        };
        Self::preparing(conf, lease, false).await.map(Prepared::Open)
    }

    /// After [`Progress::Retry`]: drops the refused token, refreshes the
    /// credentials and prepares once more under the same lease.
    pub fn prepare_retry(conf: ConnectConf, lease: Lease) -> impl Future<Output = Result<Prepared>> + Send + 'static {
        token::forget(&conf.endpoint);
        credentials::invalidate(conf.endpoint.assume_role.as_ref());
        async move { Self::preparing(conf, lease, true).await.map(Prepared::Open) }
    }

    async fn preparing(conf: ConnectConf, lease: Lease, retried: bool) -> Result<Opening> {
        let (host, port) = (conf.address.host.as_str(), conf.address.port);
        let addresses = tokio::time::timeout(conf.endpoint.timeout, crate::net::resolve(host, port))
            .await
            .map_err(|_| connect_timeout(&conf))?
            .map_err(|e| Error::new(ErrorKind::Io, format!("could not connect to {host}:{port}: {e}")))?;
        let (password, may_retry) = if conf.auth.is_iam() {
            let started = std::time::SystemTime::now();
            rate_guard(&conf).await?;
            let token = token::issue_async(&conf.endpoint).await?;
            (Some(token.token.clone()), !retried && token.signed_at < started)
        } else {
            (conf.auth.password().map(str::to_owned), false)
        };
        let (io, end) = pg_pipe::new();
        Ok(Opening { conf, lease, addresses, password, may_retry, pipe: (io, end) })
    }

    /// Starts a query over this connection's cosocket: the bytes to send.
    pub fn query_piped_start(&mut self, sql: &[u8]) -> std::result::Result<bytes::BytesMut, QueryFailure> {
        let pipe = self.piped_ready().map_err(failure)?;
        let State::Open(conn) = &mut self.state else { return Err(failure(Error::closed())) };
        let run = conn.query_piped_start(sql)?;
        self.piped = Some(Piped::Query(run));
        Ok(pipe.take_output())
    }

    /// Goes on with the query with `data` the cosocket received (`None`:
    /// the server closed it): its outcome once it is over, and the bytes to
    /// send (a reply the server asked for).
    pub fn query_piped_feed(&mut self, data: Option<&[u8]>) -> (Option<std::result::Result<QueryOutput, QueryFailure>>, bytes::BytesMut) {
        let (Some(pipe), State::Open(conn), Some(Piped::Query(run))) = (&self.pipe, &mut self.state, &mut self.piped) else {
            return (Some(Err(failure(Error::closed()))), bytes::BytesMut::new());
        };
        match data {
            Some(data) => pipe.feed(data),
            None => pipe.close_input(),
        }
        let outcome = conn.query_piped_feed(run);
        let output = pipe.take_output();
        let Some(outcome) = outcome else { return (None, output) };
        let session = conn.escape_session();
        self.piped = None;
        let usable = match &outcome {
            Ok(_) => true,
            Err(f) => f.error.leaves_session_usable(),
        };
        if usable {
            self.last_session = session.unwrap_or(self.last_session);
        } else {
            self.state = State::Closed;
            self.lease = None;
        }
        if let Err(f) = &outcome {
            if let Some(state) = f.error.sqlstate().filter(|s| NOT_REUSABLE.contains(s)) {
                self.not_reusable = Some(format!("the server reported {state} ({})", f.error.message()));
            }
        }
        (Some(outcome), output)
    }

    /// While a query runs over the cosocket: the rows received so far of
    /// the statement in progress (see [`pg::QueryRun::take_current_rows`]).
    pub fn piped_take_rows(&mut self) -> Option<(usize, &[pg::query::Column], Vec<postgres_protocol::message::backend::DataRowBody>)> {
        match &mut self.piped {
            Some(Piped::Query(run)) => run.take_current_rows(),
            _ => None,
        }
    }

    /// While a query runs over the cosocket: how many received rows of the
    /// statement in progress [`Handle::piped_take_rows`] would take.
    pub fn piped_pending_rows(&self) -> usize {
        match &self.piped {
            Some(Piped::Query(run)) => run.current_rows_len(),
            _ => 0,
        }
    }

    /// Starts waiting for a notification over the cosocket.
    pub fn notification_piped_start(&mut self) -> Result<()> {
        self.piped_ready()?;
        self.piped = Some(Piped::Notification);
        Ok(())
    }

    /// Goes on waiting with `data` (`None`: the server closed the
    /// cosocket): the notification once there is one.
    pub fn notification_piped_feed(&mut self, data: Option<&[u8]>) -> Option<Result<pg::Notification>> {
        let (Some(pipe), State::Open(conn), Some(Piped::Notification)) = (&self.pipe, &mut self.state, &self.piped) else {
            return Some(Err(Error::closed()));
        };
        match data {
            Some(data) => pipe.feed(data),
            None => pipe.close_input(),
        }
        let outcome = conn.notification_piped_feed()?;
        self.piped = None;
        if outcome.is_err() {
            self.state = State::Closed;
            self.lease = None;
        }
        Some(outcome)
    }

    /// The cosocket timed out or failed during an exchange. A query is
    /// cancelled (from the I/O thread, when this process has one) and the
    /// connection closed, since its state is unknown; a notification wait
    /// that timed out (`keep`) leaves it usable, since nothing was sent.
    pub fn piped_stop(&mut self, keep: bool) {
        match self.piped.take() {
            Some(Piped::Notification) if keep => return,
            Some(Piped::Query(_)) => self.cancel_piped(),
            _ => {}
        }
        self.state = State::Closed;
        self.lease = None;
        self.uncount();
    }

    /// No longer counted as open: a closed or kept-alive handle holds no
    /// session, however long the collector leaves it around.
    fn uncount(&mut self) {
        if std::mem::take(&mut self.counted) {
            crate::stats::OPEN_HANDLES.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Stops the statement running over the cosocket, from the I/O thread
    /// (best effort). Never here: this runs on the nginx worker, which must
    /// not block; and a connection over a cosocket was prepared by a job, so
    /// this process has an I/O thread.
    fn cancel_piped(&self) {
        let State::Open(conn) = &self.state else { return };
        let cancel = conn.cancel_token();
        process::spawn_background(async move { cancel.cancel().await });
    }

    /// The pipe, when this connection runs over a cosocket and nothing runs
    /// on it.
    fn piped_ready(&self) -> Result<PipeEnd> {
        self.check_owner()?;
        if self.piped.is_some() {
            return Err(Error::busy());
        }
        match (&self.pipe, &self.state) {
            (Some(pipe), State::Open(_)) => Ok(pipe.clone()),
            (None, State::Open(_)) => Err(Error::new(ErrorKind::Runtime, "internal error: not a cosocket connection")),
            _ => Err(Error::closed()),
        }
    }

    /// Bytes waiting to be sent over the cosocket (a Terminate after close).
    pub fn piped_output(&self) -> Option<bytes::BytesMut> {
        self.pipe.as_ref().map(PipeEnd::take_output).filter(|b| !b.is_empty())
    }

    /// The idle timeout `keepalive(max_idle)` applies (for the cosocket's
    /// own keep-alive), in ms; 0: none.
    pub fn keepalive_ms(&self, max_idle: Option<Duration>) -> u64 {
        max_idle.unwrap_or(self.pool.keepalive_timeout).as_millis() as u64
    }

    /// The timeout of each exchange, in ms.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout.as_millis() as u64
    }
}

/// An idle connection over a cosocket that a keepalive pushed out of the
/// pool (its key had `pool_size` idle ones): its session is over on our
/// side, and its cosocket waits in nginx's keep-alive pool `pool`.
pub struct Evicted {
    /// Its pipe's number (see [`Handle::pipe_id`]).
    pub pipe: u64,
    /// The nginx keep-alive pool its cosocket waits in.
    pub pool: String,
    /// What to send on that cosocket before closing it (a Terminate).
    pub goodbye: bytes::BytesMut,
}

/// The nginx keep-alive pool of a pipe's cosocket: one per physical
/// connection, so that a checkout gets that very socket back.
fn pool_name(pipe: &PipeEnd) -> String {
    pipe.name().to_owned()
}

impl Opening {
    /// The addresses to connect the cosocket to, in order.
    pub fn addresses(&self) -> &[std::net::SocketAddr] {
        &self.addresses
    }

    /// The timeout of each step, in ms.
    pub fn timeout_ms(&self) -> u64 {
        self.conf.endpoint.timeout.as_millis() as u64
    }

    /// The nginx keep-alive pool the cosocket goes to: connect it with this
    /// name, so that its later `setkeepalive` and checkouts find it.
    pub fn pool_name(&self) -> String {
        pool_name(&self.pipe.1)
    }

    /// `host:port` as configured, for messages.
    pub fn target(&self) -> String {
        self.conf.address.to_string()
    }

    /// Starts the login over a cosocket Lua connected to `addr`.
    pub fn begin(self, addr: std::net::SocketAddr) -> Connecting {
        let Opening { conf, lease, password, may_retry, pipe: (io, end), .. } = self;
        let login_conf = conf.clone();
        let future = Box::pin(async move { pg::connect_piped(io, addr, &login_conf, password.as_deref()).await });
        Connecting { future, pipe: end, rest: Some((conf, lease, may_retry)) }
    }
}

impl Connecting {
    /// Goes on with the login: `data` received (`None` at first, and
    /// `Some(empty)` never), or the cosocket closed (`closed`).
    pub fn step(&mut self, data: Option<&[u8]>, closed: bool) -> Progress {
        if self.rest.is_none() {
            return Progress::Failed(Error::closed());
        }
        if let Some(data) = data {
            self.pipe.feed(data);
        }
        if closed {
            self.pipe.close_input();
        }
        let std::task::Poll::Ready(outcome) = pg_pipe::poll_now(self.future.as_mut()) else { return Progress::More };
        let Some((conf, lease, may_retry)) = self.rest.take() else { return Progress::Failed(Error::closed()) };
        match outcome.inspect_err(count_refusal) {
            Ok(conn) => {
                if conf.auth.is_iam() {
                    crate::stats::bump(&crate::stats::IAM_AUTH_OK);
                }
                Progress::Done(Handle::new(conn, &conf, lease))
            }
            Err(e) if may_retry && refused(&e) => Progress::Retry(conf, lease),
            Err(e) => Progress::Failed(e),
        }
    }

    /// The bytes to send now.
    pub fn output(&self) -> bytes::BytesMut {
        self.pipe.take_output()
    }

    /// The login timed out: it ends here.
    pub fn timed_out(&mut self) -> Error {
        match self.rest.take() {
            Some((conf, _, _)) => connect_timeout(&conf),
            None => Error::closed(),
        }
    }
}

/// Waits for a slot of `pg_iam_auth_max_rate` for a new IAM login, or fails
/// when the wait would pass `pg_timeout`.
async fn rate_guard(conf: &ConnectConf) -> Result<()> {
    let timeout = conf.endpoint.timeout;
    match rate::reserve(&conf.endpoint.host, conf.endpoint.port, conf.iam_max_rate, timeout) {
        rate::Slot::After(wait) if wait.is_zero() => Ok(()),
        rate::Slot::After(wait) => {
            crate::stats::bump(&crate::stats::RATE_WAITS);
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
        self.uncount();
        // Collected mid-query over a cosocket (its request was aborted): the
        // cosocket is gone with the request; stop the statement too.
        if matches!(self.piped, Some(Piped::Query(_))) && self.owner == process::generation() {
            self.cancel_piped();
        }
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
