//! The load harness runs end to end in a short mode. It asserts only that it completes,
//! that single flight made exactly one upstream call, and that there were no errors —
//! never a time threshold.
#![cfg(test)]

use ferry_testkit::await_ready;

/// The `ferry` binary the workspace build leaves beside `ferry-bench` (the memory
/// scenario and the export check run it).
fn ferry() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_ferry-bench")).with_file_name("ferry");
    assert!(
        path.is_file(),
        "{} is missing: run the workspace's tests (tests/run), which build it",
        path.display()
    );
    path
}

/// `ferry-bench --quick --connections 16` plus `more`; asserts it exits 0, returns stdout.
fn quick_bench(more: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-bench"))
        .args(["--quick", "--connections", "16", "--ferry"])
        .arg(ferry())
        .args(more)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn ferry_bench_quick_completes_without_errors_and_with_single_flight() {
    let stdout = quick_bench(&[]);
    assert!(stdout.contains("E  single-flight (memory): 100 concurrent identical misses -> 1 upstream call(s), 0 error(s)"), "{stdout}");
    assert!(stdout.contains("E  single-flight (redis): 100 concurrent identical misses -> 1 upstream call(s), 0 error(s)"), "{stdout}");
    assert!(stdout.contains("\nerrors: 0\n"), "{stdout}");
    assert!(
        stdout.contains("interleaved rounds (quick), closed loop (each connection sends"),
        "{stdout}"
    );
    // B1 and C1 again as an open loop, at 50 % and 80 % of the throughput they reached.
    assert!(
        stdout.contains("\nopen loop: a fixed arrival rate"),
        "{stdout}"
    );
    for scenario in [
        "B1 hit, RS256, fresh token, memory",
        "C1 hit, RS256, fresh token, redis",
    ] {
        for share in [" 50 % (", " 80 % ("] {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(scenario) && l.contains(share))
                .unwrap_or_else(|| panic!("no open-loop line for {scenario}{share}: {stdout}"));
            assert!(
                line.contains("achieved ") && line.ends_with(", 0 error(s)"),
                "{line}"
            );
        }
    }
    // The memory scenario filled a real `ferry serve` with 2000 credentials, all granted.
    assert!(
        stdout.contains("with 2000 cached credentials") && stdout.contains("bytes), 0 error(s)"),
        "{stdout}"
    );
    for scenario in [
        // The default generator: wrk's layout, and it does not preempt Ferry.
        "load generator: raw HTTP/1.1 (a connection per task, wrk's way) client, 2 threads in this process, SCHED_BATCH (its wake-ups do not preempt Ferry",
        // How often Ferry's threads were preempted, per request.
        "preempt/req",
        "A  baseline",
        "B1 hit, RS256",
        "B4 hit, ES256, same token",
        // An audited server: a line per exchange (none would count as an error).
        "B5 B1 with an audit trail file",
        "B5 audit trail: ",
        // Its concurrent requests' lines, written by group commit, form one chain.
        "hash-chained lines appended to a file, the chain and its ",
        " signed checkpoint(s) verify (",
        "C1 hit, RS256",
        // C3 with and without the local revocation copy, and whether it was in use.
        "C3 hit, RS256, same token, redis",
        "C4 C3 with no local revocation copy",
        "C1-C3 local revocation copy at the end of the run: ",
        "D2 miss, ES256, upstream 50 ms",
        // A DPoP proof per request, each sent once.
        "B6 B1 with a DPoP proof per request",
        "B6 a DPoP-bound exchange ≤ 1.50 × B1's CPU per exchange",
        // TLS on the listener, kept alive and a resumed session per request.
        "T1 B1 over TLS, connections kept alive",
        "T2 B1 over TLS, new resumed session/req",
        "T1 TLS with connection reuse ≤ 1.10 × B1's CPU per exchange",
        // How fresh the fresh-token scenarios were (a set that wraps around comes again).
        "signatures remembered from an earlier verify of the same token (0 %: every request verified one): B1 ",
        "RSS  `ferry serve` (memory store): ready",
        // The goals are reported against the run's own figures (met or not is not
        // checked: a time is never a test's verdict).
        "goals (this run; reported, not asserted)",
        "one Redis round trip from this process",
        "B1 CPU per fresh-token hit",
        "C1 CPU per fresh-token hit",
        "B3 same token again",
        "its mean latency by Little's law (16 connections / ",
        // The kernel's receive time of each response, beside the generator's read.
        "p99 arr ms",
        "unread ms",
        "at the kernel's receive time of each response (without the generator's own wait for a core): p99 ",
        "RSS < 100 MB with 2000 cached credentials",
    ] {
        assert!(stdout.contains(scenario), "missing {scenario}: {stdout}");
    }
    // D2's tokens (1 000 identities; 16 connections × 2 s at 50 ms each make ≈ 660
    // requests, warm-up included) do not wrap, and its rounds go on where the last one
    // stopped: every request is a miss.
    let upstream = stdout
        .lines()
        .find(|l| {
            l.starts_with("requests that called the upstream (100 %: every request a miss): ")
        })
        .unwrap_or_else(|| panic!("no upstream line: {stdout}"));
    assert!(upstream.ends_with("D2 100.0 %"), "{upstream}");
    let (arrival_p99, unread) = arrival_columns(&stdout, "B1 hit, RS256, fresh token, memory");
    let arrival_p99: f64 = arrival_p99.parse().expect("a receive-time p99 for B1");
    let unread: f64 = unread.parse().expect("a mean unread time for B1");
    assert!(arrival_p99 > 0.0 && unread >= 0.0, "{stdout}");

    // The host's speed against the reference host's: A's throughput over 97 500 req/s,
    // as the table has it.
    let host = stdout
        .lines()
        .find(|l| l.contains("this host against the reference host"))
        .unwrap_or_else(|| panic!("no host line: {stdout}"));
    let ratio_before = |marker: &str| -> f64 {
        let head = host.split(marker).next().unwrap_or_default();
        head.split_whitespace()
            .last()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no ratio before {marker:?}: {host}"))
    };
    let a_rps: f64 = stdout
        .lines()
        .find(|l| l.starts_with("A  baseline"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no A row: {stdout}"));
    let a_ratio = ratio_before(" × its throughput");
    assert!(
        (a_ratio - a_rps / 97_500.0).abs() < 0.006,
        "A {a_rps}/s is not {a_ratio} × the reference: {host}"
    );
    assert!(ratio_before(" × its time") > 0.0, "{host}");
}

/// The last two columns of a scenario's row: p99 at the kernel's receive time, and
/// the mean time answers waited unread.
fn arrival_columns<'a>(stdout: &'a str, scenario: &str) -> (&'a str, &'a str) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(scenario))
        .unwrap_or_else(|| panic!("no {scenario} row: {stdout}"));
    let mut fields = line.split_whitespace().rev();
    let unread = fields.next().unwrap_or_default();
    (fields.next().unwrap_or_default(), unread)
}

