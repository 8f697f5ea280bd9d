//! Criterion micro-benchmarks: verify (per algorithm), mapping (a GitHub Actions rule
//! set), policy (20 policies), cache get/put (memory and Redis), token signing.
//! `cargo bench --bench micro`. The Redis group starts a private redis-server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

/// The allocator the `ferry` binary uses (src/main.rs), so the figures are its figures.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use ferry::clock::{Clock as _, SharedClock, SystemClock};
use ferry::issuer::keys::{KeyRing, generate_private_pem, signing_key_from_pem};
use ferry::mapping::{Identity, IssuerMapping, Mapper, Rule};
use ferry::policy::{AttributePresence, AuthzInput, PolicyEngine, PolicySource};
use ferry::provider_api::{Credential, Secret};
use ferry::store::{CacheKey, Cacheable, CredentialCache as _, RevocationList as _};
use ferry::verify::jwks::{JwksCache, JwksPolicy};
use ferry::verify::{TrustedIssuer, UnverifiedToken, Verifier};
use jsonwebtoken::Algorithm;
use serde_json::json;

fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

fn policy() -> JwksPolicy {
    JwksPolicy {
        refresh_default: Duration::from_secs(3600),
        refresh_min: Duration::from_secs(300),
        refresh_max: Duration::from_secs(86_400),
        unknown_kid_min_interval: Duration::from_secs(30),
        max_stale: Duration::from_secs(86_400),
        retry_interval: Duration::from_secs(30),
    }
}

fn github_claims(now: i64) -> serde_json::Value {
    json!({
        "iss": "https://token.actions.githubusercontent.com", "aud": "https://ferry.example.com",
        "sub": "repo:acme/infra:ref:refs/heads/main", "ref": "refs/heads/main", "sha": "8f2c1d0e",
        "repository": "acme/infra", "repository_owner": "acme", "repository_owner_id": "123456",
        "repository_id": "987654", "repository_visibility": "private", "run_id": "6031234567",
        "run_number": "42", "run_attempt": "1", "actor": "octocat", "actor_id": "583231",
        "workflow": "deploy", "workflow_ref": "acme/infra/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_ref": "acme/infra/.github/workflows/deploy.yml@refs/heads/main",
        "event_name": "push", "ref_type": "branch", "environment": "production",
        "runner_environment": "github-hosted", "iat": now, "nbf": now, "exp": now + 300,
        "jti": uuid::Uuid::new_v4().to_string()
    })
}

fn bench_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    let now = SystemClock.now();
    for alg in ferry::algorithms::ALGORITHMS
        .iter()
        .filter(|a| a.signs)
        .map(|a| a.alg)
    {
        let pem = generate_private_pem(alg).unwrap();
        let key = signing_key_from_pem(alg, pem.as_bytes(), Some("k1"), 0).unwrap();
        let jwks = serde_json::to_vec(&json!({"keys": [key.public]})).unwrap();
        let cache = JwksCache::from_static(
            "gh".into(),
            &jwks,
            reqwest::Client::new(),
            clock(),
            policy(),
        )
        .unwrap();
        let issuer = Arc::new(TrustedIssuer {
            id: Arc::from("gh"),
            issuer: "https://token.actions.githubusercontent.com".into(),
            audiences: ["https://ferry.example.com".to_owned()].into(),
            algorithms: vec![alg],
            leeway: 60,
            max_age: None,
            max_lifetime: 86_400,
            jwks: Arc::new(cache),
        });
        // No verified-token cache: every iteration checks a signature.
        let verifier = Verifier::with_recent_capacity(vec![issuer], clock(), 0);
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some("k1".into());
        let token = UnverifiedToken::new(
            &jsonwebtoken::encode(&header, &github_claims(now), &key.encoding).unwrap(),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        group.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| rt.block_on(verifier.verify(&token)).unwrap())
        });
    }
    group.finish();
}

fn github_mapper(cache: usize) -> Mapper {
    let rule = |k: &str, s: &str| Rule::compile(k, s).unwrap();
    Mapper::with_cache_capacity(
        vec![IssuerMapping::new(
            "gh".into(),
            Some(rule(
                "condition",
                r#"assertion.repository_owner == "acme" && assertion.ref_type == "branch""#,
            )),
            rule(
                "mapping.subject",
                r#""github:" + assertion.repository + ":" + assertion.ref"#,
            ),
            Some(rule(
                "mapping.groups",
                r#"["github", "github:" + assertion.repository_owner] + (assertion.environment == "production" ? ["prod"] : [])"#,
            )),
            vec![
                ("repository".into(), rule("r", "assertion.repository")),
                ("ref".into(), rule("f", "assertion.ref")),
                (
                    "environment".into(),
                    rule(
                        "e",
                        r#"has(assertion.environment) ? assertion.environment : """#,
                    ),
                ),
                (
                    "workflow_ref".into(),
                    rule("w", "assertion.job_workflow_ref"),
                ),
                ("actor".into(), rule("a", "assertion.actor")),
            ],
        )],
        cache,
    )
}

