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
use crate::store::{CacheKey, Cacheable, RevocationTarget, StoreError};

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
            .put_credential(
                key,
                Cacheable {
                    credential,
                    ttl,
                    covered_by: &covered_by,
                },
            )
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
mod tests;
