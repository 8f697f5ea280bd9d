//! `/admin`: the authenticated operator API (issuer and key health, explain, reload).
//! Authentication: `Authorization: Bearer <token>`, the token read from
//! `[admin] token_file`, compared in constant time.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;

use super::{ApiError, AppState};
use crate::exchange::TargetSelector;
use crate::exchange::explain::{ExplainInput, explain as run_explain};
use crate::verify::UnverifiedToken;

pub(crate) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let snapshot = state.snapshot.load();
    let Some(expected) = &snapshot.admin_token else {
        return Err(Box::new(
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request",
                "the admin API is disabled (set [admin] token_file)",
            )
            .into_response(),
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(expected.expose().as_bytes())) {
        return Ok(());
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "a valid admin bearer token is required",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ferry-admin\""),
    );
    Err(Box::new(response))
}

/// Authenticates, then parses a JSON body (400 `invalid_request` naming the problem).
fn authorized_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Box<Response>> {
    authorize(state, headers)?;
    serde_json::from_slice(body)
        .map_err(|e| Box::new(ApiError::invalid_request(format!("body: {e}")).into_response()))
}

/// `GET /admin/issuers`: each issuer's keys and refresh state, and Ferry's own keys.
pub async fn issuers(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    super::no_store(Json(issuers_report(&state)).into_response())
}

/// What `GET /admin/issuers` answers and the console's issuers page shows.
pub(crate) fn issuers_report(state: &AppState) -> Value {
    let snapshot = state.snapshot.load();
    let now = state.services.clock.now();
    let mut issuers: Vec<Value> = snapshot
        .verifier
        .issuers()
        .map(|i| {
            let s = i.jwks.status();
            let required = snapshot
                .config
                .issuers
                .iter()
                .any(|c| c.id == *i.id && c.required);
            json!({
                "id": i.id.as_ref(),
                "issuer": i.issuer,
                "required": required,
                "source": if i.jwks.is_remote() { "remote" } else { "file" },
                "key_ids": s.key_ids,
                "usable": s.usable,
                "last_success": s.last_success,
                "seconds_since_success": s.last_success.map(|t| now.saturating_sub(t)),
                "last_error": s.last_error,
                "fetches": s.fetches,
            })
        })
        .collect();
    issuers.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let keys = snapshot.issuer.keys();
    json!({
        "revision": snapshot.revision,
        "issuers": issuers,
        "signing": {
            "algorithm": crate::issuer::keys::alg_name(keys.active.alg),
            "backend": keys.active.backend(),
            "ephemeral": keys.ephemeral,
            // A key manager's keys as the config names them, the active one first.
            "managed": keys.managed.iter().map(|(kid, key)| json!({"kid": kid, "key": key})).collect::<Vec<_>>(),
            "active": {"kid": keys.active.kid, "created_at": keys.active.created_at, "age_seconds": now.saturating_sub(keys.active.created_at)},
            "retired": keys.retired.iter().map(|(kid, at)| json!({"kid": kid, "retired_at": at})).collect::<Vec<_>>(),
        },
        "last_reload_error": state.reload.last_error(),
    })
}

/// `POST /admin/explain` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    target: String,
    token: Option<String>,
    claims: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    scope: String,
    source_ip: Option<IpAddr>,
    /// Anomaly kinds open for the subject, as policy would see them.
    #[serde(default)]
    anomalies: Vec<String>,
}

