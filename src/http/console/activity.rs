//! What the console shows of recent traffic: the last decisions (a bounded ring of their
//! [`ExchangeRecord`]s, moved in once the request's log line is written — not copied)
//! and per-minute counts and latencies over the last hour.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::record::ExchangeRecord;

/// Decisions kept per replica.
pub const RING: usize = 10_000;
/// Minutes of per-minute figures kept.
pub const MINUTES: usize = 60;
/// Latency bucket upper bounds, milliseconds (the last one is open-ended).
pub const LATENCY_MS: [f64; 16] = [
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    5.0,
    8.0,
    13.0,
    20.0,
    35.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    f64::INFINITY,
];

/// One decision as the console lists it: the record, when it was settled, and how long
/// the request took.
#[derive(Debug)]
pub struct Decided {
    /// Unix seconds.
    pub time: i64,
    /// Whole request, milliseconds.
    pub latency_ms: f64,
    pub record: Box<ExchangeRecord>,
}

/// One minute's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Minute {
    /// Unix minute (seconds / 60).
    pub minute: i64,
    pub granted: u64,
    /// Refused for the client's reasons (policy, a bad token, a revocation, …).
    pub denied: u64,
    /// Refused because Ferry or an upstream could not answer (503, 500).
    pub errors: u64,
    pub cache_hits: u64,
    pub cache_lookups: u64,
    /// Requests per latency bucket ([`LATENCY_MS`]).
    pub latency: [u64; LATENCY_MS.len()],
}

impl Minute {
    pub fn total(&self) -> u64 {
        self.granted + self.denied + self.errors
    }
}

/// The latency below which `q` (0..1) of the counted requests fell, from the bucket
/// counts (the bucket's upper bound; `None` with nothing counted).
pub fn quantile(latency: &[u64; LATENCY_MS.len()], q: f64) -> Option<f64> {
    let total: u64 = latency.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (count, bound) in latency.iter().zip(LATENCY_MS) {
        seen += count;
        if seen >= rank {
            return Some(bound);
        }
    }
    Some(f64::INFINITY)
}

#[derive(Debug, Default)]
struct Inner {
    ring: VecDeque<Decided>,
    minutes: VecDeque<Minute>,
}

/// The console's view of traffic on this replica.
#[derive(Debug, Default)]
pub struct Activity {
    inner: Mutex<Inner>,
}

/// Refusals that are Ferry's or an upstream's failure, not the client's.
fn is_error(code: &str) -> bool {
    matches!(code, "temporarily_unavailable" | "server_error")
}

impl Activity {
    /// Keeps a settled decision (the oldest kept goes when the ring is full: the audit
    /// trail is the record, this is a view) and counts it in its minute.
    pub fn push(&self, time: i64, latency_ms: f64, record: Box<ExchangeRecord>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let minute = time.div_euclid(60);
        if inner.minutes.back().is_none_or(|m| m.minute < minute) {
            if inner.minutes.len() >= MINUTES {
                inner.minutes.pop_front();
            }
            inner.minutes.push_back(Minute {
                minute,
                ..Minute::default()
            });
        }
        if let Some(m) = inner.minutes.back_mut() {
            match &record.refusal {
                None => m.granted += 1,
                Some(r) if is_error(r.code) => m.errors += 1,
                Some(_) => m.denied += 1,
            }
            if let Some(cache) = record.cache {
                m.cache_lookups += 1;
                if cache == crate::record::CacheResult::Hit {
                    m.cache_hits += 1;
                }
            }
            let bucket = LATENCY_MS
                .iter()
                .position(|b| latency_ms <= *b)
                .unwrap_or(LATENCY_MS.len() - 1);
            if let Some(c) = m.latency.get_mut(bucket) {
                *c += 1;
            }
        }
        if inner.ring.len() >= RING {
            inner.ring.pop_front();
        }
        inner.ring.push_back(Decided {
            time,
            latency_ms,
            record,
        });
    }

    /// The per-minute figures of the hour before `now`, oldest first, one per minute
    /// (minutes without traffic as zeros).
    pub fn minutes(&self, now: i64) -> Vec<Minute> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        let last = now.div_euclid(60);
        let first = last - (MINUTES as i64 - 1);
        (first..=last)
            .map(|minute| {
                inner
                    .minutes
                    .iter()
                    .find(|m| m.minute == minute)
                    .copied()
                    .unwrap_or(Minute {
                        minute,
                        ..Minute::default()
                    })
            })
            .collect()
    }

    /// Up to `limit` kept decisions matching `filter`, newest first, each as `f` makes it.
    pub fn latest<T>(
        &self,
        limit: usize,
        filter: impl Fn(&Decided) -> bool,
        f: impl Fn(&Decided) -> T,
    ) -> Vec<T> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        inner
            .ring
            .iter()
            .rev()
            .filter(|d| filter(d))
            .take(limit)
            .map(f)
            .collect()
    }

    /// The kept decision with request id `id`, as `f` makes it.
    pub fn find<T>(&self, id: &str, f: impl FnOnce(&Decided) -> T) -> Option<T> {
        let inner = self.inner.lock().ok()?;
        inner
            .ring
            .iter()
            .rev()
            .find(|d| d.record.request_id == id)
            .map(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(code: Option<&'static str>) -> Box<ExchangeRecord> {
        let mut r = ExchangeRecord::start("id".into(), "127.0.0.1".parse().unwrap(), "rev".into());
        r.refusal = code.map(|code| crate::record::Refusal {
            code,
            description: String::new(),
        });
        Box::new(r)
    }

    #[test]
    fn minutes_count_grants_denials_and_errors_and_quantiles_come_from_buckets() {
        let a = Activity::default();
        for ms in [0.1, 0.4, 0.9, 4.0] {
            a.push(600, ms, record(None));
        }
        a.push(610, 1.0, record(Some("invalid_target")));
        a.push(700, 1.0, record(Some("temporarily_unavailable")));
        let m = a.minutes(700);
        assert_eq!(m.len(), MINUTES);
        let ten = m.iter().find(|m| m.minute == 10).unwrap();
        assert_eq!((ten.granted, ten.denied, ten.errors), (4, 1, 0));
        assert_eq!(quantile(&ten.latency, 0.5), Some(1.0));
        assert_eq!(quantile(&ten.latency, 0.99), Some(5.0));
        assert_eq!(m.last().unwrap().errors, 1);
        assert_eq!(quantile(&Minute::default().latency, 0.5), None);
    }

    #[test]
    fn the_ring_keeps_the_latest_and_finds_by_request_id() {
        let a = Activity::default();
        for i in 0..(RING + 5) {
            let mut r = record(None);
            r.request_id = format!("r{i}");
            a.push(1, 1.0, r);
        }
        let ids = a.latest(3, |_| true, |d| d.record.request_id.clone());
        assert_eq!(
            ids,
            [
                format!("r{}", RING + 4),
                format!("r{}", RING + 3),
                format!("r{}", RING + 2)
            ]
        );
        assert!(a.find("r0", |_| ()).is_none(), "the oldest went");
        assert!(a.find("r5", |_| ()).is_some());
    }
}
