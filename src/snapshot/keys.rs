//! Ferry's own signing keys: the keys directory, or an ephemeral key for development.

use std::sync::Arc;
use std::time::Duration;

use super::{Build, BuildOptions};
use crate::config::{Config, Problem};
use crate::issuer::{FerryIssuer, KeyDir, KeyRing};
use crate::verify::parse_algorithm;

/// Loads the key ring `[signing]` names and the issuer that signs with it.
pub(super) fn build(
    config: &Config,
    options: &BuildOptions,
    b: &mut Build,
) -> Option<Arc<FerryIssuer>> {
    let Build {
        file,
        errs,
        warnings,
        ..
    } = b;
    let now = options.clock.now();
    let alg = parse_algorithm(config.signing.file_algorithm());
    let retain = config.max_token_lifetime() + Duration::from_secs(300);
    let managed = config.signing.backend != crate::config::signing::SigningBackend::Files;
    let keys: Option<KeyRing> = match (alg, &config.signing.keys_dir) {
        _ if managed => {
            let source = crate::issuer::managed::source(config);
            match options
                .previous_managed
                .clone()
                .filter(|r| r.source == source)
            {
                Some(ring) => Some(ring),
                None => match crate::issuer::managed::open(config, now) {
                    Ok(ring) => Some(ring),
                    Err(e) if !options.require_keys => {
                        warnings.push(Problem {
                            file: file.clone(),
                            entry: "signing".into(),
                            problem: format!(
                                "warning: {e} (an ephemeral key stands in for this command)"
                            ),
                        });
                        KeyRing::ephemeral(jsonwebtoken::Algorithm::ES256, now).ok()
                    }
                    Err(e) => {
                        errs.push(file.as_str(), "signing", e);
                        None
                    }
                },
            }
        }
        (None, _) => None,
        (Some(alg), None) => match options
            .previous_ephemeral
            .clone()
            .filter(|k| k.active.alg == alg)
            .map_or_else(|| KeyRing::ephemeral(alg, now), Ok)
        {
            Ok(k) => {
                warnings.push(Problem { file: file.clone(), entry: "signing".into(), problem: "warning: ephemeral signing key: tokens Ferry issues die with the process; development only".into() });
                Some(k)
            }
            Err(e) => {
                errs.push(file.as_str(), "signing", e.to_string());
                None
            }
        },
        (Some(alg), Some(dir)) => {
            let dir = config.source.resolve(dir);
            match KeyDir::new(&dir).load(now, retain) {
                Ok(ring) => {
                    if ring.active.alg != alg {
                        errs.push(
                            file.as_str(),
                            "signing.algorithm",
                            format!(
                                "is {} but the active key in `{}` is {:?}; run `ferry keys rotate`",
                                config.signing.file_algorithm(),
                                dir.display(),
                                ring.active.alg
                            ),
                        );
                    }
                    Some(ring)
                }
                Err(e) if !options.require_keys => {
                    warnings.push(Problem {
                        file: file.clone(),
                        entry: "signing.keys_dir".into(),
                        problem: format!("warning: {e}"),
                    });
                    KeyRing::ephemeral(alg, now).ok()
                }
                Err(e) => {
                    errs.push(file.as_str(), "signing.keys_dir", e.to_string());
                    None
                }
            }
        }
    };
    keys.map(|k| {
        let scopes: Vec<String> = config
            .targets
            .iter()
            .flat_map(|t| t.scopes.iter().cloned())
            .collect();
        Arc::new(FerryIssuer::new(
            &config.server.public_url,
            k,
            options.clock.clone(),
            &scopes,
            config
                .server
                .tls
                .as_ref()
                .is_some_and(|t| t.client_ca_file.is_some()),
            Arc::clone(&options.metrics),
        ))
    })
}
