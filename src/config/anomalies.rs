//! `[anomalies]`: what the misuse detector (`src/anomaly/`) looks for, and how hard.

use serde::Deserialize;

use super::{ConfigDuration, ConfigErrors};

/// `[anomalies]`. Every kind is on by default; each has its own table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AnomaliesConfig {
    /// Off: nothing is tracked, no anomaly is raised, `context.anomalies` is empty.
    pub enabled: bool,
    /// How long after start-up `first_use` and `new_network` only learn (what a subject
    /// obtains, where it connects from) before they raise anything.
    pub learning_period: ConfigDuration,
    /// How long an unacknowledged anomaly stays open: shown as open in the console and
    /// in `context.anomalies` of its subject's requests.
    pub open_for: ConfigDuration,
    /// Subjects, tokens, addresses and issuers tracked at most, per table. A full table
    /// tracks nothing new (counted in `ferry_anomaly_untracked_total`) and forgets
    /// nothing it tracks before its time.
    pub max_tracked: usize,
    /// POST each anomaly here as JSON (https, or http to a loopback address).
    pub webhook_url: Option<String>,
    /// How long one webhook POST may take.
    pub webhook_timeout: ConfigDuration,
    /// Anomalies waiting for the webhook at most; more are counted as dropped.
    pub webhook_queue: usize,
    /// Attempts per anomaly (1 + retries), with a doubling pause from 1s.
    pub webhook_attempts: u32,
    pub token_reuse_across_clients: TokenReuse,
    pub subject_burst: SubjectBurst,
    pub denial_burst: WindowThreshold,
    pub first_use: Toggle,
    pub new_network: NewNetwork,
    pub unknown_kid_burst: WindowThreshold,
}

impl Default for AnomaliesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            learning_period: ConfigDuration::secs(24 * 3600),
            open_for: ConfigDuration::secs(3600),
            max_tracked: 100_000,
            webhook_url: None,
            webhook_timeout: ConfigDuration::secs(5),
            webhook_queue: 1000,
            webhook_attempts: 4,
            token_reuse_across_clients: TokenReuse::default(),
            subject_burst: SubjectBurst::default(),
            denial_burst: WindowThreshold {
                enabled: true,
                window: ConfigDuration::secs(60),
                threshold: 20,
            },
            first_use: Toggle { enabled: true },
            new_network: NewNetwork::default(),
            unknown_kid_burst: WindowThreshold {
                enabled: true,
                window: ConfigDuration::secs(60),
                threshold: 10,
            },
        }
    }
}

/// `[anomalies.token_reuse_across_clients]`: one subject token from two client addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TokenReuse {
    pub enabled: bool,
    /// How long a token's first address is remembered (tokens this old are rarely
    /// still valid).
    pub remember: ConfigDuration,
    /// Compare against the first address recorded in the store by any replica (one
    /// store round trip per exchange, cache hits included), not only this replica's.
    pub shared: bool,
}

impl Default for TokenReuse {
    fn default() -> Self {
        Self {
            enabled: true,
            remember: ConfigDuration::secs(3600),
            shared: false,
        }
    }
}

/// `[anomalies.subject_burst]`: a subject's rate in one window against its own average.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SubjectBurst {
    pub enabled: bool,
    /// The window exchanges are counted in.
    pub window: ConfigDuration,
    /// Raised when a window's count exceeds `factor` × the subject's average per window
    /// (an exponentially weighted moving average over its past windows)…
    pub factor: f64,
    /// …and is at least this many exchanges.
    pub min_requests: u64,
    /// The weight of the latest window in the average (0 < smoothing ≤ 1).
    pub smoothing: f64,
}

impl Default for SubjectBurst {
    fn default() -> Self {
        Self {
            enabled: true,
            window: ConfigDuration::secs(60),
            factor: 10.0,
            min_requests: 30,
            smoothing: 0.2,
        }
    }
}

/// A count in a fixed window: raised when it reaches `threshold`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WindowThreshold {
    pub enabled: bool,
    pub window: ConfigDuration,
    pub threshold: u64,
}

impl Default for WindowThreshold {
    fn default() -> Self {
        Self {
            enabled: true,
            window: ConfigDuration::secs(60),
            threshold: 20,
        }
    }
}

/// A kind with nothing to tune.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Toggle {
    pub enabled: bool,
}

impl Default for Toggle {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `[anomalies.new_network]`: the networks a subject's addresses are grouped in.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct NewNetwork {
    pub enabled: bool,
    /// IPv4 prefix length of a network.
    pub ipv4_prefix: u8,
    /// IPv6 prefix length of a network.
    pub ipv6_prefix: u8,
    /// Networks remembered per subject; an address outside all of them when the list is
    /// full is still raised, and not added.
    pub max_per_subject: usize,
}

impl Default for NewNetwork {
    fn default() -> Self {
        Self {
            enabled: true,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            max_per_subject: 32,
        }
    }
}

/// Checks what serde cannot.
pub(super) fn validate(a: &AnomaliesConfig, file: &str, errs: &mut ConfigErrors) {
    if a.max_tracked == 0 {
        errs.push(file, "anomalies.max_tracked", "must be at least 1");
    }
    if a.open_for.0.is_zero() {
        errs.push(file, "anomalies.open_for", "must be at least 1s");
    }
    // The URL is not echoed: a webhook URL often carries its secret in the path.
    if let Some(url) = &a.webhook_url {
        let problem = match url::Url::parse(url) {
            Err(e) => Some(format!("is not a URL ({e})")),
            Ok(u) if crate::verify::fetch::require_secure(&u).is_err() => {
                Some("must be https (plain http only to a loopback address)".to_owned())
            }
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            errs.push(file, "anomalies.webhook_url", problem);
        }
    }
    if a.webhook_queue == 0 {
        errs.push(file, "anomalies.webhook_queue", "must be at least 1");
    }
    if a.webhook_attempts == 0 || a.webhook_attempts > 10 {
        errs.push(
            file,
            "anomalies.webhook_attempts",
            "must be between 1 and 10",
        );
    }
    let b = &a.subject_burst;
    if b.window.0.as_secs() == 0 {
        errs.push(
            file,
            "anomalies.subject_burst.window",
            "must be at least 1s",
        );
    }
    if !(b.factor.is_finite() && b.factor > 1.0) {
        errs.push(
            file,
            "anomalies.subject_burst.factor",
            "must be a number above 1",
        );
    }
    if !(b.smoothing > 0.0 && b.smoothing <= 1.0) {
        errs.push(
            file,
            "anomalies.subject_burst.smoothing",
            "must be above 0 and at most 1",
        );
    }
    for (name, w) in [
        ("denial_burst", &a.denial_burst),
        ("unknown_kid_burst", &a.unknown_kid_burst),
    ] {
        if w.window.0.as_secs() == 0 || w.threshold == 0 {
            errs.push(
                file,
                format!("anomalies.{name}"),
                "`window` (≥ 1s) and `threshold` must be positive",
            );
        }
    }
    let n = &a.new_network;
    if n.ipv4_prefix > 32 {
        errs.push(file, "anomalies.new_network.ipv4_prefix", "must be 0 to 32");
    }
    if n.ipv6_prefix > 128 {
        errs.push(
            file,
            "anomalies.new_network.ipv6_prefix",
            "must be 0 to 128",
        );
    }
    if n.max_per_subject == 0 {
        errs.push(
            file,
            "anomalies.new_network.max_per_subject",
            "must be at least 1",
        );
    }
}
