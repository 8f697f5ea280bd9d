//! `ferry-bench`: a load harness. Ferry runs in this process on its own runtime (threads
//! named `ferry-srv`, so its CPU time is read apart from the load generator's), on
//! loopback, with tokens the harness mints itself. Scenarios run interleaved in rounds
//! so machine noise spreads over all of them.

mod cpu;
mod load;
mod redis;
mod report;
mod rss;
mod setup;

use crate::cpu::*;
use crate::load::*;
use crate::redis::*;
use crate::report::*;
use crate::rss::*;
use crate::setup::*;
use anyhow::Context as _;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The open-loop rate the agent scenario is also driven at.
const AGENT_NODE_RATE: f64 = 1_000.0;

/// `ferry-bench`: throughput, latency and CPU per request of Ferry's exchange path,
/// scenario by scenario (BENCHMARKS.md).
#[derive(Debug, clap::Parser)]
#[command(name = "ferry-bench", version)]
pub(crate) struct Args {
    /// CI mode: a second or so per scenario; checks completion, errors and single flight.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Seconds per scenario, summed over rounds.
    #[arg(long, default_value_t = 12)]
    pub(crate) seconds: u64,
    /// Rounds (scenarios interleave round by round).
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: u32,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: usize,
    /// Drive every scenario as an open loop at this many requests per second (over all
    /// connections; each connection on its own fixed schedule) instead of a closed loop.
    /// Latency then counts from each request's intended send time.
    #[arg(long, value_name = "REQ_PER_S")]
    pub(crate) rate: Option<f64>,
    /// After the closed-loop rounds, run these scenarios as an open loop at 50 % and 80 %
    /// of the throughput they just reached, and report their latency there (a closed
    /// loop at saturation only measures connections ÷ throughput). `none` for none.
    #[arg(long, value_delimiter = ',', default_value = "B1,C1,G1")]
    pub(crate) open_loop: Vec<String>,
    /// Skip the Redis scenarios (they need redis-server).
    #[arg(long)]
    pub(crate) no_redis: bool,
    /// Skip the memory scenario (a `ferry serve` child filled with cached credentials).
    #[arg(long)]
    pub(crate) no_rss: bool,
    /// The `ferry` binary the memory scenario runs (default: the one beside this binary,
    /// as `cargo build` leaves them).
    #[arg(long, value_name = "PATH")]
    pub(crate) ferry: Option<std::path::PathBuf>,
    /// Run only the scenarios whose label starts with one of these (e.g. `--only B1,C1`);
    /// A always runs, as the baseline the ratios divide by. Useful under a profiler.
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<String>,
    /// Linux scheduling policy of the load generator's threads. `batch` (default): its
    /// wake-ups do not preempt Ferry's threads in the middle of a request, as a generator
    /// on another host could not; `normal`: it competes as an equal, and every response
    /// it wakes up for may preempt the server (BENCHMARKS.md compares the two).
    #[arg(long, value_enum, default_value_t = LoadPolicy::Batch)]
    pub(crate) load_policy: LoadPolicy,
    /// The client that drives the load: `raw` (default; wrk's way) or `hyper` (a pooled
    /// client, where connections are shared between tasks).
    #[arg(long, value_enum, default_value_t = Generator::Raw)]
    pub(crate) generator: Generator,
    /// Write the harness's config, issuer keys and pre-minted exchange requests into this
    /// directory for another load generator (wrk: `bench/wrk-cross-check`), then exit
    /// without measuring anything.
    #[arg(long, value_name = "DIR")]
    pub(crate) export: Option<std::path::PathBuf>,
    /// With `--export`: fresh ES256-token requests to write (≈ 20 µs each to sign).
    #[arg(long, default_value_t = 300_000, requires = "export")]
    pub(crate) export_es256: usize,
    /// With `--export`: fresh RS256-token requests to write (≈ 0.3–0.6 ms each to sign).
    #[arg(long, default_value_t = 50_000, requires = "export")]
    pub(crate) export_rs256: usize,
}

/// How the load generator's threads are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LoadPolicy {
    /// `SCHED_BATCH`: never preempts on wake-up.
    Batch,
    /// `SCHED_OTHER`, like Ferry's own threads.
    Normal,
}

