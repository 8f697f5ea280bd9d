//! DPoP (RFC 9449) on the token endpoint, through the real router: proofs made here with
//! the RustCrypto `rsa` crate (nothing shared with Ferry's aws-lc-rs verifier), every
//! §4.3 check with a failing case, the minted JWT bound to the proof key (`cnf.jkt`,
//! computed here independently), per-target binding, and subject tokens that are
//! themselves bound.
#![cfg(test)]

mod common;

use axum::http::header;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::dpop::{Client, HTU, exchange};
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

fn payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn a_proof_binds_the_minted_token_to_its_key() {
    let h = Harness::start().await;
    let client = Client::load("dpop-client.key.pem");
    let token = h.token(|_| {});
    let r = exchange(h.router(), &token, "api", &[&client.proof(h.now())]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["token_type"], "DPoP", "RFC 9449 §5");
    let minted = payload(r.body["access_token"].as_str().unwrap());
    assert_eq!(minted["cnf"]["jkt"], client.thumbprint());

    // The same identity without a proof gets a bearer token: never the bound one from
    // the cache.
    let bearer = exchange(h.router(), &token, "api", &[]).await;
    assert_eq!(bearer.status, 200, "{:?}", bearer.body);
    assert_eq!(bearer.body["token_type"], "Bearer");
    assert!(payload(bearer.body["access_token"].as_str().unwrap())["cnf"].is_null());
    // Another key: its own token, bound to it.
    let other = Client::load("dpop-other.key.pem");
    let r = exchange(h.router(), &token, "api", &[&other.proof(h.now())]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let minted = payload(r.body["access_token"].as_str().unwrap());
    assert_eq!(minted["cnf"]["jkt"], other.thumbprint());
    assert_ne!(other.thumbprint(), client.thumbprint());

    // Discovery names what a client may use (RFC 9449 §5.1, RFC 8705 §3.3).
    let discovery = h.get("/.well-known/openid-configuration").await;
    assert_eq!(
        discovery.body["dpop_signing_alg_values_supported"],
        json!(["ES256", "ES384", "RS256", "PS256", "EdDSA"])
    );
    assert_eq!(
        discovery.body["tls_client_certificate_bound_access_tokens"], false,
        "no client CA on this listener"
    );
}

#[tokio::test]
async fn every_proof_check_refuses_with_invalid_dpop_proof() {
    let h = Harness::start().await;
    let c = Client::load("dpop-client.key.pem");
    let now = h.now();
    let with = |edit: &dyn Fn(&mut Value, &mut Value)| {
        let (mut head, mut claims) = (c.header(), c.claims(now));
        edit(&mut head, &mut claims);
        c.sign(&head, &claims)
    };
    let replayed = c.proof(now);
    // One character in the middle of the signature changed (the last one may only
    // carry padding bits).
    let tampered = {
        let proof = c.proof(now);
        let at = proof.len() - 20;
        let swapped = if &proof[at..=at] == "A" { "B" } else { "A" };
        format!("{}{swapped}{}", &proof[..at], &proof[at + 1..])
    };
    let unsigned = {
        let head = json!({"typ": "dpop+jwt", "alg": "none", "jwk": c.jwk()});
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(head.to_string()),
            URL_SAFE_NO_PAD.encode(c.claims(now).to_string())
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("wrong htm", with(&|_, cl| cl["htm"] = "GET".into())),
        (
            "htu with a query",
            with(&|_, cl| cl["htu"] = format!("{HTU}?x=1").into()),
        ),
        (
            "htu of another host",
            with(&|_, cl| cl["htu"] = "http://127.0.0.2:9/oauth2/token".into()),
        ),
        ("old iat", with(&|_, cl| cl["iat"] = (now - 120).into())),
        (
            "iat in the future",
            with(&|_, cl| cl["iat"] = (now + 60).into()),
        ),
        (
            "no jti",
            with(&|_, cl| {
                cl.as_object_mut().unwrap().remove("jti");
            }),
        ),
        ("typ jwt", with(&|hd, _| hd["typ"] = "JWT".into())),
        (
            "a private jwk",
            with(&|hd, _| hd["jwk"]["d"] = "AQAB".into()),
        ),
        ("alg HS256", with(&|hd, _| hd["alg"] = "HS256".into())),
        (
            "alg ES256 over an RSA key",
            with(&|hd, _| hd["alg"] = "ES256".into()),
        ),
        ("alg none", unsigned),
        ("a bad signature", tampered),
        ("not a JWS", "abc".into()),
    ];
    let token = h.token(|_| {});
    for (what, proof) in &cases {
        let r = exchange(h.router(), &token, "api", &[proof]).await;
        assert_eq!(r.status, 400, "{what}: {:?}", r.body);
        assert_eq!(r.error(), "invalid_dpop_proof", "{what}: {:?}", r.body);
        assert_eq!(
            r.headers[header::WWW_AUTHENTICATE],
            "DPoP error=\"invalid_dpop_proof\"",
            "{what}"
        );
    }
    let first = exchange(h.router(), &token, "api", &[&replayed]).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let again = exchange(h.router(), &token, "api", &[&replayed]).await;
    assert_eq!(again.error(), "invalid_dpop_proof", "a replayed jti");
    assert!(
        again.description().contains("used before"),
        "{:?}",
        again.body
    );
    let two = exchange(h.router(), &token, "api", &[&c.proof(now), &c.proof(now)]).await;
    assert_eq!(two.error(), "invalid_dpop_proof", "two DPoP headers");
}

#[tokio::test]
async fn a_target_that_requires_a_proof_refuses_a_bearer_request() {
    let h = Harness::with(
        &[Algorithm::RS256],
        |t| {
            t.replace(
                "audience = \"https://other.example.com\"",
                "audience = \"https://other.example.com\"\nbinding = \"dpop\"",
            )
            .replace(
                "audience = \"https://api.example.com\"",
                "audience = \"https://api.example.com\"\nbinding = \"mtls\"",
            )
        },
        "permit(principal, action, resource);",
    )
    .await;
    let token = h.token(|_| {});
    let r = exchange(h.router(), &token, "other", &[]).await;
    assert_eq!(r.error(), "invalid_dpop_proof", "{:?}", r.body);
    let c = Client::load("dpop-client.key.pem");
    let r = exchange(h.router(), &token, "other", &[&c.proof(h.now())]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = exchange(h.router(), &token, "api", &[&c.proof(h.now())]).await;
    assert_eq!(r.error(), "invalid_request", "{:?}", r.body);
    assert!(
        r.description().contains("client certificate"),
        "{:?}",
        r.body
    );
}

#[tokio::test]
async fn a_bound_subject_token_is_exchanged_only_with_a_proof_of_its_key() {
    let h = Harness::start().await;
    let c = Client::load("dpop-client.key.pem");
    let bound = h.token(|claims| claims["cnf"] = json!({"jkt": c.thumbprint()}));
    let r = exchange(h.router(), &bound, "api", &[]).await;
    assert_eq!(
        r.error(),
        "invalid_request",
        "stolen, without its key: {:?}",
        r.body
    );
    assert!(r.description().contains("DPoP-bound"), "{:?}", r.body);
    let other = Client::load("dpop-other.key.pem");
    let r = exchange(h.router(), &bound, "api", &[&other.proof(h.now())]).await;
    assert_eq!(
        r.error(),
        "invalid_request",
        "another key's proof: {:?}",
        r.body
    );
    let r = exchange(h.router(), &bound, "api", &[&c.proof(h.now())]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let cert_bound = h.token(|claims| {
        claims["cnf"] = json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"})
    });
    let r = exchange(h.router(), &cert_bound, "api", &[&c.proof(h.now())]).await;
    assert!(
        r.description().contains("certificate-bound"),
        "{:?}",
        r.body
    );
}

#[test]
fn a_cloud_target_cannot_be_bound() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[[targets]]\nid = \"prod\"\nkind = \"aws\"\nrole_arn = \"arn:aws:iam::123456789012:role/deploy\"\nbinding = \"dpop\"\n",
        config_text("https://issuer.test")
    );
    let err = ferry::config::Config::parse(&dir.path().join("ferry.toml"), text.into_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("targets[prod].binding: `dpop` cannot apply to kind `aws`"),
        "{err}"
    );
}

/// An exchange of `token` for `api` with a proof carrying `nonce`.
async fn with_nonce(h: &Harness, token: &str, nonce: &str) -> Resp {
    let c = Client::load("dpop-client.key.pem");
    exchange(
        h.router(),
        token,
        "api",
        &[&c.proof_with_nonce(h.now(), nonce)],
    )
    .await
}

#[tokio::test]
async fn a_required_nonce_is_asked_for_then_accepted_until_it_expires() {
    let h = Harness::with(
        &[Algorithm::RS256],
        |t| format!("{t}\n[dpop]\nrequire_nonce = true\nnonce_lifetime = \"1m\"\n"),
        POLICY,
    )
    .await;
    let c = Client::load("dpop-client.key.pem");
    let token = h.token(|_| {});
    let asked = exchange(h.router(), &token, "api", &[&c.proof(h.now())]).await;
    assert_eq!(asked.status, 400);
    assert_eq!(asked.error(), "use_dpop_nonce", "{:?}", asked.body);
    assert_eq!(
        asked.headers[header::WWW_AUTHENTICATE],
        "DPoP error=\"use_dpop_nonce\""
    );
    let nonce = asked.headers["dpop-nonce"].to_str().unwrap().to_owned();
    let r = with_nonce(&h, &token, &nonce).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["token_type"], "DPoP");
    // A nonce Ferry did not issue, and one past its lifetime, are asked for again.
    let forged = with_nonce(&h, &token, "AAAA").await;
    assert_eq!(forged.error(), "use_dpop_nonce");
    h.clock.advance(61);
    let token = h.token(|_| {});
    let stale = with_nonce(&h, &token, &nonce).await;
    assert_eq!(stale.error(), "use_dpop_nonce", "{:?}", stale.body);
    assert_ne!(stale.headers["dpop-nonce"], nonce.as_str(), "a fresh one");
    // A request without a proof needs no nonce (DPoP itself is the target's choice).
    let bearer = exchange(h.router(), &token, "api", &[]).await;
    assert_eq!(bearer.status, 200, "{:?}", bearer.body);
}
