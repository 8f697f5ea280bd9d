//! `ferry exchange`: the client side of the token exchange. A CI job, a pod or an AWS
//! SDK (as its `credential_process`) hands Ferry the token it already holds and gets the
//! target's credentials back as JSON, as shell `export` lines, or in the AWS
//! `credential_process` format.
//!
//! The subject token and the credentials are written nowhere but the request and
//! standard output: errors name the failing step and Ferry's `error_description`, never
//! a token or a secret.

mod proof;
mod source;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Map, Value};
use url::Url;

/// The RFC 8693 grant type.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The longest wait a `Retry-After` can ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

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
}

/// Exchanges the token and prints the credentials.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let endpoint = token_endpoint(&args.url)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = match (&args.token_file, &args.token_env, args.token_source) {
        (Some(path), _, _) => read_token(path)?,
        (None, Some(name), _) => source::from_env(name)?,
        (None, None, Some(s)) => rt.block_on(source::fetch(
            s,
            args.audience.as_deref(),
            args.timeout.into(),
        ))?,
        (None, None, None) => bail!("give --token-file, --token-env or --token-source"),
    };
    let form = form_body(&args, &token);
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(identity(cert, key)?),
        _ => None,
    };
    let client = client(args.ca_file.as_deref(), identity, args.timeout.into())?;
    let dpop = args
        .dpop_key
        .as_deref()
        .map(proof::DpopKey::load)
        .transpose()?;
    let response = rt.block_on(post(&client, &endpoint, form, dpop.as_ref(), args.retries))?;
    let now = SystemTime::now();
    let text = render(&response, args.format, now)?;
    // Not `print!`, which panics when standard output is closed.
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the credentials to standard output")?;
    Ok(ExitCode::SUCCESS)
}

/// `{url}/oauth2/token`, keeping any path prefix (Ferry behind a proxy at `/ferry/`).
fn token_endpoint(base: &str) -> anyhow::Result<Url> {
    // Not echoed: the text may hold a password.
    let mut url = Url::parse(base).map_err(|e| anyhow!("--url is not a URL: {e}"))?;
    // A password in the URL would be sent with every request and shown in every error
    // that names the URL (DESIGN §4: no secrets in logs); Ferry's token endpoint takes
    // none, so such a URL is refused without repeating it.
    if !url.username().is_empty() || url.password().is_some() {
        bail!("--url holds a user name or password; give Ferry's URL without them");
    }
    match url.scheme() {
        "https" => {}
        "http" if ferry::verify::fetch::is_loopback(&url) => {}
        "http" => bail!(
            "--url `{base}`: plain http would send the token in the clear; use https (http is allowed only to a loopback address)"
        ),
        other => bail!("--url `{base}`: scheme `{other}` is not http or https"),
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--url `{base}`: give Ferry's base URL, without a query or fragment");
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.join("oauth2/token")
        .with_context(|| format!("--url `{base}`: cannot append oauth2/token"))
}

/// The token, without surrounding whitespace (token files usually end with a newline).
fn read_token(path: &Path) -> anyhow::Result<String> {
    let limit = ferry::verify::MAX_TOKEN_BYTES;
    let mut raw = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin()
            .take(limit as u64 + 1)
            .read_to_end(&mut raw)
            .context("cannot read the token from standard input")
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(limit as u64 + 1).read_to_end(&mut raw))
            .with_context(|| format!("cannot read the token file {}", path.display()))
    };
    read?;
    let whence = format!("the token file {}", path.display());
    let text = String::from_utf8(raw).map_err(|_| anyhow!("{whence} is not UTF-8 text"))?;
    source::check_token(&text, &whence)
}

fn form_body(args: &Args, token: &str) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", GRANT_TYPE)
        .append_pair("subject_token", token)
        .append_pair("subject_token_type", args.token_type.urn());
    if let Some(t) = &args.target {
        form.append_pair("audience", t);
    }
    if let Some(r) = &args.resource {
        form.append_pair("resource", r);
    }
    let scope = args
        .scopes
        .iter()
        .flat_map(|s| s.split_whitespace())
        .collect::<Vec<_>>()
        .join(" ");
    if !scope.is_empty() {
        form.append_pair("scope", &scope);
    }
    form.finish()
}

/// The client certificate and key, as one reqwest identity.
fn identity(cert: &Path, key: &Path) -> anyhow::Result<reqwest::Identity> {
    let mut pem =
        std::fs::read(cert).with_context(|| format!("cannot read --cert {}", cert.display()))?;
    pem.extend_from_slice(b"\n");
    pem.extend(std::fs::read(key).with_context(|| format!("cannot read --key {}", key.display()))?);
    reqwest::Identity::from_pem(&pem).with_context(|| {
        format!(
            "--cert {} and --key {}: not a PEM certificate and its private key",
            cert.display(),
            key.display()
        )
    })
}

