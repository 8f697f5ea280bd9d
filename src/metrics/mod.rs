//! Prometheus metrics, held in `AppState` (no global recorder, so tests run in parallel
//! and each sees only its own counts). Labels are bounded: issuer and target ids come
//! from the config, never from the request; no subjects or token ids.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Latency buckets, seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A series' labels: names fixed in code, values owned.
pub type Labels = Vec<(&'static str, String)>;

use prometheus_client::metrics::MetricType;

#[derive(Default, Clone, Debug)]
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
            list.push((crate::metrics::labels(labels), V::default()));
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

pub mod process;

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
        "ferry_shadow_disagreements_total",
        "counter",
        "Decisions where the shadow policies (`[policy] shadow_files`) disagreed with the enforced ones, by direction (allow_to_deny, deny_to_allow).",
    ),
    (
        "ferry_anomalies_total",
        "counter",
        "Anomalies raised by kind (`[anomalies]`; each is also an audit line and a warn log line).",
    ),
    (
        "ferry_anomaly_webhook_total",
        "counter",
        "Anomaly webhook POSTs by outcome (delivered, failed after every attempt, dropped from a full queue).",
    ),
    (
        "ferry_signing_duration_seconds",
        "histogram",
        "Signatures with Ferry's active key by backend (files, pkcs11, aws_kms, gcp_kms, azure_key_vault), failed ones included.",
    ),
    (
        "ferry_signing_failures_total",
        "counter",
        "Signatures that failed by backend and reason (unavailable: the key manager did not answer in time, or answered 5xx; refused: it answered no). Each is a 503 unless the credential was cached.",
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

    /// Creates the series at 0 if it does not exist: a counter an alert reads
    /// (`increase(…[5m])`) must exist before its first increment.
    pub fn declare(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        if let Ok(mut inner) = self.inner.lock() {
            series(&mut inner.counters, name, labels);
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
        let key = crate::metrics::labels(labels);
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
    /// The exposition (OpenMetrics text, through prometheus-client): every series
    /// recorded here, then `scraped`, the values read at scrape time; series in label
    /// order.
    pub fn render(&self, scraped: Vec<Family>) -> String {
        let families = {
            let Ok(inner) = self.inner.lock() else {
                return String::new();
            };
            HELP.iter()
                .map(|(name, kind, help)| Family {
                    name,
                    help,
                    series: if *kind == "histogram" {
                        sorted(&inner.histograms, name)
                            .into_iter()
                            .map(|(l, h)| (l.clone(), Value::Histogram(h.clone())))
                            .collect()
                    } else {
                        sorted(&inner.counters, name)
                            .into_iter()
                            .map(|(l, v)| (l.clone(), Value::Counter(*v)))
                            .collect()
                    },
                    kind: if *kind == "histogram" {
                        MetricType::Histogram
                    } else {
                        MetricType::Counter
                    },
                })
                .collect::<Vec<_>>()
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Families(families)));
        registry.register_collector(Box::new(Families(scraped)));
        let mut out = String::new();
        match prometheus_client::encoding::text::encode(&mut out, &registry) {
            Ok(()) => out,
            Err(_) => String::new(),
        }
    }
}

/// A metric's series as prometheus-client encodes them.
#[derive(Debug)]
pub struct Family {
    /// The name as exposed (`…_total` for a counter).
    pub name: &'static str,
    pub help: &'static str,
    kind: MetricType,
    series: Vec<(Labels, Value)>,
}

impl Family {
    /// A counter read at scrape time.
    pub fn counter(name: &'static str, help: &'static str, series: Vec<(Labels, u64)>) -> Self {
        Self::of(name, help, MetricType::Counter, series, Value::Counter)
    }

    /// A whole-number gauge read at scrape time.
    pub fn gauge(name: &'static str, help: &'static str, series: Vec<(Labels, i64)>) -> Self {
        Self::of(name, help, MetricType::Gauge, series, Value::Gauge)
    }

    /// A counter in seconds (fractions kept) read at scrape time.
    pub fn seconds_counter(
        name: &'static str,
        help: &'static str,
        series: Vec<(Labels, f64)>,
    ) -> Self {
        Self::of(
            name,
            help,
            MetricType::Counter,
            series,
            Value::SecondsCounter,
        )
    }

    /// A gauge in seconds (fractions kept) read at scrape time.
    pub fn seconds(name: &'static str, help: &'static str, series: Vec<(Labels, f64)>) -> Self {
        Self::of(name, help, MetricType::Gauge, series, Value::Seconds)
    }

    fn of<V>(
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        series: Vec<(Labels, V)>,
        value: fn(V) -> Value,
    ) -> Self {
        Self {
            name,
            help,
            kind,
            series: series.into_iter().map(|(l, v)| (l, value(v))).collect(),
        }
    }
}

#[derive(Debug)]
enum Value {
    Counter(u64),
    Gauge(i64),
    Seconds(f64),
    SecondsCounter(f64),
    Histogram(Histogram),
}

#[derive(Debug)]
struct Families(Vec<Family>);

impl prometheus_client::collector::Collector for Families {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::NoLabelSet;
        for family in &self.0 {
            // prometheus-client adds a counter's `_total` itself.
            let name = match family.kind {
                MetricType::Counter => family.name.strip_suffix("_total").unwrap_or(family.name),
                _ => family.name,
            };
            let mut metric = encoder.encode_descriptor(name, family.help, None, family.kind)?;
            for (labels, value) in &family.series {
                let mut series = metric.encode_family(labels)?;
                match value {
                    Value::Counter(v) => series.encode_counter::<NoLabelSet, _, u64>(v, None)?,
                    Value::Gauge(v) => series.encode_gauge(v)?,
                    Value::Seconds(v) => series.encode_gauge(v)?,
                    Value::SecondsCounter(v) => {
                        series.encode_counter::<NoLabelSet, _, f64>(v, None)?;
                    }
                    Value::Histogram(h) => {
                        // Stored cumulative per bound; the encoder wants each bucket's own.
                        let mut below = 0;
                        let mut buckets: Vec<(f64, u64)> = h
                            .counts
                            .iter()
                            .zip(BUCKETS)
                            .map(|(&cumulative, &bound)| {
                                let own = cumulative.saturating_sub(below);
                                below = cumulative;
                                (bound, own)
                            })
                            .collect();
                        buckets.push((f64::INFINITY, h.count.saturating_sub(below)));
                        series.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A label set as stored: names fixed in code, values owned.
pub fn labels(labels: &[(&'static str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
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
        let text = m.render(Vec::new());
        assert!(
            text.contains(
                "ferry_exchanges_total{issuer=\"gh\",target=\"t\",outcome=\"granted\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ferry_exchange_duration_seconds_bucket{le=\"0.0025\",outcome=\"granted\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ferry_exchange_duration_seconds_bucket{le=\"0.005\",outcome=\"granted\"} 1"
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
        let text = m.render(Vec::new());
        let a = text.find("{target=\"a\"} 3");
        let b = text.find("{target=\"b\"} 2");
        let c = text.find("{target=\"c\"} 1");
        assert!(a < b && b < c && a.is_some(), "{text}");
    }

    #[test]
    fn label_values_are_escaped_and_the_exposition_is_openmetrics() {
        let m = Metrics::default();
        m.inc("ferry_exchanges_total", &[("target", "x\"y")]);
        m.observe(
            "ferry_exchange_duration_seconds",
            &[("outcome", "granted")],
            20.0,
        );
        let text = m.render(vec![Family::seconds(
            "ferry_revocation_copy_lag_seconds",
            "lag",
            vec![(Vec::new(), 0.25)],
        )]);
        assert!(
            text.contains("ferry_exchanges_total{target=\"x\\\"y\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE ferry_exchanges counter"), "{text}");
        // Past the last bound: only in +Inf.
        assert!(
            text.contains(
                "ferry_exchange_duration_seconds_bucket{le=\"10.0\",outcome=\"granted\"} 0"
            ) && text.contains(
                "ferry_exchange_duration_seconds_bucket{le=\"+Inf\",outcome=\"granted\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("ferry_revocation_copy_lag_seconds 0.25"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
