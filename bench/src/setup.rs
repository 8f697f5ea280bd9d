//! What a run serves: issuer keys and tokens, the config, Ferry in this process with
//! fake upstreams, pre-minted exchange requests, and `--export` for other generators.

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use ferry::clock::{Clock as _, SystemClock};
use ferry::config::Config;
use ferry::exchange::{Services, SingleFlight};
use ferry::http::{AppState, app};
use ferry::issuer::keys::{SigningKey, generate_private_pem, signing_key_from_pem};
use ferry::provider_api::{Credential, CredentialProvider, Grant, ProviderError, Secret};
use ferry::snapshot::{BuildOptions, Snapshot};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A fake upstream: sleeps, counts, returns a credential without signing anything.
pub(crate) struct FakeUpstream {
    pub(crate) delay: Duration,
    pub(crate) calls: AtomicUsize,
}

#[async_trait]
impl CredentialProvider for FakeUpstream {
    fn kind(&self) -> &'static str {
        "fake"
    }
    async fn issue(&self, _grant: &Grant) -> Result<Credential, ProviderError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Credential {
            access_token: Secret::new(format!("fake-{}", uuid::Uuid::new_v4())),
            issued_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
            token_type: "Bearer".into(),
            expires_at: SystemClock.now() + 3600,
            fields: BTreeMap::new(),
            upstream_request_id: None,
            token_id: None,
        })
    }
}

pub(crate) struct Issuer {
    pub(crate) iss: String,
    pub(crate) key: SigningKey,
}

impl Issuer {
    pub(crate) fn new(iss: &str, alg: Algorithm) -> anyhow::Result<Self> {
        let pem = generate_private_pem(alg)?;
        Ok(Self {
            iss: iss.to_owned(),
            key: signing_key_from_pem(alg, pem.as_bytes(), Some("k1"), 0)?,
        })
    }

    pub(crate) fn token(&self, sub: &str) -> anyhow::Result<String> {
        let now = SystemClock.now();
        let claims = json!({"iss": self.iss, "aud": "bench", "sub": sub, "iat": now, "exp": now + 3600,
                            "jti": uuid::Uuid::new_v4().to_string(), "repository": "acme/infra"});
        let mut header = jsonwebtoken::Header::new(self.key.alg);
        header.kid = Some("k1".into());
        Ok(jsonwebtoken::encode(&header, &claims, &self.key.encoding)?)
    }

    pub(crate) fn write_jwks(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(
            path,
            serde_json::to_vec(&json!({"keys": [self.key.public]}))?,
        )?;
        Ok(())
    }
}

/// The bench config; `redis` is (url, key file, more `[store]` lines).
pub(crate) fn config_text(dir: &Path, redis: Option<(&str, &Path, &str)>) -> String {
    let issuer = |id: &str, iss: &str, alg: &str| {
        format!(
            "[[issuers]]\nid = \"{id}\"\nissuer = \"{iss}\"\njwks_file = \"{}\"\naudiences = [\"bench\"]\nalgorithms = [\"{alg}\"]\n[issuers.mapping]\nsubject = 'assertion.sub'\n[issuers.mapping.attributes]\nrepository = 'assertion.repository'\n\n",
            dir.join(format!("{id}.jwks.json")).display()
        )
    };
    // Replicas sharing Redis share signing keys too (`bench_keys`); alone, an ephemeral
    // key will do.
    let (store, signing) = match redis {
        Some((url, key, more)) => (
            format!(
                "[store]\nbackend = \"redis\"\nurl = \"{url}\"\nencryption_key_file = \"{}\"\n{more}",
                key.display()
            ),
            format!("keys_dir = \"{}\"", dir.join("keys").display()),
        ),
        None => (
            "[store]\nbackend = \"memory\"\n".to_owned(),
            "ephemeral = true".to_owned(),
        ),
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:9\"\n[signing]\n{signing}\n[reload]\nwatch = false\n{store}\n{}{}\
         [[targets]]\nid = \"api\"\nkind = \"jwt\"\naudience = \"https://api\"\nttl = \"1h\"\nscopes = [\"bench\"]\n\
         [[targets]]\nid = \"miss0\"\nkind = \"jwt\"\naudience = \"https://miss0\"\nttl = \"1h\"\n\
         [[targets]]\nid = \"miss50\"\nkind = \"jwt\"\naudience = \"https://miss50\"\nttl = \"1h\"\n\
         [policy]\nfiles = [\"{}\"]\n",
        issuer("rs", "https://rs.bench.invalid", "RS256"),
        issuer("es", "https://es.bench.invalid", "ES256"),
        dir.join("bench.cedar").display()
    )
}

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) fakes: Vec<(String, Arc<FakeUpstream>)>,
    pub(crate) state: Arc<AppState>,
}

