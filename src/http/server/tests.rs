use super::*;
use axum::routing::get;
use tokio::io::AsyncReadExt as _;

/// A server with a fast `/healthz` and a `/slow` that takes 3 s, within `limits`.
async fn start(limits: ConnectionLimits) -> (SocketAddr, ConnectionStats) {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "slow"
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(listener, router, limits);
    let stats = server.stats();
    tokio::spawn(server.run(std::future::pending()));
    (addr, stats)
}

fn limits(max_connections: usize) -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(500),
        max_connections,
        drain_timeout: Duration::from_secs(1),
    }
}

/// Whether the server closes `tcp` within `within` (reads to end of stream).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn get_on(tcp: &mut TcpStream, path: &str) -> String {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

async fn healthz(addr: SocketAddr) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    get_on(&mut tcp, "/healthz").await
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off_and_healthz_keeps_answering() {
    let (addr, stats) = start(limits(64)).await;
    // A slowloris: one byte of its head every 100 ms.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-pad: aaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        closed_within(&mut slow, Duration::from_secs(1)).await
    });
    // Idle: connected, silent; and kept alive after one request.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut kept = TcpStream::connect(addr).await.unwrap();
    assert!(
        get_on(&mut kept, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    for _ in 0..5 {
        assert!(healthz(addr).await.starts_with("HTTP/1.1 200"));
    }
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "silent kept open"
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(3)).await,
        "idle kept open"
    );
    assert!(trickle.await.unwrap(), "slowloris kept open");
    assert!(healthz(addr).await.starts_with("HTTP/1.1 200"));
    // Each connection left the registry (the last healthz one may still be open).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stats.counts().open, 0, "{:?}", stats.counts());
}

#[tokio::test]
async fn a_request_in_progress_is_not_idle() {
    let (addr, _) = start(limits(64)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // 3 s of handler time, six idle timeouts: the answer still arrives.
    assert!(get_on(&mut tcp, "/slow").await.contains("slow"));
}

#[tokio::test]
async fn at_the_cap_idle_connections_make_room_and_busy_ones_shed_with_503() {
    let (addr, stats) = start(ConnectionLimits {
        idle_timeout: Duration::from_secs(60),
        header_read_timeout: Duration::from_secs(60),
        ..limits(4)
    })
    .await;
    // Four idle connections fill the cap; a fifth is served: the oldest idle one goes.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(healthz(addr).await.starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut idle[0], Duration::from_secs(3)).await);
    assert!(stats.counts().reclaimed >= 1);
    drop(idle);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Four connections busy with a slow request: a fifth is told 503 and closed.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        busy.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shed = healthz(addr).await;
    assert!(shed.starts_with("HTTP/1.1 503"), "{shed}");
    assert!(shed.contains("retry-after: 1") && shed.contains("temporarily_unavailable"));
    assert!(stats.counts().shed >= 1);
    // The busy ones are answered.
    for tcp in &mut busy {
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
}

#[test]
fn the_shed_response_is_well_formed() {
    let text = std::str::from_utf8(SHED_RESPONSE).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(&format!("content-length: {}", body.len())));
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"], "temporarily_unavailable");
}
