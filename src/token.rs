//! Issuing tokens: region, credentials and signature for an [`Endpoint`],
//! with a per-process cache.
//!
//! A token is reused per (host, port, user, region, credentials, role) while
//! it has comfortably long to live: until
//! `min(signed + 900 s, credentials expiry) - 15 s`. It is never signed with,
//! or served after, credentials that have expired.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use once_cell::sync::Lazy;

use crate::conf::{AssumeRole, Endpoint};
use crate::credentials::{self, REFRESH_MARGIN};
use crate::error::{Error, ErrorKind, Result};
use crate::process::PerProcess;
use crate::region;
use crate::signer::{Signer, SigningParams, TOKEN_LIFETIME_SECS};

/// A signed token and when it stops working.
#[derive(Clone)]
pub struct Token {
    /// The token, to be sent as the database password.
    pub token: String,
    /// When RDS stops accepting it: the earlier of signing time + 900 s and
    /// the credentials' expiry.
    pub expires_at: SystemTime,
    /// Until when the cache hands it out (`expires_at` minus a margin).
    valid_until: SystemTime,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("token", &"** redacted **").field("expires_at", &self.expires_at).finish()
    }
}

#[derive(PartialEq, Eq, Hash)]
struct CacheKey {
    host: String,
    port: u16,
    user: String,
    region: String,
    access_key_id: String,
    credentials_expiry: Option<SystemTime>,
    role: Option<AssumeRole>,
}

/// The most tokens one process keeps; past it the cache starts over.
const MAX_CACHED_TOKENS: usize = 1024;

static SIGNER: Lazy<Signer> = Lazy::new(Signer::new);
static CACHE: PerProcess<Mutex<HashMap<CacheKey, Token>>> = PerProcess::new();

/// A token for `endpoint`, from the cache when one has long enough to live.
pub fn issue(endpoint: &Endpoint) -> Result<Token> {
    issue_with(endpoint, true)
}

/// A token for `endpoint`; `use_cache = false` always signs a fresh one
/// (benchmarks use it to measure signing).
pub fn issue_with(endpoint: &Endpoint, use_cache: bool) -> Result<Token> {
    let region = resolve_region(endpoint)?;
    let identity = credentials::get(endpoint.assume_role.as_ref(), &region, endpoint.timeout)?;
    let key = CacheKey {
        host: endpoint.host.clone(),
        port: endpoint.port,
        user: endpoint.user.clone(),
        region,
        access_key_id: identity.access_key_id().to_owned(),
        credentials_expiry: identity.expiry(),
        role: endpoint.assume_role.clone(),
    };
    let cache = CACHE.get_or_try_init(|| Ok(Mutex::new(HashMap::new())))?;
    let now = SystemTime::now();
    if use_cache {
        if let Some(hit) = cache.lock().ok().and_then(|c| c.get(&key).filter(|t| now < t.valid_until).cloned()) {
            return Ok(hit);
        }
    }
    let token = SIGNER.sign(&SigningParams {
        host: &key.host,
        port: key.port,
        user: &key.user,
        region: &key.region,
        access_key_id: identity.access_key_id(),
        secret_access_key: identity.secret_access_key(),
        session_token: identity.session_token(),
        time: now,
    });
    let mut expires_at = now + Duration::from_secs(TOKEN_LIFETIME_SECS);
    if let Some(expiry) = identity.expiry() {
        expires_at = expires_at.min(expiry);
    }
    let token = Token { token, expires_at, valid_until: expires_at - REFRESH_MARGIN };
    if use_cache {
        if let Ok(mut c) = cache.lock() {
            if c.len() >= MAX_CACHED_TOKENS {
                c.retain(|_, t| now < t.valid_until);
                if c.len() >= MAX_CACHED_TOKENS {
                    c.clear();
                }
            }
            c.insert(key, token.clone());
        }
    }
    Ok(token)
}

/// The region: explicit key, else the host name, else the frozen
/// environment or profile.
pub fn resolve_region(endpoint: &Endpoint) -> Result<String> {
    if let Some(r) = &endpoint.region {
        return Ok(r.clone());
    }
    if let Some(r) = region::from_host(&endpoint.host) {
        return Ok(r);
    }
    match credentials::default_region(endpoint.timeout)? {
        Some(r) => Ok(r),
        None => Err(Error::new(
            ErrorKind::Region,
            format!(
                "cannot tell the aws region of {}: set pg_iam_auth_region (pg_ro_iam_auth_region for read-only), \
                 use the rds endpoint host name, or set AWS_REGION before the module is loaded",
                endpoint.host
            ),
        )),
    }
}
