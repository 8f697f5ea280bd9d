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
use crate::store::{CacheKey, RateDecision, RevocationTarget, Store};
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
    /// Too many requests for this subject or client.
    #[error("rate limit exceeded; retry in {0}s")]
    RateLimited(u64),
    /// A single-use token presented again (or without `jti`).
    #[error("{0}")]
    Replay(&'static str),
    /// A revocation covers this request.
    #[error("{0}")]
    Revoked(String),
    /// The store could not answer a check that must not be skipped.
    #[error("shared state unavailable: {0}")]
    StoreUnavailable(String),
}

fn denial_message(subject: &str, target: &str, decision: &Decision) -> String {
    // The subject is mapped from claims (at most 256 bytes, but any characters).
    let subject = crate::text::escape_control(subject);
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
        TargetSelector::Resource(uri) => rt
            .resources
            .get(uri)
            .map(String::as_str)
            .ok_or_else(|| ExchangeError::UnknownTarget(crate::text::echo(uri)))?,
    };
    rt.targets
        .get(id)
        .cloned()
        .ok_or_else(|| ExchangeError::UnknownTarget(crate::text::echo(id)))
}

/// Checks requested scopes and token type against the target.
pub fn check_target_request(
    target: &Target,
    scopes: &[String],
    requested_token_type: Option<&str>,
) -> Result<(), ExchangeError> {
    if let Some(scope) = scopes.iter().find(|s| !target.scopes.contains(s)) {
        return Err(ExchangeError::Scope {
            scope: crate::text::echo(scope),
            target: target.id.clone(),
        });
    }
    if let Some(requested) = requested_token_type
        && target.kind == "jwt"
        && !JWT_TOKEN_TYPES.contains(&requested)
    {
        return Err(ExchangeError::TokenType {
            requested: crate::text::echo(requested),
            target: target.id.clone(),
        });
    }
    Ok(())
}

