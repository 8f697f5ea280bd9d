//! The console's pages: HTML built on the server from the state the admin API reads,
//! every value escaped. No inline script or style (the CSP forbids both).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::activity::{self, Decided, Minute};
use super::{SignedIn, chart, csrf_ok, csrf_refused, form, see_other};
use crate::http::AppState;
use crate::http::admin;

/// Decisions a page lists at most.
const LISTED: usize = 200;

/// HTML-escapes `s` for text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Unix seconds as RFC 3339 (UTC).
fn at(unix: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `3m ago`, `2h ago`, `in 5d`.
fn ago(unix: i64, now: i64) -> String {
    let d = now - unix;
    let (n, future) = (d.unsigned_abs(), d < 0);
    let text = match n {
        0..=59 => format!("{n}s"),
        60..=3599 => format!("{}m", n / 60),
        3600..=86_399 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

const NAV: [(&str, &str); 6] = [
    ("overview", "Overview"),
    ("issuers", "Issuers"),
    ("decisions", "Decisions"),
    ("policies", "Policies"),
    ("revocations", "Revocations"),
    ("anomalies", "Anomalies"),
];

/// A JSON object's member, or null.
fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

/// A whole page: head, navigation (with the sign-out form) and `body`.
fn page(
    status: StatusCode,
    title: &str,
    session: Option<&SignedIn>,
    active: &str,
    body: &str,
) -> Response {
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Ferry</title><link rel=\"stylesheet\" href=\"/admin/ui/assets/console.css\">\
         <script src=\"/admin/ui/assets/console.js\" defer></script></head><body><header><span class=\"brand\">Ferry</span>",
        esc(title)
    );
    if let Some(s) = session {
        html.push_str("<nav>");
        for (id, name) in NAV {
            let current = if id == active {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(html, "<a href=\"/admin/ui/{id}\"{current}>{name}</a>");
        }
        let _ = write!(
            html,
            "</nav><form method=\"post\" action=\"/admin/ui/sign-out\" class=\"inline\">{}<button type=\"submit\" id=\"sign-out\">Sign out</button></form>",
            csrf_field(s)
        );
    }
    let _ = write!(
        html,
        "</header><main><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

fn csrf_field(s: &SignedIn) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&s.csrf)
    )
}

/// A page with one message (errors, refusals).
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    page(
        status,
        title,
        None,
        "",
        &format!(
            "<p class=\"notice\">{}</p><p><a href=\"/admin/ui/overview\">Back to the console</a></p>",
            esc(text)
        ),
    )
}

/// The sign-in page, with a problem to show when there is one.
pub fn sign_in(status: StatusCode, problem: Option<&str>) -> Response {
    let problem = problem
        .map(|p| format!("<p class=\"notice\" id=\"problem\">{}</p>", esc(p)))
        .unwrap_or_default();
    let body = format!(
        "{problem}<form method=\"post\" action=\"/admin/ui/sign-in\" class=\"card\">\
         <label for=\"token\">Admin token (<code>[admin] token_file</code>)</label>\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"current-password\" required autofocus>\
         <button type=\"submit\" id=\"sign-in\">Sign in</button></form>\
         <p class=\"muted\">A session ends after 15 minutes unused, after 8 hours, at sign-out and when Ferry restarts.</p>"
    );
    page(status, "Sign in", None, "", &body)
}

fn table(head: &[&str], rows: &[String], id: &str) -> String {
    let mut t = format!("<table id=\"{id}\"><thead><tr>");
    for h in head {
        let _ = write!(t, "<th>{h}</th>");
    }
    t.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            t,
            "<tr><td colspan=\"{}\" class=\"muted\">None.</td></tr>",
            head.len()
        );
    }
    for r in rows {
        t.push_str(r);
    }
    t.push_str("</tbody></table>");
    t
}

fn stat(label: &str, value: &str, id: &str) -> String {
    format!(
        "<div class=\"stat\" id=\"{id}\"><span class=\"label\">{}</span><span class=\"value\">{}</span></div>",
        esc(label),
        esc(value)
    )
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".to_owned()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v.is_infinite() => "> 1 s".to_owned(),
        Some(v) => format!("≤ {v} ms"),
    }
}

