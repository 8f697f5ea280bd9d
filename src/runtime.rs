//! A config compiled for serving: issuers with their key caches, CEL programs, the
//! Cedar policy set, targets with their providers, and Ferry's own keys. Built once per
//! config revision; requests read it and never mutate it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferry_provider_api::CredentialProvider;
use url::Url;

use crate::clock::SharedClock;
use crate::config::{Config, ConfigErrors, Problem, target_ttl};
use crate::issuer::{FerryIssuer, JwtProvider, KeyDir, KeyRing};
use crate::mapping::{IssuerMapping, Mapper, Rule};
use crate::policy::{AttributePresence, PolicyEngine, PolicySource};
use crate::verify::jwks::{JwksCache, JwksPolicy, JwksSource, spawn_refresher};
use crate::verify::{TrustedIssuer, Verifier, fetch, parse_algorithm};

/// A target, ready to serve.
pub struct Target {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Scopes a request may ask for.
    pub scopes: Vec<String>,
    /// Lifetime of what it issues.
    pub ttl: Duration,
    /// A cached credential is served only with at least this much left.
    pub min_remaining: Duration,
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
    pub cache_scope: crate::slots::Digest,
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
}

/// The compiled config.
pub struct Runtime {
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

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for handle in &self.refreshers {
            handle.abort();
        }
    }
}

