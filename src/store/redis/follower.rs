//! The revocation follower: keeps this replica's local copy of the revocation list
//! (`mirror.rs`) current from the events channel, and proves it current with heartbeats
//! it publishes to itself.

use std::sync::Weak;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::keys::{events_channel, revocations_key};
use super::mirror::Mirror;
use crate::store::Revocation;

/// Keeps `mirror` current for as long as its store lives: subscribe, read the list, then
/// apply what the subscription announces; again after any failure, with back-off. While
/// it is not following, the copy is not current and exchanges ask Redis.
pub(super) async fn follow_revocations(
    url: String,
    timeout: Duration,
    prefix: String,
    mirror: Weak<Mirror>,
) {
    let mut failures: u32 = 0;
    loop {
        let mut followed = false;
        let outcome = follow_once(&url, timeout, &prefix, &mirror, &mut followed).await;
        let Some(m) = mirror.upgrade() else { return };
        m.lose();
        drop(m);
        let Err(e) = outcome else { return };
        if followed {
            failures = 0;
        }
        if failures == 0 {
            tracing::warn!(
                error = %e,
                "revocation mirror stopped following Redis; every exchange asks Redis until it is back"
            );
        } else {
            tracing::debug!(error = %e, "revocation mirror: still not following Redis");
        }
        failures = failures.saturating_add(1);
        let backoff = Duration::from_millis(50).saturating_mul(1 << failures.min(6));
        tokio::time::sleep(backoff.min(Duration::from_secs(2))).await;
    }
}

/// One subscription, until it fails (`Err`) or the store is dropped (`Ok`).
pub(super) async fn follow_once(
    url: &str,
    timeout: Duration,
    prefix: &str,
    mirror: &Weak<Mirror>,
    followed: &mut bool,
) -> Result<(), String> {
    async fn within<T, E: std::fmt::Display>(
        timeout: Duration,
        what: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: timed out")),
        }
    }
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let connect = timeout.saturating_mul(2);
    let mut pubsub = within(connect, "subscribe", client.get_async_pubsub()).await?;
    let events = events_channel(prefix);
    let beats = format!(
        "{prefix}:{{revocations}}:heartbeat:{}",
        uuid::Uuid::new_v4()
    );
    within(timeout, "subscribe", pubsub.subscribe(&events)).await?;
    within(timeout, "subscribe", pubsub.subscribe(&beats)).await?;
    // The sink must live as long as the stream, or the connection closes.
    let (_sink, mut stream) = pubsub.split();
    let mut conn = within(
        connect,
        "connect",
        client.get_multiplexed_async_connection(),
    )
    .await?;
    // Read after subscribing: a revocation committed in between is in both, and applying
    // one twice is harmless.
    let all: Vec<(String, String)> = within(
        timeout,
        "read revocations",
        redis::cmd("HGETALL")
            .arg(revocations_key(prefix))
            .query_async(&mut conn),
    )
    .await?;
    let all: Vec<Revocation> = all
        .iter()
        .filter_map(|(_, v)| serde_json::from_str(v).ok())
        .collect();
    let (interval, max_lag) = {
        let Some(m) = mirror.upgrade() else {
            return Ok(());
        };
        m.reset(&all).await;
        (m.heartbeat_interval(), m.max_lag())
    };
    // Heartbeats that stop coming back mean a stalled connection: make a new one.
    let stalled_after = max_lag.saturating_mul(4).max(timeout.saturating_mul(2));
    let mut last_returned = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Err("the subscription closed".into());
                };
                let Some(m) = mirror.upgrade() else {
                    return Ok(());
                };
                if msg.get_channel_name() == events {
                    match serde_json::from_slice::<Revocation>(msg.get_payload_bytes()) {
                        Ok(r) => m.apply(&r).await,
                        // Not ours to judge: a record we cannot read is still in the hash,
                        // and the direct check would read it the same way (as no record).
                        Err(_) => tracing::warn!("revocation mirror: unreadable announcement ignored"),
                    }
                } else if msg.get_channel_name() == beats
                    && let Some(sent) = std::str::from_utf8(msg.get_payload_bytes())
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                {
                    m.heartbeat_returned(sent);
                    last_returned = Instant::now();
                    if !*followed {
                        *followed = true;
                        tracing::info!("revocation mirror is following Redis");
                    }
                }
            }
            _ = tick.tick() => {
                let Some(m) = mirror.upgrade() else {
                    return Ok(());
                };
                if last_returned.elapsed() > stalled_after {
                    return Err("heartbeats stopped coming back".into());
                }
                let sent = m.heartbeat(Instant::now());
                drop(m);
                within(
                    timeout,
                    "heartbeat",
                    redis::cmd("PUBLISH").arg(&beats).arg(sent).query_async::<i64>(&mut conn),
                )
                .await?;
            }
        }
    }
}
