//! The store roles over Redis: credential cache, revocations, replay, rate limits.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_provider_api::Credential;

use super::keys::{events_channel, secs};
use super::*;
use crate::store::{
    CacheKey, Cacheable, CredentialCache, RateDecision, RateLimiter, RateResult, ReplayRecord,
    Revocation, RevocationList, Store, StoreError, Stored, Window,
};

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Standalone(_) => "redis",
            Endpoint::Cluster(_) => "redis-cluster",
            Endpoint::Sentinel { .. } => "redis-sentinel",
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.start_mirror();
        let pong: String = self.run(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(unavailable("unexpected PING answer"))
        }
    }
}

#[async_trait]
impl CredentialCache for RedisStore {
    async fn get_credential(&self, key: &CacheKey) -> Result<Option<Credential>, StoreError> {
        let k = self.cred_key(key);
        let sealed: Option<Vec<u8>> = self.run(redis::cmd("GET").arg(&k)).await?;
        Ok(sealed.and_then(|sealed| self.open_credential(&k, &sealed)))
    }

    async fn put_credential(&self, key: &CacheKey, entry: Cacheable<'_>) -> Result<(), StoreError> {
        let Cacheable {
            credential,
            ttl,
            covered_by,
        } = entry;
        if ttl.is_zero() {
            return Ok(());
        }
        let k = self.cred_key(key);
        // The packed encoding (`packed.rs`): smaller than JSON (base64 kept decoded) and
        // cheaper to read on every hit.
        let plain = crate::store::packed::pack(credential, &[]);
        let sealed = self
            .sealer
            .seal(k.as_bytes(), &plain)
            .ok_or_else(|| unavailable("sealing failed"))?;
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.run::<()>(redis::cmd("SET").arg(&k).arg(sealed).arg("PX").arg(ms))
            .await?;
        for field in covered_by {
            let idx = self.index_key(field);
            self.run::<()>(redis::cmd("SADD").arg(&idx).arg(key.as_str()))
                .await?;
            // Keep the index as long as its longest-lived entry.
            self.run::<()>(redis::cmd("EXPIRE").arg(&idx).arg(secs(ttl)).arg("NX"))
                .await?;
            self.run::<()>(redis::cmd("EXPIRE").arg(&idx).arg(secs(ttl)).arg("GT"))
                .await?;
        }
        if let Some(m) = &self.mirror {
            m.put(key, entry).await?;
        }
        Ok(())
    }

    async fn try_lock(&self, key: &CacheKey, ttl: Duration) -> Result<Option<String>, StoreError> {
        let token = uuid::Uuid::new_v4().to_string();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(30_000);
        let set: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(self.lock_key(key))
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms),
            )
            .await?;
        Ok(set.map(|_| token))
    }

    async fn unlock(&self, key: &CacheKey, token: &str) -> Result<(), StoreError> {
        let script = redis::Script::new(UNLOCK);
        self.script::<i64>(&script, &[&self.lock_key(key)], &[token])
            .await
            .map(|_| ())
    }

    async fn is_locked(&self, key: &CacheKey) -> Result<bool, StoreError> {
        self.run(redis::cmd("EXISTS").arg(self.lock_key(key))).await
    }

    async fn get_denial(&self, key: &CacheKey) -> Result<Option<String>, StoreError> {
        self.run(redis::cmd("GET").arg(self.deny_key(key))).await
    }

    async fn put_denial(&self, key: &CacheKey, code: &str, ttl: Duration) -> Stored {
        self.run(
            redis::cmd("SET")
                .arg(self.deny_key(key))
                .arg(code)
                .arg("EX")
                .arg(secs(ttl)),
        )
        .await
    }

    async fn revoked_and_cached(
        &self,
        fields: &[String],
        now: i64,
        key: &CacheKey,
    ) -> crate::store::RevokedAndCached {
        if let Some(m) = &self.mirror {
            self.start_mirror();
            // A copy that is not current, or cannot answer, is not asked: Redis is.
            if m.is_current()
                && let Ok(revoked) = m.revoked(fields, now).await
            {
                if let Some(r) = revoked {
                    return (Ok(Some(r)), Ok(None));
                }
                if let Some(c) = m.get(key).await {
                    return (Ok(None), Ok(Some(c)));
                }
                let generation = m.generation();
                return match self.get_credential_and_ttl(key).await {
                    Ok(Some((c, ttl))) => {
                        // Every field of the request covers it (a superset of what the
                        // exchange indexes a minted one under; near entries cost no index).
                        let covered_by = crate::store::covering_fields(fields, &c);
                        if !ttl.is_zero() {
                            let entry = Cacheable {
                                credential: &c,
                                ttl,
                                covered_by: &covered_by,
                            };
                            m.fill(generation, key, entry).await;
                        }
                        (Ok(None), Ok(Some(c)))
                    }
                    Ok(None) => (Ok(None), Ok(None)),
                    Err(e) => (Ok(None), Err(e)),
                };
            }
        }
        // A cluster routes each key to its own node: ask separately (still concurrently).
        if matches!(self.endpoint, Endpoint::Cluster(_)) {
            return tokio::join!(self.revoked(fields, now), self.get_credential(key));
        }
        let k = self.cred_key(key);
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(self.revocations_key());
        for f in fields {
            pipe.arg(f);
        }
        // HMGET needs a field; a request always has some, but never send a bad command.
        if fields.is_empty() {
            pipe.arg("-");
        }
        pipe.cmd("GET").arg(&k);
        let reply = self
            .run_pipe::<(Vec<Option<String>>, Option<Vec<u8>>)>(&pipe)
            .await;
        let (values, sealed) = match reply {
            Ok(r) => r,
            Err(StoreError::Unavailable(m)) => {
                return (
                    Err(StoreError::Unavailable(m.clone())),
                    Err(StoreError::Unavailable(m)),
                );
            }
        };
        (
            Ok(first_live(values, now)),
            Ok(sealed.and_then(|sealed| self.open_credential(&k, &sealed))),
        )
    }
}

