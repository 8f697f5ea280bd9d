//! Secrets the config names by file: the admin token and the introspection clients'.

use std::collections::HashMap;

use ferry_provider_api::Secret;

use super::Build;
use crate::config::Config;

/// The admin bearer token (`[admin] token_file`), at least 16 characters.
pub(super) fn admin_token(config: &Config, b: &mut Build) -> Option<Secret> {
    let Build { file, errs, .. } = b;
    match &config.admin.token_file {
        None => None,
        Some(path) => {
            let resolved = config.source.resolve(path);
            match std::fs::read_to_string(&resolved) {
                Ok(t) if t.trim().len() >= 16 => Some(Secret::new(t.trim())),
                Ok(_) => {
                    errs.push(
                        file.as_str(),
                        "admin.token_file",
                        "the token must be at least 16 characters",
                    );
                    None
                }
                Err(e) => {
                    errs.push(
                        file.as_str(),
                        "admin.token_file",
                        format!("cannot read `{}`: {e}", resolved.display()),
                    );
                    None
                }
            }
        }
    }
}

/// Introspection clients' secrets by name (`[[introspection.clients]]`), each at least
/// 16 characters, names unique and usable as an HTTP Basic user id.
pub(super) fn introspection_clients(config: &Config, b: &mut Build) -> HashMap<String, Secret> {
    let Build { file, errs, .. } = b;
    let mut introspection_clients = HashMap::new();
    for client in &config.introspection.clients {
        let entry = format!("introspection.clients[{}]", client.name);
        if client.name.is_empty() || client.name.contains(':') || client.name.len() > 64 {
            errs.push(
                file.as_str(),
                format!("{entry}.name"),
                "must be 1–64 characters without `:` (an HTTP Basic user id)",
            );
        }
        let resolved = config.source.resolve(&client.secret_file);
        match std::fs::read_to_string(&resolved) {
            Ok(t) if t.trim().len() >= 16 => {
                if introspection_clients
                    .insert(client.name.clone(), Secret::new(t.trim()))
                    .is_some()
                {
                    errs.push(file.as_str(), format!("{entry}.name"), "is listed twice");
                }
            }
            Ok(_) => errs.push(
                file.as_str(),
                format!("{entry}.secret_file"),
                "the secret must be at least 16 characters",
            ),
            Err(e) => errs.push(
                file.as_str(),
                format!("{entry}.secret_file"),
                format!("cannot read `{}`: {e}", resolved.display()),
            ),
        }
    }
    introspection_clients
}
