//! The reader: keys looked up for one side with the `pg_ro_*` -> `pg_*`
//! fallback, the IAM rules, and the typed settings built from them.

use std::path::PathBuf;
use std::time::Duration;

use super::keys::{key, Key, Side};
use super::value::{boolean, integer, is_empty_string, non_empty_string, optional_string, quote, show, ConfSource, RawValue};
use super::{
    Address, AssumeRole, Auth, AuthMethod, AuthMethods, CaSource, ConnectConf, Endpoint, PoolConf, RequireAuth, Service, TlsConf,
    TlsVersion, DEFAULT_SESSION_NAME,
};
use crate::error::{Error, Result};
use crate::region;

/// Looks keys up for one side, with the `pg_ro_*` -> `pg_*` fallback.
pub(super) struct Reader<'a> {
    src: &'a dyn ConfSource,
    side: Side,
}

impl<'a> Reader<'a> {
    pub(super) fn new(src: &'a dyn ConfSource, side: Side) -> Self {
        Reader { src, side }
    }

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

    /// `pg_host:pg_port`: where a connection dials.
    pub(super) fn address(&self) -> Result<Address> {
        let host = self.host(key::HOST)?.unwrap_or_else(|| "127.0.0.1".into());
        let port = self.integer(key::PORT, 5432, 1, 65535)? as u16;
        Ok(Address { host, port })
    }

    /// A host key's value, lowercased; bounded (253: the longest DNS name)
    /// here, which also bounds every message that names the host.
    fn host(&self, key: Key) -> Result<Option<String>> {
        let Some((name, v)) = self.lookup(key) else { return Ok(None) };
        let mut host = non_empty_string(name, v)?;
        if host.len() > 253 || !is_host_text(&host) {
            return Err(Error::config(format!("{} must be a host name or address, got {}", self.key_name(key), quote(&host))));
        }
        host.make_ascii_lowercase();
        Ok(Some(host))
    }

