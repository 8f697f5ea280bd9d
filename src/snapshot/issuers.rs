//! Trusted issuers (their key caches) and the mapping rules compiled from `[[issuers]]`.

use std::collections::BTreeMap;
use std::sync::Arc;

use url::Url;

use super::{Build, BuildOptions};
use crate::config::{Config, ConfigErrors, Problem};
use crate::mapping::{IssuerMapping, Rule};
use crate::verify::jwks::{JwksCache, JwksPolicy, JwksSource};
use crate::verify::{TrustedIssuer, parse_algorithm};

/// What the issuers compile to.
pub(super) struct Issuers {
    pub trusted: Vec<Arc<TrustedIssuer>>,
    pub mappings: Vec<IssuerMapping>,
    /// How many issuers map each attribute name (the policy schema's presence).
    pub attribute_count: BTreeMap<String, usize>,
}

/// Compiles every `[[issuers]]` entry: its JWKS source (a static file is read now, and
/// joins the revision and the watched files) and its CEL condition and mapping.
pub(super) fn build(
    config: &Config,
    options: &BuildOptions,
    http: &reqwest::Client,
    jwks_policy: &JwksPolicy,
    b: &mut Build,
) -> Issuers {
    let Build {
        file,
        errs,
        warnings,
        revision_input,
        watched,
    } = b;
    let mut trusted = Vec::new();
    let mut mappings = Vec::new();
    let mut attribute_count: BTreeMap<String, usize> = BTreeMap::new();
    for issuer in &config.issuers {
        let entry = format!("issuers[{}]", issuer.id);
        let jwks = if let Some(path) = &issuer.jwks_file {
            let resolved = config.source.resolve(path);
            watched.push(resolved.clone());
            match std::fs::read(&resolved) {
                Ok(bytes) => {
                    revision_input.extend_from_slice(&bytes);
                    match JwksCache::from_static(
                        issuer.id.clone(),
                        &bytes,
                        http.clone(),
                        options.clock.clone(),
                        jwks_policy.clone(),
                    ) {
                        Ok(cache) => Some(cache),
                        Err(e) => {
                            errs.push(
                                resolved.display().to_string(),
                                format!("{entry}.jwks_file"),
                                e.to_string(),
                            );
                            None
                        }
                    }
                }
                Err(e) => {
                    errs.push(
                        file.as_str(),
                        format!("{entry}.jwks_file"),
                        format!("cannot read `{}`: {e}", resolved.display()),
                    );
                    None
                }
            }
        } else {
            let source = match &issuer.jwks_uri {
                Some(uri) => Url::parse(uri).ok().map(JwksSource::Uri),
                None => Some(JwksSource::Discovery {
                    issuer: issuer.issuer.clone(),
                }),
            };
            source.map(|s| {
                JwksCache::remote(
                    issuer.id.clone(),
                    s,
                    http.clone(),
                    options.clock.clone(),
                    jwks_policy.clone(),
                )
            })
        };
        let compile =
            |key: String, src: &str, errs: &mut ConfigErrors| match Rule::compile(key.clone(), src)
            {
                Ok(rule) => Some(rule),
                Err(e) => {
                    errs.push(
                        file.as_str(),
                        format!("{entry}.{key}"),
                        format!("CEL syntax error: {e}"),
                    );
                    None
                }
            };
        let condition = issuer
            .condition
            .as_deref()
            .map(|c| compile("condition".into(), c, errs));
        let subject = compile("mapping.subject".into(), &issuer.mapping.subject, errs);
        let groups = issuer
            .mapping
            .groups
            .as_deref()
            .map(|g| compile("mapping.groups".into(), g, errs));
        let mut attributes = Vec::new();
        for (name, src) in &issuer.mapping.attributes {
            *attribute_count.entry(name.clone()).or_default() += 1;
            if let Some(rule) = compile(format!("mapping.attributes.{name}"), src, errs) {
                attributes.push((name.clone(), rule));
            }
        }
        if issuer.condition.is_none() {
            warnings.push(Problem {
                file: file.clone(),
                entry: entry.clone(),
                problem: "warning: no `condition`: every token this issuer signs for an accepted audience is mapped; restrict it (e.g. to your organisation)".into(),
            });
        }
        if let (Some(jwks), Some(condition), Some(subject), Some(groups)) = (
            jwks,
            condition.map_or(Some(None), |c| c.map(Some)),
            subject,
            groups.map_or(Some(None), |g| g.map(Some)),
        ) {
            let algorithms = issuer
                .algorithms
                .iter()
                .filter_map(|a| parse_algorithm(a))
                .collect();
            trusted.push(Arc::new(TrustedIssuer {
                id: Arc::from(issuer.id.as_str()),
                issuer: issuer.issuer.clone(),
                audiences: issuer.audiences.iter().cloned().collect(),
                algorithms,
                leeway: issuer.leeway.as_secs_i64(),
                max_age: issuer.max_age.map(|d| d.as_secs_i64()),
                max_lifetime: issuer.max_token_lifetime.as_secs_i64(),
                jwks: Arc::new(jwks),
            }));
            mappings.push(IssuerMapping::new(
                issuer.id.clone(),
                condition,
                subject,
                groups,
                attributes,
            ));
        }
    }

    Issuers {
        trusted,
        mappings,
        attribute_count,
    }
}
