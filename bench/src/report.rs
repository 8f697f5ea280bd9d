//! The report: per-scenario rows, reuse of tokens and identities, and the goals.

use crate::load::*;
use crate::rss::*;
use crate::setup::*;

pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) rps: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    /// p99 to the kernel's receive time, and the mean wait between that and the read
    /// (ms); `None` when the generator had no receive times (the hyper client).
    pub(crate) arrival: Option<(f64, f64)>,
    pub(crate) errors: u64,
    pub(crate) cpu_us: f64,
    pub(crate) preempted: f64,
}

#[expect(clippy::cast_precision_loss, reason = "counts to rates")]
pub(crate) fn summarize(name: &str, t: &mut Tally) -> Row {
    t.latencies_us.sort_unstable();
    t.arrival_us.sort_unstable();
    let n = t.latencies_us.len() as f64;
    let mean_ms =
        |v: &[u32]| v.iter().map(|&us| f64::from(us)).sum::<f64>() / 1e3 / v.len().max(1) as f64;
    let arrival = (!t.arrival_us.is_empty()).then(|| {
        (
            percentile(&t.arrival_us, 0.99),
            mean_ms(&t.latencies_us) - mean_ms(&t.arrival_us),
        )
    });
    Row {
        name: name.to_owned(),
        rps: n / t.elapsed.as_secs_f64().max(1e-9),
        p50: percentile(&t.latencies_us, 0.5),
        p99: percentile(&t.latencies_us, 0.99),
        p999: percentile(&t.latencies_us, 0.999),
        arrival,
        errors: t.errors,
        cpu_us: t.cpu.as_secs_f64() * 1e6 / (n + t.errors as f64).max(1.0),
        preempted: t.preempted as f64 / (n + t.errors as f64).max(1.0),
    }
}

/// How fresh the fresh-token and miss scenarios really were: a token set that wrapped
/// around came again, so Ferry may have remembered its signature, and a "miss" may have
/// found its identity's credential cached.
#[expect(clippy::cast_precision_loss, reason = "counts to shares")]
pub(crate) fn print_reuse(scenarios: &[(&str, &Server, Load)], tallies: &[Tally], reuse: &[Reuse]) {
    let share = |part: u64, whole: u64| 100.0 * part as f64 / whole.max(1) as f64;
    let mut remembered = Vec::new();
    let mut upstream = Vec::new();
    for (((name, _, load), t), r) in scenarios.iter().zip(tallies).zip(reuse) {
        let label = name.get(..2).unwrap_or_default();
        // A set of tokens (not one presented again): each should be new to Ferry.
        if matches!(load, Load::Post(_, bodies, _) if bodies.len() > 1) {
            remembered.push(format!(
                "{label} {:.1} %",
                share(r.remembered, r.verified + r.remembered)
            ));
        }
        if name.starts_with('D') {
            let requests = t.latencies_us.len() as u64 + t.errors;
            upstream.push(format!(
                "{label} {:.1} %",
                share(r.upstream_calls, requests)
            ));
        }
    }
    if !remembered.is_empty() {
        println!(
            "signatures remembered from an earlier verify of the same token (0 %: every request \
             verified one): {}",
            remembered.join(", ")
        );
    }
    if !upstream.is_empty() {
        println!(
            "requests that called the upstream (100 %: every request a miss): {}",
            upstream.join(", ")
        );
    }
}

/// The reference host the goals were set on: a bare axum server answered ≈ 95–100k
/// requests/s there (wrk, 64 connections), the middle of which is taken here.
pub(crate) const REFERENCE_BARE_RPS: f64 = 97_500.0;

/// One P-256 (ES256) signature verify on the reference host.
pub(crate) const REFERENCE_P256_VERIFY_US: f64 = 68.0;

