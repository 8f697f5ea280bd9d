//! The memory scenario: a real `ferry serve` child filled with cached credentials.

use crate::cpu::*;
use crate::load::*;
use crate::redis::*;
use crate::setup::*;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub(crate) struct RssReport {
    pub(crate) count: usize,
    pub(crate) ready_kib: u64,
    pub(crate) warm_kib: u64,
    pub(crate) full_kib: u64,
    pub(crate) credential_len: usize,
    pub(crate) errors: u64,
}

impl RssReport {
    #[expect(clippy::cast_precision_loss, reason = "a ratio")]
    pub(crate) fn per_credential_bytes(&self) -> f64 {
        self.full_kib.saturating_sub(self.warm_kib) as f64 * 1024.0 / self.count.max(1) as f64
    }
}

/// Starts `ferry serve` (this executable) with the memory store and an ES256 `jwt`
/// target, makes `count` exchanges for distinct subjects (each a cache miss that leaves
/// one credential cached), and reads the child's resident set size before and after.
pub(crate) async fn rss_scenario(
    ferry: &Path,
    dir: &Path,
    issuer: &Issuer,
    driver: &Driver,
    count: usize,
    connections: usize,
) -> anyhow::Result<RssReport> {
    let client = &driver.client;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("rss.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
             [store]\nbackend = \"memory\"\nmax_entries = {}\n\
             [signing]\nephemeral = true\nalgorithm = \"ES256\"\n[reload]\nwatch = false\n\
             [[issuers]]\nid = \"es\"\nissuer = \"{}\"\njwks_file = \"{}\"\naudiences = [\"bench\"]\nalgorithms = [\"ES256\"]\n\
             [issuers.mapping]\nsubject = 'assertion.sub'\n[issuers.mapping.attributes]\nrepository = 'assertion.repository'\n\
             [[targets]]\nid = \"api\"\nkind = \"jwt\"\naudience = \"https://api\"\nttl = \"1h\"\n\
             [policy]\nfiles = [\"{}\"]\n",
            count.max(100_000) + 1000,
            issuer.iss,
            dir.join("es.jwks.json").display(),
            dir.join("bench.cedar").display()
        ),
    )?;
    let child = KillOnDrop(
        Command::new(ferry)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let status = format!("/proc/{}/status", child.0.id());
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready =
            match hyper::Request::get(format!("{base}/readyz")).body(Full::new(Bytes::new())) {
                Ok(req) => client
                    .request(req)
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                Err(_) => false,
            };
        if ready {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "`ferry serve` did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready_kib = status_kib(&status, "VmRSS:");
    // Warm: the same identity again and again (one cached credential), so allocator
    // arenas, connection buffers and code pages are in before the baseline is read.
    let same = Arc::new(vec![form(&issuer.token("warm")?, "api")]);
    let url = format!("{base}/oauth2/token");
    let warm = drive(
        driver,
        &Load::post(url.clone(), same),
        Shape {
            connections,
            duration: Duration::from_secs(2),
            rate: None,
        },
    )
    .await;
    let warm_kib = status_kib(&status, "VmRSS:");
    let bodies: Vec<Bytes> = (0..count)
        .map(|i| issuer.token(&format!("rss-{i}")).map(|t| form(&t, "api")))
        .collect::<Result<_, _>>()?;
    let credential_len = {
        let req = form_request(url.as_str(), bodies.first().cloned().unwrap_or_default())?;
        let body = client
            .request(req)
            .await?
            .into_body()
            .collect()
            .await?
            .to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body)?
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .map_or(0, str::len)
    };
    let errors = fill(client, &url, Arc::new(bodies), connections).await;
    let full_kib = status_kib(&status, "VmRSS:");
    drop(child);
    Ok(RssReport {
        count,
        ready_kib,
        warm_kib,
        full_kib,
        credential_len,
        errors: warm.errors + errors,
    })
}

/// Sends every body once over `connections` connections; returns the failures.
pub(crate) async fn fill(
    client: &Client,
    url: &str,
    bodies: Arc<Vec<Bytes>>,
    connections: usize,
) -> u64 {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, url, bodies, next) = (
            client.clone(),
            url.to_owned(),
            Arc::clone(&bodies),
            Arc::clone(&next),
        );
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            while let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                let ok = match form_request(url.as_str(), body.clone()) {
                    Ok(req) => match client.request(req).await {
                        Ok(res) => {
                            res.status().is_success() && res.into_body().collect().await.is_ok()
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                errors += u64::from(!ok);
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap_or(1);
    }
    errors
}
