//! Typed configuration: data only (no clients), parsed from TOML and validated with
//! errors that name the file, the entry and the problem.

pub mod anomalies;
mod choice;
mod duration;
pub mod key_file;
pub mod preset;
mod problem;
pub mod signing;
mod target;
mod toml_text;
mod transport;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use choice::{Binding, ClientAddress, ClientAuth, OnCacheError, StoreBackend, TargetKind};

pub use duration::ConfigDuration;
pub use problem::{ConfigErrors, Problem};
pub use target::{TargetConfig, TargetSpec};
pub use transport::{DpopConfig, TlsConfig};

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[store]`.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[signing]`: Ferry's own keys.
    #[serde(default)]
    pub signing: signing::SigningConfig,
    /// `[jwks]`: how issuer keys are cached.
    #[serde(default)]
    pub jwks: JwksConfig,
    /// `[[issuers]]`.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// `[[targets]]`.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// `[policy]`.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[audit]`.
    #[serde(default)]
    pub audit: AuditConfig,
    /// `[admin]`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[introspection]`.
    #[serde(default)]
    pub introspection: IntrospectionConfig,
    /// `[reload]`.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// `[rate_limits]`.
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// `[dpop]`.
    #[serde(default)]
    pub dpop: DpopConfig,
    /// `[telemetry]`.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// `[anomalies]`: the misuse detector.
    #[serde(default)]
    pub anomalies: anomalies::AnomaliesConfig,
    /// Where it was read from (not in the file).
    #[serde(skip)]
    pub source: ConfigSource,
}

/// The file a config came from, for resolving relative paths and naming problems.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The path as given.
    pub path: PathBuf,
    /// The raw bytes (for the revision hash).
    pub bytes: Vec<u8>,
}

impl ConfigSource {
    /// The path for messages.
    pub fn display(&self) -> String {
        self.path.display().to_string()
    }

    /// Resolves a path from the config relative to the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new(""));
        ferry_provider_api::settings::resolve_in(dir, p)
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    /// Socket address to listen on.
    pub listen: String,
    /// Ferry's public URL: the `iss` of everything it signs.
    pub public_url: String,
    /// Largest accepted request body, bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Whole-request timeout, from the request head to the response (the body read
    /// included): a half-sent body is answered 503 in time.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: ConfigDuration,
    /// Longest wait for a complete request head (slow clients are disconnected).
    #[serde(default = "d_10s")]
    pub header_read_timeout: ConfigDuration,
    /// Longest a connection may stay open with no request in progress.
    #[serde(default = "d_60s")]
    pub idle_timeout: ConfigDuration,
    /// Most client connections open at once (clamped under the open-file limit); at the
    /// cap the longest-idle connection is closed, or the new one answered 503.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// `[server.tls]`: TLS (and mutual TLS) on the listener itself.
    pub tls: Option<TlsConfig>,
    /// CIDRs of the proxies that may say who the client is.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Where the client's address comes from.
    #[serde(default = "default_client_address")]
    pub client_address: ClientAddress,
}

