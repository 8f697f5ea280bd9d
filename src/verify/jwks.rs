//! Per-issuer JWKS cache: scheduled refresh, one shared rate-limited refresh on an
//! unknown `kid`, stale keys served up to a bound while refreshes fail.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use url::Url;

use super::fetch::{self, FetchError};
use crate::clock::SharedClock;

pub use super::jwk::{KeyKind, VerifyingKey, parse_jwks, to_verifying_key};

/// JWKS documents larger than this are refused.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Discovery documents larger than this are refused.
pub const MAX_DISCOVERY_BYTES: usize = 256 * 1024;

/// How the cache refreshes (from `[jwks]` in the config).
#[derive(Debug, Clone)]
pub struct JwksPolicy {
    /// Refresh interval when the server sends no usable Cache-Control.
    pub refresh_default: Duration,
    /// Lower bound on the refresh interval, whatever Cache-Control says.
    pub refresh_min: Duration,
    /// Upper bound on the refresh interval.
    pub refresh_max: Duration,
    /// At most one unknown-`kid` refresh per issuer per this interval.
    pub unknown_kid_min_interval: Duration,
    /// Keys keep serving this long after their last successful fetch while refreshes fail.
    pub max_stale: Duration,
    /// Wait before retrying a failed scheduled refresh.
    pub retry_interval: Duration,
}

impl JwksPolicy {
    /// The policy `[jwks]` configures.
    pub fn of(c: &crate::config::JwksConfig) -> Self {
        Self {
            refresh_default: c.refresh_default.0,
            refresh_min: c.refresh_min.0,
            refresh_max: c.refresh_max.0,
            unknown_kid_min_interval: c.unknown_kid_min_interval.0,
            max_stale: c.max_stale.0,
            retry_interval: c.retry_interval.0,
        }
    }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery {
        /// The exact issuer identifier (the discovery document must repeat it).
        issuer: String,
    },
    /// A configured JWKS URL.
    Uri(Url),
    /// A static JWKS file, loaded once (air-gapped).
    Static,
}

/// Why no key could be found for a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyLookupError {
    /// No key with this `kid` (after the allowed refresh).
    #[error("no key with kid `{0}`")]
    UnknownKid(String),
    /// The token names no `kid` and no key fits its algorithm.
    #[error("the token has no `kid` and no key fits its algorithm")]
    NoKeyFits,
    /// The token names no `kid` and several keys fit.
    #[error("the token has no `kid` and {0} keys fit its algorithm; a `kid` is required")]
    Ambiguous(usize),
    /// The key with that `kid` cannot verify this algorithm.
    #[error("key `{0}` cannot verify this algorithm")]
    WrongKeyType(String),
    /// The issuer's keys have never been fetched, or are older than the stale bound.
    #[error("keys for this issuer are unavailable")]
    Unavailable,
    /// The `kid` is unknown and the refresh that could find it is rate-limited: the
    /// issuer may have rotated, so the client should retry after this many seconds.
    #[error("no key with kid `{0}` yet; keys are refreshed again in {1}s")]
    RefreshLimited(String, u64),
}

/// What operators see about an issuer's keys.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JwksStatus {
    /// Key ids currently served (`null` for a key without `kid`).
    pub key_ids: Vec<Option<String>>,
    /// Unix seconds of the last successful fetch (`None` for static files or never).
    pub last_success: Option<i64>,
    /// The last refresh error, if the last attempt failed.
    pub last_error: Option<String>,
    /// JWKS fetches attempted so far.
    pub fetches: u64,
    /// Fetches that succeeded.
    pub refresh_ok: u64,
    /// Fetches that failed.
    pub refresh_failed: u64,
    /// Whether keys are usable now.
    pub usable: bool,
}

struct KeySet {
    keys: Vec<Arc<VerifyingKey>>,
    /// `None` for static keys (never stale).
    fetched_at: Option<i64>,
    /// When a scheduled refresh is due.
    fresh_until: i64,
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The HTTP part failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The discovery document is unusable.
    #[error("discovery document: {0}")]
    Discovery(String),
    /// The JWKS document is unusable.
    #[error("jwks: {0}")]
    Jwks(String),
}

/// Whether an unknown-`kid` refresh ran (now, or just before by another caller) or was
/// held back by the rate limit for this many more seconds.
enum Refreshed {
    Now,
    Limited(u64),
}

