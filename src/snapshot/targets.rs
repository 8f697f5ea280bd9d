//! Targets: each `[[targets]]` entry with the provider that mints its credentials. One
//! builder per kind turns the kind's parsed settings (`config/aws.rs`, …) into its
//! provider crate's target; the rest of the core sees only `dyn CredentialProvider`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_provider_api::{AssertionSigner, CredentialProvider, Secret};

use super::{Build, Target, cache_floor, cache_scope};
use crate::config::azure::AzureMode;
use crate::config::{Config, Problem, TargetConfig, TargetKind, target_ttl};
use crate::issuer::{FerryIssuer, JwtProvider};
use crate::mapping::Rule;

/// Targets by id, and target ids by resource URI.
pub(super) type Targets = (HashMap<String, Arc<Target>>, HashMap<String, String>);

/// What a kind's builder makes of one entry.
struct Built {
    provider: Arc<dyn CredentialProvider>,
    /// The target's own expressions over `identity` (AWS session tags).
    values: Vec<(String, Rule)>,
    /// `min_remaining` when the entry sets none: what the kind's SDKs need left before
    /// they refresh.
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
        let ttl = target_ttl(t);
        let built = match t.kind {
            TargetKind::Jwt => Some(Built {
                provider: Arc::new(JwtProvider::new(
                    Arc::clone(issuer),
                    t.audience.clone().unwrap_or_default(),
                    ttl,
                )),
                values: Vec::new(),
                min_remaining: ttl / 2,
            }),
            TargetKind::Aws => aws(t, ttl, issuer.clone(), b),
            TargetKind::Gcp => gcp(t, ttl, issuer.clone(), b),
            TargetKind::Azure => azure(t, ttl, issuer.clone(), config, b),
            TargetKind::Unknown(_) => None, // refused by validation
        };
        let Some(built) = built else {
            continue;
        };
        if let Some(r) = &t.resource {
            resources.insert(r.clone(), t.id.clone());
        }
        if t.kind == TargetKind::Jwt
            && let Some(a) = &t.audience
        {
            resources.insert(a.clone(), t.id.clone());
        }
        let target = Target {
            id: t.id.clone(),
            kind: t.kind.clone(),
            scopes: t.scopes.clone(),
            ttl,
            min_remaining: t.min_remaining.map_or(built.min_remaining, |d| d.0),
            provider: built.provider,
            values: Arc::new(built.values),
            revocation_field: crate::store::RevocationTarget::target_field(&t.id),
            cache_scope: cache_scope(t, &config.server.public_url, &issuer.keys().active.kid),
        };
        targets.insert(t.id.clone(), Arc::new(target));
    }
    (targets, resources)
}

/// An `aws` target: STS through `AssumeRoleWithWebIdentity` or `AssumeRole`, with its
/// session tags and source identity compiled as CEL over `identity`.
fn aws(
    t: &TargetConfig,
    ttl: Duration,
    signer: Arc<dyn AssertionSigner>,
    b: &mut Build,
) -> Option<Built> {
    let aws = crate::config::aws::parse(t).ok()?; // problems reported by validation
    let entry = format!("targets[{}]", t.id);
    if aws.clamped {
        b.warnings.push(Problem {
            file: b.file.clone(),
            entry: format!("{entry}.duration"),
            problem: format!(
                "warning: clamped to {}s (STS allows 15m–12h)",
                aws.duration.as_secs()
            ),
        });
    }
    let mut values = Vec::new();
    let sources = aws
        .session_tags
        .iter()
        .map(|(tag, src)| {
            (
                format!("session_tag:{tag}"),
                format!("session_tags.{tag}"),
                src,
            )
        })
        .chain(
            aws.source_identity
                .iter()
                .map(|src| ("source_identity".into(), "source_identity".into(), src)),
        );
    for (name, key, src) in sources {
        match Rule::compile(key.clone(), src) {
            Ok(rule) => values.push((name, rule)),
            Err(e) => b.errs.push(
                &b.file,
                format!("{entry}.{key}"),
                format!("CEL syntax error: {e}"),
            ),
        }
    }
    let provider = ferry_provider_aws::AwsProvider::new(
        ferry_provider_aws::AwsTarget {
            id: t.id.clone(),
            mode: aws.mode,
            role_arn: aws.role_arn,
            duration: aws.duration,
            region: aws.region,
            endpoint: aws.endpoint,
            audience: aws.web_identity_audience,
            external_id: aws.external_id,
            session_policy: aws.session_policy,
            max_concurrency: aws.max_concurrency,
        },
        signer,
    );
    Some(Built {
        provider: Arc::new(provider),
        values,
        // AWS SDKs refresh credentials with less than 15 minutes left: never hand out
        // cached ones that close to expiry.
        min_remaining: cache_floor(ttl, Duration::from_secs(16 * 60), Duration::from_secs(60)),
    })
}

