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
    ferry_testkit::free_port().unwrap()
}

pub use ferry_testkit::await_ready;
