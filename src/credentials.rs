//! AWS credentials from the standard chain, configured by the frozen
//! environment, cached per process and refreshed near expiry.
//!
//! The chain is aws-config's default one (environment, profile files with
//! `credential_process`/SSO/web identity/assume role, web identity from the
//! environment, ECS/EKS container endpoints, EC2 IMDS), built from
//! [`env_snapshot`](crate::env_snapshot) rather than the live environment.
//! An optional STS AssumeRole step (`pg_iam_auth_assume_role_arn`) sits on
//! top. Credentials are fetched once and reused until less than
//! [`REFRESH_MARGIN`] of their life is left; credentials without an expiry
//! are re-read every [`STATIC_CACHE_TIME`] (files may change).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::credential_feature::AwsCredentialFeature;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_types::os_shim_internal::Fs;
use aws_types::region::Region;
use aws_types::sdk_config::SharedHttpClient;

use crate::conf::AssumeRole;
use crate::env_snapshot::{self, Snapshot};
use crate::error::{chain_text, Error, ErrorKind, Result};
use crate::process::{self, PerProcess};

/// Credentials with less life than this left are refreshed before use, and
/// a token is never cached past `expiry - REFRESH_MARGIN`.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(15);

/// Temporary credentials are refreshed in the background this long before
/// [`REFRESH_MARGIN`] would make callers wait for a fetch.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);

/// How long credentials that carry no expiry are reused.
pub const STATIC_CACHE_TIME: Duration = Duration::from_secs(15 * 60);

/// Credentials ready to sign with, and where they came from.
#[derive(Clone)]
pub struct Identity {
    credentials: Credentials,
    source: String,
    fetched_at: SystemTime,
    /// The region they were fetched with (for a background refresh).
    region: Option<String>,
}

impl Identity {
    /// Access key id (not secret).
    pub fn access_key_id(&self) -> &str {
        self.credentials.access_key_id()
    }

    /// Secret access key.
    pub fn secret_access_key(&self) -> &str {
        self.credentials.secret_access_key()
    }

    /// Session token of temporary credentials.
    pub fn session_token(&self) -> Option<&str> {
        self.credentials.session_token()
    }

    /// When the credentials stop working, if they expire.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.credentials.expiry()
    }

    /// Which provider produced them: `environment`, `profile`,
    /// `credential_process`, `sso`, `web_identity`, `ecs`, `imds`, or
    /// `assume_role(<base>)`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether these can still be used at `now`.
    fn is_fresh(&self, now: SystemTime) -> bool {
        match self.expiry() {
            Some(expiry) => expiry > now + REFRESH_MARGIN,
            None => now < self.fetched_at + STATIC_CACHE_TIME,
        }
    }

    /// Whether temporary credentials are close enough to their end to be
    /// refreshed ahead: within [`REFRESH_AHEAD`] (or the last quarter of
    /// their life, when shorter) of the point where they stop being served,
    /// and past half their life (so short-lived ones are not refetched
    /// over and over).
    fn wants_refresh(&self, now: SystemTime) -> bool {
        let Some(expiry) = self.expiry() else { return false };
        let life = expiry.duration_since(self.fetched_at).unwrap_or_default();
        let ahead = REFRESH_AHEAD.min(life / 4);
        expiry <= now + REFRESH_MARGIN + ahead && now >= self.fetched_at + life / 2
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("access_key_id", &self.access_key_id())
            .field("source", &self.source)
            .field("expiry", &self.expiry())
            .finish_non_exhaustive()
    }
}

/// What the per-process cache is keyed by: the base chain or a role on top.
type ChainKey = Option<AssumeRole>;

