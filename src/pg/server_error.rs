//! `ErrorResponse` fields into an [`Error`] that keeps the server's text and SQLSTATE.

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorResponseBody;

use crate::error::{Error, ErrorKind};

/// The server's message (with its detail, when sent) and SQLSTATE.
pub fn from_body(body: &ErrorResponseBody) -> Error {
    let mut message = String::new();
    let mut detail = String::new();
    let mut code = String::new();
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes());
        match field.type_() {
            b'M' => message = value.into_owned(),
            b'D' => detail = value.into_owned(),
            b'C' => code = value.into_owned(),
            _ => {}
        }
    }
    if message.is_empty() {
        message = "the server reported an error".into();
    }
    if !detail.is_empty() {
        message = format!("{message} ({detail})");
    }
    if code.is_empty() {
        return Error::new(ErrorKind::Db, message);
    }
    // Class 28: invalid authorization (bad password, PAM failure, no hba entry).
    if code.starts_with("28") {
        let mut e = Error::db(message, code);
        e = e.with_kind(ErrorKind::Auth);
        return e;
    }
    Error::db(message, code)
}