fn bench_mapping(c: &mut Criterion) {
    let now = SystemClock.now();
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(github_claims(now)).unwrap();
    // A verified token, via the claims-only path (the signature is not what is measured).
    let cache = JwksCache::from_static("gh".into(), br#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#, reqwest::Client::new(), clock(), policy()).unwrap();
    let verifier = Verifier::new(
        vec![Arc::new(TrustedIssuer {
            id: Arc::from("gh"),
            issuer: "https://token.actions.githubusercontent.com".into(),
            audiences: ["https://ferry.example.com".to_owned()].into(),
            algorithms: vec![Algorithm::ES256],
            leeway: 60,
            max_age: None,
            max_lifetime: 86_400,
            jwks: Arc::new(cache),
        })],
        clock(),
    );
    let token = verifier.check_claims_without_signature(claims).unwrap();
    // Evaluated: the CEL rules run (a new workload, or the identity cache off).
    let mapper = github_mapper(0);
    c.bench_function("mapping/github_actions_rules", |b| {
        b.iter(|| mapper.map(&token).unwrap())
    });
    // Remembered: the same workload again (a fresh token with the same stable claims).
    let mapper = github_mapper(16_384);
    c.bench_function("mapping/github_actions_rules_remembered", |b| {
        b.iter(|| mapper.map(&token).unwrap())
    });
}

fn bench_policy(c: &mut Criterion) {
    let mut text = String::new();
    for i in 0..19 {
        text.push_str(&format!(
            "@id(\"p{i}\")\npermit(principal in Ferry::Group::\"team{i}\", action == Ferry::Action::\"exchange\", resource == Ferry::Target::\"t{i}\") when {{ principal.attributes.repository == \"acme/repo{i}\" && principal.attributes.environment == \"production\" }};\n"
        ));
    }
    text.push_str("@id(\"deny-outside\")\nforbid(principal, action, resource) unless { context.source_ip.isInRange(ip(\"10.0.0.0/8\")) || context.source_ip.isLoopback() };\n");
    let attrs: BTreeMap<String, AttributePresence> =
        ["repository", "ref", "environment", "workflow_ref", "actor"]
            .into_iter()
            .map(|a| (a.to_owned(), AttributePresence::Always))
            .collect();
    let (engine, _) = PolicyEngine::load(
        &[PolicySource {
            file: "p.cedar".into(),
            text,
        }],
        &attrs,
        "ferry.toml",
    )
    .unwrap();
    let identity = Identity {
        issuer_id: "gh".into(),
        subject: "github:acme/repo7:refs/heads/main".into(),
        groups: vec!["github".into(), "team7".into()],
        attributes: [
            ("repository", "acme/repo7"),
            ("ref", "refs/heads/main"),
            ("environment", "production"),
            ("workflow_ref", "w"),
            ("actor", "octocat"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    };
    let scopes = vec!["read".to_owned()];
    let input = AuthzInput {
        anomalies: &[],
        identity: &identity,
        target_id: "t7",
        target_kind: "jwt",
        source_ip: IpAddr::from([10, 1, 2, 3]),
        scopes: &scopes,
        timestamp: SystemClock.now(),
        client_certificate: None,
    };
    assert!(engine.authorize(&input).allowed);
    // Evaluated: entities, context, request and the 20 policies (a decision-cache miss).
    c.bench_function("policy/20_policies_allow", |b| {
        b.iter(|| engine.evaluate(&input))
    });
    // Remembered: the same identity, target and scopes again.
    c.bench_function("policy/20_policies_allow_remembered", |b| {
        b.iter(|| engine.authorize(&input))
    });
}

fn credential() -> Credential {
    Credential {
        access_token: Secret::new("x".repeat(900)),
        issued_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
        token_type: "Bearer".into(),
        expires_at: SystemClock.now() + 3600,
        fields: BTreeMap::new(),
        upstream_request_id: None,
        token_id: Some("jti".into()),
    }
}

fn bench_cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = CacheKey::from_parts(["bench"]);
    let cred = credential();
    let memory = ferry::store::memory::MemoryStore::new(100_000);
    rt.block_on(memory.put_credential(&key, Cacheable::new(&cred, Duration::from_secs(3600), &[])))
        .unwrap();
    c.bench_function("cache/memory_get", |b| {
        b.iter(|| rt.block_on(memory.get_credential(&key)).unwrap())
    });
    c.bench_function("cache/memory_put", |b| {
        b.iter(|| {
            rt.block_on(
                memory.put_credential(&key, Cacheable::new(&cred, Duration::from_secs(3600), &[])),
            )
            .unwrap()
        })
    });

    let redis_server = ferry_testkit::RedisServer::start();
    let port = redis_server.port;
    let sealer = ferry::store::seal::Sealer::new([7u8; 32], &[]).unwrap();
    let redis = ferry::store::redis::RedisStore::new(
        ferry::store::redis::Endpoint::Standalone(format!("redis://127.0.0.1:{port}")),
        Duration::from_secs(1),
        sealer,
    );
    rt.block_on(redis.put_credential(&key, Cacheable::new(&cred, Duration::from_secs(3600), &[])))
        .unwrap();
    c.bench_function("cache/redis_get", |b| {
        b.iter(|| rt.block_on(redis.get_credential(&key)).unwrap())
    });
    c.bench_function("cache/redis_put", |b| {
        b.iter(|| {
            rt.block_on(
                redis.put_credential(&key, Cacheable::new(&cred, Duration::from_secs(3600), &[])),
            )
            .unwrap()
        })
    });
    // The four revocation fields an exchange checks.
    let fields = vec![
        "subject:a".to_owned(),
        "target:b".to_owned(),
        "issuer_sub:c".to_owned(),
        "jti:d".to_owned(),
    ];
    c.bench_function("cache/redis_revocation_check", |b| {
        b.iter(|| rt.block_on(redis.revoked(&fields, 0)).unwrap())
    });
    c.bench_function("cache/redis_revocation_check_and_get", |b| {
        b.iter(|| {
            let (r, c) = rt.block_on(redis.revoked_and_cached(&fields, 0, &key));
            (r.unwrap(), c.unwrap().unwrap())
        })
    });
}

fn bench_signing(c: &mut Criterion) {
    let mut group = c.benchmark_group("sign");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let ring = KeyRing::ephemeral(alg, 0).unwrap();
        let issuer = ferry::issuer::FerryIssuer::new(
            "https://ferry.example.com",
            ring,
            clock(),
            &[],
            false,
            Default::default(),
        );
        group.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| {
                let mut claims = serde_json::Map::new();
                claims.insert("sub".into(), "github:acme/infra:refs/heads/main".into());
                claims.insert("aud".into(), "https://api".into());
                rt.block_on(issuer.mint(Duration::from_secs(300), claims))
                    .unwrap()
            })
        });
    }
    group.finish();
}

