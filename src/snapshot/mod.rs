//! A config compiled for serving: issuers with their key caches, CEL programs, the
//! Cedar policy set, targets with their providers, and Ferry's own keys. Built once per
//! config revision; requests read it and never mutate it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_provider_api::CredentialProvider;

use crate::clock::SharedClock;
use crate::config::{Config, ConfigErrors, Problem};
use crate::issuer::{FerryIssuer, KeyRing};
use crate::mapping::{Mapper, Rule};
use crate::policy::PolicyEngine;
use crate::verify::jwks::{JwksPolicy, spawn_refresher};
use crate::verify::{Verifier, fetch};

mod issuers;
mod keys;
mod lints;
mod policies;
mod secrets;
mod targets;

/// A target, ready to serve.
pub struct Target {
    pub id: String,
    pub kind: crate::config::TargetKind,
    /// Scopes a request may ask for.
    pub scopes: Vec<String>,
    /// Lifetime of what it issues.
    pub ttl: Duration,
    /// A cached credential is served only with at least this much left.
    pub min_remaining: Duration,
    /// Whether what it mints is bound to the client's key.
    pub binding: crate::config::Binding,
    /// The provider that mints.
    pub provider: Arc<dyn CredentialProvider>,
    /// The target's own expressions over `identity` (name → rule), e.g. AWS session tags
    /// as `session_tag:<Key>` and `source_identity`.
    pub values: Arc<Vec<(String, Rule)>>,
    /// The revocation field of this target (`RevocationTarget::target_field`), hashed
    /// once here rather than on every exchange.
    pub revocation_field: String,
    /// Digest of what, besides the identity and scopes, determines a credential of this
    /// target: its own config entry, Ferry's public URL and active signing key. The
    /// credential cache key starts with it (`exchange::cache_key`).
    pub cache_scope: crate::memo::Digest,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Options that are not in the config file.
#[derive(Clone)]
pub struct BuildOptions {
    /// The clock every stage uses.
    pub clock: SharedClock,
    /// When false (for `ferry check`), a missing `keys_dir` is a warning and an
    /// ephemeral key stands in.
    pub require_keys: bool,
    /// The ephemeral keys of the runtime being replaced: a reload keeps them (same
    /// algorithm), so tokens already issued stay verifiable.
    pub previous_ephemeral: Option<KeyRing>,
    /// The key-manager keys of the runtime being replaced: a reload whose `[signing]`
    /// opens the same keys keeps them (no round trip to the key manager, and a key
    /// manager that is down does not fail an unrelated reload).
    pub previous_managed: Option<KeyRing>,
    /// The registry the issuer counts signatures in (the serving one, handed on by a
    /// reload).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// What the per-stage builders share while a config compiles: every problem found so
/// far, lint warnings, the bytes the revision hashes and the files a reload watches.
struct Build {
    /// The config file, as problems name it.
    file: String,
    errs: ConfigErrors,
    warnings: Vec<Problem>,
    /// The config and every file it pulls in, in order.
    revision_input: Vec<u8>,
    watched: Vec<std::path::PathBuf>,
}

/// One config revision, compiled for serving: what every request of that revision
/// reads, and nothing mutates. A reload builds a new one and swaps it in whole.
pub struct Snapshot {
    /// Hash of the config and every file it pulls in (first 16 hex chars).
    pub revision: String,
    /// The config it was built from.
    pub config: Config,
    /// Issuers and their keys.
    pub verifier: Verifier,
    /// Mapping rules.
    pub mapper: Mapper,
    /// Policies.
    pub policy: PolicyEngine,
    /// Shadow policies (`[policy] shadow_files`): evaluated beside `policy`, never
    /// deciding.
    pub shadow: Option<PolicyEngine>,
    /// Targets by id.
    pub targets: HashMap<String, Arc<Target>>,
    /// Target ids by resource URI.
    pub resources: HashMap<String, String>,
    /// Ferry's own issuer.
    pub issuer: Arc<FerryIssuer>,
    /// The admin bearer token (from `[admin] token_file`).
    pub admin_token: Option<ferry_provider_api::Secret>,
    /// Introspection clients' secrets by name (`[[introspection.clients]]`).
    pub introspection_clients: HashMap<String, ferry_provider_api::Secret>,
    required_issuers: std::collections::HashSet<String>,
    /// Issuers whose tokens may be exchanged once.
    pub single_use_issuers: std::collections::HashSet<String>,
    leeways: HashMap<String, i64>,
    watched: Vec<std::path::PathBuf>,
    refreshers: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        for handle in &self.refreshers {
            handle.abort();
        }
    }
}

impl Snapshot {
    /// Compiles `config`; returns every error at once, and lint warnings on success.
    /// Each stage has its own builder: issuers and mappings, policies, Ferry's keys,
    /// targets and their providers, and the secrets the config names by file.
    pub fn build(
        config: Config,
        options: &BuildOptions,
    ) -> Result<(Self, Vec<Problem>), ConfigErrors> {
        let mut b = Build {
            file: config.source.display(),
            errs: ConfigErrors::default(),
            warnings: Vec::new(),
            revision_input: config.source.bytes.clone(),
            watched: vec![config.source.path.clone()],
        };
        let http = fetch::http_client(config.jwks.fetch_timeout.0).map_err(|e| {
            let mut errs = ConfigErrors::default();
            errs.push(
                &b.file,
                "jwks",
                format!("cannot build the HTTP client: {e}"),
            );
            errs
        })?;
        let issuers = issuers::build(
            &config,
            options,
            &http,
            &JwksPolicy::of(&config.jwks),
            &mut b,
        );
        let policies = policies::build(&config, issuers.attribute_count, &mut b);
        let issuer = keys::build(&config, options, &mut b);
        let (targets, resources) = targets::build(&config, issuer.as_ref(), &mut b);
        let (Some(policies), Some(issuer), true) = (policies, issuer, b.errs.is_empty()) else {
            if b.errs.is_empty() {
                b.errs.push(&b.file, "config", "could not be compiled");
            }
            return Err(b.errs);
        };
        let facts: Vec<crate::policy::PolicyFacts> = std::iter::once(&policies.enforced)
            .chain(policies.shadow.as_ref())
            .flat_map(PolicyEngine::facts)
            .collect();
        b.warnings.extend(lints::preset_lints(&config, &facts));
        let admin_token = secrets::admin_token(&config, &mut b);
        let introspection_clients = secrets::introspection_clients(&config, &mut b);
        // What `ferry serve` opens at start, `ferry check` checks: the same error, naming
        // the path, from both.
        if let Some(audit) = &config.audit.file
            && let Err(problem) = crate::audit::check_writable(&config.source.resolve(audit))
        {
            b.errs.push(&b.file, "audit.file", problem);
        }
        // The listener's certificate (a renewal on disk is the TLS watch's, not a reload's).
        let (tls_errors, tls_warnings) = crate::tls::check(&config, options.clock.now());
        for (entry, problem) in tls_errors {
            b.errs.push(&b.file, entry, problem);
        }
        b.warnings
            .extend(tls_warnings.into_iter().map(|(entry, problem)| Problem {
                file: b.file.clone(),
                entry,
                problem,
            }));
        if !b.errs.is_empty() {
            return Err(b.errs);
        }
        let issuer_ids = |keep: fn(&crate::config::IssuerConfig) -> bool| {
            config
                .issuers
                .iter()
                .filter(|i| keep(i))
                .map(|i| i.id.clone())
                .collect()
        };
        let single_use_issuers = issuer_ids(|i| i.single_use);
        let required_issuers = issuer_ids(|i| i.required);
        let leeways = config
            .issuers
            .iter()
            .map(|i| (i.id.clone(), i.leeway.as_secs_i64()))
            .collect();
        Ok((
            Self {
                revision: crate::fingerprint(&b.revision_input),
                verifier: Verifier::new(issuers.trusted, options.clock.clone()),
                mapper: Mapper::new(issuers.mappings),
                config,
                policy: policies.enforced,
                shadow: policies.shadow,
                targets,
                resources,
                issuer,
                admin_token,
                introspection_clients,
                required_issuers,
                single_use_issuers,
                leeways,
                watched: b.watched,
                refreshers: Vec::new(),
            },
            b.warnings,
        ))
    }

