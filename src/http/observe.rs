//! Observation: the one place a request becomes its log line and span, and a token
//! exchange's [`ExchangeRecord`] becomes its audit line and metrics.
//!
//! The token handler settles a decision with [`settle`] (the audit line is written
//! before the client is answered, and a grant that cannot be audited is refused); the
//! record then travels with the response to [`log_request`], which counts it and writes
//! the request's one log line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState, request_id_of};
use crate::audit::{AuditEvent, AuditIdentity, AuditRequest};
use crate::exchange::ExchangeResponse;
use crate::exchange::TargetSelector;
use crate::exchange::request;
use crate::record::{ExchangeRecord, Refusal};

/// The request span and these log lines name the HTTP layer, not this module: log lines
/// carry that span's fields (`telemetry`).
const LOG_TARGET: &str = crate::telemetry::REQUEST_SPAN_TARGET;

/// A request's W3C `traceparent`, parsed once by [`log_request`] and read by handlers
/// that pass it upstream.
#[derive(Debug, Clone)]
pub struct Traceparent(pub String);

/// A granted exchange: the RFC 8693 response and its decision's record.
pub struct Granted {
    pub response: ExchangeResponse,
    pub record: Box<ExchangeRecord>,
}

/// A refused exchange: the RFC 6749 error and its decision's record.
pub struct Refused {
    pub error: ApiError,
    pub record: Box<ExchangeRecord>,
}

impl IntoResponse for Granted {
    fn into_response(self) -> Response {
        let mut response = super::granted(&self.response);
        response.extensions_mut().insert(self.record);
        response
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        response.extensions_mut().insert(self.record);
        response
    }
}

/// Completes the record of a decision and writes its audit line. A grant whose line
/// cannot be written becomes a 503: a credential that cannot be audited is not handed
/// out (fail closed).
pub async fn settle(
    state: &AppState,
    mut record: ExchangeRecord,
    result: Result<ExchangeResponse, ApiError>,
) -> Result<Granted, Refused> {
    let audited = state.audit.is_enabled();
    match result {
        Ok(response) => {
            record.credential_sha256 =
                Some(crate::sha256_hex(response.access_token.expose().as_bytes()));
            if audited && !state.audit.record(&audit_event(state, &record)).await {
                state.metrics.inc("ferry_audit_write_failures_total", &[]);
                tracing::error!(target: LOG_TARGET, "audit trail unavailable; refusing to hand out a credential");
                let error =
                    ApiError::unavailable("the audit trail is unavailable", Duration::from_secs(5));
                return Err(refuse(record, error));
            }
            // At debug: the request's one line at info ("request finished") carries the
            // same facts, and a second line per exchange costs as much CPU as the rest
            // of a cache hit (BENCHMARKS.md).
            tracing::debug!(
                target: LOG_TARGET,
                issuer = record.issuer.as_deref(),
                subject = record.subject.as_deref(),
                target_id = record.target.as_deref(),
                policies = ?record.policy_ids,
                cache = record.cache.map(|c| c.as_str()),
                outcome = "granted",
                "exchange granted"
            );
            notice(state, &record).await;
            Ok(Granted {
                response,
                record: Box::new(record),
            })
        }
        Err(error) => {
            let Refused { error, record } = refuse(record, error);
            if audited && !state.audit.record(&audit_event(state, &record)).await {
                state.metrics.inc("ferry_audit_write_failures_total", &[]);
            }
            tracing::info!(
            target: LOG_TARGET,
                issuer = record.issuer.as_deref().unwrap_or("-"),
                subject = record.subject.as_deref().unwrap_or("-"),
                target_id = record.target.as_deref().unwrap_or("-"),
                policies = ?record.policy_ids,
                outcome = error.code,
                description = %error.description,
                "exchange refused"
            );
            notice(state, &record).await;
            Err(Refused { error, record })
        }
    }
}

/// The refusal of a decision: its record notes the error the client is sent.
fn refuse(mut record: ExchangeRecord, error: ApiError) -> Refused {
    record.refusal = Some(Refusal {
        code: error.code,
        description: error.description.clone(),
    });
    Refused {
        error,
        record: Box::new(record),
    }
}