/// The key cache of one trusted issuer.
pub struct JwksCache {
    issuer_id: String,
    source: JwksSource,
    client: reqwest::Client,
    clock: SharedClock,
    policy: JwksPolicy,
    keys: ArcSwap<KeySet>,
    refresh_lock: tokio::sync::Mutex<()>,
    last_unknown_kid_refresh: AtomicI64,
    fetches: AtomicU64,
    refresh_ok: AtomicU64,
    refresh_failed: AtomicU64,
    last_success: AtomicI64,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("issuer_id", &self.issuer_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

const NEVER: i64 = i64::MIN;

impl JwksCache {
    /// A cache that fetches its keys over HTTP.
    pub fn remote(
        issuer_id: String,
        source: JwksSource,
        client: reqwest::Client,
        clock: SharedClock,
        policy: JwksPolicy,
    ) -> Self {
        Self {
            issuer_id,
            source,
            client,
            clock,
            policy,
            keys: ArcSwap::from_pointee(KeySet {
                keys: Vec::new(),
                fetched_at: None,
                fresh_until: NEVER,
            }),
            refresh_lock: tokio::sync::Mutex::new(()),
            last_unknown_kid_refresh: AtomicI64::new(NEVER),
            fetches: AtomicU64::new(0),
            refresh_ok: AtomicU64::new(0),
            refresh_failed: AtomicU64::new(0),
            last_success: AtomicI64::new(NEVER),
            last_error: Mutex::new(None),
        }
    }

    /// A cache over a static JWKS document (already read from a file).
    pub fn from_static(
        issuer_id: String,
        document: &[u8],
        client: reqwest::Client,
        clock: SharedClock,
        policy: JwksPolicy,
    ) -> Result<Self, RefreshError> {
        if document.len() > MAX_JWKS_BYTES {
            return Err(RefreshError::Jwks(format!(
                "document is larger than {MAX_JWKS_BYTES} bytes"
            )));
        }
        let (keys, _skipped) = parse_jwks(document)?;
        let cache = Self::remote(issuer_id, JwksSource::Static, client, clock, policy);
        cache.keys.store(Arc::new(KeySet {
            keys,
            fetched_at: None,
            fresh_until: i64::MAX,
        }));
        Ok(cache)
    }

    /// The issuer id this cache belongs to.
    pub fn issuer_id(&self) -> &str {
        &self.issuer_id
    }

    /// Whether keys come from the network (and so need refreshing).
    pub fn is_remote(&self) -> bool {
        !matches!(self.source, JwksSource::Static)
    }

    /// How many fetches have been attempted.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// A snapshot for operators.
    pub fn status(&self) -> JwksStatus {
        let set = self.keys.load();
        let last = self.last_success.load(Ordering::SeqCst);
        JwksStatus {
            key_ids: set.keys.iter().map(|k| k.kid.clone()).collect(),
            last_success: (last != NEVER).then_some(last),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            fetches: self.fetch_count(),
            refresh_ok: self.refresh_ok.load(Ordering::SeqCst),
            refresh_failed: self.refresh_failed.load(Ordering::SeqCst),
            usable: self.usable(&set),
        }
    }

    /// Keys can be used: static ones, or fetched within `max_stale`. A fetched set may
    /// be empty — an issuer that publishes no keys has withdrawn them all, and its tokens
    /// are refused — but a cache that never fetched any is not usable.
    fn usable(&self, set: &KeySet) -> bool {
        match set.fetched_at {
            None => !set.keys.is_empty(),
            Some(at) => {
                let bound = i64::try_from(self.policy.max_stale.as_secs()).unwrap_or(i64::MAX);
                self.clock.now() < at.saturating_add(bound)
            }
        }
    }

    /// Whether this very key (by thumbprint) is currently published under `kid`, and
    /// the key set is usable.
    pub fn publishes(&self, kid: &str, thumbprint: &crate::memo::Digest) -> bool {
        let set = self.keys.load();
        self.usable(&set)
            && set
                .keys
                .iter()
                .any(|k| k.kid.as_deref() == Some(kid) && k.thumbprint == *thumbprint)
    }

    /// Seconds until the next scheduled refresh is due (0 when due now).
    pub fn refresh_due_in(&self) -> Duration {
        let set = self.keys.load();
        let now = self.clock.now();
        let secs = set.fresh_until.saturating_sub(now).max(0);
        Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    }

    /// Finds the key for a token's `kid` and `alg`, refreshing once (shared, rate-limited)
    /// when the `kid` is unknown or no keys are usable.
    pub async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyingKey>, KeyLookupError> {
        match self.lookup(kid, alg) {
            Err(KeyLookupError::UnknownKid(_) | KeyLookupError::Unavailable)
                if self.is_remote() =>
            {
                let refreshed = self.refresh_for_unknown_kid().await;
                match (self.lookup(kid, alg), refreshed) {
                    // Not found, and no refresh could run now: retry after the window.
                    (Err(KeyLookupError::UnknownKid(k)), Refreshed::Limited(after)) => {
                        Err(KeyLookupError::RefreshLimited(k, after))
                    }
                    (other, _) => other,
                }
            }
            other => other,
        }
    }

    fn lookup(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyingKey>, KeyLookupError> {
        let set = self.keys.load();
        if !self.usable(&set) {
            return Err(KeyLookupError::Unavailable);
        }
        match kid {
            Some(kid) => {
                let mut found = false;
                for key in set.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)) {
                    found = true;
                    if key.fits(alg) {
                        return Ok(Arc::clone(key));
                    }
                }
                if found {
                    Err(KeyLookupError::WrongKeyType(crate::text::echo(kid)))
                } else {
                    Err(KeyLookupError::UnknownKid(crate::text::echo(kid)))
                }
            }
            None => {
                let mut fitting = set.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.count()) {
                    (Some(key), 0) => Ok(Arc::clone(key)),
                    (Some(_), more) => Err(KeyLookupError::Ambiguous(more + 1)),
                    (None, _) => Err(KeyLookupError::NoKeyFits),
                }
            }
        }
    }

