//! The agent's credentials: each fetched from Ferry ahead of need, refreshed at about
//! two-thirds of its lifetime (and before the SDK that reads it would refresh it
//! itself), one exchange for identical concurrent requests, the still-valid credential
//! served while a refresh fails (retried with backoff), and an expired one never.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::client::{self, Client, Subject};

/// A credential closer than this to its expiry is not served (the caller's clock and
/// the time to use it).
pub const SERVE_MARGIN: Duration = Duration::from_secs(5);
/// Refresh at least this long before the reading SDK's own refresh threshold.
const THRESHOLD_MARGIN: Duration = Duration::from_secs(60);
/// The longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How many distinct credentials (target, resource, scopes) the agent holds; beyond
/// it a new one is refused, not an old one dropped.
pub const MAX_SLOTS: usize = 64;

/// When the SDK that reads a credential refreshes it on its own: the AWS SDKs 15 min
/// before expiry (boto3's advisory refresh), google-auth 3 min 45 s, the Azure SDKs
/// 5 min.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reader {
    Aws,
    Google,
    Azure,
}

impl Reader {
    pub fn threshold(self) -> Duration {
        match self {
            Self::Aws => Duration::from_secs(15 * 60),
            Self::Google => Duration::from_secs(225),
            Self::Azure => Duration::from_secs(5 * 60),
        }
    }
}

/// What is asked of Ferry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub reader: Reader,
    /// A target id (`audience`).
    pub target: Option<String>,
    /// A resource URI (`resource`: a `jwt` target's audience, for ID tokens).
    pub resource: Option<String>,
    pub scopes: Vec<String>,
}

impl Key {
    /// How the key shows in logs and metrics (no secret in it).
    pub fn label(&self) -> String {
        let what = self
            .target
            .as_deref()
            .or(self.resource.as_deref())
            .unwrap_or("");
        if self.scopes.is_empty() {
            what.to_owned()
        } else {
            format!("{what} [{}]", self.scopes.join(" "))
        }
    }
}

/// A credential from Ferry.
#[derive(Debug)]
pub struct Fresh {
    /// Ferry's token response.
    pub body: Map<String, Value>,
    pub expires_at: SystemTime,
    pub refresh_at: SystemTime,
}

impl Fresh {
    fn servable(&self, now: SystemTime) -> bool {
        now + SERVE_MARGIN < self.expires_at
    }
}

/// Why no credential can be served.
#[derive(Debug, Clone)]
pub enum Unavailable {
    /// Ferry refused (a policy denial, an unknown target): not worth an immediate retry.
    Refused(String),
    /// Ferry could not be reached or failed; retrying.
    Failed(String),
    /// The agent holds [`MAX_SLOTS`] credentials already.
    Full,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(e) | Self::Failed(e) => f.write_str(e),
            Self::Full => write!(
                f,
                "the agent already holds {MAX_SLOTS} different credentials; it refuses more rather than drop one"
            ),
        }
    }
}

#[derive(Debug, Default)]
struct Attempts {
    failures: u32,
    /// No new attempt on the request path before this (a refresh already failed).
    not_before: Option<SystemTime>,
    last_error: Option<Unavailable>,
    /// A refresher task runs for this slot.
    refreshing: bool,
}

#[derive(Debug)]
struct Slot {
    key: Key,
    /// Kept fresh from start-up, read or not.
    pinned: bool,
    current: RwLock<Option<Arc<Fresh>>>,
    /// Read since the last fetch (an unpinned slot nobody reads stops refreshing).
    read: std::sync::atomic::AtomicBool,
    /// Held while fetching: identical concurrent requests wait for one exchange.
    flight: tokio::sync::Mutex<Attempts>,
}

