//! Prometheus metrics, held in `AppState` (no global recorder, so tests run in parallel
//! and each sees only its own counts). Labels are bounded: issuer and target ids come
//! from the config, never from the request; no subjects or token ids.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Latency buckets, seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Series by (metric name, hash of the label values): a request's update finds its series
/// without allocating; the owned labels are kept beside the value (a hash shared by two
/// label sets only makes the list longer than one).
type Series<V> = BTreeMap<(&'static str, u64), Vec<(Labels, V)>>;

#[derive(Default)]
struct Inner {
    counters: Series<u64>,
    histograms: Series<Histogram>,
}

fn labels_hash(labels: &[(&'static str, &str)]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    labels.hash(&mut h);
    h.finish()
}

/// The value of the series `name` + `labels`, created with its default if new.
fn series<'a, V: Default>(
    map: &'a mut Series<V>,
    name: &'static str,
    labels: &[(&'static str, &str)],
) -> Option<&'a mut V> {
    let list = map.entry((name, labels_hash(labels))).or_default();
    let same = |l: &Labels| {
        l.len() == labels.len()
            && l.iter()
                .zip(labels)
                .all(|((k1, v1), (k2, v2))| k1 == k2 && v1 == v2)
    };
    let i = match list.iter().position(|(l, _)| same(l)) {
        Some(i) => i,
        None => {
            list.push((owned(labels), V::default()));
            list.len() - 1
        }
    };
    list.get_mut(i).map(|(_, v)| v)
}

/// Every series of `name`, in label order (what the exposition prints).
fn sorted<'a, V>(map: &'a Series<V>, name: &str) -> Vec<&'a (Labels, V)> {
    let mut all: Vec<&(Labels, V)> = map
        .iter()
        .filter(|((n, _), _)| *n == name)
        .flat_map(|(_, list)| list)
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// The registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const HELP: &[(&str, &str, &str)] = &[
    (
        "ferry_revocations_total",
        "counter",
        "Revocations recorded by kind and channel.",
    ),
    (
        "ferry_rate_limited_total",
        "counter",
        "Requests refused by a rate limit.",
    ),
    (
        "ferry_exchanges_total",
        "counter",
        "Token exchanges by issuer, target and outcome (granted or the RFC 6749 error code).",
    ),
    (
        "ferry_exchange_duration_seconds",
        "histogram",
        "Token exchange latency by outcome.",
    ),
    (
        "ferry_cache_requests_total",
        "counter",
        "Credential cache lookups by result (hit, miss).",
    ),
    (
        "ferry_provider_calls_total",
        "counter",
        "Provider calls by provider kind and outcome.",
    ),
    (
        "ferry_provider_duration_seconds",
        "histogram",
        "Provider call latency by provider kind.",
    ),
    (
        "ferry_policy_decisions_total",
        "counter",
        "Authorization decisions (allow, deny, error).",
    ),
    (
        "ferry_config_reloads_total",
        "counter",
        "Config reloads by outcome (success, failure).",
    ),
    (
        "ferry_audit_write_failures_total",
        "counter",
        "Audit lines that could not be written.",
    ),
];

impl Metrics {
    /// Adds 1 to a counter.
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        if let Ok(mut inner) = self.inner.lock()
            && let Some(count) = series(&mut inner.counters, name, labels)
        {
            *count += 1;
        }
    }

    /// Records one observation, in seconds.
    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], seconds: f64) {
        if let Ok(mut inner) = self.inner.lock() {
            let Some(h) = series(&mut inner.histograms, name, labels) else {
                return;
            };
            if h.counts.is_empty() {
                h.counts = vec![0; BUCKETS.len()];
            }
            for (count, bound) in h.counts.iter_mut().zip(BUCKETS) {
                if seconds <= *bound {
                    *count += 1;
                }
            }
            h.sum += seconds;
            h.count += 1;
        }
    }

    /// A counter's value (tests and `/admin`).
    pub fn counter(&self, name: &str, labels: &[(&'static str, &str)]) -> u64 {
        let key = owned(labels);
        self.inner
            .lock()
            .ok()
            .and_then(|inner| {
                sorted(&inner.counters, name)
                    .into_iter()
                    .find(|(l, _)| *l == key)
                    .map(|(_, v)| *v)
            })
            .unwrap_or(0)
    }

    /// Prometheus text exposition of the registry plus `extra` (gauges computed at
    /// scrape time by the caller).
    pub fn render(&self, extra: &str) -> String {
        let mut out = String::new();
        let Ok(inner) = self.inner.lock() else {
            return out;
        };
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in sorted(&inner.counters, name) {
                let _ = writeln!(out, "{name}{} {v}", format_labels(labels, None));
            }
            for (labels, h) in sorted(&inner.histograms, name) {
                for (count, bound) in h.counts.iter().zip(BUCKETS) {
                    let le = bound.to_string();
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {count}",
                        format_labels(labels, Some(&le))
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    format_labels(labels, Some("+Inf")),
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{} {}", format_labels(labels, None), h.sum);
                let _ = writeln!(
                    out,
                    "{name}_count{} {}",
                    format_labels(labels, None),
                    h.count
                );
            }
        }
        out.push_str(extra);
        out
    }
}

fn owned(labels: &[(&'static str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// `{a="x",b="y"}` with Prometheus escaping; `le` appended for buckets.
pub fn format_labels(labels: &[(&'static str, String)], le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render() {
        let m = Metrics::default();
        m.inc(
            "ferry_exchanges_total",
            &[("issuer", "gh"), ("target", "t"), ("outcome", "granted")],
        );
        m.inc(
            "ferry_exchanges_total",
            &[("issuer", "gh"), ("target", "t"), ("outcome", "granted")],
        );
        m.observe(
            "ferry_exchange_duration_seconds",
            &[("outcome", "granted")],
            0.003,
        );
        let text = m.render("");
        assert!(
            text.contains(
                "ferry_exchanges_total{issuer=\"gh\",target=\"t\",outcome=\"granted\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ferry_exchange_duration_seconds_bucket{outcome=\"granted\",le=\"0.0025\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ferry_exchange_duration_seconds_bucket{outcome=\"granted\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("ferry_exchange_duration_seconds_count{outcome=\"granted\"} 1"),
            "{text}"
        );
        assert_eq!(
            m.counter(
                "ferry_exchanges_total",
                &[("issuer", "gh"), ("target", "t"), ("outcome", "granted")]
            ),
            2
        );
    }

    #[test]
    fn each_label_set_is_its_own_series_and_renders_in_order() {
        let m = Metrics::default();
        for target in ["b", "a", "c", "a", "b", "a"] {
            m.inc("ferry_exchanges_total", &[("target", target)]);
        }
        m.inc(
            "ferry_exchanges_total",
            &[("target", "a"), ("outcome", "x")],
        );
        assert_eq!(m.counter("ferry_exchanges_total", &[("target", "a")]), 3);
        assert_eq!(m.counter("ferry_exchanges_total", &[("target", "b")]), 2);
        assert_eq!(m.counter("ferry_exchanges_total", &[("target", "c")]), 1);
        assert_eq!(m.counter("ferry_exchanges_total", &[("target", "d")]), 0);
        assert_eq!(
            m.counter(
                "ferry_exchanges_total",
                &[("target", "a"), ("outcome", "x")]
            ),
            1
        );
        let text = m.render("");
        let a = text.find("{target=\"a\"} 3");
        let b = text.find("{target=\"b\"} 2");
        let c = text.find("{target=\"c\"} 1");
        assert!(a < b && b < c && a.is_some(), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            format_labels(&[("a", "x\"y".into())], None),
            "{a=\"x\\\"y\"}"
        );
    }
}