    /// One refresh shared by every concurrent caller, at most once per
    /// `unknown_kid_min_interval`.
    async fn refresh_for_unknown_kid(&self) -> Refreshed {
        let window =
            i64::try_from(self.policy.unknown_kid_min_interval.as_secs()).unwrap_or(i64::MAX);
        // Always queue on the lock, even inside the window: a refresh may be in flight
        // right now, and its result is what this caller needs.
        let _guard = self.refresh_lock.lock().await;
        // Whoever held the lock before us may have just refreshed: share its result —
        // unless it was long enough ago that the issuer may have rotated since.
        let last = self.last_unknown_kid_refresh.load(Ordering::SeqCst);
        let now = self.clock.now();
        if last != NEVER && now < last.saturating_add(window) {
            // A refresh this second is as good as ours; an older one may predate a
            // rotation.
            if now <= last.saturating_add(1) {
                return Refreshed::Now;
            }
            let after = last.saturating_add(window).saturating_sub(now);
            return Refreshed::Limited(u64::try_from(after).unwrap_or(1).max(1));
        }
        self.last_unknown_kid_refresh.store(now, Ordering::SeqCst);
        if let Err(e) = self.fetch_and_store().await {
            tracing::warn!(issuer = %self.issuer_id, error = %e, "jwks refresh on unknown kid failed");
        }
        Refreshed::Now
    }

    /// A scheduled refresh (start-up warm-up and the background loop).
    pub async fn refresh(&self) -> Result<usize, RefreshError> {
        if !self.is_remote() {
            return Ok(self.keys.load().keys.len());
        }
        let _guard = self.refresh_lock.lock().await;
        self.fetch_and_store().await
    }

