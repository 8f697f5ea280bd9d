//! `[signing] backend = "azure_key_vault"`: Ferry's signing keys in Azure Key Vault or
//! Managed HSM (`RSA`/`RSA-HSM` of 2048 bits or more, `EC`/`EC-HSM` on `P-256`), through
//! the documented REST API (api-version 7.4): `GET {key}` once when a key is opened, and
//! `POST {key}/sign` with the SHA-256 digest of the signing input (`RS256` or `ES256`)
//! per signature. Ferry's identity needs the `get` and `sign` key permissions (access
//! policy) or the "Key Vault Crypto User" role (RBAC); nothing that exports a key.
//!
//! Ferry's managed identity gets the token for `https://vault.azure.net` from the
//! instance metadata service; a token file can stand in (a sidecar, tests).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferry_provider_api::{KeyAlgorithm, KeyFacts, ManagedKey, SignError, key_manager_answer, spki};
use serde::Deserialize;

const BACKEND: &str = "azure_key_vault";
const API_VERSION: &str = "7.4";
/// The resource a Key Vault token is for.
const VAULT_RESOURCE: &str = "https://vault.azure.net";
const DEFAULT_IMDS: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

enum Credentials {
    /// The managed identity: (IMDS endpoint, client id), the token cached until five
    /// minutes before it expires.
    ManagedIdentity {
        endpoint: String,
        client_id: Option<String>,
        cached: tokio::sync::Mutex<Option<(String, i64)>>,
    },
    /// A file a sidecar keeps fresh, read at every call.
    File(PathBuf),
}

struct Client {
    http: reqwest::Client,
    credentials: Credentials,
}

fn unavailable(reason: impl Into<String>) -> SignError {
    SignError::Unavailable {
        backend: BACKEND,
        reason: reason.into(),
    }
}

#[derive(Deserialize)]
struct ImdsToken {
    access_token: String,
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
}

impl Client {
    async fn token(&self) -> Result<String, SignError> {
        match &self.credentials {
            Credentials::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| unavailable(format!("token file {}: {e}", path.display()))),
            Credentials::ManagedIdentity {
                endpoint,
                client_id,
                cached,
            } => {
                let now = super::now();
                let mut cached = cached.lock().await;
                if let Some((token, expires)) = cached.as_ref()
                    && *expires - 300 > now
                {
                    return Ok(token.clone());
                }
                let mut query = vec![("api-version", "2018-02-01"), ("resource", VAULT_RESOURCE)];
                if let Some(id) = client_id {
                    query.push(("client_id", id));
                }
                let res = self
                    .http
                    .get(endpoint)
                    .header("Metadata", "true")
                    .query(&query)
                    .send()
                    .await
                    .map_err(|_| unavailable("the managed identity endpoint is unreachable"))?;
                let status = res.status().as_u16();
                let body = res
                    .text()
                    .await
                    .map_err(|_| unavailable("managed identity answer cut off"))?;
                if status != 200 {
                    return Err(unavailable(format!(
                        "managed identity token: HTTP {status}"
                    )));
                }
                let token: ImdsToken = serde_json::from_str(&body)
                    .map_err(|_| unavailable("managed identity token does not parse"))?;
                let expires = super::number(token.expires_on.as_ref()).unwrap_or(now + 300);
                *cached = Some((token.access_token.clone(), expires));
                Ok(token.access_token)
            }
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, SignError> {
        let token = self.token().await?;
        let res = request.bearer_auth(token).send().await.map_err(|e| {
            unavailable(if e.is_timeout() {
                "timed out"
            } else {
                "unreachable"
            })
        })?;
        let status = res.status().as_u16();
        let body = res
            .text()
            .await
            .map_err(|_| unavailable("answer cut off"))?;
        key_manager_answer(BACKEND, status, &body, "/error/code")
    }
}

/// A JSON Web Key as Key Vault returns it.
#[derive(Deserialize)]
struct VaultJwk {
    kty: String,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    key_ops: Vec<String>,
}

#[derive(Deserialize)]
struct KeyBundle {
    key: VaultJwk,
    #[serde(default)]
    attributes: Option<Attributes>,
}

#[derive(Deserialize)]
struct Attributes {
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct SignResult {
    value: String,
}

/// One key version.
struct VaultKey {
    /// `reference` is the key URL, without a trailing slash.
    facts: KeyFacts,
    client: Arc<Client>,
}

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVaultKey")
            .field("url", &self.facts.reference)
            .finish_non_exhaustive()
    }
}

fn b64(field: Option<&String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(field?.trim_end_matches('=')).ok()
}

