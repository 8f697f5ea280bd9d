//! Runs `ferry serve` at `trace` level with JSON logs and the audit trail on stdout,
//! drives granted, denied and malformed exchanges, and scans everything it wrote for
//! the tokens and credentials it handled.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "common/dev.rs"]
mod dev;

use std::process::{Command, Stdio};

use dev::{dev_config, dev_token};
use std::time::{Duration, Instant};

#[test]
fn no_token_or_credential_appears_in_any_log_line_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let config = dev_config("\n[audit]\nstdout = true\n");
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(&cfg, config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stdout = std::fs::File::create(dir.path().join("stdout")).unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    let good = dev_token(&["sub=alice", r#"groups=["deployers"]"#]);
    let other = dev_token(&["sub=bob"]);
    let expired = dev_token(&["sub=carol", "exp=1000"]);
    let mut secrets = vec![good.clone(), other.clone(), expired.clone()];
    let exchange = |token: &str, scope: &str| {
        let body = serde_urlencoded::to_string([
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", token),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("audience", "internal-api"),
            ("scope", scope),
        ])
        .unwrap();
        let r = client
            .post(format!("{base}/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(body)
            .send()
            .unwrap();
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