/// This process's AWS state: the SDK configuration (holding an HTTP client
/// bound to this process's runtime) and the credential cache.
#[derive(Default)]
struct ProcessCredentials {
    /// SDK configurations by region (usually just one; `None`: left to aws-config).
    sdks: Mutex<HashMap<Option<String>, SdkConfig>>,
    cache: Mutex<HashMap<ChainKey, Arc<Identity>>>,
    /// One lock per source: the fetch in flight holds it.
    flights: Mutex<HashMap<ChainKey, Arc<tokio::sync::Mutex<()>>>>,
    /// When each source's credentials were last forgotten by [`invalidate`].
    invalidated: Mutex<HashMap<ChainKey, std::time::Instant>>,
    /// The base source the last fetch used (`credential_process` when this
    /// module runs the profile's process, else the environment's guess), for
    /// a timeout's message.
    base_source: Mutex<Option<&'static str>>,
}

static STATE: PerProcess<ProcessCredentials> = PerProcess::new();

fn state() -> Result<&'static ProcessCredentials> {
    STATE.get_or_try_init(|| Ok(ProcessCredentials::default()))
}

/// Credentials for `role` (or the base chain), from the cache if still
/// fresh, else fetched within `timeout`, blocking the caller. `region` is
/// the database's region, used for STS when the environment names none.
pub fn get(role: Option<&AssumeRole>, region: Option<&str>, timeout: Duration) -> Result<Arc<Identity>> {
    if let Some(cached) = cached(role) {
        return Ok(cached);
    }
    process::block_on(get_async(role.cloned(), region.map(str::to_owned), timeout))?
}

/// Credentials for `role` from the cache, if they are fresh: never waits.
///
/// Temporary credentials that are fresh but near their end are refreshed in
/// the background on the I/O thread (when this process runs one), so that
/// at steady state no caller waits for a fetch.
pub fn cached(role: Option<&AssumeRole>) -> Option<Arc<Identity>> {
    let state = state().ok()?;
    let now = crate::clock::now();
    let key: ChainKey = role.cloned();
    let identity = state.cached(&key, now)?;
    if identity.wants_refresh(now) {
        let region = identity.region.clone();
        process::spawn_background(async move {
            // Bounded: a hung source (a credential_process that never ends)
            // must not hold the fetch lock; dropping the fetch kills it.
            let _ = tokio::time::timeout(BACKGROUND_REFRESH_TIMEOUT, state.refresh(key, region, true)).await;
        });
    }
    Some(identity)
}

/// Credentials for `role`, fetched if the cache has none that are fresh.
/// One fetch per process and source is in flight at a time: concurrent
/// callers wait for it and share its result.
pub async fn get_async(role: Option<AssumeRole>, region: Option<String>, timeout: Duration) -> Result<Arc<Identity>> {
    let role_is_none = role.is_none();
    let state = state()?;
    let described = describe(role.as_ref());
    let fetch = async move {
        match cached(role.as_ref()) {
            Some(cached) => Ok(cached),
            None => state.refresh(role, region, false).await,
        }
    };
    tokio::time::timeout(timeout, fetch).await.map_err(|_| {
        let base = state.base_source.lock().ok().and_then(|b| *b);
        let what = match (role_is_none, base) {
            (true, Some(base)) => base.to_owned(),
            _ => described,
        };
        Error::new(ErrorKind::Timeout, format!("timed out after {} ms getting aws credentials from {what}", timeout.as_millis()))
    })?
}

/// Forgets the cached credentials of `role` (a server refused a token made
/// with them), at most once per source per [`INVALIDATE_EVERY`], so that a
/// misconfigured grant does not turn every login into a credential fetch.
/// True when they were forgotten.
pub fn invalidate(role: Option<&AssumeRole>) -> bool {
    let Ok(state) = state() else { return false };
    let key: ChainKey = role.cloned();
    let now = std::time::Instant::now();
    let mut last = state.invalidated.lock().unwrap_or_else(|p| p.into_inner());
    if last.get(&key).is_some_and(|t| now.duration_since(*t) < INVALIDATE_EVERY) {
        return false;
    }
    last.insert(key.clone(), now);
    if let Ok(mut cache) = state.cache.lock() {
        cache.remove(&key);
    }
    true
}

