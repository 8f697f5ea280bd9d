//! TLS on the listener (`[server.tls]`): rustls on aws-lc-rs, TLS 1.2 and 1.3 with the
//! provider's default (modern, AEAD-only) suites, ALPN `h2` and `http/1.1`.
//!
//! The certificate and key are files that cert-manager or an ACME client renews in
//! place: [`CertStore`] serves the pair it last loaded to every new handshake and looks
//! at the files at the config watch's interval. A renewed pair that parses, matches and
//! is within its validity replaces the old one; a broken one (half-written, mismatched,
//! expired) is refused, the old pair keeps serving, and the failure shows in the log,
//! `/readyz` and `ferry_tls_reloads_total{outcome="failure"}`.
//!
//! With `client_ca_file`, clients may (`optional`) or must (`required`) present a
//! certificate that chains to that CA; a verified one reaches policy as
//! `context.client_certificate` ([`client`]).

pub mod client;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{ClientAuth, Config, TlsConfig};

pub use client::ClientCertificate;

/// `(entry, problem)` pairs.
pub type Problems = Vec<(String, String)>;

/// The crypto provider every TLS config of Ferry's uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate and key that load together, with what the checks read of the leaf.
pub struct Pair {
    pub key: Arc<CertifiedKey>,
    pub leaf: Leaf,
}

/// What Ferry reads of its own certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub subject: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
}

impl Leaf {
    fn parse(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        let names = client::alt_names(&cert)?;
        Ok(Self {
            subject: cert.subject().to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            dns_names: names.dns,
            ip_addresses: names.ips,
        })
    }

    /// Whether a DNS name or IP SAN covers `host` (`*.example.com` covers one label).
    pub fn covers(&self, host: &str) -> bool {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            return self.ip_addresses.contains(&ip);
        }
        let host = host.to_ascii_lowercase();
        self.dns_names.iter().any(|name| {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                None => name == host,
            }
        })
    }
}

/// Reads and checks a certificate chain and its key: both parse, the key is the
/// certificate's, and `now` is within the certificate's validity.
pub fn load_pair(cert_file: &Path, key_file: &Path, now: i64) -> Result<Pair, String> {
    let chain = read_certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "`{}` holds no PKCS#8, PKCS#1 or SEC1 PEM private key: {e}",
            key_file.display()
        )
    })?;
    let leaf = Leaf::parse(chain.first().map_or(&[][..], |c| c.as_ref()))?;
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not belong to the certificate".to_owned()
        }
        other => format!("the private key cannot be used: {other}"),
    })?;
    if now >= leaf.not_after {
        return Err(format!(
            "the certificate expired at {}",
            humantime::format_rfc3339_seconds(unix_time(leaf.not_after))
        ));
    }
    if now < leaf.not_before {
        return Err(format!(
            "the certificate is not valid before {}",
            humantime::format_rfc3339_seconds(unix_time(leaf.not_before))
        ));
    }
    Ok(Pair {
        key: Arc::new(key),
        leaf,
    })
}

fn unix_time(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Every certificate of a PEM file (at least one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("`{}` is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The files of `[server.tls]`, resolved against the config's directory.
#[derive(Debug, Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: Option<ClientAuth>,
}

impl Files {
    pub fn of(config: &Config) -> Option<Self> {
        let tls: &TlsConfig = config.server.tls.as_ref()?;
        let resolve = |p: &Path| config.source.resolve(p);
        Some(Self {
            cert: resolve(&tls.cert_file),
            key: resolve(&tls.key_file),
            client_ca: tls.client_ca_file.as_deref().map(resolve),
            client_auth: tls.client_auth.clone(),
        })
    }
}

/// Checks `[server.tls]` as `ferry check` and every load do: `(entry, problem)` errors,
/// and warnings (the certificate does not name `public_url`'s host; it expires within a
/// week).
pub fn check(config: &Config, now: i64) -> (Problems, Problems) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let Some(files) = Files::of(config) else {
        return (errors, warnings);
    };
    match load_pair(&files.cert, &files.key, now) {
        Err(e) => errors.push(("server.tls.cert_file".to_owned(), e)),
        Ok(pair) => {
            let host = url::Url::parse(&config.server.public_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned));
            if let Some(host) = host
                && !pair.leaf.covers(&host)
            {
                warnings.push((
                    "server.tls.cert_file".to_owned(),
                    format!(
                        "warning: the certificate names none of `{host}` (public_url's host); clients that check it will refuse the connection"
                    ),
                ));
            }
            if pair.leaf.not_after - now < 7 * 86_400 {
                warnings.push((
                    "server.tls.cert_file".to_owned(),
                    format!(
                        "warning: the certificate expires at {}",
                        humantime::format_rfc3339_seconds(unix_time(pair.leaf.not_after))
                    ),
                ));
            }
        }
    }
    match (&files.client_ca, &files.client_auth) {
        (None, Some(_)) => errors.push((
            "server.tls.client_auth".to_owned(),
            "needs `client_ca_file` (the CA client certificates must chain to)".to_owned(),
        )),
        (Some(ca), _) => {
            if let Err(e) = client::roots(ca) {
                errors.push(("server.tls.client_ca_file".to_owned(), e));
            }
        }
        (None, None) => {}
    }
    if let Some(ClientAuth::Unknown(other)) = &files.client_auth {
        errors.push((
            "server.tls.client_auth".to_owned(),
            format!("`{other}` is not `optional` or `required`"),
        ));
    }
    (errors, warnings)
}