/// The cache key: everything that determines the credential — the target's own
/// configuration (with Ferry's public URL and active signing key,
/// [`Target::cache_scope`]), the identity and the scopes — and nothing else, so a reload
/// that leaves the target alone keeps its cache, and replicas with equal targets share
/// one. Policy is not in it: every request is authorized before the cache is read.
fn cache_key(target: &Target, identity: &Identity, scopes: &[String]) -> CacheKey {
    let digest = crate::key_digest::KeyDigest::new("credential")
        .bytes(&target.cache_scope)
        .str(&identity.issuer_id)
        .str(&identity.subject)
        .set(identity.groups.iter().map(String::as_str))
        .map(&identity.attributes)
        .set(scopes.iter().map(String::as_str))
        .finish();
    CacheKey::from_digest(digest)
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
    let limits = &rt.config.rate_limits;
    if let Some(limit) = limits.per_client {
        rate_limit(svc, &format!("client:{}", req.client_ip), limit).await?;
    }
    let token = rt.verifier.verify(&req.subject_token).await?;
    span.record("issuer", token.issuer_id());
    trace.issuer = Some(token.issuer_id().to_owned());
    trace.token_sub = token.sub().map(str::to_owned);
    let identity = rt.mapper.map(&token)?;
    span.record("subject", identity.subject.as_str());
    trace.subject = Some(identity.subject.clone());
    if let Some(limit) = limits.per_subject {
        rate_limit(svc, &format!("subject:{}", identity.subject), limit).await?;
    }
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

    // Revocation: asked of the store on every exchange (Redis answers from a local copy
    // only while that is provably at most `revocation_max_lag` old); if it cannot be
    // answered, the answer is no (DESIGN §4).
    // In this order: the first two or three also cover the credential minted below.
    let mut fields = Vec::with_capacity(4);
    fields.push(RevocationTarget::subject_field(&identity.subject));
    fields.push(target.revocation_field.clone());
    fields.extend(
        token
            .sub()
            .map(|sub| RevocationTarget::issuer_sub_field(token.issuer_id(), sub)),
    );
    if let Some(jti) = token.jti() {
        fields.push(RevocationTarget::jti_field(jti));
    }
    let key = cache_key(&target, &identity, &req.scopes);
    let min_remaining = i64::try_from(target.min_remaining.as_secs()).unwrap_or(i64::MAX);
    let bypass = rt.config.store.on_cache_error == "bypass";
    // The revocation check and the cache read go out together (one round trip of
    // latency on a multiplexed connection); a cached credential is used only if the
    // revocation check, and then the replay check, pass.
    let (revoked, cached_credential) = svc.store.revoked_and_cached(&fields, now, &key).await;
    let cached_credential = usable(svc, cached_credential, min_remaining, bypass);
    match revoked {
        Ok(None) => {}
        Ok(Some(r)) => return Err(ExchangeError::Revoked(describe_revocation(&r.target))),
        Err(e) => return Err(ExchangeError::StoreUnavailable(e.to_string())),
    }

    // Replay: a single-use issuer's token is accepted once, on any replica.
    if rt.single_use_issuers.contains(token.issuer_id()) {
        let jti = token.jti().ok_or(ExchangeError::Replay(
            "the token has no `jti`, which single-use issuers require",
        ))?;
        let ttl = token
            .expires_at()
            .saturating_sub(now)
            .saturating_add(rt.leeway_of(token.issuer_id()))
            .max(1);
        let id = format!("{}\n{jti}", token.issuer_id());
        match svc
            .store
            .first_use(&id, Duration::from_secs(u64::try_from(ttl).unwrap_or(1)))
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(ExchangeError::Replay("the token has already been used")),
            Err(e) => return Err(ExchangeError::StoreUnavailable(e.to_string())),
        }
    }

    let hit = |c: Credential, identity: Identity, decision: Decision| {
        span.record("cache", "hit");
        Ok(outcome(
            svc,
            c,
            identity,
            decision,
            &target,
            &req.scopes,
            true,
        ))
    };
    if let Some(credential) = cached_credential? {
        return hit(credential, identity, decision);
    }
    match svc.store.get_denial(&key).await {
        Ok(Some(code)) => return Err(ExchangeError::Provider(ProviderError::Denied { code })),
        Ok(None) => {}
        Err(e) if !bypass => return Err(ExchangeError::StoreUnavailable(e.to_string())),
        Err(_) => {}
    }

    // Single flight: in this process first, then across replicas through the store.
    let local = svc.flights.lock_for(key.as_str());
    let _local = local.lock().await;
    if let Some(credential) = cached(svc, &key, min_remaining, bypass).await? {
        return hit(credential, identity, decision);
    }
    let lock_ttl = rt.config.store.lock_ttl.0;
    let wait_until = std::time::Instant::now() + rt.config.store.lock_wait.0;
    let lock_token = loop {
        match svc.store.try_lock(&key, lock_ttl).await {
            Ok(Some(t)) => break Some(t),
            Ok(None) => {}
            Err(e) if !bypass => return Err(ExchangeError::StoreUnavailable(e.to_string())),
            Err(_) => break None,
        }
        // Another replica is minting: wait for its result, or for its lock to lapse.
        loop {
            if std::time::Instant::now() >= wait_until {
                return Err(ExchangeError::StoreUnavailable(
                    "another replica is minting this credential; retry".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(credential) = cached(svc, &key, min_remaining, bypass).await? {
                return hit(credential, identity, decision);
            }
            if let Ok(Some(code)) = svc.store.get_denial(&key).await {
                return Err(ExchangeError::Provider(ProviderError::Denied { code }));
            }
            match svc.store.is_locked(&key).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(ExchangeError::StoreUnavailable(e.to_string())),
            }
        }
        if let Some(credential) = cached(svc, &key, min_remaining, bypass).await? {
            return hit(credential, identity, decision);
        }
    };
    // Covered by the same subject, target and issuer/sub revocations as the request
    // (not its subject token's `jti`: a revoked subject token is refused above), and by a
    // revocation of the credential's own id.
    let identity_fields = fields
        .get(..if token.sub().is_some() { 3 } else { 2 })
        .unwrap_or(&fields);
    let minted = mint(
        rt,
        svc,
        (&target, &identity, &req),
        identity_fields,
        &key,
        request_id,
        trace,
    )
    .await;
    if let Ok(credential) = &minted {
        let covered_by = crate::store::covering_fields(identity_fields, credential);
        let usable_for = credential
            .expires_at
            .saturating_sub(svc.clock.now())
            .saturating_sub(min_remaining);
        if usable_for > 0 {
            let ttl = Duration::from_secs(u64::try_from(usable_for).unwrap_or(0));
            if let Err(e) = svc
                .store
                .put_credential(&key, credential, ttl, &covered_by)
                .await
            {
                tracing::warn!(error = %e, "credential cache unavailable; not cached");
            }
        }
    }
    // Released only once the result is cached (or the denial remembered, in `mint`): a
    // waiter that sees the lock gone reads the cache next, and must find the credential
    // there rather than take the lock and mint a second one.
    if let Some(t) = lock_token
        && let Err(e) = svc.store.unlock(&key, &t).await
    {
        tracing::warn!(error = %e, "could not release the mint lock; it expires by itself");
    }
    let credential = minted?;
    span.record("cache", "miss");
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

async fn mint(
    rt: &Runtime,
    svc: &Services,
    (target, identity, req): (&Target, &Identity, &ExchangeRequest),
    revocation_fields: &[String],
    key: &CacheKey,
    request_id: &str,
    trace: &mut ExchangeTrace,
) -> Result<Credential, ExchangeError> {
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
        target_values: rt.mapper.eval_over_identity(&target.values, identity)?,
        revocation_fields: revocation_fields.to_vec(),
    };
    let started = std::time::Instant::now();
    let issued = target.provider.issue(&grant).await;
    trace.provider_seconds = Some(started.elapsed().as_secs_f64());
    trace.provider_outcome = Some(match &issued {
        Ok(_) => "ok",
        Err(ProviderError::Denied { .. }) => "denied",
        Err(ProviderError::Unavailable { .. }) => "unavailable",
        Err(ProviderError::BadAnswer(_)) => "bad_answer",
        Err(_) => "error",
    });
    if let Err(ProviderError::Denied { code }) = &issued
        && let Err(e) = svc
            .store
            .put_denial(key, code, rt.config.store.negative_ttl.0)
            .await
    {
        tracing::warn!(error = %e, "could not cache the upstream denial");
    }
    Ok(issued?)
}

fn describe_revocation(t: &RevocationTarget) -> String {
    match t {
        RevocationTarget::Subject { subject } => format!(
            "subject `{}` has been revoked",
            crate::text::escape_control(subject)
        ),
        RevocationTarget::IssuerSub { issuer, .. } => {
            format!("this token's subject at issuer `{issuer}` has been revoked")
        }
        RevocationTarget::Jti { .. } => "this token has been revoked".into(),
        RevocationTarget::Target { target } => format!("target `{target}` has been revoked"),
    }
}

async fn rate_limit(
    svc: &Services,
    bucket: &str,
    limit: crate::config::RateLimit,
) -> Result<(), ExchangeError> {
    match svc
        .store
        .rate_limit(
            bucket,
            limit.requests,
            limit.window.0.as_secs(),
            svc.clock.now(),
        )
        .await
    {
        Ok(RateDecision::Allowed) => Ok(()),
        Ok(RateDecision::Limited(retry_after)) => Err(ExchangeError::RateLimited(retry_after)),
        Err(e) => Err(ExchangeError::StoreUnavailable(e.to_string())),
    }
}

/// A cached credential with at least `min_remaining` left. A store error is a miss when
/// `bypass` is set (a cache that is down is bypassed, never trusted), else a 503.
async fn cached(
    svc: &Services,
    key: &CacheKey,
    min_remaining: i64,
    bypass: bool,
) -> Result<Option<Credential>, ExchangeError> {
    tracing::trace!(key = %key.as_str().get(..16).unwrap_or(""), "credential cache lookup");
    usable(
        svc,
        svc.store.get_credential(key).await,
        min_remaining,
        bypass,
    )
}

/// Judges a cache answer: see [`cached`].
fn usable(
    svc: &Services,
    answer: Result<Option<Credential>, crate::store::StoreError>,
    min_remaining: i64,
    bypass: bool,
) -> Result<Option<Credential>, ExchangeError> {
    match answer {
        Ok(Some(c)) if c.expires_at.saturating_sub(svc.clock.now()) >= min_remaining => Ok(Some(c)),
        Ok(_) => Ok(None),
        Err(e) if bypass => {
            tracing::warn!(error = %e, "credential cache unavailable; bypassing");
            Ok(None)
        }
        Err(e) => Err(ExchangeError::StoreUnavailable(e.to_string())),
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
