//! The chain: each line's hash over the previous line's and its own body, and the
//! signed checkpoints over the chain's head.

use super::event::*;
use super::writer::*;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use std::sync::Mutex;

/// The `prev` of the first line of a new chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone)]
pub(crate) struct ChainState {
    pub(crate) prev: String,
    pub(crate) seq: u64,
    /// Lines sealed since the last checkpoint.
    pub(crate) since_checkpoint: u64,
}

impl ChainState {
    pub(crate) fn genesis() -> Self {
        Self::at(GENESIS.into(), 0)
    }

    pub(crate) fn at(prev: String, seq: u64) -> Self {
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
pub(crate) enum CheckpointReason {
    /// `checkpoint_every` lines since the last one.
    Interval,
    /// The file is being rotated away (the last line of that file).
    Rotation,
    /// Ferry is stopping (the last line it writes).
    Shutdown,
}

impl CheckpointReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Interval => "interval",
            Self::Rotation => "rotation",
            Self::Shutdown => "shutdown",
        }
    }
}

/// What a checkpoint needs besides the chain: the replica, the signer, the cadence.
pub(crate) struct Checkpoints {
    pub(crate) replica: String,
    pub(crate) every: u64,
    pub(crate) signer: Mutex<Option<std::sync::Arc<dyn CheckpointSigner>>>,
}

impl Checkpoints {
    /// The sealed checkpoint line for `chain`'s head, or `None` with no signer (or when
    /// signing fails: the chain goes on, and the next checkpoint covers these lines).
    pub(crate) fn line(&self, chain: &mut ChainState, reason: CheckpointReason) -> Option<String> {
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
    pub(crate) fn due(&self, chain: &mut ChainState) -> Option<String> {
        (self.every > 0 && chain.since_checkpoint >= self.every)
            .then(|| self.line(chain, CheckpointReason::Interval))
            .flatten()
    }
}

/// The hash of a line: SHA-256 over `prev`, a newline, and the line's JSON without
/// `hash`, keys in the line's order (a `Map` keeps insertion order: `preserve_order`).
pub fn line_hash(prev: &str, body: &Map<String, Value>) -> String {
    chain_hash(prev, &[&serde_json::to_vec(body).unwrap_or_default()])
}

/// The one definition of a line's hash, for the writer and the verifier: SHA-256 over
/// `prev`, a newline, and the line's JSON without `hash` (given in pieces).
pub(crate) fn chain_hash(prev: &str, json: &[&[u8]]) -> String {
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
pub(crate) struct OpenObject(Vec<u8>);

impl OpenObject {
    /// `value` (which serializes as a JSON object without `seq`, `prev` or `hash` keys)
    /// followed by `extra` string fields.
    pub(crate) fn new(value: &impl serde::Serialize, extra: &[(&str, &str)]) -> Option<Self> {
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
pub(crate) fn seal(chain: &mut ChainState, body: &OpenObject) -> String {
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
