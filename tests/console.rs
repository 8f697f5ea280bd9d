//! The operator console at `/admin/ui` against a real `ferry serve`: in a real headless
//! browser (tests/console/browser.py: Debian's chromium and chromedriver via selenium,
//! which `tests/run` installs), and its security properties over plain HTTP.
#![cfg(test)]

#[path = "common/dev.rs"]
mod dev;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dev::serve;
use serde_json::Value;

const ADMIN_TOKEN: &str = "console-test-admin-token-0123456789";

/// The dev config with an admin token, recorded identities, an audit trail and no
/// learning period; `policy` as its policy file.
fn config(dir: &Path, policy: &str) -> PathBuf {
    let admin = dir.join("admin-token");
    std::fs::write(&admin, format!("{ADMIN_TOKEN}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let extra = format!(
        "\n[admin]\ntoken_file = \"{}\"\n\n[audit]\nfile = \"{}\"\nrecord_identity = true\n\n[anomalies]\nlearning_period = \"0s\"\n",
        admin.display(),
        dir.join("audit.log").display()
    );
    let path = dir.join("ferry.toml");
    std::fs::write(&path, dev::dev_config_with_policy(dir, &extra, policy)).unwrap();
    path
}

fn dev_policy() -> String {
    std::fs::read_to_string(dev::repo().join("config/policies/dev.cedar")).unwrap()
}

fn deployer(sub: &str) -> String {
    dev::dev_token(&[&format!("sub={sub}"), r#"groups=["deployers"]"#])
}

/// Where the browser test leaves its screenshots: `target/console-screenshots`.
fn shots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots")
}

#[test]
fn an_operator_signs_in_watches_decisions_revokes_and_sees_an_anomaly_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&config(dir.path(), &dev_policy()));
    let ready: Value = reqwest::blocking::get(format!("{}/readyz", s.base))
        .unwrap()
        .json()
        .unwrap();
    let shots = shots_dir();
    std::fs::create_dir_all(&shots).unwrap();
    for page in [
        "sign-in",
        "overview",
        "issuers",
        "decisions",
        "decision",
        "revocations",
        "anomalies",
        "policies",
    ] {
        let _ = std::fs::remove_file(shots.join(format!("{page}.png")));
    }
    let out = Command::new("python3")
        .arg(dev::repo().join("tests/console/browser.py"))
        .env("FERRY_BASE", &s.base)
        .env("FERRY_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("FERRY_REVISION", ready["revision"].as_str().unwrap())
        .env("FERRY_DEV_KID", "dev-1")
        .env("FERRY_POLICY", dir.path().join("exchange.cedar"))
        .env("FERRY_SHOTS", &shots)
        .env("FERRY_TOKEN_ALICE", deployer("alice"))
        .env("FERRY_TOKEN_MALLORY", dev::dev_token(&["sub=mallory"]))
        .env("FERRY_TOKEN_EVE", deployer("eve"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the browser test failed (page and screenshot in {}):\n{}{}",
        shots.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "sign-in",
        "overview",
        "issuers",
        "decisions",
        "decision",
        "revocations",
        "anomalies",
        "policies",
    ] {
        let png = std::fs::read(shots.join(format!("{page}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{page}.png is not a PNG");
    }
    // What the console did is in the audit trail, said to come from it.
    drop(s);
    let trail = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let lines: Vec<Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |t: &str| lines.iter().filter(|l| l["type"] == t).collect::<Vec<_>>();
    let revoked = of("revocation");
    assert_eq!(revoked.len(), 1, "{trail}");
    assert_eq!(revoked[0]["via"], "console");
    assert_eq!(revoked[0]["revocation"]["subject"], "dev:alice");
    assert_eq!(revoked[0]["revocation"]["reason"], "laptop lost");
    assert_eq!(of("revocation_lifted").len(), 1);
    assert_eq!(of("anomaly_acknowledged")[0]["via"], "console");
}

/// A client that follows no redirect and keeps no cookie (each request says its own).
fn bare() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Signs in: the `name=value` of the session cookie, and the whole `Set-Cookie`.
fn sign_in(c: &reqwest::blocking::Client, base: &str) -> (String, String) {
    let r = c
        .post(format!("{base}/admin/ui/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/ui/overview");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    (set.split(';').next().unwrap().to_owned(), set)
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_owned()
}

fn live_revocations(c: &reqwest::blocking::Client, base: &str) -> Vec<Value> {
    let v: Value = c
        .get(format!("{base}/admin/revocations"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["revocations"].as_array().unwrap().clone()
}

#[test]
fn no_page_without_a_session_no_change_without_the_csrf_token_and_sign_out_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&config(dir.path(), &dev_policy()));
    let c = bare();
    let pages = [
        "/admin/ui",
        "/admin/ui/overview",
        "/admin/ui/issuers",
        "/admin/ui/decisions",
        "/admin/ui/decisions/some-id",
        "/admin/ui/policies",
        "/admin/ui/revocations",
        "/admin/ui/anomalies",
    ];
    for page in pages {
        let r = c.get(format!("{}{page}", s.base)).send().unwrap();
        assert_eq!(r.status(), 303, "{page}");
        assert_eq!(r.headers()["location"], "/admin/ui/sign-in", "{page}");
    }
    // A forged cookie is no session.
    let r = c
        .get(format!("{}/admin/ui/overview", s.base))
        .header("cookie", "ferry_console=forged")
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);

    // Sign-in: the wrong token is refused; the right one gets a strict cookie.
    let wrong = c
        .post(format!("{}/admin/ui/sign-in", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=wrong")
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let (cookie, set) = sign_in(&c, &s.base);
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/admin/ui"] {
        assert!(set.contains(flag), "{flag} missing: {set}");
    }
    assert!(!set.contains("Secure"), "plain http: {set}");
    assert!(
        !set.contains("Max-Age") && !set.contains("Expires"),
        "a session cookie: {set}"
    );

    // Every page answers with the security headers.
    for page in &pages[1..] {
        let r = c
            .get(format!("{}{page}", s.base))
            .header("cookie", &cookie)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        assert!(
            status == 200 || (*page == "/admin/ui/decisions/some-id" && status == 404),
            "{page}: {status}"
        );
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'")
                && csp.contains("script-src 'self'")
                && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cache-control"], "no-store");
        let html = r.text().unwrap();
        assert!(
            !html.contains("<script>") && !html.contains("style=\""),
            "{page}: inline script or style"
        );
    }

    // A state-changing POST without the session's CSRF token changes nothing.
    let revoke = |csrf: Option<&str>| {
        let mut body = "kind=subject&value=dev%3Aalice&reason=x".to_owned();
        if let Some(t) = csrf {
            body.push_str(&format!("&csrf={t}"));
        }
        c.post(format!("{}/admin/ui/revocations", s.base))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .unwrap()
    };
    assert_eq!(revoke(None).status(), 403);
    assert_eq!(revoke(Some("wrong")).status(), 403);
    assert!(live_revocations(&c, &s.base).is_empty());
    let page = c
        .get(format!("{}/admin/ui/revocations", s.base))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let csrf = csrf_of(&page);
    let done = revoke(Some(&csrf));
    assert_eq!(done.status(), 303);
    let live = live_revocations(&c, &s.base);
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["subject"], "dev:alice");

    // Sign-out needs the token too, then ends the session on the server.
    let out = |csrf: &str| {
        c.post(format!("{}/admin/ui/sign-out", s.base))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}"))
            .send()
            .unwrap()
    };
    assert_eq!(out("wrong").status(), 403);
    let r = out(&csrf);
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = c
        .get(format!("{}/admin/ui/overview", s.base))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(after.status(), 303, "the old cookie still opened a page");
}

#[test]
fn without_an_admin_token_the_console_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(&cfg, dev::dev_config("")).unwrap();
    let s = serve(&cfg);
    let c = bare();
    for page in [
        "/admin/ui",
        "/admin/ui/sign-in",
        "/admin/ui/overview",
        "/admin/ui/assets/console.css",
    ] {
        assert_eq!(
            c.get(format!("{}{page}", s.base)).send().unwrap().status(),
            404,
            "{page}"
        );
    }
    let r = c
        .post(format!("{}/admin/ui/sign-in", s.base))
        .body("token=anything")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}
