//! Trust mappings as code against a real `ferry serve`: shadow policies counted over a
//! socket and written in the audit trail, and `ferry impact` replaying that trail
//! against an old and a new config.
#![cfg(test)]

#[path = "common/dev.rs"]
mod dev;

use dev::{Serve, serve};

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

/// The policies in force: deployers read the internal API; writes need the infra
/// repository; deployers may have the tagged AWS role.
const OLD_POLICY: &str = r#"
@id("read")
permit (principal in Ferry::Group::"deployers", action, resource == Ferry::Target::"internal-api")
when { !context.scopes.contains("write") };

@id("write")
permit (principal in Ferry::Group::"deployers", action, resource == Ferry::Target::"internal-api")
when { principal.attributes.repository == "acme/infra" };

@id("tagged")
permit (principal in Ferry::Group::"deployers", action, resource == Ferry::Target::"aws-tagged");
"#;

/// The proposed policies: alice loses read, the write permit is renamed, carol gains read.
const NEW_POLICY: &str = r#"
@id("read")
permit (principal in Ferry::Group::"deployers", action, resource == Ferry::Target::"internal-api")
when { !context.scopes.contains("write") && principal.subject != "dev:alice" };

@id("infra-write")
permit (principal in Ferry::Group::"deployers", action, resource == Ferry::Target::"internal-api")
when { principal.attributes.repository == "acme/infra" };

@id("tagged")
permit (principal in Ferry::Group::"deployers", action, resource == Ferry::Target::"aws-tagged");

@id("carol")
permit (principal, action, resource == Ferry::Target::"internal-api")
when { principal.subject == "dev:carol" };
"#;

/// An assume-role target whose session tag comes from the identity; its STS is a closed
/// loopback port, so a granted exchange reaches policy and then fails upstream.
fn tagged_target(tag: &str) -> String {
    format!(
        r#"
[[targets]]
id = "aws-tagged"
kind = "aws"
mode = "assume_role"
role_arn = "arn:aws:iam::123456789012:role/tagged"
region = "us-east-1"
endpoint = "http://127.0.0.1:9"
session_tags = {{ env = '{tag}' }}
"#
    )
}

