//! Ferry's signing keys in a key manager, against real or API-faithful peers: SoftHSM2
//! over PKCS#11, moto's AWS KMS, and Cloud KMS / Key Vault fakes that follow their REST
//! references (`tests/signing/fake_key_managers.py`). Every token Ferry mints is
//! verified against its published JWKS by `tests/signing/verify_jwt.py` (the
//! `cryptography` package: nothing shared with Ferry's signer).
#![cfg(test)]

#[path = "common/dev.rs"]
mod dev;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dev::{Serve, serve_with_env};
use serde_json::Value;

const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The dev config with `signing` as its `[signing]` section.
fn config_with_signing(signing: &str) -> String {
    let config = dev::dev_config("");
    let start = config.find("[signing]\n").unwrap();
    let end = start + config[start..].find("\n\n").unwrap();
    format!("{}{signing}{}", &config[..start], &config[end..])
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// One exchange of `token` for the dev config's `internal-api`: status and JSON answer.
fn exchange(s: &Serve, token: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{}/oauth2/token", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(dev::exchange_form(token, None))
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn deployer(sub: &str) -> String {
    dev::dev_token(&[&format!("sub={sub}"), r#"groups=["deployers"]"#])
}

/// The access token of a granted exchange, verified against the JWKS Ferry publishes by
/// code that shares nothing with Ferry; returns (kid, alg) of its header.
fn mint_and_verify(s: &Serve, dir: &Path, sub: &str) -> (String, String) {
    let (status, body) = exchange(s, &deployer(sub));
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    verify(s, dir, &token)
}

fn verify(s: &Serve, dir: &Path, token: &str) -> (String, String) {
    let jwks = client()
        .get(format!("{}/.well-known/jwks.json", s.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    std::fs::write(dir.join("jwks.json"), jwks).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
    let out = Command::new("python3")
        .arg(dev::repo().join("tests/signing/verify_jwt.py"))
        .arg(dir.join("jwks.json"))
        .arg(dir.join("token"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut words = stdout.split_whitespace().skip(1);
    (
        words.next().unwrap().to_owned(),
        words.next().unwrap().to_owned(),
    )
}

fn jwks_kids(s: &Serve) -> Vec<String> {
    let jwks: Value = client()
        .get(format!("{}/.well-known/jwks.json", s.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn metrics(s: &Serve) -> String {
    client()
        .get(format!("{}/metrics", s.base))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// The value of the series `name{labels}` (its labels exactly as printed), or 0.
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn reload(s: &Serve) {
    let status = Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits up to 10 s for `check` to hold.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A SoftHSM2 token directory of its own, with the token `ferry` (user PIN 1234).
struct SoftHsm {
    dir: tempfile::TempDir,
}

impl SoftHsm {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("pin"), "1234\n").unwrap();
        let hsm = Self { dir };
        hsm.run(
            "softhsm2-util",
            &[
                "--init-token",
                "--free",
                "--label",
                "ferry",
                "--pin",
                "1234",
                "--so-pin",
                "5678",
            ],
        );
        hsm
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        let out = Command::new(program)
            .args(args)
            .env("SOFTHSM2_CONF", self.conf())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn tool(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = Command::new("pkcs11-tool");
        cmd.args([
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            "ferry",
            "--login",
            "--pin",
            "1234",
        ])
        .args(args)
        .env("SOFTHSM2_CONF", self.conf());
        cmd
    }

    /// A key pair generated inside the token (`--sensitive`, not extractable).
    fn keypair(&self, key_type: &str, label: &str, id: &str, extra: &[&str]) {
        let out = self
            .tool(&[
                "--keypairgen",
                "--key-type",
                key_type,
                "--label",
                label,
                "--id",
                id,
                "--sensitive",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Reads each private key's attributes with cryptoki directly (a session of its
    /// own, not Ferry's code): no secret value comes out.
    fn assert_private_keys_stay_inside(&self, labels: &[&str]) {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "softhsm_probe",
                "--nocapture",
                "--include-ignored",
            ])
            .env("SOFTHSM2_CONF", self.conf())
            .env("FERRY_PROBE_LABELS", labels.join(","))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for label in labels {
            assert!(
                said.contains(&format!(
                    "probe {label}: no secret value, sensitive, never extractable"
                )),
                "{said}"
            );
        }
    }

    fn section(&self, active: &str, published: &[&str]) -> String {
        format!(
            "[signing]\nbackend = \"pkcs11\"\nactive_key = \"{active}\"\npublished_keys = {published:?}\n\n[signing.pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"ferry\"\npin_file = \"{}\"",
            self.dir.path().join("pin").display()
        )
    }
}

#[test]
fn pkcs11_keys_sign_in_the_token_rotate_by_config_and_never_leave_it() {
    let hsm = SoftHsm::new();
    hsm.keypair("EC:prime256v1", "ferry-ec", "02", &[]);
    hsm.keypair("rsa:2048", "ferry-rsa", "01", &[]);
    hsm.keypair("EC:prime256v1", "leaky", "03", &["--extractable"]);
    let conf = hsm.conf();
    let env = [("SOFTHSM2_CONF", conf.to_str().unwrap())];

    // The private key cannot be read out of the token: asked for its value (CKA_VALUE,
    // CKA_PRIVATE_EXPONENT) the token gives nothing; it is sensitive and was never
    // extractable.
    hsm.assert_private_keys_stay_inside(&["ferry-ec", "ferry-rsa"]);

    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("ferry.toml");

    // A key the token would let leave is refused, naming the key and the attribute.
    std::fs::write(&cfg, config_with_signing(&hsm.section("leaky", &[]))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["check", "--config", cfg.to_str().unwrap()])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("`leaky`: the private key can leave the token (CKA_EXTRACTABLE"),
        "{said}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signing: `leaky`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A wrong PIN is refused at start, with the PKCS#11 return value, not the PIN.
    std::fs::write(tmp.path().join("wrong-pin"), "9999\n").unwrap();
    let wrong = hsm.section("ferry-ec", &[]).replace(
        &hsm.dir.path().join("pin").display().to_string(),
        &tmp.path().join("wrong-pin").display().to_string(),
    );
    std::fs::write(&cfg, config_with_signing(&wrong)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["keys", "list", "--config", cfg.to_str().unwrap()])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && said.contains("C_Login: PinIncorrect") && !said.contains("9999"),
        "{said}"
    );

    // ES256 from the token signs; the RSA key is published beside it. The audit trail's
    // checkpoints are signed in the token too.
    let audit = tmp.path().join("audit.log");
    std::fs::write(tmp.path().join("admin-token"), "admin-secret-token\n").unwrap();
    let with_audit = |section: String| {
        format!(
            "{}\n[audit]\nfile = \"{}\"\ncheckpoint_every = 3\n\n[admin]\ntoken_file = \"{}\"\n",
            config_with_signing(&section),
            audit.display(),
            tmp.path().join("admin-token").display()
        )
    };
    std::fs::write(&cfg, with_audit(hsm.section("ferry-ec", &["ferry-rsa"]))).unwrap();
    let listed = dev::ferry_ok_env(
        &[
            "keys",
            "list",
            "--config",
            cfg.to_str().unwrap(),
            "--check",
            "--json",
        ],
        &env,
    );
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["backend"], "pkcs11");
    assert_eq!(listed["check"], "signed and verified");
    assert_eq!(listed["keys"][0]["state"], "active");
    assert_eq!(listed["keys"][0]["key"], "ferry-ec");
    assert_eq!(listed["keys"][0]["algorithm"], "ES256");
    assert_eq!(listed["keys"][1]["state"], "published");
    assert_eq!(listed["keys"][1]["algorithm"], "RS256");
    let ec_kid = listed["keys"][0]["kid"].as_str().unwrap().to_owned();
    let rsa_kid = listed["keys"][1]["kid"].as_str().unwrap().to_owned();

    let s = serve_with_env(&cfg, &env);
    assert_eq!(jwks_kids(&s), vec![ec_kid.clone(), rsa_kid.clone()]);
    let (kid, alg) = mint_and_verify(&s, tmp.path(), "alice");
    assert_eq!((kid.as_str(), alg.as_str()), (ec_kid.as_str(), "ES256"));
    // Concurrent mints share the token's sessions.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let base = s.base.clone();
            std::thread::spawn(move || {
                let r = client()
                    .post(format!("{base}/oauth2/token"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(dev::exchange_form(&deployer(&format!("user{i}")), None))
                    .send()
                    .unwrap();
                r.status().as_u16()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let m = metrics(&s);
    assert!(
        series(
            &m,
            "ferry_signing_duration_seconds_count{backend=\"pkcs11\"}"
        ) >= 9.0,
        "{m}"
    );
    assert_eq!(
        series(
            &m,
            "ferry_signing_failures_total{backend=\"pkcs11\",reason=\"unavailable\"}"
        ),
        0.0
    );

    // Rotation by config: the RSA key becomes active, the EC key stays published so the
    // tokens it signed keep verifying; a reload picks it up.
    std::fs::write(&cfg, with_audit(hsm.section("ferry-rsa", &["ferry-ec"]))).unwrap();
    reload(&s);
    eventually("the reload", || jwks_kids(&s).first() == Some(&rsa_kid));
    assert_eq!(jwks_kids(&s), vec![rsa_kid.clone(), ec_kid.clone()]);
    let (kid, alg) = mint_and_verify(&s, tmp.path(), "bob");
    assert_eq!((kid.as_str(), alg.as_str()), (rsa_kid.as_str(), "RS256"));
    let discovery: Value = client()
        .get(format!("{}/.well-known/openid-configuration", s.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    // The operator's view: which backend, which key signs, which is only published.
    let report: Value = client()
        .get(format!("{}/admin/issuers", s.base))
        .bearer_auth("admin-secret-token")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let signing = &report["signing"];
    assert_eq!(signing["backend"], "pkcs11", "{report}");
    assert_eq!(signing["active"]["kid"], rsa_kid.as_str());
    assert_eq!(signing["managed"][0]["key"], "ferry-rsa");
    assert_eq!(signing["managed"][1]["key"], "ferry-ec");
    assert_eq!(signing["managed"][1]["kid"], ec_kid.as_str());
    // Ten decisions at three lines per checkpoint: checkpoints signed by the token's EC
    // key, then (after the reload) its RSA key, each verified against the JWKS.
    for i in 0..3 {
        mint_and_verify(&s, tmp.path(), &format!("after{i}"));
    }
    let jwks = client()
        .get(format!("{}/.well-known/jwks.json", s.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    std::fs::write(tmp.path().join("jwks.json"), jwks).unwrap();
    drop(s);
    let verified = dev::ferry_ok(&[
        "audit",
        "verify",
        audit.to_str().unwrap(),
        "--jwks",
        tmp.path().join("jwks.json").to_str().unwrap(),
    ]);
    let count: u32 = verified
        .split(" signed checkpoint(s) verified")
        .next()
        .and_then(|head| head.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(count >= 3, "{verified}");
    let trail = std::fs::read_to_string(&audit).unwrap();
    let kids: std::collections::HashSet<String> = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["type"] == "checkpoint")
        .filter_map(|l| {
            let header = l["signature"].as_str()?.split('.').next()?.to_owned();
            let header =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                    .ok()?;
            serde_json::from_slice::<Value>(&header).ok()?["kid"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(kids, [ec_kid, rsa_kid].into_iter().collect(), "{trail}");
}

/// moto's KMS with two signing keys made through boto3 (a real AWS SDK); prints
/// `<ec key arn> <rsa key arn>`.
fn kms_keys(endpoint: &str) -> (String, String) {
    let script = r#"
import sys, boto3
kms = boto3.client("kms", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
ec = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
rsa = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
kms.create_alias(AliasName="alias/ferry-signing", TargetKeyId=ec)
print(ec, rsa)
"#;
    let out = Command::new("python3")
        .args(["-c", script, endpoint])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut words = text.split_whitespace();
    (
        words.next().unwrap().to_owned(),
        words.next().unwrap().to_owned(),
    )
}

#[test]
fn aws_kms_signs_and_an_outage_refuses_misses_but_serves_cache_hits() {
    let moto = ferry_testkit::MotoServer::start();
    let endpoint = moto.url();
    let (ec_arn, rsa_arn) = kms_keys(&endpoint);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("ferry.toml");
    let section = format!(
        "[signing]\nbackend = \"aws_kms\"\nactive_key = \"alias/ferry-signing\"\npublished_keys = [\"{rsa_arn}\"]\nsign_timeout = \"1s\"\n\n[signing.aws_kms]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\""
    );
    std::fs::write(&cfg, config_with_signing(&section)).unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
    ];
    let listed = dev::ferry_ok_env(
        &[
            "keys",
            "list",
            "--config",
            cfg.to_str().unwrap(),
            "--check",
            "--json",
        ],
        &env,
    );
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["check"], "signed and verified", "{listed}");
    assert_eq!(listed["keys"][0]["key"], "alias/ferry-signing");
    assert_eq!(listed["keys"][0]["algorithm"], "ES256");
    assert_eq!(listed["keys"][1]["algorithm"], "RS256");
    let _ = ec_arn;

    let s = serve_with_env(&cfg, &env);
    assert_eq!(jwks_kids(&s).len(), 2);
    let alice = deployer("alice");
    let (status, body) = exchange(&s, &alice);
    assert_eq!(status, 200, "{body}");
    let (_, alg) = verify(&s, tmp.path(), body["access_token"].as_str().unwrap());
    assert_eq!(alg, "ES256");

    // KMS goes away: a cache hit is still served, a miss (another subject) is 503 with
    // an RFC 6749 body and Retry-After, and the failure is counted.
    drop(moto);
    let (status, again) = exchange(&s, &alice);
    assert_eq!(status, 200, "a cache hit needs no signature: {again}");
    assert_eq!(again["access_token"], body["access_token"]);
    let r = client()
        .post(format!("{}/oauth2/token", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(dev::exchange_form(&deployer("bob"), None))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let refused: Value = r.json().unwrap();
    assert_eq!(refused["error"], "temporarily_unavailable", "{refused}");
    let m = metrics(&s);
    assert!(
        series(
            &m,
            "ferry_signing_failures_total{backend=\"aws_kms\",reason=\"unavailable\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        series(
            &m,
            "ferry_signing_duration_seconds_count{backend=\"aws_kms\"}"
        ) >= 2.0,
        "{m}"
    );
    // Readiness is not the key manager's: cache hits and discovery keep being served.
    let ready = client().get(format!("{}/readyz", s.base)).send().unwrap();
    assert_eq!(ready.status(), 200);
}

/// The Cloud KMS and Key Vault fakes on a port of their own, killed when dropped.
struct Fakes {
    child: std::process::Child,
    base: String,
}

impl Drop for Fakes {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fakes(dir: &Path) -> Fakes {
    let port_file = dir.join("fake-port");
    let child = Command::new("python3")
        .arg(dev::repo().join("tests/signing/fake_key_managers.py"))
        .arg(&port_file)
        .args(["gcp-test-token", "azure-test-token"])
        .spawn()
        .unwrap();
    // Owned from here: dropped (killed and waited for) on every path, a failed start
    // included.
    let mut fakes = Fakes {
        child,
        base: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while fakes.base.is_empty() {
        if let Ok(port) = std::fs::read_to_string(&port_file) {
            fakes.base = format!("http://127.0.0.1:{}", port.trim());
        } else {
            assert!(Instant::now() < deadline, "the fakes did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fakes
}

fn fake_calls(f: &Fakes) -> Value {
    client()
        .get(format!("{}/_fake/calls", f.base))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn gcp_kms_and_azure_key_vault_sign_through_their_rest_apis() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fakes(tmp.path());
    std::fs::write(tmp.path().join("gcp-token"), "gcp-test-token\n").unwrap();
    std::fs::write(tmp.path().join("azure-token"), "azure-test-token\n").unwrap();
    std::fs::write(tmp.path().join("wrong-token"), "nope\n").unwrap();
    let version = |n: u8| {
        format!(
            "projects/ferry-test/locations/global/keyRings/ferry/cryptoKeys/signing/cryptoKeyVersions/{n}"
        )
    };
    let gcp = |active: u8, published: u8, token: &str| {
        format!(
            "[signing]\nbackend = \"gcp_kms\"\nactive_key = \"{}\"\npublished_keys = [\"{}\"]\n\n[signing.gcp_kms]\nendpoint = \"{}\"\ntoken_file = \"{}\"",
            version(active),
            version(published),
            f.base,
            tmp.path().join(token).display()
        )
    };
    let cfg = tmp.path().join("ferry.toml");

    // Cloud KMS: P-256 version 1 signs, RSA version 2 is published.
    std::fs::write(&cfg, config_with_signing(&gcp(1, 2, "gcp-token"))).unwrap();
    let s = serve_with_env(&cfg, &[]);
    assert_eq!(jwks_kids(&s).len(), 2);
    let (_, alg) = mint_and_verify(&s, tmp.path(), "alice");
    assert_eq!(alg, "ES256");
    assert_eq!(fake_calls(&f)["gcp_sign"], 1);
    // The token file is read at each call: a token the API refuses is a refusal (503),
    // counted as such.
    std::fs::write(tmp.path().join("gcp-token"), "revoked\n").unwrap();
    let (status, body) = exchange(&s, &deployer("bob"));
    assert_eq!(status, 503, "{body}");
    let m = metrics(&s);
    assert_eq!(
        series(
            &m,
            "ferry_signing_failures_total{backend=\"gcp_kms\",reason=\"refused\"}"
        ),
        1.0,
        "{m}"
    );
    drop(s);

    // Version 2 (RSA) active.
    std::fs::write(tmp.path().join("gcp-token"), "gcp-test-token\n").unwrap();
    std::fs::write(&cfg, config_with_signing(&gcp(2, 1, "gcp-token"))).unwrap();
    let s = serve_with_env(&cfg, &[]);
    let (_, alg) = mint_and_verify(&s, tmp.path(), "carol");
    assert_eq!(alg, "RS256");
    drop(s);

    // An unknown version is refused at start with Cloud KMS's status, naming the version.
    std::fs::write(&cfg, config_with_signing(&gcp(7, 1, "gcp-token"))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["keys", "list", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && said.contains("cryptoKeyVersions/7") && said.contains("NOT_FOUND"),
        "{said}"
    );

    // Key Vault: the RSA key signs, the EC key is published, then the other way round.
    // Key Vault: the RSA key signs, the EC key is published, with a token file; then
    // the other way round, with the managed identity's token from the instance metadata
    // service (cached: one token for both the key reads and the signature).
    let azure = |active: &str, published: &str, credential: &str| {
        format!(
            "[signing]\nbackend = \"azure_key_vault\"\nactive_key = \"{0}/keys/{active}/v1\"\npublished_keys = [\"{0}/keys/{published}/v1\"]\n\n[signing.azure_key_vault]\n{credential}",
            f.base,
        )
    };
    let token_file = format!(
        "token_file = \"{}\"",
        tmp.path().join("azure-token").display()
    );
    let imds = format!(
        "imds_endpoint = \"{}/metadata/identity/oauth2/token\"",
        f.base
    );
    std::fs::write(
        &cfg,
        config_with_signing(&azure("ferry-rsa", "ferry-ec", &token_file)),
    )
    .unwrap();
    let s = serve_with_env(&cfg, &[]);
    assert_eq!(jwks_kids(&s).len(), 2);
    let (_, alg) = mint_and_verify(&s, tmp.path(), "alice");
    assert_eq!(alg, "RS256");
    drop(s);
    std::fs::write(
        &cfg,
        config_with_signing(&azure("ferry-ec", "ferry-rsa", &imds)),
    )
    .unwrap();
    let s = serve_with_env(&cfg, &[]);
    let (_, alg) = mint_and_verify(&s, tmp.path(), "alice");
    assert_eq!(alg, "ES256");
    assert_eq!(fake_calls(&f)["azure_sign"], 2);
    assert_eq!(fake_calls(&f)["imds"], 1);
    let m = metrics(&s);
    assert_eq!(
        series(
            &m,
            "ferry_signing_duration_seconds_count{backend=\"azure_key_vault\"}"
        ),
        1.0,
        "{m}"
    );
}

/// Run by [`SoftHsm::assert_private_keys_stay_inside`] in a child process of this test
/// binary, with `SOFTHSM2_CONF` set for it alone (the module reads it when it
/// initializes): asks the token for each private key's secret value.
#[test]
#[ignore = "run by pkcs11_keys_sign_in_the_token_… in a child process with its own SoftHSM config"]
fn softhsm_probe() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    let labels = std::env::var("FERRY_PROBE_LABELS").unwrap();
    let ctx = Pkcs11::new(SOFTHSM_MODULE).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let session = ctx.open_ro_session(slot).unwrap();
    session
        .login(
            UserType::User,
            Some(&cryptoki::types::AuthPin::from("1234".to_owned())),
        )
        .unwrap();
    for label in labels.split(',') {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .unwrap();
        assert_eq!(found.len(), 1, "{label}");
        let attrs = session
            .get_attributes(
                found[0],
                &[
                    AttributeType::Value,
                    AttributeType::PrivateExponent,
                    AttributeType::Prime1,
                    AttributeType::Sensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Extractable,
                ],
            )
            .unwrap_or_default();
        let leaked = attrs.iter().any(|a| {
            matches!(a, Attribute::Value(v) | Attribute::PrivateExponent(v) | Attribute::Prime1(v) if !v.is_empty())
        });
        let flag = |want: fn(&Attribute) -> Option<bool>| attrs.iter().find_map(want);
        let sensitive = flag(|a| match a {
            Attribute::Sensitive(b) => Some(*b),
            _ => None,
        });
        let never = flag(|a| match a {
            Attribute::NeverExtractable(b) => Some(*b),
            _ => None,
        });
        let extractable = flag(|a| match a {
            Attribute::Extractable(b) => Some(*b),
            _ => None,
        });
        assert!(!leaked, "{label}: a secret value came out");
        assert_eq!(
            (sensitive, never, extractable),
            (Some(true), Some(true), Some(false)),
            "{label}"
        );
        println!("probe {label}: no secret value, sensitive, never extractable");
    }
}
