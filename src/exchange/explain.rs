//! `ferry explain`: run every stage of an exchange and report each outcome, issuing
//! nothing.

use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{ExchangeError, TargetSelector, check_target_request, resolve_target};
use crate::policy::AuthzInput;
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

/// Runs verify, map, target and policy for `input`, reporting each.
pub async fn explain(
    snap: &Snapshot,
    input: ExplainInput,
    target: &TargetSelector,
    scopes: &[String],
    source_ip: IpAddr,
    client_certificate: Option<&crate::tls::ClientCertificate>,
    now: i64,
) -> ExplainReport {
    let mut stages = Vec::new();
    let signature_checked = matches!(input, ExplainInput::Token(_));
    let finish = |mut stages: Vec<Stage>, from: &[&'static str], allowed: bool| {
        for name in from {
            stages.push(stage(
                name,
                "skipped",
                "an earlier stage failed",
                Value::Null,
            ));
        }
        ExplainReport {
            allowed,
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
            return finish(stages, &["mapping", "target", "policy"], false);
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
            return finish(stages, &["target", "policy"], false);
        }
    };

    let target = match resolve_target(snap, target).and_then(|t| {
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
            t
        }
        Err(e) => {
            stages.push(stage("target", "fail", e.to_string(), Value::Null));
            return finish(stages, &["policy"], false);
        }
    };

    let decision = snap.policy.authorize(&AuthzInput {
        identity: &identity,
        target_id: &target.id,
        target_kind: target.kind.as_str(),
        source_ip,
        client_certificate,
        scopes,
        timestamp: now,
    });
    let detail = if decision.allowed {
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
    stages.push(stage(
        "policy",
        if allowed { "pass" } else { "fail" },
        detail,
        json!({"policy_ids": decision.policy_ids, "errors": decision.errors}),
    ));
    finish(stages, &[], allowed)
}
