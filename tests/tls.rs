//! TLS and mutual TLS on `ferry serve`, with real handshakes on loopback: a test CA and
//! certificates made here with rcgen, clients that present none, a good one or one from
//! another CA; TLS 1.1 refused; a certificate renewed on disk served on the next
//! handshake, and a broken renewal refused with the old one kept.
#![cfg(test)]

#[path = "common/dev.rs"]
mod dev;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

const SPIFFE_ID: &str = "spiffe://acme.test/ns/ci/sa/deployer";

/// A CA that signs the certificates of one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    fn server(&self, cn: &str, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        self.sign(params)
    }

    /// A workload's client certificate: an X509-SVID-shaped one with `uri` as its one SAN.
    fn client(&self, uri: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "deployer");
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
        self.sign(params)
    }
}

/// A `ferry serve` child on a TLS listener, killed when dropped.
struct Serve {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The dev config on `port` with `[server.tls]` (`tls_extra` added to it), the policy
/// `policy`, and a fast file watch.
fn config(dir: &Path, port: u16, tls_extra: &str, policy: &str) -> String {
    dev::dev_config_with_policy(
        dir,
        &format!(
            "\n[server.tls]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\n{tls_extra}\n[reload]\ninterval = \"100ms\"\n"
        ),
        policy,
    )
    .replace(
        "public_url = \"http://127.0.0.1:8080\"",
        &format!("public_url = \"https://127.0.0.1:{port}\""),
    )
}

/// Starts `ferry serve` with `server` as its certificate (signed by `ca`).
fn serve(ca: &Ca, server: &Leaf, tls_extra: &str, policy: &str) -> Serve {
    serve_ready_for(client(ca, None), server, tls_extra, policy)
}

/// [`serve`], waiting for `/readyz` with `ready` (a client the server accepts).
fn serve_ready_for(
    ready: reqwest::blocking::Client,
    server: &Leaf,
    tls_extra: &str,
    policy: &str,
) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.pem"), &server.cert).unwrap();
    std::fs::write(dir.path().join("server.key"), &server.key).unwrap();
    let port = dev::free_port();
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(&cfg, config(dir.path(), port, tls_extra, policy)).unwrap();
    let child = dev::spawn_serve(&cfg, port);
    let mut serve = Serve { child, dir, port };
    let base = serve.base();
    dev::await_ready_with(&mut serve.child, &base, ready);
    serve
}

/// An HTTPS client that trusts `ca` and presents `identity`, if any.
fn client(ca: &Ca, identity: Option<&Leaf>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap());
    if let Some(leaf) = identity {
        b = b.identity(
            reqwest::Identity::from_pem(format!("{}{}", leaf.cert, leaf.key).as_bytes()).unwrap(),
        );
    }
    b.build().unwrap()
}

fn exchange(client: &reqwest::blocking::Client, base: &str) -> Result<u16, reqwest::Error> {
    exchange_answer(client, base).map(|(status, _)| status)
}

fn exchange_answer(
    client: &reqwest::blocking::Client,
    base: &str,
) -> Result<(u16, String), reqwest::Error> {
    client
        .post(format!("{base}/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(dev::exchange_form(&dev::dev_token(&["sub=alice"]), None))
        .send()
        .and_then(|r| Ok((r.status().as_u16(), r.text()?)))
}

/// `clients`'s certificate written as a `client_ca_file` (in a directory kept while the
/// returned guard lives).
fn client_ca_file(clients: &Ca) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("clients.pem");
    std::fs::write(&ca_file, clients.pem()).unwrap();
    (dir, ca_file)
}

/// A JWT's claims, read without checking it (what Ferry put in them is the question).
fn jwt_claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

const SPIFFE_POLICY: &str = r#"@id("deployer-certificate")
permit(principal, action, resource) when {
  context has client_certificate && context.client_certificate has spiffe_id &&
  context.client_certificate.spiffe_id == "spiffe://acme.test/ns/ci/sa/deployer"
};
"#;

#[test]
fn policy_sees_the_verified_client_certificate_and_nothing_else() {
    let ca = Ca::new("Ferry test CA");
    let clients = Ca::new("Workload CA");
    let other = Ca::new("Another CA");
    let (_dir, ca_file) = client_ca_file(&clients);
    let s = serve(
        &ca,
        &ca.server("ferry", &["localhost", "127.0.0.1"]),
        &format!("client_ca_file = \"{}\"", ca_file.display()),
        SPIFFE_POLICY,
    );
    let base = s.base();
    let good = clients.client(SPIFFE_ID);
    let (status, body) = exchange_answer(&client(&ca, Some(&good)), &base).unwrap();
    assert_eq!(status, 200, "{body}");
    // Bound to the certificate (RFC 8705 §3.1): its DER's SHA-256, computed here.
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["token_type"], "Bearer");
    let claims = jwt_claims(answer["access_token"].as_str().unwrap());
    assert_eq!(
        claims["cnf"]["x5t#S256"],
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(leaf_der(&good.cert)))
    );
    let discovery: serde_json::Value = client(&ca, None)
        .get(format!("{base}/.well-known/openid-configuration"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        discovery["tls_client_certificate_bound_access_tokens"],
        true
    );
    // `optional`: the handshake succeeds without a certificate, but policy sees none.
    let (status, body) = exchange_answer(&client(&ca, None), &base).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no policy permits"), "{body}");
    // A certificate from another CA is not exposed either.
    let foreign = other.client(SPIFFE_ID);
    assert_eq!(exchange(&client(&ca, Some(&foreign)), &base).unwrap(), 400);
    // Another workload of the right CA: verified, but not the one the policy names.
    let someone = clients.client("spiffe://acme.test/ns/ci/sa/other");
    assert_eq!(exchange(&client(&ca, Some(&someone)), &base).unwrap(), 400);
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(
        plain
            .get(format!("http://127.0.0.1:{}/healthz", s.port))
            .send()
            .is_err()
    );
}

