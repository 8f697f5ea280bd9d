//! Semantic checks that serde cannot express. Compiling CEL and Cedar happens when the
//! runtime is built; this covers shapes, ranges, URLs and uniqueness.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

use super::{
    ClientAddress, Config, ConfigErrors, OnCacheError, StoreBackend, TargetKind, TargetSpec,
};
use crate::verify::fetch::require_secure;
use crate::verify::parse_algorithm;

const MAX_LEEWAY: Duration = Duration::from_secs(300);

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

pub(super) fn validate(config: &Config, errs: &mut ConfigErrors) {
    let file = config.source.display();
    let file = file.as_str();

    if config.server.listen.parse::<SocketAddr>().is_err() {
        errs.push(
            file,
            "server.listen",
            format!(
                "`{}` is not an address like 127.0.0.1:8080",
                config.server.listen
            ),
        );
    }
    match Url::parse(&config.server.public_url) {
        Err(e) => errs.push(file, "server.public_url", format!("not a URL: {e}")),
        Ok(url) => {
            if require_secure(&url).is_err() {
                errs.push(
                    file,
                    "server.public_url",
                    "must be https (http only on a loopback host)",
                );
            }
            if url.query().is_some() || url.fragment().is_some() {
                errs.push(
                    file,
                    "server.public_url",
                    "must not have a query or fragment (OIDC Discovery §3)",
                );
            }
        }
    }
    for (i, cidr) in config.server.trusted_proxies.iter().enumerate() {
        if let Err(e) = crate::http::client_address::parse_cidr(cidr) {
            errs.push(file, format!("server.trusted_proxies[{i}]"), e);
        }
    }
    match &config.server.client_address {
        ClientAddress::Unknown(other) => errs.push(
            file,
            "server.client_address",
            format!(
                "`{other}` is not one of {}",
                ClientAddress::CHOICES.join(", ")
            ),
        ),
        ClientAddress::Peer => {}
        _ if config.server.trusted_proxies.is_empty() => errs.push(
            file,
            "server.client_address",
            "needs `trusted_proxies`: only a trusted proxy may say who the client is",
        ),
        _ => {}
    }
    let nonce = config.dpop.nonce_lifetime.0;
    if nonce < Duration::from_secs(10) || nonce > Duration::from_secs(3600) {
        errs.push(file, "dpop.nonce_lifetime", "must be between 10s and 1h");
    }
    if config.server.max_body_bytes < 1024 || config.server.max_body_bytes > 1024 * 1024 {
        errs.push(
            file,
            "server.max_body_bytes",
            "must be between 1024 and 1048576",
        );
    }

    let srv = &config.server;
    for (entry, d) in [
        ("server.request_timeout", srv.request_timeout),
        ("server.header_read_timeout", srv.header_read_timeout),
        ("server.idle_timeout", srv.idle_timeout),
    ] {
        if d.0.is_zero() {
            errs.push(file, entry, "must be more than 0s");
        }
    }
    if srv.max_connections == 0 {
        errs.push(file, "server.max_connections", "must be at least 1");
    }

    let st = &config.store;
    if config.signing.ephemeral && st.backend == StoreBackend::Redis {
        // Replicas share cached tokens through Redis; each would sign with its own
        // ephemeral key, and hand out another replica's token that fails against its
        // own JWKS.
        errs.push(
            file,
            "signing.ephemeral",
            "cannot be used with the redis store (replicas would each sign with their own key); use keys_dir",
        );
    }
    match &st.backend {
        StoreBackend::Memory => {}
        StoreBackend::Redis => {
            let given = usize::from(st.url.is_some())
                + usize::from(!st.cluster.is_empty())
                + usize::from(!st.sentinel.is_empty());
            match given {
                0 => errs.push(file, "store", "the redis backend needs `url = \"redis://…\"`, `cluster = [\"redis://…\", …]` or `sentinel = [\"redis://…:26379\", …]` with `sentinel_master`"),
                1 => {}
                _ => errs.push(file, "store", "`url`, `cluster` and `sentinel` exclude each other"),
            }
            match (st.sentinel.is_empty(), &st.sentinel_master) {
                (false, None) => errs.push(
                    file,
                    "store.sentinel_master",
                    "is required with `sentinel` (the master name the Sentinels monitor)",
                ),
                (true, Some(_)) => errs.push(file, "store.sentinel_master", "needs `sentinel`"),
                _ => {}
            }
            if st.replica_ack_timeout.0.is_zero()
                || st.replica_ack_timeout.0 > Duration::from_secs(10)
            {
                errs.push(
                    file,
                    "store.replica_ack_timeout",
                    "must be between 1ms and 10s",
                );
            }
            for u in st
                .url
                .iter()
                .chain(st.cluster.iter())
                .chain(st.sentinel.iter())
            {
                match Url::parse(u) {
                    Ok(url) if url.scheme() == "redis" || url.scheme() == "rediss" => {}
                    _ => errs.push(
                        file,
                        "store.url",
                        format!("`{u}` is not a redis:// or rediss:// URL"),
                    ),
                }
            }
            match &st.encryption_key_file {
                None => errs.push(file, "store.encryption_key_file", "is required for the redis backend (32 bytes: `head -c 32 /dev/urandom > store.key`)"),
                Some(p) => {
                    if let Err(e) = super::key_file::read_key_file(&config.source.resolve(p)) {
                        errs.push(file, "store.encryption_key_file", e.to_string());
                    }
                }
            }
            for p in &st.previous_encryption_key_files {
                if let Err(e) = super::key_file::read_key_file(&config.source.resolve(p)) {
                    errs.push(file, "store.previous_encryption_key_files", e.to_string());
                }
            }
        }
        StoreBackend::Unknown(other) => errs.push(
            file,
            "store.backend",
            format!("unknown backend `{other}` (expected `memory` or `redis`)"),
        ),
    }
    if let OnCacheError::Unknown(_) = st.on_cache_error {
        errs.push(
            file,
            "store.on_cache_error",
            "must be `unavailable` or `bypass`",
        );
    }
    if st.timeout.0.is_zero() || st.timeout.0 > Duration::from_secs(10) {
        errs.push(file, "store.timeout", "must be between 1ms and 10s");
    }
    let lag = st.revocation_max_lag.0;
    if !lag.is_zero() && !(Duration::from_millis(20)..=Duration::from_secs(10)).contains(&lag) {
        errs.push(
            file,
            "store.revocation_max_lag",
            "must be `0s` (no local copy) or between 20ms and 10s",
        );
    }
    for (name, limit) in [
        ("per_subject", config.rate_limits.per_subject),
        ("per_client", config.rate_limits.per_client),
    ] {
        if let Some(l) = limit
            && (l.requests == 0 || l.window.0.as_secs() == 0)
        {
            errs.push(
                file,
                format!("rate_limits.{name}"),
                "`requests` and `window` (≥ 1s) must be positive",
            );
        }
    }
    super::anomalies::validate(&config.anomalies, file, errs);
    if config.store.max_entries == 0 {
        errs.push(file, "store.max_entries", "must be at least 1");
    }

    super::signing::validate(&config.signing, file, errs);

    let j = &config.jwks;
    if j.refresh_min.0 > j.refresh_max.0 {
        errs.push(file, "jwks.refresh_min", "is larger than `refresh_max`");
    }
    if j.fetch_timeout.0.is_zero() || j.fetch_timeout.0 > Duration::from_secs(60) {
        errs.push(file, "jwks.fetch_timeout", "must be between 1s and 60s");
    }

    validate_issuers(config, file, errs);
    validate_targets(config, file, errs);

    let t = &config.telemetry;
    if let Some(level) = &t.log_level
        && tracing_subscriber::EnvFilter::try_new(level).is_err()
    {
        errs.push(
            file,
            "telemetry.log_level",
            format!("`{level}` is not a log filter (e.g. `info`, `ferry=debug,warn`)"),
        );
    }
    if let Some(endpoint) = &t.otlp_endpoint {
        if !cfg!(feature = "otlp") {
            errs.push(file, "telemetry.otlp_endpoint", "this build has no OTLP export; rebuild with `cargo build --release --features otlp`");
        }
        match Url::parse(endpoint) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => errs.push(
                file,
                "telemetry.otlp_endpoint",
                format!("`{endpoint}` is not an http(s) URL"),
            ),
        }
    }

    if config.policy.files.is_empty() {
        errs.push(
            file,
            "policy.files",
            "no policy files: every exchange would be denied",
        );
    }
}

