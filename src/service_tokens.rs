//! The gateway's other AWS "connect" tokens, from the same signer, frozen
//! credential chain and cache rule as RDS tokens: ElastiCache and MemoryDB
//! (Valkey / Redis OSS IAM authentication) and Aurora DSQL.
//!
//! A token is served from the cache while it has comfortably long to live:
//! until `min(signed + its lifetime, credentials expiry) - 15 s`, as RDS
//! tokens are ([`Token::signed`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::credentials::{self, Identity};
use crate::error::{Error, Result};
use crate::process::PerProcess;
use crate::signer::{self, Kind, SigningParams};
use crate::token::Token;

/// An ElastiCache or MemoryDB token request (`rds.elasticache_token`).
#[derive(Debug, Clone)]
pub struct CacheRequest {
    /// The replication group or serverless cache name (lowercased).
    pub cache_name: String,
    /// The IAM-enabled user (its id must equal its name).
    pub user: String,
    /// Explicit region; else parsed from `endpoint`; else the environment's.
    pub region: Option<String>,
    /// The cache's host name, for the region and the serverless default.
    pub endpoint: Option<String>,
    /// A serverless cache; default: `.serverless.` in `endpoint`.
    pub serverless: Option<bool>,
    /// MemoryDB rather than ElastiCache.
    pub memorydb: bool,
    /// Bounds the credential fetch.
    pub timeout: Duration,
}

/// An Aurora DSQL token request (`rds.dsql_token`).
#[derive(Debug, Clone)]
pub struct DsqlRequest {
    /// The cluster endpoint (lowercased, no port).
    pub host: String,
    /// The database role: `admin` makes a `DbConnectAdmin` token.
    pub user: Option<String>,
    /// Explicit region; else parsed from the host; else the environment's.
    pub region: Option<String>,
    /// `DbConnectAdmin` or `DbConnect`; default: whether the user is `admin`.
    pub admin: Option<bool>,
    /// `X-Amz-Expires`, 1 to 604800 (default 900).
    pub expires: u32,
    /// Bounds the credential fetch.
    pub timeout: Duration,
}

/// The longest `X-Amz-Expires` SigV4 allows (7 days).
pub const MAX_EXPIRES: u32 = 604_800;

impl CacheRequest {
    /// Checks the names and lowercases the cache name.
    pub fn new(cache_name: &str, user: &str) -> Result<CacheRequest> {
        let cache_name = cache_name.trim().to_ascii_lowercase();
        if cache_name.is_empty()
            || cache_name.len() > 255
            || !cache_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(Error::config(format!("cache_name must be a cache name (letters, digits, hyphens), got {cache_name:?}")));
        }
        if user.is_empty() || user.len() > 1024 {
            return Err(Error::config("user must be a non-empty string of at most 1024 bytes".to_owned()));
        }
        Ok(CacheRequest {
            cache_name,
            user: user.to_owned(),
            region: None,
            endpoint: None,
            serverless: None,
            memorydb: false,
            timeout: Duration::from_secs(5),
        })
    }

    /// The token kind: ElastiCache or MemoryDB, serverless or not.
    pub fn kind(&self) -> Kind {
        let serverless =
            self.serverless.unwrap_or_else(|| self.endpoint.as_deref().is_some_and(|e| e.to_ascii_lowercase().contains(".serverless.")));
        Kind::Cache { memorydb: self.memorydb, serverless }
    }

    fn region(&self) -> Result<String> {
        if let Some(r) = &self.region {
            return Ok(r.clone());
        }
        if let Some(r) = self.endpoint.as_deref().and_then(cache_region) {
            return Ok(r);
        }
        crate::region::configured(self.timeout)?.ok_or_else(|| {
            Error::new(
                crate::error::ErrorKind::Region,
                format!(
                    "cannot tell the aws region of cache {}: give region, an endpoint host name, or set AWS_REGION before the module is loaded",
                    self.cache_name
                ),
            )
        })
    }
}