/// The other generator and scheduling policy work too, for comparison.
#[test]
fn ferry_bench_quick_runs_with_the_pooled_client_under_normal_scheduling() {
    let stdout = quick_bench(&[
        "--generator",
        "hyper",
        "--load-policy",
        "normal",
        "--only",
        "B1",
        "--no-rss",
        "--no-redis",
    ]);
    assert!(
        stdout.contains(
            "load generator: hyper-util pooled client, 2 threads in this process, normal scheduling"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("B1 hit, RS256, fresh token, memory"),
        "{stdout}"
    );
    assert!(!stdout.contains("C1 hit"), "{stdout}");
    assert!(stdout.contains("\nerrors: 0\n"), "{stdout}");
    // The pooled client has no receive times to report.
    assert_eq!(
        arrival_columns(&stdout, "B1 hit, RS256, fresh token, memory"),
        ("-", "-"),
        "{stdout}"
    );
    assert!(!stdout.contains("at the kernel's receive time"), "{stdout}");
}

/// `--export` writes what another load generator needs: a config `ferry check` accepts,
/// and request files whose every line a real `ferry serve` grants.
#[test]
fn the_export_drives_a_real_ferry_serve() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-bench"))
        .arg("--export")
        .arg(dir.path())
        .args(["--export-es256", "40", "--export-rs256", "6"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let lines = |name: &str| read(name).lines().map(str::to_owned).collect::<Vec<_>>();
    let (es, rs) = (lines("es-fresh.form"), lines("rs-fresh.form"));
    assert_eq!((es.len(), rs.len()), (40, 6));
    assert_eq!(lines("es-same.form").len(), 1);
    // Fresh means no line twice.
    assert_eq!(
        es.iter().collect::<std::collections::HashSet<_>>().len(),
        40
    );
    // The requests carry bearer tokens: readable by their owner alone.
    #[cfg(unix)]
    for name in [
        "es-fresh.form",
        "rs-fresh.form",
        "es-same.form",
        "rs-same.form",
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let lua = read("wrk.lua");
    assert!(
        lua.contains("function request()") && lua.contains("FERRY_BODIES"),
        "{lua}"
    );

    let config = dir.path().join("ferry.toml");
    let check = std::process::Command::new(ferry())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let port = ferry_testkit::free_port().unwrap();
    let mut child = std::process::Command::new(ferry())
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = await_ready(&mut child, &base);
    let same = lines("es-same.form");
    let statuses: Vec<(u16, bool)> = es
        .iter()
        .take(3)
        .chain(rs.iter().take(3))
        .chain(same.iter())
        .map(|body| {
            let r = client
                .post(format!("{base}/oauth2/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.clone())
                .send()
                .unwrap();
            let status = r.status().as_u16();
            let json: serde_json::Value = r.json().unwrap();
            (status, json["access_token"].is_string())
        })
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(statuses, vec![(200, true); 7]);
}

/// `--rate` drives every scenario as an open loop at a fixed arrival rate.
#[test]
fn ferry_bench_runs_an_open_loop_at_a_fixed_rate() {
    let stdout = quick_bench(&["--rate", "400", "--only", "B1", "--no-rss", "--no-redis"]);
    assert!(
        stdout.contains("open loop at 400 req/s (latency from each request's intended send time)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("B1 hit, RS256, fresh token, memory"),
        "{stdout}"
    );
    // The per-scenario open-loop check is for closed-loop runs only.
    assert!(
        !stdout.contains("\nopen loop: a fixed arrival rate"),
        "{stdout}"
    );
    assert!(stdout.contains("\nerrors: 0\n"), "{stdout}");
    // The pooled client has no send schedule: refused with a clear error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-bench"))
        .args([
            "--quick",
            "--rate",
            "400",
            "--generator",
            "hyper",
            "--no-rss",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--rate needs the raw generator"),
        "{out:?}"
    );
}
