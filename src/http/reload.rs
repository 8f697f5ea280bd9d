//! Live reload: SIGHUP, `POST /admin/reload` and a file watch rebuild the whole config;
//! the new snapshot is fully validated (and its issuer keys fetched) before it is swapped
//! in atomically. An invalid config is rejected and the old one keeps serving.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::AppState;
use crate::config::{Config, ConfigErrors};
use crate::snapshot::{BuildOptions, Snapshot};

/// Reload bookkeeping.
#[derive(Default)]
pub struct ReloadState {
    lock: tokio::sync::Mutex<()>,
    last_error: Mutex<Option<String>>,
}

impl ReloadState {
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