/// Seconds until the cached credentials of `role` expire (negative once
/// past), or `None` when none are cached or they carry no expiry.
pub fn seconds_left(role: Option<&AssumeRole>) -> Option<i64> {
    let state = state().ok()?;
    let cache = state.cache.lock().ok()?;
    let expiry = cache.get(&role.cloned())?.expiry()?;
    Some(match expiry.duration_since(crate::clock::now()) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

/// The most a background refresh may take (it starts [`REFRESH_AHEAD`]
/// before expiry, so a timed-out one leaves time for the next).
pub const BACKGROUND_REFRESH_TIMEOUT: Duration = Duration::from_secs(60);

/// See [`invalidate`].
pub const INVALIDATE_EVERY: Duration = Duration::from_secs(30);

fn describe(role: Option<&AssumeRole>) -> String {
    match role {
        Some(r) => format!("sts assume role {}", r.role_arn),
        None => env_snapshot::get().expected_source().to_owned(),
    }
}

impl ProcessCredentials {
    fn cached(&self, key: &ChainKey, now: SystemTime) -> Option<Arc<Identity>> {
        let cache = self.cache.lock().ok()?;
        cache.get(key).filter(|id| id.is_fresh(now)).cloned()
    }

    fn flight(&self, key: &ChainKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        flights.entry(key.clone()).or_default().clone()
    }

    /// Fetches and caches new credentials for `key`, one fetch at a time
    /// per source. A caller that waited for another's fetch takes its
    /// result; a background refresh that finds one in flight leaves it be.
    async fn refresh(&self, key: ChainKey, region: Option<String>, background: bool) -> Result<Arc<Identity>> {
        let flight = self.flight(&key);
        let _one_at_a_time = match flight.try_lock() {
            Ok(guard) => guard,
            Err(_) if background => return Err(Error::new(ErrorKind::Credentials, "a fetch is in flight")),
            Err(_) => flight.lock().await,
        };
        let now = crate::clock::now();
        if let Some(cached) = self.cached(&key, now).filter(|id| !(background && id.wants_refresh(now))) {
            return Ok(cached);
        }
        let identity = Arc::new(self.fetch(key.as_ref(), region.as_deref()).await?);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, identity.clone());
        }
        Ok(identity)
    }

    /// The SDK configuration for `database_region`, built on first use
    /// from the frozen environment.
    ///
    /// Its region (used by STS and SSO) is the environment's or the
    /// profile's, else the database's. Left unset, aws-config asks IMDS for
    /// one before trying any credential source: seconds of waiting off EC2.
    /// Only an empty `database_region` with no region configured anywhere
    /// leaves that to aws-config.
    async fn sdk(&self, database_region: Option<&str>) -> SdkConfig {
        let snapshot = env_snapshot::get();
        let region = match snapshot.region() {
            Some(r) => Some(r.to_owned()),
            None => crate::region::profile(snapshot).await.or_else(|| database_region.map(str::to_owned)),
        };
        if let Some(sdk) = self.sdks.lock().ok().and_then(|m| m.get(&region).cloned()) {
            return sdk;
        }
        let loader = aws_config::defaults(BehaviorVersion::latest())
            .env(snapshot.to_aws_env())
            .fs(Fs::real())
            .http_client(crate::clock::DateWatching(http_client(proxy_config(snapshot))))
            .time_source(crate::clock::Corrected);
        let loader = match &region {
            Some(r) => loader.region(Region::new(r.clone())),
            None => loader,
        };
        let sdk = loader.load().await;
        if let Ok(mut m) = self.sdks.lock() {
            m.insert(region, sdk.clone());
        }
        sdk
    }

    async fn fetch(&self, role: Option<&AssumeRole>, region: Option<&str>) -> Result<Identity> {
        let sdk = &self.sdk(region).await;
        let snapshot = env_snapshot::get();
        // A profile's credential_process is run by us (killed on timeout);
        // every other source is aws-config's chain.
        let (base, base_source) = match crate::credential_process::from_profile(snapshot).await {
            Some(process) => (SharedCredentialsProvider::new(process), "credential_process"),
            None => match sdk.credentials_provider() {
                Some(chain) => (chain, snapshot.expected_source()),
                None => return Err(Error::new(ErrorKind::Credentials, "no aws credentials provider is configured")),
            },
        };
        if let Ok(mut b) = self.base_source.lock() {
            *b = Some(base_source);
        }
        let what = match role {
            Some(_) => describe(role),
            None => base_source.to_owned(),
        };
        let (result, source) = match role {
            None => {
                let Ok(result) = crate::jobs::catching(base.provide_credentials()).await else {
                    return Err(self.panicked(role));
                };
                let source = result.as_ref().ok().and_then(feature_source).unwrap_or(base_source);
                (result, source.to_owned())
            }
            Some(role) => {
                let mut config = sdk.clone().into_builder();
                if let Some(url) = &role.sts_endpoint_url {
                    config.set_endpoint_url(Some(url.clone()));
                    // Programmatic origin: the conf's URL wins over AWS_ENDPOINT_URL_STS.
                    config.insert_origin("endpoint_url", aws_types::origin::Origin::shared_config());
                }
                let provider = aws_config::sts::AssumeRoleProvider::builder(role.role_arn.clone())
                    .session_name(role.session_name.clone())
                    .configure(&config.build())
                    .build_from_provider(base)
                    .await;
                let Ok(result) = crate::jobs::catching(provider.provide_credentials()).await else {
                    return Err(self.panicked(Some(role)));
                };
                (result, format!("assume_role({base_source})"))
            }
        };
        let credentials = result.map_err(|e| {
            let text = tidy(&withhold_process_output(&chain_text(&e)));
            // The default chain tells which of its sources tried and failed.
            let (failed, reason) = match (role, chain_failure(&text)) {
                (None, Some((failed, reason))) => (failed.to_owned(), reason),
                _ => (what.clone(), text),
            };
            let error =
                Error::new(ErrorKind::Credentials, format!("could not get aws credentials from {failed}: {}", lower_first(&reason)));
            let error = self.scrub(error);
            crate::stats::credential_failed(if role.is_none() { &failed } else { &source }, error.message());
            error
        })?;
        crate::stats::credential_fetched(&source);
        let now = crate::clock::now();
        if credentials.access_key_id().is_empty() || credentials.expiry().is_some_and(|t| t < UNIX_EPOCH + Duration::from_secs(946_684_800))
        {
            // aws-sdk-sts fills the required members a truncated or garbled
            // answer lacks with defaults (an empty key, an expiry in 1970).
            return Err(Error::new(
                ErrorKind::Credentials,
                format!("could not get aws credentials from {what}: its answer held no usable credentials (incomplete or not understood)"),
            ));
        }
        if let Some(expiry) = credentials.expiry() {
            if expiry <= now + REFRESH_MARGIN {
                return Err(Error::new(
                    ErrorKind::Credentials,
                    format!("aws credentials from {what} are expired or expire within {} s", REFRESH_MARGIN.as_secs()),
                ));
            }
        }
        Ok(Identity { credentials, source, fetched_at: now, region: region.map(str::to_owned) })
    }
}

