//! Shared state behind one trait: the credential cache (and, later, revocations,
//! replay and rate limits). `memory` is the embedded default.

pub mod memory;

use std::time::Duration;

use async_trait::async_trait;
use ferry_provider_api::Credential;

/// A cache key: the hex SHA-256 of everything that makes two requests the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// Hashes length-prefixed parts, so `("ab","c")` and `("a","bc")` differ.
    pub fn from_parts<'a>(parts: impl IntoIterator<Item = &'a str>) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in parts {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        Self(hex::encode(h.finalize()))
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend is unreachable or timed out.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Where Ferry keeps what replicas share.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The backend's name, for logs and `/readyz`.
    fn backend(&self) -> &'static str;

    /// A cached credential, if any (expiry is the caller's to judge).
    async fn get_credential(&self, key: &CacheKey) -> Result<Option<Credential>, StoreError>;

    /// Caches a credential for `ttl`.
    async fn put_credential(
        &self,
        key: &CacheKey,
        credential: &Credential,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_are_length_prefixed() {
        assert_ne!(
            CacheKey::from_parts(["ab", "c"]),
            CacheKey::from_parts(["a", "bc"])
        );
        assert_eq!(CacheKey::from_parts(["x"]).as_str().len(), 64);
    }
}
