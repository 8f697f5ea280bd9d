//! Misuse detection over the stream of decisions ([`ExchangeRecord`]s), per replica.
//!
//! [`Detector::observe`] reads each decision's record once it is settled and returns the
//! anomalies it raises; `http/observe.rs` counts, audits, logs and posts them
//! ([`webhook`]). [`Detector::open_for`] answers the kinds open for a subject, which
//! policy reads as `context.anomalies`. The kinds and their thresholds are
//! `[anomalies]` (`config/anomalies.rs`); docs/anomalies.md has a runbook per kind.
//!
//! Memory is bounded by `max_tracked` per table. A full table tracks nothing new (and
//! counts it) rather than forget what it tracks: forgetting a subject would let its next
//! use from anywhere pass as its first.

pub mod webhook;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::anomalies::AnomaliesConfig;
use crate::record::ExchangeRecord;

/// Anomalies kept for the console and `/admin/anomalies` (the audit trail has them all).
const RECENT: usize = 1000;

/// What was noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// One subject token exchanged from two client addresses.
    TokenReuseAcrossClients,
    /// A subject's exchange rate far above its own average.
    SubjectBurst,
    /// Many refusals for one subject, issuer or client address in a short window.
    DenialBurst,
    /// A subject obtained a target it never obtained before.
    FirstUse,
    /// A subject exchanged from outside every network it used before.
    NewNetwork,
    /// Many tokens naming key ids an issuer does not publish.
    UnknownKidBurst,
}

impl Kind {
    /// Every kind, in the order docs and the console list them.
    pub const ALL: [Kind; 6] = [
        Kind::TokenReuseAcrossClients,
        Kind::SubjectBurst,
        Kind::DenialBurst,
        Kind::FirstUse,
        Kind::NewNetwork,
        Kind::UnknownKidBurst,
    ];

    /// The name in config, metrics, the audit trail and `context.anomalies`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenReuseAcrossClients => "token_reuse_across_clients",
            Self::SubjectBurst => "subject_burst",
            Self::DenialBurst => "denial_burst",
            Self::FirstUse => "first_use",
            Self::NewNetwork => "new_network",
            Self::UnknownKidBurst => "unknown_kid_burst",
        }
    }
}

/// Kind names as policy sees them in `context.anomalies` (sorted, each once), or the
/// first name that is no kind.
pub fn kind_names(names: &[String]) -> Result<Vec<&'static str>, String> {
    let mut kinds = names
        .iter()
        .map(|n| {
            Kind::ALL
                .iter()
                .find(|k| k.as_str() == n.trim())
                .map(|k| k.as_str())
                .ok_or_else(|| {
                    format!(
                        "`{}` is not an anomaly kind (one of {})",
                        crate::text::echo(n),
                        Kind::ALL.map(Kind::as_str).join(", ")
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    kinds.sort_unstable();
    kinds.dedup();
    Ok(kinds)
}

impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One raised anomaly: what, about whom, and the evidence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Anomaly {
    /// This replica's number for it (the console acknowledges by it).
    pub id: u64,
    pub kind: Kind,
    /// Unix seconds.
    pub time: i64,
    /// The canonical subject, when the anomaly is about one.
    pub subject: Option<String>,
    pub issuer: Option<String>,
    /// The client address of the request that raised it.
    pub client_ip: IpAddr,
    /// The request that raised it.
    pub request_id: String,
    pub target: Option<String>,
    /// One sentence for a human.
    pub summary: String,
    /// The figures behind it (counts, addresses, networks, token fingerprint).
    pub evidence: BTreeMap<&'static str, String>,
}

/// An anomaly as the console shows it: open until acknowledged or `open_for` passes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub anomaly: Anomaly,
    pub open: bool,
    /// Who acknowledged it, and when (Unix seconds).
    pub acknowledged: Option<(String, i64)>,
}

/// A count in a fixed window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: i64,
    count: u64,
}

impl Window {
    /// Counts one at `now`; true when the count has just reached `threshold`.
    fn hit(&mut self, now: i64, length: i64, threshold: u64) -> bool {
        if now >= self.start.saturating_add(length) {
            self.start = now;
            self.count = 0;
        }
        self.count += 1;
        self.count == threshold
    }
}

/// What is remembered of a token: the first address it came from.
struct TokenSeen {
    client: IpAddr,
    until: i64,
    raised: bool,
}

/// What is remembered of a subject.
#[derive(Default)]
struct SubjectSeen {
    /// Exchanges in the current `subject_burst` window and when it started.
    window: Option<Window>,
    /// Average exchanges per window over the past windows (EWMA); `None` until one
    /// window has completed.
    average: Option<f64>,
    /// The window a burst was raised in (once per window).
    burst_raised: Option<i64>,
    /// Targets it obtained.
    targets: HashSet<String>,
    /// Networks it exchanged from.
    networks: Vec<Network>,
}

/// An address prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network {
    bits: u128,
    prefix: u8,
    v6: bool,
}

impl Network {
    fn of(ip: IpAddr, v4: u8, v6: u8) -> Self {
        let (bits, width, prefix, v6) = match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32u8, v4, false),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => (u128::from(u32::from(a)), 32, v4, false),
                None => (u128::from(a), 128, v6, true),
            },
        };
        let prefix = prefix.min(width);
        let keep = u32::from(width - prefix);
        let bits = if keep >= 128 {
            0
        } else {
            (bits >> keep) << keep
        };
        Self { bits, prefix, v6 }
    }

    fn display(self) -> String {
        if self.v6 {
            format!("{}/{}", std::net::Ipv6Addr::from(self.bits), self.prefix)
        } else {
            let v4 = u32::try_from(self.bits).unwrap_or(0);
            format!("{}/{}", std::net::Ipv4Addr::from(v4), self.prefix)
        }
    }
}