impl DsqlRequest {
    /// Checks the host (a port is cut off) and `expires`.
    pub fn new(host: &str, expires: Option<i64>) -> Result<DsqlRequest> {
        let mut host = host.trim().to_ascii_lowercase();
        if let Some((name, port)) = host.rsplit_once(':') {
            if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                host.truncate(name.len());
            }
        }
        if host.is_empty() || host.len() > 253 || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return Err(Error::config(format!("host must be a dsql cluster endpoint host name, got {host:?}")));
        }
        let expires = match expires {
            None => signer::TOKEN_LIFETIME_SECS as u32,
            Some(n) if (1..=i64::from(MAX_EXPIRES)).contains(&n) => n as u32,
            Some(n) => return Err(Error::config(format!("expires_in must be an integer 1-{MAX_EXPIRES}, got {n}"))),
        };
        Ok(DsqlRequest { host, user: None, region: None, admin: None, expires, timeout: Duration::from_secs(5) })
    }

    /// The token kind: `DbConnectAdmin` or `DbConnect`, and its lifetime.
    pub fn kind(&self) -> Kind {
        let admin = self.admin.unwrap_or_else(|| self.user.as_deref() == Some("admin"));
        Kind::Dsql { admin, expires: self.expires }
    }

    fn region(&self) -> Result<String> {
        if let Some(r) = &self.region {
            return Ok(r.clone());
        }
        if let Some(r) = crate::region::from_host(&self.host) {
            return Ok(r);
        }
        crate::region::configured(self.timeout)?.ok_or_else(|| {
            Error::new(
                crate::error::ErrorKind::Region,
                format!("cannot tell the aws region of {}: give region, or set AWS_REGION before the module is loaded", self.host),
            )
        })
    }
}

/// An ElastiCache or MemoryDB token, blocking while credentials are fetched.
pub fn cache_token(req: &CacheRequest) -> Result<Arc<Token>> {
    let region = req.region()?;
    issue(req.kind(), &req.cache_name, &req.user, &region, req.timeout)
}

/// An Aurora DSQL token, blocking while credentials are fetched.
pub fn dsql_token(req: &DsqlRequest) -> Result<Arc<Token>> {
    let region = req.region()?;
    issue(req.kind(), &req.host, "", &region, req.timeout)
}

/// Tokens by what they were signed for.
static CACHE: PerProcess<Mutex<HashMap<CacheKey, Arc<Token>>>> = PerProcess::new();

/// The most tokens kept; past it the cache starts over.
const MAX_CACHED: usize = 256;

#[derive(PartialEq, Eq, Hash)]
struct CacheKey {
    kind: Kind,
    host: String,
    user: String,
    region: String,
    access_key_id: String,
    credentials_expiry: Option<SystemTime>,
}

fn issue(kind: Kind, host: &str, user: &str, region: &str, timeout: Duration) -> Result<Arc<Token>> {
    let identity = credentials::get(None, Some(region), timeout)?;
    sign_cached(kind, host, user, region, &identity)
}

fn sign_cached(kind: Kind, host: &str, user: &str, region: &str, identity: &Identity) -> Result<Arc<Token>> {
    let key = CacheKey {
        kind,
        host: host.to_owned(),
        user: user.to_owned(),
        region: region.to_owned(),
        access_key_id: identity.access_key_id().to_owned(),
        credentials_expiry: identity.expiry(),
    };
    let cache = CACHE.get_or_try_init(|| Ok(Mutex::new(HashMap::new())))?;
    let now = crate::clock::now();
    if let Some(token) = cache.lock().ok().and_then(|c| c.get(&key).filter(|t| now < t.valid_until).cloned()) {
        crate::stats::bump(&crate::stats::TOKEN_CACHE_HITS);
        return Ok(token);
    }
    crate::stats::bump(&crate::stats::TOKENS_SIGNED);
    let token = signer::shared().sign(&SigningParams {
        kind,
        host,
        port: 0,
        user,
        region,
        access_key_id: identity.access_key_id(),
        secret_access_key: identity.secret_access_key(),
        session_token: identity.session_token(),
        time: now,
    });
    let token = Arc::new(Token::signed(token, now, kind.lifetime_secs(), identity.expiry()));
    if let Ok(mut c) = cache.lock() {
        if c.len() >= MAX_CACHED {
            c.retain(|_, t| now < t.valid_until);
            if c.len() >= MAX_CACHED {
                c.clear();
            }
        }
        c.insert(key, token.clone());
    }
    Ok(token)
}

/// The region of an ElastiCache or MemoryDB endpoint host name (see
/// [`cache_endpoint`]).
pub fn cache_region(endpoint: &str) -> Option<String> {
    cache_endpoint(endpoint).and_then(|(_, region)| region)
}

/// Whether `endpoint` is an ElastiCache (`memorydb` false) or MemoryDB host
/// name, and the region it names: ElastiCache names end in
/// `.<region code>.cache.amazonaws.com` with a short code (`use1` for
/// us-east-1, `apse2` for ap-southeast-2), MemoryDB names in
/// `.memorydb.<region>.amazonaws.com`. `None` for any other host.
pub fn cache_endpoint(endpoint: &str) -> Option<(bool, Option<String>)> {
    let host = endpoint.trim().trim_end_matches('.').to_ascii_lowercase();
    let host = host.split(':').next().unwrap_or_default();
    for suffix in [".amazonaws.com", ".amazonaws.com.cn"] {
        let Some(rest) = host.strip_suffix(suffix) else { continue };
        if let Some(rest) = rest.strip_suffix(".cache") {
            let code = rest.rsplit('.').next().unwrap_or_default();
            return Some((false, (code.len() < rest.len()).then(|| expand_region_code(code)).flatten()));
        }
        if let Some((before, region)) = rest.rsplit_once('.') {
            if before.ends_with(".memorydb") {
                return Some((true, crate::region::is_valid(region).then(|| region.to_owned())));
            }
        }
    }
    None
}

