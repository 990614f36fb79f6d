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
//!
//! Rooms: this file holds the entry points ([`Endpoint::parse`],
//! [`ConnectConf::parse`]) and the typed settings they produce; `keys.rs`
//! the key catalogue and the two sides; `value.rs` the values as handed
//! over and their coercions and messages; `read.rs` the reader with the
//! ro -> rw fallback and the IAM rules.

mod keys;
mod read;
mod value;

use std::path::PathBuf;
use std::time::Duration;

pub use keys::{key, Key, Side};
pub use value::{ConfSource, RawValue};

use crate::error::Result;

impl Endpoint {
    /// Reads the keys a token needs from `src` for `side`.
    pub fn parse(src: &dyn ConfSource, side: Side) -> Result<Endpoint> {
        read::Reader::new(src, side).endpoint()
    }
}

impl ConnectConf {
    /// Reads every connection key from `src` for `side` and applies the IAM rules.
    pub fn parse(src: &dyn ConfSource, side: Side) -> Result<ConnectConf> {
        read::Reader::new(src, side).connect()
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
    /// The host the token is signed for, lowercased (it is signed
    /// lowercased): `pg_iam_auth_host`, else `pg_host`. The server's
    /// certificate is checked against it, and it is the SNI.
    pub host: String,
    /// The port signed with it: `pg_iam_auth_port`, else `pg_port`.
    pub port: u16,
    /// Database user (`DBUser`).
    pub user: String,
    /// Explicit region (`pg_iam_auth_region`); else parsed from the host.
    pub region: Option<String>,
    /// Optional assume-role step.
    pub assume_role: Option<AssumeRole>,
    /// `pg_timeout`: bounds credential lookups as well as database I/O.
    pub timeout: Duration,
    /// `pg_iam_auth_service`: which token the database takes.
    pub service: Service,
}

/// `pg_iam_auth_service`: the database's kind of IAM token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Service {
    /// RDS and Aurora (`rds`, the default): service `rds-db`, `host:port` signed.
    #[default]
    Rds,
    /// Aurora DSQL (`dsql`): `DbConnectAdmin` for the user `admin`, else
    /// `DbConnect`; the host signed without its port.
    Dsql,
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
    /// The Amazon RDS CA certificates embedded in the module
    /// (data/rds-ca-bundle.pem), trusted for IAM connections.
    RdsBundle,
}

/// TLS settings for the database connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsConf {
    /// `pg_ssl`: ask the server for TLS.
    pub enabled: bool,
    /// `pg_ssl_required`: fail if the server does not do TLS.
    pub required: bool,
    /// Verify the chain and the host name: `pg_ssl_verify`; under IAM on
    /// unless `pg_iam_auth_ssl_verify` is off.
    pub verify: bool,
    /// `pg_ssl_version`.
    pub version: TlsVersion,
    /// Client certificate and key files (`pg_ssl_cert`, `pg_ssl_cert_key`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Trust anchors: `pg_ssl_cafile` if set, else `lua_ssl_trusted_certificate`
    /// (under IAM followed by [`CaSource::RdsBundle`]).
    pub trusted: Vec<CaSource>,
    /// `pg_ssl_cafile` as given (it is also the only entry of `trusted`).
    pub cafile: Option<PathBuf>,
}

/// Everything `connect()` needs.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectConf {
    /// Where to dial: `pg_host:pg_port`.
    pub address: Address,
    /// What the token is signed for: host, port, user, region, credentials.
    pub endpoint: Endpoint,
    /// How the session authenticates: IAM or a password, one or the other.
    pub auth: Auth,
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
    /// `pg_require_auth`: the authentication requests the server may make.
    pub require_auth: RequireAuth,
}

/// `pg_require_auth` (libpq's `require_auth`): which authentication requests
/// of the server are answered. Unset, any is, except a cleartext password
/// over a connection without TLS (see [`crate::pg::require_auth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequireAuth {
    /// The methods named by the key (after `!method` negations); `None`
    /// when the key is unset.
    pub only: Option<AuthMethods>,
    /// The key's name on this side, for messages.
    pub key: &'static str,
}

/// A server's authentication request, as `pg_require_auth` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// `password`: a cleartext password (AuthenticationCleartextPassword).
    Password,
    /// `md5`: an MD5 hash of the password.
    Md5,
    /// `scram-sha-256`: SASL with SCRAM-SHA-256 (or its -PLUS variant).
    ScramSha256,
    /// `none`: no authentication request at all (trust).
    None,
}

impl AuthMethod {
    /// Every method, in the order messages list them.
    pub const ALL: [AuthMethod; 4] = [AuthMethod::Password, AuthMethod::Md5, AuthMethod::ScramSha256, AuthMethod::None];

    /// The name `pg_require_auth` uses.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::None => "none",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`AuthMethod`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AuthMethods(u8);

impl AuthMethods {
    /// Every method.
    pub fn all() -> AuthMethods {
        AuthMethod::ALL.iter().fold(AuthMethods::default(), |set, m| set.with(*m))
    }

    /// This set and `method`.
    pub fn with(self, method: AuthMethod) -> AuthMethods {
        AuthMethods(self.0 | method.bit())
    }

    /// This set without `method`.
    pub fn without(self, method: AuthMethod) -> AuthMethods {
        AuthMethods(self.0 & !method.bit())
    }

    /// Whether `method` is in the set.
    pub fn contains(self, method: AuthMethod) -> bool {
        self.0 & method.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A host and port to dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// Host name or address, lowercased.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// How a connection authenticates. IAM and a password are exclusive by
/// type: under IAM `pg_password` is not even kept.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// An IAM token, signed for the endpoint, is the password (TLS forced).
    Iam,
    /// `pg_password`, when set, for whatever the server asks.
    Password(Option<String>),
}

impl Auth {
    /// Whether this is IAM.
    pub fn is_iam(&self) -> bool {
        matches!(self, Auth::Iam)
    }

    /// The configured password (never under IAM).
    pub fn password(&self) -> Option<&str> {
        match self {
            Auth::Iam => None,
            Auth::Password(p) => p.as_deref(),
        }
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Iam => f.write_str("Iam"),
            Auth::Password(None) => f.write_str("Password(None)"),
            Auth::Password(Some(_)) => f.write_str("Password(** redacted **)"),
        }
    }
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
    /// `pg_cosocket` (default on): in nginx phases where calls yield, the
    /// socket is an nginx cosocket (see [`crate::pg::pipe`]); off, the I/O
    /// thread owns it, and the connection may be used across requests.
    pub cosocket: bool,
}

impl Default for PoolConf {
    fn default() -> Self {
        PoolConf { keepalive_timeout: Duration::from_secs(60), size: 256, backlog: None, max_lifetime: None, cosocket: true }
    }
}

impl std::fmt::Debug for ConnectConf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectConf")
            .field("address", &self.address)
            .field("endpoint", &self.endpoint)
            .field("auth", &self.auth)
            .field("database", &self.database)
            .field("schema", &self.schema)
            .field("application_name", &self.application_name)
            .field("tls", &self.tls)
            .field("pool", &self.pool)
            .field("iam_max_rate", &self.iam_max_rate)
            .field("require_auth", &self.require_auth)
            .finish()
    }
}

/// Kong's default `pg_iam_auth_role_session_name`.
pub const DEFAULT_SESSION_NAME: &str = "KongPostgres";
