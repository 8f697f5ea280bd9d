//! What a hostile client tried, and what Ferry answers now: ambiguous cache keys, a full
//! replay record, revocations that outlive the tokens they cover, a cache that survives
//! unrelated reloads and is shared by replicas with equal targets.
#![cfg(test)]

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::*;
use ferry::config::Config;
use ferry::exchange::{Services, SingleFlight};
use ferry::http::{AppState, app};
use ferry::snapshot::{BuildOptions, Snapshot};
use jsonwebtoken::Algorithm;
use serde_json::json;

const GROUP_A_POLICY: &str = r#"
@id("group-a")
permit (principal in Ferry::Group::"a", action == Ferry::Action::"exchange",
        resource == Ferry::Target::"api");
"#;

#[tokio::test]
async fn a_group_name_with_a_newline_is_not_two_groups() {
    let h = Harness::with(&[Algorithm::RS256], |t| t, GROUP_A_POLICY).await;
    // Twice, with fresh tokens: the decision memo keeps what it is asked for again.
    let mut granted = String::new();
    for _ in 0..2 {
        let two = h.token(|c| c["groups"] = json!(["a", "b"]));
        let r = h.exchange_token(&two, "api", None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        granted = r.body["access_token"].as_str().unwrap().to_owned();
    }

    // Same subject, one group called "a\nb": policy denies it, and neither the decision
    // memo nor the credential cache may answer it with the first identity's grant.
    let one = h.token(|c| c["groups"] = json!(["a\nb"]));
    let r = h.exchange_token(&one, "api", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.error(), "invalid_target");
    assert!(
        !r.raw
            .windows(granted.len())
            .any(|w| w == granted.as_bytes())
    );
}

#[tokio::test]
async fn identities_that_differ_only_in_how_groups_split_get_their_own_credentials() {
    let permit_all = r#"permit (principal, action, resource == Ferry::Target::"api");"#;
    let h = Harness::with(&[Algorithm::RS256], |t| t, permit_all).await;
    let split = granted(&h, json!(["a", "b"])).await;
    assert_eq!(
        granted(&h, json!(["b", "a"])).await,
        split,
        "groups are a set"
    );
    assert_ne!(granted(&h, json!(["a\nb"])).await, split);
    assert_ne!(granted(&h, json!(["a b"])).await, split);
}

/// The access token granted to a fresh token with these groups.
async fn granted(h: &Harness, groups: serde_json::Value) -> String {
    let token = h.token(|c| c["groups"] = groups);
    let r = h.exchange_token(&token, "api", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["access_token"].as_str().unwrap().to_owned()
}

/// `[store] max_entries = 1` keeps at most ten used single-use token ids.
fn single_use_with_small_record(text: String) -> String {
    text.replace(
        "max_age = \"1h\"\n",
        "max_age = \"1h\"\nsingle_use = true\n",
    )
    .replace("[signing]", "[store]\nmax_entries = 1\n\n[signing]")
}

#[tokio::test]
async fn a_full_replay_record_refuses_instead_of_forgetting() {
    let h = Harness::with(&[Algorithm::RS256], single_use_with_small_record, POLICY).await;
    let (mut granted, mut full, mut replays_accepted) = (0, 0, 0);
    for _ in 0..300 {
        let token = h.token(|_| {});
        let first = h.exchange_token(&token, "api", None).await;
        match first.status {
            StatusCode::OK => granted += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(first.error(), "temporarily_unavailable", "{}", first.body);
                assert!(first.headers.contains_key("retry-after"));
                full += 1;
            }
            other => panic!("first use: {other} {}", first.body),
        }
        let again = h.exchange_token(&token, "api", None).await;
        if again.status == StatusCode::OK {
            replays_accepted += 1;
        }
    }
    assert_eq!(replays_accepted, 0, "a replay was accepted");
    assert_eq!(granted, 10, "the record holds ten ids");
    assert_eq!(full, 290);
}

/// A Ferry over the harness's config file with `edit` applied, sharing `store`.
async fn replica_with(
    h: &Harness,
    edit: impl FnOnce(String) -> String,
    store: Arc<dyn ferry::store::Store>,
) -> Arc<AppState> {
    let path = h.dir.path().join("ferry.toml");
    let text = edit(std::fs::read_to_string(&path).unwrap());
    let other = h.dir.path().join("replica.toml");
    std::fs::write(&other, text).unwrap();
    let config = Config::load(&other).unwrap();
    let (rt, _) = Snapshot::build(
        config,
        &BuildOptions {
            clock: h.clock.clone(),
            require_keys: true,
            previous_ephemeral: Some(h.state.snapshot.load().issuer.keys().clone()),
            previous_managed: None,
            metrics: std::sync::Arc::clone(&h.state.metrics),
        },
    )
    .unwrap();
    rt.warm_up().await;
    AppState::new(
        rt,
        Services {
            store,
            clock: h.clock.clone(),
            flights: SingleFlight::default(),
            anomalies: Default::default(),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn unrelated_config_changes_keep_the_cache_and_replicas_share_it() {
    let h = Harness::start().await;
    let first = h.exchange_token(&h.token(|_| {}), "api", None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let cached = first.body["access_token"].clone();

    // A reload that changes the log level and another target's lifetime.
    let store = Arc::clone(&h.state.services.store);
    let reloaded = replica_with(
        &h,
        |t| {
            t.replace(
                "[signing]",
                "[telemetry]\nlog_level = \"debug\"\n\n[signing]",
            )
            .replace(
                "audience = \"https://other.example.com\"\nttl = \"5m\"",
                "audience = \"https://other.example.com\"\nttl = \"7m\"",
            )
        },
        Arc::clone(&store),
    )
    .await;
    assert_ne!(
        reloaded.snapshot.load().revision,
        h.state.snapshot.load().revision
    );
    let r = h
        .exchange_on(&reloaded, &h.token(|_| {}), "api", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["access_token"], cached, "the cache was emptied");

    // A replica listening elsewhere shares it too.
    let other_listen = replica_with(
        &h,
        |t| t.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.2:0\""),
        Arc::clone(&store),
    )
    .await;
    let r = h
        .exchange_on(&other_listen, &h.token(|_| {}), "api", None)
        .await;
    assert_eq!(r.body["access_token"], cached);

    // A change to the target itself is a new credential.
    let changed = replica_with(&h, |t| t.replacen("ttl = \"5m\"", "ttl = \"6m\"", 1), store).await;
    let r = exchange_via(app(changed), &h.token(|_| {}), "api", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_ne!(r.body["access_token"], cached);
}

#[tokio::test]
async fn tokens_live_at_most_max_token_lifetime_and_revocations_outlive_them() {
    // No `max_age`: the default `max_token_lifetime` (24h) is the only bound.
    let h = Harness::with(
        &[Algorithm::RS256],
        |t| t.replace("max_age = \"1h\"\n", ""),
        POLICY,
    )
    .await;
    let now = h.now();
    let month = h.token(|c| c["exp"] = json!(now + 30 * 86_400));
    let r = h.exchange_token(&month, "api", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.description().contains("max_token_lifetime"), "{}", r.body);
    let no_iat = h.token(|c| {
        c.as_object_mut().unwrap().remove("iat");
        c["exp"] = json!(now + 2 * 86_400);
    });
    let r = h.exchange_token(&no_iat, "api", None).await;
    assert!(r.description().contains("max_token_lifetime"), "{}", r.body);

    // The longest-lived acceptable token, revoked by `jti`: still refused one second
    // before it expires.
    let jti = "long-lived";
    let day = h.token(|c| {
        c["exp"] = json!(now + 86_400);
        c["jti"] = json!(jti);
    });
    assert_eq!(
        h.exchange_token(&day, "api", None).await.status,
        StatusCode::OK
    );
    let runtime = h.state.snapshot.load_full();
    let revocation = runtime.revocation(
        ferry::store::RevocationTarget::Jti { jti: jti.into() },
        None,
        now,
    );
    assert!(revocation.expires_at > now + 86_400);
    h.state.services.store.revoke(&revocation).await.unwrap();
    h.clock.advance(86_400 - 1);
    let r = h.exchange_token(&day, "api", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.description().contains("revoked"), "{}", r.body);
}
