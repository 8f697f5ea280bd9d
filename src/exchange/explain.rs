//! `ferry explain`: run every stage of an exchange and report each outcome, issuing
//! nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{ExchangeError, TargetSelector, check_target_request, resolve_target};
use crate::mapping::Identity;
use crate::policy::{AuthzInput, Decision};
use crate::snapshot::Snapshot;
use crate::verify::UnverifiedToken;

/// What to explain.
#[derive(Debug)]
pub enum ExplainInput {
    /// A real token: the signature is checked (keys are fetched if needed).
    Token(UnverifiedToken),
    /// Claims only: every check but the signature.
    Claims(Map<String, Value>),
}

/// One stage's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// Stage name.
    pub stage: &'static str,
    /// `pass`, `fail` or `skipped`.
    pub outcome: &'static str,
    /// Why, in words.
    pub detail: String,
    /// Facts (identity, policy ids, …).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainReport {
    /// Whether the exchange would be allowed.
    pub allowed: bool,
    /// The RFC 6749 `error` code a refusal would be sent with (`invalid_target`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// False when explaining claims without a signature.
    pub signature_checked: bool,
    /// Config revision the answer is for.
    pub revision: String,
    /// Every stage in order.
    pub stages: Vec<Stage>,
}

fn stage(
    stage: &'static str,
    outcome: &'static str,
    detail: impl Into<String>,
    data: Value,
) -> Stage {
    Stage {
        stage,
        outcome,
        detail: detail.into(),
        data,
    }
}

/// Marks the stages `from` as skipped after a failure.
fn skipped(stages: &mut Vec<Stage>, from: &[&'static str]) {
    for name in from {
        stages.push(stage(
            name,
            "skipped",
            "an earlier stage failed",
            Value::Null,
        ));
    }
}

/// Runs verify, map, target and policy for `input`, reporting each.
pub async fn explain(snap: &Snapshot, input: ExplainInput, request: &Request<'_>) -> ExplainReport {
    let mut stages = Vec::new();
    let signature_checked = matches!(input, ExplainInput::Token(_));
    let finish = |mut stages: Vec<Stage>, from: &[&'static str], error: Option<ExchangeError>| {
        skipped(&mut stages, from);
        ExplainReport {
            allowed: error.is_none(),
            error: error.as_ref().map(ExchangeError::code),
            signature_checked,
            revision: snap.revision.clone(),
            stages,
        }
    };

    let verified = match input {
        ExplainInput::Token(t) => snap.verifier.verify(&t).await,
        ExplainInput::Claims(c) => snap.verifier.check_claims_without_signature(c),
    };
    let token = match verified {
        Ok(t) => {
            let detail = if t.signature_checked() {
                format!(
                    "signature, issuer, audience and lifetime valid (issuer `{}`)",
                    t.issuer_id()
                )
            } else {
                format!(
                    "signature not checked; issuer, audience and lifetime valid (issuer `{}`)",
                    t.issuer_id()
                )
            };
            stages.push(stage(
                "verify",
                "pass",
                detail,
                json!({"issuer": t.issuer_id(), "sub": t.sub(), "exp": t.expires_at()}),
            ));
            t
        }
        Err(e) => {
            stages.push(stage("verify", "fail", e.to_string(), Value::Null));
            return finish(
                stages,
                &["mapping", "target", "policy", "values"],
                Some(e.into()),
            );
        }
    };

    let identity = match snap.mapper.map(&token) {
        Ok(i) => {
            stages.push(stage(
                "mapping",
                "pass",
                format!("condition true; subject `{}`", i.subject),
                json!({"subject": i.subject, "groups": i.groups, "attributes": i.attributes}),
            ));
            i
        }
        Err(e) => {
            stages.push(stage("mapping", "fail", e.to_string(), Value::Null));
            return finish(stages, &["target", "policy", "values"], Some(e.into()));
        }
    };

    let decided = from_identity(snap, &identity, request);
    stages.extend(decided.stages);
    ExplainReport {
        allowed: decided.verdict.allowed,
        error: decided.verdict.error,
        signature_checked,
        revision: snap.revision.clone(),
        stages,
    }
}

/// What a decision is made on besides the identity.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub target: &'a TargetSelector,
    pub scopes: &'a [String],
    /// What policy sees as `context.source_ip`.
    pub source_ip: IpAddr,
    pub client_certificate: Option<&'a crate::tls::ClientCertificate>,
    /// What policy sees as `context.timestamp`.
    pub timestamp: i64,
    /// What policy sees as `context.anomalies` (kind names, sorted).
    pub anomalies: &'a [&'static str],
}

/// The outcome of the stages after mapping, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    /// The RFC 6749 `error` code of a refusal.
    pub error: Option<&'static str>,
    /// The stage that refused (`target`, `policy`, `values`).
    pub denied_at: Option<&'static str>,
    /// Why, in words: the refusing stage's detail, or which policies permitted.
    pub reason: String,
    /// The target the request resolved to.
    pub target: Option<String>,
    /// The policies that determined the decision, sorted.
    pub policy_ids: Vec<String>,
    /// The target values an allowed request would send the provider (session tags, …).
    pub values: BTreeMap<String, String>,
    /// The shadow set's decision, when there is one and policy ran.
    pub shadow: Option<Decision>,
}

