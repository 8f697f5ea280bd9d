//! DPoP proofs made with the RustCrypto `rsa` crate, which shares nothing with Ferry's
//! verifier, and exchanges that carry them.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::{JWT_TYPE, Resp, TOKEN_EXCHANGE, send};

/// The token endpoint as the harness's `public_url` names it.
pub const HTU: &str = "http://127.0.0.1:9/oauth2/token";

/// A client's DPoP key.
pub struct Client {
    key: rsa::RsaPrivateKey,
}

impl Client {
    pub fn load(name: &str) -> Self {
        let pem = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
        .unwrap();
        Self {
            key: rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap(),
        }
    }

    pub fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(self.key.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(self.key.e().to_bytes_be()),
        })
    }

    /// RFC 7638 §3, written out: SHA-256 of `{"e":…,"kty":"RSA","n":…}`.
    pub fn thumbprint(&self) -> String {
        let jwk = self.jwk();
        let canonical = format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            jwk["e"].as_str().unwrap(),
            jwk["n"].as_str().unwrap()
        );
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
    }

    /// A proof with `header` and `claims`, signed RS256.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signer = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(self.key.clone());
        let signature = signer.sign(signing_input.as_bytes()).to_vec();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    pub fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": "RS256", "jwk": self.jwk()})
    }

    pub fn claims(&self, iat: i64) -> Value {
        json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "POST", "htu": HTU, "iat": iat})
    }

    /// A good proof for the harness's token endpoint at `now`.
    pub fn proof(&self, now: i64) -> String {
        self.sign(&self.header(), &self.claims(now))
    }

    /// A good proof carrying the server's `nonce`.
    pub fn proof_with_nonce(&self, now: i64, nonce: &str) -> String {
        let mut claims = self.claims(now);
        claims["nonce"] = nonce.into();
        self.sign(&self.header(), &claims)
    }
}

/// An exchange of `token` for `target` with these `DPoP` header values.
pub async fn exchange(router: axum::Router, token: &str, target: &str, proofs: &[&str]) -> Resp {
    let body = serde_urlencoded::to_string([
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", token),
        ("subject_token_type", JWT_TYPE),
        ("audience", target),
    ])
    .unwrap();
    let mut req = Request::post("/oauth2/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for p in proofs {
        req = req.header("dpop", *p);
    }
    send(router, req.body(Body::from(body)).unwrap()).await
}
