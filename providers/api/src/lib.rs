//! The contract between Ferry's core and the things that mint credentials.
//!
//! The core authorizes a request and hands a [`Grant`] to the [`CredentialProvider`]
//! configured for the target; the provider answers with a [`Credential`] or a
//! [`ProviderError`]. This crate has no SDK dependency: a cloud provider crate depends
//! on it and on its own SDK, and the core depends on it and on no SDK.

pub mod managed_key;
pub mod settings;

pub use managed_key::{
    KeyAlgorithm, KeyFacts, ManagedKey, SignError, ecdsa_der_to_jws, jws_signature,
    key_manager_answer, refusal, spki,
};

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

/// A string that must never be logged: `Debug` and `Display` print `"..."`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it somewhere.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"...\")")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("...")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// What the core has authorized: this identity may have credentials for this target.
///
/// A `Grant` can only be built by the core after verification, mapping and policy;
/// providers receive it by reference and never see the subject token.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The target id from the config.
    pub target_id: String,
    /// The id of the issuer that vouched for the workload.
    pub issuer_id: String,
    /// The canonical subject the mapping produced.
    pub subject: String,
    /// Mapped groups.
    pub groups: Vec<String>,
    /// Mapped attributes (strings).
    pub attributes: BTreeMap<String, String>,
    /// Scopes granted (a subset of the target's allowed scopes).
    pub scopes: Vec<String>,
    /// The longest lifetime the credential may have.
    pub max_ttl: Duration,
    /// The request id, so that upstream calls can be correlated in the audit trail.
    pub request_id: String,
    /// The W3C `traceparent` of the incoming request, to propagate to upstream calls.
    pub traceparent: Option<String>,
    /// Values the target's own expressions computed from the identity (AWS:
    /// `session_tag:<Key>` and `source_identity`).
    pub target_values: BTreeMap<String, String>,
    /// The revocation fields (opaque hashes) that cover what is minted: the subject, the
    /// target, the issuer's `sub`. A token Ferry signs carries them, so introspection
    /// reports it inactive once any of them is revoked.
    pub revocation_fields: Vec<String>,
    /// The key the credential is bound to, when it is (only a Ferry-signed JWT can be).
    pub confirmation: Option<Confirmation>,
}

/// What a sender-constrained token is bound to: its `cnf` member.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Confirmation {
    /// RFC 9449 §6: the SHA-256 JWK thumbprint of the client's DPoP key.
    Jkt(String),
    /// RFC 8705 §3.1: the SHA-256 thumbprint of the client's TLS certificate.
    X5tS256(String),
}

impl Confirmation {
    /// The `cnf` member's name and value.
    pub fn member(&self) -> (&'static str, &str) {
        match self {
            Self::Jkt(v) => ("jkt", v),
            Self::X5tS256(v) => ("x5t#S256", v),
        }
    }
}

/// A credential a provider minted.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The primary bearer string (`access_token` on the wire).
    pub access_token: Secret,
    /// RFC 8693 `issued_token_type`.
    pub issued_token_type: String,
    /// RFC 6749 `token_type` (`Bearer`, or `N_A` for non-bearer material).
    pub token_type: String,
    /// When the credential stops working, in Unix seconds.
    pub expires_at: i64,
    /// The provider's full credential object (for AWS: `access_key_id`, …), values secret.
    pub fields: BTreeMap<String, Secret>,
    /// The upstream request id, when there was an upstream call.
    pub upstream_request_id: Option<String>,
    /// An id of the issued credential that can be revoked (a JWT's `jti`).
    pub token_id: Option<String>,
}

