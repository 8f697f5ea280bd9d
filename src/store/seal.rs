//! AES-256-GCM for values that leave the process. Format: `1 | key id (8) | nonce (12) |
//! ciphertext+tag`. The AAD is the store key, so a value cannot be moved to another key.
//! The key id travels with the value, so a new key can be introduced while values sealed
//! with the previous one are still readable.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest as _, Sha256};

const VERSION: u8 = 1;
const KID_LEN: usize = 8;

pub use crate::config::key_file::{KeyFileError, read_key_file};

struct SealKey {
    id: [u8; KID_LEN],
    key: LessSafeKey,
}

/// The sealing keys: the first seals, all open.
pub struct Sealer {
    keys: Vec<SealKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field(
                "key_ids",
                &self
                    .keys
                    .iter()
                    .map(|k| hex::encode(k.id))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn key_id(key: &[u8; 32]) -> [u8; KID_LEN] {
    let digest = Sha256::digest(key);
    let mut id = [0u8; KID_LEN];
    id.copy_from_slice(digest.get(..KID_LEN).unwrap_or(&[0u8; KID_LEN]));
    id
}

impl Sealer {
    /// A sealer over `current` (seals and opens) and `previous` keys (open only).
    pub fn new(current: [u8; 32], previous: &[[u8; 32]]) -> Option<Self> {
        let mut keys = Vec::new();
        for k in std::iter::once(&current).chain(previous) {
            let unbound = UnboundKey::new(&AES_256_GCM, k).ok()?;
            keys.push(SealKey {
                id: key_id(k),
                key: LessSafeKey::new(unbound),
            });
        }
        Some(Self { keys })
    }

    /// The id of the sealing key (hex), for logs.
    pub fn current_key_id(&self) -> String {
        self.keys
            .first()
            .map(|k| hex::encode(k.id))
            .unwrap_or_default()
    }

    /// Encrypts `plaintext` bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut in_out = plaintext.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut in_out,
            )
            .ok()?;
        let mut out = Vec::with_capacity(1 + KID_LEN + NONCE_LEN + in_out.len());
        out.push(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&in_out);
        Some(out)
    }

    /// Decrypts a sealed value bound to `aad`; `None` when it was tampered with, bound to
    /// another key, or sealed with a key Ferry no longer has.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION || rest.len() < KID_LEN + NONCE_LEN {
            return None;
        }
        let (kid, rest) = rest.split_at(KID_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let key = self.keys.iter().find(|k| k.id == kid)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut in_out = ciphertext.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let Some(s) = Sealer::new([7u8; 32], &[]) else {
            unreachable!("valid key")
        };
        let sealed = s.seal(b"k1", b"secret credential").unwrap_or_default();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            s.open(b"k1", &sealed).as_deref(),
            Some(&b"secret credential"[..])
        );
        assert!(s.open(b"k2", &sealed).is_none(), "bound to its key");
        let mut bad = sealed.clone();
        if let Some(last) = bad.last_mut() {
            *last ^= 1;
        }
        assert!(s.open(b"k1", &bad).is_none(), "tamper detected");
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let (Some(old), Some(new)) = (
            Sealer::new([1u8; 32], &[]),
            Sealer::new([2u8; 32], &[[1u8; 32]]),
        ) else {
            unreachable!("valid keys")
        };
        let sealed = old.seal(b"k", b"v").unwrap_or_default();
        assert_eq!(new.open(b"k", &sealed).as_deref(), Some(&b"v"[..]));
        let resealed = new.seal(b"k", b"v").unwrap_or_default();
        assert!(old.open(b"k", &resealed).is_none());
    }

    #[test]
    fn key_files_accept_raw_hex_and_base64() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [9u8; 32])?;
        assert_eq!(read_key_file(&raw)?, [9u8; 32]);
        let hexf = dir.path().join("hex");
        std::fs::write(&hexf, format!("{}\n", hex::encode([9u8; 32])))?;
        assert_eq!(read_key_file(&hexf)?, [9u8; 32]);
        let short = dir.path().join("short");
        std::fs::write(&short, "abc")?;
        assert!(matches!(
            read_key_file(&short),
            Err(KeyFileError::Length(_))
        ));
        Ok(())
    }
}
