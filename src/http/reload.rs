//! Live reload: SIGHUP, `POST /admin/reload` and a file watch rebuild the whole config;
//! the new snapshot is fully validated (and its issuer keys fetched) before it is swapped
//! in atomically. An invalid config is rejected and the old one keeps serving.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::AppState;
use crate::config::{Config, ConfigErrors};
use crate::snapshot::{BuildOptions, Snapshot};

/// Reloads kept for the console.
const HISTORY: usize = 50;

/// Reload bookkeeping.
#[derive(Default)]
pub struct ReloadState {
    lock: tokio::sync::Mutex<()>,
    last_error: Mutex<Option<String>>,
    /// When the serving config was loaded (Unix seconds).
    loaded_at: std::sync::atomic::AtomicI64,
    history: Mutex<std::collections::VecDeque<ReloadEvent>>,
}

/// What changed between two revisions, by id.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Diff {
    /// Ids of `old` and `new` compared by their value.
    fn of<V: PartialEq>(
        old: &std::collections::BTreeMap<String, V>,
        new: &std::collections::BTreeMap<String, V>,
    ) -> Self {
        let mut d = Self::default();
        for (id, v) in new {
            match old.get(id) {
                None => d.added.push(id.clone()),
                Some(o) if o != v => d.changed.push(id.clone()),
                Some(_) => {}
            }
        }
        d.removed = old
            .keys()
            .filter(|id| !new.contains_key(*id))
            .cloned()
            .collect();
        d
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// One line of a policy's text diff: `+`, `-` or ` ` and the line.
pub type DiffLine = (char, String);

/// What a successful reload changed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Changes {
    pub policies: Diff,
    pub shadow_policies: Diff,
    pub targets: Diff,
    pub issuers: Diff,
    /// Each edited policy's text, as a line diff.
    pub policy_edits: Vec<(String, Vec<DiffLine>)>,
}

/// One reload, kept for the console.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadEvent {
    /// Unix seconds.
    pub time: i64,
    pub trigger: &'static str,
    pub old_revision: String,
    /// The new revision, when the reload succeeded.
    pub revision: Option<String>,
    /// Why it was rejected.
    pub error: Option<String>,
    pub changes: Changes,
}

/// Policies by id → (file, text).
type Texts = std::collections::BTreeMap<String, (String, String)>;

fn texts(engine: Option<&crate::policy::PolicyEngine>) -> Texts {
    engine
        .map(crate::policy::PolicyEngine::texts)
        .unwrap_or_default()
}

/// What changed from `old` to `new`.
pub fn changes(old: &Snapshot, new: &Snapshot) -> Changes {
    let (old_p, new_p) = (texts(Some(&old.policy)), texts(Some(&new.policy)));
    let by_text = |t: &Texts| -> std::collections::BTreeMap<String, String> {
        t.iter()
            .map(|(k, (_, text))| (k.clone(), text.clone()))
            .collect()
    };
    let policies = Diff::of(&by_text(&old_p), &by_text(&new_p));
    let shadow_policies = Diff::of(
        &by_text(&texts(old.shadow.as_ref())),
        &by_text(&texts(new.shadow.as_ref())),
    );
    let scopes = |s: &Snapshot| -> std::collections::BTreeMap<String, crate::memo::Digest> {
        s.targets
            .iter()
            .map(|(k, t)| (k.clone(), t.cache_scope))
            .collect()
    };
    let issuers = |s: &Snapshot| -> std::collections::BTreeMap<String, String> {
        s.config
            .issuers
            .iter()
            .map(|i| (i.id.clone(), format!("{i:?}")))
            .collect()
    };
    let policy_edits = policies
        .changed
        .iter()
        .filter_map(|id| {
            let (a, b) = (&old_p.get(id)?.1, &new_p.get(id)?.1);
            Some((id.clone(), line_diff(a, b)))
        })
        .collect();
    Changes {
        policies,
        shadow_policies,
        targets: Diff::of(&scopes(old), &scopes(new)),
        issuers: Diff::of(&issuers(old), &issuers(new)),
        policy_edits,
    }
}

/// A line diff of `a` to `b` (longest common subsequence; policies are short).
pub fn line_diff(a: &str, b: &str) -> Vec<DiffLine> {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    // Policies longer than this are shown as removed and added whole.
    if a.len().saturating_mul(b.len()) > 250_000 {
        return a
            .iter()
            .map(|l| ('-', (*l).to_owned()))
            .chain(b.iter().map(|l| ('+', (*l).to_owned())))
            .collect();
    }
    let (n, m) = (a.len(), b.len());
    let w = m + 1;
    // lcs[i * w + j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![0u32; (n + 1) * w];
    let at = |lcs: &[u32], i: usize, j: usize| lcs.get(i * w + j).copied().unwrap_or(0);
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            let v = if a.get(i) == b.get(j) {
                at(&lcs, i + 1, j + 1) + 1
            } else {
                at(&lcs, i + 1, j).max(at(&lcs, i, j + 1))
            };
            if let Some(c) = lcs.get_mut(i * w + j) {
                *c = v;
            }
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    loop {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                out.push((' ', (*x).to_owned()));
                i += 1;
                j += 1;
            }
            (_, Some(y)) if i == n || at(&lcs, i, j + 1) >= at(&lcs, i + 1, j) => {
                out.push(('+', (*y).to_owned()));
                j += 1;
            }
            (Some(x), _) => {
                out.push(('-', (*x).to_owned()));
                i += 1;
            }
            (None, None) => break,
            (None, Some(_)) => unreachable!("`i == n` took the added line"),
        }
    }
    out
}

