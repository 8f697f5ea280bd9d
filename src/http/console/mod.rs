//! The operator console at `/admin/ui`: server-rendered pages over the same state the
//! admin API, the metrics and the audit trail read; every asset is embedded.
//!
//! Sign-in posts the admin token once and gets a server-side session (an `HttpOnly`,
//! `SameSite=Strict` cookie, `Secure` over TLS; idle for 15 minutes or 8 hours old, it
//! ends, as it does at sign-out, at a restart and when the admin token changes). Every
//! form that changes state carries the session's CSRF token. Every answer carries a
//! strict Content-Security-Policy (no inline script or style), `X-Frame-Options: DENY`
//! and `Referrer-Policy: no-referrer`. With no admin token configured the console,
//! like the admin API, answers 404.

pub mod activity;
mod chart;
mod pages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq as _;

use super::AppState;

/// The session cookie's name.
const COOKIE: &str = "ferry_console";
/// A session unused this long ends (seconds).
pub const IDLE: i64 = 15 * 60;
/// A session this old ends whatever its use (seconds).
pub const LIFETIME: i64 = 8 * 3600;
/// Sessions at most per replica; a sign-in beyond them is refused until one ends.
const MAX_SESSIONS: usize = 64;
/// Failed sign-ins per minute per replica before sign-in is refused for the minute.
const MAX_FAILURES: u32 = 10;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// One signed-in operator.
#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    created: i64,
    last_seen: i64,
    /// Fingerprint of the admin token it signed in with: a changed token ends it.
    admin: String,
}

/// What a page handler knows of its session.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The token every state-changing form must carry.
    pub csrf: String,
}

/// The console's sessions and its view of recent traffic.
#[derive(Debug, Default)]
pub struct Console {
    /// By SHA-256 of the cookie value.
    sessions: Mutex<HashMap<String, Session>>,
    /// Failed sign-ins in the current minute: (Unix minute, count).
    failures: Mutex<(i64, u32)>,
    pub activity: activity::Activity,
}

fn random_token() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Console {
    /// A new session for the holder of the admin token with fingerprint `admin`: its
    /// cookie value, or `None` when the session table is full.
    fn open(&self, now: i64, admin: &str) -> Option<String> {
        let mut sessions = self.sessions.lock().ok()?;
        sessions.retain(|_, s| live(s, now));
        if sessions.len() >= MAX_SESSIONS {
            return None;
        }
        let id = random_token();
        sessions.insert(
            crate::sha256_hex(id.as_bytes()),
            Session {
                csrf: random_token(),
                created: now,
                last_seen: now,
                admin: admin.to_owned(),
            },
        );
        Some(id)
    }

    /// The live session behind cookie value `id`, touched.
    fn session(&self, id: &str, now: i64, admin: &str) -> Option<SignedIn> {
        let mut sessions = self.sessions.lock().ok()?;
        let key = crate::sha256_hex(id.as_bytes());
        let s = sessions.get_mut(&key)?;
        if !live(s, now) || s.admin != admin {
            sessions.remove(&key);
            return None;
        }
        s.last_seen = now;
        Some(SignedIn {
            csrf: s.csrf.clone(),
        })
    }

    fn close(&self, id: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(&crate::sha256_hex(id.as_bytes()));
        }
    }

    /// Counts a failed sign-in; true while sign-in is still allowed this minute.
    fn failed(&self, now: i64) -> bool {
        let Ok(mut f) = self.failures.lock() else {
            return false;
        };
        let minute = now.div_euclid(60);
        if f.0 != minute {
            *f = (minute, 0);
        }
        f.1 += 1;
        f.1 <= MAX_FAILURES
    }

    fn locked_out(&self, now: i64) -> bool {
        self.failures
            .lock()
            .map(|f| f.0 == now.div_euclid(60) && f.1 >= MAX_FAILURES)
            .unwrap_or(true)
    }
}

fn live(s: &Session, now: i64) -> bool {
    now < s.last_seen.saturating_add(IDLE) && now < s.created.saturating_add(LIFETIME)
}

