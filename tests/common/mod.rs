//! Test harness: an in-process fake OIDC issuer (discovery + JWKS over a real loopback
//! socket, key rotation, several algorithms) and Ferry's real router over a temp config.
#![allow(dead_code)]

pub mod agent;
pub mod dev;
pub mod dpop;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use ferry::clock::{Clock, ManualClock};
use ferry::config::Config;
use ferry::exchange::{Services, SingleFlight};
use ferry::http::{AppState, app};
use ferry::issuer::keys::{SigningKey, generate_private_pem, signing_key_from_pem};
use ferry::provider_api::CredentialProvider;
use ferry::snapshot::{BuildOptions, Snapshot};
use http_body_util::BodyExt as _;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};
use tower::ServiceExt as _;

pub const AUDIENCE: &str = "ferry-test";
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

struct FakeState {
    issuer: Mutex<String>,
    keys: Mutex<Vec<Arc<SigningKey>>>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    failing: AtomicBool,
    /// Answer JWKS requests with a body that is not JSON.
    garbage: AtomicBool,
    /// Wait this long (ms) before answering discovery and JWKS requests.
    delay_ms: std::sync::atomic::AtomicU64,
    cache_control: Mutex<Option<String>>,
}

/// A fake OIDC issuer on 127.0.0.1.
pub struct FakeIssuer {
    pub url: String,
    state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn discovery(State(s): State<Arc<FakeState>>) -> axum::response::Response {
    s.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    slow(&s).await;
    if s.failing.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let issuer = s.issuer.lock().unwrap().clone();
    axum::Json(json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")})).into_response()
}

async fn jwks(State(s): State<Arc<FakeState>>) -> axum::response::Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    slow(&s).await;
    if s.failing.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if s.garbage.load(Ordering::SeqCst) {
        return (StatusCode::OK, "<html>not a key set</html>").into_response();
    }
    let keys: Vec<Value> = s
        .keys
        .lock()
        .unwrap()
        .iter()
        .map(|k| serde_json::to_value(&k.public).unwrap())
        .collect();
    let mut headers = HeaderMap::new();
    if let Some(cc) = s.cache_control.lock().unwrap().clone() {
        headers.insert(header::CACHE_CONTROL, cc.parse().unwrap());
    }
    (headers, axum::Json(json!({ "keys": keys }))).into_response()
}

async fn slow(s: &FakeState) {
    let ms = s.delay_ms.load(Ordering::SeqCst);
    if ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

pub fn make_key(alg: Algorithm, kid: &str) -> Arc<SigningKey> {
    let pem = generate_private_pem(alg).unwrap();
    Arc::new(signing_key_from_pem(alg, pem.as_bytes(), Some(kid), 0).unwrap())
}

impl FakeIssuer {
    /// Starts an issuer with one key per algorithm, kids `k1`, `k2`, …
    pub async fn start(algs: &[Algorithm]) -> Self {
        let state = Arc::new(FakeState {
            issuer: Mutex::new(String::new()),
            keys: Mutex::new(
                algs.iter()
                    .enumerate()
                    .map(|(i, a)| make_key(*a, &format!("k{}", i + 1)))
                    .collect(),
            ),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            garbage: AtomicBool::new(false),
            delay_ms: std::sync::atomic::AtomicU64::new(0),
            cache_control: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        *state.issuer.lock().unwrap() = url.clone();
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { url, state, task }
    }

    pub fn key(&self, kid: &str) -> Arc<SigningKey> {
        self.state
            .keys
            .lock()
            .unwrap()
            .iter()
            .find(|k| k.kid == kid)
            .cloned()
            .unwrap_or_else(|| panic!("no key {kid}"))
    }

    /// Publishes a new key (rotation at the issuer).
    pub fn add_key(&self, key: Arc<SigningKey>) {
        self.state.keys.lock().unwrap().push(key);
    }

    pub fn remove_key(&self, kid: &str) {
        self.state.keys.lock().unwrap().retain(|k| k.kid != kid);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// JWKS answers that are not JSON (true) or real ones (false).
    pub fn set_garbage(&self, garbage: bool) {
        self.state.garbage.store(garbage, Ordering::SeqCst);
    }

    /// Delays every discovery and JWKS answer by `ms`.
    pub fn set_delay_ms(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn set_cache_control(&self, value: Option<&str>) {
        *self.state.cache_control.lock().unwrap() = value.map(str::to_owned);
    }

    /// Standard claims for a token of this issuer at `now`.
    pub fn claims(&self, now: i64) -> Value {
        json!({
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "repo:acme/infra:ref:refs/heads/main",
            "org": "acme",
            "repository": "acme/infra",
            "groups": ["deployers"],
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Signs `claims` with key `kid` (header `kid` set).
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let key = self.key(kid);
        sign_with(&key, Some(kid), claims)
    }
}

pub fn sign_with(key: &SigningKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

pub const POLICY: &str = r#"
@id("deployers-api")
permit (principal in Ferry::Group::"deployers", action == Ferry::Action::"exchange",
        resource == Ferry::Target::"api")
when { principal.attributes.repository == "acme/infra" };

@id("no-admin-scope")
forbid (principal, action, resource) when { context.scopes.contains("admin") };
"#;

/// The default test config for an issuer at `issuer_url`.
pub fn config_text(issuer_url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:9"

[signing]
algorithm = "RS256"
ephemeral = true

[jwks]
unknown_kid_min_interval = "30s"
refresh_min = "1m"
max_stale = "1h"
fetch_timeout = "2s"

[[issuers]]
id = "fake"
issuer = "{issuer_url}"
audiences = ["{AUDIENCE}", "another-audience"]
algorithms = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
leeway = "10s"
max_age = "1h"
condition = 'assertion.org == "acme"'
[issuers.mapping]
subject = '"fake:" + assertion.sub'
groups = 'has(assertion.groups) ? assertion.groups : []'
[issuers.mapping.attributes]
repository = "assertion.repository"

[[targets]]
id = "api"
kind = "jwt"
audience = "https://api.example.com"
resource = "https://api.example.com/v1"
ttl = "5m"
scopes = ["read", "write", "admin"]

[[targets]]
id = "other"
kind = "jwt"
audience = "https://other.example.com"
ttl = "5m"

[policy]
files = ["policies/*.cedar"]
"#
    )
}

/// A running Ferry over a fake issuer.
pub struct Harness {
    pub issuer: FakeIssuer,
    pub state: Arc<AppState>,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
}

pub fn now() -> i64 {
    ferry::clock::SystemClock.now()
}

async fn start_state(
    mut runtime: Snapshot,
    clock: Arc<ManualClock>,
    provider: Option<Arc<dyn CredentialProvider>>,
) -> Arc<AppState> {
    if let Some(p) = provider {
        assert!(runtime.replace_provider("api", p));
    }
    runtime.warm_up().await;
    let store = ferry::store::open(&runtime.config).unwrap_or_else(|e| panic!("store: {e}"));
    AppState::new(
        runtime,
        Services {
            store,
            clock,
            flights: SingleFlight::default(),
            anomalies: Default::default(),
        },
    )
    .unwrap()
}

pub fn build_runtime(
    dir: &std::path::Path,
    text: &str,
    policy: &str,
    clock: Arc<ManualClock>,
) -> Snapshot {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/test.cedar"), policy).unwrap();
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
    let (rt, _) = Snapshot::build(
        config,
        &BuildOptions {
            clock,
            require_keys: true,
            previous_ephemeral: None,
            previous_managed: None,
            metrics: Default::default(),
        },
    )
    .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt
}

impl Harness {
    pub async fn start() -> Self {
        Self::with(&[Algorithm::RS256, Algorithm::ES256], |t| t, POLICY).await
    }

    pub async fn with(
        algs: &[Algorithm],
        edit: impl FnOnce(String) -> String,
        policy: &str,
    ) -> Self {
        Self::with_provider(algs, edit, policy, None).await
    }

    /// A harness whose `api` target uses `provider` (when given) and whose store is
    /// whatever the config's `[store]` says.
    pub async fn with_provider(
        algs: &[Algorithm],
        edit: impl FnOnce(String) -> String,
        policy: &str,
        provider: Option<Arc<dyn CredentialProvider>>,
    ) -> Self {
        ferry::install_crypto_provider();
        let issuer = FakeIssuer::start(algs).await;
        let clock = ManualClock::new(now());
        let dir = tempfile::tempdir().unwrap();
        let runtime = build_runtime(
            dir.path(),
            &edit(config_text(&issuer.url)),
            policy,
            Arc::clone(&clock),
        );
        let state = start_state(runtime, clock.clone(), provider).await;
        Self {
            issuer,
            state,
            clock,
            dir,
        }
    }

    /// Another replica: same config file, same clock, its own store connection and
    /// single-flight table.
    pub async fn replica(&self, provider: Option<Arc<dyn CredentialProvider>>) -> Arc<AppState> {
        let config = Config::load(&self.dir.path().join("ferry.toml")).unwrap();
        let (rt, _) = Snapshot::build(
            config,
            &BuildOptions {
                clock: self.clock.clone(),
                require_keys: true,
                previous_ephemeral: Some(self.state.snapshot.load().issuer.keys().clone()),
                previous_managed: None,
                metrics: std::sync::Arc::clone(&self.state.metrics),
            },
        )
        .unwrap();
        start_state(rt, self.clock.clone(), provider).await
    }

    pub async fn exchange_on(
        &self,
        state: &Arc<AppState>,
        token: &str,
        target: &str,
        scope: Option<&str>,
    ) -> Resp {
        exchange_via(app(Arc::clone(state)), token, target, scope).await
    }

    pub fn router(&self) -> Router {
        app(Arc::clone(&self.state))
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// A valid token with `k1`, optionally edited.
    pub fn token(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = self.issuer.claims(self.now());
        edit(&mut claims);
        self.issuer.sign("k1", &claims)
    }

    pub async fn exchange_token(&self, token: &str, target: &str, scope: Option<&str>) -> Resp {
        exchange_via(self.router(), token, target, scope).await
    }

    pub async fn post_form(&self, form: &[(&str, &str)]) -> Resp {
        let body = serde_urlencoded::to_string(form).unwrap();
        self.post(
            "/oauth2/token",
            "application/x-www-form-urlencoded",
            body.into_bytes(),
        )
        .await
    }

    pub async fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> Resp {
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        send(self.router(), req).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        send(
            self.router(),
            Request::get(path).body(Body::empty()).unwrap(),
        )
        .await
    }
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Resp {
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
    pub fn description(&self) -> &str {
        self.body["error_description"].as_str().unwrap_or("")
    }
}

/// An RFC 8693 request for `token` → `target` through `router`.
pub async fn exchange_via(router: Router, token: &str, target: &str, scope: Option<&str>) -> Resp {
    let mut form = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", token),
        ("subject_token_type", JWT_TYPE),
        ("audience", target),
    ];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    let body = serde_urlencoded::to_string(&form).unwrap();
    let req = Request::post("/oauth2/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    send(router, req).await
}

pub async fn send(router: Router, req: Request<Body>) -> Resp {
    let res = router.oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let raw = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        body,
        raw,
    }
}
