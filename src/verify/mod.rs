//! Verifying subject tokens: the issuer is chosen by `iss`, the key by `kid`, the
//! algorithm from the issuer's allow-list; then signature, then time and audience.
//! Only a [`VerifiedToken`] leaves this module, and only this module can build one.

pub mod fetch;
pub mod jwk;
pub mod jwks;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::clock::SharedClock;
use crate::memo::SlotCache;
use ferry_provider_api::Secret;
use jwks::{JwksCache, KeyLookupError};

/// Subject tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Parses a supported algorithm's name ([`crate::algorithms`]).
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    crate::algorithms::parse(name)
}

/// A token as presented: trimmed, size-checked, not yet trusted for anything. Its
/// SHA-256 is computed once, here (the audit trail and the verified-token cache use it).
pub struct UnverifiedToken(Secret, crate::memo::Digest, String);

impl std::fmt::Debug for UnverifiedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UnverifiedToken({})", self.fingerprint())
    }
}

impl UnverifiedToken {
    /// Trims surrounding whitespace (token files end with a newline) and checks the size.
    pub fn new(raw: &str) -> Result<Self, VerifyError> {
        let trimmed = raw.trim();
        if trimmed.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge);
        }
        if trimmed.is_empty() {
            return Err(VerifyError::Malformed("the token is empty"));
        }
        let digest = crate::sha256(trimmed.as_bytes());
        Ok(Self(
            Secret::new(trimmed),
            digest,
            const_hex::encode(digest),
        ))
    }

    /// First 16 hex chars of SHA-256 of the token, for logs.
    pub fn fingerprint(&self) -> String {
        self.2.get(..16).unwrap_or(&self.2).to_owned()
    }

    /// Full SHA-256 of the token (hex), for the audit trail.
    pub fn sha256(&self) -> String {
        self.2.clone()
    }
}

/// A token whose signature, issuer, audience and lifetime have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    issuer_id: Arc<str>,
    claims: Arc<Map<String, Value>>,
    expires_at: i64,
    token_sha256: String,
    signature_checked: bool,
}

impl VerifiedToken {
    /// The id (from the config) of the issuer that signed it.
    pub fn issuer_id(&self) -> &str {
        &self.issuer_id
    }

    /// The verified claims.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// The token's `sub`, if it has a string one.
    pub fn sub(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }

    /// The token's `jti`, if it has a string one.
    pub fn jti(&self) -> Option<&str> {
        self.claims.get("jti").and_then(Value::as_str)
    }

    /// The token's `exp`, Unix seconds.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// SHA-256 (hex) of the presented token.
    pub fn token_sha256(&self) -> &str {
        &self.token_sha256
    }

    /// False only for `ferry explain --claims`, which checks claims without a signature.
    pub fn signature_checked(&self) -> bool {
        self.signature_checked
    }
}

/// Why a token was refused. Every message is safe to send to the client: it names the
/// failing check and never echoes the token.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Over [`MAX_TOKEN_BYTES`].
    #[error("the token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not a well-formed JWS compact serialization.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not one Ferry ever accepts.
    #[error("algorithm `{0}` is not accepted")]
    UnsupportedAlgorithm(String),
    /// The header has a `crit` parameter (RFC 7515 §4.1.11): Ferry understands no extension.
    #[error("the token header has critical extensions Ferry does not understand")]
    CriticalHeader,
    /// No `iss` claim.
    #[error("the token has no `iss` claim")]
    MissingIssuer,
    /// `iss` names no trusted issuer.
    #[error("issuer `{0}` is not trusted")]
    UntrustedIssuer(String),
    /// The algorithm is valid but not on this issuer's allow-list.
    #[error("algorithm `{alg}` is not allowed for issuer `{issuer}`")]
    AlgorithmNotAllowed {
        /// The algorithm.
        alg: String,
        issuer: String,
    },
    /// No key could be found.
    #[error("no signing key for this token at issuer `{issuer}`: {reason}")]
    Key {
        issuer: String,
        /// Why.
        reason: KeyLookupError,
    },
    /// The issuer's keys could not be fetched at all (a 503, not the client's fault).
    #[error("signing keys of issuer `{0}` are unavailable")]
    KeysUnavailable(String),
    /// The `kid` is unknown and the issuer's keys cannot be refreshed again for
    /// `retry_after` seconds (the unknown-`kid` rate limit): a 503, since a rotation at
    /// the issuer would make it known.
    #[error(
        "no signing key for this token at issuer `{issuer}` yet; keys are refreshed again in {retry_after}s"
    )]
    KeyNotYetKnown {
        issuer: String,
        /// Seconds until a refresh may run.
        retry_after: u64,
    },
    /// The signature does not verify.
    #[error("the token signature is invalid")]
    BadSignature,
    /// A registered claim has the wrong type.
    #[error("claim `{0}` has the wrong type")]
    ClaimType(&'static str),
    /// A required claim is missing.
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// `exp` has passed (beyond leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond leeway).
    #[error("token is not valid yet (`nbf` is in the future)")]
    NotYetValid,
    /// `iat` is in the future (beyond leeway).
    #[error("token was issued in the future (`iat`)")]
    IssuedInFuture,
    /// `iat` is older than the issuer's `max_age`.
    #[error(
        "token is too old (`iat` is more than {max_age}s ago, the `max_age` of issuer `{issuer}`)"
    )]
    TooOld {
        issuer: String,
        /// The configured bound in seconds.
        max_age: i64,
    },
    /// `exp` is further from `iat` than the issuer's `max_token_lifetime`.
    #[error(
        "token lives too long (`exp` is more than {max_lifetime}s after `iat`, the `max_token_lifetime` of issuer `{issuer}`)"
    )]
    TooLongLived {
        issuer: String,
        /// The configured bound in seconds.
        max_lifetime: i64,
    },
    /// No `aud` value is accepted by the issuer.
    #[error("audience `{aud}` not accepted by issuer `{issuer}`")]
    AudienceRejected {
        /// The (first, truncated) audience in the token.
        aud: String,
        issuer: String,
    },
}

