//! End-to-end exchanges through the real router (and a real socket), and independent
//! verification of what Ferry issues.
#![cfg(test)]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use jsonwebtoken::Algorithm;
use rsa::signature::Verifier as _;
use serde_json::{Value, json};

fn b64json(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Verifies an RS256 JWT against a JWKS with the RustCrypto `rsa` crate: no code shared
/// with Ferry's signer (aws-lc-rs via jsonwebtoken).
fn verify_independently(token: &str, jwks: &Value) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header = b64json(parts[0]);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    let kid = header["kid"].as_str().unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("kid published in the JWKS");
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["use"], "sig");
    let n =
        rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap());
    let e =
        rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap());
    let key = rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha256>::new(
        rsa::RsaPublicKey::new(n, e).unwrap(),
    );
    let sig =
        rsa::pkcs1v15::Signature::try_from(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().as_slice())
            .unwrap();
    let message = format!("{}.{}", parts[0], parts[1]);
    key.verify(message.as_bytes(), &sig)
        .expect("signature verifies independently");
    // Tampering breaks it.
    let tampered = format!("{}.{}x", parts[0], parts[1]);
    assert!(key.verify(tampered.as_bytes(), &sig).is_err());
    b64json(parts[1])
}

#[tokio::test]
async fn a_valid_token_is_exchanged_for_a_ferry_jwt_that_verifies_independently() {
    let h = Harness::start().await;
    let token = h.token(|_| {});
    let r = h.exchange_token(&token, "api", Some("read")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(r.headers.contains_key("x-request-id"));
    assert_eq!(r.body["issued_token_type"], JWT_TYPE);
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 300);
    assert_eq!(r.body["scope"], "read");
    let access = r.body["access_token"].as_str().unwrap();
    assert_eq!(r.body["credentials"]["access_token"], access);

    // Discovery points at the JWKS; the token verifies against it with another library.
    let disc = h.get("/.well-known/openid-configuration").await;
    assert_eq!(disc.status, 200);
    assert_eq!(disc.body["issuer"], "http://127.0.0.1:9");
    assert_eq!(
        disc.body["jwks_uri"],
        "http://127.0.0.1:9/.well-known/jwks.json"
    );
    assert_eq!(
        disc.body["id_token_signing_alg_values_supported"][0],
        "RS256"
    );
    // Only scopes some target accepts are advertised; each is accepted.
    assert_eq!(
        disc.body["scopes_supported"],
        json!(["admin", "read", "write"])
    );
    for scope in ["read", "write"] {
        let r = h.exchange_token(&h.token(|_| {}), "api", Some(scope)).await;
        assert_eq!(r.status, 200, "{scope}: {}", r.body);
    }
    let jwks = h.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200);
    assert!(
        jwks.body["keys"][0].get("d").is_none(),
        "no private parts published"
    );
    let claims = verify_independently(access, &jwks.body);

    assert_eq!(claims["iss"], "http://127.0.0.1:9");
    assert_eq!(claims["sub"], "fake:repo:acme/infra:ref:refs/heads/main");
    assert_eq!(claims["aud"], "https://api.example.com");
    let now = h.now();
    assert_eq!(claims["iat"], now);
    assert_eq!(claims["exp"], now + 300);
    assert!(claims["jti"].as_str().unwrap().len() >= 32);
    assert_eq!(claims["scope"], "read");
    assert_eq!(claims["ferry"]["issuer"], "fake");
    assert_eq!(claims["ferry"]["attributes"]["repository"], "acme/infra");
    assert_eq!(claims["ferry"]["groups"][0], "deployers");
    // Nothing of the subject token leaks into what Ferry signs.
    assert!(claims.get("org").is_none());
    assert!(!access.contains(&token));
}

#[tokio::test]
async fn minted_tokens_are_cached_per_identity_target_and_scopes() {
    let h = Harness::start().await;
    let first = h
        .exchange_token(&h.token(|_| {}), "api", Some("read"))
        .await;
    // A different (fresh) subject token for the same identity gets the cached JWT.
    let second = h
        .exchange_token(&h.token(|_| {}), "api", Some("read"))
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body["access_token"], second.body["access_token"]);
    // Different scopes: a different token.
    let third = h
        .exchange_token(&h.token(|_| {}), "api", Some("read write"))
        .await;
    assert_eq!(third.status, 200);
    assert_ne!(first.body["access_token"], third.body["access_token"]);
    // Scope order does not matter.
    let fourth = h
        .exchange_token(&h.token(|_| {}), "api", Some("write read"))
        .await;
    assert_eq!(third.body["access_token"], fourth.body["access_token"]);
    // A different identity: a different token.
    let other = h
        .exchange_token(
            &h.token(|c| c["sub"] = "someone-else".into()),
            "api",
            Some("read"),
        )
        .await;
    assert_eq!(other.status, 200);
    assert_ne!(first.body["access_token"], other.body["access_token"]);

    // Reused while at least min_remaining (ttl/2 = 150s) is left, then re-minted.
    h.clock.advance(100);
    let later = h
        .exchange_token(&h.token(|_| {}), "api", Some("read"))
        .await;
    assert_eq!(later.body["access_token"], first.body["access_token"]);
    assert_eq!(later.body["expires_in"], 200);
    h.clock.advance(60);
    let fresh = h
        .exchange_token(&h.token(|_| {}), "api", Some("read"))
        .await;
    assert_eq!(fresh.status, 200);
    assert_ne!(fresh.body["access_token"], first.body["access_token"]);
    assert_eq!(fresh.body["expires_in"], 300);
}

