//! `ferry test --config F [FILES…]`: trust-mapping test cases run through the whole
//! exchange path as `ferry serve` runs it, but for the signature check and the provider
//! call (the `explain` machinery): issuer condition, mapping, target, policy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use ferry::exchange::TargetSelector;
use ferry::exchange::explain::{ExplainInput, ExplainReport, explain};
use ferry::snapshot::Snapshot;
use ferry::verify::UnverifiedToken;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::embedded::ConfigArg,
    /// Test files (default: the config's own, `<name>.ferry-test.toml` and
    /// `<name>.*.ferry-test.toml` beside it or in `tests/` beside it).
    files: Vec<PathBuf>,
    /// Also write the results as JUnit XML to this file (for CI systems).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write a starter test file for the config's targets to this path (refused if it
    /// exists), then exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["files", "junit"])]
    init: Option<PathBuf>,
}

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    cases: Vec<Case>,
}

/// One case: a request, and what must come out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// The issuer's id (default: the config's only issuer).
    issuer: Option<String>,
    /// Claims, inline; `iss`, `aud`, `iat`, `nbf` and `exp` are filled in when absent.
    claims: Option<Map<String, Value>>,
    /// A JSON file of claims (relative to the test file), filled in the same way.
    claims_file: Option<PathBuf>,
    /// A real token (its signature is not checked).
    token_file: Option<PathBuf>,
    /// The target id (`audience`), or …
    target: Option<String>,
    /// … a target's resource URI.
    resource: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    source_ip: Option<IpAddr>,
    /// Anomaly kinds open for the subject, as policy sees them in `context.anomalies`.
    #[serde(default)]
    anomalies: Vec<String>,
    /// When the request is made (RFC 3339; default: now): what policy sees as
    /// `context.timestamp`.
    time: Option<String>,
    expect: Expect,
    /// The policy ids that determined the answer (the permits of an allow, the forbids
    /// of a deny), in any order.
    policies: Option<Vec<String>>,
    subject: Option<String>,
    groups: Option<Vec<String>>,
    /// Each named attribute must have this value (others are not compared).
    attributes: Option<Map<String, Value>>,
    /// The stage a deny comes from: `verify`, `mapping`, `target`, `policy` or `values`.
    denied_at: Option<Stage>,
    /// The RFC 6749 `error` code a deny is sent with (`invalid_target`, `invalid_request`,
    /// `invalid_scope`).
    error: Option<String>,
    /// Each named target value (an AWS session tag, …) must have this value (others are
    /// not compared).
    values: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Stage {
    Verify,
    Mapping,
    Target,
    Policy,
    Values,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Mapping => "mapping",
            Self::Target => "target",
            Self::Policy => "policy",
            Self::Values => "values",
        }
    }
}

/// One case's outcome: the differences from what was expected (none: passed).
struct Outcome {
    file: String,
    name: String,
    differences: Vec<String>,
}

/// Runs every case; exit 0 when all pass, 1 otherwise (or on a file that cannot be
/// read).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.resolve()?;
    let (snapshot, _warnings) = match super::load_snapshot(config.as_path(), false) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    if let Some(path) = &args.init {
        return init(&snapshot, path);
    }
    let files = if args.files.is_empty() {
        beside(config.as_path())?
    } else {
        args.files.clone()
    };
    if files.is_empty() {
        bail!(
            "no test files: give them, or put *.ferry-test.toml beside {} (ferry test --init FILE writes a starter)",
            config.name()
        );
    }
    let rt = super::tokio_runtime()?;
    let mut outcomes = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let parsed: TestFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.message()))?;
        if parsed.cases.is_empty() {
            bail!("{}: no [[cases]]", file.display());
        }
        let base = file.parent().unwrap_or(Path::new(""));
        for case in &parsed.cases {
            let differences = match rt.block_on(run_case(&snapshot, case, base)) {
                Ok(d) => d,
                Err(e) => vec![format!("cannot run: {e:#}")],
            };
            outcomes.push(Outcome {
                file: file.display().to_string(),
                name: case.name.clone(),
                differences,
            });
        }
    }
    let failed = outcomes
        .iter()
        .filter(|o| !o.differences.is_empty())
        .count();
    for o in outcomes.iter().filter(|o| !o.differences.is_empty()) {
        println!(
            "FAIL {}: {}: {}",
            o.file,
            o.name,
            ferry::text::escape_control(&o.differences.join("; "))
        );
    }
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    if let Some(path) = &args.junit {
        std::fs::write(path, junit(&outcomes))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The config's own test files: `<name>.ferry-test.toml` and `<name>.*.ferry-test.toml`
/// (`<name>` the config file's name without `.toml`) beside it and in `tests/` beside it,
/// sorted.
fn beside(config: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let stem = config
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.strip_suffix(".toml").unwrap_or(n))
        .context("the config path has no file name")?;
    let prefix = format!("{stem}.");
    let dir = config.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let mut files = Vec::new();
    for d in [dir.to_path_buf(), dir.join("tests")] {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        files.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".ferry-test.toml"))
                }),
        );
    }
    files.sort();
    Ok(files)
}

