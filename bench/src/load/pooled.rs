//! The pooled generator: hyper-util's client with its connection pool.

use crate::cpu::*;
use crate::load::*;
use crate::setup::*;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use std::time::{Duration, Instant};

/// The hyper generator.
pub(crate) async fn drive_hyper(
    client: &Client,
    load: &Load,
    connections: usize,
    duration: Duration,
) -> Tally {
    let deadline = Instant::now() + duration;
    let (cpu0, preempted0) = ferry_threads();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client = client.clone();
        let load = load.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while Instant::now() < deadline {
                let req = match &load {
                    Load::Get(url, headers) => {
                        let mut req = hyper::Request::get(url.as_str());
                        for line in headers.lines() {
                            if let Some((name, value)) = line.split_once(':') {
                                req = req.header(name.trim(), value.trim());
                            }
                        }
                        req.body(Full::new(Bytes::new()))
                    }
                    Load::Post(url, bodies, cursor) => form_request(
                        url.as_str(),
                        next_body(bodies, cursor).cloned().unwrap_or_default(),
                    ),
                    // The pooled client speaks plain HTTP only (main skips TLS scenarios).
                    Load::Tls(..) | Load::Dpop(..) => {
                        t.errors += 1;
                        break;
                    }
                };
                let Ok(req) = req else {
                    t.errors += 1;
                    continue;
                };
                let sent = Instant::now();
                let ok = match client.request(req).await {
                    Ok(res) => {
                        let good = res.status().is_success();
                        good && res.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                let us = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                if ok {
                    t.latencies_us.push(us);
                } else {
                    t.errors += 1;
                }
            }
            t
        }));
    }
    collect(tasks, started, cpu0, preempted0).await
}
