//! The AWS region a token is signed for, in one place: the conf's
//! `pg_iam_auth_region`, else the RDS endpoint's host name, else the frozen
//! environment (`AWS_REGION`, `AWS_DEFAULT_REGION`) or the profile's
//! `region`; and how the region is read from a host name.
//!
//! RDS instance, Aurora cluster (`cluster-`, `cluster-ro-`, `cluster-custom-`)
//! and RDS Proxy (`proxy-`) endpoints all end in
//! `.<region>.rds.<partition dns suffix>`; the region is the label before
//! `rds`. Aurora DSQL endpoints are `<id>.dsql.<region>.on.aws`. Unlike Kong, any region name of the AWS shape is accepted
//! (af-, il-, mx-, eusc- ... included), in every partition.

use std::time::Duration;

use aws_types::os_shim_internal::Fs;

use crate::conf::Endpoint;
use crate::env_snapshot::{self, Snapshot};
use crate::error::{Error, ErrorKind, Result};
use crate::process;

/// An endpoint with the region it is signed for: what a token is made for,
/// resolved once (the host was lowercased when the endpoint was parsed), so
/// that nothing downstream looks for a region again or meets none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// Host, port, user, role, timeout.
    pub endpoint: std::borrow::Cow<'a, Endpoint>,
    /// `pg_iam_auth_region`, else the host's, else the environment's.
    derived: Option<String>,
}

