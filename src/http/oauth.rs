//! RFC 7009 revocation and RFC 7662 introspection, for tokens Ferry issued.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, AppState, no_store};
use crate::store::{Revocation, RevocationTarget};

fn form(body: &Bytes) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_bytes(body)
        .map_err(|_| ApiError::invalid_request("the request body is not valid form encoding"))
}

fn token_param(pairs: &[(String, String)]) -> Result<String, ApiError> {
    let mut found = pairs.iter().filter(|(k, _)| k == "token");
    match (found.next(), found.next()) {
        (Some((_, t)), None) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        (Some(_), Some(_)) => Err(ApiError::invalid_request("parameter `token` is repeated")),
        _ => Err(ApiError::invalid_request("missing parameter `token`")),
    }
}

/// `POST /oauth2/introspect` (RFC 7662 §2): admin bearer token required. An inactive,
/// foreign, expired or revoked token is `{"active": false}` and nothing else (§2.2).
pub async fn introspect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = super::admin::authorize(&state, &headers) {
        return *r;
    }
    let pairs = match form(&body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let token = match token_param(&pairs) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let runtime = state.runtime.load_full();
    let inactive = || no_store(Json(json!({"active": false})).into_response());
    let Some(claims) = runtime.issuer.verify_own(&token) else {
        return inactive();
    };
    let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut fields = Vec::new();
    if let Some(jti) = s("jti") {
        fields.push(RevocationTarget::Jti { jti }.field());
    }
    if let Some(sub) = s("sub") {
        fields.push(RevocationTarget::Subject { subject: sub }.field());
    }
    if let Some(target) = claims
        .get(crate::issuer::IDENTITY_CLAIM)
        .and_then(|f| f.get("target"))
        .and_then(Value::as_str)
    {
        fields.push(
            RevocationTarget::Target {
                target: target.to_owned(),
            }
            .field(),
        );
    }
    match state
        .services
        .store
        .revoked(&fields, state.services.clock.now())
        .await
    {
        Ok(None) => {}
        Ok(Some(_)) => return inactive(),
        // Fail closed: if revocation cannot be checked, the token is not reported active.
        Err(e) => {
            return ApiError::store_unavailable(&e).into_response();
        }
    }
    let mut body = json!({"active": true, "token_type": "Bearer"});
    if let Some(obj) = body.as_object_mut() {
        for k in ["sub", "aud", "exp", "iat", "nbf", "iss", "jti", "scope"] {
            if let Some(v) = claims.get(k) {
                obj.insert(k.to_owned(), v.clone());
            }
        }
    }
    no_store(Json(body).into_response())
}

/// `POST /oauth2/revoke` (RFC 7009 §2): whoever holds a Ferry-issued token may revoke
/// it. The answer is 200 whether or not the token was valid (§2.2).
pub async fn revoke(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let pairs = match form(&body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let token = match token_param(&pairs) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let runtime = state.runtime.load_full();
    if let Some(claims) = runtime.issuer.verify_own(&token)
        && let (Some(jti), Some(exp)) = (
            claims.get("jti").and_then(Value::as_str),
            claims.get("exp").and_then(Value::as_i64),
        )
    {
        let now = state.services.clock.now();
        let revocation = Revocation {
            target: RevocationTarget::Jti {
                jti: jti.to_owned(),
            },
            reason: Some("revoked by its holder (RFC 7009)".into()),
            created_at: now,
            expires_at: exp.saturating_add(runtime.leeway_of("")),
        };
        match state.services.store.revoke(&revocation).await {
            Ok(purged) => {
                state.metrics.inc(
                    "ferry_revocations_total",
                    &[("kind", "jti"), ("via", "rfc7009")],
                );
                tracing::info!(purged, "token revoked by its holder");
            }
            // RFC 7009 §2.2.1: 503 when the server cannot revoke now.
            Err(e) => {
                return ApiError::store_unavailable(&e).into_response();
            }
        }
    }
    no_store(Json(json!({})).into_response())
}
