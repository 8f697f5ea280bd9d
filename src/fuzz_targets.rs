//! The entry points of the fuzz targets (`fuzz/`), here so that the same functions run
//! under libFuzzer (nightly, `cargo fuzz run`) and, on stable, over the committed corpus
//! in `tests/fuzz_corpus.rs`. Each takes arbitrary bytes and must return without a
//! panic; where a second implementation exists, it also checks that both agree.

use std::sync::{Arc, OnceLock};

/// The dev issuer's public keys (`config/dev/jwks.json`): seeds signed with its dev-only
/// private key reach the signature check and beyond.
const DEV_JWKS: &[u8] = include_bytes!("../config/dev/jwks.json");
const DEV_ISSUER: &str = "https://dev-issuer.ferry.invalid";

fn verifier() -> Option<&'static crate::verify::Verifier> {
    static VERIFIER: OnceLock<Option<crate::verify::Verifier>> = OnceLock::new();
    VERIFIER
        .get_or_init(|| {
            crate::install_crypto_provider();
            let clock: crate::clock::SharedClock = crate::clock::ManualClock::new(1_700_000_000);
            let policy = crate::verify::jwks::JwksPolicy {
                refresh_default: std::time::Duration::from_secs(3600),
                refresh_min: std::time::Duration::from_secs(60),
                refresh_max: std::time::Duration::from_secs(86_400),
                unknown_kid_min_interval: std::time::Duration::from_secs(30),
                max_stale: std::time::Duration::from_secs(86_400),
                retry_interval: std::time::Duration::from_secs(30),
            };
            let client =
                crate::verify::fetch::http_client(std::time::Duration::from_secs(1)).ok()?;
            let jwks = crate::verify::jwks::JwksCache::from_static(
                "dev".into(),
                DEV_JWKS,
                client,
                clock.clone(),
                policy,
            )
            .ok()?;
            let issuer = crate::verify::TrustedIssuer {
                id: Arc::from("dev"),
                issuer: DEV_ISSUER.into(),
                audiences: ["ferry".to_owned()].into_iter().collect(),
                algorithms: vec![
                    jsonwebtoken::Algorithm::RS256,
                    jsonwebtoken::Algorithm::ES256,
                ],
                leeway: 60,
                max_age: Some(3600),
                max_lifetime: 86_400,
                jwks: Arc::new(jwks),
            };
            Some(crate::verify::Verifier::new(vec![Arc::new(issuer)], clock))
        })
        .as_ref()
}

/// The token front end: size and shape checks, header and claims decoding, issuer and
/// algorithm selection, key lookup, signature, claims. Static keys: no await point is
/// ever pending, so the future completes in one poll.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(token) = crate::verify::UnverifiedToken::new(text) else {
        return;
    };
    if let Some(verifier) = verifier() {
        use futures_util::FutureExt as _;
        if let Some(Ok(verified)) = verifier.verify(&token).now_or_never() {
            // A verified token is the dev issuer's, within its bounds.
            assert_eq!(verified.issuer_id(), "dev");
        }
        // Every refusal message is short enough to send back.
        if let Some(Err(e)) = verifier.verify(&token).now_or_never() {
            assert!(e.to_string().len() < 1024, "an error echoes too much");
        }
    }
}

/// The token request form: Ferry's decoder agrees with the URL Standard's
/// (`form_urlencoded`), and the RFC 8693 parameter check never panics.
pub fn form(data: &[u8]) {
    let ours = crate::exchange::request::form_pairs(data);
    let reference: Vec<(String, String)> = form_urlencoded::parse(data)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let ours_owned: Vec<(String, String)> = ours
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        ours_owned, reference,
        "form decoding differs from the URL Standard"
    );
    let _ = crate::exchange::request::parse(&ours, std::net::IpAddr::from([127, 0, 0, 1]));
}

/// The config loader: any bytes give a config or `file: entry: problem` lines.
pub fn config(data: &[u8]) {
    if let Err(errs) =
        crate::config::Config::parse(std::path::Path::new("fuzz.toml"), data.to_vec())
    {
        assert!(!errs.is_empty());
        for p in &errs.0 {
            assert_eq!(p.file, "fuzz.toml");
        }
    }
}

/// The packed cache-entry decoder (memory store): any bytes decode or are refused; what
/// decodes packs back to an entry that decodes the same.
pub fn packed(data: &[u8]) {
    if let Some(credential) = crate::store::packed::unpack(data) {
        let again = crate::store::packed::pack(&credential, &[]);
        let back = crate::store::packed::unpack(&again);
        assert_eq!(
            back.as_ref()
                .map(|c| (c.expires_at, c.access_token.expose().to_owned())),
            Some((
                credential.expires_at,
                credential.access_token.expose().to_owned()
            ))
        );
    }
}

/// The audit verifier: any text is verified or named as broken at a line, with and
/// without checkpoint keys.
pub fn audit(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let texts = [("fuzz.log".to_owned(), text)];
    let _ = crate::audit::verify_texts(&texts, None);
    static KEYS: OnceLock<Option<crate::audit::CheckpointKeys>> = OnceLock::new();
    if let Some(keys) = KEYS
        .get_or_init(|| crate::audit::CheckpointKeys::from_jwks(DEV_JWKS).ok())
        .as_ref()
    {
        let _ = crate::audit::verify_texts(&texts, Some(keys));
    }
}
