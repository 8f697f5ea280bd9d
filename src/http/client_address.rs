//! The client's address behind proxies (`[server] trusted_proxies`, `client_address`).
//!
//! Only a connection from a trusted proxy may say who the client is. With
//! `x-forwarded-for` or `forwarded` (RFC 7239), the client is the right-most hop of the
//! header that is not itself a trusted proxy — every hop left of it was written by
//! someone Ferry does not trust, so a client cannot choose its own address by sending the
//! header. With `proxy-protocol`, a TCP load balancer's PROXY protocol header (v1 text or
//! v2 binary) starts the connection. From an untrusted peer, headers are ignored and the
//! peer is the client. Rate limits, `context.source_ip`, logs and the audit trail all
//! read the address this decides.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderMap;
use ipnet::IpNet;
use tokio::net::TcpStream;

use crate::config::ClientAddress;

/// How a connection's client address is found.
#[derive(Debug, Clone)]
pub struct ClientAddressPolicy {
    pub from: ClientAddress,
    pub trusted: Vec<IpNet>,
}

impl Default for ClientAddressPolicy {
    fn default() -> Self {
        Self {
            from: ClientAddress::Peer,
            trusted: Vec::new(),
        }
    }
}

impl ClientAddressPolicy {
    /// Parses `trusted_proxies` (validation has refused anything that does not parse).
    pub fn of(server: &crate::config::ServerConfig) -> Self {
        Self {
            from: server.client_address.clone(),
            trusted: server
                .trusted_proxies
                .iter()
                .filter_map(|c| parse_cidr(c).ok())
                .collect(),
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Whether the accept loop reads a PROXY header from this peer.
    pub fn reads_proxy_header(&self, peer: SocketAddr) -> bool {
        self.from == ClientAddress::ProxyProtocol && self.trusts(peer.ip())
    }

    /// The client of a request from `peer` with `headers`.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        // Which header to read is known before whether the peer may use one (the
        // default, `peer`, reads none and asks nothing else per request).
        let read: fn(&HeaderMap) -> Option<Vec<IpAddr>> = match self.from {
            ClientAddress::XForwardedFor => forwarded_for,
            ClientAddress::Forwarded => forwarded,
            _ => return peer,
        };
        if !self.trusts(peer.ip()) {
            return peer;
        }
        let hops = read(headers);
        let Some(hops) = hops else {
            return peer;
        };
        // Right to left: the first hop that is not a trusted proxy. When every hop is
        // trusted, the left-most is the client.
        let chosen = hops
            .iter()
            .rev()
            .find(|ip| !self.trusts(**ip))
            .or_else(|| hops.first());
        chosen.map_or(peer, |ip| SocketAddr::new(*ip, 0))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `10.0.0.0/8`, or one address (`10.1.2.3`, a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is not a CIDR (10.0.0.0/8) or an address"))
}

/// Every hop of every `X-Forwarded-For` header, in order; `None` when absent or when
/// any hop is not an address (a header Ferry cannot read says nothing).
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        for hop in value.to_str().ok()?.split(',') {
            hops.push(canonical(parse_node(hop.trim())?));
        }
    }
    (!hops.is_empty()).then_some(hops)
}

/// The `for=` of every element of every `Forwarded` header (RFC 7239 §4), in order.
fn forwarded(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(axum::http::header::FORWARDED) {
        for element in value.to_str().ok()?.split(',') {
            let Some(node) = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
            }) else {
                continue;
            };
            hops.push(canonical(parse_node(node.trim_matches('"'))?));
        }
    }
    (!hops.is_empty()).then_some(hops)
}

/// A node as X-Forwarded-For and RFC 7239 §6 write it: `1.2.3.4`, `1.2.3.4:80`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`, `2001:db8::1`. Obfuscated and `unknown` nodes
/// are not addresses.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = node.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    node.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

/// The v2 signature (PROXY protocol §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Longest v1 line, CRLF included (§2.1).
const V1_MAX: usize = 107;