/// The anomaly as listed, with its acknowledgement.
struct Kept {
    anomaly: Anomaly,
    acknowledged: Option<(String, i64)>,
}

#[derive(Default)]
struct State {
    /// When observation began (the learning period counts from it).
    started: Option<i64>,
    tokens: HashMap<u128, TokenSeen>,
    subjects: HashMap<String, SubjectSeen>,
    /// Refusals by `subject:…`, `issuer:…` or `client:…`.
    denials: HashMap<String, Window>,
    unknown_kids: HashMap<String, Window>,
    recent: VecDeque<Kept>,
    /// Keys a full table could not track since start-up, by table.
    untracked: BTreeMap<&'static str, u64>,
}

/// The detector of one replica.
#[derive(Default)]
pub struct Detector {
    state: Mutex<State>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector").finish_non_exhaustive()
    }
}

/// Refusals that say nothing of the client: Ferry or an upstream could not answer.
fn counts_as_denial(code: &str) -> bool {
    !matches!(code, "temporarily_unavailable" | "server_error")
}

/// The first 128 bits of a hex SHA-256.
fn token_key(sha256_hex: &str) -> Option<u128> {
    u128::from_str_radix(sha256_hex.get(..32)?, 16).ok()
}

/// Inserts into a bounded table, or counts the key as untracked.
fn bounded<'a, K: std::hash::Hash + Eq, V>(
    table: &'a mut HashMap<K, V>,
    untracked: &mut BTreeMap<&'static str, u64>,
    name: &'static str,
    max: usize,
    key: K,
    make: impl FnOnce() -> V,
) -> Option<&'a mut V> {
    let full = table.len() >= max;
    match table.entry(key) {
        std::collections::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
        std::collections::hash_map::Entry::Vacant(_) if full => {
            *untracked.entry(name).or_default() += 1;
            None
        }
        std::collections::hash_map::Entry::Vacant(e) => Some(e.insert(make())),
    }
}

/// What one observation found, before ids are given.
struct Found {
    kind: Kind,
    subject: Option<String>,
    summary: String,
    evidence: BTreeMap<&'static str, String>,
}

