//! Tamper-evident audit trail: one JSON line per decision, each carrying the SHA-256 of
//! the previous line (`prev`) and its own (`hash`), so altering, removing or reordering a
//! line breaks the chain. A rotated file starts with a `link` line that carries the last
//! hash of the file before it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// The `prev` of the first line of a new chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One decision, as the audit trail records it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AuditEvent {
    /// Unix seconds.
    pub time: i64,
    /// The request id.
    pub request_id: String,
    /// The client address.
    pub client_ip: String,
    /// The issuer id, once known.
    pub issuer: Option<String>,
    /// The subject token's `sub`, once verified.
    pub token_sub: Option<String>,
    /// SHA-256 (hex) of the presented token; never the token.
    pub token_sha256: Option<String>,
    /// The canonical subject, once mapped.
    pub subject: Option<String>,
    /// The target id, when it names a configured target.
    pub target: Option<String>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Policies that determined the decision.
    pub policy_ids: Vec<String>,
    /// The RFC 6749 error code of a denial.
    pub error: Option<String>,
    /// Why it was denied.
    pub reason: Option<String>,
    /// `hit` or `miss` for granted exchanges.
    pub cache: Option<&'static str>,
    /// SHA-256 (hex) of the issued access token; never the credential.
    pub credential_sha256: Option<String>,
    /// The upstream request id, for cloud credentials.
    pub upstream_request_id: Option<String>,
    /// The config revision that decided.
    pub revision: String,
}

/// Where lines go.
pub struct AuditLog {
    replica: String,
    stdout: bool,
    file: Option<Mutex<ChainFile>>,
    stdout_chain: Mutex<ChainState>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct ChainState {
    prev: String,
    seq: u64,
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
/// `hash` (keys sorted, as serde_json writes a `Map`).
pub fn line_hash(prev: &str, body: &Map<String, Value>) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_string(body).unwrap_or_default().as_bytes());
    hex::encode(h.finalize())
}

/// The next line of the chain, with its newline: written with one `write_all`, so a line
/// is one `write(2)` to a file opened for append — never split by another writer's.
fn seal(chain: &mut ChainState, mut body: Map<String, Value>) -> String {
    chain.seq += 1;
    body.insert("seq".into(), chain.seq.into());
    body.insert("prev".into(), Value::String(chain.prev.clone()));
    let hash = line_hash(&chain.prev, &body);
    body.insert("hash".into(), Value::String(hash.clone()));
    chain.prev = hash;
    let mut line = serde_json::to_string(&body).unwrap_or_default();
    line.push('\n');
    line
}

impl ChainFile {
    fn open(path: &Path) -> std::io::Result<Self> {
        let chain = last_link(path).unwrap_or(ChainState {
            prev: GENESIS.into(),
            seq: 0,
        });
        let file = open_append(path)?;
        let identity = file.metadata().ok().as_ref().and_then(file_identity);
        Ok(Self {
            path: path.to_path_buf(),
            file,
            identity,
            chain,
        })
    }

    /// Reopens when the path no longer names the open file (logrotate moved it), starting
    /// the new file with a link to the old chain.
    fn follow_rotation(&mut self, replica: &str) -> std::io::Result<()> {
        let current = std::fs::metadata(&self.path)
            .ok()
            .as_ref()
            .and_then(file_identity);
        if current.is_some() && current == self.identity {
            return Ok(());
        }
        self.file = open_append(&self.path)?;
        self.identity = self.file.metadata().ok().as_ref().and_then(file_identity);
        let mut link = Map::new();
        link.insert("type".into(), "link".into());
        link.insert("replica".into(), replica.into());
        link.insert(
            "note".into(),
            "file rotated; prev is the last hash of the previous file".into(),
        );
        let line = seal(&mut self.chain, link);
        self.file.write_all(line.as_bytes())?;
        Ok(())
    }
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
            last = Some(ChainState {
                prev: hash.to_owned(),
                seq,
            });
        }
    }
    last
}

impl AuditLog {
    /// An audit log writing to `file` and/or stdout, tagging lines with `replica`.
    pub fn open(file: Option<&Path>, stdout: bool, replica: String) -> std::io::Result<Self> {
        let file = match file {
            Some(p) => Some(Mutex::new(ChainFile::open(p)?)),
            None => None,
        };
        Ok(Self {
            replica,
            stdout,
            file,
            stdout_chain: Mutex::new(ChainState {
                prev: GENESIS.into(),
                seq: 0,
            }),
        })
    }

