//! RFC 8693 orchestration: verify → map → target → authorize → cache → provider.
//! Nothing else lives here; HTTP is in `http/`, each stage in its own module.

pub mod dpop;
pub mod explain;
pub mod flight;
pub mod request;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_provider_api::{Confirmation, Credential, Grant, ProviderError, Secret};

use crate::clock::SharedClock;
use crate::config::Binding;
use crate::mapping::{Identity, MappingError};
use crate::policy::{AuthzInput, Decision};
use crate::record::{CacheResult, ExchangeRecord, ProviderCall};
use crate::snapshot::{Snapshot, Target};
use crate::store::{CacheKey, RateDecision, Store, Window};
use crate::verify::{VerifiedToken, VerifyError};
pub use flight::{CacheRules, Lookup, RevocationFields, SingleFlight, SingleUse};
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
    pub clock: SharedClock,
    /// In-process deduplication of identical misses.
    pub flights: SingleFlight,
    /// This replica's misuse detector: what policy reads as `context.anomalies`.
    pub anomalies: Arc<crate::anomaly::Detector>,
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
    Scope { scope: String, target: String },
    /// The target cannot issue the requested token type.
    #[error("requested_token_type `{requested}` is not available for target `{target}`")]
    TokenType {
        /// What was asked.
        requested: String,
        target: String,
    },
    /// Policy said no.
    #[error("{}", denial_message(.subject, .target, .decision))]
    Denied {
        /// The identity's subject.
        subject: String,
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
    /// The DPoP proof was refused (RFC 9449 `invalid_dpop_proof`).
    #[error("{0}")]
    DpopProof(String),
    /// The target or the subject token needs a proof of possession the request lacks.
    #[error("{0}")]
    Unbound(String),
    /// The store could not answer a check that must not be skipped.
    #[error("shared state unavailable: {0}")]
    StoreUnavailable(String),
}

impl ExchangeError {
    /// The RFC 6749 / RFC 8693 `error` code the client is sent for this error (the
    /// HTTP status and description are chosen in `http/error.rs`, over this code).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Verify(v) if v.is_unavailable() => "temporarily_unavailable",
            // RFC 8693 §2.2.2: an invalid or unacceptable subject token is invalid_request.
            Self::Verify(_)
            | Self::Mapping(_)
            | Self::TokenType { .. }
            | Self::Replay(_)
            | Self::Unbound(_) => "invalid_request",
            Self::UnknownTarget(_) | Self::Denied { .. } | Self::Revoked(_) => "invalid_target",
            // RFC 6749 §5.2.
            Self::Scope { .. } => "invalid_scope",
            Self::RateLimited(_) => "slow_down",
            Self::DpopProof(_) => "invalid_dpop_proof",
            Self::StoreUnavailable(_) => "temporarily_unavailable",
            Self::Provider(p) => match p {
                ProviderError::Denied { .. } => "invalid_target",
                ProviderError::Unavailable { .. } | ProviderError::BadAnswer(_) => {
                    "temporarily_unavailable"
                }
                ProviderError::Misconfigured(_) | ProviderError::Internal(_) => "server_error",
            },
        }
    }
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

