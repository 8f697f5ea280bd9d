//! The accept loop of `ferry serve`: hyper connections with a header-read timeout, an
//! idle keep-alive timeout and a connection cap, so slow and idle clients cannot hold the
//! process's descriptors.
//!
//! - **Header read** (`[server] header_read_timeout`): a request head that has not fully
//!   arrived in time closes the connection (hyper's HTTP/1 timer; a slowloris).
//! - **Idle** (`idle_timeout`): a connection with no request in progress for that long is
//!   closed (HTTP/1 keep-alive, HTTP/2 with a GOAWAY).
//! - **Whole request** (`request_timeout`): enforced per request by the router
//!   (`log_request`), body read included: a half-sent body is answered 503 in time.
//! - **Cap** (`max_connections`, clamped under the open-file limit): at the cap, the
//!   longest-idle connection is closed to make room; if none is idle the new connection is
//!   answered `503` with `Retry-After` and closed — before descriptors run out, so
//!   `/healthz` and live clients keep being served.
//! - **TLS** (`[server.tls]`, [`crate::tls`]): the handshake runs in the connection's own
//!   task, bounded by the header-read timeout, so a client that stalls it holds one
//!   connection slot for that long and no more. A connection over the cap is closed
//!   without an answer (a plaintext 503 would mean nothing to a TLS client).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::connect_info::ConnectInfo;

use super::client_address::{ClientAddressPolicy, read_proxy_header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// Most shed connections being answered at once; past it a connection over the cap is
/// closed without an answer, so shedding itself cannot hold descriptors without bound.
const MAX_SHEDDING: usize = 64;

/// Descriptors kept free under the open-file limit for everything but client
/// connections: the store, issuers' JWKS endpoints, clouds, the audit file, logs.
const RESERVED_DESCRIPTORS: u64 = 256;

/// What a shed connection is told (RFC 9110 §15.6.4, with `Retry-After`).
const SHED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: 83\r\n\r\n{\"error\":\"temporarily_unavailable\",\"error_description\":\"too many open connections\"}";

/// How long a connection Ferry closed (idle, or to make room) may take to go.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The limits the accept loop enforces (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest wait for a complete request head.
    pub header_read_timeout: Duration,
    /// Longest a connection may stay open with no request in progress.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long shutdown waits for requests in progress.
    pub drain_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits `[server]` configures, with the cap clamped to what the process's
    /// open-file limit allows (less [`RESERVED_DESCRIPTORS`]); the clamp is logged.
    pub fn from_config(server: &crate::config::ServerConfig) -> Self {
        let mut max = server.max_connections;
        if let Some(limit) = open_file_limit() {
            let room = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS))
                .unwrap_or(usize::MAX)
                .max(1);
            if room < max {
                tracing::warn!(
                    max_connections = max,
                    open_file_limit = limit,
                    effective = room,
                    "server.max_connections exceeds what the open-file limit allows; clamped (raise LimitNOFILE / ulimit -n)"
                );
                max = room;
            }
        }
        Self {
            header_read_timeout: server.header_read_timeout.0,
            idle_timeout: server.idle_timeout.0,
            max_connections: max.max(1),
            drain_timeout: server.request_timeout.0 + Duration::from_secs(1),
        }
    }
}

/// The soft `RLIMIT_NOFILE`, where there is one.
pub(crate) fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes one `rlimit` into the struct it is given.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut rl) };
        (rc == 0 && rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur)
    }
    #[cfg(not(unix))]
    None
}

/// One open connection, as the cap and the idle timer see it.
struct Connection {
    /// Requests in progress.
    busy: AtomicUsize,
    /// Milliseconds since the server started, when it last became idle (or opened).
    idle_since: AtomicU64,
    /// Asked to close (at the cap, to make room).
    close: Notify,
}

/// Every open connection.
struct Registry {
    started: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    /// Connections refused and reclaimed, and TLS handshakes that failed, for `/metrics`.
    shed: AtomicU64,
    reclaimed: AtomicU64,
    handshakes_failed: AtomicU64,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn len(&self) -> usize {
        self.open.lock().map(|m| m.len()).unwrap_or(usize::MAX)
    }

