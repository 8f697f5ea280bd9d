//! `[signing]`: where Ferry's own signing keys live. `files` (the default) keeps them as
//! PKCS#8 files in `keys_dir`; the other backends keep them in a key manager that signs
//! for Ferry and never hands the private key out.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigDuration, ConfigErrors};

/// Where the keys are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SigningBackend {
    /// `keys_dir` (made by `ferry keys generate|rotate`), or `ephemeral = true`.
    #[default]
    Files,
    /// An HSM (or SoftHSM) through its PKCS#11 module.
    Pkcs11,
    /// AWS KMS asymmetric keys (`Sign`, `GetPublicKey`).
    AwsKms,
    /// Google Cloud KMS key versions (`asymmetricSign`, `getPublicKey`).
    GcpKms,
    /// Azure Key Vault or Managed HSM keys (`sign`, get key).
    AzureKeyVault,
}

impl SigningBackend {
    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Files => "files",
            Self::Pkcs11 => "pkcs11",
            Self::AwsKms => "aws_kms",
            Self::GcpKms => "gcp_kms",
            Self::AzureKeyVault => "azure_key_vault",
        }
    }
}

/// `[signing]`.
#[derive(Debug, Clone, Deserialize)]
pub struct SigningConfig {
    /// Where the keys are.
    #[serde(default)]
    pub backend: SigningBackend,
    /// Algorithm of Ferry's keys. `files`: what `ferry keys generate|rotate` make
    /// (default RS256). A key manager: the key's own type decides (RS256 for RSA, ES256
    /// for P-256); when set, every listed key must match it.
    pub algorithm: Option<String>,
    /// `files`: the directory of keys made by `ferry keys generate|rotate`.
    pub keys_dir: Option<PathBuf>,
    /// `files`: a fresh in-memory key (development only; tokens die with the process).
    #[serde(default)]
    pub ephemeral: bool,
    /// A key manager: the key that signs (a PKCS#11 label or `id:<hex>`, an AWS key id,
    /// ARN or alias, a Cloud KMS key version's resource name, a Key Vault key URL with
    /// its version).
    pub active_key: Option<String>,
    /// A key manager: keys published in the JWKS beside the active one (a previous key
    /// whose tokens are still valid, or the next one, published before it signs).
    #[serde(default)]
    pub published_keys: Vec<String>,
    /// A key manager: how long one signature may take before the mint answers 503.
    #[serde(default = "default_sign_timeout")]
    pub sign_timeout: ConfigDuration,
    pub pkcs11: Option<Pkcs11Config>,
    pub aws_kms: Option<AwsKmsConfig>,
    pub gcp_kms: Option<GcpKmsConfig>,
    pub azure_key_vault: Option<AzureKeyVaultConfig>,
}

fn default_sign_timeout() -> ConfigDuration {
    ConfigDuration::secs(2)
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self {
            backend: SigningBackend::Files,
            algorithm: None,
            keys_dir: None,
            ephemeral: false,
            active_key: None,
            published_keys: Vec::new(),
            sign_timeout: default_sign_timeout(),
            pkcs11: None,
            aws_kms: None,
            gcp_kms: None,
            azure_key_vault: None,
        }
    }
}

impl SigningConfig {
    /// The algorithm `files` keys are made with.
    pub fn file_algorithm(&self) -> &str {
        self.algorithm.as_deref().unwrap_or("RS256")
    }

    /// Every listed key of a key manager, the active one first.
    pub fn managed_keys(&self) -> impl Iterator<Item = &str> {
        self.active_key
            .as_deref()
            .into_iter()
            .chain(self.published_keys.iter().map(String::as_str))
    }
}

/// `[signing.pkcs11]`.
#[derive(Debug, Clone, Deserialize)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`, …).
    pub module: PathBuf,
    /// The token's label (`CKA_LABEL` of the token, as `pkcs11-tool -L` lists it).
    pub token_label: String,
    /// A file holding the user PIN (its first line), readable by Ferry alone.
    pub pin_file: PathBuf,
}

