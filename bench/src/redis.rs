//! Child processes of a run: the private redis-server of the Redis scenarios (and its
//! round-trip cost), and the `ferry serve` of the memory scenario.

use std::process::Child;
use std::time::{Duration, Instant};

/// A child process (redis-server, `ferry serve`) killed when dropped.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private redis-server, and its port.
pub(crate) fn start_redis() -> anyhow::Result<(ferry_testkit::RedisServer, u16)> {
    let server = ferry_testkit::RedisServer::try_start()
        .map_err(|e| anyhow::anyhow!("{e} (the Redis scenarios need it; or pass --no-redis)"))?;
    let port = server.port;
    Ok((server, port))
}

/// Mean wall time of one Redis round trip (`GET` of a 1 000-byte value, the size of a
/// sealed credential) from this process, over `n` sequential requests on one connection.
pub(crate) fn redis_round_trip_us(port: u16, n: u32) -> anyhow::Result<f64> {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let value = "v".repeat(1000);
    write!(
        conn,
        "*3\r\n$3\r\nSET\r\n$9\r\nbench:rtt\r\n${}\r\n{value}\r\n",
        value.len()
    )?;
    let mut ok = [0u8; 5];
    conn.read_exact(&mut ok)?;
    anyhow::ensure!(&ok == b"+OK\r\n", "redis SET failed");
    let get = b"*2\r\n$3\r\nGET\r\n$9\r\nbench:rtt\r\n";
    let mut reply = vec![0u8; 7 + value.len() + 2];
    let started = Instant::now();
    for _ in 0..n {
        conn.write_all(get)?;
        conn.read_exact(&mut reply)?;
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / f64::from(n.max(1));
    anyhow::ensure!(reply.starts_with(b"$1000\r\n"), "redis GET failed");
    Ok(per)
}
