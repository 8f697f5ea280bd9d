//! Tamper-evident audit trail: one JSON line per decision, each carrying the SHA-256 of
//! the previous line (`prev`) and its own (`hash`), so altering, removing or reordering a
//! line breaks the chain. A rotated file starts with a `link` line that carries the last
//! hash of the file before it.
//!
//! A hash chain alone has no key: whoever can edit the file can rewrite it and recompute
//! every hash. So every `checkpoint_every` lines, when a file is rotated and at shutdown,
//! Ferry appends a `checkpoint` line whose `signature` is a JWS, by Ferry's signing key,
//! over the chain's head hash and line count. `ferry audit verify --jwks` checks them:
//! a rewrite (even with recomputed hashes) no longer matches a signed head, a cut from
//! the start leaves a first line that is neither the chain's genesis nor a rotation
//! link, and a cut from the end leaves a trail whose last checkpoint is not a shutdown
//! or rotation one. What cannot be told apart: lines cut after the last checkpoint of a
//! trail that Ferry is still writing (or that ended in a crash), and a whole trail
//! deleted.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// Lines between two signed checkpoints unless `[audit] checkpoint_every` says otherwise.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;

/// The `prev` of the first line of a new chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One decision, as the audit trail records it (borrowed from the decision's
/// `ExchangeRecord`; `http/observe.rs` builds it).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AuditEvent<'a> {
    /// Unix seconds.
    pub time: i64,
    pub request_id: &'a str,
    pub client_ip: String,
    /// The issuer id, once known.
    pub issuer: Option<&'a str>,
    /// The subject token's `sub`, once verified.
    pub token_sub: Option<&'a str>,
    /// SHA-256 (hex) of the presented token; never the token.
    pub token_sha256: Option<&'a str>,
    /// The canonical subject, once mapped.
    pub subject: Option<&'a str>,
    /// The target id, when it names a configured target.
    pub target: Option<&'a str>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Policies that determined the decision.
    pub policy_ids: &'a [String],
    /// The RFC 6749 error code of a denial.
    pub error: Option<&'a str>,
    /// The error description the client was sent.
    pub reason: Option<&'a str>,
    /// `hit` or `miss` for granted exchanges.
    pub cache: Option<&'static str>,
    /// SHA-256 (hex) of the issued access token; never the credential.
    pub credential_sha256: Option<&'a str>,
    /// The upstream request id, for cloud credentials.
    pub upstream_request_id: Option<&'a str>,
    /// The config revision that decided.
    pub revision: &'a str,
}

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
    checkpoints: Checkpoints,
    stdout: bool,
    /// Whether `file` is set (read without the lock).
    has_file: bool,
    state: Mutex<Commit>,
}

/// The group-commit state.
struct Commit {
    /// The sinks, taken out by the writer while it writes (`None` then).
    sinks: Option<Sinks>,
    /// Lines waiting for the next batch, oldest first.
    queue: Vec<Queued>,
    /// Whether a writer is at work (or has been handed the next batch).
    writing: bool,
}

struct Sinks {
    file: Option<ChainFile>,
    stdout_chain: ChainState,
}

struct Queued {
    body: OpenObject,
    /// Where its outcome goes; `None` for the writer's own line.
    done: Option<tokio::sync::oneshot::Sender<Turn>>,
}

/// What a queued request is told.
enum Turn {
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

#[derive(Debug, Clone)]
struct ChainState {
    prev: String,
    seq: u64,
    /// Lines sealed since the last checkpoint.
    since_checkpoint: u64,
}

impl ChainState {
    fn genesis() -> Self {
        Self::at(GENESIS.into(), 0)
    }