#[test]
fn required_client_auth_fails_handshakes_without_a_good_certificate() {
    let ca = Ca::new("Ferry test CA");
    let clients = Ca::new("Workload CA");
    let (_dir, ca_file) = client_ca_file(&clients);
    let good = clients.client(SPIFFE_ID);
    let extra = format!(
        "client_ca_file = \"{}\"\nclient_auth = \"required\"",
        ca_file.display()
    );
    let ok = client(&ca, Some(&good));
    let s = serve_ready_for(
        ok.clone(),
        &ca.server("ferry", &["127.0.0.1"]),
        &extra,
        SPIFFE_POLICY,
    );
    let base = s.base();
    assert_eq!(exchange(&ok, &base).unwrap(), 200);
    assert!(
        exchange(&client(&ca, None), &base).is_err(),
        "no certificate"
    );
    let foreign = Ca::new("Another CA").client(SPIFFE_ID);
    assert!(
        exchange(&client(&ca, Some(&foreign)), &base).is_err(),
        "a certificate of another CA"
    );
}

/// A TLS 1.1 ClientHello (RFC 4346), with suites a 1.1 client would offer.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // two ECDHE-GCM suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    // supported_groups (x25519, P-256) and signature_algorithms (ECDSA P-256, RSA-PSS).
    body.extend_from_slice(&[
        0x00, 0x14, 0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x0d, 0x00,
        0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04,
    ]);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn tls_1_1_is_refused_and_1_2_and_1_3_are_served() {
    let ca = Ca::new("Ferry test CA");
    let s = serve(&ca, &ca.server("ferry", &["127.0.0.1"]), "", SPIFFE_POLICY);
    let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(&tls11_client_hello()).unwrap();
    let mut answer = [0u8; 7];
    tcp.read_exact(&mut answer).unwrap();
    assert_eq!(
        answer[0], 0x15,
        "an alert record, not a ServerHello: {answer:?}"
    );
    assert_eq!(answer[5], 2, "fatal");
    assert_eq!(answer[6], 70, "protocol_version (RFC 8446 §6.2)");
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let (proto, _) = handshake(&ca, s.port, version);
        assert_eq!(
            proto.as_deref(),
            Some(&b"h2"[..]),
            "ALPN h2 offered and taken"
        );
    }
    let metrics = client(&ca, None)
        .get(format!("{}/metrics", s.base()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("ferry_tls_handshake_failures_total 1\n"),
        "the 1.1 hello: {metrics}"
    );
    assert!(metrics.contains("ferry_connections_open "), "{metrics}");
}

/// A handshake at `version`, offering ALPN h2: the protocol taken and the server's leaf.
fn handshake(
    ca: &Ca,
    port: u16,
    version: &'static rustls::SupportedProtocolVersion,
) -> (Option<Vec<u8>>, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            ca.issuer.der().to_vec(),
        ))
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(ferry::tls::provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    let leaf = conn.peer_certificates().unwrap()[0].to_vec();
    (conn.alpn_protocol().map(<[u8]>::to_vec), leaf)
}

fn leaf_der(pem: &str) -> Vec<u8> {
    let der: rustls::pki_types::CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap();
    der.to_vec()
}

/// Waits (at most 10 s) for `check` to hold.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_renewed_certificate_is_served_next_and_a_broken_renewal_keeps_the_old_one() {
    let ca = Ca::new("Ferry test CA");
    let first = ca.server("first", &["127.0.0.1"]);
    let s = serve(&ca, &first, "", SPIFFE_POLICY);
    let tls12 = &rustls::version::TLS12;
    assert_eq!(handshake(&ca, s.port, tls12).1, leaf_der(&first.cert));

    // Renewed in place, as cert-manager does: the key, then the certificate.
    let second = ca.server("second", &["127.0.0.1"]);
    std::fs::write(s.path("server.key"), &second.key).unwrap();
    std::fs::write(s.path("server.pem"), &second.cert).unwrap();
    eventually("the renewed certificate is served", || {
        handshake(&ca, s.port, tls12).1 == leaf_der(&second.cert)
    });

    // A broken renewal: a certificate whose key is not the one on disk.
    let third = ca.server("third", &["127.0.0.1"]);
    std::fs::write(s.path("server.pem"), &third.cert).unwrap();
    let admin = client(&ca, None);
    eventually("the refused renewal shows in /readyz", || {
        let ready: serde_json::Value = admin
            .get(format!("{}/readyz", s.base()))
            .send()
            .unwrap()
            .json()
            .unwrap();
        ready["tls"]["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not belong to the certificate"))
    });
    assert_eq!(
        handshake(&ca, s.port, tls12).1,
        leaf_der(&second.cert),
        "the last good pair keeps serving"
    );
    let metrics = admin
        .get(format!("{}/metrics", s.base()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("ferry_tls_reloads_total{outcome=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_tls_reloads_total{outcome=\"success\"} 1"),
        "{metrics}"
    );
}