/// `GET /admin/ui/overview`.
pub async fn overview(
    State(state): State<Arc<AppState>>,
    Extension(s): Extension<SignedIn>,
) -> Response {
    let snapshot = state.snapshot.load();
    let now = state.services.clock.now();
    let minutes = state.console.activity.minutes(now);
    let mut hour = Minute::default();
    for m in &minutes {
        hour.granted += m.granted;
        hour.denied += m.denied;
        hour.errors += m.errors;
        hour.cache_hits += m.cache_hits;
        hour.cache_lookups += m.cache_lookups;
        for (h, c) in hour.latency.iter_mut().zip(m.latency) {
            *h += c;
        }
    }
    let last = minutes.last().copied().unwrap_or_default();
    let store_ok = state.services.store.ping().await.is_ok();
    let revocations = state.services.store.revocations(now).await.map(|r| r.len());
    let open = state
        .services
        .anomalies
        .recent(now, &snapshot.config.anomalies)
        .iter()
        .filter(|a| a.open)
        .count();
    let history = state.reload.history();
    let last_reload = match history.first() {
        None => "none since start-up".to_owned(),
        Some(r) => match &r.error {
            None => format!(
                "{} ({}), {}: loaded",
                at(r.time),
                ago(r.time, now),
                r.trigger
            ),
            Some(e) => format!(
                "{} ({}), {}: REJECTED — {}",
                at(r.time),
                ago(r.time, now),
                r.trigger,
                e
            ),
        },
    };
    let loaded = state.reload.loaded_at();
    let mut body = String::from("<section class=\"stats\">");
    body.push_str(&stat("Config revision", &snapshot.revision, "revision"));
    body.push_str(&stat(
        "Loaded",
        &format!("{} ({})", at(loaded), ago(loaded, now)),
        "loaded",
    ));
    body.push_str(&stat("Last reload", &last_reload, "last-reload"));
    body.push_str(&stat(
        "Exchanges / s (last minute)",
        &format!("{:.2}", last.total() as f64 / 60.0),
        "rate",
    ));
    body.push_str(&stat(
        "Exchanges (last hour)",
        &hour.total().to_string(),
        "hour-total",
    ));
    body.push_str(&stat(
        "Granted",
        &percent(hour.granted, hour.total()),
        "granted",
    ));
    body.push_str(&stat(
        "Denied",
        &percent(hour.denied, hour.total()),
        "denied",
    ));
    body.push_str(&stat(
        "Errors",
        &percent(hour.errors, hour.total()),
        "errors",
    ));
    body.push_str(&stat(
        "p50 latency",
        &ms(activity::quantile(&hour.latency, 0.5)),
        "p50",
    ));
    body.push_str(&stat(
        "p99 latency",
        &ms(activity::quantile(&hour.latency, 0.99)),
        "p99",
    ));
    body.push_str(&stat(
        "Cache hit ratio",
        &percent(hour.cache_hits, hour.cache_lookups),
        "cache",
    ));
    body.push_str(&stat(
        "Store",
        &format!(
            "{} ({})",
            if store_ok { "healthy" } else { "UNAVAILABLE" },
            snapshot.config.store.backend.as_str()
        ),
        "store",
    ));
    body.push_str(&stat(
        "Live revocations",
        &revocations.map_or_else(|_| "store unavailable".to_owned(), |n| n.to_string()),
        "revocations",
    ));
    body.push_str(&stat("Open anomalies", &open.to_string(), "open-anomalies"));
    body.push_str("</section><section><h2>Last hour, per minute</h2>");
    body.push_str(&chart::lines(
        "Exchanges per minute",
        &[
            (
                "granted",
                minutes.iter().map(|m| m.granted as f64).collect(),
            ),
            ("denied", minutes.iter().map(|m| m.denied as f64).collect()),
            ("errors", minutes.iter().map(|m| m.errors as f64).collect()),
        ],
        "",
    ));
    let q = |q: f64| -> Vec<f64> {
        minutes
            .iter()
            .map(|m| activity::quantile(&m.latency, q).map_or(0.0, |v| v.min(1000.0)))
            .collect()
    };
    body.push_str(&chart::lines(
        "Latency (ms, bucket bound)",
        &[("p50", q(0.5)), ("p99", q(0.99))],
        " ms",
    ));
    body.push_str("</section>");
    page(StatusCode::OK, "Overview", Some(&s), "overview", &body)
}

