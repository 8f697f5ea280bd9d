//! The Redis store (standalone or Redis Cluster): what replicas must agree on.
//!
//! Keys (prefix `ferry`): `{c}` below is the first 32 hex chars of the cache key, a hash
//! tag, so a request's credential, mint lock and negative-cache entry share one slot.
//! - `ferry:{c}:cred` — the credential, AES-256-GCM sealed (AAD = the key)
//! - `ferry:{c}:lock` — the cross-replica mint lock (random token, PX)
//! - `ferry:{c}:deny` — a brief upstream denial (its error code)
//! - `ferry:idx:<field>` — cache keys a revocation field covers (for purging)
//! - `ferry:{revocations}` — hash: revocation field → JSON record (one slot, one HMGET)
//! - channel `ferry:{revocations}:events` — each new revocation record, published in the
//!   same transaction as its `HSET`, for the replicas' local copies (`mirror.rs`)
//! - channel `ferry:{revocations}:heartbeat:<uuid>` — one replica's heartbeats to itself
//! - `ferry:replay:<sha256>` — single-use token ids (SET NX EX)
//! - `ferry:rl:<sha256>:<window>` — fixed-window rate-limit counters
//!
//! Nothing in Redis is a token or credential in plain text; fields are hashes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_provider_api::Credential;
use futures_util::StreamExt;
use redis::FromRedisValue;

use super::mirror::Mirror;
use super::seal::{Sealer, StoredCredential};
use super::{
    CacheKey, CredentialCache, RateDecision, RateLimiter, ReplayRecord, Revocation, RevocationList,
    Store, StoreError,
};

/// Where the Redis store connects.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `redis://…` (or `rediss://…`).
    Standalone(String),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

#[derive(Clone)]
enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Either connection as one: a command, pipeline or script runs on a `Conn` the same way
/// whichever it is (a cluster connection still routes each command to its node).
impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis-backed store.
pub struct RedisStore {
    endpoint: Endpoint,
    timeout: Duration,
    sealer: Arc<Sealer>,
    prefix: String,
    /// The connection once made: read without locking on every command.
    current: arc_swap::ArcSwapOption<Conn>,
    /// Held while connecting, so concurrent first calls make one connection.
    connecting: tokio::sync::Mutex<()>,
    /// The local copy of the revocation list and the near cache (standalone Redis, when
    /// `store.revocation_max_lag` is not zero).
    mirror: Option<Arc<Mirror>>,
    /// Whether the task that keeps `mirror` current has been started.
    mirror_started: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.endpoint, Endpoint::Cluster(_)))
            .field("sealer", &self.sealer)
            .field("mirror", &self.mirror)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The first live revocation among HMGET's answers.
fn first_live(values: Vec<Option<String>>, now: i64) -> Option<Revocation> {
    values
        .into_iter()
        .flatten()
        .filter_map(|v| serde_json::from_str::<Revocation>(&v).ok())
        .find(|r| r.expires_at > now)
}

const UNLOCK: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

impl RedisStore {
    /// A store that connects lazily (Ferry starts, and reports not-ready, while Redis is
    /// down) and reconnects by itself.
    pub fn new(endpoint: Endpoint, timeout: Duration, sealer: Sealer) -> Self {
        Self {
            endpoint,
            timeout,
            sealer: Arc::new(sealer),
            prefix: "ferry".into(),
            current: arc_swap::ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            mirror: None,
            mirror_started: AtomicBool::new(false),
        }
    }

    /// Keeps a local copy of the revocation list and a near cache of up to `max_entries`
    /// credentials, used while the copy is provably at most `max_lag` old (`mirror.rs`).
    /// A cluster has no copy: its pub/sub spans shards differently, so every exchange
    /// there asks Redis.
    #[must_use]
    pub fn with_mirror(mut self, max_lag: Duration, max_entries: u64) -> Self {
        if !max_lag.is_zero() && matches!(self.endpoint, Endpoint::Standalone(_)) {
            self.mirror = Some(Arc::new(Mirror::new(max_lag, max_entries)));
        }
        self
    }

