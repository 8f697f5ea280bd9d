//! A table of bad inputs: each gets its exact RFC 6749 error code, a request id, no
//! 5xx, no panic, and never the token echoed back.
#![cfg(test)]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

/// A JWS with arbitrary header and payload bytes, signed with `k1` (RS256).
fn signed_raw(h: &Harness, header: &Value, payload: &[u8]) -> String {
    let key = h.issuer.key("k1");
    let message = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload));
    let sig =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, Algorithm::RS256).unwrap();
    format!("{message}.{sig}")
}

struct Case {
    name: &'static str,
    status: u16,
    error: &'static str,
    description: &'static str,
    token: String,
    target: &'static str,
    scope: Option<&'static str>,
}

#[tokio::test]
async fn bad_tokens_get_exact_errors() {
    let h = Harness::start().await;
    let now = h.now();
    let k1 = h.issuer.key("k1");
    let rs_header = json!({"alg": "RS256", "kid": "k1"});
    let claims = h.issuer.claims(now);
    let valid = h.token(|_| {});

    // alg=none: unsigned.
    let none_unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(claims.to_string().as_bytes())
    );
    let none_signed = format!(
        "{}.{}.c2ln",
        b64(br#"{"alg":"none","kid":"k1"}"#),
        b64(claims.to_string().as_bytes())
    );
    // HS256 with the issuer's public key (its JWK JSON and its n) as the HMAC secret.
    let public_json = serde_json::to_vec(&k1.public).unwrap();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("k1".into());
    let hs256 =
        jsonwebtoken::encode(&hs_header, &claims, &EncodingKey::from_secret(&public_json)).unwrap();
    // Signed by a key the issuer never published, under an existing kid.
    let imposter = make_key(Algorithm::RS256, "k1");
    let forged = sign_with(&imposter, Some("k1"), &claims);
    // ES256 signature presented as RS256 key material: kid k2 is an EC key.
    let wrong_family = sign_with(&h.issuer.key("k1"), Some("k2"), &claims);
    let untrusted = FakeIssuer::start(&[Algorithm::RS256]).await;
    let untrusted_token = untrusted.sign("k1", &untrusted.claims(now));
    // Deeply nested claims, validly signed.
    let mut deep = String::new();
    for _ in 0..5000 {
        deep.push('[');
    }
    for _ in 0..5000 {
        deep.push(']');
    }
    let nested_payload = format!(
        r#"{{"iss":"{}","aud":"{AUDIENCE}","sub":"x","org":"acme","repository":"acme/infra","exp":{},"iat":{now},"deep":{deep}}}"#,
        h.issuer.url,
        now + 600
    );
    let deeply_nested = signed_raw(&h, &rs_header, nested_payload.as_bytes());
    let non_json_claims = signed_raw(&h, &rs_header, b"this is not json");
    let array_claims = signed_raw(&h, &rs_header, b"[1,2,3]");
    let crit = signed_raw(
        &h,
        &json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}),
        claims.to_string().as_bytes(),
    );
    let truncated = valid[..valid.len() - 20].to_owned();
    let big = format!("{}.{}.{}", "a".repeat(9000), "b".repeat(9000), "c");

    let edit = |f: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        f(&mut c);
        h.issuer.sign("k1", &c)
    };

    let cases = vec![
        Case {
            name: "alg none, unsigned",
            status: 400,
            error: "invalid_request",
            description: "not signed",
            token: none_unsigned,
            target: "api",
            scope: None,
        },
        Case {
            name: "alg none, with a signature",
            status: 400,
            error: "invalid_request",
            description: "algorithm `none` is not accepted",
            token: none_signed,
            target: "api",
            scope: None,
        },
        Case {
            name: "HS256 with the public key as secret",
            status: 400,
            error: "invalid_request",
            description: "algorithm `HS256` is not accepted",
            token: hs256,
            target: "api",
            scope: None,
        },
        Case {
            name: "unknown kid",
            status: 400,
            error: "invalid_request",
            description: "no key with kid `nope`",
            token: sign_with(&k1, Some("nope"), &claims),
            target: "api",
            scope: None,
        },
        Case {
            name: "forged signature",
            status: 400,
            error: "invalid_request",
            description: "signature is invalid",
            token: forged,
            target: "api",
            scope: None,
        },
        Case {
            name: "key of the wrong family",
            status: 400,
            error: "invalid_request",
            description: "cannot verify this algorithm",
            token: wrong_family,
            target: "api",
            scope: None,
        },
        Case {
            name: "expired",
            status: 400,
            error: "invalid_request",
            description: "token expired",
            token: edit(&|c| c["exp"] = (now - 11).into()),
            target: "api",
            scope: None,
        },
        Case {
            name: "expired within leeway is fine",
            status: 200,
            error: "",
            description: "",
            token: edit(&|c| c["exp"] = (now - 5).into()),
            target: "api",
            scope: None,
        },
        Case {
            name: "no exp",
            status: 400,
            error: "invalid_request",
            description: "no `exp` claim",
            token: edit(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            target: "api",
            scope: None,
        },
        Case {
            name: "nbf in the future",
            status: 400,
            error: "invalid_request",
            description: "not valid yet",
            token: edit(&|c| c["nbf"] = (now + 120).into()),
            target: "api",
            scope: None,
        },
        Case {
            name: "iat in the future",
            status: 400,
            error: "invalid_request",
            description: "issued in the future",
            token: edit(&|c| c["iat"] = (now + 120).into()),
            target: "api",
            scope: None,
        },
        Case {
            name: "iat too old",
            status: 400,
            error: "invalid_request",
            description: "too old",
            token: edit(&|c| c["iat"] = (now - 7200).into()),
            target: "api",
            scope: None,
        },
        Case {
            name: "exp of the wrong type",
            status: 400,
            error: "invalid_request",
            description: "claim `exp` has the wrong type",
            token: edit(&|c| c["exp"] = "tomorrow".into()),
            target: "api",
            scope: None,
        },
        Case {
            name: "wrong iss",
            status: 400,
            error: "invalid_request",
            description: "is not trusted",
            token: edit(&|c| c["iss"] = "https://evil.example".into()),
            target: "api",
            scope: None,
        },
        Case {
            name: "no iss",
            status: 400,
            error: "invalid_request",
            description: "no `iss` claim",
            token: edit(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            target: "api",
            scope: None,
        },
        Case {
            name: "untrusted issuer",
            status: 400,
            error: "invalid_request",
            description: "is not trusted",
            token: untrusted_token,
            target: "api",
            scope: None,
        },
        Case {
            name: "wrong aud",
            status: 400,
            error: "invalid_request",
            description: "audience `someone-else` not accepted by issuer `fake`",
            token: edit(&|c| c["aud"] = "someone-else".into()),
            target: "api",
            scope: None,
        },
        Case {
            name: "aud list with one accepted",
            status: 200,
            error: "",
            description: "",
            token: edit(&|c| c["aud"] = json!(["x", "another-audience"])),
            target: "api",
            scope: None,
        },
        Case {
            name: "condition false",
            status: 400,
            error: "invalid_request",
            description: "does not satisfy the `condition` of issuer `fake`",
            token: edit(&|c| c["org"] = "evil".into()),
            target: "api",
            scope: None,
        },
        Case {
            name: "missing claim in mapping",
            status: 400,
            error: "invalid_request",
            description: "`mapping.attributes.repository` could not be computed: claim or key `repository` is missing",
            token: edit(&|c| {
                c.as_object_mut().unwrap().remove("repository");
            }),
            target: "api",
            scope: None,
        },
        Case {
            name: "wrong claim type in mapping",
            status: 400,
            error: "invalid_request",
            description: "`mapping.subject`",
            token: edit(&|c| c["sub"] = json!({"nested": true})),
            target: "api",
            scope: None,
        },
        Case {
            name: "subject too long",
            status: 400,
            error: "invalid_request",
            description: "longer than 256 bytes",
            token: edit(&|c| c["sub"] = "x".repeat(300).into()),
            target: "api",
            scope: None,
        },
        Case {
            name: "bad base64",
            status: 400,
            error: "invalid_request",
            description: "not base64url-encoded JSON",
            token: "!!!.@@@.###".into(),
            target: "api",
            scope: None,
        },
        Case {
            name: "not a JWT",
            status: 400,
            error: "invalid_request",
            description: "not a JWT",
            token: "just-a-string".into(),
            target: "api",
            scope: None,
        },
        Case {
            name: "truncated",
            status: 400,
            error: "invalid_request",
            description: "signature is invalid",
            token: truncated,
            target: "api",
            scope: None,
        },
        Case {
            name: "over 16 KiB",
            status: 400,
            error: "invalid_request",
            description: "larger than 16384 bytes",
            token: big,
            target: "api",
            scope: None,
        },
        Case {
            name: "non-JSON claims",
            status: 400,
            error: "invalid_request",
            description: "claims are not a base64url-encoded JSON object",
            token: non_json_claims,
            target: "api",
            scope: None,
        },
        Case {
            name: "claims not an object",
            status: 400,
            error: "invalid_request",
            description: "claims are not a base64url-encoded JSON object",
            token: array_claims,
            target: "api",
            scope: None,
        },
        Case {
            name: "deeply nested JSON",
            status: 400,
            error: "invalid_request",
            description: "claims are not",
            token: deeply_nested,
            target: "api",
            scope: None,
        },
        Case {
            name: "critical header",
            status: 400,
            error: "invalid_request",
            description: "critical extensions",
            token: crit,
            target: "api",
            scope: None,
        },
        Case {
            name: "unknown target",
            status: 400,
            error: "invalid_target",
            description: "unknown target `nope`",
            token: valid.clone(),
            target: "nope",
            scope: None,
        },
        Case {
            name: "policy deny (no permit)",
            status: 400,
            error: "invalid_target",
            description: "no policy permits `fake:repo:acme/infra:ref:refs/heads/main` to exchange for target `other`",
            token: valid.clone(),
            target: "other",
            scope: None,
        },
        Case {
            name: "policy deny (forbid)",
            status: 400,
            error: "invalid_target",
            description: "by policy `no-admin-scope`",
            token: valid.clone(),
            target: "api",
            scope: Some("admin"),
        },
        Case {
            name: "policy deny (attribute)",
            status: 400,
            error: "invalid_target",
            description: "no policy permits",
            token: edit(&|c| c["repository"] = "acme/web".into()),
            target: "api",
            scope: None,
        },
        Case {
            name: "scope not allowed",
            status: 400,
            error: "invalid_scope",
            description: "scope `delete` is not allowed for target `api`",
            token: valid.clone(),
            target: "api",
            scope: Some("read delete"),
        },
    ];

    let mut failures = Vec::new();
    for case in &cases {
        let r = h.exchange_token(&case.token, case.target, case.scope).await;
        let ok = r.status.as_u16() == case.status
            && r.error() == case.error
            && r.description().contains(case.description)
            && r.headers.contains_key("x-request-id")
            && r.headers
                .get("cache-control")
                .is_some_and(|v| v == "no-store");
        let leaked = case.token.len() > 20 && String::from_utf8_lossy(&r.raw).contains(&case.token);
        if !ok || leaked {
            failures.push(format!(
                "{}: got {} {:?} (leaked token: {leaked})",
                case.name, r.status, r.body
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn bad_requests_get_exact_errors() {
    let h = Harness::start().await;
    let token = h.token(|_| {});
    let t = token.as_str();
    type FormCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str, &'a str);
    let form_cases: Vec<FormCase> = vec![
        (
            "empty form",
            vec![],
            400,
            "invalid_request",
            "missing parameter `grant_type`",
        ),
        (
            "wrong grant type",
            vec![("grant_type", "client_credentials")],
            400,
            "unsupported_grant_type",
            "client_credentials",
        ),
        (
            "missing subject_token",
            vec![
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token_type", JWT_TYPE),
                ("audience", "api"),
            ],
            400,
            "invalid_request",
            "`subject_token`",
        ),
        (
            "missing subject_token_type",
            vec![
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", t),
                ("audience", "api"),
            ],
            400,
            "invalid_request",
            "`subject_token_type`",
        ),
        (
            "unsupported subject_token_type",
            vec![
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", t),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:saml2",
                ),
                ("audience", "api"),
            ],
            400,
            "invalid_request",
            "not supported",
        ),
        (
            "missing audience",
            vec![
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", t),
                ("subject_token_type", JWT_TYPE),
            ],
            400,
            "invalid_request",
            "`audience`",
        ),
        (
            "repeated audience",
            vec![
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", t),
                ("subject_token_type", JWT_TYPE),
                ("audience", "api"),
                ("audience", "other"),
            ],
            400,
            "invalid_request",
            "repeated",
        ),
        (
            "actor token",
            vec![
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", t),
                ("subject_token_type", JWT_TYPE),
                ("audience", "api"),
                ("actor_token", t),
                ("actor_token_type", JWT_TYPE),
            ],
            400,
            "invalid_request",
            "delegation",
        ),
        (
            "unknown resource",
            vec![
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", t),
                ("subject_token_type", JWT_TYPE),
                ("resource", "https://nowhere.example"),
            ],
            400,
            "invalid_target",
            "unknown target",
        ),
        (
            "unavailable token type",
            vec![
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", t),
                ("subject_token_type", JWT_TYPE),
                ("audience", "api"),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:saml2",
                ),
            ],
            400,
            "invalid_request",
            "requested_token_type",
        ),
    ];
    let mut failures = Vec::new();
    for (name, form, status, error, description) in &form_cases {
        let r = h.post_form(form).await;
        if r.status.as_u16() != *status
            || r.error() != *error
            || !r.description().contains(description)
            || !r.headers.contains_key("x-request-id")
        {
            failures.push(format!("{name}: got {} {:?}", r.status, r.body));
        }
        if String::from_utf8_lossy(&r.raw).contains(t) {
            failures.push(format!("{name}: token echoed"));
        }
    }

    // Wrong content types.
    let body = serde_urlencoded::to_string([
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", t),
        ("subject_token_type", JWT_TYPE),
        ("audience", "api"),
    ])
    .unwrap();
    for ct in [
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
        "",
    ] {
        let r = h.post("/oauth2/token", ct, body.clone().into_bytes()).await;
        if r.status != 400
            || r.error() != "invalid_request"
            || !r.description().contains("x-www-form-urlencoded")
        {
            failures.push(format!(
                "content type {ct:?}: got {} {:?}",
                r.status, r.body
            ));
        }
    }
    // Charset parameter is fine.
    let r = h
        .post(
            "/oauth2/token",
            "application/x-www-form-urlencoded; charset=UTF-8",
            body.clone().into_bytes(),
        )
        .await;
    if r.status != 200 {
        failures.push(format!("charset parameter: got {} {:?}", r.status, r.body));
    }
    // A 1 MB token: the body limit answers before anything is parsed.
    let huge = format!(
        "grant_type={TOKEN_EXCHANGE}&subject_token_type={JWT_TYPE}&audience=api&subject_token={}",
        "a".repeat(1024 * 1024)
    );
    let r = h
        .post(
            "/oauth2/token",
            "application/x-www-form-urlencoded",
            huge.into_bytes(),
        )
        .await;
    if r.status != 413 || r.error() != "invalid_request" || !r.headers.contains_key("x-request-id")
    {
        failures.push(format!("1 MB token: got {} {:?}", r.status, r.body));
    }
    // Not form encoding at all.
    let r = h
        .post(
            "/oauth2/token",
            "application/x-www-form-urlencoded",
            vec![0xff, 0xfe, b'=', 0x00],
        )
        .await;
    if r.status != 400 || r.error() != "invalid_request" {
        failures.push(format!("binary body: got {} {:?}", r.status, r.body));
    }
    // Wrong method and unknown path are JSON errors too.
    let r = h.get("/oauth2/token").await;
    if r.status != 405 || r.error() != "invalid_request" {
        failures.push(format!("GET token: got {} {:?}", r.status, r.body));
    }
    let r = h.get("/nope").await;
    if r.status != 404 || r.error() != "invalid_request" {
        failures.push(format!("unknown path: got {} {:?}", r.status, r.body));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
