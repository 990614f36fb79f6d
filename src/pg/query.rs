//! The simple query protocol: one round trip, any number of statements,
//! typed columns (from `RowDescription`), rows in text format.

use bytes::BufMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, Message};
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
    /// Columns, when the statement returns rows.
    pub columns: Option<Vec<Column>>,
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
        let mut out = Vec::with_capacity(self.columns.as_ref().map_or(0, Vec::len));
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

impl Connection {
    /// Runs `sql` (one or more statements) with the simple query protocol.
    ///
    /// `sql` is bytes, as Lua strings are: text that is not valid in the
    /// session's encoding is the server's to refuse (SQLSTATE 22021), as it
    /// would be with any other client.
    pub async fn query(&mut self, sql: &[u8]) -> Result<QueryOutput, QueryFailure> {
        let broken = |error: Error, partial: QueryOutput| QueryFailure { error, partial };
        if sql.contains(&0) {
            return Err(QueryFailure { error: Error::config("query must not contain a zero byte"), partial: Vec::new() });
        }
        // Query: 'Q', length (self included), the text, a terminating zero.
        let Ok(len) = i32::try_from(sql.len() + 5) else {
            return Err(QueryFailure { error: Error::config("query is too long"), partial: Vec::new() });
        };
        self.buf.put_u8(b'Q');
        self.buf.put_i32(len);
        self.buf.put_slice(sql);
        self.buf.put_u8(0);
        if let Err(e) = self.stream.send(&mut self.buf).await {
            let text = format!("sending the query failed: {e}");
            return Err(broken(Error::new(ErrorKind::Io, text).with_source(e), Vec::new()));
        }
        let mut done: QueryOutput = Vec::new();
        let mut current: Option<Statement> = None;
        let mut failure: Option<Error> = None;
        loop {
            let message = match self.stream.recv().await {
                Ok(m) => m,
                Err(e) => {
                    let text = format!("reading the result failed: {e}");
                    return Err(broken(Error::new(ErrorKind::Io, text).with_source(e), done));
                }
            };
            match message {
                Message::RowDescription(body) => {
                    let mut columns = Vec::new();
                    let mut fields = body.fields();
                    while let Ok(Some(f)) = fields.next() {
                        columns.push(Column { name: f.name().to_owned(), type_oid: f.type_oid() });
                    }
                    current = Some(Statement { columns: Some(columns), ..Statement::default() });
                }
                Message::DataRow(body) => match current.as_mut() {
                    Some(statement) => statement.rows.push(body),
                    None => return Err(broken(Error::new(ErrorKind::Protocol, "row without a row description"), done)),
                },
                Message::CommandComplete(body) => {
                    let mut statement = current.take().unwrap_or_default();
                    statement.tag = body.tag().unwrap_or_default().to_owned();
                    done.push(statement);
                }
                Message::EmptyQueryResponse => done.push(Statement::default()),
                Message::ErrorResponse(body) => failure = Some(server_error::from_body(&body)),
                Message::CopyInResponse(_) => {
                    frontend::copy_fail("copy from stdin is not supported by kong_rds_iam", &mut self.buf).ok();
                    if let Err(e) = self.stream.send(&mut self.buf).await {
                        return Err(broken(Error::new(ErrorKind::Io, e.to_string()), done));
                    }
                }
                Message::ReadyForQuery(ready) => {
                    self.status = ready.status();
                    break;
                }
                Message::ParameterStatus(p) => {
                    let (name, value) = (p.name().unwrap_or_default().to_owned(), p.value().unwrap_or_default().to_owned());
                    self.parameter(&name, &value);
                }
                Message::NoticeResponse(body) => self.messages.notices.push(server_error::notice_text(&body)),
                Message::NotificationResponse(body) => self.messages.notifications.push(super::Notification {
                    process_id: body.process_id(),
                    channel: body.channel().unwrap_or_default().to_owned(),
                    payload: body.message().unwrap_or_default().to_owned(),
                }),
                // Parameter changes, copy-out data: nothing to return.
                _ => {}
            }
        }
        match failure {
            Some(error) => Err(QueryFailure { error, partial: done }),
            None => Ok(done),
        }
    }
}

impl Connection {
    /// The next `NOTIFY` for a channel this session listens on: one already
    /// received, else the next to arrive (the caller bounds the wait). The
    /// session must be idle (no query running), as after `LISTEN`.
    pub async fn wait_for_notification(&mut self) -> Result<super::Notification, Error> {
        if !self.messages.notifications.is_empty() {
            return Ok(self.messages.notifications.remove(0));
        }
        loop {
            let message =
                self.stream.recv().await.map_err(|e| Error::new(ErrorKind::Io, format!("waiting for a notification failed: {e}")))?;
            match message {
                Message::NotificationResponse(body) => {
                    return Ok(super::Notification {
                        process_id: body.process_id(),
                        channel: body.channel().unwrap_or_default().to_owned(),
                        payload: body.message().unwrap_or_default().to_owned(),
                    })
                }
                Message::NoticeResponse(body) => self.messages.notices.push(server_error::notice_text(&body)),
                Message::ParameterStatus(p) => {
                    let (name, value) = (p.name().unwrap_or_default().to_owned(), p.value().unwrap_or_default().to_owned());
                    self.parameter(&name, &value);
                }
                // A FATAL error (the server shuts down, the backend is terminated).
                Message::ErrorResponse(body) => return Err(server_error::from_body(&body)),
                _ => return Err(Error::new(ErrorKind::Protocol, "unexpected message while waiting for a notification")),
            }
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
}
