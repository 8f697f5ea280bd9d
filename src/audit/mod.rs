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

mod chain;
mod event;
mod read;
mod verify;
mod writer;

pub use chain::{CheckpointSigner, GENESIS, line_hash};
pub use event::{AuditEvent, AuditIdentity, AuditRequest};
pub use read::{DecisionLine, for_each_decision};
pub use verify::{ChainBreak, CheckpointKeys, VerifyReport, verify_files, verify_texts};
pub use writer::{AuditLog, DEFAULT_CHECKPOINT_EVERY, check_writable};

#[cfg(test)]
mod tests {
    use super::chain::*;
    use super::verify::*;
    use super::writer::*;
    use super::*;
    use serde_json::{Map, Value};
    use std::fs::File;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

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
            false,
            Default::default(),
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
