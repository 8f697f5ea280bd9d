//! The repository's dev config and dev issuer, for tests that run the `ferry` binary.
#![allow(dead_code)]

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

/// [`dev_config`] with `policy` (written to `dir/exchange.cedar`) as its only policy.
pub fn dev_config_with_policy(dir: &std::path::Path, extra: &str, policy: &str) -> String {
    std::fs::write(dir.join("exchange.cedar"), policy).unwrap();
    let dev_policy = format!(
        "files = [\"{}\"]",
        repo().join("config/policies/dev.cedar").display()
    );
    dev_config(extra).replace(&dev_policy, "files = [\"exchange.cedar\"]")
}

/// The RFC 8693 form exchanging `token` for the dev config's `internal-api`, asking
/// for `scope` when given.
pub fn exchange_form(token: &str, scope: Option<&str>) -> String {
    let mut form = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", token),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("audience", "internal-api"),
    ];
    form.extend(scope.map(|s| ("scope", s)));
    serde_urlencoded::to_string(form).unwrap()
}

/// `ferry serve --config cfg --listen 127.0.0.1:port`, its output discarded.
pub fn spawn_serve(cfg: &std::path::Path, port: u16) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
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

#[allow(
    unused_imports,
    reason = "not every test binary that includes this file waits for a server"
)]
pub use ferry_testkit::{await_ready, await_ready_with};

/// The W3C trace context the log and trace tests send, and look for.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// An RFC 8693 exchange of `token` for the dev config's `internal-api` (with `scope`,
/// when given) against the `ferry serve` at `base`, sent with [`TRACEPARENT`].
pub fn exchange_with_traceparent(
    client: &reqwest::blocking::Client,
    base: &str,
    token: &str,
    scope: Option<&str>,
) -> reqwest::blocking::Response {
    client
        .post(format!("{base}/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("traceparent", TRACEPARENT)
        .body(exchange_form(token, scope))
        .send()
        .unwrap()
}

/// Runs the `ferry` binary with `args` and returns its stdout, once it has exited 0 (the
/// test fails with its output otherwise).
pub fn ferry_ok(args: &[&str]) -> String {
    ferry_ok_env(args, &[])
}

/// [`ferry_ok`] with `env` added to the command's environment.
pub fn ferry_ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ferry {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A `ferry serve` child on a free loopback port, killed when dropped.
pub struct Serve {
    pub child: std::process::Child,
    pub base: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ferry serve --config cfg` on a free loopback port, once it is ready (static AWS
/// credentials in its environment, so an `aws` target can sign without a metadata call).
pub fn serve(cfg: &std::path::Path) -> Serve {
    serve_with_env(cfg, &[])
}

/// [`serve`] with `env` added to the child's environment.
pub fn serve_with_env(cfg: &std::path::Path, env: &[(&str, &str)]) -> Serve {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("RUST_LOG")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    await_ready(&mut child, &base);
    Serve { child, base }
}
