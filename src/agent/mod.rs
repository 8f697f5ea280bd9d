//! `ferry agent`: one small process beside a workload that holds the workload's own
//! token, exchanges it with Ferry, and serves each cloud SDK's native credential
//! endpoint — AWS container credentials, the GCP metadata server, Azure managed
//! identity (App Service and IMDS shapes) — so an SDK gets Ferry's credentials from
//! environment variables alone.
//!
//! Trust model: the agent's port is the workload's. It listens on loopback by default;
//! the AWS and App Service shapes also require the local secret (`secret_file`), which
//! the agent creates with mode 0600 for the workload to read; the GCP metadata and
//! Azure IMDS shapes carry no secret by their protocol (like the real servers, they
//! require their flavour header and refuse a request that came through a proxy), so
//! whoever can reach the port gets those tokens — the same as a VM's metadata server.

mod aws;
mod azure;
pub mod cache;
pub mod config;
mod gcp;
mod secret;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub use cache::{Credentials, Key, Reader};
pub use config::AgentConfig;
pub use secret::LocalSecret;

/// What every handler shares.
#[derive(Debug)]
pub struct Agent {
    pub config: AgentConfig,
    pub credentials: Arc<Credentials>,
    pub secret: Option<LocalSecret>,
    requests: Requests,
}

/// Requests answered by one endpoint family, by outcome.
#[derive(Debug, Default)]
struct Counters {
    served: AtomicU64,
    refused: AtomicU64,
    unavailable: AtomicU64,
}

/// Requests answered, by endpoint family (in [`ENDPOINTS`] order).
type Requests = [Counters; 4];

/// The endpoint families, for metrics.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Aws = 0,
    Gcp = 1,
    AzureAppService = 2,
    AzureImds = 3,
}

const ENDPOINTS: [&str; 4] = ["aws", "gcp", "azure_app_service", "azure_imds"];

/// An answer's outcome, for metrics.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Served,
    Refused,
    Unavailable,
}

impl Agent {
    /// The agent for a validated config: the Ferry client, the local secret (created
    /// when its file does not exist), and the credentials the config names, fetched
    /// now and kept fresh (call within a tokio runtime).
    pub fn start(config: AgentConfig) -> anyhow::Result<Arc<Self>> {
        let client = config.client()?;
        let secret = config
            .secret_file
            .as_deref()
            .map(LocalSecret::load_or_create)
            .transpose()?;
        let credentials = Credentials::new(client, config.subject.clone(), config.timeout);
        for target in config.aws.values() {
            credentials.pin(aws::key(target));
        }
        if let Some(g) = &config.gcp {
            credentials.pin(gcp::key(g, None));
        }
        if let Some(a) = &config.azure {
            for target in a.resources.values() {
                credentials.pin(azure::key(target));
            }
        }
        Ok(Arc::new(Self {
            config,
            credentials,
            secret,
            requests: Requests::default(),
        }))
    }

    fn count(&self, endpoint: Endpoint, outcome: Outcome) {
        let Some(c) = self.requests.get(endpoint as usize) else {
            return;
        };
        let n = match outcome {
            Outcome::Served => &c.served,
            Outcome::Refused => &c.refused,
            Outcome::Unavailable => &c.unavailable,
        };
        n.fetch_add(1, Relaxed);
    }
}

/// The agent's HTTP routes: the endpoints its config enables, `/healthz`, `/metrics`.
pub fn router(agent: Arc<Agent>) -> axum::Router {
    let mut router = axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/metrics", axum::routing::get(metrics));
    for path in agent.config.aws.keys() {
        router = router.route(path, axum::routing::get(aws::credentials));
    }
    if agent.config.gcp.is_some() {
        router = gcp::routes(router);
    }
    if let Some(a) = &agent.config.azure {
        router = router
            .route(&a.path, axum::routing::get(azure::app_service))
            .route(
                "/metadata/identity/oauth2/token",
                axum::routing::get(azure::imds),
            );
    }
    router.with_state(agent)
}

