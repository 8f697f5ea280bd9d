//! One decision as the audit trail records it.

/// One decision, as the audit trail records it (borrowed from the decision's
/// `ExchangeRecord`; `http/observe.rs` builds it).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AuditEvent<'a> {
    /// Unix seconds.
    pub time: i64,
    pub request_id: &'a str,
    pub client_ip: String,
    /// The configured issuer the token verified against, or that a refused token named.
    pub issuer: Option<&'a str>,
    /// The subject token's `sub`, once verified.
    pub token_sub: Option<&'a str>,
    /// SHA-256 (hex) of the presented token; never the token.
    pub token_sha256: Option<&'a str>,
    /// The canonical subject, once mapped.
    pub subject: Option<&'a str>,
    /// The target id, when it names a configured target.
    pub target: Option<&'a str>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Policies that determined the decision.
    pub policy_ids: &'a [String],
    /// What policy decided (`allow`, `deny`, `error`), when it ran: a request policy
    /// allowed can still be refused after it (a revocation, the cloud's answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_decision: Option<&'static str>,
    /// The RFC 6749 error code of a denial.
    pub error: Option<&'a str>,
    /// The error description the client was sent.
    pub reason: Option<&'a str>,
    /// `hit` or `miss` for granted exchanges.
    pub cache: Option<&'static str>,
    /// SHA-256 (hex) of the issued access token; never the credential.
    pub credential_sha256: Option<&'a str>,
    /// The upstream request id, for cloud credentials.
    pub upstream_request_id: Option<&'a str>,
    /// The config revision that decided.
    pub revision: &'a str,
    /// What the shadow policy set decided (`allow`, `deny`, `error`), when one is
    /// configured and policy ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_decision: Option<&'static str>,
    /// The shadow policies that determined it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_policy_ids: Option<&'a [String]>,
    /// With `[audit] record_identity`, once mapped: the identity policy saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<AuditIdentity>,
    /// With `[audit] record_identity`: the request as it named its target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<AuditRequest>,
}

/// The mapped identity in an audit line (`[audit] record_identity`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AuditIdentity {
    pub subject: String,
    pub groups: Vec<String>,
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// The request in an audit line (`[audit] record_identity`): the target as named, the
/// scopes, the address and certificate policy saw.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AuditRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub scopes: Vec<String>,
    pub source_ip: std::net::IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<crate::tls::ClientCertificate>,
}

pub(crate) fn rfc3339(unix: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}
