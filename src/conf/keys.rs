//! The key catalogue: every `pg_*` key this crate reads, with its
//! read-only twin, and the two sides (read-write, read-only) a call is for.

use crate::error::{Error, Result};

use super::value::quote;

/// Which of Kong's two database connections a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The read-write connection (`pg_*` keys).
    ReadWrite,
    /// The read-only connection (`pg_ro_*` keys, falling back to `pg_*`).
    ReadOnly,
}

/// A configuration key: its read-write and read-only names.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// `pg_<name>`.
    pub rw: &'static str,
    /// `pg_ro_<name>`.
    pub ro: &'static str,
}

macro_rules! keys {
    ($($name:ident = $base:literal,)*) => {
        $(
            #[doc = concat!("`pg_", $base, "` / `pg_ro_", $base, "`.")]
            pub const $name: Key = Key { rw: concat!("pg_", $base), ro: concat!("pg_ro_", $base) };
        )*
    };
}

/// Every `pg_*` key this crate reads.
pub mod key {
    use super::Key;
    keys! {
        HOST = "host",
        PORT = "port",
        USER = "user",
        PASSWORD = "password",
        DATABASE = "database",
        SCHEMA = "schema",
        TIMEOUT = "timeout",
        IAM_AUTH = "iam_auth",
        IAM_HOST = "iam_auth_host",
        IAM_PORT = "iam_auth_port",
        IAM_SSL_VERIFY = "iam_auth_ssl_verify",
        IAM_SERVICE = "iam_auth_service",
        REGION = "iam_auth_region",
        ASSUME_ROLE_ARN = "iam_auth_assume_role_arn",
        ROLE_SESSION_NAME = "iam_auth_role_session_name",
        STS_ENDPOINT_URL = "iam_auth_sts_endpoint_url",
        SSL = "ssl",
        SSL_REQUIRED = "ssl_required",
        SSL_VERIFY = "ssl_verify",
        SSL_VERSION = "ssl_version",
        SSL_CERT = "ssl_cert",
        SSL_CERT_KEY = "ssl_cert_key",
        SSL_CAFILE = "ssl_cafile",
        KEEPALIVE_TIMEOUT = "keepalive_timeout",
        POOL_SIZE = "pool_size",
        BACKLOG = "backlog",
        MAX_LIFETIME = "max_lifetime",
        COSOCKET = "cosocket",
        IAM_MAX_RATE = "iam_auth_max_rate",
        APPLICATION_NAME = "application_name",
        REQUIRE_AUTH = "require_auth",
    }

    /// The keys a token depends on (all of [`Endpoint`](super::Endpoint)).
    pub const TOKEN: &[Key] =
        &[HOST, PORT, IAM_HOST, IAM_PORT, IAM_SERVICE, USER, TIMEOUT, REGION, ASSUME_ROLE_ARN, ROLE_SESSION_NAME, STS_ENDPOINT_URL];

    /// The names [`Endpoint::parse`](super::Endpoint::parse) reads on
    /// `side`, in order: each [`TOKEN`] key, on the read-only side followed
    /// by the read-write name it falls back to.
    pub fn token_names(side: super::Side) -> &'static [&'static str] {
        match side {
            super::Side::ReadWrite => &TOKEN_RW,
            super::Side::ReadOnly => &TOKEN_RO,
        }
    }

    /// Where `name` stands in [`token_names`] of `side`.
    pub fn token_index(side: super::Side, name: &str) -> Option<usize> {
        token_names(side).iter().position(|n| *n == name)
    }

    const TOKEN_RW: [&str; TOKEN.len()] = {
        let mut out = [""; TOKEN.len()];
        let mut i = 0;
        while i < TOKEN.len() {
            out[i] = TOKEN[i].rw;
            i += 1;
        }
        out
    };

    const TOKEN_RO: [&str; 2 * TOKEN.len()] = {
        let mut out = [""; 2 * TOKEN.len()];
        let mut i = 0;
        while i < TOKEN.len() {
            out[2 * i] = TOKEN[i].ro;
            out[2 * i + 1] = TOKEN[i].rw;
            i += 1;
        }
        out
    };
}

impl Key {
    /// The name of this key on `side`.
    pub fn name(self, side: Side) -> &'static str {
        match side {
            Side::ReadWrite => self.rw,
            Side::ReadOnly => self.ro,
        }
    }
}

impl Side {
    /// Parses the optional mode argument: `"rw"` (default) or `"ro"`.
    pub fn parse(mode: Option<&str>) -> Result<Side> {
        match mode {
            None | Some("rw") => Ok(Side::ReadWrite),
            Some("ro") => Ok(Side::ReadOnly),
            Some(other) => Err(Error::config(format!("mode must be \"rw\" or \"ro\", got {}", quote(other)))),
        }
    }

    pub(super) fn prefix(self) -> &'static str {
        match self {
            Side::ReadWrite => "pg_",
            Side::ReadOnly => "pg_ro_",
        }
    }

    /// `"rw"` or `"ro"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::ReadWrite => "rw",
            Side::ReadOnly => "ro",
        }
    }
}
