//! `[[targets]]`: what every target has, and its kind's own keys parsed at load into a
//! [`TargetSpec`] — by the kind's provider crate for the clouds, so the core does not
//! know any cloud's fields.

use std::path::Path;
use std::time::Duration;

use ferry_provider_api::settings::{Context, Problems, Spec};
use serde::Deserialize;

use super::{Binding, ConfigDuration, TargetKind};

/// The shortest and longest lifetime of a JWT Ferry signs, and its default.
const MIN_JWT_TTL: Duration = Duration::from_secs(10);
const MAX_JWT_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_JWT_TTL: Duration = Duration::from_secs(600);

/// `[[targets]]`: what a workload can ask for.
#[derive(Debug, Clone, Deserialize)]
pub struct TargetConfig {
    /// Target id (the `audience` parameter of an exchange).
    pub id: String,
    pub kind: TargetKind,
    /// For `jwt`: the `aud` of the minted token.
    pub audience: Option<String>,
    /// A resource URI that also selects this target (`resource` parameter).
    pub resource: Option<String>,
    /// Lifetime of what is issued (`jwt`; for `azure`, how long a token is cached).
    pub ttl: Option<ConfigDuration>,
    /// Scopes a request may ask for.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A cached credential is served only with at least this much lifetime left.
    pub min_remaining: Option<ConfigDuration>,
    /// Whether what it mints is bound to the client's key (default: `optional` for
    /// `jwt`, `none` for the clouds, whose credentials are bearer).
    pub binding: Option<Binding>,
    /// The kind's own keys, as written (read by the kind into `spec`).
    #[serde(flatten)]
    pub extra: toml::Table,
    /// What the kind made of the entry ([`Config::parse`](super::Config::parse) fills it).
    #[serde(skip)]
    pub spec: TargetSpec,
}

/// A target's kind with its parsed settings; a cloud kind's is its provider's target,
/// ready to construct.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// A JWT Ferry signs, for `audience`.
    Jwt {
        audience: String,
        ttl: Duration,
    },
    Aws(Spec<ferry_provider_aws::AwsTarget>),
    Gcp(Spec<ferry_provider_gcp::GcpTarget>),
    Azure(Spec<ferry_provider_azure::AzureTarget>),
    /// Refused: every problem, each named by key; validation reports them and a snapshot
    /// leaves the entry out.
    Invalid(Problems),
}

impl TargetSpec {
    /// The lifetime of what the target issues.
    pub fn ttl(&self) -> Option<Duration> {
        match self {
            Self::Jwt { ttl, .. } => Some(*ttl),
            Self::Aws(s) => Some(s.ttl),
            Self::Gcp(s) => Some(s.ttl),
            Self::Azure(s) => Some(s.ttl),
            Self::Invalid(_) => None,
        }
    }
}

impl Default for TargetSpec {
    fn default() -> Self {
        Self::Invalid(Vec::new())
    }
}

impl TargetConfig {
    /// Reads the kind's keys into `spec`.
    pub(super) fn parse_kind(&mut self, base_dir: &Path) {
        let mut spec = self.kind_spec(base_dir);
        if let Some(problem) = self.binding_problem() {
            match &mut spec {
                Ok(_) => spec = Err(vec![problem]),
                Err(problems) => problems.push(problem),
            }
        }
        self.spec = spec.unwrap_or_else(TargetSpec::Invalid);
    }

    /// The binding in force: as written, or the kind's default.
    pub fn binding(&self) -> Binding {
        match (&self.binding, &self.kind) {
            (Some(b), _) => b.clone(),
            (None, TargetKind::Jwt) => Binding::Optional,
            (None, _) => Binding::None,
        }
    }

    fn binding_problem(&self) -> Option<(String, String)> {
        let binding = self.binding.as_ref()?;
        let problem = match (binding, &self.kind) {
            (Binding::Unknown(other), _) => {
                format!("`{other}` is not one of {}", Binding::CHOICES.join(", "))
            }
            (
                Binding::Dpop | Binding::Mtls | Binding::Optional,
                TargetKind::Aws | TargetKind::Gcp | TargetKind::Azure,
            ) => format!(
                "`{binding}` cannot apply to kind `{}`: its credentials are bearer credentials the cloud issues, with no `cnf` Ferry could set (use `none`, or a `jwt` target)",
                self.kind
            ),
            _ => return None,
        };
        Some(("binding".into(), problem))
    }

    fn kind_spec(&self, base_dir: &Path) -> Result<TargetSpec, Problems> {
        let cx = Context {
            id: &self.id,
            scopes: &self.scopes,
            ttl: self.ttl.map(|d| d.0),
            base_dir,
        };
        match &self.kind {
            TargetKind::Jwt => self.jwt(),
            TargetKind::Aws => {
                ferry_provider_aws::config::parse(&self.extra, cx).map(TargetSpec::Aws)
            }
            TargetKind::Gcp => {
                ferry_provider_gcp::config::parse(&self.extra, cx).map(TargetSpec::Gcp)
            }
            TargetKind::Azure => {
                ferry_provider_azure::config::parse(&self.extra, cx).map(TargetSpec::Azure)
            }
            TargetKind::Unknown(other) => Err(vec![(
                "kind".into(),
                format!("unknown kind `{other}` (expected `jwt`, `aws`, `gcp` or `azure`)"),
            )]),
        }
    }

    fn jwt(&self) -> Result<TargetSpec, Problems> {
        let mut problems: Problems = Vec::new();
        let audience = self.audience.clone().unwrap_or_default();
        match &self.audience {
            None => problems.push(("audience".into(), "is required for kind `jwt`".into())),
            Some(a) if a.is_empty() => {
                problems.push(("audience".into(), "must not be empty".into()))
            }
            Some(_) => {}
        }
        let ttl = self.ttl.map_or(DEFAULT_JWT_TTL, |d| d.0);
        if !(MIN_JWT_TTL..=MAX_JWT_TTL).contains(&ttl) {
            problems.push(("ttl".into(), "must be between 10s and 24h".into()));
        }
        for key in self.extra.keys() {
            problems.push((key.clone(), "unknown key for kind `jwt`".into()));
        }
        if problems.is_empty() {
            Ok(TargetSpec::Jwt { audience, ttl })
        } else {
            Err(problems)
        }
    }
}