/// Serves the agent on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    agent: Arc<Agent>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(agent))
        .with_graceful_shutdown(shutdown)
        .await
}

type State = axum::extract::State<Arc<Agent>>;

/// 200 when every configured credential is held and servable, else 503; the
/// credentials' state (never a credential) either way.
async fn healthz(axum::extract::State(agent): State) -> Response {
    let now = SystemTime::now();
    let status = agent.credentials.status();
    let ready = status
        .iter()
        .filter(|s| s.pinned)
        .all(|s| s.expires_at.is_some_and(|e| e > now + cache::SERVE_MARGIN));
    let list: Vec<serde_json::Value> = status
        .iter()
        .map(|s| {
            serde_json::json!({
                "credential": s.label,
                "configured": s.pinned,
                "expires_in": s.expires_at.map(|e| e.duration_since(now).map_or(0, |d| d.as_secs())),
                "last_error": s.last_error,
            })
        })
        .collect();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(serde_json::json!({
            "status": if ready { "ok" } else { "waiting" },
            "credentials": list,
        })),
    )
        .into_response()
}

/// Prometheus text: requests by endpoint and outcome, exchanges with Ferry, each
/// credential's expiry.
async fn metrics(axum::extract::State(agent): State) -> Response {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP ferry_agent_requests_total SDK requests answered, by endpoint and outcome.\n# TYPE ferry_agent_requests_total counter"
    );
    for (name, c) in ENDPOINTS.iter().zip(&agent.requests) {
        for (outcome, c) in [
            ("served", &c.served),
            ("refused", &c.refused),
            ("unavailable", &c.unavailable),
        ] {
            let _ = writeln!(
                out,
                "ferry_agent_requests_total{{endpoint=\"{name}\",outcome=\"{outcome}\"}} {}",
                c.load(Relaxed)
            );
        }
    }
    let counts = &agent.credentials.counts;
    let _ = writeln!(
        out,
        "# HELP ferry_agent_exchanges_total Exchanges with Ferry, by outcome.\n# TYPE ferry_agent_exchanges_total counter"
    );
    let _ = writeln!(
        out,
        "ferry_agent_exchanges_total{{outcome=\"ok\"}} {}\nferry_agent_exchanges_total{{outcome=\"failed\"}} {}",
        counts.refresh_ok.load(Relaxed),
        counts.refresh_failed.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP ferry_agent_credential_expiry_timestamp_seconds When each held credential expires.\n# TYPE ferry_agent_credential_expiry_timestamp_seconds gauge"
    );
    for s in agent.credentials.status() {
        if let Some(e) = s.expires_at {
            let secs = e
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let label = s.label.replace(['\\', '"', '\n'], "_");
            let _ = writeln!(
                out,
                "ferry_agent_credential_expiry_timestamp_seconds{{credential=\"{label}\"}} {secs}"
            );
        }
    }
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
        .into_response()
}

/// Seconds from now to `t` (0 when past).
fn seconds_until(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::now())
        .map_or(0, |d| d.as_secs())
}

/// A string field of Ferry's answer or of its `credentials`.
fn field<'a>(body: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> Option<&'a str> {
    body.get(key).and_then(serde_json::Value::as_str)
}

fn credential_field<'a>(
    body: &'a serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Option<&'a str> {
    body.get("credentials")
        .and_then(serde_json::Value::as_object)
        .and_then(|c| field(c, key))
}

/// The status a failure to get a credential answers with.
fn unavailable_status(e: &cache::Unavailable) -> StatusCode {
    match e {
        cache::Unavailable::Refused(_) => StatusCode::FORBIDDEN,
        cache::Unavailable::Failed(_) | cache::Unavailable::Full => StatusCode::SERVICE_UNAVAILABLE,
    }
}
