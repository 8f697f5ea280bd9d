//! [`ExchangeRecord`]: one value per token-exchange decision. The exchange fills it in as
//! the request passes each stage; `http/observe.rs` turns it into the audit line, the
//! metrics and the request's log line. A capability that needs per-decision facts reads
//! this record rather than collecting its own copy.

use std::net::IpAddr;
use std::time::Instant;

use std::sync::Arc;

use crate::exchange::TargetSelector;
use crate::mapping::Identity;
use crate::policy::Decision;
use crate::verify::VerifiedToken;

/// Whether a granted credential came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the cache (this replica's, or one another replica just minted).
    Hit,
    /// The provider was called for it.
    Miss,
}

impl CacheResult {
    /// The label in metrics, the audit trail and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }
}

/// The upstream call a cache miss made.
#[derive(Debug, Clone, Copy)]
pub struct ProviderCall {
    /// `ok`, `denied`, `unavailable`, `bad_answer` or `error`.
    pub outcome: &'static str,
    /// How long the call took.
    pub seconds: f64,
}

/// Why the request was refused: the RFC 6749 error code and the description the client
/// was sent.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The `error` member (`invalid_grant`, `access_denied`, …).
    pub code: &'static str,
    /// The `error_description` member.
    pub description: String,
}

/// What the shadow policy set (`[policy] shadow_files`) decided beside the enforced one.
#[derive(Debug, Clone)]
pub struct ShadowDecision {
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// The shadow policies that determined it.
    pub policy_ids: Vec<String>,
}

/// With `[audit] record_identity`: what `ferry impact` needs to replay the decision from
/// the mapping on — the request as sent and, once mapped, the identity. Never the token
/// or its claims.
#[derive(Debug, Clone)]
pub struct ReplayFacts {
    /// The target as the request named it.
    pub target: TargetSelector,
    pub scopes: Vec<String>,
    /// The address policy saw as `context.source_ip`.
    pub source_ip: IpAddr,
    pub client_certificate: Option<Arc<crate::tls::ClientCertificate>>,
    /// The mapped identity, once mapping ran.
    pub identity: Option<Identity>,
}

/// Who asked for what, what was decided and why, and what it cost. Fields are `None`
/// until the stage that learns them has run: a request refused at verification has no
/// subject.
#[derive(Debug, Clone)]
pub struct ExchangeRecord {
    /// The request's `x-request-id`.
    pub request_id: String,
    /// The peer address the request came from.
    pub client_ip: IpAddr,
    /// The config revision that decided.
    pub revision: String,
    /// When the handler started on the request.
    pub started: Instant,
    /// SHA-256 (hex) of the presented subject token, once one was parsed from the form.
    pub token_sha256: Option<String>,
    /// The trusted issuer's id: once the token verified, or the configured issuer a
    /// refused token names in its `iss`.
    pub issuer: Option<String>,
    /// The verified token's `sub`.
    pub token_sub: Option<String>,
    /// The canonical subject the mapping produced.
    pub subject: Option<String>,
    /// The configured target the request resolved to.
    pub target: Option<String>,
    /// That target's kind (`aws`, `gcp`, `azure`, `jwt`).
    pub target_kind: Option<&'static str>,
    /// The policies that determined the decision.
    pub policy_ids: Vec<String>,
    /// `allow`, `deny` or `error` (a policy could not be evaluated), once policy ran.
    pub policy_decision: Option<&'static str>,
    /// Where the credential came from, once the cache was consulted for it.
    pub cache: Option<CacheResult>,
    /// The provider call, on a miss.
    pub provider: Option<ProviderCall>,
    /// The upstream's id for the call that minted the credential.
    pub upstream_request_id: Option<String>,
    /// SHA-256 (hex) of the credential handed out.
    pub credential_sha256: Option<String>,
    /// Set when the request was refused.
    pub refusal: Option<Refusal>,
    /// The shadow set's decision, when there is one and policy ran.
    pub shadow: Option<ShadowDecision>,
    /// With `[audit] record_identity`: the facts a replay needs.
    pub replay: Option<Box<ReplayFacts>>,
    /// The token was refused for naming a key id its issuer does not publish.
    pub unknown_kid: bool,
}

/// `allow`, `deny` or `error` (a policy could not be evaluated).
fn decision_label(decision: &Decision) -> &'static str {
    if decision.allowed {
        "allow"
    } else if decision.errors.is_empty() {
        "deny"
    } else {
        "error"
    }
}

impl ExchangeRecord {
    /// The record of a request that has just arrived.
    pub fn start(request_id: String, client_ip: IpAddr, revision: String) -> Self {
        Self {
            request_id,
            client_ip,
            revision,
            started: Instant::now(),
            token_sha256: None,
            issuer: None,
            token_sub: None,
            subject: None,
            target: None,
            target_kind: None,
            policy_ids: Vec::new(),
            policy_decision: None,
            cache: None,
            provider: None,
            upstream_request_id: None,
            credential_sha256: None,
            refusal: None,
            shadow: None,
            replay: None,
            unknown_kid: false,
        }
    }

    /// Notes the verified token's issuer and `sub`.
    pub fn verified(&mut self, token: &VerifiedToken) {
        self.issuer = Some(token.issuer_id().to_owned());
        self.token_sub = token.sub().map(str::to_owned);
    }

    /// Notes the mapped identity's subject (and, when replay facts are recorded, the
    /// whole identity).
    pub fn mapped(&mut self, identity: &Identity) {
        self.subject = Some(identity.subject.clone());
        if let Some(replay) = &mut self.replay {
            replay.identity = Some(identity.clone());
        }
    }

    /// Notes the policy decision.
    pub fn decided(&mut self, decision: &Decision) {
        self.policy_ids.clone_from(&decision.policy_ids);
        self.policy_decision = Some(decision_label(decision));
    }

    /// Notes the shadow set's decision.
    pub fn shadowed(&mut self, decision: &Decision) {
        self.shadow = Some(ShadowDecision {
            decision: decision_label(decision),
            policy_ids: decision.policy_ids.clone(),
        });
    }

    /// `allow_to_deny` or `deny_to_allow` when the shadow set decided otherwise than the
    /// enforced one (an evaluation error counts as a deny).
    pub fn shadow_disagreement(&self) -> Option<&'static str> {
        let shadow = self.shadow.as_ref()?;
        let enforced = self.policy_decision? == "allow";
        match (enforced, shadow.decision == "allow") {
            (true, false) => Some("allow_to_deny"),
            (false, true) => Some("deny_to_allow"),
            _ => None,
        }
    }

    /// `granted`, or the refusal's error code: the `outcome` label.
    pub fn outcome(&self) -> &'static str {
        self.refusal.as_ref().map_or("granted", |r| r.code)
    }

    /// True when a credential was handed out.
    pub fn granted(&self) -> bool {
        self.refusal.is_none()
    }
}