impl Detector {
    /// A detector that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one settled decision at Unix time `now` and returns what it raised (each
    /// already kept for [`Detector::recent`] and [`Detector::open_for`]).
    ///
    /// `shared_first` is, with `token_reuse_across_clients.shared`, the store's answer:
    /// the address recorded first for the token on any replica (`Some(None)` when this
    /// request was the first). `None` (local mode, or a store that could not answer)
    /// compares with this replica's own record.
    pub fn observe(
        &self,
        record: &ExchangeRecord,
        now: i64,
        config: &AnomaliesConfig,
        shared_first: Option<Option<IpAddr>>,
    ) -> Vec<Anomaly> {
        if !config.enabled {
            return Vec::new();
        }
        let mut found = Vec::new();
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        let state = &mut *state;
        let started = *state.started.get_or_insert(now);
        let learned = now >= started.saturating_add(config.learning_period.as_secs_i64());
        prune(state, now, config);

        if let Some(refusal) = &record.refusal
            && config.denial_burst.enabled
            && counts_as_denial(refusal.code)
        {
            denials(state, record, now, config, &mut found);
        }
        if record.unknown_kid
            && config.unknown_kid_burst.enabled
            && let Some(issuer) = &record.issuer
        {
            let w = &config.unknown_kid_burst;
            if let Some(window) = bounded(
                &mut state.unknown_kids,
                &mut state.untracked,
                "unknown_kid_burst",
                config.max_tracked,
                issuer.clone(),
                || Window {
                    start: now,
                    count: 0,
                },
            ) && window.hit(now, w.window.as_secs_i64(), w.threshold)
            {
                found.push(Found {
                    kind: Kind::UnknownKidBurst,
                    subject: None,
                    summary: format!(
                        "{} tokens naming key ids issuer `{issuer}` does not publish within {}",
                        w.threshold,
                        humantime::format_duration(w.window.0)
                    ),
                    evidence: BTreeMap::from([
                        ("count", w.threshold.to_string()),
                        ("window_seconds", w.window.0.as_secs().to_string()),
                    ]),
                });
            }
        }
        if let Some(subject) = &record.subject {
            if config.token_reuse_across_clients.enabled
                && let Some(sha) = &record.token_sha256
            {
                let first = shared_first.map(|f| f.unwrap_or(record.client_ip));
                token_reuse(state, record, subject, sha, first, now, config, &mut found);
            }
            if let Some(seen) = bounded(
                &mut state.subjects,
                &mut state.untracked,
                "subjects",
                config.max_tracked,
                subject.clone(),
                SubjectSeen::default,
            ) {
                subject_kinds(seen, record, subject, now, learned, config, &mut found);
            }
        }
        found
            .into_iter()
            .map(|f| {
                let anomaly = Anomaly {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
                    kind: f.kind,
                    time: now,
                    subject: f.subject,
                    issuer: record.issuer.clone(),
                    client_ip: record.client_ip,
                    request_id: record.request_id.clone(),
                    target: record.target.clone(),
                    summary: f.summary,
                    evidence: f.evidence,
                };
                if state.recent.len() >= RECENT {
                    state.recent.pop_front();
                }
                state.recent.push_back(Kept {
                    anomaly: anomaly.clone(),
                    acknowledged: None,
                });
                anomaly
            })
            .collect()
    }

    /// The kinds open for `subject` at `now` (raised within `open_for`, not
    /// acknowledged), sorted: policy's `context.anomalies`.
    pub fn open_for(&self, subject: &str, now: i64, config: &AnomaliesConfig) -> Vec<&'static str> {
        if !config.enabled {
            return Vec::new();
        }
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        let since = now.saturating_sub(config.open_for.as_secs_i64());
        let mut kinds: Vec<&'static str> = state
            .recent
            .iter()
            .rev()
            .take_while(|k| k.anomaly.time > since)
            .filter(|k| k.acknowledged.is_none() && k.anomaly.subject.as_deref() == Some(subject))
            .map(|k| k.anomaly.kind.as_str())
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }

    /// The anomalies kept (the latest 1000), newest first.
    pub fn recent(&self, now: i64, config: &AnomaliesConfig) -> Vec<Listed> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        let since = now.saturating_sub(config.open_for.as_secs_i64());
        state
            .recent
            .iter()
            .rev()
            .map(|k| Listed {
                anomaly: k.anomaly.clone(),
                open: k.acknowledged.is_none() && k.anomaly.time > since,
                acknowledged: k.acknowledged.clone(),
            })
            .collect()
    }

    /// Marks anomaly `id` acknowledged by `by`: false when no kept anomaly has that id.
    pub fn acknowledge(&self, id: u64, by: &str, now: i64) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        match state.recent.iter_mut().find(|k| k.anomaly.id == id) {
            Some(k) => {
                k.acknowledged.get_or_insert_with(|| (by.to_owned(), now));
                true
            }
            None => false,
        }
    }

    /// Keys each table could not track because it was full, since start-up.
    pub fn untracked(&self) -> BTreeMap<&'static str, u64> {
        self.state
            .lock()
            .map(|s| s.untracked.clone())
            .unwrap_or_default()
    }
}

