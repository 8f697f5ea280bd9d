//! `ferry exchange`: the client side of the token exchange. A CI job, a pod or an AWS
//! SDK (as its `credential_process`) hands Ferry the token it already holds and gets the
//! target's credentials back as JSON, as shell `export` lines, or in the AWS
//! `credential_process` format.
//!
//! The subject token and the credentials are written nowhere but the request and
//! standard output: errors name the failing step and Ferry's `error_description`, never
//! a token or a secret.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use ferry::client::{self, Client, Subject, Transport, source};
use serde_json::{Map, Value};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ferry's base URL (https; plain http only to a loopback address).
    #[arg(long, env = "FERRY_URL")]
    url: String,
    /// The target id (sent as `audience`).
    #[arg(long, env = "FERRY_TARGET", required_unless_present = "resource")]
    target: Option<String>,
    /// A target's resource URI instead of its id (sent as `resource`).
    #[arg(long, conflicts_with = "target")]
    resource: Option<String>,
    /// The file holding the subject token (`-`: standard input), e.g. a Kubernetes
    /// projected service-account token.
    #[arg(
        long,
        env = "FERRY_TOKEN_FILE",
        required_unless_present_any = ["token_env", "token_source"],
        conflicts_with_all = ["token_env", "token_source"]
    )]
    token_file: Option<PathBuf>,
    /// The environment variable holding the subject token (GitLab CI `id_tokens`,
    /// Buildkite's OIDC token, …).
    #[arg(long, value_name = "NAME", conflicts_with = "token_source")]
    token_env: Option<String>,
    /// Ask the CI system for the job's OIDC token instead of reading one.
    #[arg(long, value_enum)]
    token_source: Option<source::TokenSource>,
    /// The `aud` to ask the CI system's token for (`--token-source`; default: the CI
    /// system's own default).
    #[arg(long, requires = "token_source")]
    audience: Option<String>,
    /// The subject token's type.
    #[arg(long, value_enum, default_value_t = TokenType::Jwt)]
    token_type: TokenType,
    /// A scope to ask for (repeat it, or give several separated by spaces).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// What to print.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// PEM file of extra CA certificates to trust for Ferry's TLS certificate.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// PEM client certificate (and chain) to present over mutual TLS; with --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// PEM private key (P-256, P-384, RSA or Ed25519) to sign a fresh DPoP proof with
    /// for each attempt (RFC 9449): what Ferry mints is then bound to this key.
    #[arg(long)]
    dpop_key: Option<PathBuf>,
    /// Time allowed for each attempt.
    #[arg(long, default_value = "10s")]
    timeout: humantime::Duration,
    /// Further attempts after `temporarily_unavailable` (503), `slow_down` (429) or a
    /// connection failure; refusals are never retried.
    #[arg(long, default_value_t = 2)]
    retries: u32,
}

/// RFC 8693 `subject_token_type`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TokenType {
    /// `urn:ietf:params:oauth:token-type:jwt`
    Jwt,
    /// `urn:ietf:params:oauth:token-type:id_token`
    IdToken,
    /// `urn:ietf:params:oauth:token-type:access_token`
    AccessToken,
}

impl TokenType {
    fn urn(self) -> &'static str {
        match self {
            Self::Jwt => "urn:ietf:params:oauth:token-type:jwt",
            Self::IdToken => "urn:ietf:params:oauth:token-type:id_token",
            Self::AccessToken => "urn:ietf:params:oauth:token-type:access_token",
        }
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// Ferry's token response, as one JSON object.
    Json,
    /// `export NAME='value'` lines for a POSIX shell (`eval "$(ferry exchange …)"`).
    Env,
    /// The JSON an AWS SDK or CLI reads from a `credential_process` (AWS targets only).
    CredentialProcess,
    /// The executable response google-auth's `executable` credential source reads
    /// (pluggable auth; `jwt` targets only): Ferry's JWT as the subject token of a GCP
    /// workload identity federation.
    GoogleExecutable,
}

/// Exchanges the token and prints the credentials.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let endpoint = client::token_endpoint(&args.url, "--url")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let subject = match (&args.token_file, &args.token_env, args.token_source) {
        (Some(path), _, _) => Subject::File(path.clone()),
        (None, Some(name), _) => Subject::Env(name.clone()),
        (None, None, Some(source)) => Subject::Ci {
            source,
            audience: args.audience.clone(),
        },
        (None, None, None) => bail!("give --token-file, --token-env or --token-source"),
    };
    let token = rt.block_on(subject.token(args.timeout.into()))?;
    let transport = Transport {
        ca_file: args.ca_file.as_deref(),
        identity: args.cert.as_deref().zip(args.key.as_deref()),
        dpop_key: args.dpop_key.as_deref(),
        timeout: args.timeout.into(),
    };
    let client = Client::new(endpoint, &transport)?;
    let request = client::Request {
        token_type: args.token_type.urn(),
        audience: args.target.as_deref(),
        resource: args.resource.as_deref(),
        scopes: &args.scopes,
    };
    let response = rt.block_on(
        client.exchange(&token, &request, args.retries, |err, wait| {
            eprintln!("ferry exchange: {err:#}; trying again in {wait:?}");
        }),
    )?;
    let now = SystemTime::now();
    let text = render(&response, args.format, now)?;
    // Not `print!`, which panics when standard output is closed.
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the credentials to standard output")?;
    Ok(ExitCode::SUCCESS)
}

