//! `ErrorResponse` and `NoticeResponse` fields into an [`Error`] that keeps
//! the server's text, its SQLSTATE and every field it sent.

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, ErrorResponseBody, NoticeResponseBody};

use crate::error::{Error, ErrorKind, ServerFields};

/// The names Lua sees for the fields PostgreSQL sends (pgmoon's names where
/// it has them), by field type byte.
pub const FIELD_NAMES: &[(u8, &str)] = &[
    (b'S', "severity"),
    (b'V', "severity_nonlocalized"),
    (b'C', "code"),
    (b'M', "message"),
    (b'D', "detail"),
    (b'H', "hint"),
    (b'P', "position"),
    (b'p', "internal_position"),
    (b'q', "internal_query"),
    (b'W', "where"),
    (b's', "schema"),
    (b't', "table"),
    (b'c', "column"),
    (b'd', "data_type"),
    (b'n', "constraint"),
];

/// The server's message (with its detail, when sent), SQLSTATE and fields.
pub fn from_body(body: &ErrorResponseBody) -> Error {
    let fields = collect(body.fields());
    let mut message = fields.get("message").unwrap_or_default().to_owned();
    if message.is_empty() {
        message = "the server reported an error".into();
    }
    if let Some(detail) = fields.get("detail").filter(|d| !d.is_empty()) {
        message = format!("{message} ({detail})");
    }
    let Some(code) = fields.get("code").filter(|c| !c.is_empty()).map(str::to_owned) else {
        return Error::new(ErrorKind::Db, message).with_fields(fields);
    };
    // Class 28: invalid authorization (bad password, PAM failure, no hba entry).
    let kind = if code.starts_with("28") { ErrorKind::Auth } else { ErrorKind::Db };
    Error::db(message, code).with_kind(kind).with_fields(fields)
}

/// A notice as pgmoon renders it: `SEVERITY: message`, then ` (position)`
/// and a line with the detail when sent.
pub fn notice_text(body: &NoticeResponseBody) -> String {
    let fields = collect(body.fields());
    let mut text = format!("{}: {}", fields.get("severity").unwrap_or("NOTICE"), fields.get("message").unwrap_or_default());
    if let Some(position) = fields.get("position") {
        text.push_str(&format!(" ({position})"));
    }
    if let Some(detail) = fields.get("detail") {
        text.push('\n');
        text.push_str(detail);
    }
    text
}

fn collect(mut iter: ErrorFields<'_>) -> ServerFields {
    let mut fields = ServerFields::default();
    while let Ok(Some(field)) = iter.next() {
        if let Some((_, name)) = FIELD_NAMES.iter().find(|(t, _)| *t == field.type_()) {
            fields.push(name, String::from_utf8_lossy(field.value_bytes()).into_owned());
        }
    }
    fields
}
