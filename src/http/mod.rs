//! The axum router: routes, request ids, body limits, and the one error mapping.

pub mod admin;
pub mod client_address;
pub mod console;
pub mod error;
pub mod oauth;
pub mod observe;
pub mod reload;
pub mod server;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::audit::AuditLog;
use crate::exchange::{self, Services, request};
use crate::metrics::Metrics;
use crate::record::ExchangeRecord;
use crate::snapshot::Snapshot;
pub use error::ApiError;

/// The request id header, set on every response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything a request needs: the current compiled config and shared services.
pub struct AppState {
    /// The compiled config, swapped atomically on reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Store, clock, single-flight.
    pub services: Services,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The decision log.
    pub audit: AuditLog,
    /// The listener's certificate, when it speaks TLS (set once by `ferry serve`).
    pub tls: std::sync::OnceLock<Arc<crate::tls::CertStore>>,
    /// What DPoP nonces are made and checked with (`[dpop] require_nonce`).
    pub dpop_nonces: exchange::dpop::NonceKey,
    /// The accept loop's connection counts (set once by `ferry serve`).
    pub connections: std::sync::OnceLock<server::ConnectionStats>,
    /// When this state was made (Unix seconds): `process_start_time_seconds`.
    pub started: f64,
    /// The web console's sessions and its view of recent traffic.
    pub console: console::Console,
    /// The anomaly webhook's queue, started at the first anomaly to post.
    webhook: std::sync::OnceLock<Option<crate::anomaly::webhook::Webhook>>,
    reload: reload::ReloadState,
}

impl AppState {
    /// State over a built snapshot; the audit log is opened from its `[audit]` section.
    pub fn new(snapshot: Snapshot, services: Services) -> std::io::Result<Arc<Self>> {
        let a = &snapshot.config.audit;
        let replica = a
            .replica_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "ferry".to_owned());
        let file = a.file.as_ref().map(|f| snapshot.config.source.resolve(f));
        let audit = AuditLog::open(file.as_deref(), a.stdout, replica)?
            .with_checkpoint_every(a.checkpoint_every);
        audit.set_signer(snapshot.issuer.clone());
        // Replicas sharing a Redis store share its encryption key, so each accepts the
        // nonces the others issue; a memory store is one replica.
        let shared = match snapshot.config.store.backend {
            crate::config::StoreBackend::Redis => {
                let mut ignored = crate::config::ConfigErrors::default();
                crate::store::read_encryption_keys(&snapshot.config, &mut ignored).0
            }
            _ => None,
        };
        let dpop_nonces = exchange::dpop::NonceKey::new(shared.as_ref());
        // The registry the snapshot's issuer already counts its signatures in.
        let metrics = Arc::clone(snapshot.issuer.metrics());
        observe::declare_series(&metrics, &snapshot);
        Ok(Arc::new(Self {
            dpop_nonces,
            snapshot: ArcSwap::from_pointee(snapshot),
            services,
            metrics,
            audit,
            tls: std::sync::OnceLock::new(),
            connections: std::sync::OnceLock::new(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            reload: reload::ReloadState::default(),
            webhook: std::sync::OnceLock::new(),
            console: console::Console::default(),
        }))
        .inspect(|state| state.reload.set_loaded_at(state.services.clock.now()))
    }

    /// The anomaly webhook's queue, started (on the running tokio runtime) with the
    /// queue size and timeout of the config that first needs it.
    pub fn webhook(
        &self,
        config: &crate::config::anomalies::AnomaliesConfig,
    ) -> Option<&crate::anomaly::webhook::Webhook> {
        self.webhook
            .get_or_init(|| {
                crate::anomaly::webhook::Webhook::start(
                    config.webhook_queue,
                    config.webhook_timeout.0,
                    Arc::clone(&self.metrics),
                )
                .map_err(|e| tracing::error!(error = %e, "the anomaly webhook cannot start"))
                .ok()
            })
            .as_ref()
    }
}

