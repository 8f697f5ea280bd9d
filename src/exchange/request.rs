//! RFC 8693 §2.1: the token exchange request, parsed from form parameters.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::verify::{UnverifiedToken, VerifyError};

/// `grant_type` of a token exchange (RFC 8693 §2.1).
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Subject token types Ferry accepts (RFC 8693 §3); all must be JWTs.
pub const SUBJECT_TOKEN_TYPES: &[&str] = &[
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:access_token",
];

/// How the request names its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSelector {
    /// `audience` = a target id.
    Audience(String),
    /// `resource` = a target's resource URI.
    Resource(String),
}

/// A parsed, well-formed exchange request. The token inside is still unverified.
#[derive(Debug)]
pub struct ExchangeRequest {
    /// The presented token.
    pub subject_token: UnverifiedToken,
    /// The requested target.
    pub target: TargetSelector,
    /// Requested scopes (deduplicated, in request order).
    pub scopes: Vec<String>,
    /// `requested_token_type`, if given.
    pub requested_token_type: Option<String>,
    /// The client's address.
    pub client_ip: IpAddr,
    /// A valid W3C `traceparent` header, if the client sent one.
    pub traceparent: Option<String>,
    /// The verified certificate the client presented over mutual TLS.
    pub client_certificate: Option<std::sync::Arc<crate::tls::ClientCertificate>>,
    /// The request's DPoP proof, checked (its `jti` not yet recorded).
    pub dpop: Option<super::dpop::Proof>,
}

/// Why the request itself is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// RFC 6749 `invalid_request`.
    #[error("{0}")]
    Invalid(String),
    /// RFC 6749 `unsupported_grant_type`.
    #[error(
        "grant_type `{0}` is not supported; use `urn:ietf:params:oauth:grant-type:token-exchange`"
    )]
    UnsupportedGrantType(String),
}

impl From<VerifyError> for RequestError {
    fn from(e: VerifyError) -> Self {
        Self::Invalid(format!("subject_token: {e}"))
    }
}

fn invalid(msg: impl Into<String>) -> RequestError {
    RequestError::Invalid(msg.into())
}

/// Parses form parameters. Unknown parameters are ignored (RFC 6749 §3.2); repeated
/// ones are an error (RFC 6749 §3.2: "MUST NOT be included more than once").
pub fn parse<K: AsRef<str>, V: AsRef<str>>(
    pairs: &[(K, V)],
    client_ip: IpAddr,
) -> Result<ExchangeRequest, RequestError> {
    const KNOWN: &[&str] = &[
        "grant_type",
        "subject_token",
        "subject_token_type",
        "audience",
        "resource",
        "scope",
        "requested_token_type",
        "actor_token",
        "actor_token_type",
        "client_id",
    ];
    for name in KNOWN {
        if pairs.iter().filter(|(k, _)| k.as_ref() == *name).count() > 1 {
            return Err(invalid(format!(
                "parameter `{name}` is repeated; Ferry exchanges for exactly one target"
            )));
        }
    }
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| v.as_ref())
            .filter(|v| !v.is_empty())
    };

    match get("grant_type") {
        None => return Err(invalid("missing parameter `grant_type`")),
        Some(GRANT_TYPE_TOKEN_EXCHANGE) => {}
        Some(other) => {
            return Err(RequestError::UnsupportedGrantType(crate::text::echo(other)));
        }
    }
    if get("actor_token").is_some() || get("actor_token_type").is_some() {
        return Err(invalid(
            "delegation (`actor_token`) is not supported; Ferry performs impersonation only",
        ));
    }
    let token = get("subject_token").ok_or_else(|| invalid("missing parameter `subject_token`"))?;
    match get("subject_token_type") {
        None => return Err(invalid("missing parameter `subject_token_type`")),
        Some(t) if SUBJECT_TOKEN_TYPES.contains(&t) => {}
        Some(t) => {
            return Err(invalid(format!(
                "subject_token_type `{}` is not supported (use …:token-type:jwt, :id_token or :access_token)",
                crate::text::echo(t)
            )));
        }
    }
    let target = match (get("audience"), get("resource")) {
        (Some(a), _) => TargetSelector::Audience(a.to_owned()),
        (None, Some(r)) => TargetSelector::Resource(r.to_owned()),
        (None, None) => {
            return Err(invalid(
                "missing parameter `audience` (a target id) or `resource` (a target's resource URI)",
            ));
        }
    };
    let mut scopes: Vec<String> = Vec::new();
    if let Some(scope) = get("scope") {
        for s in scope.split(' ').filter(|s| !s.is_empty()) {
            if !crate::config::is_scope_token(s) {
                return Err(invalid(
                    "`scope` contains an invalid scope token (RFC 6749 §3.3)",
                ));
            }
            if !scopes.iter().any(|x| x == s) {
                scopes.push(s.to_owned());
            }
        }
    }
    let subject_token = UnverifiedToken::new(token)?;
    Ok(ExchangeRequest {
        subject_token,
        target,
        scopes,
        requested_token_type: get("requested_token_type").map(str::to_owned),
        client_ip,
        traceparent: None,
        client_certificate: None,
        dpop: None,
    })
}

