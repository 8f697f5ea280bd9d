//! The credential cache protocol, behind one call: [`Services::get_or_mint`].
//!
//! For an authorized request it checks revocation (together with the cache read, one
//! round trip), records a single-use token's first use, serves a cached credential,
//! serves a remembered upstream denial, and otherwise mints once — one mint per key in
//! this process (a local lock) and across replicas (the store's mint lock, waiting for
//! another replica's result or for its lock to lapse) — then caches the result and
//! releases the lock. A check that cannot be answered refuses (503); only the cache
//! itself may be bypassed, and only when `on_cache_error = "bypass"`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ferry_provider_api::{Credential, ProviderError};

use super::{ExchangeError, Services};
use crate::store::{CacheKey, RevocationTarget, StoreError};

/// How often a request waiting for another replica's mint looks again.
const POLL: Duration = Duration::from_millis(20);

/// The revocation fields of one request, in the order the store is asked: subject,
/// target, issuer + `sub` (when the token has one), then the subject token's `jti`.
#[derive(Debug, Clone)]
pub struct RevocationFields {
    fields: Vec<String>,
    /// How many of the leading fields also cover the credential minted for the request.
    covering: usize,
}

impl RevocationFields {
    /// The fields of a request by `subject` for the target whose field is `target`,
    /// with the token's issuer and `sub`, and `jti`, where it has them.
    pub fn new(
        subject: &str,
        target: &str,
        issuer_sub: Option<(&str, &str)>,
        jti: Option<&str>,
    ) -> Self {
        let mut fields = Vec::with_capacity(4);
        fields.push(RevocationTarget::subject_field(subject));
        fields.push(target.to_owned());
        fields.extend(issuer_sub.map(|(i, s)| RevocationTarget::issuer_sub_field(i, s)));
        let covering = fields.len();
        fields.extend(jti.map(RevocationTarget::jti_field));
        Self { fields, covering }
    }

    /// Every field: a live revocation of any of them refuses the request.
    pub fn request(&self) -> &[String] {
        &self.fields
    }

    /// The fields that also cover the credential minted for the request (not the subject
    /// token's `jti`: a revoked subject token is refused before any credential is read).
    pub fn credential(&self) -> &[String] {
        self.fields.get(..self.covering).unwrap_or(&self.fields)
    }
}

/// A single-use issuer's token: its id is recorded once, for as long as the token lives.
#[derive(Debug, Clone)]
pub struct SingleUse {
    /// Issuer id and `jti`, one per line.
    pub id: String,
    /// How long the record is kept.
    pub ttl: Duration,
}

/// The `[store]` settings and the target's `min_remaining` that drive the protocol.
#[derive(Debug, Clone, Copy)]
pub struct CacheRules {
    /// A cached credential with less than this left (seconds) is a miss.
    pub min_remaining: i64,
    /// A cache that cannot answer is bypassed (a miss) rather than answered 503.
    pub bypass: bool,
    /// How long a replica's mint lock lives if it is never released.
    pub lock_ttl: Duration,
    /// How long a request waits for another replica's mint before a 503.
    pub lock_wait: Duration,
    /// How long an upstream denial is remembered.
    pub negative_ttl: Duration,
}

/// One authorized request's cache lookup.
#[derive(Debug)]
pub struct Lookup<'a> {
    /// Everything that determines the credential (`exchange::cache_key`).
    pub key: CacheKey,
    /// What a revocation of the request may name.
    pub fields: &'a RevocationFields,
    /// Set for a single-use issuer's token.
    pub single_use: Option<SingleUse>,
    /// Unix seconds, as the policy saw it.
    pub now: i64,
    /// How the cache behaves.
    pub rules: CacheRules,
}

/// A credential and whether it came from the cache.
#[derive(Debug)]
pub struct Served {
    /// The credential (at least `min_remaining` left when it was read or minted).
    pub credential: Credential,
    /// True when no mint ran for this request.
    pub cache_hit: bool,
}