fn validate_issuers(config: &Config, file: &str, errs: &mut ConfigErrors) {
    if config.issuers.is_empty() {
        errs.push(
            file,
            "issuers",
            "no issuers are trusted: add at least one [[issuers]]",
        );
    }
    let mut ids = HashSet::new();
    let mut urls = HashSet::new();
    for (n, issuer) in config.issuers.iter().enumerate() {
        let entry = if issuer.id.is_empty() {
            format!("issuers[{n}]")
        } else {
            format!("issuers[{}]", issuer.id)
        };
        if !is_id(&issuer.id) {
            errs.push(
                file,
                format!("{entry}.id"),
                "must be 1-64 characters of letters, digits, `-`, `_`, `.`",
            );
        }
        if !ids.insert(issuer.id.as_str()) {
            errs.push(file, format!("{entry}.id"), "is used by another issuer");
        }
        let preset = issuer
            .preset
            .as_deref()
            .map(|name| (name, super::preset::find(name)));
        if let Some((name, None)) = preset {
            errs.push(
                file,
                format!("{entry}.preset"),
                format!(
                    "unknown preset `{name}` (one of {})",
                    super::preset::names()
                ),
            );
        }
        if issuer.issuer.is_empty() {
            let problem = match preset {
                Some((name, Some(p))) => format!(
                    "is required with preset `{name}` (its URL depends on the deployment): {}",
                    p.issuer_example
                ),
                _ => "is required: the exact `iss` of the tokens".to_owned(),
            };
            errs.push(file, format!("{entry}.issuer"), problem);
        }
        if issuer.mapping.subject.is_empty() {
            errs.push(
                file,
                format!("{entry}.mapping.subject"),
                "is required (a CEL expression over `assertion`), unless a `preset` supplies it",
            );
        }
        if !issuer.issuer.is_empty() && !urls.insert(issuer.issuer.as_str()) {
            errs.push(
                file,
                format!("{entry}.issuer"),
                "is trusted twice; one issuer URL maps to one entry",
            );
        }
        match Url::parse(&issuer.issuer) {
            Err(_) if issuer.issuer.is_empty() => {}
            Err(e) => errs.push(file, format!("{entry}.issuer"), format!("not a URL: {e}")),
            Ok(url) => {
                if issuer.jwks_file.is_none()
                    && issuer.jwks_uri.is_none()
                    && require_secure(&url).is_err()
                {
                    errs.push(
                        file,
                        format!("{entry}.issuer"),
                        "discovery needs https (http only on a loopback host)",
                    );
                }
            }
        }
        if issuer.jwks_uri.is_some() && issuer.jwks_file.is_some() {
            errs.push(
                file,
                entry.clone(),
                "`jwks_uri` and `jwks_file` exclude each other",
            );
        }
        if let Some(uri) = &issuer.jwks_uri {
            match Url::parse(uri) {
                Err(e) => errs.push(file, format!("{entry}.jwks_uri"), format!("not a URL: {e}")),
                Ok(url) if require_secure(&url).is_err() => {
                    errs.push(
                        file,
                        format!("{entry}.jwks_uri"),
                        "must be https (http only on a loopback host)",
                    );
                }
                Ok(_) => {}
            }
        }
        if let Some(f) = &issuer.jwks_file
            && !config.source.resolve(f).is_file()
        {
            errs.push(
                file,
                format!("{entry}.jwks_file"),
                format!("`{}` does not exist", f.display()),
            );
        }
        if issuer.audiences.is_empty() {
            errs.push(
                file,
                format!("{entry}.audiences"),
                "must list at least one accepted `aud`",
            );
        }
        if issuer.audiences.iter().any(String::is_empty) {
            errs.push(
                file,
                format!("{entry}.audiences"),
                "contains an empty audience",
            );
        }
        if issuer.algorithms.is_empty() {
            errs.push(
                file,
                format!("{entry}.algorithms"),
                "must list at least one algorithm",
            );
        }
        for alg in &issuer.algorithms {
            if parse_algorithm(alg).is_none() {
                let why = if alg.eq_ignore_ascii_case("none")
                    || alg.to_ascii_uppercase().starts_with("HS")
                {
                    "unsigned and symmetric algorithms are never accepted".to_owned()
                } else {
                    format!("supported: {}", crate::algorithms::accepted())
                };
                errs.push(
                    file,
                    format!("{entry}.algorithms"),
                    format!("`{alg}` is not accepted: {why}"),
                );
            }
        }
        if issuer.leeway.0 > MAX_LEEWAY {
            errs.push(file, format!("{entry}.leeway"), "must be at most 5m");
        }
        if let Some(max_age) = issuer.max_age
            && max_age.0.is_zero()
        {
            errs.push(file, format!("{entry}.max_age"), "must be more than 0s");
        }
        if issuer.max_token_lifetime.0.is_zero() {
            errs.push(
                file,
                format!("{entry}.max_token_lifetime"),
                "must be more than 0s",
            );
        }
        let attrs = &issuer.mapping.attributes;
        if attrs.len() > crate::mapping::MAX_ATTRIBUTES {
            errs.push(
                file,
                format!("{entry}.mapping.attributes"),
                format!("has more than {} entries", crate::mapping::MAX_ATTRIBUTES),
            );
        }
        for name in attrs.keys() {
            if !is_identifier(name) {
                errs.push(file, format!("{entry}.mapping.attributes.{name}"), "attribute names must be identifiers (letters, digits, `_`), so policies can name them");
            }
        }
    }
}

