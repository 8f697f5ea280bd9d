//! AWS targets through Ferry against `moto_server` (STS wire protocol), with a recording
//! proxy in front of it: what reached STS is asserted field by field. moto validates
//! nothing, so trust decisions are tested in Ferry's own tests; here the proxy can also
//! answer as STS does when it denies or throttles.
#![cfg(test)]

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::agent;
use common::*;
use ferry_testkit::MotoServer;
use jsonwebtoken::Algorithm;

#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Forward,
    Deny,
    Throttle,
    Hang,
    /// A 200 without credentials in it.
    Garbage,
}

#[derive(Clone)]
struct Proxy {
    moto: String,
    answer: Arc<Mutex<Answer>>,
    seen: Arc<Mutex<Vec<HashMap<String, String>>>>,
    calls: Arc<Mutex<usize>>,
}

async fn proxy_handler(
    axum::extract::State(p): axum::extract::State<Proxy>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    *p.calls.lock().unwrap() += 1;
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    p.seen.lock().unwrap().push(form);
    let error = |status: u16, code: &str| {
        let xml = format!(
            r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>{code}</Code><Message>no</Message></Error><RequestId>req-{code}</RequestId></ErrorResponse>"#
        );
        (
            axum::http::StatusCode::from_u16(status).unwrap(),
            [
                ("content-type", "text/xml"),
                ("x-amzn-requestid", "req-error"),
            ],
            xml,
        )
            .into_response()
    };
    let answer = *p.answer.lock().unwrap();
    match answer {
        Answer::Deny => error(403, "AccessDenied"),
        Answer::Throttle => error(400, "Throttling"),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            error(504, "Timeout")
        }
        Answer::Garbage => (
            axum::http::StatusCode::OK,
            [("content-type", "text/xml"), ("x-amzn-requestid", "req-garbage")],
            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
        )
            .into_response(),
        Answer::Forward => {
            // moto routes by the SigV4 credential scope: forward the signature headers.
            let mut req = reqwest::Client::new()
                .post(&p.moto)
                .header("content-type", "application/x-www-form-urlencoded");
            for (name, value) in &headers {
                let n = name.as_str();
                if n == "authorization" || n.starts_with("x-amz-") {
                    req = req.header(n, value.to_str().unwrap_or_default());
                }
            }
            let r = req.body(body.to_vec()).send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                [
                    ("content-type", "text/xml"),
                    ("x-amzn-requestid", "req-moto"),
                ],
                text,
            )
                .into_response()
        }
    }
}