fn default_client_address() -> ClientAddress {
    ClientAddress::Peer
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_body() -> usize {
    64 * 1024
}
fn default_request_timeout() -> ConfigDuration {
    ConfigDuration::secs(30)
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
pub struct StoreConfig {
    /// `memory` (the embedded default) or `redis`.
    #[serde(default = "default_backend")]
    pub backend: StoreBackend,
    /// Most cached credentials kept in memory.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Standalone Redis: `redis://host:6379/0` (or `rediss://`).
    pub url: Option<String>,
    /// Redis Cluster seed nodes.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// Redis Sentinels (`redis://s1:26379`, …) watching `sentinel_master`: Ferry asks them
    /// for the primary, and again after a failover.
    #[serde(default)]
    pub sentinel: Vec<String>,
    /// The master name the Sentinels monitor.
    pub sentinel_master: Option<String>,
    /// Replicas that must hold a revocation or single-use record before it is
    /// acknowledged (`WAIT`); absent: 1 with Sentinel or when the primary has replicas,
    /// else 0.
    pub replica_acks: Option<u32>,
    /// How long to wait for those replicas before the operation fails.
    #[serde(default = "d_250ms")]
    pub replica_ack_timeout: ConfigDuration,
    /// 32-byte AES-256-GCM key for cached credentials (required for `redis`).
    pub encryption_key_file: Option<PathBuf>,
    /// Older keys, still accepted for reading during a key rotation.
    #[serde(default)]
    pub previous_encryption_key_files: Vec<PathBuf>,
    /// Timeout of every Redis call.
    #[serde(default = "d_500ms")]
    pub timeout: ConfigDuration,
    /// How long a replica may hold the mint lock of a cache miss.
    #[serde(default = "d_30s")]
    pub lock_ttl: ConfigDuration,
    /// How long other replicas wait for that mint before answering 503.
    #[serde(default = "d_10s")]
    pub lock_wait: ConfigDuration,
    /// How long an upstream denial is remembered.
    #[serde(default = "d_30s")]
    pub negative_ttl: ConfigDuration,
    /// On a cache read/write error: `unavailable` (503) or `bypass` (mint without the
    /// cache). The revocation check is never bypassed.
    #[serde(default = "default_on_cache_error")]
    pub on_cache_error: OnCacheError,
    /// Standalone Redis: how old this replica's local copy of the revocation list may be
    /// and still be used, with a near cache of up to `max_entries` credentials in front of
    /// Redis. `0s`: no copy, every exchange asks Redis (one round trip).
    #[serde(default = "d_250ms")]
    pub revocation_max_lag: ConfigDuration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            max_entries: default_max_entries(),
            url: None,
            cluster: Vec::new(),
            sentinel: Vec::new(),
            sentinel_master: None,
            replica_acks: None,
            replica_ack_timeout: d_250ms(),
            encryption_key_file: None,
            previous_encryption_key_files: Vec::new(),
            timeout: d_500ms(),
            lock_ttl: d_30s(),
            lock_wait: d_10s(),
            negative_ttl: d_30s(),
            on_cache_error: default_on_cache_error(),
            revocation_max_lag: d_250ms(),
        }
    }
}

impl StoreConfig {
    /// Whether `other` opens the same store: the settings read when the store is opened
    /// (at start-up), as opposed to those each exchange reads from the live config.
    pub fn opens_the_same_store(&self, other: &Self) -> bool {
        self.backend == other.backend
            && self.max_entries == other.max_entries
            && self.url == other.url
            && self.cluster == other.cluster
            && self.sentinel == other.sentinel
            && self.sentinel_master == other.sentinel_master
            && self.replica_acks == other.replica_acks
            && self.replica_ack_timeout == other.replica_ack_timeout
            && self.encryption_key_file == other.encryption_key_file
            && self.previous_encryption_key_files == other.previous_encryption_key_files
            && self.timeout == other.timeout
            && self.revocation_max_lag == other.revocation_max_lag
    }
}

fn default_on_cache_error() -> OnCacheError {
    OnCacheError::Unavailable
}
fn d_250ms() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_millis(250))
}
fn d_500ms() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_millis(500))
}
fn d_10s() -> ConfigDuration {
    ConfigDuration::secs(10)
}

/// `[telemetry]`: logs and traces.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TelemetryConfig {
    /// Log filter when `RUST_LOG` is unset (`info`, `ferry=debug,warn`, …).
    pub log_level: Option<String>,
    /// Export traces over OTLP/HTTP to this collector (`http://collector:4318`); needs a
    /// build with `--features otlp`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of exported traces.
    pub service_name: Option<String>,
}

/// `[rate_limits]`: fixed windows, counted in the store (so across replicas with Redis).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RateLimitsConfig {
    /// Per canonical subject.
    pub per_subject: Option<RateLimit>,
    /// Per client address.
    pub per_client: Option<RateLimit>,
}

/// One limit: at most `requests` per `window`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: u64,
    pub window: ConfigDuration,
}

fn default_backend() -> StoreBackend {
    StoreBackend::Memory
}
fn default_max_entries() -> u64 {
    100_000
}