impl VerifyError {
    /// True when the token names a key id its issuer does not publish (after the refresh
    /// that could have found it): what `unknown_kid_burst` counts.
    pub fn is_unknown_kid(&self) -> bool {
        matches!(
            self,
            Self::KeyNotYetKnown { .. }
                | Self::Key {
                    reason: KeyLookupError::UnknownKid(_) | KeyLookupError::RefreshLimited(..),
                    ..
                }
        )
    }

    /// True when the failure is Ferry's or the issuer's, not the token's (maps to 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::KeysUnavailable(_) | Self::KeyNotYetKnown { .. })
    }

    /// How long a client should wait before retrying an unavailable answer.
    pub fn retry_after(&self) -> std::time::Duration {
        match self {
            Self::KeyNotYetKnown { retry_after, .. } => {
                std::time::Duration::from_secs(*retry_after)
            }
            _ => std::time::Duration::from_secs(5),
        }
    }
}

/// One trusted issuer: how its tokens are checked.
#[derive(Debug)]
pub struct TrustedIssuer {
    /// The issuer id from the config.
    pub id: Arc<str>,
    /// The exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values (any of).
    pub audiences: HashSet<String>,
    /// Allowed algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp`/`nbf`/`iat`, seconds.
    pub leeway: i64,
    /// Maximum age of `iat`, seconds.
    pub max_age: Option<i64>,
    /// Longest accepted `exp − iat` (or `exp −` now without `iat`), seconds.
    pub max_lifetime: i64,
    /// Its keys.
    pub jwks: Arc<JwksCache>,
}

/// Counts of signatures that checked out (see [`Verifier::signatures`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignatureCounts {
    /// Checked against the issuer's key.
    pub verified: u64,
    /// The same token's earlier check, remembered (its claims re-checked).
    pub remembered: u64,
}

/// All trusted issuers, found by exact `iss`.
#[derive(Debug)]
pub struct Verifier {
    by_iss: HashMap<String, Arc<TrustedIssuer>>,
    clock: SharedClock,
    /// Tokens whose signature already verified, by SHA-256: a pod or CI job presenting
    /// the same token again skips the signature check (claims are re-checked every time,
    /// and the key must still be published).
    recent: SlotCache<Arc<Recent>>,
    /// Signatures checked now and remembered from an earlier check, since this verifier
    /// (its config revision) was built: `/metrics` and the load harness read them.
    verified: AtomicU64,
    remembered: AtomicU64,
}

struct Recent {
    issuer: Arc<TrustedIssuer>,
    kid: String,
    /// The key that verified it: remembered only while that same key is published.
    thumbprint: crate::memo::Digest,
    claims: Arc<Map<String, Value>>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<Value>,
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent")
            .field("issuer", &self.issuer.id)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier over these issuers.
    pub fn new(issuers: Vec<Arc<TrustedIssuer>>, clock: SharedClock) -> Self {
        Self::with_recent_capacity(issuers, clock, 16_384)
    }

    /// A verifier remembering up to `capacity` verified tokens (0: none; benchmarks).
    pub fn with_recent_capacity(
        issuers: Vec<Arc<TrustedIssuer>>,
        clock: SharedClock,
        capacity: usize,
    ) -> Self {
        let by_iss = issuers.into_iter().map(|i| (i.issuer.clone(), i)).collect();
        Self {
            by_iss,
            clock,
            recent: SlotCache::new(capacity, std::time::Duration::from_secs(3600)),
            verified: AtomicU64::new(0),
            remembered: AtomicU64::new(0),
        }
    }

