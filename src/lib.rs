//! Ferry: a multi-cloud identity federation broker.
//!
//! A workload presents an OIDC token; Ferry verifies it ([`verify`]), maps its claims
//! into an [`mapping::Identity`] ([`mapping`]), authorizes the request ([`policy`]) and
//! answers an RFC 8693 token exchange ([`exchange`]) with a credential from a
//! [`ferry_provider_api::CredentialProvider`].

pub mod agent;
pub mod algorithms;
pub mod anomaly;
pub mod audit;
pub mod client;
pub mod clock;
pub mod config;
pub mod exchange;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod http;
pub mod issuer;
pub mod key_digest;
pub mod mapping;
pub mod memo;
pub mod metrics;
pub mod policy;
pub mod record;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod verify;

pub use ferry_provider_api as provider_api;

/// SHA-256 of `value`.
pub fn sha256(value: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(value).into()
}

/// SHA-256 as lowercase hex: how the audit trail refers to a token or credential.
pub fn sha256_hex(value: &[u8]) -> String {
    const_hex::encode(sha256(value))
}

/// First 16 hex characters of SHA-256: how logs and errors refer to a token or secret.
pub fn fingerprint(value: &[u8]) -> String {
    let mut out = sha256_hex(value);
    out.truncate(16);
    out
}

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Safe to call twice.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