/// `[jwks]`.
#[derive(Debug, Clone, Deserialize)]
pub struct JwksConfig {
    /// Refresh interval when the issuer sends no Cache-Control.
    #[serde(default = "d_1h")]
    pub refresh_default: ConfigDuration,
    /// Lower bound on the refresh interval.
    #[serde(default = "d_5m")]
    pub refresh_min: ConfigDuration,
    /// Upper bound on the refresh interval.
    #[serde(default = "d_24h")]
    pub refresh_max: ConfigDuration,
    /// At most one unknown-`kid` refresh per issuer per this interval.
    #[serde(default = "d_30s")]
    pub unknown_kid_min_interval: ConfigDuration,
    /// How long keys keep serving while refreshes fail.
    #[serde(default = "d_24h")]
    pub max_stale: ConfigDuration,
    /// Wait before retrying a failed scheduled refresh.
    #[serde(default = "d_30s")]
    pub retry_interval: ConfigDuration,
    /// Timeout of one discovery or JWKS fetch.
    #[serde(default = "d_5s")]
    pub fetch_timeout: ConfigDuration,
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            refresh_default: d_1h(),
            refresh_min: d_5m(),
            refresh_max: d_24h(),
            unknown_kid_min_interval: d_30s(),
            max_stale: d_24h(),
            retry_interval: d_30s(),
            fetch_timeout: d_5s(),
        }
    }
}

fn d_5s() -> ConfigDuration {
    ConfigDuration::secs(5)
}
fn d_30s() -> ConfigDuration {
    ConfigDuration::secs(30)
}
fn d_60s() -> ConfigDuration {
    ConfigDuration::secs(60)
}
fn d_5m() -> ConfigDuration {
    ConfigDuration::secs(300)
}
fn d_1h() -> ConfigDuration {
    ConfigDuration::secs(3600)
}
fn d_24h() -> ConfigDuration {
    ConfigDuration::secs(86_400)
}

/// `[[issuers]]`: one trusted token issuer.
#[derive(Debug, Clone, Deserialize)]
pub struct IssuerConfig {
    /// Short id used in policies, logs and errors.
    pub id: String,
    /// A well-known issuer's defaults (`github-actions`, `kubernetes`, …; `preset.rs`):
    /// its URL, algorithms, mapping and the claims it sends. Keys set here win.
    pub preset: Option<String>,
    /// The exact `iss` (a preset with one URL supplies it).
    #[serde(default)]
    pub issuer: String,
    /// JWKS URL (skips discovery).
    pub jwks_uri: Option<String>,
    /// Static JWKS file (air-gapped), relative to the config file.
    pub jwks_file: Option<PathBuf>,
    /// Accepted `aud` values (any of).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allowed algorithms (default: the preset's, else RS256).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp`/`nbf`/`iat`.
    #[serde(default = "d_60s")]
    pub leeway: ConfigDuration,
    /// Reject tokens whose `iat` is older than this.
    pub max_age: Option<ConfigDuration>,
    /// The longest lifetime (`exp − iat`, or `exp −` now without `iat`) a token of this
    /// issuer may have; longer-lived tokens are refused. It bounds how long a subject
    /// token stays acceptable, and so how long a revocation must live.
    #[serde(default = "d_24h")]
    pub max_token_lifetime: ConfigDuration,
    /// CEL over `assertion`; false means the token is not acceptable.
    pub condition: Option<String>,
    /// How claims become an identity (a preset supplies a default, attribute by
    /// attribute).
    #[serde(default)]
    pub mapping: MappingConfig,
    /// `/readyz` is false while this issuer has never had keys.
    #[serde(default = "default_true")]
    pub required: bool,
    /// Each token may be exchanged once (its `jti` is remembered until its `exp`).
    #[serde(default)]
    pub single_use: bool,
}