/// `[signing.aws_kms]`. Credentials come from the AWS default chain (environment, web
/// identity, ECS/EKS, instance profile).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct AwsKmsConfig {
    /// The keys' region (else the default chain's).
    pub region: Option<String>,
    /// Another endpoint (a VPC endpoint, a FIPS endpoint, a test server).
    pub endpoint: Option<String>,
}

/// `[signing.gcp_kms]`. Ferry's own Google identity (a key file named by
/// `GOOGLE_APPLICATION_CREDENTIALS`, gcloud ADC, or the metadata server) signs.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct GcpKmsConfig {
    /// `https://cloudkms.googleapis.com` unless overridden (a regional or private
    /// endpoint, a test server).
    pub endpoint: Option<String>,
    /// A file holding an OAuth access token to send instead of asking gcp_auth (a token
    /// a sidecar refreshes; tests).
    pub token_file: Option<PathBuf>,
}

/// `[signing.azure_key_vault]`. Ferry's managed identity (IMDS) signs, or a token file.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct AzureKeyVaultConfig {
    /// The instance metadata token endpoint, for a managed identity
    /// (`http://169.254.169.254/metadata/identity/oauth2/token` unless overridden).
    pub imds_endpoint: Option<String>,
    /// A user-assigned managed identity's client id (else the system-assigned one).
    pub client_id: Option<String>,
    /// A file holding an access token for `https://vault.azure.net` to send instead of
    /// asking the managed identity (a token a sidecar refreshes; tests).
    pub token_file: Option<PathBuf>,
}