impl Services {
    /// The credential for `lookup`: from the cache when there is a usable one, else from
    /// `mint` — called at most once per key at a time in this process, and once across
    /// replicas unless another replica's lock lapses. An upstream denial `mint` returns
    /// is remembered for `negative_ttl`; a minted credential is cached until
    /// `min_remaining` before it expires.
    pub async fn get_or_mint<F, Fut>(
        &self,
        lookup: Lookup<'_>,
        mint: F,
    ) -> Result<Served, ExchangeError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Credential, ExchangeError>>,
    {
        let Lookup {
            key,
            fields,
            single_use,
            now,
            rules,
        } = lookup;
        let hit = |credential| Served {
            credential,
            cache_hit: true,
        };
        // The revocation check and the cache read go out together; the credential is
        // used only if the revocation check, and then the replay check, pass.
        let (revoked, cached) = self
            .store
            .revoked_and_cached(fields.request(), now, &key)
            .await;
        let cached = self.usable(cached, rules);
        match revoked {
            Ok(None) => {}
            Ok(Some(r)) => return Err(ExchangeError::Revoked(describe_revocation(&r.target))),
            Err(e) => return Err(unavailable(e)),
        }
        if let Some(single_use) = single_use {
            match self.store.first_use(&single_use.id, single_use.ttl).await {
                Ok(true) => {}
                Ok(false) => return Err(ExchangeError::Replay("the token has already been used")),
                Err(e) => return Err(unavailable(e)),
            }
        }
        if let Some(credential) = cached? {
            return Ok(hit(credential));
        }
        match self.store.get_denial(&key).await {
            Ok(Some(code)) => return Err(denied(code)),
            Ok(None) => {}
            Err(e) if !rules.bypass => return Err(unavailable(e)),
            Err(_) => {}
        }

        let local = self.flights.lock_for(key.as_str());
        let _local = local.lock().await;
        if let Some(credential) = self.cached(&key, rules).await? {
            return Ok(hit(credential));
        }
        let lock = match self.cross_replica_lock(&key, rules).await? {
            Locked::Taken(token) => token,
            Locked::Served(credential) => return Ok(hit(credential)),
        };
        let minted = mint().await;
        match &minted {
            Ok(credential) => self.put(&key, credential, fields, rules).await,
            Err(ExchangeError::Provider(ProviderError::Denied { code })) => {
                if let Err(e) = self.store.put_denial(&key, code, rules.negative_ttl).await {
                    tracing::warn!(error = %e, "could not cache the upstream denial");
                }
            }
            Err(_) => {}
        }
        // Released only once the result is cached (or the denial remembered): a waiter
        // that sees the lock gone reads the cache next, and must find the credential
        // there rather than take the lock and mint a second one.
        if let Some(token) = lock
            && let Err(e) = self.store.unlock(&key, &token).await
        {
            tracing::warn!(error = %e, "could not release the mint lock; it expires by itself");
        }
        Ok(Served {
            credential: minted?,
            cache_hit: false,
        })
    }

