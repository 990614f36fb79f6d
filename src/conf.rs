//! The `conf` table in Kong's kong.conf vocabulary, parsed into typed settings.
//!
//! Values arrive either already parsed (as `kong.configuration` holds them:
//! booleans, numbers, arrays) or as kong.conf strings (`"on"`, `"5432"`).
//! Unknown keys are ignored, since Kong passes hundreds; a known key with a
//! wrong type or value is an error that names the key.
//!
//! The read-only side (`pg_ro_*`) falls back to the `pg_*` key of the same
//! name when unset. IAM is on for read-only when `pg_ro_iam_auth` *or*
//! `pg_iam_auth` is on, as Kong documents it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::region;

/// A configuration value as the caller handed it over, before validation.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    /// A boolean.
    Bool(bool),
    /// An integral number.
    Int(i64),
    /// A number with a fractional part.
    Float(f64),
    /// A string (kong.conf text or an already parsed string value).
    Str(String),
    /// An array of strings (e.g. `lua_ssl_trusted_certificate` in `kong.configuration`).
    List(Vec<String>),
    /// Any other value; the string names its type for error messages.
    Other(&'static str),
}

impl RawValue {
    /// A Lua number: integral values (all of them below 2^53 exactly
    /// representable) are [`RawValue::Int`].
    pub fn from_number(n: f64) -> RawValue {
        if n.fract() == 0.0 && n.abs() < 9.0e15 {
            RawValue::Int(n as i64)
        } else {
            RawValue::Float(n)
        }
    }
}

/// Where configuration values are read from: a Lua table in production,
/// a map in tests. `None` means the key is unset.
pub trait ConfSource {
    /// The value of `key`, or `None` when unset.
    fn get(&self, key: &str) -> Option<RawValue>;
}

impl ConfSource for HashMap<String, RawValue> {
    fn get(&self, key: &str) -> Option<RawValue> {
        HashMap::get(self, key).cloned()
    }
}

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
        IAM_MAX_RATE = "iam_auth_max_rate",
        APPLICATION_NAME = "application_name",
    }

    /// The keys a token depends on (all of [`Endpoint`](super::Endpoint)).
    pub const TOKEN: &[Key] = &[HOST, PORT, USER, TIMEOUT, REGION, ASSUME_ROLE_ARN, ROLE_SESSION_NAME, STS_ENDPOINT_URL];

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

    fn prefix(self) -> &'static str {
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

/// An STS AssumeRole step on top of the base credentials.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AssumeRole {
    /// `pg_iam_auth_assume_role_arn`.
    pub role_arn: String,
    /// `pg_iam_auth_role_session_name` (default `KongPostgres`).
    pub session_name: String,
    /// `pg_iam_auth_sts_endpoint_url`, for a custom or VPC STS endpoint.
    pub sts_endpoint_url: Option<String>,
}

/// What a token is signed for: the database endpoint and user, and how to get
/// credentials for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name, lowercased (it is signed lowercased).
    pub host: String,
    /// TCP port; always part of the signed host.
    pub port: u16,
    /// Database user (`DBUser`).
    pub user: String,
    /// Explicit region (`pg_iam_auth_region`); else parsed from the host.
    pub region: Option<String>,
    /// Optional assume-role step.
    pub assume_role: Option<AssumeRole>,
    /// `pg_timeout`: bounds credential lookups as well as database I/O.
    pub timeout: Duration,
}

/// `pg_ssl_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    /// TLS 1.2 only (`tlsv1_2`, the default).
    Tls12,
    /// TLS 1.3 only (`tlsv1_3`).
    Tls13,
    /// TLS 1.2 or 1.3 (`any`).
    Any,
}

/// A source of trusted CA certificates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CaSource {
    /// The operating system's store (keyword `system`).
    System,
    /// A PEM file.
    File(PathBuf),
}

