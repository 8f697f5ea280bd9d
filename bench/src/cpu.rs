//! CPU accounting and scheduling: Ferry's threads' CPU time and preemptions from
//! `/proc`, and the `SCHED_BATCH` policy of the load generator's threads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Puts the calling thread under `SCHED_BATCH` (Linux): the scheduler treats it as
/// CPU-bound and does not let its wake-ups preempt the thread that is running.
pub(crate) fn set_batch_policy() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `sched_setscheduler` only reads `param` during the call; pid 0 is the
        // calling thread.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const param) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "SCHED_BATCH is Linux-only",
    ))
}

/// The load policy, applied by each generator thread as it starts.
#[derive(Clone)]
pub(crate) struct LoadScheduling {
    /// Put generator threads under `SCHED_BATCH`.
    pub(crate) batch: bool,
    /// Why a generator thread could not take `SCHED_BATCH`, once per thread start that
    /// could not (the raw generator starts its threads for each scenario run).
    pub(crate) failures: Arc<std::sync::Mutex<Vec<String>>>,
}

impl LoadScheduling {
    /// Applies the load policy to the calling (generator) thread.
    pub(crate) fn apply(&self) {
        if self.batch
            && let Err(e) = set_batch_policy()
            && let Ok(mut f) = self.failures.lock()
        {
            f.push(e.to_string());
        }
    }
}

/// Ferry's CPU time so far and how often its threads were preempted (involuntary
/// context switches): the `ferry-srv` threads of this process.
pub(crate) fn ferry_threads() -> (Duration, u64) {
    let mut ticks = 0u64;
    let mut preempted = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !comm.starts_with("ferry-srv") {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // Fields after the `(comm)`: utime is the 14th field overall, stime the 15th.
            if let Some(rest) = stat.rsplit(')').next() {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let u = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                let s = f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                ticks += u + s;
            }
            preempted += status_value(&task.path().join("status"), "nonvoluntary_ctxt_switches:");
        }
    }
    // USER_HZ is 100 on Linux.
    (Duration::from_millis(ticks * 10), preempted)
}

pub(crate) fn status_kib(status: &str, field: &str) -> u64 {
    status_value(Path::new(status), field)
}

/// A numeric field of a `/proc/.../status` file (0 when absent).
pub(crate) fn status_value(status: &Path, field: &str) -> u64 {
    std::fs::read_to_string(status)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