/// Reads the PROXY header that starts a connection from a trusted load balancer and
/// returns the client it names (`None` for a v2 `LOCAL` connection or an `UNKNOWN`
/// v1 one: the balancer's own, e.g. a health check — the peer is the client). Reads
/// exactly the header, nothing after it; a missing or malformed header is an error and
/// the connection is closed.
pub async fn read_proxy_header(
    tcp: &mut TcpStream,
    within: Duration,
) -> Result<Option<SocketAddr>, String> {
    tokio::time::timeout(within, read_header(tcp))
        .await
        .map_err(|_| "no PROXY header in time".to_owned())?
}

async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, String> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 232]; // 16-byte v2 header + the largest address block (216)
    // Peek until the kind of header is known and it is complete.
    let need = loop {
        let n = tcp.peek(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before its PROXY header".into());
        }
        let seen = buf.get(..n).unwrap_or_default();
        match header_length(seen)? {
            Some(len) => break len,
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    };
    let mut header = vec![0u8; need];
    tcp.read_exact(&mut header)
        .await
        .map_err(|e| e.to_string())?;
    parse_header(&header)
}

/// The whole header's length once `seen` holds it, `None` while more is needed.
fn header_length(seen: &[u8]) -> Result<Option<usize>, String> {
    if seen.len() >= 12 && seen.starts_with(V2_SIGNATURE) {
        let Some(&[hi, lo]) = seen.get(14..16) else {
            return Ok(None);
        };
        let total = 16 + usize::from(u16::from_be_bytes([hi, lo]));
        if total > 232 {
            return Err("a PROXY v2 header longer than its address block allows".into());
        }
        return Ok((seen.len() >= total).then_some(total));
    }
    if V2_SIGNATURE.starts_with(seen) || b"PROXY ".starts_with(seen) {
        return Ok(None);
    }
    if seen.starts_with(b"PROXY ") {
        if let Some(end) = memchr::memmem::find(seen, b"\r\n") {
            return Ok(Some(end + 2));
        }
        if seen.len() >= V1_MAX {
            return Err("a PROXY v1 line longer than 107 bytes".into());
        }
        return Ok(None);
    }
    Err("the connection does not start with a PROXY header".into())
}

/// Parses a complete v1 or v2 header.
pub fn parse_header(header: &[u8]) -> Result<Option<SocketAddr>, String> {
    if let Some(rest) = header.strip_prefix(V2_SIGNATURE) {
        return parse_v2(rest);
    }
    let line = std::str::from_utf8(header)
        .ok()
        .and_then(|l| l.strip_suffix("\r\n"))
        .ok_or("a PROXY v1 line that is not text ending in CRLF")?;
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        [
            "PROXY",
            family @ ("TCP4" | "TCP6"),
            src,
            _dst,
            sport,
            _dport,
        ] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| "a PROXY v1 source that is not an address")?;
            if (*family == "TCP4") != ip.is_ipv4() {
                return Err("a PROXY v1 source of the other address family".into());
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| "a PROXY v1 source port that is not a port")?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err("a PROXY v1 line Ferry cannot read".into()),
    }
}