/// `GET /admin/ui/issuers`.
pub async fn issuers(
    State(state): State<Arc<AppState>>,
    Extension(s): Extension<SignedIn>,
) -> Response {
    let report = admin::issuers_report(&state);
    let now = state.services.clock.now();
    let str_of = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let rows: Vec<String> = field(&report, "issuers")
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let keys: Vec<String> = field(i, "key_ids")
                .as_array()
                .into_iter()
                .flatten()
                .map(|k| format!("<code class=\"kid\">{}</code>", esc(&str_of(k))))
                .collect();
            let refreshed = field(i, "last_success")
                .as_i64()
                .map_or("never".to_owned(), |t| format!("{} ({})", at(t), ago(t, now)));
            let ready = field(i, "usable").as_bool().unwrap_or(false);
            format!(
                "<tr class=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if ready { "ok" } else { "bad" },
                esc(&str_of(field(i, "id"))),
                esc(&str_of(field(i, "issuer"))),
                keys.join(" "),
                esc(&refreshed),
                esc(&str_of(field(i, "source"))),
                if field(i, "required").as_bool().unwrap_or(false) { "yes" } else { "no" },
                if ready { "ready" } else { "NOT READY" },
                esc(field(i, "last_error").as_str().unwrap_or("–")),
            )
        })
        .collect();
    let mut body = table(
        &[
            "Issuer",
            "URL",
            "Key ids",
            "Last good refresh",
            "Keys from",
            "Required",
            "Readiness",
            "Last error",
        ],
        &rows,
        "issuers",
    );
    let signing = field(&report, "signing");
    let active = &field(signing, "active");
    let mut keys = vec![format!(
        "<tr><td><code>{}</code></td><td>active</td><td>{}</td><td>{}</td></tr>",
        esc(&str_of(field(active, "kid"))),
        esc(&field(active, "created_at")
            .as_i64()
            .map_or(String::new(), |t| format!("{} ({})", at(t), ago(t, now)))),
        if field(signing, "ephemeral").as_bool().unwrap_or(false) {
            "ephemeral: dies with the process".to_owned()
        } else if let Some(key) = field(signing, "managed").get(0) {
            format!("in the key manager: {}", esc(&str_of(field(key, "key"))))
        } else {
            "published until rotated".to_owned()
        },
    )];
    // A key manager's other listed keys: published, not signing.
    for m in field(signing, "managed")
        .as_array()
        .into_iter()
        .flatten()
        .skip(1)
    {
        keys.push(format!(
            "<tr><td><code>{}</code></td><td>published</td><td>–</td><td>in the key manager: {}</td></tr>",
            esc(&str_of(field(m, "kid"))),
            esc(&str_of(field(m, "key"))),
        ));
    }
    for r in field(signing, "retired").as_array().into_iter().flatten() {
        keys.push(format!(
            "<tr><td><code>{}</code></td><td>retired</td><td>–</td><td>{}</td></tr>",
            esc(&str_of(field(r, "kid"))),
            esc(&field(r, "retired_at")
                .as_i64()
                .map_or(String::new(), |t| format!(
                    "retired {} ({})",
                    at(t),
                    ago(t, now)
                ))),
        ));
    }
    let _ = write!(
        body,
        "<h2>Ferry's signing keys ({}, {})</h2>{}",
        esc(&str_of(field(signing, "algorithm"))),
        esc(&str_of(field(signing, "backend"))),
        table(
            &["Key id", "State", "Created", "Published"],
            &keys,
            "signing-keys"
        )
    );
    page(StatusCode::OK, "Issuers", Some(&s), "issuers", &body)
}

/// A decision's `allow`/`deny` and the refusal code.
fn outcome(d: &Decided) -> (&'static str, &'static str) {
    match &d.record.refusal {
        None => ("allow", "granted"),
        Some(r) => ("deny", r.code),
    }
}

