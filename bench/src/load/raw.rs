//! The raw HTTP/1.1 generator (wrk's way): a connection per task, requests written
//! from pre-built bytes, responses framed with httparse.

use crate::cpu::*;
use crate::load::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

/// The raw generator, laid out as wrk lays out its threads: two threads, each with its
/// own single-threaded event loop and its own half of the connections (no work moves
/// between them, so no connection waits behind another thread's queue).
///
/// With a `rate` (requests per second over all connections) the load is an open loop:
/// each connection sends on its own fixed schedule (rate ÷ connections), as wrk2 does.
pub(crate) fn drive_raw(driver: &Driver, load: &Load, shape: Shape) -> Tally {
    let Shape {
        connections,
        duration,
        rate,
    } = shape;
    const THREADS: usize = 2;
    let deadline = Instant::now() + duration;
    let (cpu0, preempted0) = ferry_threads();
    let started = Instant::now();
    let mut total = Tally::default();
    #[expect(clippy::cast_precision_loss, reason = "a connection count")]
    let pace = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(connections.max(1) as f64 / r));
    std::thread::scope(|scope| {
        let mut threads = Vec::new();
        let mut first = 0;
        for k in 0..THREADS {
            let share = connections / THREADS + usize::from(k < connections % THREADS);
            let thread_first = first;
            first += share;
            let spawned = std::thread::Builder::new()
                .name("bench-load".into())
                .spawn_scoped(scope, move || {
                    driver.scheduling.apply();
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return Tally {
                            errors: 1,
                            ..Tally::default()
                        };
                    };
                    rt.block_on(async {
                        let mut set = tokio::task::JoinSet::new();
                        for c in 0..share {
                            // Schedules spread evenly over one interval: connections
                            // that all sent at once would measure their own burst.
                            #[expect(clippy::cast_precision_loss, reason = "connection indices")]
                            let phase = pace.map(|p| {
                                p.mul_f64((thread_first + c) as f64 / connections.max(1) as f64)
                            });
                            set.spawn(raw_connection(load.clone(), deadline, pace, phase));
                        }
                        let mut t = Tally::default();
                        while let Some(done) = set.join_next().await {
                            match done {
                                Ok(c) => t.absorb(c),
                                Err(_) => t.errors += 1,
                            }
                        }
                        t
                    })
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(_) => total.errors += 1,
            }
        }
        for handle in threads {
            match handle.join() {
                Ok(t) => total.absorb(t),
                Err(_) => total.errors += 1,
            }
        }
    });
    finish(total, started, cpu0, preempted0)
}