/// `POST /admin/explain`: `ferry explain` over HTTP (JSON in, the report out).
pub async fn explain(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req: ExplainRequest = match authorized_json(&state, &headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let input = match (req.token, req.claims) {
        (Some(t), None) => match UnverifiedToken::new(&t) {
            Ok(t) => ExplainInput::Token(t),
            Err(e) => return ApiError::invalid_request(format!("token: {e}")).into_response(),
        },
        (None, Some(c)) => ExplainInput::Claims(c),
        _ => {
            return ApiError::invalid_request("give exactly one of `token` and `claims`")
                .into_response();
        }
    };
    let scopes: Vec<String> = req
        .scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let anomalies = match crate::anomaly::kind_names(&req.anomalies) {
        Ok(a) => a,
        Err(e) => return ApiError::invalid_request(format!("anomalies: {e}")).into_response(),
    };
    let snapshot = state.snapshot.load_full();
    let target = TargetSelector::Audience(req.target);
    let request = crate::exchange::explain::Request {
        target: &target,
        scopes: &scopes,
        source_ip: req.source_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
        client_certificate: None,
        timestamp: state.services.clock.now(),
        anomalies: &anomalies,
    };
    let report = run_explain(&snapshot, input, &request).await;
    super::no_store(Json(report).into_response())
}

/// `POST /admin/reload`: reload now; 200 with the new revision, or 400 with every problem.
pub async fn reload(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    match state.reload("admin API").await {
        Ok(revision) => {
            super::no_store(Json(json!({"reloaded": true, "revision": revision})).into_response())
        }
        Err(errs) => ApiError::invalid_request(format!(
            "config rejected; the previous config keeps serving: {errs}"
        ))
        .into_response(),
    }
}

/// `POST /admin/revocations` body: exactly one of the selectors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    subject: Option<String>,
    issuer: Option<String>,
    sub: Option<String>,
    jti: Option<String>,
    target: Option<String>,
    reason: Option<String>,
}

/// Turns selectors into a revocation target (shared by the CLI and the admin API).
pub fn revocation_target(
    subject: Option<String>,
    issuer: Option<String>,
    sub: Option<String>,
    jti: Option<String>,
    target: Option<String>,
) -> Result<crate::store::RevocationTarget, &'static str> {
    use crate::store::RevocationTarget as T;
    match (subject, issuer, sub, jti, target) {
        (Some(subject), None, None, None, None) if !subject.is_empty() => {
            Ok(T::Subject { subject })
        }
        (None, Some(issuer), Some(sub), None, None) if !issuer.is_empty() && !sub.is_empty() => {
            Ok(T::IssuerSub { issuer, sub })
        }
        (None, None, None, Some(jti), None) if !jti.is_empty() => Ok(T::Jti { jti }),
        (None, None, None, None, Some(target)) if !target.is_empty() => Ok(T::Target { target }),
        _ => Err("give exactly one of: `subject`; `issuer` and `sub`; `jti`; `target`"),
    }
}

/// `POST /admin/revocations`: revoke now, on every replica sharing the store.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req: RevokeRequest = match authorized_json(&state, &headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let target = match revocation_target(req.subject, req.issuer, req.sub, req.jti, req.target) {
        Ok(t) => t,
        Err(e) => return ApiError::invalid_request(e).into_response(),
    };
    match revoke_now(&state, target, req.reason, "admin").await {
        Ok((revocation, purged)) => {
            let mut r = (
                StatusCode::CREATED,
                Json(json!({"revocation": revocation, "purged": purged})),
            )
                .into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => e.into_response(),
    }
}

/// An operator action as the audit trail records it (`"type":"revocation"`, …).
#[derive(serde::Serialize)]
struct OperatorAction<'a, T: serde::Serialize> {
    time: i64,
    /// `admin` (the API) or `console`.
    via: &'a str,
    #[serde(flatten)]
    what: T,
}

/// Records a revocation on every replica sharing the store, counts it and writes its
/// audit line: what `POST /admin/revocations` and the console's revoke form both run.
pub(crate) async fn revoke_now(
    state: &AppState,
    target: crate::store::RevocationTarget,
    reason: Option<String>,
    via: &'static str,
) -> Result<(crate::store::Revocation, usize), ApiError> {
    let now = state.services.clock.now();
    let revocation = state.snapshot.load().revocation(target, reason, now);
    let kind = revocation_kind(&revocation.target);
    let purged = record_revocation(state, &revocation, via, "revocation").await?;
    state.metrics.inc(
        "ferry_revocations_total",
        &[("kind", kind), ("via", "admin")],
    );
    Ok((revocation, purged))
}

/// Lifts a revocation on every replica sharing the store (audited): it is recorded
/// again as already expired, which replicas' local copies apply like any revocation.
/// Cached credentials it covered are dropped and minted afresh.
pub(crate) async fn lift_now(
    state: &AppState,
    target: crate::store::RevocationTarget,
    via: &'static str,
) -> Result<crate::store::Revocation, ApiError> {
    let now = state.services.clock.now();
    let lifted = crate::store::Revocation {
        target,
        reason: Some("lifted".to_owned()),
        created_at: now,
        expires_at: now,
    };
    record_revocation(state, &lifted, via, "revocation_lifted").await?;
    Ok(lifted)
}

