//! Runs `ferry serve` at `trace` level with JSON logs and the audit trail on stdout,
//! drives granted, denied and malformed exchanges, and scans everything it wrote for
//! the tokens and credentials it handled.
#![cfg(test)]

#[path = "common/dev.rs"]
mod dev;

use std::process::{Command, Stdio};

use dev::{await_ready, dev_config, dev_token, exchange_with_traceparent, free_port};

/// Starts `ferry serve` (dev config, JSON logs, audit trail on stdout) with `RUST_LOG`
/// set to `log` (or unset), its output in `dir`; returns once it is ready.
fn serve(
    dir: &std::path::Path,
    log: Option<&str>,
) -> (std::process::Child, String, reqwest::blocking::Client) {
    serve_as(dir, log, "json")
}

/// [`serve`], with logs in `format` (`json` or `pretty`).
fn serve_as(
    dir: &std::path::Path,
    log: Option<&str>,
    format: &str,
) -> (std::process::Child, String, reqwest::blocking::Client) {
    serve_with(dir, log, format, "\n[audit]\nstdout = true\n")
}

/// [`serve_as`], with `extra` appended to the dev config instead of the stdout trail.
fn serve_with(
    dir: &std::path::Path,
    log: Option<&str>,
    format: &str,
    extra: &str,
) -> (std::process::Child, String, reqwest::blocking::Client) {
    let config = dev_config(extra);
    let cfg = dir.join("ferry.toml");
    std::fs::write(&cfg, config).unwrap();
    let port = free_port();
    let stdout = std::fs::File::create(dir.join("stdout")).unwrap();
    let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args([
            "--log-format",
            format,
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    if let Some(log) = log {
        command.env("RUST_LOG", log);
    }
    let mut child = command.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = await_ready(&mut child, &base);
    (child, base, client)
}

#[test]
fn no_token_or_credential_appears_in_any_log_line_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, client) = serve(dir.path(), Some("trace"));

    let good = dev_token(&["sub=alice", r#"groups=["deployers"]"#]);
    let other = dev_token(&["sub=bob"]);
    let expired = dev_token(&["sub=carol", "exp=1000"]);
    let mut secrets = vec![good.clone(), other.clone(), expired.clone()];
    let exchange = |token: &str, scope: &str| {
        let r = exchange_with_traceparent(&client, &base, token, Some(scope));
        (r.status().as_u16(), r.json::<serde_json::Value>().unwrap())
    };
    let (status, body) = exchange(&good, "read");
    assert_eq!(status, 200);
    secrets.push(body["access_token"].as_str().unwrap().to_owned());
    let (status, _) = exchange(&good, "read");
    assert_eq!(status, 200, "cache hit");
    assert_eq!(exchange(&good, "write").0, 400);
    assert_eq!(exchange(&other, "read").0, 400);
    assert_eq!(exchange(&expired, "read").0, 400);
    assert_eq!(exchange(&format!("{good}tampered"), "read").0, 400);

    let _ = child.kill();
    let _ = child.wait();
    let out = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    let all = format!("{out}\n{err}");
    // The scan is meaningful: trace-level logging happened and the audit lines are there.
    assert!(
        err.contains("\"level\":\"TRACE\""),
        "no trace-level lines were written"
    );
    assert!(err.contains("exchange granted") && err.contains("exchange refused"));
    assert!(
        err.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "traceparent recorded in the request span"
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("\"type\":\"decision\""))
            .count(),
        6
    );
    for secret in &secrets {
        // Each JWT part of 20+ characters: a header alone is not secret, but payloads and
        // signatures identify the token.
        for part in secret.split('.').skip(1).filter(|p| p.len() >= 20) {
            assert!(!all.contains(part), "a token part appears in the logs");
        }
        assert!(!all.contains(secret.as_str()));
    }
}

/// At the default level (info) a request writes one line, "request finished", with the
/// exchange's outcome in it and the request span (its id) listed once; a refusal adds
/// "exchange refused" with the reason.
#[test]
fn at_info_a_granted_exchange_writes_one_line_with_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, client) = serve(dir.path(), None);
    let post = |token: &str, scope: &str| {
        let r = client
            .post(format!("{base}/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(dev::exchange_form(token, Some(scope)))
            .send()
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        (r.status().as_u16(), id)
    };
    let (granted, granted_id) = post(
        &dev_token(&["sub=alice", r#"groups=["deployers"]"#]),
        "read",
    );
    let (refused, refused_id) = post(&dev_token(&["sub=bob"]), "read");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((granted, refused), (200, 400));
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    let lines_of = |id: &str| -> Vec<(String, serde_json::Value)> {
        err.lines()
            .filter(|l| l.contains(id))
            .map(|l| (l.to_owned(), serde_json::from_str(l).unwrap()))
            .collect()
    };
    let granted_lines = lines_of(&granted_id);
    assert_eq!(granted_lines.len(), 1, "{err}");
    let (raw, line) = &granted_lines[0];
    assert_eq!(line["message"], "request finished");
    assert_eq!(line["status"], 200);
    assert_eq!(line["outcome"], "granted");
    assert_eq!(line["issuer"], "dev");
    assert_eq!(line["target_id"], "internal-api");
    assert!(line["subject"].as_str().unwrap().contains("alice"), "{raw}");
    assert!(
        line["cache"].is_string() && line["policies"].is_string(),
        "{raw}"
    );
    assert!(line["latency_ms"].is_number(), "{raw}");
    // Whole microseconds, written as the shortest decimal: at most 3 decimals.
    let latency = raw
        .split("\"latency_ms\":")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .unwrap();
    assert!(
        latency.split('.').nth(1).is_none_or(|d| d.len() <= 3),
        "{latency}"
    );
    // One span, the request's, with its id; each key once (`target` is the module).
    assert_eq!(line["spans"].as_array().unwrap().len(), 1, "{raw}");
    assert_eq!(line["spans"][0]["request_id"], granted_id.as_str());
    assert_eq!(line["spans"][0]["route"], "/oauth2/token");
    // The exchange's own records stay off the request span (they would repeat keys).
    let mut span_keys: Vec<&str> = line["spans"][0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    span_keys.sort_unstable();
    assert_eq!(
        span_keys,
        ["method", "name", "request_id", "route"],
        "{raw}"
    );
    assert!(line.get("span").is_none(), "{raw}");
    assert_eq!(raw.matches("\"target\":").count(), 1, "{raw}");

    let refused_lines = lines_of(&refused_id);
    let messages: Vec<&str> = refused_lines
        .iter()
        .map(|(_, l)| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["exchange refused", "request finished"], "{err}");
    let finished = &refused_lines[1].1;
    assert_eq!(finished["status"], 400);
    assert_eq!(finished["outcome"], "invalid_target");
}

/// Client input with newlines and terminal escapes — an unsigned token's `iss`, a mapped
/// subject, a 9 KB `kid`, an `x-request-id` — starts no line of its own in the
/// human-readable log, and comes back (in the response and the audit line) only as a
/// short escaped prefix.
#[test]
fn client_input_cannot_forge_log_lines_or_come_back_whole() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, client) = serve_as(dir.path(), Some("info"), "pretty");
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let forged_iss = format!(
        "{}.{}.c2ln",
        b64(&serde_json::json!({"alg": "RS256"})),
        b64(&serde_json::json!({"iss": "x\nFORGED-ISS \u{1b}[2J", "exp": 9_999_999_999i64}))
    );
    let big_kid = format!(
        "{}.{}.c2ln",
        b64(
            &serde_json::json!({"alg": "RS256", "kid": format!("\nFORGED-KID{}", "k".repeat(9000))})
        ),
        b64(
            &serde_json::json!({"iss": "https://dev-issuer.ferry.invalid", "aud": "ferry", "exp": 9_999_999_999i64})
        )
    );
    let forged_subject = dev_token(&["sub=bob\nFORGED-SUBJECT"]);
    let mut descriptions = Vec::new();
    for (token, request_id) in [
        (forged_iss.as_str(), "ok-id-1"),
        (big_kid.as_str(), "evil id with spaces"),
        (forged_subject.as_str(), &"x".repeat(200)),
    ] {
        let r = client
            .post(format!("{base}/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-request-id", request_id)
            .body(dev::exchange_form(token, Some("read")))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        if request_id == "ok-id-1" {
            assert_eq!(id, request_id, "a safe id is kept");
        } else {
            assert_ne!(id, request_id, "an unsafe id is replaced");
            assert!(id.len() <= 64);
        }
        let body: serde_json::Value = r.json().unwrap();
        descriptions.push(body["error_description"].as_str().unwrap().to_owned());
    }
    let _ = child.kill();
    let _ = child.wait();
    for d in &descriptions {
        assert!(d.len() < 300, "echoed whole: {} bytes", d.len());
        assert!(!d.contains('\n') && !d.contains('\u{1b}'), "{d}");
    }
    assert!(
        descriptions[0].contains("FORGED-ISS"),
        "{}",
        descriptions[0]
    );
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(err.contains("exchange refused"), "{err}");
    for marker in ["FORGED-ISS", "FORGED-KID", "FORGED-SUBJECT"] {
        assert!(err.contains(marker), "{marker} not logged at all:\n{err}");
        for line in err.lines().filter(|l| l.contains(marker)) {
            assert!(
                !line.trim_start().starts_with(marker),
                "forged line: {line}"
            );
            assert!(
                line.contains("exchange refused") || line.contains("request finished"),
                "{line}"
            );
        }
    }
    assert!(!err.contains('\u{1b}'), "a terminal escape reached the log");
    assert!(!err.contains("evil id") && !err.contains(&"x".repeat(200)));
    assert!(err.len() < 20_000, "the 9 KB kid was logged whole");
}

/// SIGTERM: `ferry serve` drains, and its last audit line is a signed shutdown
/// checkpoint that `ferry audit verify --jwks` accepts.
#[test]
fn a_stopped_server_leaves_a_closed_signed_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let extra = format!(
        "\n[audit]\nfile = \"{}\"\ncheckpoint_every = 2\n",
        audit.display()
    );
    let (mut child, base, client) = serve_with(dir.path(), None, "json", &extra);
    let token = dev_token(&["sub=alice", r#"groups=["deployers"]"#]);
    for _ in 0..3 {
        let r = client
            .post(format!("{base}/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(dev::exchange_form(&token, Some("read")))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        client
            .get(format!("{base}/.well-known/jwks.json"))
            .send()
            .unwrap()
            .bytes()
            .unwrap(),
    )
    .unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let stdout = dev::ferry_ok(&[
        "audit",
        "verify",
        audit.to_str().unwrap(),
        "--jwks",
        jwks.to_str().unwrap(),
    ]);
    // 3 decisions, a checkpoint after the second, and the shutdown one.
    assert!(
        stdout.contains("ok: 5 line(s)") && stdout.contains("2 signed checkpoint(s)"),
        "{stdout}"
    );
    assert!(!stdout.contains("does not end"), "{stdout}");
}
