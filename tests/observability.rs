//! Audit trail, metrics, admin API and live reload, through the real router.
#![cfg(test)]

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

async fn harness(extra: &str) -> (Harness, tempfile::TempDir) {
    let side = tempfile::tempdir().unwrap();
    let token_file = side.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let audit = side.path().join("audit/audit.log");
    let extra = extra.to_owned();
    let h = Harness::with(
        &[Algorithm::RS256, Algorithm::ES256],
        move |t| {
            format!(
                "{t}\n[audit]\nfile = \"{}\"\nreplica_id = \"replica-a\"\n\n[admin]\ntoken_file = \"{}\"\n{extra}",
                audit.display(),
                token_file.display()
            )
        },
        POLICY,
    )
    .await;
    (h, side)
}

fn audit_lines(side: &tempfile::TempDir) -> Vec<Value> {
    std::fs::read_to_string(side.path().join("audit/audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn admin(h: &Harness, method: &str, path: &str, token: Option<&str>, body: Value) -> Resp {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(h.router(), req.body(Body::from(body.to_string())).unwrap()).await
}

async fn metrics_text(h: &Harness) -> String {
    let r = h.get("/metrics").await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.raw).unwrap()
}

#[tokio::test]
async fn every_decision_is_audited_and_counted() {
    let (h, side) = harness("").await;
    let token = h.token(|_| {});
    let ok = h.exchange_token(&token, "api", Some("read")).await;
    assert_eq!(ok.status, 200);
    let again = h.exchange_token(&token, "api", Some("read")).await;
    assert_eq!(again.status, 200);
    let denied = h.exchange_token(&token, "other", None).await;
    assert_eq!(denied.status, 400);
    let garbage = h.exchange_token("not-a-token", "api", None).await;
    assert_eq!(garbage.status, 400);

    let lines = audit_lines(&side);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let access = ok.body["access_token"].as_str().unwrap();
    let sha = |s: &str| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(s.as_bytes()))
    };
    let first = &lines[0];
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["type"], "decision");
    assert_eq!(first["replica"], "replica-a");
    assert_eq!(
        first["request_id"],
        ok.headers["x-request-id"].to_str().unwrap()
    );
    assert_eq!(first["issuer"], "fake");
    assert_eq!(first["token_sub"], "repo:acme/infra:ref:refs/heads/main");
    assert_eq!(first["token_sha256"], sha(&token));
    assert_eq!(first["subject"], "fake:repo:acme/infra:ref:refs/heads/main");
    assert_eq!(first["target"], "api");
    assert_eq!(first["policy_ids"], json!(["deployers-api"]));
    assert_eq!(first["cache"], "miss");
    assert_eq!(first["credential_sha256"], sha(access));
    assert_eq!(first["revision"], h.state.snapshot.load().revision.as_str());
    assert_eq!(first["prev"], ferry::audit::GENESIS);
    assert_eq!(lines[1]["cache"], "hit");
    assert_eq!(lines[1]["prev"], first["hash"]);
    assert_eq!(lines[2]["decision"], "deny");
    assert_eq!(lines[2]["error"], "invalid_target");
    assert!(
        lines[2]["reason"]
            .as_str()
            .unwrap()
            .contains("no policy permits")
    );
    assert_eq!(lines[3]["decision"], "deny");
    assert_eq!(lines[3]["error"], "invalid_request");
    assert!(lines[3]["issuer"].is_null());
    // No token or credential in the trail, only their hashes.
    let raw = std::fs::read_to_string(side.path().join("audit/audit.log")).unwrap();
    assert!(!raw.contains(&token) && !raw.contains(access));
    assert_eq!(
        ferry::audit::verify_files(&[side.path().join("audit/audit.log")], None).map(|r| r.lines),
        Ok(4)
    );

    let text = metrics_text(&h).await;
    for expected in [
        r#"ferry_exchanges_total{issuer="fake",target="api",outcome="granted"} 2"#,
        r#"ferry_exchanges_total{issuer="fake",target="other",outcome="invalid_target"} 1"#,
        r#"ferry_exchanges_total{issuer="unknown",target="unknown",outcome="invalid_request"} 1"#,
        r#"ferry_cache_requests_total{result="hit"} 1"#,
        r#"ferry_cache_requests_total{result="miss"} 1"#,
        r#"ferry_provider_calls_total{provider="jwt",outcome="ok"} 1"#,
        r#"ferry_policy_decisions_total{decision="allow"} 2"#,
        r#"ferry_policy_decisions_total{decision="deny"} 1"#,
        r#"ferry_exchange_duration_seconds_count{outcome="granted"} 2"#,
        r#"ferry_jwks_refreshes_total{issuer="fake",outcome="success"} 1"#,
        // The same token three times: checked twice (a token is remembered from its
        // second sight on), then remembered; "not-a-token" never reaches a key.
        r#"ferry_token_signatures_total{result="verified"} 2"#,
        r#"ferry_token_signatures_total{result="remembered"} 1"#,
        r#"ferry_jwks_seconds_since_last_refresh{issuer="fake"} 0"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert!(text.contains(&format!(
        r#"ferry_config_info{{revision="{}"}} 1"#,
        h.state.snapshot.load().revision
    )));
    // Bounded labels: no subject or token id anywhere in the metrics.
    assert!(!text.contains("acme/infra") && !text.contains("repo:"));
}