/// Signs JWTs as Ferry, for keyless exchanges with a cloud that trusts Ferry's issuer.
/// Asynchronous: the active key may live in a key manager ([`ManagedKey`]), one network
/// round trip away.
#[async_trait]
pub trait AssertionSigner: Send + Sync {
    /// Signs a JWT with Ferry's active key: `iss` is Ferry's public URL, `iat`/`exp`/`jti`
    /// are set by the signer, `sub` and `aud` by the caller, `extra` is merged in. A key
    /// manager that cannot sign is [`ProviderError::Unavailable`] (503).
    async fn sign_assertion(
        &self,
        subject: &str,
        audience: &str,
        ttl: Duration,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<SignedAssertion, ProviderError>;
}

/// A JWT Ferry signed, with the facts about it a provider needs.
#[derive(Debug, Clone)]
pub struct SignedAssertion {
    /// The compact JWS.
    pub token: Secret,
    pub jti: String,
    /// Its `iat`, Unix seconds.
    pub issued_at: i64,
    /// Its `exp`, Unix seconds.
    pub expires_at: i64,
}

/// Why a provider could not mint a credential. Classified here, mapped to HTTP once in
/// the core.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The upstream refused this identity or target (`AccessDenied`, `invalid_grant`, …).
    #[error("upstream denied the request: {code}")]
    Denied {
        /// The cloud's error code, never its full body.
        code: String,
    },
    /// The upstream throttled us or is down; try again later.
    #[error("upstream unavailable: {reason}")]
    Unavailable {
        /// What happened, with no secret in it.
        reason: String,
        /// A hint for `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The provider's configuration cannot work (found at request time).
    #[error("provider misconfigured: {0}")]
    Misconfigured(String),
    /// The upstream answered, but with something Ferry cannot use (a success body that
    /// does not parse, a credential without an expiry): the cloud's fault, answered 503.
    #[error("unusable answer: {0}")]
    BadAnswer(String),
    /// Anything else: a bug.
    #[error("provider failed: {0}")]
    Internal(String),
}

/// One backend that turns a [`Grant`] into a [`Credential`]: Ferry's own JWTs, AWS STS,
/// GCP, Azure. One instance serves one target.
#[async_trait]
pub trait CredentialProvider: Send + Sync {
    /// The target kind this provider serves (`jwt`, `aws`, …), for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Mints a credential for an authorized grant.
    async fn issue(&self, grant: &Grant) -> Result<Credential, ProviderError>;
}

/// One upstream attempt's failure, classified.
#[derive(Debug)]
pub enum AttemptError {
    /// Throttling, 5xx, timeouts, transport errors: worth another attempt.
    Retryable(String),
    /// Anything else: returned as is.
    Fatal(ProviderError),
}

/// An HTTP token service's answer, classified the same way for every provider that calls
/// one (GCP's STS and IAM Credentials, Entra ID, Azure's instance metadata service):
/// - a 2xx body parses as `T`; one that does not is final ([`ProviderError::BadAnswer`]:
///   an answer Ferry does not understand is not worth asking for again);
/// - 429 and 5xx are worth another attempt;
/// - any other status is a denial.
///
/// A failure carries only the service's error code, as `error_code` reads it from a JSON
/// body, or else `HTTP <status>`; never the body, which may echo what was sent.
pub fn classify_answer<T: serde::de::DeserializeOwned>(
    status: u16,
    body: &str,
    service: &str,
    error_code: impl FnOnce(&serde_json::Value) -> Option<String>,
) -> Result<T, AttemptError> {
    if (200..300).contains(&status) {
        return serde_json::from_str::<T>(body).map_err(|e| {
            AttemptError::Fatal(ProviderError::BadAnswer(format!(
                "unexpected answer from {service}: {e}"
            )))
        });
    }
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| error_code(&v))
        .unwrap_or_else(|| format!("HTTP {status}"));
    if status == 429 || (500..600).contains(&status) {
        Err(AttemptError::Retryable(code))
    } else {
        Err(AttemptError::Fatal(ProviderError::Denied { code }))
    }
}

/// A request that got no answer: worth another attempt, whether it timed out or never
/// reached the service.
#[must_use]
pub fn no_answer(timed_out: bool) -> AttemptError {
    AttemptError::Retryable(
        if timed_out {
            "timed out"
        } else {
            "unreachable"
        }
        .into(),
    )
}