impl ProcessCredentials {
    /// The error for a credential provider that panicked (aws-config does on
    /// some malformed answers, e.g. an IMDS role name that is no URI path).
    fn panicked(&self, role: Option<&AssumeRole>) -> Error {
        let source = describe(role);
        let error = Error::new(
            ErrorKind::Credentials,
            format!("could not get aws credentials from {source}: the provider failed on an answer it could not use (malformed data from the endpoint)"),
        );
        crate::stats::credential_failed(&source, error.message());
        error
    }

    /// Removes every secret this process knows from an error's text: the
    /// frozen environment's secret key, session token and container
    /// authorization token, and the secrets of every cached credential. SDK
    /// errors can quote response bodies; this keeps a quoted secret out.
    fn scrub(&self, error: Error) -> Error {
        let snapshot = env_snapshot::get();
        let mut secrets: Vec<String> = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN"]
            .iter()
            .filter_map(|name| snapshot.var(name).map(str::to_owned))
            .collect();
        if let Ok(cache) = self.cache.lock() {
            for identity in cache.values() {
                secrets.push(identity.secret_access_key().to_owned());
                secrets.extend(identity.session_token().map(str::to_owned));
            }
        }
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        error.redacted(&refs)
    }
}

/// aws-config's default HTTPS client (hyper, rustls with aws-lc), built the
/// way aws-smithy-runtime builds it, but with the proxy settings of the
/// frozen environment: left alone it reads the live one, which nginx empties
/// in workers.
fn http_client(proxy: ProxyConfig) -> SharedHttpClient {
    use aws_smithy_http_client::{tls, Builder, ConnectorBuilder};
    Builder::new().build_with_connector_fn(move |settings, components| {
        let mut connector = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(proxy.clone()));
        connector.build_with_resolver(crate::net::Resolver)
    })
}

