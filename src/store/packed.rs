//! A compact byte encoding of a cached credential, for the memory store: one allocation
//! per entry instead of one per string, well-known token types as one byte, and base64
//! text (JWT segments, AWS session tokens) kept decoded — three quarters of its size —
//! and re-encoded on read. The encoding round-trips exactly: a string is stored decoded
//! only if encoding the decoded bytes gives back the same string.
//!
//! Layout: `covered` revocation-field hashes first (so a revocation can scan entries
//! without decoding them), then the credential.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ferry_provider_api::{Credential, Secret};

/// Written by this version; version 1 (no "same as the access token" code) still reads.
const VERSION: u8 = 2;

/// A field whose value is the access token itself (a `jwt`, GCP or Azure credential
/// repeats it as `access_token`) is stored as this one byte instead of a second copy.
const SAME_AS_ACCESS_TOKEN: u8 = 3;

/// Strings common enough to be stored as a one-byte code (index + 1; 0 means inline).
const KNOWN: &[&str] = &[
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:access_token",
    "Bearer",
    "N_A",
];

/// An 8-byte hash of a revocation field (the first bytes of its SHA-256). A collision
/// only makes a revocation purge one more cached credential than it had to.
pub fn field_hash(field: &str) -> u64 {
    let d = crate::sha256(field.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(d.get(..8).unwrap_or(&[0; 8]));
    u64::from_le_bytes(b)
}

/// Encodes a credential and the hashes of the revocation fields that cover it.
pub fn pack(credential: &Credential, covered_by: &[String]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(64 + credential.access_token.expose().len());
    out.push(VERSION);
    let covered: Vec<u64> = covered_by.iter().take(255).map(|f| field_hash(f)).collect();
    out.push(u8::try_from(covered.len()).unwrap_or(u8::MAX));
    for h in covered {
        out.extend_from_slice(&h.to_le_bytes());
    }
    out.extend_from_slice(&credential.expires_at.to_le_bytes());
    put_known(&mut out, &credential.issued_token_type);
    put_known(&mut out, &credential.token_type);
    put_secret(&mut out, credential.access_token.expose());
    let fields = u16::try_from(credential.fields.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&fields.to_le_bytes());
    for (k, v) in credential.fields.iter().take(usize::from(fields)) {
        put_str(&mut out, k);
        if v.expose() == credential.access_token.expose() {
            out.push(SAME_AS_ACCESS_TOKEN);
        } else {
            put_secret(&mut out, v.expose());
        }
    }
    put_opt(&mut out, credential.upstream_request_id.as_deref());
    put_opt(&mut out, credential.token_id.as_deref());
    // A copy of exactly this size: shrinking the buffer in place would leave the unused
    // tail as a small hole beside a long-lived entry (≈ 80 bytes per cached credential).
    Box::from(out.as_slice())
}

/// Whether the entry is covered by a revocation field with this hash.
pub fn covers(packed: &[u8], hash: u64) -> bool {
    let mut r = Reader(packed);
    let (Some(&[1 | VERSION]), Some(&[n])) = (r.take(1), r.take(1)) else {
        return false;
    };
    (0..n).any(|_| r.u64() == Some(hash))
}

/// Decodes an entry; `None` if it is not a valid encoding (never expected).
pub fn unpack(packed: &[u8]) -> Option<Credential> {
    let mut r = Reader(packed);
    if !matches!(r.take(1)?, [1 | VERSION]) {
        return None;
    }
    let n = *r.take(1)?.first()?;
    r.take(usize::from(n) * 8)?;
    let expires_at = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let issued_token_type = r.known()?;
    let token_type = r.known()?;
    let access_token = Secret::new(r.secret()?);
    let count = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
    let mut fields = BTreeMap::new();
    for _ in 0..count {
        let k = r.str()?;
        let v = if r.0.first() == Some(&SAME_AS_ACCESS_TOKEN) {
            r.take(1)?;
            access_token.clone()
        } else {
            Secret::new(r.secret()?)
        };
        fields.insert(k, v);
    }
    let upstream_request_id = r.opt()?;
    let token_id = r.opt()?;
    Some(Credential {
        access_token,
        issued_token_type,
        token_type,
        expires_at,
        fields,
        upstream_request_id,
        token_id,
    })
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_known(out: &mut Vec<u8>, s: &str) {
    match KNOWN.iter().position(|k| *k == s) {
        Some(i) => out.push(u8::try_from(i + 1).unwrap_or(0)),
        None => {
            out.push(0);
            put_str(out, s);
        }
    }
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// Secret text: 0 = as is; 1 = dot-separated base64url segments (a JWT), decoded;
/// 2 = one standard, padded base64 string (an AWS session token), decoded.
fn put_secret(out: &mut Vec<u8>, s: &str) {
    if let Some(segments) = as_base64url_segments(s) {
        out.push(1);
        out.push(u8::try_from(segments.len()).unwrap_or(0));
        for seg in segments {
            put_len(out, seg.len());
            out.extend_from_slice(&seg);
        }
    } else if let Some(bytes) = STANDARD
        .decode(s)
        .ok()
        .filter(|b| !s.is_empty() && STANDARD.encode(b) == s)
    {
        out.push(2);
        put_len(out, bytes.len());
        out.extend_from_slice(&bytes);
    } else {
        out.push(0);
        put_str(out, s);
    }
}

fn as_base64url_segments(s: &str) -> Option<Vec<Vec<u8>>> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() < 2 || parts.len() > 8 {
        return None;
    }
    parts
        .into_iter()
        .map(|p| {
            let bytes = URL_SAFE_NO_PAD.decode(p).ok()?;
            (URL_SAFE_NO_PAD.encode(&bytes) == p).then_some(bytes)
        })
        .collect()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let head = self.0.get(..n)?;
        self.0 = self.0.get(n..)?;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        self.take(usize::try_from(len).ok()?)
    }

    fn str(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    fn known(&mut self) -> Option<String> {
        match *self.take(1)?.first()? {
            0 => self.str(),
            i => KNOWN.get(usize::from(i) - 1).map(|s| (*s).to_owned()),
        }
    }

    fn opt(&mut self) -> Option<Option<String>> {
        match *self.take(1)?.first()? {
            0 => Some(None),
            _ => self.str().map(Some),
        }
    }

    fn secret(&mut self) -> Option<String> {
        match *self.take(1)?.first()? {
            0 => self.str(),
            1 => {
                let n = *self.take(1)?.first()?;
                let mut s = String::new();
                for i in 0..n {
                    if i > 0 {
                        s.push('.');
                    }
                    URL_SAFE_NO_PAD.encode_string(self.bytes()?, &mut s);
                }
                Some(s)
            }
            2 => Some(STANDARD.encode(self.bytes()?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(token: &str) -> Credential {
        let mut fields = BTreeMap::new();
        fields.insert("access_key_id".to_owned(), Secret::new("ASIAEXAMPLE"));
        fields.insert(
            "session_token".to_owned(),
            Secret::new("FwoGZXIvYXdzEJr//////////wEaDM+abc/def+ghi=="),
        );
        Credential {
            access_token: Secret::new(token),
            issued_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
            token_type: "Bearer".into(),
            expires_at: 1_700_000_000,
            fields,
            upstream_request_id: Some("req-1".into()),
            token_id: None,
        }
    }

    fn same(a: &Credential, b: &Credential) -> bool {
        a.access_token.expose() == b.access_token.expose()
            && a.issued_token_type == b.issued_token_type
            && a.token_type == b.token_type
            && a.expires_at == b.expires_at
            && a.fields.len() == b.fields.len()
            && a.fields
                .iter()
                .zip(&b.fields)
                .all(|((k1, v1), (k2, v2))| k1 == k2 && v1.expose() == v2.expose())
            && a.upstream_request_id == b.upstream_request_id
            && a.token_id == b.token_id
    }

    #[test]
    fn round_trips_every_shape_exactly() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvaW5mcmEifQ.c2lnbmF0dXJl";
        for token in [
            jwt,
            "ya29.a0AfH6SMB-not.base64url!",
            "",
            "plain token with spaces",
            "QUJD",
            "QUJDRA==",
            // Base64url with non-zero trailing bits: decodes, but would not re-encode the
            // same; must be kept as is.
            "eyJh.eyJi.QR",
            "ü.ö",
        ] {
            let mut c = credential(token);
            c.token_id = Some("jti-1".into());
            c.issued_token_type = "custom:type".into();
            let packed = pack(&c, &["subject:x".into()]);
            let back = unpack(&packed);
            assert!(back.as_ref().is_some_and(|b| same(&c, b)), "{token:?}");
        }
    }

    #[test]
    fn base64_text_is_stored_decoded() {
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode([1u8; 30]),
            URL_SAFE_NO_PAD.encode([2u8; 300]),
            URL_SAFE_NO_PAD.encode([3u8; 64])
        );
        let packed = pack(&credential(&token), &[]);
        assert!(
            packed.len() < token.len() * 85 / 100 + 120,
            "{} bytes for a {}-byte token",
            packed.len(),
            token.len()
        );
    }

    #[test]
    fn covers_names_its_fields_only() {
        let packed = pack(&credential("t"), &["subject:a".into(), "target:b".into()]);
        assert!(covers(&packed, field_hash("subject:a")));
        assert!(covers(&packed, field_hash("target:b")));
        assert!(!covers(&packed, field_hash("subject:b")));
        assert!(unpack(packed.get(..packed.len() - 1).unwrap_or_default()).is_none());
        assert!(unpack(&[]).is_none());
    }

    #[test]
    fn a_field_repeating_the_access_token_is_stored_once() {
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode([1u8; 30]),
            URL_SAFE_NO_PAD.encode([2u8; 300]),
            URL_SAFE_NO_PAD.encode([3u8; 64])
        );
        let mut c = credential(&token);
        c.fields
            .insert("access_token".into(), Secret::new(token.clone()));
        let packed = pack(&c, &[]);
        let back = unpack(&packed);
        assert!(back.as_ref().is_some_and(|b| same(&c, b)));
        // One decoded copy (394 bytes) plus the other fields, not two.
        assert!(packed.len() < 394 + 160, "{} bytes", packed.len());
    }

    #[test]
    fn version_1_entries_still_read() {
        let c = credential("eyJh.eyJi.c2ln");
        let mut packed = pack(&c, &["subject:a".into()]).into_vec();
        if let Some(v) = packed.first_mut() {
            *v = 1;
        }
        assert!(unpack(&packed).is_some_and(|b| same(&c, &b)));
        assert!(covers(&packed, field_hash("subject:a")));
        if let Some(v) = packed.first_mut() {
            *v = 9;
        }
        assert!(unpack(&packed).is_none());
    }
}