/// The audit line of a decision.
fn audit_event<'a>(state: &AppState, record: &'a ExchangeRecord) -> AuditEvent<'a> {
    let granted = record.granted();
    AuditEvent {
        time: state.services.clock.now(),
        request_id: &record.request_id,
        client_ip: record.client_ip.to_string(),
        issuer: record.issuer.as_deref(),
        token_sub: record.token_sub.as_deref(),
        token_sha256: record.token_sha256.as_deref(),
        subject: record.subject.as_deref(),
        target: record.target.as_deref(),
        decision: if granted { "allow" } else { "deny" },
        policy_ids: &record.policy_ids,
        policy_decision: record.policy_decision,
        error: record.refusal.as_ref().map(|r| r.code),
        reason: record.refusal.as_ref().map(|r| r.description.as_str()),
        cache: record.cache.filter(|_| granted).map(|c| c.as_str()),
        credential_sha256: record.credential_sha256.as_deref(),
        upstream_request_id: record.upstream_request_id.as_deref().filter(|_| granted),
        revision: &record.revision,
        shadow_decision: record.shadow.as_ref().map(|s| s.decision),
        shadow_policy_ids: record.shadow.as_ref().map(|s| s.policy_ids.as_slice()),
        identity: record
            .replay
            .as_ref()
            .and_then(|r| r.identity.as_ref())
            .map(|i| AuditIdentity {
                subject: i.subject.clone(),
                groups: i.groups.clone(),
                attributes: i.attributes.clone(),
            }),
        request: record.replay.as_ref().map(|r| {
            let (audience, resource) = match &r.target {
                TargetSelector::Audience(a) => (Some(a.clone()), None),
                TargetSelector::Resource(u) => (None, Some(u.clone())),
            };
            AuditRequest {
                audience,
                resource,
                scopes: r.scopes.clone(),
                source_ip: r.source_ip,
                client_certificate: r.client_certificate.as_deref().cloned(),
            }
        }),
    }
}

/// Every `outcome` label value a token request can have: `granted` or an RFC 6749 code.
const OUTCOMES: &[&str] = &[
    "granted",
    "invalid_request",
    "invalid_target",
    "invalid_scope",
    "unsupported_grant_type",
    "slow_down",
    "invalid_dpop_proof",
    "use_dpop_nonce",
    "temporarily_unavailable",
    "server_error",
];

/// Creates at 0 every series of the counters this module increments whose label values
/// are bounded by the config (its issuers, targets and their kinds) or fixed: an alert
/// on `increase(…[5m])` sees the first failure. Called at start-up and after each reload
/// (a new issuer or target gets its series).
pub fn declare_series(metrics: &crate::metrics::Metrics, snapshot: &crate::snapshot::Snapshot) {
    let issuers: Vec<&str> = snapshot
        .config
        .issuers
        .iter()
        .map(|i| i.id.as_str())
        .chain(["unknown"])
        .collect();
    let mut targets: Vec<&str> = snapshot.targets.keys().map(String::as_str).collect();
    targets.push("unknown");
    for issuer in &issuers {
        for target in &targets {
            for outcome in OUTCOMES {
                metrics.declare(
                    "ferry_exchanges_total",
                    &[("issuer", issuer), ("target", target), ("outcome", outcome)],
                );
            }
        }
    }
    for decision in ["allow", "deny", "error"] {
        metrics.declare("ferry_policy_decisions_total", &[("decision", decision)]);
    }
    for result in ["hit", "miss"] {
        metrics.declare("ferry_cache_requests_total", &[("result", result)]);
    }
    let backend = snapshot.issuer.keys().active.backend();
    for reason in ["unavailable", "refused"] {
        metrics.declare(
            "ferry_signing_failures_total",
            &[("backend", backend), ("reason", reason)],
        );
    }
    let mut kinds: Vec<&str> = snapshot
        .targets
        .values()
        .map(|t| t.provider.kind())
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    for provider in kinds {
        for outcome in ["ok", "denied", "unavailable", "bad_answer", "error"] {
            metrics.declare(
                "ferry_provider_calls_total",
                &[("provider", provider), ("outcome", outcome)],
            );
        }
    }
    for outcome in ["success", "failure"] {
        metrics.declare("ferry_config_reloads_total", &[("outcome", outcome)]);
    }
    for (kind, via) in [
        ("subject", "admin"),
        ("issuer_sub", "admin"),
        ("jti", "admin"),
        ("target", "admin"),
        ("jti", "rfc7009"),
    ] {
        metrics.declare("ferry_revocations_total", &[("kind", kind), ("via", via)]);
    }
    metrics.declare("ferry_rate_limited_total", &[]);
    metrics.declare("ferry_audit_write_failures_total", &[]);
    for direction in ["allow_to_deny", "deny_to_allow"] {
        metrics.declare(
            "ferry_shadow_disagreements_total",
            &[("direction", direction)],
        );
    }
    for kind in crate::anomaly::Kind::ALL {
        metrics.declare("ferry_anomalies_total", &[("kind", kind.as_str())]);
    }
    if snapshot.config.anomalies.webhook_url.is_some() {
        for outcome in ["delivered", "failed", "dropped"] {
            metrics.declare("ferry_anomaly_webhook_total", &[("outcome", outcome)]);
        }
    }
}

