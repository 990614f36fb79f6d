//! The simple query protocol: one round trip, any number of statements,
//! typed columns (from `RowDescription`), rows in text format.

use std::sync::Arc;

use bytes::BufMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, Message, RowDescriptionBody};
use postgres_protocol::message::frontend;

use super::{server_error, Connection};
use crate::error::{Error, ErrorKind};

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
}

/// The result of one statement.
#[derive(Debug, Default)]
pub struct Statement {
    /// Columns, when the statement returns rows (shared with the
    /// statements before it that had the very same columns).
    pub columns: Option<Arc<[Column]>>,
    /// Rows as the server sent them (text format).
    pub rows: Vec<DataRowBody>,
    /// The command tag, e.g. `INSERT 0 3`, `SELECT 2`, `CREATE TABLE`.
    pub tag: String,
}

impl Statement {
    /// The first word of the tag (`SELECT`, `INSERT`, ...).
    pub fn command(&self) -> &str {
        self.tag.split(' ').next().unwrap_or("")
    }

    /// The row count at the end of the tag, if any.
    pub fn affected_rows(&self) -> Option<u64> {
        self.tag.rsplit(' ').next().and_then(|n| n.parse().ok())
    }

    /// The fields of row `i`: `None` for SQL NULL.
    pub fn row_fields(&self, i: usize) -> Vec<Option<&[u8]>> {
        let Some(row) = self.rows.get(i) else { return Vec::new() };
        let buffer = row.buffer();
        let mut out = Vec::with_capacity(self.columns.as_ref().map_or(0, |c| c.len()));
        let mut ranges = row.ranges();
        while let Ok(Some(range)) = ranges.next() {
            out.push(range.and_then(|r| buffer.get(r)));
        }
        out
    }
}

/// Every statement's result.
pub type QueryOutput = Vec<Statement>;

/// A failed query: the error, and the results of the statements before it.
/// Whether the session can go on is the error's to say
/// ([`Error::leaves_session_usable`]).
#[derive(Debug)]
pub struct QueryFailure {
    /// What failed.
    pub error: Error,
    /// Results of the statements that completed before the failure.
    pub partial: QueryOutput,
}

/// A query in progress: the results so far, as its messages arrive.
#[derive(Debug, Default)]
pub struct QueryRun {
    done: QueryOutput,
    current: Option<Statement>,
    failure: Option<Error>,
}

/// What the caller does after a message of a query.
enum Step {
    /// Read the next message.
    Read,
    /// Send what the connection's buffer holds, then read on.
    Reply,
    /// ReadyForQuery: the query is over.
    Done,
}

impl QueryRun {
    /// The rows of the statement in progress received so far, taken out
    /// (for callers that convert rows as they arrive), with that
    /// statement's number among the query's (0-based) and its columns.
    pub fn take_current_rows(&mut self) -> Option<(usize, &[Column], Vec<DataRowBody>)> {
        let index = self.done.len();
        let current = self.current.as_mut()?;
        if current.rows.is_empty() {
            return None;
        }
        let columns = current.columns.as_deref()?;
        Some((index, columns, std::mem::take(&mut current.rows)))
    }

    /// How many rows of the statement in progress wait to be taken.
    pub fn current_rows_len(&self) -> usize {
        self.current.as_ref().map_or(0, |c| c.rows.len())
    }

    /// The outcome, once the query is over.
    fn outcome(self) -> Result<QueryOutput, QueryFailure> {
        match self.failure {
            Some(error) => Err(QueryFailure { error, partial: self.done }),
            None => Ok(self.done),
        }
    }

    fn broken(self, error: Error) -> QueryFailure {
        QueryFailure { error, partial: self.done }
    }
}

impl Connection {
    /// Runs `sql` (one or more statements) with the simple query protocol.
    ///
    /// `sql` is bytes, as Lua strings are: text that is not valid in the
    /// session's encoding is the server's to refuse (SQLSTATE 22021), as it
    /// would be with any other client.
    pub async fn query(&mut self, sql: &[u8]) -> Result<QueryOutput, QueryFailure> {
        self.write_query(sql)?;
        let mut run = QueryRun::default();
        if let Err(e) = self.send_buffered().await {
            return Err(run.broken(send_failed(e)));
        }
        loop {
            let message = match self.stream.recv().await {
                Ok(m) => m,
                Err(e) => return Err(run.broken(read_failed(e))),
            };
            match self.on_query_message(&mut run, message) {
                Ok(Step::Read) => {}
                Ok(Step::Reply) => {
                    if let Err(e) = self.send_buffered().await {
                        return Err(run.broken(Error::new(ErrorKind::Io, e.to_string())));
                    }
                }
                Ok(Step::Done) => return run.outcome(),
                Err(e) => return Err(run.broken(e)),
            }
        }
    }