    pub(super) fn endpoint(&self) -> Result<Endpoint> {
        let address = self.address()?;
        // The signing host: pg_iam_auth_host when pg_host is a CNAME, an IP or a tunnel.
        let host = self.host(key::IAM_HOST)?.unwrap_or(address.host);
        let port = match self.lookup(key::IAM_PORT) {
            None => address.port,
            Some((name, v)) => integer(name, v, 1, 65535)? as u16,
        };
        let user = self.string(key::USER, "kong")?;
        let timeout_ms = self.integer(key::TIMEOUT, 5000, 1, 3_600_000)?;
        let region = match self.lookup(key::REGION) {
            None => None,
            Some((name, v)) => match optional_string(name, v, false)? {
                None => None,
                Some(r) if region::is_valid(&r) => Some(r),
                Some(r) => return Err(Error::config(format!("{name} must be an AWS region like us-east-1, got {}", quote(&r)))),
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
        let service = match self.lookup(key::IAM_SERVICE) {
            None => Service::Rds,
            Some((_, RawValue::Str(s))) if s.trim().eq_ignore_ascii_case("rds") => Service::Rds,
            Some((_, RawValue::Str(s))) if s.trim().eq_ignore_ascii_case("dsql") => Service::Dsql,
            Some((name, other)) => return Err(Error::config(format!("{name} must be rds or dsql, got {}", show(&other)))),
        };
        Ok(Endpoint { host, port, user, region, assume_role, timeout: Duration::from_millis(timeout_ms as u64), service })
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

    pub(super) fn connect(&self) -> Result<ConnectConf> {
        let address = self.address()?;
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
                other => return Err(Error::config(format!("{name} must be one of tlsv1_2, tlsv1_3, any, got {}", show(&other)))),
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
        // An IAM token is a bearer credential: under IAM the server's
        // certificate is verified whatever pg_ssl_verify says, unless
        // pg_iam_auth_ssl_verify is turned off, against pg_ssl_cafile alone
        // when set (pinning), else lua_ssl_trusted_certificate plus the RDS CAs.
        let ssl_verify = self.boolean(key::SSL_VERIFY, false)?;
        let verify = if iam { self.boolean(key::IAM_SSL_VERIFY, true)? || ssl_verify } else { ssl_verify };
        let trusted = match &cafile {
            Some(path) => vec![CaSource::File(path.clone())],
            None if iam => {
                let mut trusted = self.trusted_certificates()?;
                trusted.push(CaSource::RdsBundle);
                trusted
            }
            None => self.trusted_certificates()?,
        };
        let tls = TlsConf {
            enabled: iam || self.boolean(key::SSL, false)?,
            required: iam || self.boolean(key::SSL_REQUIRED, false)?,
            verify,
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
            cosocket: self.boolean(key::COSOCKET, true)?,
        };
        let application_name = self.string(key::APPLICATION_NAME, "kong_rds_iam")?;
        if application_name.len() > 63 || application_name.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(Error::config(format!(
                "{} must be printable ASCII of at most 63 bytes, got {}",
                self.key_name(key::APPLICATION_NAME),
                quote(&application_name)
            )));
        }
        let require_auth = self.require_auth()?;
        if iam && require_auth.only.is_some_and(|m| !m.contains(AuthMethod::Password)) {
            let p = self.side.prefix();
            return Err(Error::config(format!(
                "{p}iam_auth sends the token as a cleartext password (over tls), so {} must allow password",
                require_auth.key
            )));
        }
        Ok(ConnectConf {
            address,
            endpoint,
            auth: if iam { Auth::Iam } else { Auth::Password(password) },
            database,
            schema,
            application_name,
            tls,
            pool,
            iam_max_rate: self.integer(key::IAM_MAX_RATE, 200, 0, 100_000)? as u32,
            require_auth,
        })
    }

    /// `pg_require_auth`: a comma-separated string or an array of
    /// `password`, `md5`, `scram-sha-256`, `none`, or of the same negated
    /// (`!md5`: any but md5), as libpq's `require_auth`.
    fn require_auth(&self) -> Result<RequireAuth> {
        let Some((name, v)) = self.lookup(key::REQUIRE_AUTH) else {
            return Ok(RequireAuth { only: None, key: self.key_name(key::REQUIRE_AUTH) });
        };
        let items: Vec<String> = match v {
            RawValue::Str(s) => s.split(',').map(|p| p.trim().to_owned()).collect(),
            RawValue::List(l) => l.into_iter().map(|p| p.trim().to_owned()).collect(),
            other => {
                return Err(Error::config(format!(
                    "{name} must be a comma-separated string or an array of authentication methods, got {}",
                    show(&other)
                )))
            }
        };
        let items: Vec<&str> = items.iter().map(String::as_str).filter(|p| !p.is_empty()).collect();
        let negated = items.iter().filter(|p| p.starts_with('!')).count();
        if items.is_empty() {
            return Err(Error::config(format!("{name} must name at least one authentication method")));
        }
        if negated != 0 && negated != items.len() {
            return Err(Error::config(format!("{name} cannot mix methods and negated (!) methods")));
        }
        let mut only = if negated == 0 { AuthMethods::default() } else { AuthMethods::all() };
        for item in items {
            let text = item.strip_prefix('!').unwrap_or(item);
            let Some(method) = AuthMethod::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(text)) else {
                return Err(Error::config(format!(
                    "{name} must list password, md5, scram-sha-256 or none (or !method), got {}",
                    quote(item)
                )));
            };
            only = if negated == 0 { only.with(method) } else { only.without(method) };
        }
        if only.is_empty() {
            return Err(Error::config(format!("{name} leaves no authentication method allowed")));
        }
        Ok(RequireAuth { only: Some(only), key: name })
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
                return Err(Error::config(format!("{KEY} must be a comma-separated string or an array of paths, got {}", show(&other))))
            }
        };
        Ok(items.into_iter().map(|p| if p == "system" { CaSource::System } else { CaSource::File(PathBuf::from(p)) }).collect())
    }
}

