//! A compact byte encoding of a cached credential, for the memory store: one allocation
//! per entry instead of one per string, well-known token types as one byte, and base64
//! text (JWT segments, AWS session tokens) kept decoded — three quarters of its size —
//! and re-encoded on read. The encoding round-trips exactly: a string is stored decoded
//! only if encoding the decoded bytes gives back the same string.
//!
//! Layout: `covered` revocation-field hashes first (so a revocation can scan entries
//! without decoding them), then the credential: lengths as LEB128 varints, well-known
//! strings as one byte, a field repeating the access token as one byte, and a token id
//! that is a canonical UUID as its 16 bytes. An entry of another version (a Redis store
//! filled by another release) does not decode: it is a cache miss, and is minted again —
//! entries are short-lived and disposable, so there is one format to read.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ferry_provider_api::{Credential, Secret};

/// The version byte of every entry; an entry with another is not read.
const VERSION: u8 = 2;

/// A field whose value is the access token itself (a `jwt`, GCP or Azure credential
/// repeats it as `access_token`) is stored as this one byte instead of a second copy.
const SAME_AS_ACCESS_TOKEN: u8 = 3;

/// Strings common enough to be stored as a one-byte code (index + 1; 0 means inline).
/// Append only: stored entries refer to these by position.
const KNOWN: &[&str] = &[
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:access_token",
    "Bearer",
    "N_A",
    // Field names of the providers' credentials.
    "access_token",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "expiration",
    "expires_on",
    "token_type",
];

/// `put_opt` tags: absent, inline text, a canonical UUID as 16 bytes.
const OPT_NONE: u8 = 0;
const OPT_TEXT: u8 = 1;
const OPT_UUID: u8 = 2;

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
        put_known(&mut out, k);
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
    let Some(mut r) = Reader::open(packed) else {
        return false;
    };
    let Some(&[n]) = r.take(1) else {
        return false;
    };
    (0..n).any(|_| r.u64() == Some(hash))
}