/// `GET /admin/ui/decisions?subject=…&target=…&decision=allow|deny`.
pub async fn decisions(
    State(state): State<Arc<AppState>>,
    Extension(s): Extension<SignedIn>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let want = |k: &str| {
        q.get(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let (subject, target, decision) = (want("subject"), want("target"), want("decision"));
    let rows = state.console.activity.latest(
        LISTED,
        |d| {
            subject.as_ref().is_none_or(|s| d.record.subject.as_deref() == Some(s.as_str()))
                && target.as_ref().is_none_or(|t| d.record.target.as_deref() == Some(t.as_str()))
                && decision.as_ref().is_none_or(|x| outcome(d).0 == x)
        },
        |d| {
            let r = &d.record;
            let (decision, code) = outcome(d);
            format!(
                "<tr class=\"{decision}\"><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td class=\"decision\">{decision}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><a href=\"/admin/ui/decisions/{}\">{}</a></td></tr>",
                esc(&at(d.time)),
                esc(r.subject.as_deref().unwrap_or("–")),
                esc(r.issuer.as_deref().unwrap_or("–")),
                esc(r.target.as_deref().unwrap_or("–")),
                esc(code),
                esc(&r.policy_ids.join(", ")),
                r.cache.filter(|_| r.granted()).map_or("–", |c| c.as_str()),
                esc(&r.token_sha256.as_deref().map_or("–".to_owned(), |t| t.get(..16).unwrap_or(t).to_owned())),
                esc(&url_segment(&r.request_id)),
                esc(&r.request_id),
            )
        },
    );
    let selected = |v: &str| {
        if decision.as_deref() == Some(v) {
            " selected"
        } else {
            ""
        }
    };
    let mut body = format!(
        "<form method=\"get\" action=\"/admin/ui/decisions\" class=\"filters\">\
         <label>Subject <input name=\"subject\" id=\"f-subject\" value=\"{}\"></label>\
         <label>Target <input name=\"target\" id=\"f-target\" value=\"{}\"></label>\
         <label>Decision <select name=\"decision\" id=\"f-decision\"><option value=\"\">any</option>\
         <option value=\"allow\"{}>allow</option><option value=\"deny\"{}>deny</option></select></label>\
         <button type=\"submit\">Filter</button>\
         <label class=\"live\"><input type=\"checkbox\" id=\"live\" data-refresh=\"5\"> refresh every 5 s</label></form>\
         <p class=\"muted\">The latest {LISTED} of the {} decisions this replica keeps. Tokens appear only as the first 16 hex digits of their SHA-256.</p>",
        esc(subject.as_deref().unwrap_or("")),
        esc(target.as_deref().unwrap_or("")),
        selected("allow"),
        selected("deny"),
        activity::RING,
    );
    body.push_str(&table(
        &[
            "Time",
            "Subject",
            "Issuer",
            "Target",
            "Decision",
            "Outcome",
            "Policies",
            "Cache",
            "Token",
            "Request id",
        ],
        &rows,
        "decisions",
    ));
    page(StatusCode::OK, "Decisions", Some(&s), "decisions", &body)
}

/// A request id as a URL path segment (ids are letters, digits and `-_.:`).
fn url_segment(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        .collect()
}

/// `GET /admin/ui/decisions/{request_id}`: the decision's facts and, where the identity
/// was kept (`[audit] record_identity`), its trace re-run under the current config.
pub async fn decision(
    State(state): State<Arc<AppState>>,
    Extension(s): Extension<SignedIn>,
    Path(id): Path<String>,
) -> Response {
    let snapshot = state.snapshot.load_full();
    let found = state.console.activity.find(&id, |d| {
        let r = &d.record;
        let (decision, code) = outcome(d);
        let fact = |k: &str, v: &str| format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
        let mut facts = String::from("<table id=\"facts\"><tbody>");
        facts.push_str(&fact("Time", &at(d.time)));
        facts.push_str(&fact("Request id", &r.request_id));
        facts.push_str(&fact("Decision", decision));
        facts.push_str(&fact("Outcome", code));
        if let Some(refusal) = &r.refusal {
            facts.push_str(&fact("Reason", &refusal.description));
        }
        facts.push_str(&fact("Client address", &r.client_ip.to_string()));
        facts.push_str(&fact("Issuer", r.issuer.as_deref().unwrap_or("–")));
        facts.push_str(&fact("Token sub", r.token_sub.as_deref().unwrap_or("–")));
        facts.push_str(&fact("Subject", r.subject.as_deref().unwrap_or("–")));
        facts.push_str(&fact("Target", r.target.as_deref().unwrap_or("–")));
        facts.push_str(&fact("Policy decision", r.policy_decision.unwrap_or("– (policy did not run)")));
        facts.push_str(&fact("Determining policies", &r.policy_ids.join(", ")));
        if let Some(shadow) = &r.shadow {
            facts.push_str(&fact("Shadow policies", &format!("{} ({})", shadow.decision, shadow.policy_ids.join(", "))));
        }
        facts.push_str(&fact("Cache", r.cache.map_or("–", |c| c.as_str())));
        if let Some(p) = &r.provider {
            facts.push_str(&fact("Provider call", &format!("{} in {:.1} ms", p.outcome, p.seconds * 1000.0)));
        }
        facts.push_str(&fact("Latency", &format!("{:.3} ms", d.latency_ms)));
        facts.push_str(&fact("Token SHA-256", r.token_sha256.as_deref().unwrap_or("–")));
        facts.push_str(&fact("Credential SHA-256", r.credential_sha256.as_deref().unwrap_or("–")));
        facts.push_str(&fact("Config revision", &r.revision));
        facts.push_str("</tbody></table>");
        let trace = match r.replay.as_deref().and_then(|p| Some((p, p.identity.as_ref()?))) {
            Some((p, identity)) => {
                let request = crate::exchange::explain::Request {
                    target: &p.target,
                    scopes: &p.scopes,
                    source_ip: p.source_ip,
                    client_certificate: p.client_certificate.as_deref(),
                    timestamp: d.time,
                    anomalies: &[],
                };
                let decided = crate::exchange::explain::from_identity(&snapshot, identity, &request);
                let rows: Vec<String> = decided
                    .stages
                    .iter()
                    .map(|st| {
                        format!(
                            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td></tr>",
                            esc(st.outcome),
                            esc(st.stage),
                            esc(st.outcome),
                            esc(&st.detail)
                        )
                    })
                    .collect();
                format!(
                    "<h2>Trace under revision {}</h2><p>Re-run from the identity the mapping produced (the token itself is never kept): <strong id=\"verdict\">{}</strong>.</p>{}",
                    esc(&snapshot.revision),
                    if decided.verdict.allowed { "allowed" } else { "denied" },
                    table(&["Stage", "Outcome", "Detail"], &rows, "trace")
                )
            }
            None if r.subject.is_none() => "<p class=\"muted\" id=\"trace\">Refused before the token was mapped: there is no identity to re-run. <code>ferry explain --token</code> with the token traces it.</p>".to_owned(),
            None => "<p class=\"muted\" id=\"trace\">The mapped identity is kept only with <code>[audit] record_identity = true</code>; without it this decision cannot be re-run here (<code>ferry explain</code> with the token can).</p>".to_owned(),
        };
        facts + &trace
    });
    match found {
        Some(body) => page(StatusCode::OK, "Decision", Some(&s), "decisions", &body),
        None => page(
            StatusCode::NOT_FOUND,
            "Decision",
            Some(&s),
            "decisions",
            "<p class=\"notice\">This replica no longer keeps that decision (it keeps the latest 10 000). The audit trail has every one.</p>",
        ),
    }
}

fn policy_rows(texts: &std::collections::BTreeMap<String, (String, String)>) -> Vec<String> {
    texts
        .iter()
        .map(|(id, (file, text))| {
            format!(
                "<tr><td><code>{}</code></td><td>{}</td><td><pre>{}</pre></td></tr>",
                esc(id),
                esc(file),
                esc(text)
            )
        })
        .collect()
}

fn diff_list(name: &str, d: &crate::http::reload::Diff) -> String {
    if d.is_empty() {
        return String::new();
    }
    let mut out = format!("<li>{}:", esc(name));
    for (sign, ids) in [("+", &d.added), ("−", &d.removed), ("~", &d.changed)] {
        for id in ids {
            let _ = write!(
                out,
                " <span class=\"d{}\">{sign}{}</span>",
                if sign == "+" {
                    "add"
                } else if sign == "~" {
                    "chg"
                } else {
                    "del"
                },
                esc(id)
            );
        }
    }
    out.push_str("</li>");
    out
}

/// `GET /admin/ui/policies`: the active policies and targets, and each reload's diff.
pub async fn policies(
    State(state): State<Arc<AppState>>,
    Extension(s): Extension<SignedIn>,
) -> Response {
    let snapshot = state.snapshot.load();
    let now = state.services.clock.now();
    let mut body = format!(
        "<p>Revision <code id=\"policy-revision\">{}</code>.</p><h2>Enforced policies</h2>{}",
        esc(&snapshot.revision),
        table(
            &["Policy", "File", "Text"],
            &policy_rows(&snapshot.policy.texts()),
            "policies"
        )
    );
    if let Some(shadow) = &snapshot.shadow {
        let _ = write!(
            body,
            "<h2>Shadow policies (evaluated, never deciding)</h2>{}",
            table(
                &["Policy", "File", "Text"],
                &policy_rows(&shadow.texts()),
                "shadow-policies"
            )
        );
    }
    let targets: Vec<String> = snapshot
        .targets
        .values()
        .map(|t| {
            format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&t.id),
                esc(t.kind.as_str()),
                esc(&t.scopes.join(" ")),
                esc(&humantime::format_duration(t.ttl).to_string()),
            )
        })
        .collect();
    let _ = write!(
        body,
        "<h2>Targets</h2>{}",
        table(&["Target", "Kind", "Scopes", "TTL"], &targets, "targets")
    );
    let reloads: Vec<String> = state
        .reload
        .history()
        .iter()
        .map(|r| {
            let what = match &r.error {
                Some(e) => format!("<span class=\"bad\">rejected</span>: {}", esc(e)),
                None => {
                    let c = &r.changes;
                    let mut list = String::from("<ul>");
                    for (name, d) in [("policies", &c.policies), ("shadow policies", &c.shadow_policies), ("targets", &c.targets), ("issuers", &c.issuers)] {
                        list.push_str(&diff_list(name, d));
                    }
                    list.push_str("</ul>");
                    for (id, lines) in &c.policy_edits {
                        let _ = write!(list, "<p>Policy <code>{}</code>:</p><pre class=\"diff\">", esc(id));
                        for (sign, line) in lines {
                            let class = match sign {
                                '+' => "dadd",
                                '-' => "ddel",
                                _ => "dsame",
                            };
                            let _ = writeln!(list, "<span class=\"{class}\">{sign} {}</span>", esc(line));
                        }
                        list.push_str("</pre>");
                    }
                    if list == "<ul></ul>" {
                        "no change in policies, targets or issuers".to_owned()
                    } else {
                        list
                    }
                }
            };
            format!(
                "<tr><td>{} ({})</td><td>{}</td><td><code>{}</code> → <code>{}</code></td><td>{what}</td></tr>",
                esc(&at(r.time)),
                esc(&ago(r.time, now)),
                esc(r.trigger),
                esc(&r.old_revision),
                esc(r.revision.as_deref().unwrap_or("–")),
            )
        })
        .collect();
    let _ = write!(
        body,
        "<h2>Reloads since start-up</h2>{}",
        table(
            &["When", "Trigger", "Revision", "What changed"],
            &reloads,
            "reloads"
        )
    );
    page(
        StatusCode::OK,
        "Policies and reloads",
        Some(&s),
        "policies",
        &body,
    )
}

