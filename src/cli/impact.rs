//! `ferry impact --from OLD --to NEW --audit FILE…`: replays the decisions an audit trail
//! recorded (with `[audit] record_identity`) against two configs and reports every one
//! that would change, grouped, with an exit code a CI job can gate on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use ferry::audit::AuditRequest;
use ferry::exchange::TargetSelector;
use ferry::exchange::explain::{Request, Verdict, from_identity};
use ferry::mapping::Identity;
use ferry::snapshot::Snapshot;
use serde::Serialize;

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config in force (the one the audit files were written under).
    #[arg(long, value_name = "OLD.toml")]
    from: PathBuf,
    /// The proposed config.
    #[arg(long, value_name = "NEW.toml")]
    to: PathBuf,
    /// Audit files to replay (any order; every `decision` line is read).
    #[arg(long, value_name = "FILE", required = true, num_args = 1..)]
    audit: Vec<PathBuf>,
    /// Exit 2 when a change of these kinds is found (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "KINDS")]
    fail_on: Vec<ChangeKind>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Subjects listed per group of changes.
    #[arg(long, default_value_t = 3)]
    examples: usize,
}

/// How a replayed decision changed between the two configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize, Hash)]
#[serde(rename_all = "kebab-case")]
enum ChangeKind {
    /// Allowed under the old config, denied under the new.
    AllowToDeny,
    /// Denied under the old config, allowed under the new.
    DenyToAllow,
    /// Same answer, other determining policies.
    Policies,
    /// Allowed by both, with other target values (session tags, …).
    Values,
}

impl ChangeKind {
    fn title(self) -> &'static str {
        match self {
            Self::AllowToDeny => "allow → deny",
            Self::DenyToAllow => "deny → allow",
            Self::Policies => "determining policies changed",
            Self::Values => "target values changed",
        }
    }
}

/// Changes that share a kind, a target and both outcomes.
#[derive(Debug, Default, Serialize)]
struct Group {
    kind: Option<ChangeKind>,
    target: String,
    from: String,
    to: String,
    count: u64,
    subjects: BTreeSet<String>,
}

/// The whole report.
#[derive(Debug, Default, Serialize)]
struct Report {
    files: usize,
    decisions: u64,
    replayed: u64,
    /// Lines without a recorded identity: before `[audit] record_identity`.
    skipped_not_recorded: u64,
    /// Lines with the request recorded but no identity: refused before mapping.
    skipped_before_mapping: u64,
    /// Replays under the old config that differ from what policy recorded.
    unreproduced: u64,
    changes: Vec<Group>,
    /// Issuers whose condition or mapping differs between the configs.
    mappings_changed: Vec<String>,
    /// Shadow-policy disagreements the lines recorded.
    shadow_allow_to_deny: u64,
    shadow_deny_to_allow: u64,
}