/// The stages after mapping, and their verdict.
pub struct Decided {
    pub stages: Vec<Stage>,
    pub verdict: Verdict,
}

/// Runs target, policy and target values for an identity already mapped: the rest of
/// `explain`, and what `ferry impact` replays a recorded decision with.
pub fn from_identity(snap: &Snapshot, identity: &Identity, request: &Request<'_>) -> Decided {
    let mut stages = Vec::new();
    let mut verdict = Verdict {
        allowed: false,
        error: None,
        denied_at: None,
        reason: String::new(),
        target: None,
        policy_ids: Vec::new(),
        values: BTreeMap::new(),
        shadow: None,
    };
    let refuse = |mut stages: Vec<Stage>,
                  mut verdict: Verdict,
                  at: &'static str,
                  from: &[&'static str],
                  error: &ExchangeError| {
        skipped(&mut stages, from);
        verdict.error = Some(error.code());
        verdict.denied_at = Some(at);
        // The policy stage's detail may carry the shadow set's verdict; its reason is
        // set without it.
        if at != "policy"
            && let Some(s) = stages.iter().find(|s| s.stage == at)
        {
            verdict.reason.clone_from(&s.detail);
        }
        Decided { stages, verdict }
    };
    let scopes = request.scopes;
    let target = match resolve_target(snap, request.target).and_then(|t| {
        check_target_request(&t, scopes, None)?;
        Ok::<_, ExchangeError>(t)
    }) {
        Ok(t) => {
            stages.push(stage(
                "target",
                "pass",
                format!("target `{}` (kind `{}`)", t.id, t.kind),
                json!({"id": t.id, "kind": t.kind.as_str(), "scopes": scopes}),
            ));
            verdict.target = Some(t.id.clone());
            t
        }
        Err(e) => {
            stages.push(stage("target", "fail", e.to_string(), Value::Null));
            return refuse(stages, verdict, "target", &["policy", "values"], &e);
        }
    };

    let input = AuthzInput {
        anomalies: request.anomalies,
        identity,
        target_id: &target.id,
        target_kind: target.kind.as_str(),
        source_ip: request.source_ip,
        client_certificate: request.client_certificate,
        scopes,
        timestamp: request.timestamp,
    };
    let decision = snap.policy.authorize(&input);
    let shadow = snap.shadow.as_ref().map(|s| s.authorize(&input));
    let mut detail = if decision.allowed {
        format!("permitted by {}", decision.policy_ids.join(", "))
    } else if !decision.errors.is_empty() {
        format!(
            "denied: policy evaluation failed: {}",
            decision.errors.join("; ")
        )
    } else if decision.policy_ids.is_empty() {
        "denied: no policy permits this identity for this target".to_owned()
    } else {
        format!("denied by {}", decision.policy_ids.join(", "))
    };
    let allowed = decision.allowed;
    verdict.reason.clone_from(&detail);
    let mut data = json!({"policy_ids": decision.policy_ids, "errors": decision.errors});
    if let Some(shadow) = &shadow {
        if shadow.allowed != allowed {
            let verdict = if shadow.allowed { "allow" } else { "deny" };
            detail.push_str(&format!(
                "; the shadow policies would {verdict} ({})",
                if shadow.policy_ids.is_empty() {
                    "no policy applies".to_owned()
                } else {
                    shadow.policy_ids.join(", ")
                }
            ));
        }
        if let Some(map) = data.as_object_mut() {
            map.insert(
                "shadow".into(),
                json!({"allowed": shadow.allowed, "policy_ids": shadow.policy_ids}),
            );
        }
    }
    stages.push(stage(
        "policy",
        if allowed { "pass" } else { "fail" },
        detail,
        data,
    ));
    verdict.policy_ids.clone_from(&decision.policy_ids);
    verdict.policy_ids.sort();
    verdict.shadow = shadow;
    if !allowed {
        let denied = ExchangeError::Denied {
            subject: identity.subject.clone(),
            target: target.id.clone(),
            decision,
        };
        return refuse(stages, verdict, "policy", &["values"], &denied);
    }
    // What the provider would be asked for over this identity (session tags, …).
    match snap.mapper.eval_over_identity(&target.values, identity) {
        Ok(values) => {
            stages.push(stage(
                "values",
                "pass",
                format!("{} target value(s)", values.len()),
                json!({"values": values}),
            ));
            verdict.values = values;
            verdict.allowed = true;
            Decided { stages, verdict }
        }
        Err(e) => {
            stages.push(stage("values", "fail", e.to_string(), Value::Null));
            refuse(stages, verdict, "values", &[], &e.into())
        }
    }
}