    /// Fetches every remote issuer's keys once, concurrently (start-up); failures are
    /// logged and retried by the refreshers.
    pub async fn warm_up(&self) {
        let mut set = tokio::task::JoinSet::new();
        for issuer in self.verifier.issuers().filter(|i| i.jwks.is_remote()) {
            let jwks = Arc::clone(&issuer.jwks);
            set.spawn(async move {
                if let Err(e) = jwks.refresh().await {
                    tracing::warn!(issuer = %jwks.issuer_id(), error = %e, "initial jwks fetch failed; will retry");
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Starts the scheduled JWKS refreshes; they stop when this runtime is dropped.
    pub fn start_refreshers(&mut self) {
        for issuer in self.verifier.issuers() {
            if issuer.jwks.is_remote() {
                self.refreshers
                    .push(spawn_refresher(Arc::clone(&issuer.jwks)));
            }
        }
    }

    /// Whether an enforced or shadow policy reads `context.anomalies`.
    pub fn reads_anomalies(&self) -> bool {
        self.config.anomalies.enabled
            && (self.policy.reads_anomalies()
                || self
                    .shadow
                    .as_ref()
                    .is_some_and(PolicyEngine::reads_anomalies))
    }

    /// An issuer's clock-skew leeway, seconds.
    pub fn leeway_of(&self, issuer_id: &str) -> i64 {
        self.leeways.get(issuer_id).copied().unwrap_or(60)
    }

    /// How long a revocation lives: until every token and credential it could cover has
    /// expired — the longest target lifetime plus the longest a subject token presented
    /// now can stay acceptable. Its `exp` is at most `max_token_lifetime` after its `iat`
    /// (refused otherwise), its `iat` at most one leeway in the future, and it is accepted
    /// up to one leeway past `exp`: so the issuer's `max_token_lifetime` (or `max_age`, if
    /// shorter) plus two leeways.
    pub fn revocation_ttl(&self) -> Duration {
        let max_ttl = self
            .targets
            .values()
            .map(|t| t.ttl)
            .max()
            .unwrap_or(Duration::from_secs(3600));
        let token_life = self
            .config
            .issuers
            .iter()
            .map(|i| {
                let life = i.max_token_lifetime.0;
                let bounded = i.max_age.map_or(life, |age| age.0.min(life));
                bounded + i.leeway.0 * 2
            })
            .max()
            .unwrap_or(Duration::from_secs(86_400));
        max_ttl + token_life
    }

    /// A revocation of `target`, living until every credential it could cover has expired.
    pub fn revocation(
        &self,
        target: crate::store::RevocationTarget,
        reason: Option<String>,
        now: i64,
    ) -> crate::store::Revocation {
        let ttl = i64::try_from(self.revocation_ttl().as_secs()).unwrap_or(i64::MAX);
        crate::store::Revocation {
            target,
            reason,
            created_at: now,
            expires_at: now.saturating_add(ttl),
        }
    }

    /// Swaps a target's provider (embedding and tests: a counting or failing fake).
    pub fn replace_provider(
        &mut self,
        target_id: &str,
        provider: Arc<dyn CredentialProvider>,
    ) -> bool {
        match self.targets.get(target_id) {
            Some(t) => {
                let replaced = Target {
                    id: t.id.clone(),
                    kind: t.kind.clone(),
                    scopes: t.scopes.clone(),
                    ttl: t.ttl,
                    min_remaining: t.min_remaining,
                    binding: t.binding.clone(),
                    provider,
                    values: Arc::clone(&t.values),
                    revocation_field: t.revocation_field.clone(),
                    cache_scope: t.cache_scope,
                };
                self.targets
                    .insert(target_id.to_owned(), Arc::new(replaced));
                true
            }
            None => false,
        }
    }

    /// True when every required issuer has usable keys.
    pub fn issuers_ready(&self) -> bool {
        self.verifier
            .issuers()
            .filter(|i| self.required_issuers.contains(i.id.as_ref()))
            .all(|i| i.jwks.status().usable)
    }

    /// Files whose change means the config changed: the config itself, policy files
    /// (and the directories their globs read), static JWKS files.
    pub fn watched_files(&self) -> &[std::path::PathBuf] {
        &self.watched
    }
}

/// [`Target::cache_scope`]: the target's config entry as written (every key, sorted),
/// with the public URL (`iss` of what Ferry signs) and the active signing key id.
fn cache_scope(
    t: &crate::config::TargetConfig,
    public_url: &str,
    kid: &str,
) -> crate::memo::Digest {
    let mut entry = t.extra.clone();
    let mut put = |k: &str, v: Option<toml::Value>| {
        if let Some(v) = v {
            entry.insert(k.to_owned(), v);
        }
    };
    let duration = |d: Option<crate::config::ConfigDuration>| {
        d.map(|d| toml::Value::String(format!("{}ms", d.0.as_millis())))
    };
    put("id", Some(toml::Value::String(t.id.clone())));
    put(
        "kind",
        Some(toml::Value::String(t.kind.as_str().to_owned())),
    );
    put("audience", t.audience.clone().map(toml::Value::String));
    put("resource", t.resource.clone().map(toml::Value::String));
    put("ttl", duration(t.ttl));
    put("min_remaining", duration(t.min_remaining));
    put(
        "scopes",
        Some(toml::Value::Array(
            t.scopes.iter().cloned().map(toml::Value::String).collect(),
        )),
    );
    crate::key_digest::KeyDigest::new("target")
        .toml(&toml::Value::Table(entry))
        .str(public_url)
        .str(kid)
        .finish()
}