/// `use1` -> `us-east-1`, `apse2` -> `ap-southeast-2`, `euc1` ->
/// `eu-central-1`: the short region codes of ElastiCache host names. A
/// full region name passes through.
fn expand_region_code(code: &str) -> Option<String> {
    if crate::region::is_valid(code) {
        return Some(code.to_owned());
    }
    // (code prefix, region prefix); GovCloud's `usgw1` is us-gov-west-1.
    const AREAS: &[(&str, &str)] = &[
        ("usg", "us-gov"),
        ("us", "us"),
        ("eu", "eu"),
        ("ap", "ap"),
        ("sa", "sa"),
        ("ca", "ca"),
        ("me", "me"),
        ("af", "af"),
        ("il", "il"),
        ("mx", "mx"),
        ("cn", "cn"),
    ];
    const DIRECTIONS: &[(&str, &str)] = &[
        ("ne", "northeast"),
        ("nw", "northwest"),
        ("se", "southeast"),
        ("sw", "southwest"),
        ("n", "north"),
        ("s", "south"),
        ("e", "east"),
        ("w", "west"),
        ("c", "central"),
    ];
    let (code_area, area) = AREAS.iter().find(|(c, _)| code.starts_with(*c))?;
    let rest = &code[code_area.len()..];
    let digits_at = rest.find(|c: char| c.is_ascii_digit())?;
    let (direction, number) = rest.split_at(digits_at);
    let (_, word) = DIRECTIONS.iter().find(|(short, _)| *short == direction)?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!("{area}-{word}-{number}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_codes_of_cache_endpoints() {
        let cases = [
            ("my-cache-abc123.serverless.use1.cache.amazonaws.com", Some("us-east-1")),
            ("master.my-group.abc123.usw2.cache.amazonaws.com", Some("us-west-2")),
            ("clustercfg.my-group.abc123.apse2.cache.amazonaws.com:6379", Some("ap-southeast-2")),
            ("my-group.abc123.ng.0001.euc1.cache.amazonaws.com", Some("eu-central-1")),
            ("x.abc.cnn1.cache.amazonaws.com.cn", Some("cn-north-1")),
            ("master.g.abc.usgw1.cache.amazonaws.com", Some("us-gov-west-1")),
            ("clustercfg.my-cluster.abc123.memorydb.eu-west-1.amazonaws.com", Some("eu-west-1")),
            ("redis.internal.example", None),
            ("use1.cache.amazonaws.com", None),
            ("x.zz9.cache.amazonaws.com", None),
        ];
        for (host, want) in cases {
            assert_eq!(cache_region(host).as_deref(), want, "{host}");
        }
    }

    #[test]
    fn requests_check_their_inputs() {
        assert_eq!(CacheRequest::new("My-Cache", "u").unwrap().cache_name, "my-cache");
        assert!(CacheRequest::new("bad name", "u").is_err());
        assert!(CacheRequest::new("c", "").is_err());
        assert_eq!(DsqlRequest::new("ABC.dsql.us-east-1.on.aws:5432", None).unwrap().host, "abc.dsql.us-east-1.on.aws");
        assert_eq!(DsqlRequest::new("h", Some(604_800)).unwrap().expires, 604_800);
        for bad in [0, 604_801, -1] {
            assert_eq!(
                DsqlRequest::new("h", Some(bad)).unwrap_err().message(),
                format!("expires_in must be an integer 1-604800, got {bad}")
            );
        }
        let mut r = DsqlRequest::new("h", None).unwrap();
        assert_eq!(r.kind(), Kind::Dsql { admin: false, expires: 900 });
        r.user = Some("admin".into());
        assert_eq!(r.kind(), Kind::Dsql { admin: true, expires: 900 });
        r.admin = Some(false);
        assert_eq!(r.kind(), Kind::Dsql { admin: false, expires: 900 });
        let mut c = CacheRequest::new("c", "u").unwrap();
        c.endpoint = Some("c-abc.serverless.use1.cache.amazonaws.com".into());
        assert_eq!(c.kind(), Kind::Cache { memorydb: false, serverless: true });
        c.serverless = Some(false);
        assert_eq!(c.kind(), Kind::Cache { memorydb: false, serverless: false });
    }
}