/// The response in the chosen format, ending with a newline.
fn render(
    response: &Map<String, Value>,
    format: Format,
    now: SystemTime,
) -> anyhow::Result<String> {
    match format {
        Format::Json => Ok(format!("{}\n", Value::Object(response.clone()))),
        Format::Env => Ok(env_lines(response, now)),
        Format::CredentialProcess => credential_process(response),
        Format::GoogleExecutable => google_executable(response, now),
    }
}

fn credentials(response: &Map<String, Value>) -> Option<&Map<String, Value>> {
    response.get("credentials").and_then(Value::as_object)
}

fn string_field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

/// AWS credentials, when the response carries them.
fn aws(response: &Map<String, Value>) -> Option<[&str; 4]> {
    let c = credentials(response)?;
    Some([
        string_field(c, "access_key_id")?,
        string_field(c, "secret_access_key")?,
        string_field(c, "session_token")?,
        string_field(c, "expiration")?,
    ])
}

/// `export` lines: `FERRY_ACCESS_TOKEN` and `FERRY_EXPIRES_AT` always; for AWS, the
/// variables every AWS SDK and the CLI read; for GCP, the ones gcloud
/// (`CLOUDSDK_AUTH_ACCESS_TOKEN`) and Terraform's google provider
/// (`GOOGLE_OAUTH_ACCESS_TOKEN`) read.
fn env_lines(response: &Map<String, Value>, now: SystemTime) -> String {
    let mut vars: Vec<(&str, String)> = Vec::new();
    if let Some(token) = string_field(response, "access_token") {
        vars.push(("FERRY_ACCESS_TOKEN", token.to_owned()));
    }
    if let Some(secs) = response.get("expires_in").and_then(Value::as_u64) {
        let at = now + Duration::from_secs(secs);
        vars.push((
            "FERRY_EXPIRES_AT",
            humantime::format_rfc3339_seconds(at).to_string(),
        ));
    }
    if let Some([key, secret, session, expiration]) = aws(response) {
        vars.push(("AWS_ACCESS_KEY_ID", key.to_owned()));
        vars.push(("AWS_SECRET_ACCESS_KEY", secret.to_owned()));
        vars.push(("AWS_SESSION_TOKEN", session.to_owned()));
        vars.push(("AWS_CREDENTIAL_EXPIRATION", expiration.to_owned()));
    } else if let Some(c) = credentials(response).filter(|c| c.contains_key("expire_time"))
        && let Some(token) = string_field(c, "access_token")
    {
        vars.push(("CLOUDSDK_AUTH_ACCESS_TOKEN", token.to_owned()));
        vars.push(("GOOGLE_OAUTH_ACCESS_TOKEN", token.to_owned()));
    }
    vars.iter()
        .map(|(name, value)| format!("export {name}={}\n", shell_quote(value)))
        .collect()
}

/// A POSIX shell single-quoted word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// <https://docs.aws.amazon.com/cli/latest/userguide/cli-configure-sourcing-external.html>
fn credential_process(response: &Map<String, Value>) -> anyhow::Result<String> {
    let Some([key, secret, session, expiration]) = aws(response) else {
        bail!(
            "--format credential-process needs an AWS target; this target's credentials have no access_key_id, secret_access_key, session_token and expiration (use --format json or env)"
        );
    };
    let out = serde_json::json!({
        "Version": 1,
        "AccessKeyId": key,
        "SecretAccessKey": secret,
        "SessionToken": session,
        "Expiration": expiration,
    });
    Ok(format!("{out}\n"))
}

/// <https://google.aip.dev/auth/4117#determining-the-subject-token-in-executable-sourced-credentials>:
/// `{"version":1,"success":true,"token_type":…,"id_token":…,"expiration_time":…}`.
fn google_executable(response: &Map<String, Value>, now: SystemTime) -> anyhow::Result<String> {
    const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    let token = string_field(response, "access_token");
    let jwt = string_field(response, "issued_token_type") == Some(JWT);
    let (Some(token), true) = (token, jwt) else {
        bail!(
            "--format google-executable needs a jwt target (Ferry's JWT is the subject token google-auth exchanges with Google's STS); this target issued no JWT"
        );
    };
    let expires_in = response
        .get("expires_in")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let at = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + expires_in;
    let out = serde_json::json!({
        "version": 1,
        "success": true,
        "token_type": JWT,
        "id_token": token,
        "expiration_time": at,
    });
    Ok(format!("{out}\n"))
}

#[cfg(test)]
mod tests;
