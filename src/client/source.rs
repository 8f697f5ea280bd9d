//! Where `ferry exchange` and `ferry agent` get the workload's own token: a file (a Kubernetes projected
//! service-account token, re-read each run), an environment variable (GitLab CI
//! `id_tokens`, Buildkite's OIDC token, …), or the CI system itself (GitHub Actions'
//! OIDC token endpoint).

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use url::Url;

/// A CI system Ferry can ask for the job's OIDC token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenSource {
    /// The job's OIDC token from `ACTIONS_ID_TOKEN_REQUEST_URL`, authenticated with
    /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN` (the job needs `permissions: id-token: write`).
    GithubActions,
}

/// The environment variables GitHub Actions sets for a job allowed OIDC tokens.
const GITHUB_URL: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
const GITHUB_TOKEN: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// A token as a token file, a variable or an endpoint gave it: surrounding whitespace
/// dropped, one word, at most Ferry's limit. `whence` names where it came from.
pub fn check_token(text: &str, whence: &str) -> anyhow::Result<String> {
    let limit = crate::verify::MAX_TOKEN_BYTES;
    let token = text.trim();
    if token.len() > limit {
        bail!("the token in {whence} is over {limit} bytes; Ferry refuses tokens that large");
    }
    if token.is_empty() {
        bail!("{whence} is empty");
    }
    if token.chars().any(char::is_whitespace) {
        bail!("{whence} holds more than one word; it should hold the token alone");
    }
    Ok(token.to_owned())
}

/// The token in environment variable `name`.
pub fn from_env(name: &str) -> anyhow::Result<String> {
    let value = std::env::var(name).map_err(|e| match e {
        std::env::VarError::NotPresent => anyhow!("the token variable {name} is not set"),
        std::env::VarError::NotUnicode(_) => anyhow!("the token variable {name} is not UTF-8 text"),
    })?;
    check_token(&value, &format!("the variable {name}"))
}

/// The job's OIDC token from the CI system, for `audience` (the issuer's default when
/// `None`).
pub async fn fetch(
    source: TokenSource,
    audience: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<String> {
    match source {
        TokenSource::GithubActions => github_actions(audience, timeout).await,
    }
}

async fn github_actions(audience: Option<&str>, timeout: Duration) -> anyhow::Result<String> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| {
            anyhow!(
                "the GitHub Actions token source: {name} is not set (is this a GitHub Actions job with `permissions: id-token: write`?)"
            )
        })
    };
    // Not echoed: the URL is GitHub's, but the request token beside it is a secret.
    let mut url = Url::parse(&var(GITHUB_URL)?)
        .map_err(|_| anyhow!("the GitHub Actions token source: {GITHUB_URL} is not a URL"))?;
    let secure = url.scheme() == "https"
        || (url.scheme() == "http" && crate::verify::fetch::is_loopback(&url));
    if !secure {
        bail!(
            "the GitHub Actions token source: {GITHUB_URL} is not https; the request token would go in the clear"
        );
    }
    if let Some(aud) = audience {
        url.query_pairs_mut().append_pair("audience", aud);
    }
    let bearer = var(GITHUB_TOKEN)?;
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(super::USER_AGENT)
        .build()
        .context("cannot set up the HTTP client")?;
    let res = client
        .get(url)
        .header("authorization", format!("bearer {bearer}"))
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "cannot reach GitHub's OIDC token endpoint: {}",
                e.without_url()
            )
        })?;
    let status = res.status();
    if !status.is_success() {
        bail!("GitHub's OIDC token endpoint answered {status}");
    }
    let body: serde_json::Value = res
        .json()
        .await
        .map_err(|_| anyhow!("GitHub's OIDC token endpoint did not answer JSON"))?;
    let value = body
        .get("value")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| anyhow!("GitHub's OIDC token endpoint answered without `value`"))?;
    check_token(value, "GitHub's OIDC token response")
}
