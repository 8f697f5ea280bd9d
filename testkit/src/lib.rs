//! What Ferry's tests, micro-benchmarks and load harness share: private `redis-server`
//! processes (standalone or a 3-master cluster) on free loopback ports and a private
//! `moto_server`, started and killed by pid, keeping nothing on disk.

mod moto;
pub use moto::MotoServer;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port: bound, then released for a child process to take.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits (at most 20 s) for the `ferry serve` child at `base` to answer `/readyz` with
/// 200; if it never does, kills it and fails the test. Returns a client with a 5 s
/// timeout.
#[expect(
    clippy::panic,
    reason = "test support: a server that never becomes ready fails the test"
)]
pub fn await_ready(child: &mut std::process::Child, base: &str) -> reqwest::blocking::Client {
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap_or_else(|e| panic!("HTTP client: {e}"));
    await_ready_with(child, base, client)
}

/// [`await_ready`] with the caller's client (one that trusts a test CA, say).
#[expect(
    clippy::panic,
    reason = "test support: a server that never becomes ready fails the test"
)]
pub fn await_ready_with(
    child: &mut std::process::Child,
    base: &str,
    client: reqwest::blocking::Client,
) -> reqwest::blocking::Client {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .is_ok_and(|r| r.status() == 200)
    {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry serve at {base} did not become ready");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    client
}

/// `name` on `PATH`, or why not.
fn binary(name: &str) -> Result<&str, String> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if found {
        Ok(name)
    } else {
        Err(format!(
            "{name} not found: the README's test command (tests/run) installs it"
        ))
    }
}

/// One redis-server on 127.0.0.1, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    cluster: bool,
    /// Further `redis-server` arguments (`--replicaof …`).
    extra: Vec<String>,
    /// A Sentinel's configuration: the server runs as a Sentinel with it.
    sentinel: Option<String>,
}

impl RedisServer {
    /// Starts a server; panics (failing the test) if it cannot.
    #[expect(
        clippy::panic,
        reason = "test support: a server that cannot start fails the test"
    )]
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server, or says why it could not.
    pub fn try_start() -> Result<Self, String> {
        Self::start_with(false)
    }

    /// A port probed free can be taken by another server started at the same moment;
    /// then this one exits at once and is started again on another port.
    fn start_with(cluster: bool) -> Result<Self, String> {
        Self::start_as(cluster, Vec::new(), None)
    }

    fn start_as(
        cluster: bool,
        extra: Vec<String>,
        sentinel: Option<String>,
    ) -> Result<Self, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let mut s = Self {
                port: free_port().map_err(|e| format!("no free port: {e}"))?,
                child: None,
                dir: tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?,
                cluster,
                extra: extra.clone(),
                sentinel: sentinel.clone(),
            };
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut args = vec![
            "--port".to_owned(),
            self.port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--save".to_owned(),
            String::new(),
            "--appendonly".to_owned(),
            "no".to_owned(),
            "--dir".to_owned(),
            self.dir.path().display().to_string(),
            "--protected-mode".to_owned(),
            "no".to_owned(),
        ];
        if self.cluster {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ]
                .map(str::to_owned),
            );
        }
        args.extend(self.extra.iter().cloned());
        if let Some(conf) = &self.sentinel {
            // A Sentinel rewrites its configuration file: it lives in the server's own
            // directory.
            let file = self.dir.path().join("sentinel.conf");
            std::fs::write(&file, format!("port {}\nbind 127.0.0.1\n{conf}", self.port))
                .map_err(|e| format!("sentinel.conf: {e}"))?;
            args = vec![
                file.display().to_string(),
                "--sentinel".to_owned(),
                "--protected-mode".to_owned(),
                "no".to_owned(),
            ];
        }
        let child = Command::new(binary("redis-server")?)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]) != "PONG" || !self.running() {
            if Instant::now() >= deadline || !self.running() {
                self.kill();
                return Err(format!("redis-server on {} did not start", self.port));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        // A server that lost the port to another answers PING from the other one, and
        // exits right after failing to bind.
        std::thread::sleep(Duration::from_millis(50));
        if !self.running() {
            self.kill();
            return Err(format!("redis-server on {} exited", self.port));
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs redis-cli against this server; stdout, trimmed (empty if it cannot run).
    pub fn cli(&self, args: &[&str]) -> String {
        let Ok(cli) = binary("redis-cli") else {
            return String::new();
        };
        Command::new(cli)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server (SIGKILL, by pid).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: it keeps nothing on disk); panics if it
    /// cannot.
    #[expect(
        clippy::panic,
        reason = "test support: a server that cannot start fails the test"
    )]
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Every key and its value(s), as redis-cli prints them.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for key in self.cli(&["--scan"]).lines() {
            let kind = self.cli(&["TYPE", key]);
            let value = match kind.as_str() {
                "string" => self.cli(&["GET", key]),
                "hash" => self.cli(&["HGETALL", key]),
                "set" => self.cli(&["SMEMBERS", key]),
                other => format!("<{other}>"),
            };
            out.push_str(&format!("{key} {kind} {value}\n"));
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A primary, its replica and three Sentinels watching them (master name `ferry`), all on
/// 127.0.0.1; killed when dropped. A Sentinel deems a primary down after 1 s without an
/// answer and fails over at once (quorum 2).
pub struct RedisSentinels {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
}

impl RedisSentinels {
    /// The master name the Sentinels monitor.
    pub const MASTER: &'static str = "ferry";

    /// Starts them and waits (at most 20 s) until the replica is in sync and every
    /// Sentinel knows the replica and the other two; panics (failing the test) otherwise.
    #[expect(
        clippy::panic,
        reason = "test support: servers that cannot start fail the test"
    )]
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`RedisSentinels::start`], or why not.
    pub fn try_start() -> Result<Self, String> {
        let primary = RedisServer::start_as(false, Vec::new(), None)?;
        let replica = RedisServer::start_as(
            false,
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ],
            None,
        )?;
        let conf = format!(
            "sentinel monitor {m} 127.0.0.1 {p} 2\nsentinel down-after-milliseconds {m} 1000\nsentinel failover-timeout {m} 4000\nsentinel parallel-syncs {m} 1\n",
            m = Self::MASTER,
            p = primary.port
        );
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(RedisServer::start_as(
                false,
                Vec::new(),
                Some(conf.clone()),
            )?);
        }
        let all = Self {
            primary,
            replica,
            sentinels,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let synced = all
                .replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up");
            let known = all.sentinels.iter().all(|s| {
                let info = s.cli(&["SENTINEL", "MASTER", Self::MASTER]);
                info.lines()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|w| w == ["num-slaves", "1"])
                    && info
                        .lines()
                        .collect::<Vec<_>>()
                        .windows(2)
                        .any(|w| w == ["num-other-sentinels", "2"])
            });
            if synced && known {
                return Ok(all);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the Sentinels did not settle (replica synced: {synced})"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The Sentinels' URLs (`[store] sentinel`).
    pub fn urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The port of the primary the Sentinels name now.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            s.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER])
                .lines()
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
    }
}

