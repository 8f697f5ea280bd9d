//! A replica's local copy of the shared revocation list, with a near cache of
//! credentials in front of the shared store (Redis).
//!
//! Without it every exchange makes one Redis round trip (revocation check + cache read).
//! With it, an exchange whose credential this replica already holds makes none — but only
//! while the copy is provably recent: a background task (in `redis.rs`) keeps the copy
//! current from a subscription and proves, by a heartbeat it publishes to itself through
//! the same server, that every revocation committed up to the heartbeat's send time has
//! been applied. When no heartbeat has come back within `max_lag`, the copy is not used
//! and each exchange asks Redis again, which fails closed when Redis is down.
//!
//! So a revocation made on another replica takes effect here within `max_lag` at worst
//! (in practice within the subscription's delivery time, well under a millisecond on a
//! LAN), and at once on the replica that made it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_provider_api::Credential;

use crate::store::memory::MemoryStore;
use crate::store::{
    CacheKey, Cacheable, CredentialCache as _, Revocation, RevocationList as _, StoreError,
};

/// The local copy and how recent it is.
pub struct Mirror {
    max_lag: Duration,
    max_entries: u64,
    /// Instants are kept as nanoseconds after `base`, so they fit an atomic.
    base: Instant,
    /// When the last heartbeat that came back was sent (+1; 0 = not current).
    current_as_of: AtomicU64,
    /// Revocations and near-cached credentials: a memory store, replaced whole when the
    /// subscription is (re)made so nothing from before a gap survives it.
    local: arc_swap::ArcSwap<MemoryStore>,
    /// Bumped by every applied revocation and every reset, under `changing`.
    generation: AtomicU64,
    /// Held while the copy changes and while a credential read from Redis is added, so
    /// that one read before a revocation is never added after it (see [`Mirror::fill`]).
    changing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("max_lag", &self.max_lag)
            .field("current", &self.is_current())
            .finish_non_exhaustive()
    }
}