/// A config in `dir` named `name`: the dev issuer, `policy` (written beside it) and
/// `policy_extra` in `[policy]`, the tagged target with `tag`, and `extra` appended.
fn config(
    dir: &Path,
    name: &str,
    (policy, policy_extra): (&str, &str),
    tag: &str,
    extra: &str,
) -> std::path::PathBuf {
    let policy_file = format!("{name}.cedar");
    std::fs::write(dir.join(&policy_file), policy).unwrap();
    let text = dev::dev_config_with_policy(dir, &(tagged_target(tag) + extra), "").replace(
        "files = [\"exchange.cedar\"]",
        &format!("files = [\"{policy_file}\"]\n{policy_extra}"),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// One exchange: the status.
fn exchange(s: &Serve, claims: &[&str], target: &str, scope: Option<&str>) -> u16 {
    let token = dev::dev_token(claims);
    let mut form = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", token.as_str()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("audience", target),
    ];
    form.extend(scope.map(|s| ("scope", s)));
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    client
        .post(format!("{}/oauth2/token", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).unwrap())
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn metric(s: &Serve, series: &str) -> Option<u64> {
    let text = reqwest::blocking::get(format!("{}/metrics", s.base))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// `ferry test --config cfg` on `cases` (written to `dir/cases.ferry-test.toml`): its
/// output and the cases file's path.
fn ferry_test(dir: &Path, cfg: &Path, cases: &str) -> (Output, std::path::PathBuf) {
    let file = dir.join("cases.ferry-test.toml");
    std::fs::write(&file, cases).unwrap();
    let out = ferry(&[
        "test",
        "--config",
        cfg.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    (out, file)
}

/// `ferry impact --from old --to new --audit audit`, plus `extra`.
fn impact(old: &Path, new: &Path, audit: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "impact",
        "--from",
        old.to_str().unwrap(),
        "--to",
        new.to_str().unwrap(),
        "--audit",
        audit.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ferry(&args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn shadow_policies_are_counted_and_audited_and_impact_replays_exactly_the_flips() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let audit_section = |record: bool| {
        format!(
            "\n[audit]\nfile = \"{}\"\nrecord_identity = {record}\n",
            audit.display()
        )
    };
    let deployer = ["sub=frank", "groups=[\"deployers\"]"];

    // A decision made before the identity was recorded.
    let before = config(
        dir.path(),
        "before",
        (OLD_POLICY, ""),
        "identity.attributes.environment",
        &audit_section(false),
    );
    {
        let s = serve(&before);
        assert_eq!(exchange(&s, &deployer, "internal-api", Some("read")), 200);
    }

    // The config in force, with the proposed policies as its shadow set.
    std::fs::write(dir.path().join("shadow.cedar"), NEW_POLICY).unwrap();
    let old = config(
        dir.path(),
        "old",
        (OLD_POLICY, "shadow_files = [\"shadow.cedar\"]"),
        "identity.attributes.environment",
        &audit_section(true),
    );
    let s = serve(&old);
    assert_eq!(
        metric(
            &s,
            "ferry_shadow_disagreements_total{direction=\"allow_to_deny\"}"
        ),
        Some(0),
        "exported at 0 before any disagreement"
    );
    let alice = ["sub=alice", "groups=[\"deployers\"]"];
    let bob = [
        "sub=bob",
        "groups=[\"deployers\"]",
        "repository=\"acme/infra\"",
    ];
    assert_eq!(exchange(&s, &alice, "internal-api", Some("read")), 200);
    assert_eq!(exchange(&s, &bob, "internal-api", Some("write")), 200);
    assert_eq!(
        exchange(&s, &["sub=carol"], "internal-api", Some("read")),
        400
    );
    let dave = ["sub=dave", "groups=[\"deployers\"]"];
    assert_eq!(exchange(&s, &dave, "internal-api", Some("read")), 200);
    assert_eq!(
        exchange(&s, &["sub=blocked"], "internal-api", None),
        400,
        "the issuer's condition refuses it before mapping"
    );
    let erin = ["sub=erin", "groups=[\"deployers\"]"];
    assert_eq!(
        exchange(&s, &erin, "aws-tagged", None),
        503,
        "permitted, then STS is unreachable"
    );
    // alice: allowed, the shadow set denies; carol: denied, the shadow set allows.
    assert_eq!(
        metric(
            &s,
            "ferry_shadow_disagreements_total{direction=\"allow_to_deny\"}"
        ),
        Some(1)
    );
    assert_eq!(
        metric(
            &s,
            "ferry_shadow_disagreements_total{direction=\"deny_to_allow\"}"
        ),
        Some(1)
    );
    drop(s);

    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &Value| l["type"] == "decision")
        .collect();
    assert_eq!(lines.len(), 7);
    let by = |sub: &str| {
        lines
            .iter()
            .find(|l| l["token_sub"] == sub)
            .unwrap_or_else(|| panic!("no line for {sub}"))
    };
    assert!(by("frank").get("identity").is_none(), "not recorded then");
    let alice_line = by("alice");
    assert_eq!(alice_line["decision"], "allow");
    assert_eq!(alice_line["policy_decision"], "allow");
    assert_eq!(alice_line["shadow_decision"], "deny");
    assert_eq!(by("erin")["decision"], "deny");
    assert_eq!(by("erin")["policy_decision"], "allow");
    assert_eq!(alice_line["shadow_policy_ids"], serde_json::json!([]));
    assert_eq!(
        alice_line["identity"],
        serde_json::json!({"subject": "dev:alice", "groups": ["deployers"], "attributes": {"environment": "dev", "repository": ""}})
    );
    assert_eq!(
        alice_line["request"],
        serde_json::json!({"audience": "internal-api", "scopes": ["read"], "source_ip": "127.0.0.1"})
    );
    assert_eq!(
        by("carol")["shadow_policy_ids"],
        serde_json::json!(["carol"])
    );
    assert!(by("blocked").get("identity").is_none());
    assert!(by("blocked").get("request").is_some());
    for line in &lines {
        let raw = line.to_string();
        assert!(!raw.contains("eyJ"), "no token in the audit trail: {raw}");
    }

    // The proposed config: the shadow policies enforced, the session tag changed.
    let new = config(
        dir.path(),
        "new",
        (NEW_POLICY, ""),
        "\"prod-\" + identity.attributes.environment",
        "",
    );
    let run = |extra: &[&str]| impact(&old, &new, &audit, extra);
    let out = run(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["decisions"], 7);
    assert_eq!(report["replayed"], 5);
    assert_eq!(report["skipped_not_recorded"], 1);
    assert_eq!(report["skipped_before_mapping"], 1);
    assert_eq!(
        report["unreproduced"], 0,
        "erin's grant failed upstream, after policy allowed it"
    );
    assert_eq!(report["shadow_allow_to_deny"], 1, "{lines:#?}");
    assert_eq!(report["shadow_deny_to_allow"], 1);
    let changes: Vec<(String, String, u64, Vec<String>)> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["kind"].as_str().unwrap().to_owned(),
                g["target"].as_str().unwrap().to_owned(),
                g["count"].as_u64().unwrap(),
                g["subjects"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect();
    let want = |kind: &str, target: &str, subject: &str| {
        (
            kind.to_owned(),
            target.to_owned(),
            1,
            vec![subject.to_owned()],
        )
    };
    assert_eq!(
        changes,
        vec![
            want("allow-to-deny", "internal-api", "dev:alice"),
            want("deny-to-allow", "internal-api", "dev:carol"),
            want("policies", "internal-api", "dev:bob"),
            want("values", "aws-tagged", "dev:erin"),
        ]
    );
    let values = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["kind"] == "values")
        .unwrap();
    assert_eq!(values["from"], "session_tag:env=\"dev\"");
    assert_eq!(values["to"], "session_tag:env=\"prod-dev\"");

    // Text, and the gate.
    let out = run(&["--fail-on", "allow-to-deny,deny-to-allow"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("7 decision(s) in 1 file(s): 5 replayed, 2 skipped (1 recorded without [audit] record_identity, 1 refused before mapping)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\nallow → deny: 1 decision(s)\n      1  target internal-api: permitted by read\n         → denied: no policy permits this identity for this target\n         subjects: dev:alice\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\ndetermining policies changed: 1 decision(s)\n      1  target internal-api: permitted by write\n         → permitted by infra-write\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "shadow policies in the audit files disagreed 2 time(s): allow → deny 1, deny → allow 1"
        ),
        "{stdout}"
    );
    let out = run(&["--fail-on", "values"]);
    assert_eq!(out.status.code(), Some(2));
    // Replaying a config against itself changes nothing.
    let same = impact(
        &old,
        &old,
        &audit,
        &["--fail-on", "allow-to-deny,deny-to-allow,policies,values"],
    );
    assert_eq!(same.status.code(), Some(0), "{}", text(&same.stdout));
    assert!(text(&same.stdout).contains("\nno decision changes\n"));

    // Unused entitlements, judged against a config with a broad permit and an unused one.
    let report_cfg = config(
        dir.path(),
        "report",
        (
            r#"
@id("read")
permit (principal in Ferry::Group::"deployers", action, resource)
when { !context.scopes.contains("write") };

@id("write")
permit (principal in Ferry::Group::"deployers", action, resource == Ferry::Target::"internal-api")
when { principal.attributes.repository == "acme/infra" };

@id("unused")
permit (principal, action, resource == Ferry::Target::"aws-tagged")
when { principal.subject == "dev:nobody" };
"#,
            "",
        ),
        "identity.attributes.environment",
        "",
    );
    let report = |extra: &[&str]| {
        let mut a = vec!["audit", "report", "--config", report_cfg.to_str().unwrap()];
        a.extend_from_slice(extra);
        a.push(audit.to_str().unwrap());
        let out = ferry(&a);
        assert!(out.status.success(), "{}", text(&out.stderr));
        out
    };
    let r: Value = serde_json::from_slice(&report(&["--json"]).stdout).unwrap();
    assert_eq!(r["decisions"], 7);
    assert_eq!(r["granted"], 4, "frank, alice, bob, dave");
    assert_eq!(
        r["permits_that_allowed_nothing"],
        serde_json::json!([{"policy": "unused", "file": dir.path().join("report.cedar").display().to_string()}])
    );
    assert_eq!(
        r["targets_nobody_obtained"],
        serde_json::json!(["aws-tagged"])
    );
    assert_eq!(r["stopped_using"], serde_json::json!([]));
    assert_eq!(
        r["broader_than_use"][0]["permits"],
        serde_json::json!(["aws-tagged", "internal-api"])
    );
    assert_eq!(
        r["broader_than_use"][0]["used"],
        serde_json::json!(["internal-api"])
    );
    assert_eq!(r["broader_than_use"].as_array().unwrap().len(), 1);
    // Eight days on, every subject has stopped using what it had; 40 days on, nothing is
    // in the window.
    let later = |days: u64| {
        let t = std::time::SystemTime::now() + Duration::from_secs(days * 86_400);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    let out = report(&["--until", &later(8)]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("\nsubjects that stopped using a target (no grant in the last 7days) (4):\n  dev:alice → internal-api, last granted "),
        "{stdout}"
    );
    assert!(
        stdout.contains("\npermits broader than their use (1):\n  read permits aws-tagged, internal-api; used for internal-api only\n"),
        "{stdout}"
    );
    let r: Value =
        serde_json::from_slice(&report(&["--json", "--until", &later(40)]).stdout).unwrap();
    assert_eq!(r["in_window"], 0);
    assert_eq!(
        r["permits_that_allowed_nothing"].as_array().unwrap().len(),
        3
    );

    // Not an audit file: a clear error naming the line.
    let junk = dir.path().join("junk.log");
    std::fs::write(&junk, "{\"type\":\"decision\"}\nnot json\n").unwrap();
    let out = impact(&old, &new, &junk, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!(
            "{}: line 2: not a JSON audit line",
            junk.display()
        )),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn ferry_test_checks_the_refusal_code_and_the_target_values() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "tagged",
        (OLD_POLICY, ""),
        "identity.attributes.environment",
        "",
    );
    let (out, cases) = ferry_test(
        dir.path(),
        &cfg,
        r#"
[[cases]]
name = "a deployer's session is tagged with its environment"
claims = { sub = "erin", groups = ["deployers"], environment = "staging" }
target = "aws-tagged"
expect = "allow"
values = { "session_tag:env" = "staging" }

[[cases]]
name = "an outsider is refused with invalid_target"
claims = { sub = "mallory" }
target = "aws-tagged"
expect = "deny"
error = "invalid_target"
denied_at = "policy"

[[cases]]
name = "a scope the target lacks"
claims = { sub = "erin", groups = ["deployers"] }
target = "internal-api"
scopes = ["admin"]
expect = "deny"
error = "invalid_scope"

[[cases]]
name = "wrong on both counts"
claims = { sub = "erin", groups = ["deployers"] }
target = "aws-tagged"
expect = "allow"
values = { "session_tag:env" = "prod" }
error = "invalid_request"
"#,
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!(
            "FAIL {}: wrong on both counts: error: expected invalid_request, got nothing (allowed); values.session_tag:env: expected \"prod\", got \"dev\"\n",
            cases.display()
        )),
        "{stdout}"
    );
    assert!(stdout.ends_with("3 passed, 1 failed\n"), "{stdout}");
}

#[test]
fn shadow_files_are_checked_like_enforced_ones_and_explain_shows_their_verdict() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.cedar"),
        "@id(\"typo\")\npermit (principal, action, resource) when { principal.attributes.nope == \"x\" };\n",
    )
    .unwrap();
    let cfg = config(
        dir.path(),
        "checked",
        (
            OLD_POLICY,
            "shadow_files = [\"bad.cedar\", \"missing/*.cedar\"]",
        ),
        "identity.attributes.environment",
        "",
    );
    let out = ferry(&["check", "--config", cfg.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = cfg.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}: policy.shadow_files: `missing/*.cedar` matches no file"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}: policy `typo`: ",
            dir.path().join("bad.cedar").display()
        )),
        "validated against the schema like an enforced file: {stderr}"
    );

    std::fs::write(dir.path().join("shadow.cedar"), NEW_POLICY).unwrap();
    let cfg = config(
        dir.path(),
        "shadowed",
        (OLD_POLICY, "shadow_files = [\"shadow.cedar\"]"),
        "identity.attributes.environment",
        "",
    );
    let claims = dir.path().join("alice.json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(
        &claims,
        serde_json::json!({"iss": "https://dev-issuer.ferry.invalid", "aud": "ferry", "sub": "alice", "groups": ["deployers"], "iat": now, "exp": now + 600}).to_string(),
    )
    .unwrap();
    let out = ferry(&[
        "explain",
        "--config",
        cfg.to_str().unwrap(),
        "--target",
        "internal-api",
        "--scope",
        "read",
        "--claims",
        claims.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(
            "policy   pass    permitted by read; the shadow policies would deny (no policy applies)"
        ),
        "{stdout}"
    );
}

/// A config with `issuers` and `targets`, and `policy` as its one policy file.
fn preset_config(dir: &Path, issuers: &str, policy: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("p.cedar"), policy).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\npublic_url = \"http://127.0.0.1:8080\"\n[store]\nbackend = \"memory\"\n[signing]\nephemeral = true\n{issuers}\n\
         [[targets]]\nid = \"aws-deploy\"\nkind = \"aws\"\nmode = \"web_identity\"\nrole_arn = \"arn:aws:iam::123456789012:role/deploy\"\nregion = \"us-east-1\"\n\
         [[targets]]\nid = \"api\"\nkind = \"jwt\"\naudience = \"https://api\"\n\
         [policy]\nfiles = [\"p.cedar\"]\n"
    );
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn each_preset_lint_fires_on_a_config_that_trips_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = preset_config(
        dir.path(),
        r#"
[[issuers]]
id = "github"
preset = "github-actions"
audiences = ["ferry"]
condition = 'assertion.repository_owner == "acme" && assertion.sub.startsWith("repo:acme/")'

[[issuers]]
id = "k8s"
preset = "kubernetes"
issuer = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE"
audiences = ["sts.amazonaws.com"]
condition = 'assertion["kubernetes.io"].namespace == "ci"'
"#,
        r#"
@id("by-owner-name")
permit (principal, action, resource == Ferry::Target::"aws-deploy")
when { principal.issuer == "github" && principal.attributes has repository_owner && principal.attributes.repository_owner == "acme" };

@id("pull-requests-deploy")
permit (principal, action, resource == Ferry::Target::"aws-deploy")
when { principal.attributes has event_name && principal.attributes.event_name == "pull_request" };

@id("subject-wildcard")
permit (principal, action, resource == Ferry::Target::"api")
when { principal.subject like "github:repo:acme/*" };

@id("kubernetes-only")
permit (principal, action, resource == Ferry::Target::"aws-deploy")
when { principal.issuer == "k8s" };
"#,
    );
    let out = ferry(&["check", "--config", cfg.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "warnings only: {stderr}");
    let file = cfg.display().to_string();
    let policies = dir.path().join("p.cedar").display().to_string();
    let expected = [
        format!(
            "{file}: issuers[github].condition: warning: trusts `repository_owner` by name without `repository_owner_id`"
        ),
        format!("{file}: issuers[github].condition: warning: matches `sub` by a pattern"),
        format!(
            "{policies}: policy `by-owner-name`: warning: trusts `repository_owner` by name without `repository_owner_id`"
        ),
        format!(
            "{policies}: policy `by-owner-name`: warning: permits cloud target(s) aws-deploy without reading `ref`, `environment` or `event_name` (nor does issuer `github`'s condition)"
        ),
        format!(
            "{policies}: policy `pull-requests-deploy`: warning: permits cloud target(s) aws-deploy to `pull_request` runs"
        ),
        format!(
            "{policies}: policy `subject-wildcard`: warning: matches `principal.subject` with `like`"
        ),
        format!(
            "{file}: issuers[k8s].audiences: warning: `sts.amazonaws.com` is an audience service-account tokens carry by default"
        ),
    ];
    for line in &expected {
        assert!(
            stderr.contains(line.as_str()),
            "missing {line:?} in:\n{stderr}"
        );
    }
    let lint_lines = stderr
        .lines()
        .filter(|l| {
            [
                "repository_owner`",
                "matches `",
                "permits cloud",
                "carry by default",
            ]
            .iter()
            .any(|m| l.contains(m))
        })
        .count();
    assert_eq!(
        lint_lines,
        expected.len(),
        "no other lint fired (the Kubernetes-only policy is not GitHub's):\n{stderr}"
    );

    // The shipped presets example follows the advice: none of these fire there.
    let out = ferry(&[
        "check",
        "--config",
        dev::repo()
            .join("config/presets.example.toml")
            .to_str()
            .unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for marker in [
        "repository_owner`",
        "matches `",
        "permits cloud",
        "carry by default",
    ] {
        assert!(!stderr.contains(marker), "{marker}: {stderr}");
    }
}

#[test]
fn a_preset_fills_only_what_the_entry_leaves_out_and_bad_presets_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let policy = "@id(\"p\")\npermit (principal, action, resource == Ferry::Target::\"api\") when { principal.issuer == \"gh\" };\n";
    // Overrides win: a subject of the operator's, an extra attribute, one preset
    // attribute replaced.
    let cfg = preset_config(
        dir.path(),
        r#"
[[issuers]]
id = "gh"
preset = "github-actions"
audiences = ["ferry"]
condition = 'assertion.repository_owner_id == "1"'
[issuers.mapping]
subject = 'assertion.repository + "@" + assertion.ref'
[issuers.mapping.attributes]
ref = '"branch:" + assertion.ref'
team = '"platform"'
"#,
        policy,
    );
    let (out, _) = ferry_test(
        dir.path(),
        &cfg,
        r#"
[[cases]]
name = "overrides and the preset's attributes"
claims = { sub = "repo:acme/infra:ref:refs/heads/main", repository = "acme/infra", repository_owner_id = "1", ref = "refs/heads/main", run_attempt = "2" }
target = "api"
expect = "allow"
subject = "acme/infra@refs/heads/main"
attributes = { ref = "branch:refs/heads/main", team = "platform", repository = "acme/infra", run_attempt = "2", environment = "" }
"#,
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let cfg = preset_config(
        dir.path(),
        r#"
[[issuers]]
id = "gh"
preset = "github"
audiences = ["ferry"]

[[issuers]]
id = "k8s"
preset = "kubernetes"
audiences = ["ferry"]

[[issuers]]
id = "plain"
issuer = "https://idp.example.com"
audiences = ["ferry"]
"#,
        policy,
    );
    let out = ferry(&["check", "--config", cfg.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = cfg.display().to_string();
    for line in [
        format!(
            "{file}: issuers[gh].preset: unknown preset `github` (one of `github-actions`, `gitlab`, `kubernetes`, `spiffe`, `buildkite`, `circleci`, `google`, `entra`, `aws`)"
        ),
        format!(
            "{file}: issuers[k8s].issuer: is required with preset `kubernetes` (its URL depends on the deployment): the cluster's service-account issuer"
        ),
        format!(
            "{file}: issuers[plain].mapping.subject: is required (a CEL expression over `assertion`), unless a `preset` supplies it"
        ),
    ] {
        assert!(stderr.contains(&line), "missing {line:?} in:\n{stderr}");
    }
}

#[test]
fn ferry_test_and_explain_can_say_which_anomalies_are_open_for_the_subject() {
    let dir = tempfile::tempdir().unwrap();
    let policy = format!(
        "{OLD_POLICY}\n@id(\"no-reused-tokens\")\nforbid (principal, action, resource)\nwhen {{ context.anomalies.contains(\"token_reuse_across_clients\") }};\n"
    );
    let cfg = config(
        dir.path(),
        "anomalies",
        (&policy, ""),
        "identity.attributes.environment",
        "",
    );
    let (out, cases) = ferry_test(
        dir.path(),
        &cfg,
        r#"
[[cases]]
name = "a deployer reads the internal API"
claims = { sub = "erin", groups = ["deployers"] }
target = "internal-api"
expect = "allow"

[[cases]]
name = "not while its token is seen from two clients"
claims = { sub = "erin", groups = ["deployers"] }
target = "internal-api"
anomalies = ["token_reuse_across_clients", "first_use"]
expect = "deny"
policies = ["no-reused-tokens"]

[[cases]]
name = "another kind does not trip the forbid"
claims = { sub = "erin", groups = ["deployers"] }
target = "internal-api"
anomalies = ["subject_burst"]
expect = "allow"

[[cases]]
name = "a kind that does not exist"
claims = { sub = "erin", groups = ["deployers"] }
target = "internal-api"
anomalies = ["token_reuse"]
expect = "allow"
"#,
    );
    let stdout = text(&out.stdout);
    let all = format!("{stdout}{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(
            "`token_reuse` is not an anomaly kind (one of token_reuse_across_clients, subject_burst"
        ),
        "{all}"
    );
    assert!(all.contains(&cases.display().to_string()), "{all}");
    assert!(stdout.contains("3 passed, 1 failed"), "{stdout}");

    let claims = dir.path().join("erin.json");
    std::fs::write(&claims, r#"{"sub": "erin", "groups": ["deployers"]}"#).unwrap();
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--config",
            cfg.to_str().unwrap(),
            "--target",
            "internal-api",
            "--claims",
            claims.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ferry(&args)
    };
    assert_eq!(explain(&[]).status.code(), Some(0));
    let denied = explain(&["--anomaly", "token_reuse_across_clients"]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        text(&denied.stdout).contains("no-reused-tokens"),
        "{}",
        text(&denied.stdout)
    );
    let bad = explain(&["--anomaly", "nope"]);
    assert!(
        text(&bad.stderr).contains("--anomaly: `nope` is not an anomaly kind"),
        "{}",
        text(&bad.stderr)
    );
}
