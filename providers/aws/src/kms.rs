//! `[signing] backend = "aws_kms"`: Ferry's signing keys as AWS KMS asymmetric keys
//! (`KeySpec` `RSA_2048`/`RSA_3072`/`RSA_4096` or `ECC_NIST_P256`, `KeyUsage`
//! `SIGN_VERIFY`). `GetPublicKey` once when the key is opened, `Sign` per signature with
//! `RSASSA_PKCS1_V1_5_SHA_256` or `ECDSA_SHA_256`: the IAM permissions are `kms:Sign`
//! and `kms:GetPublicKey` on those keys, nothing else.
//!
//! A key named by an alias is resolved to its ARN when it is opened, and every signature
//! names that ARN: re-pointing the alias cannot make Ferry sign with a key other than the
//! one its JWKS publishes (a reload picks up the new target).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec};
use ferry_provider_api::{KeyAlgorithm, KeyFacts, ManagedKey, SignError, jws_signature};

const BACKEND: &str = "aws_kms";
/// The largest message `Sign` takes as `RAW`; a longer signing input is sent as its
/// SHA-256 digest (`MessageType` `DIGEST`).
const RAW_MAX: usize = 4096;

/// Where the keys are.
#[derive(Debug, Clone)]
struct Settings {
    region: Option<String>,
    endpoint: Option<String>,
}

async fn client(settings: &Settings) -> aws_sdk_kms::Client {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_secs(2))
        .operation_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .build();
    let retry = aws_config::retry::RetryConfig::standard().with_max_attempts(2);
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(retry);
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &settings.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    aws_sdk_kms::Client::new(&loader.load().await)
}

/// A KMS error as its code; unavailable when the service is (5xx, throttling, no
/// answer), refused when it answered no.
fn classify<E: aws_sdk_kms::error::ProvideErrorMetadata>(
    err: &aws_sdk_kms::error::SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
) -> SignError {
    use aws_sdk_kms::error::SdkError;
    let unavailable = |reason: String| SignError::Unavailable {
        backend: BACKEND,
        reason,
    };
    match err {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("Unknown").to_owned();
            let status = s.raw().status().as_u16();
            if status >= 500
                || code.contains("Throttl")
                || code == "KMSInternalException"
                || code == "DependencyTimeoutException"
                || code == "KeyUnavailableException"
            {
                unavailable(code)
            } else {
                SignError::Refused {
                    backend: BACKEND,
                    reason: code,
                }
            }
        }
        SdkError::TimeoutError(_) => unavailable("timed out".into()),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            unavailable("unreachable".into())
        }
        _ => unavailable("request could not be built".into()),
    }
}

/// One KMS key.
struct KmsKey {
    facts: KeyFacts,
    /// The key's ARN, as `GetPublicKey` named it.
    arn: String,
    settings: Settings,
    /// Built on the first signature, in the runtime that serves.
    client: tokio::sync::OnceCell<aws_sdk_kms::Client>,
}

impl std::fmt::Debug for KmsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsKey")
            .field("reference", &self.facts.reference)
            .field("arn", &self.arn)
            .finish_non_exhaustive()
    }
}

/// Opens `keys` (key ids, ARNs or `alias/…`): reads each public key and checks that it
/// is a signing key Ferry can use.
pub async fn open(
    region: Option<String>,
    endpoint: Option<String>,
    keys: &[String],
) -> Result<Vec<Arc<dyn ManagedKey>>, String> {
    let settings = Settings { region, endpoint };
    let kms = client(&settings).await;
    let mut out: Vec<Arc<dyn ManagedKey>> = Vec::new();
    for reference in keys {
        let answer = kms
            .get_public_key()
            .key_id(reference)
            .send()
            .await
            .map_err(|e| format!("AWS KMS key `{reference}`: GetPublicKey: {}", classify(&e)))?;
        let what = |problem: &str| format!("AWS KMS key `{reference}`: {problem}");
        if answer.key_usage() != Some(&KeyUsageType::SignVerify) {
            return Err(what("is not a SIGN_VERIFY key"));
        }
        // `KeySpec`, or the deprecated `CustomerMasterKeySpec` it replaced (older
        // endpoints and emulators answer only that one).
        #[expect(
            deprecated,
            reason = "read only when `KeySpec` is absent, for endpoints that do not send it"
        )]
        let legacy = answer.customer_master_key_spec().map(|s| s.as_str());
        let key_spec = answer.key_spec().map(KeySpec::as_str).or(legacy);
        let (algorithm, spec) = match key_spec {
            Some("RSA_2048" | "RSA_3072" | "RSA_4096") => (
                KeyAlgorithm::Rs256,
                SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
            ),
            Some("ECC_NIST_P256") => (KeyAlgorithm::Es256, SigningAlgorithmSpec::EcdsaSha256),
            other => {
                return Err(what(&format!(
                    "has key spec {}; Ferry signs with RSA_2048, RSA_3072, RSA_4096 or ECC_NIST_P256",
                    other.unwrap_or("(none)")
                )));
            }
        };
        if !answer.signing_algorithms().contains(&spec) {
            return Err(what(&format!("does not offer {}", spec.as_str())));
        }
        let spki = answer
            .public_key()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| what("GetPublicKey returned no public key"))?;
        let arn = answer.key_id().unwrap_or(reference).to_owned();
        out.push(Arc::new(KmsKey {
            facts: KeyFacts {
                reference: reference.clone(),
                algorithm,
                spki,
            },
            arn,
            settings: settings.clone(),
            client: tokio::sync::OnceCell::new(),
        }));
    }
    Ok(out)
}

#[async_trait]
impl ManagedKey for KmsKey {
    fn backend(&self) -> &'static str {
        BACKEND
    }
    fn facts(&self) -> &KeyFacts {
        &self.facts
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let kms = self.client.get_or_init(|| client(&self.settings)).await;
        let (message, message_type) = if message.len() <= RAW_MAX {
            (message.to_vec(), MessageType::Raw)
        } else {
            use sha2::Digest as _;
            (sha2::Sha256::digest(message).to_vec(), MessageType::Digest)
        };
        let spec = match self.facts.algorithm {
            KeyAlgorithm::Rs256 => SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
            KeyAlgorithm::Es256 => SigningAlgorithmSpec::EcdsaSha256,
        };
        let answer = kms
            .sign()
            .key_id(&self.arn)
            .message(Blob::new(message))
            .message_type(message_type)
            .signing_algorithm(spec)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let signature =
            answer
                .signature()
                .map(|b| b.as_ref().to_vec())
                .ok_or(SignError::Unavailable {
                    backend: BACKEND,
                    reason: "Sign returned no signature".into(),
                })?;
        // KMS returns ECDSA signatures DER-encoded; JWS wants r || s.
        jws_signature(BACKEND, self.facts.algorithm, signature)
    }
}
