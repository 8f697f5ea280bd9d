//! `kind = "gcp"` targets: the keys, and the limits Google enforces, checked at load.

use std::time::Duration;

use super::{TargetConfig, target_keys};

/// A GCP target's settings, parsed from the target table.
#[derive(Debug, Clone)]
pub struct GcpSettings {
    /// `workload_identity` (keyless) or `service_account` (Ferry's own identity).
    pub mode: ferry_provider_gcp::Mode,
    /// The workload identity pool provider (`//iam.googleapis.com/projects/…/providers/…`).
    pub audience: String,
    /// `aud` of the Ferry-signed JWT.
    pub jwt_audience: String,
    /// Service account to impersonate.
    pub service_account: Option<String>,
    /// Lifetime of impersonated tokens.
    pub lifetime: Duration,
    /// STS base URL.
    pub sts_endpoint: String,
    /// IAM Credentials base URL.
    pub iam_credentials_endpoint: String,
    /// Concurrent upstream exchanges.
    pub max_concurrency: usize,
}

const KEYS: &[&str] = &[
    "mode",
    "workload_identity_provider",
    "jwt_audience",
    "service_account",
    "lifetime",
    "sts_endpoint",
    "iam_credentials_endpoint",
    "max_concurrency",
];

fn is_provider_resource(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("//iam.googleapis.com/projects/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(parts.as_slice(), [project, "locations", "global", "workloadIdentityPools", pool, "providers", provider]
        if !project.is_empty() && project.bytes().all(|b| b.is_ascii_digit()) && !pool.is_empty() && !provider.is_empty())
}

fn is_service_account(s: &str) -> bool {
    let Some((name, domain)) = s.split_once('@') else {
        return false;
    };
    (6..=30).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && domain.ends_with(".gserviceaccount.com")
}

/// Parses and checks a GCP target; problems are `(entry suffix, problem)`.
pub fn parse(target: &TargetConfig) -> Result<GcpSettings, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let t = &target.extra;
    target_keys::unknown_keys(t, KEYS, "gcp", &mut problems);
    let string =
        |k: &str, problems: &mut Vec<(String, String)>| target_keys::string(t, k, problems);
    let mode = string("mode", &mut problems).unwrap_or_else(|| "workload_identity".into());
    if mode != "workload_identity" && mode != "service_account" {
        problems.push((
            "mode".into(),
            format!("`{mode}` is not `workload_identity` or `service_account`"),
        ));
    }
    let audience = string("workload_identity_provider", &mut problems).unwrap_or_default();
    if mode == "workload_identity" && !is_provider_resource(&audience) {
        problems.push(("workload_identity_provider".into(), "must be //iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>".into()));
    }
    let service_account = string("service_account", &mut problems);
    if mode == "service_account" && service_account.is_none() {
        problems.push(("service_account".into(), "is required for `service_account` mode (the account Ferry's own identity impersonates)".into()));
    }
    if let Some(sa) = &service_account
        && !is_service_account(sa)
    {
        problems.push((
            "service_account".into(),
            format!("`{sa}` is not a service account email (name@project.iam.gserviceaccount.com)"),
        ));
    }
    for scope in &target.scopes {
        if !scope.starts_with("https://www.googleapis.com/auth/") {
            problems.push((
                "scopes".into(),
                format!(
                    "`{scope}` is not a Google OAuth scope (https://www.googleapis.com/auth/…)"
                ),
            ));
        }
    }
    let lifetime = match t.get("lifetime") {
        None => Duration::from_secs(3600),
        Some(toml::Value::String(s)) => humantime::parse_duration(s).unwrap_or_else(|_| {
            problems.push(("lifetime".into(), format!("`{s}` is not a duration")));
            Duration::from_secs(3600)
        }),
        Some(_) => {
            problems.push(("lifetime".into(), "must be a duration string".into()));
            Duration::from_secs(3600)
        }
    };
    if lifetime < Duration::from_secs(60) || lifetime > Duration::from_secs(43_200) {
        problems.push(("lifetime".into(), "must be between 1m and 12h (over 1h needs the org policy constraints/iam.allowServiceAccountCredentialLifetimeExtension)".into()));
    }
    let url = |k: &str, default: &str, problems: &mut Vec<(String, String)>| {
        let v = string(k, problems).unwrap_or_else(|| default.to_owned());
        if !target_keys::is_http_url(&v) {
            problems.push((k.to_owned(), format!("`{v}` is not an http(s) URL")));
        }
        v
    };
    let sts_endpoint = url("sts_endpoint", "https://sts.googleapis.com", &mut problems);
    let iam_credentials_endpoint = url(
        "iam_credentials_endpoint",
        "https://iamcredentials.googleapis.com",
        &mut problems,
    );
    let max_concurrency = target_keys::concurrency(t, 8, &mut problems);
    let settings = GcpSettings {
        mode: if mode == "service_account" {
            ferry_provider_gcp::Mode::ServiceAccount
        } else {
            ferry_provider_gcp::Mode::WorkloadIdentity
        },
        jwt_audience: string("jwt_audience", &mut problems)
            .unwrap_or_else(|| format!("https:{audience}")),
        audience,
        service_account,
        lifetime,
        sts_endpoint,
        iam_credentials_endpoint,
        max_concurrency,
    };
    target_keys::finish(settings, problems)
}

/// The lifetime a GCP target issues.
pub fn ttl(target: &TargetConfig) -> Duration {
    parse(target)
        .map(|s| s.lifetime)
        .unwrap_or(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(is_provider_resource(
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/ferry"
        ));
        assert!(!is_provider_resource(
            "//iam.googleapis.com/projects/my-project/locations/global/workloadIdentityPools/ci/providers/ferry"
        ));
        assert!(is_service_account(
            "deployer@acme-prod.iam.gserviceaccount.com"
        ));
        assert!(!is_service_account("Deployer@gmail.com"));
    }
}