    /// Registers a new connection, or `None` when at the cap and nothing idle could be
    /// closed to make room.
    fn admit(&self, max: usize) -> Option<(u64, Arc<Connection>)> {
        let mut open = self.open.lock().ok()?;
        if open.len() >= max {
            // Close the longest-idle connection (one with no request in progress); it
            // leaves the registry when its task ends, so count it out now.
            let victim = open
                .iter()
                .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, c)| c.idle_since.load(Ordering::Relaxed))
                .map(|(id, c)| (*id, Arc::clone(c)))?;
            open.remove(&victim.0);
            victim.1.close.notify_one();
            self.reclaimed.fetch_add(1, Ordering::Relaxed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Connection {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            close: Notify::new(),
        });
        open.insert(id, Arc::clone(&conn));
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&id);
        }
    }
}

/// Marks a connection busy for as long as it lives (from the moment a request is handed
/// to the router until its response future ends, polled or not).
struct Busy(Arc<Connection>, Arc<Registry>);

impl Busy {
    fn new(conn: &Arc<Connection>, registry: &Arc<Registry>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(conn), Arc::clone(registry))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since.store(self.1.now_ms(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts of the cap's actions since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Open now.
    pub open: usize,
    /// Refused with 503 at the cap.
    pub shed: u64,
    /// Idle connections closed to make room.
    pub reclaimed: u64,
    /// TLS handshakes that failed or timed out.
    pub handshakes_failed: u64,
}

/// A handle on a running server's connection counts.
#[derive(Clone)]
pub struct ConnectionStats(Arc<Registry>);

impl std::fmt::Debug for ConnectionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConnectionStats")
            .field(&self.counts())
            .finish()
    }
}

impl ConnectionStats {
    /// The counts now.
    pub fn counts(&self) -> ConnectionCounts {
        ConnectionCounts {
            open: self.0.len(),
            shed: self.0.shed.load(Ordering::Relaxed),
            reclaimed: self.0.reclaimed.load(Ordering::Relaxed),
            handshakes_failed: self.0.handshakes_failed.load(Ordering::Relaxed),
        }
    }
}

/// A server ready to run: [`Server::stats`] before [`Server::run`].
pub struct Server {
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    registry: Arc<Registry>,
    tls: Option<crate::tls::Acceptor>,
    client_address: Arc<ClientAddressPolicy>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("limits", &self.limits)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Serves `router` on `listener` within `limits`.
    pub fn new(listener: TcpListener, router: Router, limits: ConnectionLimits) -> Self {
        Self {
            listener,
            router,
            limits,
            registry: Arc::new(Registry {
                started: Instant::now(),
                next_id: AtomicU64::new(0),
                open: Mutex::new(HashMap::new()),
                shed: AtomicU64::new(0),
                reclaimed: AtomicU64::new(0),
                handshakes_failed: AtomicU64::new(0),
            }),
            tls: None,
            client_address: Arc::default(),
        }
    }

    /// Takes each request's client address as `policy` says (trusted proxies).
    pub fn with_client_address(mut self, policy: ClientAddressPolicy) -> Self {
        self.client_address = Arc::new(policy);
        self
    }

    /// Speaks TLS on every connection.
    pub fn with_tls(mut self, tls: crate::tls::Acceptor) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Connection counts, readable while it runs.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats(Arc::clone(&self.registry))
    }

    /// Accepts until `shutdown` completes, then lets requests in progress finish (up to
    /// the drain timeout) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .keep_alive(true);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let mut tasks = tokio::task::JoinSet::new();
        let shedding = Arc::new(tokio::sync::Semaphore::new(MAX_SHEDDING));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
            }
            let Some((id, conn)) = self.registry.admit(self.limits.max_connections) else {
                self.registry.shed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "connection cap reached; answered 503");
                // Dropped without an answer when too many are being answered already, or
                // when the answer would have to be TLS.
                if self.tls.is_none()
                    && let Ok(permit) = Arc::clone(&shedding).try_acquire_owned()
                {
                    tasks.spawn(async move {
                        shed(tcp).await;
                        drop(permit);
                    });
                }
                continue;
            };
            let serving = Serving {
                peer,
                router: self.router.clone(),
                builder: Arc::clone(&builder),
                registry: Arc::clone(&self.registry),
                id,
                conn,
                idle_timeout: self.limits.idle_timeout,
                stop: stop_rx.clone(),
                client_address: Arc::clone(&self.client_address),
            };
            tasks.spawn(serving.start(tcp, self.tls.clone(), self.limits.header_read_timeout));
            // Finished connection tasks are reaped as we go.
            while tasks.try_join_next().is_some() {}
        }
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(self.limits.drain_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("connections still open after the drain timeout; closing them");
            tasks.abort_all();
        }
    }
}