impl ReloadState {
    /// When the serving config was loaded (Unix seconds).
    pub fn loaded_at(&self) -> i64 {
        self.loaded_at.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_loaded_at(&self, at: i64) {
        self.loaded_at
            .store(at, std::sync::atomic::Ordering::Relaxed);
    }

    /// The reloads kept, newest first.
    pub fn history(&self) -> Vec<ReloadEvent> {
        self.history
            .lock()
            .map(|h| h.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    fn remember(&self, event: ReloadEvent) {
        if let Ok(mut h) = self.history.lock() {
            if h.len() >= HISTORY {
                h.pop_front();
            }
            h.push_back(event);
        }
    }

    /// The last failed reload's reason, until a reload succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn set_error(&self, e: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = e;
        }
    }
}

impl AppState {
    /// Reloads the config from the file the current one came from. On success returns
    /// the new revision; on failure the old config keeps serving.
    pub async fn reload(&self, trigger: &'static str) -> Result<String, ConfigErrors> {
        let _one_at_a_time = self.reload.lock.lock().await;
        let old = self.snapshot.load_full();
        let result = async {
            let config = Config::load(&old.config.source.path)?;
            let keys = old.issuer.keys();
            let options = BuildOptions {
                clock: self.services.clock.clone(),
                require_keys: true,
                previous_ephemeral: keys.ephemeral.then(|| keys.clone()),
                previous_managed: (!keys.managed.is_empty()).then(|| keys.clone()),
                metrics: Arc::clone(&self.metrics),
            };
            let (mut snapshot, warnings) = Snapshot::build(config, &options)?;
            for w in &warnings {
                tracing::warn!("{w}");
            }
            snapshot.warm_up().await;
            snapshot.start_refreshers();
            Ok::<Snapshot, ConfigErrors>(snapshot)
        }
        .await;
        match result {
            Ok(snapshot) => {
                let revision = snapshot.revision.clone();
                if old.config.audit.file != snapshot.config.audit.file
                    || old.config.audit.stdout != snapshot.config.audit.stdout
                {
                    tracing::warn!("[audit] changes take effect at the next restart");
                }
                if !old
                    .config
                    .store
                    .opens_the_same_store(&snapshot.config.store)
                {
                    tracing::warn!(
                        "[store] connection settings (backend, url, cluster, keys, timeout, max_entries, revocation_max_lag) take effect at the next restart"
                    );
                }
                // Checkpoints are signed with the key the new config makes active.
                self.audit.set_signer(snapshot.issuer.clone());
                let now = self.services.clock.now();
                self.reload.remember(ReloadEvent {
                    time: now,
                    trigger,
                    old_revision: old.revision.clone(),
                    revision: Some(revision.clone()),
                    error: None,
                    changes: changes(&old, &snapshot),
                });
                self.reload.set_loaded_at(now);
                super::observe::declare_series(&self.metrics, &snapshot);
                self.snapshot.store(Arc::new(snapshot));
                self.reload.set_error(None);
                self.metrics
                    .inc("ferry_config_reloads_total", &[("outcome", "success")]);
                tracing::info!(trigger, old_revision = %old.revision, %revision, "config reloaded");
                Ok(revision)
            }
            Err(errs) => {
                self.metrics
                    .inc("ferry_config_reloads_total", &[("outcome", "failure")]);
                self.reload.set_error(Some(errs.to_string()));
                self.reload.remember(ReloadEvent {
                    time: self.services.clock.now(),
                    trigger,
                    old_revision: old.revision.clone(),
                    revision: None,
                    error: Some(errs.to_string()),
                    changes: Changes::default(),
                });
                tracing::error!(trigger, revision = %old.revision, problems = %errs, "config reload rejected; the previous config keeps serving");
                Err(errs)
            }
        }
    }
}

fn snapshot(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        })
        .collect()
}

/// Polls the watched files (config, policies and their directories, JWKS files) and
/// reloads when one changes. Polling works with editors that replace files and with
/// Kubernetes ConfigMap symlink swaps alike.
pub fn spawn_watch(state: Arc<AppState>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut files = state.snapshot.load().watched_files().to_vec();
        let mut seen = snapshot(&files);
        loop {
            tokio::time::sleep(interval).await;
            let now = snapshot(&files);
            if now == seen {
                continue;
            }
            seen = now;
            if state.reload("file watch").await.is_ok() {
                files = state.snapshot.load().watched_files().to_vec();
                seen = snapshot(&files);
            }
        }
    })
}

/// Reloads on every SIGHUP.
#[cfg(unix)]
pub fn spawn_sighup(state: Arc<AppState>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = state.reload("SIGHUP").await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::line_diff;

    #[test]
    fn a_line_diff_keeps_common_lines_and_marks_the_rest() {
        let d = line_diff(
            "permit (\n  a\n)\nwhen { x };",
            "permit (\n  b\n)\nwhen { x };\n// new",
        );
        let shown: Vec<String> = d.iter().map(|(s, l)| format!("{s}{l}")).collect();
        assert_eq!(
            shown,
            [" permit (", "+  b", "-  a", " )", " when { x };", "+// new"]
        );
        assert_eq!(line_diff("", "x"), [('+', "x".to_owned())]);
        assert_eq!(line_diff("x", ""), [('-', "x".to_owned())]);
    }
}