/// How the served pair stands, for `/readyz` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The served certificate's expiry, Unix seconds.
    pub not_after: i64,
    pub subject: String,
    /// Why the last renewal on disk was refused (cleared by a good one).
    pub last_error: Option<String>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

/// The file's identity as the watch compares it: a renewal changes one of these.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The pair every new handshake is served, swapped when the files are renewed.
pub struct CertStore {
    files: Files,
    current: ArcSwap<CertifiedKey>,
    stamps: Mutex<(Stamp, Stamp)>,
    status: Mutex<Status>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("files", &self.files)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the pair (it must be good: a server does not start on a broken one).
    pub fn open(files: Files, now: i64) -> Result<Self, String> {
        let stamps = (stamp(&files.cert), stamp(&files.key));
        let pair = load_pair(&files.cert, &files.key, now)?;
        Ok(Self {
            current: ArcSwap::new(pair.key),
            status: Mutex::new(Status {
                not_after: pair.leaf.not_after,
                subject: pair.leaf.subject,
                ..Status::default()
            }),
            stamps: Mutex::new(stamps),
            files,
        })
    }

    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Looks at the files; a changed pair is loaded and, if good, served from the next
    /// handshake. Returns whether a new pair is served.
    pub fn poll(&self, now: i64) -> bool {
        let seen = (stamp(&self.files.cert), stamp(&self.files.key));
        {
            let Ok(mut stamps) = self.stamps.lock() else {
                return false;
            };
            if *stamps == seen {
                return false;
            }
            *stamps = seen;
        }
        // Read before the status lock: `/readyz` and `/metrics` never wait on the disk.
        let loaded = load_pair(&self.files.cert, &self.files.key, now);
        let Ok(mut status) = self.status.lock() else {
            return false;
        };
        match loaded {
            Ok(pair) => {
                self.current.store(pair.key);
                tracing::info!(
                    subject = %pair.leaf.subject,
                    not_after = pair.leaf.not_after,
                    "TLS certificate renewed on disk; serving it to new connections"
                );
                status.not_after = pair.leaf.not_after;
                status.subject = pair.leaf.subject;
                status.last_error = None;
                status.reloads_ok += 1;
                true
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    cert_file = %self.files.cert.display(),
                    "the TLS certificate on disk was refused; the previous one keeps serving"
                );
                status.last_error = Some(e);
                status.reloads_failed += 1;
                false
            }
        }
    }

    /// Polls every `interval` while the returned task runs.
    pub fn spawn_watch(
        self: &Arc<Self>,
        interval: Duration,
        clock: crate::clock::SharedClock,
    ) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                store.poll(clock.now());
            }
        })
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// What the accept loop needs to speak TLS.
#[derive(Clone)]
pub struct Acceptor {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Verifies a client's certificate once more after the handshake (an `optional`
    /// CA lets a certificate that does not chain through, unexposed).
    pub clients: Option<Arc<client::Verifier>>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("mutual", &self.clients.is_some())
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// The server side of `[server.tls]` over `certs`.
    pub fn new(certs: Arc<CertStore>) -> Result<Self, String> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS versions: {e}"))?;
        let clients = match &certs.files.client_ca {
            None => None,
            Some(ca) => {
                let required = certs.files.client_auth == Some(ClientAuth::Required);
                Some(Arc::new(client::Verifier::new(
                    ca,
                    required,
                    Arc::clone(&provider),
                )?))
            }
        };
        let builder = match &clients {
            None => builder.with_no_client_auth(),
            Some(v) => builder.with_client_cert_verifier(Arc::clone(v) as _),
        };
        let mut config = builder.with_cert_resolver(certs);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Stateless resumption (TLS 1.3 tickets, rotated by the ticketer), so a client
        // that reconnects skips the full handshake.
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| format!("TLS session tickets: {e}"))?;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            clients,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(names: &[&str]) -> Leaf {
        Leaf {
            subject: String::new(),
            not_before: 0,
            not_after: 0,
            dns_names: names.iter().map(|s| (*s).to_owned()).collect(),
            ip_addresses: vec![std::net::IpAddr::from([127, 0, 0, 1])],
        }
    }

    #[test]
    fn a_san_covers_its_host_and_a_wildcard_one_label() {
        let l = leaf(&["ferry.example.com", "*.ferry.internal"]);
        assert!(l.covers("ferry.example.com"));
        assert!(l.covers("FERRY.example.com"));
        assert!(l.covers("a.ferry.internal"));
        assert!(!l.covers("a.b.ferry.internal"));
        assert!(!l.covers("ferry.internal"));
        assert!(!l.covers("example.com"));
        assert!(l.covers("127.0.0.1"));
        assert!(!l.covers("127.0.0.2"));
    }
}