/// Runs `attempt` up to `attempts` times while it fails with [`AttemptError::Retryable`],
/// sleeping with exponential backoff (from 200 ms) plus up to 100 ms of jitter, and
/// never starting a sleep that would end past `budget`. Exhaustion is
/// [`ProviderError::Unavailable`].
pub async fn with_retries<T, F, Fut>(
    attempts: u32,
    budget: Duration,
    mut attempt: F,
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AttemptError>>,
{
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    let mut last = String::from("no attempt made");
    for n in 1..=attempts.max(1) {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(AttemptError::Fatal(e)) => return Err(e),
            Err(AttemptError::Retryable(reason)) => {
                last = reason;
                let jitter = Duration::from_millis(rand::random_range(0..100));
                if n == attempts || started.elapsed() + delay + jitter > budget {
                    break;
                }
                tokio::time::sleep(delay + jitter).await;
                delay = delay.saturating_mul(2);
            }
        }
    }
    Err(ProviderError::Unavailable {
        reason: last,
        retry_after: Some(Duration::from_secs(2)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Token {
        access_token: String,
    }

    fn entra_code(v: &serde_json::Value) -> Option<String> {
        v.get("error")?.as_str().map(str::to_owned)
    }

    #[test]
    fn answers_are_classified_by_status_and_carry_only_the_code() {
        let ok: Result<Token, _> =
            classify_answer(200, r#"{"access_token":"t"}"#, "sts", entra_code);
        assert!(matches!(&ok, Ok(t) if t.access_token == "t"), "{ok:?}");

        let body = r#"{"error":"invalid_grant","error_description":"subject eyJhbGc rejected"}"#;
        let denied = classify_answer::<Token>(400, body, "sts", entra_code);
        assert!(
            matches!(&denied, Err(AttemptError::Fatal(ProviderError::Denied { code })) if code == "invalid_grant"),
            "a 400 is a denial with the code only: {denied:?}"
        );
        for status in [429, 500, 503] {
            let body = r#"{"error":"temporarily_unavailable"}"#;
            let r = classify_answer::<Token>(status, body, "sts", entra_code);
            assert!(
                matches!(&r, Err(AttemptError::Retryable(code)) if code == "temporarily_unavailable"),
                "{status} is worth another attempt: {r:?}"
            );
        }
        // No code to read (not JSON, or no such member): the status stands in, not the body.
        let r =
            classify_answer::<Token>(502, "<html>bad gateway eyJhbGc</html>", "sts", entra_code);
        assert!(
            matches!(&r, Err(AttemptError::Retryable(code)) if code == "HTTP 502"),
            "{r:?}"
        );
        let r = classify_answer::<Token>(403, r#"{"message":"no"}"#, "sts", entra_code);
        assert!(
            matches!(&r, Err(AttemptError::Fatal(ProviderError::Denied { code })) if code == "HTTP 403"),
            "{r:?}"
        );
    }

    #[test]
    fn a_success_that_does_not_parse_is_final_and_names_the_service() {
        let r = classify_answer::<Token>(
            200,
            r#"{"token":"secret-value"}"#,
            "the IAM API",
            entra_code,
        );
        assert!(
            matches!(&r, Err(AttemptError::Fatal(ProviderError::BadAnswer(m)))
                if m.starts_with("unexpected answer from the IAM API: ") && !m.contains("secret-value")),
            "{r:?}"
        );
        assert!(matches!(no_answer(true), AttemptError::Retryable(r) if r == "timed out"));
        assert!(matches!(no_answer(false), AttemptError::Retryable(r) if r == "unreachable"));
    }

    #[test]
    fn secret_debug_and_display_redact() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(\"...\")");
        assert_eq!(format!("{s}"), "...");
        assert_eq!(s.expose(), "hunter2");
    }
}

/// A provider's bound on concurrent upstream calls (`max_concurrency`): a call waits up
/// to 10 s for a slot, then is answered 503 rather than queue without end.
#[derive(Debug)]
pub struct Concurrency(tokio::sync::Semaphore);

impl Concurrency {
    /// At most `max` calls at once (at least one).
    pub fn new(max: usize) -> Self {
        Self(tokio::sync::Semaphore::new(max.max(1)))
    }

    /// A slot, held until the permit is dropped; `busy` says what was busy in the 503.
    pub async fn acquire(
        &self,
        busy: &str,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, ProviderError> {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.0.acquire())
            .await
            .map_err(|_| ProviderError::Unavailable {
                reason: format!("too many concurrent {busy}"),
                retry_after: Some(std::time::Duration::from_secs(1)),
            })?
            .map_err(|_| ProviderError::Internal("closed".into()))
    }
}
