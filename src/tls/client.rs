//! Client certificates (mutual TLS): the verifier the handshake runs, and what policy
//! sees of a verified certificate (`context.client_certificate`).

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::Digest as _;

/// A client certificate that chained to `client_ca_file`, as policy reads it (and, with
/// `[audit] record_identity`, as the audit line records it: public facts only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientCertificate {
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub sha256: String,
    /// The same digest, base64url without padding: RFC 8705's `x5t#S256`.
    pub x5t_s256: String,
    /// The subject's distinguished name (RFC 4514 string form).
    pub subject: String,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    /// The SPIFFE ID of an X509-SVID: its one URI SAN, when that is a `spiffe://` URI.
    pub spiffe_id: Option<String>,
}

impl ClientCertificate {
    /// Reads a (verified) certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        let names = alt_names(&cert)?;
        let digest = sha2::Sha256::digest(der);
        let spiffe_id = match names.uris.as_slice() {
            [only] if only.starts_with("spiffe://") => Some(only.clone()),
            _ => None,
        };
        Ok(Self {
            sha256: hex::encode(digest),
            x5t_s256: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest),
            subject: cert.subject().to_string(),
            dns_names: names.dns,
            uris: names.uris,
            spiffe_id,
        })
    }
}

/// A certificate's subject alternative names, by kind.
#[derive(Debug, Default)]
pub(super) struct AltNames {
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
}

pub(super) fn alt_names(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<AltNames, String> {
    use x509_parser::extensions::GeneralName;
    let mut names = AltNames::default();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("the subjectAltName extension does not parse: {e}"))?;
    for name in san.iter().flat_map(|san| &san.value.general_names) {
        match name {
            GeneralName::DNSName(d) => names.dns.push((*d).to_owned()),
            GeneralName::URI(u) => names.uris.push((*u).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => {
                    let mut a = [0u8; 4];
                    a.copy_from_slice(bytes);
                    names.ips.push(std::net::IpAddr::from(a));
                }
                16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(bytes);
                    names.ips.push(std::net::IpAddr::from(a));
                }
                _ => {}
            },
            _ => {}
        }
    }
    Ok(names)
}

/// The CA bundle client certificates must chain to (at least one certificate).
pub fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in super::read_certificates(path)? {
        roots.add(cert).map_err(|e| {
            format!(
                "`{}` holds a CA certificate rustls refuses: {e}",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// webpki's client verification against `client_ca_file`, with Ferry's `optional`:
/// a connection without a certificate is served, and so is one whose certificate does
/// not chain (logged, and never exposed to policy — [`Verifier::identify`] checks again).
/// The handshake's signature checks are webpki's in both modes, so a presented
/// certificate is always one whose key the client holds.
#[derive(Debug)]
pub struct Verifier {
    inner: Arc<dyn ClientCertVerifier>,
    required: bool,
}

impl Verifier {
    pub fn new(ca: &Path, required: bool, provider: Arc<CryptoProvider>) -> Result<Self, String> {
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("`{}`: {e}", ca.display()))?;
        Ok(Self { inner, required })
    }

    /// The certificate a finished handshake presented, if it chains to the CA.
    pub fn identify(&self, chain: &[CertificateDer<'_>]) -> Option<ClientCertificate> {
        let (leaf, intermediates) = chain.split_first()?;
        // `required`: the handshake refused anything that did not chain. `optional` let
        // such a certificate through, so its chain is checked again before it counts.
        if !self.required {
            self.inner
                .verify_client_cert(leaf, intermediates, UnixTime::now())
                .ok()?;
        }
        ClientCertificate::from_der(leaf)
            .map_err(
                |e| tracing::warn!(error = %e, "a verified client certificate could not be read"),
            )
            .ok()
    }
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => Ok(v),
            Err(e) if !self.required => {
                tracing::info!(error = %e, "a client certificate that does not verify was ignored (client_auth = optional)");
                Ok(ClientCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