/// TLS settings for the database connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsConf {
    /// `pg_ssl`: ask the server for TLS.
    pub enabled: bool,
    /// `pg_ssl_required`: fail if the server does not do TLS.
    pub required: bool,
    /// `pg_ssl_verify`: verify the chain and the host name.
    pub verify: bool,
    /// `pg_ssl_version`.
    pub version: TlsVersion,
    /// Client certificate and key files (`pg_ssl_cert`, `pg_ssl_cert_key`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Trust anchors: `pg_ssl_cafile` if set, else `lua_ssl_trusted_certificate`.
    pub trusted: Vec<CaSource>,
    /// `pg_ssl_cafile` as given (it is also the only entry of `trusted`).
    pub cafile: Option<PathBuf>,
}

/// Everything `connect()` needs.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectConf {
    /// Host, port, user, region, credentials.
    pub endpoint: Endpoint,
    /// Authenticate with an IAM token instead of a password.
    pub iam: bool,
    /// `pg_password` (ignored, and `None`, when IAM is on).
    pub password: Option<String>,
    /// `pg_database`.
    pub database: String,
    /// `pg_schema`: becomes the `search_path`.
    pub schema: Option<String>,
    /// `pg_application_name` (default `kong_rds_iam`): the session's
    /// `application_name`, as pgmoon's option of that name.
    pub application_name: String,
    /// TLS settings (forced on and required under IAM).
    pub tls: TlsConf,
    /// Keep-alive pool settings.
    pub pool: PoolConf,
    /// `pg_iam_auth_max_rate` (default 200; 0: off): new IAM logins per
    /// second to this host, node-wide (see [`crate::rate`]).
    pub iam_max_rate: u32,
}

/// How connections are kept alive (see [`crate::pool`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConf {
    /// `pg_keepalive_timeout` (ms, default 60000): how long an idle
    /// connection is kept; zero keeps it until the server closes it.
    pub keepalive_timeout: Duration,
    /// `pg_pool_size` (default 256): idle connections kept per pool key.
    pub size: usize,
    /// `pg_backlog`: when set, at most `size` connections of a key are in
    /// use at once and up to this many callers wait for one.
    pub backlog: Option<usize>,
    /// `pg_max_lifetime` (ms): connections older than this (+-10%) are
    /// closed instead of kept alive.
    pub max_lifetime: Option<Duration>,
}

impl Default for PoolConf {
    fn default() -> Self {
        PoolConf { keepalive_timeout: Duration::from_secs(60), size: 256, backlog: None, max_lifetime: None }
    }
}

impl std::fmt::Debug for ConnectConf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectConf")
            .field("endpoint", &self.endpoint)
            .field("iam", &self.iam)
            .field("password", &self.password.as_ref().map(|_| "** redacted **"))
            .field("database", &self.database)
            .field("schema", &self.schema)
            .field("application_name", &self.application_name)
            .field("tls", &self.tls)
            .field("pool", &self.pool)
            .field("iam_max_rate", &self.iam_max_rate)
            .finish()
    }
}

/// Kong's default `pg_iam_auth_role_session_name`.
pub const DEFAULT_SESSION_NAME: &str = "KongPostgres";

impl Endpoint {
    /// Reads the keys a token needs from `src` for `side`.
    pub fn parse(src: &dyn ConfSource, side: Side) -> Result<Endpoint> {
        Reader { src, side }.endpoint()
    }
}

impl ConnectConf {
    /// Reads every connection key from `src` for `side` and applies the IAM rules.
    pub fn parse(src: &dyn ConfSource, side: Side) -> Result<ConnectConf> {
        Reader { src, side }.connect()
    }
}

/// Looks keys up for one side, with the `pg_ro_*` -> `pg_*` fallback.
struct Reader<'a> {
    src: &'a dyn ConfSource,
    side: Side,
}