#[tokio::test]
async fn concurrent_identical_misses_mint_once() {
    let h = Harness::start().await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let token = h.token(|_| {});
        let router = h.router();
        tasks.push(tokio::spawn(async move {
            exchange_via(router, &token, "api", None).await.body["access_token"]
                .as_str()
                .unwrap()
                .to_owned()
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap());
    }
    assert_eq!(
        tokens.len(),
        1,
        "every concurrent request got the one minted token"
    );
}

#[tokio::test]
async fn resource_selects_a_target_and_token_files_with_newlines_are_trimmed() {
    let h = Harness::start().await;
    let token = format!("{}\n", h.token(|_| {}));
    let r = h
        .post_form(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", &token),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:id_token",
            ),
            ("resource", "https://api.example.com/v1"),
        ])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let payload = b64json(
        r.body["access_token"]
            .as_str()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap(),
    );
    assert_eq!(payload["aud"], "https://api.example.com");
}

#[tokio::test]
async fn every_supported_issuer_algorithm_verifies() {
    let algs = [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    let h = Harness::with(&algs, |t| t, POLICY).await;
    for (i, alg) in algs.iter().enumerate() {
        let kid = format!("k{}", i + 1);
        let mut claims = h.issuer.claims(h.now());
        claims["sub"] = format!("alg-{alg:?}").into();
        let token = h.issuer.sign(&kid, &claims);
        let r = h.exchange_token(&token, "api", None).await;
        assert_eq!(r.status, 200, "{alg:?}: {:?}", r.body);
    }
}

#[tokio::test]
async fn a_token_without_kid_is_accepted_only_when_exactly_one_key_fits() {
    // One RSA and one EC key: an RS256 token without kid has exactly one candidate.
    let h = Harness::start().await;
    let claims = h.issuer.claims(h.now());
    let token = sign_with(&h.issuer.key("k1"), None, &claims);
    let r = h.exchange_token(&token, "api", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Two RSA keys: ambiguous.
    let h2 = Harness::with(&[Algorithm::RS256, Algorithm::RS256], |t| t, POLICY).await;
    let claims = h2.issuer.claims(h2.now());
    let token = sign_with(&h2.issuer.key("k1"), None, &claims);
    let r = h2.exchange_token(&token, "api", None).await;
    assert_eq!(r.status, 400);
    assert!(r.description().contains("kid"), "{}", r.description());
}

#[tokio::test]
async fn exchange_over_a_real_socket() {
    let h = Harness::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = h.router();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let token = h.token(|_| {});
    let res = client
        .post(format!("http://{addr}/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", token.as_str()),
                ("subject_token_type", JWT_TYPE),
                ("audience", "api"),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert!(body["access_token"].as_str().unwrap().starts_with("ey"));
    let ready: Value = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["issuers"]["fake"], true);
    server.abort();
}

#[tokio::test]
async fn readyz_is_false_while_an_issuer_has_no_keys() {
    let h = Harness::start().await;
    // A second runtime over an issuer that is down from the start.
    h.issuer.set_failing(true);
    let dir = tempfile::tempdir().unwrap();
    let clock = ferry::clock::ManualClock::new(now());
    let rt = build_runtime(
        dir.path(),
        &config_text(&h.issuer.url),
        POLICY,
        clock.clone(),
    );
    rt.warm_up().await;
    let state = ferry::http::AppState::new(
        rt,
        ferry::exchange::Services {
            store: std::sync::Arc::new(ferry::store::memory::MemoryStore::new(10)),
            clock,
            flights: Default::default(),
            anomalies: Default::default(),
        },
    )
    .unwrap();
    let r = send(
        ferry::http::app(state.clone()),
        axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body["ready"], false);
    assert_eq!(r.body["issuers"]["fake"], false);
    // An exchange against it is a 503 with Retry-After: the issuer's fault, not the client's.
    let token = h.token(|_| {});
    let body = serde_urlencoded::to_string([
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", token.as_str()),
        ("subject_token_type", JWT_TYPE),
        ("audience", "api"),
    ])
    .unwrap();
    let req = axum::http::Request::post("/oauth2/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .unwrap();
    let r2 = send(ferry::http::app(state), req).await;
    assert_eq!(r2.status, 503, "{:?}", r2.body);
    assert_eq!(r2.error(), "temporarily_unavailable");
    assert!(r2.headers.contains_key("retry-after"));
}
