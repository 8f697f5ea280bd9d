//! With `--features otlp`: `ferry serve` exports request spans over OTLP/HTTP, joined to
//! the caller's W3C trace. (Runs in `tests/run` as `cargo test --features otlp --test otlp`.)
#![cfg(test)]
#![cfg(feature = "otlp")]

#[path = "common/dev.rs"]
mod dev;

use std::process::Command;

use dev::{dev_config, dev_token, exchange_with_traceparent};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn request_spans_are_exported_with_the_callers_trace_id() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let collector = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::clone(&bodies);
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let bodies = Arc::clone(&bodies);
                async move {
                    bodies.lock().unwrap().push(body.to_vec());
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    });

    let dir = tempfile::tempdir().unwrap();
    let config = dev_config(&format!(
        "\n[telemetry]\notlp_endpoint = \"http://{collector}\"\nservice_name = \"ferry-test\"\n"
    ));
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(&cfg, config).unwrap();
    let port = dev::free_port();
    let mut child = dev::spawn_serve(&cfg, port);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let token = dev_token(&["sub=alice", r#"groups=["deployers"]"#]);
    let r = exchange_with_traceparent(&client, &base, &token, None);
    assert_eq!(r.status(), 200);

    // SIGTERM: a graceful stop flushes the exporter.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "ferry did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let trace_id = hex::decode("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let bodies = bodies.lock().unwrap();
    assert!(!bodies.is_empty(), "no OTLP export arrived");
    assert!(
        bodies
            .iter()
            .any(|b| b.windows(trace_id.len()).any(|w| w == trace_id.as_slice())),
        "the exported spans carry the caller's trace id"
    );
    assert!(
        bodies
            .iter()
            .any(|b| b.windows(10).any(|w| w == b"ferry-test")),
        "service.name exported"
    );
}