/// Runs one case; the differences from what it expects.
async fn run_case(snap: &Snapshot, case: &Case, base: &Path) -> anyhow::Result<Vec<String>> {
    let now = super::system_clock().now();
    let at = match &case.time {
        None => now,
        Some(t) => {
            let t = humantime::parse_rfc3339(t).map_err(|e| {
                anyhow::anyhow!("time `{t}`: {e} (write e.g. 2026-12-07T09:00:00Z)")
            })?;
            let secs = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            i64::try_from(secs).unwrap_or(i64::MAX)
        }
    };
    let input = input(snap, case, base, now)?;
    let target = match (&case.target, &case.resource) {
        (Some(t), None) => TargetSelector::Audience(t.clone()),
        (None, Some(r)) => TargetSelector::Resource(r.clone()),
        _ => bail!("give target or resource (one of them)"),
    };
    let source_ip = case
        .source_ip
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let anomalies = ferry::anomaly::kind_names(&case.anomalies)
        .map_err(|e| anyhow::anyhow!("anomalies: {e}"))?;
    let request = ferry::exchange::explain::Request {
        target: &target,
        scopes: &case.scopes,
        source_ip,
        client_certificate: None,
        timestamp: at,
        anomalies: &anomalies,
    };
    let report = explain(snap, input, &request).await;
    Ok(compare(case, &report))
}

/// The claims (or token) of a case, with the issuer's `iss`/`aud` and a current lifetime
/// filled in where the case leaves them out.
fn input(snap: &Snapshot, case: &Case, base: &Path, now: i64) -> anyhow::Result<ExplainInput> {
    let mut claims = match (&case.claims, &case.claims_file, &case.token_file) {
        (Some(c), None, None) => c.clone(),
        (None, Some(f), None) => {
            let path = base.join(f);
            let raw =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_slice(&raw)
                .with_context(|| format!("{}: not a JSON object of claims", path.display()))?
        }
        (None, None, Some(f)) => {
            let path = base.join(f);
            let raw = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            // Checked as Ferry reads a token (size, shape), then its payload taken as the
            // claims: the signature is what `ferry test` does not check.
            UnverifiedToken::new(raw.trim())
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            return Ok(ExplainInput::Claims(payload(raw.trim()).with_context(
                || {
                    format!(
                        "{}: the token's payload is not a JSON object",
                        path.display()
                    )
                },
            )?));
        }
        _ => bail!("give one of claims, claims_file and token_file"),
    };
    super::complete_claims(
        snap,
        case.issuer.as_deref(),
        "issuer = \"…\"",
        &mut claims,
        now,
    )?;
    Ok(ExplainInput::Claims(claims))
}

