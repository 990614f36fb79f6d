//! The crate's error type: a kind, a lowercase message safe to show, and the
//! SQLSTATE when the database sent one.
//!
//! Messages never carry a secret (secret key, session token, auth token):
//! every constructor takes text that was built without them, and text coming
//! from outside (AWS SDK errors) passes through [`Error::redacted`] first.

use std::fmt;

/// What failed, so callers (and the Lua binding) can tell failures apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A configuration key had the wrong type or value.
    Config,
    /// No AWS region could be determined.
    Region,
    /// AWS credentials could not be loaded or had expired.
    Credentials,
    /// TLS configuration or handshake failed.
    Tls,
    /// Connecting, reading or writing the socket failed.
    Io,
    /// An operation took longer than `pg_timeout`.
    Timeout,
    /// The server rejected authentication.
    Auth,
    /// The server sent an `ErrorResponse` (SQLSTATE kept).
    Db,
    /// The server sent something we do not understand.
    Protocol,
    /// The connection is closed, broken, or belongs to another process.
    Closed,
    /// The connection is in use by another call.
    Busy,
    /// The process could not start its runtime.
    Runtime,
}

/// An error with a message that is safe to hand to Lua and logs.
///
/// Callers ask what kind of failure it is through predicates
/// ([`Error::is_timeout`], [`Error::leaves_session_usable`], ...). The
/// underlying error, when there is one (an `io::Error`, a TLS error), is
/// kept as the [`std::error::Error::source`]; its text is already folded
/// into the message, safely.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    sqlstate: Option<String>,
    fields: Option<Box<ServerFields>>,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl PartialEq for Error {
    /// Kind, message, SQLSTATE and fields; not the source.
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message && self.sqlstate == other.sqlstate && self.fields == other.fields
    }
}

impl Eq for Error {}

/// The fields of a server's `ErrorResponse` (severity, code, message,
/// detail, hint, position, table, constraint, ...), by name, in the order
/// sent. Server text, never a secret of ours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFields(Vec<(&'static str, String)>);

impl ServerFields {
    /// Adds a field.
    pub fn push(&mut self, name: &'static str, value: String) {
        self.0.push((name, value));
    }

    /// The value of field `name`, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Every field, in the order sent.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.0.iter().map(|(n, v)| (*n, v.as_str()))
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a message (lowercase by convention).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), sqlstate: None, fields: None, source: None }
    }

    /// A server error with its SQLSTATE.
    pub fn db(message: impl Into<String>, sqlstate: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Db, message: message.into(), sqlstate: Some(sqlstate.into()), fields: None, source: None }
    }

    /// The same error with the server's fields.
    pub fn with_fields(mut self, fields: ServerFields) -> Self {
        self.fields = Some(Box::new(fields));
        self
    }

    /// The server's fields, for an error the server sent.
    pub fn server_fields(&self) -> Option<&ServerFields> {
        self.fields.as_deref()
    }

    /// The same error with another kind.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// The connection cannot be used any more.
    pub fn closed() -> Self {
        Self::new(ErrorKind::Closed, "closed")
    }

    /// The connection is in use by another call (as a cosocket says).
    pub fn busy() -> Self {
        Self::new(ErrorKind::Busy, "connection busy")
    }

    /// A bug: a panic, or a state that should not happen.
    pub fn internal() -> Self {
        Self::new(ErrorKind::Runtime, "internal error (a bug in kong_rds_iam; please report it)")
    }

    /// The same error with the error that caused it.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(source));
        self
    }

    /// What failed. Prefer the predicates below where one fits.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// `pg_timeout` (or another deadline) passed.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// The connection is closed, broken, or belongs to another process.
    pub fn is_closed(&self) -> bool {
        self.kind == ErrorKind::Closed
    }

    /// Another call is using the connection.
    pub fn is_busy(&self) -> bool {
        self.kind == ErrorKind::Busy
    }

    /// The server refused authentication (SQLSTATE class 28).
    pub fn is_auth(&self) -> bool {
        self.kind == ErrorKind::Auth
    }

    /// The server sent it (an `ErrorResponse`, SQLSTATE kept).
    pub fn is_server(&self) -> bool {
        self.sqlstate.is_some()
    }

    /// After a query failed with this error, whether the session can run the
    /// next one: yes after a server error (the exchange ended with
    /// ReadyForQuery) or a query refused before sending; no after an I/O or
    /// protocol failure midway, a timeout, or anything that closed it.
    pub fn leaves_session_usable(&self) -> bool {
        matches!(self.kind, ErrorKind::Db | ErrorKind::Auth | ErrorKind::Config)
    }

    /// The message, without any secret.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The SQLSTATE the server sent, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        self.sqlstate.as_deref()
    }

    /// Replaces every occurrence of each non-empty `secret` in the message.
    ///
    /// Text from third-party errors is passed through this with the secrets
    /// known at that point, as a second line of defence.
    pub fn redacted(mut self, secrets: &[&str]) -> Self {
        self.message = redact(&self.message, secrets);
        self
    }
}

/// Replaces each non-empty secret in `text` with `[redacted]`.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        if out.contains(secret) {
            out = out.replace(secret, "[redacted]");
        }
    }
    out
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(state) = &self.sqlstate {
            d.field("sqlstate", state);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Renders an error and its `source()` chain as one line, `a: b: c`,
/// skipping links that repeat the previous text.
pub fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    one_line(&out)
}

/// Folds a multi-line message into one line, `; `-separated.
pub fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// Runs `f`, turning a panic (a bug) into an error, so that a caller in Lua
/// still gets `nil, err` and no unwind crosses into C.
pub fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| Err(Error::internal()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_replaces_every_secret() {
        let text = "key wJalrXUtnFEMI in body, token FwoGZXIvYXdz and wJalrXUtnFEMI again";
        let out = redact(text, &["wJalrXUtnFEMI", "FwoGZXIvYXdz", ""]);
        assert_eq!(out, "key [redacted] in body, token [redacted] and [redacted] again");
    }

    #[test]
    fn one_line_folds_lines() {
        assert_eq!(
            one_line("no credentials. Attempted:\n  Environment: not set\n\n  Profile: none"),
            "no credentials. Attempted:; Environment: not set; Profile: none"
        );
    }

    #[test]
    fn predicates_and_the_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = Error::new(ErrorKind::Io, "reading the result failed: reset by peer").with_source(io);
        assert!(!e.leaves_session_usable() && !e.is_timeout() && !e.is_server());
        assert_eq!(std::error::Error::source(&e).map(|s| s.to_string()), Some("reset by peer".into()));
        let db = Error::db("division by zero", "22012");
        assert!(db.is_server() && db.leaves_session_usable() && !db.is_auth());
        assert!(Error::new(ErrorKind::Timeout, "timeout").is_timeout());
        assert!(Error::closed().is_closed() && Error::busy().is_busy());
        assert!(Error::db("PAM authentication failed", "28000").with_kind(ErrorKind::Auth).is_auth());
    }

    #[test]
    fn display_is_the_message_and_debug_keeps_sqlstate() {
        let e = Error::db("relation \"x\" does not exist", "42P01");
        assert_eq!(e.to_string(), "relation \"x\" does not exist");
        assert_eq!(e.sqlstate(), Some("42P01"));
        assert!(format!("{e:?}").contains("42P01"));
    }
}
