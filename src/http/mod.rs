//! The axum router: routes, request ids, body limits, and the one error mapping.

pub mod error;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::exchange::{self, Services, request};
use crate::runtime::Runtime;
pub use error::ApiError;

/// The request id header, set on every response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything a request needs: the current compiled config and shared services.
pub struct AppState {
    /// The compiled config, swapped atomically on reload.
    pub runtime: ArcSwap<Runtime>,
    /// Store, clock, single-flight.
    pub services: Services,
}

impl AppState {
    /// State over a built runtime.
    pub fn new(runtime: Runtime, services: Services) -> Arc<Self> {
        Arc::new(Self {
            runtime: ArcSwap::from_pointee(runtime),
            services,
        })
    }
}

/// Builds the router. Tests drive it with `oneshot`; `serve` binds it to a socket.
pub fn app(state: Arc<AppState>) -> Router {
    let runtime = state.runtime.load();
    let max_body = runtime.config.server.max_body_bytes;
    let timeout = runtime.config.server.request_timeout.0;
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(move |req, next| {
            log_request(req, next, timeout)
        }))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                // Defence in depth: a panic is a bug, answered like any other 500.
                ApiError::server_error(&"a request handler panicked").into_response()
            },
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// One span per request (request id, route), one log line at the end, and a hard
/// timeout that answers 503 rather than hanging.
async fn log_request(req: Request, next: Next, timeout: Duration) -> Response {
    let started = Instant::now();
    let request_id = request_id_of(req.headers());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!("request", request_id = %request_id, %method, %route);
    let response = {
        use tracing::Instrument as _;
        match tokio::time::timeout(timeout, next.run(req).instrument(span.clone())).await {
            Ok(r) => r,
            Err(_) => ApiError::unavailable("the request timed out", Duration::from_secs(1))
                .into_response(),
        }
    };
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| tracing::info!(status, latency_ms, "request finished"));
    response
}

fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(|s| crate::verify::jwks::truncate(s, 128).to_owned())
        .unwrap_or_default()
}

fn client_ip(req_extensions: &axum::http::Extensions) -> IpAddr {
    req_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// `POST /oauth2/token` (RFC 8693 §2).
async fn token(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| request_id_of(&parts.headers));
    let ip = client_ip(&parts.extensions);
    let body: Result<Bytes, BytesRejection> =
        <Bytes as axum::extract::FromRequest<()>>::from_request(
            Request::from_parts(parts.clone(), body),
            &(),
        )
        .await;
    match token_inner(&state, &parts.headers, body, ip, &request_id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = e.code, description = %e.description, "exchange refused");
            e.into_response()
        }
    }
}

async fn token_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    client_ip: IpAddr,
    request_id: &str,
) -> Result<Response, ApiError> {
    // RFC 6749 §4.1.3 / RFC 8693 §2.1: the body is application/x-www-form-urlencoded.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(ApiError::invalid_request(
            "the request body must be application/x-www-form-urlencoded",
        ));
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "the request body is too large",
            )
        } else {
            ApiError::invalid_request("the request body could not be read")
        }
    })?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|_| ApiError::invalid_request("the request body is not valid form encoding"))?;
    let req = request::parse(&pairs, client_ip)?;
    let runtime = state.runtime.load_full();
    let outcome = exchange::exchange(&runtime, &state.services, req, request_id).await?;
    tracing::info!(
        issuer = %outcome.identity.issuer_id,
        subject = %outcome.identity.subject,
        target = %outcome.target,
        policies = ?outcome.decision.policy_ids,
        cache_hit = outcome.cache_hit,
        "exchange granted"
    );
    let r = outcome.response;
    let credentials: serde_json::Map<String, serde_json::Value> = r
        .credentials
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.expose().to_owned())))
        .collect();
    let mut body = json!({
        "access_token": r.access_token.expose(),
        "issued_token_type": r.issued_token_type,
        "token_type": r.token_type,
        "expires_in": r.expires_in,
        "credentials": credentials,
    });
    if let (Some(scope), Some(obj)) = (r.scope, body.as_object_mut()) {
        obj.insert("scope".into(), scope.into());
    }
    Ok(no_store(Json(body).into_response()))
}

fn json_document(bytes: &[u8]) -> Response {
    let mut response = (StatusCode::OK, bytes.to_vec()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

async fn discovery(State(state): State<Arc<AppState>>) -> Response {
    json_document(state.runtime.load().issuer.discovery_document())
}

async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    json_document(state.runtime.load().issuer.jwks_document())
}

async fn healthz() -> Response {
    no_store(Json(json!({"status": "ok"})).into_response())
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let runtime = state.runtime.load();
    let store_ok = state.services.store.ping().await.is_ok();
    let issuers: serde_json::Map<String, serde_json::Value> = runtime
        .verifier
        .issuers()
        .map(|i| (i.id.to_string(), json!(i.jwks.status().usable)))
        .collect();
    let ready = store_ok && runtime.issuers_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    no_store(
        (
            status,
            Json(json!({
                "ready": ready,
                "revision": runtime.revision,
                "store": {"backend": state.services.store.backend(), "ok": store_ok},
                "issuers": issuers,
            })),
        )
            .into_response(),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "method not allowed on this endpoint",
    )
}
