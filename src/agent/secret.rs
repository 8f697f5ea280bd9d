//! The agent's local secret: what a caller of the AWS container-credentials endpoint
//! sends as `Authorization` (`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`) and of the App
//! Service endpoint as `X-IDENTITY-HEADER` (`IDENTITY_HEADER`).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{Context as _, bail};
use subtle::ConstantTimeEq as _;

/// The shortest secret accepted from an operator's file.
const MIN_LEN: usize = 16;

/// The secret (never printed: `Debug` shows its length).
pub struct LocalSecret(String);

impl std::fmt::Debug for LocalSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalSecret({} bytes)", self.0.len())
    }
}

impl LocalSecret {
    /// The secret in `path`, or a new random one written there with mode 0600 when the
    /// file does not exist (a shared `emptyDir` the workload reads it from).
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let secret = text.trim().to_owned();
                if secret.len() < MIN_LEN || secret.contains(char::is_whitespace) {
                    bail!(
                        "secret_file {}: the secret must be one word of at least {MIN_LEN} characters",
                        path.display()
                    );
                }
                let mode = std::fs::metadata(path)
                    .map(|m| m.permissions().mode())
                    .unwrap_or(0);
                if mode & 0o007 != 0 {
                    bail!(
                        "secret_file {}: readable by every user (mode {:o}); make it 0600 or 0640",
                        path.display(),
                        mode & 0o777
                    );
                }
                Ok(Self(secret))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                aws_lc_rs::rand::fill(&mut bytes)
                    .map_err(|_| anyhow::anyhow!("no randomness for the local secret"))?;
                let secret = const_hex::encode(bytes);
                let created = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path);
                let mut file = match created {
                    Ok(f) => f,
                    // Another process (the agent, or `--print-env`) created it first.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        return Self::load_or_create(path);
                    }
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("secret_file {}: cannot create", path.display())
                        });
                    }
                };
                file.write_all(secret.as_bytes())
                    .and_then(|()| file.flush())
                    .with_context(|| format!("secret_file {}: cannot write", path.display()))?;
                Ok(Self(secret))
            }
            Err(e) => {
                Err(e).with_context(|| format!("secret_file {}: cannot read", path.display()))
            }
        }
    }

    /// The secret itself, for `ferry agent --print-env` (the workload's environment).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is the secret (in constant time).
    pub fn matches(&self, given: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(given).into()
    }
}
