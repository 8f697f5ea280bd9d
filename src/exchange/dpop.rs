//! DPoP proofs on the token endpoint (RFC 9449 §4.3), and the confirmation (`cnf`) a
//! minted token carries (RFC 9449 §6, RFC 8705 §3).
//!
//! A proof is checked in full before anything else reads the request: one `DPoP`
//! header; a compact JWS whose header has `typ` `dpop+jwt`, an allowed asymmetric `alg`
//! and a public `jwk` (no private member) that fits it; a signature by that key; `htm`
//! the request's method, `htu` the token endpoint's URI (both normalised as RFC 3986
//! §6.2.2–6.2.3 says, no query or fragment); `iat` within the window; a `jti`. Whether
//! the `jti` was seen before is the exchange's to ask the replay record
//! ([`Proof::replay_id`]), shared by replicas and failing closed like every replay check.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sha2::Digest as _;

/// The algorithms a proof may be signed with: asymmetric only (§4.3 point 5).
pub const ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

/// How old (and how far in the future, by clock skew) a proof's `iat` may be.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Clock skew allowed beyond [`MAX_AGE`], and ahead of now.
pub const LEEWAY: Duration = Duration::from_secs(5);

/// Largest proof accepted (header value), bytes: an RSA-4096 `jwk` and its signature fit.
const MAX_PROOF: usize = 8 * 1024;

/// JWK members that only a private key has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037).
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// A proof that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 SHA-256 thumbprint of the proof key, base64url: `cnf.jkt`.
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
    /// The server nonce it carries (§8), if any.
    pub nonce: Option<String>,
}

impl Proof {
    /// The replay record's id for this proof: its `jti` under its key.
    pub fn replay_id(&self) -> String {
        let digest = sha2::Sha256::digest(format!("{}\n{}", self.jkt, self.jti).as_bytes());
        format!("dpop:{}", hex::encode(digest))
    }

    /// How long the replay record must remember it: past the end of its window.
    pub fn replay_ttl(&self, now: i64) -> Duration {
        let window = i64::try_from((MAX_AGE + LEEWAY).as_secs()).unwrap_or(i64::MAX);
        let left = self.iat.saturating_add(window).saturating_sub(now);
        Duration::from_secs(u64::try_from(left).unwrap_or(0).max(1))
    }
}