/// The pairs of an `application/x-www-form-urlencoded` body, decoded exactly as the
/// `form_urlencoded` crate (the URL Standard) does — `+` is a space, `%XX` a byte,
/// invalid UTF-8 becomes U+FFFD, empty segments are skipped, a segment without `=` is a
/// name with an empty value — but a segment with nothing to decode (a JWT never has
/// anything) is borrowed from the body instead of copied byte by byte.
pub fn form_pairs(body: &[u8]) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    let mut pairs = Vec::with_capacity(8);
    let mut rest = body;
    while !rest.is_empty() {
        let (segment, next) = match memchr::memchr(b'&', rest) {
            Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i + 1..)),
            None => (rest, None),
        };
        rest = next.unwrap_or_default();
        if segment.is_empty() {
            continue;
        }
        if memchr::memchr2(b'%', b'+', segment).is_none()
            && let Ok(text) = std::str::from_utf8(segment)
        {
            let (name, value) = text.split_once('=').unwrap_or((text, ""));
            pairs.push((Cow::Borrowed(name), Cow::Borrowed(value)));
        } else if let Some(pair) = form_urlencoded::parse(segment).next() {
            pairs.push(pair);
        }
    }
    pairs
}

/// Validates a W3C Trace Context `traceparent` (version 00): `00-<32 hex>-<16 hex>-<2 hex>`,
/// trace id and parent id not all zeros. Returns it, normalized to lower case.
pub fn parse_traceparent(value: &str) -> Option<String> {
    let v = value.trim().to_ascii_lowercase();
    let parts: Vec<&str> = v.split('-').collect();
    let [version, trace_id, parent_id, flags] = parts.as_slice() else {
        return None;
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    (*version == "00"
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && nonzero(trace_id)
        && nonzero(parent_id))
    .then_some(v.clone())
}

#[cfg(test)]
mod tests {
    #[test]
    fn traceparent_validation() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(super::parse_traceparent(ok).as_deref(), Some(ok));
        assert!(
            super::parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01")
                .is_none()
        );
        assert!(
            super::parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .is_none()
        );
        assert!(super::parse_traceparent("garbage").is_none());
    }

    use super::*;

    #[test]
    fn form_pairs_decode_as_form_urlencoded_does() {
        for body in [
            "a=1&b=2",
            "subject_token=eyJh.eyJi.c2ln&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt",
            "scope=read+write&x=%41%42",
            "&&a=&=b&c&d==e&",
            "bad=%FF%FE&utf=%C3%A9&raw=\u{e9}",
            "p=%&q=%4&r=%zz",
            "",
        ] {
            let ours: Vec<(String, String)> = form_pairs(body.as_bytes())
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let reference: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(ours, reference, "{body:?}");
        }
        // Invalid UTF-8 without anything to decode takes the decoding path too.
        assert_eq!(
            form_pairs(b"a=\xff"),
            form_urlencoded::parse(b"a=\xff").collect::<Vec<_>>()
        );
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        let body = format!("subject_token={token}");
        assert!(matches!(
            form_pairs(body.as_bytes()).first(),
            Some((Cow::Borrowed("subject_token"), Cow::Borrowed(t))) if *t == token
        ));
    }

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn a_complete_request_parses() -> Result<(), RequestError> {
        let r = parse(
            &form(&[
                ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
                ("subject_token", "a.b.c\n"),
                ("subject_token_type", JWT),
                ("audience", "api"),
                ("scope", "read read write"),
                ("unknown", "ignored"),
            ]),
            LOCAL,
        )?;
        assert_eq!(r.target, TargetSelector::Audience("api".into()));
        assert_eq!(r.scopes, vec!["read".to_owned(), "write".to_owned()]);
        Ok(())
    }

    #[test]
    fn errors_are_specific() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "missing parameter `grant_type`"),
            (&[("grant_type", "password")], "grant_type `password`"),
            (
                &[("grant_type", GRANT_TYPE_TOKEN_EXCHANGE)],
                "`subject_token`",
            ),
            (
                &[
                    ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
                    ("subject_token", "a.b.c"),
                ],
                "`subject_token_type`",
            ),
            (
                &[
                    ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
                    ("subject_token", "a.b.c"),
                    ("subject_token_type", "urn:x"),
                ],
                "not supported",
            ),
            (
                &[
                    ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
                    ("subject_token", "a.b.c"),
                    ("subject_token_type", JWT),
                ],
                "`audience`",
            ),
            (
                &[
                    ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
                    ("subject_token", "a.b.c"),
                    ("subject_token_type", JWT),
                    ("audience", "a"),
                    ("audience", "b"),
                ],
                "repeated",
            ),
            (
                &[
                    ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
                    ("subject_token", "a.b.c"),
                    ("subject_token_type", JWT),
                    ("audience", "a"),
                    ("actor_token", "x"),
                ],
                "delegation",
            ),
            (
                &[
                    ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
                    ("subject_token", "a.b.c"),
                    ("subject_token_type", JWT),
                    ("audience", "a"),
                    ("scope", "a\"b"),
                ],
                "scope",
            ),
        ];
        for (pairs, want) in cases {
            match parse(&form(pairs), LOCAL) {
                Ok(_) => unreachable!("{pairs:?} must fail"),
                Err(e) => assert!(e.to_string().contains(want), "{pairs:?}: {e}"),
            }
        }
    }
}
