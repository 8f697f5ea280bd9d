//! A client's DPoP key (`ferry exchange --dpop-key`): a fresh DPoP proof (RFC 9449 §4.2) for each attempt.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Map, Value};

/// A client's DPoP key and the public JWK its proofs carry.
pub struct DpopKey {
    key: crate::issuer::keys::SigningKey,
    jwk: Map<String, Value>,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopKey")
            .field("alg", &self.key.alg)
            .finish_non_exhaustive()
    }
}

/// The public members of a JWK (no `kid`, `use` or `alg`: the proof's header says).
const PUBLIC: &[&str] = &["kty", "crv", "x", "y", "n", "e"];

impl DpopKey {
    /// A PKCS#8 (or PKCS#1 RSA, SEC1 EC) PEM private key: P-256 signs ES256, P-384 ES384,
    /// RSA RS256, Ed25519 EdDSA.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read --dpop-key {}", path.display()))?;
        let key = [
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::RS256,
            Algorithm::EdDSA,
        ]
        .into_iter()
        .find_map(|alg| crate::issuer::keys::signing_key_from_pem(alg, &pem, Some("dpop"), 0).ok())
        .ok_or_else(|| {
            anyhow!(
                "--dpop-key {}: not a P-256, P-384, RSA or Ed25519 PEM private key",
                path.display()
            )
        })?;
        let public = serde_json::to_value(&key.public)?;
        let jwk = public
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| PUBLIC.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self { key, jwk })
    }

    /// A proof for a POST to `htu` (no query or fragment) at `now`, with the server's
    /// `nonce` when it asked for one.
    pub fn proof(&self, htu: &url::Url, now: i64, nonce: Option<&str>) -> anyhow::Result<String> {
        let mut htu = htu.clone();
        htu.set_query(None);
        htu.set_fragment(None);
        let mut header = Header::new(self.key.alg);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(serde_json::from_value(Value::Object(self.jwk.clone()))?);
        let mut claims = Map::new();
        claims.insert("jti".into(), uuid::Uuid::new_v4().to_string().into());
        claims.insert("htm".into(), "POST".into());
        claims.insert("htu".into(), htu.as_str().into());
        claims.insert("iat".into(), now.into());
        if let Some(n) = nonce {
            claims.insert("nonce".into(), n.into());
        }
        jsonwebtoken::encode(&header, &claims, &self.key.encoding)
            .map_err(|e| anyhow!("cannot sign the DPoP proof: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_from_each_key_type_is_one_ferry_accepts() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let htu = url::Url::parse("https://ferry.example.com/oauth2/token?x=1")?;
        for alg in [
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::RS256,
            Algorithm::EdDSA,
        ] {
            let path = dir.path().join("dpop.pem");
            std::fs::write(&path, crate::issuer::keys::generate_private_pem(alg)?)?;
            let key = DpopKey::load(&path)?;
            let proof = key.proof(&htu, 1_700_000_000, Some("n-1"))?;
            let checked = crate::exchange::dpop::verify(
                &proof,
                "POST",
                "https://ferry.example.com/oauth2/token",
                1_700_000_000,
            )
            .map_err(|e| anyhow!("{alg:?}: {e}"))?;
            assert!(!checked.jkt.is_empty());
            assert_eq!(checked.nonce.as_deref(), Some("n-1"));
        }
        Ok(())
    }
}
