//! Targets: each `[[targets]]` entry with the provider that mints its credentials. A
//! cloud kind's entry was parsed at load by its provider crate into that crate's target;
//! here it is constructed, and the rest of the core sees only `dyn CredentialProvider`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use ferry_provider_api::settings::Spec;
use ferry_provider_api::{AssertionSigner, CredentialProvider};
use ferry_provider_aws::AwsProvider;
use ferry_provider_azure::AzureProvider;
use ferry_provider_gcp::GcpProvider;

use super::{Build, Target, cache_scope};
use crate::config::{Config, Problem, TargetConfig, TargetSpec};
use crate::issuer::{FerryIssuer, JwtProvider};
use crate::mapping::Rule;

/// Targets by id, and target ids by resource URI.
pub(super) type Targets = (HashMap<String, Arc<Target>>, HashMap<String, String>);

/// What a kind's builder makes of one entry.
struct Built {
    provider: Arc<dyn CredentialProvider>,
    /// The target's own expressions over `identity` (AWS session tags).
    values: Vec<(String, Rule)>,
    /// `min_remaining` when the entry sets none.
    min_remaining: Duration,
}

/// Builds every target's provider (an entry validation refused is left out).
pub(super) fn build(config: &Config, issuer: Option<&Arc<FerryIssuer>>, b: &mut Build) -> Targets {
    let mut targets = HashMap::new();
    let mut resources = HashMap::new();
    let Some(issuer) = issuer else {
        return (targets, resources);
    };
    for t in &config.targets {
        let signer: Arc<dyn AssertionSigner> = issuer.clone();
        let built = match &t.spec {
            TargetSpec::Jwt { audience, ttl } => {
                resources.insert(audience.clone(), t.id.clone());
                Some(Built {
                    provider: Arc::new(JwtProvider::new(
                        Arc::clone(issuer),
                        audience.clone(),
                        *ttl,
                    )),
                    values: Vec::new(),
                    min_remaining: *ttl / 2,
                })
            }
            TargetSpec::Aws(spec) => cloud(t, spec, b, |target| {
                Ok::<_, Infallible>(AwsProvider::new(target, signer))
            }),
            TargetSpec::Gcp(spec) => cloud(t, spec, b, |target| GcpProvider::new(target, signer)),
            TargetSpec::Azure(spec) => {
                cloud(t, spec, b, |target| AzureProvider::new(target, signer))
            }
            TargetSpec::Invalid(_) => None, // refused by validation
        };
        let (Some(built), Some(ttl)) = (built, t.spec.ttl()) else {
            continue;
        };
        if let Some(r) = &t.resource {
            resources.insert(r.clone(), t.id.clone());
        }
        let target = Target {
            id: t.id.clone(),
            kind: t.kind.clone(),
            scopes: t.scopes.clone(),
            ttl,
            min_remaining: t.min_remaining.map_or(built.min_remaining, |d| d.0),
            binding: t.binding(),
            provider: built.provider,
            values: Arc::new(built.values),
            revocation_field: crate::store::RevocationTarget::target_field(&t.id),
            cache_scope: cache_scope(t, &config.server.public_url, &issuer.keys().active.kid),
        };
        if matches!(t.spec, TargetSpec::Jwt { .. }) && target.min_remaining < JWT_CLIENT_FLOOR {
            b.warnings.push(Problem {
                file: b.file.clone(),
                entry: format!("targets[{}].min_remaining", t.id),
                problem: format!(
                    "warning: a cached token is handed out with as little as {} left; google-auth treats a token with under 3m45s left as expired and asks again at once, getting the same token back (a loop until it is replaced): set min_remaining to at least 4m (and ttl above it)",
                    humantime::format_duration(target.min_remaining)
                ),
            });
        }
        targets.insert(t.id.clone(), Arc::new(target));
    }
    (targets, resources)
}

/// The least lifetime a cached JWT is handed out with by default: above google-auth's
/// refresh threshold (3 min 45 s), the shortest common client threshold for JWTs.
const JWT_CLIENT_FLOOR: Duration = Duration::from_secs(240);

/// A cloud target: its provider crate's target constructed, its expressions over
/// `identity` compiled, its warnings recorded.
fn cloud<T: Clone, P: CredentialProvider + 'static, E: std::fmt::Display>(
    t: &TargetConfig,
    spec: &Spec<T>,
    b: &mut Build,
    provider: impl FnOnce(T) -> Result<P, E>,
) -> Option<Built> {
    let entry = format!("targets[{}]", t.id);
    let at = |key: &str| {
        if key.is_empty() {
            entry.clone()
        } else {
            format!("{entry}.{key}")
        }
    };
    for (key, problem) in &spec.warnings {
        b.warnings.push(Problem {
            file: b.file.clone(),
            entry: at(key),
            problem: problem.clone(),
        });
    }
    let mut values = Vec::new();
    for e in &spec.expressions {
        match Rule::compile(e.key.clone(), &e.source) {
            Ok(rule) => values.push((e.name.clone(), rule)),
            Err(err) => b
                .errs
                .push(&b.file, at(&e.key), format!("CEL syntax error: {err}")),
        }
    }
    match provider(spec.target.clone()) {
        Ok(p) => Some(Built {
            provider: Arc::new(p),
            values,
            min_remaining: spec.min_remaining,
        }),
        Err(e) => {
            b.errs.push(&b.file, entry, e.to_string());
            None
        }
    }
}
