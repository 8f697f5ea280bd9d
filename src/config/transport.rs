//! `[server.tls]` and `[dpop]`: how callers authenticate on the wire and prove the keys
//! their tokens are bound to.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ClientAuth, ConfigDuration};

/// `[server.tls]`: the listener's certificate, and the CA its clients' certificates
/// must chain to.
#[derive(Debug, Clone, Deserialize)]
pub struct TlsConfig {
    /// PEM: the certificate, then its chain.
    pub cert_file: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM bundle: client certificates that chain to one of these are verified.
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client must present a certificate (default `optional` with a CA).
    pub client_auth: Option<ClientAuth>,
}

/// `[dpop]`: DPoP proofs on the token endpoint (RFC 9449).
#[derive(Debug, Clone, Deserialize)]
pub struct DpopConfig {
    /// Every DPoP proof must carry a nonce Ferry issued (§8): a proof without one, or
    /// with an expired one, is answered `use_dpop_nonce` with a fresh `DPoP-Nonce`.
    #[serde(default)]
    pub require_nonce: bool,
    /// How long an issued nonce is accepted.
    #[serde(default = "default_nonce_lifetime")]
    pub nonce_lifetime: ConfigDuration,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self {
            require_nonce: false,
            nonce_lifetime: default_nonce_lifetime(),
        }
    }
}

fn default_nonce_lifetime() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}