/// With `token_reuse_across_clients.shared`: the address the store recorded first for
/// this token on any replica (recording this request's when it is the first). A store
/// that cannot answer leaves the check to this replica's own memory.
async fn shared_first_client(
    state: &AppState,
    record: &ExchangeRecord,
    config: &crate::config::anomalies::AnomaliesConfig,
) -> Option<Option<std::net::IpAddr>> {
    let reuse = &config.token_reuse_across_clients;
    if !(config.enabled && reuse.enabled && reuse.shared) || record.subject.is_none() {
        return None;
    }
    let token = record.token_sha256.as_deref()?;
    let client = record.client_ip.to_string();
    match state
        .services
        .store
        .first_client(token, &client, reuse.remember.0)
        .await
    {
        Ok(first) => Some(first.and_then(|f| f.parse().ok())),
        Err(e) => {
            tracing::warn!(target: LOG_TARGET, error = %e, "the store cannot answer for token reuse; this replica's record is used");
            None
        }
    }
}

/// Runs the misuse detector over a settled decision; each anomaly it raises is counted,
/// logged at warn, written to the audit trail after the decision's line, and queued for
/// the webhook.
async fn notice(state: &AppState, record: &ExchangeRecord) {
    let snapshot = state.snapshot.load();
    let config = &snapshot.config.anomalies;
    let now = state.services.clock.now();
    let shared_first = shared_first_client(state, record, config).await;
    for anomaly in state
        .services
        .anomalies
        .observe(record, now, config, shared_first)
    {
        let kind = anomaly.kind.as_str();
        state
            .metrics
            .inc("ferry_anomalies_total", &[("kind", kind)]);
        tracing::warn!(
            target: LOG_TARGET,
            kind,
            anomaly_id = anomaly.id,
            subject = anomaly.subject.as_deref(),
            issuer = anomaly.issuer.as_deref(),
            client_ip = %anomaly.client_ip,
            summary = %anomaly.summary,
            "anomaly"
        );
        if state.audit.is_enabled() && !state.audit.record_anomaly(&anomaly).await {
            state.metrics.inc("ferry_audit_write_failures_total", &[]);
        }
        if let Some(url) = &config.webhook_url
            && let Some(webhook) = state.webhook(config)
        {
            webhook.send(
                url,
                config.webhook_attempts,
                state.audit.replica(),
                &anomaly,
                &state.metrics,
            );
        }
    }
}

