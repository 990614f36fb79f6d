//! The AWS configuration environment, frozen when the module is first loaded.
//!
//! nginx wipes the environment of its workers (only variables declared with
//! `env` survive) and Kong documents that changing AWS variables after boot
//! has no effect. So the module copies every `AWS_*` variable, `HOME` (where
//! the default `~/.aws` files live) and the proxy variables the AWS HTTP
//! client follows (and the module's own `KONG_RDS_IAM_*` settings), once, as plain data, when it is first loaded (in nginx:
//! the master, in `init_by_lua`). Every later
//! credential or region lookup reads this copy, never the live environment.
//! Taking the copy starts no thread and no runtime, so it is fork-safe.

use std::collections::HashMap;

use once_cell::sync::OnceCell;

/// A frozen copy of the AWS-related environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    vars: HashMap<String, String>,
}

static FROZEN: OnceCell<Snapshot> = OnceCell::new();

/// The module's own settings (`KONG_RDS_IAM_*`) and `TMPDIR` (where the
/// wake socket goes when nginx's prefix is not writable) are frozen too.
const OWN_PREFIX: &str = "KONG_RDS_IAM_";

/// Proxy variables, in both spellings.
const PROXY_VARS: &[&str] = &["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"];

/// Takes the snapshot if it was not taken yet; later calls change nothing.
pub fn freeze() -> &'static Snapshot {
    FROZEN.get_or_init(Snapshot::from_process)
}

/// The frozen snapshot (taken now if the module did not take it at load).
pub fn get() -> &'static Snapshot {
    freeze()
}

impl Snapshot {
    /// Copies `AWS_*`, `HOME` and the proxy variables from the process environment.
    pub fn from_process() -> Snapshot {
        Self::from_vars(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))))
    }

    /// Keeps the `AWS_*`, `KONG_RDS_IAM_*`, `HOME`, `TMPDIR` and proxy entries of `vars`.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Snapshot {
        let kept = |k: &str| k.starts_with("AWS_") || k.starts_with(OWN_PREFIX) || k == "HOME" || k == "TMPDIR" || PROXY_VARS.contains(&k);
        Snapshot { vars: vars.into_iter().filter(|(k, _)| kept(k)).collect() }
    }

    /// Whether the non-blocking path may be used: `KONG_RDS_IAM_YIELD=off`
    /// (or `false`, `no`, `0`) makes every call block, everywhere.
    pub fn yield_enabled(&self) -> bool {
        !self.var("KONG_RDS_IAM_YIELD").is_some_and(|v| ["off", "false", "no", "0"].iter().any(|no| v.eq_ignore_ascii_case(no)))
    }

    /// The first set variable of `names` (e.g. `HTTPS_PROXY`, `https_proxy`).
    pub fn first_var(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|n| self.var(n))
    }

    /// Every frozen variable (the environment a `credential_process` runs with).
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A frozen variable, if it was set (and non-empty).
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The snapshot as the environment aws-config reads.
    pub fn to_aws_env(&self) -> aws_types::os_shim_internal::Env {
        aws_types::os_shim_internal::Env::from(self.vars.clone())
    }

    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub fn region(&self) -> Option<&str> {
        self.var("AWS_REGION").or_else(|| self.var("AWS_DEFAULT_REGION"))
    }

    /// The credential source the default chain will reach first, judged from
    /// the variables alone (used to name the source in error messages).
    pub fn expected_source(&self) -> &'static str {
        if self.var("AWS_ACCESS_KEY_ID").is_some() {
            "environment"
        } else if self.var("AWS_PROFILE").is_some()
            || self.var("AWS_SHARED_CREDENTIALS_FILE").is_some()
            || self.var("AWS_CONFIG_FILE").is_some()
        {
            "profile"
        } else if self.var("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() {
            "web_identity"
        } else if self.var("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some() || self.var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some() {
            "ecs"
        } else if self.var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            "default chain"
        } else {
            "imds"
        }
    }
}

impl std::fmt::Debug for Snapshot {
    /// Names only: values may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        f.debug_struct("Snapshot").field("vars", &names).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(pairs: &[(&str, &str)]) -> Snapshot {
        Snapshot::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn keeps_only_aws_home_and_proxies() {
        let s = snap(&[("AWS_REGION", "eu-west-1"), ("HOME", "/root"), ("PATH", "/bin"), ("AWSX", "no"), ("https_proxy", "http://p:3128")]);
        assert_eq!(s.first_var(&["HTTPS_PROXY", "https_proxy"]), Some("http://p:3128"));
        assert_eq!(s.var("AWS_REGION"), Some("eu-west-1"));
        assert_eq!(s.var("HOME"), Some("/root"));
        assert_eq!(s.var("PATH"), None);
        assert_eq!(s.var("AWSX"), None);
        let own = snap(&[("KONG_RDS_IAM_SOCKET_DIR", "/run/k"), ("TMPDIR", "/var/tmp"), ("KONG_PG_HOST", "x")]);
        assert_eq!(own.var("KONG_RDS_IAM_SOCKET_DIR"), Some("/run/k"));
        assert_eq!(own.var("TMPDIR"), Some("/var/tmp"));
        assert_eq!(own.var("KONG_PG_HOST"), None);
    }

    #[test]
    fn yield_is_on_unless_switched_off() {
        assert!(snap(&[]).yield_enabled());
        assert!(snap(&[("KONG_RDS_IAM_YIELD", "on")]).yield_enabled());
        assert!(!snap(&[("KONG_RDS_IAM_YIELD", "off")]).yield_enabled());
        assert!(!snap(&[("KONG_RDS_IAM_YIELD", "False")]).yield_enabled());
    }

    #[test]
    fn region_prefers_aws_region() {
        assert_eq!(snap(&[("AWS_DEFAULT_REGION", "a-b-1"), ("AWS_REGION", "c-d-2")]).region(), Some("c-d-2"));
        assert_eq!(snap(&[("AWS_DEFAULT_REGION", "a-b-1")]).region(), Some("a-b-1"));
        assert_eq!(snap(&[("AWS_REGION", "")]).region(), None);
    }

    #[test]
    fn expected_source_follows_chain_order() {
        assert_eq!(snap(&[("AWS_ACCESS_KEY_ID", "A"), ("AWS_PROFILE", "p")]).expected_source(), "environment");
        assert_eq!(snap(&[("AWS_PROFILE", "p")]).expected_source(), "profile");
        assert_eq!(snap(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")]).expected_source(), "web_identity");
        assert_eq!(snap(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1/")]).expected_source(), "ecs");
        assert_eq!(snap(&[]).expected_source(), "imds");
        assert_eq!(snap(&[("AWS_EC2_METADATA_DISABLED", "true")]).expected_source(), "default chain");
    }

    #[test]
    fn debug_shows_names_not_values() {
        let s = snap(&[("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")]);
        let d = format!("{s:?}");
        assert!(d.contains("AWS_SECRET_ACCESS_KEY") && !d.contains("wJalrXUtnFEMI"));
    }
}