/// Builds the router. Tests drive it with `oneshot`; `serve` binds it to a socket.
pub fn app(state: Arc<AppState>) -> Router {
    let snapshot = state.snapshot.load();
    let max_body = snapshot.config.server.max_body_bytes;
    let timeout = snapshot.config.server.request_timeout.0;
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/issuers", get(admin::issuers))
        .route("/admin/explain", post(admin::explain))
        .route("/admin/reload", post(admin::reload))
        .route(
            "/admin/revocations",
            post(admin::revoke).get(admin::revocations),
        )
        .route("/admin/revocations/lift", post(admin::lift))
        .route("/admin/anomalies", get(admin::anomalies))
        .route(
            "/admin/anomalies/{id}/acknowledge",
            post(admin::acknowledge),
        )
        .route("/oauth2/introspect", post(oauth::introspect))
        .route("/oauth2/revoke", post(oauth::revoke))
        .merge(
            console::routes().layer(middleware::from_fn_with_state(state.clone(), console::gate)),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            (state.clone(), timeout),
            observe::log_request,
        ))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                // Defence in depth: a panic is a bug, answered like any other 500.
                ApiError::server_error(&"a request handler panicked").into_response()
            },
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(middleware::map_request(drop_unsafe_request_id))
        .with_state(state)
}

/// The most bytes of a client-supplied `x-request-id` Ferry adopts.
pub const MAX_REQUEST_ID: usize = 64;

/// A client's `x-request-id` is adopted only when it is a short token of safe characters
/// (letters, digits, `-`, `_`, `.`, `:`); any other is dropped, and the request gets a
/// fresh id like one that sent none. The id lands in log lines, the audit trail and the
/// response, so it must not carry a forged line or a large blob.
async fn drop_unsafe_request_id(mut req: Request) -> Request {
    let unsafe_id = req.headers().get(REQUEST_ID).is_some_and(|v| {
        let b = v.as_bytes();
        b.is_empty()
            || b.len() > MAX_REQUEST_ID
            || !b
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
    });
    if unsafe_id || req.headers().get_all(REQUEST_ID).iter().nth(1).is_some() {
        req.headers_mut().remove(REQUEST_ID);
    }
    req
}

fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
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
async fn token(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<observe::Granted, observe::Refused> {
    let (mut parts, body) = request.into_parts();
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| request_id_of(&parts.headers));
    // In-flight requests finish on the config they started with, even across a reload.
    let snapshot = state.snapshot.load_full();
    let mut record = ExchangeRecord::start(
        request_id,
        client_ip(&parts.extensions),
        snapshot.revision.clone(),
    );
    let traceparent = parts
        .extensions
        .remove::<observe::Traceparent>()
        .map(|t| t.0);
    let client_certificate = parts
        .extensions
        .get::<Arc<crate::tls::ClientCertificate>>()
        .cloned();
    let dpop = dpop_proof(
        &parts.headers,
        &snapshot,
        &state,
        state.services.clock.now(),
    );
    let result = async {
        let mut req = read_form(parts, body, record.client_ip).await?;
        req.traceparent = traceparent;
        req.dpop = dpop?;
        req.client_certificate = client_certificate;
        Ok(exchange::exchange(&snapshot, &state.services, req, &mut record).await?)
    }
    .await;
    observe::settle(&state, record, result).await
}

/// The request's DPoP proof, checked (RFC 9449 §4.3), if it sent one.
fn dpop_proof(
    headers: &axum::http::HeaderMap,
    snapshot: &Snapshot,
    state: &AppState,
    now: i64,
) -> Result<Option<exchange::dpop::Proof>, ApiError> {
    let mut proofs = headers.get_all("dpop").iter();
    let Some(value) = proofs.next() else {
        return Ok(None);
    };
    if proofs.next().is_some() {
        return Err(ApiError::invalid_dpop_proof("more than one DPoP header"));
    }
    let proof = value
        .to_str()
        .map_err(|_| ApiError::invalid_dpop_proof("the DPoP header is not ASCII"))?;
    let htu = snapshot.issuer.token_endpoint();
    let proof =
        exchange::dpop::verify(proof, "POST", htu, now).map_err(ApiError::invalid_dpop_proof)?;
    let dpop = &snapshot.config.dpop;
    if dpop.require_nonce
        && !proof
            .nonce
            .as_deref()
            .is_some_and(|n| state.dpop_nonces.accepts(n, now, dpop.nonce_lifetime.0))
    {
        return Err(ApiError::use_dpop_nonce(state.dpop_nonces.issue(now)));
    }
    Ok(Some(proof))
}

