//! The in-process store: one process only. Bounded caches with per-entry expiry; the same
//! semantics as Redis for a single replica.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_provider_api::Credential;

use super::{
    CacheKey, Cacheable, CredentialCache, RateDecision, RateLimiter, RateResult, ReplayRecord,
    Revocation, RevocationList, Store, StoreError, Stored, Window,
};

/// A record that must not forget: entries live until their own expiry, and a record that
/// is full of live entries refuses a new one (the caller fails closed) instead of
/// dropping an old one. Used for single-use token ids, upstream denials and rate-limit
/// windows — each of which, forgotten early, would let through what it exists to stop.
struct Record<V> {
    name: &'static str,
    map: HashMap<String, (V, Instant)>,
    capacity: usize,
    last_sweep: Option<Instant>,
}

impl<V> Record<V> {
    fn new(name: &'static str, capacity: u64) -> Self {
        Self {
            name,
            map: HashMap::new(),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
            last_sweep: None,
        }
    }

    /// The live value under `key`.
    fn get(&self, key: &str, now: Instant) -> Option<&V> {
        self.map
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v)
    }

    /// Room for `key`: expired entries are swept (every 30 s, or at most once a second
    /// while full, so a full record does not cost a scan per request); if it is still
    /// full of live entries, the record refuses.
    fn make_room(&mut self, key: &str, now: Instant) -> Result<(), StoreError> {
        let since = self.last_sweep.map(|t| now.saturating_duration_since(t));
        let full = self.map.len() >= self.capacity;
        if since
            .is_none_or(|d| d >= Duration::from_secs(30) || (full && d >= Duration::from_secs(1)))
        {
            self.map.retain(|_, (_, until)| *until > now);
            self.last_sweep = Some(now);
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(key) {
            return Err(StoreError::Unavailable(format!(
                "the {} record is full ({} live entries)",
                self.name, self.capacity
            )));
        }
        Ok(())
    }

    /// Stores `value` under `key` until `until`, or refuses when full.
    fn insert(&mut self, key: &str, value: V, until: Instant) -> Result<(), StoreError> {
        self.make_room(key, Instant::now())?;
        self.map.insert(key.to_owned(), (value, until));
        Ok(())
    }
}

struct Shared {
    revocations: HashMap<String, Revocation>,
    /// When `revocations` is next swept of expired entries (Unix seconds).
    next_sweep: i64,
    locks: HashMap<String, (String, Instant)>,
    /// Rate-limit windows: bucket → (window start, count).
    windows: Record<(i64, u64)>,
    /// Used single-use token ids.
    seen: Record<()>,
    /// Upstream denials: cache key → error code.
    denials: Record<String>,
    /// Each token's first client address.
    clients: Record<String>,
}

/// Cached credentials: sharded maps from the binary cache key to a packed entry
/// (`packed.rs`: one allocation, base64 kept decoded, the covering revocation fields as
/// 8-byte hashes). Expired entries are dropped when read and swept on insert; a full
/// shard drops expired entries first, then an arbitrary one.
struct Credentials {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<[u8; 32], Packed>,
    last_sweep: Option<Instant>,
}

/// Every lock in the memory store: a poisoned lock (a panic while it was held) makes the
/// store unavailable — the caller answers 503 — rather than trusting half-written state.
fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, StoreError> {
    m.lock()
        .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))
}

struct Packed {
    until: Instant,
    bytes: Box<[u8]>,
}

