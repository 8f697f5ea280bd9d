//! `[signing] backend = "gcp_kms"`: Ferry's signing keys as Cloud KMS asymmetric signing
//! key versions (`RSA_SIGN_PKCS1_{2048,3072,4096}_SHA256` or `EC_SIGN_P256_SHA256`),
//! through the documented REST API (v1):
//! `GET {endpoint}/v1/{version}/publicKey` once when a key is opened, and
//! `POST {endpoint}/v1/{version}:asymmetricSign` with the SHA-256 digest of the signing
//! input per signature. Ferry's identity needs `cloudkms.cryptoKeyVersions.useToSign` and
//! `cloudkms.cryptoKeyVersions.viewPublicKey` on those versions
//! (`roles/cloudkms.signerVerifier`, or `roles/cloudkms.signer` plus
//! `roles/cloudkms.publicKeyViewer`).
//!
//! The request carries `digestCrc32c` and the answer's `verifiedDigestCrc32c` and
//! `signatureCrc32c` are checked, as Google's data-integrity guidance asks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ferry_provider_api::{
    KeyAlgorithm, KeyFacts, ManagedKey, SignError, jws_signature, key_manager_answer,
};
use serde::Deserialize;

const BACKEND: &str = "gcp_kms";
/// The OAuth scope of Cloud KMS.
const CLOUDKMS_SCOPE: &str = "https://www.googleapis.com/auth/cloudkms";
const DEFAULT_ENDPOINT: &str = "https://cloudkms.googleapis.com";

/// How Ferry gets its bearer token.
enum Credentials {
    /// gcp_auth's default chain (found on first use).
    Google(tokio::sync::OnceCell<Arc<dyn gcp_auth::TokenProvider>>),
    /// A file a sidecar keeps fresh, read at every call.
    File(PathBuf),
}

struct Client {
    endpoint: String,
    http: reqwest::Client,
    credentials: Credentials,
}

impl Client {
    async fn token(&self) -> Result<String, SignError> {
        let unavailable = |reason: String| SignError::Unavailable {
            backend: BACKEND,
            reason,
        };
        match &self.credentials {
            Credentials::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| unavailable(format!("token file {}: {e}", path.display()))),
            Credentials::Google(cell) => {
                let provider = cell
                    .get_or_try_init(|| async {
                        gcp_auth::provider()
                            .await
                            .map_err(|e| unavailable(format!("no Google credentials: {e}")))
                    })
                    .await?;
                provider
                    .token(&[CLOUDKMS_SCOPE])
                    .await
                    .map(|t| t.as_str().to_owned())
                    .map_err(|e| unavailable(format!("Google token: {e}")))
            }
        }
    }

    /// One call; the answer parsed, or the error classified by its status.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, SignError> {
        let token = self.token().await?;
        let res = request
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| SignError::Unavailable {
                backend: BACKEND,
                reason: if e.is_timeout() {
                    "timed out"
                } else {
                    "unreachable"
                }
                .into(),
            })?;
        let status = res.status().as_u16();
        let body = res.text().await.map_err(|_| SignError::Unavailable {
            backend: BACKEND,
            reason: "answer cut off".into(),
        })?;
        key_manager_answer(BACKEND, status, &body, "/error/status")
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublicKey {
    pem: String,
    algorithm: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignAnswer {
    signature: String,
    #[serde(default)]
    verified_digest_crc32c: bool,
    #[serde(default)]
    signature_crc32c: Option<String>,
}

/// One key version.
struct KmsKey {
    facts: KeyFacts,
    client: Arc<Client>,
}

impl std::fmt::Debug for KmsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudKmsKey")
            .field("name", &self.facts.reference)
            .finish_non_exhaustive()
    }
}

/// The DER inside a PEM block.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    STANDARD.decode(body).ok()
}