    /// Starts the task that keeps the copy current, once, from within the runtime.
    fn start_mirror(&self) {
        let (Some(mirror), Endpoint::Standalone(url)) = (&self.mirror, &self.endpoint) else {
            return;
        };
        // A load first: this runs on every exchange, and a swap would write the shared
        // cache line each time.
        if self.mirror_started.load(Ordering::Acquire)
            || self.mirror_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.mirror_started.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(follow_revocations(
            url.clone(),
            self.timeout,
            self.prefix.clone(),
            Arc::downgrade(mirror),
        ));
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.current.load().as_deref() {
            return Ok(c.clone());
        }
        let _guard = tokio::time::timeout(self.timeout, self.connecting.lock())
            .await
            .map_err(|_| unavailable("timed out waiting for the connection"))?;
        if let Some(c) = self.current.load().as_deref() {
            return Ok(c.clone());
        }
        let connect = async {
            match &self.endpoint {
                Endpoint::Standalone(url) => {
                    let client = redis::Client::open(url.as_str())?;
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1)
                        .set_max_delay(Duration::from_secs(1));
                    redis::aio::ConnectionManager::new_with_config(client, config)
                        .await
                        .map(Conn::Single)
                }
                Endpoint::Cluster(nodes) => {
                    let client = redis::cluster::ClusterClient::builder(nodes.clone())
                        .connection_timeout(self.timeout)
                        .response_timeout(self.timeout)
                        .retries(1)
                        .build()?;
                    client.get_async_connection().await.map(Conn::Cluster)
                }
            }
        };
        let conn = tokio::time::timeout(self.timeout.saturating_mul(2), connect)
            .await
            .map_err(|_| unavailable("connect timed out"))?
            .map_err(unavailable)?;
        self.current.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    /// A call on the store's connection, bounded by its timeout.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| unavailable("redis call timed out"))?
            .map_err(unavailable)
    }

    async fn run<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        self.bounded(cmd.query_async::<T>(&mut conn)).await
    }

    /// [`run`](Self::run) for a pipeline (or a `MULTI` transaction).
    async fn run_pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        self.bounded(pipe.query_async::<T>(&mut conn)).await
    }

    async fn script<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(*k);
        }
        for a in args {
            invocation.arg(*a);
        }
        self.bounded(invocation.invoke_async::<T>(&mut conn)).await
    }

    /// A sealed cache value opened; one that does not open (tampered, or sealed with a
    /// retired key) is a miss.
    fn open_credential(&self, key_name: &str, sealed: &[u8]) -> Option<Credential> {
        let Some(plain) = self.sealer.open(key_name.as_bytes(), sealed) else {
            tracing::warn!("cached credential could not be decrypted; treating as a miss");
            return None;
        };
        if plain.first() == Some(&b'{') {
            return serde_json::from_slice::<StoredCredential>(&plain)
                .ok()
                .map(Credential::from);
        }
        super::packed::unpack(&plain)
    }

    /// A cached credential and how long Redis keeps it: the time it stays usable (it
    /// was stored for exactly that), so a near copy lapses when the shared one does and
    /// the next request finds whatever replaced it.
    async fn get_credential_and_ttl(
        &self,
        key: &CacheKey,
    ) -> Result<Option<(Credential, Duration)>, StoreError> {
        let k = self.cred_key(key);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&k).cmd("PTTL").arg(&k);
        let reply: (Option<Vec<u8>>, i64) = self.run_pipe(&pipe).await?;
        // PTTL is -1 for a key without expiry (Ferry never writes one): not kept near.
        let ttl = Duration::from_millis(u64::try_from(reply.1).unwrap_or(0));
        Ok(reply
            .0
            .and_then(|sealed| self.open_credential(&k, &sealed))
            .map(|c| (c, ttl)))
    }

    fn tag(key: &CacheKey) -> &str {
        key.as_str().get(..32).unwrap_or(key.as_str())
    }

    fn cred_key(&self, key: &CacheKey) -> String {
        format!("{}:{{{}}}:cred", self.prefix, Self::tag(key))
    }

    fn lock_key(&self, key: &CacheKey) -> String {
        format!("{}:{{{}}}:lock", self.prefix, Self::tag(key))
    }

    fn deny_key(&self, key: &CacheKey) -> String {
        format!("{}:{{{}}}:deny", self.prefix, Self::tag(key))
    }

    fn revocations_key(&self) -> String {
        revocations_key(&self.prefix)
    }

    fn index_key(&self, field: &str) -> String {
        format!("{}:idx:{field}", self.prefix)
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

fn revocations_key(prefix: &str) -> String {
    format!("{prefix}:{{revocations}}")
}

fn events_channel(prefix: &str) -> String {
    format!("{prefix}:{{revocations}}:events")
}

/// Keeps `mirror` current for as long as its store lives: subscribe, read the list, then
/// apply what the subscription announces; again after any failure, with back-off. While
/// it is not following, the copy is not current and exchanges ask Redis.
async fn follow_revocations(url: String, timeout: Duration, prefix: String, mirror: Weak<Mirror>) {
    let mut failures: u32 = 0;
    loop {
        let mut followed = false;
        let outcome = follow_once(&url, timeout, &prefix, &mirror, &mut followed).await;
        let Some(m) = mirror.upgrade() else { return };
        m.lose();
        drop(m);
        let Err(e) = outcome else { return };
        if followed {
            failures = 0;
        }
        if failures == 0 {
            tracing::warn!(
                error = %e,
                "revocation mirror stopped following Redis; every exchange asks Redis until it is back"
            );
        } else {
            tracing::debug!(error = %e, "revocation mirror: still not following Redis");
        }
        failures = failures.saturating_add(1);
        let backoff = Duration::from_millis(50).saturating_mul(1 << failures.min(6));
        tokio::time::sleep(backoff.min(Duration::from_secs(2))).await;
    }
}

/// One subscription, until it fails (`Err`) or the store is dropped (`Ok`).
async fn follow_once(
    url: &str,
    timeout: Duration,
    prefix: &str,
    mirror: &Weak<Mirror>,
    followed: &mut bool,
) -> Result<(), String> {
    async fn within<T, E: std::fmt::Display>(
        timeout: Duration,
        what: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: timed out")),
        }
    }
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let connect = timeout.saturating_mul(2);
    let mut pubsub = within(connect, "subscribe", client.get_async_pubsub()).await?;
    let events = events_channel(prefix);
    let beats = format!(
        "{prefix}:{{revocations}}:heartbeat:{}",
        uuid::Uuid::new_v4()
    );
    within(timeout, "subscribe", pubsub.subscribe(&events)).await?;
    within(timeout, "subscribe", pubsub.subscribe(&beats)).await?;
    // The sink must live as long as the stream, or the connection closes.
    let (_sink, mut stream) = pubsub.split();
    let mut conn = within(
        connect,
        "connect",
        client.get_multiplexed_async_connection(),
    )
    .await?;
    // Read after subscribing: a revocation committed in between is in both, and applying
    // one twice is harmless.
    let all: Vec<(String, String)> = within(
        timeout,
        "read revocations",
        redis::cmd("HGETALL")
            .arg(revocations_key(prefix))
            .query_async(&mut conn),
    )
    .await?;
    let all: Vec<Revocation> = all
        .iter()
        .filter_map(|(_, v)| serde_json::from_str(v).ok())
        .collect();
    let (interval, max_lag) = {
        let Some(m) = mirror.upgrade() else {
            return Ok(());
        };
        m.reset(&all).await;
        (m.heartbeat_interval(), m.max_lag())
    };
    // Heartbeats that stop coming back mean a stalled connection: make a new one.
    let stalled_after = max_lag.saturating_mul(4).max(timeout.saturating_mul(2));
    let mut last_returned = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Err("the subscription closed".into());
                };
                let Some(m) = mirror.upgrade() else {
                    return Ok(());
                };
                if msg.get_channel_name() == events {
                    match serde_json::from_slice::<Revocation>(msg.get_payload_bytes()) {
                        Ok(r) => m.apply(&r).await,
                        // Not ours to judge: a record we cannot read is still in the hash,
                        // and the direct check would read it the same way (as no record).
                        Err(_) => tracing::warn!("revocation mirror: unreadable announcement ignored"),
                    }
                } else if msg.get_channel_name() == beats
                    && let Some(sent) = std::str::from_utf8(msg.get_payload_bytes())
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                {
                    m.heartbeat_returned(sent);
                    last_returned = Instant::now();
                    if !*followed {
                        *followed = true;
                        tracing::info!("revocation mirror is following Redis");
                    }
                }
            }
            _ = tick.tick() => {
                let Some(m) = mirror.upgrade() else {
                    return Ok(());
                };
                if last_returned.elapsed() > stalled_after {
                    return Err("heartbeats stopped coming back".into());
                }
                let sent = m.heartbeat(Instant::now());
                drop(m);
                within(
                    timeout,
                    "heartbeat",
                    redis::cmd("PUBLISH").arg(&beats).arg(sent).query_async::<i64>(&mut conn),
                )
                .await?;
            }
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Standalone(_) => "redis",
            Endpoint::Cluster(_) => "redis-cluster",
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

    async fn put_credential(
        &self,
        key: &CacheKey,
        credential: &Credential,
        ttl: Duration,
        covered_by: &[String],
    ) -> Result<(), StoreError> {
        if ttl.is_zero() {
            return Ok(());
        }
        let k = self.cred_key(key);
        // The packed encoding (`packed.rs`): smaller than JSON (base64 kept decoded) and
        // cheaper to read on every hit. Its first byte is never `{`, so values an older
        // Ferry sealed as JSON still open.
        let plain = super::packed::pack(credential, &[]);
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
            m.put(key, credential, ttl, covered_by).await?;
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

    async fn put_denial(
        &self,
        key: &CacheKey,
        code: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
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
    ) -> super::RevokedAndCached {
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
                        let covered_by = super::covering_fields(fields, &c);
                        if !ttl.is_zero() {
                            m.fill(generation, key, &c, ttl, &covered_by).await;
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
            Endpoint::Standalone(_) => self.run_pipe::<()>(&tx).await?,
            // A cluster keeps no local copies, so there is no one to tell.
            Endpoint::Cluster(_) => {
                self.run::<()>(redis::cmd("HSET").arg(&hash).arg(&field).arg(&record))
                    .await?;
            }
        }
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
                    .arg(key)
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(secs(ttl)),
            )
            .await?;
        Ok(set.is_some())
    }
}

