//! Unambiguous digests of structured values: how every cache key, memo key and
//! fingerprint in Ferry is built.
//!
//! Each value is written with a one-byte type tag and, for strings and lists, its length
//! or item count, so the encoding of a sequence of values is prefix-free: two different
//! sequences never write the same bytes, whatever the strings contain (a newline, a
//! space, a separator of any kind). A key that joined strings with a separator would let
//! `["a\nb"]` and `["a", "b"]` share a cached decision or credential; this cannot.
//! A domain string opens every digest, so keys of different kinds never meet either.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::memo::Digest;

const STR: u8 = 1;
const LIST: u8 = 2;
const MAP: u8 = 3;
const UINT: u8 = 4;
const NONE: u8 = 5;
const BYTES: u8 = 6;
const SOME: u8 = 7;

/// Builds a SHA-256 digest of a sequence of typed values.
#[derive(Clone)]
pub struct KeyDigest(Sha256);

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

impl KeyDigest {
    /// A digest of the kind `domain` (`"credential"`, `"decision"`, …).
    pub fn new(domain: &str) -> Self {
        let mut d = Self(Sha256::new());
        d.str(domain);
        d
    }

    fn len(&mut self, tag: u8, n: usize) {
        self.0.update([tag]);
        self.0.update((n as u64).to_be_bytes());
    }

    /// A string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes_tagged(STR, s.as_bytes())
    }

    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.bytes_tagged(BYTES, b)
    }

    fn bytes_tagged(&mut self, tag: u8, b: &[u8]) -> &mut Self {
        self.len(tag, b.len());
        self.0.update(b);
        self
    }

    /// An unsigned number.
    pub fn uint(&mut self, n: u64) -> &mut Self {
        self.0.update([UINT]);
        self.0.update(n.to_be_bytes());
        self
    }

    /// An optional string (`None` differs from every string, the empty one included, and
    /// `Some(s)` from the string `s`).
    pub fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            // Tagged, so `Some(s)` is never the bare string `s` in another layout.
            Some(s) => {
                self.0.update([SOME]);
                self.str(s)
            }
            None => {
                self.0.update([NONE]);
                self
            }
        }
    }

    /// A list of strings, in the order given.
    pub fn list<'a>(&mut self, items: impl ExactSizeIterator<Item = &'a str>) -> &mut Self {
        self.len(LIST, items.len());
        for item in items {
            self.str(item);
        }
        self
    }

    /// A set of strings: sorted and deduplicated first, so order and repeats (which no
    /// stage gives a meaning to) do not split one answer into several keys.
    pub fn set<'a>(&mut self, items: impl IntoIterator<Item = &'a str>) -> &mut Self {
        let mut sorted: Vec<&str> = items.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        self.list(sorted.into_iter())
    }

    /// A map of strings to strings (a `BTreeMap` iterates in key order).
    pub fn map(&mut self, map: &BTreeMap<String, String>) -> &mut Self {
        self.len(MAP, map.len());
        for (k, v) in map {
            self.str(k);
            self.str(v);
        }
        self
    }

    /// A TOML value, tables by sorted key: a config entry's content, whatever order its
    /// keys were written in.
    pub fn toml(&mut self, value: &toml::Value) -> &mut Self {
        match value {
            toml::Value::String(s) => {
                self.0.update([b's']);
                self.str(s)
            }
            toml::Value::Integer(i) => {
                self.0.update([b'i']);
                self.0.update(i.to_be_bytes());
                self
            }
            toml::Value::Float(f) => {
                self.0.update([b'f']);
                self.0.update(f.to_bits().to_be_bytes());
                self
            }
            toml::Value::Boolean(b) => {
                self.0.update([b'b', u8::from(*b)]);
                self
            }
            toml::Value::Datetime(d) => {
                self.0.update([b'd']);
                self.str(&d.to_string())
            }
            toml::Value::Array(items) => {
                self.len(LIST, items.len());
                for item in items {
                    self.toml(item);
                }
                self
            }
            toml::Value::Table(table) => {
                let mut keys: Vec<&String> = table.keys().collect();
                keys.sort_unstable();
                self.len(MAP, keys.len());
                for k in keys {
                    self.str(k);
                    if let Some(v) = table.get(k) {
                        self.toml(v);
                    }
                }
                self
            }
        }
    }

    /// The digest.
    pub fn finish(&self) -> Digest {
        self.0.clone().finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A value as a test composes it: what a key is built from.
    #[derive(Debug, Clone, PartialEq)]
    enum Part {
        Str(String),
        Opt(Option<String>),
        List(Vec<String>),
        Map(BTreeMap<String, String>),
        Uint(u64),
    }

    fn digest(parts: &[Part]) -> Digest {
        let mut d = KeyDigest::new("test");
        for p in parts {
            match p {
                Part::Str(s) => d.str(s),
                Part::Opt(s) => d.opt_str(s.as_deref()),
                Part::List(l) => d.list(l.iter().map(String::as_str)),
                Part::Map(m) => d.map(m),
                Part::Uint(n) => d.uint(*n),
            };
        }
        d.finish()
    }

    /// Strings made of what separators are made of, so collisions by joining would show.
    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(vec!['a', 'b', '\n', ' ', ':', ',', '=', '\0']),
            0..4,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn part() -> impl Strategy<Value = Part> {
        prop_oneof![
            text().prop_map(Part::Str),
            proptest::option::of(text()).prop_map(Part::Opt),
            proptest::collection::vec(text(), 0..4).prop_map(Part::List),
            proptest::collection::btree_map(text(), text(), 0..3).prop_map(Part::Map),
            (0u64..3).prop_map(Part::Uint),
        ]
    }

    proptest! {
        #[test]
        fn distinct_sequences_never_share_a_digest(
            a in proptest::collection::vec(part(), 0..5),
            b in proptest::collection::vec(part(), 0..5),
        ) {
            prop_assume!(a != b);
            prop_assert_ne!(digest(&a), digest(&b));
        }

        #[test]
        fn sets_ignore_order_and_repeats_but_nothing_else(
            a in proptest::collection::vec(text(), 0..5),
            b in proptest::collection::vec(text(), 0..5),
        ) {
            let set = |v: &[String]| {
                let mut d = KeyDigest::new("t");
                d.set(v.iter().map(String::as_str));
                d.finish()
            };
            let norm = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
            prop_assert_eq!(set(&a) == set(&b), norm(&a) == norm(&b));
        }
    }

    #[test]
    fn joined_lists_do_not_collide() {
        let one = digest(&[Part::List(vec!["a\nb".into()])]);
        let two = digest(&[Part::List(vec!["a".into(), "b".into()])]);
        assert_ne!(one, two);
        assert_ne!(
            digest(&[Part::Str(String::new())]),
            digest(&[Part::Opt(None)])
        );
        assert_ne!(KeyDigest::new("a").finish(), KeyDigest::new("b").finish());
    }

    #[test]
    fn toml_tables_hash_by_content_not_key_order() -> Result<(), toml::de::Error> {
        let a: toml::Value = toml::from_str("x = 1\ny = \"z\"")?;
        let b: toml::Value = toml::from_str("y = \"z\"\nx = 1")?;
        let c: toml::Value = toml::from_str("x = 1\ny = \"zz\"")?;
        let h = |v: &toml::Value| KeyDigest::new("t").toml(v).finish();
        assert_eq!(h(&a), h(&b));
        assert_ne!(h(&a), h(&c));
        Ok(())
    }
}
