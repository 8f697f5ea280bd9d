//! Ferry's signing keys on disk: `keys_dir/keys.json` (the manifest) and one PKCS#8 PEM
//! per key (`<kid>.pem`, mode 0600). `generate` makes the first key; `rotate` makes a
//! new active key and keeps retired keys published until their tokens have expired.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ferry_provider_api::{KeyAlgorithm, ManagedKey, SignError};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde::{Deserialize, Serialize};

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Filesystem trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A manifest or key that does not parse.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// Crypto failure while generating or loading a key.
    #[error("key material: {0}")]
    Crypto(String),
    /// `generate` on a directory that already has keys, or load on one that has none.
    #[error("{0}")]
    State(String),
}

/// One key in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyRecord {
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// Algorithm.
    pub alg: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds when it stopped signing; `None` for the active key.
    pub retired_at: Option<i64>,
}

/// `keys.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeyManifest {
    /// Newest last.
    pub keys: Vec<KeyRecord>,
}

/// A private key Ferry signs with, and its public JWK.
pub struct SigningKey {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: Algorithm,
    /// Private key.
    pub encoding: EncodingKey,
    /// Public JWK (with `kid`, `use`, `alg`).
    pub public: Jwk,
    /// Unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("private", &"...")
            .finish()
    }
}

fn crypto<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> KeyError {
    move |e| KeyError::Crypto(format!("{what}: {e:?}"))
}

/// Generates a private key for `alg`, as PKCS#8 PEM.
pub fn generate_private_pem(alg: Algorithm) -> Result<String, KeyError> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        Ed25519KeyPair,
    };
    let rng = SystemRandom::new();
    let der: Vec<u8> = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(crypto("rsa generate"))?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
                pair.as_der().map_err(crypto("rsa export"))?;
            der.as_ref().to_vec()
        }
        Algorithm::ES256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(crypto("p256 generate"))?
            .as_ref()
            .to_vec(),
        Algorithm::ES384 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .map_err(crypto("p384 generate"))?
            .as_ref()
            .to_vec(),
        Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8v1(&rng)
            .map_err(crypto("ed25519 generate"))?
            .as_ref()
            .to_vec(),
        other => {
            return Err(KeyError::Crypto(format!(
                "cannot generate keys for {other:?}"
            )));
        }
    };
    Ok(pem_encode("PRIVATE KEY", &der))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Loads a PKCS#8 PEM private key for `alg`; `kid` defaults to the RFC 7638 thumbprint.
pub fn signing_key_from_pem(
    alg: Algorithm,
    pem: &[u8],
    kid: Option<&str>,
    created_at: i64,
) -> Result<SigningKey, KeyError> {
    let encoding = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        other => return Err(KeyError::Crypto(format!("cannot sign with {other:?}"))),
    }
    .map_err(crypto("private key"))?;
    let mut public = Jwk::from_encoding_key(&encoding, alg).map_err(crypto("public key"))?;
    let thumbprint = public
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(crypto("thumbprint"))?;
    let kid = kid.map(str::to_owned).unwrap_or(thumbprint);
    public.common.key_id = Some(kid.clone());
    public.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(SigningKey {
        kid,
        alg,
        encoding,
        public,
        created_at,
    })
}

/// What signs for the active key: a private key Ferry holds, or a key manager.
pub enum Signer {
    /// A PKCS#8 key from `keys_dir` (or an ephemeral one).
    File(EncodingKey),
    /// A key in an HSM or a cloud KMS (`[signing] backend`).
    Managed(Arc<dyn ManagedKey>),
}

/// The key that signs: its id, algorithm and public JWK, and what signs for it.
pub struct ActiveKey {
    /// Key id (RFC 7638 thumbprint of the public key).
    pub kid: String,
    /// Algorithm.
    pub alg: Algorithm,
    /// What signs.
    pub signer: Signer,
    /// Public JWK (with `kid`, `use`, `alg`).
    pub public: Jwk,
    /// Unix seconds (`files`), or when Ferry opened it (a key manager).
    pub created_at: i64,
}

