//! `kind = "azure"` keys of a `[[targets]]` entry, and Entra's shapes, checked at load.

use std::time::Duration;

use ferry_provider_api::Secret;
use ferry_provider_api::settings::{Context, Keys, Problems, Spec, Table, refresh_floor};

use crate::{AzureTarget, Mode};

/// The keys a `kind = "azure"` entry may have besides the common ones.
pub const KEYS: &[&str] = &[
    "mode",
    "tenant_id",
    "client_id",
    "scope",
    "authority_host",
    "client_secret_file",
    "imds_endpoint",
    "max_concurrency",
];

/// How long a token is cached when the entry sets no `ttl`.
const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// The modes, as written.
const MODES: &[&str] = &["federated", "client_secret", "managed_identity"];

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// Parses and checks an Azure target's keys; `client_secret` mode reads its secret here,
/// so a file that cannot be read is a config problem like any other.
pub fn parse(table: &Table, cx: Context<'_>) -> Result<Spec<AzureTarget>, Problems> {
    let mut keys = Keys::new(table, KEYS, "azure");
    let written = keys.string("mode").unwrap_or_else(|| "federated".into());
    if !MODES.contains(&written.as_str()) {
        keys.problem(
            "mode",
            format!("`{written}` is not `federated`, `client_secret` or `managed_identity`"),
        );
    }
    let tenant_id = keys.string("tenant_id").unwrap_or_default();
    if written != "managed_identity" && !is_guid(&tenant_id) {
        keys.problem("tenant_id", "must be the directory (tenant) GUID");
    }
    let client_id = keys.string("client_id").unwrap_or_default();
    if !is_guid(&client_id) {
        keys.problem("client_id", "must be the application (client) GUID");
    }
    let scope = keys.string("scope").unwrap_or_default();
    if !scope.ends_with("/.default") || scope.len() <= "/.default".len() {
        keys.problem(
            "scope",
            "must be a resource's `/.default` scope, e.g. `https://management.azure.com/.default`",
        );
    }
    let client_secret_file = keys.string("client_secret_file");
    if written == "client_secret" && client_secret_file.is_none() {
        keys.problem("client_secret_file", "is required for `client_secret`");
    }
    let authority_host = keys.url("authority_host", "https://login.microsoftonline.com");
    let imds_endpoint = keys.url(
        "imds_endpoint",
        "http://169.254.169.254/metadata/identity/oauth2/token",
    );
    let max_concurrency = keys.concurrency(8);
    let mode = match (written.as_str(), &client_secret_file) {
        ("client_secret", Some(file)) => {
            let path = cx.resolve(file);
            match std::fs::read_to_string(&path) {
                Ok(secret) if !secret.trim().is_empty() => {
                    Mode::ClientSecret(Secret::new(secret.trim()))
                }
                _ => {
                    keys.problem(
                        "client_secret_file",
                        format!("cannot read a secret from `{}`", path.display()),
                    );
                    Mode::Federated
                }
            }
        }
        ("managed_identity", _) => Mode::ManagedIdentity { imds_endpoint },
        _ => Mode::Federated,
    };
    let target = AzureTarget {
        id: cx.id.to_owned(),
        mode,
        tenant_id,
        client_id,
        scope,
        authority_host,
        max_concurrency,
        attempt_timeout: Duration::from_secs(5),
    };
    // Entra sets the token's lifetime; `ttl` bounds how long Ferry caches it.
    let ttl = cx.ttl.unwrap_or(DEFAULT_TTL);
    keys.finish(Spec {
        target,
        ttl,
        // Azure SDKs refresh tokens with about 5 minutes left.
        min_remaining: refresh_floor(ttl, Duration::from_secs(6 * 60), Duration::from_secs(30)),
        expressions: Vec::new(),
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids() {
        assert!(is_guid("72f988bf-86f1-41af-91ab-2d7cd011db47"));
        assert!(!is_guid("not-a-guid"));
    }

    #[test]
    fn a_client_secret_that_cannot_be_read_is_a_problem_with_its_key() {
        let table = r#"mode = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
scope = "https://management.azure.com/.default"
client_secret_file = "no-such-secret""#
            .parse()
            .unwrap();
        let cx = Context {
            id: "t",
            scopes: &[],
            ttl: None,
            base_dir: std::path::Path::new("/nonexistent"),
        };
        let problems = parse(&table, cx).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "client_secret_file");
        assert!(problems[0].1.contains("/nonexistent/no-such-secret"));
    }
}