/// The console's routes, merged into the app's router.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/ui", get(root))
        .route("/admin/ui/", get(root))
        .route("/admin/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/admin/ui/sign-out", post(sign_out))
        .route("/admin/ui/overview", get(pages::overview))
        .route("/admin/ui/issuers", get(pages::issuers))
        .route("/admin/ui/decisions", get(pages::decisions))
        .route("/admin/ui/decisions/{id}", get(pages::decision))
        .route("/admin/ui/policies", get(pages::policies))
        .route(
            "/admin/ui/revocations",
            get(pages::revocations).post(pages::revoke),
        )
        .route("/admin/ui/revocations/lift", post(pages::lift))
        .route("/admin/ui/anomalies", get(pages::anomalies))
        .route(
            "/admin/ui/anomalies/{id}/acknowledge",
            post(pages::acknowledge),
        )
        .route("/admin/ui/assets/console.css", get(css))
        .route("/admin/ui/assets/console.js", get(js))
}

/// The middleware in front of every console route: off (404) without an admin token;
/// every page but sign-in and the assets needs a live session (else a redirect to
/// sign-in); every answer gets the security headers.
pub async fn gate(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if !path.starts_with("/admin/ui") {
        return next.run(req).await;
    }
    let response = if state.snapshot.load().admin_token.is_none() {
        (StatusCode::NOT_FOUND, "not found").into_response()
    } else if path == "/admin/ui/sign-in" || path.starts_with("/admin/ui/assets/") {
        next.run(req).await
    } else {
        match signed_in(&state, req.headers()) {
            Some(s) => {
                req.extensions_mut().insert(s);
                next.run(req).await
            }
            None => see_other("/admin/ui/sign-in"),
        }
    };
    secure(response)
}

/// The security headers every console answer carries.
fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn see_other(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(str::to_owned)
}

fn admin_fingerprint(state: &AppState) -> Option<String> {
    let snapshot = state.snapshot.load();
    snapshot
        .admin_token
        .as_ref()
        .map(|t| crate::fingerprint(t.expose().as_bytes()))
}

fn signed_in(state: &AppState, headers: &HeaderMap) -> Option<SignedIn> {
    let id = cookie_value(headers)?;
    let admin = admin_fingerprint(state)?;
    state
        .console
        .session(&id, state.services.clock.now(), &admin)
}

/// The form fields of a POST body.
pub(crate) fn form(body: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Whether the form carries the session's CSRF token.
pub(crate) fn csrf_ok(session: &SignedIn, form: &HashMap<String, String>) -> bool {
    form.get("csrf")
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(session.csrf.as_bytes())))
}

/// The answer to a state-changing POST without the session's CSRF token.
pub(crate) fn csrf_refused() -> Response {
    pages::message(
        StatusCode::FORBIDDEN,
        "Refused",
        "This form has expired or did not come from this console (its CSRF token is missing or wrong). Open the page again and resubmit.",
    )
}

async fn root() -> Response {
    see_other("/admin/ui/overview")
}

async fn sign_in_page() -> Response {
    pages::sign_in(StatusCode::OK, None)
}

async fn sign_in(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let now = state.services.clock.now();
    if state.console.locked_out(now) {
        return pages::sign_in(
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many failed sign-ins on this replica: wait a minute."),
        );
    }
    let fields = form(&body);
    let presented = fields.get("token").map(|t| t.trim()).unwrap_or("");
    let snapshot = state.snapshot.load();
    let Some(expected) = &snapshot.admin_token else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    if !bool::from(presented.as_bytes().ct_eq(expected.expose().as_bytes())) {
        state.console.failed(now);
        tracing::warn!("console sign-in refused: wrong admin token");
        return pages::sign_in(
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin token."),
        );
    }
    let admin = crate::fingerprint(expected.expose().as_bytes());
    let Some(id) = state.console.open(now, &admin) else {
        return pages::sign_in(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(
                "Too many console sessions are open on this replica; sign out of one, or wait for one to expire.",
            ),
        );
    };
    tracing::info!(session = %crate::fingerprint(id.as_bytes()), "console sign-in");
    let secure = if state.tls.get().is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!("{COOKIE}={id}; Path=/admin/ui; HttpOnly; SameSite=Strict{secure}");
    let mut r = see_other("/admin/ui/overview");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn sign_out(
    State(state): State<Arc<AppState>>,
    axum::Extension(session): axum::Extension<SignedIn>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !csrf_ok(&session, &form(&body)) {
        return csrf_refused();
    }
    if let Some(id) = cookie_value(&headers) {
        state.console.close(&id);
        tracing::info!(session = %crate::fingerprint(id.as_bytes()), "console sign-out");
    }
    let mut r = see_other("/admin/ui/sign-in");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "ferry_console=; Path=/admin/ui; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

async fn css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// A path segment parsed as a number, for routes that take one.
pub(crate) fn number(Path(id): Path<String>) -> Option<u64> {
    id.parse().ok()
}
