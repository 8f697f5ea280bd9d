//! `preset = "…"` on an `[[issuers]]` entry: the issuer URL, algorithms, a default mapping
//! and the claims a well-known issuer really sends, so an operator writes only what is
//! particular to the deployment (the audience, the condition, and any override). Every
//! key the entry sets itself wins over the preset's.

use super::{IssuerConfig, MappingConfig};

/// One preset.
#[derive(Debug)]
pub struct Preset {
    pub name: &'static str,
    /// The issuer URL, when every tenant shares one.
    pub issuer: Option<&'static str>,
    /// What this kind of issuer URL looks like (for the error when none is given).
    pub issuer_example: &'static str,
    pub algorithms: &'static [&'static str],
    /// CEL: the canonical subject.
    pub subject: &'static str,
    /// CEL: the groups, if the issuer sends any.
    pub groups: Option<&'static str>,
    /// Attribute name → the claim it is read from (see [`Claim`]).
    pub attributes: &'static [(&'static str, Claim)],
}

/// Where an attribute comes from.
#[derive(Debug, Clone, Copy)]
pub enum Claim {
    /// A top-level claim, maybe absent (then `""`), any scalar type (as a string).
    Top(&'static str),
    /// A CEL expression of its own.
    Cel(&'static str),
}

impl Claim {
    /// The attribute's CEL expression.
    pub fn cel(self) -> String {
        match self {
            Self::Top(name) => format!(r#"has(assertion.{name}) ? string(assertion.{name}) : """#),
            Self::Cel(e) => e.to_owned(),
        }
    }
}

use Claim::{Cel, Top};

/// AWS STS nests its claims under one namespace claim.
macro_rules! aws {
    ($name:literal) => {
        concat!(
            "\"https://sts.amazonaws.com/\" in assertion && has(assertion[\"https://sts.amazonaws.com/\"].",
            $name,
            ") ? string(assertion[\"https://sts.amazonaws.com/\"].",
            $name,
            ") : \"\""
        )
    };
}

/// A claim whose name is not an identifier (CircleCI's are URLs' hosts and paths), maybe
/// absent (then `""`).
macro_rules! keyed {
    ($name:literal) => {
        concat!(
            "\"",
            $name,
            "\" in assertion ? string(assertion[\"",
            $name,
            "\"]) : \"\""
        )
    };
}

/// The presets, by name.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "github-actions",
        issuer: Some("https://token.actions.githubusercontent.com"),
        issuer_example: "https://token.actions.githubusercontent.com",
        algorithms: &["RS256"],
        subject: r#""github:" + assertion.sub"#,
        groups: None,
        attributes: &[
            ("repository", Top("repository")),
            ("repository_id", Top("repository_id")),
            ("repository_owner", Top("repository_owner")),
            ("repository_owner_id", Top("repository_owner_id")),
            ("repository_visibility", Top("repository_visibility")),
            ("ref", Top("ref")),
            ("ref_type", Top("ref_type")),
            ("ref_protected", Top("ref_protected")),
            ("sha", Top("sha")),
            ("environment", Top("environment")),
            ("event_name", Top("event_name")),
            ("workflow_ref", Top("workflow_ref")),
            ("job_workflow_ref", Top("job_workflow_ref")),
            ("actor", Top("actor")),
            ("actor_id", Top("actor_id")),
            ("head_ref", Top("head_ref")),
            ("base_ref", Top("base_ref")),
            ("runner_environment", Top("runner_environment")),
            ("run_id", Top("run_id")),
            ("run_attempt", Top("run_attempt")),
        ],
    },
    Preset {
        name: "gitlab",
        issuer: Some("https://gitlab.com"),
        issuer_example: "https://gitlab.com (or a self-managed instance's URL)",
        algorithms: &["RS256"],
        subject: r#""gitlab:" + assertion.sub"#,
        groups: None,
        attributes: &[
            ("namespace_id", Top("namespace_id")),
            ("namespace_path", Top("namespace_path")),
            ("project_id", Top("project_id")),
            ("project_path", Top("project_path")),
            ("project_visibility", Top("project_visibility")),
            ("ref", Top("ref")),
            ("ref_type", Top("ref_type")),
            ("ref_path", Top("ref_path")),
            ("ref_protected", Top("ref_protected")),
            ("environment", Top("environment")),
            ("environment_protected", Top("environment_protected")),
            ("deployment_tier", Top("deployment_tier")),
            ("pipeline_source", Top("pipeline_source")),
            ("pipeline_id", Top("pipeline_id")),
            ("job_id", Top("job_id")),
            ("user_id", Top("user_id")),
            ("user_login", Top("user_login")),
            ("runner_environment", Top("runner_environment")),
            ("sha", Top("sha")),
            ("ci_config_ref_uri", Top("ci_config_ref_uri")),
        ],
    },
    Preset {
        name: "kubernetes",
        issuer: None,
        issuer_example: "the cluster's service-account issuer (`kubectl get --raw /.well-known/openid-configuration`), e.g. https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE",
        algorithms: &["RS256", "ES256"],
        subject: r#""k8s:" + assertion.sub"#,
        groups: None,
        attributes: &[
            ("namespace", Cel(r#"assertion["kubernetes.io"].namespace"#)),
            // Named as the claim names them (`serviceaccount`).
            (
                "serviceaccount",
                Cel(r#"assertion["kubernetes.io"].serviceaccount.name"#),
            ),
            (
                "serviceaccount_uid",
                Cel(r#"assertion["kubernetes.io"].serviceaccount.uid"#),
            ),
            (
                "pod",
                Cel(
                    r#"has(assertion["kubernetes.io"].pod) ? assertion["kubernetes.io"].pod.name : """#,
                ),
            ),
            (
                "node",
                Cel(
                    r#"has(assertion["kubernetes.io"].node) ? assertion["kubernetes.io"].node.name : """#,
                ),
            ),
        ],
    },
    Preset {
        name: "spiffe",
        issuer: None,
        issuer_example: "the SPIRE OIDC discovery provider's URL, e.g. https://oidc.spire.example.com",
        algorithms: &["RS256", "ES256", "ES384"],
        subject: "assertion.sub",
        groups: None,
        attributes: &[("spiffe_id", Cel("assertion.sub"))],
    },
    Preset {
        name: "buildkite",
        issuer: Some("https://agent.buildkite.com"),
        issuer_example: "https://agent.buildkite.com",
        algorithms: &["RS256"],
        subject: r#""buildkite:" + assertion.sub"#,
        groups: None,
        attributes: &[
            ("organization_slug", Top("organization_slug")),
            ("organization_id", Top("organization_id")),
            ("pipeline_slug", Top("pipeline_slug")),
            ("pipeline_id", Top("pipeline_id")),
            ("build_number", Top("build_number")),
            ("build_branch", Top("build_branch")),
            ("build_tag", Top("build_tag")),
            ("build_commit", Top("build_commit")),
            ("build_source", Top("build_source")),
            ("step_key", Top("step_key")),
            ("job_id", Top("job_id")),
            ("agent_id", Top("agent_id")),
            ("runner_environment", Top("runner_environment")),
        ],
    },
    Preset {
        name: "circleci",
        issuer: None,
        issuer_example: "https://oidc.circleci.com/org/<organization-id>",
        algorithms: &["RS256"],
        subject: r#""circleci:" + assertion.sub"#,
        groups: Some(
            r#""oidc.circleci.com/context-ids" in assertion ? assertion["oidc.circleci.com/context-ids"] : []"#,
        ),
        attributes: &[
            (
                "project_id",
                Cel(r#"assertion["oidc.circleci.com/project-id"]"#),
            ),
            ("vcs_origin", Cel(keyed!("oidc.circleci.com/vcs-origin"))),
            ("vcs_ref", Cel(keyed!("oidc.circleci.com/vcs-ref"))),
            ("ssh_rerun", Cel(keyed!("oidc.circleci.com/ssh-rerun"))),
        ],
    },
    Preset {
        name: "google",
        issuer: Some("https://accounts.google.com"),
        issuer_example: "https://accounts.google.com",
        algorithms: &["RS256"],
        subject: r#""google:" + assertion.sub"#,
        groups: None,
        attributes: &[
            ("email", Top("email")),
            ("email_verified", Top("email_verified")),
            ("hd", Top("hd")),
            ("azp", Top("azp")),
        ],
    },
    Preset {
        name: "entra",
        issuer: None,
        issuer_example: "https://login.microsoftonline.com/<tenant-id>/v2.0",
        algorithms: &["RS256"],
        subject: r#""entra:" + assertion.tid + ":" + assertion.oid"#,
        groups: Some("has(assertion.roles) ? assertion.roles : []"),
        attributes: &[
            ("tid", Top("tid")),
            ("oid", Top("oid")),
            (
                "app_id",
                Cel(
                    r#"has(assertion.azp) ? assertion.azp : (has(assertion.appid) ? assertion.appid : "")"#,
                ),
            ),
            ("idtyp", Top("idtyp")),
            ("xms_mirid", Top("xms_mirid")),
        ],
    },
    Preset {
        name: "aws",
        issuer: None,
        issuer_example: "the account's outbound identity federation issuer (`aws iam get-outbound-web-identity-federation-info`), e.g. https://abc123-def456.tokens.sts.global.api.aws",
        algorithms: &["RS256", "ES384"],
        subject: r#""aws:" + assertion.sub"#,
        groups: None,
        attributes: &[
            ("principal_arn", Cel("assertion.sub")),
            ("aws_account", Cel(aws!("aws_account"))),
            ("source_region", Cel(aws!("source_region"))),
            ("org_id", Cel(aws!("org_id"))),
            ("ou_path", Cel(aws!("ou_path"))),
        ],
    },
];

/// The preset named `name`.
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Every preset's name, for messages.
pub fn names() -> String {
    PRESETS
        .iter()
        .map(|p| format!("`{}`", p.name))
        .collect::<Vec<_>>()
        .join(", ")
}

impl IssuerConfig {
    /// Fills what the entry leaves out from its preset (nothing without one, or with an
    /// unknown one: validation reports that).
    pub(super) fn apply_preset(&mut self) {
        let Some(preset) = self.preset.as_deref().and_then(find) else {
            if self.algorithms.is_empty() {
                self.algorithms = vec!["RS256".into()];
            }
            return;
        };
        if self.issuer.is_empty()
            && let Some(url) = preset.issuer
        {
            url.clone_into(&mut self.issuer);
        }
        if self.algorithms.is_empty() {
            self.algorithms = preset.algorithms.iter().map(|a| (*a).to_owned()).collect();
        }
        let MappingConfig {
            subject,
            groups,
            attributes,
        } = &mut self.mapping;
        if subject.is_empty() {
            preset.subject.clone_into(subject);
        }
        if groups.is_none() {
            *groups = preset.groups.map(str::to_owned);
        }
        for (name, claim) in preset.attributes {
            attributes
                .entry((*name).to_owned())
                .or_insert_with(|| claim.cel());
        }
    }
}