/// `[issuers.mapping]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct MappingConfig {
    /// CEL giving the canonical subject.
    #[serde(default)]
    pub subject: String,
    /// CEL giving a list of group names.
    pub groups: Option<String>,
    /// Attribute name → CEL.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// `[audit]`: the tamper-evident decision log.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditConfig {
    /// Append hash-chained JSON lines here (rotation-safe).
    pub file: Option<PathBuf>,
    /// Also write them to stdout.
    #[serde(default)]
    pub stdout: bool,
    /// This replica's id in every line (default: `$HOSTNAME`, else `ferry`).
    pub replica_id: Option<String>,
    /// Lines between two signed checkpoints (also written at rotation and shutdown).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Also record each decision's mapped identity (subject, groups, attributes) and
    /// request (target, scopes, source address), so `ferry impact` can replay it.
    #[serde(default)]
    pub record_identity: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            file: None,
            stdout: false,
            replica_id: None,
            checkpoint_every: default_checkpoint_every(),
            record_identity: false,
        }
    }
}

fn default_checkpoint_every() -> u64 {
    crate::audit::DEFAULT_CHECKPOINT_EVERY
}

/// `[admin]`: the operator API under `/admin`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AdminConfig {
    /// A file holding the bearer token for `/admin` (absent: the admin API is off).
    pub token_file: Option<PathBuf>,
}

/// `[introspection]`: the resource servers that may introspect Ferry's tokens (RFC 7662),
/// each with its own secret — not the admin token, which can also reload and revoke.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IntrospectionConfig {
    /// `[[introspection.clients]]` (none: introspection is off).
    #[serde(default)]
    pub clients: Vec<IntrospectionClient>,
}

/// One introspection client: HTTP Basic `name:secret` (RFC 7662 §2.1, RFC 6749 §2.3.1).
#[derive(Debug, Clone, Deserialize)]
pub struct IntrospectionClient {
    /// The client id.
    pub name: String,
    /// A file holding its secret (at least 16 characters).
    pub secret_file: PathBuf,
}

/// `[reload]`: live configuration reload.
#[derive(Debug, Clone, Deserialize)]
pub struct ReloadConfig {
    /// Watch the config, policy and JWKS files and reload when they change.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// How often the watch looks.
    #[serde(default = "d_2s")]
    pub interval: ConfigDuration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            interval: d_2s(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn d_2s() -> ConfigDuration {
    ConfigDuration::secs(2)
}

/// `[policy]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicyConfig {
    /// Cedar files (globs allowed), relative to the config file.
    #[serde(default)]
    pub files: Vec<String>,
    /// Shadow policies: validated like `files` and evaluated beside them on every
    /// exchange, never changing an answer; a disagreement is counted and audited.
    #[serde(default)]
    pub shadow_files: Vec<String>,
}

impl Config {
    /// Reads and validates `path`: every problem at once.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| {
            let mut errs = ConfigErrors::default();
            errs.push(&file, "file", format!("cannot read: {e}"));
            errs
        })?;
        Self::parse(path, bytes)
    }

    /// Parses and validates config text that came from `path`.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self, ConfigErrors> {
        let file = path.display().to_string();
        let mut errs = ConfigErrors::default();
        let text = match String::from_utf8(bytes.clone()) {
            Ok(t) => t,
            Err(_) => {
                errs.push(&file, "file", "is not UTF-8");
                return Err(errs);
            }
        };
        let Some(mut config) = parse_toml::<Config>(&file, &text, &mut errs) else {
            return Err(errs);
        };
        config.source = ConfigSource {
            path: path.to_path_buf(),
            bytes,
        };
        for issuer in &mut config.issuers {
            issuer.apply_preset();
        }
        let base_dir = path.parent().unwrap_or(Path::new(""));
        for target in &mut config.targets {
            target.parse_kind(base_dir);
        }
        validate::validate(&config, &mut errs);
        errs.into_result(config)
    }

    /// The longest lifetime any target issues (how long retired keys stay published).
    pub fn max_token_lifetime(&self) -> std::time::Duration {
        self.targets
            .iter()
            .filter_map(|t| t.ttl.map(|d| d.0))
            .max()
            .unwrap_or(std::time::Duration::from_secs(3600))
    }
}

pub use toml_text::parse_toml;
pub use validate::is_scope_token;

#[cfg(test)]
mod tests;