impl Server {
    /// What this server has done so far that tells a token or an identity seen before
    /// from a new one: its signature counts, and its fake upstream's calls.
    pub(crate) fn reuse(&self) -> Reuse {
        let signatures = self.state.snapshot.load().verifier.signatures();
        Reuse {
            verified: signatures.verified,
            remembered: signatures.remembered,
            upstream_calls: self
                .fakes
                .iter()
                .map(|(_, f)| f.calls.load(Ordering::SeqCst) as u64)
                .sum(),
        }
    }
}

/// Signature checks and upstream calls, summed over a scenario's rounds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reuse {
    pub(crate) verified: u64,
    pub(crate) remembered: u64,
    pub(crate) upstream_calls: u64,
}

impl Reuse {
    /// What happened between `before` and `self`, added to `total`.
    pub(crate) fn add_since(self, before: Reuse, total: &mut Reuse) {
        total.verified += self.verified.saturating_sub(before.verified);
        total.remembered += self.remembered.saturating_sub(before.remembered);
        total.upstream_calls += self.upstream_calls.saturating_sub(before.upstream_calls);
    }
}

pub(crate) async fn start_server(dir: &Path, name: &str, text: &str) -> anyhow::Result<Server> {
    start_server_at(dir, name, text, Arc::new(SystemClock)).await
}