impl std::fmt::Debug for ActiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl From<SigningKey> for ActiveKey {
    fn from(k: SigningKey) -> Self {
        Self {
            kid: k.kid,
            alg: k.alg,
            signer: Signer::File(k.encoding),
            public: k.public,
            created_at: k.created_at,
        }
    }
}

impl ActiveKey {
    /// `files` or the key manager's backend name: the `backend` label of the signing
    /// metrics.
    pub fn backend(&self) -> &'static str {
        match &self.signer {
            Signer::File(_) => "files",
            Signer::Managed(m) => m.backend(),
        }
    }

    /// The key as the config names it, for a managed key.
    pub fn reference(&self) -> Option<&str> {
        match &self.signer {
            Signer::File(_) => None,
            Signer::Managed(m) => Some(m.reference()),
        }
    }

    /// A compact JWS of `claims` under `header` (whose `alg` must be this key's).
    pub async fn encode<T: Serialize + Sync>(
        &self,
        header: &jsonwebtoken::Header,
        claims: &T,
    ) -> Result<String, SignError> {
        let refused = |reason: String| SignError::Refused {
            backend: self.backend(),
            reason,
        };
        match &self.signer {
            Signer::File(encoding) => {
                jsonwebtoken::encode(header, claims, encoding).map_err(|e| refused(e.to_string()))
            }
            Signer::Managed(key) => {
                use base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let header = serde_json::to_vec(header).map_err(|e| refused(e.to_string()))?;
                let claims = serde_json::to_vec(claims).map_err(|e| refused(e.to_string()))?;
                let input = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(header),
                    URL_SAFE_NO_PAD.encode(claims)
                );
                let signature = key.sign(input.as_bytes()).await?;
                Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
            }
        }
    }
}

/// The JWS algorithm of a managed key.
pub fn managed_algorithm(alg: KeyAlgorithm) -> Algorithm {
    match alg {
        KeyAlgorithm::Rs256 => Algorithm::RS256,
        KeyAlgorithm::Es256 => Algorithm::ES256,
    }
}

/// The public JWK of a managed key, from the SubjectPublicKeyInfo the key manager
/// returned: RSA of at least 2048 bits for RS256, a P-256 point for ES256. Its `kid` is
/// the RFC 7638 thumbprint, as for a file key, so the same public key has the same id
/// whichever backend holds it.
pub fn managed_jwk(key: &dyn ManagedKey) -> Result<Jwk, KeyError> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::jwk::{
        AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
        EllipticCurveKeyType, RSAKeyParameters, RSAKeyType,
    };
    use x509_parser::prelude::FromDer as _;
    use x509_parser::public_key::PublicKey;
    let what = |problem: String| KeyError::Invalid {
        path: format!("{} key `{}`", key.backend(), key.reference()),
        problem,
    };
    let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(key.public_key_der())
        .map_err(|e| what(format!("its public key does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(what("its public key has trailing bytes".into()));
    }
    let strip = |bytes: &[u8]| -> Vec<u8> {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        bytes.get(start..).unwrap_or_default().to_vec()
    };
    let parsed = spki
        .parsed()
        .map_err(|e| what(format!("its public key does not parse: {e}")))?;
    let algorithm = match (key.algorithm(), parsed) {
        (KeyAlgorithm::Rs256, PublicKey::RSA(rsa)) => {
            let n = strip(rsa.modulus);
            if n.len() < 256 {
                return Err(what(format!(
                    "is an RSA-{} key; Ferry signs with RSA-2048 or larger",
                    n.len() * 8
                )));
            }
            AlgorithmParameters::RSA(RSAKeyParameters {
                key_type: RSAKeyType::RSA,
                n: URL_SAFE_NO_PAD.encode(n),
                e: URL_SAFE_NO_PAD.encode(strip(rsa.exponent)),
            })
        }
        (KeyAlgorithm::Es256, PublicKey::EC(point)) => {
            let p256 = x509_parser::oid_registry::OID_EC_P256;
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let data = point.data();
            match (curve, data.split_first()) {
                (Some(c), Some((0x04, xy))) if c == p256 && xy.len() == 64 => {
                    let (x, y) = xy.split_at(32);
                    AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                        key_type: EllipticCurveKeyType::EC,
                        curve: EllipticCurve::P256,
                        x: URL_SAFE_NO_PAD.encode(x),
                        y: URL_SAFE_NO_PAD.encode(y),
                    })
                }
                _ => return Err(what("is not an uncompressed P-256 key".into())),
            }
        }
        (alg, _) => {
            return Err(what(format!("is not a key {} can sign with", alg.name())));
        }
    };
    let mut jwk = Jwk {
        common: CommonParameters {
            key_algorithm: Some(managed_algorithm(key.algorithm()).into()),
            public_key_use: Some(PublicKeyUse::Signature),
            ..Default::default()
        },
        algorithm,
    };
    let kid = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| what(format!("thumbprint: {e:?}")))?;
    jwk.common.key_id = Some(kid);
    Ok(jwk)
}