fn validate_targets(config: &Config, file: &str, errs: &mut ConfigErrors) {
    let mut ids = HashSet::new();
    let mut resources = HashSet::new();
    for (n, target) in config.targets.iter().enumerate() {
        let entry = if target.id.is_empty() {
            format!("targets[{n}]")
        } else {
            format!("targets[{}]", target.id)
        };
        if !is_id(&target.id) {
            errs.push(
                file,
                format!("{entry}.id"),
                "must be 1-64 characters of letters, digits, `-`, `_`, `.`",
            );
        }
        if !ids.insert(target.id.as_str()) {
            errs.push(file, format!("{entry}.id"), "is used by another target");
        }
        for r in target.resource.iter().chain(
            target
                .audience
                .iter()
                .filter(|_| target.kind == TargetKind::Jwt),
        ) {
            if !resources.insert(r.as_str()) {
                errs.push(
                    file,
                    format!("{entry}.resource"),
                    format!("`{r}` already selects another target"),
                );
            }
        }
        for scope in &target.scopes {
            if !is_scope_token(scope) {
                errs.push(
                    file,
                    format!("{entry}.scopes"),
                    format!("`{scope}` is not a valid scope token (RFC 6749 §3.3)"),
                );
            }
        }
        if let Some(min) = target.min_remaining
            && target.spec.ttl().is_some_and(|ttl| min.0 >= ttl)
        {
            errs.push(
                file,
                format!("{entry}.min_remaining"),
                "must be shorter than the ttl",
            );
        }
        if let TargetSpec::Invalid(problems) = &target.spec {
            for (key, problem) in problems {
                errs.push(file, format!("{entry}.{key}"), problem.as_str());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_tokens() {
        assert!(is_scope_token("read:repo"));
        assert!(!is_scope_token("has space"));
        assert!(!is_scope_token("quote\""));
        assert!(!is_scope_token(""));
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("repository_owner"));
        assert!(!is_identifier("1abc"));
        assert!(!is_identifier("a-b"));
    }
}