/// The selector fields of a revocation, as the revoke and lift forms send them.
fn revocation_fields(t: &crate::store::RevocationTarget) -> String {
    use crate::store::RevocationTarget as T;
    let hidden =
        |k: &str, v: &str| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", esc(v));
    match t {
        T::Subject { subject } => hidden("kind", "subject") + &hidden("value", subject),
        T::IssuerSub { issuer, sub } => {
            hidden("kind", "issuer_sub") + &hidden("issuer", issuer) + &hidden("value", sub)
        }
        T::Jti { jti } => hidden("kind", "jti") + &hidden("value", jti),
        T::Target { target } => hidden("kind", "target") + &hidden("value", target),
    }
}

fn describe(t: &crate::store::RevocationTarget) -> String {
    use crate::store::RevocationTarget as T;
    match t {
        T::Subject { subject } => format!("subject <code>{}</code>", esc(subject)),
        T::IssuerSub { issuer, sub } => format!(
            "issuer <code>{}</code> sub <code>{}</code>",
            esc(issuer),
            esc(sub)
        ),
        T::Jti { jti } => format!("token jti <code>{}</code>", esc(jti)),
        T::Target { target } => format!("target <code>{}</code>", esc(target)),
    }
}

/// `GET /admin/ui/revocations`.
pub async fn revocations(
    State(state): State<Arc<AppState>>,
    Extension(s): Extension<SignedIn>,
) -> Response {
    let now = state.services.clock.now();
    let list = match state.services.store.revocations(now).await {
        Ok(list) => list,
        Err(e) => {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Revocations",
                Some(&s),
                "revocations",
                &format!(
                    "<p class=\"notice\">The store cannot list revocations: {}</p>",
                    esc(&e.to_string())
                ),
            );
        }
    };
    let rows: Vec<String> = list
        .iter()
        .map(|r| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><form method=\"post\" action=\"/admin/ui/revocations/lift\" class=\"inline confirm\" data-confirm=\"Lift this revocation?\">{}{}<button type=\"submit\" class=\"lift\">Lift</button></form></td></tr>",
                describe(&r.target),
                esc(r.reason.as_deref().unwrap_or("")),
                esc(&at(r.created_at)),
                esc(&ago(r.expires_at, now)),
                csrf_field(&s),
                revocation_fields(&r.target),
            )
        })
        .collect();
    let body = format!(
        "<form method=\"post\" action=\"/admin/ui/revocations\" class=\"card confirm\" id=\"revoke-form\" data-confirm=\"Revoke now, on every replica?\">{}\
         <label for=\"kind\">Revoke</label><select name=\"kind\" id=\"kind\">\
         <option value=\"subject\">a subject (every credential of it)</option>\
         <option value=\"issuer_sub\">an issuer's sub</option>\
         <option value=\"jti\">one token (jti)</option>\
         <option value=\"target\">a target (every credential for it)</option></select>\
         <label for=\"issuer\">Issuer (for an issuer's sub)</label><input name=\"issuer\" id=\"issuer\">\
         <label for=\"value\">Subject, sub, jti or target id</label><input name=\"value\" id=\"value\" required>\
         <label for=\"reason\">Reason</label><input name=\"reason\" id=\"reason\">\
         <button type=\"submit\" id=\"revoke\">Revoke</button></form>{}",
        csrf_field(&s),
        table(
            &["What", "Reason", "Revoked", "Expires", ""],
            &rows,
            "revocations"
        ),
    );
    page(
        StatusCode::OK,
        "Revocations",
        Some(&s),
        "revocations",
        &body,
    )
}