/// `[signing]`'s own checks; whether the keys open is the snapshot's to find.
pub(super) fn validate(s: &SigningConfig, file: &str, errs: &mut ConfigErrors) {
    let managed = s.backend != SigningBackend::Files;
    if let Some(alg) = &s.algorithm {
        let allowed: Vec<&str> = if managed {
            vec!["RS256", "ES256"]
        } else {
            crate::algorithms::signing().collect()
        };
        if !allowed.contains(&alg.as_str()) {
            errs.push(
                file,
                "signing.algorithm",
                format!(
                    "`{alg}` is not supported for signing{} (one of {})",
                    if managed { " with a key manager" } else { "" },
                    allowed.join(", ")
                ),
            );
        }
    }
    let sections = [
        ("pkcs11", s.pkcs11.is_some(), SigningBackend::Pkcs11),
        ("aws_kms", s.aws_kms.is_some(), SigningBackend::AwsKms),
        ("gcp_kms", s.gcp_kms.is_some(), SigningBackend::GcpKms),
        (
            "azure_key_vault",
            s.azure_key_vault.is_some(),
            SigningBackend::AzureKeyVault,
        ),
    ];
    for (name, present, backend) in sections {
        if present && s.backend != backend {
            errs.push(
                file,
                format!("signing.{name}"),
                format!(
                    "is set but `backend` is `{}`; set `backend = \"{name}\"` or remove the table",
                    s.backend.name()
                ),
            );
        }
    }
    if !managed {
        match (&s.keys_dir, s.ephemeral) {
            (None, false) => errs.push(
                file,
                "signing",
                "set `keys_dir` (see `ferry keys generate`) or `ephemeral = true` for development",
            ),
            (Some(_), true) => errs.push(
                file,
                "signing",
                "`keys_dir` and `ephemeral = true` exclude each other",
            ),
            _ => {}
        }
        for (key, set) in [
            ("active_key", s.active_key.is_some()),
            ("published_keys", !s.published_keys.is_empty()),
        ] {
            if set {
                errs.push(
                    file,
                    format!("signing.{key}"),
                    "names a key in a key manager; the `files` backend reads `keys_dir`",
                );
            }
        }
        return;
    }
    let backend = s.backend.name();
    for (key, set) in [
        ("keys_dir", s.keys_dir.is_some()),
        ("ephemeral", s.ephemeral),
    ] {
        if set {
            errs.push(
                file,
                format!("signing.{key}"),
                format!("is for the `files` backend; `{backend}` keeps the keys"),
            );
        }
    }
    match s.active_key.as_deref() {
        None | Some("") => errs.push(
            file,
            "signing.active_key",
            format!("is required with backend `{backend}`: the key that signs"),
        ),
        Some(_) => {}
    }
    let mut seen = std::collections::HashSet::new();
    for key in s.managed_keys() {
        if !seen.insert(key) {
            errs.push(
                file,
                "signing.published_keys",
                format!("lists `{key}` twice (the active key is published already)"),
            );
        }
    }
    if s.published_keys.len() > 8 {
        errs.push(
            file,
            "signing.published_keys",
            "lists more than 8 keys; publish the active key, the previous and the next",
        );
    }
    if s.sign_timeout.0.is_zero() || s.sign_timeout.0 > std::time::Duration::from_secs(30) {
        errs.push(
            file,
            "signing.sign_timeout",
            "must be more than 0s and at most 30s",
        );
    }
    let missing = s.backend == SigningBackend::Pkcs11 && s.pkcs11.is_none();
    if missing {
        errs.push(
            file,
            "signing.pkcs11",
            "is required with backend `pkcs11`: module, token_label, pin_file",
        );
    }
    if let Some(p) = &s.pkcs11
        && p.token_label.is_empty()
    {
        errs.push(file, "signing.pkcs11.token_label", "must not be empty");
    }
    for (entry, url) in [
        (
            "signing.aws_kms.endpoint",
            s.aws_kms.as_ref().and_then(|a| a.endpoint.as_deref()),
        ),
        (
            "signing.gcp_kms.endpoint",
            s.gcp_kms.as_ref().and_then(|g| g.endpoint.as_deref()),
        ),
        (
            "signing.azure_key_vault.imds_endpoint",
            s.azure_key_vault
                .as_ref()
                .and_then(|a| a.imds_endpoint.as_deref()),
        ),
    ] {
        let Some(url) = url else { continue };
        // The instance metadata service is plain http on a link-local address.
        let problem = match url::Url::parse(url) {
            Err(e) => Some(format!("is not a URL ({e})")),
            Ok(_) if entry.starts_with("signing.azure_key_vault.") => None,
            Ok(u) if crate::verify::fetch::require_secure(&u).is_err() => {
                Some("must be https (plain http only to a loopback address)".to_owned())
            }
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            errs.push(file, entry, problem);
        }
    }
    if s.backend == SigningBackend::AzureKeyVault {
        for key in s.managed_keys() {
            if let Err(problem) = azure_key_url(key) {
                errs.push(file, "signing.active_key", format!("`{key}`: {problem}"));
            }
        }
    }
    if s.backend == SigningBackend::GcpKms {
        for key in s.managed_keys() {
            if !gcp_key_version(key) {
                errs.push(
                    file,
                    "signing.active_key",
                    format!(
                        "`{key}` is not a key version's name (projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N)"
                    ),
                );
            }
        }
    }
}

/// Whether `name` is a Cloud KMS crypto key version's resource name.
fn gcp_key_version(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() == 10
        && [
            "projects",
            "locations",
            "keyRings",
            "cryptoKeys",
            "cryptoKeyVersions",
        ]
        .iter()
        .enumerate()
        .all(|(i, word)| parts.get(2 * i) == Some(word))
        && parts.iter().skip(1).step_by(2).all(|p| !p.is_empty())
}

/// A Key Vault key URL names the version: `https://<vault>/keys/<name>/<version>`.
fn azure_key_url(key: &str) -> Result<(), String> {
    let url = url::Url::parse(key).map_err(|e| format!("is not a URL: {e}"))?;
    if crate::verify::fetch::require_secure(&url).is_err() {
        return Err("must be https (plain http only to a loopback address)".into());
    }
    let segments: Vec<&str> = url
        .path_segments()
        .map(Iterator::collect)
        .unwrap_or_default();
    match segments.as_slice() {
        ["keys", name, version] if !name.is_empty() && !version.is_empty() => Ok(()),
        _ => Err("must name the key and its version: https://<vault>.vault.azure.net/keys/<name>/<version>".into()),
    }
}