    /// Subject-token signatures that checked out since this verifier was built: verified
    /// now, and remembered from an earlier verify of the same token.
    pub fn signatures(&self) -> SignatureCounts {
        SignatureCounts {
            verified: self.verified.load(Ordering::Relaxed),
            remembered: self.remembered.load(Ordering::Relaxed),
        }
    }

    /// Every trusted issuer.
    pub fn issuers(&self) -> impl Iterator<Item = &Arc<TrustedIssuer>> {
        self.by_iss.values()
    }

    /// Verifies a presented token completely.
    #[tracing::instrument(skip_all, fields(token = %token.fingerprint()))]
    pub async fn verify(&self, token: &UnverifiedToken) -> Result<VerifiedToken, VerifyError> {
        let sha = token.sha256();
        if let Some(recent) = self.recent.get(&token.1)
            && recent
                .issuer
                .jwks
                .publishes(&recent.kid, &recent.thumbprint)
        {
            tracing::trace!(issuer = %recent.issuer.id, "signature verified before; claims re-checked");
            self.remembered.fetch_add(1, Ordering::Relaxed);
            return self.check_claims(&recent.issuer, Arc::clone(&recent.claims), sha, true);
        }
        let raw = token.0.expose();
        let parts = split_jws(raw)?;
        let header: RawHeader = decode_json_part(parts.header)
            .map_err(|()| VerifyError::Malformed("the header is not base64url-encoded JSON"))?;
        let claims: Map<String, Value> = decode_json_part(parts.payload).map_err(|()| {
            VerifyError::Malformed("the claims are not a base64url-encoded JSON object")
        })?;
        if header.crit.is_some() {
            return Err(VerifyError::CriticalHeader);
        }
        let alg_name = header
            .alg
            .ok_or(VerifyError::Malformed("the header has no `alg`"))?;
        let alg = parse_algorithm(&alg_name)
            .ok_or_else(|| VerifyError::UnsupportedAlgorithm(crate::text::echo(&alg_name)))?;
        // The issuer is chosen by `iss` before anything is trusted; nothing else from the
        // unverified claims is used until the signature checks out.
        let issuer = self.issuer_for(&claims)?;
        tracing::trace!(issuer = %issuer.id, alg = %alg_name, kid = header.kid.as_deref(), "token header parsed");
        if !issuer.algorithms.contains(&alg) {
            return Err(VerifyError::AlgorithmNotAllowed {
                alg: alg_name,
                issuer: issuer.id.to_string(),
            });
        }
        let key = issuer
            .jwks
            .key_for(header.kid.as_deref(), alg)
            .await
            .map_err(|reason| match reason {
                KeyLookupError::Unavailable => VerifyError::KeysUnavailable(issuer.id.to_string()),
                KeyLookupError::RefreshLimited(_, after) => VerifyError::KeyNotYetKnown {
                    issuer: issuer.id.to_string(),
                    retry_after: after,
                },
                reason => VerifyError::Key {
                    issuer: issuer.id.to_string(),
                    reason,
                },
            })?;
        let signed = raw
            .get(..parts.header.len() + 1 + parts.payload.len())
            .ok_or(VerifyError::Malformed("truncated"))?;
        if !key.verify(alg, signed.as_bytes(), parts.signature) {
            return Err(VerifyError::BadSignature);
        }
        tracing::trace!(issuer = %issuer.id, "signature verified");
        self.verified.fetch_add(1, Ordering::Relaxed);
        let claims = Arc::new(claims);
        let verified = self.check_claims(&issuer, Arc::clone(&claims), sha.clone(), true)?;
        if let Some(kid) = header.kid {
            self.recent.insert(
                token.1,
                Arc::new(Recent {
                    issuer,
                    kid,
                    thumbprint: key.thumbprint,
                    claims,
                }),
            );
        }
        Ok(verified)
    }

    /// The id of the configured issuer a token names in `iss`, read without trusting it:
    /// what labels a refused token's metrics and audit line, nothing else.
    pub fn named_issuer(&self, token: &UnverifiedToken) -> Option<&str> {
        let parts = split_jws(token.0.expose()).ok()?;
        let claims: Map<String, Value> = decode_json_part(parts.payload).ok()?;
        let iss = claims.get("iss")?.as_str()?;
        self.by_iss.get(iss).map(|i| &*i.id)
    }

    /// Checks everything but the signature: for `ferry explain --claims` only. The result
    /// says `signature_checked() == false`.
    pub fn check_claims_without_signature(
        &self,
        claims: Map<String, Value>,
    ) -> Result<VerifiedToken, VerifyError> {
        let issuer = self.issuer_for(&claims)?;
        self.check_claims(&issuer, Arc::new(claims), String::new(), false)
    }