/// The revocation target a revoke or lift form names.
fn form_target(
    f: &HashMap<String, String>,
) -> Result<crate::store::RevocationTarget, &'static str> {
    let value = f
        .get("value")
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let issuer = f
        .get("issuer")
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let (mut subject, mut sub, mut jti, mut target, mut iss) = (None, None, None, None, None);
    match f.get("kind").map(String::as_str) {
        Some("subject") => subject = value,
        Some("issuer_sub") => {
            sub = value;
            iss = issuer;
        }
        Some("jti") => jti = value,
        Some("target") => target = value,
        _ => return Err("choose what to revoke"),
    }
    admin::revocation_target(subject, iss, sub, jti, target)
}

/// `POST /admin/ui/revocations`: revoke (the code `POST /admin/revocations` runs).
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    Extension(s): Extension<SignedIn>,
    body: axum::body::Bytes,
) -> Response {
    let f = form(&body);
    if !csrf_ok(&s, &f) {
        return csrf_refused();
    }
    let target = match form_target(&f) {
        Ok(t) => t,
        Err(e) => return message(StatusCode::BAD_REQUEST, "Not revoked", e),
    };
    let reason = f
        .get("reason")
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    match admin::revoke_now(&state, target, reason, "console").await {
        Ok(_) => see_other("/admin/ui/revocations"),
        Err(e) => message(e.status, "Not revoked", &e.description),
    }
}

