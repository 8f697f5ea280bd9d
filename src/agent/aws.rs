//! The AWS container-credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`, what
//! ECS and EKS Pod Identity serve): `GET` with the local secret as `Authorization`,
//! answered with `{"AccessKeyId","SecretAccessKey","Token","Expiration"}`.

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::{Agent, Endpoint, Outcome, State, cache, credential_field};

pub fn key(target: &str) -> cache::Key {
    cache::Key {
        reader: cache::Reader::Aws,
        target: Some(target.to_owned()),
        resource: None,
        scopes: Vec::new(),
    }
}

/// An AWS-shaped error: `{"Code","Message"}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"Code": code, "Message": message})),
    )
        .into_response()
}

pub async fn credentials(
    axum::extract::State(agent): State,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (outcome, response) = answer(&agent, uri.path(), &headers).await;
    agent.count(Endpoint::Aws, outcome);
    response
}

async fn answer(agent: &Agent, path: &str, headers: &HeaderMap) -> (Outcome, Response) {
    let given = headers.get("authorization").map(|v| v.as_bytes());
    let Some(given) = given else {
        return (
            Outcome::Refused,
            error(
                StatusCode::UNAUTHORIZED,
                "AccessDenied",
                "no Authorization header: set AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE to the agent's secret_file",
            ),
        );
    };
    if !agent.secret.as_ref().is_some_and(|s| s.matches(given)) {
        return (
            Outcome::Refused,
            error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "the Authorization header is not the agent's secret",
            ),
        );
    }
    let Some(target) = agent.config.aws.get(path) else {
        return (
            Outcome::Refused,
            error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "no AWS target at this path",
            ),
        );
    };
    match agent.credentials.get(&key(target)).await {
        Ok(fresh) => {
            let b = &fresh.body;
            let fields = [
                credential_field(b, "access_key_id"),
                credential_field(b, "secret_access_key"),
                credential_field(b, "session_token"),
                credential_field(b, "expiration"),
            ];
            let [Some(key), Some(secret), Some(token), Some(expiration)] = fields else {
                return (
                    Outcome::Unavailable,
                    error(
                        StatusCode::BAD_GATEWAY,
                        "InvalidTarget",
                        &format!("Ferry's target `{target}` is not an AWS target"),
                    ),
                );
            };
            let mut out = serde_json::Map::new();
            out.insert("AccessKeyId".into(), key.into());
            out.insert("SecretAccessKey".into(), secret.into());
            out.insert("Token".into(), token.into());
            out.insert("Expiration".into(), expiration.into());
            if let Some(account) = credential_field(b, "account_id") {
                out.insert("AccountId".into(), account.into());
            }
            (Outcome::Served, axum::Json(out).into_response())
        }
        Err(e) => (
            Outcome::Unavailable,
            error(
                super::unavailable_status(&e),
                "CredentialsUnavailable",
                &e.to_string(),
            ),
        ),
    }
}
