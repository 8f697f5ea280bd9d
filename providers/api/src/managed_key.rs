//! Signing keys that never leave a key manager (`[signing] backend = "pkcs11" |
//! "aws_kms" | "gcp_kms" | "azure_key_vault"`): Ferry holds a handle and the public key;
//! the key manager signs. Each backend lives in the crate of its cloud (or
//! `ferry-keys-pkcs11`) and implements [`ManagedKey`]; the core turns the public key into
//! a JWK and assembles the JWS around the signature.

use std::fmt;

use async_trait::async_trait;

/// The JWS algorithms a managed key signs with: what every backend offers for
/// RSA-2048/3072 and P-256 keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 §3.3).
    Rs256,
    /// ECDSA P-256 with SHA-256 (RFC 7518 §3.4); the signature is `r || s`, 64 bytes.
    Es256,
}

impl KeyAlgorithm {
    /// The JOSE `alg`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

/// Why a key manager did not sign.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignError {
    /// Unreachable, timed out, throttled, 5xx, or a session that could not be opened:
    /// the mint answers 503 and a later one may succeed.
    #[error("{backend} unavailable: {reason}")]
    Unavailable {
        /// `pkcs11`, `aws_kms`, …
        backend: &'static str,
        /// What happened, with no secret in it.
        reason: String,
    },
    /// The key manager answered and refused (no permission, a disabled key version, a
    /// key of another type): an operator has to act. Also answered 503.
    #[error("{backend} refused to sign: {reason}")]
    Refused {
        /// `pkcs11`, `aws_kms`, …
        backend: &'static str,
        /// The key manager's error code, never its full answer.
        reason: String,
    },
}

impl SignError {
    /// `unavailable` or `refused`: the `reason` label of `ferry_signing_failures_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "unavailable",
            Self::Refused { .. } => "refused",
        }
    }
}

/// What Ferry knows of a managed key once it is opened: how the config names it, the
/// algorithm its type signs with, and its public key.
#[derive(Debug, Clone)]
pub struct KeyFacts {
    /// The key as the config names it (a label, an ARN or alias, a key version's
    /// resource name, a key URL): for `ferry keys list` and error messages.
    pub reference: String,
    /// The algorithm it signs with, from the key's own type.
    pub algorithm: KeyAlgorithm,
    /// The public key, as a DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7), read from the
    /// key manager when the key was opened.
    pub spki: Vec<u8>,
}

/// One key in a key manager.
#[async_trait]
pub trait ManagedKey: Send + Sync + fmt::Debug {
    /// The backend's config name (`pkcs11`, `aws_kms`, `gcp_kms`, `azure_key_vault`).
    fn backend(&self) -> &'static str;
    /// What was read when the key was opened.
    fn facts(&self) -> &KeyFacts;
    /// The JWS signature of `message` (the JWS signing input): for RS256 the PKCS#1 v1.5
    /// signature, for ES256 `r || s`.
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError>;

    /// [`KeyFacts::reference`].
    fn reference(&self) -> &str {
        &self.facts().reference
    }
    /// [`KeyFacts::algorithm`].
    fn algorithm(&self) -> KeyAlgorithm {
        self.facts().algorithm
    }
    /// [`KeyFacts::spki`].
    fn public_key_der(&self) -> &[u8] {
        &self.facts().spki
    }
}

/// A key manager's HTTP answer that is not a success, classified: 429 and 5xx are
/// [`SignError::Unavailable`], anything else [`SignError::Refused`]; `code` is the
/// service's error code read from the body (else `HTTP <status>`), never the body.
pub fn refusal(backend: &'static str, status: u16, code: Option<String>) -> SignError {
    let reason = code.unwrap_or_else(|| format!("HTTP {status}"));
    if status == 429 || status >= 500 {
        SignError::Unavailable { backend, reason }
    } else {
        SignError::Refused { backend, reason }
    }
}

/// A key manager's HTTP answer: a 2xx body parsed as `T` (one that does not parse is a
/// refusal), anything else classified by [`refusal`] with the error code found at the
/// JSON pointer `code_at` (`/error/status` for Google, `/error/code` for Azure).
pub fn key_manager_answer<T: serde::de::DeserializeOwned>(
    backend: &'static str,
    status: u16,
    body: &str,
    code_at: &str,
) -> Result<T, SignError> {
    if (200..300).contains(&status) {
        return serde_json::from_str(body).map_err(|e| SignError::Refused {
            backend,
            reason: format!("unexpected answer: {e}"),
        });
    }
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer(code_at)?.as_str().map(str::to_owned));
    Err(refusal(backend, status, code))
}