/// A managed key as the active key of a ring.
pub fn managed_active(key: Arc<dyn ManagedKey>, now: i64) -> Result<ActiveKey, KeyError> {
    let public = managed_jwk(key.as_ref())?;
    Ok(ActiveKey {
        kid: public.common.key_id.clone().unwrap_or_default(),
        alg: managed_algorithm(key.algorithm()),
        signer: Signer::Managed(key),
        public,
        created_at: now,
    })
}

/// The keys Ferry signs with now and publishes.
#[derive(Debug, Clone)]
pub struct KeyRing {
    /// The key that signs.
    pub active: Arc<ActiveKey>,
    /// Every published public key (active first), including retired keys whose tokens
    /// may still be valid.
    pub published: Vec<Jwk>,
    /// Retired keys still published: (kid, retired_at).
    pub retired: Vec<(String, i64)>,
    /// Whether the active key is ephemeral (dev only).
    pub ephemeral: bool,
    /// What the ring was opened from (`[signing]`'s backend and keys): a reload whose
    /// `[signing]` opens the same keys keeps this ring rather than ask the key manager
    /// again.
    pub source: String,
    /// A key manager's keys as (kid, the key as the config names it), the active one
    /// first; empty for `files`.
    pub managed: Vec<(String, String)>,
}

impl KeyRing {
    /// A fresh in-memory key (development).
    pub fn ephemeral(alg: Algorithm, now: i64) -> Result<Self, KeyError> {
        let pem = generate_private_pem(alg)?;
        let key = signing_key_from_pem(alg, pem.as_bytes(), None, now)?;
        Ok(Self {
            published: vec![key.public.clone()],
            active: Arc::new(key.into()),
            retired: Vec::new(),
            ephemeral: true,
            source: String::new(),
            managed: Vec::new(),
        })
    }

    /// The JWKS document (RFC 7517 §5).
    pub fn jwks_json(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.published })
    }
}