impl Slot {
    fn current(&self) -> Option<Arc<Fresh>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Counts for `/metrics`.
#[derive(Debug, Default)]
pub struct Counts {
    pub refresh_ok: std::sync::atomic::AtomicU64,
    pub refresh_failed: std::sync::atomic::AtomicU64,
}

/// The agent's credentials.
#[derive(Debug)]
pub struct Credentials {
    client: Client,
    subject: Subject,
    timeout: Duration,
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    pub counts: Counts,
}

/// One credential's state, for `/healthz` and `/metrics`.
#[derive(Debug)]
pub struct SlotStatus {
    pub label: String,
    pub pinned: bool,
    pub expires_at: Option<SystemTime>,
    pub last_error: Option<String>,
}

impl Credentials {
    pub fn new(client: Client, subject: Subject, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            client,
            subject,
            timeout,
            slots: Mutex::default(),
            counts: Counts::default(),
        })
    }

    /// Starts keeping `key` fresh, read or not (the configured targets, at start-up).
    pub fn pin(self: &Arc<Self>, key: Key) {
        if let Ok(slot) = self.slot(&key, true)
            && let Ok(mut attempts) = slot.flight.try_lock()
            && !attempts.refreshing
        {
            attempts.refreshing = true;
            tokio::spawn(Arc::clone(self).refresher(Arc::clone(&slot), SystemTime::now()));
        }
    }

    fn slot(&self, key: &Key, pinned: bool) -> Result<Arc<Slot>, Unavailable> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = slots.get(key) {
            return Ok(Arc::clone(s));
        }
        if slots.len() >= MAX_SLOTS {
            return Err(Unavailable::Full);
        }
        let slot = Arc::new(Slot {
            key: key.clone(),
            pinned,
            current: RwLock::new(None),
            read: std::sync::atomic::AtomicBool::new(false),
            flight: tokio::sync::Mutex::new(Attempts::default()),
        });
        slots.insert(key.clone(), Arc::clone(&slot));
        Ok(slot)
    }

    /// A servable credential for `key`: the held one, or one exchanged now (once, for
    /// every concurrent caller).
    pub async fn get(self: &Arc<Self>, key: &Key) -> Result<Arc<Fresh>, Unavailable> {
        let slot = self.slot(key, false)?;
        slot.read.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(c) = slot.current().filter(|c| c.servable(SystemTime::now())) {
            return Ok(c);
        }
        let mut attempts = slot.flight.lock().await;
        let now = SystemTime::now();
        // Another caller fetched it while this one waited.
        if let Some(c) = slot.current().filter(|c| c.servable(now)) {
            return Ok(c);
        }
        if let (Some(until), Some(err)) = (attempts.not_before, &attempts.last_error)
            && now < until
        {
            return Err(err.clone());
        }
        let result = self.fetch(&slot, &mut attempts).await;
        if result.is_ok() && !attempts.refreshing {
            attempts.refreshing = true;
            tokio::spawn(Arc::clone(self).refresher(Arc::clone(&slot), SystemTime::now()));
        }
        result
    }

    /// One exchange for the slot; records the outcome.
    async fn fetch(&self, slot: &Slot, attempts: &mut Attempts) -> Result<Arc<Fresh>, Unavailable> {
        use std::sync::atomic::Ordering::Relaxed;
        let key = &slot.key;
        let outcome: Result<Fresh, Unavailable> = async {
            let token = self
                .subject
                .token(self.timeout)
                .await
                .map_err(|e| Unavailable::Failed(format!("the workload's token: {e:#}")))?;
            let request = client::Request {
                token_type: client::JWT_TOKEN_TYPE,
                audience: key.target.as_deref(),
                resource: key.resource.as_deref(),
                scopes: &key.scopes,
            };
            let body = self
                .client
                .exchange(&token, &request, 0, |_, _| {})
                .await
                .map_err(|e| {
                    let text = format!("{e:#}");
                    if text.starts_with("Ferry refused")
                        && !text.contains("temporarily_unavailable")
                    {
                        Unavailable::Refused(text)
                    } else {
                        Unavailable::Failed(text)
                    }
                })?;
            let fetched = SystemTime::now();
            let expires_at = expiry(&body, fetched)
                .ok_or_else(|| Unavailable::Failed("Ferry's answer has no expires_in".into()))?;
            Ok(Fresh {
                body,
                expires_at,
                refresh_at: refresh_at(fetched, expires_at, key.reader.threshold()),
            })
        }
        .await;
        slot.read.store(false, Relaxed);
        match outcome {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                *slot
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&fresh));
                attempts.failures = 0;
                attempts.not_before = None;
                attempts.last_error = None;
                self.counts.refresh_ok.fetch_add(1, Relaxed);
                let left = fresh
                    .expires_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tracing::info!(credential = %key.label(), expires_in_s = left.as_secs(), "credential fetched from Ferry");
                Ok(fresh)
            }
            Err(e) => {
                attempts.failures = attempts.failures.saturating_add(1);
                attempts.not_before = Some(SystemTime::now() + backoff(attempts.failures));
                attempts.last_error = Some(e.clone());
                self.counts.refresh_failed.fetch_add(1, Relaxed);
                let still = slot
                    .current()
                    .is_some_and(|c| c.servable(SystemTime::now()));
                tracing::warn!(credential = %key.label(), failures = attempts.failures, serving_previous = still, error = %e, "cannot fetch the credential from Ferry");
                Err(e)
            }
        }
    }

    /// Keeps one slot fresh until nobody reads it (pinned slots: for ever).
    async fn refresher(self: Arc<Self>, slot: Arc<Slot>, mut next: SystemTime) {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
            let mut attempts = slot.flight.lock().await;
            let now = SystemTime::now();
            let due = slot.current().is_none_or(|c| now >= c.refresh_at);
            if !due {
                next = slot.current().map_or(now, |c| c.refresh_at);
                continue;
            }
            if !slot.pinned && !slot.read.load(Relaxed) {
                attempts.refreshing = false;
                return;
            }
            next = match self.fetch(&slot, &mut attempts).await {
                Ok(fresh) => fresh.refresh_at,
                Err(_) => attempts.not_before.unwrap_or(now + MAX_BACKOFF),
            };
        }
    }

    /// Every credential's state.
    pub fn status(&self) -> Vec<SlotStatus> {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut out: Vec<SlotStatus> = slots
            .iter()
            .map(|s| SlotStatus {
                label: s.key.label(),
                pinned: s.pinned,
                expires_at: s.current().map(|c| c.expires_at),
                last_error: s
                    .flight
                    .try_lock()
                    .ok()
                    .and_then(|a| a.last_error.as_ref().map(ToString::to_string)),
            })
            .collect();
        out.sort_by(|a, b| a.label.cmp(&b.label));
        out
    }
}