    fn issuer_for(&self, claims: &Map<String, Value>) -> Result<Arc<TrustedIssuer>, VerifyError> {
        let iss = match claims.get("iss") {
            None => return Err(VerifyError::MissingIssuer),
            Some(Value::String(s)) => s,
            Some(_) => return Err(VerifyError::ClaimType("iss")),
        };
        self.by_iss
            .get(iss)
            .cloned()
            .ok_or_else(|| VerifyError::UntrustedIssuer(crate::text::echo(iss)))
    }

    fn check_claims(
        &self,
        issuer: &TrustedIssuer,
        claims: Arc<Map<String, Value>>,
        token_sha256: String,
        signature_checked: bool,
    ) -> Result<VerifiedToken, VerifyError> {
        let now = self.clock.now();
        let leeway = issuer.leeway;
        // RFC 7519 §4.1.4: exp is required by Ferry (short-lived tokens only).
        let exp = numeric_date(&claims, "exp")?.ok_or(VerifyError::MissingClaim("exp"))?;
        if now >= exp.saturating_add(leeway) {
            return Err(VerifyError::Expired);
        }
        if let Some(nbf) = numeric_date(&claims, "nbf")?
            && now.saturating_add(leeway) < nbf
        {
            return Err(VerifyError::NotYetValid);
        }
        let iat = numeric_date(&claims, "iat")?;
        if let Some(iat) = iat
            && now.saturating_add(leeway) < iat
        {
            return Err(VerifyError::IssuedInFuture);
        }
        if let Some(max_age) = issuer.max_age {
            let iat = iat.ok_or(VerifyError::MissingClaim("iat"))?;
            if now > iat.saturating_add(max_age).saturating_add(leeway) {
                return Err(VerifyError::TooOld {
                    issuer: issuer.id.to_string(),
                    max_age,
                });
            }
        }
        // A bounded lifetime is what lets a revocation outlive every token it covers
        // (`Snapshot::revocation_ttl`).
        let lifetime = match iat {
            Some(iat) => exp.saturating_sub(iat),
            None => exp.saturating_sub(now).saturating_sub(leeway),
        };
        if lifetime > issuer.max_lifetime {
            return Err(VerifyError::TooLongLived {
                issuer: issuer.id.to_string(),
                max_lifetime: issuer.max_lifetime,
            });
        }
        check_audience(issuer, claims.get("aud"))?;
        Ok(VerifiedToken {
            issuer_id: Arc::clone(&issuer.id),
            claims,
            expires_at: exp,
            token_sha256,
            signature_checked,
        })
    }
}

/// RFC 7519 §4.1.3: `aud` is a string or an array of strings; one must be accepted.
fn check_audience(issuer: &TrustedIssuer, aud: Option<&Value>) -> Result<(), VerifyError> {
    let values: Vec<&str> = match aud {
        None => return Err(VerifyError::MissingClaim("aud")),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(item.as_str().ok_or(VerifyError::ClaimType("aud"))?);
            }
            out
        }
        Some(_) => return Err(VerifyError::ClaimType("aud")),
    };
    if values.iter().any(|a| issuer.audiences.contains(*a)) {
        return Ok(());
    }
    Err(VerifyError::AudienceRejected {
        aud: crate::text::echo(values.first().copied().unwrap_or("")),
        issuer: issuer.id.to_string(),
    })
}

/// RFC 7519 §2 NumericDate: a JSON number of seconds, possibly fractional.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, VerifyError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "NumericDate seconds, clamped by `as`"
                )]
                Ok(Some(f.floor() as i64))
            } else {
                Err(VerifyError::ClaimType(name))
            }
        }
        Some(_) => Err(VerifyError::ClaimType(name)),
    }
}

struct JwsParts<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

fn split_jws(raw: &str) -> Result<JwsParts<'_>, VerifyError> {
    let mut parts = raw.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => {
            if header.is_empty() || payload.is_empty() {
                return Err(VerifyError::Malformed("empty header or claims"));
            }
            if signature.is_empty() {
                return Err(VerifyError::Malformed("the token is not signed"));
            }
            Ok(JwsParts {
                header,
                payload,
                signature,
            })
        }
        _ if raw.split('.').count() == 5 => Err(VerifyError::Malformed(
            "encrypted tokens (JWE) are not accepted",
        )),
        _ => Err(VerifyError::Malformed(
            "not a JWT (expected three base64url parts separated by dots)",
        )),
    }
}

fn decode_json_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, ()> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| ())?;
    serde_json::from_slice(&bytes).map_err(|_| ())
}

#[cfg(test)]
mod tests;