/// CRC32C (Castagnoli), as Cloud KMS computes it.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Opens `keys` (key versions' resource names) at `endpoint` (Cloud KMS unless set),
/// authenticating with gcp_auth's default chain or the token in `token_file`.
pub async fn open(
    endpoint: Option<String>,
    token_file: Option<PathBuf>,
    keys: &[String],
) -> Result<Vec<Arc<dyn ManagedKey>>, String> {
    let http = http_client()?;
    let client = Arc::new(Client {
        endpoint: endpoint
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
            .trim_end_matches('/')
            .to_owned(),
        http,
        credentials: match token_file {
            Some(path) => Credentials::File(path),
            None => Credentials::Google(tokio::sync::OnceCell::new()),
        },
    });
    let mut opened = Vec::new();
    for name in keys {
        let what = |problem: String| format!("Cloud KMS key version `{name}`: {problem}");
        let url = format!("{}/v1/{name}/publicKey", client.endpoint);
        let key: PublicKey = client
            .call(client.http.get(&url))
            .await
            .map_err(|e| what(format!("getPublicKey: {e}")))?;
        if key.name.as_deref().is_some_and(|n| n != name) {
            return Err(what("getPublicKey answered for another key version".into()));
        }
        let algorithm = match key.algorithm.as_str() {
            "RSA_SIGN_PKCS1_2048_SHA256"
            | "RSA_SIGN_PKCS1_3072_SHA256"
            | "RSA_SIGN_PKCS1_4096_SHA256" => KeyAlgorithm::Rs256,
            "EC_SIGN_P256_SHA256" => KeyAlgorithm::Es256,
            other => {
                return Err(what(format!(
                    "has algorithm {other}; Ferry signs with RSA_SIGN_PKCS1_{{2048,3072,4096}}_SHA256 or EC_SIGN_P256_SHA256"
                )));
            }
        };
        let spki =
            pem_der(&key.pem).ok_or_else(|| what("its public key PEM does not decode".into()))?;
        opened.push(KeyFacts {
            reference: name.clone(),
            algorithm,
            spki,
        });
    }
    let signing = Arc::new(client.for_signing()?);
    Ok(opened
        .into_iter()
        .map(|facts| {
            Arc::new(KmsKey {
                facts,
                client: Arc::clone(&signing),
            }) as Arc<dyn ManagedKey>
        })
        .collect())
}

/// The HTTP client of key-manager calls.
fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| format!("http client: {e}"))
}

impl Client {
    /// The client signatures use: the keys may be opened on a runtime of their own
    /// (`ferry serve` reads its config before its runtime starts), so the connections
    /// and the credential lookup made then are not carried over to the serving one.
    fn for_signing(&self) -> Result<Self, String> {
        Ok(Self {
            endpoint: self.endpoint.clone(),
            http: http_client()?,
            credentials: match &self.credentials {
                Credentials::File(path) => Credentials::File(path.clone()),
                Credentials::Google(_) => Credentials::Google(tokio::sync::OnceCell::new()),
            },
        })
    }
}

#[async_trait]
impl ManagedKey for KmsKey {
    fn backend(&self) -> &'static str {
        BACKEND
    }
    fn facts(&self) -> &KeyFacts {
        &self.facts
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(message);
        let url = format!(
            "{}/v1/{}:asymmetricSign",
            self.client.endpoint, self.facts.reference
        );
        let body = serde_json::json!({
            "digest": {"sha256": STANDARD.encode(digest)},
            // int64 fields are strings in JSON (proto3 JSON mapping).
            "digestCrc32c": crc32c(&digest).to_string(),
        });
        let answer: SignAnswer = self
            .client
            .call(self.client.http.post(&url).json(&body))
            .await?;
        let corrupted = |what: &str| SignError::Unavailable {
            backend: BACKEND,
            reason: format!("{what} (corrupted in transit)"),
        };
        if !answer.verified_digest_crc32c {
            return Err(corrupted("the digest's CRC32C was not verified"));
        }
        let signature = STANDARD
            .decode(&answer.signature)
            .map_err(|_| corrupted("the signature is not base64"))?;
        if let Some(crc) = &answer.signature_crc32c
            && crc.parse::<u32>().ok() != Some(crc32c(&signature))
        {
            return Err(corrupted("the signature's CRC32C does not match"));
        }
        jws_signature(BACKEND, self.facts.algorithm, signature)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32c_matches_the_castagnoli_check_value() {
        // RFC 3720 §B.4 / the CRC catalogue's check value for "123456789".
        assert_eq!(super::crc32c(b"123456789"), 0xe306_9283);
    }
}
