//! The one place errors become HTTP: RFC 6749 §5.2 JSON, `Cache-Control: no-store`.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_provider_api::ProviderError;

use crate::exchange::{ExchangeError, RequestError};

/// An error on the wire.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// RFC 6749 error code.
    pub code: &'static str,
    /// Human description (never a token or secret; empty for 5xx bugs).
    pub description: String,
    /// `Retry-After`, for 429/503.
    pub retry_after: Option<Duration>,
    /// `WWW-Authenticate`, for 401 (RFC 6749 §5.2, RFC 9110 §11.6.1).
    pub www_authenticate: Option<&'static str>,
    /// `DPoP-Nonce`, with `use_dpop_nonce` (RFC 9449 §8).
    pub dpop_nonce: Option<String>,
}

impl ApiError {
    /// A 400 `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// A 400 `invalid_dpop_proof` (RFC 9449 §5, with the §7.1 challenge).
    pub fn invalid_dpop_proof(description: impl Into<String>) -> Self {
        Self {
            www_authenticate: Some("DPoP error=\"invalid_dpop_proof\""),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_dpop_proof", description)
        }
    }

    /// Any status and code.
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            retry_after: None,
            www_authenticate: None,
            dpop_nonce: None,
        }
    }

    /// A 400 `use_dpop_nonce` with the nonce to put in the next proof (RFC 9449 §8).
    pub fn use_dpop_nonce(nonce: String) -> Self {
        Self {
            www_authenticate: Some("DPoP error=\"use_dpop_nonce\""),
            dpop_nonce: Some(nonce),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "use_dpop_nonce",
                "the DPoP proof must carry the nonce in the DPoP-Nonce header",
            )
        }
    }

    /// A 500 whose body says nothing; the cause goes to the log only.
    pub fn server_error(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "server error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "")
    }

    /// A 503 for a store that could not answer (the cause is logged, not sent).
    pub fn store_unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(%cause, "store unavailable");
        Self::unavailable(
            "shared state is unavailable; retry later",
            Duration::from_secs(2),
        )
    }

    /// A 503 `temporarily_unavailable`.
    pub fn unavailable(description: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                description,
            )
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Invalid(_) => Self::invalid_request(e.to_string()),
            RequestError::UnsupportedGrantType(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                e.to_string(),
            ),
        }
    }
}

impl From<ExchangeError> for ApiError {
    fn from(e: ExchangeError) -> Self {
        let code = e.code();
        match &e {
            ExchangeError::Verify(v) if v.is_unavailable() => {
                Self::unavailable(e.to_string(), v.retry_after())
            }
            ExchangeError::RateLimited(after) => Self {
                retry_after: Some(Duration::from_secs(*after)),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, e.to_string())
            },
            ExchangeError::DpopProof(d) => Self::invalid_dpop_proof(d.clone()),
            ExchangeError::StoreUnavailable(cause) => Self::store_unavailable(cause),
            ExchangeError::Provider(p) => match p {
                ProviderError::Denied { code: cloud } => Self::new(
                    StatusCode::BAD_REQUEST,
                    code,
                    format!("the target's cloud refused the exchange: {cloud}"),
                ),
                ProviderError::Unavailable { retry_after, .. } => Self::unavailable(
                    "the target's cloud is unavailable; retry later",
                    retry_after.unwrap_or(Duration::from_secs(5)),
                ),
                ProviderError::BadAnswer(cause) => {
                    tracing::warn!(%cause, "the target's cloud gave an unusable answer");
                    Self::unavailable(
                        "the target's cloud gave an answer Ferry cannot use; retry later",
                        Duration::from_secs(5),
                    )
                }
                ProviderError::Misconfigured(_) | ProviderError::Internal(_) => {
                    Self::server_error(p)
                }
            },
            // Every other refusal is a 400 with its code (`ExchangeError::code`).
            _ => Self::new(StatusCode::BAD_REQUEST, code, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.status.is_server_error() && self.description.is_empty() {
            serde_json::json!({ "error": self.code })
        } else {
            serde_json::json!({ "error": self.code, "error_description": self.description })
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Some(after) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string())
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        if let Some(v) = self.dpop_nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
            headers.insert("dpop-nonce", v);
        }
        if let Some(challenge) = self.www_authenticate {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}
