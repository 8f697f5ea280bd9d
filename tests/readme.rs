//! The README as a newcomer follows it: its walkthrough, taken from the README itself so
//! the two cannot drift, runs as written against a real `ferry serve --dev` from a
//! directory outside the repository; and every shell block in it is one that a test runs
//! or one marked as needing a cloud.
#![cfg(test)]

#[path = "common/dev.rs"]
mod dev;

use std::process::{Command, Stdio};

/// The README's fenced blocks: (info string, body).
fn blocks() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dev::repo().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some("")) => out.extend(current.take()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

#[test]
fn every_shell_block_in_the_readme_is_run_by_a_test_or_marked_as_needing_a_cloud() {
    let blocks = blocks();
    let shell: Vec<&(String, String)> = blocks
        .iter()
        .filter(|(info, _)| {
            ["sh", "bash", "shell", "console"].contains(&info.split(' ').next().unwrap_or(""))
        })
        .collect();
    assert!(shell.len() >= 4, "{shell:?}");
    for (info, body) in &shell {
        let marker = info.split(' ').nth(1).unwrap_or("");
        match marker {
            // The two commands: CI runs `tests/run`; the walkthrough test serves `--dev`.
            "commands" => assert!(
                ["cargo run -- serve --dev\n", "tests/run\n"].contains(&body.as_str()),
                "{body}"
            ),
            // tests/install-check runs these.
            "install" => {
                let script =
                    std::fs::read_to_string(dev::repo().join("tests/install-check")).unwrap();
                assert!(
                    script.contains("cargo install --locked --path ."),
                    "{script}"
                );
                assert!(script.contains("--version"));
                assert_eq!(body, "cargo install --locked --path .\nferry --version\n");
            }
            "walkthrough" | "cloud" => {}
            other => panic!(
                "a README shell block marked `{other}` (not run by a test, not marked `cloud`):\n{body}"
            ),
        }
    }
    assert_eq!(
        shell.iter().filter(|(i, _)| i == "sh walkthrough").count(),
        1,
        "one walkthrough"
    );
}

#[test]
fn the_readme_walkthrough_runs_as_written_from_outside_the_repository() {
    let script = blocks()
        .into_iter()
        .find(|(info, _)| info == "sh walkthrough")
        .map(|(_, body)| body)
        .unwrap();
    let outside = tempfile::tempdir().unwrap();
    let port = dev::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(outside.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    dev::await_ready(&mut serve, &base);
    // `ferry` on PATH, as the walkthrough's prerequisites say.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_ferry"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(outside.path())
        .env("PATH", path)
        .env("FERRY", &base)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let _ = serve.kill();
    let _ = serve.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n--- stderr\n{stderr}");
    assert!(out.status.success(), "{all}");
    assert!(stderr.is_empty(), "no step complained: {all}");
    // Step 2: the exchange answered.
    assert!(
        stdout.contains(r#""issued_token_type":"urn:ietf:params:oauth:token-type:jwt""#),
        "{all}"
    );
    assert!(stdout.contains(r#""expires_in":600"#), "{all}");
    // Step 3: PyJWT verified it against Ferry's JWKS.
    assert!(stdout.contains("'sub': 'dev:alice'"), "{all}");
    assert!(stdout.contains("'iss': 'http://127.0.0.1:8080'"), "{all}");
    // Step 4: the denial, and explain's stages, as the README shows them.
    assert!(stdout.contains(r#"{"error":"invalid_target","error_description":"no policy permits `dev:alice` to exchange for target `internal-api`"}"#), "{all}");
    for line in script.lines().filter_map(|l| l.strip_prefix("# ")) {
        let stage = ["verify ", "mapping ", "target ", "policy ", "values "]
            .iter()
            .any(|s| line.starts_with(s));
        if stage {
            assert!(stdout.contains(line), "the README shows `{line}`: {all}");
        }
    }
    assert!(stdout.contains("=> DENY (config revision "), "{all}");
    // Step 5: the client's shell exports.
    assert!(stdout.contains("export FERRY_ACCESS_TOKEN='ey"), "{all}");
    assert!(stdout.contains("export FERRY_EXPIRES_AT='"), "{all}");
    // The private directory was removed, and nothing was left beside the walkthrough.
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}