impl Reader<'_> {
    /// The value of `key` for this side (read-only falling back to
    /// read-write), with the name it was read under. An empty string is
    /// unset, as an empty kong.conf value is.
    fn lookup(&self, key: Key) -> Option<(&'static str, RawValue)> {
        let get = |name: &'static str| self.src.get(name).filter(|v| !is_empty_string(v)).map(|v| (name, v));
        match self.side {
            Side::ReadWrite => get(key.rw),
            Side::ReadOnly => get(key.ro).or_else(|| get(key.rw)),
        }
    }

    fn key_name(&self, key: Key) -> &'static str {
        key.name(self.side)
    }

    fn string(&self, key: Key, default: &str) -> Result<String> {
        match self.lookup(key) {
            None => Ok(default.to_owned()),
            Some((name, v)) => non_empty_string(name, v),
        }
    }

    fn optional_string(&self, key: Key) -> Result<Option<String>> {
        match self.lookup(key) {
            None => Ok(None),
            Some((name, v)) => optional_string(name, v, false),
        }
    }

    fn boolean(&self, key: Key, default: bool) -> Result<bool> {
        match self.lookup(key) {
            None => Ok(default),
            Some((name, v)) => boolean(name, v),
        }
    }

    fn integer(&self, key: Key, default: i64, min: i64, max: i64) -> Result<i64> {
        match self.lookup(key) {
            None => Ok(default),
            Some((name, v)) => integer(name, v, min, max),
        }
    }

    fn endpoint(&self) -> Result<Endpoint> {
        let host = self.string(key::HOST, "127.0.0.1")?;
        // 253: the longest DNS name. Bounding it here also bounds every message that names the host.
        if host.len() > 253 || !is_host_text(&host) {
            return Err(Error::config(format!("{} must be a host name or address, got {}", self.key_name(key::HOST), quote(&host))));
        }
        let port = self.integer(key::PORT, 5432, 1, 65535)? as u16;
        let user = self.string(key::USER, "kong")?;
        let timeout_ms = self.integer(key::TIMEOUT, 5000, 1, 3_600_000)?;
        let region = match self.lookup(key::REGION) {
            None => None,
            Some((name, v)) => match optional_string(name, v, false)? {
                None => None,
                Some(r) if region::is_valid(&r) => Some(r),
                Some(r) => {
                    return Err(Error::config(format!("{name} must be an AWS region like us-east-1, got {}", quote(&r))))
                }
            },
        };
        let assume_role = match self.optional_string(key::ASSUME_ROLE_ARN)? {
            None => None,
            Some(role_arn) => {
                if !role_arn.starts_with("arn:") {
                    return Err(Error::config(format!(
                        "{} must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME), got {}",
                        self.key_name(key::ASSUME_ROLE_ARN),
                        quote(&role_arn)
                    )));
                }
                let session_name = self.string(key::ROLE_SESSION_NAME, DEFAULT_SESSION_NAME)?;
                let sts_endpoint_url = self.optional_string(key::STS_ENDPOINT_URL)?;
                if let Some(url) = &sts_endpoint_url {
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(Error::config(format!(
                            "{} must be an http(s) URL, got {}",
                            self.key_name(key::STS_ENDPOINT_URL),
                            quote(url)
                        )));
                    }
                }
                Some(AssumeRole { role_arn, session_name, sts_endpoint_url })
            }
        };
        let mut host = host;
        host.make_ascii_lowercase();
        Ok(Endpoint {
            host,
            port,
            user,
            region,
            assume_role,
            timeout: Duration::from_millis(timeout_ms as u64),
        })
    }

    /// IAM for this side: `pg_iam_auth`, or for read-only also `pg_ro_iam_auth`.
    fn iam(&self) -> Result<bool> {
        let get = |name: &str| self.src.get(name).filter(|v| !is_empty_string(v));
        let rw = match get(key::IAM_AUTH.rw) {
            None => false,
            Some(v) => boolean(key::IAM_AUTH.rw, v)?,
        };
        match self.side {
            Side::ReadWrite => Ok(rw),
            Side::ReadOnly => match get(key::IAM_AUTH.ro) {
                None => Ok(rw),
                Some(v) => Ok(boolean(key::IAM_AUTH.ro, v)? || rw),
            },
        }
    }

    fn connect(&self) -> Result<ConnectConf> {
        let endpoint = self.endpoint()?;
        let iam = self.iam()?;
        let password = match self.lookup(key::PASSWORD) {
            None => None,
            Some((name, v)) => optional_string(name, v, true)?,
        };
        let database = self.string(key::DATABASE, "kong")?;
        let schema = self.optional_string(key::SCHEMA)?;
        let version = match self.lookup(key::SSL_VERSION) {
            None => TlsVersion::Tls12,
            Some((name, v)) => match v {
                RawValue::Str(s) if s == "tlsv1_2" => TlsVersion::Tls12,
                RawValue::Str(s) if s == "tlsv1_3" => TlsVersion::Tls13,
                RawValue::Str(s) if s == "any" => TlsVersion::Any,
                other => {
                    return Err(Error::config(format!("{name} must be one of tlsv1_2, tlsv1_3, any, got {}", show(&other))))
                }
            },
        };
        let cert = self.optional_string(key::SSL_CERT)?;
        let cert_key = self.optional_string(key::SSL_CERT_KEY)?;
        if iam && (cert.is_some() || cert_key.is_some()) {
            let p = self.side.prefix();
            return Err(Error::config(format!(
                "mTLS connection to postgres cannot be used when {p}iam_auth is enabled, so {p}ssl_cert and {p}ssl_cert_key must not be specified"
            )));
        }
        let client_cert = match (cert, cert_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            _ => {
                return Err(Error::config(format!(
                    "{} and {} must be set together",
                    self.key_name(key::SSL_CERT),
                    self.key_name(key::SSL_CERT_KEY)
                )))
            }
        };
        let cafile = match self.lookup(key::SSL_CAFILE) {
            Some((name, v)) => optional_string(name, v, false)?.map(PathBuf::from),
            None => None,
        };
        let trusted = match &cafile {
            Some(path) => vec![CaSource::File(path.clone())],
            None => self.trusted_certificates()?,
        };
        let tls = TlsConf {
            enabled: iam || self.boolean(key::SSL, false)?,
            required: iam || self.boolean(key::SSL_REQUIRED, false)?,
            verify: self.boolean(key::SSL_VERIFY, false)?,
            version,
            client_cert,
            trusted,
            cafile,
        };
        let pool = PoolConf {
            keepalive_timeout: Duration::from_millis(self.integer(key::KEEPALIVE_TIMEOUT, 60_000, 0, 86_400_000)? as u64),
            size: self.integer(key::POOL_SIZE, 256, 1, 100_000)? as usize,
            backlog: match self.lookup(key::BACKLOG) {
                None => None,
                Some((name, v)) => Some(integer(name, v, 0, 100_000)? as usize),
            },
            max_lifetime: match self.lookup(key::MAX_LIFETIME) {
                None => None,
                Some((name, v)) => Some(Duration::from_millis(integer(name, v, 1, 86_400_000 * 30)? as u64)),
            },
        };
        let application_name = self.string(key::APPLICATION_NAME, "kong_rds_iam")?;
        if application_name.len() > 63 || application_name.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(Error::config(format!(
                "{} must be printable ASCII of at most 63 bytes, got {}",
                self.key_name(key::APPLICATION_NAME),
                quote(&application_name)
            )));
        }
        Ok(ConnectConf {
            endpoint,
            iam,
            password: if iam { None } else { password },
            database,
            schema,
            application_name,
            tls,
            pool,
            iam_max_rate: self.integer(key::IAM_MAX_RATE, 200, 0, 100_000)? as u32,
        })
    }

    /// `lua_ssl_trusted_certificate`: a comma-separated string or an array;
    /// `system` means the OS store. Unset means `system`, Kong's default.
    fn trusted_certificates(&self) -> Result<Vec<CaSource>> {
        const KEY: &str = "lua_ssl_trusted_certificate";
        let items: Vec<String> = match self.src.get(KEY) {
            None => return Ok(vec![CaSource::System]),
            Some(RawValue::Str(s)) => s.split(',').map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect(),
            Some(RawValue::List(l)) => l.into_iter().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect(),
            Some(other) => {
                return Err(Error::config(format!(
                    "{KEY} must be a comma-separated string or an array of paths, got {}",
                    show(&other)
                )))
            }
        };
        Ok(items
            .into_iter()
            .map(|p| if p == "system" { CaSource::System } else { CaSource::File(PathBuf::from(p)) })
            .collect())
    }
}

