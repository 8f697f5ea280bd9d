//! Shared state behind one trait: the credential cache (and, later, revocations,
//! replay and rate limits). `memory` is the embedded default.

pub mod memory;
pub mod packed;
pub mod redis;
pub mod seal;

use std::time::Duration;

use async_trait::async_trait;
use ferry_provider_api::Credential;

/// A cache key: the SHA-256 of everything that makes two requests the same (kept as
/// bytes for in-process maps and as hex for Redis key names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String, crate::memo::Digest);

impl CacheKey {
    /// Hashes length-prefixed parts, so `("ab","c")` and `("a","bc")` differ.
    pub fn from_parts<'a>(parts: impl IntoIterator<Item = &'a str>) -> Self {
        Self::from_digest(crate::memo::digest_parts(
            parts.into_iter().map(str::as_bytes),
        ))
    }

    /// The key for an already computed digest.
    pub fn from_digest(digest: crate::memo::Digest) -> Self {
        Self(const_hex::encode(digest), digest)
    }

    /// The key whose hex digest is `hex` (as stored in a Redis index).
    pub fn from_hex(hex: &str) -> Option<Self> {
        const_hex::decode_to_array::<_, 32>(hex)
            .ok()
            .map(Self::from_digest)
    }

    /// The digest.
    pub fn digest(&self) -> crate::memo::Digest {
        self.1
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a revocation covers. Revocations are checked on every exchange.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RevocationTarget {
    /// Every credential for a canonical subject.
    Subject {
        /// The canonical subject.
        subject: String,
    },
    /// Every token of one issuer's `sub`.
    IssuerSub {
        issuer: String,
        /// The token's `sub`.
        sub: String,
    },
    /// One token: a subject token's or a Ferry-issued token's `jti`.
    Jti { jti: String },
    /// Every credential for a target.
    Target { target: String },
}

impl RevocationTarget {
    /// The field this revocation is stored under: a hash, so the store holds no
    /// identifiers it does not need.
    pub fn field(&self) -> String {
        match self {
            Self::Subject { subject } => Self::subject_field(subject),
            Self::IssuerSub { issuer, sub } => Self::issuer_sub_field(issuer, sub),
            Self::Jti { jti } => Self::jti_field(jti),
            Self::Target { target } => Self::target_field(target),
        }
    }

    /// [`field`](Self::field) of a `Subject` revocation, from a borrowed subject.
    pub fn subject_field(subject: &str) -> String {
        hashed_field("subject", &[subject])
    }

    /// [`field`](Self::field) of an `IssuerSub` revocation.
    pub fn issuer_sub_field(issuer: &str, sub: &str) -> String {
        hashed_field("issuer_sub", &[issuer, sub])
    }

    /// [`field`](Self::field) of a `Jti` revocation.
    pub fn jti_field(jti: &str) -> String {
        hashed_field("jti", &[jti])
    }

    /// [`field`](Self::field) of a `Target` revocation.
    pub fn target_field(target: &str) -> String {
        hashed_field("target", &[target])
    }
}

/// The revocation fields a cached credential is indexed under, so revoking any of them
/// purges it: `request_fields` (those of the request that minted or read it) and the
/// credential's own id (a Ferry token's `jti`).
pub fn covering_fields(request_fields: &[String], credential: &Credential) -> Vec<String> {
    let mut covered_by = Vec::with_capacity(request_fields.len() + 1);
    covered_by.extend_from_slice(request_fields);
    if let Some(id) = &credential.token_id {
        covered_by.push(RevocationTarget::jti_field(id));
    }
    covered_by
}

/// `kind:` and the first 16 bytes (32 hex digits) of the length-prefixed digest of `parts`.
fn hashed_field(kind: &str, parts: &[&str]) -> String {
    let digest = crate::memo::digest_parts(parts.iter().map(|p| p.as_bytes()));
    let mut field = String::with_capacity(kind.len() + 33);
    field.push_str(kind);
    field.push(':');
    field.push_str(&const_hex::encode(digest.get(..16).unwrap_or_default()));
    field
}

/// A revocation as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    /// What it covers.
    #[serde(flatten)]
    pub target: RevocationTarget,
    /// Why (operator's words).
    pub reason: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds: after this every credential it could cover has expired.
    pub expires_at: i64,
}