/// A DPoP proof's full check (RFC 9449 §4.3: parse, the proof key's JWK, signature,
/// claims and thumbprint), beside the subject token's own verify above: the CPU a
/// DPoP-bound exchange adds (the replay record's write is a store call on top).
fn bench_dpop(c: &mut Criterion) {
    let mut group = c.benchmark_group("dpop");
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let pem = generate_private_pem(alg).unwrap();
        let key = signing_key_from_pem(alg, pem.as_bytes(), Some("dpop"), 0).unwrap();
        let now = SystemClock.now();
        let mut header = jsonwebtoken::Header::new(alg);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(key.public.clone());
        let htu = "https://ferry.example.com/oauth2/token";
        let claims = json!({"jti": "0b5c", "htm": "POST", "htu": htu, "iat": now});
        let proof = jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap();
        assert!(ferry::exchange::dpop::verify(&proof, "POST", htu, now).is_ok());
        group.bench_function(format!("verify_{alg:?}"), |b| {
            b.iter(|| ferry::exchange::dpop::verify(&proof, "POST", htu, now))
        });
    }
    group.finish();
}

/// The misuse detector and the console's decision ring, per decision: a granted cache
/// hit of one of 1 000 subjects, each with its own token, from one of 50 addresses.
fn bench_observe(c: &mut Criterion) {
    let config = ferry::config::anomalies::AnomaliesConfig::default();
    let records: Vec<ferry::record::ExchangeRecord> = (0..1000)
        .map(|i| {
            let client: IpAddr = format!("10.0.{}.{}", i % 50, i % 200 + 1).parse().unwrap();
            let mut r = ferry::record::ExchangeRecord::start(
                uuid::Uuid::new_v4().to_string(),
                client,
                "rev".into(),
            );
            r.issuer = Some("github".into());
            r.token_sub = Some(format!("repo:acme/svc-{i}:ref:refs/heads/main"));
            r.subject = Some(format!("github:acme/svc-{i}"));
            r.target = Some("aws-deploy".into());
            r.target_kind = Some("aws");
            r.policy_ids = vec!["deployers".into()];
            r.policy_decision = Some("allow");
            r.cache = Some(ferry::record::CacheResult::Hit);
            r.token_sha256 = Some(ferry::sha256_hex(format!("token-{i}").as_bytes()));
            r
        })
        .collect();
    let detector = ferry::anomaly::Detector::new();
    let now = SystemClock.now();
    let mut i = 0usize;
    c.bench_function("anomaly/observe_granted_hit", |b| {
        b.iter(|| {
            i = (i + 1) % records.len();
            detector.observe(&records[i], now, &config, None)
        });
    });
    let activity = ferry::http::console::activity::Activity::default();
    c.bench_function("console/ring_push", |b| {
        b.iter_batched(
            || Box::new(records[i % records.len()].clone()),
            |r| activity.push(now, 0.4, r),
            criterion::BatchSize::SmallInput,
        );
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(30);
    targets = bench_verify, bench_mapping, bench_policy, bench_cache, bench_signing, bench_dpop, bench_observe
}
criterion_main!(benches);
