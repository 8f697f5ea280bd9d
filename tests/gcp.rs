//! GCP targets through Ferry against an in-process fake of Google's STS (`/v1/token`)
//! and IAM Credentials (`generateAccessToken`) that follows the documented requests and
//! responses, records what Ferry sent, and can deny, throttle or hang.
#![cfg(test)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::agent;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    Deny,
    Throttle,
    Hang,
    Garbage,
}

#[derive(Clone, Default)]
struct Fake {
    answer: Arc<Mutex<Option<Answer>>>,
    sts: Arc<Mutex<Vec<Value>>>,
    iam: Arc<Mutex<Vec<(String, String, Value)>>>,
    /// When set, `generateAccessToken` issues numbered tokens living this many seconds
    /// (what a refresh test needs), whatever lifetime was asked.
    short_lived: Arc<Mutex<Option<u64>>>,
}

impl Fake {
    fn answer(&self) -> Answer {
        self.answer.lock().unwrap().unwrap_or(Answer::Ok)
    }
}

/// Google's STS takes its request as JSON (Ferry) or as a form (google-auth).
async fn sts(
    State(f): State<Fake>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> axum::response::Response {
    let form = headers.get("content-type").is_some_and(|v| {
        v.as_bytes()
            .starts_with(b"application/x-www-form-urlencoded")
    });
    let body: Value = if form {
        let pairs: std::collections::HashMap<String, String> =
            serde_urlencoded::from_bytes(&raw).unwrap_or_default();
        // The form's snake_case names, as the JSON's camelCase ones.
        let mut v = serde_json::Map::new();
        for (k, val) in pairs {
            let camel = k
                .split('_')
                .enumerate()
                .map(|(i, w)| {
                    if i == 0 {
                        w.to_owned()
                    } else {
                        w[..1].to_uppercase() + &w[1..]
                    }
                })
                .collect::<String>();
            v.insert(camel, val.into());
        }
        Value::Object(v)
    } else {
        match serde_json::from_slice(&raw) {
            Ok(v) => v,
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
    };
    f.sts.lock().unwrap().push(body.clone());
    match f.answer() {
        Answer::Deny => (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant", "error_description": "The audience in ID Token does not match the expected audience."}))).into_response(),
        Answer::Throttle => (StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": "rate_limit_exceeded"}))).into_response(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Answer::Garbage => (StatusCode::OK, "<html>proxy error</html>").into_response(),
        Answer::Ok => {
            // https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token
            for k in ["grantType", "audience", "scope", "requestedTokenType", "subjectToken", "subjectTokenType"] {
                if body.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                    return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_request", "error_description": format!("missing {k}")}))).into_response();
                }
            }
            let n = f.sts.lock().unwrap().len();
            Json(json!({"access_token": format!("federated-{n}"), "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": 3599})).into_response()
        }
    }
}

async fn generate(
    State(f): State<Fake>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    f.iam
        .lock()
        .unwrap()
        .push((rest.clone(), auth.clone(), body.clone()));
    let Some(_sa) = rest.strip_suffix(":generateAccessToken") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !auth.starts_with("Bearer federated-") && auth != "Bearer ferry-own-token" {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"code": 401, "message": "no", "status": "UNAUTHENTICATED"}})),
        )
            .into_response();
    }
    let mut lifetime: u64 = body["lifetime"]
        .as_str()
        .and_then(|l| l.strip_suffix('s'))
        .and_then(|l| l.parse().ok())
        .unwrap_or(3600);
    let mut token = "ya29.impersonated-token".to_owned();
    if let Some(short) = *f.short_lived.lock().unwrap() {
        lifetime = short;
        token = format!("ya29.short-lived-{}", f.iam.lock().unwrap().len());
    }
    let expire = std::time::SystemTime::now() + Duration::from_secs(lifetime);
    // expireTime is RFC 3339 with nanoseconds, as Google returns it.
    let expire_time = humantime::format_rfc3339_nanos(expire).to_string();
    Json(json!({"accessToken": token, "expireTime": expire_time})).into_response()
}