/// `POST /admin/ui/revocations/lift`.
pub async fn lift(
    State(state): State<Arc<AppState>>,
    Extension(s): Extension<SignedIn>,
    body: axum::body::Bytes,
) -> Response {
    let f = form(&body);
    if !csrf_ok(&s, &f) {
        return csrf_refused();
    }
    let target = match form_target(&f) {
        Ok(t) => t,
        Err(e) => return message(StatusCode::BAD_REQUEST, "Not lifted", e),
    };
    match admin::lift_now(&state, target, "console").await {
        Ok(_) => see_other("/admin/ui/revocations"),
        Err(e) => message(e.status, "Not lifted", &e.description),
    }
}

/// `GET /admin/ui/anomalies`.
pub async fn anomalies(
    State(state): State<Arc<AppState>>,
    Extension(s): Extension<SignedIn>,
) -> Response {
    let snapshot = state.snapshot.load();
    let now = state.services.clock.now();
    let list = state
        .services
        .anomalies
        .recent(now, &snapshot.config.anomalies);
    let rows: Vec<String> = list
        .iter()
        .map(|l| {
            let a = &l.anomaly;
            let evidence: Vec<String> = a
                .evidence
                .iter()
                .map(|(k, v)| format!("{}=<code>{}</code>", esc(k), esc(v)))
                .collect();
            let status = match (&l.acknowledged, l.open) {
                (Some((by, t)), _) => format!("acknowledged ({}, {})", esc(by), esc(&ago(*t, now))),
                (None, true) => format!(
                    "<form method=\"post\" action=\"/admin/ui/anomalies/{}/acknowledge\" class=\"inline\">{}<button type=\"submit\" class=\"ack\">Acknowledge</button></form>",
                    a.id,
                    csrf_field(&s)
                ),
                (None, false) => "closed (older than open_for)".to_owned(),
            };
            format!(
                "<tr class=\"{}\"><td>{}</td><td><code class=\"kind\">{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{status}</td></tr>",
                if l.open { "open" } else { "closed" },
                esc(&at(a.time)),
                esc(a.kind.as_str()),
                esc(a.subject.as_deref().unwrap_or("–")),
                esc(&a.client_ip.to_string()),
                esc(&a.summary),
                evidence.join(" "),
                esc(&a.request_id),
            )
        })
        .collect();
    let body = format!(
        "<p class=\"muted\">This replica's latest anomalies; the audit trail has every one (<code>\"type\":\"anomaly\"</code>). An open anomaly about a subject is in <code>context.anomalies</code> of its requests until acknowledged or <code>[anomalies] open_for</code> passes.</p>{}",
        table(
            &[
                "Time",
                "Kind",
                "Subject",
                "Client",
                "What",
                "Evidence",
                "Request id",
                "Status"
            ],
            &rows,
            "anomalies"
        )
    );
    page(StatusCode::OK, "Anomalies", Some(&s), "anomalies", &body)
}

/// `POST /admin/ui/anomalies/{id}/acknowledge`.
pub async fn acknowledge(
    State(state): State<Arc<AppState>>,
    Extension(s): Extension<SignedIn>,
    id: Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if !csrf_ok(&s, &form(&body)) {
        return csrf_refused();
    }
    let Some(id) = super::number(id) else {
        return message(
            StatusCode::BAD_REQUEST,
            "Not acknowledged",
            "The anomaly id is a number.",
        );
    };
    if admin::acknowledge_now(&state, id, "console").await {
        see_other("/admin/ui/anomalies")
    } else {
        message(
            StatusCode::NOT_FOUND,
            "Not acknowledged",
            "This replica keeps no anomaly with that id.",
        )
    }
}
