//! Ferry as an OIDC issuer: its keys, discovery document, JWKS, and the JWTs it mints
//! (for `kind = "jwt"` targets, and as keyless assertions for cloud providers).

pub mod keys;
pub mod managed;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Map, Value, json};

use crate::clock::SharedClock;
use ferry_provider_api::{
    AssertionSigner, Credential, CredentialProvider, Grant, ProviderError, Secret, SignedAssertion,
};
pub use keys::{KeyDir, KeyRing};

/// The namespaced claim that carries the mapped identity in tokens Ferry mints.
pub const IDENTITY_CLAIM: &str = "ferry";
/// RFC 8693 §3 token type URI of a JWT.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Ferry's issuer: public URL, keys, and precomputed documents.
#[derive(Debug)]
pub struct FerryIssuer {
    public_url: String,
    /// `{public_url}/oauth2/token`: what a DPoP proof's `htu` must name.
    token_endpoint: String,
    keys: KeyRing,
    clock: SharedClock,
    discovery: Vec<u8>,
    jwks: Vec<u8>,
    /// Where signing latency and failures are counted.
    metrics: Arc<crate::metrics::Metrics>,
}

impl FerryIssuer {
    /// An issuer at `public_url` signing with `keys`; its discovery document advertises
    /// `scopes` (every scope some target accepts, and nothing Ferry would refuse).
    /// `mtls`: the listener verifies client certificates, so tokens can be bound to them.
    pub fn new(
        public_url: &str,
        keys: KeyRing,
        clock: SharedClock,
        scopes: &[String],
        mtls: bool,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let mut scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        scopes.sort_unstable();
        scopes.dedup();
        let public_url = public_url.trim_end_matches('/').to_owned();
        let alg = keys::alg_name(keys.active.alg);
        let token_endpoint = format!("{public_url}/oauth2/token");
        // OpenID Connect Discovery 1.0 §3 (required members) plus RFC 8414 token endpoint.
        let discovery = json!({
            "issuer": public_url,
            "jwks_uri": format!("{public_url}/.well-known/jwks.json"),
            "token_endpoint": token_endpoint,
            "grant_types_supported": ["urn:ietf:params:oauth:grant-type:token-exchange"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [alg],
            "token_endpoint_auth_methods_supported": ["none"],
            // RFC 9449 §5.1 and RFC 8705 §3.3.
            "dpop_signing_alg_values_supported": crate::exchange::dpop::ALGORITHMS
                .iter()
                .map(|a| crate::algorithms::name(*a))
                .collect::<Vec<_>>(),
            "tls_client_certificate_bound_access_tokens": mtls,
            // RFC 8414 §2: introspection and revocation (RFC 7662, RFC 7009).
            "introspection_endpoint": format!("{public_url}/oauth2/introspect"),
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
            "revocation_endpoint": format!("{public_url}/oauth2/revoke"),
            "revocation_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": scopes,
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope", IDENTITY_CLAIM],
        });
        let discovery = serde_json::to_vec(&discovery).unwrap_or_default();
        let jwks = serde_json::to_vec(&keys.jwks_json()).unwrap_or_default();
        Self {
            public_url,
            token_endpoint,
            keys,
            clock,
            discovery,
            jwks,
            metrics,
        }
    }

    /// The metrics registry the issuer counts its signatures in (the serving one: a
    /// reload hands it on).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Signs with the active key, counting the signature's latency
    /// (`ferry_signing_duration_seconds`) and any failure
    /// (`ferry_signing_failures_total`) under the key's backend.
    pub async fn sign<T: serde::Serialize + Sync>(
        &self,
        header: &Header,
        claims: &T,
    ) -> Result<String, ferry_provider_api::SignError> {
        let key = &self.keys.active;
        let backend = key.backend();
        let started = std::time::Instant::now();
        let result = key.encode(header, claims).await;
        self.metrics.observe(
            "ferry_signing_duration_seconds",
            &[("backend", backend)],
            started.elapsed().as_secs_f64(),
        );
        if let Err(e) = &result {
            self.metrics.inc(
                "ferry_signing_failures_total",
                &[("backend", backend), ("reason", e.kind())],
            );
            tracing::warn!(backend, kid = %key.kid, error = %e, "signing failed");
        }
        result
    }

    /// Ferry's token endpoint, as its discovery document names it.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// The `iss` of what Ferry signs.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// `/.well-known/openid-configuration`, serialized once.
    pub fn discovery_document(&self) -> &[u8] {
        &self.discovery
    }

    /// `/.well-known/jwks.json`, serialized once.
    pub fn jwks_document(&self) -> &[u8] {
        &self.jwks
    }

    /// The key ring.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Signs `claims` with the active key, filling `iss`, `iat`, `nbf`, `exp`, `jti`. A key
    /// manager that does not sign is [`ProviderError::Unavailable`]: the mint answers 503.
    pub async fn mint(
        &self,
        ttl: Duration,
        mut claims: Map<String, Value>,
    ) -> Result<SignedAssertion, ProviderError> {
        let now = self.clock.now();
        let exp = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        let jti = uuid::Uuid::new_v4().to_string();
        claims.insert("iss".into(), Value::String(self.public_url.clone()));
        claims.insert("iat".into(), now.into());
        claims.insert("nbf".into(), now.into());
        claims.insert("exp".into(), exp.into());
        claims.insert("jti".into(), Value::String(jti.clone()));
        let key = &self.keys.active;
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        header.typ = Some("JWT".into());
        let token = self
            .sign(&header, &claims)
            .await
            .map_err(|e| ProviderError::Unavailable {
                reason: e.to_string(),
                retry_after: Some(Duration::from_secs(2)),
            })?;
        Ok(SignedAssertion {
            token: Secret::new(token),
            jti,
            issued_at: now,
            expires_at: exp,
        })
    }

    /// Verifies a token Ferry signed (any published key) and returns its claims, or
    /// `None` when it is not Ferry's, is malformed, or has expired.
    pub fn verify_own(&self, token: &str) -> Option<Map<String, Value>> {
        if token.len() > crate::verify::MAX_TOKEN_BYTES {
            return None;
        }
        let header = jsonwebtoken::decode_header(token).ok()?;
        let kid = header.kid?;
        let jwk = self
            .keys
            .published
            .iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid.as_str()))?;
        // The key's own `alg` decides; a header naming another algorithm is refused
        // (no algorithm confusion).
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| crate::verify::parse_algorithm(&a.to_string()))?;
        if header.alg != alg {
            return None;
        }
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).ok()?;
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.set_issuer(&[&self.public_url]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).ok()?;
        let exp = data.claims.get("exp").and_then(Value::as_i64)?;
        (exp > self.clock.now()).then_some(data.claims)
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.keys.active.alg
    }
}

