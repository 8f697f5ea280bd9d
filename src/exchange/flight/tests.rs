//! The cache protocol's unit tests, against the memory store and a store whose cache is
//! down.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use ferry_provider_api::Secret;

use super::*;
use crate::clock::Clock as _;
use crate::store::memory::MemoryStore;
use crate::store::{
    Cacheable, CredentialCache, RateDecision, RateLimiter, RateResult, ReplayRecord, Revocation,
    RevocationList, Store, Window,
};

const RULES: CacheRules = CacheRules {
    min_remaining: 60,
    bypass: false,
    lock_ttl: Duration::from_secs(10),
    lock_wait: Duration::from_millis(300),
    negative_ttl: Duration::from_secs(30),
};

fn services(store: Arc<dyn Store>) -> Services {
    Services {
        store,
        clock: Arc::new(crate::clock::SystemClock),
        flights: SingleFlight::default(),
        anomalies: Default::default(),
    }
}

fn fields() -> RevocationFields {
    RevocationFields::new("repo:a", "target:x", Some(("gh", "a")), Some("j-1"))
}

fn lookup(fields: &RevocationFields, rules: CacheRules) -> Lookup<'_> {
    Lookup {
        key: CacheKey::from_parts(["k"]),
        fields,
        single_use: None,
        now: crate::clock::SystemClock.now(),
        rules,
    }
}

fn credential(lives: i64) -> Credential {
    Credential {
        access_token: Secret::new("t"),
        issued_token_type: "jwt".into(),
        token_type: "Bearer".into(),
        expires_at: crate::clock::SystemClock.now() + lives,
        fields: Default::default(),
        upstream_request_id: None,
        token_id: Some("cred-1".into()),
    }
}

/// A mint that counts its calls and answers `answer`.
async fn minter(
    calls: &AtomicUsize,
    answer: Result<i64, &'static str>,
) -> Result<Credential, ExchangeError> {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    match answer {
        Ok(lives) => Ok(credential(lives)),
        Err(code) => Err(denied(code.into())),
    }
}

