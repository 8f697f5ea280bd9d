//! Azure managed identity: the App Service protocol (`IDENTITY_ENDPOINT` +
//! `IDENTITY_HEADER`, `api-version=2019-08-01`) and the instance metadata (IMDS) shape
//! (`/metadata/identity/oauth2/token`, `api-version=2018-02-01`, `Metadata: true`), each
//! resource mapped to a Ferry target by the config. A resource with no mapping is
//! refused, naming the ones that are mapped.

use std::collections::HashMap;

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::config::normalise_resource;
use super::{Agent, Endpoint, Outcome, State, cache, credential_field, field};

pub fn key(target: &str) -> cache::Key {
    cache::Key {
        reader: cache::Reader::Azure,
        target: Some(target.to_owned()),
        resource: None,
        scopes: Vec::new(),
    }
}

/// The error shape both protocols use: `{"error","error_description"}`.
fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": code, "error_description": description})),
    )
        .into_response()
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    AppService,
    Imds,
}

pub async fn app_service(
    axum::extract::State(agent): State,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let given = headers.get("x-identity-header").map(|v| v.as_bytes());
    let (outcome, response) = match given {
        None => (
            Outcome::Refused,
            error(
                StatusCode::UNAUTHORIZED,
                "invalid_request",
                "no X-IDENTITY-HEADER: set IDENTITY_HEADER to the agent's secret_file contents",
            ),
        ),
        Some(g) if !agent.secret.as_ref().is_some_and(|s| s.matches(g)) => (
            Outcome::Refused,
            error(
                StatusCode::FORBIDDEN,
                "invalid_request",
                "X-IDENTITY-HEADER is not the agent's secret",
            ),
        ),
        Some(_) => answer(&agent, &query, Shape::AppService).await,
    };
    agent.count(Endpoint::AzureAppService, outcome);
    response
}

pub async fn imds(
    axum::extract::State(agent): State,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let (outcome, response) = if headers.contains_key("x-forwarded-for") {
        (
            Outcome::Refused,
            error(
                StatusCode::FORBIDDEN,
                "invalid_request",
                "the request came through a proxy (X-Forwarded-For)",
            ),
        )
    } else if headers.get("metadata").map(|v| v.as_bytes()) != Some(b"true".as_slice()) {
        (
            Outcome::Refused,
            error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Required metadata header not specified",
            ),
        )
    } else {
        answer(&agent, &query, Shape::Imds).await
    };
    agent.count(Endpoint::AzureImds, outcome);
    response
}

async fn answer(
    agent: &Agent,
    query: &HashMap<String, String>,
    shape: Shape,
) -> (Outcome, Response) {
    let refuse =
        |status, code, description: &str| (Outcome::Refused, error(status, code, description));
    let Some(azure) = &agent.config.azure else {
        return refuse(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "Azure is not configured",
        );
    };
    let version = match shape {
        Shape::AppService => "2019-08-01",
        Shape::Imds => "2018-02-01",
    };
    match query.get("api-version") {
        Some(v) if v == version => {}
        Some(v) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("api-version `{v}` is not supported here; use {version}"),
            );
        }
        None => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "api-version is required",
            );
        }
    }
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "resource is required",
        );
    };
    // An identity other than the one this agent holds is not served in its place.
    let asked = [
        "client_id",
        "object_id",
        "principal_id",
        "mi_res_id",
        "msi_res_id",
    ]
    .iter()
    .find_map(|k| query.get(*k).map(|v| (*k, v)));
    if let Some((k, v)) = asked
        && !(k == "client_id" && azure.client_id.as_deref() == Some(v.as_str()))
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!(
                "this agent holds one identity; `{k}` names another (leave it out, or set [azure] client_id to it)"
            ),
        );
    }
    let Some(target) = azure.resources.get(&normalise_resource(resource)) else {
        let mapped: Vec<&str> = azure.resources.keys().map(String::as_str).collect();
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            &format!(
                "no target for resource `{resource}` on this agent; mapped: {}",
                mapped.join(", ")
            ),
        );
    };
    let fresh = match agent.credentials.get(&key(target)).await {
        Ok(f) => f,
        Err(e) => {
            return (
                Outcome::Unavailable,
                error(
                    super::unavailable_status(&e),
                    "temporarily_unavailable",
                    &e.to_string(),
                ),
            );
        }
    };
    let Some(token) = field(&fresh.body, "access_token") else {
        return (
            Outcome::Unavailable,
            error(
                StatusCode::BAD_GATEWAY,
                "temporarily_unavailable",
                "Ferry's answer has no access_token",
            ),
        );
    };
    let expires_on = credential_field(&fresh.body, "expires_on")
        .map(str::to_owned)
        .unwrap_or_else(|| {
            fresh
                .expires_at
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string()
        });
    let mut out = serde_json::Map::new();
    out.insert("access_token".into(), token.into());
    out.insert("expires_on".into(), expires_on.into());
    out.insert("resource".into(), resource.as_str().into());
    out.insert("token_type".into(), "Bearer".into());
    if let Some(id) = &azure.client_id {
        out.insert("client_id".into(), id.as_str().into());
    }
    if shape == Shape::Imds {
        let left = super::seconds_until(fresh.expires_at).to_string();
        out.insert("expires_in".into(), left.clone().into());
        out.insert("ext_expires_in".into(), left.into());
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        out.insert("not_before".into(), now.to_string().into());
    }
    (Outcome::Served, axum::Json(out).into_response())
}