/// Google's OAuth token endpoint for a service account key (JWT bearer grant, RFC 7523).
async fn oauth_token(State(f): State<Fake>, body: axum::body::Bytes) -> axum::response::Response {
    let form: std::collections::HashMap<String, String> =
        serde_urlencoded::from_bytes(&body).unwrap();
    f.sts.lock().unwrap().push(json!({"oauth": form}));
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        || !form.contains_key("assertion")
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request"})),
        )
            .into_response();
    }
    Json(json!({"access_token": "ferry-own-token", "expires_in": 3600, "token_type": "Bearer"}))
        .into_response()
}

async fn start_fake() -> (Fake, String) {
    let fake = Fake::default();
    let app = axum::Router::new()
        .route("/token", axum::routing::post(oauth_token))
        .route("/v1/token", axum::routing::post(sts))
        .route(
            "/v1/projects/-/serviceAccounts/{rest}",
            axum::routing::post(generate),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, url)
}

const PROVIDER: &str = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/ci/providers/ferry";

fn gcp_targets(url: &str) -> String {
    format!(
        r#"
[[targets]]
id = "gcp-sa"
kind = "gcp"
workload_identity_provider = "{PROVIDER}"
service_account = "deployer@acme-prod.iam.gserviceaccount.com"
scopes = ["https://www.googleapis.com/auth/cloud-platform", "https://www.googleapis.com/auth/devstorage.read_only"]
lifetime = "30m"
sts_endpoint = "{url}"
iam_credentials_endpoint = "{url}"

[[targets]]
id = "gcp-federated"
kind = "gcp"
workload_identity_provider = "{PROVIDER}"
sts_endpoint = "{url}"
"#
    )
}

const GCP_POLICY: &str = r#"
@id("deployers-gcp")
permit (principal in Ferry::Group::"deployers", action == Ferry::Action::"exchange", resource)
when { resource.kind == "gcp" };
"#;