#[tokio::test]
async fn tampering_with_the_audit_file_is_found_by_ferry_audit_verify() {
    let (h, side) = harness("").await;
    for i in 0..5 {
        let token = h.token(|c| c["sub"] = format!("w{i}").into());
        h.exchange_token(&token, "api", None).await;
    }
    let path = side.path().join("audit/audit.log");
    let stdout = dev::ferry_ok(&["audit", "verify", path.to_str().unwrap()]);
    assert!(stdout.contains("ok: 5 line(s)"), "{stdout}");

    // Closed with a signed checkpoint, the trail verifies against Ferry's JWKS.
    let jwks = side.path().join("jwks.json");
    std::fs::write(&jwks, h.get("/.well-known/jwks.json").await.raw).unwrap();
    h.state.audit.close();
    let stdout = dev::ferry_ok(&[
        "audit",
        "verify",
        path.to_str().unwrap(),
        "--jwks",
        jwks.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("ok: 6 line(s)") && stdout.contains("1 signed checkpoint(s) verified"),
        "{stdout}"
    );
    assert!(!stdout.contains("does not end"), "{stdout}");

    let text = std::fs::read_to_string(&path).unwrap();
    let tampered: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 2 {
                l.replace("\"allow\"", "\"deny\"")
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&path, tampered.join("\n") + "\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["audit", "verify", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("{}:3: ", path.display())), "{err}");
}

#[tokio::test]
async fn a_broken_reload_keeps_the_old_config_serving() {
    let (h, _side) = harness("").await;
    let token = h.token(|_| {});
    assert_eq!(h.exchange_token(&token, "api", None).await.status, 200);
    let old_revision = h.state.snapshot.load().revision.clone();

    // A policy that names an attribute no mapping produces.
    std::fs::write(
        h.dir.path().join("policies/test.cedar"),
        r#"permit(principal, action, resource) when { principal.attributes.nope == "x" };"#,
    )
    .unwrap();
    let result = h.state.reload("test").await;
    let errs = result.unwrap_err().to_string();
    assert!(errs.contains("nope"), "{errs}");
    assert_eq!(h.state.snapshot.load().revision, old_revision);
    // The old policy still answers (a fresh identity, so no cache is involved).
    let other = h.token(|c| c["sub"] = "after-bad-reload".into());
    assert_eq!(h.exchange_token(&other, "api", None).await.status, 200);
    // The metric and readiness say why.
    let text = metrics_text(&h).await;
    assert!(
        text.contains(r#"ferry_config_reloads_total{outcome="failure"} 1"#),
        "{text}"
    );
    let ready = h.get("/readyz").await;
    assert!(
        ready.body["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("nope")
    );
    assert_eq!(ready.body["revision"], old_revision.as_str());

    // Fixing it reloads, and the reload error clears.
    std::fs::write(h.dir.path().join("policies/test.cedar"), POLICY).unwrap();
    let rev = h.state.reload("test").await.unwrap();
    assert_eq!(rev, old_revision, "same files, same revision");
    assert!(h.get("/readyz").await.body["last_reload_error"].is_null());
    assert!(
        metrics_text(&h)
            .await
            .contains(r#"ferry_config_reloads_total{outcome="success"} 1"#)
    );
}

#[tokio::test]
async fn a_reload_that_removes_a_trust_mapping_refuses_the_next_exchange() {
    let (h, _side) = harness("").await;
    let token = h.token(|_| {});
    let before = h.exchange_token(&token, "api", None).await;
    assert_eq!(before.status, 200);
    let kid_before = h.get("/.well-known/jwks.json").await.body["keys"][0]["kid"].clone();

    // Tighten the issuer's condition: this org is no longer trusted.
    let path = h.dir.path().join("ferry.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        r#"assertion.org == "acme""#,
        r#"assertion.org == "someone-else""#,
    );
    std::fs::write(&path, text).unwrap();
    let old_rev = h.state.snapshot.load().revision.clone();
    let new_rev = h.state.reload("test").await.unwrap();
    assert_ne!(new_rev, old_rev);
    let after = h.exchange_token(&token, "api", None).await;
    assert_eq!(after.status, 400, "{:?}", after.body);
    assert!(after.description().contains("condition"));
    // The ephemeral signing key survived the reload: tokens already issued still verify.
    assert_eq!(
        h.get("/.well-known/jwks.json").await.body["keys"][0]["kid"],
        kid_before
    );

    // Remove the issuer entirely (another issuer stays trusted): now it is untrusted.
    let text = std::fs::read_to_string(&path).unwrap();
    let other = FakeIssuer::start(&[Algorithm::RS256]).await;
    let replaced = text.replace(
        &format!("issuer = \"{}\"", h.issuer.url),
        &format!("issuer = \"{}\"", other.url),
    );
    std::fs::write(&path, replaced).unwrap();
    h.state.reload("test").await.unwrap();
    let gone = h
        .exchange_token(&h.token(|c| c["sub"] = "new".into()), "api", None)
        .await;
    assert_eq!(gone.status, 400);
    assert!(
        gone.description().contains("is not trusted"),
        "{:?}",
        gone.body
    );
}

#[tokio::test]
async fn the_file_watch_reloads_by_itself() {
    let (h, _side) = harness("").await;
    let _watch = ferry::http::reload::spawn_watch(
        std::sync::Arc::clone(&h.state),
        std::time::Duration::from_millis(50),
    );
    let old = h.state.snapshot.load().revision.clone();
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    std::fs::write(
        h.dir.path().join("policies/test.cedar"),
        format!("{POLICY}\n// touched\n"),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.state.snapshot.load().revision == old {
        assert!(
            std::time::Instant::now() < deadline,
            "the watch did not reload"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_admin_api_requires_its_token() {
    let (h, _side) = harness("").await;
    for (method, path) in [
        ("GET", "/admin/issuers"),
        ("POST", "/admin/explain"),
        ("POST", "/admin/reload"),
    ] {
        let r = admin(&h, method, path, None, json!({})).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.error(), "invalid_client");
        assert!(r.headers.contains_key("www-authenticate"));
        let r = admin(&h, method, path, Some("wrong-token-wrong-token"), json!({})).await;
        assert_eq!(r.status, 401, "{path}");
    }
    let r = admin(&h, "GET", "/admin/issuers", Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let issuer = &r.body["issuers"][0];
    assert_eq!(issuer["id"], "fake");
    assert_eq!(issuer["key_ids"], json!(["k1", "k2"]));
    assert_eq!(issuer["usable"], true);
    assert!(issuer["last_success"].is_i64());
    assert!(issuer["last_error"].is_null());
    assert_eq!(r.body["signing"]["ephemeral"], true);
    assert!(r.body["signing"]["active"]["kid"].is_string());

    let token = h.token(|_| {});
    let r = admin(
        &h,
        "POST",
        "/admin/explain",
        Some(ADMIN_TOKEN),
        json!({"token": token, "target": "api", "scope": "admin"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["allowed"], false);
    assert_eq!(r.body["signature_checked"], true);
    assert_eq!(r.body["stages"][3]["detail"], "denied by no-admin-scope");

    let r = admin(&h, "POST", "/admin/reload", Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["reloaded"], true);
}

#[tokio::test]
async fn the_admin_api_is_off_without_a_token_file() {
    let h = Harness::start().await;
    let r = admin(&h, "GET", "/admin/issuers", Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!(r.status, 404);
    assert!(r.description().contains("disabled"));
}

#[tokio::test]
async fn an_optional_issuer_without_keys_does_not_block_readiness() {
    let down = FakeIssuer::start(&[Algorithm::RS256]).await;
    down.set_failing(true);
    let url = down.url.clone();
    let extra = move |required: bool| {
        let url = url.clone();
        move |t: String| {
            format!(
                "{t}\n[[issuers]]\nid = \"down\"\nissuer = \"{url}\"\naudiences = [\"x\"]\nrequired = {required}\ncondition = 'true'\n[issuers.mapping]\nsubject = 'assertion.sub'\n[issuers.mapping.attributes]\nrepository = '\"\"'\n"
            )
        }
    };
    let optional = Harness::with(&[Algorithm::RS256], extra(false), POLICY).await;
    let r = optional.get("/readyz").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["issuers"]["down"], false);
    let required = Harness::with(&[Algorithm::RS256], extra(true), POLICY).await;
    assert_eq!(required.get("/readyz").await.status, 503);
}

#[tokio::test]
async fn counters_an_alert_reads_exist_at_zero_and_a_refused_token_names_its_issuer() {
    let (h, side) = harness("").await;
    let text = metrics_text(&h).await;
    for at_zero in [
        r#"ferry_config_reloads_total{outcome="failure"} 0"#,
        r#"ferry_config_reloads_total{outcome="success"} 0"#,
        r#"ferry_exchanges_total{issuer="fake",target="api",outcome="server_error"} 0"#,
        r#"ferry_exchanges_total{issuer="unknown",target="unknown",outcome="invalid_request"} 0"#,
        r#"ferry_policy_decisions_total{decision="error"} 0"#,
        r#"ferry_provider_calls_total{provider="jwt",outcome="unavailable"} 0"#,
        r#"ferry_cache_requests_total{result="miss"} 0"#,
        r#"ferry_revocations_total{kind="subject",via="admin"} 0"#,
        "ferry_audit_write_failures_total 0",
        "ferry_rate_limited_total 0",
        r#"ferry_shadow_disagreements_total{direction="allow_to_deny"} 0"#,
    ] {
        assert!(text.contains(at_zero), "missing `{at_zero}`:\n{text}");
    }
    let series = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(series("ferry_store_up"), 1.0);
    assert!(series("process_cpu_seconds_total") > 0.0);
    assert!(series("process_resident_memory_bytes") > 1e6);
    assert!(series("process_open_fds") >= 3.0);
    assert!(series("process_max_fds") >= series("process_open_fds"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = series("process_start_time_seconds");
    assert!(started <= now && started > now - 600.0, "{started}");
    assert!(
        text.contains(&format!(
            "ferry_build_info{{version=\"{}\",commit=\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );

    // An expired token of a configured issuer: counted and audited under that issuer.
    let expired = h.token(|c| {
        c["iat"] = json!(h.now() - 7200);
        c["exp"] = json!(h.now() - 3600);
    });
    let r = h.exchange_token(&expired, "api", None).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let text = metrics_text(&h).await;
    assert!(
        text.contains(
            r#"ferry_exchanges_total{issuer="fake",target="unknown",outcome="invalid_request"} 1"#
        ),
        "{text}"
    );
    let lines = audit_lines(&side);
    assert_eq!(lines.last().unwrap()["issuer"], "fake");
    assert!(
        lines.last().unwrap()["token_sub"].is_null(),
        "nothing else from an unverified token"
    );
}