/// Counts a decision: exchanges by issuer, target and outcome, their latency, policy
/// decisions, cache lookups and provider calls.
fn count(state: &AppState, record: &ExchangeRecord) {
    let outcome = record.outcome();
    let m = &state.metrics;
    m.inc(
        "ferry_exchanges_total",
        &[
            ("issuer", record.issuer.as_deref().unwrap_or("unknown")),
            ("target", record.target.as_deref().unwrap_or("unknown")),
            ("outcome", outcome),
        ],
    );
    m.observe(
        "ferry_exchange_duration_seconds",
        &[("outcome", outcome)],
        record.started.elapsed().as_secs_f64(),
    );
    if outcome == "slow_down" {
        m.inc("ferry_rate_limited_total", &[]);
    }
    if let Some(decision) = record.policy_decision {
        m.inc("ferry_policy_decisions_total", &[("decision", decision)]);
    }
    if let Some(direction) = record.shadow_disagreement() {
        m.inc(
            "ferry_shadow_disagreements_total",
            &[("direction", direction)],
        );
    }
    if let Some(cache) = record.cache {
        m.inc("ferry_cache_requests_total", &[("result", cache.as_str())]);
    }
    if let (Some(call), Some(kind)) = (record.provider, record.target_kind) {
        m.inc(
            "ferry_provider_calls_total",
            &[("provider", kind), ("outcome", call.outcome)],
        );
        m.observe(
            "ferry_provider_duration_seconds",
            &[("provider", kind)],
            call.seconds,
        );
    }
}

/// One span per request (request id, route), one log line at the end, and a hard
/// timeout that answers 503 rather than hanging.
pub async fn log_request(
    State((state, timeout)): State<(Arc<AppState>, Duration)>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = request_id_of(req.headers());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(request::parse_traceparent);
    let span = tracing::info_span!(
        target: LOG_TARGET,
        "request",
        request_id = %request_id,
        %method,
        %route,
        traceparent = traceparent.as_deref(),
        issuer = tracing::field::Empty,
        subject = tracing::field::Empty,
        target = tracing::field::Empty,
        outcome = tracing::field::Empty,
        cache = tracing::field::Empty,
        policies = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    crate::telemetry::adopt_remote_parent(&span, traceparent.as_deref());
    if let Some(t) = traceparent {
        req.extensions_mut().insert(Traceparent(t));
    }
    let mut response = {
        use tracing::Instrument as _;
        match tokio::time::timeout(timeout, next.run(req).instrument(span.clone())).await {
            Ok(r) => r,
            Err(_) => ApiError::unavailable("the request timed out", Duration::from_secs(1))
                .into_response(),
        }
    };
    let status = response.status().as_u16();
    // Whole microseconds: `0.354`, not `0.35368900000000003`.
    let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
    let latency_ms = f64::from(micros) / 1000.0;
    let record = response.extensions_mut().remove::<Box<ExchangeRecord>>();
    if let Some(r) = &record {
        count(&state, r);
    }
    // Recorded on the span only for trace export: a log line formats its own fields once,
    // while each field recorded on a span re-encodes the span's JSON.
    if crate::telemetry::spans_exported() {
        span.record("latency_ms", latency_ms);
        if let Some(r) = &record {
            span.record("issuer", r.issuer.as_deref());
            span.record("target", r.target.as_deref());
            span.record("outcome", r.outcome());
            span.record("subject", r.subject.as_deref());
            span.record("cache", log_cache(r));
            if !r.policy_ids.is_empty() {
                span.record("policies", tracing::field::debug(&r.policy_ids));
            }
        }
    }
    span.in_scope(|| match &record {
        Some(r) => tracing::info!(
            target: LOG_TARGET,
            status,
            latency_ms,
            issuer = r.issuer.as_deref(),
            subject = r.subject.as_deref(),
            // `target` in a JSON line is the module that logged it.
            target_id = r.target.as_deref(),
            outcome = r.outcome(),
            cache = log_cache(r),
            policies = ?r.policy_ids,
            "request finished"
        ),
        None => tracing::info!(target: LOG_TARGET, status, latency_ms, "request finished"),
    });
    // Last: the console keeps the record itself (moved, not copied).
    if let Some(r) = record {
        let now = state.services.clock.now();
        state.console.activity.push(now, latency_ms, r);
    }
    response
}

/// The `cache` field of a log line: where a granted credential came from.
fn log_cache(record: &ExchangeRecord) -> Option<&'static str> {
    record
        .cache
        .filter(|_| record.granted())
        .map(|c| c.as_str())
}