fn client(
    ca_file: Option<&Path>,
    identity: Option<reqwest::Identity>,
    timeout: Duration,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ferry-exchange/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read --ca-file {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-file {}: not PEM certificates", path.display()))?;
        if certs.is_empty() {
            bail!("--ca-file {}: no certificate in it", path.display());
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().context("cannot set up the HTTP client")
}

/// What one attempt came to.
enum Attempt {
    Done(Map<String, Value>),
    /// Worth another attempt, after this long.
    Again(anyhow::Error, Option<Duration>),
    /// Ferry asked for a DPoP proof with this nonce (RFC 9449 §8).
    Nonce(anyhow::Error, String),
}

async fn post(
    client: &reqwest::Client,
    endpoint: &Url,
    form: String,
    dpop: Option<&proof::DpopKey>,
    retries: u32,
) -> anyhow::Result<Map<String, Value>> {
    let mut attempt = 0u32;
    let mut nonce: Option<String> = None;
    let mut followed_nonce = false;
    loop {
        // A proof is good once: each attempt makes its own.
        let proof = dpop
            .map(|key| key.proof(endpoint, super::system_clock().now(), nonce.as_deref()))
            .transpose()?;
        match once(client, endpoint, form.clone(), proof).await? {
            Attempt::Done(body) => return Ok(body),
            // Followed once, at once; a second challenge is a refusal.
            Attempt::Nonce(err, given) => {
                if followed_nonce || dpop.is_none() {
                    return Err(err);
                }
                followed_nonce = true;
                nonce = Some(given);
            }
            Attempt::Again(err, wait) => {
                if attempt >= retries {
                    return Err(err);
                }
                let backoff = Duration::from_millis(500u64 << attempt.min(5));
                let wait = wait.unwrap_or(backoff).min(MAX_RETRY_AFTER);
                eprintln!("ferry exchange: {err:#}; trying again in {wait:?}");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

async fn once(
    client: &reqwest::Client,
    endpoint: &Url,
    form: String,
    proof: Option<String>,
) -> anyhow::Result<Attempt> {
    let mut request = client
        .post(endpoint.clone())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json");
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    let sent = request.body(form).send().await;
    let res = match sent {
        Ok(r) => r,
        // The error names the URL and the cause; the body (the token) is not in it.
        Err(e) => {
            return Ok(Attempt::Again(
                anyhow!("cannot reach Ferry at {endpoint}: {}", reqwest_cause(&e)),
                None,
            ));
        }
    };
    let status = res.status();
    let request_id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let nonce_header = res
        .headers()
        .get("dpop-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = match res.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return Ok(Attempt::Again(
                anyhow!("Ferry's answer was cut off: {}", reqwest_cause(&e)),
                None,
            ));
        }
    };
    let json: Option<Map<String, Value>> = serde_json::from_slice(&body).ok();
    let rid = request_id
        .map(|r| format!(" (request id {r})"))
        .unwrap_or_default();
    if status.is_success() {
        let Some(json) = json.filter(|j| j.get("access_token").is_some_and(Value::is_string))
        else {
            bail!("Ferry answered {status} without a token response{rid}");
        };
        return Ok(Attempt::Done(json));
    }
    let field = |k: &str| {
        json.as_ref()
            .and_then(|j| j.get(k))
            .and_then(Value::as_str)
            .map(one_line)
    };
    let refusal = match (field("error"), field("error_description")) {
        (Some(e), Some(d)) => anyhow!("Ferry refused: {e}: {d}{rid}"),
        (Some(e), None) => anyhow!("Ferry refused: {e}{rid}"),
        _ => anyhow!("Ferry answered {status}{rid}"),
    };
    if field("error").as_deref() == Some("use_dpop_nonce")
        && let Some(n) = nonce_header
    {
        return Ok(Attempt::Nonce(refusal, n));
    }
    let transient = status == reqwest::StatusCode::SERVICE_UNAVAILABLE
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::BAD_GATEWAY
        || status == reqwest::StatusCode::GATEWAY_TIMEOUT;
    if transient {
        Ok(Attempt::Again(refusal, retry_after))
    } else {
        Err(refusal)
    }
}

/// The innermost cause of a client error (connection refused, timed out, …).
fn reqwest_cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    one_line(&cause.to_string())
}

/// Text from the server, on one line and bounded, for an error message.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect()
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

#[cfg(test)]
mod tests;