impl Credentials {
    fn new(max_entries: u64) -> Self {
        let max = usize::try_from(max_entries).unwrap_or(usize::MAX).max(1);
        // Sharding spreads lock contention; small caches keep one shard so the bound is
        // exact.
        let shards = if max >= 4096 { 16 } else { 1 };
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: max / shards,
        }
    }

    fn shard(&self, key: &[u8; 32]) -> Result<std::sync::MutexGuard<'_, Shard>, StoreError> {
        let i = usize::from(key.first().copied().unwrap_or(0)) % self.shards.len().max(1);
        lock(
            self.shards
                .get(i)
                .ok_or_else(|| StoreError::Unavailable("memory store shard missing".into()))?,
        )
    }

    fn get(&self, key: &[u8; 32]) -> Result<Option<Credential>, StoreError> {
        let mut shard = self.shard(key)?;
        let now = Instant::now();
        match shard.map.get(key) {
            Some(p) if p.until > now => Ok(super::packed::unpack(&p.bytes)),
            Some(_) => {
                shard.map.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn insert(&self, key: [u8; 32], bytes: Box<[u8]>, ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut shard = self.shard(&key)?;
        // Expired entries are swept every 30 s, or — when the shard is full — at most once
        // a second: a full shard of live entries must not cost a scan on every insert.
        let since = shard.last_sweep.map(|t| now.saturating_duration_since(t));
        let full = shard.map.len() >= self.per_shard;
        if since
            .is_none_or(|d| d >= Duration::from_secs(30) || (full && d >= Duration::from_secs(1)))
        {
            shard.map.retain(|_, p| p.until > now);
            shard.last_sweep = Some(now);
        }
        while shard.map.len() >= self.per_shard && !shard.map.contains_key(&key) {
            let Some(victim) = shard.map.keys().next().copied() else {
                break;
            };
            shard.map.remove(&victim);
        }
        shard.map.insert(
            key,
            Packed {
                until: now + ttl,
                bytes,
            },
        );
        Ok(())
    }

    /// Drops every entry covered by the field with this hash; returns how many.
    fn purge(&self, hash: u64) -> Result<usize, StoreError> {
        let mut purged = 0;
        for shard in &self.shards {
            let mut shard = lock(shard)?;
            let before = shard.map.len();
            shard
                .map
                .retain(|_, p| !super::packed::covers(&p.bytes, hash));
            purged += before - shard.map.len();
        }
        Ok(purged)
    }

    fn len(&self) -> usize {
        let now = Instant::now();
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok())
            .map(|s| s.map.values().filter(|p| p.until > now).count())
            .sum()
    }
}

/// The embedded default store (`backend = "memory"`).
pub struct MemoryStore {
    credentials: Credentials,
    shared: Mutex<Shared>,
}

impl MemoryStore {
    /// A store holding at most `max_entries` credentials, as many upstream denials and
    /// rate-limit windows, and ten times as many used single-use token ids. Credentials
    /// are a cache (a full one drops an entry: the next request mints again); the other
    /// three are records that refuse when full ([`Record`]), so the exchange is answered
    /// 503 rather than let a replay, a denied identity or an over-limit client through.
    pub fn new(max_entries: u64) -> Self {
        Self {
            credentials: Credentials::new(max_entries),
            shared: Mutex::new(Shared {
                revocations: HashMap::new(),
                next_sweep: 0,
                locks: HashMap::new(),
                windows: Record::new("rate-limit", max_entries),
                seen: Record::new("single-use token", max_entries.saturating_mul(10)),
                denials: Record::new("upstream denial", max_entries),
                clients: Record::new("token client", max_entries),
            }),
        }
    }

    /// How many unexpired credentials are cached (for tests and metrics).
    pub fn len(&self) -> u64 {
        u64::try_from(self.credentials.len()).unwrap_or(u64::MAX)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shared(&self) -> Result<std::sync::MutexGuard<'_, Shared>, StoreError> {
        lock(&self.shared)
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl CredentialCache for MemoryStore {
    async fn get_credential(&self, key: &CacheKey) -> Result<Option<Credential>, StoreError> {
        self.credentials.get(&key.digest())
    }

    async fn put_credential(&self, key: &CacheKey, entry: Cacheable<'_>) -> Result<(), StoreError> {
        if entry.ttl.is_zero() {
            return Ok(());
        }
        self.credentials.insert(
            key.digest(),
            super::packed::pack(entry.credential, entry.covered_by),
            entry.ttl,
        )
    }

    async fn try_lock(&self, key: &CacheKey, ttl: Duration) -> Result<Option<String>, StoreError> {
        let mut shared = self.shared()?;
        let now = Instant::now();
        if let Some((_, until)) = shared.locks.get(key.as_str())
            && *until > now
        {
            return Ok(None);
        }
        let token = uuid::Uuid::new_v4().to_string();
        shared
            .locks
            .insert(key.as_str().to_owned(), (token.clone(), now + ttl));
        Ok(Some(token))
    }

    async fn unlock(&self, key: &CacheKey, token: &str) -> Result<(), StoreError> {
        let mut shared = self.shared()?;
        if shared
            .locks
            .get(key.as_str())
            .is_some_and(|(t, _)| t == token)
        {
            shared.locks.remove(key.as_str());
        }
        Ok(())
    }

    async fn is_locked(&self, key: &CacheKey) -> Result<bool, StoreError> {
        let shared = self.shared()?;
        Ok(shared
            .locks
            .get(key.as_str())
            .is_some_and(|(_, until)| *until > Instant::now()))
    }

    async fn get_denial(&self, key: &CacheKey) -> Result<Option<String>, StoreError> {
        Ok(self
            .shared()?
            .denials
            .get(key.as_str(), Instant::now())
            .cloned())
    }

    async fn put_denial(&self, key: &CacheKey, code: &str, ttl: Duration) -> Stored {
        self.shared()?
            .denials
            .insert(key.as_str(), code.to_owned(), Instant::now() + ttl)
    }
}

#[async_trait]
impl RevocationList for MemoryStore {
    async fn revoke(&self, revocation: &Revocation) -> Result<usize, StoreError> {
        let field = revocation.target.field();
        self.shared()?
            .revocations
            .insert(field.clone(), revocation.clone());
        // Revocations are rare operator actions: a scan of the cache (≈ 1 ms per 100k
        // entries) is cheaper than an index kept up to date on every insert and expiry.
        self.credentials.purge(super::packed::field_hash(&field))
    }

    async fn revoked(&self, fields: &[String], now: i64) -> Result<Option<Revocation>, StoreError> {
        let mut shared = self.shared()?;
        if now >= shared.next_sweep {
            shared.revocations.retain(|_, r| r.expires_at > now);
            shared.next_sweep = now.saturating_add(60);
        }
        Ok(fields.iter().find_map(|f| {
            shared
                .revocations
                .get(f)
                .filter(|r| r.expires_at > now)
                .cloned()
        }))
    }

    async fn revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError> {
        let shared = self.shared()?;
        Ok(shared
            .revocations
            .values()
            .filter(|r| r.expires_at > now)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl ReplayRecord for MemoryStore {
    async fn first_use(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut shared = self.shared()?;
        let now = Instant::now();
        if shared.seen.get(id, now).is_some() {
            return Ok(false);
        }
        shared.seen.insert(id, (), now + ttl)?;
        Ok(true)
    }
}

#[async_trait]
impl crate::store::FirstClient for MemoryStore {
    async fn first_client(
        &self,
        token: &str,
        client: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let mut shared = self.shared()?;
        let now = Instant::now();
        if let Some(first) = shared.clients.get(token, now) {
            return Ok(Some(first.clone()));
        }
        shared.clients.insert(token, client.to_owned(), now + ttl)?;
        Ok(None)
    }
}

#[async_trait]
impl RateLimiter for MemoryStore {
    async fn rate_limit(&self, bucket: &str, window: Window, now: i64) -> RateResult {
        let (limit, window) = (window.limit, window.seconds);
        let (start, retry_after) = super::fixed_window(now, window);
        let mut shared = self.shared()?;
        let at = Instant::now();
        let mut count = match shared.windows.get(bucket, at) {
            Some((s, n)) if *s == start => *n,
            _ => 0,
        };
        count += 1;
        // The entry lives until its window ends; a record full of live windows refuses
        // the request (503) rather than start this bucket over at zero.
        shared.windows.insert(
            bucket,
            (start, count),
            at + Duration::from_secs(retry_after),
        )?;
        Ok(if count > limit {
            RateDecision::Limited(retry_after)
        } else {
            RateDecision::Allowed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RevocationTarget;
    use ferry_provider_api::Secret;

    const ONE_A_MINUTE: Window = Window {
        limit: 1,
        seconds: 60,
    };
    const TWO_A_MINUTE: Window = Window {
        limit: 2,
        seconds: 60,
    };

    fn credential() -> Credential {
        Credential {
            access_token: Secret::new("t"),
            issued_token_type: "jwt".into(),
            token_type: "Bearer".into(),
            expires_at: 100,
            fields: Default::default(),
            upstream_request_id: None,
            token_id: None,
        }
    }

    #[tokio::test]
    async fn put_get_and_zero_ttl() -> Result<(), StoreError> {
        let store = MemoryStore::new(10);
        let k = CacheKey::from_parts(["a"]);
        assert!(store.get_credential(&k).await?.is_none());
        store
            .put_credential(
                &k,
                Cacheable::new(&credential(), Duration::from_secs(60), &[]),
            )
            .await?;
        assert_eq!(
            store.get_credential(&k).await?.map(|c| c.expires_at),
            Some(100)
        );
        let k2 = CacheKey::from_parts(["b"]);
        store
            .put_credential(&k2, Cacheable::new(&credential(), Duration::ZERO, &[]))
            .await?;
        assert!(store.get_credential(&k2).await?.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn capacity_is_bounded() -> Result<(), StoreError> {
        let store = MemoryStore::new(5);
        for i in 0..50 {
            let k = CacheKey::from_parts([i.to_string().as_str()]);
            store
                .put_credential(
                    &k,
                    Cacheable::new(&credential(), Duration::from_secs(60), &[]),
                )
                .await?;
        }
        assert!(store.len() <= 5, "{}", store.len());
        Ok(())
    }

    #[tokio::test]
    async fn revocation_purges_and_expires() -> Result<(), StoreError> {
        let store = MemoryStore::new(10);
        let target = RevocationTarget::Subject {
            subject: "s".into(),
        };
        let k = CacheKey::from_parts(["a"]);
        store
            .put_credential(
                &k,
                Cacheable::new(&credential(), Duration::from_secs(60), &[target.field()]),
            )
            .await?;
        let purged = store
            .revoke(&Revocation {
                target: target.clone(),
                reason: None,
                created_at: 0,
                expires_at: 100,
            })
            .await?;
        assert_eq!(purged, 1);
        assert!(store.get_credential(&k).await?.is_none());
        assert!(store.revoked(&[target.field()], 99).await?.is_some());
        assert!(store.revoked(&[target.field()], 100).await?.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn locks_replay_and_rate_limits() -> Result<(), StoreError> {
        let store = MemoryStore::new(10);
        let k = CacheKey::from_parts(["a"]);
        let t = store.try_lock(&k, Duration::from_secs(5)).await?;
        assert!(t.is_some());
        assert!(store.try_lock(&k, Duration::from_secs(5)).await?.is_none());
        store.unlock(&k, "not-mine").await?;
        assert!(store.is_locked(&k).await?);
        store.unlock(&k, t.as_deref().unwrap_or("")).await?;
        assert!(!store.is_locked(&k).await?);

        assert!(store.first_use("j", Duration::from_secs(60)).await?);
        assert!(!store.first_use("j", Duration::from_secs(60)).await?);

        assert_eq!(
            store.rate_limit("b", TWO_A_MINUTE, 120).await?,
            RateDecision::Allowed
        );
        assert_eq!(
            store.rate_limit("b", TWO_A_MINUTE, 130).await?,
            RateDecision::Allowed
        );
        assert_eq!(
            store.rate_limit("b", TWO_A_MINUTE, 150).await?,
            RateDecision::Limited(30)
        );
        assert_eq!(
            store.rate_limit("b", TWO_A_MINUTE, 180).await?,
            RateDecision::Allowed
        );
        Ok(())
    }

    #[tokio::test]
    async fn full_records_refuse_rather_than_forget() -> Result<(), StoreError> {
        // max_entries = 1: ten single-use ids, one denial, one rate-limit window.
        let store = MemoryStore::new(1);
        let ttl = Duration::from_secs(60);
        for i in 0..10 {
            assert!(store.first_use(&format!("j{i}"), ttl).await?);
        }
        assert!(store.first_use("j10", ttl).await.is_err(), "full: refused");
        for i in 0..10 {
            assert!(!store.first_use(&format!("j{i}"), ttl).await?, "forgotten");
        }
        let (a, b) = (CacheKey::from_parts(["a"]), CacheKey::from_parts(["b"]));
        store.put_denial(&a, "AccessDenied", ttl).await?;
        assert!(store.put_denial(&b, "AccessDenied", ttl).await.is_err());
        assert_eq!(store.get_denial(&a).await?.as_deref(), Some("AccessDenied"));
        assert_eq!(
            store.rate_limit("x", ONE_A_MINUTE, 0).await?,
            RateDecision::Allowed
        );
        assert!(store.rate_limit("y", ONE_A_MINUTE, 0).await.is_err());
        assert_eq!(
            store.rate_limit("x", ONE_A_MINUTE, 1).await?,
            RateDecision::Limited(59)
        );
        Ok(())
    }

    #[tokio::test]
    async fn expired_entries_make_room() -> Result<(), StoreError> {
        let store = MemoryStore::new(1);
        for i in 0..10 {
            assert!(
                store
                    .first_use(&format!("j{i}"), Duration::from_millis(20))
                    .await?
            );
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(store.first_use("j10", Duration::from_secs(60)).await?);
        Ok(())
    }
}
