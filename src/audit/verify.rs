//! The verifier (`ferry audit verify`): the chain, rotation links and signed checkpoints
//! of one or more files.

use super::chain::*;
use serde_json::{Map, Value};
use std::path::PathBuf;

/// Why a chain does not verify: the file, the 1-based line, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {problem}")]
pub struct ChainBreak {
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
    pub(crate) fn verify(&self, jws: &str) -> Result<Map<String, Value>, String> {
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
pub(crate) fn check_checkpoint(
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
