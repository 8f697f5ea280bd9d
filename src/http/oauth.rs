//! RFC 7009 revocation and RFC 7662 introspection, for tokens Ferry issued.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
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

/// Authenticates an introspection client (RFC 7662 §2.1) by HTTP Basic with its name and
/// secret, each form-urlencoded first (RFC 6749 §2.3.1); secrets compared in constant
/// time. The admin token is not accepted: a resource server that introspects must not
/// also hold the power to reload and revoke.
fn authorize_introspection(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    use base64::Engine as _;
    use subtle::ConstantTimeEq as _;
    let snapshot = state.snapshot.load();
    if snapshot.introspection_clients.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "introspection is disabled (configure [[introspection.clients]])",
        ));
    }
    let unauthorized = || ApiError {
        www_authenticate: Some("Basic realm=\"ferry-introspection\""),
        ..ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "introspection client authentication failed",
        )
    };
    let decoded = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or_else(unauthorized)?;
    let (name, secret) = decoded.split_once(':').ok_or_else(unauthorized)?;
    let unescape = |s: &str| -> String {
        form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (name, secret) = (unescape(name), unescape(secret));
    // An unknown name is compared against a dummy, so timing does not tell names apart.
    let expected = snapshot.introspection_clients.get(&name);
    let dummy = ferry_provider_api::Secret::new("\0".repeat(32));
    let matches = bool::from(
        secret
            .as_bytes()
            .ct_eq(expected.unwrap_or(&dummy).expose().as_bytes()),
    );
    if matches && expected.is_some() {
        Ok(name)
    } else {
        Err(unauthorized())
    }
}

/// `POST /oauth2/introspect` (RFC 7662 §2): an introspection client's credentials
/// required. An inactive, foreign, expired or revoked token is `{"active": false}` and
/// nothing else (§2.2); revoking its subject, target, issuer `sub` or `jti` makes it
/// inactive.
pub async fn introspect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = match authorize_introspection(&state, &headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    tracing::debug!(client = %client, "introspection");
    let token = match form(&body).and_then(|pairs| token_param(&pairs)) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let snapshot = state.snapshot.load_full();
    let inactive = || no_store(Json(json!({"active": false})).into_response());
    let Some(claims) = snapshot.issuer.verify_own(&token) else {
        return inactive();
    };
    let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
    let identity = claims.get(crate::issuer::IDENTITY_CLAIM);
    let mut fields = Vec::new();
    if let Some(jti) = s("jti") {
        fields.push(RevocationTarget::Jti { jti }.field());
    }
    if let Some(sub) = s("sub") {
        fields.push(RevocationTarget::Subject { subject: sub }.field());
    }
    if let Some(target) = identity
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
    // The revocation fields the token was minted under (Ferry signed them, so they are
    // what it wrote): they include the subject token's issuer and `sub`.
    if let Some(Value::Array(minted_under)) = identity.and_then(|f| f.get("revocation")) {
        fields.extend(
            minted_under
                .iter()
                .take(8)
                .filter_map(Value::as_str)
                .map(str::to_owned),
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
    // A DPoP-bound token is of type DPoP (RFC 9449 §6.2); `cnf` tells a resource server
    // which key or certificate must accompany it (RFC 7662 §2.2, RFC 8705 §3.2).
    let token_type = if claims.get("cnf").and_then(|c| c.get("jkt")).is_some() {
        "DPoP"
    } else {
        "Bearer"
    };
    let mut body = json!({"active": true, "token_type": token_type});
    if let Some(obj) = body.as_object_mut() {
        for k in [
            "sub", "aud", "exp", "iat", "nbf", "iss", "jti", "scope", "cnf",
        ] {
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
    let token = match form(&body).and_then(|pairs| token_param(&pairs)) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let snapshot = state.snapshot.load_full();
    if let Some(claims) = snapshot.issuer.verify_own(&token)
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
            expires_at: exp.saturating_add(snapshot.leeway_of("")),
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
