//! The in-process store: a bounded cache with per-entry expiry.

use std::time::Duration;

use async_trait::async_trait;
use ferry_provider_api::Credential;
use moka::Expiry;
use moka::sync::Cache;

use super::{CacheKey, Store, StoreError};

#[derive(Clone)]
struct Entry {
    credential: Credential,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Entry,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The embedded default store (`backend = "memory"`); one process only.
pub struct MemoryStore {
    credentials: Cache<String, Entry>,
}

impl MemoryStore {
    /// A store holding at most `max_entries` credentials.
    pub fn new(max_entries: u64) -> Self {
        Self {
            credentials: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
        }
    }

    /// How many credentials are cached (approximate, for tests and metrics).
    pub fn len(&self) -> u64 {
        self.credentials.run_pending_tasks();
        self.credentials.entry_count()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn get_credential(&self, key: &CacheKey) -> Result<Option<Credential>, StoreError> {
        Ok(self.credentials.get(key.as_str()).map(|e| e.credential))
    }

    async fn put_credential(
        &self,
        key: &CacheKey,
        credential: &Credential,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if !ttl.is_zero() {
            self.credentials.insert(
                key.as_str().to_owned(),
                Entry {
                    credential: credential.clone(),
                    ttl,
                },
            );
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_provider_api::Secret;

    fn credential() -> Credential {
        Credential {
            access_token: Secret::new("t"),
            issued_token_type: "jwt".into(),
            token_type: "Bearer".into(),
            expires_at: 100,
            fields: Default::default(),
            upstream_request_id: None,
        }
    }

    #[tokio::test]
    async fn put_get_and_zero_ttl() -> Result<(), StoreError> {
        let store = MemoryStore::new(10);
        let k = CacheKey::from_parts(["a"]);
        assert!(store.get_credential(&k).await?.is_none());
        store
            .put_credential(&k, &credential(), Duration::from_secs(60))
            .await?;
        assert_eq!(
            store.get_credential(&k).await?.map(|c| c.expires_at),
            Some(100)
        );
        let k2 = CacheKey::from_parts(["b"]);
        store
            .put_credential(&k2, &credential(), Duration::ZERO)
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
                .put_credential(&k, &credential(), Duration::from_secs(60))
                .await?;
        }
        assert!(store.len() <= 5, "{}", store.len());
        Ok(())
    }
}