async fn start_proxy(moto: &MotoServer) -> (Proxy, u16) {
    let proxy = Proxy {
        moto: moto.url(),
        answer: Arc::new(Mutex::new(Answer::Forward)),
        seen: Arc::default(),
        calls: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route("/", axum::routing::post(proxy_handler))
        .with_state(proxy.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (proxy, port)
}

const AWS_POLICY: &str = r#"
@id("deployers-aws")
permit (principal in Ferry::Group::"deployers", action == Ferry::Action::"exchange", resource)
when { resource.kind == "aws" && principal.attributes.repository == "acme/infra" };
"#;

fn aws_targets(port: u16) -> String {
    format!(
        r#"
[[targets]]
id = "aws-web"
kind = "aws"
mode = "web_identity"
role_arn = "arn:aws:iam::123456789012:role/deploy"
duration = "2h"
endpoint = "http://127.0.0.1:{port}"

[[targets]]
id = "aws-assume"
kind = "aws"
mode = "assume_role"
role_arn = "arn:aws:iam::123456789012:role/deploy"
duration = "30m"
endpoint = "http://127.0.0.1:{port}"
external_id = "ferry-external-1"
session_policy = '{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}}]}}'
source_identity = 'identity.issuer + "-ci"'
[targets.session_tags]
repository = "identity.attributes.repository"
issuer = "identity.issuer"
"#
    )
}

fn set_aws_env() {
    // Ferry's own AWS identity for `assume_role` (the standard chain reads the env).
    // SAFETY: set before any thread reads them; every test sets the same values.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIAFERRYTEST000000");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "ferry-test-secret");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
}

fn b64json(part: &str) -> serde_json::Value {
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// moto, the recording proxy in front of it, and Ferry with the AWS targets.
async fn aws_harness() -> (MotoServer, Proxy, Harness) {
    set_aws_env();
    let moto = MotoServer::start();
    let (proxy, port) = start_proxy(&moto).await;
    let h = Harness::with(
        &[Algorithm::RS256],
        move |t| t + &aws_targets(port),
        &format!("{POLICY}\n{AWS_POLICY}"),
    )
    .await;
    (moto, proxy, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_and_assume_role_reach_sts_with_every_field() {
    let (moto, proxy, h) = aws_harness().await;
    let now = h.now();

    // web_identity: keyless.
    let r = h.exchange_token(&h.token(|_| {}), "aws-web", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let creds = &r.body["credentials"];
    for k in [
        "access_key_id",
        "secret_access_key",
        "session_token",
        "expiration",
    ] {
        assert!(
            creds[k].as_str().is_some_and(|v| !v.is_empty()),
            "{k}: {creds}"
        );
    }
    assert_eq!(r.body["access_token"], creds["session_token"]);
    assert_eq!(r.body["token_type"], "N_A");
    let expires_in = r.body["expires_in"].as_i64().unwrap();
    assert!((7190..=7210).contains(&expires_in), "{expires_in}");
    let expiration = humantime::parse_rfc3339(creds["expiration"].as_str().unwrap()).unwrap();
    let exp_secs = i64::try_from(
        expiration
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    assert!((now + 7190..=now + 7210).contains(&exp_secs));
    let call = proxy.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(call["Action"], "AssumeRoleWithWebIdentity");
    assert_eq!(call["RoleArn"], "arn:aws:iam::123456789012:role/deploy");
    assert_eq!(call["DurationSeconds"], "7200");
    assert_eq!(
        call["RoleSessionName"],
        ferry_provider_aws::session_name("fake:repo:acme/infra:ref:refs/heads/main")
    );
    // The web identity token is a Ferry-signed JWT about this identity, for STS.
    let jwt = &call["WebIdentityToken"];
    let claims = h
        .state
        .snapshot
        .load()
        .issuer
        .verify_own(jwt)
        .expect("verifies against Ferry's JWKS");
    assert_eq!(claims["aud"], "sts.amazonaws.com");
    assert_eq!(claims["sub"], "fake:repo:acme/infra:ref:refs/heads/main");
    assert_eq!(claims["iss"], "http://127.0.0.1:9");
    assert!(claims["exp"].as_i64().unwrap() <= now + 300);
    assert_eq!(b64json(jwt.split('.').next().unwrap())["alg"], "RS256");

    // assume_role: Ferry's own credentials, with tags, source identity, external id and
    // a session policy.
    let r = h.exchange_token(&h.token(|_| {}), "aws-assume", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let call = proxy.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(call["Action"], "AssumeRole");
    assert_eq!(call["DurationSeconds"], "1800");
    assert_eq!(call["ExternalId"], "ferry-external-1");
    assert_eq!(call["SourceIdentity"], "fake-ci");
    assert!(call["Policy"].contains("s3:GetObject"));
    let mut tags = HashMap::new();
    for i in 1..=2 {
        tags.insert(
            call[&format!("Tags.member.{i}.Key")].clone(),
            call[&format!("Tags.member.{i}.Value")].clone(),
        );
    }
    assert_eq!(tags["repository"], "acme/infra");
    assert_eq!(tags["issuer"], "fake");
    // moto recorded the session as STS would.
    let data: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{}/moto-api/data.json", moto.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let sessions: Vec<String> = data["sts"]["AssumedRole"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["session_name"].as_str().map(str::to_owned))
        .collect();
    assert!(
        sessions.contains(&ferry_provider_aws::session_name(
            "fake:repo:acme/infra:ref:refs/heads/main"
        )),
        "{sessions:?}"
    );

    // Cached: the same identity gets the same credentials without another STS call.
    let calls = *proxy.calls.lock().unwrap();
    let again = h.exchange_token(&h.token(|_| {}), "aws-assume", None).await;
    assert_eq!(
        again.body["credentials"]["access_key_id"],
        r.body["credentials"]["access_key_id"]
    );
    assert_eq!(*proxy.calls.lock().unwrap(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_denials_and_throttling_map_to_oauth_errors() {
    let (_moto, proxy, h) = aws_harness().await;

    *proxy.answer.lock().unwrap() = Answer::Deny;
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "denied".into()), "aws-web", None)
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error(), "invalid_target");
    assert!(r.description().contains("AccessDenied"), "{:?}", r.body);
    assert!(
        !r.description().contains("ErrorResponse"),
        "never the upstream body"
    );
    assert_eq!(*proxy.calls.lock().unwrap(), 1, "denials are not retried");

    *proxy.answer.lock().unwrap() = Answer::Throttle;
    let before = *proxy.calls.lock().unwrap();
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "throttled".into()), "aws-web", None)
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error(), "temporarily_unavailable");
    assert!(r.headers.contains_key("retry-after"));
    let retries = *proxy.calls.lock().unwrap() - before;
    assert_eq!(
        retries, 3,
        "throttling is retried, a bounded number of times"
    );

    *proxy.answer.lock().unwrap() = Answer::Hang;
    let started = Instant::now();
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "hung".into()), "aws-web", None)
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded by the attempt and operation timeouts"
    );

    // A 200 without credentials: 503, never a 500; then it recovers by itself.
    *proxy.answer.lock().unwrap() = Answer::Garbage;
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "garbage".into()), "aws-web", None)
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error(), "temporarily_unavailable");
    *proxy.answer.lock().unwrap() = Answer::Forward;
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "recovered".into()), "aws-web", None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// `ferry exchange` as an AWS SDK's `credential_process`: the SDK's own provider runs the
/// command, parses what it prints and gets the credentials Ferry issued; `--format env`
/// gives the same to a shell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_exchange_feeds_an_aws_sdk_as_its_credential_process() {
    use aws_credential_types::provider::ProvideCredentials as _;

    let (_moto, proxy, h) = aws_harness().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = h.router();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = h.token(|_| {});
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let command = format!(
        "'{ferry}' exchange --url {url} --target aws-web --token-file '{}' --format credential-process",
        token_file.display()
    );
    let creds = aws_config::credential_process::CredentialProcessProvider::new(command)
        .provide_credentials()
        .await
        .expect("the SDK reads what ferry exchange prints");
    assert_eq!(*proxy.calls.lock().unwrap(), 1);

    // The same credential, now from Ferry's cache: what the SDK got is what Ferry issued.
    let r = h.exchange_token(&token, "aws-web", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(*proxy.calls.lock().unwrap(), 1, "served from the cache");
    let issued = &r.body["credentials"];
    assert_eq!(
        creds.access_key_id(),
        issued["access_key_id"].as_str().unwrap()
    );
    assert_eq!(
        creds.secret_access_key(),
        issued["secret_access_key"].as_str().unwrap()
    );
    assert_eq!(
        creds.session_token(),
        Some(issued["session_token"].as_str().unwrap())
    );
    assert_eq!(
        creds.expiry(),
        Some(humantime::parse_rfc3339(issued["expiration"].as_str().unwrap()).unwrap())
    );

    // `--format env`, evaluated by a real shell.
    let script = format!(
        "eval \"$('{ferry}' exchange --url {url} --target aws-web --token-file - --format env)\" && printf '%s|%s|%s' \"$AWS_ACCESS_KEY_ID\" \"$AWS_SESSION_TOKEN\" \"$AWS_CREDENTIAL_EXPIRATION\""
    );
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        child.stdin.take().unwrap().write_all(token.as_bytes())?;
        child.wait_with_output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "{}|{}|{}",
            issued["access_key_id"].as_str().unwrap(),
            issued["session_token"].as_str().unwrap(),
            issued["expiration"].as_str().unwrap()
        )
    );
}

