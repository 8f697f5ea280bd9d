//! `process_*` metrics (the names every Prometheus client library uses) and
//! `ferry_build_info`, read at scrape time: CPU from `getrusage`, memory and descriptors
//! from `/proc/self` (Linux; elsewhere those series are absent).

use super::{Family, labels};

/// The families, for a process that started at `started` (Unix seconds).
pub fn families(started: f64) -> Vec<Family> {
    let mut out = vec![
        Family::seconds(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            vec![(Vec::new(), started)],
        ),
        Family::gauge(
            "ferry_build_info",
            "The running build: its version and the commit it was built from (value 1).",
            vec![(
                labels(&[
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("commit", env!("FERRY_COMMIT")),
                ]),
                1,
            )],
        ),
    ];
    if let Some(cpu) = cpu_seconds() {
        out.push(Family::seconds_counter(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent, in seconds.",
            vec![(Vec::new(), cpu)],
        ));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for (field, name, help) in [
        (
            "VmRSS:",
            "process_resident_memory_bytes",
            "Resident memory size, in bytes.",
        ),
        (
            "VmSize:",
            "process_virtual_memory_bytes",
            "Virtual memory size, in bytes.",
        ),
    ] {
        if let Some(bytes) = status_kib(&status, field).and_then(|k| k.checked_mul(1024)) {
            out.push(Family::gauge(name, help, vec![(Vec::new(), bytes)]));
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // The directory listing itself holds one descriptor while it is read.
        let open = i64::try_from(fds.count())
            .unwrap_or(i64::MAX)
            .saturating_sub(1);
        out.push(Family::gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            vec![(Vec::new(), open)],
        ));
    }
    if let Some(max) = crate::http::server::open_file_limit() {
        out.push(Family::gauge(
            "process_max_fds",
            "Maximum number of open file descriptors (the soft limit).",
            vec![(Vec::new(), i64::try_from(max).unwrap_or(i64::MAX))],
        ));
    }
    out
}

/// A `Field:   1234 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, field: &str) -> Option<i64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User plus system CPU time of the whole process.
fn cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        // SAFETY: an all-zero `rusage` is a valid value of the plain C struct, and
        // getrusage only writes one `rusage` into the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) };
        if rc != 0 {
            return None;
        }
        #[expect(
            clippy::cast_precision_loss,
            reason = "seconds of CPU time fit an f64 exactly for any real process"
        )]
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
    }
    #[cfg(not(unix))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let families = families(1_700_000_000.5);
        let names: Vec<&str> = families.iter().map(|f| f.name).collect();
        for name in [
            "process_start_time_seconds",
            "ferry_build_info",
            "process_cpu_seconds_total",
        ] {
            assert!(names.contains(&name), "{names:?}");
        }
        #[cfg(target_os = "linux")]
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(names.contains(&name), "{names:?}");
        }
        assert_eq!(
            status_kib("Name:\tferry\nVmRSS:\t   20480 kB\n", "VmRSS:"),
            Some(20480)
        );
    }
}
