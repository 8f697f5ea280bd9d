//! Shared state in a real Redis (a private redis-server per test, killed by pid):
//! replicas share the sealed cache, revocations, replay and rate limits; a Redis outage
//! gives 503s, never 500s, and Ferry recovers by itself.
#![cfg(test)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use ferry::provider_api::{Credential, CredentialProvider, Grant, ProviderError, Secret};
use ferry_testkit::{RedisCluster, RedisSentinels, RedisServer};
use jsonwebtoken::Algorithm;
use serde_json::json;

/// A provider that counts its calls and mints recognisable secrets.
struct Counting {
    calls: AtomicUsize,
    delay: Duration,
    deny: bool,
}

impl Counting {
    fn new(delay_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            delay: Duration::from_millis(delay_ms),
            deny: false,
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl CredentialProvider for Counting {
    fn kind(&self) -> &'static str {
        "jwt"
    }
    async fn issue(&self, grant: &Grant) -> Result<Credential, ProviderError> {
        tokio::time::sleep(self.delay).await;
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.deny {
            return Err(ProviderError::Denied {
                code: "AccessDenied".into(),
            });
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        Ok(Credential {
            access_token: Secret::new(format!("ACCESS{id}")),
            issued_token_type: JWT_TYPE.into(),
            token_type: "Bearer".into(),
            expires_at: now() + 3600,
            fields: [(
                "secret_access_key".to_owned(),
                Secret::new(format!("SECRETKEY{id}")),
            )]
            .into(),
            upstream_request_id: Some(format!("req-{}", grant.request_id)),
            token_id: Some(format!("jti-{id}")),
        })
    }
}

fn key_file(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("store.key");
    std::fs::write(&p, hex::encode([42u8; 32])).unwrap();
    p
}

/// The harness config over Redis, with signing keys in a directory beside `key` (replicas
/// sharing a Redis must share signing keys; an ephemeral key is refused there).
fn redis_config(
    store: &str,
    key: &std::path::Path,
    extra: &str,
) -> impl FnOnce(String) -> String + use<> {
    let store = store.to_owned();
    let keys = key.with_file_name("keys");
    if !keys.exists() {
        ferry::issuer::KeyDir::new(&keys)
            .generate(Algorithm::RS256, now())
            .unwrap();
    }
    let keys = keys.display().to_string();
    let key = key.display().to_string();
    let extra = extra.to_owned();
    move |t: String| {
        let t = t.replace("ephemeral = true", &format!("keys_dir = \"{keys}\""));
        format!(
            "{t}\n[store]\nbackend = \"redis\"\n{store}\nencryption_key_file = \"{key}\"\ntimeout = \"300ms\"\nlock_wait = \"10s\"\n{extra}"
        )
    }
}

async fn two_replicas(
    redis_url: &str,
    provider: Option<Arc<Counting>>,
    extra: &str,
    issuer_edit: Option<(&str, &str)>,
) -> (Harness, Arc<ferry::http::AppState>, tempfile::TempDir) {
    two_replicas_on(
        &format!("url = \"{redis_url}\""),
        provider,
        extra,
        issuer_edit,
    )
    .await
}

/// [`two_replicas`] over the store `[store]` names with `store` (`url = …`,
/// `sentinel = […]`, …).
async fn two_replicas_on(
    store: &str,
    provider: Option<Arc<Counting>>,
    extra: &str,
    issuer_edit: Option<(&str, &str)>,
) -> (Harness, Arc<ferry::http::AppState>, tempfile::TempDir) {
    let side = tempfile::tempdir().unwrap();
    let key = key_file(side.path());
    let edit = redis_config(store, &key, extra);
    let issuer_edit = issuer_edit.map(|(a, b)| (a.to_owned(), b.to_owned()));
    let p: Option<Arc<dyn CredentialProvider>> =
        provider.clone().map(|p| p as Arc<dyn CredentialProvider>);
    let h = Harness::with_provider(
        &[Algorithm::RS256],
        move |t| {
            let t = match &issuer_edit {
                Some((from, to)) => t.replace(from.as_str(), to.as_str()),
                None => t,
            };
            edit(t)
        },
        POLICY,
        p.clone(),
    )
    .await;
    let b = h.replica(p).await;
    (h, b, side)
}

/// The first response with `status`, asking again for up to 3 s (a revocation reaches a
/// replica's local copy within `store.revocation_max_lag`, 250 ms by default); the last
/// response if none had it.
async fn until_status<F, Fut>(status: u16, mut ask: F) -> Resp
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let r = ask().await;
        if r.status == status || std::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An `[admin]` section whose token (`admin-token-0123456789`) is in a file in `dir`.
fn admin_section(dir: &std::path::Path) -> String {
    let file = dir.join("admin");
    std::fs::write(&file, "admin-token-0123456789").unwrap();
    format!("\n[admin]\ntoken_file = \"{}\"\n", file.display())
}

async fn readyz(state: &Arc<ferry::http::AppState>) -> Resp {
    send(
        ferry::http::app(Arc::clone(state)),
        axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
}

/// Waits (up to 5 s) until the replica's local revocation copy is in use.
async fn copy_current(state: &ferry::http::AppState) -> bool {
    let store = &state.services.store;
    let _ = store.ping().await;
    for _ in 0..500 {
        if matches!(store.revocation_copy(), Some(Some(_))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// `calls` of each command, from `INFO commandstats`.
fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_local_revocation_copy_hits_skip_redis_revocations_arrive_and_outages_fail_closed()
{
    let mut redis = RedisServer::start();
    let side = tempfile::tempdir().unwrap();
    let admin = admin_section(side.path());
    let (h, b, _side) = two_replicas(
        &redis.url(),
        None,
        &format!("revocation_max_lag = \"2s\"\n{admin}"),
        None,
    )
    .await;
    let a = Arc::clone(&h.state);
    assert!(copy_current(&a).await, "A's copy becomes current");
    assert!(copy_current(&b).await, "B's copy becomes current");
    let ready = readyz(&b).await;
    assert_eq!(ready.body["store"]["revocation_copy"], "current");

    // A mints a Ferry token; B reads it from Redis once, then serves it from its near
    // cache: no more GET or HMGET reaches Redis.
    let token = h.token(|_| {});
    let first = h.exchange_on(&a, &token, "api", Some("read")).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let ferry_token = first.body["access_token"].as_str().unwrap().to_owned();
    let on_b = h.exchange_on(&b, &token, "api", Some("read")).await;
    assert_eq!(on_b.body["access_token"], ferry_token.as_str());
    let (gets, hmgets) = (command_calls(&redis, "get"), command_calls(&redis, "hmget"));
    assert!(gets > 0, "B read the credential from Redis once");
    for _ in 0..3 {
        let again = h.exchange_on(&b, &token, "api", Some("read")).await;
        assert_eq!(again.body["access_token"], ferry_token.as_str());
    }
    assert_eq!(command_calls(&redis, "get"), gets, "near-cache hits");
    assert_eq!(
        command_calls(&redis, "hmget"),
        hmgets,
        "revocations checked locally"
    );

    // RFC 7009 revocation of the Ferry token on A: B's near copy is dropped (the
    // token's own `jti` is not among the request's fields, so only that purge stops it).
    let revoke = send(
        ferry::http::app(Arc::clone(&a)),
        axum::http::Request::post("/oauth2/revoke")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(format!("token={ferry_token}")))
            .unwrap(),
    )
    .await;
    assert_eq!(revoke.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let replaced = loop {
        let r = h.exchange_on(&b, &token, "api", Some("read")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        if r.body["access_token"] != ferry_token.as_str() {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(replaced, "B stopped serving the revoked token");

    // A subject revocation recorded on A reaches B.
    a.services
        .store
        .revoke(&a.snapshot.load().revocation(
            ferry::store::RevocationTarget::Subject {
                subject: "fake:repo:acme/infra:ref:refs/heads/main".into(),
            },
            None,
            h.now(),
        ))
        .await
        .unwrap();
    let refused = until_status(400, || h.exchange_on(&b, &token, "api", Some("read"))).await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert!(refused.description().contains("has been revoked"));

    // Redis goes away: B's copy stops being used, and even a credential B holds near
    // is not served (fail closed), every time.
    let other = h.token(|c| c["sub"] = "other".into());
    for _ in 0..2 {
        let r = h.exchange_on(&b, &other, "api", None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    redis.kill();
    let down = until_status(503, || h.exchange_on(&b, &other, "api", None)).await;
    assert_eq!(down.status, 503, "{:?}", down.body);
    for _ in 0..5 {
        assert_eq!(h.exchange_on(&b, &other, "api", None).await.status, 503);
    }
    assert_eq!(b.services.store.revocation_copy(), Some(None));

    // Back, without restarting Ferry: the copy is read again (the subject revocation
    // does not survive a Redis without persistence, but B's copy follows Redis).
    redis.restart();
    assert!(copy_current(&b).await, "B's copy is current again");
    let back = until_status(200, || h.exchange_on(&b, &other, "api", None)).await;
    assert_eq!(back.status, 200, "{:?}", back.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_whose_heartbeats_stall_is_not_used_and_exchanges_ask_redis() {
    let redis = RedisServer::start();
    let (h, b, _side) =
        two_replicas(&redis.url(), None, "revocation_max_lag = \"100ms\"", None).await;
    assert!(copy_current(&b).await);
    let token = h.token(|_| {});
    assert_eq!(h.exchange_on(&b, &token, "api", None).await.status, 200);
    // Writes pause (PUBLISH is one, so heartbeats stop coming back) while the connection
    // stays open and reads still answer: a silent stall, not a closed subscription.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "2000", "WRITE"]), "OK");
    let paused = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let hmgets = command_calls(&redis, "hmget");
    let r = h.exchange_on(&b, &token, "api", None).await;
    assert!(
        paused.elapsed() < Duration::from_millis(1900),
        "still paused"
    );
    assert_eq!(
        b.services.store.revocation_copy(),
        Some(None),
        "not current"
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        command_calls(&redis, "hmget"),
        hmgets + 1,
        "the exchange asked Redis about revocation"
    );
    assert!(copy_current(&b).await, "current again once writes resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_the_cache_and_revocations_take_effect_everywhere_at_once() {
    let redis = RedisServer::start();
    let provider = Counting::new(0);
    // Without a local copy of the revocation list, every exchange asks Redis, so a
    // revocation holds everywhere from the moment it is recorded. (With the copy, the
    // default, it holds within `revocation_max_lag`: the next test.)
    let (h, b, _side) = two_replicas(
        &redis.url(),
        Some(provider.clone()),
        "revocation_max_lag = \"0s\"",
        None,
    )
    .await;
    assert_eq!(h.state.services.store.revocation_copy(), None);
    let a = Arc::clone(&h.state);
    let token = h.token(|_| {});
    let r1 = h.exchange_on(&a, &token, "api", None).await;
    assert_eq!(r1.status, 200, "{:?}", r1.body);
    let r2 = h.exchange_on(&b, &token, "api", None).await;
    assert_eq!(r2.status, 200);
    assert_eq!(
        r1.body["access_token"], r2.body["access_token"],
        "replica B served A's cached credential"
    );
    assert_eq!(
        r2.body["credentials"]["secret_access_key"],
        r1.body["credentials"]["secret_access_key"]
    );
    assert_eq!(provider.calls(), 1);

    // Revoke the subject on A (admin API); B refuses on the very next request.
    let subject = "fake:repo:acme/infra:ref:refs/heads/main";
    let purged = a
        .services
        .store
        .revoke(&a.snapshot.load().revocation(
            ferry::store::RevocationTarget::Subject {
                subject: subject.into(),
            },
            Some("test".into()),
            h.now(),
        ))
        .await
        .unwrap();
    assert_eq!(purged, 1, "the cached credential was purged");
    let r3 = h.exchange_on(&b, &token, "api", None).await;
    assert_eq!(r3.status, 400);
    assert_eq!(r3.error(), "invalid_target");
    assert!(
        r3.description().contains("has been revoked"),
        "{:?}",
        r3.body
    );
    let r4 = h.exchange_on(&a, &h.token(|_| {}), "api", None).await;
    assert_eq!(
        r4.status, 400,
        "a fresh token for the same subject is refused too"
    );
    // Another subject is unaffected.
    let other = h
        .exchange_on(&b, &h.token(|c| c["sub"] = "other".into()), "api", None)
        .await;
    assert_eq!(other.status, 200);
    // The revocation lives until every credential it could cover has expired.
    let listed = a.services.store.revocations(h.now()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].expires_at >= h.now() + 300 + 3600,
        "ttl covers target ttl + token max_age"
    );
}

/// `n` exchanges of fresh tokens for one identity at once, alternating between the
/// harness's replica and `b`; their answers in order.
async fn concurrent_fresh_tokens(
    h: &Arc<Harness>,
    b: &Arc<ferry::http::AppState>,
    n: usize,
) -> Vec<Resp> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let h = Arc::clone(h);
        let state = Arc::clone(if i % 2 == 0 { &h.state } else { b });
        let token = h.token(|_| {});
        tasks.push(tokio::spawn(async move {
            h.exchange_on(&state, &token, "api", None).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_misses_across_two_replicas_make_one_provider_call() {
    let redis = RedisServer::start();
    let provider = Counting::new(300);
    let (h, b, _side) = two_replicas(&redis.url(), Some(provider.clone()), "", None).await;
    let h = Arc::new(h);
    let mut tokens = std::collections::HashSet::new();
    for r in concurrent_fresh_tokens(&h, &b, 50).await {
        assert_eq!(r.status, 200, "{:?}", r.body);
        tokens.insert(r.body["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(provider.calls(), 1, "exactly one upstream call");
    assert_eq!(tokens.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_holds_no_token_or_secret_in_plain_text() {
    let redis = RedisServer::start();
    let provider = Counting::new(0);
    let (h, b, _side) = two_replicas(&redis.url(), Some(provider.clone()), "", None).await;
    let token = h.token(|_| {});
    let r = h.exchange_on(&b, &token, "api", None).await;
    assert_eq!(r.status, 200);
    // A Ferry-signed JWT too (the `other` target is the real jwt provider).
    let dump = redis.dump();
    assert!(
        dump.contains(":cred string"),
        "the credential is in Redis: {dump}"
    );
    let access = r.body["access_token"].as_str().unwrap();
    let secret = r.body["credentials"]["secret_access_key"].as_str().unwrap();
    for needle in [
        access,
        secret,
        &token,
        token.split('.').nth(1).unwrap(),
        token.split('.').nth(2).unwrap(),
        "repo:acme",
    ] {
        assert!(!dump.contains(needle), "`{needle}` found in Redis:\n{dump}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_use_token_is_refused_the_second_time_on_either_replica() {
    let redis = RedisServer::start();
    let (h, b, _side) = two_replicas(
        &redis.url(),
        None,
        "",
        Some(("max_age = \"1h\"", "max_age = \"1h\"\nsingle_use = true")),
    )
    .await;
    let a = Arc::clone(&h.state);
    let token = h.token(|_| {});
    assert_eq!(h.exchange_on(&a, &token, "api", None).await.status, 200);
    let again = h.exchange_on(&b, &token, "api", None).await;
    assert_eq!(again.status, 400);
    assert!(
        again.description().contains("already been used"),
        "{:?}",
        again.body
    );
    let again = h.exchange_on(&a, &token, "api", None).await;
    assert_eq!(again.status, 400);
    // A token without jti is refused by a single-use issuer.
    let no_jti = h.token(|c| {
        c.as_object_mut().unwrap().remove("jti");
    });
    let r = h.exchange_on(&a, &no_jti, "api", None).await;
    assert_eq!(r.status, 400);
    assert!(r.description().contains("`jti`"));
    // A new token (new jti) is fine.
    assert_eq!(
        h.exchange_on(&b, &h.token(|_| {}), "api", None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_hold_across_replicas() {
    let redis = RedisServer::start();
    let extra = "\n[rate_limits]\nper_subject = { requests = 3, window = \"1m\" }\n";
    let (h, b, _side) = two_replicas(&redis.url(), None, extra, None).await;
    let a = Arc::clone(&h.state);
    let statuses = [
        h.exchange_on(&a, &h.token(|_| {}), "api", None)
            .await
            .status,
        h.exchange_on(&b, &h.token(|_| {}), "api", None)
            .await
            .status,
        h.exchange_on(&a, &h.token(|_| {}), "api", None)
            .await
            .status,
    ];
    assert_eq!(statuses, [200, 200, 200]);
    let limited = h.exchange_on(&b, &h.token(|_| {}), "api", None).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.error(), "slow_down");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    // Another subject has its own budget.
    assert_eq!(
        h.exchange_on(&b, &h.token(|c| c["sub"] = "x".into()), "api", None)
            .await
            .status,
        200
    );
    // The next window opens.
    h.clock.advance(61);
    assert_eq!(
        h.exchange_on(&a, &h.token(|_| {}), "api", None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_gives_503s_never_500s_and_ferry_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let (h, b, _side) = two_replicas(&redis.url(), None, "", None).await;
    let a = Arc::clone(&h.state);
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..60 {
        if i == 20 {
            redis.kill();
        }
        if i == 40 {
            redis.restart();
        }
        let state = if i % 2 == 0 { &a } else { &b };
        let r = h
            .exchange_on(
                state,
                &h.token(|c| c["sub"] = format!("w{i}").into()),
                "api",
                None,
            )
            .await;
        assert!(
            r.status == 200 || r.status == 503,
            "request {i}: {} {:?}",
            r.status,
            r.body
        );
        if r.status == 503 {
            assert_eq!(r.error(), "temporarily_unavailable");
            assert!(r.headers.contains_key("retry-after"));
            assert!(i >= 20, "503 only during the outage");
        }
        *seen.entry((i / 20, r.status.as_u16())).or_insert(0) += 1;
        if (20..40).contains(&i) {
            let ready = readyz(state).await;
            assert_eq!(ready.status, 503, "not ready while Redis is down");
        }
    }
    assert_eq!(seen.get(&(0, 200)), Some(&20), "{seen:?}");
    assert_eq!(seen.get(&(1, 503)), Some(&20), "{seen:?}");
    // After the restart, without restarting Ferry, both replicas succeed again.
    let mut recovered = false;
    for _ in 0..50 {
        let ra = h
            .exchange_on(&a, &h.token(|c| c["sub"] = "after".into()), "api", None)
            .await;
        let rb = h
            .exchange_on(&b, &h.token(|c| c["sub"] = "after-b".into()), "api", None)
            .await;
        if ra.status == 200 && rb.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "exchanges succeed again after Redis returns: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_denials_are_cached_briefly() {
    let redis = RedisServer::start();
    let provider = Arc::new(Counting {
        calls: AtomicUsize::new(0),
        delay: Duration::ZERO,
        deny: true,
    });
    let (h, b, _side) = two_replicas(&redis.url(), Some(provider.clone()), "", None).await;
    let a = Arc::clone(&h.state);
    for state in [&a, &b, &a] {
        let r = h.exchange_on(state, &h.token(|_| {}), "api", None).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.error(), "invalid_target");
        assert!(r.description().contains("AccessDenied"));
    }
    assert_eq!(
        provider.calls(),
        1,
        "the denial was remembered across replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn introspection_and_rfc7009_revocation_of_ferry_tokens() {
    let redis = RedisServer::start();
    use base64::Engine as _;
    let side = tempfile::tempdir().unwrap();
    let secret = side.path().join("gateway.secret");
    std::fs::write(&secret, "gateway-secret-0123456789\n").unwrap();
    let extra = format!(
        "{}\n[[introspection.clients]]\nname = \"gateway\"\nsecret_file = \"{}\"\n",
        admin_section(side.path()),
        secret.display()
    );
    let (h, b, _side) = two_replicas(&redis.url(), None, &extra, None).await;
    let a = Arc::clone(&h.state);
    let r = h
        .exchange_on(&a, &h.token(|_| {}), "api", Some("read"))
        .await;
    assert_eq!(r.status, 200);
    let ferry_token = r.body["access_token"].as_str().unwrap().to_owned();
    let form = |t: &str| serde_urlencoded::to_string([("token", t)]).unwrap();
    let basic = |user: &str, secret: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
        )
    };
    let gateway = basic("gateway", "gateway-secret-0123456789");
    let post_as =
        |state: &Arc<ferry::http::AppState>, path: &str, body: String, auth: Option<&str>| {
            let mut req = axum::http::Request::post(path)
                .header("content-type", "application/x-www-form-urlencoded");
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            send(
                ferry::http::app(Arc::clone(state)),
                req.body(axum::body::Body::from(body)).unwrap(),
            )
        };
    let post = |state: &Arc<ferry::http::AppState>, path: &str, body: String, auth: bool| {
        post_as(state, path, body, auth.then_some(gateway.as_str()))
    };
    let unauth = post(&b, "/oauth2/introspect", form(&ferry_token), false).await;
    assert_eq!(unauth.status, 401);
    assert_eq!(unauth.error(), "invalid_client");
    assert!(
        unauth.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    // Neither the admin token nor a wrong secret introspects.
    for auth in [
        "Bearer admin-token-0123456789".to_owned(),
        basic("gateway", "gateway-secret-012345678X"),
        basic("nobody", "gateway-secret-0123456789"),
    ] {
        let r = post_as(&b, "/oauth2/introspect", form(&ferry_token), Some(&auth)).await;
        assert_eq!(r.status, 401, "{auth}");
    }
    let active = post(&b, "/oauth2/introspect", form(&ferry_token), true).await;
    assert_eq!(active.status, 200);
    assert_eq!(active.body["active"], true);
    assert_eq!(
        active.body["sub"],
        "fake:repo:acme/infra:ref:refs/heads/main"
    );
    assert_eq!(active.body["aud"], "https://api.example.com");
    assert_eq!(active.body["iss"], "http://127.0.0.1:9");
    assert_eq!(active.body["scope"], "read");
    for k in ["exp", "iat", "jti"] {
        assert!(active.body.get(k).is_some(), "{k}");
    }
    let foreign = post(&b, "/oauth2/introspect", form(&h.token(|_| {})), true).await;
    assert_eq!(foreign.body, json!({"active": false}));
    assert_eq!(active.body["token_type"], "Bearer");
    assert!(active.body.get("cnf").is_none(), "a bearer token");
    // A DPoP-bound token introspects as DPoP with its `cnf` (RFC 9449 §6.2).
    let client = dpop::Client::load("dpop-client.key.pem");
    let bound = dpop::exchange(
        h.router(),
        &h.token(|_| {}),
        "api",
        &[&client.proof(h.now())],
    )
    .await;
    assert_eq!(bound.status, 200, "{:?}", bound.body);
    let bound_token = bound.body["access_token"].as_str().unwrap();
    let bound_active = post(&b, "/oauth2/introspect", form(bound_token), true).await;
    assert_eq!(bound_active.body["token_type"], "DPoP");
    assert_eq!(bound_active.body["cnf"]["jkt"], client.thumbprint());

    // The holder revokes it on A; B's introspection says inactive, and the cache entry
    // is gone (the next exchange mints a new token).
    let revoked = post(&a, "/oauth2/revoke", form(&ferry_token), false).await;
    assert_eq!(revoked.status, 200);
    let inactive = post(&b, "/oauth2/introspect", form(&ferry_token), true).await;
    assert_eq!(inactive.body, json!({"active": false}));
    let again = h
        .exchange_on(&b, &h.token(|_| {}), "api", Some("read"))
        .await;
    assert_eq!(again.status, 200);
    assert_ne!(again.body["access_token"], ferry_token.as_str());
    // An issuer+sub revocation (the subject token's issuer and `sub`) makes the Ferry
    // tokens already issued to that identity inactive.
    let fresh = again.body["access_token"].as_str().unwrap().to_owned();
    let active = post(&b, "/oauth2/introspect", form(&fresh), true).await;
    assert_eq!(active.body["active"], true);
    let runtime = a.snapshot.load_full();
    let revocation = runtime.revocation(
        ferry::store::RevocationTarget::IssuerSub {
            issuer: "fake".into(),
            sub: "repo:acme/infra:ref:refs/heads/main".into(),
        },
        None,
        h.now(),
    );
    a.services.store.revoke(&revocation).await.unwrap();
    let inactive = post(&b, "/oauth2/introspect", form(&fresh), true).await;
    assert_eq!(inactive.body, json!({"active": false}));
    // RFC 7009 §2.2: an unknown token still gets 200.
    assert_eq!(
        post(&a, "/oauth2/revoke", form("garbage"), false)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_and_cli_revocations() {
    let redis = RedisServer::start();
    let side = tempfile::tempdir().unwrap();
    let admin = admin_section(side.path());
    let (h, b, _side) = two_replicas(&redis.url(), None, &admin, None).await;
    let a = Arc::clone(&h.state);
    assert_eq!(
        h.exchange_on(&a, &h.token(|_| {}), "api", None)
            .await
            .status,
        200
    );
    let req = axum::http::Request::post("/admin/revocations")
        .header("authorization", "Bearer admin-token-0123456789")
        .body(axum::body::Body::from(
            json!({"target": "api", "reason": "incident 42"}).to_string(),
        ))
        .unwrap();
    let r = send(ferry::http::app(Arc::clone(&a)), req).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["purged"], 1);
    assert_eq!(r.body["revocation"]["kind"], "target");
    let refused = until_status(400, || async {
        let token = h.token(|_| {});
        h.exchange_on(&b, &token, "api", None).await
    })
    .await;
    assert_eq!(refused.status, 400);
    assert!(
        refused
            .description()
            .contains("target `api` has been revoked")
    );

    // `ferry revoke` against the same Redis, from another process.
    dev::ferry_ok(&[
        "revoke",
        "--config",
        h.dir.path().join("ferry.toml").to_str().unwrap(),
        "--issuer",
        "fake",
        "--sub",
        "cli-victim",
    ]);
    let victim = until_status(400, || async {
        let token = h.token(|c| c["sub"] = "cli-victim".into());
        h.exchange_on(&a, &token, "other", None).await
    })
    .await;
    assert_eq!(victim.status, 400, "{:?}", victim.body);
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "revoke",
            "--config",
            h.dir.path().join("ferry.toml").to_str().unwrap(),
            "--jti",
            "a",
            "--target",
            "b",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_works_on_a_three_master_cluster() {
    let cluster = RedisCluster::start();
    let side = tempfile::tempdir().unwrap();
    let key = key_file(side.path());
    let nodes = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let provider = Counting::new(100);
    let h = Harness::with_provider(
        &[Algorithm::RS256],
        {
            let edit = redis_config(&format!("cluster = [{nodes}]"), &key, "");
            move |t| edit(t.replace("max_age = \"1h\"", "max_age = \"1h\"\nsingle_use = true"))
        },
        POLICY,
        Some(provider.clone() as Arc<dyn CredentialProvider>),
    )
    .await;
    let b = h
        .replica(Some(provider.clone() as Arc<dyn CredentialProvider>))
        .await;
    let a = Arc::clone(&h.state);
    let h = Arc::new(h);
    // Concurrent misses across replicas: one provider call.
    for r in concurrent_fresh_tokens(&h, &b, 10).await {
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(provider.calls(), 1);
    // Replay across replicas.
    let once = h.token(|c| c["sub"] = "once".into());
    assert_eq!(h.exchange_on(&a, &once, "api", None).await.status, 200);
    assert_eq!(h.exchange_on(&b, &once, "api", None).await.status, 400);
    // Revocation across replicas.
    let subject = "fake:repo:acme/infra:ref:refs/heads/main";
    let purged = b
        .services
        .store
        .revoke(&b.snapshot.load().revocation(
            ferry::store::RevocationTarget::Subject {
                subject: subject.into(),
            },
            None,
            h.now(),
        ))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(
        h.exchange_on(&a, &h.token(|_| {}), "api", None)
            .await
            .status,
        400
    );
    let ready = readyz(&a).await;
    assert_eq!(ready.body["store"]["backend"], "redis-cluster");
    assert_eq!(ready.body["store"]["ok"], true);
    // Keys are spread over the masters, and nothing is in plain text.
    let dump = cluster.dump();
    assert!(dump.contains(":cred string"));
    assert!(
        !dump.contains("ACCESS") && !dump.contains("SECRETKEY"),
        "{dump}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_lock_holder_dies_a_waiter_takes_over_after_the_lock_expires() {
    let redis = RedisServer::start();
    let provider = Counting::new(0);
    let (h, b, _side) = two_replicas(&redis.url(), Some(provider.clone()), "", None).await;
    // A third replica, whose upstream never answers, takes the mint lock for this
    // request and dies mid-mint: its lock is left behind (shortened here to 1.5 s).
    let token = h.token(|_| {});
    let state = Arc::clone(&b);
    let slow = Counting::new(60_000);
    let a2 = h
        .replica(Some(slow.clone() as Arc<dyn CredentialProvider>))
        .await;
    let holder = {
        let token = token.clone();
        let h2 = Arc::clone(&a2);
        tokio::spawn(async move { exchange_via(ferry::http::app(h2), &token, "api", None).await })
    };
    // Wait until the dying holder has the lock.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let lock_key = loop {
        if let Some(k) = redis
            .cli(&["--scan", "--pattern", "ferry:*:lock"])
            .lines()
            .next()
            .map(str::to_owned)
        {
            break k;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never took the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The holder dies (its task is aborted mid-mint); its lock stays until it expires.
    holder.abort();
    redis.cli(&["PEXPIRE", &lock_key, "1500"]);
    let started = std::time::Instant::now();
    let r = h.exchange_on(&state, &token, "api", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "the waiter waited for the lock to lapse"
    );
    assert_eq!(provider.calls(), 1, "the waiter took over and minted once");
    assert_eq!(slow.calls(), 0, "the dead holder never finished");
}

/// Fault matrix: Redis paused (`CLIENT PAUSE`, every command held): exchanges are answered
/// 503 with `Retry-After` within the store timeout, never 500, a revoked subject is never
/// granted, and service resumes by itself when the pause ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_redis_gives_503s_never_a_grant_revocation_refuses_and_recovers() {
    let redis = RedisServer::start();
    let (h, b, _side) = two_replicas(&redis.url(), None, "", None).await;
    let a = Arc::clone(&h.state);
    let revoked_token = || h.token(|c| c["sub"] = "revoked".into());
    assert_eq!(
        h.exchange_on(&a, &revoked_token(), "api", None)
            .await
            .status,
        200
    );
    let runtime = a.snapshot.load_full();
    let revocation = runtime.revocation(
        ferry::store::RevocationTarget::Subject {
            subject: "fake:revoked".into(),
        },
        None,
        h.now(),
    );
    a.services.store.revoke(&revocation).await.unwrap();
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "3000", "ALL"]), "OK");
    let paused = std::time::Instant::now();
    let mut unavailable = 0;
    while paused.elapsed() < Duration::from_millis(2000) {
        for state in [&a, &b] {
            let fresh = h
                .exchange_on(state, &h.token(|c| c["sub"] = "fresh".into()), "api", None)
                .await;
            assert!(
                fresh.status == 200 || fresh.status == 503,
                "{:?}",
                fresh.body
            );
            if fresh.status == 503 {
                assert_eq!(fresh.error(), "temporarily_unavailable");
                assert!(fresh.headers.contains_key("retry-after"));
                unavailable += 1;
            }
            let r = h.exchange_on(state, &revoked_token(), "api", None).await;
            assert_ne!(
                r.status, 200,
                "a revoked subject was granted during the pause"
            );
            assert_ne!(r.status, 500);
        }
    }
    assert!(unavailable > 0, "the pause was not felt");
    // The pause ends: both replicas serve again, and the revocation still holds.
    let after = h.token(|c| c["sub"] = "after-pause".into());
    let recovered = until_status(200, || h.exchange_on(&b, &after, "api", None)).await;
    assert_eq!(recovered.status, 200, "{:?}", recovered.body);
    let r = h.exchange_on(&a, &revoked_token(), "api", None).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_proof_replayed_to_another_replica_is_refused() {
    let redis = RedisServer::start();
    let (h, b, _side) = two_replicas(&redis.url(), None, "", None).await;
    let client = dpop::Client::load("dpop-client.key.pem");
    let token = h.token(|_| {});
    let proof = client.proof(h.now());
    let first = dpop::exchange(h.router(), &token, "api", &[&proof]).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["token_type"], "DPoP");
    let replayed = dpop::exchange(ferry::http::app(b), &token, "api", &[&proof]).await;
    assert_eq!(
        replayed.error(),
        "invalid_dpop_proof",
        "{:?}",
        replayed.body
    );
    assert!(
        replayed.description().contains("used before"),
        "{:?}",
        replayed.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_nonce_one_replica_issues_is_accepted_by_another() {
    let redis = RedisServer::start();
    let (h, b, _side) =
        two_replicas(&redis.url(), None, "[dpop]\nrequire_nonce = true\n", None).await;
    let client = dpop::Client::load("dpop-client.key.pem");
    let token = h.token(|_| {});
    let asked = dpop::exchange(h.router(), &token, "api", &[&client.proof(h.now())]).await;
    assert_eq!(asked.error(), "use_dpop_nonce", "{:?}", asked.body);
    let nonce = asked.headers["dpop-nonce"].to_str().unwrap().to_owned();
    let proof = client.proof_with_nonce(h.now(), &nonce);
    let on_b = dpop::exchange(ferry::http::app(b), &token, "api", &[&proof]).await;
    assert_eq!(on_b.status, 200, "{:?}", on_b.body);
    assert_eq!(on_b.body["token_type"], "DPoP");
}

/// An exchange of `token` for `api` through `state`'s router, from `client`.
async fn exchange_from(state: &Arc<ferry::http::AppState>, token: &str, client: &str) -> Resp {
    let body = serde_urlencoded::to_string([
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", token),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("audience", "api"),
    ])
    .unwrap();
    let mut req = axum::http::Request::post("/oauth2/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .unwrap();
    let addr: std::net::SocketAddr = format!("{client}:40000").parse().unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    send(ferry::http::app(Arc::clone(state)), req).await
}

fn reuse_raised(state: &ferry::http::AppState) -> usize {
    let snapshot = state.snapshot.load();
    state
        .services
        .anomalies
        .recent(i64::MAX / 2, &snapshot.config.anomalies)
        .iter()
        .filter(|a| a.anomaly.kind == ferry::anomaly::Kind::TokenReuseAcrossClients)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_shared_reuse_detection_a_token_used_on_two_replicas_from_two_addresses_is_raised() {
    let redis = RedisServer::start();
    // Shared: replica b compares with what replica a recorded in Redis.
    let (h, b, _side) = two_replicas(
        &redis.url(),
        None,
        "[anomalies.token_reuse_across_clients]\nshared = true\n",
        None,
    )
    .await;
    let token = h.token(|_| {});
    assert_eq!(
        exchange_from(&h.state, &token, "127.0.0.1").await.status,
        200
    );
    assert_eq!(exchange_from(&b, &token, "127.0.0.1").await.status, 200);
    assert_eq!(reuse_raised(&b), 0, "the same address is no reuse");
    assert_eq!(exchange_from(&b, &token, "127.0.0.2").await.status, 200);
    assert_eq!(reuse_raised(&b), 1);
    assert_eq!(reuse_raised(&h.state), 0);
    let dump = redis.dump();
    assert!(!dump.contains(&token), "the token is in Redis");

    // Per replica (the default): b has never seen the token from elsewhere.
    let (h, b, _side) = two_replicas(&redis.url(), None, "", None).await;
    let token = h.token(|c| c["jti"] = json!("another"));
    assert_eq!(
        exchange_from(&h.state, &token, "127.0.0.1").await.status,
        200
    );
    assert_eq!(exchange_from(&b, &token, "127.0.0.2").await.status, 200);
    assert_eq!(reuse_raised(&b), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_sentinels_a_failover_loses_no_acknowledged_revocation_and_ferry_follows_the_new_primary()
 {
    let mut redis = RedisSentinels::start();
    let sentinels: Vec<String> = redis.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let store = format!(
        "sentinel = [{}]\nsentinel_master = \"{}\"",
        sentinels.join(", "),
        RedisSentinels::MASTER
    );
    let (h, b, _side) = two_replicas_on(&store, Some(Counting::new(0)), "", None).await;
    let a = Arc::clone(&h.state);
    assert_eq!(a.services.store.backend(), "redis-sentinel");
    assert_eq!(
        a.services.store.revocation_copy(),
        None,
        "no local copy behind Sentinels"
    );
    let good = || h.token(|_| {});
    let mallory = h.token(|c| c["sub"] = "mallory".into());
    assert_eq!(h.exchange_on(&a, &good(), "api", None).await.status, 200);
    assert_eq!(h.exchange_on(&b, &mallory, "api", None).await.status, 200);

    // A revocation is acknowledged once the replica holds it (WAIT 1).
    a.services
        .store
        .revoke(&a.snapshot.load().revocation(
            ferry::store::RevocationTarget::Subject {
                subject: "fake:mallory".into(),
            },
            Some("before the failover".into()),
            h.now(),
        ))
        .await
        .unwrap();
    assert!(
        !redis
            .replica
            .cli(&["HGETALL", "ferry:{revocations}"])
            .is_empty(),
        "acknowledged before it reached the replica"
    );
    assert_eq!(h.exchange_on(&b, &mallory, "api", None).await.status, 400);

    // The primary dies. Until the Sentinels promote the replica every exchange is
    // refused (503) — never a 500, never mallory granted — and then Ferry serves from the
    // new primary without a restart.
    let old = redis.primary.port;
    redis.primary.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (mut unavailable, mut recovered) = (0, false);
    while std::time::Instant::now() < deadline && !recovered {
        for state in [&a, &b] {
            let r = h.exchange_on(state, &good(), "api", None).await;
            assert!(
                r.status == 200 || r.status == 503,
                "{} {:?}",
                r.status,
                r.body
            );
            unavailable += usize::from(r.status == 503);
            let m = h.exchange_on(state, &mallory, "api", None).await;
            assert!(
                m.status == 400 || m.status == 503,
                "mallory: {} {:?}",
                m.status,
                m.body
            );
            recovered |= r.status == 200 && redis.primary_port() == Some(redis.replica.port);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "Ferry did not follow the failover within 30 s");
    assert!(unavailable > 0, "the outage was never seen");
    assert_ne!(redis.primary_port(), Some(old));
    for state in [&a, &b] {
        assert_eq!(h.exchange_on(state, &good(), "api", None).await.status, 200);
        let m = h.exchange_on(state, &mallory, "api", None).await;
        assert_eq!(m.status, 400, "the revocation was lost: {:?}", m.body);
        assert!(m.description().contains("has been revoked"));
    }
    // The new primary has no replica: a revocation now cannot be acknowledged, and fails
    // rather than be acknowledged unreplicated.
    let unreplicated = a
        .services
        .store
        .revoke(&a.snapshot.load().revocation(
            ferry::store::RevocationTarget::Subject {
                subject: "fake:eve".into(),
            },
            None,
            h.now(),
        ))
        .await;
    // (Under load the WAIT answer can also miss the call's timeout: refused either way.)
    let e = unreplicated.unwrap_err().to_string();
    assert!(
        e.contains("reached 0 of the 1 replica") || e.contains("timed out"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_cluster_with_replicas_a_master_failover_loses_no_acknowledged_revocation() {
    let mut cluster = RedisCluster::start_with_replicas();
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let store = format!("cluster = [{}]", nodes.join(", "));
    let (h, b, _side) = two_replicas_on(&store, Some(Counting::new(0)), "", None).await;
    let a = Arc::clone(&h.state);
    let good = || h.token(|_| {});
    let mallory = h.token(|c| c["sub"] = "mallory".into());
    assert_eq!(h.exchange_on(&a, &good(), "api", None).await.status, 200);
    // Acknowledged once the slot's replica holds it (WAIT 1, routed to its master).
    a.services
        .store
        .revoke(&a.snapshot.load().revocation(
            ferry::store::RevocationTarget::Subject {
                subject: "fake:mallory".into(),
            },
            Some("before the failover".into()),
            h.now(),
        ))
        .await
        .unwrap();
    assert_eq!(h.exchange_on(&b, &mallory, "api", None).await.status, 400);

    // The master holding the revocation list dies; its replica is promoted.
    let key = "ferry:{revocations}";
    let old = cluster.master_of(key).unwrap();
    cluster.nodes[old].kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut recovered = false;
    while std::time::Instant::now() < deadline && !recovered {
        for state in [&a, &b] {
            let r = h.exchange_on(state, &good(), "api", None).await;
            assert!(
                r.status == 200 || r.status == 503,
                "{} {:?}",
                r.status,
                r.body
            );
            let m = h.exchange_on(state, &mallory, "api", None).await;
            assert!(
                m.status == 400 || m.status == 503,
                "mallory: {} {:?}",
                m.status,
                m.body
            );
            recovered |= r.status == 200 && cluster.master_of(key).is_some_and(|n| n != old);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "Ferry did not follow the promotion within 40 s");
    for state in [&a, &b] {
        let m = h.exchange_on(state, &mallory, "api", None).await;
        assert_eq!(m.status, 400, "the revocation was lost: {:?}", m.body);
        assert!(m.description().contains("has been revoked"));
    }
}
