//! The client address behind proxies, through a real `ferry serve`: a policy on
//! `context.source_ip` decides. A spoofed `X-Forwarded-For` from an untrusted peer is
//! ignored, a trusted proxy's sets the address, and a trusted load balancer's PROXY
//! protocol v2 header is read. The trusted proxy is 127.0.0.2 (the client binds to it);
//! everything else connects from 127.0.0.1.
#![cfg(test)]

#[path = "common/dev.rs"]
mod dev;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::process::Child;
use std::time::Duration;

/// Permits only clients in 198.51.100.0/24 (TEST-NET-2: never a loopback peer).
const POLICY: &str = r#"@id("from-the-office")
permit(principal, action, resource) when {
  context.source_ip.isInRange(ip("198.51.100.0/24"))
};
"#;

struct Serve {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(client_address: &str) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let port = dev::free_port();
    let server = format!(
        "public_url = \"http://127.0.0.1:8080\"\ntrusted_proxies = [\"127.0.0.2/32\"]\nclient_address = \"{client_address}\""
    );
    let text = dev::dev_config_with_policy(dir.path(), "", POLICY)
        .replace("public_url = \"http://127.0.0.1:8080\"", &server);
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut child = dev::spawn_serve(&cfg, port);
    dev::await_ready(&mut child, &format!("http://127.0.0.1:{port}"));
    Serve {
        child,
        port,
        _dir: dir,
    }
}

/// An exchange from `from`, with an `X-Forwarded-For` of `forwarded_for` if given: the
/// status and body.
fn exchange(s: &Serve, from: [u8; 4], forwarded_for: Option<&str>) -> (u16, String) {
    let client = reqwest::blocking::Client::builder()
        .local_address(IpAddr::from(from))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut req = client
        .post(format!("http://127.0.0.1:{}/oauth2/token", s.port))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(dev::exchange_form(&dev::dev_token(&["sub=alice"]), None));
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    let res = req.send().unwrap();
    (res.status().as_u16(), res.text().unwrap())
}

#[test]
fn only_a_trusted_proxy_sets_the_address_policy_sees() {
    let s = serve("x-forwarded-for");
    let (status, body) = exchange(&s, [127, 0, 0, 1], Some("198.51.100.7"));
    assert_eq!(
        status, 400,
        "a spoofed header from an untrusted peer: {body}"
    );
    assert!(body.contains("no policy permits"), "{body}");
    let (status, body) = exchange(&s, [127, 0, 0, 2], Some("198.51.100.7"));
    assert_eq!(status, 200, "the trusted proxy names the client: {body}");
    let (status, body) = exchange(&s, [127, 0, 0, 2], Some("198.51.100.7, 203.0.113.9"));
    assert_eq!(
        status, 400,
        "the right-most untrusted hop is the client, not what it wrote: {body}"
    );
    let (status, _) = exchange(&s, [127, 0, 0, 2], None);
    assert_eq!(status, 400, "no header: the proxy itself");
}

/// Sends `prefix` then an exchange over one connection from `from`; the status line.
fn raw_exchange(s: &Serve, from: [u8; 4], prefix: &[u8]) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tcp = rt
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((from, 0)))?;
            socket
                .connect(SocketAddr::from(([127, 0, 0, 1], s.port)))
                .await
        })
        .unwrap();
    let mut tcp = tcp.into_std().unwrap();
    tcp.set_nonblocking(false).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = dev::exchange_form(&dev::dev_token(&["sub=alice"]), None);
    let mut request = prefix.to_vec();
    request.extend_from_slice(
        format!(
            "POST /oauth2/token HTTP/1.1\r\nhost: ferry\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    tcp.write_all(&request).unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

/// A PROXY protocol v2 header (TCP over IPv4) naming `source`.
fn proxy_v2(source: [u8; 4]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    h.extend_from_slice(&source);
    h.extend_from_slice(&[127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90]);
    h
}

#[test]
fn a_trusted_load_balancers_proxy_header_names_the_client() {
    let s = serve("proxy-protocol");
    let from_office = proxy_v2([198, 51, 100, 7]);
    assert_eq!(
        raw_exchange(&s, [127, 0, 0, 2], &from_office),
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        raw_exchange(
            &s,
            [127, 0, 0, 2],
            b"PROXY TCP4 198.51.100.8 127.0.0.1 40000 8080\r\n"
        ),
        "HTTP/1.1 200 OK",
        "v1"
    );
    assert_eq!(
        raw_exchange(&s, [127, 0, 0, 2], &proxy_v2([203, 0, 113, 9])),
        "HTTP/1.1 400 Bad Request"
    );
    // An untrusted peer's PROXY header is not read: it is HTTP garbage.
    assert_eq!(
        raw_exchange(&s, [127, 0, 0, 1], &from_office),
        "HTTP/1.1 400 Bad Request"
    );
    // A trusted balancer that sends no header: the connection is closed unanswered.
    assert_eq!(raw_exchange(&s, [127, 0, 0, 2], b""), "");
}
