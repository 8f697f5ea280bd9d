//! The `ferry` binary: check, explain, keys, dev token, and serve as a child process.
#![cfg(test)]

#[path = "common/dev.rs"]
mod dev;

use std::path::{Path, PathBuf};

use dev::{await_ready, dev_token, free_port, repo};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn ferry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env_remove("RUST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    ferry().args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_passes_on_every_config_in_the_repo() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = run(&["check", "--config", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                text(&out.stderr)
            );
            assert!(
                text(&out.stdout).contains(": ok: "),
                "{}",
                text(&out.stdout)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "dev.toml and ferry.example.toml at least");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    p
}

const BROKEN: &str = r#"
[server]
listen = "127.0.0.1:8080"
public_url = "http://ferry.example.com"

[signing]
ephemeral = true

[store]
backend = "redis"
url = "http://redis.example.com"
revocation_max_lag = "5ms"

[[issuers]]
id = "github"
issuer = "https://token.actions.githubusercontent.com"
audiences = ["ferry"]
algorithms = ["RS256", "HS256"]
condition = 'assertion.repository_owner =='
[issuers.mapping]
subject = '"github:" + assertion.repository'
[issuers.mapping.attributes]
repository = "assertion.repository"
"bad-name" = "assertion.x"

[[issuers]]
id = "github"
issuer = "http://insecure.example.com"
audiences = []
[issuers.mapping]
subject = "assertion.sub"

[[targets]]
id = "api"
kind = "jwt"
ttl = "48h"

[[targets]]
id = "cloud"
kind = "aws"
role_arn = "arn:aws:iam::123:role/x"
duration = "1h"
session_tags = { "bad key!" = "identity.subject" }

[[targets]]
id = "gcloud"
kind = "gcp"

[policy]
files = ["policies/*.cedar"]
"#;

#[test]
fn check_reports_every_problem_as_file_entry_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "ferry.toml", BROKEN);
    let out = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let f = cfg.display().to_string();
    for expected in [
        format!("{f}: server.public_url: must be https"),
        format!(
            "{f}: issuers[github].algorithms: `HS256` is not accepted: unsigned and symmetric algorithms are never accepted"
        ),
        format!(
            "{f}: issuers[github].mapping.attributes.bad-name: attribute names must be identifiers"
        ),
        format!("{f}: issuers[github].id: is used by another issuer"),
        format!("{f}: issuers[github].issuer: discovery needs https"),
        format!("{f}: issuers[github].audiences: must list at least one"),
        format!("{f}: targets[api].audience: is required for kind `jwt`"),
        format!("{f}: targets[api].ttl: must be between 10s and 24h"),
        format!("{f}: targets[cloud].role_arn: `arn:aws:iam::123:role/x` is not an IAM role ARN"),
        format!("{f}: targets[cloud].session_tags.bad key!: tag keys are 1–128 characters"),
        format!(
            "{f}: targets[cloud].mode: `session_tags`, `source_identity` and `external_id` apply to `assume_role`"
        ),
        format!(
            "{f}: targets[gcloud].workload_identity_provider: must be //iam.googleapis.com/projects/"
        ),
        format!("{f}: store.url: `http://redis.example.com` is not a redis:// or rediss:// URL"),
        format!("{f}: store.encryption_key_file: is required for the redis backend"),
        format!(
            "{f}: store.revocation_max_lag: must be `0s` (no local copy) or between 20ms and 10s"
        ),
    ] {
        assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn check_reports_cel_and_cedar_errors_together() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "ferry.toml",
        r#"
[server]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
[signing]
ephemeral = true
[[issuers]]
id = "dev"
issuer = "https://dev.invalid"
jwks_file = "jwks.json"
audiences = ["ferry"]
condition = 'assertion.org =='
[issuers.mapping]
subject = '"dev:" + (assertion.sub'
[issuers.mapping.attributes]
repository = "assertion.repository"
[[targets]]
id = "api"
kind = "jwt"
audience = "https://api"
[policy]
files = ["policies/*.cedar", "missing/*.cedar"]
"#,
    );
    std::fs::copy(
        repo().join("config/dev/jwks.json"),
        dir.path().join("jwks.json"),
    )
    .unwrap();
    let policy = write(
        dir.path(),
        "policies/p.cedar",
        r#"permit(principal, action, resource) when { principal.attributes.branch == "main" };
           permit(principal, action, resource"#,
    );
    let out = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let f = cfg.display().to_string();
    assert!(
        err.contains(&format!("{f}: issuers[dev].condition: CEL syntax error")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}: issuers[dev].mapping.subject: CEL syntax error"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}: policy.files: `missing/*.cedar` matches no file"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}: syntax: ", policy.display())),
        "{err}"
    );

    // Fix the syntax error: now the schema check names the unknown attribute.
    write(
        dir.path(),
        "policies/p.cedar",
        r#"permit(principal, action, resource) when { principal.attributes.branch == "main" };"#,
    );
    let fixed = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("assertion.org ==", "assertion.org == \"acme\"")
        .replace("(assertion.sub", "assertion.sub")
        .replace(", \"missing/*.cedar\"", "");
    std::fs::write(&cfg, fixed).unwrap();
    let out = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{}: policy `p.cedar#0`: ", policy.display())),
        "{err}"
    );
    assert!(err.contains("branch"), "{err}");
}