/// Drops what has expired: tokens past `remember`, windows long over.
fn prune(state: &mut State, now: i64, config: &AnomaliesConfig) {
    let full = |len: usize| len >= config.max_tracked;
    if full(state.tokens.len()) {
        state.tokens.retain(|_, t| t.until > now);
    }
    let denial = config.denial_burst.window.as_secs_i64();
    if full(state.denials.len()) {
        state
            .denials
            .retain(|_, w| w.start.saturating_add(denial) > now);
    }
    let kid = config.unknown_kid_burst.window.as_secs_i64();
    if full(state.unknown_kids.len()) {
        state
            .unknown_kids
            .retain(|_, w| w.start.saturating_add(kid) > now);
    }
}

fn denials(
    state: &mut State,
    record: &ExchangeRecord,
    now: i64,
    config: &AnomaliesConfig,
    found: &mut Vec<Found>,
) {
    let w = &config.denial_burst;
    let client = record.client_ip.to_string();
    let keys = [
        ("subject", record.subject.as_deref()),
        ("issuer", record.issuer.as_deref()),
        ("client", Some(client.as_str())),
    ];
    for (dimension, value) in keys {
        let Some(value) = value else { continue };
        let Some(window) = bounded(
            &mut state.denials,
            &mut state.untracked,
            "denial_burst",
            config.max_tracked,
            format!("{dimension}:{value}"),
            || Window {
                start: now,
                count: 0,
            },
        ) else {
            continue;
        };
        if window.hit(now, w.window.as_secs_i64(), w.threshold) {
            found.push(Found {
                kind: Kind::DenialBurst,
                subject: (dimension == "subject").then(|| value.to_owned()),
                summary: format!(
                    "{} refused exchanges for {dimension} `{}` within {}",
                    w.threshold,
                    crate::text::escape_control(value),
                    humantime::format_duration(w.window.0)
                ),
                evidence: BTreeMap::from([
                    ("dimension", dimension.to_owned()),
                    ("value", value.to_owned()),
                    ("count", w.threshold.to_string()),
                    ("window_seconds", w.window.0.as_secs().to_string()),
                    (
                        "last_error",
                        record
                            .refusal
                            .as_ref()
                            .map(|r| r.code)
                            .unwrap_or("")
                            .to_owned(),
                    ),
                ]),
            });
        }
    }
}

/// With `first` (shared mode), the store's first address for the token is compared;
/// otherwise this replica's.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the facts of one check"
)]
fn token_reuse(
    state: &mut State,
    record: &ExchangeRecord,
    subject: &str,
    sha: &str,
    first: Option<IpAddr>,
    now: i64,
    config: &AnomaliesConfig,
    found: &mut Vec<Found>,
) {
    let Some(key) = token_key(sha) else { return };
    let remember = config.token_reuse_across_clients.remember.as_secs_i64();
    let Some(seen) = bounded(
        &mut state.tokens,
        &mut state.untracked,
        "tokens",
        config.max_tracked,
        key,
        || TokenSeen {
            client: first.unwrap_or(record.client_ip),
            until: now.saturating_add(remember),
            raised: false,
        },
    ) else {
        return;
    };
    if seen.until <= now {
        *seen = TokenSeen {
            client: first.unwrap_or(record.client_ip),
            until: now.saturating_add(remember),
            raised: false,
        };
    }
    if let Some(first) = first {
        seen.client = first;
    }
    if seen.client != record.client_ip && !seen.raised {
        seen.raised = true;
        found.push(Found {
            kind: Kind::TokenReuseAcrossClients,
            subject: Some(subject.to_owned()),
            summary: format!(
                "the same subject token of `{}` was exchanged from {} and then from {}",
                crate::text::escape_control(subject),
                seen.client,
                record.client_ip
            ),
            evidence: BTreeMap::from([
                ("token_fingerprint", sha.get(..16).unwrap_or(sha).to_owned()),
                ("first_client", seen.client.to_string()),
                ("second_client", record.client_ip.to_string()),
            ]),
        });
    }
}

