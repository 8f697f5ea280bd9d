//! RFC 8693 orchestration: verify → map → target → authorize → cache → provider.
//! Nothing else lives here; HTTP is in `http/`, each stage in its own module.

pub mod explain;
pub mod flight;
pub mod request;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_provider_api::{Credential, Grant, ProviderError, Secret};

use crate::clock::SharedClock;
use crate::mapping::{Identity, MappingError};
use crate::policy::{AuthzInput, Decision};
use crate::runtime::{Runtime, Target};
use crate::store::{CacheKey, Store, StoreError};
use crate::verify::VerifyError;
pub use flight::SingleFlight;
pub use request::{ExchangeRequest, RequestError, TargetSelector};

/// Token types a `jwt` target can satisfy when a client names `requested_token_type`.
const JWT_TOKEN_TYPES: &[&str] = &[
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:access_token",
];

/// What the exchange path needs besides the compiled config.
pub struct Services {
    /// Shared state.
    pub store: Arc<dyn Store>,
    /// Time.
    pub clock: SharedClock,
    /// In-process deduplication of identical misses.
    pub flights: SingleFlight,
}

/// Why an exchange failed; mapped to the wire once, in `http/`.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The subject token was refused.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The token is valid but not acceptable (condition false, mapping failed).
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// No target by that name.
    #[error("unknown target `{0}`")]
    UnknownTarget(String),
    /// Scopes outside the target's list.
    #[error("scope `{scope}` is not allowed for target `{target}`")]
    Scope {
        /// The scope.
        scope: String,
        /// The target.
        target: String,
    },
    /// The target cannot issue the requested token type.
    #[error("requested_token_type `{requested}` is not available for target `{target}`")]
    TokenType {
        /// What was asked.
        requested: String,
        /// The target.
        target: String,
    },
    /// Policy said no.
    #[error("{}", denial_message(.subject, .target, .decision))]
    Denied {
        /// The identity's subject.
        subject: String,
        /// The target.
        target: String,
        /// The decision, with its determining policies.
        decision: Decision,
    },
    /// The provider failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