/// No whitespace, control character or `/`: could be a host name or address.
fn is_host_text(host: &str) -> bool {
    // Printable ASCII (every real host name) is decided byte by byte.
    host.bytes().all(|b| b.is_ascii_graphic() && b != b'/') || !host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/')
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

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
        assert!(!c.auth.is_iam() && !c.tls.enabled && !c.tls.required && !c.tls.verify);
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
        assert!(a.auth.is_iam() && a.tls.enabled && a.tls.required && a.tls.verify);
    }

    #[test]
    fn iam_ignores_password_and_forces_tls() {
        let c = ConnectConf::parse(&src(&[("pg_iam_auth", s("on")), ("pg_password", s("hunter2")), ("pg_ssl", s("off"))]), Side::ReadWrite)
            .unwrap();
        assert_eq!(c.auth.password(), None);
        assert!(c.tls.enabled && c.tls.required);
    }

    #[test]
    fn iam_verifies_whatever_pg_ssl_verify_says() {
        let iam = |extra: &[(&str, RawValue)]| {
            let mut pairs = vec![("pg_iam_auth", s("on")), ("pg_ssl_verify", RawValue::Bool(false))];
            pairs.extend(extra.iter().cloned());
            ConnectConf::parse(&src(&pairs), Side::ReadWrite).unwrap().tls
        };
        let tls = iam(&[]);
        assert!(tls.verify);
        assert_eq!(tls.trusted, vec![CaSource::System, CaSource::RdsBundle]);
        assert!(!iam(&[("pg_iam_auth_ssl_verify", s("off"))]).verify);
        assert!(iam(&[("pg_iam_auth_ssl_verify", s("off")), ("pg_ssl_verify", s("on"))]).verify);
        // pg_ssl_cafile pins: no RDS CAs next to it
        assert_eq!(iam(&[("pg_ssl_cafile", s("/ca.pem"))]).trusted, vec![CaSource::File("/ca.pem".into())]);
        // a password login keeps pg_ssl_verify as it is, and no RDS CAs
        let pw = ConnectConf::parse(&src(&[("pg_ssl", s("on"))]), Side::ReadWrite).unwrap().tls;
        assert!(!pw.verify);
        assert_eq!(pw.trusted, vec![CaSource::System]);
    }

    #[test]
    fn the_signing_host_is_apart_from_the_dialled_one() {
        let conf = src(&[
            ("pg_host", s("127.0.0.1")),
            ("pg_port", s("6543")),
            ("pg_iam_auth_host", s("DB.abc.eu-west-3.rds.amazonaws.com")),
            ("pg_iam_auth_port", s("5432")),
        ]);
        let c = ConnectConf::parse(&conf, Side::ReadWrite).unwrap();
        assert_eq!((c.address.host.as_str(), c.address.port), ("127.0.0.1", 6543));
        assert_eq!((c.endpoint.host.as_str(), c.endpoint.port), ("db.abc.eu-west-3.rds.amazonaws.com", 5432));
        assert_eq!(Endpoint::parse(&conf, Side::ReadWrite).unwrap(), c.endpoint);
        // unset: the signed host is the dialled one
        let plain = Endpoint::parse(&src(&[("pg_host", s("h")), ("pg_port", s("6543"))]), Side::ReadWrite).unwrap();
        assert_eq!((plain.host.as_str(), plain.port), ("h", 6543));
        // read-only falls back to the read-write signing host
        let ro = Endpoint::parse(&src(&[("pg_ro_host", s("ro")), ("pg_iam_auth_host", s("rw.sign"))]), Side::ReadOnly).unwrap();
        assert_eq!(ro.host, "rw.sign");
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
        assert!(ConnectConf::parse(&rw_on, Side::ReadOnly).unwrap().auth.is_iam());
        let ro_only = src(&[("pg_ro_iam_auth", s("on")), ("pg_password", s("pw"))]);
        assert!(ConnectConf::parse(&ro_only, Side::ReadOnly).unwrap().auth.is_iam());
        let rw = ConnectConf::parse(&ro_only, Side::ReadWrite).unwrap();
        assert!(!rw.auth.is_iam());
        assert_eq!(rw.auth.password(), Some("pw"));
    }

    #[test]
    fn bad_values_name_the_key() {
        type Case<'a> = (Vec<(&'a str, RawValue)>, Side, &'a str);
        let cases: Vec<Case> = vec![
            (vec![("pg_port", s("abc"))], Side::ReadWrite, "pg_port must be an integer 1-65535, got \"abc\""),
            (vec![("pg_port", RawValue::Int(0))], Side::ReadWrite, "pg_port must be an integer 1-65535, got 0"),
            (vec![("pg_port", RawValue::Int(70000))], Side::ReadWrite, "pg_port must be an integer 1-65535, got 70000"),
            (vec![("pg_port", RawValue::Float(5432.5))], Side::ReadWrite, "pg_port must be an integer 1-65535, got 5432.5"),
            (vec![("pg_ro_port", s("x"))], Side::ReadOnly, "pg_ro_port must be an integer 1-65535, got \"x\""),
            (vec![("pg_timeout", RawValue::Int(-1))], Side::ReadWrite, "pg_timeout must be an integer 1-3600000, got -1"),
            (
                vec![("pg_iam_auth", s("maybe"))],
                Side::ReadWrite,
                "pg_iam_auth must be a boolean (on/off, true/false, yes/no), got \"maybe\"",
            ),
            (vec![("pg_ssl", RawValue::Int(1))], Side::ReadWrite, "pg_ssl must be a boolean (on/off, true/false, yes/no), got 1"),
            (
                vec![("pg_ssl_verify", RawValue::Other("function"))],
                Side::ReadWrite,
                "pg_ssl_verify must be a boolean (on/off, true/false, yes/no), got a function",
            ),
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
            (
                vec![("pg_ssl_version", s("tlsv1_1"))],
                Side::ReadWrite,
                "pg_ssl_version must be one of tlsv1_2, tlsv1_3, any, got \"tlsv1_1\"",
            ),
            (
                vec![("pg_iam_auth_region", s("US East"))],
                Side::ReadWrite,
                "pg_iam_auth_region must be an AWS region like us-east-1, got \"US East\"",
            ),
            (
                vec![("pg_iam_auth_assume_role_arn", s("role"))],
                Side::ReadWrite,
                "pg_iam_auth_assume_role_arn must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME), got \"role\"",
            ),
            (
                vec![("pg_iam_auth_assume_role_arn", s("arn:aws:iam::1:role/r")), ("pg_iam_auth_sts_endpoint_url", s("sts.local"))],
                Side::ReadWrite,
                "pg_iam_auth_sts_endpoint_url must be an http(s) URL, got \"sts.local\"",
            ),
            (vec![("pg_ssl_cert", s("/c.pem"))], Side::ReadWrite, "pg_ssl_cert and pg_ssl_cert_key must be set together"),
            (
                vec![("lua_ssl_trusted_certificate", RawValue::Bool(false))],
                Side::ReadWrite,
                "lua_ssl_trusted_certificate must be a comma-separated string or an array of paths, got false",
            ),
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
        let c =
            ConnectConf::parse(&src(&[("lua_ssl_trusted_certificate", RawValue::List(vec!["/x.pem".into()]))]), Side::ReadWrite).unwrap();
        assert_eq!(c.tls.trusted, vec![CaSource::File("/x.pem".into())]);
        let c =
            ConnectConf::parse(&src(&[("lua_ssl_trusted_certificate", s("system")), ("pg_ssl_cafile", s("/rds.pem"))]), Side::ReadWrite)
                .unwrap();
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
        let c = ConnectConf::parse(&src(&[("pg_password", s("")), ("pg_schema", s("")), ("pg_iam_auth_region", s(""))]), Side::ReadWrite)
            .unwrap();
        assert_eq!(c.auth.password(), None);
        assert_eq!(c.schema, None);
        assert_eq!(c.endpoint.region, None);
    }

    #[test]
    fn require_auth_reads_lists_strings_and_negations() {
        use AuthMethod::{Md5, Password, ScramSha256};
        let read = |v: RawValue, side: Side| {
            let key = if side == Side::ReadWrite { "pg_require_auth" } else { "pg_ro_require_auth" };
            ConnectConf::parse(&src(&[(key, v)]), side).map(|c| c.require_auth)
        };
        let unset = ConnectConf::parse(&src(&[]), Side::ReadOnly).unwrap().require_auth;
        assert_eq!(unset, RequireAuth { only: None, key: "pg_ro_require_auth" });
        let r = read(s(" SCRAM-SHA-256 , md5"), Side::ReadWrite).unwrap();
        assert_eq!(r.only, Some(AuthMethods::default().with(ScramSha256).with(Md5)));
        assert_eq!(r.key, "pg_require_auth");
        let r = read(RawValue::List(vec!["none".into(), "password".into()]), Side::ReadOnly).unwrap();
        assert_eq!(r.only, Some(AuthMethods::default().with(AuthMethod::None).with(Password)));
        assert_eq!(r.key, "pg_ro_require_auth");
        let r = read(s("!password,!none"), Side::ReadWrite).unwrap();
        assert_eq!(r.only, Some(AuthMethods::default().with(Md5).with(ScramSha256)));
        // The read-only side falls back to the read-write key, and names it.
        let r = ConnectConf::parse(&src(&[("pg_require_auth", s("md5"))]), Side::ReadOnly).unwrap().require_auth;
        assert_eq!(r, RequireAuth { only: Some(AuthMethods::default().with(Md5)), key: "pg_require_auth" });
    }

    #[test]
    fn require_auth_errors_name_the_key() {
        type Case<'a> = (Vec<(&'a str, RawValue)>, Side, &'a str);
        let cases: Vec<Case> = vec![
            (
                vec![("pg_require_auth", s("scram-sha-256,gss"))],
                Side::ReadWrite,
                "pg_require_auth must list password, md5, scram-sha-256 or none (or !method), got \"gss\"",
            ),
            (vec![("pg_ro_require_auth", s(" , "))], Side::ReadOnly, "pg_ro_require_auth must name at least one authentication method"),
            (vec![("pg_require_auth", s("md5,!password"))], Side::ReadWrite, "pg_require_auth cannot mix methods and negated (!) methods"),
            (
                vec![("pg_require_auth", s("!password,!md5,!scram-sha-256,!none"))],
                Side::ReadWrite,
                "pg_require_auth leaves no authentication method allowed",
            ),
            (
                vec![("pg_require_auth", RawValue::Int(1))],
                Side::ReadWrite,
                "pg_require_auth must be a comma-separated string or an array of authentication methods, got 1",
            ),
            (
                vec![("pg_iam_auth", s("on")), ("pg_require_auth", s("scram-sha-256"))],
                Side::ReadWrite,
                "pg_iam_auth sends the token as a cleartext password (over tls), so pg_require_auth must allow password",
            ),
        ];
        for (pairs, side, want) in cases {
            let e = ConnectConf::parse(&src(&pairs), side).unwrap_err();
            assert_eq!(e.message(), want, "for {pairs:?}");
        }
        let iam = src(&[("pg_iam_auth", s("on")), ("pg_require_auth", s("password"))]);
        assert!(ConnectConf::parse(&iam, Side::ReadWrite).is_ok());
    }

    #[test]
    fn mode_argument() {
        assert_eq!(Side::parse(None).unwrap(), Side::ReadWrite);
        assert_eq!(Side::parse(Some("ro")).unwrap(), Side::ReadOnly);
        assert_eq!(Side::parse(Some("rx")).unwrap_err().message(), "mode must be \"rw\" or \"ro\", got \"rx\"");
    }
}