/// Checks the proof in `header` for a `method` request to `htu` at `now`. The error is
/// the `error_description` of an `invalid_dpop_proof`.
pub fn verify(header: &str, method: &str, htu: &str, now: i64) -> Result<Proof, String> {
    if header.len() > MAX_PROOF {
        return Err(format!("the DPoP proof is longer than {MAX_PROOF} bytes"));
    }
    let mut parts = header.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the DPoP proof is not a compact JWS (three dot-separated parts)".into());
    };
    let head: Map<String, Value> =
        decode(h).ok_or("the DPoP proof's header is not base64url JSON")?;
    let claims: Map<String, Value> =
        decode(p).ok_or("the DPoP proof's payload is not base64url JSON")?;
    if !head
        .get("typ")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err("the DPoP proof's `typ` is not `dpop+jwt`".into());
    }
    let alg_name = head.get("alg").and_then(Value::as_str).unwrap_or("");
    let alg = crate::algorithms::parse(alg_name)
        .filter(|a| ALGORITHMS.contains(a))
        .ok_or_else(|| {
            format!(
                "the DPoP proof's `alg` `{}` is not one of ES256, ES384, RS256, PS256, EdDSA",
                crate::text::escape_control(alg_name)
            )
        })?;
    let jwk = head
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or("the DPoP proof's header has no `jwk` object")?;
    if let Some(private) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(format!(
            "the DPoP proof's `jwk` has the private member `{private}`"
        ));
    }
    let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(Value::Object(jwk.clone()))
        .map_err(|_| "the DPoP proof's `jwk` is not a public key Ferry can read")?;
    let key = crate::verify::jwk::to_verifying_key(&parsed)
        .filter(|k| k.fits(alg))
        .ok_or_else(|| format!("the DPoP proof's `jwk` is not a {alg_name} public key"))?;
    let signed = header.get(..h.len() + 1 + p.len()).unwrap_or_default();
    if !key.verify(alg, signed.as_bytes(), sig) {
        return Err("the DPoP proof's signature does not verify with its `jwk`".into());
    }
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let jti = text("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or("the DPoP proof has no `jti` (1–256 characters)")?;
    if text("htm") != Some(method) {
        return Err(format!("the DPoP proof's `htm` is not `{method}`"));
    }
    let claimed = text("htu").ok_or("the DPoP proof has no `htu`")?;
    if !same_uri(claimed, htu)? {
        return Err(format!("the DPoP proof's `htu` is not `{htu}`"));
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or("the DPoP proof has no numeric `iat`")?;
    let max_age = i64::try_from(MAX_AGE.as_secs()).unwrap_or(i64::MAX);
    let leeway = i64::try_from(LEEWAY.as_secs()).unwrap_or(i64::MAX);
    if iat > now.saturating_add(leeway) {
        return Err("the DPoP proof's `iat` is in the future".into());
    }
    if iat < now.saturating_sub(max_age + leeway) {
        return Err(format!(
            "the DPoP proof is older than {max_age}s (`iat`); make a fresh one per request"
        ));
    }
    Ok(Proof {
        jkt: thumbprint(jwk).ok_or("the DPoP proof's `jwk` lacks a member its thumbprint needs")?,
        jti: jti.to_owned(),
        iat,
        nonce: text("nonce").map(str::to_owned),
    })
}

/// Server nonces (RFC 9449 §8) every replica can check without asking the others: the
/// issue time and an HMAC of it under a key the replicas share (derived from the Redis
/// store's encryption key; a memory store — one replica — draws one at start).
pub struct NonceKey(aws_lc_rs::hmac::Key);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(…)")
    }
}

impl NonceKey {
    /// The key derived from `shared` (the store's encryption key), or a random one.
    pub fn new(shared: Option<&[u8; 32]>) -> Self {
        use aws_lc_rs::hmac;
        let key = match shared {
            // HMAC-SHA256 of a fixed label: 32 bytes only the holders of `shared` know.
            Some(k) => {
                let label = b"ferry dpop nonce v1";
                let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k), label);
                hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
            }
            None => {
                let mut secret = [0u8; 32];
                rand::Rng::fill(&mut rand::rng(), &mut secret);
                hmac::Key::new(hmac::HMAC_SHA256, &secret)
            }
        };
        Self(key)
    }

    /// A nonce issued at `now`: base64url of the time (8 bytes) and 16 bytes of its tag.
    pub fn issue(&self, now: i64) -> String {
        let at = now.to_be_bytes();
        let tag = aws_lc_rs::hmac::sign(&self.0, &at);
        let mut raw = at.to_vec();
        raw.extend_from_slice(tag.as_ref().get(..16).unwrap_or_default());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `nonce` is one of ours, issued at most `lifetime` before `now`.
    pub fn accepts(&self, nonce: &str, now: i64, lifetime: Duration) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let (Some(at), Some(tag)) = (raw.get(..8), raw.get(8..)) else {
            return false;
        };
        let Ok(at_bytes) = <[u8; 8]>::try_from(at) else {
            return false;
        };
        let issued = i64::from_be_bytes(at_bytes);
        let expected = aws_lc_rs::hmac::sign(&self.0, at);
        let genuine = tag.len() == 16
            && aws_lc_rs::constant_time::verify_slices_are_equal(
                tag,
                expected.as_ref().get(..16).unwrap_or_default(),
            )
            .is_ok();
        let leeway = i64::try_from(LEEWAY.as_secs()).unwrap_or(0);
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        genuine && issued <= now.saturating_add(leeway) && now.saturating_sub(issued) <= lifetime
    }
}