fn is_empty_string(v: &RawValue) -> bool {
    matches!(v, RawValue::Str(s) if s.is_empty())
}

fn boolean(key: &str, v: RawValue) -> Result<bool> {
    match &v {
        RawValue::Bool(b) => Ok(*b),
        RawValue::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" => Ok(true),
            "off" | "false" | "no" => Ok(false),
            _ => Err(Error::config(format!("{key} must be a boolean (on/off, true/false, yes/no), got {}", show(&v)))),
        },
        _ => Err(Error::config(format!("{key} must be a boolean (on/off, true/false, yes/no), got {}", show(&v)))),
    }
}

fn integer(key: &str, v: RawValue, min: i64, max: i64) -> Result<i64> {
    let n = match &v {
        RawValue::Int(n) => Some(*n),
        RawValue::Str(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(Error::config(format!("{key} must be an integer {min}-{max}, got {}", show(&v)))),
    }
}

fn non_empty_string(key: &str, v: RawValue) -> Result<String> {
    match v {
        RawValue::Str(s) if !s.trim().is_empty() => Ok(trimmed(s)),
        other => Err(Error::config(format!("{key} must be a non-empty string, got {}", show(&other)))),
    }
}

/// No whitespace, control character or `/`: could be a host name or address.
fn is_host_text(host: &str) -> bool {
    // Printable ASCII (every real host name) is decided byte by byte.
    host.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
        || !host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/')
}

/// `s` without surrounding whitespace, reusing its buffer when it has none.
fn trimmed(s: String) -> String {
    if s.trim().len() == s.len() {
        s
    } else {
        s.trim().to_owned()
    }
}

/// An optional string: empty means unset (as an empty kong.conf value does).
/// `secret` keeps the value out of the error message.
fn optional_string(key: &str, v: RawValue, secret: bool) -> Result<Option<String>> {
    match v {
        RawValue::Str(s) if s.is_empty() => Ok(None),
        RawValue::Str(s) if secret => Ok(Some(s)),
        RawValue::Str(s) => Ok(Some(trimmed(s))),
        other if secret => Err(Error::config(format!("{key} must be a string, got a {}", type_name(&other)))),
        other => Err(Error::config(format!("{key} must be a string, got {}", show(&other)))),
    }
}

fn type_name(v: &RawValue) -> &'static str {
    match v {
        RawValue::Bool(_) => "boolean",
        RawValue::Int(_) | RawValue::Float(_) => "number",
        RawValue::Str(_) => "string",
        RawValue::List(_) => "table",
        RawValue::Other(t) => t,
    }
}