    async fn fetch_and_store(&self) -> Result<usize, RefreshError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let result = self.fetch().await;
        let now = self.clock.now();
        match result {
            Ok((keys, max_age)) => {
                let interval = max_age
                    .unwrap_or(self.policy.refresh_default)
                    .clamp(self.policy.refresh_min, self.policy.refresh_max);
                let count = keys.len();
                self.keys.store(Arc::new(KeySet {
                    keys,
                    fetched_at: Some(now),
                    fresh_until: now
                        .saturating_add(i64::try_from(interval.as_secs()).unwrap_or(i64::MAX)),
                }));
                self.last_success.store(now, Ordering::SeqCst);
                self.refresh_ok.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                tracing::debug!(issuer = %self.issuer_id, keys = count, "jwks refreshed");
                Ok(count)
            }
            Err(e) => {
                self.refresh_failed.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
                // Keep the old keys; schedule a retry.
                let old = self.keys.load_full();
                let retry = i64::try_from(self.policy.retry_interval.as_secs()).unwrap_or(60);
                self.keys.store(Arc::new(KeySet {
                    keys: old.keys.clone(),
                    fetched_at: old.fetched_at,
                    fresh_until: now.saturating_add(retry),
                }));
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<(Vec<Arc<VerifyingKey>>, Option<Duration>), RefreshError> {
        let jwks_url = match &self.source {
            JwksSource::Static => return Err(RefreshError::Jwks("static keys".into())),
            JwksSource::Uri(url) => url.clone(),
            JwksSource::Discovery { issuer } => {
                let url = discovery_url(issuer)
                    .map_err(|e| RefreshError::Discovery(format!("bad issuer URL: {e}")))?;
                let fetched = fetch::get_limited(&self.client, &url, MAX_DISCOVERY_BYTES).await?;
                let doc: DiscoveryDocument = serde_json::from_slice(&fetched.body)
                    .map_err(|e| RefreshError::Discovery(format!("not valid JSON: {e}")))?;
                // OpenID Connect Discovery 1.0 §4.3: the issuer must match exactly.
                if doc.issuer != *issuer {
                    return Err(RefreshError::Discovery(format!(
                        "issuer `{}` does not match the configured `{issuer}`",
                        crate::text::echo(&doc.issuer)
                    )));
                }
                let jwks = Url::parse(&doc.jwks_uri)
                    .map_err(|e| RefreshError::Discovery(format!("bad jwks_uri: {e}")))?;
                // Plain http only where the config itself named a loopback http URL: a
                // remote https document cannot send Ferry to http, nor to loopback.
                if !fetch::may_follow(&url, &jwks) {
                    return Err(RefreshError::Discovery(format!(
                        "jwks_uri `{}` must use https",
                        crate::text::echo(&doc.jwks_uri)
                    )));
                }
                jwks
            }
        };
        let fetched = fetch::get_limited(&self.client, &jwks_url, MAX_JWKS_BYTES).await?;
        let (keys, skipped) = parse_jwks(&fetched.body)?;
        if skipped > 0 {
            tracing::debug!(issuer = %self.issuer_id, skipped, "jwks keys skipped (unsupported or not for signatures)");
        }
        Ok((keys, fetched.max_age))
    }
}

/// `{issuer}/.well-known/openid-configuration` (OIDC Discovery §4: strip one trailing `/`).
pub fn discovery_url(issuer: &str) -> Result<Url, url::ParseError> {
    let base = issuer.strip_suffix('/').unwrap_or(issuer);
    Url::parse(&format!("{base}/.well-known/openid-configuration"))
}

/// Cuts `s` to at most `max` bytes on a char boundary (for echoing untrusted values).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// Runs scheduled refreshes for one issuer until dropped (the handle aborts the task).
pub fn spawn_refresher(cache: Arc<JwksCache>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let wait = cache.refresh_due_in().max(Duration::from_secs(1));
            tokio::time::sleep(wait).await;
            if let Err(e) = cache.refresh().await {
                tracing::warn!(issuer = %cache.issuer_id(), error = %e, "scheduled jwks refresh failed; serving cached keys");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::jwk::{SIGNATURE_BUFFER, decode_signature};
    use super::*;

    #[test]
    fn signatures_up_to_rsa_8192_decode() {
        use base64::Engine as _;
        let mut buffer = [0u8; SIGNATURE_BUFFER];
        for len in [64usize, 256, 512, 1024] {
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(vec![7u8; len]);
            assert_eq!(
                decode_signature(&b64, &mut buffer).map(<[u8]>::len),
                Some(len)
            );
        }
        let too_long = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(vec![7u8; 1100]);
        assert!(decode_signature(&too_long, &mut buffer).is_none());
        assert!(decode_signature("not base64!", &mut buffer).is_none());
    }

    #[test]
    fn discovery_url_strips_one_slash() -> Result<(), url::ParseError> {
        assert_eq!(
            discovery_url("https://a.example/")?.as_str(),
            "https://a.example/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("https://a.example/tenant")?.as_str(),
            "https://a.example/tenant/.well-known/openid-configuration"
        );
        Ok(())
    }

    #[test]
    fn symmetric_and_encryption_keys_are_skipped() {
        let doc = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"},
            {"kty":"EC","crv":"P-256","use":"enc","kid":"e",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"s",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let parsed = parse_jwks(doc);
        assert!(matches!(parsed, Ok((ref keys, 2)) if keys.len() == 1));
        if let Ok((keys, _)) = parsed {
            assert!(keys.iter().all(|k| k.kid.as_deref() == Some("s")));
            assert!(
                keys.iter()
                    .all(|k| k.fits(Algorithm::ES256) && !k.fits(Algorithm::RS256))
            );
        }
    }

    #[test]
    fn a_document_without_usable_keys_is_an_error_but_an_empty_one_is_honoured() {
        assert!(matches!(parse_jwks(br#"{"keys":[]}"#), Ok((k, 0)) if k.is_empty()));
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(parse_jwks(b"not json").is_err());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