/// A `keys_dir`.
#[derive(Debug, Clone)]
pub struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    /// The directory (need not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join("keys.json")
    }

    fn key_path(&self, kid: &str) -> PathBuf {
        self.dir.join(format!("{kid}.pem"))
    }

    fn io(path: &Path) -> impl Fn(std::io::Error) -> KeyError + '_ {
        move |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Reads the manifest (empty when the directory has none).
    pub fn manifest(&self) -> Result<KeyManifest, KeyError> {
        let path = self.manifest_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| KeyError::Invalid {
                path: path.display().to_string(),
                problem: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyManifest::default()),
            Err(e) => Err(Self::io(&path)(e)),
        }
    }

    fn write_manifest(&self, manifest: &KeyManifest) -> Result<(), KeyError> {
        let path = self.manifest_path();
        let tmp = self.dir.join("keys.json.tmp");
        let body = serde_json::to_vec_pretty(manifest).map_err(|e| KeyError::Invalid {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?;
        std::fs::write(&tmp, body).map_err(Self::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(Self::io(&path))
    }

    fn write_private(&self, kid: &str, pem: &str) -> Result<(), KeyError> {
        use std::io::Write as _;
        let path = self.key_path(kid);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&path).map_err(Self::io(&path))?;
        file.write_all(pem.as_bytes()).map_err(Self::io(&path))?;
        file.sync_all().map_err(Self::io(&path))
    }

    fn create_dir(&self) -> Result<(), KeyError> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        builder.create(&self.dir).map_err(Self::io(&self.dir))
    }

    fn add_key(
        &self,
        manifest: &mut KeyManifest,
        alg: Algorithm,
        now: i64,
    ) -> Result<String, KeyError> {
        let pem = generate_private_pem(alg)?;
        let key = signing_key_from_pem(alg, pem.as_bytes(), None, now)?;
        self.write_private(&key.kid, &pem)?;
        manifest.keys.push(KeyRecord {
            kid: key.kid.clone(),
            alg: alg_name(alg).to_owned(),
            created_at: now,
            retired_at: None,
        });
        Ok(key.kid)
    }

    /// Creates the first key. Refuses if the directory already has an active key.
    pub fn generate(&self, alg: Algorithm, now: i64) -> Result<String, KeyError> {
        self.create_dir()?;
        let mut manifest = self.manifest()?;
        if manifest.keys.iter().any(|k| k.retired_at.is_none()) {
            return Err(KeyError::State(format!(
                "{} already has an active key; use `ferry keys rotate`",
                self.dir.display()
            )));
        }
        let kid = self.add_key(&mut manifest, alg, now)?;
        self.write_manifest(&manifest)?;
        Ok(kid)
    }

    /// Makes a new active key, retires the old one (still published for `retain`), and
    /// deletes keys retired longer than `retain` ago. Returns (new kid, deleted kids).
    pub fn rotate(
        &self,
        alg: Algorithm,
        now: i64,
        retain: Duration,
    ) -> Result<(String, Vec<String>), KeyError> {
        self.create_dir()?;
        let mut manifest = self.manifest()?;
        for record in manifest.keys.iter_mut().filter(|k| k.retired_at.is_none()) {
            record.retired_at = Some(now);
        }
        let kid = self.add_key(&mut manifest, alg, now)?;
        let retain = i64::try_from(retain.as_secs()).unwrap_or(i64::MAX);
        let (keep, drop): (Vec<_>, Vec<_>) = manifest.keys.into_iter().partition(|k| {
            k.retired_at
                .is_none_or(|at| at.saturating_add(retain) > now)
        });
        manifest.keys = keep;
        self.write_manifest(&manifest)?;
        let mut deleted = Vec::new();
        for record in drop {
            let path = self.key_path(&record.kid);
            match std::fs::remove_file(&path) {
                Ok(()) => deleted.push(record.kid),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => deleted.push(record.kid),
                Err(e) => return Err(Self::io(&path)(e)),
            }
        }
        Ok((kid, deleted))
    }

    /// Loads the ring: the newest non-retired key signs; retired keys within `retain`
    /// stay published.
    pub fn load(&self, now: i64, retain: Duration) -> Result<KeyRing, KeyError> {
        let manifest = self.manifest()?;
        let retain = i64::try_from(retain.as_secs()).unwrap_or(i64::MAX);
        let active_record = manifest
            .keys
            .iter()
            .filter(|k| k.retired_at.is_none())
            .max_by_key(|k| k.created_at)
            .ok_or_else(|| {
                KeyError::State(format!(
                    "{} has no active signing key; run `ferry keys generate --config <file>`",
                    self.dir.display()
                ))
            })?;
        let active: Arc<ActiveKey> = Arc::new(self.load_key(active_record)?.into());
        let mut published = vec![active.public.clone()];
        let mut retired = Vec::new();
        for record in &manifest.keys {
            if record.kid == active.kid {
                continue;
            }
            let still_valid = match record.retired_at {
                Some(at) => at.saturating_add(retain) > now,
                None => true,
            };
            if still_valid {
                published.push(self.load_key(record)?.public);
                retired.push((record.kid.clone(), record.retired_at.unwrap_or(now)));
            }
        }
        Ok(KeyRing {
            active,
            published,
            retired,
            ephemeral: false,
            source: String::new(),
            managed: Vec::new(),
        })
    }

    fn load_key(&self, record: &KeyRecord) -> Result<SigningKey, KeyError> {
        let path = self.key_path(&record.kid);
        let alg = crate::verify::parse_algorithm(&record.alg).ok_or_else(|| KeyError::Invalid {
            path: self.manifest_path().display().to_string(),
            problem: format!("key `{}` has unsupported alg `{}`", record.kid, record.alg),
        })?;
        let pem = std::fs::read(&path).map_err(Self::io(&path))?;
        signing_key_from_pem(alg, &pem, Some(&record.kid), record.created_at)
    }
}

