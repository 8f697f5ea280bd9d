//! AWS STS credentials for Ferry.
//!
//! - `web_identity` (keyless, the default): Ferry signs a short-lived JWT about the
//!   identity and calls `AssumeRoleWithWebIdentity`; the role's trust policy trusts
//!   Ferry's issuer URL. Ferry holds no AWS secret.
//! - `assume_role`: Ferry's own AWS credentials (the standard aws-config chain) call
//!   `AssumeRole` with `ExternalId`, session tags, `SourceIdentity` and an optional
//!   session policy.
//!
//! Retries (standard mode: exponential backoff with jitter, throttling and transient
//! errors only, 3 attempts), per-attempt and per-operation timeouts, and a concurrency
//! bound per target so a burst of cache misses cannot trip STS throttling.

pub mod config;
pub mod kms;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sts::operation::RequestId as _;
use aws_sdk_sts::primitives::DateTimeFormat;
use ferry_provider_api::{
    AssertionSigner, Credential, CredentialProvider, Grant, ProviderError, Secret,
};

/// The shortest and longest session STS grants.
pub const MIN_DURATION: Duration = Duration::from_secs(15 * 60);
/// See [`MIN_DURATION`].
pub const MAX_DURATION: Duration = Duration::from_secs(12 * 3600);

/// How the role is assumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Ferry-signed JWT → `AssumeRoleWithWebIdentity` (keyless).
    WebIdentity,
    /// Ferry's own credentials → `AssumeRole`.
    AssumeRole,
}

/// One AWS target, as the core parsed it from the config.
#[derive(Debug, Clone)]
pub struct AwsTarget {
    /// The target id (for logs).
    pub id: String,
    /// How.
    pub mode: Mode,
    /// `arn:aws:iam::<account>:role/<name>`.
    pub role_arn: String,
    /// Session duration (clamped to 15 min – 12 h).
    pub duration: Duration,
    /// STS region.
    pub region: String,
    /// STS endpoint override (tests point it at moto).
    pub endpoint: Option<String>,
    /// `aud` of the Ferry-signed JWT for `web_identity` (default `sts.amazonaws.com`).
    pub audience: String,
    /// `ExternalId` for `assume_role`.
    pub external_id: Option<String>,
    /// An inline session policy that narrows the role's permissions.
    pub session_policy: Option<String>,
    /// Concurrent STS calls allowed for this target.
    pub max_concurrency: usize,
}

/// Clamps a requested duration into what STS accepts.
pub fn clamp_duration(d: Duration) -> Duration {
    d.clamp(MIN_DURATION, MAX_DURATION)
}

/// `RoleSessionName` from a subject: AWS's character set (`[\w+=,.@-]`), at most 64
/// characters, deterministic; long subjects keep a readable prefix and a hash suffix.
pub fn session_name(subject: &str) -> String {
    let cleaned: String = subject
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.len() >= 2 && cleaned.len() <= 64 && cleaned == subject {
        return cleaned;
    }
    use sha2::{Digest as _, Sha256};
    let hash = hex::encode(Sha256::digest(subject.as_bytes()));
    let prefix: String = cleaned.chars().take(47).collect();
    format!("{prefix}-{}", hash.get(..16).unwrap_or(&hash))
}

/// The provider for one AWS target.
pub struct AwsProvider {
    target: AwsTarget,
    client: tokio::sync::OnceCell<aws_sdk_sts::Client>,
    signer: Arc<dyn AssertionSigner>,
    permits: ferry_provider_api::Concurrency,
}

impl std::fmt::Debug for AwsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsProvider")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl AwsProvider {
    /// A provider for `target`; the STS client is built on first use.
    pub fn new(target: AwsTarget, signer: Arc<dyn AssertionSigner>) -> Self {
        Self {
            permits: ferry_provider_api::Concurrency::new(target.max_concurrency),
            client: tokio::sync::OnceCell::new(),
            target,
            signer,
        }
    }

    /// The STS client. For `web_identity` no AWS credentials are loaded at all (the call
    /// is authenticated by the web identity token alone).
    async fn client(&self) -> &aws_sdk_sts::Client {
        self.client
            .get_or_init(|| Self::build_client(&self.target))
            .await
    }

    async fn build_client(target: &AwsTarget) -> aws_sdk_sts::Client {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(Duration::from_secs(3))
            .operation_timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .build();
        let retry = aws_config::retry::RetryConfig::standard().with_max_attempts(3);
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(target.region.clone()))
            .timeout_config(timeouts)
            .retry_config(retry);
        if let Some(endpoint) = &target.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        if target.mode == Mode::WebIdentity {
            loader = loader.no_credentials();
        }
        let config = loader.load().await;
        aws_sdk_sts::Client::new(&config)
    }

    /// The credential of an STS answer, or its error classified (and logged with the
    /// upstream request id).
    fn answer<E: aws_sdk_sts::error::ProvideErrorMetadata + std::fmt::Debug>(
        &self,
        out: Result<
            (Option<aws_sdk_sts::types::Credentials>, Option<String>),
            aws_sdk_sts::error::SdkError<E, aws_sdk_sts::config::http::HttpResponse>,
        >,
        call: &str,
    ) -> Result<Credential, ProviderError> {
        match out {
            Ok((creds, request_id)) => self.credential(creds.as_ref(), request_id.as_deref()),
            Err(e) => {
                use aws_sdk_sts::operation::RequestId as _;
                tracing::warn!(target_id = %self.target.id, request_id = e.request_id(), "{call} failed");
                Err(classify(&e))
            }
        }
    }

    fn credential(
        &self,
        creds: Option<&aws_sdk_sts::types::Credentials>,
        request_id: Option<&str>,
    ) -> Result<Credential, ProviderError> {
        let c = creds
            .ok_or_else(|| ProviderError::BadAnswer("STS answered without credentials".into()))?;
        let expiration = c
            .expiration()
            .fmt(DateTimeFormat::DateTime)
            .map_err(|e| ProviderError::BadAnswer(format!("expiration: {e}")))?;
        let mut fields = BTreeMap::new();
        fields.insert("access_key_id".to_owned(), Secret::new(c.access_key_id()));
        fields.insert(
            "secret_access_key".to_owned(),
            Secret::new(c.secret_access_key()),
        );
        fields.insert("session_token".to_owned(), Secret::new(c.session_token()));
        fields.insert("expiration".to_owned(), Secret::new(expiration));
        Ok(Credential {
            access_token: Secret::new(c.session_token()),
            issued_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
            token_type: "N_A".into(),
            expires_at: c.expiration().secs(),
            fields,
            upstream_request_id: request_id.map(str::to_owned),
            token_id: None,
        })
    }
}

