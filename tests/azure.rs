//! Azure targets through Ferry against an in-process fake of the Entra v2.0 token
//! endpoint and the instance metadata (IMDS) token endpoint, following the documented
//! requests and responses; it records what Ferry sent and can deny or throttle.
#![cfg(test)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::agent;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

type Params = HashMap<String, String>;
type Log<T> = Arc<Mutex<Vec<T>>>;

#[derive(Clone, Default)]
struct Fake {
    answer: Arc<Mutex<&'static str>>,
    /// (tenant, form) of each token request.
    token: Log<(String, Params)>,
    /// (query, `Metadata` header) of each IMDS request.
    imds: Log<(Params, Option<String>)>,
}

async fn token(
    State(f): State<Fake>,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap();
    f.token.lock().unwrap().push((tenant, form));
    let answer = *f.answer.lock().unwrap();
    match answer {
        "deny" => (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_client", "error_description": "AADSTS700213: No matching federated identity record found for presented assertion subject", "error_codes": [700213]}))).into_response(),
        "throttle" => (StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": "temporarily_unavailable"}))).into_response(),
        "hang" => {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        _ => ([("x-ms-request-id", "entra-req-1")], Json(json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": "eyJ0eXAi.entra.token"}))).into_response(),
    }
}

async fn imds(
    State(f): State<Fake>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let metadata = headers
        .get("metadata")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    f.imds.lock().unwrap().push((q, metadata));
    let expires_on = (now() + 3600).to_string();
    // IMDS returns expires_on as a string of Unix seconds.
    Json(json!({"access_token": "eyJ0eXAi.managed.identity", "expires_on": expires_on, "resource": "https://management.azure.com", "token_type": "Bearer"})).into_response()
}

async fn start_fake() -> (Fake, String) {
    let fake = Fake::default();
    *fake.answer.lock().unwrap() = "ok";
    let app = axum::Router::new()
        .route("/{tenant}/oauth2/v2.0/token", axum::routing::post(token))
        .route("/metadata/identity/oauth2/token", axum::routing::get(imds))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, url)
}

const AZURE_POLICY: &str = r#"
@id("deployers-azure")
permit (principal in Ferry::Group::"deployers", action == Ferry::Action::"exchange", resource)
when { resource.kind == "azure" };
"#;

async fn harness(url: &str) -> (Harness, tempfile::TempDir) {
    let side = tempfile::tempdir().unwrap();
    let secret = side.path().join("client-secret");
    std::fs::write(&secret, "ferry-client-secret-value\n").unwrap();
    let targets = format!(
        r#"
[[targets]]
id = "az-fed"
kind = "azure"
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
scope = "https://management.azure.com/.default"
authority_host = "{url}"

[[targets]]
id = "az-secret"
kind = "azure"
mode = "client_secret"
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
scope = "https://vault.azure.net/.default"
authority_host = "{url}"
client_secret_file = "{}"

[[targets]]
id = "az-mi"
kind = "azure"
mode = "managed_identity"
client_id = "{CLIENT}"
scope = "https://management.azure.com/.default"
imds_endpoint = "{url}/metadata/identity/oauth2/token"
"#,
        secret.display()
    );
    let h = Harness::with(
        &[Algorithm::RS256],
        move |t| t + &targets,
        &format!("{POLICY}\n{AZURE_POLICY}"),
    )
    .await;
    (h, side)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_client_secret_and_managed_identity_tokens() {
    let (fake, url) = start_fake().await;
    let (h, _side) = harness(&url).await;

    let r = h.exchange_token(&h.token(|_| {}), "az-fed", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["access_token"], "eyJ0eXAi.entra.token");
    let creds = &r.body["credentials"];
    assert_eq!(creds["token_type"], "Bearer");
    let expires_on: i64 = creds["expires_on"].as_str().unwrap().parse().unwrap();
    assert!((now() + 3590..=now() + 3600).contains(&expires_on));
    let (tenant, form) = fake.token.lock().unwrap().last().cloned().unwrap();
    assert_eq!(tenant, TENANT);
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], CLIENT);
    assert_eq!(form["scope"], "https://management.azure.com/.default");
    assert_eq!(
        form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert!(!form.contains_key("client_secret"));
    let claims = h
        .state
        .snapshot
        .load()
        .issuer
        .verify_own(&form["client_assertion"])
        .expect("a Ferry-signed JWT");
    assert_eq!(claims["aud"], "api://AzureADTokenExchange");
    assert_eq!(claims["sub"], "fake:repo:acme/infra:ref:refs/heads/main");

    let r = h.exchange_token(&h.token(|_| {}), "az-secret", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (_, form) = fake.token.lock().unwrap().last().cloned().unwrap();
    assert_eq!(form["client_secret"], "ferry-client-secret-value");
    assert_eq!(form["scope"], "https://vault.azure.net/.default");
    assert!(!form.contains_key("client_assertion"));
    assert!(
        !String::from_utf8_lossy(&r.raw).contains("ferry-client-secret-value"),
        "the secret never reaches the client"
    );

    let r = h.exchange_token(&h.token(|_| {}), "az-mi", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["access_token"], "eyJ0eXAi.managed.identity");
    let (query, metadata) = fake.imds.lock().unwrap().last().cloned().unwrap();
    assert_eq!(metadata.as_deref(), Some("true"));
    assert_eq!(query["api-version"], "2018-02-01");
    assert_eq!(query["resource"], "https://management.azure.com");
    assert_eq!(query["client_id"], CLIENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_denials_and_throttling_map_to_oauth_errors() {
    let (fake, url) = start_fake().await;
    let (h, _side) = harness(&url).await;
    *fake.answer.lock().unwrap() = "deny";
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "d".into()), "az-fed", None)
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error(), "invalid_target");
    assert!(r.description().contains("invalid_client"));
    assert!(
        !r.description().contains("AADSTS"),
        "never the upstream body"
    );
    assert_eq!(
        fake.token.lock().unwrap().len(),
        1,
        "denials are not retried"
    );

    *fake.answer.lock().unwrap() = "throttle";
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "t".into()), "az-fed", None)
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error(), "temporarily_unavailable");
    assert_eq!(fake.token.lock().unwrap().len(), 1 + 3);

    *fake.answer.lock().unwrap() = "hang";
    let started = std::time::Instant::now();
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "h".into()), "az-fed", None)
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "bounded by attempt timeouts and the 10 s budget"
    );
}