/// `ferry agent` serves the AWS container-credentials endpoint: boto3 and the AWS SDK
/// for Rust, configured only by `AWS_CONTAINER_CREDENTIALS_FULL_URI` and
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, get what Ferry issued (one STS call for all
/// of them), sign a request with it, and a caller without the agent's secret is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_container_credentials_to_boto3_and_the_rust_sdk() {
    use aws_credential_types::provider::ProvideCredentials as _;

    let (moto, proxy, h) = aws_harness().await;
    let (url, _ferry) = agent::serve_ferry(h.router()).await;
    let token = h.token(|_| {});
    let agent = agent::Agent::start(&url, &token, "[aws]\ntarget = \"aws-web\"\n");
    agent.await_healthy().await;
    let uri = format!("{}/aws/credentials", agent.base());
    let secret_file = agent.secret_file().display().to_string();

    let out = agent::run_python(
        r#"
import boto3, json, os
s = boto3.Session(region_name="us-east-1")
c = s.get_credentials()
f = c.get_frozen_credentials()
who = s.client("sts", endpoint_url=os.environ["MOTO_URL"]).get_caller_identity()
print(json.dumps({"method": c.method, "key": f.access_key, "secret": f.secret_key, "token": f.token, "account": who["Account"]}))
"#,
        &[
            ("MOTO_URL", moto.url()),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.clone()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", secret_file.clone()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ],
    )
    .await;
    let boto: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(boto["method"], "container-role");

    // What Ferry issued, from its cache: the same credential.
    let r = h.exchange_token(&token, "aws-web", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let issued = &r.body["credentials"];
    assert_eq!(boto["key"], issued["access_key_id"]);
    assert_eq!(boto["secret"], issued["secret_access_key"]);
    assert_eq!(boto["token"], issued["session_token"]);
    assert!(boto["account"].as_str().is_some_and(|a| a.len() == 12));

    // The AWS SDK for Rust reads the same variables (process-wide: set once, the other
    // tests here never read them).
    // SAFETY: no other thread of this test binary reads or writes these variables.
    unsafe {
        std::env::set_var("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri);
        std::env::set_var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &secret_file);
    }
    let creds = aws_config::ecs::EcsCredentialsProvider::builder()
        .build()
        .provide_credentials()
        .await
        .expect("the Rust SDK reads the agent's answer");
    assert_eq!(
        creds.access_key_id(),
        issued["access_key_id"].as_str().unwrap()
    );
    assert_eq!(creds.session_token(), issued["session_token"].as_str());
    assert_eq!(
        creds.expiry(),
        Some(humantime::parse_rfc3339(issued["expiration"].as_str().unwrap()).unwrap())
    );
    assert_eq!(
        *proxy.calls.lock().unwrap(),
        1,
        "one STS call served every SDK"
    );

    // Without the secret, or with another: refused, AWS-shaped.
    let client = reqwest::Client::new();
    let r = client.get(&uri).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["Code"], "AccessDenied");
    let r = client
        .get(&uri)
        .header("authorization", "not-the-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(!text.contains(issued["access_key_id"].as_str().unwrap()));

    let metrics = client
        .get(format!("{}/metrics", agent.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ferry_agent_requests_total{endpoint=\"aws\",outcome=\"served\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_agent_requests_total{endpoint=\"aws\",outcome=\"refused\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_agent_exchanges_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    agent.assert_logs_hold_none_of(&[
        &token,
        &agent.secret(),
        issued["secret_access_key"].as_str().unwrap(),
        issued["session_token"].as_str().unwrap(),
    ]);
}
