//! GCP access tokens for Ferry, keyless: workload identity federation.
//!
//! `workload_identity`: Ferry signs a short-lived JWT about the identity; Google's STS
//! (`POST {sts}/v1/token`, RFC 8693 in JSON) exchanges it for a federated access token
//! for the workload identity pool provider (`audience`); with `service_account` set, IAM
//! Credentials (`POST {iam}/v1/projects/-/serviceAccounts/{sa}:generateAccessToken`)
//! then mints a token for that service account with the target's scopes and lifetime.
//!
//! gcp_auth has no STS or impersonation support, so both calls are plain HTTPS with
//! reqwest at configurable base URLs. Retries: 429 and 5xx only, exponential backoff with
//! jitter, at most 3 attempts within 10 s; every attempt has a timeout.

pub mod config;
pub mod kms;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_provider_api::{
    AssertionSigner, AttemptError, Credential, CredentialProvider, Grant, ProviderError, Secret,
    classify_answer, no_answer, with_retries,
};
use serde::Deserialize;

/// Default scope of federated and impersonated tokens.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Whose identity reaches Google.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Keyless: a Ferry-signed JWT through workload identity federation.
    WorkloadIdentity,
    /// Ferry's own Google identity (gcp_auth: `GOOGLE_APPLICATION_CREDENTIALS` key file,
    /// gcloud ADC, or the metadata server) impersonates `service_account`.
    ServiceAccount,
}

/// One GCP target, as the core parsed it from the config.
#[derive(Debug, Clone)]
pub struct GcpTarget {
    /// Target id (for logs).
    pub id: String,
    /// Whose identity reaches Google.
    pub mode: Mode,
    /// `//iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>`.
    pub audience: String,
    /// `aud` of the Ferry-signed JWT (default: `https:` + `audience`).
    pub jwt_audience: String,
    /// Impersonate this service account after the exchange.
    pub service_account: Option<String>,
    /// OAuth scopes.
    pub scopes: Vec<String>,
    /// Lifetime of an impersonated token.
    pub lifetime: Duration,
    /// STS base URL (default `https://sts.googleapis.com`).
    pub sts_endpoint: String,
    /// IAM Credentials base URL (default `https://iamcredentials.googleapis.com`).
    pub iam_credentials_endpoint: String,
    /// Concurrent upstream exchanges for this target.
    pub max_concurrency: usize,
    /// Per-attempt timeout.
    pub attempt_timeout: Duration,
}

/// The provider for one GCP target.
pub struct GcpProvider {
    target: GcpTarget,
    own_identity: tokio::sync::OnceCell<Arc<dyn gcp_auth::TokenProvider>>,
    http: reqwest::Client,
    signer: Arc<dyn AssertionSigner>,
    permits: ferry_provider_api::Concurrency,
}

impl std::fmt::Debug for GcpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpProvider")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct StsToken {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeneratedToken {
    access_token: String,
    expire_time: String,
}

fn unavailable(reason: impl Into<String>) -> ProviderError {
    ProviderError::Unavailable {
        reason: reason.into(),
        retry_after: Some(Duration::from_secs(2)),
    }
}

/// The error code of a Google error body: STS uses OAuth's `{"error": "invalid_grant"}`,
/// IAM uses `{"error": {"status": "PERMISSION_DENIED"}}`. Never the whole body.
fn error_code(body: &serde_json::Value) -> Option<String> {
    match body.get("error")? {
        serde_json::Value::String(s) => Some(s.clone()),
        obj => obj.get("status")?.as_str().map(str::to_owned),
    }
}