    /// [`Connection::query`] over a cosocket: puts the query into the pipe
    /// (for Lua to send); [`Connection::query_piped_feed`] goes on with it.
    pub fn query_piped_start(&mut self, sql: &[u8]) -> Result<QueryRun, QueryFailure> {
        self.write_query(sql)?;
        let run = QueryRun::default();
        match self.send_buffered_now() {
            Ok(()) => Ok(run),
            Err(e) => Err(run.broken(send_failed(e))),
        }
    }

    /// Goes on with a query over a cosocket with the bytes received so far
    /// (fed into the pipe): `None` until the query is over, then its
    /// outcome. A broken exchange gives the failure and `run` is spent.
    pub fn query_piped_feed(&mut self, run: &mut QueryRun) -> Option<Result<QueryOutput, QueryFailure>> {
        loop {
            let message = match self.stream.recv_now() {
                Ok(Some(m)) => m,
                Ok(None) => return None,
                Err(e) => return Some(Err(std::mem::take(run).broken(read_failed(e)))),
            };
            match self.on_query_message(run, message) {
                Ok(Step::Read) => {}
                Ok(Step::Reply) => {
                    if let Err(e) = self.send_buffered_now() {
                        return Some(Err(std::mem::take(run).broken(Error::new(ErrorKind::Io, e.to_string()))));
                    }
                }
                Ok(Step::Done) => return Some(std::mem::take(run).outcome()),
                Err(e) => return Some(Err(std::mem::take(run).broken(e))),
            }
        }
    }

    /// Query: 'Q', length (self included), the text, a terminating zero.
    fn write_query(&mut self, sql: &[u8]) -> Result<(), QueryFailure> {
        if sql.contains(&0) {
            return Err(QueryFailure { error: Error::config("query must not contain a zero byte"), partial: Vec::new() });
        }
        let Ok(len) = i32::try_from(sql.len() + 5) else {
            return Err(QueryFailure { error: Error::config("query is too long"), partial: Vec::new() });
        };
        self.buf.put_u8(b'Q');
        self.buf.put_i32(len);
        self.buf.put_slice(sql);
        self.buf.put_u8(0);
        Ok(())
    }

    /// One message of a running query, whichever transport brought it.
    fn on_query_message(&mut self, run: &mut QueryRun, message: Message) -> Result<Step, Error> {
        match message {
            Message::RowDescription(body) => {
                run.current = Some(Statement { columns: Some(self.columns_of(&body)), ..Statement::default() });
            }
            Message::DataRow(body) => match run.current.as_mut() {
                Some(statement) => statement.rows.push(body),
                None => return Err(Error::new(ErrorKind::Protocol, "row without a row description")),
            },
            Message::CommandComplete(body) => {
                let mut statement = run.current.take().unwrap_or_default();
                statement.tag = body.tag().unwrap_or_default().to_owned();
                run.done.push(statement);
            }
            Message::EmptyQueryResponse => run.done.push(Statement::default()),
            Message::ErrorResponse(body) => run.failure = Some(server_error::from_body(&body)),
            Message::CopyInResponse(_) => {
                frontend::copy_fail("copy from stdin is not supported by kong_rds_iam", &mut self.buf).ok();
                return Ok(Step::Reply);
            }
            Message::ReadyForQuery(ready) => {
                self.status = ready.status();
                return Ok(Step::Done);
            }
            other => self.on_session_message(other),
        }
        Ok(Step::Read)
    }

    /// The columns a RowDescription describes: the last ones this
    /// connection saw when they are the same (a pooled connection mostly
    /// runs the same few queries), so no names are copied again.
    fn columns_of(&mut self, body: &RowDescriptionBody) -> Arc<[Column]> {
        if let Some(last) = &self.last_columns {
            if same_columns(last, body) {
                return last.clone();
            }
        }
        let mut fields = body.fields();
        let mut columns = Vec::with_capacity(fields.size_hint().0);
        while let Ok(Some(f)) = fields.next() {
            columns.push(Column { name: f.name().to_owned(), type_oid: f.type_oid() });
        }
        let columns: Arc<[Column]> = columns.into();
        self.last_columns = Some(columns.clone());
        columns
    }

    /// Messages the server may send at any time: parameter changes, notices,
    /// notifications (and copy-out data, ignored).
    fn on_session_message(&mut self, message: Message) {
        match message {
            Message::ParameterStatus(p) => {
                let (name, value) = (p.name().unwrap_or_default().to_owned(), p.value().unwrap_or_default().to_owned());
                self.parameter(&name, &value);
            }
            Message::NoticeResponse(body) => self.messages.notices.push(server_error::notice_text(&body)),
            Message::NotificationResponse(body) => self.messages.notifications.push(notification(&body)),
            _ => {}
        }
    }
}

/// Whether `body` describes exactly `columns` (names and types, in order).
fn same_columns(columns: &[Column], body: &RowDescriptionBody) -> bool {
    let mut fields = body.fields();
    let mut known = columns.iter();
    loop {
        match (fields.next(), known.next()) {
            (Ok(Some(f)), Some(c)) if f.name() == c.name && f.type_oid() == c.type_oid => {}
            (Ok(None), None) => return true,
            _ => return false,
        }
    }
}