impl Runtime {
    /// Compiles `config`; returns every error at once, and lint warnings on success.
    pub fn build(
        config: Config,
        options: &BuildOptions,
    ) -> Result<(Self, Vec<Problem>), ConfigErrors> {
        let file = config.source.display();
        let mut errs = ConfigErrors::default();
        let mut warnings = Vec::new();
        let mut revision_input: Vec<u8> = config.source.bytes.clone();
        let mut watched = vec![config.source.path.clone()];

        let http = fetch::http_client(config.jwks.fetch_timeout.0).map_err(|e| {
            let mut errs = ConfigErrors::default();
            errs.push(&file, "jwks", format!("cannot build the HTTP client: {e}"));
            errs
        })?;
        let jwks_policy = JwksPolicy {
            refresh_default: config.jwks.refresh_default.0,
            refresh_min: config.jwks.refresh_min.0,
            refresh_max: config.jwks.refresh_max.0,
            unknown_kid_min_interval: config.jwks.unknown_kid_min_interval.0,
            max_stale: config.jwks.max_stale.0,
            retry_interval: config.jwks.retry_interval.0,
        };

        // Issuers and mappings.
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
                            &file,
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
            let compile = |key: String, src: &str, errs: &mut ConfigErrors| match Rule::compile(
                key.clone(),
                src,
            ) {
                Ok(rule) => Some(rule),
                Err(e) => {
                    errs.push(
                        &file,
                        format!("{entry}.{key}"),
                        format!("CEL syntax error: {e}"),
                    );
                    None
                }
            };
            let condition = issuer
                .condition
                .as_deref()
                .map(|c| compile("condition".into(), c, &mut errs));
            let subject = compile("mapping.subject".into(), &issuer.mapping.subject, &mut errs);
            let groups = issuer
                .mapping
                .groups
                .as_deref()
                .map(|g| compile("mapping.groups".into(), g, &mut errs));
            let mut attributes = Vec::new();
            for (name, src) in &issuer.mapping.attributes {
                *attribute_count.entry(name.clone()).or_default() += 1;
                if let Some(rule) = compile(format!("mapping.attributes.{name}"), src, &mut errs) {
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

        // Policies, validated against the schema derived from the mappings.
        let issuer_count = config.issuers.len();
        let attributes: BTreeMap<String, AttributePresence> = attribute_count
            .into_iter()
            .map(|(name, n)| {
                let presence = if n == issuer_count {
                    AttributePresence::Always
                } else {
                    AttributePresence::Sometimes
                };
                (name, presence)
            })
            .collect();
        let mut sources = Vec::new();
        for pattern in &config.policy.files {
            let resolved = config.source.resolve(std::path::Path::new(pattern));
            if let Some(dir) = resolved.parent() {
                // A new file matching the glob changes the directory's mtime.
                watched.push(dir.to_path_buf());
            }
            let resolved = resolved.to_string_lossy().into_owned();
            let mut matched = Vec::new();
            match glob::glob(&resolved) {
                Ok(paths) => {
                    for path in paths.flatten() {
                        matched.push(path);
                    }
                }
                Err(e) => errs.push(
                    &file,
                    "policy.files",
                    format!("`{pattern}` is not a valid pattern: {e}"),
                ),
            }
            matched.sort();
            if matched.is_empty() {
                errs.push(
                    &file,
                    "policy.files",
                    format!("`{pattern}` matches no file"),
                );
            }
            for path in matched {
                watched.push(path.clone());
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        revision_input.extend_from_slice(path.to_string_lossy().as_bytes());
                        revision_input.extend_from_slice(text.as_bytes());
                        sources.push(PolicySource {
                            file: path.display().to_string(),
                            text,
                        });
                    }
                    Err(e) => errs.push(
                        path.display().to_string(),
                        "file",
                        format!("cannot read: {e}"),
                    ),
                }
            }
        }
        let policy = match PolicyEngine::load(&sources, &attributes, &file) {
            Ok((engine, lints)) => {
                warnings.extend(lints.into_iter().map(|mut p| {
                    p.problem = format!("warning: {}", p.problem);
                    p
                }));
                Some(engine)
            }
            Err(e) => {
                errs.0.extend(e.0);
                None
            }
        };

        // Ferry's keys.
        let now = options.clock.now();
        let alg = parse_algorithm(&config.signing.algorithm);
        let retain = config.max_token_lifetime() + Duration::from_secs(300);
        let keys: Option<KeyRing> = match (alg, &config.signing.keys_dir) {
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
                    errs.push(&file, "signing", e.to_string());
                    None
                }
            },
            (Some(alg), Some(dir)) => {
                let dir = config.source.resolve(dir);
                match KeyDir::new(&dir).load(now, retain) {
                    Ok(ring) => {
                        if ring.active.alg != alg {
                            errs.push(&file, "signing.algorithm", format!("is {} but the active key in `{}` is {:?}; run `ferry keys rotate`", config.signing.algorithm, dir.display(), ring.active.alg));
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
                        errs.push(&file, "signing.keys_dir", e.to_string());
                        None
                    }
                }
            }
        };
        let issuer = keys.map(|k| {
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
            ))
        });

        // Targets.
        let mut targets = HashMap::new();
        let mut resources = HashMap::new();
        if let Some(issuer) = &issuer {
            for t in &config.targets {
                let ttl = target_ttl(t);
                let mut values = Vec::new();
                let mut min_remaining_default = ttl / 2;
                let signer: Arc<dyn ferry_provider_api::AssertionSigner> = issuer.clone();
                let provider: Arc<dyn CredentialProvider> = match t.kind.as_str() {
                    "jwt" => Arc::new(JwtProvider::new(
                        Arc::clone(issuer),
                        t.audience.clone().unwrap_or_default(),
                        ttl,
                    )),
                    "aws" => {
                        let Ok(aws) = crate::config::aws::parse(t) else {
                            continue; // reported by validation
                        };
                        let entry = format!("targets[{}]", t.id);
                        if aws.clamped {
                            warnings.push(Problem {
                                file: file.clone(),
                                entry: format!("{entry}.duration"),
                                problem: format!(
                                    "warning: clamped to {}s (STS allows 15m–12h)",
                                    aws.duration.as_secs()
                                ),
                            });
                        }
                        let mut compile = |name: String, key: String, src: &str| match Rule::compile(
                            key.clone(),
                            src,
                        ) {
                            Ok(rule) => values.push((name, rule)),
                            Err(e) => errs.push(
                                &file,
                                format!("{entry}.{key}"),
                                format!("CEL syntax error: {e}"),
                            ),
                        };
                        for (tag, src) in &aws.session_tags {
                            compile(
                                format!("session_tag:{tag}"),
                                format!("session_tags.{tag}"),
                                src,
                            );
                        }
                        if let Some(src) = &aws.source_identity {
                            compile("source_identity".into(), "source_identity".into(), src);
                        }
                        // AWS SDKs refresh credentials with less than 15 minutes left:
                        // never hand out cached ones that close to expiry.
                        min_remaining_default =
                            cache_floor(ttl, Duration::from_secs(16 * 60), Duration::from_secs(60));
                        let signer = Arc::clone(&signer);
                        Arc::new(ferry_provider_aws::AwsProvider::new(
                            ferry_provider_aws::AwsTarget {
                                id: t.id.clone(),
                                mode: if aws.mode == "assume_role" {
                                    ferry_provider_aws::Mode::AssumeRole
                                } else {
                                    ferry_provider_aws::Mode::WebIdentity
                                },
                                role_arn: aws.role_arn.clone(),
                                duration: aws.duration,
                                region: aws.region.clone(),
                                endpoint: aws.endpoint.clone(),
                                audience: aws.web_identity_audience.clone(),
                                external_id: aws.external_id.clone(),
                                session_policy: aws.session_policy.clone(),
                                max_concurrency: aws.max_concurrency,
                            },
                            signer,
                        ))
                    }
                    "gcp" => {
                        let Ok(gcp) = crate::config::gcp::parse(t) else {
                            continue; // reported by validation
                        };
                        warnings.push(Problem {
                            file: file.clone(),
                            entry: format!("targets[{}]", t.id),
                            problem: "warning: GCP rejects a `sub` over 127 bytes; canonical subjects may be up to 256 bytes — keep the mappings that reach this target short".into(),
                        });
                        // google-auth refreshes tokens with about 4 minutes left.
                        min_remaining_default =
                            cache_floor(ttl, Duration::from_secs(5 * 60), Duration::from_secs(30));
                        let signer = Arc::clone(&signer);
                        match ferry_provider_gcp::GcpProvider::new(
                            ferry_provider_gcp::GcpTarget {
                                id: t.id.clone(),
                                mode: if gcp.mode == "service_account" {
                                    ferry_provider_gcp::Mode::ServiceAccount
                                } else {
                                    ferry_provider_gcp::Mode::WorkloadIdentity
                                },
                                audience: gcp.audience.clone(),
                                jwt_audience: gcp.jwt_audience.clone(),
                                service_account: gcp.service_account.clone(),
                                scopes: t.scopes.clone(),
                                lifetime: gcp.lifetime,
                                sts_endpoint: gcp.sts_endpoint.clone(),
                                iam_credentials_endpoint: gcp.iam_credentials_endpoint.clone(),
                                max_concurrency: gcp.max_concurrency,
                                attempt_timeout: Duration::from_secs(5),
                            },
                            signer,
                        ) {
                            Ok(p) => Arc::new(p),
                            Err(e) => {
                                errs.push(&file, format!("targets[{}]", t.id), e.to_string());
                                continue;
                            }
                        }
                    }
                    "azure" => {
                        let Ok(az) = crate::config::azure::parse(t) else {
                            continue; // reported by validation
                        };
                        let mode = match az.mode.as_str() {
                            "client_secret" => {
                                let path = az
                                    .client_secret_file
                                    .as_deref()
                                    .map(|p| config.source.resolve(p));
                                match path.map(|p| (std::fs::read_to_string(&p), p)) {
                                    Some((Ok(secret), _)) if !secret.trim().is_empty() => {
                                        ferry_provider_azure::Mode::ClientSecret(
                                            ferry_provider_api::Secret::new(secret.trim()),
                                        )
                                    }
                                    Some((_, p)) => {
                                        errs.push(
                                            &file,
                                            format!("targets[{}].client_secret_file", t.id),
                                            format!("cannot read a secret from `{}`", p.display()),
                                        );
                                        continue;
                                    }
                                    None => continue,
                                }
                            }
                            "managed_identity" => ferry_provider_azure::Mode::ManagedIdentity {
                                imds_endpoint: az.imds_endpoint.clone(),
                            },
                            _ => ferry_provider_azure::Mode::Federated,
                        };
                        // Azure SDKs refresh tokens with about 5 minutes left.
                        min_remaining_default =
                            cache_floor(ttl, Duration::from_secs(6 * 60), Duration::from_secs(30));
                        let signer = Arc::clone(&signer);
                        match ferry_provider_azure::AzureProvider::new(
                            ferry_provider_azure::AzureTarget {
                                id: t.id.clone(),
                                mode,
                                tenant_id: az.tenant_id.clone(),
                                client_id: az.client_id.clone(),
                                scope: az.scope.clone(),
                                authority_host: az.authority_host.clone(),
                                max_concurrency: az.max_concurrency,
                                attempt_timeout: Duration::from_secs(5),
                            },
                            signer,
                        ) {
                            Ok(p) => Arc::new(p),
                            Err(e) => {
                                errs.push(&file, format!("targets[{}]", t.id), e.to_string());
                                continue;
                            }
                        }
                    }
                    _ => continue, // rejected by validation
                };
                if let Some(r) = &t.resource {
                    resources.insert(r.clone(), t.id.clone());
                }
                if t.kind == "jwt"
                    && let Some(a) = &t.audience
                {
                    resources.insert(a.clone(), t.id.clone());
                }
                targets.insert(
                    t.id.clone(),
                    Arc::new(Target {
                        id: t.id.clone(),
                        kind: t.kind.clone(),
                        scopes: t.scopes.clone(),
                        ttl,
                        min_remaining: t
                            .min_remaining
                            .map(|d| d.0)
                            .unwrap_or(min_remaining_default),
                        provider,
                        values: Arc::new(values),
                        revocation_field: crate::store::RevocationTarget::target_field(&t.id),
                        cache_scope: cache_scope(
                            t,
                            &config.server.public_url,
                            &issuer.keys().active.kid,
                        ),
                    }),
                );
            }
        }

        let (Some(policy), Some(issuer), true) = (policy, issuer, errs.is_empty()) else {
            if errs.is_empty() {
                errs.push(&file, "config", "could not be compiled");
            }
            return Err(errs);
        };

        let admin_token = match &config.admin.token_file {
            None => None,
            Some(path) => {
                let resolved = config.source.resolve(path);
                match std::fs::read_to_string(&resolved) {
                    Ok(t) if t.trim().len() >= 16 => {
                        Some(ferry_provider_api::Secret::new(t.trim()))
                    }
                    Ok(_) => {
                        errs.push(
                            &file,
                            "admin.token_file",
                            "the token must be at least 16 characters",
                        );
                        None
                    }
                    Err(e) => {
                        errs.push(
                            &file,
                            "admin.token_file",
                            format!("cannot read `{}`: {e}", resolved.display()),
                        );
                        None
                    }
                }
            }
        };
        let mut introspection_clients = HashMap::new();
        for client in &config.introspection.clients {
            let entry = format!("introspection.clients[{}]", client.name);
            if client.name.is_empty() || client.name.contains(':') || client.name.len() > 64 {
                errs.push(
                    &file,
                    format!("{entry}.name"),
                    "must be 1–64 characters without `:` (an HTTP Basic user id)",
                );
            }
            let resolved = config.source.resolve(&client.secret_file);
            match std::fs::read_to_string(&resolved) {
                Ok(t) if t.trim().len() >= 16 => {
                    if introspection_clients
                        .insert(
                            client.name.clone(),
                            ferry_provider_api::Secret::new(t.trim()),
                        )
                        .is_some()
                    {
                        errs.push(&file, format!("{entry}.name"), "is listed twice");
                    }
                }
                Ok(_) => errs.push(
                    &file,
                    format!("{entry}.secret_file"),
                    "the secret must be at least 16 characters",
                ),
                Err(e) => errs.push(
                    &file,
                    format!("{entry}.secret_file"),
                    format!("cannot read `{}`: {e}", resolved.display()),
                ),
            }
        }
        // What `ferry serve` opens at start, `ferry check` checks: the same error, naming
        // the path, from both.
        if let Some(audit) = &config.audit.file
            && let Err(problem) = crate::audit::check_writable(&config.source.resolve(audit))
        {
            errs.push(&file, "audit.file", problem);
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let single_use_issuers = config
            .issuers
            .iter()
            .filter(|i| i.single_use)
            .map(|i| i.id.clone())
            .collect();
        let leeways = config
            .issuers
            .iter()
            .map(|i| (i.id.clone(), i.leeway.as_secs_i64()))
            .collect();
        let required_issuers = config
            .issuers
            .iter()
            .filter(|i| i.required)
            .map(|i| i.id.clone())
            .collect();
        let revision = crate::fingerprint(&revision_input);
        let verifier = Verifier::new(trusted, options.clock.clone());
        Ok((
            Self {
                revision,
                config,
                verifier,
                mapper: Mapper::new(mappings),
                policy,
                targets,
                resources,
                issuer,
                admin_token,
                introspection_clients,
                required_issuers,
                single_use_issuers,
                leeways,
                watched,
                refreshers: Vec::new(),
            },
            warnings,
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
) -> crate::slots::Digest {
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
    put("kind", Some(toml::Value::String(t.kind.clone())));
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

/// How long a cached credential must still live to be served: half its lifetime, but at
/// least the SDKs' refresh threshold (`floor`), and never more than `ttl - slack`.
fn cache_floor(ttl: Duration, floor: Duration, slack: Duration) -> Duration {
    (ttl / 2).max(floor).min(ttl.saturating_sub(slack))
}
