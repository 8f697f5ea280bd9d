//! The client side of the token exchange, shared by `ferry exchange` (one exchange, the
//! credentials printed) and `ferry agent` (exchanges kept fresh for the cloud SDKs): the
//! workload's token from a file, a variable or the CI system; one RFC 8693 request with
//! optional mutual TLS and DPoP; retries of what is worth retrying.
//!
//! The subject token and the credentials go nowhere but the request and the caller:
//! errors name the failing step and Ferry's `error_description`, never a token or a
//! secret.

pub mod proof;
pub mod source;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Map, Value};
use url::Url;

use crate::clock::{Clock as _, SystemClock};

/// The RFC 8693 grant type.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The longest wait a `Retry-After` can ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// What the client calls itself.
pub const USER_AGENT: &str = concat!("ferry-client/", env!("CARGO_PKG_VERSION"));

/// `{base}/oauth2/token`, keeping any path prefix (Ferry behind a proxy at `/ferry/`).
/// `what` names the setting in errors (`--url`, `ferry_url`).
pub fn token_endpoint(base: &str, what: &str) -> anyhow::Result<Url> {
    // Not echoed: the text may hold a password.
    let mut url = Url::parse(base).map_err(|e| anyhow!("{what} is not a URL: {e}"))?;
    // A password in the URL would be sent with every request and shown in every error
    // that names the URL (no secrets in logs); Ferry's token endpoint takes none, so
    // such a URL is refused without repeating it.
    if !url.username().is_empty() || url.password().is_some() {
        bail!("{what} holds a user name or password; give Ferry's URL without them");
    }
    match url.scheme() {
        "https" => {}
        "http" if crate::verify::fetch::is_loopback(&url) => {}
        "http" => bail!(
            "{what} `{base}`: plain http would send the token in the clear; use https (http is allowed only to a loopback address)"
        ),
        other => bail!("{what} `{base}`: scheme `{other}` is not http or https"),
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("{what} `{base}`: give Ferry's base URL, without a query or fragment");
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.join("oauth2/token")
        .with_context(|| format!("{what} `{base}`: cannot append oauth2/token"))
}

/// The token in a file (`-`: standard input), without surrounding whitespace (token
/// files usually end with a newline), at most Ferry's limit.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let limit = crate::verify::MAX_TOKEN_BYTES;
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

/// Where the workload's own token comes from, read again for every exchange (kubelet
/// rotates projected tokens; CI tokens are short-lived).
#[derive(Debug, Clone)]
pub enum Subject {
    File(PathBuf),
    Env(String),
    Ci {
        source: source::TokenSource,
        audience: Option<String>,
    },
}

impl Subject {
    /// The token now.
    pub async fn token(&self, timeout: Duration) -> anyhow::Result<String> {
        match self {
            Self::File(path) => read_token(path),
            Self::Env(name) => source::from_env(name),
            Self::Ci { source, audience } => {
                source::fetch(*source, audience.as_deref(), timeout).await
            }
        }
    }
}

/// How the HTTP client reaches Ferry.
#[derive(Debug, Default)]
pub struct Transport<'a> {
    /// Extra CA certificates (PEM) to trust for Ferry's certificate.
    pub ca_file: Option<&'a Path>,
    /// A client certificate (PEM chain) and its key, for mutual TLS.
    pub identity: Option<(&'a Path, &'a Path)>,
    /// A DPoP key (PEM) to sign a proof with for each attempt.
    pub dpop_key: Option<&'a Path>,
    /// Time allowed for each attempt.
    pub timeout: Duration,
}

/// One exchange: what is asked for.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The RFC 8693 `subject_token_type` URN.
    pub token_type: &'a str,
    /// A target id (`audience`).
    pub audience: Option<&'a str>,
    /// A target's resource URI (`resource`).
    pub resource: Option<&'a str>,
    /// Scopes, sent space-separated.
    pub scopes: &'a [String],
}

/// The JWT token type, the default.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A client of one Ferry.
pub struct Client {
    endpoint: Url,
    http: reqwest::Client,
    dpop: Option<proof::DpopKey>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("token_endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the token endpoint `endpoint` (see [`token_endpoint`]).
    pub fn new(endpoint: Url, transport: &Transport<'_>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(transport.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT);
        if let Some(path) = transport.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA file {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("the CA file {}: not PEM certificates", path.display()))?;
            if certs.is_empty() {
                bail!("the CA file {}: no certificate in it", path.display());
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = transport.identity {
            builder = builder.identity(identity(cert, key)?);
        }
        let dpop = transport.dpop_key.map(proof::DpopKey::load).transpose()?;
        Ok(Self {
            endpoint,
            http: builder.build().context("cannot set up the HTTP client")?,
            dpop,
        })
    }

    /// The token endpoint this client posts to.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// Exchanges `token`; tries again up to `retries` times after `temporarily_unavailable`
    /// (503), `slow_down` (429), a gateway error or a connection failure, calling
    /// `waiting` before each wait; refusals are never retried. A DPoP nonce challenge
    /// is followed once.
    pub async fn exchange(
        &self,
        token: &str,
        request: &Request<'_>,
        retries: u32,
        waiting: impl Fn(&anyhow::Error, Duration),
    ) -> anyhow::Result<Map<String, Value>> {
        let form = form_body(token, request);
        let mut attempt = 0u32;
        let mut nonce: Option<String> = None;
        let mut followed_nonce = false;
        loop {
            // A proof is good once: each attempt makes its own.
            let proof = self
                .dpop
                .as_ref()
                .map(|key| key.proof(&self.endpoint, SystemClock.now(), nonce.as_deref()))
                .transpose()?;
            match self.once(form.clone(), proof).await? {
                Attempt::Done(body) => return Ok(body),
                // Followed once, at once; a second challenge is a refusal.
                Attempt::Nonce(err, given) => {
                    if followed_nonce || self.dpop.is_none() {
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
                    waiting(&err, wait);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn once(&self, form: String, proof: Option<String>) -> anyhow::Result<Attempt> {
        let endpoint = &self.endpoint;
        let mut request = self
            .http
            .post(endpoint.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json");
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        let res = match request.body(form).send().await {
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
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let request_id = header("x-request-id");
        let nonce_header = header("dpop-nonce");
        let retry_after = header("retry-after")
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
}

/// What one attempt came to.
enum Attempt {
    Done(Map<String, Value>),
    /// Worth another attempt, after this long.
    Again(anyhow::Error, Option<Duration>),
    /// Ferry asked for a DPoP proof with this nonce (RFC 9449 §8).
    Nonce(anyhow::Error, String),
}

fn form_body(token: &str, request: &Request<'_>) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", GRANT_TYPE)
        .append_pair("subject_token", token)
        .append_pair("subject_token_type", request.token_type);
    if let Some(t) = request.audience {
        form.append_pair("audience", t);
    }
    if let Some(r) = request.resource {
        form.append_pair("resource", r);
    }
    let scope = request
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
    let mut pem = std::fs::read(cert)
        .with_context(|| format!("cannot read the client certificate {}", cert.display()))?;
    pem.extend_from_slice(b"\n");
    pem.extend(
        std::fs::read(key)
            .with_context(|| format!("cannot read the client key {}", key.display()))?,
    );
    reqwest::Identity::from_pem(&pem).with_context(|| {
        format!(
            "{} and {}: not a PEM certificate and its private key",
            cert.display(),
            key.display()
        )
    })
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

#[cfg(test)]
mod tests;
