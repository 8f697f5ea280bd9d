//! Azure Entra access tokens for Ferry.
//!
//! - `federated` (keyless, the default): Ferry signs a short-lived JWT about the identity
//!   and presents it as a client assertion (RFC 7523) for the app registration whose
//!   federated credential trusts Ferry's issuer: `POST {authority}/{tenant}/oauth2/v2.0/token`
//!   with `grant_type=client_credentials`.
//! - `client_secret`: the same request with Ferry's own client secret.
//! - `managed_identity`: Ferry's own managed identity (IMDS).
//!
//! All three are single documented HTTP requests, made with reqwest (the same HTTP stack,
//! retry and timeout policy as the GCP provider). Retries on 429/5xx only.

pub mod config;
pub mod key_vault;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_provider_api::{
    AssertionSigner, AttemptError, Credential, CredentialProvider, Grant, ProviderError, Secret,
    classify_answer, no_answer, with_retries,
};
use serde::Deserialize;

/// The audience Entra expects in a federated client assertion.
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

/// How Ferry authenticates to Entra.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Ferry-signed JWT as the client assertion (keyless).
    Federated,
    /// Ferry's own client secret.
    ClientSecret(Secret),
    /// Ferry's own managed identity, through the instance metadata endpoint.
    ManagedIdentity {
        /// `http://169.254.169.254/metadata/identity/oauth2/token` unless overridden.
        imds_endpoint: String,
    },
}

/// One Azure target, as the core parsed it from the config.
#[derive(Debug, Clone)]
pub struct AzureTarget {
    /// Target id (for logs).
    pub id: String,
    /// How.
    pub mode: Mode,
    /// Directory (tenant) id.
    pub tenant_id: String,
    /// Application (client) id; for managed identity, the user-assigned identity's client id.
    pub client_id: String,
    /// `…/.default` scope of the resource.
    pub scope: String,
    /// `https://login.microsoftonline.com` unless overridden.
    pub authority_host: String,
    /// Concurrent token requests for this target.
    pub max_concurrency: usize,
    /// Per-attempt timeout.
    pub attempt_timeout: Duration,
}

/// The provider for one Azure target.
pub struct AzureProvider {
    target: AzureTarget,
    http: reqwest::Client,
    signer: Arc<dyn AssertionSigner>,
    permits: ferry_provider_api::Concurrency,
}

impl std::fmt::Debug for AzureProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureProvider")
            .field("target", &self.target.id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
}

fn number(v: Option<&serde_json::Value>) -> Option<i64> {
    match v? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0)
}

impl AzureProvider {
    /// A provider for `target`.
    pub fn new(
        target: AzureTarget,
        signer: Arc<dyn AssertionSigner>,
    ) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .timeout(target.attempt_timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ProviderError::Misconfigured(format!("http client: {e}")))?;
        Ok(Self {
            permits: ferry_provider_api::Concurrency::new(target.max_concurrency),
            target,
            http,
            signer,
        })
    }

    async fn attempt(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(TokenResponse, Option<String>), AttemptError> {
        let res = request
            .send()
            .await
            .map_err(|e| no_answer(e.is_timeout()))?;
        let status = res.status().as_u16();
        let request_id = res
            .headers()
            .get("x-ms-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = res
            .text()
            .await
            .map_err(|_| AttemptError::Retryable("body unreadable".into()))?;
        // Entra errors: {"error": "invalid_client", "error_codes": [700213], …}; only the code.
        classify_answer(status, &text, "the token service", |v| {
            v.get("error")?.as_str().map(str::to_owned)
        })
        .map(|token| (token, request_id))
    }

    async fn token_request(&self, grant: &Grant) -> Result<reqwest::RequestBuilder, ProviderError> {
        let t = &self.target;
        let mut req = match &t.mode {
            Mode::ManagedIdentity { imds_endpoint } => {
                let resource = t.scope.strip_suffix("/.default").unwrap_or(&t.scope);
                self.http
                    .get(imds_endpoint)
                    .header("Metadata", "true")
                    .query(&[
                        ("api-version", "2018-02-01"),
                        ("resource", resource),
                        ("client_id", t.client_id.as_str()),
                    ])
            }
            mode => {
                let url = format!(
                    "{}/{}/oauth2/v2.0/token",
                    t.authority_host.trim_end_matches('/'),
                    t.tenant_id
                );
                let mut form: Vec<(&str, String)> = vec![
                    ("grant_type", "client_credentials".into()),
                    ("client_id", t.client_id.clone()),
                    ("scope", t.scope.clone()),
                ];
                match mode {
                    Mode::ClientSecret(secret) => {
                        form.push(("client_secret", secret.expose().to_owned()))
                    }
                    _ => {
                        // RFC 7523 §2.2: a JWT client assertion, here one Ferry signs about
                        // the identity; the federated credential matches iss, sub and aud.
                        let mut extra = serde_json::Map::new();
                        extra.insert("ferry".into(), serde_json::json!({"issuer": grant.issuer_id, "groups": grant.groups, "attributes": grant.attributes, "target": grant.target_id}));
                        let assertion = self
                            .signer
                            .sign_assertion(
                                &grant.subject,
                                FEDERATED_AUDIENCE,
                                Duration::from_secs(300),
                                extra,
                            )
                            .await?;
                        form.push((
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                        ));
                        form.push(("client_assertion", assertion.token.expose().to_owned()));
                    }
                }
                self.http.post(url).form(&form)
            }
        };
        if let Some(tp) = &grant.traceparent {
            req = req.header("traceparent", tp);
        }
        Ok(req)
    }
}

#[async_trait]
impl CredentialProvider for AzureProvider {
    fn kind(&self) -> &'static str {
        "azure"
    }

    async fn issue(&self, grant: &Grant) -> Result<Credential, ProviderError> {
        let _permit = self.permits.acquire("Entra requests").await?;
        let (token, request_id) = with_retries(3, Duration::from_secs(10), || async {
            let req = self
                .token_request(grant)
                .await
                .map_err(AttemptError::Fatal)?;
            self.attempt(req).await
        })
        .await?;
        let expires_on = number(token.expires_on.as_ref())
            .or_else(|| number(token.expires_in.as_ref()).map(|s| now() + s))
            .ok_or_else(|| ProviderError::BadAnswer("Entra answered without an expiry".into()))?;
        let token_type = token.token_type.unwrap_or_else(|| "Bearer".into());
        let mut fields = BTreeMap::new();
        fields.insert(
            "access_token".to_owned(),
            Secret::new(token.access_token.clone()),
        );
        fields.insert("expires_on".to_owned(), Secret::new(expires_on.to_string()));
        fields.insert("token_type".to_owned(), Secret::new(token_type.clone()));
        tracing::info!(target_id = %self.target.id, upstream_request_id = request_id.as_deref(), "Entra token issued");
        Ok(Credential {
            access_token: Secret::new(token.access_token),
            issued_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
            token_type,
            expires_at: expires_on,
            fields,
            upstream_request_id: request_id,
            token_id: None,
        })
    }
}
