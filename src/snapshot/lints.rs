//! `ferry check` warnings for the known pitfalls of each issuer preset, read from the
//! config and each policy's syntax tree (Cedar's JSON form).

use std::collections::BTreeSet;

use crate::config::{Config, IssuerConfig, Problem, TargetKind};
use crate::policy::PolicyFacts;

/// The claims that tie a GitHub Actions token to a branch, tag or environment: a rule
/// reading none of them accepts tokens of any workflow run, `pull_request` runs included.
const GITHUB_RUN_PINS: &[&str] = &[
    "ref",
    "environment",
    "event_name",
    "job_workflow_ref",
    "workflow_ref",
    "ref_protected",
];

/// Audiences a Kubernetes service-account token carries when nobody asked for one
/// (the API server's own, and the defaults of cloud integrations).
const KUBERNETES_DEFAULT_AUDIENCES: &[&str] = &[
    "https://kubernetes.default.svc",
    "https://kubernetes.default.svc.cluster.local",
    "kubernetes.default.svc",
    "kubernetes",
    "api",
    "sts.amazonaws.com",
];

/// The warnings for every issuer's preset.
pub(super) fn preset_lints(config: &Config, policies: &[PolicyFacts]) -> Vec<Problem> {
    let config_file = config.source.display();
    let mut out = Vec::new();
    let mut warn = |file: &str, entry: String, problem: String| {
        out.push(Problem {
            file: file.to_owned(),
            entry,
            problem: format!("warning: {problem}"),
        });
    };
    for issuer in &config.issuers {
        let entry = format!("issuers[{}]", issuer.id);
        match issuer.preset.as_deref() {
            Some("github-actions") => github(config, issuer, &entry, policies, &mut warn),
            Some("kubernetes") => {
                for aud in &issuer.audiences {
                    if KUBERNETES_DEFAULT_AUDIENCES.contains(&aud.as_str()) {
                        warn(
                            &config_file,
                            format!("{entry}.audiences"),
                            format!(
                                "`{aud}` is an audience service-account tokens carry by default: any pod's token for the API server (or a cloud integration) would be accepted; pin one of Ferry's own (a projected token with `audience: ferry`)"
                            ),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn github(
    config: &Config,
    issuer: &IssuerConfig,
    entry: &str,
    policies: &[PolicyFacts],
    warn: &mut impl FnMut(&str, String, String),
) {
    let file = config.source.display();
    let condition = issuer.condition.as_deref().unwrap_or("");
    let by_name_only =
        |reads: &dyn Fn(&str) -> bool| reads("repository_owner") && !reads("repository_owner_id");
    const OWNER: &str = "trusts `repository_owner` by name without `repository_owner_id`: an organisation or user can be renamed and its old name registered by someone else; pin the numeric id too";
    if by_name_only(&|c| cel_reads(condition, c)) {
        warn(&file, format!("{entry}.condition"), OWNER.to_owned());
    }
    if [".startsWith(", ".endsWith(", ".contains(", ".matches("]
        .iter()
        .any(|f| condition.contains(&format!("sub{f}")))
    {
        warn(
            &file,
            format!("{entry}.condition"),
            "matches `sub` by a pattern: GitHub builds `sub` from several claims (repository, environment, ref, pull_request) in an order the repository's OIDC settings can change; compare `repository_id`, `ref` or `environment` exactly".to_owned(),
        );
    }
    let pinned_by_condition = GITHUB_RUN_PINS.iter().any(|c| cel_reads(condition, c));
    let cloud: BTreeSet<&str> = config
        .targets
        .iter()
        .filter(|t| {
            matches!(
                t.kind,
                TargetKind::Aws | TargetKind::Gcp | TargetKind::Azure
            )
        })
        .map(|t| t.id.as_str())
        .collect();
    for p in policies {
        // A policy that names another issuer's id, and not this one's, is about that one.
        let others = config
            .issuers
            .iter()
            .any(|i| i.id != issuer.id && p.literals.contains(&i.id));
        if others && !p.literals.contains(&issuer.id) {
            continue;
        }
        let policy_warn = |warn: &mut dyn FnMut(&str, String, String), problem: String| {
            warn(&p.file, format!("policy `{}`", p.id), problem);
        };
        if by_name_only(&|a| p.attributes.contains(a)) {
            policy_warn(warn, OWNER.to_owned());
        }
        if p.subject_like {
            policy_warn(
                warn,
                "matches `principal.subject` with `like`: GitHub's `sub` is built from several claims in an order the repository's OIDC settings can change; compare `repository_id`, `ref` or `environment` exactly".to_owned(),
            );
        }
        if !p.permit {
            continue;
        }
        let clouds: Vec<&str> = match &p.targets {
            None => cloud.iter().copied().collect(),
            Some(ids) => ids
                .iter()
                .map(String::as_str)
                .filter(|i| cloud.contains(i))
                .collect(),
        };
        if clouds.is_empty() {
            continue;
        }
        if p.literals.contains("pull_request") || p.literals.contains("pull_request_target") {
            policy_warn(
                warn,
                format!(
                    "permits cloud target(s) {} to `pull_request` runs: a pull request's workflow runs code its author wrote",
                    clouds.join(", ")
                ),
            );
        } else if !pinned_by_condition && !GITHUB_RUN_PINS.iter().any(|c| p.attributes.contains(*c))
        {
            policy_warn(
                warn,
                format!(
                    "permits cloud target(s) {} without reading `ref`, `environment` or `event_name` (nor does issuer `{}`'s condition): a `pull_request` run of the repository gets them too",
                    clouds.join(", "),
                    issuer.id
                ),
            );
        }
    }
}

/// Whether CEL text reads claim `name` (`assertion.name`, `assertion["name"]`).
fn cel_reads(cel: &str, name: &str) -> bool {
    let dotted = format!("assertion.{name}");
    cel.match_indices(&dotted).any(|(i, m)| {
        !cel.get(i + m.len()..)
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    }) || cel.contains(&format!("assertion[\"{name}\"]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cel_reads_a_claim_by_its_whole_name() {
        assert!(cel_reads(
            "assertion.repository_owner == 'a'",
            "repository_owner"
        ));
        assert!(!cel_reads(
            "assertion.repository_owner_id == '1'",
            "repository_owner"
        ));
        assert!(cel_reads(r#"assertion["ref"] == "x""#, "ref"));
        assert!(!cel_reads("assertion.ref_type == 'branch'", "ref"));
    }
}
