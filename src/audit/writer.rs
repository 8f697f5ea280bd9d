//! The writer: group commit to the file and stdout, rotation-safe appends, and the
//! checkpoints written every `checkpoint_every` lines, on rotation and at shutdown.

use super::chain::*;
use super::event::*;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Lines between two signed checkpoints unless `[audit] checkpoint_every` says otherwise.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;

/// Where lines go.
///
/// Lines are written by group commit: a decision joins a queue, and whichever request
/// finds no write under way becomes the writer — it seals everything queued (its own
/// line included) and appends the batch with one `write(2)` per sink, outside the lock,
/// while later decisions queue behind it. Each request still gets its answer only after
/// its own line is written (fail closed), but a worker thread never blocks on another's
/// file write, and a busy replica makes one write and one rotation check per batch
/// instead of per line. A writer writes one batch and hands the next to the first
/// request waiting, so no request writes for long on others' behalf.
pub struct AuditLog {
    pub(crate) checkpoints: Checkpoints,
    pub(crate) stdout: bool,
    /// Whether `file` is set (read without the lock).
    pub(crate) has_file: bool,
    pub(crate) state: Mutex<Commit>,
}

/// The group-commit state.
pub(crate) struct Commit {
    /// The sinks, taken out by the writer while it writes (`None` then).
    pub(crate) sinks: Option<Sinks>,
    /// Lines waiting for the next batch, oldest first.
    pub(crate) queue: Vec<Queued>,
    /// Whether a writer is at work (or has been handed the next batch).
    pub(crate) writing: bool,
}

pub(crate) struct Sinks {
    pub(crate) file: Option<ChainFile>,
    pub(crate) stdout_chain: ChainState,
}

pub(crate) struct Queued {
    pub(crate) body: OpenObject,
    /// Where its outcome goes; `None` for the writer's own line.
    pub(crate) done: Option<tokio::sync::oneshot::Sender<Turn>>,
}

/// What a queued request is told.
pub(crate) enum Turn {
    /// Its line was written (true) or could not be (false).
    Written(bool),
    /// It is the writer of the next batch (its own line is in it).
    Write,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("replica", &self.checkpoints.replica)
            .finish_non_exhaustive()
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) struct ChainFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) identity: Option<(u64, u64)>,
    pub(crate) chain: ChainState,
}

pub(crate) fn file_identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

impl ChainFile {
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let chain = last_link(path).unwrap_or_else(ChainState::genesis);
        let file = open_append(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("`{}`: {e}", path.display())))?;
        let identity = file.metadata().ok().as_ref().and_then(file_identity);
        Ok(Self {
            path: path.to_path_buf(),
            file,
            identity,
            chain,
        })
    }

    /// Reopens when the path no longer names the open file (logrotate moved it): the old
    /// file ends with a rotation checkpoint, the new one starts with a link to the chain.
    pub(crate) fn follow_rotation(&mut self, checkpoints: &Checkpoints) -> std::io::Result<()> {
        let replica = checkpoints.replica.as_str();
        let current = std::fs::metadata(&self.path)
            .ok()
            .as_ref()
            .and_then(file_identity);
        if current.is_some() && current == self.identity {
            return Ok(());
        }
        let before = self.chain.clone();
        if let Some(line) = checkpoints.line(&mut self.chain, CheckpointReason::Rotation)
            && self.file.write_all(line.as_bytes()).is_err()
        {
            self.chain = before;
        }
        self.file = open_append(&self.path)?;
        self.identity = self.file.metadata().ok().as_ref().and_then(file_identity);
        let link = OpenObject::new(
            &serde_json::json!({"type": "link"}),
            &[
                ("replica", replica),
                (
                    "note",
                    "file rotated; prev is the last hash of the previous file",
                ),
            ],
        )
        .ok_or_else(|| std::io::Error::other("cannot serialize the link line"))?;
        let line = seal(&mut self.chain, &link);
        self.file.write_all(line.as_bytes())?;
        Ok(())
    }
}

/// Whether the audit trail could be opened at `path` (what `ferry serve` does at start),
/// checked without writing to it: an existing file must open for appending; otherwise
/// every existing ancestor must be a directory and the nearest one writable. The error
/// names the path that is in the way.
pub fn check_writable(path: &Path) -> Result<(), String> {
    if path.exists() {
        if !path.is_file() {
            return Err(format!(
                "`{}` exists and is not a regular file",
                path.display()
            ));
        }
        return OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| format!("`{}` cannot be opened for appending: {e}", path.display()));
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        let d = if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        };
        if d.exists() {
            if !d.is_dir() {
                return Err(format!("`{}` is not a directory", d.display()));
            }
            // An unnamed temporary file: created and gone, nothing left behind.
            return tempfile::tempfile_in(d)
                .map(drop)
                .map_err(|e| format!("cannot create files in `{}`: {e}", d.display()));
        }
        dir = d.parent();
    }
    Ok(())
}