/// Answers a connection over the cap with 503 and closes it; bounded in time.
async fn shed(mut tcp: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(SHED_RESPONSE).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// One admitted connection and what serving it needs.
struct Serving {
    peer: SocketAddr,
    router: Router,
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    registry: Arc<Registry>,
    id: u64,
    conn: Arc<Connection>,
    idle_timeout: Duration,
    stop: watch::Receiver<bool>,
    client_address: Arc<ClientAddressPolicy>,
}

impl Serving {
    /// A trusted load balancer's PROXY header, the TLS handshake, then HTTP; each first
    /// step is bounded by `within`, and failing one only ends this connection.
    async fn start(
        mut self,
        mut tcp: TcpStream,
        tls: Option<crate::tls::Acceptor>,
        within: Duration,
    ) {
        if self.client_address.reads_proxy_header(self.peer) {
            match read_proxy_header(&mut tcp, within).await {
                Ok(Some(client)) => self.peer = client,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = e, "connection without a readable PROXY header closed");
                    self.registry.remove(self.id);
                    return;
                }
            }
        }
        match tls {
            None => self.serve(tcp, None).await,
            Some(tls) => self.serve_tls(tcp, tls, within).await,
        }
    }

    /// The TLS handshake, then the connection.
    async fn serve_tls(self, tcp: TcpStream, tls: crate::tls::Acceptor, within: Duration) {
        let stream = match tokio::time::timeout(within, tls.acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return self.handshake_failed(&e.to_string()),
            Err(_) => return self.handshake_failed("timed out"),
        };
        let client = tls.clients.as_ref().and_then(|verifier| {
            let chain = stream.get_ref().1.peer_certificates()?;
            verifier.identify(chain).map(Arc::new)
        });
        self.serve(stream, client).await;
    }

    fn handshake_failed(self, why: &str) {
        tracing::debug!(peer = %self.peer, error = why, "TLS handshake failed");
        self.registry
            .handshakes_failed
            .fetch_add(1, Ordering::Relaxed);
        self.registry.remove(self.id);
    }

    /// Serves HTTP on `io` until it closes, is idle too long, or the server stops.
    async fn serve<I>(self, io: I, client: Option<Arc<crate::tls::ClientCertificate>>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            router,
            builder,
            registry,
            id,
            conn,
            idle_timeout,
            mut stop,
            client_address,
        } = self;
        let service = {
            let conn = Arc::clone(&conn);
            let registry = Arc::clone(&registry);
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let busy = Busy::new(&conn, &registry);
                let router = router.clone();
                let address = client_address.client(peer, req.headers());
                req.extensions_mut().insert(ConnectInfo(address));
                if let Some(client) = &client {
                    req.extensions_mut().insert(Arc::clone(client));
                }
                async move {
                    let _busy = busy;
                    tower::ServiceExt::oneshot(router, req).await
                }
            })
        };
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        // Set when Ferry asks the connection to close: an idle or reclaimed connection that
        // has not closed by then (a head half-read) is dropped.
        let mut closing: Option<Instant> = None;
        loop {
            let idle_for = Duration::from_millis(
                registry
                    .now_ms()
                    .saturating_sub(conn.idle_since.load(Ordering::Relaxed)),
            );
            let idle_check = match closing {
                Some(_) => CLOSE_GRACE / 4,
                None => idle_timeout.saturating_sub(idle_for),
            }
            .max(Duration::from_millis(10));
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                () = conn.close.notified(), if closing.is_none() => {
                    tracing::debug!(%peer, "idle connection closed to make room");
                    closing = Some(Instant::now() + CLOSE_GRACE);
                    connection.as_mut().graceful_shutdown();
                }
                _ = stop.changed(), if closing.is_none() => {
                    // Shutdown: requests in progress finish (the drain timeout bounds them).
                    closing = Some(Instant::now() + Duration::from_secs(86_400));
                    connection.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep(idle_check) => {
                    let idle = conn.busy.load(Ordering::Acquire) == 0;
                    match closing {
                        Some(deadline) if idle && Instant::now() >= deadline => break,
                        Some(_) => {}
                        None if idle
                            && registry.now_ms().saturating_sub(conn.idle_since.load(Ordering::Relaxed))
                                >= u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX) =>
                        {
                            tracing::debug!(%peer, "idle connection closed");
                            closing = Some(Instant::now() + CLOSE_GRACE);
                            connection.as_mut().graceful_shutdown();
                        }
                        None => {}
                    }
                }
            }
        }
        registry.remove(id);
    }
}

#[cfg(test)]
mod tests;