fn parse_v2(rest: &[u8]) -> Result<Option<SocketAddr>, String> {
    let Some(([ver_cmd, family, _, _], body)) = rest.split_first_chunk::<4>() else {
        return Err("a short PROXY v2 header".into());
    };
    if ver_cmd >> 4 != 2 {
        return Err("a PROXY header of a version other than 2".into());
    }
    match ver_cmd & 0x0f {
        0 => return Ok(None), // LOCAL
        1 => {}               // PROXY
        _ => return Err("a PROXY v2 command other than LOCAL or PROXY".into()),
    }
    // Source address, destination address, source port, destination port (§2.2).
    let source = |len: usize| -> Result<(&[u8], u16), String> {
        let port_at = 2 * len;
        let Some(&[hi, lo]) = body.get(port_at..port_at + 2) else {
            return Err("a PROXY v2 address block that is too short".into());
        };
        let ip = body.get(..len).unwrap_or_default();
        Ok((ip, u16::from_be_bytes([hi, lo])))
    };
    match family >> 4 {
        1 => {
            let (ip, port) = source(4)?;
            let ip: [u8; 4] = ip.try_into().map_err(|_| "a PROXY v2 IPv4 address")?;
            Ok(Some(SocketAddr::new(IpAddr::from(ip), port)))
        }
        2 => {
            let (ip, port) = source(16)?;
            let ip: [u8; 16] = ip.try_into().map_err(|_| "a PROXY v2 IPv6 address")?;
            Ok(Some(SocketAddr::new(IpAddr::from(ip), port)))
        }
        // AF_UNSPEC or AF_UNIX: no client address to use.
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(from: ClientAddress, trusted: &[&str]) -> ClientAddressPolicy {
        ClientAddressPolicy {
            from,
            trusted: trusted.iter().map(|c| parse_cidr(c).unwrap()).collect(),
        }
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, v.parse().unwrap());
        }
        h
    }

    fn at(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn only_a_trusted_proxy_may_name_the_client() {
        let p = policy(ClientAddress::XForwardedFor, &["10.0.0.0/8"]);
        let spoofed = headers("x-forwarded-for", &["6.6.6.6"]);
        assert_eq!(p.client(at("203.0.113.9"), &spoofed), at("203.0.113.9"));
        let via_proxy = headers("x-forwarded-for", &["6.6.6.6, 198.51.100.7"]);
        assert_eq!(
            p.client(at("10.1.1.1"), &via_proxy).ip(),
            "198.51.100.7".parse::<IpAddr>().unwrap(),
            "the right-most untrusted hop, not what the client wrote"
        );
        let two_proxies = headers("x-forwarded-for", &["198.51.100.7", "10.2.2.2"]);
        assert_eq!(
            p.client(at("10.1.1.1"), &two_proxies).ip(),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let garbage = headers("x-forwarded-for", &["not-an-ip"]);
        assert_eq!(p.client(at("10.1.1.1"), &garbage), at("10.1.1.1"));
        let mapped = SocketAddr::new("::ffff:10.1.1.1".parse().unwrap(), 1);
        assert_eq!(
            p.client(mapped, &via_proxy).ip(),
            "198.51.100.7".parse::<IpAddr>().unwrap(),
            "an IPv4-mapped peer is the IPv4 address"
        );
        let peer_only = policy(ClientAddress::Peer, &["10.0.0.0/8"]);
        assert_eq!(peer_only.client(at("10.1.1.1"), &via_proxy), at("10.1.1.1"));
    }

    #[test]
    fn forwarded_elements_are_read_as_rfc_7239_writes_them() {
        let p = policy(ClientAddress::Forwarded, &["10.0.0.0/8"]);
        let h = headers(
            "forwarded",
            &[r#"for=192.0.2.43;proto=https, for="[2001:db8:cafe::17]:4711""#],
        );
        assert_eq!(
            p.client(at("10.0.0.1"), &h).ip(),
            "2001:db8:cafe::17".parse::<IpAddr>().unwrap()
        );
        let unknown = headers("forwarded", &["for=unknown"]);
        assert_eq!(p.client(at("10.0.0.1"), &unknown), at("10.0.0.1"));
    }

    #[test]
    fn proxy_headers_v1_and_v2() {
        assert_eq!(
            parse_header(b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 443\r\n").unwrap(),
            Some("198.51.100.22:35646".parse().unwrap())
        );
        assert_eq!(
            parse_header(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 443\r\n").unwrap(),
            Some("[2001:db8::1]:1".parse().unwrap())
        );
        assert_eq!(parse_header(b"PROXY UNKNOWN\r\n").unwrap(), None);
        assert!(parse_header(b"PROXY TCP4 2001:db8::1 1.1.1.1 1 2\r\n").is_err());
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        v2.extend_from_slice(&[198, 51, 100, 22, 203, 0, 113, 7, 0x8b, 0x3e, 0x01, 0xbb]);
        assert_eq!(header_length(&v2).unwrap(), Some(28));
        assert_eq!(header_length(&v2[..20]).unwrap(), None, "incomplete");
        assert_eq!(
            parse_header(&v2).unwrap(),
            Some("198.51.100.22:35646".parse().unwrap())
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse_header(&local).unwrap(), None);
        assert!(header_length(b"GET / HTTP/1.1\r\n").is_err());
        assert_eq!(header_length(b"PRO").unwrap(), None);
    }
}