/// The exchange request in a token request's body (RFC 6749 §4.1.3 / RFC 8693 §2.1:
/// `application/x-www-form-urlencoded`, at most `max_body_bytes`).
async fn read_form(
    parts: axum::http::request::Parts,
    body: axum::body::Body,
    client_ip: IpAddr,
) -> Result<exchange::ExchangeRequest, ApiError> {
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(ApiError::invalid_request(
            "the request body must be application/x-www-form-urlencoded",
        ));
    }
    let body = <Bytes as axum::extract::FromRequest<()>>::from_request(
        Request::from_parts(parts, body),
        &(),
    )
    .await
    .map_err(|e: BytesRejection| {
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
    // Every body decodes (invalid UTF-8 becomes U+FFFD); the checks on the values are
    // `request::parse`'s.
    let pairs = request::form_pairs(&body);
    Ok(request::parse(&pairs, client_ip)?)
}

fn granted(r: &exchange::ExchangeResponse) -> Response {
    /// RFC 8693 §2.2.1, serialized straight from the outcome: the secrets are written
    /// once, into the body, with no intermediate JSON tree holding copies of them.
    #[derive(serde::Serialize)]
    struct Body<'a> {
        access_token: &'a str,
        issued_token_type: &'a str,
        token_type: &'a str,
        expires_in: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        scope: Option<&'a str>,
        credentials: Credentials<'a>,
    }
    struct Credentials<'a>(&'a std::collections::BTreeMap<String, ferry_provider_api::Secret>);
    impl serde::Serialize for Credentials<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|(k, v)| (k, v.expose())))
        }
    }
    let body = Body {
        access_token: r.access_token.expose(),
        issued_token_type: &r.issued_token_type,
        token_type: &r.token_type,
        expires_in: r.expires_in,
        scope: r.scope.as_deref(),
        credentials: Credentials(&r.credentials),
    };
    // Sized up front: the body is mostly the secrets, and growing a small buffer
    // through several reallocations copied them each time.
    let secrets: usize = r.access_token.expose().len()
        + r.credentials
            .iter()
            .map(|(k, v)| k.len() + v.expose().len() + 8)
            .sum::<usize>();
    let mut bytes = Vec::with_capacity(secrets + 256);
    match serde_json::to_writer(&mut bytes, &body) {
        Ok(()) => no_store(
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                bytes,
            )
                .into_response(),
        ),
        Err(_) => ApiError::server_error(&"the response could not be encoded").into_response(),
    }
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
    json_document(state.snapshot.load().issuer.discovery_document())
}

async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    json_document(state.snapshot.load().issuer.jwks_document())
}

async fn healthz() -> Response {
    no_store(Json(json!({"status": "ok"})).into_response())
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.snapshot.load();
    let store_ok = state.services.store.ping().await.is_ok();
    let issuers: serde_json::Map<String, serde_json::Value> = snapshot
        .verifier
        .issuers()
        .map(|i| (i.id.to_string(), json!(i.jwks.status().usable)))
        .collect();
    let tls = state.tls.get().map(|t| t.status());
    let tls_ok = tls
        .as_ref()
        .is_none_or(|t| state.services.clock.now() < t.not_after);
    let ready = store_ok && snapshot.issuers_ready() && tls_ok;
    let last_reload_error = state.reload.last_error();
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
                "revision": snapshot.revision,
                "store": {
                    "backend": state.services.store.backend(),
                    "ok": store_ok,
                    "revocation_copy": match state.services.store.revocation_copy() {
                        None => "off",
                        Some(None) => "not current",
                        Some(Some(_)) => "current",
                    },
                },
                "issuers": issuers,
                "last_reload_error": last_reload_error,
                "tls": tls.map(|t| json!({
                    "ok": tls_ok,
                    "subject": t.subject,
                    "not_after": t.not_after,
                    "last_reload_error": t.last_error,
                })),
            })),
        )
            .into_response(),
    )
}