    fn at(prev: String, seq: u64) -> Self {
        Self {
            prev,
            seq,
            since_checkpoint: 0,
        }
    }
}

/// Signs checkpoint claims: Ferry's issuer key (`FerryIssuer`), swapped on reload.
pub trait CheckpointSigner: Send + Sync {
    /// A compact JWS over `claims`, the key id in its header.
    fn sign_checkpoint(&self, claims: &Map<String, Value>) -> Option<String>;
}

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckpointReason {
    /// `checkpoint_every` lines since the last one.
    Interval,
    /// The file is being rotated away (the last line of that file).
    Rotation,
    /// Ferry is stopping (the last line it writes).
    Shutdown,
}

impl CheckpointReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Interval => "interval",
            Self::Rotation => "rotation",
            Self::Shutdown => "shutdown",
        }
    }
}

/// What a checkpoint needs besides the chain: the replica, the signer, the cadence.
struct Checkpoints {
    replica: String,
    every: u64,
    signer: Mutex<Option<std::sync::Arc<dyn CheckpointSigner>>>,
}

impl Checkpoints {
    /// The sealed checkpoint line for `chain`'s head, or `None` with no signer (or when
    /// signing fails: the chain goes on, and the next checkpoint covers these lines).
    fn line(&self, chain: &mut ChainState, reason: CheckpointReason) -> Option<String> {
        let signer = self.signer.lock().ok()?.clone()?;
        let time = unix_now();
        let mut claims = Map::new();
        claims.insert("typ".into(), "ferry-audit-checkpoint".into());
        claims.insert("replica".into(), self.replica.clone().into());
        claims.insert("count".into(), chain.seq.into());
        claims.insert("head".into(), chain.prev.clone().into());
        claims.insert("reason".into(), reason.as_str().into());
        claims.insert("time".into(), time.into());
        let signature = signer.sign_checkpoint(&claims)?;
        let body = OpenObject::new(
            &serde_json::json!({
                "type": "checkpoint",
                "replica": self.replica,
                "time": time,
                "time_rfc3339": rfc3339(time),
                "reason": reason.as_str(),
                "count": chain.seq,
                "head": chain.prev,
            }),
            &[("signature", &signature)],
        )?;
        let line = seal(chain, &body);
        chain.since_checkpoint = 0;
        Some(line)
    }