/// Which client drives the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Generator {
    /// Two threads, each with its own event loop and half of the connections; each
    /// connection writes its request with one `write` and parses the response itself
    /// (as wrk does), sharing no state with the others.
    Raw,
    /// hyper-util's pooled client: one pool shared by all connections, and a task per
    /// connection beside each request's own.
    Hyper,
}

/// Runs the harness and prints the report.
fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    // K2's SoftHSM token: its module reads SOFTHSM2_CONF when it loads, in this process.
    let hsm_dir = tempfile::tempdir()?;
    let hsm_wanted = args.only.is_empty() || args.only.iter().any(|o| "K2".starts_with(o.as_str()));
    if hsm_wanted {
        let conf = setup::softhsm_conf(hsm_dir.path())?;
        // SAFETY: nothing else runs yet: no runtime, thread or child has been started,
        // so no other thread reads the environment while it changes.
        unsafe { std::env::set_var("SOFTHSM2_CONF", conf) };
    }
    let (seconds, rounds) = if args.quick {
        (2, 2)
    } else {
        (args.seconds, args.rounds.max(1))
    };
    if let Some(dir) = &args.export {
        return export(dir, args.export_rs256, args.export_es256);
    }
    let per_run = Duration::from_secs_f64(seconds as f64 / f64::from(rounds));
    anyhow::ensure!(
        args.rate.is_none() || args.generator == Generator::Raw,
        "--rate needs the raw generator (the pooled client has no send schedule)"
    );
    anyhow::ensure!(
        args.rate.is_none_or(|r| r.is_finite() && r > 0.0),
        "--rate must be a positive number of requests per second"
    );
    let dir = tempfile::tempdir()?;
    let (rs, es) = write_setup(dir.path())?;

    let redis = if args.no_redis {
        None
    } else {
        Some(start_redis()?)
    };
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ferry-srv")
        .enable_all()
        .build()?;
    // The generator's threads take the policy as they start (these, which run the hyper
    // generator, and the raw generator's own); a thread that could not is counted, and
    // the report says so.
    let scheduling = LoadScheduling {
        batch: args.load_policy == LoadPolicy::Batch,
        failures: Arc::default(),
    };
    let client_rt = {
        let scheduling = scheduling.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-load")
            .on_thread_start(move || scheduling.apply())
            .enable_all()
            .build()?
    };

    let mem = server_rt.block_on(start_server(
        dir.path(),
        "mem",
        &config_text(dir.path(), None),
    ))?;
    // The same with an audit trail (one hash-chained line per exchange, appended to a
    // file), as a production config has it; the other scenarios run without one.
    let audit_log = dir.path().join("audit.log");
    let audited = server_rt.block_on(start_server(
        dir.path(),
        "audited",
        &format!(
            "{}\n[audit]\nfile = \"{}\"\n",
            config_text(dir.path(), None),
            audit_log.display()
        ),
    ))?;
    // B1 with a shadow policy set as large as the enforced one (a copy of it).
    std::fs::copy(
        dir.path().join("bench.cedar"),
        dir.path().join("shadow.cedar"),
    )?;
    let shadowed = server_rt.block_on(start_server(
        dir.path(),
        "shadowed",
        &config_text(dir.path(), None).replace(
            "[policy]\n",
            &format!(
                "[policy]\nshadow_files = [\"{}\"]\n",
                dir.path().join("shadow.cedar").display()
            ),
        ),
    ))?;
    // B1 without the anomaly detector (`[anomalies] enabled = false`): what detection costs.
    let undetected = server_rt.block_on(start_server(
        dir.path(),
        "undetected",
        &format!(
            "{}\n[anomalies]\nenabled = false\n",
            config_text(dir.path(), None)
        ),
    ))?;
    // K1's misses (a Ferry-signed JWT per request) with the key in SoftHSM: K2.
    let hsm = if hsm_wanted {
        let signing = setup::softhsm_signing(hsm_dir.path())?;
        Some(server_rt.block_on(start_server(
            dir.path(),
            "hsm",
            &config_text(dir.path(), None).replace("ephemeral = true", &signing),
        ))?)
    } else {
        None
    };
    // B5 with the identity and request recorded in each audit line (`ferry impact`).
    let identity_log = dir.path().join("audit-identity.log");
    let audited_identity = server_rt.block_on(start_server(
        dir.path(),
        "audited-identity",
        &format!(
            "{}\n[audit]\nfile = \"{}\"\nrecord_identity = true\n",
            config_text(dir.path(), None),
            identity_log.display()
        ),
    ))?;
    // DPoP: proofs are minted before the run and their `iat` is checked against a 65 s
    // window, so this server's clock stands still at the minting time (its tokens and
    // cached credentials live an hour: nothing else notices).
    let dpop_at = ferry::clock::Clock::now(&ferry::clock::SystemClock);
    let dpop_mem = server_rt.block_on(start_server_at(
        dir.path(),
        "dpop",
        &config_text(dir.path(), None),
        ferry::clock::ManualClock::new(dpop_at),
    ))?;
    // TLS on the listener (`[server.tls]`, a self-signed certificate), for the T scenarios.
    let (tls_section, tls_client) = tls_material(dir.path())?;
    let tls_mem = server_rt.block_on(start_server(
        dir.path(),
        "tls",
        &format!("{}{tls_section}", config_text(dir.path(), None)),
    ))?;
    // Redis with the defaults (a local copy of the revocation list and a near cache), and
    // without the copy (`revocation_max_lag = "0s"`: every exchange asks Redis).
    let redis_server = |name: &str, extra: &str| -> anyhow::Result<Option<Server>> {
        match &redis {
            Some((_, port)) => Ok(Some(server_rt.block_on(start_server(
                dir.path(),
                name,
                &config_text(
                    dir.path(),
                    Some((
                        &format!("redis://127.0.0.1:{port}"),
                        &dir.path().join("store.key"),
                        extra,
                    )),
                ),
            ))?)),
            None => Ok(None),
        }
    };
    let red = redis_server("redis", "")?;
    let red_direct = redis_server("redis-direct", "revocation_max_lag = \"0s\"\n")?;

    // Token sets: fresh tokens (distinct jti, same identity → cache hits), one repeated
    // token, and distinct identities (→ cache misses). A set a scenario runs through
    // wraps around and its tokens come again: Ferry then remembers some signatures, and
    // a "miss" finds its identity's credential cached. The report counts both. ES256
    // sets are sized to go round at most once at up to 45k (fresh) and 35k (misses)
    // requests/s; RS256 signing is too slow for that (≈ 0.3–0.6 ms a token), so its
    // fresh set is 50k and goes round.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a token count from a rate and a duration"
    )]
    let sized = |per_second: f64, quick: usize| -> usize {
        if args.quick {
            quick
        } else {
            (per_second * seconds as f64).ceil() as usize
        }
    };
    let fresh = |issuer: &Issuer, count: usize| mint(count, |_| issuer.token("hit"), "api");
    // With `--only`, token sets no selected scenario uses are left empty (minting 50k
    // RS256 tokens takes half a minute).
    let want = |labels: &[&str]| {
        args.only.is_empty()
            || labels
                .iter()
                .any(|l| args.only.iter().any(|o| l.starts_with(o.as_str())))
    };
    let empty = || Arc::new(Vec::new());
    let rs_fresh = if want(&["B1", "B1s", "B1a", "B5", "B5i", "B6", "C1", "T1", "T2"]) {
        fresh(&rs, if args.quick { 2_000 } else { 50_000 })?
    } else {
        empty()
    };
    let es_fresh = if want(&["B2", "C2"]) {
        fresh(&es, sized(45_000.0, 2_000))?
    } else {
        empty()
    };
    let rs_same = Arc::new(vec![form(&rs.token("hit")?, "api")]);
    let es_same = Arc::new(vec![form(&es.token("hit")?, "api")]);
    let misses = |target: &str, count: usize| {
        let run = uuid::Uuid::new_v4();
        mint(
            count,
            |i| es.token(&format!("miss-{target}-{i}-{run}")),
            target,
        )
    };
    let miss0 = if want(&["D1"]) {
        misses("miss0", sized(35_000.0, 2_000))?
    } else {
        empty()
    };
    // 64 connections waiting 50 ms each make at most 1 280 misses/s.
    let miss50 = if want(&["D2"]) {
        misses("miss50", sized(1_500.0, 1_000))?
    } else {
        empty()
    };

    let mut scenarios: Vec<(&str, &Server, Load)> = Vec::new();
    let url = |a: SocketAddr, p: &str| format!("http://{a}{p}");
    scenarios.push((
        "A  baseline GET /healthz",
        &mem,
        Load::get(url(mem.addr, "/healthz")),
    ));
    scenarios.push((
        "B1 hit, RS256, fresh token, memory",
        &mem,
        Load::post(url(mem.addr, "/oauth2/token"), rs_fresh.clone()),
    ));
    scenarios.push((
        "B1s B1 with shadow policies (same size)",
        &shadowed,
        Load::post(url(shadowed.addr, "/oauth2/token"), rs_fresh.clone()),
    ));
    scenarios.push((
        "B1a B1 without anomaly detection",
        &undetected,
        Load::post(url(undetected.addr, "/oauth2/token"), rs_fresh.clone()),
    ));
    scenarios.push((
        "B2 hit, ES256, fresh token, memory",
        &mem,
        Load::post(url(mem.addr, "/oauth2/token"), es_fresh.clone()),
    ));
    scenarios.push((
        "B3 hit, RS256, same token, memory",
        &mem,
        Load::post(url(mem.addr, "/oauth2/token"), rs_same.clone()),
    ));
    scenarios.push((
        "B4 hit, ES256, same token, memory",
        &mem,
        Load::post(url(mem.addr, "/oauth2/token"), es_same.clone()),
    ));
    scenarios.push((
        "B5 B1 with an audit trail file",
        &audited,
        Load::post(url(audited.addr, "/oauth2/token"), rs_fresh.clone()),
    ));
    scenarios.push((
        "B5i B5 recording identity and request",
        &audited_identity,
        Load::post(
            url(audited_identity.addr, "/oauth2/token"),
            rs_fresh.clone(),
        ),
    ));
    // The pooled client speaks plain HTTP only, and sends no DPoP header.
    if args.generator == Generator::Raw && want(&["B6"]) {
        // Each proof is good once (its `jti` is recorded): the set is sized to last.
        let proofs = dpop_proofs(
            sized(30_000.0, 20_000),
            "http://127.0.0.1:9/oauth2/token",
            dpop_at,
        )?;
        scenarios.push((
            "B6 B1 with a DPoP proof per request",
            &dpop_mem,
            Load::Dpop(
                Box::new(Load::post(
                    url(dpop_mem.addr, "/oauth2/token"),
                    rs_fresh.clone(),
                )),
                proofs,
                Arc::default(),
            ),
        ));
    }
    if args.generator == Generator::Raw {
        let https = |per_request| {
            Load::Tls(
                Box::new(Load::post(
                    format!("https://{}/oauth2/token", tls_mem.addr),
                    rs_fresh.clone(),
                )),
                Tls {
                    config: Arc::clone(&tls_client),
                    per_request,
                },
            )
        };
        scenarios.push((
            "T1 B1 over TLS, connections kept alive",
            &tls_mem,
            https(false),
        ));
        scenarios.push((
            "T2 B1 over TLS, new resumed session/req",
            &tls_mem,
            https(true),
        ));
    }
    if let Some(r) = &red {
        scenarios.push((
            "C1 hit, RS256, fresh token, redis",
            r,
            Load::post(url(r.addr, "/oauth2/token"), rs_fresh.clone()),
        ));
        scenarios.push((
            "C2 hit, ES256, fresh token, redis",
            r,
            Load::post(url(r.addr, "/oauth2/token"), es_fresh.clone()),
        ));
        scenarios.push((
            "C3 hit, RS256, same token, redis",
            r,
            Load::post(url(r.addr, "/oauth2/token"), rs_same.clone()),
        ));
    }
    if let Some(r) = &red_direct {
        scenarios.push((
            "C4 C3 with no local revocation copy",
            r,
            Load::post(url(r.addr, "/oauth2/token"), rs_same.clone()),
        ));
    }
    // `ferry agent` beside a workload, in this process: the GCP metadata server's token
    // endpoint, answered from the agent's cache (its credential comes from `mem`).
    if want(&["G1"]) {
        let agent = server_rt.block_on(start_agent(dir.path(), mem.addr, &rs.token("hit")?))?;
        scenarios.push((
            "G1 agent: GCP metadata token, cached",
            &mem,
            Load::Get(
                url(
                    agent,
                    "/computeMetadata/v1/instance/service-accounts/default/token",
                ),
                Arc::from("metadata-flavor: Google\r\n"),
            ),
        ));
    }
    // A miss on a `jwt` target signs one token: with the file key (RS256), then with an
    // RSA-2048 key in SoftHSM over PKCS#11.
    let sign_misses = |count| {
        let run = uuid::Uuid::new_v4();
        mint(count, |i| es.token(&format!("sign-{i}-{run}")), "api")
    };
    if want(&["K1"]) {
        scenarios.push((
            "K1 miss, jwt target, RS256 file key",
            &mem,
            Load::post(
                url(mem.addr, "/oauth2/token"),
                sign_misses(sized(2_500.0, 1_000))?,
            ),
        ));
    }
    if let Some(hsm) = &hsm {
        scenarios.push((
            "K2 K1 with the key in SoftHSM (PKCS#11)",
            hsm,
            Load::post(
                url(hsm.addr, "/oauth2/token"),
                sign_misses(sized(2_500.0, 1_000))?,
            ),
        ));
    }
    scenarios.push((
        "D1 miss, ES256, upstream 0 ms, memory",
        &mem,
        Load::post(url(mem.addr, "/oauth2/token"), miss0),
    ));
    scenarios.push((
        "D2 miss, ES256, upstream 50 ms, memory",
        &mem,
        Load::post(url(mem.addr, "/oauth2/token"), miss50),
    ));

    if !args.only.is_empty() {
        scenarios.retain(|(name, _, _)| {
            name.starts_with('A') || args.only.iter().any(|o| name.starts_with(o.as_str()))
        });
    }
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(args.connections)
            .build_http();
    let driver = Driver {
        generator: args.generator,
        client: client.clone(),
        scheduling: scheduling.clone(),
    };
    // Warm up: first hits populate the caches.
    client_rt.block_on(async {
        for (_, _, load) in &scenarios {
            let warm_up = Shape {
                connections: 4,
                duration: Duration::from_millis(200),
                rate: None,
            };
            drive(&driver, load, warm_up).await;
        }
    });
    let shape = |rate| Shape {
        connections: args.connections,
        duration: per_run,
        rate,
    };
    let mut tallies: Vec<Tally> = vec![Tally::default(); scenarios.len()];
    let mut reuse: Vec<Reuse> = vec![Reuse::default(); scenarios.len()];
    for _ in 0..rounds {
        for (i, (_, server, load)) in scenarios.iter().enumerate() {
            let before = server.reuse();
            let t = client_rt.block_on(drive(&driver, load, shape(args.rate)));
            if let (Some(acc), Some(r)) = (tallies.get_mut(i), reuse.get_mut(i)) {
                acc.absorb(t);
                server.reuse().add_since(before, r);
            }
        }
    }

    // Open loop at 50 % and 80 % of each selected scenario's closed-loop throughput.
    let mut open_rows = Vec::new();
    if args.rate.is_none() && args.generator == Generator::Raw {
        for (i, (name, _, load)) in scenarios.iter().enumerate() {
            // By the scenario's label (`B1`, not `B1s`).
            let label = name.split(' ').next().unwrap_or_default();
            if !args.open_loop.iter().any(|o| o == label) {
                continue;
            }
            let Some(closed) = tallies.get(i) else {
                continue;
            };
            #[expect(clippy::cast_precision_loss, reason = "a count to a rate")]
            let capacity =
                closed.latencies_us.len() as f64 / closed.elapsed.as_secs_f64().max(1e-9);
            let mut shares = vec![0.5, 0.8];
            // The agent also at the load one node's agent is sized for (the EKS Pod
            // Identity agent: 1 000 requests/s per node).
            if name.starts_with("G1") {
                shares.insert(0, AGENT_NODE_RATE / capacity.max(1.0));
            }
            for share in shares {
                let rate = capacity * share;
                let mut t = client_rt.block_on(drive(&driver, load, shape(Some(rate))));
                open_rows.push((share, rate, summarize(name, &mut t)));
            }
        }
    }

    // E: 100 concurrent identical misses, per store: exactly one upstream call.
    let mut single_flight = Vec::new();
    for (name, server) in std::iter::once(("memory", &mem)).chain(red.iter().map(|r| ("redis", r)))
    {
        let fake = server
            .fakes
            .iter()
            .find(|(t, _)| t == "miss50")
            .map(|(_, f)| Arc::clone(f))
            .context("fake")?;
        let before = fake.calls.load(Ordering::SeqCst);
        let sub = format!("single-flight-{}", uuid::Uuid::new_v4());
        let bodies: Vec<Bytes> = (0..100)
            .map(|_| rs.token(&sub).map(|t| form(&t, "miss50")))
            .collect::<Result<_, _>>()?;
        let target = url(server.addr, "/oauth2/token");
        let errors = client_rt.block_on(async {
            let mut tasks = Vec::new();
            for body in bodies {
                let client = client.clone();
                let target = target.clone();
                tasks.push(tokio::spawn(async move {
                    let req = form_request(target.as_str(), body);
                    match req {
                        Ok(req) => client
                            .request(req)
                            .await
                            .map(|r| r.status().is_success())
                            .unwrap_or(false),
                        Err(_) => false,
                    }
                }));
            }
            let mut errors = 0;
            for t in tasks {
                if !t.await.unwrap_or(false) {
                    errors += 1;
                }
            }
            errors
        });
        single_flight.push((name, fake.calls.load(Ordering::SeqCst) - before, errors));
    }

    // B5 ran with an audit trail: every exchange it made must have left a line, and the
    // lines its concurrent requests wrote (by group commit) must form one valid chain,
    // its checkpoints (every 1000 lines, and the closing one) signed by the server's key.
    audited.state.audit.close();
    let checkpoint_keys = ferry::audit::CheckpointKeys::from_jwks(
        audited.state.snapshot.load().issuer.jwks_document(),
    )
    .map_err(|e| anyhow::anyhow!("the audited server's JWKS: {e}"))?;
    let audit_chain =
        ferry::audit::verify_files(std::slice::from_ref(&audit_log), Some(&checkpoint_keys));
    let audit_lines = audit_chain.as_ref().map_or(0, |r| r.lines);
    let ((rs_cost, es_cost), (rs_jwt, es_jwt)) = verify_cost(&rs, &es)?;
    let redis_rtt = match &redis {
        Some((_, port)) => Some(redis_round_trip_us(*port, 5_000)?),
        None => None,
    };
    let rows: Vec<Row> = scenarios
        .iter()
        .zip(tallies.iter_mut())
        .map(|((name, _, _), t)| summarize(name, t))
        .collect();

    // Memory: a real `ferry serve` child, filled with cached credentials over HTTP.
    let rss = if args.no_rss {
        None
    } else {
        let count = if args.quick { 2_000 } else { 100_000 };
        let ferry = match &args.ferry {
            Some(path) => path.clone(),
            None => std::env::current_exe()?.with_file_name("ferry"),
        };
        anyhow::ensure!(
            ferry.is_file(),
            "the memory scenario runs `{}`, which does not exist: build it (`cargo build --release`), pass --ferry PATH, or --no-rss",
            ferry.display()
        );
        Some(client_rt.block_on(rss_scenario(
            &ferry,
            dir.path(),
            &es,
            &driver,
            count,
            args.connections,
        ))?)
    };

    let baseline = rows
        .first()
        .map(|r| (r.rps, r.cpu_us))
        .unwrap_or((1.0, 1.0));
    println!(
        "ferry-bench: {} connections, {}s per scenario over {} interleaved rounds{}, {}",
        args.connections,
        seconds,
        rounds,
        if args.quick { " (quick)" } else { "" },
        match args.rate {
            Some(rate) => format!(
                "open loop at {rate:.0} req/s (latency from each request's intended send time)"
            ),
            None => "closed loop (each connection sends when its last answer is in)".to_owned(),
        }
    );
    let failed_policy = scheduling
        .failures
        .lock()
        .map(|f| f.clone())
        .unwrap_or_default();
    println!(
        "load generator: {} client, 2 threads in this process, {}",
        match args.generator {
            Generator::Raw => "raw HTTP/1.1 (a connection per task, wrk's way)",
            Generator::Hyper => "hyper-util pooled",
        },
        match (args.load_policy, failed_policy.first()) {
            (LoadPolicy::Batch, None) =>
                "SCHED_BATCH (its wake-ups do not preempt Ferry; --load-policy normal to compare)"
                    .to_owned(),
            (LoadPolicy::Batch, Some(e)) => format!(
                "SCHED_BATCH REFUSED ({e}) at {} generator thread start(s): those threads ran under the normal policy",
                failed_policy.len()
            ),
            (LoadPolicy::Normal, _) =>
                "normal scheduling (its wake-ups may preempt Ferry mid-request)".to_owned(),
        }
    );
    println!(
        "one signature verify in this process: RS256 {rs_cost:.1} µs, ES256 {es_cost:.1} µs \
         (key parsed once, as Ferry does; jsonwebtoken::crypto::verify, re-parsing the key: \
         RS256 {rs_jwt:.1} µs, ES256 {es_jwt:.1} µs)\n"
    );
    println!(
        "{:<38} {:>9} {:>8} {:>8} {:>8} {:>7} {:>9} {:>7} {:>9} {:>9} {:>11} {:>12}",
        "scenario",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "cpu µs/req",
        "x A rps",
        "cpu/verify",
        "preempt/req",
        "p99 arr ms",
        "unread ms"
    );
    let mut total_errors = 0;
    for r in &rows {
        total_errors += r.errors;
        let verify = if r.name.contains("ES256") {
            es_cost
        } else {
            rs_cost
        };
        let (arrival_p99, unread) = r.arrival.map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |(p99, unread)| (format!("{p99:.2}"), format!("{unread:.2}")),
        );
        println!(
            "{:<38} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>9.1} {:>7.2} {:>9.2} {:>9.3} {:>11} {:>12}",
            r.name,
            r.rps,
            r.p50,
            r.p99,
            r.p999,
            r.errors,
            r.cpu_us,
            r.rps / baseline.0.max(1e-9),
            r.cpu_us / verify.max(1e-9),
            r.preempted,
            arrival_p99,
            unread
        );
    }
    print_reuse(&scenarios, &tallies, &reuse);
    if !open_rows.is_empty() {
        println!(
            "\nopen loop: a fixed arrival rate, as a share of the closed-loop throughput above; latency from each request's intended send time"
        );
    }
    for (share, rate, r) in &open_rows {
        total_errors += r.errors;
        println!(
            "{:<38} {:>3.0} % ({rate:.0} req/s): achieved {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, {} error(s)",
            r.name,
            share * 100.0,
            r.rps,
            r.p50,
            r.p99,
            r.p999,
            r.errors
        );
    }
    if let Some((_, _, g1)) = open_rows
        .iter()
        .find(|(_, rate, r)| r.name.starts_with("G1") && (*rate - AGENT_NODE_RATE).abs() < 1.0)
    {
        println!(
            "  G1 the agent's cached answer at {AGENT_NODE_RATE:.0} req/s over {} connections: p99 {:.2} ms, goal < 1 ms, {}",
            args.connections,
            g1.p99,
            if g1.p99 < 1.0 { "met" } else { "NOT met" }
        );
    }
    println!();
    let mut single_flight_ok = true;
    for (store, calls, errors) in &single_flight {
        println!(
            "E  single-flight ({store}): 100 concurrent identical misses -> {calls} upstream call(s), {errors} error(s)"
        );
        single_flight_ok &= *calls == 1 && *errors == 0;
        total_errors += errors;
    }
    let row = |prefix: &str| rows.iter().find(|r| r.name.starts_with(prefix));
    if let (Some(b1), Some(b1s)) = (row("B1 "), row("B1s ")) {
        let added = b1s.cpu_us - b1.cpu_us;
        println!(
            "B1s shadow policies (a set as large as the enforced one): {added:+.1} µs of CPU per cache hit over B1's ({:+.0} %; goal ≤ +25 %)",
            100.0 * added / b1.cpu_us
        );
    }
    if let (Some(b1), Some(b1a)) = (row("B1 "), row("B1a ")) {
        let added = b1.cpu_us - b1a.cpu_us;
        println!(
            "B1a anomaly detection (every kind on, the default): {added:+.1} µs of CPU per cache hit (B1 {:.1} against B1a {:.1}, {:+.0} %)",
            b1.cpu_us,
            b1a.cpu_us,
            100.0 * added / b1a.cpu_us
        );
    }
    if let (Some(k1), Some(k2)) = (row("K1 "), row("K2 ")) {
        println!(
            "K2 PKCS#11 (SoftHSM, RSA-2048): {:.0} µs of CPU per signed miss against {:.0} with the file key ({:.2}x); p50 {:.2} ms against {:.2}, {:.0} against {:.0} misses/s",
            k2.cpu_us,
            k1.cpu_us,
            k2.cpu_us / k1.cpu_us.max(f64::MIN_POSITIVE),
            k2.p50,
            k1.p50,
            k2.rps,
            k1.rps
        );
    }
    if let (Some(b5), Some(b5i)) = (row("B5 "), row("B5i ")) {
        let size = |p: &std::path::Path| -> Option<(u64, usize)> {
            let text = std::fs::read_to_string(p).ok()?;
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("\"type\":\"decision\""))
                .collect();
            let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
            Some((bytes as u64, lines.len()))
        };
        let per_line = |p: &std::path::Path| {
            size(p).map_or(0, |(bytes, n)| bytes / u64::try_from(n.max(1)).unwrap_or(1))
        };
        println!(
            "B5i [audit] record_identity: {:+.1} µs of CPU per exchange over B5's; decision lines {} bytes (B5: {})",
            b5i.cpu_us - b5.cpu_us,
            per_line(&identity_log),
            per_line(&audit_log)
        );
    }
    if let Some(b5) = row("B5 ") {
        println!(
            "B5 audit trail: {audit_lines} hash-chained lines appended to a file, {} ({:.1} µs of CPU per exchange over B1's)",
            match &audit_chain {
                Ok(r) => format!(
                    "the chain and its {} signed checkpoint(s) verify",
                    r.checkpoints
                ),
                Err(e) => format!("the chain is BROKEN at line {}: {}", e.line, e.problem),
            },
            b5.cpu_us - row("B1 ").map_or(b5.cpu_us, |b1| b1.cpu_us)
        );
        if audit_lines == 0 || audit_chain.is_err() {
            total_errors += 1;
        }
    }
    if let Some(r) = &red {
        // C1–C3 ran with the default local revocation copy; say whether it was in use.
        println!(
            "C1-C3 local revocation copy at the end of the run: {}",
            match r.state.services.store.revocation_copy() {
                Some(Some(lag)) =>
                    format!("current (proven {:.1} ms ago)", lag.as_secs_f64() * 1e3),
                Some(None) => "NOT current (exchanges were asking Redis)".to_owned(),
                None => "off".to_owned(),
            }
        );
    }
    println!(
        "harness process peak RSS (Ferry, load generator, pre-minted tokens): {} MiB",
        status_kib("/proc/self/status", "VmHWM:") / 1024
    );
    if let Some(r) = &rss {
        total_errors += r.errors;
        #[expect(clippy::cast_precision_loss, reason = "sizes to MiB")]
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "RSS  `ferry serve` (memory store): ready {:.1} MiB, warm {:.1} MiB, with {} cached credentials {:.1} MiB \
             ({:.0} bytes per credential; each an ES256 Ferry JWT of {} bytes), {} error(s)",
            mib(r.ready_kib),
            mib(r.warm_kib),
            r.count,
            mib(r.full_kib),
            r.per_credential_bytes(),
            r.credential_len,
            r.errors
        );
    }
    println!(
        "baseline A: {:.0} req/s, {:.1} µs CPU per request",
        baseline.0, baseline.1
    );
    print_goals(
        &rows,
        baseline,
        (rs_cost, es_cost),
        redis_rtt,
        rss.as_ref(),
        args.quick,
        args.connections,
    );
    println!("errors: {total_errors}");
    // Servers first: a Redis that goes away under a live server is an outage it reports.
    drop(server_rt);
    drop(redis);
    let ok = total_errors == 0 && single_flight_ok;
    Ok(if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// jemalloc, as the `ferry` binary has it (src/main.rs): Ferry runs in this process.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let args = <Args as clap::Parser>::parse();
    ferry::install_crypto_provider();
    // Warnings only: an access-log line per request would be part of what is measured.
    let _telemetry = ferry::telemetry::init(ferry::telemetry::LogFormat::Pretty, "warn", None).ok();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