    /// A log that records nothing.
    pub fn disabled() -> Self {
        Self {
            replica: String::new(),
            stdout: false,
            file: None,
            stdout_chain: Mutex::new(ChainState {
                prev: GENESIS.into(),
                seq: 0,
            }),
        }
    }

    /// Whether anything is recorded.
    pub fn is_enabled(&self) -> bool {
        self.stdout || self.file.is_some()
    }

    /// Appends one line per sink. Returns false when a sink could not be written.
    pub fn record(&self, event: &AuditEvent) -> bool {
        if !self.is_enabled() {
            return true;
        }
        let Ok(Value::Object(mut body)) = serde_json::to_value(event) else {
            return false;
        };
        body.insert("type".into(), "decision".into());
        body.insert("replica".into(), Value::String(self.replica.clone()));
        body.insert("time_rfc3339".into(), Value::String(rfc3339(event.time)));
        let mut ok = true;
        if let Some(file) = &self.file {
            ok &= match file.lock() {
                Ok(mut f) => {
                    let written = f.follow_rotation(&self.replica).and_then(|()| {
                        let line = seal(&mut f.chain, body.clone());
                        f.file.write_all(line.as_bytes())
                    });
                    written.is_ok()
                }
                Err(_) => false,
            };
        }
        if self.stdout {
            ok &= match self.stdout_chain.lock() {
                Ok(mut chain) => {
                    let line = seal(&mut chain, body);
                    std::io::stdout().lock().write_all(line.as_bytes()).is_ok()
                }
                Err(_) => false,
            };
        }
        ok
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

/// Verifies files in order (oldest first). Returns the number of lines checked, or the
/// first break.
pub fn verify_files(paths: &[PathBuf]) -> Result<usize, ChainBreak> {
    let mut prev: Option<(String, u64)> = None;
    let mut checked = 0;
    for path in paths {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ChainBreak {
            file: file.clone(),
            line: 0,
            problem: format!("cannot read: {e}"),
        })?;
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
            if line_hash(&line_prev, &body) != hash {
                return Err(brk(
                    "hash does not match the line's content (line altered)".into()
                ));
            }
            // The first line anchors the chain: it may start mid-chain when older files
            // are not given.
            if let Some((p, s)) = &prev
                && (line_prev != *p || seq != s + 1)
            {
                return Err(brk(format!(
                    "chain broken: expected seq {} after hash {}…, found seq {seq} (a line before it was removed, or lines were reordered)",
                    s + 1,
                    p.get(..12).unwrap_or(p)
                )));
            }
            prev = Some((hash, seq));
            checked += 1;
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> AuditEvent {
        AuditEvent {
            time: 1_700_000_000 + n,
            request_id: format!("r{n}"),
            decision: "allow",
            revision: "rev".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_chain_verifies_and_tampering_is_located() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(Some(&path), false, "r1".into())?;
        for n in 0..5 {
            assert!(log.record(&event(n)));
        }
        assert_eq!(verify_files(std::slice::from_ref(&path)), Ok(5));

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
        let e = verify_files(std::slice::from_ref(&path))
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
        let e = verify_files(std::slice::from_ref(&path))
            .err()
            .ok_or("must fail")?;
        assert_eq!(e.line, 2);
        assert!(e.problem.contains("removed"));

        // Reordered: lines 4 and 5 swapped.
        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        std::fs::write(&path, swapped.join("\n") + "\n")?;
        let e = verify_files(std::slice::from_ref(&path))
            .err()
            .ok_or("must fail")?;
        assert_eq!(e.line, 4);
        Ok(())
    }

    #[test]
    fn restart_continues_the_chain_and_rotation_links_files()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("audit.log");
        {
            let log = AuditLog::open(Some(&path), false, "r1".into())?;
            log.record(&event(1));
            log.record(&event(2));
        }
        let log = AuditLog::open(Some(&path), false, "r1".into())?;
        log.record(&event(3));
        assert_eq!(verify_files(std::slice::from_ref(&path)), Ok(3));

        // logrotate moves the file away; the next line starts a new file with a link.
        let rotated = dir.path().join("audit.log.1");
        std::fs::rename(&path, &rotated)?;
        log.record(&event(4));
        log.record(&event(5));
        let new_text = std::fs::read_to_string(&path)?;
        assert!(
            new_text
                .lines()
                .next()
                .unwrap_or("")
                .contains("\"type\":\"link\"")
        );
        assert_eq!(verify_files(&[rotated.clone(), path.clone()]), Ok(3 + 3));
        // Out of order, the link does not match.
        assert!(verify_files(&[path.clone(), rotated.clone()]).is_err());
        Ok(())
    }
}
