//! The Redis store (standalone, behind Sentinels, or Redis Cluster): what replicas must
//! agree on.
//!
//! With Sentinels, the primary is asked of them at connect time (and checked with
//! `ROLE`); a connection error or a `READONLY` answer (the old primary, demoted) drops the
//! connection, and the next call asks again — so Ferry follows a failover without a
//! restart. Revocations and single-use records are acknowledged only once `WAIT` says
//! they reached the replicas `[store] replica_acks` asks for (`sentinel.rs`).
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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_provider_api::Credential;
use redis::FromRedisValue;

mod follower;
mod keys;
pub mod mirror;
mod roles;
mod sentinel;

use follower::follow_revocations;

use crate::store::seal::Sealer;
use crate::store::{CacheKey, Revocation, StoreError};
use mirror::Mirror;

/// Where the Redis store connects.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `redis://…` (or `rediss://…`).
    Standalone(String),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
    /// Sentinels watching the primary named `master`.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
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
    /// `[store] replica_acks` (`None`: decided at connect time) and how long to wait.
    acks: Option<u32>,
    ack_timeout: Duration,
    /// Replicas each acknowledged write waits for on the current connection.
    wait_for: std::sync::atomic::AtomicU32,
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
            acks: None,
            ack_timeout: Duration::from_millis(250),
            wait_for: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// How many replicas must hold a revocation or single-use record before it is
    /// acknowledged (`None`: 1 behind Sentinels or when the primary reports a replica at
    /// connect time, else 0), waited for at most `timeout`. A cluster waits for none.
    #[must_use]
    pub fn with_replica_acks(mut self, acks: Option<u32>, timeout: Duration) -> Self {
        self.acks = acks;
        self.ack_timeout = timeout;
        self
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
                Endpoint::Sentinel { sentinels, master } => {
                    sentinel::connect_primary(sentinels, master, self.timeout)
                        .await
                        .map(Conn::Single)
                }
            }
        };
        // Sentinels are asked in turn, each within the timeout.
        let budget = match &self.endpoint {
            Endpoint::Sentinel { sentinels, .. } => self
                .timeout
                .saturating_mul(u32::try_from(sentinels.len()).unwrap_or(1) + 2),
            _ => self.timeout.saturating_mul(2),
        };
        let mut conn = tokio::time::timeout(budget, connect)
            .await
            .map_err(|_| unavailable("connect timed out"))?
            .map_err(unavailable)?;
        let wait_for = match (&self.endpoint, self.acks) {
            (_, Some(n)) => n,
            (Endpoint::Sentinel { .. }, None) => 1,
            (Endpoint::Standalone(_), None) => {
                let replicas = sentinel::connected_replicas(&mut conn).await.unwrap_or(0);
                u32::from(replicas > 0)
            }
            (Endpoint::Cluster(_), None) => {
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                u32::from(nodes.lines().any(|l| {
                    l.split_whitespace()
                        .nth(2)
                        .is_some_and(|flags| flags.contains("slave"))
                }))
            }
        };
        self.wait_for.store(wait_for, Ordering::Release);
        self.current.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    /// Waits until the writes made so far on the connection to `key`'s node reached the
    /// replicas `replica_acks` asks for; an error (the operation must fail) when they did
    /// not in `replica_ack_timeout`. In a cluster, `WAIT` goes to the master of `key`'s
    /// slot, over the connection that wrote it.
    async fn replicated(&self, key: &str) -> Result<(), StoreError> {
        let want = self.wait_for.load(Ordering::Acquire);
        if want == 0 {
            return Ok(());
        }
        // Within half the call timeout, so WAIT answers before the connection gives up.
        let millis = u64::try_from(self.ack_timeout.min(self.timeout / 2).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut wait = redis::cmd("WAIT");
        wait.arg(want).arg(millis);
        let conn = self.conn().await?;
        let asked = async move {
            match conn {
                Conn::Single(mut c) => wait.query_async::<u32>(&mut c).await,
                Conn::Cluster(mut c) => {
                    use redis::cluster_routing::{
                        Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
                    };
                    let route = Route::with_key(key, SlotAddr::Master);
                    let answer = c
                        .route_command(
                            wait,
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                        )
                        .await?;
                    redis::from_redis_value::<u32>(answer).map_err(redis::RedisError::from)
                }
            }
        };
        let got: u32 = tokio::time::timeout(self.timeout.saturating_add(self.ack_timeout), asked)
            .await
            .map_err(|_| unavailable("WAIT timed out"))?
            .map_err(|e| self.failed(e))?;
        if got >= want {
            Ok(())
        } else {
            Err(unavailable(format!(
                "the write reached {got} of the {want} replica(s) it must within {}ms: it could be lost in a failover",
                millis
            )))
        }
    }

    /// A call's error: behind Sentinels, one that says the connection is gone or the node
    /// is no longer the primary drops the connection, so the next call asks them again.
    fn failed(&self, e: redis::RedisError) -> StoreError {
        if matches!(self.endpoint, Endpoint::Sentinel { .. })
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.is_unrecoverable_error()
                || e.code() == Some("READONLY"))
        {
            self.current.store(None);
        }
        unavailable(e)
    }

    /// A call on the store's connection, bounded by its timeout.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(answer) => answer.map_err(|e| self.failed(e)),
            Err(_) => {
                if matches!(self.endpoint, Endpoint::Sentinel { .. }) {
                    self.current.store(None);
                }
                Err(unavailable("redis call timed out"))
            }
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_provider_api::Secret;

    #[test]
    fn values_open_in_the_packed_form_and_only_under_their_key_name() {
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
        let sealed = store.sealer.seal(name.as_bytes(), &packed);
        let opened = sealed.and_then(|s| store.open_credential(name, &s));
        assert_eq!(
            opened
                .as_ref()
                .map(|c| (c.access_token.expose(), c.expires_at)),
            Some((credential.access_token.expose(), 42))
        );
        assert_eq!(opened.and_then(|c| c.token_id).as_deref(), Some("jti"));
        // Bound to its key name: under another name it does not open.
        let sealed = store.sealer.seal(name.as_bytes(), &packed);
        assert!(
            sealed
                .and_then(|s| store.open_credential("ferry:{j}:cred", &s))
                .is_none()
        );
    }
}
