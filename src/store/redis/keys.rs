//! The key schema (the module documentation of `store::redis` lists every key): key
//! names derived from a cache key's hash tag and the configured prefix.

use std::time::Duration;

use super::RedisStore;
use crate::store::CacheKey;

impl RedisStore {
    pub(super) fn tag(key: &CacheKey) -> &str {
        key.as_str().get(..32).unwrap_or(key.as_str())
    }

    pub(super) fn cred_key(&self, key: &CacheKey) -> String {
        format!("{}:{{{}}}:cred", self.prefix, Self::tag(key))
    }

    pub(super) fn lock_key(&self, key: &CacheKey) -> String {
        format!("{}:{{{}}}:lock", self.prefix, Self::tag(key))
    }

    pub(super) fn deny_key(&self, key: &CacheKey) -> String {
        format!("{}:{{{}}}:deny", self.prefix, Self::tag(key))
    }

    pub(super) fn revocations_key(&self) -> String {
        revocations_key(&self.prefix)
    }

    pub(super) fn index_key(&self, field: &str) -> String {
        format!("{}:idx:{field}", self.prefix)
    }
}

pub(super) fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

pub(super) fn revocations_key(prefix: &str) -> String {
    format!("{prefix}:{{revocations}}")
}

pub(super) fn events_channel(prefix: &str) -> String {
    format!("{prefix}:{{revocations}}:events")
}
