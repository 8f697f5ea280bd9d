//! A cloud kind's keys of one `[[targets]]` table, read by the kind's own crate.
//!
//! The core deserializes what every target has (`id`, `kind`, `scopes`, `ttl`, …) and
//! hands the rest of the table to the kind, which returns a [`Spec`]: its provider's
//! target, ready to construct, or every problem it found, each named by key so the core
//! can report `file: targets[id].key: problem` beside the config's other problems.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use toml::{Table, Value};

/// `(key, problem)` pairs; the core prefixes each with the target's entry.
pub type Problems = Vec<(String, String)>;

/// What a kind is told about the entry besides its own keys.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The target id.
    pub id: &'a str,
    /// The entry's `scopes`.
    pub scopes: &'a [String],
    /// The entry's `ttl`, if it sets one (AWS and GCP name their lifetime themselves).
    pub ttl: Option<Duration>,
    /// Relative paths in the entry are read from here (the config file's directory).
    pub base_dir: &'a Path,
}

impl Context<'_> {
    /// `path` as written, resolved against the config file's directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        resolve_in(self.base_dir, Path::new(path))
    }
}

/// A path from a config file: as written when absolute, else under `base_dir` (the
/// config file's directory). The one rule for every relative path in Ferry's config.
pub fn resolve_in(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// A value the core computes per identity and hands the provider in the grant's
/// `values` (AWS session tags, source identity): a CEL expression over `identity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    /// The name in `Grant::values` (`session_tag:team`).
    pub name: String,
    /// The key it was written under, for errors (`session_tags.team`).
    pub key: String,
    /// The CEL source.
    pub source: String,
}

/// What a kind makes of one valid entry.
#[derive(Debug, Clone)]
pub struct Spec<T> {
    /// The provider's target, ready to construct.
    pub target: T,
    /// The lifetime of what it issues.
    pub ttl: Duration,
    /// `min_remaining` when the entry sets none: what the cloud's SDKs need left on a
    /// credential before they refresh it, so a cached one is never handed out closer to
    /// expiry than that.
    pub min_remaining: Duration,
    /// The per-identity values the core compiles and evaluates.
    pub expressions: Vec<Expression>,
    /// Things that load but an operator should know (`targets[id].key: warning: …`).
    pub warnings: Problems,
}

/// `min_remaining` for a lifetime: half of it, at least `floor`, and always `slack`
/// short of the whole lifetime.
pub fn refresh_floor(ttl: Duration, floor: Duration, slack: Duration) -> Duration {
    (ttl / 2).max(floor).min(ttl.saturating_sub(slack))
}

/// Reads one kind's keys, collecting every problem instead of stopping at the first.
#[derive(Debug)]
pub struct Keys<'a> {
    table: &'a Table,
    problems: Problems,
}

impl<'a> Keys<'a> {
    /// Starts reading `table`, recording each key that is not in `known`.
    pub fn new(table: &'a Table, known: &[&str], kind: &str) -> Self {
        let problems = table
            .keys()
            .filter(|key| !known.contains(&key.as_str()))
            .map(|key| (key.clone(), format!("unknown key for kind `{kind}`")))
            .collect();
        Self { table, problems }
    }

    /// Records a problem with `key`.
    pub fn problem(&mut self, key: impl Into<String>, problem: impl Into<String>) {
        self.problems.push((key.into(), problem.into()));
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.table.get(key)
    }

    /// A string key, if present.
    pub fn string(&mut self, key: &str) -> Option<String> {
        match self.table.get(key) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.problem(key, "must be a string");
                None
            }
        }
    }

    /// A string key that must be an http(s) URL, else `default`.
    pub fn url(&mut self, key: &str, default: &str) -> String {
        let v = self.string(key).unwrap_or_else(|| default.to_owned());
        if !is_http_url(&v) {
            self.problem(key, format!("`{v}` is not an http(s) URL"));
        }
        v
    }

    /// A duration string (`"1h"`), else `default`.
    pub fn duration(&mut self, key: &str, default: Duration) -> Duration {
        match self.table.get(key) {
            None => default,
            Some(Value::String(s)) => humantime::parse_duration(s).unwrap_or_else(|_| {
                self.problem(key, format!("`{s}` is not a duration"));
                default
            }),
            Some(_) => {
                self.problem(key, "must be a duration string like \"1h\"");
                default
            }
        }
    }

    /// `max_concurrency`: 1–256, else `default`.
    pub fn concurrency(&mut self, default: usize) -> usize {
        match self.table.get("max_concurrency") {
            None => default,
            Some(Value::Integer(n)) if (1..=256).contains(n) => {
                usize::try_from(*n).unwrap_or(default)
            }
            Some(_) => {
                self.problem("max_concurrency", "must be an integer between 1 and 256");
                default
            }
        }
    }

    /// `Ok(spec)` when nothing was wrong, else every problem.
    pub fn finish<T>(self, spec: Spec<T>) -> Result<Spec<T>, Problems> {
        if self.problems.is_empty() {
            Ok(spec)
        } else {
            Err(self.problems)
        }
    }
}

/// Whether `v` is an http(s) URL.
pub fn is_http_url(v: &str) -> bool {
    url::Url::parse(v).is_ok_and(|u| u.scheme() == "https" || u.scheme() == "http")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        text.parse().unwrap()
    }

    #[test]
    fn every_problem_is_named_by_its_key() {
        let t = table("region = 3\nlifetime = \"soon\"\nmax_concurrency = 0\nbogus = 1");
        let mut keys = Keys::new(&t, &["region", "lifetime", "max_concurrency"], "aws");
        assert_eq!(keys.string("region"), None);
        assert_eq!(
            keys.duration("lifetime", Duration::from_secs(7)),
            Duration::from_secs(7)
        );
        assert_eq!(keys.concurrency(4), 4);
        assert_eq!(keys.url("endpoint", "ftp://x"), "ftp://x");
        let spec = Spec {
            target: (),
            ttl: Duration::ZERO,
            min_remaining: Duration::ZERO,
            expressions: Vec::new(),
            warnings: Vec::new(),
        };
        let problems = keys.finish(spec).unwrap_err();
        let named: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            named,
            ["bogus", "region", "lifetime", "max_concurrency", "endpoint"]
        );
        assert_eq!(problems[0].1, "unknown key for kind `aws`");
    }

    #[test]
    fn a_refresh_floor_stays_inside_the_lifetime() {
        let m = Duration::from_secs(60);
        assert_eq!(refresh_floor(m * 60, m * 16, m), m * 30);
        assert_eq!(refresh_floor(m * 20, m * 16, m), m * 16);
        assert_eq!(refresh_floor(m * 15, m * 16, m), m * 14);
    }
}