#[tokio::test]
async fn mints_once_then_serves_from_the_cache() -> Result<(), ExchangeError> {
    let svc = services(Arc::new(MemoryStore::new(10)));
    let calls = AtomicUsize::new(0);
    let f = fields();
    let first = svc
        .get_or_mint(lookup(&f, RULES), || minter(&calls, Ok(3600)))
        .await?;
    assert!(!first.cache_hit);
    let second = svc
        .get_or_mint(lookup(&f, RULES), || minter(&calls, Ok(3600)))
        .await?;
    assert!(second.cache_hit);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn concurrent_misses_share_one_mint() -> Result<(), ExchangeError> {
    let svc = services(Arc::new(MemoryStore::new(10)));
    let calls = AtomicUsize::new(0);
    let f = fields();
    let all = futures_util::future::join_all(
        (0..8).map(|_| svc.get_or_mint(lookup(&f, RULES), || minter(&calls, Ok(3600)))),
    )
    .await;
    let hits = all
        .into_iter()
        .map(|r| r.map(|s| s.cache_hit))
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(hits.iter().filter(|h| !**h).count(), 1);
    Ok(())
}

#[tokio::test]
async fn a_credential_too_close_to_expiry_is_neither_served_nor_cached() -> Result<(), ExchangeError>
{
    let svc = services(Arc::new(MemoryStore::new(10)));
    let calls = AtomicUsize::new(0);
    let f = fields();
    for _ in 0..2 {
        let served = svc
            .get_or_mint(lookup(&f, RULES), || minter(&calls, Ok(30)))
            .await?;
        assert!(!served.cache_hit);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    Ok(())
}

#[tokio::test]
async fn a_revocation_refuses_even_a_cached_credential() -> Result<(), ExchangeError> {
    let store = Arc::new(MemoryStore::new(10));
    let svc = services(store.clone());
    let calls = AtomicUsize::new(0);
    let f = fields();
    svc.get_or_mint(lookup(&f, RULES), || minter(&calls, Ok(3600)))
        .await?;
    let now = crate::clock::SystemClock.now();
    store
        .revoke(&Revocation {
            target: RevocationTarget::Jti { jti: "j-1".into() },
            reason: None,
            created_at: now,
            expires_at: now + 600,
        })
        .await
        .map_err(unavailable)?;
    let again = svc
        .get_or_mint(lookup(&f, RULES), || minter(&calls, Ok(3600)))
        .await;
    assert!(
        matches!(&again, Err(ExchangeError::Revoked(m)) if m == "this token has been revoked"),
        "{again:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn a_single_use_token_is_accepted_once() -> Result<(), ExchangeError> {
    let svc = services(Arc::new(MemoryStore::new(10)));
    let calls = AtomicUsize::new(0);
    let f = fields();
    let once = || Lookup {
        single_use: Some(SingleUse {
            id: "gh\nj-1".into(),
            ttl: Duration::from_secs(60),
        }),
        ..lookup(&f, RULES)
    };
    svc.get_or_mint(once(), || minter(&calls, Ok(3600))).await?;
    let replayed = svc.get_or_mint(once(), || minter(&calls, Ok(3600))).await;
    assert!(
        matches!(replayed, Err(ExchangeError::Replay(_))),
        "{replayed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_upstream_denial_is_remembered() {
    let svc = services(Arc::new(MemoryStore::new(10)));
    let calls = AtomicUsize::new(0);
    let f = fields();
    for _ in 0..2 {
        let r = svc
            .get_or_mint(lookup(&f, RULES), || minter(&calls, Err("AccessDenied")))
            .await;
        assert!(
            matches!(&r, Err(ExchangeError::Provider(ProviderError::Denied { code })) if code == "AccessDenied"),
            "{r:?}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn waits_for_another_replicas_mint_and_serves_its_result() -> Result<(), ExchangeError> {
    let store = Arc::new(MemoryStore::new(10));
    let svc = services(store.clone());
    let f = fields();
    let key = CacheKey::from_parts(["k"]);
    let other = store
        .try_lock(&key, Duration::from_secs(10))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ExchangeError::StoreUnavailable("lock".into()))?;
    let replica = async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        store
            .put_credential(
                &key,
                Cacheable::new(&credential(3600), Duration::from_secs(600), &[]),
            )
            .await?;
        store.unlock(&key, &other).await
    };
    let calls = AtomicUsize::new(0);
    let (served, put) = tokio::join!(
        svc.get_or_mint(lookup(&f, RULES), || minter(&calls, Ok(3600))),
        replica
    );
    put.map_err(unavailable)?;
    assert!(served?.cache_hit);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    Ok(())
}

#[tokio::test]
async fn gives_up_on_a_lock_that_is_never_released() -> Result<(), ExchangeError> {
    let store = Arc::new(MemoryStore::new(10));
    let svc = services(store.clone());
    let f = fields();
    store
        .try_lock(&CacheKey::from_parts(["k"]), Duration::from_secs(10))
        .await
        .map_err(unavailable)?;
    let calls = AtomicUsize::new(0);
    let r = svc
        .get_or_mint(lookup(&f, RULES), || minter(&calls, Ok(3600)))
        .await;
    assert!(
        matches!(r, Err(ExchangeError::StoreUnavailable(_))),
        "{r:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    Ok(())
}

/// A store whose cache and lock are down while revocations and replay answer.
struct CacheDown(MemoryStore);

fn down<T>() -> Result<T, StoreError> {
    Err(StoreError::Unavailable("down".into()))
}

#[async_trait]
impl CredentialCache for CacheDown {
    async fn get_credential(&self, _: &CacheKey) -> Result<Option<Credential>, StoreError> {
        down()
    }
    async fn put_credential(&self, _: &CacheKey, _: Cacheable<'_>) -> Result<(), StoreError> {
        down()
    }
    async fn try_lock(&self, _: &CacheKey, _: Duration) -> Result<Option<String>, StoreError> {
        down()
    }
    async fn unlock(&self, _: &CacheKey, _: &str) -> Result<(), StoreError> {
        down()
    }
    async fn is_locked(&self, _: &CacheKey) -> Result<bool, StoreError> {
        down()
    }
    async fn get_denial(&self, _: &CacheKey) -> Result<Option<String>, StoreError> {
        down()
    }
    async fn put_denial(&self, _: &CacheKey, _: &str, _: Duration) -> Result<(), StoreError> {
        down()
    }
}

#[async_trait]
impl RevocationList for CacheDown {
    async fn revoke(&self, r: &Revocation) -> Result<usize, StoreError> {
        self.0.revoke(r).await
    }
    async fn revoked(&self, f: &[String], now: i64) -> Result<Option<Revocation>, StoreError> {
        self.0.revoked(f, now).await
    }
    async fn revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError> {
        self.0.revocations(now).await
    }
}

#[async_trait]
impl ReplayRecord for CacheDown {
    async fn first_use(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.0.first_use(id, ttl).await
    }
}

#[async_trait]
impl crate::store::FirstClient for CacheDown {
    async fn first_client(
        &self,
        token: &str,
        client: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.0.first_client(token, client, ttl).await
    }
}

#[async_trait]
impl RateLimiter for CacheDown {
    async fn rate_limit(&self, _: &str, _: Window, _: i64) -> RateResult {
        Ok(RateDecision::Allowed)
    }
}

#[async_trait]
impl Store for CacheDown {
    fn backend(&self) -> &'static str {
        "cache-down"
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_cache_that_is_down_is_bypassed_only_when_configured() -> Result<(), ExchangeError> {
    let svc = services(Arc::new(CacheDown(MemoryStore::new(10))));
    let calls = AtomicUsize::new(0);
    let f = fields();
    let strict = svc
        .get_or_mint(lookup(&f, RULES), || minter(&calls, Ok(3600)))
        .await;
    assert!(
        matches!(strict, Err(ExchangeError::StoreUnavailable(_))),
        "{strict:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let bypass = CacheRules {
        bypass: true,
        ..RULES
    };
    for _ in 0..2 {
        let served = svc
            .get_or_mint(lookup(&f, bypass), || minter(&calls, Ok(3600)))
            .await?;
        assert!(!served.cache_hit);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    Ok(())
}

#[test]
fn same_key_same_lock() {
    let f = SingleFlight::default();
    let a = f.lock_for("k");
    let b = f.lock_for("k");
    assert!(Arc::ptr_eq(&a, &b));
    let c = f.lock_for("other");
    assert!(!Arc::ptr_eq(&a, &c));
    drop((a, b));
    let d = f.lock_for("k");
    assert_eq!(Arc::strong_count(&d), 1);
}

#[test]
fn the_credential_is_covered_by_all_but_the_subject_tokens_jti() {
    let f = fields();
    assert_eq!(f.request().len(), 4);
    assert_eq!(f.credential(), f.request().get(..3).unwrap_or_default());
    let no_sub = RevocationFields::new("s", "target:x", None, Some("j"));
    assert_eq!(no_sub.credential().len(), 2);
    assert_eq!(no_sub.request().len(), 3);
}
