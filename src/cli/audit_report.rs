//! `ferry audit report --config F [--since 30d] FILE…`: entitlements nobody uses — permits
//! that allowed nothing, targets nobody obtained, subjects that stopped using a target,
//! and permits broader than their use — from the decisions an audit trail recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config whose policies and targets are judged.
    #[arg(long, short)]
    config: PathBuf,
    /// How far back from `--until` decisions count.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    since: Duration,
    /// A subject that obtained a target in the window but not in this last stretch of it
    /// has stopped using it.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// The end of the window (RFC 3339; default: now).
    #[arg(long, value_parser = humantime::parse_rfc3339)]
    until: Option<std::time::SystemTime>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Audit files (any order).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Idle {
    subject: String,
    target: String,
    /// RFC 3339.
    last_granted: String,
}

#[derive(Debug, Serialize)]
struct Broader {
    policy: String,
    file: String,
    /// What its scope (or the target ids its conditions name) allows.
    permits: Vec<String>,
    /// What it was used for in the window.
    used: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Unused {
    policy: String,
    file: String,
}

#[derive(Debug, Serialize)]
struct Report {
    files: usize,
    decisions: u64,
    /// Decisions inside the window.
    in_window: u64,
    granted: u64,
    from: String,
    until: String,
    permits_that_allowed_nothing: Vec<Unused>,
    targets_nobody_obtained: Vec<String>,
    stopped_using: Vec<Idle>,
    broader_than_use: Vec<Broader>,
}

/// Runs the report; exit 0 (it reports, it does not judge).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (snapshot, _) = match super::load_snapshot(&args.config, false) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let until = args.until.map_or_else(
        || super::system_clock().now(),
        |t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        },
    );
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let from = until.saturating_sub(secs(args.since));
    let idle_from = until.saturating_sub(secs(args.idle));

    let (mut decisions, mut in_window, mut granted) = (0, 0, 0);
    // Per permit policy: the targets it was the reason a grant was made for.
    let mut used_by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut obtained: BTreeSet<String> = BTreeSet::new();
    let mut last: BTreeMap<(String, String), i64> = BTreeMap::new();
    ferry::audit::for_each_decision(&args.files, |line| {
        decisions += 1;
        let Some(time) = line.time.filter(|t| (from..=until).contains(t)) else {
            return;
        };
        in_window += 1;
        let (true, Some(target)) = (line.granted(), &line.target) else {
            return;
        };
        granted += 1;
        obtained.insert(target.clone());
        for id in &line.policy_ids {
            used_by
                .entry(id.clone())
                .or_default()
                .insert(target.clone());
        }
        if let Some(subject) = &line.subject {
            let at = last
                .entry((subject.clone(), target.clone()))
                .or_insert(time);
            *at = (*at).max(time);
        }
    })
    .map_err(anyhow::Error::msg)?;

    let mut all_targets: Vec<String> = snapshot.targets.keys().cloned().collect();
    all_targets.sort();
    let mut report = Report {
        files: args.files.len(),
        decisions,
        in_window,
        granted,
        from: rfc3339(from),
        until: rfc3339(until),
        permits_that_allowed_nothing: Vec::new(),
        targets_nobody_obtained: all_targets
            .iter()
            .filter(|t| !obtained.contains(*t))
            .cloned()
            .collect(),
        stopped_using: last
            .into_iter()
            .filter(|(_, t)| *t < idle_from)
            .map(|((subject, target), t)| Idle {
                subject,
                target,
                last_granted: rfc3339(t),
            })
            .collect(),
        broader_than_use: Vec::new(),
    };
    let mut facts = snapshot.policy.facts();
    facts.sort_by(|a, b| a.id.cmp(&b.id));
    for p in facts.into_iter().filter(|p| p.permit) {
        let Some(used) = used_by.get(&p.id) else {
            report.permits_that_allowed_nothing.push(Unused {
                policy: p.id,
                file: p.file,
            });
            continue;
        };
        let permits: Vec<String> = match &p.targets {
            Some(ids) => ids.clone(),
            None => {
                let named: Vec<String> = all_targets
                    .iter()
                    .filter(|t| p.literals.contains(*t))
                    .cloned()
                    .collect();
                if named.is_empty() {
                    all_targets.clone()
                } else {
                    named
                }
            }
        };
        if permits.len() > 1 && permits.iter().any(|t| !used.contains(t)) {
            report.broader_than_use.push(Broader {
                policy: p.id,
                file: p.file,
                permits,
                used: used.iter().cloned().collect(),
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report, args.idle));
    }
    Ok(ExitCode::SUCCESS)
}

fn rfc3339(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The report in words.
fn text(r: &Report, idle: Duration) -> String {
    use std::fmt::Write as _;
    let e = |s: &str| ferry::text::escape_control(s).into_owned();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} decision(s) in {} file(s); {} from {} to {}, {} granted",
        r.decisions, r.files, r.in_window, r.from, r.until, r.granted
    );
    let section = |out: &mut String, title: &str, lines: Vec<String>| {
        let _ = writeln!(out, "\n{title} ({}):", lines.len());
        if lines.is_empty() {
            out.push_str("  none\n");
        }
        for l in lines {
            let _ = writeln!(out, "  {l}");
        }
    };
    section(
        &mut out,
        "permits that allowed nothing",
        r.permits_that_allowed_nothing
            .iter()
            .map(|u| format!("{} ({})", e(&u.policy), e(&u.file)))
            .collect(),
    );
    section(
        &mut out,
        "targets nobody obtained",
        r.targets_nobody_obtained.iter().map(|t| e(t)).collect(),
    );
    section(
        &mut out,
        &format!(
            "subjects that stopped using a target (no grant in the last {})",
            humantime::format_duration(idle)
        ),
        r.stopped_using
            .iter()
            .map(|i| {
                format!(
                    "{} → {}, last granted {}",
                    e(&i.subject),
                    e(&i.target),
                    i.last_granted
                )
            })
            .collect(),
    );
    section(
        &mut out,
        "permits broader than their use",
        r.broader_than_use
            .iter()
            .map(|b| {
                format!(
                    "{} permits {}; used for {} only",
                    e(&b.policy),
                    b.permits.join(", "),
                    b.used.join(", ")
                )
            })
            .collect(),
    );
    out
}