fn classify<E: aws_sdk_sts::error::ProvideErrorMetadata + std::fmt::Debug>(
    err: &aws_sdk_sts::error::SdkError<E, aws_sdk_sts::config::http::HttpResponse>,
) -> ProviderError {
    use aws_sdk_sts::error::SdkError;
    match err {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("Unknown").to_owned();
            let status = s.raw().status().as_u16();
            if code.contains("Throttl") || code == "IDPCommunicationError" || status >= 500 {
                ProviderError::Unavailable {
                    reason: format!("STS {code}"),
                    retry_after: Some(Duration::from_secs(2)),
                }
            } else {
                ProviderError::Denied { code }
            }
        }
        SdkError::TimeoutError(_) => ProviderError::Unavailable {
            reason: "STS timed out".into(),
            retry_after: Some(Duration::from_secs(2)),
        },
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => ProviderError::Unavailable {
            reason: "STS unreachable".into(),
            retry_after: Some(Duration::from_secs(2)),
        },
        _ => ProviderError::Internal("STS request could not be built".into()),
    }
}

#[async_trait]
impl CredentialProvider for AwsProvider {
    fn kind(&self) -> &'static str {
        "aws"
    }

    async fn issue(&self, grant: &Grant) -> Result<Credential, ProviderError> {
        let _permit = self.permits.acquire("STS calls").await?;
        let name = session_name(&grant.subject);
        let seconds = i32::try_from(clamp_duration(self.target.duration).as_secs()).unwrap_or(3600);
        let result = match self.target.mode {
            Mode::WebIdentity => {
                let mut extra = serde_json::Map::new();
                extra.insert("ferry".into(), serde_json::json!({"issuer": grant.issuer_id, "groups": grant.groups, "attributes": grant.attributes, "target": grant.target_id}));
                let assertion = self
                    .signer
                    .sign_assertion(
                        &grant.subject,
                        &self.target.audience,
                        Duration::from_secs(300),
                        extra,
                    )
                    .await?;
                let out = self
                    .client()
                    .await
                    .assume_role_with_web_identity()
                    .role_arn(&self.target.role_arn)
                    .role_session_name(&name)
                    .web_identity_token(assertion.token.expose())
                    .duration_seconds(seconds)
                    .set_policy(self.target.session_policy.clone())
                    .send()
                    .await;
                self.answer(
                    out.map(|o| (o.credentials().cloned(), o.request_id().map(str::to_owned))),
                    "AssumeRoleWithWebIdentity",
                )
            }
            Mode::AssumeRole => {
                let tags: Vec<aws_sdk_sts::types::Tag> = grant
                    .target_values
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix("session_tag:").map(|k| (k, v)))
                    .filter_map(|(k, v)| {
                        aws_sdk_sts::types::Tag::builder()
                            .key(k)
                            .value(v)
                            .build()
                            .ok()
                    })
                    .collect();
                let out = self
                    .client()
                    .await
                    .assume_role()
                    .role_arn(&self.target.role_arn)
                    .role_session_name(&name)
                    .duration_seconds(seconds)
                    .set_external_id(self.target.external_id.clone())
                    .set_tags((!tags.is_empty()).then_some(tags))
                    .set_source_identity(grant.target_values.get("source_identity").cloned())
                    .set_policy(self.target.session_policy.clone())
                    .send()
                    .await;
                self.answer(
                    out.map(|o| (o.credentials().cloned(), o.request_id().map(str::to_owned))),
                    "AssumeRole",
                )
            }
        };
        if let Ok(c) = &result {
            tracing::info!(target_id = %self.target.id, upstream_request_id = c.upstream_request_id.as_deref(), "STS credentials issued");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_are_valid_and_deterministic() {
        assert_eq!(session_name("github-acme.infra"), "github-acme.infra");
        let long = format!("github:acme/{}:refs/heads/main", "x".repeat(80));
        let a = session_name(&long);
        assert_eq!(a, session_name(&long));
        assert!(a.len() <= 64, "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
        );
        let b = session_name("github:acme/infra:refs/heads/main");
        assert!(b.starts_with("github-acme-infra-refs-heads-main-"), "{b}");
        assert_ne!(
            session_name("a/b"),
            session_name("a:b"),
            "different subjects, different names"
        );
    }

    #[test]
    fn durations_are_clamped() {
        assert_eq!(clamp_duration(Duration::from_secs(60)), MIN_DURATION);
        assert_eq!(clamp_duration(Duration::from_secs(100_000)), MAX_DURATION);
        assert_eq!(
            clamp_duration(Duration::from_secs(3600)),
            Duration::from_secs(3600)
        );
    }
}