/// The outcome of a rate-limit hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Under the limit.
    Allowed,
    /// Over the limit; retry after this many seconds.
    Limited(u64),
}

/// The fixed window `now` falls in: (its start, seconds until the next one).
pub fn fixed_window(now: i64, window: u64) -> (i64, u64) {
    let window = i64::try_from(window.max(1)).unwrap_or(60);
    let start = now - now.rem_euclid(window);
    (
        start,
        u64::try_from(start + window - now).unwrap_or(1).max(1),
    )
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend is unreachable or timed out.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The answers of [`CredentialCache::revoked_and_cached`]: the revocation check, the
/// cache read.
pub type RevokedAndCached = (
    Result<Option<Revocation>, StoreError>,
    Result<Option<Credential>, StoreError>,
);

/// The credential cache, the negative cache of upstream denials and the cross-replica
/// mint lock: what [`crate::exchange::flight`] drives, and nothing else calls.
/// A credential to cache: for how long, and the revocation fields that cover it (so a
/// revocation can purge it).
#[derive(Debug, Clone, Copy)]
pub struct Cacheable<'a> {
    pub credential: &'a Credential,
    pub ttl: Duration,
    pub covered_by: &'a [String],
}

impl<'a> Cacheable<'a> {
    pub fn new(credential: &'a Credential, ttl: Duration, covered_by: &'a [String]) -> Self {
        Self {
            credential,
            ttl,
            covered_by,
        }
    }
}

#[async_trait]
pub trait CredentialCache: RevocationList {
    /// A cached credential, if any (expiry is the caller's to judge).
    async fn get_credential(&self, key: &CacheKey) -> Result<Option<Credential>, StoreError>;

    /// Caches a credential (nothing when its `ttl` is zero).
    async fn put_credential(&self, key: &CacheKey, entry: Cacheable<'_>) -> Result<(), StoreError>;

    /// Tries to take the cross-replica mint lock for `key`; `Some(token)` when taken.
    async fn try_lock(&self, key: &CacheKey, ttl: Duration) -> Result<Option<String>, StoreError>;

    /// Releases the lock if `token` still holds it.
    async fn unlock(&self, key: &CacheKey, token: &str) -> Result<(), StoreError>;

    /// Whether someone holds the mint lock for `key`.
    async fn is_locked(&self, key: &CacheKey) -> Result<bool, StoreError>;

    /// A cached upstream denial (its error code), if any.
    async fn get_denial(&self, key: &CacheKey) -> Result<Option<String>, StoreError>;

    /// Caches an upstream denial briefly.
    async fn put_denial(&self, key: &CacheKey, code: &str, ttl: Duration) -> Stored;

    /// [`RevocationList::revoked`] and [`CredentialCache::get_credential`] together: the
    /// exchange path asks both on every request, and a backend that can send them as one
    /// round trip (Redis: one pipeline) does. Redis answers from its local copy and near
    /// cache instead while the copy is provably current (`mirror.rs`); never from a copy
    /// that is not. The caller uses the credential only if the revocation check passed.
    async fn revoked_and_cached(
        &self,
        fields: &[String],
        now: i64,
        key: &CacheKey,
    ) -> RevokedAndCached {
        tokio::join!(self.revoked(fields, now), self.get_credential(key))
    }
}

/// Revocations: recorded by operators (`/admin/revocations`, `/oauth2/revoke`,
/// `ferry revoke`), checked on every exchange.
#[async_trait]
pub trait RevocationList: Send + Sync + 'static {
    /// Records a revocation and purges the cached credentials it covers; returns how
    /// many were purged.
    async fn revoke(&self, revocation: &Revocation) -> Result<usize, StoreError>;

