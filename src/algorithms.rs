//! The one table of JWS algorithms: what Ferry accepts from issuers, what it signs
//! with, the key type each needs, and how aws-lc-rs verifies it. Never `none`, never a
//! shared-secret (HS*) algorithm.

use aws_lc_rs::signature::{self as sig, RsaParameters, VerificationAlgorithm};
use jsonwebtoken::Algorithm;

/// The kind of public key, which decides which algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA: RS* and PS*.
    Rsa,
    /// EC P-256: ES256.
    P256,
    /// EC P-384: ES384.
    P384,
    /// Ed25519: EdDSA.
    Ed25519,
}

/// How aws-lc-rs verifies a signature of an algorithm.
#[derive(Clone, Copy)]
pub enum Verification {
    /// From the RSA key's modulus and exponent.
    Rsa(&'static RsaParameters),
    /// From the key's public point (EC, Ed25519).
    Point(&'static dyn VerificationAlgorithm),
}

/// One supported algorithm.
pub struct Alg {
    pub alg: Algorithm,
    /// The JOSE name (`alg` header, JWK `alg`, config).
    pub name: &'static str,
    /// The key type that verifies it.
    pub key: KeyKind,
    pub verification: Verification,
    /// Whether Ferry can sign with it (`[signing] algorithm`).
    pub signs: bool,
}

/// Every algorithm Ferry knows, in a fixed order (a key's parsed forms are indexed by
/// position, [`index`]).
pub static ALGORITHMS: [Alg; 9] = [
    rsa(
        Algorithm::RS256,
        "RS256",
        &sig::RSA_PKCS1_2048_8192_SHA256,
        true,
    ),
    rsa(
        Algorithm::RS384,
        "RS384",
        &sig::RSA_PKCS1_2048_8192_SHA384,
        false,
    ),
    rsa(
        Algorithm::RS512,
        "RS512",
        &sig::RSA_PKCS1_2048_8192_SHA512,
        false,
    ),
    rsa(
        Algorithm::PS256,
        "PS256",
        &sig::RSA_PSS_2048_8192_SHA256,
        true,
    ),
    rsa(
        Algorithm::PS384,
        "PS384",
        &sig::RSA_PSS_2048_8192_SHA384,
        false,
    ),
    rsa(
        Algorithm::PS512,
        "PS512",
        &sig::RSA_PSS_2048_8192_SHA512,
        false,
    ),
    Alg {
        alg: Algorithm::ES256,
        name: "ES256",
        key: KeyKind::P256,
        verification: Verification::Point(&sig::ECDSA_P256_SHA256_FIXED),
        signs: true,
    },
    Alg {
        alg: Algorithm::ES384,
        name: "ES384",
        key: KeyKind::P384,
        verification: Verification::Point(&sig::ECDSA_P384_SHA384_FIXED),
        signs: true,
    },
    Alg {
        alg: Algorithm::EdDSA,
        name: "EdDSA",
        key: KeyKind::Ed25519,
        verification: Verification::Point(&sig::ED25519),
        signs: true,
    },
];

const fn rsa(
    alg: Algorithm,
    name: &'static str,
    params: &'static RsaParameters,
    signs: bool,
) -> Alg {
    Alg {
        alg,
        name,
        key: KeyKind::Rsa,
        verification: Verification::Rsa(params),
        signs,
    }
}

/// The entry of `alg`, if Ferry supports it.
pub fn of(alg: Algorithm) -> Option<&'static Alg> {
    ALGORITHMS.iter().find(|a| a.alg == alg)
}

/// The position of `alg` in [`ALGORITHMS`].
pub fn index(alg: Algorithm) -> Option<usize> {
    ALGORITHMS.iter().position(|a| a.alg == alg)
}

/// A supported algorithm by its JOSE name (exact, case-sensitive).
pub fn parse(name: &str) -> Option<Algorithm> {
    ALGORITHMS.iter().find(|a| a.name == name).map(|a| a.alg)
}

/// The JOSE name of `alg` (`unknown` for one Ferry does not support).
pub fn name(alg: Algorithm) -> &'static str {
    of(alg).map_or("unknown", |a| a.name)
}

/// The names Ferry accepts from issuers, comma-separated (for error messages).
pub fn accepted() -> String {
    ALGORITHMS
        .iter()
        .map(|a| a.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The names Ferry can sign with.
pub fn signing() -> impl Iterator<Item = &'static str> {
    ALGORITHMS.iter().filter(|a| a.signs).map(|a| a.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_shared_secrets_are_not_supported() {
        for a in &ALGORITHMS {
            assert_eq!(parse(a.name), Some(a.alg));
            assert_eq!(a.name.parse::<Algorithm>().ok(), Some(a.alg));
            assert_eq!(name(a.alg), a.name);
        }
        for refused in ["HS256", "none", "rs256", ""] {
            assert_eq!(parse(refused), None, "{refused}");
        }
        assert_eq!(name(Algorithm::HS256), "unknown");
        assert_eq!(
            signing().collect::<Vec<_>>(),
            ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
        );
    }
}
