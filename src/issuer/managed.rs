//! Opening the keys `[signing]` names in a key manager (`backend = "pkcs11" | "aws_kms" |
//! "gcp_kms" | "azure_key_vault"`): each backend crate reads the public keys once and
//! hands back a [`ManagedKey`] per key; this module checks them, wraps each in the
//! signing timeout and makes them a [`KeyRing`]. The private keys stay in the key
//! manager: Ferry never asks for them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_provider_api::{KeyFacts, ManagedKey, Secret, SignError};

use super::keys::{KeyRing, managed_active, managed_jwk};
use crate::config::Config;
use crate::config::signing::SigningBackend;

/// A key whose signatures give up after `timeout` (`[signing] sign_timeout`): a key
/// manager that hangs answers 503 rather than hold the request until the client gives
/// up.
#[derive(Debug)]
struct Timed {
    key: Arc<dyn ManagedKey>,
    timeout: Duration,
}

#[async_trait]
impl ManagedKey for Timed {
    fn backend(&self) -> &'static str {
        self.key.backend()
    }
    fn facts(&self) -> &KeyFacts {
        self.key.facts()
    }
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        tokio::time::timeout(self.timeout, self.key.sign(message))
            .await
            .unwrap_or_else(|_| {
                Err(SignError::Unavailable {
                    backend: self.key.backend(),
                    reason: format!("no signature within {}s", self.timeout.as_secs_f64()),
                })
            })
    }
}

/// What identifies the keys a `[signing]` opens: a reload with the same source keeps
/// the ring it has.
pub fn source(config: &Config) -> String {
    let s = &config.signing;
    let section = match s.backend {
        SigningBackend::Files => String::new(),
        SigningBackend::Pkcs11 => format!("{:?}", s.pkcs11),
        SigningBackend::AwsKms => format!("{:?}", s.aws_kms),
        SigningBackend::GcpKms => format!("{:?}", s.gcp_kms),
        SigningBackend::AzureKeyVault => format!("{:?}", s.azure_key_vault),
    };
    format!(
        "{} {:?} {section} {:?} {}",
        s.backend.name(),
        s.managed_keys().collect::<Vec<_>>(),
        s.algorithm,
        s.sign_timeout.0.as_millis()
    )
}

/// Reads a secret's first line from a file `[signing]` names.
fn read_secret(config: &Config, entry: &str, path: &std::path::Path) -> Result<Secret, String> {
    let path = config.source.resolve(path);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("{entry}: {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or_default().trim();
    if line.is_empty() {
        return Err(format!("{entry}: {} is empty", path.display()));
    }
    Ok(Secret::new(line))
}

/// Opens every key `[signing]` lists (the active one first) and makes the ring. An
/// error names the key and what the key manager said.
pub fn open(config: &Config, now: i64) -> Result<KeyRing, String> {
    let s = &config.signing;
    let names: Vec<String> = s.managed_keys().map(str::to_owned).collect();
    let opened: Result<Vec<Arc<dyn ManagedKey>>, String> = match s.backend {
        SigningBackend::Files => return Err("the files backend has no key manager".into()),
        SigningBackend::Pkcs11 => {
            let p = s
                .pkcs11
                .as_ref()
                .ok_or("`[signing.pkcs11]` is required with backend `pkcs11`")?;
            let pin = read_secret(config, "pkcs11.pin_file", &p.pin_file)?;
            ferry_keys_pkcs11::open(
                &config.source.resolve(&p.module),
                &p.token_label,
                &pin,
                &names,
            )
        }
        SigningBackend::AwsKms => {
            let a = s.aws_kms.clone().unwrap_or_default();
            super::block_on(
                ferry_provider_aws::kms::open(a.region, a.endpoint, &names),
                false,
            )
            .ok_or("no runtime to reach AWS KMS")?
        }
        SigningBackend::GcpKms => {
            let g = s.gcp_kms.clone().unwrap_or_default();
            let token = g.token_file.as_ref().map(|p| config.source.resolve(p));
            super::block_on(
                ferry_provider_gcp::kms::open(g.endpoint, token, &names),
                false,
            )
            .ok_or("no runtime to reach Cloud KMS")?
        }
        SigningBackend::AzureKeyVault => {
            let a = s.azure_key_vault.clone().unwrap_or_default();
            let token = a.token_file.as_ref().map(|p| config.source.resolve(p));
            super::block_on(
                ferry_provider_azure::key_vault::open(a.imds_endpoint, a.client_id, token, &names),
                false,
            )
            .ok_or("no runtime to reach Key Vault")?
        }
    };
    let opened = opened?;
    let timed: Vec<Arc<dyn ManagedKey>> = opened
        .into_iter()
        .map(|key| {
            Arc::new(Timed {
                key,
                timeout: s.sign_timeout.0,
            }) as Arc<dyn ManagedKey>
        })
        .collect();
    let mut keys = timed.into_iter();
    let first = keys.next().ok_or("no key to open")?;
    if let Some(want) = &s.algorithm
        && want != first.algorithm().name()
    {
        return Err(format!(
            "algorithm: is {want} but the active key `{}` signs {}",
            first.reference(),
            first.algorithm().name()
        ));
    }
    let mut managed = vec![(String::new(), first.reference().to_owned())];
    let active = managed_active(first, now).map_err(|e| e.to_string())?;
    if let Some(m) = managed.first_mut() {
        m.0 = active.kid.clone();
    }
    let mut published = vec![active.public.clone()];
    for key in keys {
        let jwk = managed_jwk(key.as_ref()).map_err(|e| e.to_string())?;
        managed.push((
            jwk.common.key_id.clone().unwrap_or_default(),
            key.reference().to_owned(),
        ));
        published.push(jwk);
    }
    Ok(KeyRing {
        active: Arc::new(active),
        published,
        retired: Vec::new(),
        ephemeral: false,
        source: source(config),
        managed,
    })
}
