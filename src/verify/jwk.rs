//! Issuers' public keys: a JWK parsed into its key material (kept decoded, with its RFC
//! 7638 thumbprint), and a JWS signature checked against it with aws-lc-rs. The cache
//! that fetches and refreshes key sets is `jwks.rs`.

use super::jwks::RefreshError;
use aws_lc_rs::signature::ParsedPublicKey;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use serde::Deserialize;
use std::sync::Arc;

pub use crate::algorithms::KeyKind;

/// One public key from an issuer's JWKS.
pub struct VerifyingKey {
    /// Its `kid`, if the JWKS gave one.
    pub kid: Option<String>,
    /// Its `alg`, if the JWKS pinned one.
    pub alg: Option<Algorithm>,
    /// Its key type.
    pub kind: KeyKind,
    /// The public key's bytes in aws-lc-rs's input form: RSA `(n, e)`, an uncompressed
    /// EC point, or the Ed25519 public key.
    pub(crate) material: KeyMaterial,
    /// Digest of the key's type and public bytes: what the remembered-signature cache
    /// checks is still published under the `kid` (an issuer may replace the key behind
    /// a `kid`).
    pub thumbprint: crate::memo::Digest,
    /// The key parsed once per algorithm it is used with (aws-lc-rs binds a parsed key to
    /// an algorithm): parsing an RSA key costs a Montgomery set-up per use otherwise.
    pub(crate) parsed: [std::sync::OnceLock<Option<ParsedPublicKey>>; ALGORITHM_SLOTS],
}

pub(crate) enum KeyMaterial {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Point(Vec<u8>),
}

/// The largest signature Ferry accepts is RSA-8192's 1024 bytes (1366 base64url
/// characters); the base64 crate wants room for its rounded-up estimate (1026).
pub(crate) const SIGNATURE_BUFFER: usize = 1032;

/// Decodes a base64url (unpadded) signature into `buffer`.
pub(crate) fn decode_signature<'a>(
    b64: &str,
    buffer: &'a mut [u8; SIGNATURE_BUFFER],
) -> Option<&'a [u8]> {
    use base64::Engine as _;
    let len = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(b64.as_bytes(), buffer)
        .ok()?;
    buffer.get(..len)
}

/// One parsed key per supported algorithm, indexed by [`crate::algorithms::index`].
pub(crate) const ALGORITHM_SLOTS: usize = crate::algorithms::ALGORITHMS.len();

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Checks a JWS signature (`signature_b64`, base64url) over `message` with `alg`.
    /// False for a bad signature, a bad encoding, or an algorithm the key does not fit.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature_b64: &str) -> bool {
        if !self.fits(alg) {
            return false;
        }
        let Some(key) = crate::algorithms::index(alg)
            .and_then(|i| self.parsed.get(i))
            .and_then(|cell| cell.get_or_init(|| self.parse(alg)).as_ref())
        else {
            return false;
        };
        let mut buffer = [0u8; SIGNATURE_BUFFER];
        decode_signature(signature_b64, &mut buffer)
            .is_some_and(|sig| key.verify_sig(message, sig).is_ok())
    }

    pub(crate) fn parse(&self, alg: Algorithm) -> Option<ParsedPublicKey> {
        use crate::algorithms::Verification;
        match (crate::algorithms::of(alg)?.verification, &self.material) {
            (Verification::Rsa(params), KeyMaterial::Rsa { n, e }) => {
                aws_lc_rs::signature::RsaPublicKeyComponents { n, e }
                    .to_parsed_public_key(params)
                    .ok()
            }
            (Verification::Point(algorithm), KeyMaterial::Point(p)) => {
                ParsedPublicKey::new(algorithm, p).ok()
            }
            _ => None,
        }
    }

    /// Whether this key can verify a signature made with `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|pinned| pinned != alg) {
            return false;
        }
        crate::algorithms::of(alg).is_some_and(|a| a.key == self.kind)
    }
}

#[derive(Deserialize)]
pub(crate) struct RawJwks {
    pub(crate) keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document into usable verification keys; returns how many were skipped.
pub fn parse_jwks(document: &[u8]) -> Result<(Vec<Arc<VerifyingKey>>, usize), RefreshError> {
    let raw: RawJwks = serde_json::from_slice(document)
        .map_err(|e| RefreshError::Jwks(format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    let mut skipped = 0;
    for value in raw.keys {
        match serde_json::from_value::<Jwk>(value)
            .ok()
            .and_then(|jwk| to_verifying_key(&jwk))
        {
            Some(key) => keys.push(Arc::new(key)),
            None => skipped += 1,
        }
    }
    // An empty `keys` is a deliberate withdrawal and is honoured; keys that are all
    // unusable are a broken document, and the old keys stay (up to `max_stale`).
    if keys.is_empty() && skipped > 0 {
        return Err(RefreshError::Jwks("no usable signature keys".into()));
    }
    Ok((keys, skipped))
}

/// A verification key from one JWK, or `None` when it is not a usable signature key.
pub fn to_verifying_key(jwk: &Jwk) -> Option<VerifyingKey> {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            _ => return None,
        },
        // Symmetric keys are never trusted from a JWKS.
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => Some(key_algorithm(ka)?),
    };
    let material = key_material(&jwk.algorithm)?;
    let mut print = crate::key_digest::KeyDigest::new("jwk");
    print.str(&format!("{kind:?}"));
    match &material {
        KeyMaterial::Rsa { n, e } => print.bytes(n).bytes(e),
        KeyMaterial::Point(p) => print.bytes(p),
    };
    let key = VerifyingKey {
        kid: jwk.common.key_id.clone(),
        alg,
        kind,
        thumbprint: print.finish(),
        material,
        parsed: Default::default(),
    };
    // A key that cannot be parsed for any algorithm it fits is skipped now, like any
    // other unusable key, rather than failing each token later.
    let usable = crate::algorithms::ALGORITHMS
        .iter()
        .map(|a| a.alg)
        .filter(|a| key.fits(*a))
        .any(|a| {
            crate::algorithms::index(a)
                .and_then(|i| key.parsed.get(i))
                .is_some_and(|cell| cell.get_or_init(|| key.parse(a)).is_some())
        });
    usable.then_some(key)
}

/// The key's public bytes, decoded from the JWK's base64url members.
pub(crate) fn key_material(params: &AlgorithmParameters) -> Option<KeyMaterial> {
    use base64::Engine as _;
    let b64 = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .ok()
    };
    Some(match params {
        AlgorithmParameters::RSA(p) => KeyMaterial::Rsa {
            n: b64(&p.n)?,
            e: b64(&p.e)?,
        },
        AlgorithmParameters::EllipticCurve(p) => {
            let (x, y) = (b64(&p.x)?, b64(&p.y)?);
            let size = match p.curve {
                EllipticCurve::P256 => 32,
                EllipticCurve::P384 => 48,
                _ => return None,
            };
            // RFC 7518 §6.2.1.2: coordinates are the full field size.
            if x.len() != size || y.len() != size {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            KeyMaterial::Point(point)
        }
        AlgorithmParameters::OctetKeyPair(p) => KeyMaterial::Point(b64(&p.x)?),
        _ => return None,
    })
}

pub(crate) fn key_algorithm(ka: KeyAlgorithm) -> Option<Algorithm> {
    crate::algorithms::parse(&ka.to_string())
}
