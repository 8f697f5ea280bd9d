//! `kind = "azure"` targets: the keys, and Entra's shapes, checked at load.

use std::path::PathBuf;

use super::{TargetConfig, target_keys};

/// How Ferry authenticates to Entra for an Azure target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzureMode {
    /// A Ferry-signed JWT as the client assertion (keyless).
    Federated,
    /// Ferry's own client secret, read from `client_secret_file`.
    ClientSecret,
    /// Ferry's own managed identity, through the instance metadata endpoint.
    ManagedIdentity,
}

/// An Azure target's settings, parsed from the target table.
#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// `federated` (default), `client_secret` or `managed_identity`.
    pub mode: AzureMode,
    /// Directory (tenant) id.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// Resource scope, `…/.default`.
    pub scope: String,
    pub authority_host: String,
    /// The client secret file (`client_secret`).
    pub client_secret_file: Option<PathBuf>,
    /// IMDS endpoint (`managed_identity`).
    pub imds_endpoint: String,
    /// Concurrent token requests.
    pub max_concurrency: usize,
}

const KEYS: &[&str] = &[
    "mode",
    "tenant_id",
    "client_id",
    "scope",
    "authority_host",
    "client_secret_file",
    "imds_endpoint",
    "max_concurrency",
];

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// Parses and checks an Azure target; problems are `(entry suffix, problem)`.
pub fn parse(target: &TargetConfig) -> Result<AzureSettings, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let t = &target.extra;
    target_keys::unknown_keys(t, KEYS, "azure", &mut problems);
    let string =
        |k: &str, problems: &mut Vec<(String, String)>| target_keys::string(t, k, problems);
    let mode = string("mode", &mut problems).unwrap_or_else(|| "federated".into());
    if !matches!(
        mode.as_str(),
        "federated" | "client_secret" | "managed_identity"
    ) {
        problems.push((
            "mode".into(),
            format!("`{mode}` is not `federated`, `client_secret` or `managed_identity`"),
        ));
    }
    let tenant_id = string("tenant_id", &mut problems).unwrap_or_default();
    if mode != "managed_identity" && !is_guid(&tenant_id) {
        problems.push((
            "tenant_id".into(),
            "must be the directory (tenant) GUID".into(),
        ));
    }
    let client_id = string("client_id", &mut problems).unwrap_or_default();
    if !is_guid(&client_id) {
        problems.push((
            "client_id".into(),
            "must be the application (client) GUID".into(),
        ));
    }
    let scope = string("scope", &mut problems).unwrap_or_default();
    if !scope.ends_with("/.default") || scope.len() <= "/.default".len() {
        problems.push((
            "scope".into(),
            "must be a resource's `/.default` scope, e.g. `https://management.azure.com/.default`"
                .into(),
        ));
    }
    let client_secret_file = string("client_secret_file", &mut problems).map(PathBuf::from);
    if mode == "client_secret" && client_secret_file.is_none() {
        problems.push((
            "client_secret_file".into(),
            "is required for `client_secret`".into(),
        ));
    }
    let authority_host = string("authority_host", &mut problems)
        .unwrap_or_else(|| "https://login.microsoftonline.com".into());
    let imds_endpoint = string("imds_endpoint", &mut problems)
        .unwrap_or_else(|| "http://169.254.169.254/metadata/identity/oauth2/token".into());
    for (k, v) in [
        ("authority_host", &authority_host),
        ("imds_endpoint", &imds_endpoint),
    ] {
        if !target_keys::is_http_url(v) {
            problems.push((k.to_owned(), format!("`{v}` is not an http(s) URL")));
        }
    }
    let max_concurrency = target_keys::concurrency(t, 8, &mut problems);
    let settings = AzureSettings {
        mode: match mode.as_str() {
            "client_secret" => AzureMode::ClientSecret,
            "managed_identity" => AzureMode::ManagedIdentity,
            _ => AzureMode::Federated,
        },
        tenant_id,
        client_id,
        scope,
        authority_host,
        client_secret_file,
        imds_endpoint,
        max_concurrency,
    };
    target_keys::finish(settings, problems)
}

#[cfg(test)]
mod tests {
    #[test]
    fn guids() {
        assert!(super::is_guid("72f988bf-86f1-41af-91ab-2d7cd011db47"));
        assert!(!super::is_guid("not-a-guid"));
    }
}