    /// Takes the store's mint lock for `key` (`None` inside when the store is down and
    /// the cache is bypassed), or waits while another replica holds it and returns what
    /// that replica cached.
    async fn cross_replica_lock(
        &self,
        key: &CacheKey,
        rules: CacheRules,
    ) -> Result<Locked, ExchangeError> {
        let wait_until = Instant::now() + rules.lock_wait;
        loop {
            match self.store.try_lock(key, rules.lock_ttl).await {
                Ok(Some(token)) => return Ok(Locked::Taken(Some(token))),
                Ok(None) => {}
                Err(e) if !rules.bypass => return Err(unavailable(e)),
                Err(_) => return Ok(Locked::Taken(None)),
            }
            // Another replica is minting: wait for its result, or for its lock to lapse.
            loop {
                if Instant::now() >= wait_until {
                    return Err(ExchangeError::StoreUnavailable(
                        "another replica is minting this credential; retry".into(),
                    ));
                }
                tokio::time::sleep(POLL).await;
                if let Some(credential) = self.cached(key, rules).await? {
                    return Ok(Locked::Served(credential));
                }
                if let Ok(Some(code)) = self.store.get_denial(key).await {
                    return Err(denied(code));
                }
                match self.store.is_locked(key).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => return Err(unavailable(e)),
                }
            }
            if let Some(credential) = self.cached(key, rules).await? {
                return Ok(Locked::Served(credential));
            }
        }
    }

    /// Caches a minted credential until `min_remaining` before it expires, indexed under
    /// the request's credential fields and its own id. A cache that cannot take it only
    /// costs a later mint.
    async fn put(
        &self,
        key: &CacheKey,
        credential: &Credential,
        fields: &RevocationFields,
        rules: CacheRules,
    ) {
        let usable_for = credential
            .expires_at
            .saturating_sub(self.clock.now())
            .saturating_sub(rules.min_remaining);
        if usable_for <= 0 {
            return;
        }
        let covered_by = crate::store::covering_fields(fields.credential(), credential);
        let ttl = Duration::from_secs(u64::try_from(usable_for).unwrap_or(0));
        if let Err(e) = self
            .store
            .put_credential(key, credential, ttl, &covered_by)
            .await
        {
            tracing::warn!(error = %e, "credential cache unavailable; not cached");
        }
    }

    /// A cached credential with at least `min_remaining` left.
    async fn cached(
        &self,
        key: &CacheKey,
        rules: CacheRules,
    ) -> Result<Option<Credential>, ExchangeError> {
        self.usable(self.store.get_credential(key).await, rules)
    }

    /// Judges a cache answer: too little left is a miss; a store error is a miss when
    /// the cache is bypassed (a cache that is down is bypassed, never trusted), else 503.
    fn usable(
        &self,
        answer: Result<Option<Credential>, StoreError>,
        rules: CacheRules,
    ) -> Result<Option<Credential>, ExchangeError> {
        match answer {
            Ok(Some(c)) if c.expires_at.saturating_sub(self.clock.now()) >= rules.min_remaining => {
                Ok(Some(c))
            }
            Ok(_) => Ok(None),
            Err(e) if rules.bypass => {
                tracing::warn!(error = %e, "credential cache unavailable; bypassing");
                Ok(None)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

enum Locked {
    /// This request mints; the token releases the store's lock (none when bypassed).
    Taken(Option<String>),
    /// Another replica minted while this one waited.
    Served(Credential),
}

fn unavailable(e: StoreError) -> ExchangeError {
    ExchangeError::StoreUnavailable(e.to_string())
}

fn denied(code: String) -> ExchangeError {
    ExchangeError::Provider(ProviderError::Denied { code })
}

fn describe_revocation(t: &RevocationTarget) -> String {
    match t {
        RevocationTarget::Subject { subject } => format!(
            "subject `{}` has been revoked",
            crate::text::escape_control(subject)
        ),
        RevocationTarget::IssuerSub { issuer, .. } => {
            format!("this token's subject at issuer `{issuer}` has been revoked")
        }
        RevocationTarget::Jti { .. } => "this token has been revoked".into(),
        RevocationTarget::Target { target } => format!("target `{target}` has been revoked"),
    }
}

/// In-process single flight: one async lock per in-flight key; entries vanish when
/// nobody holds them.
#[derive(Default)]
pub struct SingleFlight {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl SingleFlight {
    /// The lock for `key` (shared with every concurrent caller of the same key).
    pub fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let Ok(mut locks) = self.locks.lock() else {
            // A poisoned map only loses deduplication, never correctness.
            return Arc::new(tokio::sync::Mutex::new(()));
        };
        if let Some(existing) = locks.get(key).and_then(Weak::upgrade) {
            return existing;
        }
        if locks.len() > 1024 {
            locks.retain(|_, w| w.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use ferry_provider_api::Secret;

    use super::*;
    use crate::clock::Clock as _;
    use crate::store::memory::MemoryStore;
    use crate::store::{
        CredentialCache, RateDecision, RateLimiter, ReplayRecord, Revocation, RevocationList, Store,
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
    async fn a_credential_too_close_to_expiry_is_neither_served_nor_cached()
    -> Result<(), ExchangeError> {
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
                .put_credential(&key, &credential(3600), Duration::from_secs(600), &[])
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
        async fn put_credential(
            &self,
            _: &CacheKey,
            _: &Credential,
            _: Duration,
            _: &[String],
        ) -> Result<(), StoreError> {
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
    impl RateLimiter for CacheDown {
        async fn rate_limit(
            &self,
            _: &str,
            _: u64,
            _: u64,
            _: i64,
        ) -> Result<RateDecision, StoreError> {
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
}