/// `subject_burst`, `first_use` and `new_network`, over what is remembered of `subject`.
fn subject_kinds(
    seen: &mut SubjectSeen,
    record: &ExchangeRecord,
    subject: &str,
    now: i64,
    learned: bool,
    config: &AnomaliesConfig,
    found: &mut Vec<Found>,
) {
    let shown = crate::text::escape_control(subject);
    let b = &config.subject_burst;
    if b.enabled {
        let length = b.window.as_secs_i64().max(1);
        let window = seen.window.get_or_insert(Window {
            start: now,
            count: 0,
        });
        if now >= window.start.saturating_add(length) {
            // Close the window, and every empty one after it, into the average.
            let passed = (now - window.start) / length;
            let mut average = seen.average.map_or(window.count as f64, |a| {
                b.smoothing * window.count as f64 + (1.0 - b.smoothing) * a
            });
            let idle = u32::try_from(passed.saturating_sub(1).min(1000)).unwrap_or(1000);
            average *= (1.0 - b.smoothing).powi(i32::try_from(idle).unwrap_or(1000));
            seen.average = Some(average);
            *window = Window {
                start: window.start.saturating_add(passed.saturating_mul(length)),
                count: 0,
            };
        }
        window.count += 1;
        if let Some(average) = seen.average
            && window.count >= b.min_requests
            && window.count as f64 > b.factor * average.max(1.0)
            && seen.burst_raised != Some(window.start)
        {
            seen.burst_raised = Some(window.start);
            found.push(Found {
                kind: Kind::SubjectBurst,
                subject: Some(subject.to_owned()),
                summary: format!(
                    "`{shown}` made {} exchanges in this {} window against an average of {average:.1}",
                    window.count,
                    humantime::format_duration(b.window.0)
                ),
                evidence: BTreeMap::from([
                    ("count", window.count.to_string()),
                    ("average", format!("{average:.2}")),
                    ("factor", b.factor.to_string()),
                    ("window_seconds", b.window.0.as_secs().to_string()),
                ]),
            });
        }
    }
    if config.first_use.enabled
        && record.granted()
        && let Some(target) = &record.target
        && !seen.targets.contains(target)
    {
        // A subject's first grant makes it known; a new target after that is raised.
        if learned && !seen.targets.is_empty() {
            found.push(first_use(&shown, subject, target));
        }
        seen.targets.insert(target.clone());
    }
    let n = &config.new_network;
    if n.enabled {
        let network = Network::of(record.client_ip, n.ipv4_prefix, n.ipv6_prefix);
        if !seen.networks.contains(&network) {
            if learned && !seen.networks.is_empty() {
                found.push(Found {
                    kind: Kind::NewNetwork,
                    subject: Some(subject.to_owned()),
                    summary: format!(
                        "`{shown}` exchanged from {}, outside the {} network(s) it used before",
                        record.client_ip,
                        seen.networks.len()
                    ),
                    evidence: BTreeMap::from([
                        ("client", record.client_ip.to_string()),
                        ("network", network.display()),
                        (
                            "known_networks",
                            seen.networks
                                .iter()
                                .map(|n| n.display())
                                .collect::<Vec<_>>()
                                .join(" "),
                        ),
                    ]),
                });
            }
            if seen.networks.len() < n.max_per_subject {
                seen.networks.push(network);
            }
        }
    }
}

fn first_use(shown: &str, subject: &str, target: &str) -> Found {
    Found {
        kind: Kind::FirstUse,
        subject: Some(subject.to_owned()),
        summary: format!("`{shown}` obtained target `{target}` for the first time"),
        evidence: BTreeMap::from([("target", target.to_owned())]),
    }
}

#[cfg(test)]
mod tests;