async fn harness(url: &str) -> Harness {
    let targets = gcp_targets(url);
    Harness::with(
        &[Algorithm::RS256],
        move |t| t + &targets,
        &format!("{POLICY}\n{GCP_POLICY}"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_then_impersonation_sends_every_documented_field() {
    let (fake, url) = start_fake().await;
    let h = harness(&url).await;
    let r = h
        .exchange_token(
            &h.token(|_| {}),
            "gcp-sa",
            Some("https://www.googleapis.com/auth/cloud-platform"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["access_token"], "ya29.impersonated-token");
    assert_eq!(r.body["token_type"], "Bearer");
    let creds = &r.body["credentials"];
    assert_eq!(creds["access_token"], "ya29.impersonated-token");
    assert_eq!(creds["token_type"], "Bearer");
    let expire = humantime::parse_rfc3339(creds["expire_time"].as_str().unwrap()).unwrap();
    let in_secs = expire
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs();
    assert!((1790..=1800).contains(&in_secs), "{in_secs}");

    let sts = fake.sts.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        sts["grantType"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(sts["audience"], PROVIDER);
    assert_eq!(
        sts["requestedTokenType"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(
        sts["subjectTokenType"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(
        sts["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    let claims = h
        .state
        .snapshot
        .load()
        .issuer
        .verify_own(sts["subjectToken"].as_str().unwrap())
        .expect("a Ferry-signed JWT");
    assert_eq!(claims["aud"], format!("https:{PROVIDER}"));
    assert_eq!(claims["sub"], "fake:repo:acme/infra:ref:refs/heads/main");

    let (path, auth, body) = fake.iam.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        path,
        "deployer@acme-prod.iam.gserviceaccount.com:generateAccessToken"
    );
    assert_eq!(auth, "Bearer federated-1");
    assert_eq!(body["lifetime"], "1800s");
    assert_eq!(
        body["scope"],
        json!([
            "https://www.googleapis.com/auth/cloud-platform",
            "https://www.googleapis.com/auth/devstorage.read_only"
        ])
    );

    // Without a service account the federated token itself is returned.
    let r = h
        .exchange_token(&h.token(|_| {}), "gcp-federated", None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        r.body["access_token"]
            .as_str()
            .unwrap()
            .starts_with("federated-")
    );
    let expires_in = r.body["expires_in"].as_i64().unwrap();
    assert!((3590..=3600).contains(&expires_in), "{expires_in}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_throttling_and_hangs_map_to_oauth_errors() {
    let (fake, url) = start_fake().await;
    let h = harness(&url).await;

    *fake.answer.lock().unwrap() = Some(Answer::Deny);
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "d".into()), "gcp-federated", None)
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error(), "invalid_target");
    assert!(r.description().contains("invalid_grant"));
    assert!(
        !r.description().contains("audience in ID Token"),
        "never the upstream body"
    );
    assert_eq!(fake.sts.lock().unwrap().len(), 1, "denials are not retried");

    *fake.answer.lock().unwrap() = Some(Answer::Throttle);
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "t".into()), "gcp-federated", None)
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error(), "temporarily_unavailable");
    assert_eq!(
        fake.sts.lock().unwrap().len(),
        1 + 3,
        "throttling retried 3 times in all"
    );

    *fake.answer.lock().unwrap() = Some(Answer::Hang);
    let started = std::time::Instant::now();
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "h".into()), "gcp-federated", None)
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded by attempt timeouts and the 10 s budget"
    );

    // A 200 that is not the documented answer: the cloud's fault, 503, never a 500.
    *fake.answer.lock().unwrap() = Some(Answer::Garbage);
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "g".into()), "gcp-federated", None)
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error(), "temporarily_unavailable");
    assert!(
        !r.description().contains("proxy error"),
        "never the upstream body"
    );

    // And it recovers by itself.
    *fake.answer.lock().unwrap() = Some(Answer::Ok);
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "ok".into()), "gcp-federated", None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_mode_uses_ferrys_own_google_identity() {
    let (fake, url) = start_fake().await;
    // Ferry's own identity: a service account key file whose token_uri is the fake.
    let side = tempfile::tempdir().unwrap();
    let key = ferry::issuer::keys::generate_private_pem(Algorithm::RS256).unwrap();
    let key_file = side.path().join("ferry-sa.json");
    std::fs::write(
        &key_file,
        json!({"type": "service_account", "project_id": "acme-prod", "private_key_id": "k1", "private_key": key,
               "client_email": "ferry@acme-prod.iam.gserviceaccount.com", "client_id": "1", "token_uri": format!("{url}/token")})
        .to_string(),
    )
    .unwrap();
    // SAFETY: only this test reads Google credentials from the environment.
    unsafe { std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", &key_file) };
    let target = format!(
        "\n[[targets]]\nid = \"gcp-own\"\nkind = \"gcp\"\nmode = \"service_account\"\nservice_account = \"deployer@acme-prod.iam.gserviceaccount.com\"\nlifetime = \"20m\"\niam_credentials_endpoint = \"{url}\"\n"
    );
    let h = Harness::with(
        &[Algorithm::RS256],
        move |t| t + &target,
        &format!("{POLICY}\n{GCP_POLICY}"),
    )
    .await;
    let r = h.exchange_token(&h.token(|_| {}), "gcp-own", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["access_token"], "ya29.impersonated-token");
    // No STS exchange: Ferry's own token (from the key file's JWT-bearer grant) went to IAM.
    let calls = fake.sts.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0]["oauth"]["assertion"]
            .as_str()
            .unwrap()
            .split('.')
            .count()
            == 3
    );
    let (path, auth, body) = fake.iam.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        path,
        "deployer@acme-prod.iam.gserviceaccount.com:generateAccessToken"
    );
    assert_eq!(auth, "Bearer ferry-own-token");
    assert_eq!(body["lifetime"], "1200s");
}

const AGENT_POLICY: &str = r#"
@id("deployers-run")
permit (principal in Ferry::Group::"deployers", action == Ferry::Action::"exchange",
        resource == Ferry::Target::"run-invoker");
"#;

const RUN: &str = "https://run.example.com";

