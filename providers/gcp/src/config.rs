//! `kind = "gcp"` keys of a `[[targets]]` entry, and the limits Google enforces, checked
//! at load.

use std::time::Duration;

use ferry_provider_api::settings::{Context, Keys, Problems, Spec, Table, refresh_floor};

use crate::{GcpTarget, Mode};

/// The keys a `kind = "gcp"` entry may have besides the common ones.
pub const KEYS: &[&str] = &[
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

/// Parses and checks a GCP target's keys.
pub fn parse(table: &Table, cx: Context<'_>) -> Result<Spec<GcpTarget>, Problems> {
    let mut keys = Keys::new(table, KEYS, "gcp");
    if cx.ttl.is_some() {
        keys.problem("ttl", "GCP targets set `lifetime`, not `ttl`");
    }
    let mode = match keys.string("mode").as_deref() {
        None | Some("workload_identity") => Some(Mode::WorkloadIdentity),
        Some("service_account") => Some(Mode::ServiceAccount),
        Some(other) => {
            keys.problem(
                "mode",
                format!("`{other}` is not `workload_identity` or `service_account`"),
            );
            // Neither mode's own checks apply to a mode that is not one.
            None
        }
    };
    let audience = keys
        .string("workload_identity_provider")
        .unwrap_or_default();
    if mode == Some(Mode::WorkloadIdentity) && !is_provider_resource(&audience) {
        keys.problem("workload_identity_provider", "must be //iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>");
    }
    let service_account = keys.string("service_account");
    if mode == Some(Mode::ServiceAccount) && service_account.is_none() {
        keys.problem("service_account", "is required for `service_account` mode (the account Ferry's own identity impersonates)");
    }
    if let Some(sa) = &service_account
        && !is_service_account(sa)
    {
        keys.problem(
            "service_account",
            format!("`{sa}` is not a service account email (name@project.iam.gserviceaccount.com)"),
        );
    }
    for scope in cx.scopes {
        if !scope.starts_with("https://www.googleapis.com/auth/") {
            keys.problem(
                "scopes",
                format!(
                    "`{scope}` is not a Google OAuth scope (https://www.googleapis.com/auth/…)"
                ),
            );
        }
    }
    let lifetime = keys.duration("lifetime", Duration::from_secs(3600));
    if lifetime < Duration::from_secs(60) || lifetime > Duration::from_secs(43_200) {
        keys.problem("lifetime", "must be between 1m and 12h (over 1h needs the org policy constraints/iam.allowServiceAccountCredentialLifetimeExtension)");
    }
    let target = GcpTarget {
        id: cx.id.to_owned(),
        mode: mode.unwrap_or(Mode::WorkloadIdentity),
        jwt_audience: keys
            .string("jwt_audience")
            .unwrap_or_else(|| format!("https:{audience}")),
        audience,
        service_account,
        scopes: cx.scopes.to_vec(),
        lifetime,
        sts_endpoint: keys.url("sts_endpoint", "https://sts.googleapis.com"),
        iam_credentials_endpoint: keys.url(
            "iam_credentials_endpoint",
            "https://iamcredentials.googleapis.com",
        ),
        max_concurrency: keys.concurrency(8),
        attempt_timeout: Duration::from_secs(5),
    };
    keys.finish(Spec {
        target,
        ttl: lifetime,
        // google-auth refreshes tokens with about 4 minutes left.
        min_remaining: refresh_floor(lifetime, Duration::from_secs(5 * 60), Duration::from_secs(30)),
        expressions: Vec::new(),
        warnings: vec![(
            String::new(),
            "warning: GCP rejects a `sub` over 127 bytes; canonical subjects may be up to 256 bytes — keep the mappings that reach this target short".into(),
        )],
    })
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

    #[test]
    fn scopes_must_be_google_scopes() {
        let table =
            "mode = \"service_account\"\nservice_account = \"deployer@p.iam.gserviceaccount.com\""
                .parse()
                .unwrap();
        let scopes = ["openid".to_owned()];
        let cx = Context {
            id: "t",
            scopes: &scopes,
            ttl: Some(Duration::from_secs(60)),
            base_dir: std::path::Path::new("."),
        };
        let problems = parse(&table, cx).unwrap_err();
        let named: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(named, ["ttl", "scopes"]);
    }
}