/// The performance goals (BENCHMARKS.md) against this run's figures: reported, never
/// asserted (the machine's speed is not the code's).
pub(crate) fn print_goals(
    rows: &[Row],
    (a_rps, a_cpu): (f64, f64),
    (rs_verify, es_verify): (f64, f64),
    redis_rtt: Option<f64>,
    rss: Option<&RssReport>,
    quick: bool,
    connections: usize,
) {
    let row = |prefix: &str| rows.iter().find(|r| r.name.starts_with(prefix));
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "\ngoals (this run; reported, not asserted){}:",
        if quick {
            "; --quick runs are too short to judge them"
        } else {
            ""
        }
    );
    // The p99 and throughput goals are absolute, and this VM's speed varies from day to
    // day: set its speed against the reference host's, so a reader can tell a faster
    // host from faster code.
    println!(
        "  this host against the reference host (a bare server ≈ {REFERENCE_BARE_RPS:.0} req/s, \
         one P-256 verify ≈ {REFERENCE_P256_VERIFY_US:.0} µs): A {:.2} × its throughput, \
         ES256 verify {:.2} × its time",
        a_rps / REFERENCE_BARE_RPS,
        es_verify / REFERENCE_P256_VERIFY_US
    );
    if let Some(rtt) = redis_rtt {
        println!("  one Redis round trip from this process (GET of 1 000 bytes): {rtt:.1} µs");
    }
    for (prefix, rtt) in [("B1", Some(0.0)), ("C1", redis_rtt)] {
        if let (Some(r), Some(rtt)) = (row(prefix), rtt) {
            let budget = 1.5 * (a_cpu + rs_verify + rtt);
            println!(
                "  {prefix} CPU per fresh-token hit {:.1} µs vs 1.5 × (A {a_cpu:.1} + verify {rs_verify:.1}{}) = {budget:.1} µs: {:.2} × budget, {}",
                r.cpu_us,
                if rtt > 0.0 {
                    format!(" + Redis {rtt:.1}")
                } else {
                    String::new()
                },
                r.cpu_us / budget.max(1e-9),
                verdict(r.cpu_us <= budget)
            );
            println!(
                "  {prefix} RS256 fresh tokens ≥ 20 000/s: {:.0}/s, {}",
                r.rps,
                verdict(r.rps >= 20_000.0)
            );
        }
    }
    for (prefix, what, goal) in [
        ("B6", "a DPoP-bound exchange", 1.5),
        ("T1", "TLS with connection reuse", 1.10),
    ] {
        if let (Some(b1), Some(r)) = (row("B1"), row(prefix)) {
            let ratio = r.cpu_us / b1.cpu_us.max(1e-9);
            println!(
                "  {prefix} {what} ≤ {goal:.2} × B1's CPU per exchange: {:.1} vs {:.1} µs, {ratio:.2} ×, {}",
                r.cpu_us,
                b1.cpu_us,
                verdict(ratio <= goal)
            );
        }
    }
    if let (Some(b1), Some(t2)) = (row("B1"), row("T2")) {
        println!(
            "    (T2, a resumed TLS session per request: {:.1} µs, {:.2} × B1, for comparison)",
            t2.cpu_us,
            t2.cpu_us / b1.cpu_us.max(1e-9)
        );
    }
    if let Some(g1) = row("G1") {
        println!(
            "  (G1, the agent's cached answer, saturated: {:.0} req/s, {:.2} × A, CPU {:.1} µs/req; its p99 goal is judged in the open loop below)",
            g1.rps,
            g1.rps / a_rps.max(1e-9),
            g1.cpu_us
        );
    }
    for prefix in ["B3", "B4", "C3"] {
        if let Some(r) = row(prefix) {
            let ratio = r.rps / a_rps.max(1e-9);
            println!(
                "  {prefix} same token again ≥ 0.50 × A: {ratio:.2} × A, {}",
                verdict(ratio >= 0.5)
            );
        }
    }
    if let Some(r) = row("C4") {
        println!(
            "  (C4, the Redis store with no local revocation copy: {:.2} × A, for comparison)",
            r.rps / a_rps.max(1e-9)
        );
    }
    if let Some(worst) = rows
        .iter()
        .filter(|r| r.name.starts_with(['B', 'C']))
        .max_by(|a, b| a.p99.total_cmp(&b.p99))
    {
        println!(
            "  p99 < 5 ms at this concurrency (cache hits, B and C): worst {:.2} ms ({}), {} \
             (A, the bare baseline on the same machine: p99 {:.2} ms)",
            worst.p99,
            worst.name.get(..2).unwrap_or_default(),
            verdict(worst.p99 < 5.0),
            row("A").map_or(0.0, |a| a.p99)
        );
        // In a closed loop the mean latency is fixed by the throughput (Little's law), and
        // the tail's distance from it is the scheduling of the shared cores: the same
        // ratio for A says how much of a p99 is the code's.
        #[expect(clippy::cast_precision_loss, reason = "a connection count")]
        let mean_ms = |r: &Row| connections as f64 * 1e3 / r.rps.max(1e-9);
        let a_ratio = row("A").map_or(0.0, |a| a.p99 / mean_ms(a));
        println!(
            "    its mean latency by Little's law ({connections} connections / {:.0} req/s): \
             {:.2} ms, p99 {:.1} × that (A's p99: {a_ratio:.1} × its mean)",
            worst.rps,
            mean_ms(worst),
            worst.p99 / mean_ms(worst)
        );
        // The generator shares the cores: an answer can sit in its socket until its
        // thread gets one. The kernel's receive time shows what Ferry delivered.
        if let Some((arrival_p99, unread)) = worst.arrival {
            println!(
                "    at the kernel's receive time of each response (without the generator's own \
                 wait for a core): p99 {arrival_p99:.2} ms; answers waited {unread:.2} ms on \
                 average to be read (this measure is not the goal's)"
            );
        }
    }
    if let Some(r) = rss {
        #[expect(clippy::cast_precision_loss, reason = "sizes to MB")]
        let mb = r.full_kib as f64 * 1024.0 / 1e6;
        println!(
            "  RSS < 100 MB with {} cached credentials: {mb:.1} MB, {}",
            r.count,
            verdict(mb < 100.0)
        );
    }
}