pub(crate) fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o640);
    }
    options.open(path)
}

/// The chain state after the last parseable line of `path`, if any.
pub(crate) fn last_link(path: &Path) -> Option<ChainState> {
    let file = File::open(path).ok()?;
    let mut last = None;
    for line in BufReader::new(file).lines() {
        let line = line.ok()?;
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&line)
            && let (Some(hash), Some(seq)) = (
                m.get("hash").and_then(Value::as_str),
                m.get("seq").and_then(Value::as_u64),
            )
        {
            last = Some(ChainState::at(hash.to_owned(), seq));
        }
    }
    last
}

impl AuditLog {
    /// An audit log writing to `file` and/or stdout, tagging lines with `replica`, with a
    /// signed checkpoint every [`DEFAULT_CHECKPOINT_EVERY`] lines once a signer is set.
    pub fn open(file: Option<&Path>, stdout: bool, replica: String) -> std::io::Result<Self> {
        let file = match file {
            Some(p) => Some(ChainFile::open(p)?),
            None => None,
        };
        Ok(Self {
            checkpoints: Checkpoints {
                replica,
                every: DEFAULT_CHECKPOINT_EVERY,
                signer: Mutex::new(None),
            },
            stdout,
            has_file: file.is_some(),
            state: Mutex::new(Commit {
                sinks: Some(Sinks {
                    file,
                    stdout_chain: ChainState::genesis(),
                }),
                queue: Vec::new(),
                writing: false,
            }),
        })
    }

    /// Checkpoints every `every` lines (0: only at rotation and shutdown).
    pub fn with_checkpoint_every(mut self, every: u64) -> Self {
        self.checkpoints.every = every;
        self
    }

    /// Signs checkpoints with `signer` from now on (at start, and after each reload).
    pub fn set_signer(&self, signer: std::sync::Arc<dyn CheckpointSigner>) {
        if let Ok(mut s) = self.checkpoints.signer.lock() {
            *s = Some(signer);
        }
    }