/// The proxy the frozen environment names. One configuration holds one
/// proxy: `ALL_PROXY`, or `HTTPS_PROXY` equal to `HTTP_PROXY`, proxies all
/// traffic; else `HTTPS_PROXY` proxies HTTPS (STS, SSO) and `HTTP_PROXY`
/// alone plain HTTP (IMDS, container endpoints). `NO_PROXY` applies to each.
/// An unparsable URL means no proxy, as with the live environment.
fn proxy_config(snapshot: &Snapshot) -> ProxyConfig {
    let https = snapshot.first_var(&["HTTPS_PROXY", "https_proxy"]);
    let http = snapshot.first_var(&["HTTP_PROXY", "http_proxy"]);
    let config = match (snapshot.first_var(&["ALL_PROXY", "all_proxy"]), https, http) {
        (Some(all), _, _) => ProxyConfig::all(all),
        (None, Some(s), Some(h)) if s == h => ProxyConfig::all(s),
        (None, Some(s), _) => ProxyConfig::https(s),
        (None, None, Some(h)) => ProxyConfig::http(h),
        (None, None, None) => return ProxyConfig::disabled(),
    };
    match (config, snapshot.first_var(&["NO_PROXY", "no_proxy"])) {
        (Ok(config), Some(rules)) => config.no_proxy(rules),
        (Ok(config), None) => config,
        (Err(_), _) => ProxyConfig::disabled(),
    }
}

/// The source named by the credential features aws-config records.
fn feature_source(credentials: &Credentials) -> Option<&'static str> {
    use AwsCredentialFeature as F;
    let features = credentials.get_property::<Vec<AwsCredentialFeature>>()?;
    let has = |wanted: &[F]| features.iter().any(|f| wanted.contains(f));
    Some(if has(&[F::CredentialsImds]) {
        "imds"
    } else if has(&[F::CredentialsHttp]) {
        "ecs"
    } else if has(&[F::CredentialsProcess, F::CredentialsProfileProcess]) {
        "credential_process"
    } else if has(&[F::CredentialsSso, F::CredentialsProfileSso]) {
        "sso"
    } else if has(&[F::CredentialsProfile, F::CredentialsProfileSourceProfile, F::CredentialsProfileNamedProvider]) {
        "profile"
    } else if has(&[F::CredentialsEnvVarsStsWebIdToken, F::CredentialsStsAssumeRoleWebId, F::CredentialsProfileStsWebIdToken]) {
        "web_identity"
    } else if has(&[F::CredentialsEnvVars]) {
        "environment"
    } else {
        return None;
    })
}