/// azure-identity, pointed at the agent by `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` (the
/// App Service protocol, through `DefaultAzureCredential`) or by
/// `AZURE_POD_IDENTITY_AUTHORITY_HOST` (the IMDS shape), gets the Entra tokens Ferry
/// obtained for the mapped resources; an unmapped resource, a missing secret and a
/// missing `Metadata` header are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_managed_identity_to_azure_identity() {
    let (fake, url) = start_fake().await;
    let (h, _side) = harness(&url).await;
    let (ferry, _down) = agent::serve_ferry(h.router()).await;
    let a = agent::Agent::start(
        &ferry,
        &h.token(|_| {}),
        &format!(
            "[azure]\nclient_id = \"{CLIENT}\"\nresources = {{ \"https://management.azure.com/\" = \"az-fed\", \"https://vault.azure.net\" = \"az-secret\" }}\n"
        ),
    );
    a.await_healthy().await;
    let endpoint = format!("{}/azure/identity", a.base());
    let script = |scope: &str, credential: &str| {
        format!(
            "import json\nfrom azure.identity import {credential}\nt = {credential}().get_token({scope:?})\nprint(json.dumps({{\"token\": t.token, \"expires_on\": t.expires_on}}))\n"
        )
    };
    let out = agent::run_python(
        &script(
            "https://management.azure.com/.default",
            "DefaultAzureCredential",
        ),
        &[
            ("IDENTITY_ENDPOINT", endpoint.clone()),
            ("IDENTITY_HEADER", a.secret()),
        ],
    )
    .await;
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["token"], "eyJ0eXAi.entra.token");
    let expires_on = got["expires_on"].as_i64().unwrap();
    assert!(
        (now() + 3500..=now() + 3600).contains(&expires_on),
        "{expires_on}"
    );

    let out = agent::run_python(
        &script(
            "https://vault.azure.net/.default",
            "ManagedIdentityCredential",
        ),
        &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", a.base())],
    )
    .await;
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["token"], "eyJ0eXAi.entra.token");
    // Both targets were fetched once, ahead of need, and served from the agent after.
    assert_eq!(fake.token.lock().unwrap().len(), 2);

    let client = reqwest::Client::new();
    let get = |url: String, headers: &[(&'static str, String)]| {
        let mut r = client.get(url);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let app = |resource: &str| format!("{endpoint}?api-version=2019-08-01&resource={resource}");
    let (status, body) = get(
        app("https://storage.azure.com/"),
        &[("x-identity-header", a.secret())],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_resource");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("https://management.azure.com")
    );
    let (status, body) = get(app("https://management.azure.com/"), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_request");
    let (status, body) = get(
        app("https://management.azure.com/"),
        &[("x-identity-header", "guess".into())],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = get(
        format!("{endpoint}?api-version=2019-08-01&resource=https://management.azure.com/&client_id=someone-else"),
        &[("x-identity-header", a.secret())],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let imds = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/",
        a.base()
    );
    let (status, body) = get(imds.clone(), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error_description"],
        "Required metadata header not specified"
    );
    let (status, body) = get(imds, &[("metadata", "true".into())]).await;
    assert_eq!(status, 200);
    assert_eq!(body["client_id"], CLIENT);
    assert_eq!(body["resource"], "https://management.azure.com/");
    assert!(body["expires_in"].as_str().unwrap().parse::<u64>().unwrap() > 3000);
    a.assert_logs_hold_none_of(&["eyJ0eXAi.entra.token", &a.secret()]);
}
