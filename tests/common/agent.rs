//! `ferry agent` as a child process beside an in-process Ferry, and the real SDKs
//! (Python's boto3, google-auth, azure-identity) run against it with nothing but their
//! documented environment variables.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Ferry's router on a loopback listener, and a switch that makes it answer 503 to
/// everything (a load balancer with no healthy replica: an outage).
pub async fn serve_ferry(router: axum::Router) -> (String, Arc<AtomicBool>) {
    use axum::response::IntoResponse as _;
    let down = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&down);
    let router = router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let flag = Arc::clone(&flag);
            async move {
                if flag.load(Ordering::SeqCst) {
                    return (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "no healthy upstream",
                    )
                        .into_response();
                }
                next.run(req).await
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    (url, down)
}

/// Keeps a harness's manual clock on real time (the agent's refreshes run on it).
pub fn follow_real_time(clock: Arc<ferry::clock::ManualClock>) {
    tokio::spawn(async move {
        loop {
            clock.set(super::now());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// A running `ferry agent`, killed when dropped.
pub struct Agent {
    child: Child,
    /// `127.0.0.1:port`.
    pub addr: String,
    pub dir: tempfile::TempDir,
    /// What it logged (JSON lines).
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// Starts `ferry agent` for the Ferry at `ferry_url`, holding `token` in a token
    /// file, with the config's `sections` ([aws], [gcp], [azure]); waits until it
    /// listens (not until its credentials are fetched: see [`Agent::await_healthy`]).
    pub fn start(ferry_url: &str, token: &str, sections: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
        let config = format!(
            "ferry_url = \"{ferry_url}\"\nlisten = \"127.0.0.1:0\"\ntoken_file = \"token\"\nsecret_file = \"secret\"\ntimeout = \"3s\"\n{sections}"
        );
        std::fs::write(dir.path().join("agent.toml"), config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["--log-format", "json", "agent", "--config"])
            .arg(dir.path().join("agent.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("ferry agent listening")
                    && let Some(tx) = tx.take()
                {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let _ = tx.send(v["listen"].as_str().unwrap().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ferry agent did not start: {:?}", logs.lock().unwrap());
            }
        };
        Self {
            child,
            addr,
            dir,
            logs,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The local secret the agent created.
    pub fn secret(&self) -> String {
        std::fs::read_to_string(self.secret_file()).unwrap()
    }

    pub fn secret_file(&self) -> std::path::PathBuf {
        self.dir.path().join("secret")
    }

    /// Waits (at most 20 s) until `/healthz` says every configured credential is held.
    pub async fn await_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = reqwest::get(format!("{}/healthz", self.base())).await;
            if r.as_ref().is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent never became healthy: {:?}",
                self.logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts that nothing in `secrets` appears in what the agent logged.
    pub fn assert_logs_hold_none_of(&self, secrets: &[&str]) {
        let logs = self.logs.lock().unwrap().join("\n");
        assert!(!logs.is_empty());
        for s in secrets {
            assert!(!s.is_empty());
            assert!(!logs.contains(s), "the agent logged a secret: {logs}");
        }
    }
}

/// The real Python interpreter (not a pyenv shim, which needs the caller's `HOME`).
fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 not found: the README's test command (tests/run) installs the SDKs");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs a Python script with only `env` (and PATH) in its environment and a fresh
/// `HOME`, so the SDK finds nothing but what the test points it at; its stdout, or a
/// failed test with its stderr.
pub async fn run_python(script: &str, env: &[(&str, String)]) -> String {
    let script = script.to_owned();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let home = tempfile::tempdir().unwrap();
        let out = Command::new(python())
            .arg("-c")
            .arg(&script)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .envs(env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap()
}