/// [`start_server`] on `clock`.
pub(crate) async fn start_server_at(
    dir: &Path,
    name: &str,
    text: &str,
    clock: ferry::clock::SharedClock,
) -> anyhow::Result<Server> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text)?;
    let config = Config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut runtime, _) = Snapshot::build(
        config,
        &BuildOptions {
            clock: clock.clone(),
            require_keys: true,
            previous_ephemeral: None,
            previous_managed: None,
            metrics: Default::default(),
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut fakes = Vec::new();
    for (target, ms) in [("miss0", 0), ("miss50", 50)] {
        let fake = Arc::new(FakeUpstream {
            delay: Duration::from_millis(ms),
            calls: AtomicUsize::new(0),
        });
        runtime.replace_provider(target, fake.clone());
        fakes.push((target.to_owned(), fake));
    }
    let store = ferry::store::open(&runtime.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = AppState::new(
        runtime,
        Services {
            store: Arc::clone(&store),
            clock,
            flights: SingleFlight::default(),
            anomalies: Default::default(),
        },
    )?;
    let handle = Arc::clone(&state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // The same accept loop as `ferry serve`, so its cost is in every figure.
    let limits =
        ferry::http::server::ConnectionLimits::from_config(&state.snapshot.load().config.server);
    let mut server = ferry::http::server::Server::new(listener, app(Arc::clone(&state)), limits);
    // `[server.tls]` as `ferry serve` wires it.
    if let Some(files) = ferry::tls::Files::of(&state.snapshot.load().config) {
        let certs = ferry::tls::CertStore::open(files, SystemClock.now())
            .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
        server = server.with_tls(
            ferry::tls::Acceptor::new(Arc::new(certs))
                .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?,
        );
    }
    tokio::spawn(server.run(std::future::pending()));
    Ok(Server {
        addr,
        fakes,
        state: handle,
    })
}

/// A server certificate for 127.0.0.1 (written beside the config as `tls.pem` and
/// `tls.key`), the `[server.tls]` section that serves it, and a client that trusts it:
/// TLS 1.3 with session resumption (rustls's in-memory cache and the server's tickets).
pub(crate) fn tls_material(dir: &Path) -> anyhow::Result<(String, Arc<rustls::ClientConfig>)> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?.self_signed(&key)?;
    let (cert_file, key_file) = (dir.join("tls.pem"), dir.join("tls.key"));
    std::fs::write(&cert_file, cert.pem())?;
    std::fs::write(&key_file, key.serialize_pem())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone())?;
    let client = rustls::ClientConfig::builder_with_provider(ferry::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let section = format!(
        "\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    );
    Ok((section, Arc::new(client)))
}

/// A POST of a form body (an exchange request).
pub(crate) fn form_request(
    url: &str,
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>, hyper::http::Error> {
    hyper::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(body))
}

pub(crate) fn form(token: &str, target: &str) -> Bytes {
    Bytes::from(
        serde_urlencoded::to_string([
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", token),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("audience", target),
        ])
        .unwrap_or_default(),
    )
}

/// `count` form bodies for `target`, each with the token `token(i)` makes, minted on
/// every core (an ES256 token takes ≈ 20 µs, so half a million take seconds).
pub(crate) fn mint<F>(count: usize, token: F, target: &str) -> anyhow::Result<Arc<Vec<Bytes>>>
where
    F: Fn(usize) -> anyhow::Result<String> + Sync,
{
    in_parallel(count, |i| token(i).map(|t| form(&t, target)))
}

/// `make(0..count)`, on every core (up to 8 threads), in order.
fn in_parallel<F>(count: usize, make: F) -> anyhow::Result<Arc<Vec<Bytes>>>
where
    F: Fn(usize) -> anyhow::Result<Bytes> + Sync,
{
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(8);
    let chunk = count.div_ceil(threads).max(1);
    let parts = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let make = &make;
                scope.spawn(move || -> anyhow::Result<Vec<Bytes>> {
                    (k * chunk..((k + 1) * chunk).min(count))
                        .map(make)
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a minting thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(Arc::new(parts.into_iter().flatten().collect()))
}

/// `count` DPoP proofs (RFC 9449) by one ES256 key for a POST to `htu` at `iat`, each
/// with its own `jti`: a DPoP client's one proof per request.
pub(crate) fn dpop_proofs(count: usize, htu: &str, iat: i64) -> anyhow::Result<Arc<Vec<Bytes>>> {
    let pem = generate_private_pem(Algorithm::ES256)?;
    let key = signing_key_from_pem(Algorithm::ES256, pem.as_bytes(), Some("dpop"), 0)?;
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.typ = Some("dpop+jwt".into());
    header.jwk = Some(key.public.clone());
    in_parallel(count, |i| {
        let claims =
            serde_json::json!({"jti": format!("p{i}"), "htm": "POST", "htu": htu, "iat": iat});
        Ok(Bytes::from(jsonwebtoken::encode(
            &header,
            &claims,
            &key.encoding,
        )?))
    })
}

/// Cost of one signature verification (RS256 and ES256) in this process: as Ferry does
/// it (a key parsed once), and through `jsonwebtoken::crypto::verify` (which re-parses
/// the key on every call) for comparison. Returns ((rs, es) ferry, (rs, es) jsonwebtoken).
pub(crate) fn verify_cost(rs: &Issuer, es: &Issuer) -> anyhow::Result<((f64, f64), (f64, f64))> {
    let n = 2000;
    let mut ferry_cost = Vec::new();
    let mut jwt_cost = Vec::new();
    for issuer in [rs, es] {
        let token = issuer.token("cost")?;
        let (message, signature) = token.rsplit_once('.').context("jwt")?;
        let key = ferry::verify::jwks::to_verifying_key(&issuer.key.public).context("key")?;
        let started = Instant::now();
        for _ in 0..n {
            anyhow::ensure!(
                key.verify(issuer.key.alg, message.as_bytes(), signature),
                "verify failed"
            );
        }
        ferry_cost.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(n));
        let key = jsonwebtoken::DecodingKey::from_jwk(&issuer.key.public)?;
        let started = Instant::now();
        for _ in 0..n {
            let ok =
                jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, issuer.key.alg)?;
            anyhow::ensure!(ok, "verify failed");
        }
        jwt_cost.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(n));
    }
    let pair = |v: &[f64]| {
        (
            v.first().copied().unwrap_or(0.0),
            v.get(1).copied().unwrap_or(0.0),
        )
    };
    Ok((pair(&ferry_cost), pair(&jwt_cost)))
}

/// The bench's two issuers, their JWKS, the policy and a store key, written into `dir`.
pub(crate) fn write_setup(dir: &Path) -> anyhow::Result<(Issuer, Issuer)> {
    let rs = Issuer::new("https://rs.bench.invalid", Algorithm::RS256)?;
    let es = Issuer::new("https://es.bench.invalid", Algorithm::ES256)?;
    rs.write_jwks(&dir.join("rs.jwks.json"))?;
    es.write_jwks(&dir.join("es.jwks.json"))?;
    std::fs::write(
        dir.join("bench.cedar"),
        "@id(\"bench\")\npermit(principal, action, resource) when { principal.attributes.repository == \"acme/infra\" };\n",
    )?;
    std::fs::write(dir.join("store.key"), hex::encode([7u8; 32]))?;
    // Signing keys for the Redis servers (an ephemeral key cannot be shared).
    ferry::issuer::KeyDir::new(dir.join("keys"))
        .generate(Algorithm::RS256, ferry::clock::SystemClock.now())?;
    Ok((rs, es))
}

/// The wrk script `--export` writes: each wrk thread POSTs its own share of a file of
/// form bodies (one per line) in turn, so no two threads present the same token.
pub(crate) const WRK_SCRIPT: &str = r#"-- Written by `ferry-bench --export`. FERRY_BODIES names a file of exchange requests
-- (form bodies, one per line); FERRY_THREADS is wrk's -t (default 2). Each thread
-- takes every n-th line, so no two threads present the same token; a file with fewer
-- lines than threads (one repeated token) is every thread's.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function init(args)
  local n = tonumber(os.getenv("FERRY_THREADS") or "2")
  bodies = {}
  local all = {}
  for line in io.lines(os.getenv("FERRY_BODIES")) do all[#all + 1] = line end
  for i, line in ipairs(all) do
    if #all < n or (i - 1) % n == id - 1 then bodies[#bodies + 1] = line end
  end
  next_body = 1
  headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
end
function request()
  local body = bodies[next_body]
  next_body = next_body % #bodies + 1
  return wrk.format("POST", nil, headers, body)
end
"#;

/// `--export`: what another load generator needs to drive `ferry serve` as the harness
/// drives its in-process server.
pub(crate) fn export(
    dir: &Path,
    rs_count: usize,
    es_count: usize,
) -> anyhow::Result<std::process::ExitCode> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let (rs, es) = write_setup(&dir)?;
    std::fs::write(dir.join("ferry.toml"), config_text(&dir, None))?;
    for (name, issuer, count) in [("rs", &rs, rs_count), ("es", &es, es_count)] {
        let same = vec![form(&issuer.token("hit")?, "api")];
        for (kind, bodies) in [
            ("fresh", mint(count, |_| issuer.token("hit"), "api")?),
            ("same", Arc::new(same)),
        ] {
            // Bearer tokens of a throwaway issuer, valid for an hour against this config
            // only; still, readable by their owner alone.
            let path = dir.join(format!("{name}-{kind}.form"));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(0o600);
            }
            let mut out = std::io::BufWriter::new(options.open(&path)?);
            for body in bodies.iter() {
                out.write_all(body)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
    }
    std::fs::write(dir.join("wrk.lua"), WRK_SCRIPT)?;
    println!(
        "wrote {dir}: ferry.toml (memory store), the issuers' JWKS, rs-fresh.form and es-fresh.form \
         ({rs_count} and {es_count} requests, a fresh token per line), rs-same.form and \
         es-same.form (one each), wrk.lua; the tokens expire in an hour\n  ferry serve --config {dir}/ferry.toml --listen 127.0.0.1:8700\n  \
         FERRY_BODIES={dir}/es-fresh.form wrk -t2 -c64 -d10s --latency -s {dir}/wrk.lua \
         http://127.0.0.1:8700/oauth2/token",
        dir = dir.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// `ferry agent` for the Ferry at `ferry`, holding `token`, serving the GCP metadata
/// server from the `api` target; its address once its credential is held.
pub(crate) async fn start_agent(
    dir: &Path,
    ferry: SocketAddr,
    token: &str,
) -> anyhow::Result<SocketAddr> {
    std::fs::write(dir.join("agent.token"), token)?;
    let text = format!(
        "ferry_url = \"http://{ferry}\"\nlisten = \"127.0.0.1:0\"\ntoken_file = \"agent.token\"\n\
         [gcp]\ntarget = \"api\"\nemail = \"bench@bench.iam.gserviceaccount.com\"\nproject_id = \"bench\"\nscopes = [\"bench\"]\n"
    );
    let config = ferry::agent::AgentConfig::parse("agent.toml", &text, dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let agent = ferry::agent::Agent::start(config)?;
    tokio::spawn(ferry::agent::serve(
        listener,
        std::sync::Arc::clone(&agent),
        std::future::pending(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while agent
        .credentials
        .status()
        .iter()
        .any(|s| s.expires_at.is_none())
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the agent got no credential from Ferry: {:?}",
            agent.credentials.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(addr)
}

/// The SoftHSM2 module `K2` signs through.
pub(crate) const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 token in `dir` with an RSA-2048 key pair `bench-rsa` generated inside it
/// (by softhsm2-util and OpenSC's pkcs11-tool, as an operator makes one), and the
/// `[signing]` lines that sign with it. `SOFTHSM2_CONF` must already name
/// `dir/softhsm2.conf` in this process's environment (see `run`).
pub(crate) fn softhsm_signing(dir: &Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let run = |program: &str, args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .with_context(|| {
                format!("{program} (Debian softhsm2 / opensc; tests/run installs them)")
            })?;
        anyhow::ensure!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    std::fs::write(dir.join("pin"), "1234\n")?;
    run(
        "softhsm2-util",
        &[
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ],
    )?;
    run(
        "pkcs11-tool",
        &[
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            "bench",
            "--login",
            "--pin",
            "1234",
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--label",
            "bench-rsa",
            "--id",
            "01",
            "--sensitive",
        ],
    )?;
    Ok(format!(
        "backend = \"pkcs11\"\nactive_key = \"bench-rsa\"\n[signing.pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"bench\"\npin_file = \"{}\"",
        dir.join("pin").display()
    ))
}

/// The SoftHSM2 config for a token directory under `dir`.
pub(crate) fn softhsm_conf(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir.join("tokens"))?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )?;
    Ok(conf)
}
