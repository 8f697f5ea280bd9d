//! `kind = "aws"` keys of a `[[targets]]` entry, and the limits STS enforces, checked at
//! load.

use std::time::Duration;

use ferry_provider_api::settings::{
    Context, Expression, Keys, Problems, Spec, Value, refresh_floor,
};

use crate::{AwsTarget, Mode, clamp_duration};

/// The keys a `kind = "aws"` entry may have besides the common ones.
pub const KEYS: &[&str] = &[
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

/// Parses and checks an AWS target's keys.
pub fn parse(
    table: &ferry_provider_api::settings::Table,
    cx: Context<'_>,
) -> Result<Spec<AwsTarget>, Problems> {
    let mut keys = Keys::new(table, KEYS, "aws");
    if cx.ttl.is_some() {
        keys.problem("ttl", "AWS targets set `duration` (15m–12h), not `ttl`");
    }
    let mode = match keys.string("mode").as_deref() {
        None | Some("web_identity") => Some(Mode::WebIdentity),
        Some("assume_role") => Some(Mode::AssumeRole),
        Some(other) => {
            keys.problem(
                "mode",
                format!("`{other}` is not `web_identity` or `assume_role`"),
            );
            None
        }
    };
    let role_arn = keys.string("role_arn").unwrap_or_default();
    if !is_role_arn(&role_arn) {
        keys.problem(
            "role_arn",
            format!("`{role_arn}` is not an IAM role ARN (arn:aws:iam::123456789012:role/name)"),
        );
    }
    let requested = keys.duration("duration", Duration::from_secs(3600));
    let duration = clamp_duration(requested);
    let endpoint = keys.string("endpoint");
    if let Some(e) = &endpoint
        && !ferry_provider_api::settings::is_http_url(e)
    {
        keys.problem("endpoint", format!("`{e}` is not an http(s) URL"));
    }
    let external_id = keys.string("external_id");
    if let Some(x) = &external_id
        && (x.len() < 2
            || x.len() > 1224
            || !x
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@:/_-".contains(c)))
    {
        keys.problem(
            "external_id",
            "must be 2–1224 characters of letters, digits and +=,.@:/_-",
        );
    }
    let session_policy = keys.string("session_policy");
    if let Some(p) = &session_policy
        && (serde_json::from_str::<serde_json::Value>(p).is_err() || p.len() > 2048)
    {
        keys.problem(
            "session_policy",
            "must be a JSON policy document of at most 2048 characters",
        );
    }
    let mut expressions = Vec::new();
    match keys.get("session_tags") {
        None => {}
        Some(Value::Table(tags)) => {
            if tags.len() > 50 {
                keys.problem("session_tags", "STS accepts at most 50 session tags");
            }
            for (k, v) in tags {
                if k.is_empty() || k.len() > 128 || !tag_chars_ok(k) {
                    keys.problem(
                        format!("session_tags.{k}"),
                        "tag keys are 1–128 characters of letters, digits, spaces and _.:/=+-@",
                    );
                }
                match v {
                    Value::String(source) => expressions.push(Expression {
                        name: format!("session_tag:{k}"),
                        key: format!("session_tags.{k}"),
                        source: source.clone(),
                    }),
                    _ => keys.problem(
                        format!("session_tags.{k}"),
                        "must be a CEL expression string",
                    ),
                }
            }
        }
        Some(_) => keys.problem("session_tags", "must be a table of tag = CEL expression"),
    }
    let source_identity = keys.string("source_identity");
    if let Some(source) = &source_identity {
        expressions.push(Expression {
            name: "source_identity".into(),
            key: "source_identity".into(),
            source: source.clone(),
        });
    }
    if mode == Some(Mode::WebIdentity) && (!expressions.is_empty() || external_id.is_some()) {
        keys.problem("mode", "`session_tags`, `source_identity` and `external_id` apply to `assume_role` (web identity tags come from the token)");
    }
    let mut warnings = Vec::new();
    if duration != requested {
        warnings.push((
            "duration".to_owned(),
            format!(
                "warning: clamped to {}s (STS allows 15m–12h)",
                duration.as_secs()
            ),
        ));
    }
    let target = AwsTarget {
        id: cx.id.to_owned(),
        mode: mode.unwrap_or(Mode::WebIdentity),
        role_arn,
        duration,
        region: keys
            .string("region")
            .unwrap_or_else(|| "us-east-1".to_owned()),
        endpoint,
        audience: keys
            .string("web_identity_audience")
            .unwrap_or_else(|| "sts.amazonaws.com".to_owned()),
        external_id,
        session_policy,
        max_concurrency: keys.concurrency(4),
    };
    keys.finish(Spec {
        target,
        ttl: duration,
        // AWS SDKs refresh credentials with less than 15 minutes left: never hand out
        // cached ones that close to expiry.
        min_remaining: refresh_floor(
            duration,
            Duration::from_secs(16 * 60),
            Duration::from_secs(60),
        ),
        expressions,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<Spec<AwsTarget>, Problems> {
        let table = text.parse().unwrap();
        parse(
            &table,
            Context {
                id: "t",
                scopes: &[],
                ttl: None,
                base_dir: std::path::Path::new("."),
            },
        )
    }

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

    #[test]
    fn an_assume_role_entry_becomes_its_target_and_expressions() {
        let s = spec(
            r#"mode = "assume_role"
role_arn = "arn:aws:iam::123456789012:role/deploy"
duration = "5m"
session_tags = { team = "identity.attributes.team" }
source_identity = "identity.subject""#,
        )
        .unwrap();
        assert_eq!(s.target.mode, Mode::AssumeRole);
        assert_eq!(
            s.ttl,
            Duration::from_secs(900),
            "clamped up to STS's minimum"
        );
        assert_eq!(s.warnings.len(), 1);
        let names: Vec<&str> = s.expressions.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["session_tag:team", "source_identity"]);
        assert_eq!(s.min_remaining, Duration::from_secs(14 * 60));
    }

    #[test]
    fn web_identity_refuses_what_only_assume_role_sends() {
        let problems = spec(
            r#"role_arn = "arn:aws:iam::123456789012:role/deploy"
external_id = "x1""#,
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "mode");
    }
}
