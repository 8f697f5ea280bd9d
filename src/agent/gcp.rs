//! The GCP metadata server, as far as Google's client libraries and gcloud read it
//! (`GCE_METADATA_HOST`, `GCE_METADATA_IP`): the default service account's access token
//! (`?scopes=` honoured), email, scopes, aliases and listing, ID tokens for an audience
//! (a Ferry-signed JWT from the `jwt` target whose audience that is), the project id and
//! number. Every answer carries `Metadata-Flavor: Google`; a request without that
//! header, or one that came through a proxy (`X-Forwarded-For`), is refused as the real
//! server refuses it.

use std::collections::HashMap;

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::config::Gcp;
use super::{Agent, Endpoint, Outcome, State, cache, field, seconds_until};

/// The key of the access token for `scopes` (`None`: the configured ones).
pub fn key(gcp: &Gcp, scopes: Option<Vec<String>>) -> cache::Key {
    cache::Key {
        reader: cache::Reader::Google,
        target: Some(gcp.target.clone()),
        resource: None,
        scopes: scopes.unwrap_or_else(|| gcp.scopes.clone()),
    }
}

fn id_token_key(audience: &str) -> cache::Key {
    cache::Key {
        reader: cache::Reader::Google,
        target: None,
        resource: Some(audience.to_owned()),
        scopes: Vec::new(),
    }
}

pub fn routes(router: axum::Router<std::sync::Arc<Agent>>) -> axum::Router<std::sync::Arc<Agent>> {
    router
        .route("/", axum::routing::get(root))
        .route("/computeMetadata/v1/", axum::routing::get(listing))
        .route("/computeMetadata/v1/{*path}", axum::routing::get(metadata))
}

/// A text answer, with the flavour header.
fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [
            ("metadata-flavor", "Google"),
            ("content-type", "application/text"),
        ],
        body.into(),
    )
        .into_response()
}

fn json(body: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [("metadata-flavor", "Google")],
        axum::Json(body),
    )
        .into_response()
}

/// Why the request is refused before it is read, if it is.
fn refused(headers: &HeaderMap) -> Option<Response> {
    if headers.contains_key("x-forwarded-for") {
        return Some(text(
            StatusCode::FORBIDDEN,
            "Request denied: the request came through a proxy (X-Forwarded-For)\n",
        ));
    }
    let flavor = headers.get("metadata-flavor").map(|v| v.as_bytes());
    if flavor != Some(b"Google".as_slice()) {
        return Some(text(
            StatusCode::FORBIDDEN,
            "Missing required header: Metadata-Flavor: Google\n",
        ));
    }
    None
}

/// `/`, the ping clients send to detect the server.
async fn root(axum::extract::State(agent): State, headers: HeaderMap) -> Response {
    fixed(&agent, &headers, "computeMetadata/\n")
}

/// `/computeMetadata/v1/`.
async fn listing(axum::extract::State(agent): State, headers: HeaderMap) -> Response {
    fixed(&agent, &headers, "instance/\nproject/\nuniverse/\n")
}

/// A fixed answer, to a request with the flavour header.
fn fixed(agent: &Agent, headers: &HeaderMap, body: &'static str) -> Response {
    if let Some(r) = refused(headers) {
        agent.count(Endpoint::Gcp, Outcome::Refused);
        return r;
    }
    agent.count(Endpoint::Gcp, Outcome::Served);
    text(StatusCode::OK, body)
}

async fn metadata(
    axum::extract::State(agent): State,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refused(&headers) {
        agent.count(Endpoint::Gcp, Outcome::Refused);
        return r;
    }
    let (outcome, response) = answer(&agent, &path, &query).await;
    agent.count(Endpoint::Gcp, outcome);
    response
}

async fn answer(agent: &Agent, path: &str, query: &HashMap<String, String>) -> (Outcome, Response) {
    let Some(gcp) = &agent.config.gcp else {
        return (Outcome::Refused, text(StatusCode::NOT_FOUND, "Not Found\n"));
    };
    let ok = |body: String| (Outcome::Served, text(StatusCode::OK, body));
    let not_found = || (Outcome::Refused, text(StatusCode::NOT_FOUND, "Not Found\n"));
    match path {
        "project/project-id" => return ok(gcp.project_id.clone()),
        "project/numeric-project-id" => {
            return gcp
                .project_number
                .map_or_else(not_found, |n| ok(n.to_string()));
        }
        "universe/universe-domain" => return ok("googleapis.com".into()),
        "instance/service-accounts/" | "instance/service-accounts" => {
            return ok(format!("default/\n{}/\n", gcp.email));
        }
        _ => {}
    }
    let Some(rest) = path.strip_prefix("instance/service-accounts/") else {
        return not_found();
    };
    let (account, item) = rest.split_once('/').unwrap_or((rest, ""));
    if account != "default" && account != gcp.email {
        return not_found();
    }
    match item {
        "" if query.get("recursive").is_some_and(|v| v == "true") => (
            Outcome::Served,
            json(serde_json::json!({
                "aliases": ["default"],
                "email": gcp.email,
                "scopes": gcp.scopes,
            })),
        ),
        "" => ok("aliases\nemail\nidentity\nscopes\ntoken\n".into()),
        "aliases" => ok("default\n".into()),
        "email" => ok(gcp.email.clone()),
        "scopes" => ok(gcp.scopes.iter().map(|s| format!("{s}\n")).collect()),
        "token" => {
            let scopes = query.get("scopes").map(|s| {
                s.split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            });
            match agent.credentials.get(&key(gcp, scopes)).await {
                Ok(fresh) => match field(&fresh.body, "access_token") {
                    Some(token) => (
                        Outcome::Served,
                        json(serde_json::json!({
                            "access_token": token,
                            "expires_in": seconds_until(fresh.expires_at),
                            "token_type": "Bearer",
                        })),
                    ),
                    None => unavailable("Ferry's answer has no access_token"),
                },
                Err(e) => failed(&e),
            }
        }
        "identity" => {
            let Some(audience) = query.get("audience").filter(|a| !a.is_empty()) else {
                return (
                    Outcome::Refused,
                    text(
                        StatusCode::BAD_REQUEST,
                        "non-empty audience parameter required\n",
                    ),
                );
            };
            match agent.credentials.get(&id_token_key(audience)).await {
                Ok(fresh) => match field(&fresh.body, "access_token") {
                    Some(token) => ok(token.to_owned()),
                    None => unavailable("Ferry's answer has no access_token"),
                },
                Err(e) => failed(&e),
            }
        }
        _ => not_found(),
    }
}

fn unavailable(why: &str) -> (Outcome, Response) {
    (
        Outcome::Unavailable,
        text(StatusCode::BAD_GATEWAY, format!("{why}\n")),
    )
}

fn failed(e: &cache::Unavailable) -> (Outcome, Response) {
    (
        Outcome::Unavailable,
        text(super::unavailable_status(e), format!("{e}\n")),
    )
}