/// A compact JWS's payload, as JSON claims.
fn payload(token: &str) -> Option<Map<String, Value>> {
    use base64::Engine as _;
    let part = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What differs between the case's expectations and the report.
fn compare(case: &Case, report: &ExplainReport) -> Vec<String> {
    let mut diff = Vec::new();
    let stage = |name: &str| report.stages.iter().find(|s| s.stage == name);
    let failed = report.stages.iter().find(|s| s.outcome == "fail");
    let got = if report.allowed { "allow" } else { "deny" };
    let want = match case.expect {
        Expect::Allow => "allow",
        Expect::Deny => "deny",
    };
    if got != want {
        let why = failed.map_or_else(
            || stage("policy").map_or(String::new(), |s| s.detail.clone()),
            |s| format!("{}: {}", s.stage, s.detail),
        );
        diff.push(format!("expected {want}, got {got} ({why})"));
    }
    if let Some(at) = case.denied_at {
        let got_at = failed.map_or("nowhere (allowed)", |s| s.stage);
        if got_at != at.name() {
            diff.push(format!("expected a deny at {}, got {got_at}", at.name()));
        }
    }
    if let Some(want) = &case.error {
        let got = report.error.unwrap_or("nothing (allowed)");
        if got != want {
            diff.push(format!("error: expected {want}, got {got}"));
        }
    }
    if let Some(want) = &case.values {
        let got = stage("values")
            .filter(|s| s.outcome == "pass")
            .and_then(|s| s.data.get("values"));
        for (k, v) in want {
            let g = got.and_then(|a| a.get(k)).and_then(Value::as_str);
            if g != Some(v.as_str()) {
                diff.push(format!(
                    "values.{k}: expected {v:?}, got {}",
                    g.map_or("nothing".to_owned(), |g| format!("{g:?}"))
                ));
            }
        }
    }
    if let Some(want) = &case.policies {
        let mut want = want.clone();
        want.sort();
        let mut got: Vec<String> = stage("policy")
            .and_then(|s| s.data.get("policy_ids"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        got.sort();
        if got != want {
            diff.push(format!("policies: expected {want:?}, got {got:?}"));
        }
    }
    let mapped = stage("mapping")
        .filter(|s| s.outcome == "pass")
        .map(|s| &s.data);
    if let Some(want) = &case.subject {
        let got = mapped
            .and_then(|d| d.get("subject"))
            .and_then(Value::as_str);
        if got != Some(want.as_str()) {
            diff.push(format!("subject: expected {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &case.groups {
        let got: Option<Vec<&str>> = mapped
            .and_then(|d| d.get("groups"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect());
        let mut w: Vec<&str> = want.iter().map(String::as_str).collect();
        w.sort_unstable();
        let sorted = got.map(|mut g| {
            g.sort_unstable();
            g
        });
        if sorted.as_ref() != Some(&w) {
            diff.push(format!("groups: expected {w:?}, got {sorted:?}"));
        }
    }
    if let Some(want) = &case.attributes {
        let got = mapped.and_then(|d| d.get("attributes"));
        for (k, v) in want {
            let g = got.and_then(|a| a.get(k));
            if g != Some(v) {
                diff.push(format!(
                    "attributes.{k}: expected {v}, got {}",
                    g.map_or("nothing".to_owned(), Value::to_string)
                ));
            }
        }
    }
    diff
}

/// JUnit XML: one `testsuite` per file, one `testcase` per case.
fn junit(outcomes: &[Outcome]) -> String {
    let mut by_file: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes {
        by_file.entry(o.file.as_str()).or_default().push(o);
    }
    let failures = outcomes
        .iter()
        .filter(|o| !o.differences.is_empty())
        .count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"ferry test\" tests=\"{}\" failures=\"{failures}\">",
        outcomes.len()
    );
    for (file, cases) in by_file {
        let failed = cases.iter().filter(|o| !o.differences.is_empty()).count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\">",
            xml(file),
            cases.len()
        );
        for o in cases {
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"{}\"",
                xml(file),
                xml(&o.name)
            );
            if o.differences.is_empty() {
                out.push_str("/>\n");
            } else {
                let text = o.differences.join("\n");
                let _ = writeln!(
                    out,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    xml(o.differences.first().map_or("", String::as_str)),
                    xml(&text)
                );
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// Text escaped for XML content and attributes (control characters dropped: XML 1.0
/// cannot carry them).
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A starter file: one case per target, for the first issuer, expecting what any
/// identity without the claims policies look for gets — a deny at policy — for the
/// operator to turn into the cases that matter.
fn init(snap: &Snapshot, path: &Path) -> anyhow::Result<ExitCode> {
    if path.exists() {
        bail!(
            "{} exists; ferry test --init writes only a new file",
            path.display()
        );
    }
    let issuer = snap
        .config
        .issuers
        .first()
        .context("the config has no issuer")?;
    let mut out = String::from(
        "# Trust-mapping tests: `ferry test --config <config> <this file>`.\n\
         # Each case runs condition, mapping, target and policy as `ferry serve` would\n\
         # (no signature check, no cloud call). Keys: name, issuer, claims | claims_file |\n\
         # token_file, target | resource, scopes, source_ip, time, expect = \"allow\" | \"deny\",\n\
         # and optionally policies, subject, groups, attributes, denied_at, error, values.\n",
    );
    let mut ids: Vec<&String> = snap.targets.keys().collect();
    ids.sort();
    for id in ids {
        let _ = write!(
            out,
            "\n[[cases]]\nname = \"an unknown workload gets nothing from {id}\"\nissuer = \"{}\"\nclaims = {{ sub = \"replace-me\" }}\ntarget = \"{id}\"\nexpect = \"deny\"\n",
            issuer.id
        );
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "{}: a starter with {} case(s)",
        path.display(),
        snap.targets.len()
    );
    Ok(ExitCode::SUCCESS)
}