/// A 3-master Redis Cluster.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes and joins them; panics (failing the test) if it cannot.
    #[expect(
        clippy::panic,
        reason = "test support: a cluster that cannot start fails the test"
    )]
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts three nodes and joins them, or says why it could not.
    pub fn try_start() -> Result<Self, String> {
        Self::try_start_with(0)
    }

    /// Three masters with one replica each (six nodes), the replicas in sync; panics
    /// (failing the test) if it cannot.
    #[expect(
        clippy::panic,
        reason = "test support: a cluster that cannot start fails the test"
    )]
    pub fn start_with_replicas() -> Self {
        Self::try_start_with(1).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_with(replicas: usize) -> Result<Self, String> {
        let nodes = (0..3 * (1 + replicas))
            .map(|_| RedisServer::start_with(true))
            .collect::<Result<Vec<_>, _>>()?;
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(binary("redis-cli")?)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let synced = |n: &RedisServer| {
            let info = n.cli(&["INFO", "replication"]);
            info.contains("role:master") || info.contains("master_link_status:up")
        };
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") && synced(n))
        {
            if Instant::now() >= deadline {
                return Err("cluster did not become ok".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self { nodes })
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub fn dump(&self) -> String {
        self.nodes.iter().map(RedisServer::dump).collect()
    }

    /// The index in `nodes` of the master serving `key`'s slot now, as the live nodes see
    /// it.
    pub fn master_of(&self, key: &str) -> Option<usize> {
        let live = self.nodes.iter().find(|n| n.child.is_some())?;
        let slot: u16 = live.cli(&["CLUSTER", "KEYSLOT", key]).parse().ok()?;
        let table = live.cli(&["CLUSTER", "NODES"]);
        let port = table.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let covers = fields.iter().skip(8).any(|range| {
                let mut ends = range.split('-').filter_map(|e| e.parse::<u16>().ok());
                match (ends.next(), ends.next()) {
                    (Some(a), Some(b)) => (a..=b).contains(&slot),
                    (Some(a), None) => a == slot,
                    _ => false,
                }
            });
            if !covers {
                return None;
            }
            let addr = fields.get(1)?.split('@').next()?;
            addr.rsplit(':').next()?.parse::<u16>().ok()
        })?;
        self.nodes.iter().position(|n| n.port == port)
    }
}
