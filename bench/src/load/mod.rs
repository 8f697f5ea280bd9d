//! Load generation: what a scenario sends, how long, and the tally of what came back.

pub(crate) mod pooled;
pub(crate) mod raw;

use crate::cpu::*;
use crate::load::pooled::*;
use crate::load::raw::*;
use crate::*;
use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Default, Clone)]
pub(crate) struct Tally {
    /// Each answered request's latency, from just before its write to the end of the
    /// generator's read of the response.
    pub(crate) latencies_us: Vec<u32>,
    /// The same to the kernel's receive time of the response (raw generator only): the
    /// latency without the generator's own wait for a core once the answer is there.
    pub(crate) arrival_us: Vec<u32>,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    pub(crate) cpu: Duration,
    pub(crate) preempted: u64,
}

impl Tally {
    /// Adds another tally: its samples, errors and times (a connection's tally has no
    /// times; a scenario run's adds to the scenario's).
    pub(crate) fn absorb(&mut self, other: Self) {
        self.latencies_us.extend(other.latencies_us);
        self.arrival_us.extend(other.arrival_us);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.cpu += other.cpu;
        self.preempted += other.preempted;
    }
}

pub(crate) type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

#[derive(Clone)]
pub(crate) enum Load {
    /// GETs of a URL, with these extra header lines (`name: value\r\n` each).
    Get(String, Arc<str>),
    /// POSTs of these bodies in turn. The cursor belongs to the scenario, so a later round
    /// goes on where the last stopped instead of presenting the same tokens again.
    Post(String, Arc<Vec<Bytes>>, Arc<AtomicUsize>),
    /// The same over TLS (raw generator only).
    Tls(Box<Load>, Tls),
    /// A POST load with a DPoP proof per request (raw generator only); the proofs' own
    /// cursor, so each is sent once while the set lasts.
    Dpop(Box<Load>, Arc<Vec<Bytes>>, Arc<AtomicUsize>),
}

/// How a TLS load connects.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) config: Arc<rustls::ClientConfig>,
    /// A new connection (a resumed TLS session) for every request, instead of keeping
    /// each connection alive.
    pub(crate) per_request: bool,
}

impl Load {
    pub(crate) fn post(url: String, bodies: Arc<Vec<Bytes>>) -> Self {
        Load::Post(url, bodies, Arc::default())
    }

    pub(crate) fn get(url: String) -> Self {
        Load::Get(url, Arc::from(""))
    }

    /// Its extra header lines (a GET's).
    pub(crate) fn headers(&self) -> &str {
        match self {
            Load::Get(_, headers) => headers,
            Load::Tls(load, _) | Load::Dpop(load, ..) => load.headers(),
            Load::Post(..) => "",
        }
    }

    pub(crate) fn url(&self) -> &str {
        match self {
            Load::Get(url, _) | Load::Post(url, ..) => url,
            Load::Tls(load, _) | Load::Dpop(load, ..) => load.url(),
        }
    }

    /// The load and, for a DPoP one, its proofs and their cursor.
    pub(crate) fn split_dpop(&self) -> (&Load, Option<(&[Bytes], &AtomicUsize)>) {
        match self {
            Load::Dpop(load, proofs, cursor) => (load, Some((proofs, cursor))),
            plain => (plain, None),
        }
    }

    /// The plain load and, for a TLS one, how it connects.
    pub(crate) fn split_tls(&self) -> (&Load, Option<&Tls>) {
        match self {
            Load::Tls(load, tls) => (load, Some(tls)),
            plain => (plain, None),
        }
    }
}

/// The next body of a POST load, wrapping around at the end of its set.
pub(crate) fn next_body<'a>(bodies: &'a [Bytes], cursor: &AtomicUsize) -> Option<&'a Bytes> {
    bodies.get(cursor.fetch_add(1, Ordering::Relaxed) % bodies.len().max(1))
}

/// How a scenario's requests are sent.
#[derive(Clone)]
pub(crate) struct Driver {
    pub(crate) generator: Generator,
    pub(crate) client: Client,
    pub(crate) scheduling: LoadScheduling,
}

/// How much load: over how many connections, for how long; a closed loop (each
/// connection sends when its last answer is in), or with a `rate`, an open loop at that
/// many requests per second (the raw generator only; the caller checks).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
    pub(crate) rate: Option<f64>,
}

/// Runs `load` as `shape` says.
pub(crate) async fn drive(driver: &Driver, load: &Load, shape: Shape) -> Tally {
    let Shape {
        connections,
        duration,
        ..
    } = shape;
    match driver.generator {
        Generator::Raw => {
            let (driver, load) = (driver.clone(), load.clone());
            tokio::task::spawn_blocking(move || drive_raw(&driver, &load, shape))
                .await
                .unwrap_or_else(|_| Tally {
                    errors: 1,
                    ..Tally::default()
                })
        }
        Generator::Hyper => drive_hyper(&driver.client, load, connections, duration).await,
    }
}

/// Sums the per-connection tallies of a scenario run.
pub(crate) async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    started: Instant,
    cpu0: Duration,
    preempted0: u64,
) -> Tally {
    let mut total = Tally::default();
    for task in tasks {
        if let Ok(t) = task.await {
            total.absorb(t);
        }
    }
    finish(total, started, cpu0, preempted0)
}

/// A scenario run's tally with its wall time, and Ferry's CPU and preemptions since
/// `cpu0`/`preempted0` were read.
pub(crate) fn finish(mut total: Tally, started: Instant, cpu0: Duration, preempted0: u64) -> Tally {
    total.elapsed = started.elapsed();
    let (cpu1, preempted1) = ferry_threads();
    total.cpu = cpu1.saturating_sub(cpu0);
    total.preempted = preempted1.saturating_sub(preempted0);
    total
}

pub(crate) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a sorted sample"
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted.get(i).copied().unwrap_or(0)) / 1000.0
}