fn notification(body: &postgres_protocol::message::backend::NotificationResponseBody) -> super::Notification {
    super::Notification {
        process_id: body.process_id(),
        channel: body.channel().unwrap_or_default().to_owned(),
        payload: body.message().unwrap_or_default().to_owned(),
    }
}

fn send_failed(e: std::io::Error) -> Error {
    let text = format!("sending the query failed: {e}");
    Error::new(ErrorKind::Io, text).with_source(e)
}

fn read_failed(e: std::io::Error) -> Error {
    let text = format!("reading the result failed: {e}");
    Error::new(ErrorKind::Io, text).with_source(e)
}

impl Connection {
    /// The next `NOTIFY` for a channel this session listens on: one already
    /// received, else the next to arrive (the caller bounds the wait). The
    /// session must be idle (no query running), as after `LISTEN`.
    pub async fn wait_for_notification(&mut self) -> Result<super::Notification, Error> {
        loop {
            if let Some(n) = self.take_notification() {
                return Ok(n);
            }
            let message =
                self.stream.recv().await.map_err(|e| Error::new(ErrorKind::Io, format!("waiting for a notification failed: {e}")))?;
            self.on_idle_message(message)?;
        }
    }

    /// [`Connection::wait_for_notification`] over a cosocket, with the bytes
    /// received so far: `None` until a notification is there.
    pub fn notification_piped_feed(&mut self) -> Option<Result<super::Notification, Error>> {
        loop {
            if let Some(n) = self.take_notification() {
                return Some(Ok(n));
            }
            let message = match self.stream.recv_now() {
                Ok(Some(m)) => m,
                Ok(None) => return None,
                Err(e) => return Some(Err(Error::new(ErrorKind::Io, format!("waiting for a notification failed: {e}")))),
            };
            if let Err(e) = self.on_idle_message(message) {
                return Some(Err(e));
            }
        }
    }

    fn take_notification(&mut self) -> Option<super::Notification> {
        (!self.messages.notifications.is_empty()).then(|| self.messages.notifications.remove(0))
    }

    /// A message while no query runs.
    fn on_idle_message(&mut self, message: Message) -> Result<(), Error> {
        match message {
            Message::NotificationResponse(_) | Message::NoticeResponse(_) | Message::ParameterStatus(_) => {
                self.on_session_message(message);
                Ok(())
            }
            // A FATAL error (the server shuts down, the backend is terminated).
            Message::ErrorResponse(body) => Err(server_error::from_body(&body)),
            _ => Err(Error::new(ErrorKind::Protocol, "unexpected message while waiting for a notification")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(tag: &str) -> Statement {
        Statement { tag: tag.into(), ..Statement::default() }
    }

    #[test]
    fn tags_give_command_and_count() {
        assert_eq!(statement("INSERT 0 3").affected_rows(), Some(3));
        assert_eq!(statement("INSERT 0 3").command(), "INSERT");
        assert_eq!(statement("UPDATE 12").affected_rows(), Some(12));
        assert_eq!(statement("SELECT 0").affected_rows(), Some(0));
        assert_eq!(statement("CREATE TABLE").affected_rows(), None);
        assert_eq!(statement("").affected_rows(), None);
    }

    /// A RowDescription of `(name, type oid)` columns, parsed.
    fn description(columns: &[(&str, u32)]) -> RowDescriptionBody {
        let mut body = bytes::BytesMut::new();
        body.put_i16(columns.len() as i16);
        for (name, oid) in columns {
            body.put_slice(name.as_bytes());
            body.put_u8(0);
            body.put_i32(0); // table
            body.put_i16(0); // attribute number
            body.put_u32(*oid);
            body.put_i16(-1); // type size
            body.put_i32(-1); // type modifier
            body.put_i16(0); // text format
        }
        let mut message = bytes::BytesMut::new();
        message.put_u8(b'T');
        message.put_i32(body.len() as i32 + 4);
        message.put_slice(&body);
        match Message::parse(&mut message) {
            Ok(Some(Message::RowDescription(d))) => d,
            _ => panic!("not a row description"),
        }
    }

    #[test]
    fn same_columns_compares_names_types_and_count() {
        let known = [Column { name: "x".into(), type_oid: 23 }, Column { name: "y".into(), type_oid: 25 }];
        assert!(same_columns(&known, &description(&[("x", 23), ("y", 25)])));
        assert!(!same_columns(&known, &description(&[("x", 23), ("z", 25)])), "another name");
        assert!(!same_columns(&known, &description(&[("x", 23), ("y", 20)])), "another type");
        assert!(!same_columns(&known, &description(&[("x", 23)])), "fewer columns");
        assert!(!same_columns(&known, &description(&[("x", 23), ("y", 25), ("w", 16)])), "more columns");
        assert!(!same_columns(&known, &description(&[("y", 25), ("x", 23)])), "another order");
        assert!(same_columns(&[], &description(&[])));
    }
}