/// A `gcp` target: workload identity federation, or Ferry's own Google identity
/// impersonating a service account.
fn gcp(
    t: &TargetConfig,
    ttl: Duration,
    signer: Arc<dyn AssertionSigner>,
    b: &mut Build,
) -> Option<Built> {
    let gcp = crate::config::gcp::parse(t).ok()?; // problems reported by validation
    b.warnings.push(Problem {
        file: b.file.clone(),
        entry: format!("targets[{}]", t.id),
        problem: "warning: GCP rejects a `sub` over 127 bytes; canonical subjects may be up to 256 bytes — keep the mappings that reach this target short".into(),
    });
    let provider = ferry_provider_gcp::GcpProvider::new(
        ferry_provider_gcp::GcpTarget {
            id: t.id.clone(),
            mode: gcp.mode,
            audience: gcp.audience,
            jwt_audience: gcp.jwt_audience,
            service_account: gcp.service_account,
            scopes: t.scopes.clone(),
            lifetime: gcp.lifetime,
            sts_endpoint: gcp.sts_endpoint,
            iam_credentials_endpoint: gcp.iam_credentials_endpoint,
            max_concurrency: gcp.max_concurrency,
            attempt_timeout: Duration::from_secs(5),
        },
        signer,
    );
    built(
        provider,
        t,
        b,
        |ttl| {
            // google-auth refreshes tokens with about 4 minutes left.
            cache_floor(ttl, Duration::from_secs(5 * 60), Duration::from_secs(30))
        },
        ttl,
    )
}

/// An `azure` target: a Ferry-signed client assertion, Ferry's own client secret, or
/// its managed identity.
fn azure(
    t: &TargetConfig,
    ttl: Duration,
    signer: Arc<dyn AssertionSigner>,
    config: &Config,
    b: &mut Build,
) -> Option<Built> {
    let az = crate::config::azure::parse(t).ok()?; // problems reported by validation
    let mode = match az.mode {
        AzureMode::Federated => ferry_provider_azure::Mode::Federated,
        AzureMode::ManagedIdentity => ferry_provider_azure::Mode::ManagedIdentity {
            imds_endpoint: az.imds_endpoint,
        },
        AzureMode::ClientSecret => {
            let path = config.source.resolve(az.client_secret_file.as_deref()?);
            match std::fs::read_to_string(&path) {
                Ok(secret) if !secret.trim().is_empty() => {
                    ferry_provider_azure::Mode::ClientSecret(Secret::new(secret.trim()))
                }
                _ => {
                    b.errs.push(
                        &b.file,
                        format!("targets[{}].client_secret_file", t.id),
                        format!("cannot read a secret from `{}`", path.display()),
                    );
                    return None;
                }
            }
        }
    };
    let provider = ferry_provider_azure::AzureProvider::new(
        ferry_provider_azure::AzureTarget {
            id: t.id.clone(),
            mode,
            tenant_id: az.tenant_id,
            client_id: az.client_id,
            scope: az.scope,
            authority_host: az.authority_host,
            max_concurrency: az.max_concurrency,
            attempt_timeout: Duration::from_secs(5),
        },
        signer,
    );
    built(
        provider,
        t,
        b,
        |ttl| {
            // Azure SDKs refresh tokens with about 5 minutes left.
            cache_floor(ttl, Duration::from_secs(6 * 60), Duration::from_secs(30))
        },
        ttl,
    )
}

/// A provider that could be constructed, or its error recorded against the entry.
fn built<P: CredentialProvider + 'static, E: std::fmt::Display>(
    provider: Result<P, E>,
    t: &TargetConfig,
    b: &mut Build,
    min_remaining: impl FnOnce(Duration) -> Duration,
    ttl: Duration,
) -> Option<Built> {
    match provider {
        Ok(p) => Some(Built {
            provider: Arc::new(p),
            values: Vec::new(),
            min_remaining: min_remaining(ttl),
        }),
        Err(e) => {
            b.errs
                .push(&b.file, format!("targets[{}]", t.id), e.to_string());
            None
        }
    }
}