    /// A checkpoint line when `checkpoint_every` lines have been sealed since the last.
    fn due(&self, chain: &mut ChainState) -> Option<String> {
        (self.every > 0 && chain.since_checkpoint >= self.every)
            .then(|| self.line(chain, CheckpointReason::Interval))
            .flatten()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

struct ChainFile {
    path: PathBuf,
    file: File,
    identity: Option<(u64, u64)>,
    chain: ChainState,
}

fn file_identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
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

/// The hash of a line: SHA-256 over `prev`, a newline, and the line's JSON without
/// `hash`, keys in the line's order (a `Map` keeps insertion order: `preserve_order`).
pub fn line_hash(prev: &str, body: &Map<String, Value>) -> String {
    chain_hash(prev, &[&serde_json::to_vec(body).unwrap_or_default()])
}

/// The one definition of a line's hash, for the writer and the verifier: SHA-256 over
/// `prev`, a newline, and the line's JSON without `hash` (given in pieces).
fn chain_hash(prev: &str, json: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    for piece in json {
        h.update(piece);
    }
    hex::encode(h.finalize())
}

/// A JSON object without its closing `}`, e.g. `{"time":1,"decision":"allow"`: a line's
/// content before the chain's keys are added.
struct OpenObject(Vec<u8>);

impl OpenObject {
    /// `value` (which serializes as a JSON object without `seq`, `prev` or `hash` keys)
    /// followed by `extra` string fields.
    fn new(value: &impl serde::Serialize, extra: &[(&str, &str)]) -> Option<Self> {
        let mut json = serde_json::to_vec(value).ok()?;
        if json.pop() != Some(b'}') {
            return None;
        }
        for (k, v) in extra {
            if json.last() != Some(&b'{') {
                json.push(b',');
            }
            // Writing strings into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut json, k);
            json.push(b':');
            let _ = serde_json::to_writer(&mut json, v);
        }
        Some(Self(json))
    }
}

/// The next line of the chain, with its newline: `body`, then `seq` and `prev`, then
/// `hash` over all of that — byte for byte what `serde_json` writes for the `Map` built
/// by inserting those keys in that order (with its `preserve_order` feature, which this
/// build has, a `Map` keeps insertion order), which is what [`line_hash`] and `ferry audit
/// verify` hash. The body was serialized once, by the request, outside any lock.
fn seal(chain: &mut ChainState, body: &OpenObject) -> String {
    chain.seq += 1;
    let mut json = Vec::with_capacity(body.0.len() + 180);
    json.extend_from_slice(&body.0);
    if json.last() != Some(&b'{') {
        json.push(b',');
    }
    // Writing a number and a string into a Vec cannot fail.
    json.extend_from_slice(b"\"seq\":");
    let _ = serde_json::to_writer(&mut json, &chain.seq);
    json.extend_from_slice(b",\"prev\":");
    let _ = serde_json::to_writer(&mut json, &chain.prev);

    let hash = chain_hash(&chain.prev, &[&json, b"}"]);

    json.extend_from_slice(b",\"hash\":\"");
    json.extend_from_slice(hash.as_bytes());
    json.extend_from_slice(b"\"}\n");
    chain.prev = hash;
    // serde_json writes UTF-8.
    String::from_utf8(json).unwrap_or_default()
}

impl ChainFile {
    fn open(path: &Path) -> std::io::Result<Self> {
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
    fn follow_rotation(&mut self, checkpoints: &Checkpoints) -> std::io::Result<()> {
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

fn open_append(path: &Path) -> std::io::Result<File> {
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
fn last_link(path: &Path) -> Option<ChainState> {
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

    /// Whether anything is recorded.
    pub fn is_enabled(&self) -> bool {
        self.stdout || self.has_file
    }

    /// Appends one line per sink and returns once it is written: false when a sink could
    /// not be written.
    pub async fn record(&self, event: &AuditEvent<'_>) -> bool {
        if !self.is_enabled() {
            return true;
        }
        let Some(body) = OpenObject::new(
            event,
            &[
                ("type", "decision"),
                ("replica", &self.checkpoints.replica),
                ("time_rfc3339", &rfc3339(event.time)),
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
    fn write_turn(&self) -> bool {
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
    fn write_batch(&self, sinks: &mut Sinks, batch: &[Queued]) -> bool {
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
fn append(
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
struct Waiting<'a> {
    log: &'a AuditLog,
    rx: tokio::sync::oneshot::Receiver<Turn>,
    answered: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.answered && matches!(self.rx.try_recv(), Ok(Turn::Write)) {
            self.log.write_turn();
        }
    }
}

fn rfc3339(unix: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Why a chain does not verify: the file, the 1-based line, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {problem}")]
pub struct ChainBreak {
    /// The file.
    pub file: String,
    /// The line number (1-based).
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// Keys that checkpoint signatures are checked against.
pub enum CheckpointKeys {
    /// A JWKS document: Ferry's `/.well-known/jwks.json` (it keeps retired keys
    /// published, so checkpoints signed before a rotation still verify).
    Jwks(jsonwebtoken::jwk::JwkSet),
    /// One public key, PEM (RSA, EC or Ed25519).
    Pem(Vec<u8>),
}

impl std::fmt::Debug for CheckpointKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Jwks(set) => write!(f, "CheckpointKeys::Jwks({} keys)", set.keys.len()),
            Self::Pem(_) => f.write_str("CheckpointKeys::Pem"),
        }
    }
}

impl CheckpointKeys {
    /// A JWKS document's keys.
    pub fn from_jwks(document: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(document)
            .map(Self::Jwks)
            .map_err(|e| format!("not a JWKS document: {e}"))
    }

    /// The claims of a checkpoint signature that verifies with these keys.
    fn verify(&self, jws: &str) -> Result<Map<String, Value>, String> {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let header =
            jsonwebtoken::decode_header(jws).map_err(|e| format!("malformed signature: {e}"))?;
        let alg = header.alg;
        // Never a shared-secret algorithm: the verifier's key is public.
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(format!("algorithm {alg:?} is not accepted"));
        }
        let key = match self {
            Self::Jwks(set) => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or("the signature names no key (`kid`)")?;
                let jwk = set.find(kid).ok_or_else(|| {
                    format!("key `{}` is not in the JWKS", crate::text::echo(kid))
                })?;
                DecodingKey::from_jwk(jwk).map_err(|e| format!("key `{kid}`: {e}"))?
            }
            Self::Pem(pem) => match alg {
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
                _ => return Err(format!("algorithm {alg:?} is not accepted")),
            }
            .map_err(|e| format!("the key: {e}"))?,
        };
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Map<String, Value>>(jws, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| format!("signature does not verify: {e}"))
    }
}

/// What a verified trail holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Lines checked (checkpoints and links included).
    pub lines: usize,
    /// Checkpoint lines whose signature verified (0 when no keys were given).
    pub checkpoints: usize,
    /// Lines after the last verified checkpoint: covered by the chain only.
    pub unsigned_tail: usize,
    /// Whether the trail ends with a shutdown or rotation checkpoint (a trail still
    /// being written, or cut at its end, does not).
    pub closed: bool,
}

/// Verifies files in order (oldest first): the hash chain, that it starts at its
/// genesis or a rotation link, and — with `keys` — every checkpoint's signature, head
/// and count. Returns what was found, or the first break.
pub fn verify_files(
    paths: &[PathBuf],
    keys: Option<&CheckpointKeys>,
) -> Result<VerifyReport, ChainBreak> {
    let mut texts = Vec::with_capacity(paths.len());
    for path in paths {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ChainBreak {
            file: file.clone(),
            line: 0,
            problem: format!("cannot read: {e}"),
        })?;
        texts.push((file, text));
    }
    verify_texts(&texts, keys)
}

/// [`verify_files`] over the files' contents: `(name, text)`, oldest first.
pub fn verify_texts(
    texts: &[(String, String)],
    keys: Option<&CheckpointKeys>,
) -> Result<VerifyReport, ChainBreak> {
    let mut prev: Option<(String, u64)> = None;
    let mut report = VerifyReport::default();
    for (file, text) in texts {
        for (i, line) in text.lines().enumerate() {
            let brk = |problem: String| ChainBreak {
                file: file.clone(),
                line: i + 1,
                problem,
            };
            let Ok(Value::Object(mut body)) = serde_json::from_str::<Value>(line) else {
                return Err(brk("not a JSON object (line altered or truncated)".into()));
            };
            let Some(Value::String(hash)) = body.remove("hash") else {
                return Err(brk("no `hash` (line altered)".into()));
            };
            let line_prev = body
                .get("prev")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let seq = body.get("seq").and_then(Value::as_u64).unwrap_or(0);
            let kind = body.get("type").and_then(Value::as_str).unwrap_or("");
            if line_hash(&line_prev, &body) != hash {
                return Err(brk(
                    "hash does not match the line's content (line altered)".into()
                ));
            }
            match &prev {
                Some((p, s)) if line_prev != *p || seq != s + 1 => {
                    return Err(brk(format!(
                        "chain broken: expected seq {} after hash {}…, found seq {seq} (a line before it was removed, or lines were reordered)",
                        s + 1,
                        p.get(..12).unwrap_or(p)
                    )));
                }
                Some(_) => {}
                // The first line: the chain's genesis, or a rotated file's link to the
                // file before it (given, or not).
                None if (seq == 1 && line_prev == GENESIS) || kind == "link" => {}
                None => {
                    return Err(brk(format!(
                        "the trail starts mid-chain (seq {seq}, not a rotation link): lines were cut from its start, or older files are missing"
                    )));
                }
            }
            if kind == "checkpoint" {
                if let Some(keys) = keys {
                    check_checkpoint(keys, &body, &line_prev, seq).map_err(brk)?;
                    report.checkpoints += 1;
                    report.unsigned_tail = 0;
                } else {
                    report.unsigned_tail += 1;
                }
                report.closed = matches!(
                    body.get("reason").and_then(Value::as_str),
                    Some("shutdown" | "rotation")
                );
            } else {
                report.unsigned_tail += 1;
                report.closed = false;
            }
            prev = Some((hash, seq));
            report.lines += 1;
        }
    }
    if keys.is_some() && report.lines > 0 && report.checkpoints == 0 {
        return Err(ChainBreak {
            file: texts.last().map(|(f, _)| f.clone()).unwrap_or_default(),
            line: 0,
            problem: "no signed checkpoint: nothing anchors these lines to Ferry's key".into(),
        });
    }
    Ok(report)
}

/// A checkpoint line's signature verifies, and what it signed is this line's head and
/// count: the hash and seq of the line before it.
fn check_checkpoint(
    keys: &CheckpointKeys,
    body: &Map<String, Value>,
    line_prev: &str,
    seq: u64,
) -> Result<(), String> {
    let jws = body
        .get("signature")
        .and_then(Value::as_str)
        .ok_or("checkpoint without a signature")?;
    let signed = keys.verify(jws).map_err(|e| format!("checkpoint {e}"))?;
    let field = |m: &Map<String, Value>, k: &str| m.get(k).cloned().unwrap_or(Value::Null);
    if field(&signed, "typ") != "ferry-audit-checkpoint" {
        return Err("the signature is not over a checkpoint".into());
    }
    for k in ["replica", "count", "head", "reason", "time"] {
        if field(&signed, k) != field(body, k) {
            return Err(format!(
                "checkpoint `{k}` differs from what was signed (line altered)"
            ));
        }
    }
    if field(&signed, "head") != line_prev || field(&signed, "count") != seq.saturating_sub(1) {
        return Err("the signed head is not this chain's (lines before it were rewritten)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> AuditEvent<'static> {
        AuditEvent {
            time: 1_700_000_000 + n,
            request_id: format!("r{n}").leak(),
            decision: "allow",
            revision: "rev",
            ..Default::default()
        }
    }

    /// An audit log (replica `r1`) writing to `audit.log` in a fresh directory.
    fn temp_log() -> std::io::Result<(tempfile::TempDir, PathBuf, AuditLog)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(Some(&path), false, "r1".into())?;
        Ok((dir, path, log))
    }

    #[tokio::test]
    async fn a_chain_verifies_and_tampering_is_located() -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, path, log) = temp_log()?;
        for n in 0..5 {
            assert!(log.record(&event(n)).await);
        }
        assert_eq!(
            verify_files(std::slice::from_ref(&path), None).map(|r| r.lines),
            Ok(5)
        );

        let original = std::fs::read_to_string(&path)?;
        let lines: Vec<&str> = original.lines().collect();

        // Altered: line 3 says deny.
        let altered: Vec<String> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if i == 2 {
                    l.replace("\"allow\"", "\"deny\"")
                } else {
                    (*l).to_owned()
                }
            })
            .collect();
        std::fs::write(&path, altered.join("\n") + "\n")?;
        let e = verify_files(std::slice::from_ref(&path), None)
            .map(|r| r.lines)
            .err()
            .ok_or("must fail")?;
        assert_eq!(e.line, 3);
        assert!(e.problem.contains("altered"));

        // Removed: line 2 gone → line 2 (formerly 3) breaks the chain.
        let removed: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| *l)
            .collect();
        std::fs::write(&path, removed.join("\n") + "\n")?;
        let e = verify_files(std::slice::from_ref(&path), None)
            .map(|r| r.lines)
            .err()
            .ok_or("must fail")?;
        assert_eq!(e.line, 2);
        assert!(e.problem.contains("removed"));

        // Reordered: lines 4 and 5 swapped.
        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        std::fs::write(&path, swapped.join("\n") + "\n")?;
        let e = verify_files(std::slice::from_ref(&path), None)
            .map(|r| r.lines)
            .err()
            .ok_or("must fail")?;
        assert_eq!(e.line, 4);
        Ok(())
    }

    #[tokio::test]
    async fn restart_continues_the_chain_and_rotation_links_files()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("audit.log");
        {
            let log = AuditLog::open(Some(&path), false, "r1".into())?;
            assert!(log.record(&event(1)).await);
            assert!(log.record(&event(2)).await);
        }
        let log = AuditLog::open(Some(&path), false, "r1".into())?;
        assert!(log.record(&event(3)).await);
        assert_eq!(
            verify_files(std::slice::from_ref(&path), None).map(|r| r.lines),
            Ok(3)
        );

        // logrotate moves the file away; the next line starts a new file with a link.
        let rotated = dir.path().join("audit.log.1");
        std::fs::rename(&path, &rotated)?;
        assert!(log.record(&event(4)).await);
        assert!(log.record(&event(5)).await);
        let new_text = std::fs::read_to_string(&path)?;
        assert!(
            new_text
                .lines()
                .next()
                .unwrap_or("")
                .contains("\"type\":\"link\"")
        );
        assert_eq!(
            verify_files(&[rotated.clone(), path.clone()], None).map(|r| r.lines),
            Ok(3 + 3)
        );
        // Out of order, the link does not match.
        assert!(
            verify_files(&[path.clone(), rotated.clone()], None)
                .map(|r| r.lines)
                .is_err()
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_decisions_are_all_written_once_in_one_chain()
    -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, path, log) = temp_log()?;
        let log = std::sync::Arc::new(log);
        let tasks: Vec<_> = (0..400)
            .map(|n| {
                let log = std::sync::Arc::clone(&log);
                tokio::spawn(async move { log.record(&event(n)).await })
            })
            .collect();
        for t in tasks {
            assert!(t.await?);
        }
        assert_eq!(
            verify_files(std::slice::from_ref(&path), None).map(|r| r.lines),
            Ok(400)
        );
        let text = std::fs::read_to_string(&path)?;
        let mut ids: Vec<String> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let m: Map<String, Value> = serde_json::from_str(line)?;
            assert_eq!(m.get("seq").and_then(Value::as_u64), Some(i as u64 + 1));
            // The line is exactly serde_json's form of its own content.
            assert_eq!(serde_json::to_string(&m)?, line);
            ids.push(
                m.get("request_id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            );
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 400);
        Ok(())
    }

    #[tokio::test]
    async fn a_request_that_goes_away_when_handed_the_next_batch_still_writes_it()
    -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, path, log) = temp_log()?;
        // Someone is writing: this decision queues.
        log.state.lock().map_err(|_| "poisoned")?.writing = true;
        let first = event(1);
        let mut queued = Box::pin(log.record(&first));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), &mut queued)
                .await
                .is_err()
        );
        // The writer hands it the next batch, and its request is dropped before it runs.
        {
            let mut state = log.state.lock().map_err(|_| "poisoned")?;
            let tx = state
                .queue
                .first_mut()
                .and_then(|q| q.done.take())
                .ok_or("queued")?;
            assert!(tx.send(Turn::Write).is_ok());
        }
        drop(queued);
        // Its line was written on the way out, and the queue is free again.
        assert_eq!(
            verify_files(std::slice::from_ref(&path), None).map(|r| r.lines),
            Ok(1)
        );
        assert!(!log.state.lock().map_err(|_| "poisoned")?.writing);
        assert!(log.record(&event(2)).await);
        assert_eq!(
            verify_files(std::slice::from_ref(&path), None).map(|r| r.lines),
            Ok(2)
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_write_leaves_the_chain_at_the_last_line_written()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut chain = ChainState::genesis();
        let none = Checkpoints {
            replica: "r1".into(),
            every: 0,
            signer: Mutex::new(None),
        };
        let batch = [Queued {
            body: OpenObject::new(&event(1), &[("type", "decision")]).ok_or("serializes")?,
            done: None,
        }];
        assert!(!append(&mut chain, &batch, &none, |_| Err(
            std::io::Error::other("disk full")
        )));
        assert_eq!((chain.seq, chain.prev.as_str()), (0, GENESIS));
        let mut written = Vec::new();
        assert!(append(&mut chain, &batch, &none, |b| {
            written.extend_from_slice(b);
            Ok(())
        }));
        assert_eq!(chain.seq, 1);
        let line: Map<String, Value> = serde_json::from_slice(&written)?;
        assert_eq!(line.get("prev").and_then(Value::as_str), Some(GENESIS));
        let mut without_hash = line.clone();
        without_hash.remove("hash");
        assert_eq!(
            line.get("hash").and_then(Value::as_str),
            Some(line_hash(GENESIS, &without_hash).as_str())
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_line_that_cannot_be_written_is_refused_and_the_chain_resumes_after_it()
    -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, path, log) = temp_log()?;
        let swap = |file: File| -> Result<(), Box<dyn std::error::Error>> {
            let mut state = log.state.lock().map_err(|_| "poisoned")?;
            let sinks = state.sinks.as_mut().ok_or("sinks")?;
            sinks.file.as_mut().ok_or("file")?.file = file;
            Ok(())
        };
        // The same file, opened read-only: every write fails (as on a full disk).
        swap(File::open(&path)?)?;
        assert!(!log.record(&event(1)).await, "fail closed");
        assert!(!log.record(&event(2)).await);
        assert_eq!(std::fs::read_to_string(&path)?, "");
        // Writable again: the chain starts where the last written line left it.
        swap(open_append(&path)?)?;
        assert!(log.record(&event(3)).await);
        assert_eq!(
            verify_files(std::slice::from_ref(&path), None).map(|r| r.lines),
            Ok(1)
        );
        let line: Map<String, Value> =
            serde_json::from_str(std::fs::read_to_string(&path)?.trim())?;
        assert_eq!(line.get("seq").and_then(Value::as_u64), Some(1));
        assert_eq!(line.get("request_id").and_then(Value::as_str), Some("r3"));
        Ok(())
    }

    /// A log (checkpoints every 3 lines) signed by a fresh issuer key; its JWKS.
    fn signed_log()
    -> Result<(tempfile::TempDir, PathBuf, AuditLog, CheckpointKeys), Box<dyn std::error::Error>>
    {
        let (dir, path, log) = temp_log()?;
        let log = log.with_checkpoint_every(3);
        let clock = crate::clock::ManualClock::new(1_700_000_000);
        let keys = crate::issuer::keys::KeyRing::ephemeral(jsonwebtoken::Algorithm::ES256, 0)?;
        let issuer = std::sync::Arc::new(crate::issuer::FerryIssuer::new(
            "https://ferry.test",
            keys,
            clock,
            &[],
        ));
        log.set_signer(issuer.clone());
        let jwks = CheckpointKeys::from_jwks(issuer.jwks_document())?;
        Ok((dir, path, log, jwks))
    }

    /// Rewrites every line through `edit` and recomputes the whole chain: what someone
    /// who can edit the file but not sign can do.
    fn rewrite(path: &Path, edit: impl Fn(&mut Map<String, Value>)) -> std::io::Result<()> {
        let text = std::fs::read_to_string(path)?;
        let mut prev = GENESIS.to_owned();
        let mut out = String::new();
        for line in text.lines() {
            let mut m: Map<String, Value> = serde_json::from_str(line)?;
            m.remove("hash");
            edit(&mut m);
            m.insert("prev".into(), prev.clone().into());
            let hash = line_hash(&prev, &m);
            m.insert("hash".into(), hash.clone().into());
            out.push_str(&serde_json::to_string(&m)?);
            out.push('\n');
            prev = hash;
        }
        std::fs::write(path, out)
    }

    #[tokio::test]
    async fn signed_checkpoints_detect_rewriting_and_cuts() -> Result<(), Box<dyn std::error::Error>>
    {
        let (_dir, path, log, jwks) = signed_log()?;
        for n in 0..7 {
            assert!(log.record(&event(n)).await);
        }
        log.close();
        let original = std::fs::read_to_string(&path)?;
        let kinds: Vec<String> = original
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        // 7 decisions, a checkpoint after every third, one at shutdown.
        assert_eq!(
            kinds.iter().filter(|k| *k == "checkpoint").count(),
            3,
            "{kinds:?}"
        );
        assert_eq!(kinds.last().map(String::as_str), Some("checkpoint"));
        let paths = std::slice::from_ref(&path);
        let report = verify_files(paths, Some(&jwks))?;
        assert_eq!(
            report,
            VerifyReport {
                lines: 10,
                checkpoints: 3,
                unsigned_tail: 0,
                closed: true
            }
        );

        // Every allow rewritten to deny, hashes recomputed: the chain alone still holds,
        // the signed heads do not.
        rewrite(&path, |m| {
            if m.get("decision").is_some() {
                m.insert("decision".into(), "deny".into());
            }
        })?;
        assert!(
            verify_files(paths, None).is_ok(),
            "a keyless chain cannot tell"
        );
        let e = verify_files(paths, Some(&jwks)).err().ok_or("must fail")?;
        assert_eq!(e.line, 4, "{e}");
        assert!(e.problem.contains("rewritten"), "{e}");

        // The checkpoint's own head rewritten to match: it no longer matches its signature.
        std::fs::write(&path, &original)?;
        rewrite(&path, |m| {
            if m.get("decision").is_some() {
                m.insert("decision".into(), "deny".into());
            }
        })?;
        let text = std::fs::read_to_string(&path)?;
        let head_of_line_3 = serde_json::from_str::<Value>(text.lines().nth(2).ok_or("3")?)?
            .get("hash")
            .cloned()
            .ok_or("hash")?;
        rewrite(&path, |m| {
            if m.get("type").and_then(Value::as_str) == Some("checkpoint")
                && m.get("count").and_then(Value::as_u64) == Some(3)
            {
                m.insert("head".into(), head_of_line_3.clone());
            }
        })?;
        let e = verify_files(paths, Some(&jwks)).err().ok_or("must fail")?;
        assert!(e.problem.contains("differs from what was signed"), "{e}");

        // Cut from the start: the first line is not the genesis.
        let lines: Vec<&str> = original.lines().collect();
        std::fs::write(&path, lines.get(2..).ok_or("cut")?.join("\n") + "\n")?;
        let e = verify_files(paths, Some(&jwks)).err().ok_or("must fail")?;
        assert_eq!(e.line, 1);
        assert!(e.problem.contains("starts mid-chain"), "{e}");

        // Cut from the end (the shutdown checkpoint and the line before it): it verifies,
        // but the report says it is not closed.
        std::fs::write(&path, lines.get(..8).ok_or("cut")?.join("\n") + "\n")?;
        let report = verify_files(paths, Some(&jwks))?;
        assert!(!report.closed);
        assert_eq!((report.checkpoints, report.unsigned_tail), (2, 0));
        std::fs::write(&path, lines.get(..9).ok_or("cut")?.join("\n") + "\n")?;
        let report = verify_files(paths, Some(&jwks))?;
        assert_eq!((report.closed, report.unsigned_tail), (false, 1));

        // Another key: nothing verifies.
        std::fs::write(&path, &original)?;
        let (_d2, _p2, _l2, other) = signed_log()?;
        let e = verify_files(paths, Some(&other)).err().ok_or("must fail")?;
        assert!(
            e.problem.contains("not in the JWKS") || e.problem.contains("verify"),
            "{e}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn rotation_ends_the_old_file_with_a_checkpoint() -> Result<(), Box<dyn std::error::Error>>
    {
        let (dir, path, log, jwks) = signed_log()?;
        assert!(log.record(&event(1)).await);
        let rotated = dir.path().join("audit.log.1");
        std::fs::rename(&path, &rotated)?;
        assert!(log.record(&event(2)).await);
        log.close();
        let old = verify_files(std::slice::from_ref(&rotated), Some(&jwks))?;
        assert!(old.closed && old.checkpoints == 1, "{old:?}");
        // The new file alone starts with its link; both in order verify as one chain.
        let new = verify_files(std::slice::from_ref(&path), Some(&jwks))?;
        assert!(new.closed, "{new:?}");
        let both = verify_files(&[rotated, path], Some(&jwks))?;
        assert_eq!((both.lines, both.checkpoints), (5, 2));
        Ok(())
    }
}
