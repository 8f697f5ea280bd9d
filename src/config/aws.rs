//! `kind = "aws"` targets: the keys, and the limits STS enforces, checked at load.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{TargetConfig, target_keys};

/// An AWS target's settings, parsed from the target table.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// `web_identity` (default) or `assume_role`.
    pub mode: ferry_provider_aws::Mode,
    pub role_arn: String,
    /// Requested session length (clamped to 15 min – 12 h).
    pub duration: Duration,
    /// Whether `duration` had to be clamped.
    pub clamped: bool,
    /// STS region.
    pub region: String,
    /// STS endpoint override.
    pub endpoint: Option<String>,
    /// `aud` of the Ferry-signed JWT (`web_identity`).
    pub web_identity_audience: String,
    /// `ExternalId` (`assume_role`).
    pub external_id: Option<String>,
    /// Inline session policy (JSON).
    pub session_policy: Option<String>,
    /// Tag key → CEL over `identity` (`assume_role`).
    pub session_tags: BTreeMap<String, String>,
    /// CEL over `identity` (`assume_role`).
    pub source_identity: Option<String>,
    /// Concurrent STS calls for this target.
    pub max_concurrency: usize,
}

const KEYS: &[&str] = &[
    "mode",
    "role_arn",
    "duration",
    "region",
    "endpoint",
    "web_identity_audience",
    "external_id",
    "session_policy",
    "session_tags",
    "source_identity",
    "max_concurrency",
];

/// `arn:<partition>:iam::<12 digits>:role/<path/name>` with IAM's name characters.
pub fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [arn_lit, partition, service, region, account, resource] = parts.as_slice() else {
        return false;
    };
    let name = resource.strip_prefix("role/").unwrap_or("");
    *arn_lit == "arn"
        && partition.starts_with("aws")
        && *service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && name.len() <= 512
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c))
}

fn tag_chars_ok(s: &str) -> bool {
    // STS tag keys: letters, digits, spaces and _ . : / = + - @
    s.chars()
        .all(|c| c.is_alphanumeric() || " _.:/=+-@".contains(c))
}

/// Parses and checks an AWS target; problems are `(entry suffix, problem)`.
pub fn parse(target: &TargetConfig) -> Result<AwsSettings, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let t = &target.extra;
    target_keys::unknown_keys(t, KEYS, "aws", &mut problems);
    let string =
        |k: &str, problems: &mut Vec<(String, String)>| target_keys::string(t, k, problems);
    let mode = string("mode", &mut problems).unwrap_or_else(|| "web_identity".to_owned());
    if mode != "web_identity" && mode != "assume_role" {
        problems.push((
            "mode".into(),
            format!("`{mode}` is not `web_identity` or `assume_role`"),
        ));
    }
    let role_arn = string("role_arn", &mut problems).unwrap_or_default();
    if !is_role_arn(&role_arn) {
        problems.push((
            "role_arn".into(),
            format!("`{role_arn}` is not an IAM role ARN (arn:aws:iam::123456789012:role/name)"),
        ));
    }
    let requested = match t.get("duration") {
        None => Duration::from_secs(3600),
        Some(toml::Value::String(s)) => humantime::parse_duration(s).unwrap_or_else(|_| {
            problems.push(("duration".into(), format!("`{s}` is not a duration")));
            Duration::from_secs(3600)
        }),
        Some(_) => {
            problems.push((
                "duration".into(),
                "must be a duration string like \"1h\"".into(),
            ));
            Duration::from_secs(3600)
        }
    };
    let duration = requested.clamp(Duration::from_secs(900), Duration::from_secs(43_200));
    let endpoint = string("endpoint", &mut problems);
    if let Some(e) = &endpoint
        && !target_keys::is_http_url(e)
    {
        problems.push(("endpoint".into(), format!("`{e}` is not an http(s) URL")));
    }
    let external_id = string("external_id", &mut problems);
    if let Some(x) = &external_id
        && (x.len() < 2
            || x.len() > 1224
            || !x
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@:/_-".contains(c)))
    {
        problems.push((
            "external_id".into(),
            "must be 2–1224 characters of letters, digits and +=,.@:/_-".into(),
        ));
    }
    let session_policy = string("session_policy", &mut problems);
    if let Some(p) = &session_policy
        && (serde_json::from_str::<serde_json::Value>(p).is_err() || p.len() > 2048)
    {
        problems.push((
            "session_policy".into(),
            "must be a JSON policy document of at most 2048 characters".into(),
        ));
    }
    let mut session_tags = BTreeMap::new();
    match t.get("session_tags") {
        None => {}
        Some(toml::Value::Table(tags)) => {
            if tags.len() > 50 {
                problems.push((
                    "session_tags".into(),
                    "STS accepts at most 50 session tags".into(),
                ));
            }
            for (k, v) in tags {
                if k.is_empty() || k.len() > 128 || !tag_chars_ok(k) {
                    problems.push((
                        format!("session_tags.{k}"),
                        "tag keys are 1–128 characters of letters, digits, spaces and _.:/=+-@"
                            .into(),
                    ));
                }
                match v {
                    toml::Value::String(expr) => {
                        session_tags.insert(k.clone(), expr.clone());
                    }
                    _ => problems.push((
                        format!("session_tags.{k}"),
                        "must be a CEL expression string".into(),
                    )),
                }
            }
        }
        Some(_) => problems.push((
            "session_tags".into(),
            "must be a table of tag = CEL expression".into(),
        )),
    }
    let source_identity = string("source_identity", &mut problems);
    if mode == "web_identity"
        && (!session_tags.is_empty() || source_identity.is_some() || external_id.is_some())
    {
        problems.push(("mode".into(), "`session_tags`, `source_identity` and `external_id` apply to `assume_role` (web identity tags come from the token)".into()));
    }
    let max_concurrency = target_keys::concurrency(t, 4, &mut problems);
    let settings = AwsSettings {
        mode: if mode == "assume_role" {
            ferry_provider_aws::Mode::AssumeRole
        } else {
            ferry_provider_aws::Mode::WebIdentity
        },
        role_arn,
        clamped: duration != requested,
        duration,
        region: string("region", &mut problems).unwrap_or_else(|| "us-east-1".to_owned()),
        endpoint,
        web_identity_audience: string("web_identity_audience", &mut problems)
            .unwrap_or_else(|| "sts.amazonaws.com".to_owned()),
        external_id,
        session_policy,
        session_tags,
        source_identity,
        max_concurrency,
    };
    target_keys::finish(settings, problems)
}

/// The lifetime an AWS target issues.
pub fn ttl(target: &TargetConfig) -> Duration {
    parse(target)
        .map(|s| s.duration)
        .unwrap_or(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns() {
        assert!(is_role_arn("arn:aws:iam::123456789012:role/deploy"));
        assert!(is_role_arn(
            "arn:aws-us-gov:iam::123456789012:role/path/to/deploy"
        ));
        assert!(!is_role_arn("arn:aws:iam::12345:role/deploy"));
        assert!(!is_role_arn("arn:aws:s3:::bucket"));
        assert!(!is_role_arn("arn:aws:iam::123456789012:user/bob"));
    }
}
