//! Issuing tokens: region, credentials and signature for an [`Endpoint`],
//! with a per-process cache.
//!
//! A token is reused per (host, port, user, region, credentials, role) while
//! it has comfortably long to live: until
//! `min(signed + 900 s, credentials expiry) - 15 s`. It is never signed with,
//! or served after, credentials that have expired.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use once_cell::sync::Lazy;

use crate::conf::{AssumeRole, Endpoint};
use crate::credentials::{self, Identity, REFRESH_MARGIN};
use crate::error::Result;
use crate::process::PerProcess;
use crate::region::Target;
use crate::signer::{self, SigningParams, TOKEN_LIFETIME_SECS};

/// A signed token and when it stops working.
#[derive(Clone)]
pub struct Token {
    /// The token, to be sent as the database password.
    pub token: String,
    /// When RDS stops accepting it: the earlier of signing time + 900 s and
    /// the credentials' expiry.
    pub expires_at: SystemTime,
    /// Until when the cache hands it out (`expires_at` minus a margin).
    pub valid_until: SystemTime,
    /// When it was signed (a token signed before a call began came from the cache).
    pub signed_at: SystemTime,
}

impl Token {
    /// A token signed at `now`, valid `lifetime_secs` (`X-Amz-Expires`) but
    /// not past `credentials_expiry`, handed out by a cache until
    /// [`REFRESH_MARGIN`] before its end.
    pub fn signed(token: String, now: SystemTime, lifetime_secs: u64, credentials_expiry: Option<SystemTime>) -> Token {
        let mut expires_at = now + Duration::from_secs(lifetime_secs);
        if let Some(expiry) = credentials_expiry {
            expires_at = expires_at.min(expiry);
        }
        let valid_until = expires_at.checked_sub(REFRESH_MARGIN).unwrap_or(now);
        Token { token, expires_at, valid_until, signed_at: now }
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("token", &"** redacted **").field("expires_at", &self.expires_at).finish()
    }
}

/// `t` in whole seconds since the Unix epoch (0 before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// What a cached token was signed for; compared in full on every hit. It
/// owns the endpoint the token was issued for (moved in, not copied).
struct Signed {
    target: Target<'static>,
    identity: Arc<Identity>,
}

/// What a token is wanted for, borrowed: look-ups allocate nothing.
#[derive(Hash)]
struct Wanted<'a> {
    service: crate::conf::Service,
    host: &'a str,
    port: u16,
    user: &'a str,
    region: &'a str,
    access_key_id: &'a str,
    credentials_expiry: Option<SystemTime>,
    role: Option<&'a AssumeRole>,
}

impl Wanted<'_> {
    fn fingerprint(&self) -> u64 {
        use std::hash::BuildHasher;
        HASH_STATE.hash_one(self)
    }

    fn matches(&self, s: &Signed) -> bool {
        self.service == s.target.endpoint.service
            && self.host == s.target.endpoint.host
            && self.port == s.target.endpoint.port
            && self.user == s.target.endpoint.user
            && self.region == s.target.region()
            && self.access_key_id == s.identity.access_key_id()
            && self.credentials_expiry == s.identity.expiry()
            && self.role == s.target.endpoint.assume_role.as_ref()
    }
}

/// The most tokens one process keeps; past it the cache starts over.
const MAX_CACHED_TOKENS: usize = 1024;

static HASH_STATE: Lazy<std::collections::hash_map::RandomState> = Lazy::new(Default::default);
static CACHE: PerProcess<Mutex<TokenCache>> = PerProcess::new();

/// Tokens by the fingerprint of what they were signed for.
type TokenCache = HashMap<u64, (Signed, Arc<Token>), BuildHasherDefault<Prehashed>>;

/// The hasher of [`TokenCache`]: its keys are already hashes (SipHash with
/// a random key), so hashing them again would be wasted work.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A token for `endpoint`, from the cache when one has long enough to live,
/// blocking the caller when credentials must be fetched. An owned endpoint
/// is kept by the cache as is; a borrowed one is copied when a new token is
/// cached.
pub fn issue(endpoint: Cow<'_, Endpoint>) -> Result<Arc<Token>> {
    let target = Target::resolve(endpoint)?;
    let identity = credentials::get(target.endpoint.assume_role.as_ref(), Some(target.region()), target.endpoint.timeout)?;
    issue_with(target, identity)
}

/// What [`issue_or_fetch`] gives.
pub enum Issued {
    /// The token.
    Token(Arc<Token>),
    /// Credentials must be fetched first: job number (see [`crate::jobs`]) of
    /// the fetch; its output is `Result<()>`. Ask again when it is done.
    Fetching(u64),
}