/// `GET /metrics`: the recorded series plus gauges read at scrape time.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    use crate::metrics::{Family, labels};
    let snapshot = state.snapshot.load();
    let now = state.services.clock.now();
    let (mut refreshes, mut ages, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    for issuer in snapshot.verifier.issuers() {
        let s = issuer.jwks.status();
        let id = issuer.id.as_ref();
        refreshes.push((
            labels(&[("issuer", id), ("outcome", "success")]),
            s.refresh_ok,
        ));
        refreshes.push((
            labels(&[("issuer", id), ("outcome", "failure")]),
            s.refresh_failed,
        ));
        if let Some(at) = s.last_success {
            ages.push((labels(&[("issuer", id)]), now.saturating_sub(at)));
        }
        let count = i64::try_from(s.key_ids.len()).unwrap_or(i64::MAX);
        keys.push((labels(&[("issuer", id)]), count));
    }
    let signatures = snapshot.verifier.signatures();
    let mut scraped = vec![
        Family::counter(
            "ferry_jwks_refreshes_total",
            "JWKS fetches by issuer and outcome (since the issuer's config was loaded).",
            refreshes,
        ),
        Family::gauge(
            "ferry_jwks_seconds_since_last_refresh",
            "Seconds since the last successful JWKS fetch (remote issuers).",
            ages,
        ),
        Family::gauge("ferry_jwks_keys", "Keys currently served per issuer.", keys),
        Family::gauge(
            "ferry_config_info",
            "The active config revision.",
            vec![(labels(&[("revision", &snapshot.revision)]), 1)],
        ),
        Family::counter(
            "ferry_token_signatures_total",
            "Subject-token signatures that checked out since the config revision was loaded: verified against the key now, or remembered from an earlier verify of the same token (its claims re-checked).",
            vec![
                (labels(&[("result", "verified")]), signatures.verified),
                (labels(&[("result", "remembered")]), signatures.remembered),
            ],
        ),
        Family::gauge(
            "ferry_signing_key_age_seconds",
            "Age of Ferry's active signing key.",
            vec![(
                Vec::new(),
                now.saturating_sub(snapshot.issuer.keys().active.created_at),
            )],
        ),
    ];
    if let Some(copy) = state.services.store.revocation_copy() {
        scraped.push(Family::gauge(
            "ferry_revocation_copy_current",
            "Whether this replica's local copy of the revocation list is in use (1) or every exchange asks Redis (0).",
            vec![(Vec::new(), i64::from(copy.is_some()))],
        ));
        if let Some(lag) = copy {
            scraped.push(Family::seconds(
                "ferry_revocation_copy_lag_seconds",
                "How long ago the copy was last proven current.",
                vec![(Vec::new(), lag.as_secs_f64())],
            ));
        }
    }
    if let Some(c) = state.connections.get().map(server::ConnectionStats::counts) {
        scraped.push(Family::gauge(
            "ferry_connections_open",
            "Client connections open now.",
            vec![(Vec::new(), i64::try_from(c.open).unwrap_or(i64::MAX))],
        ));
        scraped.push(Family::counter(
            "ferry_connections_closed_total",
            "Connections Ferry closed at the connection cap: answered 503 (shed) or idle ones closed to make room (reclaimed).",
            vec![
                (labels(&[("reason", "shed")]), c.shed),
                (labels(&[("reason", "reclaimed")]), c.reclaimed),
            ],
        ));
        if state.tls.get().is_some() {
            scraped.push(Family::counter(
                "ferry_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out (a plaintext client, an old protocol version, a client certificate refused under client_auth = required).",
                vec![(Vec::new(), c.handshakes_failed)],
            ));
        }
    }
    if let Some(tls) = state.tls.get() {
        let s = tls.status();
        scraped.push(Family::gauge(
            "ferry_tls_certificate_expiry_timestamp_seconds",
            "When the certificate the listener serves expires (Unix seconds).",
            vec![(Vec::new(), s.not_after)],
        ));
        scraped.push(Family::counter(
            "ferry_tls_reloads_total",
            "Renewed certificate files on disk, served (success) or refused with the old pair kept (failure).",
            vec![
                (labels(&[("outcome", "success")]), s.reloads_ok),
                (labels(&[("outcome", "failure")]), s.reloads_failed),
            ],
        ));
    }
    scraped.push(Family::gauge(
        "ferry_store_up",
        "Whether the store answered a ping at this scrape (1) or not (0).",
        vec![(
            Vec::new(),
            i64::from(state.services.store.ping().await.is_ok()),
        )],
    ));
    let untracked = state.services.anomalies.untracked();
    scraped.push(Family::counter(
        "ferry_anomaly_untracked_total",
        "Keys the anomaly detector could not track because its table was full (`[anomalies] max_tracked`), by table.",
        ["subjects", "tokens", "denial_burst", "unknown_kid_burst"]
            .into_iter()
            .map(|t| (labels(&[("table", t)]), untracked.get(t).copied().unwrap_or(0)))
            .collect(),
    ));
    scraped.push(Family::gauge(
        "ferry_anomalies_open",
        "Anomalies open now (raised within `[anomalies] open_for`, not acknowledged), on this replica.",
        vec![(
            Vec::new(),
            i64::try_from(
                state
                    .services
                    .anomalies
                    .recent(now, &snapshot.config.anomalies)
                    .iter()
                    .filter(|a| a.open)
                    .count(),
            )
            .unwrap_or(i64::MAX),
        )],
    ));
    scraped.extend(crate::metrics::process::families(state.started));
    let mut response = state.metrics.render(scraped).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
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
