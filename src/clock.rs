//! The clock tokens are signed with, corrected for a skewed host clock.
//!
//! SigV4 allows +-5 minutes, and RDS reports a skewed signature only as a
//! PAM failure. The offset of this host's clock is learnt from the `Date`
//! header of the AWS answers the module already receives (IMDS, ECS, STS,
//! SSO: every call aws-config makes goes through [`DateWatching`]). When it
//! is over [`CORRECTED_OVER`], [`now`] (tokens, the caches) and the time
//! source given to aws-config (its own signed calls: STS AssumeRole, web
//! identity) are the corrected time. Static keys from the environment or
//! files bring no AWS answer, so no offset is known then.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

/// Offsets up to this are left alone: an HTTP `Date` has whole seconds, and
/// a small skew is within what SigV4 accepts.
pub const CORRECTED_OVER: Duration = Duration::from_secs(60);

/// Seconds the AWS clock is ahead of this host's (negative: behind).
static OFFSET_SECS: AtomicI64 = AtomicI64::new(0);
/// Where the offset was learnt ([`Source`] as a number); 0: nowhere yet.
static SOURCE: AtomicU8 = AtomicU8::new(0);

/// The time to sign with: this host's clock, corrected when it is off by
/// more than [`CORRECTED_OVER`].
pub fn now() -> SystemTime {
    let local = SystemTime::now();
    let offset = OFFSET_SECS.load(Ordering::Relaxed);
    if offset.unsigned_abs() <= CORRECTED_OVER.as_secs() {
        local
    } else if offset > 0 {
        local + Duration::from_secs(offset as u64)
    } else {
        local.checked_sub(Duration::from_secs(offset.unsigned_abs())).unwrap_or(local)
    }
}

/// `t`, a time on the corrected clock (a token's expiry), as Unix seconds
/// of this host's clock, for callers that compare it with their own clock
/// (`ngx.time()`, `os.time()`).
pub fn local_unix_seconds(t: SystemTime) -> i64 {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let offset = OFFSET_SECS.load(Ordering::Relaxed);
    if offset.unsigned_abs() <= CORRECTED_OVER.as_secs() {
        secs
    } else {
        secs - offset
    }
}

/// The measured offset in seconds (AWS minus local) and where it came
/// from; `None` before any AWS answer was seen.
pub fn offset() -> Option<(i64, &'static str)> {
    let source = Source::from_u8(SOURCE.load(Ordering::Relaxed))?;
    Some((OFFSET_SECS.load(Ordering::Relaxed), source.name()))
}

/// Which AWS service a `Date` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Imds = 1,
    Ecs = 2,
    Sts = 3,
    Sso = 4,
    Other = 5,
}

impl Source {
    fn from_u8(n: u8) -> Option<Source> {
        Some(match n {
            1 => Source::Imds,
            2 => Source::Ecs,
            3 => Source::Sts,
            4 => Source::Sso,
            5 => Source::Other,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Source::Imds => "imds",
            Source::Ecs => "ecs",
            Source::Sts => "sts",
            Source::Sso => "sso",
            Source::Other => "aws",
        }
    }

    /// Guessed from the request: IMDS answers on its link-local address (or
    /// the configured endpoint, whose path is `/latest/`), the container
    /// endpoint on its own, STS and SSO by host name.
    fn of(request: &HttpRequest) -> Source {
        let uri = request.uri();
        let host = uri.split("://").nth(1).unwrap_or(uri).split(['/', ':']).next().unwrap_or_default();
        if host.starts_with("sts.") || host.contains(".sts.") || host == "sts.amazonaws.com" {
            Source::Sts
        } else if host.starts_with("portal.sso.") || host.starts_with("oidc.") {
            Source::Sso
        } else if host == "169.254.169.254" || host == "[fd00:ec2::254]" || uri.contains("/latest/") {
            Source::Imds
        } else if host == "169.254.170.2" || host == "169.254.170.23" || request.headers().get("authorization").is_some() {
            Source::Ecs
        } else {
            Source::Other
        }
    }
}

/// Records the offset an answer's `Date` shows.
fn observe(date: &str, source: Source) {
    let Ok(server) = aws_smithy_types::DateTime::from_str(date, aws_smithy_types::date_time::Format::HttpDate) else { return };
    let local = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    OFFSET_SECS.store(server.secs() - local, Ordering::Relaxed);
    SOURCE.store(source as u8, Ordering::Relaxed);
}

/// An HTTP client that reads the `Date` of every answer (see the module docs).
#[derive(Debug, Clone)]
pub struct DateWatching(pub SharedHttpClient);

impl HttpClient for DateWatching {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(WatchingConnector(self.0.http_connector(settings, components)))
    }
}

#[derive(Debug)]
struct WatchingConnector(SharedHttpConnector);

impl HttpConnector for WatchingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let source = Source::of(&request);
        let call = self.0.call(request);
        HttpConnectorFuture::new(async move {
            let response = call.await?;
            if let Some(date) = response.headers().get("date") {
                observe(date, source);
            }
            Ok(response)
        })
    }
}

/// [`now`] as aws-config's time source, for the calls it signs itself.
#[derive(Clone, Copy)]
pub struct Corrected;

impl fmt::Debug for Corrected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Corrected")
    }
}

impl aws_smithy_async::time::TimeSource for Corrected {
    fn now(&self) -> SystemTime {
        now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_offset_corrects_the_clock_and_a_small_one_does_not() {
        let format = |t: SystemTime| aws_smithy_types::DateTime::from(t).fmt(aws_smithy_types::date_time::Format::HttpDate).unwrap();
        observe(&format(SystemTime::now() - Duration::from_secs(600)), Source::Imds);
        let (seconds, source) = offset().unwrap();
        assert!((-602..=-598).contains(&seconds), "{seconds}");
        assert_eq!(source, "imds");
        let behind = SystemTime::now().duration_since(now()).unwrap();
        assert!(behind >= Duration::from_secs(598), "{behind:?}");
        observe(&format(SystemTime::now() + Duration::from_secs(30)), Source::Sts);
        let skew = now().duration_since(SystemTime::now()).unwrap_or_default();
        assert!(skew < Duration::from_secs(1), "30 s is left alone: {skew:?}");
        observe("not a date", Source::Ecs);
        assert_eq!(offset().unwrap().1, "sts");
        OFFSET_SECS.store(0, Ordering::Relaxed);
    }
}
