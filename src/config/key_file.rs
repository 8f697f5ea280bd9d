//! 32-byte keys the config names by file (`[store] encryption_key_file`, …): read at
//! validation, so `ferry check` reports a bad one, and again when the store opens.

use std::path::Path;

use base64::Engine as _;

/// Why a key file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// It cannot be read.
    #[error("cannot read `{0}`: {1}")]
    Read(String, std::io::Error),
    /// It does not hold 32 bytes (raw, 64 hex characters, or base64).
    #[error(
        "`{0}` must hold a 32-byte key: 32 raw bytes, 64 hex characters or base64 (e.g. `head -c 32 /dev/urandom > key`)"
    )]
    Length(String),
}

/// Reads a 32-byte key from a file: raw bytes, hex, or base64 (surrounding whitespace ignored).
pub fn read_key_file(path: &Path) -> Result<[u8; 32], KeyFileError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| KeyFileError::Read(name.clone(), e))?;
    if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(raw);
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    let decoded = hex::decode(text)
        .ok()
        .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok());
    decoded
        .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
        .ok_or(KeyFileError::Length(name))
}
