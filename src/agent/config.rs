//! `agent.toml`: where Ferry is, whose token the agent holds, and which cloud endpoints
//! it serves from which Ferry targets. Validated like Ferry's config: every problem at
//! once, as `file: entry: problem`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::client::{self, Subject, source::TokenSource};
use crate::config::{ConfigDuration, ConfigErrors, parse_toml};

/// The GCP scope a token has when the config names none.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Paths the agent serves itself; a configured path may not take one.
const RESERVED: &[&str] = &["/computeMetadata", "/metadata", "/healthz", "/metrics"];

#[derive(Debug, Deserialize)]
struct Raw {
    ferry_url: Option<String>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    allow_remote: bool,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    token_source: Option<TokenSource>,
    audience: Option<String>,
    secret_file: Option<PathBuf>,
    timeout: Option<ConfigDuration>,
    aws: Option<RawAws>,
    gcp: Option<RawGcp>,
    azure: Option<RawAzure>,
}

fn default_listen() -> String {
    "127.0.0.1:8990".into()
}

#[derive(Debug, Deserialize)]
struct RawAws {
    target: Option<String>,
    path: Option<String>,
    #[serde(default)]
    paths: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct RawGcp {
    target: Option<String>,
    email: Option<String>,
    project_id: Option<String>,
    project_number: Option<u64>,
    scopes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct RawAzure {
    #[serde(default)]
    resources: BTreeMap<String, String>,
    client_id: Option<String>,
    path: Option<String>,
}

/// A validated agent config.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Ferry's token endpoint.
    pub endpoint: url::Url,
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS to Ferry.
    pub identity: Option<(PathBuf, PathBuf)>,
    pub listen: SocketAddr,
    pub subject: Subject,
    /// The local secret the AWS and App Service endpoints require.
    pub secret_file: Option<PathBuf>,
    /// Time allowed for each exchange with Ferry.
    pub timeout: Duration,
    /// AWS container-credentials paths, each to a Ferry target.
    pub aws: BTreeMap<String, String>,
    pub gcp: Option<Gcp>,
    pub azure: Option<Azure>,
}

/// `[gcp]`: the metadata server.
#[derive(Debug, Clone)]
pub struct Gcp {
    pub target: String,
    pub email: String,
    pub project_id: String,
    pub project_number: Option<u64>,
    pub scopes: Vec<String>,
}

/// `[azure]`: the managed-identity endpoints.
#[derive(Debug, Clone)]
pub struct Azure {
    /// Resource URI (normalised: no trailing `/`) → target.
    pub resources: BTreeMap<String, String>,
    pub client_id: Option<String>,
    /// The App Service endpoint's path (`IDENTITY_ENDPOINT`).
    pub path: String,
}

/// A resource URI as the SDKs send it and as the config names it compare equal: no
/// `/.default` suffix, no trailing `/`.
pub fn normalise_resource(resource: &str) -> String {
    let r = resource.trim();
    let r = r.strip_suffix("/.default").unwrap_or(r);
    r.trim_end_matches('/').to_owned()
}

impl AgentConfig {
    /// The client of Ferry this config describes (its CA and client certificate files
    /// loaded).
    pub fn client(&self) -> anyhow::Result<client::Client> {
        let transport = client::Transport {
            ca_file: self.ca_file.as_deref(),
            identity: self
                .identity
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
            dpop_key: None,
            timeout: self.timeout,
        };
        client::Client::new(self.endpoint.clone(), &transport)
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let file = path.display().to_string();
        let mut errs = ConfigErrors::default();
        let text = match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    errs.push(&file, "file", "is not UTF-8");
                    return Err(errs);
                }
            },
            Err(e) => {
                errs.push(&file, "file", format!("cannot read: {e}"));
                return Err(errs);
            }
        };
        let base = path.parent().unwrap_or(Path::new(""));
        Self::parse(&file, &text, base)
    }

    /// Validates config text from `file`; relative paths are resolved against `base`.
    pub fn parse(file: &str, text: &str, base: &Path) -> Result<Self, ConfigErrors> {
        let mut errs = ConfigErrors::default();
        let Some(raw) = parse_toml::<Raw>(file, text, &mut errs) else {
            return Err(errs);
        };
        let mut push = |entry: &str, problem: String| errs.push(file, entry, problem);
        let resolve = |p: &Option<PathBuf>| p.as_ref().map(|p| base.join(p));

        let endpoint = match &raw.ferry_url {
            None => {
                push("ferry_url", "is required (Ferry's base URL)".into());
                None
            }
            Some(u) => client::token_endpoint(u, "the URL")
                .map_err(|e| push("ferry_url", format!("{e:#}")))
                .ok(),
        };
        let identity = match (resolve(&raw.client_cert), resolve(&raw.client_key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                push("client_key", "is required with client_cert".into());
                None
            }
            (None, Some(_)) => {
                push("client_cert", "is required with client_key".into());
                None
            }
        };
        let listen = match raw.listen.parse::<SocketAddr>() {
            Ok(a) if !a.ip().is_loopback() && !raw.allow_remote => {
                push(
                    "listen",
                    format!(
                        "`{a}` is not a loopback address: anyone who reaches it gets the workload's credentials; set allow_remote = true only where the network already confines it (a link-local address in the pod's own network namespace)"
                    ),
                );
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                push("listen", format!("`{}` is not an address:port", raw.listen));
                None
            }
        };
        let subject = match (&raw.token_file, &raw.token_env, raw.token_source) {
            (Some(f), None, None) => Some(Subject::File(base.join(f))),
            (None, Some(n), None) if !n.is_empty() => Some(Subject::Env(n.clone())),
            (None, None, Some(source)) => Some(Subject::Ci {
                source,
                audience: raw.audience.clone(),
            }),
            (None, None, None) => {
                push(
                    "token_file",
                    "the workload's token: give token_file, token_env or token_source".into(),
                );
                None
            }
            (None, Some(_), None) => {
                push("token_env", "is empty".into());
                None
            }
            _ => {
                push(
                    "token_file",
                    "give one of token_file, token_env and token_source".into(),
                );
                None
            }
        };
        if raw.audience.is_some() && raw.token_source.is_none() {
            push(
                "audience",
                "is the audience of a token_source's token; the other token sources read a token as it is".into(),
            );
        }
        let timeout = raw.timeout.map_or(Duration::from_secs(10), |d| d.0);
        if timeout.is_zero() || timeout > Duration::from_secs(120) {
            push("timeout", "must be between 1s and 2m".into());
        }

        let mut paths: Vec<String> = Vec::new();
        let mut check_path = |entry: &str, path: &str, push: &mut dyn FnMut(&str, String)| {
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
                push(entry, format!("`{path}` is not an absolute URL path"));
            } else if RESERVED.iter().any(|r| path.starts_with(r)) {
                push(entry, format!("`{path}` is one of the agent's own paths"));
            } else if paths.iter().any(|p| p == path) {
                push(entry, format!("`{path}` is already served"));
            }
            paths.push(path.to_owned());
        };
        let mut aws = BTreeMap::new();
        if let Some(a) = &raw.aws {
            if let Some(t) = &a.target {
                let path = a.path.clone().unwrap_or_else(|| "/aws/credentials".into());
                check_path("aws.path", &path, &mut push);
                aws.insert(path, t.clone());
            } else if a.path.is_some() {
                push(
                    "aws.path",
                    "is the path of aws.target, which is not set".into(),
                );
            }
            for (path, target) in &a.paths {
                check_path(&format!("aws.paths.\"{path}\""), path, &mut push);
                aws.insert(path.clone(), target.clone());
            }
            if aws.is_empty() {
                push("aws", "names no target (target, or paths)".into());
            }
            for (path, target) in &aws {
                if target.is_empty() {
                    push(&format!("aws[{path}]"), "the target id is empty".into());
                }
            }
        }
        let gcp = raw.gcp.as_ref().and_then(|g| {
            let mut ok = true;
            let mut need = |key: &str, v: &Option<String>| {
                if v.as_deref().is_none_or(str::is_empty) {
                    push(&format!("gcp.{key}"), "is required".into());
                    ok = false;
                }
            };
            need("target", &g.target);
            need("email", &g.email);
            need("project_id", &g.project_id);
            if let Some(e) = &g.email
                && !e.is_empty()
                && !e.contains('@')
            {
                push("gcp.email", format!("`{e}` is not a service account email"));
                ok = false;
            }
            let scopes = g
                .scopes
                .clone()
                .unwrap_or_else(|| vec![CLOUD_PLATFORM.to_owned()]);
            if scopes.is_empty() || scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
                push("gcp.scopes", "must list scopes, one per item".into());
                ok = false;
            }
            ok.then(|| Gcp {
                target: g.target.clone().unwrap_or_default(),
                email: g.email.clone().unwrap_or_default(),
                project_id: g.project_id.clone().unwrap_or_default(),
                project_number: g.project_number,
                scopes,
            })
        });
        let azure = raw.azure.as_ref().map(|a| {
            let path = a.path.clone().unwrap_or_else(|| "/azure/identity".into());
            check_path("azure.path", &path, &mut push);
            let mut resources = BTreeMap::new();
            for (resource, target) in &a.resources {
                let entry = format!("azure.resources.\"{resource}\"");
                if url::Url::parse(resource).is_err() {
                    push(&entry, "is not a resource URI".into());
                } else if target.is_empty() {
                    push(&entry, "the target id is empty".into());
                } else if resources
                    .insert(normalise_resource(resource), target.clone())
                    .is_some()
                {
                    push(&entry, "names a resource already mapped".into());
                }
            }
            if a.resources.is_empty() {
                push(
                    "azure.resources",
                    "maps no resource to a target (\"https://management.azure.com/\" = \"…\")"
                        .into(),
                );
            }
            Azure {
                resources,
                client_id: a.client_id.clone(),
                path,
            }
        });
        if raw.aws.is_none() && raw.gcp.is_none() && raw.azure.is_none() {
            push("file", "serves nothing: add [aws], [gcp] or [azure]".into());
        }
        let secret_file = resolve(&raw.secret_file);
        if secret_file.is_none() && (raw.aws.is_some() || raw.azure.is_some()) {
            push(
                "secret_file",
                "is required with [aws] or [azure]: the AWS and App Service endpoints answer only a caller that sends this file's secret".into(),
            );
        }
        let (Some(endpoint), Some(listen), Some(subject)) = (endpoint, listen, subject) else {
            return Err(errs);
        };
        errs.into_result(Self {
            endpoint,
            ca_file: resolve(&raw.ca_file),
            identity,
            listen,
            subject,
            secret_file,
            timeout,
            aws,
            gcp,
            azure,
        })
    }
}

#[cfg(test)]
mod tests;
