//! Anomaly detection against a real `ferry serve`: each kind driven over its socket
//! (clients bound to 127.0.0.1 and 127.0.0.2), then seen in `ferry_anomalies_total`, the
//! audit trail (chained, `ferry audit verify`), the webhook (a local receiver) and
//! `/admin/anomalies`; a `forbid` on `context.anomalies` refuses, and an acknowledgement
//! lifts it.
#![cfg(test)]

#[path = "common/dev.rs"]
mod dev;

use dev::{Serve, serve};

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

/// Every kind, as metrics and the audit trail name them.
const KINDS: [&str; 6] = [
    "token_reuse_across_clients",
    "subject_burst",
    "denial_burst",
    "first_use",
    "new_network",
    "unknown_kid_burst",
];

const ADMIN_TOKEN: &str = "anomaly-test-admin-token-0123456789";

/// The dev policies, a second target for `first_use`, and the forbid under test.
const POLICY: &str = r#"
@id("deployers")
permit (principal in Ferry::Group::"deployers", action, resource);

@id("no-reused-tokens")
forbid (principal, action, resource)
when { context.anomalies.contains("token_reuse_across_clients") };
"#;

fn config(dir: &Path, webhook: &str) -> std::path::PathBuf {
    let admin = dir.join("admin-token");
    std::fs::write(&admin, ADMIN_TOKEN).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let extra = format!(
        r#"
[[targets]]
id = "other-api"
kind = "jwt"
audience = "https://other-api.example.com"
ttl = "10m"

[audit]
file = "{audit}"

[admin]
token_file = "{admin}"

[anomalies]
learning_period = "0s"
webhook_url = "{webhook}"
webhook_attempts = 2

[anomalies.subject_burst]
window = "1s"
factor = 3.0
min_requests = 8
smoothing = 1.0

[anomalies.denial_burst]
threshold = 3

[anomalies.unknown_kid_burst]
threshold = 3

[anomalies.new_network]
ipv4_prefix = 32
"#,
        audit = dir.join("audit.log").display(),
        admin = admin.display(),
    );
    let text = dev::dev_config_with_policy(dir, &extra, POLICY);
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A client whose connections come from `from`.
fn client(from: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// One exchange of `token` for `target`: the status and the JSON answer.
fn exchange(
    s: &Serve,
    from: &reqwest::blocking::Client,
    token: &str,
    target: &str,
) -> (u16, Value) {
    let form = serde_urlencoded::to_string([
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", token),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("audience", target),
    ])
    .unwrap();
    let r = from
        .post(format!("{}/oauth2/token", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn deployer(sub: &str) -> String {
    dev::dev_token(&[&format!("sub={sub}"), r#"groups=["deployers"]"#])
}

/// `token` with its header's `kid` replaced (the signature no longer matters: the key
/// lookup refuses it first).
fn with_kid(token: &str, kid: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (header, rest) = token.split_once('.').unwrap();
    let mut h: Value = serde_json::from_slice(&b64.decode(header).unwrap()).unwrap();
    h["kid"] = Value::from(kid);
    format!("{}.{rest}", b64.encode(serde_json::to_vec(&h).unwrap()))
}

fn anomalies_metric(s: &Serve, kind: &str) -> u64 {
    let text = client("127.0.0.1")
        .get(format!("{}/metrics", s.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let prefix = format!("ferry_anomalies_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn admin_anomalies(s: &Serve) -> Vec<Value> {
    let v: Value = client("127.0.0.1")
        .get(format!("{}/admin/anomalies", s.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["anomalies"].as_array().unwrap().clone()
}

fn audit_anomalies(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "anomaly")
        .collect()
}

/// Waits (at most 10 s) until the receiver has `n` bodies.
fn await_posts(posts: &Mutex<Vec<Value>>, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = posts.lock().unwrap().clone();
        if got.len() >= n || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn of_kind<'a>(list: &'a [Value], kind: &str) -> Vec<&'a Value> {
    list.iter().filter(|a| a["kind"] == kind).collect()
}

/// Sleeps until just after the next whole second (burst windows start on one).
fn to_next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = now.subsec_millis();
    std::thread::sleep(Duration::from_millis(u64::from(1000 - into) + 30));
}

#[test]
fn each_kind_is_raised_over_a_socket_counted_audited_posted_and_read_by_policy() {
    // The webhook receiver: records each POSTed JSON body.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let posts: Arc<Mutex<Vec<Value>>> = Arc::default();
    // The receiver refuses its first POST: Ferry retries it.
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let receiver = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let posts = Arc::clone(&posts);
        let attempts = Arc::clone(&attempts);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let posts = Arc::clone(&posts);
                let attempts = Arc::clone(&attempts);
                async move {
                    if attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    posts
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &format!("http://{receiver}/hook"));
    let s = serve(&cfg);
    let (one, two) = (client("127.0.0.1"), client("127.0.0.2"));
    for kind in KINDS {
        assert_eq!(anomalies_metric(&s, kind), 0, "{kind} before anything");
    }

    // token_reuse_across_clients: eve's token from .1, then from .2. The second exchange
    // is still granted (it raised the anomaly); from then on the forbid denies eve.
    let eve = deployer("eve");
    assert_eq!(exchange(&s, &one, &eve, "internal-api").0, 200);
    assert_eq!(exchange(&s, &two, &eve, "internal-api").0, 200);
    assert_eq!(anomalies_metric(&s, "token_reuse_across_clients"), 1);
    let fresh = deployer("eve");
    let (status, body) = exchange(&s, &one, &fresh, "internal-api");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_target");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("no-reused-tokens"),
        "{body}"
    );
    // Acknowledged, it is closed: eve is granted again.
    let listed = admin_anomalies(&s);
    let reuse = of_kind(&listed, "token_reuse_across_clients");
    assert_eq!(reuse.len(), 1, "{listed:?}");
    assert_eq!(reuse[0]["subject"], "dev:eve");
    assert_eq!(reuse[0]["open"], true);
    assert_eq!(reuse[0]["evidence"]["first_client"], "127.0.0.1");
    assert_eq!(reuse[0]["evidence"]["second_client"], "127.0.0.2");
    let id = reuse[0]["id"].as_u64().unwrap();
    let ack = one
        .post(format!("{}/admin/anomalies/{id}/acknowledge", s.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .unwrap();
    assert_eq!(ack.status(), 204);
    assert_eq!(exchange(&s, &one, &fresh, "internal-api").0, 200);
    let unknown = one
        .post(format!("{}/admin/anomalies/99999/acknowledge", s.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // new_network (a /32 here): frank from .1, then from .2 with a fresh token.
    assert_eq!(
        exchange(&s, &one, &deployer("frank"), "internal-api").0,
        200
    );
    assert_eq!(
        exchange(&s, &two, &deployer("frank"), "internal-api").0,
        200
    );
    assert_eq!(
        anomalies_metric(&s, "new_network"),
        2,
        "eve's .2 counted too"
    );

    // first_use: frank obtains a second target.
    assert_eq!(exchange(&s, &one, &deployer("frank"), "other-api").0, 200);
    assert_eq!(anomalies_metric(&s, "first_use"), 1);

    // denial_burst: three refusals of mallory (not a deployer) within the window.
    let mallory = dev::dev_token(&["sub=mallory"]);
    for _ in 0..3 {
        assert_eq!(exchange(&s, &one, &mallory, "internal-api").0, 400);
    }
    let denials = of_kind(&admin_anomalies(&s), "denial_burst")
        .into_iter()
        .map(|a| a["evidence"]["dimension"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert!(denials.contains(&"subject".to_owned()), "{denials:?}");

    // unknown_kid_burst: three tokens naming a key id the dev issuer does not publish.
    let forged = with_kid(&deployer("oscar"), "not-a-published-kid");
    for _ in 0..3 {
        assert_eq!(exchange(&s, &one, &forged, "internal-api").0, 400);
    }
    assert_eq!(anomalies_metric(&s, "unknown_kid_burst"), 1);

    // subject_burst: grace makes 1 exchange in one 1s window, then 12 in the next.
    let grace = deployer("grace");
    to_next_second();
    assert_eq!(exchange(&s, &one, &grace, "internal-api").0, 200);
    to_next_second();
    for _ in 0..12 {
        assert_eq!(exchange(&s, &one, &grace, "internal-api").0, 200);
    }
    assert_eq!(anomalies_metric(&s, "subject_burst"), 1);

    // Each was posted to the webhook, the first after a retry.
    let raised: u64 = KINDS.iter().map(|k| anomalies_metric(&s, k)).sum();
    let posted = await_posts(&posts, usize::try_from(raised).unwrap());
    assert_eq!(posted.len() as u64, raised, "{posted:?}");
    assert_eq!(
        attempts.load(std::sync::atomic::Ordering::SeqCst) as u64,
        raised + 1
    );
    let metrics = client("127.0.0.1")
        .get(format!("{}/metrics", s.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "ferry_anomaly_webhook_total{{outcome=\"delivered\"}} {raised}\n"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("ferry_anomaly_webhook_total{outcome=\"dropped\"} 0\n"));

    // Every anomaly is an audit line in the chain…
    drop(s);
    let audited = audit_anomalies(dir.path());
    for kind in KINDS {
        assert!(!of_kind(&audited, kind).is_empty(), "{kind} not audited");
    }
    let reuse = of_kind(&audited, "token_reuse_across_clients")[0];
    assert_eq!(reuse["subject"], "dev:eve");
    assert!(reuse["hash"].is_string() && reuse["seq"].is_u64());
    let trail = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(!trail.contains(&eve), "a token is in the audit trail");
    assert!(trail.contains("\"type\":\"anomaly_acknowledged\""));
    let verify = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["audit", "verify"])
        .arg(dir.path().join("audit.log"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // …and the webhook had each, with the replica that raised it.
    assert_eq!(posted.len(), audited.len(), "{posted:?}");
    let hook = of_kind(&posted, "token_reuse_across_clients");
    assert_eq!(hook.len(), 1);
    assert_eq!(hook[0]["type"], "anomaly");
    assert_eq!(hook[0]["subject"], "dev:eve");
    assert!(hook[0]["replica"].is_string());
}