#[test]
fn ferry_check_validates_the_pair() {
    let ca = Ca::new("Ferry test CA");
    let dir = tempfile::tempdir().unwrap();
    let check = |server: &Leaf, key: &str| {
        std::fs::write(dir.path().join("server.pem"), &server.cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        let cfg = dir.path().join("ferry.toml");
        std::fs::write(&cfg, config(dir.path(), 8443, "", SPIFFE_POLICY)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["check", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let good = ca.server("ferry", &["127.0.0.1"]);
    let (code, out) = check(&good, &good.key);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("server.tls"), "{out}");

    let other = ca.server("ferry", &["127.0.0.1"]);
    let elsewhere = ca.server("ferry", &["ferry.example.com"]);
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = ca.sign(params);
    for (cert, key, exit, says) in [
        (
            &good,
            &other.key,
            1,
            "server.tls.cert_file: the private key does not belong to the certificate",
        ),
        // A warning, not an error.
        (
            &elsewhere,
            &elsewhere.key,
            0,
            "server.tls.cert_file: warning: the certificate names none of `127.0.0.1`",
        ),
        (
            &expired,
            &expired.key,
            1,
            "server.tls.cert_file: the certificate expired at 2021-01-01",
        ),
    ] {
        let (code, out) = check(cert, key);
        assert_eq!(code, Some(exit), "{says}: {out}");
        assert!(out.contains(says), "{out}");
    }
}

#[test]
fn ferry_exchange_presents_a_client_certificate_and_a_dpop_proof() {
    let ca = Ca::new("Ferry test CA");
    let clients = Ca::new("Workload CA");
    let (_dir, ca_file) = client_ca_file(&clients);
    // Nonces required: the client follows Ferry's `use_dpop_nonce` challenge once.
    let s = serve(
        &ca,
        &ca.server("ferry", &["127.0.0.1"]),
        &format!(
            "client_ca_file = \"{}\"\n[dpop]\nrequire_nonce = true",
            ca_file.display()
        ),
        SPIFFE_POLICY,
    );
    let good = clients.client(SPIFFE_ID);
    std::fs::write(s.path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(s.path("client.pem"), &good.cert).unwrap();
    std::fs::write(s.path("client.key"), &good.key).unwrap();
    std::fs::write(s.path("token"), dev::dev_token(&["sub=alice"])).unwrap();
    let exchange = |extra: &[&str]| {
        let path = |n: &str| s.path(n).to_str().unwrap().to_owned();
        let mut args = vec![
            "exchange".to_owned(),
            "--url".into(),
            s.base(),
            "--ca-file".into(),
            path("ca.pem"),
            "--cert".into(),
            path("client.pem"),
            "--key".into(),
            path("client.key"),
            "--target".into(),
            "internal-api".into(),
            "--token-file".into(),
            path("token"),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let answer: serde_json::Value = serde_json::from_str(&dev::ferry_ok(&args)).unwrap();
        let claims = jwt_claims(answer["access_token"].as_str().unwrap());
        (answer["token_type"].as_str().unwrap().to_owned(), claims)
    };
    let (token_type, claims) = exchange(&[]);
    assert_eq!(token_type, "Bearer");
    assert!(claims["cnf"]["x5t#S256"].is_string(), "{claims}");
    let key = dev::repo().join("tests/fixtures/dpop-client.key.pem");
    let (token_type, claims) = exchange(&["--dpop-key", key.to_str().unwrap()]);
    assert_eq!(token_type, "DPoP");
    assert!(claims["cnf"]["jkt"].is_string(), "{claims}");
}

#[test]
fn over_tls_the_console_session_cookie_is_secure() {
    let ca = Ca::new("Ferry test CA");
    let admin = tempfile::tempdir().unwrap();
    let token_file = admin.path().join("admin-token");
    std::fs::write(&token_file, "tls-console-admin-token-0123456789").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // `[admin]` follows `[server.tls]`'s keys in the config text.
    let s = serve(
        &ca,
        &ca.server("ferry", &["localhost", "127.0.0.1"]),
        &format!("\n[admin]\ntoken_file = \"{}\"", token_file.display()),
        SPIFFE_POLICY,
    );
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = c
        .post(format!("{}/admin/ui/sign-in", s.base()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=tls-console-admin-token-0123456789")
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("; Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
}