/// One connection of the raw generator, sending requests until the deadline: each as
/// soon as the last is answered, or with a `pace`, the n-th at start + phase + n × pace.
///
/// Paced, a request's latency counts from its intended send time whenever the
/// connection was still busy with the previous one then: a slow answer delays the
/// requests behind it, and that wait is part of their latency (no coordinated
/// omission). When the connection was idle, it counts from the actual send, so the
/// generator's own timer lateness (tokio's timer has millisecond resolution) is not
/// charged to Ferry.
pub(crate) async fn raw_connection(
    load: Load,
    deadline: Instant,
    pace: Option<Duration>,
    phase: Option<Duration>,
) -> Tally {
    let mut t = Tally::default();
    let Some((addr, host, path)) = split_url(load.url()) else {
        t.errors += 1;
        return t;
    };
    let (load, tls) = load.split_tls();
    let (load, proofs) = load.split_dpop();
    let mut conn = RawConnection::new(addr);
    conn.tls = tls.cloned();
    let mut requests =
        RawRequests::new(matches!(load, Load::Post(..)), &host, &path, load.headers());
    let start = Instant::now() + phase.unwrap_or_default();
    let mut free_at = start;
    for n in 0u32.. {
        let intended = pace.map(|p| start + p * n);
        if intended.unwrap_or_else(Instant::now) >= deadline {
            break;
        }
        if let Some(at) = intended
            && at > Instant::now()
        {
            tokio::time::sleep_until(at.into()).await;
        }
        if let Some((proofs, cursor)) = proofs {
            requests.dpop = next_body(proofs, cursor).cloned();
        }
        let request = match load {
            Load::Post(_, bodies, cursor) => {
                requests.with_body(Some(next_body(bodies, cursor).map_or(&[][..], |b| &b[..])))
            }
            _ => requests.with_body(None),
        };
        let sent_wall = SystemTime::now();
        let sent = Instant::now();
        let from = match intended {
            Some(at) if free_at > at => at,
            _ => sent,
        };
        let answer = conn.round_trip(request).await;
        free_at = Instant::now();
        match answer {
            Ok(status) if (200..300).contains(&status) => {
                let us = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
                t.latencies_us.push(us(free_at.duration_since(from)));
                // The kernel stamps arrivals with the wall clock; a step of that clock
                // mid-request leaves the request out rather than skewing the tally.
                if let Some(Ok(d)) = conn.arrived.map(|at| at.duration_since(sent_wall)) {
                    t.arrival_us.push(us(d));
                }
            }
            // A server that refuses or drops connections is not hammered in a loop.
            _ => {
                t.errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    t
}

/// `http://127.0.0.1:port/path` (or https) → (address, `host:port`, `/path`).
pub(crate) fn split_url(url: &str) -> Option<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    Some((host.parse().ok()?, host.to_owned(), format!("/{path}")))
}

/// A raw connection's requests: the head built once (all of a GET; a POST's up to its
/// body's length), then per request only the length and the body (and a DPoP proof).
pub(crate) struct RawRequests {
    pub(crate) bytes: Vec<u8>,
    pub(crate) head: usize,
    /// The next request's `DPoP` header value.
    pub(crate) dpop: Option<Bytes>,
}

impl RawRequests {
    pub(crate) fn new(post: bool, host: &str, path: &str, headers: &str) -> Self {
        let head = if post {
            format!(
                "POST {path} HTTP/1.1\r\nhost: {host}\r\n\
                 content-type: application/x-www-form-urlencoded\r\n"
            )
        } else {
            format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{headers}\r\n")
        };
        let mut bytes = Vec::with_capacity(4096);
        bytes.extend_from_slice(head.as_bytes());
        Self {
            bytes,
            head: head.len(),
            dpop: None,
        }
    }

    /// The request to send: the head alone (`None`), or with this body.
    pub(crate) fn with_body(&mut self, body: Option<&[u8]>) -> &[u8] {
        use std::io::Write as _;
        if let Some(body) = body {
            self.bytes.truncate(self.head);
            if let Some(proof) = self.dpop.take() {
                self.bytes.extend_from_slice(b"dpop: ");
                self.bytes.extend_from_slice(&proof);
                self.bytes.extend_from_slice(b"\r\n");
            }
            let _ = write!(self.bytes, "content-length: {}\r\n\r\n", body.len());
            self.bytes.extend_from_slice(body);
        }
        &self.bytes
    }
}

/// One keep-alive HTTP/1.1 connection of the raw generator; reconnects after an error or
/// a `connection: close`.
pub(crate) struct RawConnection {
    pub(crate) addr: SocketAddr,
    pub(crate) stream: Option<tokio::net::TcpStream>,
    /// With TLS, the session over `stream`'s connection (then `stream` is `None`).
    pub(crate) tls_stream: Option<Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>,
    pub(crate) tls: Option<Tls>,
    pub(crate) buf: Vec<u8>,
    /// What one `recvmsg` reads into, before it is appended to `buf`.
    pub(crate) chunk: Box<[u8]>,
    /// Room for the `SCM_TIMESTAMPNS` control message.
    pub(crate) control: Vec<u8>,
    /// The kernel's receive time of the response's last bytes (`SO_TIMESTAMPNS`), if
    /// it gave one: when the response reached this side, before this thread got a core
    /// to read it.
    pub(crate) arrived: Option<SystemTime>,
    pub(crate) timeout: Duration,
}

impl RawConnection {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            tls_stream: None,
            tls: None,
            buf: Vec::with_capacity(16 * 1024),
            chunk: vec![0; 16 * 1024].into_boxed_slice(),
            control: nix::cmsg_space!(nix::sys::time::TimeSpec),
            arrived: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Appends what the socket holds (up to one chunk) to `buf` and notes the kernel's
    /// receive time of the bytes read (for TCP, of the last segment). 0 at end of stream.
    pub(crate) async fn read_stamped(&mut self) -> Result<usize, ()> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        use std::os::fd::AsRawFd as _;
        if let Some(tls) = &mut self.tls_stream {
            // Decrypted bytes carry no kernel receive time.
            use tokio::io::AsyncReadExt as _;
            let n = tls.read(&mut self.chunk).await.map_err(|_| ())?;
            self.buf.extend_from_slice(self.chunk.get(..n).ok_or(())?);
            return Ok(n);
        }
        let stream = self.stream.as_ref().ok_or(())?;
        let fd = stream.as_raw_fd();
        loop {
            stream.readable().await.map_err(|_| ())?;
            let read = stream.try_io(tokio::io::Interest::READABLE, || {
                let mut iov = [std::io::IoSliceMut::new(&mut self.chunk)];
                let msg = recvmsg::<()>(fd, &mut iov, Some(&mut self.control), MsgFlags::empty())
                    .map_err(std::io::Error::from)?;
                let stamp = msg.cmsgs().ok().and_then(|mut all| {
                    all.find_map(|m| match m {
                        ControlMessageOwned::ScmTimestampns(ts) => Some(Duration::from(ts)),
                        _ => None,
                    })
                });
                Ok((msg.bytes, stamp))
            });
            match read {
                Ok((n, stamp)) => {
                    self.buf.extend_from_slice(self.chunk.get(..n).ok_or(())?);
                    if let Some(since_epoch) = stamp {
                        self.arrived = Some(SystemTime::UNIX_EPOCH + since_epoch);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(()),
            }
        }
    }

    /// Sends one request and reads its whole response; returns the status. Bounded: a
    /// response that takes longer than the timeout (10 s), or whose head or body is over
    /// 1 MiB, is an error.
    pub(crate) async fn round_trip(&mut self, request: &[u8]) -> Result<u16, ()> {
        let result = tokio::time::timeout(self.timeout, self.try_round_trip(request))
            .await
            .unwrap_or(Err(()));
        if !matches!(result, Ok((_, true))) || self.tls.as_ref().is_some_and(|t| t.per_request) {
            self.stream = None;
            self.tls_stream = None;
        }
        result.map(|(status, _)| status)
    }

    /// (status, whether the connection stays open).
    pub(crate) async fn try_round_trip(&mut self, request: &[u8]) -> Result<(u16, bool), ()> {
        use tokio::io::AsyncWriteExt as _;
        const LIMIT: usize = 1 << 20;
        if let Some(tls) = &self.tls {
            if self.tls_stream.is_none() {
                let tcp = tokio::net::TcpStream::connect(self.addr)
                    .await
                    .map_err(|_| ())?;
                tcp.set_nodelay(true).map_err(|_| ())?;
                let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
                let session = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))
                    .connect(name, tcp)
                    .await
                    .map_err(|_| ())?;
                self.tls_stream = Some(Box::new(session));
            }
            self.tls_stream
                .as_mut()
                .ok_or(())?
                .write_all(request)
                .await
                .map_err(|_| ())?;
        } else if self.stream.is_none() {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|_| ())?;
            stream.set_nodelay(true).map_err(|_| ())?;
            nix::sys::socket::setsockopt(
                &stream,
                nix::sys::socket::sockopt::ReceiveTimestampns,
                &true,
            )
            .map_err(|_| ())?;
            self.stream = Some(stream);
        }
        if let Some(stream) = self.stream.as_mut() {
            stream.write_all(request).await.map_err(|_| ())?;
        }
        self.buf.clear();
        self.arrived = None;
        let (status, head_len, body_len, keep_alive) = loop {
            if self.read_stamped().await? == 0 {
                return Err(());
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let header = |name: &str| {
                        response
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .and_then(|h| std::str::from_utf8(h.value).ok())
                    };
                    // Ferry answers with a length; anything else is not what was asked.
                    let body_len = header("content-length")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .ok_or(())?;
                    let close =
                        header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    break (response.code.ok_or(())?, head_len, body_len, !close);
                }
                Ok(httparse::Status::Partial) if self.buf.len() < LIMIT => {}
                _ => return Err(()),
            }
        };
        let total = head_len.checked_add(body_len).ok_or(())?;
        if total > LIMIT {
            return Err(());
        }
        while self.buf.len() < total {
            if self.read_stamped().await? == 0 {
                return Err(());
            }
        }
        // Nothing else was asked for, so nothing else may have arrived.
        if self.buf.len() != total {
            return Err(());
        }
        Ok((status, keep_alive))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    #[test]
    fn urls_split_into_address_host_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/oauth2/token"),
            Some((
                "127.0.0.1:8080".parse().unwrap(),
                "127.0.0.1:8080".to_owned(),
                "/oauth2/token".to_owned()
            ))
        );
        // https too (the TLS scenarios); a host name is not an address.
        assert_eq!(
            split_url("https://127.0.0.1:8443/").map(|(a, _, p)| (a.port(), p)),
            Some((8443, "/".to_owned()))
        );
        assert_eq!(split_url("http://localhost:8080/"), None);
        let mut post = RawRequests::new(true, "h:1", "/p", "");
        assert_eq!(
            post.with_body(Some(b"abc")),
            b"POST /p HTTP/1.1\r\nhost: h:1\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 3\r\n\r\nabc"
        );
        // The next body replaces the last, length included.
        assert_eq!(
            post.with_body(Some(b"0123456789")),
            b"POST /p HTTP/1.1\r\nhost: h:1\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 10\r\n\r\n0123456789"
        );
        // A DPoP proof goes in as a header, for that request only.
        post.dpop = Some(Bytes::from_static(b"eyJ.p.s"));
        assert_eq!(
            post.with_body(Some(b"abc")),
            b"POST /p HTTP/1.1\r\nhost: h:1\r\ncontent-type: application/x-www-form-urlencoded\r\ndpop: eyJ.p.s\r\ncontent-length: 3\r\n\r\nabc"
        );
        assert!(
            !post
                .with_body(Some(b"abc"))
                .windows(5)
                .any(|w| w == b"dpop:")
        );
        assert_eq!(
            RawRequests::new(false, "h:1", "/p", "").with_body(None),
            b"GET /p HTTP/1.1\r\nhost: h:1\r\n\r\n"
        );
    }

    /// A peer that answers each request on each accepted connection with the next of
    /// `answers` (each written in pieces of `piece` bytes); returns how many connections
    /// it accepted.
    async fn peer(
        answers: Vec<&'static [u8]>,
        piece: usize,
    ) -> (SocketAddr, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut answers = answers.into_iter();
            let mut accepted = 0;
            while let Ok(Ok((mut conn, _))) =
                tokio::time::timeout(Duration::from_millis(500), listener.accept()).await
            {
                accepted += 1;
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(500), conn.read(&mut buf)).await
                    else {
                        break;
                    };
                    if n == 0 {
                        break;
                    }
                    let Some(answer) = answers.next() else { break };
                    for chunk in answer.chunks(piece.max(1)) {
                        let _ = conn.write_all(chunk).await;
                        let _ = conn.flush().await;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            accepted
        });
        (addr, task)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

    #[tokio::test]
    async fn the_raw_generator_reads_responses_in_pieces_and_keeps_the_connection() {
        let (addr, accepted) = peer(
            vec![
                OK,
                OK,
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            ],
            7,
        )
        .await;
        let mut conn = RawConnection::new(addr);
        let sent = SystemTime::now();
        assert_eq!(conn.round_trip(b"GET / HTTP/1.1\r\n\r\n").await, Ok(200));
        let read = SystemTime::now();
        assert!(
            conn.arrived.is_some(),
            "the kernel's receive time of the response"
        );
        let arrived = conn.arrived.unwrap();
        // The receive time of the last of seven pieces written 2 ms apart, not the first.
        let after_sending = arrived.duration_since(sent).unwrap_or_default();
        assert!(
            after_sending >= Duration::from_millis(10),
            "{after_sending:?}"
        );
        assert!(arrived <= read);
        assert_eq!(conn.round_trip(b"GET / HTTP/1.1\r\n\r\n").await, Ok(200));
        // A status is a status: the caller decides that 503 is an error.
        assert_eq!(conn.round_trip(b"GET / HTTP/1.1\r\n\r\n").await, Ok(503));
        drop(conn);
        assert_eq!(accepted.await.ok(), Some(1), "one keep-alive connection");
    }

    #[tokio::test]
    async fn the_raw_generator_reconnects_after_close_and_refuses_what_it_cannot_frame() {
        let (addr, accepted) = peer(
            vec![
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                // No length: not what Ferry sends, so an error.
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                // More than was asked for.
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
                OK,
            ],
            64,
        )
        .await;
        let mut conn = RawConnection::new(addr);
        let get = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(conn.round_trip(get).await, Ok(200));
        assert_eq!(conn.round_trip(get).await, Err(()));
        assert_eq!(conn.round_trip(get).await, Err(()));
        assert_eq!(conn.round_trip(get).await, Ok(200));
        drop(conn);
        // After the close and after each error, a new connection.
        assert_eq!(accepted.await.ok(), Some(4));
    }

    #[tokio::test]
    async fn the_raw_generator_gives_up_on_a_silent_peer() {
        let (addr, _accepted) = peer(Vec::new(), 1).await;
        let mut conn = RawConnection::new(addr);
        conn.timeout = Duration::from_millis(100);
        let started = Instant::now();
        assert_eq!(conn.round_trip(b"GET / HTTP/1.1\r\n\r\n").await, Err(()));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