/// Ferry with the GCP targets and a `jwt` target for ID tokens, served on loopback; an
/// agent serving the metadata server from `gcp-sa`.
async fn agent_harness() -> (
    Fake,
    Harness,
    agent::Agent,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let (fake, url) = start_fake().await;
    let targets = gcp_targets(&url)
        + &format!("\n[[targets]]\nid = \"run-invoker\"\nkind = \"jwt\"\naudience = \"{RUN}\"\n");
    let h = Harness::with(
        &[Algorithm::RS256],
        move |t| t + &targets,
        &format!("{POLICY}\n{GCP_POLICY}\n{AGENT_POLICY}"),
    )
    .await;
    agent::follow_real_time(Arc::clone(&h.clock));
    let (ferry, down) = agent::serve_ferry(h.router()).await;
    let a = agent::Agent::start(
        &ferry,
        &h.token(|_| {}),
        "[gcp]\ntarget = \"gcp-sa\"\nemail = \"deployer@acme-prod.iam.gserviceaccount.com\"\nproject_id = \"acme-prod\"\nproject_number = 123456\n",
    );
    (fake, h, a, down)
}

async fn metadata(a: &agent::Agent, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/computeMetadata/v1/{path}", a.base()))
        .header("metadata-flavor", "Google")
        .send()
        .await
        .unwrap()
}

/// google-auth, pointed at the agent by `GCE_METADATA_HOST`/`GCE_METADATA_IP` alone,
/// finds "Compute Engine", reads the project, gets the access token Ferry issued and an
/// ID token Ferry signed for the audience it asks; the metadata server's own refusals
/// hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_is_a_metadata_server_google_auth_uses() {
    let (fake, h, a, _down) = agent_harness().await;
    a.await_healthy().await;
    let out = agent::run_python(
        r#"
import json
import google.auth, google.auth.transport.requests as tr, google.oauth2.id_token as idt
creds, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
req = tr.Request()
creds.refresh(req)
print(json.dumps({"type": type(creds).__module__, "project": project, "token": creds.token,
                  "email": creds.service_account_email, "id_token": idt.fetch_id_token(req, "https://run.example.com")}))
"#,
        &[
            ("GCE_METADATA_HOST", a.addr.clone()),
            ("GCE_METADATA_IP", a.addr.clone()),
        ],
    )
    .await;
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["type"], "google.auth.compute_engine.credentials");
    assert_eq!(got["project"], "acme-prod");
    assert_eq!(got["token"], "ya29.impersonated-token");
    assert_eq!(got["email"], "deployer@acme-prod.iam.gserviceaccount.com");
    let claims = h
        .state
        .snapshot
        .load()
        .issuer
        .verify_own(got["id_token"].as_str().unwrap())
        .expect("a Ferry-signed JWT");
    assert_eq!(claims["aud"], RUN);
    assert_eq!(claims["sub"], "fake:repo:acme/infra:ref:refs/heads/main");
    // One impersonation served the pinned token and google-auth's request for it.
    assert_eq!(fake.iam.lock().unwrap().len(), 1);

    // The documented answers.
    let r = metadata(&a, "project/numeric-project-id").await;
    assert_eq!(r.headers()["metadata-flavor"], "Google");
    assert_eq!(r.text().await.unwrap(), "123456");
    let r = metadata(&a, "instance/service-accounts/default/scopes").await;
    assert_eq!(
        r.text().await.unwrap(),
        "https://www.googleapis.com/auth/cloud-platform\n"
    );
    let r = metadata(&a, "instance/service-accounts/default/token").await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    let left = body["expires_in"].as_u64().unwrap();
    assert!((1700..=1800).contains(&left), "{left}");
    let r = metadata(&a, "instance/service-accounts/default/identity").await;
    assert_eq!(r.status(), 400, "an ID token needs an audience");
    assert_eq!(metadata(&a, "instance/attributes/").await.status(), 404);
    assert_eq!(
        metadata(&a, "instance/service-accounts/other@x/email")
            .await
            .status(),
        404
    );

    // Refused as the real server refuses: no flavour header, or through a proxy.
    let client = reqwest::Client::new();
    let url = format!(
        "{}/computeMetadata/v1/instance/service-accounts/default/token",
        a.base()
    );
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["metadata-flavor"], "Google");
    let r = client
        .get(&url)
        .header("metadata-flavor", "Google")
        .header("x-forwarded-for", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    a.assert_logs_hold_none_of(&["ya29.impersonated-token", got["id_token"].as_str().unwrap()]);
}