/// Resolves the target a request names.
pub fn resolve_target(
    snap: &Snapshot,
    selector: &TargetSelector,
) -> Result<Arc<Target>, ExchangeError> {
    let id = match selector {
        TargetSelector::Audience(id) => id.as_str(),
        TargetSelector::Resource(uri) => snap
            .resources
            .get(uri)
            .map(String::as_str)
            .ok_or_else(|| ExchangeError::UnknownTarget(crate::text::echo(uri)))?,
    };
    snap.targets
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
        && target.kind == crate::config::TargetKind::Jwt
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
fn cache_key(
    target: &Target,
    identity: &Identity,
    scopes: &[String],
    confirmation: Option<&Confirmation>,
) -> CacheKey {
    let (bound_to, key) = confirmation.map_or(("", ""), Confirmation::member);
    let digest = crate::key_digest::KeyDigest::new("credential")
        .bytes(&target.cache_scope)
        .str(&identity.issuer_id)
        .str(&identity.subject)
        .set(identity.groups.iter().map(String::as_str))
        .map(&identity.attributes)
        .set(scopes.iter().map(String::as_str))
        // A bound token is only ever served to the holder of its key.
        .str(bound_to)
        .str(key)
        .finish();
    CacheKey::from_digest(digest)
}

/// The policy decision on the request, recorded; a denial is the error.
fn authorize(
    snap: &Snapshot,
    identity: &Identity,
    target: &Target,
    req: &ExchangeRequest,
    now: i64,
    anomalies: &[&'static str],
    record: &mut ExchangeRecord,
) -> Result<(), ExchangeError> {
    let input = AuthzInput {
        anomalies,
        identity,
        target_id: &target.id,
        target_kind: target.kind.as_str(),
        source_ip: req.client_ip,
        scopes: &req.scopes,
        timestamp: now,
        client_certificate: req.client_certificate.as_deref(),
    };
    let decision = snap.policy.authorize(&input);
    record.decided(&decision);
    if let Some(shadow) = &snap.shadow {
        record.shadowed(&shadow.authorize(&input));
    }
    if decision.allowed {
        Ok(())
    } else {
        Err(ExchangeError::Denied {
            subject: identity.subject.clone(),
            target: target.id.clone(),
            decision,
        })
    }
}

impl Services {
    /// Records a DPoP proof's `jti`: a proof is good once (RFC 9449 §11.1), on any
    /// replica; a record that cannot answer refuses.
    async fn first_proof(&self, proof: &dpop::Proof) -> Result<(), ExchangeError> {
        let first = self
            .store
            .first_use(&proof.replay_id(), proof.replay_ttl(self.clock.now()))
            .await
            .map_err(|e| ExchangeError::StoreUnavailable(e.to_string()))?;
        if first {
            Ok(())
        } else {
            Err(ExchangeError::DpopProof(
                "the DPoP proof was used before (`jti`): make a fresh one per request".into(),
            ))
        }
    }
}

/// The key what is minted is bound to, as the target's `binding` says; or why the
/// request lacks the proof it needs.
fn confirmation(
    target: &Target,
    req: &ExchangeRequest,
) -> Result<Option<Confirmation>, ExchangeError> {
    let jkt = req.dpop.as_ref().map(|p| Confirmation::Jkt(p.jkt.clone()));
    let x5t = req
        .client_certificate
        .as_ref()
        .map(|c| Confirmation::X5tS256(c.x5t_s256.clone()));
    match target.binding {
        Binding::None | Binding::Unknown(_) => Ok(None),
        Binding::Optional => Ok(jkt.or(x5t)),
        Binding::Dpop => jkt.map(Some).ok_or_else(|| {
            ExchangeError::DpopProof(format!(
                "target `{}` issues DPoP-bound tokens: send a DPoP proof (RFC 9449)",
                target.id
            ))
        }),
        Binding::Mtls => x5t.map(Some).ok_or_else(|| {
            ExchangeError::Unbound(format!(
                "target `{}` issues certificate-bound tokens: connect with a client certificate (mutual TLS)",
                target.id
            ))
        }),
    }
}

/// A subject token that is itself bound (`cnf`) is exchanged only with a proof of its
/// key: a DPoP proof by the same key, or the client certificate it names.
fn check_bound_subject_token(
    token: &VerifiedToken,
    req: &ExchangeRequest,
) -> Result<(), ExchangeError> {
    let Some(cnf) = token.claims().get("cnf") else {
        return Ok(());
    };
    let member = |name: &str| cnf.get(name).and_then(serde_json::Value::as_str);
    let (jkt, x5t) = (member("jkt"), member("x5t#S256"));
    if jkt.is_none() && x5t.is_none() {
        return Err(ExchangeError::Unbound(
            "subject_token has a `cnf` Ferry cannot check (neither `jkt` nor `x5t#S256`)".into(),
        ));
    }
    if let Some(jkt) = jkt
        && req.dpop.as_ref().is_none_or(|p| p.jkt != jkt)
    {
        return Err(ExchangeError::Unbound(
            "subject_token is DPoP-bound (cnf.jkt): send a DPoP proof made with its key".into(),
        ));
    }
    if let Some(x5t) = x5t
        && req
            .client_certificate
            .as_ref()
            .is_none_or(|c| c.x5t_s256 != x5t)
    {
        return Err(ExchangeError::Unbound(
            "subject_token is certificate-bound (cnf.x5t#S256): connect with the client certificate it names".into(),
        ));
    }
    Ok(())
}

/// Runs one exchange end to end: verify, map, target, authorize, then the credential
/// from the cache or the provider ([`Services::get_or_mint`]). What each stage learns
/// goes into `record`, success or not.
#[tracing::instrument(name = "exchange", skip_all)]
pub async fn exchange(
    snap: &Snapshot,
    svc: &Services,
    req: ExchangeRequest,
    record: &mut ExchangeRecord,
) -> Result<ExchangeResponse, ExchangeError> {
    record.token_sha256 = Some(req.subject_token.sha256());
    if snap.config.audit.record_identity {
        record.replay = Some(Box::new(crate::record::ReplayFacts {
            target: req.target.clone(),
            scopes: req.scopes.clone(),
            source_ip: req.client_ip,
            client_certificate: req.client_certificate.clone(),
            identity: None,
        }));
    }
    let limits = &snap.config.rate_limits;
    if let Some(limit) = limits.per_client {
        svc.admit(&format!("client:{}", req.client_ip), limit)
            .await?;
    }
    let token = match snap.verifier.verify(&req.subject_token).await {
        Ok(t) => t,
        Err(e) => {
            // Counted and audited under the configured issuer it names, if any.
            record.issuer = snap
                .verifier
                .named_issuer(&req.subject_token)
                .map(str::to_owned);
            record.unknown_kid = e.is_unknown_kid();
            return Err(e.into());
        }
    };
    record.verified(&token);
    check_bound_subject_token(&token, &req)?;
    // Recorded only for a caller with a valid subject token: anyone can make proofs, so
    // the shared record is not theirs to fill.
    if let Some(proof) = &req.dpop {
        svc.first_proof(proof).await?;
    }
    let identity = snap.mapper.map(&token)?;
    record.mapped(&identity);
    if let Some(limit) = limits.per_subject {
        svc.admit(&format!("subject:{}", identity.subject), limit)
            .await?;
    }
    let target = resolve_target(snap, &req.target)?;
    record.target = Some(target.id.clone());
    record.target_kind = Some(target.provider.kind());
    check_target_request(&target, &req.scopes, req.requested_token_type.as_deref())?;

    let now = svc.clock.now();
    // Looked up only when a policy reads them: otherwise a decision costs no lock here.
    let anomalies = if snap.reads_anomalies() {
        svc.anomalies
            .open_for(&identity.subject, now, &snap.config.anomalies)
    } else {
        Vec::new()
    };
    authorize(snap, &identity, &target, &req, now, &anomalies, record)?;

    let confirmation = confirmation(&target, &req)?;
    let fields = RevocationFields::new(
        &identity.subject,
        &target.revocation_field,
        token.sub().map(|sub| (token.issuer_id(), sub)),
        token.jti(),
    );
    let lookup = Lookup {
        key: cache_key(&target, &identity, &req.scopes, confirmation.as_ref()),
        fields: &fields,
        single_use: single_use(snap, &token, now)?,
        now,
        rules: cache_rules(snap, &target),
    };
    let mut call = None;
    let served = svc
        .get_or_mint(lookup, || async {
            let grant = grant(
                snap,
                &target,
                &identity,
                &req,
                &fields,
                confirmation.clone(),
                &record.request_id,
            )?;
            let (issued, made) = issue(&target, &grant).await;
            call = Some(made);
            Ok(issued?)
        })
        .await;
    record.provider = call;
    record.cache = match &served {
        Ok(s) if s.cache_hit => Some(CacheResult::Hit),
        _ => call.map(|_| CacheResult::Miss),
    };
    let credential = served?.credential;
    record
        .upstream_request_id
        .clone_from(&credential.upstream_request_id);
    Ok(ExchangeResponse::new(
        credential,
        &req.scopes,
        svc.clock.now(),
    ))
}

impl ExchangeResponse {
    /// The response carrying `credential`, its lifetime counted from `now`.
    fn new(credential: Credential, scopes: &[String], now: i64) -> Self {
        Self {
            expires_in: credential.expires_at.saturating_sub(now).max(0),
            access_token: credential.access_token,
            issued_token_type: credential.issued_token_type,
            token_type: credential.token_type,
            scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
            credentials: credential.fields,
        }
    }
}

/// How the cache treats the target's credentials (`[store]` and its `min_remaining`).
fn cache_rules(snap: &Snapshot, target: &Target) -> CacheRules {
    let store = &snap.config.store;
    CacheRules {
        min_remaining: i64::try_from(target.min_remaining.as_secs()).unwrap_or(i64::MAX),
        bypass: store.on_cache_error == crate::config::OnCacheError::Bypass,
        lock_ttl: store.lock_ttl.0,
        lock_wait: store.lock_wait.0,
        negative_ttl: store.negative_ttl.0,
    }
}

/// One provider call, and what it did.
async fn issue(
    target: &Target,
    grant: &Grant,
) -> (Result<Credential, ProviderError>, ProviderCall) {
    let started = std::time::Instant::now();
    let issued = target.provider.issue(grant).await;
    let outcome = match &issued {
        Ok(_) => "ok",
        Err(ProviderError::Denied { .. }) => "denied",
        Err(ProviderError::Unavailable { .. }) => "unavailable",
        Err(ProviderError::BadAnswer(_)) => "bad_answer",
        Err(_) => "error",
    };
    let seconds = started.elapsed().as_secs_f64();
    (issued, ProviderCall { outcome, seconds })
}

/// What the provider is asked for: the identity, the target's values evaluated over it,
/// and the revocation fields a Ferry-signed token carries.
fn grant(
    snap: &Snapshot,
    target: &Target,
    identity: &Identity,
    req: &ExchangeRequest,
    fields: &RevocationFields,
    confirmation: Option<Confirmation>,
    request_id: &str,
) -> Result<Grant, ExchangeError> {
    Ok(Grant {
        target_id: target.id.clone(),
        issuer_id: identity.issuer_id.clone(),
        subject: identity.subject.clone(),
        groups: identity.groups.clone(),
        attributes: identity.attributes.clone(),
        scopes: req.scopes.clone(),
        max_ttl: target.ttl,
        request_id: request_id.to_owned(),
        traceparent: req.traceparent.clone(),
        target_values: snap.mapper.eval_over_identity(&target.values, identity)?,
        revocation_fields: fields.credential().to_vec(),
        confirmation,
    })
}

/// The replay record of a single-use issuer's token (which must have a `jti`): kept for
/// the token's remaining life plus the issuer's leeway.
fn single_use(
    snap: &Snapshot,
    token: &VerifiedToken,
    now: i64,
) -> Result<Option<SingleUse>, ExchangeError> {
    if !snap.single_use_issuers.contains(token.issuer_id()) {
        return Ok(None);
    }
    let jti = token.jti().ok_or(ExchangeError::Replay(
        "the token has no `jti`, which single-use issuers require",
    ))?;
    let ttl = token
        .expires_at()
        .saturating_sub(now)
        .saturating_add(snap.leeway_of(token.issuer_id()))
        .max(1);
    Ok(Some(SingleUse {
        id: format!("{}\n{jti}", token.issuer_id()),
        ttl: Duration::from_secs(u64::try_from(ttl).unwrap_or(1)),
    }))
}

impl Services {
    /// Counts the request against a rate-limit bucket.
    async fn admit(
        &self,
        bucket: &str,
        limit: crate::config::RateLimit,
    ) -> Result<(), ExchangeError> {
        match self
            .store
            .rate_limit(
                bucket,
                Window {
                    limit: limit.requests,
                    seconds: limit.window.0.as_secs(),
                },
                self.clock.now(),
            )
            .await
        {
            Ok(RateDecision::Allowed) => Ok(()),
            Ok(RateDecision::Limited(retry_after)) => Err(ExchangeError::RateLimited(retry_after)),
            Err(e) => Err(ExchangeError::StoreUnavailable(e.to_string())),
        }
    }
}