/// The source of the default chain that failed, and why, from aws-config's
/// `no credentials found in chain. Attempted: Environment: ...; Profile: ...;
/// ...` (some 600 characters naming every source): the last source that did
/// try (its reason is more than "not enabled" / "not set"), or a short
/// sentence when none is configured at all.
fn chain_failure(text: &str) -> Option<(&'static str, String)> {
    const MARKER: &str = "no credentials found in chain. Attempted:";
    let attempted = &text[text.find(MARKER)? + MARKER.len()..];
    const NAMES: &[(&str, &str)] = &[
        ("Environment", "environment"),
        ("Profile", "profile"),
        ("WebIdentityToken", "web_identity"),
        ("EcsContainer", "ecs"),
        ("Ec2InstanceMetadata", "imds"),
    ];
    let mut tried = None;
    for entry in attempted.split("; ").map(str::trim).filter(|e| !e.is_empty()) {
        let (name, reason) = entry.split_once(": ").unwrap_or((entry, ""));
        let Some((_, source)) = NAMES.iter().find(|(n, _)| *n == name) else { continue };
        let reason = reason.trim_start_matches("the credential provider was not enabled").trim_start_matches([':', ' ']).trim();
        let idle = reason.is_empty()
            || reason.ends_with("not set")
            || reason.ends_with("not configured")
            || reason == "environment variable not set";
        if !idle {
            tried = Some((*source, reason.to_owned()));
        }
    }
    Some(tried.unwrap_or(("the default chain", "no source is configured (environment, profile, web identity, ecs, imds)".to_owned())))
}

/// SDK error text as a sentence: HTTP statuses without their Rust names,
/// transport layers that add nothing dropped.
fn tidy(text: &str) -> String {
    let mut out = text.replace("dispatch failure: ", "").replace("io error: ", "").replace("client error (Connect): ", "");
    while let Some(at) = out.find("StatusCode(") {
        let rest = &out[at + "StatusCode(".len()..];
        let Some(end) = rest.find(')') else { break };
        let code = rest[..end].to_owned();
        out.replace_range(at..at + "StatusCode(".len() + end + 1, &format!("http status {code}"));
    }
    out
}

