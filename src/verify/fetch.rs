//! Bounded HTTP GETs for discovery documents and JWKS.

use std::time::Duration;

use url::Url;

/// Why a fetch failed. Messages name the URL but never a body.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Plain http to a host that is not loopback.
    #[error("`{0}` must use https (http is allowed only for loopback hosts)")]
    Insecure(String),
    /// Connection, TLS or timeout failure.
    #[error("fetching `{url}` failed: {reason}")]
    Transport {
        url: String,
        /// The transport error, without a body.
        reason: String,
    },
    /// A non-2xx status.
    #[error("fetching `{url}` returned HTTP {status}")]
    Status {
        url: String,
        /// The status code.
        status: u16,
    },
    /// The body is larger than allowed.
    #[error("`{url}` returned more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
}

/// A successful fetch: the body and how long the server says it may be cached.
#[derive(Debug)]
pub struct Fetched {
    /// The body, at most the limit.
    pub body: Vec<u8>,
    /// `Cache-Control: max-age`, or zero for `no-store`/`no-cache`; `None` when absent.
    pub max_age: Option<Duration>,
}

/// True when `url`'s host is a loopback address or `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Https, or http to a loopback host; nothing else.
pub fn require_secure(url: &Url) -> Result<(), FetchError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        _ => Err(FetchError::Insecure(url.to_string())),
    }
}

/// Whether a fetch that started at `origin` (a URL the config wrote, or derived from one)
/// may go on to `next` (a redirect, or a document's `jwks_uri`): https always; plain http
/// only to loopback, and only when the origin itself was loopback http. A remote https
/// issuer cannot send Ferry to plain http or into its own host.
pub fn may_follow(origin: &Url, next: &Url) -> bool {
    match next.scheme() {
        "https" => true,
        "http" => is_loopback(next) && origin.scheme() == "http" && is_loopback(origin),
        _ => false,
    }
}

/// Builds the HTTP client used for discovery and JWKS: bounded time, redirects only to
/// https (or loopback http from a loopback http origin: [`may_follow`]), at most three.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let origin = attempt.previous().first().cloned();
        if attempt.previous().len() >= 3 {
            attempt.error("too many redirects")
        } else if !origin.map_or_else(
            || require_secure(attempt.url()).is_ok(),
            |o| may_follow(&o, attempt.url()),
        ) {
            attempt.error("redirect to an insecure URL")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(policy)
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// GETs `url`, refusing bodies over `limit` bytes without reading them whole.
pub async fn get_limited(
    client: &reqwest::Client,
    url: &Url,
    limit: usize,
) -> Result<Fetched, FetchError> {
    require_secure(url)?;
    let transport = |e: reqwest::Error| FetchError::Transport {
        url: url.to_string(),
        reason: error_chain(&e),
    };
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(transport)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    let too_large = || FetchError::TooLarge {
        url: url.to_string(),
        limit,
    };
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    let max_age = response
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_max_age);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched { body, max_age })
}

/// Reads `max-age` from a Cache-Control value; `no-store`/`no-cache` mean zero.
pub fn parse_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',') {
        let directive = directive.trim();
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(secs) = lower.strip_prefix("max-age=") {
            max_age = secs
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

fn error_chain(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut out = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_loopback_http_origin_may_lead_to_plain_http() -> Result<(), url::ParseError> {
        let u = |s: &str| Url::parse(s);
        let remote = u("https://issuer.example.com/.well-known/openid-configuration")?;
        let local = u("http://127.0.0.1:8000/.well-known/openid-configuration")?;
        assert!(may_follow(&remote, &u("https://keys.example.com/jwks")?));
        assert!(!may_follow(&remote, &u("http://127.0.0.1:9/jwks")?));
        assert!(!may_follow(&remote, &u("http://localhost/jwks")?));
        assert!(!may_follow(&remote, &u("http://keys.example.com/jwks")?));
        assert!(may_follow(&local, &u("http://127.0.0.1:8001/jwks")?));
        assert!(!may_follow(&local, &u("http://keys.example.com/jwks")?));
        assert!(!may_follow(&local, &u("file:///etc/passwd")?));
        Ok(())
    }

    #[test]
    fn max_age_parsing() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
    }

    #[test]
    fn only_https_or_loopback() -> Result<(), url::ParseError> {
        assert!(require_secure(&Url::parse("https://example.com/jwks")?).is_ok());
        assert!(require_secure(&Url::parse("http://127.0.0.1:9/jwks")?).is_ok());
        assert!(require_secure(&Url::parse("http://[::1]:9/jwks")?).is_ok());
        assert!(require_secure(&Url::parse("http://localhost/jwks")?).is_ok());
        assert!(require_secure(&Url::parse("http://example.com/jwks")?).is_err());
        assert!(require_secure(&Url::parse("http://127.0.0.1.nip.io/jwks")?).is_err());
        assert!(require_secure(&Url::parse("file:///etc/passwd")?).is_err());
        Ok(())
    }
}
