//! A private `moto_server` (moto's AWS wire protocols: STS, KMS, …) on a loopback port
//! it picks itself.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::binary;

/// One `moto_server` on 127.0.0.1, killed when dropped.
///
/// It binds port 0 and the port is read from its own "Running on" line, so no other
/// process can take the port between choosing it and binding it (a port probed free and
/// handed over can be taken by a second server started at the same moment, and the
/// readiness probe then answers from the wrong one).
pub struct MotoServer {
    pub port: u16,
    child: Child,
}

impl MotoServer {
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
        let mut child = Command::new(binary("moto_server")?)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("moto_server: {e}"))?;
        let stderr = child.stderr.take().ok_or("moto_server: no stderr")?;
        let (tx, rx) = mpsc::channel();
        // Reads the port, then keeps draining the request log so moto never blocks on a
        // full pipe; ends when moto does.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line
                    .split_once("Running on http://127.0.0.1:")
                    .and_then(|(_, rest)| rest.trim().parse::<u16>().ok())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => Ok(Self { port, child }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err("moto_server did not report its port within 30 s".into())
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