impl crate::audit::CheckpointSigner for FerryIssuer {
    fn sign_checkpoint(&self, claims: &Map<String, Value>) -> Option<String> {
        let key = &self.keys.active;
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        header.typ = Some("ferry-audit-checkpoint+jwt".into());
        // A file key signs in place; a key manager is a round trip away, which the
        // audit writer waits for (once per `checkpoint_every` lines).
        let file = matches!(key.signer, keys::Signer::File(_));
        block_on(self.sign(&header, claims), file)?.ok()
    }
}

/// Runs a signing future to completion from synchronous code (the audit writer's
/// checkpoints): in place inside a multi-threaded runtime, else on a thread of its own
/// with a runtime of its own. `None` when no runtime could be made. `ready`: the future
/// awaits nothing (a file key's), so one poll completes it, no runtime needed.
pub(crate) fn block_on<T: Send>(
    future: impl std::future::Future<Output = T> + Send,
    ready: bool,
) -> Option<T> {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    if ready
        && let Poll::Ready(v) = future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    {
        return Some(v);
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            Some(tokio::task::block_in_place(|| handle.block_on(future)))
        }
        _ => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()
                        .map(|rt| rt.block_on(future))
                })
                .join()
                .ok()
                .flatten()
        }),
    }
}

#[async_trait]
impl AssertionSigner for FerryIssuer {
    async fn sign_assertion(
        &self,
        subject: &str,
        audience: &str,
        ttl: Duration,
        mut extra: Map<String, Value>,
    ) -> Result<SignedAssertion, ProviderError> {
        extra.insert("sub".into(), Value::String(subject.to_owned()));
        extra.insert("aud".into(), Value::String(audience.to_owned()));
        self.mint(ttl, extra).await
    }
}

/// The provider for `kind = "jwt"`: a token Ferry signs for the target's audience.
#[derive(Debug)]
pub struct JwtProvider {
    issuer: Arc<FerryIssuer>,
    audience: String,
    ttl: Duration,
}

impl JwtProvider {
    /// A provider minting tokens for `audience` that live `ttl`.
    pub fn new(issuer: Arc<FerryIssuer>, audience: String, ttl: Duration) -> Self {
        Self {
            issuer,
            audience,
            ttl,
        }
    }
}

#[async_trait]
impl CredentialProvider for JwtProvider {
    fn kind(&self) -> &'static str {
        "jwt"
    }

    async fn issue(&self, grant: &Grant) -> Result<Credential, ProviderError> {
        let mut claims = Map::new();
        claims.insert(
            IDENTITY_CLAIM.into(),
            json!({
                "issuer": grant.issuer_id,
                "groups": grant.groups,
                "attributes": grant.attributes,
                "target": grant.target_id,
                "revocation": grant.revocation_fields,
            }),
        );
        if !grant.scopes.is_empty() {
            // RFC 8693 §4.2: space-separated scopes.
            claims.insert("scope".into(), Value::String(grant.scopes.join(" ")));
        }
        if let Some(c) = &grant.confirmation {
            let (name, value) = c.member();
            claims.insert("cnf".into(), json!({ name: value }));
        }
        let ttl = self.ttl.min(grant.max_ttl);
        let signed = self
            .issuer
            .sign_assertion(&grant.subject, &self.audience, ttl, claims)
            .await?;
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("access_token".to_owned(), signed.token.clone());
        Ok(Credential {
            access_token: signed.token.clone(),
            issued_token_type: TOKEN_TYPE_JWT.into(),
            // RFC 9449 §5: a DPoP-bound access token is of type DPoP; an mTLS-bound one
            // stays Bearer (RFC 8705 §3).
            token_type: match grant.confirmation {
                Some(ferry_provider_api::Confirmation::Jkt(_)) => "DPoP".into(),
                _ => "Bearer".into(),
            },
            expires_at: signed.expires_at,
            fields,
            upstream_request_id: None,
            token_id: Some(signed.jti),
        })
    }
}