/// A token for `endpoint` if it can be had without waiting for the network;
/// else the credential fetch to wait for, as a job.
pub fn issue_or_fetch(endpoint: Cow<'_, Endpoint>) -> Result<Issued> {
    let target = Target::resolve(endpoint)?;
    match credentials::cached(target.endpoint.assume_role.as_ref()) {
        Some(identity) => Ok(Issued::Token(issue_with(target, identity)?)),
        None => {
            let e = &target.endpoint;
            let (role, region, timeout) = (e.assume_role.clone(), Some(target.region().to_owned()), e.timeout);
            let job = crate::jobs::submit(move |_| async move { credentials::get_async(role, region, timeout).await.map(drop) })?;
            Ok(Issued::Fetching(job))
        }
    }
}

/// [`issue`] for a job: credentials are fetched without blocking.
pub async fn issue_async(endpoint: &Endpoint) -> Result<Arc<Token>> {
    let target = Target::resolve_async(Cow::Borrowed(endpoint)).await?;
    let identity = credentials::get_async(endpoint.assume_role.clone(), Some(target.region().to_owned()), endpoint.timeout).await?;
    issue_with(target, identity)
}

/// Signs (or takes from the cache) the token for `target` with `identity`.
fn issue_with(target: Target<'_>, identity: Arc<Identity>) -> Result<Arc<Token>> {
    let endpoint = &target.endpoint;
    let region = target.region();
    let wanted = Wanted {
        service: endpoint.service,
        host: &endpoint.host,
        port: endpoint.port,
        user: &endpoint.user,
        region,
        access_key_id: identity.access_key_id(),
        credentials_expiry: identity.expiry(),
        role: endpoint.assume_role.as_ref(),
    };
    let fingerprint = wanted.fingerprint();
    let cache = CACHE.get_or_try_init(|| Ok(Mutex::new(TokenCache::default())))?;
    let now = crate::clock::now();
    let hit = cache
        .lock()
        .ok()
        .and_then(|c| c.get(&fingerprint).filter(|(signed, t)| now < t.valid_until && wanted.matches(signed)).map(|(_, t)| t.clone()));
    if let Some(token) = hit {
        crate::stats::bump(&crate::stats::TOKEN_CACHE_HITS);
        return Ok(token);
    }
    crate::stats::bump(&crate::stats::TOKENS_SIGNED);
    let token = signer::shared().sign(&SigningParams {
        kind: match wanted.service {
            crate::conf::Service::Rds => signer::Kind::Rds,
            // As the AWS JDBC wrapper decides: the admin role connects as admin.
            crate::conf::Service::Dsql => signer::Kind::Dsql { admin: wanted.user == "admin", expires: TOKEN_LIFETIME_SECS as u32 },
        },
        host: wanted.host,
        port: wanted.port,
        user: wanted.user,
        region: wanted.region,
        access_key_id: identity.access_key_id(),
        secret_access_key: identity.secret_access_key(),
        session_token: identity.session_token(),
        time: now,
    });
    let token = Arc::new(Token::signed(token, now, TOKEN_LIFETIME_SECS, identity.expiry()));
    if let Ok(mut c) = cache.lock() {
        if c.len() >= MAX_CACHED_TOKENS {
            c.retain(|_, (_, t)| now < t.valid_until);
            if c.len() >= MAX_CACHED_TOKENS {
                c.clear();
            }
        }
        let signed = Signed { target: target.into_owned(), identity };
        c.insert(fingerprint, (signed, token.clone()));
    }
    Ok(token)
}

/// Drops every cached token for `endpoint`'s host, port and user (a server
/// refused one), here and, through [`epoch`], in api.lua's memo.
pub fn forget(endpoint: &Endpoint) {
    if let Ok(cache) = CACHE.get_or_try_init(|| Ok(Mutex::new(TokenCache::default()))) {
        if let Ok(mut c) = cache.lock() {
            c.retain(|_, (signed, _)| {
                let e = &signed.target.endpoint;
                !(e.host == endpoint.host && e.port == endpoint.port && e.user == endpoint.user)
            });
        }
    }
    EPOCH.fetch_add(1, std::sync::atomic::Ordering::Release);
}

/// Bumped whenever cached tokens are dropped: api.lua's memo serves a token
/// only while the epoch it was issued in is current. Read by LuaJIT through
/// the FFI as the C symbol `kong_rds_iam_token_epoch` (an `int32_t`).
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static kong_rds_iam_token_epoch: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
use kong_rds_iam_token_epoch as EPOCH;

/// The current token epoch (see [`kong_rds_iam_token_epoch`]).
pub fn epoch() -> i32 {
    EPOCH.load(std::sync::atomic::Ordering::Acquire)
}