#[cfg(not(feature = "otlp"))]
#[test]
fn an_otlp_endpoint_needs_an_otlp_build() {
    let dir = tempfile::tempdir().unwrap();
    let dev = std::fs::read_to_string(repo().join("config/dev.toml")).unwrap();
    let cfg = write(
        &repo().join("config"),
        "../target/otlp-check.toml",
        &(dev + "\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n"),
    );
    let _keep = dir;
    let out = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("telemetry.otlp_endpoint: this build has no OTLP export"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_core_knows_no_cloud_target_key() {
    // Each cloud's crate parses its own keys of a `[[targets]]` entry; the core names
    // none of them (the OAuth words `scope` and `client_id` it has for itself).
    let keys = ferry_provider_aws::config::KEYS
        .iter()
        .chain(ferry_provider_gcp::config::KEYS)
        .chain(ferry_provider_azure::config::KEYS)
        .filter(|k| !["scope", "client_id"].contains(k));
    let mut sources = Vec::new();
    let mut dirs = vec![repo().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push((path.clone(), std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    assert!(sources.len() > 50, "read the core's sources");
    for key in keys {
        let quoted = format!("\"{key}\"");
        for (path, text) in &sources {
            assert!(
                !text.contains(&quoted),
                "{} names the cloud key {quoted}",
                path.display()
            );
        }
    }
}

#[test]
fn the_core_crate_uses_no_cloud_sdk_directly() {
    // Cloud SDKs live in providers/*; the core depends on those crates, never on an SDK.
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(repo())
        .args([
            "tree",
            "-p",
            "ferry",
            "--depth",
            "1",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let direct = text(&out.stdout);
    assert!(direct.contains("ferry-provider-aws"), "{direct}");
    for sdk in [
        "aws-sdk-",
        "aws-config",
        "azure_",
        "gcp_auth",
        "google-cloud",
    ] {
        assert!(
            !direct.lines().any(|l| l.starts_with(sdk)),
            "the core depends on `{sdk}` directly:\n{direct}"
        );
    }
}

#[test]
fn toml_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "ferry.toml",
        "[server]\nlisten = \"127.0.0.1:1\"\npublic_url = \"http://127.0.0.1\"\nbogus = 1\n\n[store]\nmax_entres = 5\n",
    );
    let out = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    // Every unknown key at once, each with its line.
    for want in [
        format!("{}: server.bogus: unknown key (line 4)", cfg.display()),
        format!("{}: store.max_entres: unknown key (line 7)", cfg.display()),
    ] {
        assert!(err.contains(&want), "{want} not in: {err}");
    }
    let bad_type = write(
        dir.path(),
        "types.toml",
        "[server]\nlisten = \"127.0.0.1:1\"\npublic_url = \"http://127.0.0.1\"\nmax_body_bytes = \"x\"\n",
    );
    let out = run(&["check", "--config", bad_type.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{}: line 4:", bad_type.display())),
        "{err}"
    );
}

#[test]
fn keys_generate_then_rotate_keeps_the_old_key_published() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_text = dev::dev_config("").replace("ephemeral = true ", "keys_dir = \"keys\" ");
    assert!(cfg_text.contains("keys_dir"), "dev.toml changed shape");
    let cfg = write(dir.path(), "ferry.toml", &cfg_text);
    let c = cfg.to_str().unwrap();

    // serve refuses to start without keys, naming the fix.
    let out = run(&["serve", "--config", c]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("ferry keys generate"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["keys", "generate", "--config", c]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["keys", "generate", "--config", c]);
    assert_eq!(out.status.code(), Some(1), "a second generate must refuse");
    let out = run(&["keys", "rotate", "--config", c]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("keys/keys.json")).unwrap()).unwrap();
    let keys = manifest["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys[0]["retired_at"].is_i64());
    assert!(keys[1]["retired_at"].is_null());

    // A server on these keys publishes both, and signs with the new one.
    let mut server = Server::start(c);
    let jwks: Value = server.get("/.well-known/jwks.json");
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(
        kids,
        vec![
            keys[1]["kid"].as_str().unwrap(),
            keys[0]["kid"].as_str().unwrap()
        ]
    );
    server.stop();
}

struct Server {
    child: Child,
    base: String,
    client: reqwest::blocking::Client,
}

impl Server {
    fn start(config: &str) -> Self {
        let port = free_port();
        let mut child = ferry()
            .args([
                "serve",
                "--config",
                config,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let client = await_ready(&mut child, &base);
        Self {
            child,
            base,
            client,
        }
    }

    fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    fn exchange(&self, token: &str, audience: &str, scope: &str) -> (u16, Value) {
        let body = serde_urlencoded::to_string([
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", token),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("audience", audience),
            ("scope", scope),
        ])
        .unwrap();
        let r = self
            .client
            .post(format!("{}/oauth2/token", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap())
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn the_dev_config_grants_and_refuses_as_its_comments_say() {
    let mut server = Server::start("config/dev.toml");
    let token = dev_token(&["sub=alice", r#"groups=["deployers"]"#]);
    let (status, body) = server.exchange(&token, "internal-api", "read");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    // `write` needs the acme/infra repository.
    let (status, body) = server.exchange(&token, "internal-api", "write");
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_target");
    let token = dev_token(&[
        "sub=alice",
        r#"groups=["deployers"]"#,
        "repository=acme/infra",
    ]);
    let (status, _) = server.exchange(&token, "internal-api", "read write");
    assert_eq!(status, 200);
    // The blocked subject fails the issuer condition.
    let blocked = dev_token(&["sub=blocked", r#"groups=["deployers"]"#]);
    let (status, body) = server.exchange(&blocked, "internal-api", "read");
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("condition")
    );
    server.stop();
}

#[test]
fn explain_reports_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    // From a token file (with a trailing newline, as token files have).
    let token = dev_token(&["sub=alice", r#"groups=["deployers"]"#]);
    let token_file = write(dir.path(), "token", &format!("{token}\n"));
    let out = explain_internal_api(&["--token", token_file.to_str().unwrap(), "--scope", "read"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("verify   pass"), "{stdout}");
    assert!(
        stdout.contains("mapping  pass    condition true; subject `dev:alice`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("policy   pass    permitted by dev-deployers-read"),
        "{stdout}"
    );
    assert!(stdout.contains("=> ALLOW"), "{stdout}");
    assert!(!stdout.contains(&token), "explain never prints the token");

    // From claims: marked as not signature-checked; the failing stage says why.
    let now = unix_now();
    let claims = serde_json::json!({"iss": "https://dev-issuer.ferry.invalid", "aud": "ferry", "sub": "bob", "iat": now, "exp": now + 600});
    let claims_file = write(dir.path(), "claims.json", &claims.to_string());
    let out = explain_internal_api(&["--claims", claims_file.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1), "denied → exit 1");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["signature_checked"], false);
    assert_eq!(report["allowed"], false);
    assert_eq!(report["error"], "invalid_target", "the code a client gets");
    assert_eq!(report["stages"][0]["outcome"], "pass");
    assert!(
        report["stages"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("signature not checked")
    );
    assert_eq!(report["stages"][3]["stage"], "policy");
    assert_eq!(report["stages"][3]["outcome"], "fail");
    assert!(
        report["stages"][3]["detail"]
            .as_str()
            .unwrap()
            .contains("no policy permits")
    );

    // An expired claims file fails at verify and skips the rest.
    let claims = serde_json::json!({"iss": "https://dev-issuer.ferry.invalid", "aud": "ferry", "sub": "bob", "iat": now - 7200, "exp": now - 3600});
    write(dir.path(), "claims.json", &claims.to_string());
    let out = explain_internal_api(&["--claims", claims_file.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("verify   fail    token expired"),
        "{stdout}"
    );
    assert!(stdout.contains("policy   skipped"), "{stdout}");
}

/// `ferry explain` against the dev config for target `internal-api`, plus `args`.
fn explain_internal_api(args: &[&str]) -> Output {
    let mut all = vec![
        "explain",
        "--config",
        "config/dev.toml",
        "--target",
        "internal-api",
    ];
    all.extend_from_slice(args);
    run(&all)
}

/// Runs `cmd` with `input` (and a newline) on its standard input.
fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{input}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `ferry exchange` with `args`, the token on standard input.
fn exchange_client(args: &[&str], token: &str) -> Output {
    with_stdin(
        ferry()
            .arg("exchange")
            .args(args)
            .args(["--token-file", "-"]),
        token,
    )
}

/// Asserts that `ferry exchange` failed (exit 1, nothing on standard output) with
/// `needle` in its message; returns the message.
fn client_failed(out: &Output, needle: &str) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "{err}");
    assert!(out.stdout.is_empty());
    err
}

#[test]
fn the_exchange_client_prints_credentials_and_reports_refusals_without_the_token() {
    let mut server = Server::start("config/dev.toml");
    let token = dev_token(&["sub=alice", r#"groups=["deployers"]"#]);
    let url = server.base.clone();

    // JSON: Ferry's token response.
    let out = exchange_client(
        &["--url", &url, "--target", "internal-api", "--scope", "read"],
        &token,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["scope"], "read");
    let issued = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(body["credentials"]["access_token"], issued.as_str());

    // env, evaluated by a real shell: the same (cached) token.
    let script = format!(
        "eval \"$('{}' exchange --url {url} --target internal-api --scope read --token-file - --format env)\" && printf '%s' \"$FERRY_ACCESS_TOKEN\"",
        env!("CARGO_BIN_EXE_ferry")
    );
    let out = with_stdin(
        Command::new("sh").args(["-c", &script]).current_dir(repo()),
        &token,
    );
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), issued);

    // A refusal: exit 1, Ferry's error and request id, and neither token.
    let internal_api = |scope: &str, format: &str| {
        exchange_client(
            &[
                "--url",
                &url,
                "--target",
                "internal-api",
                "--scope",
                scope,
                "--format",
                format,
            ],
            &token,
        )
    };
    let out = internal_api("write", "json");
    let err = client_failed(&out, "Ferry refused: invalid_target: ");
    assert!(err.contains("(request id "), "{err}");
    assert!(!err.contains(&token) && !err.contains(&issued), "{err}");

    // credential-process needs an AWS target; a jwt target is refused by the client.
    let out = internal_api("read", "credential-process");
    client_failed(&out, "needs an AWS target");
    server.stop();

    // Nothing listening: retried, then a clear error (bounded: 1 retry, 0.5 s).
    let out = exchange_client(
        &["--url", &url, "--target", "internal-api", "--retries", "1"],
        &token,
    );
    let err = client_failed(&out, "cannot reach Ferry at");
    assert!(err.contains("trying again"), "{err}");
    assert!(!err.contains(&token), "{err}");

    // Plain http to anything but loopback is refused before anything is sent.
    let out = exchange_client(
        &[
            "--url",
            "http://ferry.example.com",
            "--target",
            "internal-api",
        ],
        &token,
    );
    client_failed(&out, "in the clear");
}

/// A one-thread HTTP peer answering each request with the next of `answers`
/// (status line, extra headers, body), closing each connection; returns the count served.
fn scripted_peer(
    answers: Vec<(&'static str, &'static str, &'static str)>,
) -> (String, std::thread::JoinHandle<usize>) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut served = 0;
        for (status, headers, body) in answers {
            let Ok((stream, _)) = listener.accept() else {
                break;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut request_body = vec![0; length];
            let _ = reader.read_exact(&mut request_body);
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            served += 1;
        }
        served
    });
    (url, handle)
}

#[test]
fn the_exchange_client_retries_what_is_temporary_and_only_that() {
    const SUBJECT: &str = "eyJ.subject.token";
    let ok = r#"{"access_token":"eyJ.a.b","issued_token_type":"urn:ietf:params:oauth:token-type:jwt","token_type":"Bearer","expires_in":300,"credentials":{"access_token":"eyJ.a.b"}}"#;
    // 503 with Retry-After: 1, then 429, then the answer: three requests, exit 0.
    let (url, peer) = scripted_peer(vec![
        (
            "503 Service Unavailable",
            "retry-after: 1\r\nx-request-id: r-1\r\n",
            r#"{"error":"temporarily_unavailable","error_description":"the store is down"}"#,
        ),
        (
            "429 Too Many Requests",
            "retry-after: 0\r\n",
            r#"{"error":"slow_down","error_description":"rate limit"}"#,
        ),
        ("200 OK", "", ok),
    ]);
    let started = Instant::now();
    let out = exchange_client(&["--url", &url, "--target", "api"], SUBJECT);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(peer.join().unwrap(), 3);
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "temporarily_unavailable: the store is down (request id r-1); trying again in 1s"
        ),
        "{err}"
    );
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["access_token"], "eyJ.a.b");

    // A refusal is final: one request, no retry, exit 1.
    let (url, peer) = scripted_peer(vec![(
        "400 Bad Request",
        "",
        r#"{"error":"invalid_request","error_description":"token expired"}"#,
    )]);
    let out = exchange_client(&["--url", &url, "--target", "api"], SUBJECT);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("Ferry refused: invalid_request: token expired"),
        "{err}"
    );
    assert!(!err.contains("trying again"), "{err}");
    assert_eq!(peer.join().unwrap(), 1);

    // 200 with something that is not a token response is an error, not empty output.
    let (url, peer) = scripted_peer(vec![("200 OK", "", r#"{"hello":"world"}"#)]);
    let out = exchange_client(&["--url", &url, "--target", "api"], SUBJECT);
    client_failed(&out, "without a token response");
    assert_eq!(peer.join().unwrap(), 1);
}

#[test]
fn check_refuses_what_serve_would_refuse_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = write(dir.path(), "not-a-dir", "");
    let audit = blocker.join("audit.log");
    let cfg = write(
        dir.path(),
        "ferry.toml",
        &dev::dev_config(&format!("\n[audit]\nfile = \"{}\"\n", audit.display())),
    );
    let c = cfg.to_str().unwrap();
    let want = format!(
        "{}: audit.file: `{}` is not a directory",
        cfg.display(),
        blocker.display()
    );
    for command in ["check", "serve"] {
        let out = run(&[command, "--config", c]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let err = text(&out.stderr);
        assert!(err.contains(&want), "{command}: {err}");
    }
    // Ephemeral keys with a shared store.
    let redis = write(
        dir.path(),
        "redis.toml",
        &dev::dev_config("").replace(
            "backend = \"memory\"",
            "backend = \"redis\"\nurl = \"redis://127.0.0.1:1\"",
        ),
    );
    let out = run(&["check", "--config", redis.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("signing.ephemeral: cannot be used with the redis store"),
        "{}",
        text(&out.stderr)
    );
    // A store key file serve could not read.
    let keyless = write(
        dir.path(),
        "keyless.toml",
        &dev::dev_config("")
            .replace("ephemeral = true ", "keys_dir = \"keys\" ")
            .replace(
                "backend = \"memory\"",
                "backend = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nencryption_key_file = \"missing.key\"",
            ),
    );
    let out = run(&["check", "--config", keyless.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: store.encryption_key_file:",
            keyless.display()
        )) && err.contains("missing.key"),
        "{err}"
    );
}

/// A one-request server that answers as GitHub's `ACTIONS_ID_TOKEN_REQUEST_URL` does:
/// `{"count":…,"value":token}` when asked with `authorization: bearer <secret>` and the
/// expected audience; 403 otherwise. Returns its URL (with GitHub's `api-version` query)
/// and the request line and headers it saw.
fn github_oidc_endpoint(
    secret: &'static str,
    token: String,
) -> (String, std::thread::JoinHandle<String>) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/_apis/pipelines/oidc/token?api-version=2.0",
        listener.local_addr().unwrap()
    );
    let seen = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = String::new();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let authorized = head
            .lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("authorization: bearer {secret}")));
        let asked_for_ferry =
            head.starts_with("GET /_apis/pipelines/oidc/token?api-version=2.0&audience=ferry ");
        let (status, body) = if authorized && asked_for_ferry {
            ("200 OK", format!("{{\"count\":1,\"value\":\"{token}\"}}"))
        } else {
            ("403 Forbidden", "{}".to_owned())
        };
        write!(
            conn,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        head
    });
    (url, seen)
}

#[test]
fn the_exchange_client_gets_its_token_from_github_actions_or_a_variable() {
    let mut server = Server::start("config/dev.toml");
    let token = dev_token(&["sub=alice", r#"groups=["deployers"]"#, "aud=ferry"]);
    let url = server.base.clone();
    let args = [
        "exchange",
        "--url",
        &url,
        "--target",
        "internal-api",
        "--scope",
        "read",
    ];

    // `ferry exchange` in a job whose OIDC endpoint is at `oidc`.
    let from_github = |oidc: &str| {
        ferry()
            .args(args)
            .args(["--token-source", "github-actions", "--audience", "ferry"])
            .env("ACTIONS_ID_TOKEN_REQUEST_URL", oidc)
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "job-request-token")
            .output()
            .unwrap()
    };
    let (oidc, seen) = github_oidc_endpoint("job-request-token", token.clone());
    let out = from_github(&oidc);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["scope"], "read");
    let head = seen.join().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer job-request-token"),
        "{head}"
    );

    // A refusal by GitHub is reported without the request token.
    let (oidc, _seen) = github_oidc_endpoint("another-secret", token.clone());
    let out = from_github(&oidc);
    let err = client_failed(&out, "GitHub's OIDC token endpoint answered 403 Forbidden");
    assert!(!err.contains("job-request-token"), "{err}");

    // Not in a GitHub job: said so.
    let out = ferry()
        .args(args)
        .args(["--token-source", "github-actions"])
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .output()
        .unwrap();
    client_failed(&out, "ACTIONS_ID_TOKEN_REQUEST_URL is not set");

    // A variable (GitLab CI's `id_tokens`).
    let out = ferry()
        .args(args)
        .args(["--token-env", "CI_JOB_JWT_FERRY"])
        .env("CI_JOB_JWT_FERRY", format!("{token}\n"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ferry()
        .args(args)
        .args(["--token-env", "CI_JOB_JWT_FERRY"])
        .env_remove("CI_JOB_JWT_FERRY")
        .output()
        .unwrap();
    client_failed(&out, "the token variable CI_JOB_JWT_FERRY is not set");
    server.stop();
}

#[test]
fn explain_shows_a_policy_on_the_client_certificate_decide() {
    let dir = tempfile::tempdir().unwrap();
    let policy = r#"@id("deployer-svid")
permit(principal, action, resource) when {
  context has client_certificate && context.client_certificate has spiffe_id &&
  context.client_certificate.spiffe_id == "spiffe://acme.test/ns/ci/sa/deployer"
};
"#;
    let cfg = write(
        dir.path(),
        "ferry.toml",
        &dev::dev_config_with_policy(dir.path(), "", policy),
    );
    let svid = |uri: &str| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    };
    let good = write(
        dir.path(),
        "good.pem",
        &svid("spiffe://acme.test/ns/ci/sa/deployer"),
    );
    let other = write(
        dir.path(),
        "other.pem",
        &svid("spiffe://acme.test/ns/ci/sa/other"),
    );
    let now = unix_now();
    let claims = serde_json::json!({"iss": "https://dev-issuer.ferry.invalid", "aud": "ferry", "sub": "bob", "iat": now, "exp": now + 600});
    let claims = write(dir.path(), "claims.json", &claims.to_string());
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--config",
            cfg.to_str().unwrap(),
            "--target",
            "internal-api",
            "--claims",
            claims.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let out = explain(&["--client-cert", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("deployer-svid"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        explain(&["--client-cert", other.to_str().unwrap()])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(explain(&[]).status.code(), Some(1), "no certificate");
    let out = explain(&["--client-cert", claims.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--client-cert"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_warns_when_a_cached_jwt_would_make_google_auth_loop() {
    // The shipped configs hand out no JWT with under 4 minutes left (the test above
    // checks they pass); a 5-minute ttl with the default half-life cache does.
    let dev = std::fs::read_to_string(repo().join("config/dev.toml")).unwrap();
    let config_dir = repo().join("config");
    let short = dev
        .replace("ttl = \"10m\"", "ttl = \"5m\"")
        .replace("\"dev/", &format!("\"{}/dev/", config_dir.display()))
        .replace(
            "\"policies/",
            &format!("\"{}/policies/", config_dir.display()),
        );
    assert!(
        short.contains("ttl = \"5m\""),
        "dev.toml's internal-api ttl"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "short-jwt.toml", &short);
    let out = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("targets[internal-api].min_remaining: warning: a cached token is handed out with as little as 2m 30s left; google-auth"),
        "{err}"
    );
    let fixed = short.replace("ttl = \"5m\"", "ttl = \"5m\"\nmin_remaining = \"4m\"");
    std::fs::write(&cfg, fixed).unwrap();
    let out = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(
        !text(&out.stderr).contains("google-auth"),
        "{}",
        text(&out.stderr)
    );
    let dev_out = run(&["check", "--config", "config/dev.toml"]);
    assert!(
        !text(&dev_out.stderr).contains("google-auth"),
        "{}",
        text(&dev_out.stderr)
    );
}

#[test]
fn the_agent_checks_its_config_and_prints_each_sdks_variables() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "agent.toml",
        "ferry_url = \"http://ferry.example.com\"\nlisten = \"0.0.0.0:80\"\n[aws]\ntarget = \"a\"\n",
    );
    let out = run(&["agent", "--config", bad.to_str().unwrap(), "--check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let file = bad.display().to_string();
    for line in [
        format!(
            "{file}: ferry_url: the URL `http://ferry.example.com`: plain http would send the token in the clear"
        ),
        format!("{file}: listen: `0.0.0.0:80` is not a loopback address"),
        format!(
            "{file}: token_file: the workload's token: give token_file, token_env or token_source"
        ),
        format!("{file}: secret_file: is required with [aws] or [azure]"),
    ] {
        assert!(err.contains(&line), "missing {line:?} in {err}");
    }

    let good = write(
        dir.path(),
        "good.toml",
        "ferry_url = \"https://ferry.example.com\"\ntoken_env = \"T\"\nsecret_file = \"secret\"\nlisten = \"127.0.0.1:8990\"\n[aws]\ntarget = \"a\"\n[gcp]\ntarget = \"g\"\nemail = \"a@b.iam.gserviceaccount.com\"\nproject_id = \"p\"\n[azure]\nresources = { \"https://management.azure.com/\" = \"z\" }\n",
    );
    let out = run(&["agent", "--config", good.to_str().unwrap(), "--check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !dir.path().join("secret").exists(),
        "--check creates nothing"
    );
    let out = run(&["agent", "--config", good.to_str().unwrap(), "--print-env"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret = std::fs::read_to_string(dir.path().join("secret")).unwrap();
    assert_eq!(secret.len(), 64);
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let env = text(&out.stdout);
    for line in [
        "export AWS_CONTAINER_CREDENTIALS_FULL_URI='http://127.0.0.1:8990/aws/credentials'\n"
            .to_owned(),
        format!(
            "export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE='{}'\n",
            dir.path().join("secret").display()
        ),
        "export GCE_METADATA_HOST='127.0.0.1:8990'\n".to_owned(),
        "export IDENTITY_ENDPOINT='http://127.0.0.1:8990/azure/identity'\n".to_owned(),
        format!("export IDENTITY_HEADER='{secret}'\n"),
    ] {
        assert!(env.contains(&line), "missing {line:?} in {env}");
    }
    // The same secret the next time: it is read, not made again.
    let again = run(&["agent", "--config", good.to_str().unwrap(), "--print-env"]);
    assert_eq!(text(&again.stdout), env);
}

#[test]
fn every_shipped_config_has_trust_mapping_tests_that_pass() {
    let mut configs = 0;
    for entry in std::fs::read_dir(repo().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = run(&["test", "--config", path.to_str().unwrap()]);
            let stdout = text(&out.stdout);
            assert!(
                out.status.success(),
                "{}: {stdout}{}",
                path.display(),
                text(&out.stderr)
            );
            let summary = stdout.lines().last().unwrap_or_default().to_owned();
            let passed: usize = summary
                .strip_suffix(" passed, 0 failed")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{}: {stdout}", path.display()));
            assert!(passed >= 5, "{}: {summary}", path.display());
            configs += 1;
        }
    }
    assert!(configs >= 2);
}

#[test]
fn a_failing_trust_mapping_case_shows_its_difference_in_text_and_junit() {
    let dir = tempfile::tempdir().unwrap();
    let cases = write(
        dir.path(),
        "mine.ferry-test.toml",
        r#"
[[cases]]
name = "passes"
claims = { sub = "alice", groups = ["deployers"] }
target = "internal-api"
expect = "allow"

[[cases]]
name = "a <visitor> & the wrong expectations"
claims = { sub = "bob", groups = ["visitors"] }
target = "internal-api"
expect = "allow"
subject = "dev:robert"
denied_at = "mapping"
"#,
    );
    let junit = dir.path().join("junit.xml");
    let out = run(&[
        "test",
        "--config",
        "config/dev.toml",
        cases.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let file = cases.display().to_string();
    assert!(
        stdout.contains(&format!("FAIL {file}: a <visitor> & the wrong expectations: expected allow, got deny (policy: denied: no policy permits this identity for this target); expected a deny at mapping, got policy; subject: expected \"dev:robert\", got Some(\"dev:bob\")")),
        "{stdout}"
    );
    assert!(!stdout.contains(": passes: "), "{stdout}");
    assert!(stdout.ends_with("1 passed, 1 failed\n"), "{stdout}");

    // JUnit, read by a real XML parser.
    let parsed = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, xml.etree.ElementTree as E\nr = E.parse(sys.argv[1]).getroot()\ncases = r.findall('./testsuite/testcase')\nprint(r.tag, r.get('tests'), r.get('failures'), len(cases), [c.get('name') for c in cases if c.find('failure') is not None], cases[1].find('failure').get('message'))",
        )
        .arg(&junit)
        .output()
        .unwrap();
    assert!(parsed.status.success(), "{}", text(&parsed.stderr));
    assert_eq!(
        text(&parsed.stdout),
        "testsuites 2 1 2 ['a <visitor> & the wrong expectations'] expected allow, got deny (policy: denied: no policy permits this identity for this target)\n"
    );

    // A starter file: one case per target, and it passes as written.
    let starter = dir.path().join("starter.ferry-test.toml");
    let out = run(&[
        "test",
        "--config",
        "config/dev.toml",
        "--init",
        starter.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&[
        "test",
        "--config",
        "config/dev.toml",
        starter.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).ends_with("1 passed, 0 failed\n"));
    let again = run(&[
        "test",
        "--config",
        "config/dev.toml",
        "--init",
        starter.to_str().unwrap(),
    ]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "an existing file is not overwritten"
    );

    // A case that cannot run says why, and fails.
    let broken = write(
        dir.path(),
        "broken.ferry-test.toml",
        "[[cases]]\nname = \"n\"\nclaims = { sub = \"a\" }\nexpect = \"allow\"\n",
    );
    let out = run(&[
        "test",
        "--config",
        "config/dev.toml",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("n: cannot run: give target or resource"),
        "{}",
        text(&out.stdout)
    );
}