/// Runs the replay; exit 0, or 2 when a change named by `--fail-on` is found.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (old, _) = match super::load_snapshot(&args.from, false) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (new, _) = match super::load_snapshot(&args.to, false) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let mut report = Report {
        files: args.audit.len(),
        mappings_changed: mappings_changed(&old, &new),
        ..Report::default()
    };
    let mut groups: BTreeMap<(ChangeKind, String, String, String), Group> = BTreeMap::new();
    ferry::audit::for_each_decision(&args.audit, |line| {
        report.decisions += 1;
        let enforced = line.policy_decision.as_deref().map(|d| d == "allow");
        match (enforced, line.shadow_decision.as_deref()) {
            (Some(false), Some("allow")) => report.shadow_deny_to_allow += 1,
            (Some(true), Some("deny" | "error")) => report.shadow_allow_to_deny += 1,
            _ => {}
        }
        let (Some(request), Some(identity), Some(issuer)) =
            (&line.request, &line.identity, &line.issuer)
        else {
            if line.request.is_some() {
                report.skipped_before_mapping += 1;
            } else {
                report.skipped_not_recorded += 1;
            }
            return;
        };
        let Some(selector) = selector(request) else {
            report.skipped_not_recorded += 1;
            return;
        };
        report.replayed += 1;
        let identity = Identity {
            issuer_id: issuer.clone(),
            subject: identity.subject.clone(),
            groups: identity.groups.clone(),
            attributes: identity.attributes.clone(),
        };
        let replay = |snap: &Snapshot| {
            from_identity(
                snap,
                &identity,
                &Request {
                    target: &selector,
                    scopes: &request.scopes,
                    source_ip: request.source_ip,
                    client_certificate: request.client_certificate.as_ref(),
                    timestamp: line.time.unwrap_or(0),
                    anomalies: &[],
                },
            )
        };
        let (before, after) = (replay(&old), replay(&new));
        // What policy decided then (or, refused before policy, the outcome), against the
        // old config's replay: a difference means another revision decided, or a stage
        // the replay does not run refused (a per-subject rate limit).
        if enforced.unwrap_or(line.granted()) != before.verdict.allowed {
            report.unreproduced += 1;
        }
        let Some(kind) = change(&before.verdict, &after.verdict) else {
            return;
        };
        let target = after
            .verdict
            .target
            .clone()
            .or_else(|| before.verdict.target.clone())
            .unwrap_or_else(|| requested(&selector));
        let (from, to) = describe(kind, &before, &after);
        let group = groups
            .entry((kind, target.clone(), from.clone(), to.clone()))
            .or_insert_with(|| Group {
                kind: Some(kind),
                target,
                from,
                to,
                ..Group::default()
            });
        group.count += 1;
        group
            .subjects
            .insert(line.subject.unwrap_or(identity.subject));
    })
    .map_err(anyhow::Error::msg)?;
    report.changes = groups.into_values().collect();
    report.changes.sort_by(|a, b| {
        (a.kind, std::cmp::Reverse(a.count)).cmp(&(b.kind, std::cmp::Reverse(b.count)))
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report, args.examples));
    }
    let gated = report
        .changes
        .iter()
        .any(|g| g.kind.is_some_and(|k| args.fail_on.contains(&k)));
    Ok(if gated {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The target as the recorded request named it.
fn selector(request: &AuditRequest) -> Option<TargetSelector> {
    match (&request.audience, &request.resource) {
        (Some(a), _) => Some(TargetSelector::Audience(a.clone())),
        (None, Some(r)) => Some(TargetSelector::Resource(r.clone())),
        (None, None) => None,
    }
}

fn requested(selector: &TargetSelector) -> String {
    match selector {
        TargetSelector::Audience(a) | TargetSelector::Resource(a) => a.clone(),
    }
}

/// What kind of change, if any.
fn change(before: &Verdict, after: &Verdict) -> Option<ChangeKind> {
    match (before.allowed, after.allowed) {
        (true, false) => Some(ChangeKind::AllowToDeny),
        (false, true) => Some(ChangeKind::DenyToAllow),
        _ if before.policy_ids != after.policy_ids => Some(ChangeKind::Policies),
        (true, true) if before.values != after.values => Some(ChangeKind::Values),
        _ => None,
    }
}

/// Both outcomes in words: the deciding stage's detail, or for changed values, the
/// values that differ.
fn describe(
    kind: ChangeKind,
    before: &ferry::exchange::explain::Decided,
    after: &ferry::exchange::explain::Decided,
) -> (String, String) {
    if kind != ChangeKind::Values {
        return (before.verdict.reason.clone(), after.verdict.reason.clone());
    }
    let (b, a) = (&before.verdict.values, &after.verdict.values);
    let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    let show = |m: &BTreeMap<String, String>, k: &String| {
        m.get(k)
            .map_or_else(|| "(none)".to_owned(), |v| format!("{v:?}"))
    };
    let (mut from, mut to) = (Vec::new(), Vec::new());
    for k in keys.into_iter().filter(|k| b.get(*k) != a.get(*k)) {
        from.push(format!("{k}={}", show(b, k)));
        to.push(format!("{k}={}", show(a, k)));
    }
    (from.join(" "), to.join(" "))
}

/// Issuers whose condition or mapping differs between the two configs (a replay starts
/// from the recorded identity, so such a change is not reflected in it).
fn mappings_changed(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    new.config
        .issuers
        .iter()
        .filter(|n| {
            old.config
                .issuers
                .iter()
                .find(|o| o.id == n.id)
                .is_some_and(|o| o.condition != n.condition || o.mapping != n.mapping)
        })
        .map(|n| n.id.clone())
        .collect()
}

/// The report in words.
fn text(r: &Report, examples: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} decision(s) in {} file(s): {} replayed, {} skipped ({} recorded without [audit] record_identity, {} refused before mapping)",
        r.decisions,
        r.files,
        r.replayed,
        r.skipped_not_recorded + r.skipped_before_mapping,
        r.skipped_not_recorded,
        r.skipped_before_mapping
    );
    let mut kinds: BTreeMap<ChangeKind, Vec<&Group>> = BTreeMap::new();
    for g in &r.changes {
        if let Some(k) = g.kind {
            kinds.entry(k).or_default().push(g);
        }
    }
    if kinds.is_empty() {
        out.push_str("no decision changes\n");
    }
    for (kind, groups) in &kinds {
        let total: u64 = groups.iter().map(|g| g.count).sum();
        let _ = writeln!(out, "\n{}: {total} decision(s)", kind.title());
        for g in groups {
            let shown: Vec<String> = g
                .subjects
                .iter()
                .take(examples)
                .map(|s| ferry::text::escape_control(s).into_owned())
                .collect();
            let more = g.subjects.len().saturating_sub(shown.len());
            let _ = writeln!(
                out,
                "  {:>5}  target {}: {}\n         → {}\n         subjects: {}{}",
                g.count,
                ferry::text::escape_control(&g.target),
                ferry::text::escape_control(&g.from),
                ferry::text::escape_control(&g.to),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
    }
    if !r.mappings_changed.is_empty() {
        let _ = writeln!(
            out,
            "\nnote: the condition or mapping of issuer(s) {} differs; decisions are replayed from the recorded identity, so that change is not reflected (test it with ferry test)",
            r.mappings_changed.join(", ")
        );
    }
    if r.unreproduced > 0 {
        let _ = writeln!(
            out,
            "\nnote: {} recorded decision(s) differ from the old config's replay (decided under another revision, or refused by a stage a replay does not run, such as a rate limit)",
            r.unreproduced
        );
    }
    if r.shadow_allow_to_deny + r.shadow_deny_to_allow > 0 {
        let _ = writeln!(
            out,
            "\nshadow policies in the audit files disagreed {} time(s): allow → deny {}, deny → allow {}",
            r.shadow_allow_to_deny + r.shadow_deny_to_allow,
            r.shadow_allow_to_deny,
            r.shadow_deny_to_allow
        );
    }
    out
}