fn decode(part: &str) -> Option<Map<String, Value>> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// Whether the proof's `htu` names `expected` (RFC 9449 §4.3 point 9): compared after
/// RFC 3986 syntax- and scheme-based normalisation (case of scheme and host, default
/// port, dot segments, percent-encoding); a query or fragment is refused.
fn same_uri(claimed: &str, expected: &str) -> Result<bool, String> {
    let claimed = url::Url::parse(claimed).map_err(|_| "the DPoP proof's `htu` is not a URI")?;
    if claimed.query().is_some() || claimed.fragment().is_some() {
        return Err("the DPoP proof's `htu` has a query or fragment".into());
    }
    let Ok(expected) = url::Url::parse(expected) else {
        return Ok(false);
    };
    let norm = |u: &url::Url| {
        let path = percent_normal(u.path());
        format!(
            "{}://{}:{}{}",
            u.scheme(),
            u.host_str().unwrap_or("").to_ascii_lowercase(),
            u.port_or_known_default().unwrap_or(0),
            if path.is_empty() {
                "/".to_owned()
            } else {
                path
            }
        )
    };
    Ok(norm(&claimed) == norm(&expected))
}

/// A path with percent-encoded unreserved characters decoded and the remaining escapes
/// in upper case (RFC 3986 §6.2.2.1–6.2.2.2).
fn percent_normal(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(c) if c.is_ascii_alphanumeric() || b"-._~".contains(&c) => {
                out.push(char::from(c));
                i += 3;
            }
            Some(c) => {
                out.push_str(&format!("%{c:02X}"));
                i += 3;
            }
            None => {
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    out
}

/// RFC 7638: SHA-256 over the JSON of the key's required members in lexicographic
/// order, base64url.
pub fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let kty = jwk.get("kty")?.as_str()?;
    let members: &[&str] = match kty {
        "RSA" => &["e", "kty", "n"],
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        _ => return None,
    };
    let mut canonical = String::from("{");
    for (i, m) in members.iter().enumerate() {
        let v = jwk.get(*m)?.as_str()?;
        if i > 0 {
            canonical.push(',');
        }
        canonical.push_str(&serde_json::to_string(m).ok()?);
        canonical.push(':');
        canonical.push_str(&serde_json::to_string(v).ok()?);
    }
    canonical.push('}');
    Some(URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk: Map<String, Value> = serde_json::from_str(r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#).unwrap();
        assert_eq!(
            thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }

    #[test]
    fn nonces_are_ours_and_expire() {
        let shared = [7u8; 32];
        let a = NonceKey::new(Some(&shared));
        let b = NonceKey::new(Some(&shared));
        let other = NonceKey::new(None);
        let life = Duration::from_secs(300);
        let n = a.issue(1_000);
        assert!(
            b.accepts(&n, 1_100, life),
            "another replica, same shared key"
        );
        assert!(!other.accepts(&n, 1_100, life), "another key");
        assert!(!a.accepts(&n, 1_301, life), "expired");
        assert!(a.accepts(&n, 1_300, life));
        assert!(!a.accepts(&a.issue(2_000), 1_000, life), "from the future");
        let mut forged = URL_SAFE_NO_PAD.decode(&n).unwrap();
        forged[7] ^= 1;
        assert!(!a.accepts(&URL_SAFE_NO_PAD.encode(forged), 1_100, life));
        assert!(!a.accepts("not-base64!", 1_100, life));
    }

    #[test]
    fn uris_compare_after_normalisation() {
        let expected = "https://ferry.example.com/oauth2/token";
        for (claimed, same) in [
            ("https://ferry.example.com/oauth2/token", true),
            ("HTTPS://Ferry.Example.COM:443/oauth2/token", true),
            ("https://ferry.example.com/oauth2/%74oken", true),
            ("https://ferry.example.com/a/../oauth2/token", true),
            ("http://ferry.example.com/oauth2/token", false),
            ("https://ferry.example.com:8443/oauth2/token", false),
            ("https://ferry.example.com/oauth2/token/", false),
            ("https://other.example.com/oauth2/token", false),
        ] {
            assert_eq!(same_uri(claimed, expected), Ok(same), "{claimed}");
        }
        assert!(same_uri("https://ferry.example.com/oauth2/token?a=1", expected).is_err());
        assert!(same_uri("https://ferry.example.com/oauth2/token#f", expected).is_err());
    }
}