fn denial_message(subject: &str, target: &str, decision: &Decision) -> String {
    if !decision.errors.is_empty() {
        format!("target `{target}` denied for `{subject}`: a policy could not be evaluated")
    } else if decision.policy_ids.is_empty() {
        format!("no policy permits `{subject}` to exchange for target `{target}`")
    } else {
        format!(
            "target `{target}` denied for `{subject}` by policy {}",
            decision
                .policy_ids
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// RFC 8693 §2.2.1 success response.
#[derive(Debug, Clone)]
pub struct ExchangeResponse {
    /// The primary bearer string.
    pub access_token: Secret,
    /// What it is.
    pub issued_token_type: String,
    /// `Bearer` or `N_A`.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// Granted scopes, if any.
    pub scope: Option<String>,
    /// The provider's full credential object.
    pub credentials: BTreeMap<String, Secret>,
}

/// A successful exchange and the facts the audit trail and logs need.
#[derive(Debug)]
pub struct ExchangeOutcome {
    /// What the client receives.
    pub response: ExchangeResponse,
    /// Who got it.
    pub identity: Identity,
    /// Why.
    pub decision: Decision,
    /// Which target.
    pub target: String,
    /// Whether it came from the cache.
    pub cache_hit: bool,
    /// The upstream request id of the call that minted it.
    pub upstream_request_id: Option<String>,
}

/// What became known about a request as it went through the stages, success or not:
/// the audit trail and metrics read it after the exchange returns.
#[derive(Debug, Clone, Default)]
pub struct ExchangeTrace {
    /// The issuer id, once the token verified.
    pub issuer: Option<String>,
    /// The token's `sub`, once verified.
    pub token_sub: Option<String>,
    /// SHA-256 of the presented token.
    pub token_sha256: Option<String>,
    /// The canonical subject, once mapped.
    pub subject: Option<String>,
    /// The target id, once resolved to a configured target.
    pub target: Option<String>,
    /// The target's kind.
    pub target_kind: Option<String>,
    /// Policies that determined the decision.
    pub policy_ids: Vec<String>,
    /// `allow`, `deny` or `error`, once policy ran.
    pub policy_decision: Option<&'static str>,
    /// Provider call latency, when there was one.
    pub provider_seconds: Option<f64>,
    /// Provider call outcome, when there was one.
    pub provider_outcome: Option<&'static str>,
}

/// Resolves the target a request names.
pub fn resolve_target(
    rt: &Runtime,
    selector: &TargetSelector,
) -> Result<Arc<Target>, ExchangeError> {
    let id = match selector {
        TargetSelector::Audience(id) => id.as_str(),
        TargetSelector::Resource(uri) => {
            rt.resources.get(uri).map(String::as_str).ok_or_else(|| {
                ExchangeError::UnknownTarget(crate::verify::jwks::truncate(uri, 200).to_owned())
            })?
        }
    };
    rt.targets.get(id).cloned().ok_or_else(|| {
        ExchangeError::UnknownTarget(crate::verify::jwks::truncate(id, 200).to_owned())
    })
}

/// Checks requested scopes and token type against the target.
pub fn check_target_request(
    target: &Target,
    scopes: &[String],
    requested_token_type: Option<&str>,
) -> Result<(), ExchangeError> {
    if let Some(scope) = scopes.iter().find(|s| !target.scopes.contains(s)) {
        return Err(ExchangeError::Scope {
            scope: scope.clone(),
            target: target.id.clone(),
        });
    }
    if let Some(requested) = requested_token_type
        && target.kind == "jwt"
        && !JWT_TOKEN_TYPES.contains(&requested)
    {
        return Err(ExchangeError::TokenType {
            requested: crate::verify::jwks::truncate(requested, 100).to_owned(),
            target: target.id.clone(),
        });
    }
    Ok(())
}

/// The cache key: everything that makes two requests interchangeable.
fn cache_key(rt: &Runtime, target: &Target, identity: &Identity, scopes: &[String]) -> CacheKey {
    let mut sorted_scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    sorted_scopes.sort_unstable();
    let scopes_joined = sorted_scopes.join(" ");
    let groups_joined = {
        let mut g: Vec<&str> = identity.groups.iter().map(String::as_str).collect();
        g.sort_unstable();
        g.join("\n")
    };
    let mut parts: Vec<&str> = vec![
        "credential",
        &rt.revision,
        &target.id,
        &identity.issuer_id,
        &identity.subject,
        &groups_joined,
        &scopes_joined,
    ];
    for (k, v) in &identity.attributes {
        parts.push(k);
        parts.push(v);
    }
    CacheKey::from_parts(parts)
}

/// Runs one exchange end to end.
#[tracing::instrument(skip_all, fields(issuer, subject, target, cache))]
pub async fn exchange(
    rt: &Runtime,
    svc: &Services,
    req: ExchangeRequest,
    request_id: &str,
    trace: &mut ExchangeTrace,
) -> Result<ExchangeOutcome, ExchangeError> {
    let span = tracing::Span::current();
    trace.token_sha256 = Some(req.subject_token.sha256());
    let token = rt.verifier.verify(&req.subject_token).await?;
    span.record("issuer", token.issuer_id());
    trace.issuer = Some(token.issuer_id().to_owned());
    trace.token_sub = token.sub().map(str::to_owned);
    let identity = rt.mapper.map(&token)?;
    span.record("subject", identity.subject.as_str());
    trace.subject = Some(identity.subject.clone());
    let target = resolve_target(rt, &req.target)?;
    span.record("target", target.id.as_str());
    trace.target = Some(target.id.clone());
    trace.target_kind = Some(target.kind.clone());
    check_target_request(&target, &req.scopes, req.requested_token_type.as_deref())?;

    let now = svc.clock.now();
    let decision = rt.policy.authorize(&AuthzInput {
        identity: &identity,
        target_id: &target.id,
        target_kind: &target.kind,
        source_ip: req.client_ip,
        scopes: &req.scopes,
        timestamp: now,
    });
    trace.policy_ids = decision.policy_ids.clone();
    trace.policy_decision = Some(if decision.allowed {
        "allow"
    } else if decision.errors.is_empty() {
        "deny"
    } else {
        "error"
    });
    if !decision.allowed {
        return Err(ExchangeError::Denied {
            subject: identity.subject.clone(),
            target: target.id.clone(),
            decision,
        });
    }

    let key = cache_key(rt, &target, &identity, &req.scopes);
    let min_remaining = i64::try_from(target.min_remaining.as_secs()).unwrap_or(i64::MAX);
    if let Some(credential) = cached(svc, &key, min_remaining).await {
        span.record("cache", "hit");
        return Ok(outcome(
            svc,
            credential,
            identity,
            decision,
            &target,
            &req.scopes,
            true,
        ));
    }

    // Single flight: the first miss mints; the others wait and read its result.
    let lock = svc.flights.lock_for(key.as_str());
    let _guard = lock.lock().await;
    if let Some(credential) = cached(svc, &key, min_remaining).await {
        span.record("cache", "hit");
        return Ok(outcome(
            svc,
            credential,
            identity,
            decision,
            &target,
            &req.scopes,
            true,
        ));
    }
    span.record("cache", "miss");
    let grant = Grant {
        target_id: target.id.clone(),
        issuer_id: identity.issuer_id.clone(),
        subject: identity.subject.clone(),
        groups: identity.groups.clone(),
        attributes: identity.attributes.clone(),
        scopes: req.scopes.clone(),
        max_ttl: target.ttl,
        request_id: request_id.to_owned(),
        traceparent: req.traceparent.clone(),
    };
    let started = std::time::Instant::now();
    let issued = target.provider.issue(&grant).await;
    trace.provider_seconds = Some(started.elapsed().as_secs_f64());
    trace.provider_outcome = Some(match &issued {
        Ok(_) => "ok",
        Err(ProviderError::Denied { .. }) => "denied",
        Err(ProviderError::Unavailable { .. }) => "unavailable",
        Err(_) => "error",
    });
    let credential = issued?;
    let usable_for = credential
        .expires_at
        .saturating_sub(svc.clock.now())
        .saturating_sub(min_remaining);
    if usable_for > 0 {
        let ttl = Duration::from_secs(u64::try_from(usable_for).unwrap_or(0));
        if let Err(StoreError::Unavailable(e)) =
            svc.store.put_credential(&key, &credential, ttl).await
        {
            tracing::warn!(error = %e, "credential cache unavailable; not cached");
        }
    }
    Ok(outcome(
        svc,
        credential,
        identity,
        decision,
        &target,
        &req.scopes,
        false,
    ))
}

async fn cached(svc: &Services, key: &CacheKey, min_remaining: i64) -> Option<Credential> {
    tracing::trace!(key = %key.as_str().get(..16).unwrap_or(""), "credential cache lookup");
    match svc.store.get_credential(key).await {
        Ok(Some(c)) if c.expires_at.saturating_sub(svc.clock.now()) >= min_remaining => Some(c),
        Ok(_) => None,
        Err(e) => {
            // A cache that is down is bypassed, never trusted (DESIGN §4).
            tracing::warn!(error = %e, "credential cache unavailable; bypassing");
            None
        }
    }
}

fn outcome(
    svc: &Services,
    credential: Credential,
    identity: Identity,
    decision: Decision,
    target: &Target,
    scopes: &[String],
    cache_hit: bool,
) -> ExchangeOutcome {
    let expires_in = credential.expires_at.saturating_sub(svc.clock.now()).max(0);
    let upstream_request_id = credential.upstream_request_id.clone();
    ExchangeOutcome {
        response: ExchangeResponse {
            access_token: credential.access_token,
            issued_token_type: credential.issued_token_type,
            token_type: credential.token_type,
            expires_in,
            scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
            credentials: credential.fields,
        },
        identity,
        decision,
        target: target.id.clone(),
        cache_hit,
        upstream_request_id,
    }
}