#[async_trait]
impl RevocationList for RedisStore {
    async fn revoke(&self, revocation: &Revocation) -> Result<usize, StoreError> {
        let field = revocation.target.field();
        let record = serde_json::to_string(revocation).map_err(unavailable)?;
        let hash = self.revocations_key();
        // Here at once, whatever Redis says (refusing more is the safe side).
        if let Some(m) = &self.mirror {
            m.apply(revocation).await;
        }
        // Purge before announcing: a replica that reads a credential from Redis after it
        // has applied the announcement then finds it gone. (A revoked Ferry token's `jti`
        // is not among a request's fields; only the purge keeps it from being served, and
        // no one can cache that credential again.)
        let idx = self.index_key(&field);
        let members: Vec<String> = self.run(redis::cmd("SMEMBERS").arg(&idx)).await?;
        let mut purged = 0;
        for key in members.iter().filter_map(|m| CacheKey::from_hex(m)) {
            let deleted: i64 = self.run(redis::cmd("DEL").arg(self.cred_key(&key))).await?;
            purged += usize::try_from(deleted).unwrap_or(0);
        }
        self.run::<()>(redis::cmd("DEL").arg(&idx)).await?;
        // Recorded and announced in one transaction, so a replica whose heartbeat returns
        // after the record exists has also received the announcement.
        let mut tx = redis::pipe();
        tx.atomic()
            .cmd("HSET")
            .arg(&hash)
            .arg(&field)
            .arg(&record)
            .ignore()
            .cmd("PUBLISH")
            .arg(events_channel(&self.prefix))
            .arg(&record)
            .ignore();
        match self.endpoint {
            Endpoint::Standalone(_) | Endpoint::Sentinel { .. } => {
                self.run_pipe::<()>(&tx).await?;
            }
            // A cluster keeps no local copies, so there is no one to tell.
            Endpoint::Cluster(_) => {
                self.run::<()>(redis::cmd("HSET").arg(&hash).arg(&field).arg(&record))
                    .await?;
            }
        }
        // Acknowledged only once it is on the replicas `replica_acks` asks for: a
        // failover then cannot lose it.
        self.replicated(&hash).await?;
        // Drop expired revocations while we are here.
        let all: Vec<(String, String)> = self.run(redis::cmd("HGETALL").arg(&hash)).await?;
        for (f, v) in all {
            let expired = serde_json::from_str::<Revocation>(&v)
                .map(|r| r.expires_at <= revocation.created_at)
                .unwrap_or(true);
            if expired {
                self.run::<()>(redis::cmd("HDEL").arg(&hash).arg(f)).await?;
            }
        }
        Ok(purged)
    }

    async fn revoked(&self, fields: &[String], now: i64) -> Result<Option<Revocation>, StoreError> {
        if fields.is_empty() {
            return Ok(None);
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.revocations_key());
        for f in fields {
            cmd.arg(f);
        }
        let values: Vec<Option<String>> = self.run(&cmd).await?;
        Ok(first_live(values, now))
    }

    async fn revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError> {
        let all: Vec<(String, String)> = self
            .run(redis::cmd("HGETALL").arg(self.revocations_key()))
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str::<Revocation>(&v).ok())
            .filter(|r| r.expires_at > now)
            .collect())
    }

    fn revocation_copy(&self) -> Option<Option<Duration>> {
        let m = self.mirror.as_ref()?;
        let now = Instant::now();
        Some(m.lag_at(now).filter(|_| m.is_current_at(now)))
    }
}

#[async_trait]
impl ReplayRecord for RedisStore {
    async fn first_use(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key = format!(
            "{}:replay:{}",
            self.prefix,
            CacheKey::from_parts([id]).as_str()
        );
        let set: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(secs(ttl)),
            )
            .await?;
        if set.is_some()
            && let Err(e) = self.replicated(&key).await
        {
            // Not acknowledged, so not used: the request is refused (503) and no
            // credential is handed out; a retry may use the token once.
            let _ = self.run::<()>(redis::cmd("DEL").arg(&key)).await;
            return Err(e);
        }
        Ok(set.is_some())
    }
}

#[async_trait]
impl crate::store::FirstClient for RedisStore {
    async fn first_client(
        &self,
        token: &str,
        client: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let key = format!(
            "{}:client:{}",
            self.prefix,
            CacheKey::from_parts([token]).as_str()
        );
        // One round trip: set if absent, answering what was there (Redis ≥ 7.0).
        self.run(
            redis::cmd("SET")
                .arg(key)
                .arg(client)
                .arg("NX")
                .arg("GET")
                .arg("EX")
                .arg(secs(ttl)),
        )
        .await
    }
}

#[async_trait]
impl RateLimiter for RedisStore {
    async fn rate_limit(&self, bucket: &str, window: Window, now: i64) -> RateResult {
        let (limit, window) = (window.limit, window.seconds);
        let (start, retry_after) = crate::store::fixed_window(now, window);
        let key = format!(
            "{}:rl:{}:{start}",
            self.prefix,
            CacheKey::from_parts([bucket]).as_str()
        );
        let count: u64 = self.run(redis::cmd("INCR").arg(&key)).await?;
        if count == 1 {
            self.run::<()>(redis::cmd("EXPIRE").arg(&key).arg(window.max(1) + 1))
                .await?;
        }
        Ok(if count > limit {
            RateDecision::Limited(retry_after)
        } else {
            RateDecision::Allowed
        })
    }
}
