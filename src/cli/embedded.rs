//! The development config compiled into the binary (`--dev`): `config/dev.toml`, its
//! policy, its test cases and the dev issuer's keys. DEVELOPMENT ONLY: the dev issuer's
//! private key is public (it is in this binary and in the repository), so anyone can
//! mint tokens it signs; the signing key is ephemeral and the store is memory.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// `config/dev.toml`.
pub const DEV_TOML: &str = include_str!("../../config/dev.toml");
const DEV_JWKS: &str = include_str!("../../config/dev/jwks.json");
const DEV_POLICY: &str = include_str!("../../config/policies/dev.cedar");
const DEV_TESTS: &str = include_str!("../../config/tests/dev.ferry-test.toml");
/// The dev issuer's private key (RSA, PKCS#8 PEM).
pub const DEV_ISSUER_KEY: &str = include_str!("../../config/dev/dev-issuer.key.pem");

/// The development config, written out to a private temporary directory (mode 0700) so
/// it loads like any other; removed when dropped.
pub struct DevConfig {
    dir: tempfile::TempDir,
}

impl DevConfig {
    /// Writes the embedded files out with the layout `dev.toml` expects.
    pub fn materialize() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-dev-")
            .tempdir()
            .context("cannot create a temporary directory for the development config")?;
        for (path, text) in [
            ("dev.toml", DEV_TOML),
            ("dev/jwks.json", DEV_JWKS),
            ("policies/dev.cedar", DEV_POLICY),
            ("tests/dev.ferry-test.toml", DEV_TESTS),
        ] {
            let file = dir.path().join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, text)
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        Ok(Self { dir })
    }

    /// The config file.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("dev.toml")
    }
}

/// `--config FILE` or `--dev`, shared by the commands that read a config.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The config file.
    #[arg(long, short, value_name = "FILE", required_unless_present = "dev")]
    config: Option<PathBuf>,
    /// Use the development config built into this binary (memory store, an ephemeral
    /// signing key, a dev issuer whose private key is public): never in production.
    #[arg(long, conflicts_with = "config")]
    dev: bool,
}

/// A resolved config path, and the development config's directory while it is in use.
pub struct ConfigPath {
    pub path: PathBuf,
    pub dev: Option<DevConfig>,
}

impl ConfigArg {
    /// The config to load.
    pub fn resolve(&self) -> anyhow::Result<ConfigPath> {
        match (&self.config, self.dev) {
            (Some(path), _) => Ok(ConfigPath {
                path: path.clone(),
                dev: None,
            }),
            (None, _) => {
                let dev = DevConfig::materialize()?;
                Ok(ConfigPath {
                    path: dev.path(),
                    dev: Some(dev),
                })
            }
        }
    }
}

impl ConfigPath {
    /// How messages name it: the file, or `the development config (--dev)`.
    pub fn name(&self) -> String {
        match self.dev {
            Some(_) => "the development config (--dev)".to_owned(),
            None => self.path.display().to_string(),
        }
    }

    pub fn as_path(&self) -> &Path {
        &self.path
    }
}
