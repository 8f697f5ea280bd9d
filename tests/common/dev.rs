//! The repository's dev config and dev issuer, for tests that run the `ferry` binary.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::process::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `config/dev.toml` with its relative paths made absolute (so it can live in a temp
/// dir), plus `extra` appended.
pub fn dev_config(extra: &str) -> String {
    std::fs::read_to_string(repo().join("config/dev.toml"))
        .unwrap()
        .replace(
            "jwks_file = \"dev/jwks.json\"",
            &format!(
                "jwks_file = \"{}\"",
                repo().join("config/dev/jwks.json").display()
            ),
        )
        .replace(
            "files = [\"policies/dev.cedar\"]",
            &format!(
                "files = [\"{}\"]",
                repo().join("config/policies/dev.cedar").display()
            ),
        )
        + extra
}

/// A token from the dev issuer (`ferry dev token --claim …`).
pub fn dev_token(claims: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.current_dir(repo()).args(["dev", "token"]);
    for c in claims {
        cmd.args(["--claim", c]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A free loopback port: bound, then released for a `ferry serve` child to take.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 20 s) for the `ferry serve` child at `base` to answer `/readyz` with
/// 200; if it never does, kills it and fails the test. Returns a client with a 5 s
/// timeout.
pub fn await_ready(child: &mut std::process::Child, base: &str) -> reqwest::blocking::Client {
    use std::time::{Duration, Instant};
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
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry serve at {base} did not become ready");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    client
}