/// Decodes an entry; `None` if it is not a valid encoding (never expected).
pub fn unpack(packed: &[u8]) -> Option<Credential> {
    let mut r = Reader::open(packed)?;
    let n = *r.take(1)?.first()?;
    r.take(usize::from(n) * 8)?;
    let expires_at = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let issued_token_type = r.known()?;
    let token_type = r.known()?;
    let access_token = Secret::new(r.secret()?);
    let count = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
    let mut fields = BTreeMap::new();
    for _ in 0..count {
        let k = r.known()?;
        let v = if r.buf.first() == Some(&SAME_AS_ACCESS_TOKEN) {
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

/// A length as a LEB128 varint: 7 bits per byte, low bits first, high bit = more.
fn put_len(out: &mut Vec<u8>, len: usize) {
    let mut n = len;
    while n >= 0x80 {
        out.push(u8::try_from(n & 0x7f).unwrap_or(0) | 0x80);
        n >>= 7;
    }
    out.push(u8::try_from(n).unwrap_or(0));
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
        None => out.push(OPT_NONE),
        Some(s) => match uuid::Uuid::try_parse(s) {
            Ok(u) if u.hyphenated().to_string() == s => {
                out.push(OPT_UUID);
                out.extend_from_slice(u.as_bytes());
            }
            _ => {
                out.push(OPT_TEXT);
                put_str(out, s);
            }
        },
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

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader past the version byte (`None` for an entry of another version).
    fn open(packed: &'a [u8]) -> Option<Self> {
        let (&version, buf) = packed.split_first()?;
        (version == VERSION).then_some(Self { buf })
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let head = self.buf.get(..n)?;
        self.buf = self.buf.get(n..)?;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn len(&mut self) -> Option<usize> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return usize::try_from(n).ok();
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.len()?;
        self.take(len)
    }

    fn str(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    fn known(&mut self) -> Option<String> {
        match self.byte()? {
            0 => self.str(),
            i => KNOWN.get(usize::from(i) - 1).map(|s| (*s).to_owned()),
        }
    }

    fn opt(&mut self) -> Option<Option<String>> {
        match self.byte()? {
            OPT_NONE => Some(None),
            OPT_UUID => {
                let bytes: [u8; 16] = self.take(16)?.try_into().ok()?;
                Some(Some(uuid::Uuid::from_bytes(bytes).hyphenated().to_string()))
            }
            _ => self.str().map(Some),
        }
    }

    fn secret(&mut self) -> Option<String> {
        match self.byte()? {
            0 => self.str(),
            1 => {
                let n = self.byte()?;
                let mut s = String::with_capacity(self.buf.len() * 4 / 3 + 8);
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

    /// Three base64url segments (30, 300 and 64 bytes decoded: 394), like a signed JWT.
    fn jwt_shaped() -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode([1u8; 30]),
            URL_SAFE_NO_PAD.encode([2u8; 300]),
            URL_SAFE_NO_PAD.encode([3u8; 64])
        )
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
        let token = jwt_shaped();
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
        let token = jwt_shaped();
        let mut c = credential(&token);
        c.fields
            .insert("access_token".into(), Secret::new(token.clone()));
        let packed = pack(&c, &[]);
        let back = unpack(&packed);
        assert!(back.as_ref().is_some_and(|b| same(&c, b)));
        // One decoded copy (394 bytes) plus the other fields, not two.
        assert!(packed.len() < 394 + 160, "{} bytes", packed.len());
    }

    /// The layout of an older release (version 1: u32 lengths, names inline), written
    /// independently of `pack`.
    fn pack_v1(c: &Credential, covered: &[u64]) -> Vec<u8> {
        fn text(out: &mut Vec<u8>, t: &[u8]) {
            out.extend_from_slice(&u32::try_from(t.len()).unwrap_or(0).to_le_bytes());
            out.extend_from_slice(t);
        }
        let mut out = vec![1, u8::try_from(covered.len()).unwrap_or(0)];
        for h in covered {
            out.extend_from_slice(&h.to_le_bytes());
        }
        out.extend_from_slice(&c.expires_at.to_le_bytes());
        out.push(0);
        text(&mut out, c.issued_token_type.as_bytes());
        out.push(3); // "Bearer"
        let segments: Vec<&str> = c.access_token.expose().split('.').collect();
        out.push(1);
        out.push(u8::try_from(segments.len()).unwrap_or(0));
        for segment in segments {
            text(
                &mut out,
                &URL_SAFE_NO_PAD.decode(segment).unwrap_or_default(),
            );
        }
        out.extend_from_slice(&u16::try_from(c.fields.len()).unwrap_or(0).to_le_bytes());
        for (k, v) in &c.fields {
            text(&mut out, k.as_bytes());
            out.push(0);
            text(&mut out, v.expose().as_bytes());
        }
        out.push(1);
        text(
            &mut out,
            c.upstream_request_id.as_deref().unwrap_or("").as_bytes(),
        );
        out.push(1);
        text(&mut out, c.token_id.as_deref().unwrap_or("").as_bytes());
        out
    }

    #[test]
    fn entries_of_another_version_are_not_read() {
        let mut c = credential("eyJh.eyJi.c2ln");
        c.issued_token_type = "custom:type".into();
        c.token_id = Some("8c0f3f5e-0d5a-4c2e-9a57-3b2f1c0d9e8f".into());
        let v1 = pack_v1(&c, &[field_hash("subject:a")]);
        assert!(unpack(&v1).is_none());
        assert!(!covers(&v1, field_hash("subject:a")));
        let mut packed = pack(&c, &["subject:a".into()]).to_vec();
        assert!(unpack(&packed).is_some_and(|b| same(&c, &b)));
        assert!(covers(&packed, field_hash("subject:a")));
        if let Some(v) = packed.first_mut() {
            *v = 9;
        }
        assert!(unpack(&packed).is_none());
        assert!(!covers(&packed, field_hash("subject:a")));
    }

    #[test]
    fn token_ids_and_lengths_take_their_short_forms_only_when_exact() {
        let mut c = credential(&"x".repeat(300));
        for id in [
            "8c0f3f5e-0d5a-4c2e-9a57-3b2f1c0d9e8f",
            // Not canonical (upper case, no hyphens, braces): kept as text.
            "8C0F3F5E-0D5A-4C2E-9A57-3B2F1C0D9E8F",
            "8c0f3f5e0d5a4c2e9a573b2f1c0d9e8f",
            "{8c0f3f5e-0d5a-4c2e-9a57-3b2f1c0d9e8f}",
            "not-a-uuid",
        ] {
            c.token_id = Some(id.into());
            let packed = pack(&c, &[]);
            assert!(unpack(&packed).is_some_and(|b| same(&c, &b)), "{id}");
        }
        c.token_id = Some("8c0f3f5e-0d5a-4c2e-9a57-3b2f1c0d9e8f".into());
        let uuid = pack(&c, &[]).len();
        c.token_id = Some("8c0f3f5e0d5a4c2e9a573b2f1c0d9e8f".into());
        assert_eq!(
            pack(&c, &[]).len(),
            uuid + 33 - 16,
            "a canonical UUID takes 16 bytes"
        );
        // Lengths over 127 and over 16383 take two and three bytes.
        for n in [0, 127, 128, 16_383, 16_384, 70_000] {
            let c = credential(&"y".repeat(n));
            assert!(unpack(&pack(&c, &[])).is_some_and(|b| same(&c, &b)), "{n}");
        }
        // A varint that never ends is refused, not read past the end.
        assert!(unpack(&[VERSION, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 0, 0xff, 0xff]).is_none());
    }
}