/// The JOSE name of an algorithm.
pub fn alg_name(alg: Algorithm) -> &'static str {
    crate::algorithms::name(alg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_rotate_and_prune() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = KeyDir::new(tmp.path().join("keys"));
        let first = dir.generate(Algorithm::ES256, 1_000)?;
        assert!(
            dir.generate(Algorithm::ES256, 1_001).is_err(),
            "second generate must refuse"
        );
        let ring = dir.load(1_000, Duration::from_secs(600))?;
        assert_eq!(ring.active.kid, first);
        assert_eq!(ring.published.len(), 1);

        let (second, deleted) = dir.rotate(Algorithm::ES256, 2_000, Duration::from_secs(600))?;
        assert!(deleted.is_empty());
        let ring = dir.load(2_000, Duration::from_secs(600))?;
        assert_eq!(ring.active.kid, second);
        let kids: Vec<_> = ring
            .published
            .iter()
            .filter_map(|j| j.common.key_id.clone())
            .collect();
        assert_eq!(kids, vec![second.clone(), first.clone()]);

        // After the retention window the old key is no longer published, and the next
        // rotation deletes it.
        let ring = dir.load(2_601, Duration::from_secs(600))?;
        assert_eq!(ring.published.len(), 1);
        let (_, deleted) = dir.rotate(Algorithm::ES256, 2_601, Duration::from_secs(600))?;
        assert_eq!(deleted, vec![first.clone()]);
        assert!(
            !tmp.path()
                .join("keys")
                .join(format!("{first}.pem"))
                .exists()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(tmp.path().join("keys").join(format!("{second}.pem")))?
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        Ok(())
    }

    #[test]
    fn every_signing_algorithm_round_trips() -> Result<(), KeyError> {
        for alg in crate::algorithms::ALGORITHMS
            .iter()
            .filter(|a| a.signs)
            .map(|a| a.alg)
        {
            let pem = generate_private_pem(alg)?;
            let key = signing_key_from_pem(alg, pem.as_bytes(), None, 0)?;
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(alg),
                &serde_json::json!({"a": 1}),
                &key.encoding,
            )
            .map_err(crypto("encode"))?;
            let decoding =
                jsonwebtoken::DecodingKey::from_jwk(&key.public).map_err(crypto("jwk"))?;
            let mut validation = jsonwebtoken::Validation::new(alg);
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            validation.validate_aud = false;
            assert!(
                jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).is_ok(),
                "{alg:?}"
            );
        }
        Ok(())
    }
}