/// The JWS form of a signature a key manager returned DER-encoded for ES256 (AWS KMS,
/// Cloud KMS); an RS256 signature as it is.
pub fn jws_signature(
    backend: &'static str,
    algorithm: KeyAlgorithm,
    signature: Vec<u8>,
) -> Result<Vec<u8>, SignError> {
    match algorithm {
        KeyAlgorithm::Rs256 => Ok(signature),
        KeyAlgorithm::Es256 => ecdsa_der_to_jws(&signature, 32).ok_or(SignError::Refused {
            backend,
            reason: "an ECDSA signature that is not DER".into(),
        }),
    }
}

/// An ECDSA signature as DER (`SEQUENCE { INTEGER r, INTEGER s }`, what AWS KMS and
/// Cloud KMS return) turned into the JWS form (RFC 7518 §3.4): `r || s`, each left-padded
/// to `width` bytes (32 for P-256). `None` when it is not such a DER value.
pub fn ecdsa_der_to_jws(der: &[u8], width: usize) -> Option<Vec<u8>> {
    fn length(input: &[u8]) -> Option<(usize, &[u8])> {
        let (&first, rest) = input.split_first()?;
        if first < 0x80 {
            return Some((usize::from(first), rest));
        }
        // Long form; an ECDSA signature needs at most one length byte.
        let (&len, rest) = (first == 0x81).then_some(rest)?.split_first()?;
        Some((usize::from(len), rest))
    }
    fn integer(input: &[u8]) -> Option<(&[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag != 0x02 {
            return None;
        }
        let (len, rest) = length(rest)?;
        let value = rest.get(..len)?;
        Some((value, rest.get(len..)?))
    }
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (len, rest) = length(rest)?;
    if rest.len() != len {
        return None;
    }
    let (r, rest) = integer(rest)?;
    let (s, rest) = integer(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(2 * width);
    for part in [r, s] {
        // A positive INTEGER may carry one leading zero byte; drop every leading zero.
        let start = part.iter().position(|b| *b != 0).unwrap_or(part.len());
        let digits = part.get(start..)?;
        if digits.len() > width {
            return None;
        }
        out.extend(std::iter::repeat_n(0u8, width - digits.len()));
        out.extend_from_slice(digits);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_signatures_become_fixed_width() {
        // r with a leading zero (high bit set), s short (31 bytes).
        let mut r = vec![0u8];
        r.extend([0xff; 32]);
        let s = vec![0x01; 31];
        let mut der = vec![0x30, u8::try_from(2 + r.len() + 2 + s.len()).unwrap_or(0)];
        der.extend([0x02, 33]);
        der.extend(&r);
        der.extend([0x02, 31]);
        der.extend(&s);
        let jws = ecdsa_der_to_jws(&der, 32);
        let mut want = vec![0xff; 32];
        want.push(0);
        want.extend([0x01; 31]);
        assert_eq!(jws, Some(want));
        // Trailing bytes, a wrong tag, an integer too wide: refused.
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(ecdsa_der_to_jws(&trailing, 32), None);
        assert_eq!(ecdsa_der_to_jws(&[0x31, 0x00], 32), None);
        let mut wide = vec![0x30, 2 + 34 + 2 + 1, 0x02, 34, 0x01];
        wide.extend([0x01; 33]);
        wide.extend([0x02, 1, 1]);
        assert_eq!(ecdsa_der_to_jws(&wide, 32), None);
    }
}

/// DER SubjectPublicKeyInfo encoders, for key managers that hand out the key's numbers
/// rather than the SPKI (PKCS#11 attributes, a Key Vault JWK).
pub mod spki {
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(u8::try_from(len).unwrap_or(0));
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | u8::try_from(bytes.len()).unwrap_or(0));
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }

    fn unsigned_integer(bytes: &[u8]) -> Vec<u8> {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let digits = bytes.get(start..).unwrap_or_default();
        let mut content = Vec::with_capacity(digits.len() + 1);
        if digits.first().is_none_or(|b| b & 0x80 != 0) {
            content.push(0);
        }
        content.extend_from_slice(digits);
        der(0x02, &content)
    }

    fn bit_string(content: &[u8]) -> Vec<u8> {
        let mut with_unused = vec![0u8];
        with_unused.extend_from_slice(content);
        der(0x03, &with_unused)
    }

    /// rsaEncryption (1.2.840.113549.1.1.1) with NULL parameters.
    const RSA_ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    /// id-ecPublicKey (1.2.840.10045.2.1) on prime256v1 (1.2.840.10045.3.1.7).
    const P256_ALGORITHM: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];

    /// An RSA public key from its modulus and exponent (big-endian).
    pub fn rsa(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
        let mut key = unsigned_integer(modulus);
        key.extend(unsigned_integer(exponent));
        let mut content = RSA_ALGORITHM.to_vec();
        content.extend(bit_string(&der(0x30, &key)));
        der(0x30, &content)
    }

    /// A P-256 public key from its uncompressed point (`04 || x || y`).
    pub fn p256(point: &[u8]) -> Vec<u8> {
        let mut content = P256_ALGORITHM.to_vec();
        content.extend(bit_string(point));
        der(0x30, &content)
    }
}