/// The SPKI and algorithm of a Key Vault JWK.
fn public_key(jwk: &VaultJwk) -> Result<(KeyAlgorithm, Vec<u8>), String> {
    match jwk.kty.as_str() {
        "RSA" | "RSA-HSM" => {
            let (Some(n), Some(e)) = (b64(jwk.n.as_ref()), b64(jwk.e.as_ref())) else {
                return Err("its RSA key has no n and e".into());
            };
            Ok((KeyAlgorithm::Rs256, spki::rsa(&n, &e)))
        }
        "EC" | "EC-HSM" => {
            if jwk.crv.as_deref() != Some("P-256") {
                return Err(format!(
                    "is an EC key on {}; Ferry signs with P-256",
                    jwk.crv.as_deref().unwrap_or("no curve")
                ));
            }
            let (Some(x), Some(y)) = (b64(jwk.x.as_ref()), b64(jwk.y.as_ref())) else {
                return Err("its EC key has no x and y".into());
            };
            if x.len() != 32 || y.len() != 32 {
                return Err("its P-256 coordinates are not 32 bytes".into());
            }
            let mut point = vec![0x04];
            point.extend(x);
            point.extend(y);
            Ok((KeyAlgorithm::Es256, spki::p256(&point)))
        }
        other => Err(format!("is a {other} key; Ferry signs with RSA or EC keys")),
    }
}

/// Opens `keys` (key URLs with their version), authenticating with the managed identity
/// (`imds_endpoint`, `client_id`) or the token in `token_file`.
pub async fn open(
    imds_endpoint: Option<String>,
    client_id: Option<String>,
    token_file: Option<PathBuf>,
    keys: &[String],
) -> Result<Vec<Arc<dyn ManagedKey>>, String> {
    let http = http_client()?;
    let client = Arc::new(Client {
        http,
        credentials: match token_file {
            Some(path) => Credentials::File(path),
            None => Credentials::ManagedIdentity {
                endpoint: imds_endpoint.unwrap_or_else(|| DEFAULT_IMDS.to_owned()),
                client_id,
                cached: tokio::sync::Mutex::new(None),
            },
        },
    });
    let mut opened = Vec::new();
    for url in keys {
        let what = |problem: String| format!("Key Vault key `{url}`: {problem}");
        let bundle: KeyBundle = client
            .call(client.http.get(url).query(&[("api-version", API_VERSION)]))
            .await
            .map_err(|e| what(format!("get key: {e}")))?;
        if bundle.attributes.as_ref().is_some_and(|a| !a.enabled) {
            return Err(what("is disabled".into()));
        }
        if !bundle.key.key_ops.is_empty() && !bundle.key.key_ops.iter().any(|o| o == "sign") {
            return Err(what("does not allow the `sign` operation".into()));
        }
        let (algorithm, spki) = public_key(&bundle.key).map_err(what)?;
        opened.push(KeyFacts {
            reference: url.trim_end_matches('/').to_owned(),
            algorithm,
            spki,
        });
    }
    let signing = Arc::new(client.for_signing().await?);
    Ok(opened
        .into_iter()
        .map(|facts| {
            Arc::new(VaultKey {
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
    /// made then are not carried over to the serving one; the token is.
    async fn for_signing(&self) -> Result<Self, String> {
        Ok(Self {
            http: http_client()?,
            credentials: match &self.credentials {
                Credentials::File(path) => Credentials::File(path.clone()),
                Credentials::ManagedIdentity {
                    endpoint,
                    client_id,
                    cached,
                } => Credentials::ManagedIdentity {
                    endpoint: endpoint.clone(),
                    client_id: client_id.clone(),
                    cached: tokio::sync::Mutex::new(cached.lock().await.clone()),
                },
            },
        })
    }
}

#[async_trait]
impl ManagedKey for VaultKey {
    fn backend(&self) -> &'static str {
        BACKEND
    }
    fn facts(&self) -> &KeyFacts {
        &self.facts
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(message);
        let body = serde_json::json!({
            "alg": self.facts.algorithm.name(),
            "value": URL_SAFE_NO_PAD.encode(digest),
        });
        let url = format!("{}/sign", self.facts.reference);
        let answer: SignResult = self
            .client
            .call(
                self.client
                    .http
                    .post(&url)
                    .query(&[("api-version", API_VERSION)])
                    .json(&body),
            )
            .await?;
        // Key Vault returns ES256 signatures as r || s already (the JWS form).
        URL_SAFE_NO_PAD
            .decode(answer.value.trim_end_matches('='))
            .map_err(|_| SignError::Refused {
                backend: BACKEND,
                reason: "sign returned a value that is not base64url".into(),
            })
    }
}
