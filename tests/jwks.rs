//! Issuer key rotation, the shared rate-limited unknown-kid refresh, stale keys while
//! the issuer is down, and Cache-Control bounds.
#![cfg(test)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry::verify::jwks::JwksCache;
use jsonwebtoken::Algorithm;

fn jwks_of(h: &Harness) -> Arc<JwksCache> {
    let rt = h.state.snapshot.load();
    Arc::clone(&rt.verifier.issuers().next().unwrap().jwks)
}

#[tokio::test]
async fn a_rotated_key_is_accepted_after_exactly_one_refresh() {
    let h = Harness::start().await;
    assert_eq!(h.issuer.jwks_fetches(), 1, "warm-up fetched once");
    let ok = h.exchange_token(&h.token(|_| {}), "api", None).await;
    assert_eq!(ok.status, 200);
    assert_eq!(h.issuer.jwks_fetches(), 1, "known kid: no fetch");

    // The issuer rotates: a new key k3 appears, k1 goes away.
    h.issuer.add_key(make_key(Algorithm::RS256, "k3"));
    h.issuer.remove_key("k1");
    let mut claims = h.issuer.claims(h.now());
    claims["sub"] = "after-rotation".into();
    let rotated = h.issuer.sign("k3", &claims);
    let r = h.exchange_token(&rotated, "api", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(h.issuer.jwks_fetches(), 2, "one refresh for the new kid");
    // And the next token with k3 needs no fetch.
    claims["sub"] = "after-rotation-2".into();
    let r = h
        .exchange_token(&h.issuer.sign("k3", &claims), "api", None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(h.issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_window() {
    let h = Harness::start().await;
    let before = h.issuer.jwks_fetches();
    let k1 = h.issuer.key("k1");
    let mut tasks = Vec::new();
    for i in 0..100 {
        let claims = h.issuer.claims(h.now());
        let token = sign_with(&k1, Some(&format!("unknown-{i}")), &claims);
        let router = h.router();
        tasks.push(tokio::spawn(async move {
            exchange_via(router, &token, "api", None).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 400);
        assert!(r.description().contains("no key with kid"), "{:?}", r.body);
    }
    assert_eq!(
        h.issuer.jwks_fetches() - before,
        1,
        "100 unknown kids, one fetch"
    );

    // Still inside the 30s window: no fetch at all, and since the issuer may have
    // rotated since the last one, the client is told when to retry.
    h.clock.advance(29);
    let token = sign_with(&k1, Some("unknown-late"), &h.issuer.claims(h.now()));
    let r = h.exchange_token(&token, "api", None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.error(), "temporarily_unavailable");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(h.issuer.jwks_fetches() - before, 1);

    // The window has passed: one more fetch is allowed.
    h.clock.advance(2);
    let token = sign_with(&k1, Some("unknown-next-window"), &h.issuer.claims(h.now()));
    assert_eq!(h.exchange_token(&token, "api", None).await.status, 400);
    assert_eq!(h.issuer.jwks_fetches() - before, 2);
}

#[tokio::test]
async fn concurrent_requests_with_a_new_kid_share_one_refresh() {
    let h = Harness::start().await;
    let before = h.issuer.jwks_fetches();
    h.issuer.add_key(make_key(Algorithm::ES256, "k-new"));
    let mut tasks = Vec::new();
    for i in 0..30 {
        let mut claims = h.issuer.claims(h.now());
        claims["sub"] = format!("w{i}").into();
        let token = h.issuer.sign("k-new", &claims);
        let router = h.router();
        tasks.push(tokio::spawn(async move {
            exchange_via(router, &token, "api", None).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(h.issuer.jwks_fetches() - before, 1);
}

#[tokio::test]
async fn stale_keys_serve_while_the_issuer_is_down_up_to_the_bound() {
    let h = Harness::start().await;
    let jwks = jwks_of(&h);
    h.issuer.set_failing(true);
    // A scheduled refresh fails; the old keys keep working.
    h.clock.advance(1800);
    assert!(jwks.refresh().await.is_err());
    let status = jwks.status();
    assert!(status.usable);
    assert!(
        status.last_error.as_deref().unwrap_or("").contains("503"),
        "{status:?}"
    );
    let r = h.exchange_token(&h.token(|_| {}), "api", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Past max_stale (1h since the last good fetch): fail closed with a 503.
    h.clock.advance(1801);
    let r = h.exchange_token(&h.token(|_| {}), "api", None).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error(), "temporarily_unavailable");

    // The issuer comes back: the next request refreshes and succeeds.
    h.issuer.set_failing(false);
    h.clock.advance(31);
    let r = h
        .exchange_token(&h.token(|c| c["sub"] = "back".into()), "api", None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test]
async fn cache_control_is_respected_within_bounds() {
    let h = Harness::start().await;
    let jwks = jwks_of(&h);
    // No Cache-Control: the default (1h).
    assert!((3590..=3600).contains(&jwks.refresh_due_in().as_secs()));
    for (header, expected) in [
        (Some("public, max-age=600"), 600),
        (Some("max-age=5"), 60),            // clamped up to refresh_min (1m)
        (Some("max-age=99999999"), 86_400), // clamped down to refresh_max (24h)
        (Some("no-store"), 60),
    ] {
        h.issuer.set_cache_control(header);
        jwks.refresh().await.unwrap();
        assert_eq!(
            jwks.refresh_due_in(),
            Duration::from_secs(expected),
            "{header:?}"
        );
    }
}

#[tokio::test]
async fn jwks_documents_over_256_kib_are_refused() {
    let h = Harness::start().await;
    for i in 0..400 {
        h.issuer.add_key(make_key(
            Algorithm::ES256,
            &format!("pad-{i:04}-{}", "x".repeat(500)),
        ));
    }
    let jwks = jwks_of(&h);
    let err = jwks.refresh().await.unwrap_err();
    assert!(err.to_string().contains("more than 262144 bytes"), "{err}");
    // The previous keys still serve.
    assert_eq!(
        h.exchange_token(&h.token(|_| {}), "api", None).await.status,
        200
    );
}

#[tokio::test]
async fn a_repeated_token_is_rechecked_and_dropped_with_its_key() {
    let h = Harness::start().await;
    let token = h.token(|c| c["exp"] = (h.now() + 120).into());
    // The verified-token cache admits a token the second time it verifies; the third
    // presentation is answered from it.
    for _ in 0..3 {
        assert_eq!(h.exchange_token(&token, "api", None).await.status, 200);
    }
    // Claims are re-checked on every use: once expired, refused.
    h.clock.advance(131);
    let r = h.exchange_token(&token, "api", None).await;
    assert_eq!(r.status, 400);
    assert!(r.description().contains("expired"));

    // A key the issuer stops publishing no longer vouches for tokens it signed, even
    // ones verified before.
    let token = h.token(|c| c["sub"] = "rotating".into());
    for _ in 0..3 {
        assert_eq!(h.exchange_token(&token, "api", None).await.status, 200);
    }
    h.issuer.remove_key("k1");
    let jwks = jwks_of(&h);
    jwks.refresh().await.unwrap();
    let r = h.exchange_token(&token, "api", None).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(
        r.description().contains("no key with kid `k1`"),
        "{:?}",
        r.body
    );
}

#[tokio::test]
async fn an_empty_key_set_is_honoured_at_once() {
    let h = Harness::start().await;
    let jwks = jwks_of(&h);
    let token = h.token(|_| {});
    for _ in 0..3 {
        assert_eq!(h.exchange_token(&token, "api", None).await.status, 200);
    }
    // The issuer withdraws every key: the next refresh empties the set (no max_stale
    // grace for a well-formed, empty document), and neither a fresh token nor the
    // remembered one passes.
    let fresh = h.token(|c| c["sub"] = "fresh".into());
    h.issuer.remove_key("k1");
    h.issuer.remove_key("k2");
    assert_eq!(jwks.refresh().await.unwrap(), 0);
    for t in [token, fresh] {
        let r = h.exchange_token(&t, "api", None).await;
        assert_eq!(r.status, 400, "{:?}", r.body);
    }
}

#[tokio::test]
async fn a_key_replaced_behind_its_kid_stops_remembered_tokens() {
    let h = Harness::start().await;
    let jwks = jwks_of(&h);
    let token = h.token(|_| {});
    // Verified, then remembered (a token is kept the second time it verifies).
    for _ in 0..3 {
        assert_eq!(h.exchange_token(&token, "api", None).await.status, 200);
    }
    assert!(h.state.snapshot.load().verifier.signatures().remembered >= 1);
    // Same kid, another key.
    h.issuer.remove_key("k1");
    h.issuer.add_key(make_key(Algorithm::RS256, "k1"));
    jwks.refresh().await.unwrap();
    let r = h.exchange_token(&token, "api", None).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.description().contains("signature"), "{:?}", r.body);
    // A token of the new key passes.
    let fresh = h.token(|c| c["sub"] = "new-key".into());
    assert_eq!(h.exchange_token(&fresh, "api", None).await.status, 200);
}

/// Fault matrix: the issuer's JWKS endpoint slower than `fetch_timeout` (2 s here), then
/// answering garbage: the keys already held keep serving (stale but valid, within
/// `max_stale`), a new `kid` cannot be fetched (503, never 500, never a grant), the
/// failure is visible in the key status, and Ferry recovers by itself.
#[tokio::test]
async fn a_slow_or_garbled_jwks_keeps_the_old_keys_and_recovers() {
    let h = Harness::start().await;
    let jwks = jwks_of(&h);
    let token = h.token(|_| {});
    assert_eq!(h.exchange_token(&token, "api", None).await.status, 200);

    for fault in ["slow", "garbage"] {
        match fault {
            "slow" => h.issuer.set_delay_ms(3_000),
            _ => {
                h.issuer.set_delay_ms(0);
                h.issuer.set_garbage(true);
            }
        }
        let started = std::time::Instant::now();
        assert!(jwks.refresh().await.is_err(), "{fault}");
        assert!(
            started.elapsed() < std::time::Duration::from_millis(2_800),
            "{fault}: fetch_timeout"
        );
        let status = jwks.status();
        assert!(
            status.usable && status.last_error.is_some(),
            "{fault}: {status:?}"
        );
        // Known keys still verify.
        let r = h
            .exchange_token(
                &h.token(|c| c["sub"] = format!("{fault}-known").into()),
                "api",
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{fault}: {:?}", r.body);
        // A new kid the issuer now publishes cannot be fetched: 503 or a plain refusal,
        // never a grant and never a 500.
        h.issuer
            .add_key(make_key(Algorithm::RS256, &format!("new-{fault}")));
        let mut claims = h.issuer.claims(h.now());
        claims["sub"] = format!("{fault}-new").into();
        let unknown = h.issuer.sign(&format!("new-{fault}"), &claims);
        let r = h.exchange_token(&unknown, "api", None).await;
        assert!(
            r.status == 503 || r.status == 400,
            "{fault}: {} {:?}",
            r.status,
            r.body
        );
        h.clock.advance(31);
    }
    // The issuer is well again: the next unknown-kid refresh finds the new keys.
    h.issuer.set_garbage(false);
    let mut claims = h.issuer.claims(h.now());
    claims["sub"] = "recovered".into();
    let token = h.issuer.sign("new-garbage", &claims);
    let r = h.exchange_token(&token, "api", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(jwks.status().last_error.is_none());
}