/// When Ferry's answer expires: `expires_in` seconds after it was received.
fn expiry(body: &Map<String, Value>, fetched: SystemTime) -> Option<SystemTime> {
    let secs = body.get("expires_in").and_then(Value::as_u64)?;
    Some(fetched + Duration::from_secs(secs))
}

/// When to refresh a credential received at `fetched`: with a third of what it had left
/// still to go, and at least `threshold` (the reading SDK's own refresh point) plus a
/// minute before expiry — unless it is too short for that, when a third is kept.
pub fn refresh_at(fetched: SystemTime, expires_at: SystemTime, threshold: Duration) -> SystemTime {
    let left = expires_at.duration_since(fetched).unwrap_or_default();
    let mut lead = (left / 3).max(threshold + THRESHOLD_MARGIN);
    if lead > left.mul_f64(0.9) {
        lead = left / 3;
    }
    (expires_at - lead).max(fetched + Duration::from_secs(1))
}

/// The wait after `failures` failed attempts: 1 s, 2 s, 4 s, … up to a minute.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60;

    fn at(fetched: u64, expires: u64, reader: Reader) -> u64 {
        let t0 = SystemTime::UNIX_EPOCH;
        refresh_at(
            t0 + Duration::from_secs(fetched),
            t0 + Duration::from_secs(expires),
            reader.threshold(),
        )
        .duration_since(t0)
        .unwrap()
        .as_secs()
    }

    #[test]
    fn refreshes_at_two_thirds_and_before_the_sdk_would() {
        // An hour's AWS credential: at 40 min (20 left, over 15 + 1).
        assert_eq!(at(0, 60 * MIN, Reader::Aws), 40 * MIN);
        // Half an hour: 16 min before expiry, before boto3's 15-minute advisory refresh.
        assert_eq!(at(0, 30 * MIN, Reader::Aws), 14 * MIN);
        // An hour's Google token: at 40 min.
        assert_eq!(at(0, 60 * MIN, Reader::Google), 40 * MIN);
        // A 10-minute ID token: 3 min 45 s + 1 min before expiry.
        assert_eq!(at(0, 10 * MIN, Reader::Google), 10 * MIN - 285);
        // Azure, 10 minutes: 6 min before.
        assert_eq!(at(0, 10 * MIN, Reader::Azure), 4 * MIN);
        // Too short for the SDK's threshold: a third is kept, never a loop.
        assert_eq!(at(0, 15 * MIN, Reader::Aws), 10 * MIN);
        assert_eq!(at(0, 30, Reader::Google), 20);
        assert_eq!(at(100, 101, Reader::Google), 101);
        assert_eq!(at(100, 50, Reader::Google), 101);
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let b: Vec<u64> = (1..=9).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(b, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