/// aws-config quotes a failed `credential_process`'s stderr (and the reason
/// its stdout did not parse) in the error; what a credential process prints
/// may be a secret, so only the exit status is kept.
fn withhold_process_output(text: &str) -> std::borrow::Cow<'_, str> {
    for marker in [". Stderr: ", "could not parse response: "] {
        if let Some(at) = text.find(marker) {
            let kept = &text[..at + marker.len() - 2];
            return std::borrow::Cow::Owned(format!("{kept} (withheld: what a credential process prints may be secret)"));
        }
    }
    std::borrow::Cow::Borrowed(text)
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(expiry: Option<SystemTime>, fetched_at: SystemTime) -> Identity {
        let mut b = Credentials::builder().access_key_id("AKID").secret_access_key("SECRET").provider_name("test");
        if let Some(e) = expiry {
            b = b.expiry(e);
        }
        Identity { credentials: b.build(), source: "environment".into(), fetched_at, region: None }
    }

    #[test]
    fn freshness_keeps_a_margin_before_expiry() {
        let now = SystemTime::now();
        assert!(identity(Some(now + Duration::from_secs(60)), now).is_fresh(now));
        assert!(!identity(Some(now + Duration::from_secs(15)), now).is_fresh(now));
        assert!(!identity(Some(now - Duration::from_secs(1)), now).is_fresh(now));
        assert!(identity(None, now).is_fresh(now + Duration::from_secs(60)));
        assert!(!identity(None, now).is_fresh(now + STATIC_CACHE_TIME));
    }

    #[test]
    fn temporary_credentials_are_refreshed_ahead_of_their_end() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        assert!(!identity(Some(now + hour), now).wants_refresh(now));
        assert!(identity(Some(now + hour), now).wants_refresh(now + hour - Duration::from_secs(200)));
        // Short-lived: the last quarter of their life.
        let short = identity(Some(now + Duration::from_secs(100)), now);
        assert!(!short.wants_refresh(now + Duration::from_secs(50)));
        assert!(short.wants_refresh(now + Duration::from_secs(70)));
        assert!(!identity(None, now).wants_refresh(now + hour));
    }

    #[test]
    fn the_chain_names_the_source_that_failed_in_a_short_message() {
        let text = "the credential provider was not enabled: no credentials found in chain. Attempted:; Environment: the credential provider was not enabled: environment variable not set; Profile: the credential provider was not enabled; WebIdentityToken: the credential provider was not enabled: $AWS_WEB_IDENTITY_TOKEN_FILE was not set; EcsContainer: the credential provider was not enabled: ECS provider not configured; Ec2InstanceMetadata: the credential provider was not enabled: could not communicate with IMDS: dispatch failure: io error: client error (Connect): tcp connect error: Connection refused (os error 111)";
        let (source, reason) = chain_failure(&tidy(text)).unwrap();
        assert_eq!(source, "imds");
        assert_eq!(reason, "could not communicate with IMDS: tcp connect error: Connection refused (os error 111)");
        let none = text.replace("could not communicate with IMDS: dispatch failure: io error: client error (Connect): tcp connect error: Connection refused (os error 111)", "");
        assert_eq!(chain_failure(&none).unwrap().0, "the default chain");
        assert_eq!(chain_failure("connection refused"), None);
        assert_eq!(tidy("service error: StatusCode(500) then StatusCode(404)"), "service error: http status 500 then http status 404");
    }

    #[test]
    fn a_credential_process_output_is_withheld() {
        let text = "Error retrieving credentials: external process exited with code exit status: 3. Stderr: token=hunter2";
        let out = withhold_process_output(text);
        assert_eq!(out, "Error retrieving credentials: external process exited with code exit status: 3. Stderr (withheld: what a credential process prints may be secret)");
        let parse = withhold_process_output(
            "Error retrieving credentials from external process, could not parse response: {\"SecretAccessKey\": \"x\"",
        );
        assert!(!parse.contains("SecretAccessKey"), "{parse}");
        assert_eq!(withhold_process_output("connection refused"), "connection refused");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let d = format!("{:?}", identity(None, SystemTime::now()));
        assert!(d.contains("AKID") && !d.contains("SECRET"));
    }

    #[test]
    fn scrub_removes_cached_secrets_from_errors() {
        let state = ProcessCredentials::default();
        let id = Identity {
            credentials: Credentials::new("AKID", "SECRET-KEY-123", Some("SESSION-TOKEN-456".into()), None, "test"),
            source: "environment".into(),
            fetched_at: SystemTime::now(),
            region: None,
        };
        state.cache.lock().unwrap().insert(None, Arc::new(id));
        let e = state.scrub(Error::new(ErrorKind::Credentials, "body was {\"Secret\":\"SECRET-KEY-123\",\"Token\":\"SESSION-TOKEN-456\"}"));
        assert_eq!(e.message(), "body was {\"Secret\":\"[redacted]\",\"Token\":\"[redacted]\"}");
    }

    #[test]
    fn source_from_features() {
        let mut c = Credentials::for_tests();
        assert_eq!(feature_source(&c), None);
        c.get_property_mut_or_default::<Vec<AwsCredentialFeature>>().push(AwsCredentialFeature::CredentialsProcess);
        c.get_property_mut_or_default::<Vec<AwsCredentialFeature>>().push(AwsCredentialFeature::CredentialsProfile);
        assert_eq!(feature_source(&c), Some("credential_process"));
    }
}