fn revocation_kind(target: &crate::store::RevocationTarget) -> &'static str {
    match target {
        crate::store::RevocationTarget::Subject { .. } => "subject",
        crate::store::RevocationTarget::IssuerSub { .. } => "issuer_sub",
        crate::store::RevocationTarget::Jti { .. } => "jti",
        crate::store::RevocationTarget::Target { .. } => "target",
    }
}

/// Stores `revocation`, logs it and writes its audit line of type `line_type`.
async fn record_revocation(
    state: &AppState,
    revocation: &crate::store::Revocation,
    via: &'static str,
    line_type: &'static str,
) -> Result<usize, ApiError> {
    let purged = state
        .services
        .store
        .revoke(revocation)
        .await
        .map_err(|e| ApiError::store_unavailable(&e))?;
    tracing::info!(
        kind = revocation_kind(&revocation.target),
        via,
        purged,
        expires_at = revocation.expires_at,
        "{}",
        if line_type == "revocation" {
            "revocation recorded"
        } else {
            "revocation lifted"
        }
    );
    let now = revocation.created_at;
    let line = OperatorAction {
        time: now,
        via,
        what: json!({"revocation": revocation}),
    };
    if !state.audit.record_event(line_type, &line, now).await {
        state.metrics.inc("ferry_audit_write_failures_total", &[]);
    }
    Ok(purged)
}

/// `POST /admin/revocations/lift`: lifts the revocation the selectors name (the body of
/// `POST /admin/revocations`; `reason` is ignored).
pub async fn lift(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req: RevokeRequest = match authorized_json(&state, &headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let target = match revocation_target(req.subject, req.issuer, req.sub, req.jti, req.target) {
        Ok(t) => t,
        Err(e) => return ApiError::invalid_request(e).into_response(),
    };
    match lift_now(&state, target, "admin").await {
        Ok(lifted) => super::no_store(Json(json!({"lifted": lifted})).into_response()),
        Err(e) => e.into_response(),
    }
}

/// Acknowledges an anomaly (audited): false when this replica keeps no anomaly `id`.
pub(crate) async fn acknowledge_now(state: &AppState, id: u64, via: &'static str) -> bool {
    let now = state.services.clock.now();
    if !state.services.anomalies.acknowledge(id, via, now) {
        return false;
    }
    tracing::info!(anomaly_id = id, via, "anomaly acknowledged");
    let line = OperatorAction {
        time: now,
        via,
        what: json!({"anomaly_id": id}),
    };
    if !state
        .audit
        .record_event("anomaly_acknowledged", &line, now)
        .await
    {
        state.metrics.inc("ferry_audit_write_failures_total", &[]);
    }
    true
}

/// `GET /admin/anomalies`: this replica's kept anomalies, newest first, with whether each
/// is open.
pub async fn anomalies(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let snapshot = state.snapshot.load();
    let list = state
        .services
        .anomalies
        .recent(state.services.clock.now(), &snapshot.config.anomalies);
    super::no_store(Json(json!({"anomalies": list})).into_response())
}

/// `POST /admin/anomalies/{id}/acknowledge`: closes an anomaly (it stops counting in
/// `context.anomalies`).
pub async fn acknowledge(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let Ok(id) = id.parse::<u64>() else {
        return ApiError::invalid_request("the anomaly id is a number").into_response();
    };
    if acknowledge_now(&state, id, "admin").await {
        StatusCode::NO_CONTENT.into_response()
    } else {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request",
            format!("no anomaly {id} is kept on this replica"),
        )
        .into_response()
    }
}

/// `GET /admin/revocations`: every live revocation.
pub async fn revocations(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    match state
        .services
        .store
        .revocations(state.services.clock.now())
        .await
    {
        Ok(list) => super::no_store(Json(json!({"revocations": list})).into_response()),
        Err(e) => ApiError::store_unavailable(&e).into_response(),
    }
}