#[async_trait]
impl RateLimiter for RedisStore {
    async fn rate_limit(
        &self,
        bucket: &str,
        limit: u64,
        window: u64,
        now: i64,
    ) -> Result<RateDecision, StoreError> {
        let (start, retry_after) = super::fixed_window(now, window);
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_provider_api::Secret;

    #[test]
    fn values_open_in_the_packed_and_in_the_older_json_form() {
        let Some(sealer) = Sealer::new([5u8; 32], &[]) else {
            unreachable!("a valid key")
        };
        // Never connects: only the sealing half is used.
        let store = RedisStore::new(
            Endpoint::Standalone("redis://127.0.0.1:1".into()),
            Duration::from_secs(1),
            sealer,
        );
        let credential = Credential {
            access_token: Secret::new("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"),
            issued_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            token_type: "Bearer".into(),
            expires_at: 42,
            fields: Default::default(),
            upstream_request_id: None,
            token_id: Some("jti".into()),
        };
        let name = "ferry:{k}:cred";
        let packed = super::super::packed::pack(&credential, &[]);
        let json = serde_json::to_vec(&StoredCredential::from(&credential)).unwrap_or_default();
        for plain in [packed.to_vec(), json] {
            let sealed = store.sealer.seal(name.as_bytes(), &plain);
            let opened = sealed.and_then(|s| store.open_credential(name, &s));
            assert_eq!(
                opened
                    .as_ref()
                    .map(|c| (c.access_token.expose(), c.expires_at)),
                Some((credential.access_token.expose(), 42))
            );
            assert_eq!(opened.and_then(|c| c.token_id).as_deref(), Some("jti"));
        }
        // Bound to its key name: under another name it does not open.
        let sealed = store.sealer.seal(name.as_bytes(), &packed);
        assert!(
            sealed
                .and_then(|s| store.open_credential("ferry:{j}:cred", &s))
                .is_none()
        );
    }
}