impl GcpProvider {
    /// A provider for `target`.
    pub fn new(target: GcpTarget, signer: Arc<dyn AssertionSigner>) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .timeout(target.attempt_timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ProviderError::Misconfigured(format!("http client: {e}")))?;
        Ok(Self {
            permits: ferry_provider_api::Concurrency::new(target.max_concurrency),
            target,
            own_identity: tokio::sync::OnceCell::new(),
            http,
            signer,
        })
    }

    /// A token for Ferry's own Google identity (found once, then cached by gcp_auth).
    async fn own_token(&self) -> Result<String, ProviderError> {
        let provider = self
            .own_identity
            .get_or_try_init(|| async {
                gcp_auth::provider().await.map_err(|e| {
                    ProviderError::Misconfigured(format!("no Google credentials for Ferry: {e}"))
                })
            })
            .await?;
        let token = provider
            .token(&[CLOUD_PLATFORM])
            .await
            .map_err(|e| unavailable(format!("Ferry's own Google token: {e}")))?;
        Ok(token.as_str().to_owned())
    }

    /// POSTs JSON with retries on 429/5xx/transport errors (3 attempts, ≤ 10 s in all).
    async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        bearer: Option<&str>,
        body: &serde_json::Value,
        grant: &Grant,
    ) -> Result<(T, Option<String>), ProviderError> {
        with_retries(3, Duration::from_secs(10), || {
            self.attempt(url, bearer, body, grant)
        })
        .await
    }

    async fn attempt<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        bearer: Option<&str>,
        body: &serde_json::Value,
        grant: &Grant,
    ) -> Result<(T, Option<String>), AttemptError> {
        let mut req = self.http.post(url).json(body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(tp) = &grant.traceparent {
            req = req.header("traceparent", tp);
        }
        let res = req.send().await.map_err(|e| no_answer(e.is_timeout()))?;
        let status = res.status().as_u16();
        let request_id = res
            .headers()
            .get("x-guploader-uploadid")
            .or_else(|| res.headers().get("x-request-id"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = res
            .text()
            .await
            .map_err(|_| AttemptError::Retryable("body unreadable".into()))?;
        classify_answer(status, &text, url, error_code).map(|parsed| (parsed, request_id))
    }
}

#[async_trait]
impl CredentialProvider for GcpProvider {
    fn kind(&self) -> &'static str {
        "gcp"
    }

    async fn issue(&self, grant: &Grant) -> Result<Credential, ProviderError> {
        let _permit = self.permits.acquire("GCP exchanges").await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
            .unwrap_or(0);
        let (bearer, bearer_expires_in, sts_request_id) = match self.target.mode {
            Mode::ServiceAccount => (self.own_token().await?, None, None),
            Mode::WorkloadIdentity => {
                let mut extra = serde_json::Map::new();
                extra.insert(
                    "ferry".into(),
                    serde_json::json!({"issuer": grant.issuer_id, "groups": grant.groups, "attributes": grant.attributes, "target": grant.target_id}),
                );
                let assertion = self
                    .signer
                    .sign_assertion(
                        &grant.subject,
                        &self.target.jwt_audience,
                        Duration::from_secs(300),
                        extra,
                    )
                    .await?;
                let scope = if self.target.scopes.is_empty() {
                    CLOUD_PLATFORM.to_owned()
                } else {
                    self.target.scopes.join(" ")
                };
                // Google STS: RFC 8693 token exchange, JSON request body.
                let sts_body = serde_json::json!({
                    "grantType": "urn:ietf:params:oauth:grant-type:token-exchange",
                    "audience": self.target.audience,
                    "scope": if self.target.service_account.is_some() { CLOUD_PLATFORM.to_owned() } else { scope },
                    "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
                    "subjectToken": assertion.token.expose(),
                    "subjectTokenType": "urn:ietf:params:oauth:token-type:jwt",
                });
                let url = format!(
                    "{}/v1/token",
                    self.target.sts_endpoint.trim_end_matches('/')
                );
                let (federated, rid): (StsToken, _) =
                    self.post_json(&url, None, &sts_body, grant).await?;
                (federated.access_token, federated.expires_in, rid)
            }
        };
        let federated = StsToken {
            access_token: bearer,
            expires_in: bearer_expires_in,
        };
        let (token, expires_at, request_id) = match &self.target.service_account {
            None => (
                federated.access_token,
                now + federated.expires_in.unwrap_or(3600),
                sts_request_id,
            ),
            Some(sa) => {
                let url = format!(
                    "{}/v1/projects/-/serviceAccounts/{sa}:generateAccessToken",
                    self.target.iam_credentials_endpoint.trim_end_matches('/')
                );
                let scopes: Vec<&str> = if self.target.scopes.is_empty() {
                    vec![CLOUD_PLATFORM]
                } else {
                    self.target.scopes.iter().map(String::as_str).collect()
                };
                let body = serde_json::json!({"scope": scopes, "lifetime": format!("{}s", self.target.lifetime.as_secs())});
                let (generated, rid): (GeneratedToken, _) = self
                    .post_json(&url, Some(&federated.access_token), &body, grant)
                    .await?;
                let expires =
                    humantime::parse_rfc3339_weak(generated.expire_time.trim_end_matches('Z'))
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
                        .ok_or_else(|| {
                            ProviderError::BadAnswer(
                                "generateAccessToken: unreadable expireTime".into(),
                            )
                        })?;
                (generated.access_token, expires, rid)
            }
        };
        let expire_time = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(expires_at).unwrap_or(0)),
        )
        .to_string();
        let mut fields = BTreeMap::new();
        fields.insert("access_token".to_owned(), Secret::new(token.clone()));
        fields.insert("expire_time".to_owned(), Secret::new(expire_time));
        fields.insert("token_type".to_owned(), Secret::new("Bearer"));
        tracing::info!(target_id = %self.target.id, upstream_request_id = request_id.as_deref(), "GCP access token issued");
        Ok(Credential {
            access_token: Secret::new(token),
            issued_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
            token_type: "Bearer".into(),
            expires_at,
            fields,
            upstream_request_id: request_id,
            token_id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_never_carry_the_body() {
        assert_eq!(
            error_code(
                &serde_json::json!({"error": "invalid_grant", "error_description": "long text"})
            )
            .as_deref(),
            Some("invalid_grant")
        );
        assert_eq!(
            error_code(
                &serde_json::json!({"error": {"code": 403, "message": "m", "status": "PERMISSION_DENIED"}})
            )
            .as_deref(),
            Some("PERMISSION_DENIED")
        );
        // No code: the caller reports the HTTP status instead.
        assert_eq!(error_code(&serde_json::json!({})), None);
        assert_eq!(
            error_code(&serde_json::json!({"error": {"code": 403}})),
            None
        );
    }
}