    /// The first live revocation among `fields`, if any. Never cached: every call asks.
    async fn revoked(&self, fields: &[String], now: i64) -> Result<Option<Revocation>, StoreError>;

    /// Every live revocation.
    async fn revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError>;

    /// Whether this replica keeps a local copy of a shared revocation list
    /// (`mirror.rs`), and if so how old it is: `None` when it keeps none (every exchange
    /// asks the store), `Some(None)` when the copy is not current (exchanges ask the store
    /// until it is), `Some(Some(lag))` when it is in use.
    fn revocation_copy(&self) -> Option<Option<Duration>> {
        None
    }
}

/// Single-use token ids already presented, on any replica.
#[async_trait]
pub trait ReplayRecord: Send + Sync + 'static {
    /// Records the first use of a single-use token id; false when it was seen before.
    async fn first_use(&self, id: &str, ttl: Duration) -> Result<bool, StoreError>;
}

/// The first client address each subject token was exchanged from, on any replica: what
/// `[anomalies.token_reuse_across_clients] shared = true` compares against.
#[async_trait]
pub trait FirstClient: Send + Sync + 'static {
    /// Records `client` as the first address of `token` (a digest of it) for `ttl`
    /// unless one is recorded, and returns the address recorded before, if any.
    async fn first_client(
        &self,
        token: &str,
        client: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError>;
}

/// Fixed-window request counters shared by replicas.
/// A fixed-window limit: at most `limit` requests per `seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub seconds: u64,
}

/// A store call that answers nothing but whether it was done.
pub type Stored = Result<(), StoreError>;

/// What a rate limiter answers.
pub type RateResult = Result<RateDecision, StoreError>;

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one request against `bucket` (fixed window of `window` seconds).
    async fn rate_limit(&self, bucket: &str, window: Window, now: i64) -> RateResult;
}