/// A value for an error message: strings quoted and cut, others by value or type.
fn show(v: &RawValue) -> String {
    match v {
        RawValue::Bool(b) => b.to_string(),
        RawValue::Int(n) => n.to_string(),
        RawValue::Float(f) => f.to_string(),
        RawValue::Str(s) => quote(s),
        RawValue::List(_) => "a table".to_owned(),
        RawValue::Other(t) => format!("a {t}"),
    }
}

fn quote(s: &str) -> String {
    const MAX: usize = 64;
    let mut cut: String = s.chars().take(MAX).collect();
    if cut.len() < s.len() {
        cut.push_str("...");
    }
    format!("{cut:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(pairs: &[(&str, RawValue)]) -> HashMap<String, RawValue> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn s(v: &str) -> RawValue {
        RawValue::Str(v.to_owned())
    }

    /// Records every name asked for, answering from `values`.
    struct Recording {
        values: HashMap<String, RawValue>,
        asked: std::cell::RefCell<Vec<String>>,
    }

    impl ConfSource for Recording {
        fn get(&self, key: &str) -> Option<RawValue> {
            self.asked.borrow_mut().push(key.to_owned());
            self.values.get(key).cloned()
        }
    }

    #[test]
    fn host_text() {
        for ok in ["db.example", "10.0.0.1", "::1", "bücher.example"] {
            assert!(is_host_text(ok), "{ok}");
        }
        for bad in ["a b", "a\tb", "a/b", "a\u{2003}b", "a\u{85}b", "bü/cher", "\0"] {
            assert!(!is_host_text(bad), "{bad:?}");
        }
    }

    #[test]
    fn endpoint_reads_exactly_the_token_names() {
        // api.lua hands the Rust side only these values: a name read outside
        // the list would silently read as unset.
        // (Only pg_* set, so the read-only side falls back on every key.)
        let role = [("pg_iam_auth_assume_role_arn", s("arn:aws:iam::1:role/r"))];
        for side in [Side::ReadWrite, Side::ReadOnly] {
            let names = key::token_names(side);
            let conf = Recording { values: src(&role), asked: Default::default() };
            Endpoint::parse(&conf, side).unwrap();
            let mut asked = conf.asked.into_inner();
            asked.sort();
            asked.dedup();
            let mut listed: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            listed.sort();
            assert_eq!(asked, listed, "{side:?}");
        }
    }

    #[test]
    fn defaults_follow_kong_conf() {
        let c = ConnectConf::parse(&src(&[]), Side::ReadWrite).unwrap();
        assert_eq!(c.endpoint.host, "127.0.0.1");
        assert_eq!(c.endpoint.port, 5432);
        assert_eq!(c.endpoint.user, "kong");
        assert_eq!(c.endpoint.timeout, Duration::from_millis(5000));
        assert_eq!(c.database, "kong");
        assert!(!c.iam && !c.tls.enabled && !c.tls.required && !c.tls.verify);
        assert_eq!(c.tls.version, TlsVersion::Tls12);
        assert_eq!(c.tls.trusted, vec![CaSource::System]);
        assert_eq!(c.endpoint.assume_role, None);
    }

    #[test]
    fn strings_and_parsed_values_mean_the_same() {
        let as_text = src(&[("pg_port", s("6432")), ("pg_iam_auth", s("on")), ("pg_ssl_verify", s("yes")), ("pg_timeout", s("250"))]);
        let parsed = src(&[
            ("pg_port", RawValue::Int(6432)),
            ("pg_iam_auth", RawValue::Bool(true)),
            ("pg_ssl_verify", RawValue::Bool(true)),
            ("pg_timeout", RawValue::Int(250)),
        ]);
        let a = ConnectConf::parse(&as_text, Side::ReadWrite).unwrap();
        let b = ConnectConf::parse(&parsed, Side::ReadWrite).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.endpoint.port, 6432);
        assert!(a.iam && a.tls.enabled && a.tls.required && a.tls.verify);
    }

    #[test]
    fn iam_ignores_password_and_forces_tls() {
        let c = ConnectConf::parse(&src(&[("pg_iam_auth", s("on")), ("pg_password", s("hunter2")), ("pg_ssl", s("off"))]), Side::ReadWrite)
            .unwrap();
        assert_eq!(c.password, None);
        assert!(c.tls.enabled && c.tls.required);
    }

    #[test]
    fn mtls_with_iam_is_refused_with_kongs_message() {
        let conf = src(&[("pg_iam_auth", RawValue::Bool(true)), ("pg_ssl_cert", s("/c.pem")), ("pg_ssl_cert_key", s("/k.pem"))]);
        let e = ConnectConf::parse(&conf, Side::ReadWrite).unwrap_err();
        assert_eq!(
            e.message(),
            "mTLS connection to postgres cannot be used when pg_iam_auth is enabled, so pg_ssl_cert and pg_ssl_cert_key must not be specified"
        );
        let conf = src(&[("pg_ro_iam_auth", RawValue::Bool(true)), ("pg_ro_ssl_cert", s("/c.pem"))]);
        let e = ConnectConf::parse(&conf, Side::ReadOnly).unwrap_err();
        assert!(e.message().contains("when pg_ro_iam_auth is enabled, so pg_ro_ssl_cert and pg_ro_ssl_cert_key"));
    }

    #[test]
    fn read_only_falls_back_to_read_write_keys() {
        let conf = src(&[
            ("pg_host", s("rw.example")),
            ("pg_port", RawValue::Int(6000)),
            ("pg_user", s("writer")),
            ("pg_ro_user", s("reader")),
            ("pg_database", s("db1")),
            ("pg_ro_host", s("RO.Example")),
        ]);
        let ro = ConnectConf::parse(&conf, Side::ReadOnly).unwrap();
        assert_eq!(ro.endpoint.host, "ro.example");
        assert_eq!(ro.endpoint.port, 6000);
        assert_eq!(ro.endpoint.user, "reader");
        assert_eq!(ro.database, "db1");
        let rw = ConnectConf::parse(&conf, Side::ReadWrite).unwrap();
        assert_eq!(rw.endpoint.user, "writer");
    }

    #[test]
    fn read_only_iam_follows_the_docs() {
        let rw_on = src(&[("pg_iam_auth", s("on"))]);
        assert!(ConnectConf::parse(&rw_on, Side::ReadOnly).unwrap().iam);
        let ro_only = src(&[("pg_ro_iam_auth", s("on")), ("pg_password", s("pw"))]);
        assert!(ConnectConf::parse(&ro_only, Side::ReadOnly).unwrap().iam);
        let rw = ConnectConf::parse(&ro_only, Side::ReadWrite).unwrap();
        assert!(!rw.iam);
        assert_eq!(rw.password.as_deref(), Some("pw"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: Vec<(Vec<(&str, RawValue)>, Side, &str)> = vec![
            (vec![("pg_port", s("abc"))], Side::ReadWrite, "pg_port must be an integer 1-65535, got \"abc\""),
            (vec![("pg_port", RawValue::Int(0))], Side::ReadWrite, "pg_port must be an integer 1-65535, got 0"),
            (vec![("pg_port", RawValue::Int(70000))], Side::ReadWrite, "pg_port must be an integer 1-65535, got 70000"),
            (vec![("pg_port", RawValue::Float(5432.5))], Side::ReadWrite, "pg_port must be an integer 1-65535, got 5432.5"),
            (vec![("pg_ro_port", s("x"))], Side::ReadOnly, "pg_ro_port must be an integer 1-65535, got \"x\""),
            (vec![("pg_timeout", RawValue::Int(-1))], Side::ReadWrite, "pg_timeout must be an integer 1-3600000, got -1"),
            (vec![("pg_iam_auth", s("maybe"))], Side::ReadWrite, "pg_iam_auth must be a boolean (on/off, true/false, yes/no), got \"maybe\""),
            (vec![("pg_ssl", RawValue::Int(1))], Side::ReadWrite, "pg_ssl must be a boolean (on/off, true/false, yes/no), got 1"),
            (vec![("pg_ssl_verify", RawValue::Other("function"))], Side::ReadWrite, "pg_ssl_verify must be a boolean (on/off, true/false, yes/no), got a function"),
            (vec![("pg_host", s("  "))], Side::ReadWrite, "pg_host must be a non-empty string, got \"  \""),
            (vec![("pg_host", RawValue::Bool(true))], Side::ReadWrite, "pg_host must be a non-empty string, got true"),
            (vec![("pg_host", s("a b"))], Side::ReadWrite, "pg_host must be a host name or address, got \"a b\""),
            (
                vec![("pg_host", s(&"h".repeat(254)))],
                Side::ReadWrite,
                "pg_host must be a host name or address, got \"hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh...\"",
            ),
            (vec![("pg_user", RawValue::Int(3))], Side::ReadWrite, "pg_user must be a non-empty string, got 3"),
            (vec![("pg_database", RawValue::List(vec![]))], Side::ReadWrite, "pg_database must be a non-empty string, got a table"),
            (vec![("pg_ssl_version", s("tlsv1_1"))], Side::ReadWrite, "pg_ssl_version must be one of tlsv1_2, tlsv1_3, any, got \"tlsv1_1\""),
            (vec![("pg_iam_auth_region", s("US East"))], Side::ReadWrite, "pg_iam_auth_region must be an AWS region like us-east-1, got \"US East\""),
            (vec![("pg_iam_auth_assume_role_arn", s("role"))], Side::ReadWrite, "pg_iam_auth_assume_role_arn must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME), got \"role\""),
            (
                vec![("pg_iam_auth_assume_role_arn", s("arn:aws:iam::1:role/r")), ("pg_iam_auth_sts_endpoint_url", s("sts.local"))],
                Side::ReadWrite,
                "pg_iam_auth_sts_endpoint_url must be an http(s) URL, got \"sts.local\"",
            ),
            (vec![("pg_ssl_cert", s("/c.pem"))], Side::ReadWrite, "pg_ssl_cert and pg_ssl_cert_key must be set together"),
            (vec![("lua_ssl_trusted_certificate", RawValue::Bool(false))], Side::ReadWrite, "lua_ssl_trusted_certificate must be a comma-separated string or an array of paths, got false"),
            (vec![("pg_schema", RawValue::Int(1))], Side::ReadWrite, "pg_schema must be a string, got 1"),
        ];
        for (pairs, side, want) in cases {
            let e = ConnectConf::parse(&src(&pairs), side).unwrap_err();
            assert_eq!(e.message(), want, "for {pairs:?}");
        }
    }

    #[test]
    fn password_errors_never_show_the_value() {
        let e = ConnectConf::parse(&src(&[("pg_password", RawValue::Int(123456))]), Side::ReadWrite).unwrap_err();
        assert_eq!(e.message(), "pg_password must be a string, got a number");
        let c = ConnectConf::parse(&src(&[("pg_password", s("sekrit"))]), Side::ReadWrite).unwrap();
        assert!(!format!("{c:?}").contains("sekrit"));
    }

    #[test]
    fn assume_role_defaults_session_name() {
        let e = Endpoint::parse(&src(&[("pg_iam_auth_assume_role_arn", s("arn:aws:iam::123456789012:role/db"))]), Side::ReadOnly).unwrap();
        let role = e.assume_role.unwrap();
        assert_eq!(role.session_name, "KongPostgres");
        assert_eq!(role.sts_endpoint_url, None);
    }

    #[test]
    fn trusted_certificates_from_string_array_or_cafile() {
        let c = ConnectConf::parse(&src(&[("lua_ssl_trusted_certificate", s("system, /a.pem,/b.pem"))]), Side::ReadWrite).unwrap();
        assert_eq!(c.tls.trusted, vec![CaSource::System, CaSource::File("/a.pem".into()), CaSource::File("/b.pem".into())]);
        let c = ConnectConf::parse(&src(&[("lua_ssl_trusted_certificate", RawValue::List(vec!["/x.pem".into()]))]), Side::ReadWrite).unwrap();
        assert_eq!(c.tls.trusted, vec![CaSource::File("/x.pem".into())]);
        let c = ConnectConf::parse(&src(&[("lua_ssl_trusted_certificate", s("system")), ("pg_ssl_cafile", s("/rds.pem"))]), Side::ReadWrite).unwrap();
        assert_eq!(c.tls.trusted, vec![CaSource::File("/rds.pem".into())]);
    }

    #[test]
    fn empty_strings_mean_unset_and_fall_back() {
        let c = ConnectConf::parse(&src(&[("pg_host", s("")), ("pg_user", s("writer")), ("pg_ro_user", s(""))]), Side::ReadOnly).unwrap();
        assert_eq!(c.endpoint.host, "127.0.0.1");
        assert_eq!(c.endpoint.user, "writer");
    }

    #[test]
    fn empty_strings_mean_unset_for_optional_keys() {
        let c = ConnectConf::parse(&src(&[("pg_password", s("")), ("pg_schema", s("")), ("pg_iam_auth_region", s(""))]), Side::ReadWrite).unwrap();
        assert_eq!(c.password, None);
        assert_eq!(c.schema, None);
        assert_eq!(c.endpoint.region, None);
    }

    #[test]
    fn mode_argument() {
        assert_eq!(Side::parse(None).unwrap(), Side::ReadWrite);
        assert_eq!(Side::parse(Some("ro")).unwrap(), Side::ReadOnly);
        assert_eq!(Side::parse(Some("rx")).unwrap_err().message(), "mode must be \"rw\" or \"ro\", got \"rx\"");
    }
}