/// Short-lived tokens: the agent refreshes ahead of expiry; while Ferry is down it keeps
/// serving the token it holds until that expires and then serves none (never an expired
/// one); when Ferry is back it recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refreshes_ahead_and_rides_out_an_outage_without_serving_expired_tokens() {
    use std::time::Instant;
    let (fake, _h, a, down) = agent_harness().await;
    *fake.short_lived.lock().unwrap() = Some(9);
    a.await_healthy().await;
    let token = |body: &Value| body["access_token"].as_str().unwrap().to_owned();
    let get = || async { metadata(&a, "instance/service-accounts/default/token").await };

    // Refreshed ahead: a new token while the first still had time left.
    let first: Value = get().await.json().await.unwrap();
    let started = Instant::now();
    let second = loop {
        let b: Value = get().await.json().await.unwrap();
        if token(&b) != token(&first) {
            break b;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(second["expires_in"].as_u64().unwrap() >= 5, "{second}");

    // Ferry goes down: the held token is served while it is valid, then none.
    down.store(true, std::sync::atomic::Ordering::SeqCst);
    let held = token(&second);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut served_held = 0;
    loop {
        let r = get().await;
        if r.status() == 200 {
            let b: Value = r.json().await.unwrap();
            assert_eq!(
                token(&b),
                held,
                "nothing new can come from a Ferry that is down"
            );
            assert!(b["expires_in"].as_u64().unwrap() > 0);
            served_held += 1;
        } else {
            assert_eq!(r.status(), 503);
            let text = r.text().await.unwrap();
            assert!(!text.contains(&held), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "an expired token was served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        served_held > 0,
        "the valid token was not served during the outage"
    );
    let health = reqwest::get(format!("{}/healthz", a.base())).await.unwrap();
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert!(
        health["credentials"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503")),
        "{health}"
    );

    // Back: the agent's retries pick it up.
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    a.await_healthy().await;
    let b: Value = get().await.json().await.unwrap();
    assert_ne!(token(&b), held);
}

/// google-auth's `executable` credential source runs `ferry exchange --format
/// google-executable`, reads its answer, and exchanges Ferry's JWT at Google's STS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_auth_runs_ferry_exchange_as_its_executable_credential_source() {
    let (fake, url) = start_fake().await;
    let wif_audience = "https://iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/ci/providers/ferry";
    let targets =
        format!("\n[[targets]]\nid = \"wif-jwt\"\nkind = \"jwt\"\naudience = \"{wif_audience}\"\n");
    let policy = AGENT_POLICY.replace("run-invoker", "wif-jwt");
    let h = Harness::with(
        &[Algorithm::RS256],
        move |t| t + &targets,
        &format!("{POLICY}\n{policy}"),
    )
    .await;
    let (ferry, _down) = agent::serve_ferry(h.router()).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, h.token(|_| {})).unwrap();
    let command = format!(
        "{} exchange --url {ferry} --target wif-jwt --token-file {} --format google-executable",
        env!("CARGO_BIN_EXE_ferry"),
        token_file.display()
    );
    let config = dir.path().join("external-account.json");
    std::fs::write(
        &config,
        json!({
            "type": "external_account",
            "audience": PROVIDER,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{url}/v1/token"),
            "credential_source": {"executable": {"command": command, "timeout_millis": 10000}}
        })
        .to_string(),
    )
    .unwrap();
    let out = agent::run_python(
        r#"
import os, google.auth.pluggable, google.auth.transport.requests as tr
# What google.auth.default() builds from such a file, without its project lookup (a call
# to cloudresourcemanager.googleapis.com, which this test does not reach).
creds = google.auth.pluggable.Credentials.from_file(os.environ["CONFIG"], scopes=["https://www.googleapis.com/auth/cloud-platform"])
creds.refresh(tr.Request())
print(creds.token)
"#,
        &[
            ("CONFIG", config.display().to_string()),
            ("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1".into()),
        ],
    )
    .await;
    assert!(out.trim().starts_with("federated-"), "{out}");
    let sts = fake.sts.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sts["audience"], PROVIDER);
    assert_eq!(
        sts["subjectTokenType"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    let claims = h
        .state
        .snapshot
        .load()
        .issuer
        .verify_own(sts["subjectToken"].as_str().unwrap())
        .expect("Ferry's JWT reached Google's STS");
    assert_eq!(claims["aud"], wif_audience);
}