impl Mirror {
    /// An empty copy, not current until [`reset`](Self::reset) and a heartbeat.
    pub fn new(max_lag: Duration, max_entries: u64) -> Self {
        Self {
            max_lag,
            max_entries,
            base: Instant::now(),
            current_as_of: AtomicU64::new(0),
            local: arc_swap::ArcSwap::from_pointee(MemoryStore::new(max_entries)),
            generation: AtomicU64::new(0),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// How old the copy may be and still be used.
    pub fn max_lag(&self) -> Duration {
        self.max_lag
    }

    /// How often the background task should send a heartbeat.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.max_lag / 4).max(Duration::from_millis(5))
    }

    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// The heartbeat payload for a send at `at`.
    pub fn heartbeat(&self, at: Instant) -> u64 {
        self.stamp(at)
    }

    /// A heartbeat sent with payload `sent` came back: everything committed before it was
    /// sent has been applied.
    pub fn heartbeat_returned(&self, sent: u64) {
        self.current_as_of.fetch_max(sent, Ordering::AcqRel);
    }

    /// Whether the copy may be used at `now`.
    pub fn is_current_at(&self, now: Instant) -> bool {
        let as_of = self.current_as_of.load(Ordering::Acquire);
        as_of != 0
            && self.stamp(now).saturating_sub(as_of)
                <= u64::try_from(self.max_lag.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the copy may be used now.
    pub fn is_current(&self) -> bool {
        self.is_current_at(Instant::now())
    }

    /// How long ago the last returned heartbeat was sent (`None`: none since the last reset).
    pub fn lag_at(&self, now: Instant) -> Option<Duration> {
        match self.current_as_of.load(Ordering::Acquire) {
            0 => None,
            as_of => Some(Duration::from_nanos(self.stamp(now).saturating_sub(as_of))),
        }
    }

    /// The subscription is gone: stop using the copy at once.
    pub fn lose(&self) {
        self.current_as_of.store(0, Ordering::Release);
    }

    /// A new subscription: start again from `all` (read after subscribing), with an empty
    /// near cache. The copy becomes current with the first heartbeat that comes back.
    pub async fn reset(&self, all: &[Revocation]) {
        let _changing = self.changing.lock().await;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.lose();
        let fresh = MemoryStore::new(self.max_entries);
        for revocation in all {
            // A memory store's revoke cannot fail; a failure would only leave it out of a
            // copy that is not current yet, and the next reset tries again.
            if fresh.revoke(revocation).await.is_err() {
                tracing::warn!("revocation mirror: could not record a revocation");
            }
        }
        self.local.store(Arc::new(fresh));
    }

    /// A revocation (made here or announced by another replica): record it and drop the
    /// near-cached credentials it covers.
    pub async fn apply(&self, revocation: &Revocation) {
        let _changing = self.changing.lock().await;
        self.generation.fetch_add(1, Ordering::AcqRel);
        let local = self.local.load_full();
        if local.revoke(revocation).await.is_err() {
            // Cannot happen with a memory store; if it did, stop trusting the copy.
            self.lose();
        }
    }

    /// The first live revocation among `fields`, from the copy. An error means the copy
    /// cannot answer (it is then no longer current): ask Redis, never take it as a no.
    pub async fn revoked(
        &self,
        fields: &[String],
        now: i64,
    ) -> Result<Option<Revocation>, StoreError> {
        let answer = self.local.load().revoked(fields, now).await;
        if answer.is_err() {
            self.lose();
        }
        answer
    }

    /// A near-cached credential.
    pub async fn get(&self, key: &CacheKey) -> Option<Credential> {
        self.local.load().get_credential(key).await.ok().flatten()
    }

    /// The copy's generation: read it before reading a credential from Redis, and pass
    /// it to [`fill`](Self::fill).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps a credential read from Redis near, unless the copy changed since
    /// `generation` was read: a revocation applied in between may have purged it from
    /// Redis after the read (a revoked Ferry token's `jti` is not among the request's
    /// fields, so only the purge keeps it from being served).
    pub async fn fill(&self, generation: u64, key: &CacheKey, entry: Cacheable<'_>) {
        let _changing = self.changing.lock().await;
        if self.generation() == generation {
            // A memory store's put cannot fail; a miss next time is the only cost.
            let _ = self.put(key, entry).await;
        }
    }

    /// Keeps a credential this replica just minted near.
    pub async fn put(&self, key: &CacheKey, entry: Cacheable<'_>) -> Result<(), StoreError> {
        self.local.load().put_credential(key, entry).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RevocationTarget;
    use ferry_provider_api::Secret;

    fn credential(expires_at: i64) -> Credential {
        Credential {
            access_token: Secret::new("t"),
            issued_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            token_type: "Bearer".into(),
            expires_at,
            fields: Default::default(),
            upstream_request_id: None,
            token_id: None,
        }
    }

    fn revocation(subject: &str, expires_at: i64) -> Revocation {
        Revocation {
            target: RevocationTarget::Subject {
                subject: subject.into(),
            },
            reason: None,
            created_at: 0,
            expires_at,
        }
    }

    #[test]
    fn the_copy_is_current_only_within_max_lag_of_a_returned_heartbeat() {
        let m = Mirror::new(Duration::from_millis(200), 10);
        let t0 = m.base + Duration::from_secs(5);
        assert!(!m.is_current_at(t0), "not current before any heartbeat");
        assert_eq!(m.lag_at(t0), None);
        m.heartbeat_returned(m.heartbeat(t0));
        assert!(m.is_current_at(t0 + Duration::from_millis(200)));
        assert!(!m.is_current_at(t0 + Duration::from_millis(201)));
        assert_eq!(
            m.lag_at(t0 + Duration::from_millis(50)),
            Some(Duration::from_millis(50))
        );
        // An older heartbeat arriving late does not move the bound back.
        m.heartbeat_returned(m.heartbeat(t0 - Duration::from_secs(1)));
        assert!(m.is_current_at(t0 + Duration::from_millis(150)));
        m.lose();
        assert!(!m.is_current_at(t0), "a lost subscription is not current");
        assert_eq!(m.heartbeat_interval(), Duration::from_millis(50));
    }

    #[tokio::test]
    async fn revocations_apply_and_purge_and_a_reset_forgets_the_near_cache()
    -> Result<(), StoreError> {
        let m = Mirror::new(Duration::from_secs(1), 10);
        let key = CacheKey::from_parts(["k"]);
        let covered = [RevocationTarget::subject_field("repo:a")];
        m.put(
            &key,
            Cacheable::new(&credential(500), Duration::from_secs(60), &covered),
        )
        .await?;
        assert!(m.get(&key).await.is_some());
        assert!(m.revoked(&covered, 10).await?.is_none());
        m.apply(&revocation("repo:a", 100)).await;
        assert!(m.get(&key).await.is_none(), "the near copy was purged");
        assert!(m.revoked(&covered, 10).await?.is_some());
        assert!(m.revoked(&covered, 100).await?.is_none(), "expired");

        m.put(
            &key,
            Cacheable::new(&credential(500), Duration::from_secs(60), &[]),
        )
        .await?;
        let before = m.generation();
        m.reset(&[revocation("repo:b", 100)]).await;
        m.fill(
            before,
            &key,
            Cacheable::new(&credential(500), Duration::from_secs(60), &[]),
        )
        .await;
        assert!(
            m.get(&key).await.is_none(),
            "a read from before a change is not added after it"
        );
        m.fill(
            m.generation(),
            &key,
            Cacheable::new(&credential(500), Duration::from_secs(60), &[]),
        )
        .await;
        assert!(m.get(&key).await.is_some());
        m.reset(&[revocation("repo:b", 100)]).await;
        assert!(m.get(&key).await.is_none(), "nothing survives a reset");
        assert!(m.revoked(&covered, 10).await?.is_none());
        assert!(
            m.revoked(&[RevocationTarget::subject_field("repo:b")], 10)
                .await?
                .is_some(),
            "the list read after subscribing is the copy"
        );
        Ok(())
    }
}