impl<'a> Target<'a> {
    /// Resolves the region of `endpoint`, blocking to read the profile files
    /// when it comes to them.
    pub fn resolve(endpoint: std::borrow::Cow<'a, Endpoint>) -> Result<Target<'a>> {
        let derived = derived(&endpoint)?;
        Ok(Target { endpoint, derived })
    }

    /// [`Target::resolve`] for a job.
    pub async fn resolve_async(endpoint: std::borrow::Cow<'a, Endpoint>) -> Result<Target<'a>> {
        let derived = derived_async(&endpoint).await?;
        Ok(Target { endpoint, derived })
    }

    /// The region to sign for.
    pub fn region(&self) -> &str {
        self.endpoint.region.as_deref().or(self.derived.as_deref()).unwrap_or_default()
    }

    /// The same target, owning its endpoint.
    pub fn into_owned(self) -> Target<'static> {
        Target { endpoint: std::borrow::Cow::Owned(self.endpoint.into_owned()), derived: self.derived }
    }
}

/// The region `endpoint` is signed for, when its conf does not name one
/// (`None` when it does: then it is `endpoint.region`); an error when none
/// is found anywhere. Blocks to read the profile files when it comes to them.
pub fn derived(endpoint: &Endpoint) -> Result<Option<String>> {
    match from_conf_or_host(endpoint) {
        Some(found) => Ok(found),
        None => Ok(Some(configured(endpoint.timeout)?.ok_or_else(|| not_found(endpoint))?)),
    }
}

/// [`derived`] for a job.
pub async fn derived_async(endpoint: &Endpoint) -> Result<Option<String>> {
    match from_conf_or_host(endpoint) {
        Some(found) => Ok(found),
        None => Ok(Some(configured_async(endpoint.timeout).await?.ok_or_else(|| not_found(endpoint))?)),
    }
}

/// The region to fetch credentials with (STS for web identity and assume
/// role needs one): as [`derived`], but `None` (left to aws-config) when
/// none is found and no role is assumed.
pub fn for_credentials(endpoint: &Endpoint) -> Result<Option<String>> {
    match derived(endpoint) {
        Ok(found) => Ok(found.or_else(|| endpoint.region.clone())),
        Err(_) if endpoint.assume_role.is_none() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The region the frozen environment or the profile files name, if any,
/// blocking the caller.
pub fn configured(timeout: Duration) -> Result<Option<String>> {
    let snapshot = env_snapshot::get();
    if let Some(region) = snapshot.region() {
        return Ok(Some(region.to_owned()));
    }
    Ok(process::block_on_timeout(timeout, profile(snapshot))?.flatten())
}

/// [`configured`] for a job.
pub async fn configured_async(timeout: Duration) -> Result<Option<String>> {
    let snapshot = env_snapshot::get();
    if let Some(region) = snapshot.region() {
        return Ok(Some(region.to_owned()));
    }
    Ok(tokio::time::timeout(timeout, profile(snapshot)).await.ok().flatten())
}

/// The profile's `region`, read as aws-config reads the files.
pub async fn profile(snapshot: &Snapshot) -> Option<String> {
    #[allow(deprecated)]
    let files = aws_config::profile::profile_file::ProfileFiles::default();
    let profiles = aws_config::profile::load(&Fs::real(), &snapshot.to_aws_env(), &files, None).await.ok()?;
    profiles.get("region").map(str::to_owned)
}

/// `Some(None)`: the conf names the region; `Some(Some(r))`: the host does;
/// `None`: neither.
fn from_conf_or_host(endpoint: &Endpoint) -> Option<Option<String>> {
    if endpoint.region.is_some() {
        return Some(None);
    }
    from_host(&endpoint.host).map(Some)
}

fn not_found(endpoint: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Region,
        format!(
            "cannot tell the aws region of {}: set pg_iam_auth_region (pg_ro_iam_auth_region for read-only), \
             use the rds endpoint host name, or set AWS_REGION before the module is loaded",
            endpoint.host
        ),
    )
}

/// DNS suffixes that follow `.<region>.rds` in each partition.
const PARTITION_SUFFIXES: &[&str] = &[
    "amazonaws.com",    // aws, aws-us-gov
    "amazonaws.com.cn", // aws-cn
    "c2s.ic.gov",       // aws-iso
    "sc2s.sgov.gov",    // aws-iso-b
    "cloud.adc-e.uk",   // aws-iso-e
    "csp.hci.ic.gov",   // aws-iso-f
    "amazonaws.eu",     // aws-eusc
];

/// The region named in an RDS endpoint host, or `None` for any other host
/// (a CNAME, an IP address, localhost).
pub fn from_host(host: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    // Aurora DSQL: <cluster id>.dsql.<region>.on.aws
    if let Some(rest) = host.strip_suffix(".on.aws") {
        let (before, region) = rest.rsplit_once('.')?;
        return (before.ends_with(".dsql") && is_valid(region)).then(|| region.to_owned());
    }
    PARTITION_SUFFIXES.iter().find_map(|suffix| {
        let rest = host.strip_suffix(suffix)?.strip_suffix(".rds.")?;
        let region = rest.rsplit('.').next()?;
        // The region label must not be the whole host: an endpoint has a name before it.
        (region.len() < rest.len() && is_valid(region)).then(|| region.to_owned())
    })
}

/// Whether `region` has the shape of an AWS region name: lowercase
/// `<area>-<words>-<number>` such as `us-east-1`, `us-gov-west-1`,
/// `cn-north-1`, `us-isob-east-1`, `eusc-de-east-1`.
pub fn is_valid(region: &str) -> bool {
    let Some((words, number)) = region.rsplit_once('-') else { return false };
    let mut words = words.split('-');
    region.len() <= 32
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
        && words.clone().count() >= 2
        && words.all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_form_and_partition() {
        let table = [
            ("mydb.abcdefghijkl.us-east-1.rds.amazonaws.com", Some("us-east-1")),
            ("MyDB.ABCDEFGHIJKL.US-WEST-2.RDS.AMAZONAWS.COM", Some("us-west-2")),
            ("mydb.abcdefghijkl.us-east-1.rds.amazonaws.com.", Some("us-east-1")),
            ("aurora.cluster-abcdefghijkl.eu-west-1.rds.amazonaws.com", Some("eu-west-1")),
            ("aurora.cluster-ro-abcdefghijkl.eu-central-2.rds.amazonaws.com", Some("eu-central-2")),
            ("aurora.cluster-custom-abcdefghijkl.ap-southeast-4.rds.amazonaws.com", Some("ap-southeast-4")),
            ("myproxy.proxy-abcdefghijkl.ca-central-1.rds.amazonaws.com", Some("ca-central-1")),
            ("myproxy-ro.endpoint.proxy-abcdefghijkl.sa-east-1.rds.amazonaws.com", Some("sa-east-1")),
            ("mydb.abcdefghijkl.af-south-1.rds.amazonaws.com", Some("af-south-1")),
            ("mydb.abcdefghijkl.il-central-1.rds.amazonaws.com", Some("il-central-1")),
            ("mydb.abcdefghijkl.mx-central-1.rds.amazonaws.com", Some("mx-central-1")),
            ("mydb.abcdefghijkl.me-central-1.rds.amazonaws.com", Some("me-central-1")),
            ("mydb.abcdefghijkl.cn-north-1.rds.amazonaws.com.cn", Some("cn-north-1")),
            ("mydb.abcdefghijkl.cn-northwest-1.rds.amazonaws.com.cn", Some("cn-northwest-1")),
            ("mydb.abcdefghijkl.us-gov-west-1.rds.amazonaws.com", Some("us-gov-west-1")),
            ("mydb.abcdefghijkl.us-iso-east-1.rds.c2s.ic.gov", Some("us-iso-east-1")),
            ("mydb.abcdefghijkl.us-isob-east-1.rds.sc2s.sgov.gov", Some("us-isob-east-1")),
            ("mydb.abcdefghijkl.eu-isoe-west-1.rds.cloud.adc-e.uk", Some("eu-isoe-west-1")),
            ("mydb.abcdefghijkl.us-isof-south-1.rds.csp.hci.ic.gov", Some("us-isof-south-1")),
            ("mydb.abcdefghijkl.eusc-de-east-1.rds.amazonaws.eu", Some("eusc-de-east-1")),
            ("test_database.test_cluster.us-east-1.rds.amazonaws.com", Some("us-east-1")),
            // Not RDS endpoints.
            ("db.internal.example.com", None),
            ("localhost", None),
            ("127.0.0.1", None),
            ("us-east-1.rds.amazonaws.com", None),
            ("mydb.abc.rds.amazonaws.com", None),
            ("mydb.abc.us-east-1.ec2.amazonaws.com", None),
            ("mydb.abc.US_EAST_1.rds.amazonaws.com", None),
            ("mydb.abc.us-east-1.rds.amazonaws.com.evil.example", None),
        ];
        for (host, want) in table {
            assert_eq!(from_host(host).as_deref(), want, "{host}");
        }
    }

    #[test]
    fn region_shape() {
        for ok in ["us-east-1", "us-gov-west-1", "cn-north-1", "eusc-de-east-1", "ap-southeast-10"] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["", "us", "us-east", "US-east-1", "us-east-1a", "us--1", "us-east-", "-east-1", "us east 1"] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