/// Where Ferry keeps what replicas share: every role in one backend. Callers take the
/// role they use (`Arc<dyn Store>` coerces to `Arc<dyn RevocationList>`, …).
#[async_trait]
pub trait Store: CredentialCache + ReplayRecord + RateLimiter + FirstClient {
    /// The backend's name, for logs and `/readyz`.
    fn backend(&self) -> &'static str;

    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The Redis store's encryption keys (current, previous), each file's problem recorded
/// in `errs`: what [`open`] reads at start, and `ferry check` checks.
pub fn read_encryption_keys(
    config: &crate::config::Config,
    errs: &mut crate::config::ConfigErrors,
) -> (Option<[u8; 32]>, Vec<[u8; 32]>) {
    let st = &config.store;
    let file = config.source.display();
    let mut read =
        |p: &std::path::Path, entry: &str| match seal::read_key_file(&config.source.resolve(p)) {
            Ok(k) => Some(k),
            Err(e) => {
                errs.push(&file, entry, e.to_string());
                None
            }
        };
    let current = st
        .encryption_key_file
        .as_deref()
        .and_then(|p| read(p, "store.encryption_key_file"));
    let previous = st
        .previous_encryption_key_files
        .iter()
        .filter_map(|p| read(p, "store.previous_encryption_key_files"))
        .collect();
    (current, previous)
}

/// Opens the store `[store]` configures. Redis connects lazily: Ferry starts (not ready)
/// while Redis is down and connects when it comes up.
pub fn open(
    config: &crate::config::Config,
) -> Result<std::sync::Arc<dyn Store>, crate::config::ConfigErrors> {
    let st = &config.store;
    let file = config.source.display();
    let mut errs = crate::config::ConfigErrors::default();
    match st.backend {
        crate::config::StoreBackend::Redis => {
            let (current, previous) = read_encryption_keys(config, &mut errs);
            let endpoint = match (&st.url, st.cluster.is_empty(), &st.sentinel_master) {
                (Some(url), true, None) => Some(redis::Endpoint::Standalone(url.clone())),
                (None, false, None) => Some(redis::Endpoint::Cluster(st.cluster.clone())),
                (None, true, Some(master)) if !st.sentinel.is_empty() => {
                    Some(redis::Endpoint::Sentinel {
                        sentinels: st.sentinel.clone(),
                        master: master.clone(),
                    })
                }
                _ => None,
            };
            match (
                current.and_then(|c| seal::Sealer::new(c, &previous)),
                endpoint,
            ) {
                (Some(sealer), Some(endpoint)) if errs.is_empty() => Ok(std::sync::Arc::new(
                    redis::RedisStore::new(endpoint, st.timeout.0, sealer)
                        .with_mirror(st.revocation_max_lag.0, st.max_entries)
                        .with_replica_acks(st.replica_acks, st.replica_ack_timeout.0),
                )),
                _ => {
                    if errs.is_empty() {
                        errs.push(
                            &file,
                            "store",
                            "the redis backend needs `url`, `cluster` or `sentinel`, and `encryption_key_file`",
                        );
                    }
                    Err(errs)
                }
            }
        }
        _ => Ok(std::sync::Arc::new(memory::MemoryStore::new(
            st.max_entries,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_fields_keep_their_stored_form() {
        // Fields are stored (in Redis, across versions): `kind:` + the first 32 hex
        // digits of the cache-key digest of the parts.
        let old = |kind: &str, parts: &[&str]| {
            let key = CacheKey::from_parts(parts.iter().copied());
            format!("{kind}:{}", key.as_str().get(..32).unwrap_or_default())
        };
        let cases = [
            (
                RevocationTarget::Subject {
                    subject: "repo:a".into(),
                },
                old("subject", &["repo:a"]),
            ),
            (
                RevocationTarget::IssuerSub {
                    issuer: "gh".into(),
                    sub: "x".into(),
                },
                old("issuer_sub", &["gh", "x"]),
            ),
            (
                RevocationTarget::Jti { jti: "j-1".into() },
                old("jti", &["j-1"]),
            ),
            (
                RevocationTarget::Target {
                    target: "api".into(),
                },
                old("target", &["api"]),
            ),
        ];
        for (target, want) in cases {
            assert_eq!(target.field(), want);
            assert_eq!(want.len(), want.find(':').unwrap_or(0) + 33);
        }
        assert_ne!(
            RevocationTarget::issuer_sub_field("ab", "c"),
            RevocationTarget::issuer_sub_field("a", "bc")
        );
    }

    proptest::proptest! {
        #[test]
        fn distinct_revocations_never_share_a_field(
            a in "[ab:\n]{0,3}", b in "[ab:\n]{0,3}", c in "[ab:\n]{0,3}", d in "[ab:\n]{0,3}",
        ) {
            let targets = [
                RevocationTarget::Subject { subject: a.clone() },
                RevocationTarget::IssuerSub { issuer: a.clone(), sub: b.clone() },
                RevocationTarget::IssuerSub { issuer: c.clone(), sub: d.clone() },
                RevocationTarget::Jti { jti: b.clone() },
                RevocationTarget::Target { target: c.clone() },
            ];
            for (i, x) in targets.iter().enumerate() {
                for y in targets.iter().skip(i + 1) {
                    proptest::prop_assert_eq!(x == y, x.field() == y.field(), "{:?} {:?}", x, y);
                }
            }
        }
    }

    #[test]
    fn cache_keys_are_length_prefixed() {
        assert_ne!(
            CacheKey::from_parts(["ab", "c"]),
            CacheKey::from_parts(["a", "bc"])
        );
        assert_eq!(CacheKey::from_parts(["x"]).as_str().len(), 64);
    }
}