    /// Writes the shutdown checkpoint to every sink: the last line Ferry writes, which
    /// tells a complete trail from one whose end was cut. Call once nothing else writes.
    pub fn close(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let Some(sinks) = state.sinks.as_mut() else {
            return;
        };
        if let Some(f) = &mut sinks.file {
            let before = f.chain.clone();
            if let Some(line) = self
                .checkpoints
                .line(&mut f.chain, CheckpointReason::Shutdown)
                && f.file.write_all(line.as_bytes()).is_err()
            {
                f.chain = before;
            }
        }
        if self.stdout
            && let Some(line) = self
                .checkpoints
                .line(&mut sinks.stdout_chain, CheckpointReason::Shutdown)
        {
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
    }

    /// A log that records nothing.
    pub fn disabled() -> Self {
        Self {
            checkpoints: Checkpoints {
                replica: String::new(),
                every: 0,
                signer: Mutex::new(None),
            },
            stdout: false,
            has_file: false,
            state: Mutex::new(Commit {
                sinks: None,
                queue: Vec::new(),
                writing: false,
            }),
        }
    }

    /// This replica's id, as every line names it.
    pub fn replica(&self) -> &str {
        &self.checkpoints.replica
    }

    /// Whether anything is recorded.
    pub fn is_enabled(&self) -> bool {
        self.stdout || self.has_file
    }

    /// Appends one line per sink and returns once it is written: false when a sink could
    /// not be written.
    pub async fn record(&self, event: &AuditEvent<'_>) -> bool {
        self.record_line("decision", event, event.time).await
    }

    /// Appends a `"type":"anomaly"` line (chained like every other) and returns once it
    /// is written: false when a sink could not be written.
    pub async fn record_anomaly(&self, anomaly: &crate::anomaly::Anomaly) -> bool {
        self.record_line("anomaly", anomaly, anomaly.time).await
    }

    /// Appends an operator's action (`"type":"revocation"`, `"anomaly_acknowledged"`)
    /// and returns once it is written: false when a sink could not be written.
    pub async fn record_event(&self, kind: &str, body: &impl serde::Serialize, time: i64) -> bool {
        self.record_line(kind, body, time).await
    }

    /// Appends `body` (a JSON object) as a line of type `kind` at Unix time `time`.
    async fn record_line(&self, kind: &str, body: &impl serde::Serialize, time: i64) -> bool {
        if !self.is_enabled() {
            return true;
        }
        let Some(body) = OpenObject::new(
            body,
            &[
                ("type", kind),
                ("replica", &self.checkpoints.replica),
                ("time_rfc3339", &rfc3339(time)),
            ],
        ) else {
            return false;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let Ok(mut state) = self.state.lock() else {
                return false;
            };
            if state.writing {
                state.queue.push(Queued {
                    body,
                    done: Some(tx),
                });
            } else {
                state.writing = true;
                state.queue.push(Queued { body, done: None });
                drop(state);
                return self.write_turn();
            }
        }
        let mut waiting = Waiting {
            log: self,
            rx,
            answered: false,
        };
        let turn = (&mut waiting.rx).await;
        waiting.answered = true;
        match turn {
            Ok(Turn::Written(ok)) => ok,
            Ok(Turn::Write) => self.write_turn(),
            Err(_) => false,
        }
    }

    /// As the writer: writes the queued batch (which holds the caller's own line), then
    /// hands the next batch to the first request still waiting — or, when none is left
    /// to take it, writes that batch too. Returns whether the caller's line was written.
    pub(crate) fn write_turn(&self) -> bool {
        // The caller's line is in the first batch; later ones hold only lines of requests
        // that have gone, and their outcome is not the caller's.
        let mut own: Option<bool> = None;
        loop {
            let (batch, mut sinks) = {
                let Ok(mut state) = self.state.lock() else {
                    return false;
                };
                let Some(sinks) = state.sinks.take() else {
                    // Nowhere to write (cannot happen while a log is enabled): fail every
                    // queued line rather than leave the queue waiting for a writer.
                    state.queue.clear();
                    state.writing = false;
                    return false;
                };
                (std::mem::take(&mut state.queue), sinks)
            };
            let ok = self.write_batch(&mut sinks, &batch);
            own.get_or_insert(ok);
            for q in batch {
                if let Some(tx) = q.done {
                    let _ = tx.send(Turn::Written(ok));
                }
            }
            let Ok(mut state) = self.state.lock() else {
                return false;
            };
            state.sinks = Some(sinks);
            // Hand over to the oldest waiter whose request is still there; its line
            // stays queued, now as the new writer's own.
            let mut handed = false;
            for q in &mut state.queue {
                if let Some(tx) = q.done.take() {
                    match tx.send(Turn::Write) {
                        Ok(()) => {
                            handed = true;
                            break;
                        }
                        // Its request is gone; its line is still written, by whoever
                        // writes next.
                        Err(_) => continue,
                    }
                }
            }
            if handed {
                return own.unwrap_or(false);
            }
            if state.queue.is_empty() {
                state.writing = false;
                return own.unwrap_or(false);
            }
            // Only lines of requests that have gone are left: write them now.
        }
    }

    /// Seals and appends a batch to each sink, one write each. Returns false when a sink
    /// failed (every line of the batch is then reported as not written).
    pub(crate) fn write_batch(&self, sinks: &mut Sinks, batch: &[Queued]) -> bool {
        let mut ok = true;
        let checkpoints = &self.checkpoints;
        if let Some(f) = &mut sinks.file {
            ok &= f.follow_rotation(checkpoints).is_ok()
                && append(&mut f.chain, batch, checkpoints, |lines| {
                    f.file.write_all(lines)
                });
        }
        if self.stdout {
            ok &= append(&mut sinks.stdout_chain, batch, checkpoints, |lines| {
                std::io::stdout().lock().write_all(lines)
            });
        }
        ok
    }
}

/// Seals `batch` onto `chain` (with a checkpoint wherever one falls due) and writes it
/// with one `write`; when that fails the chain is left as it was, so the next line links
/// to the last one written.
pub(crate) fn append(
    chain: &mut ChainState,
    batch: &[Queued],
    checkpoints: &Checkpoints,
    write: impl FnOnce(&[u8]) -> std::io::Result<()>,
) -> bool {
    let before = chain.clone();
    let mut lines = String::new();
    for q in batch {
        lines.push_str(&seal(chain, &q.body));
        chain.since_checkpoint += 1;
        if let Some(checkpoint) = checkpoints.due(chain) {
            lines.push_str(&checkpoint);
        }
    }
    let ok = write(lines.as_bytes()).is_ok();
    if !ok {
        *chain = before;
    }
    ok
}

/// A request waiting for its turn. If it is dropped (the client went away) after being
/// told to write the next batch, it writes that batch before it goes, so the queue never
/// stalls.
pub(crate) struct Waiting<'a> {
    pub(crate) log: &'a AuditLog,
    pub(crate) rx: tokio::sync::oneshot::Receiver<Turn>,
    pub(crate) answered: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.answered && matches!(self.rx.try_recv(), Ok(Turn::Write)) {
            self.log.write_turn();
        }
    }
}
