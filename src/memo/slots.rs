//! A small direct-mapped cache for the request path: a fixed array of slots, each
//! behind its own mutex, indexed by a SHA-256 digest. A lookup or insert is one hash-free
//! index, one uncontended lock and a 32-byte compare; an insert overwrites whatever
//! held the slot. There is no eviction bookkeeping, no background work and one
//! allocation per stored entry — which is what a cache consulted on every exchange
//! needs, and what a general-purpose cache (moka's TinyLFU admission, its write queues and
//! rehashing) costs about 10 µs per fresh token to provide (see BENCHMARKS.md).
//!
//! Keys are SHA-256 outputs, so their bits are uniform and no caller can aim many keys
//! at one slot; a collision only costs a miss.
//!
//! Admission: a key is stored the second time it is inserted, not the first (a
//! "doorkeeper": each slot remembers an 8-byte fingerprint of the last key refused). A
//! value used once — a CI job's fresh token, a subject seen once — neither displaces an
//! entry that is being reused nor holds memory; anything reused pays full price once
//! more, then hits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A 32-byte digest used as a key.
pub type Digest = [u8; 32];

struct Slot<V> {
    key: Digest,
    expires: Instant,
    value: V,
}

/// One slot's content: nothing, or a boxed entry.
type Entry<V> = Option<Box<Slot<V>>>;

/// A fixed-size, direct-mapped cache from digests to values, with a lifetime per entry.
pub struct SlotCache<V> {
    /// Boxed entries: an empty slot costs 16 bytes, not the size of an entry (with
    /// 16 384 slots, megabytes of memory touched before anything is cached).
    slots: Box<[Mutex<Entry<V>>]>,
    /// Per slot, the fingerprint of the last key inserted there: an insert whose key
    /// already has its fingerprint here is stored, any other only leaves its own.
    seen: Box<[AtomicU64]>,
    mask: usize,
    ttl: Duration,
}

impl<V> std::fmt::Debug for SlotCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotCache")
            .field("slots", &self.slots.len())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl<V: Clone> SlotCache<V> {
    /// At least `capacity` slots (rounded up to a power of two; 0 keeps nothing), each
    /// entry living at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let n = if capacity == 0 {
            0
        } else {
            capacity.next_power_of_two()
        };
        Self {
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            seen: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n.saturating_sub(1),
            ttl,
        }
    }

    fn index(&self, key: &Digest) -> usize {
        usize::try_from(word(key, 0)).unwrap_or(0) & self.mask
    }

    /// The value under `key`, if present and not expired.
    pub fn get(&self, key: &Digest) -> Option<V> {
        let guard = self.slots.get(self.index(key))?.lock().ok()?;
        match guard.as_ref() {
            Some(s) if s.key == *key && Instant::now() < s.expires => Some(s.value.clone()),
            _ => None,
        }
    }

    /// Stores `value` under `key`, replacing whatever held its slot — if `key` was
    /// inserted before (see the module's admission note); the first time, only remembers
    /// that it was seen.
    pub fn insert(&self, key: Digest, value: V) {
        let i = self.index(&key);
        let (Some(slot), Some(seen)) = (self.slots.get(i), self.seen.get(i)) else {
            return;
        };
        let fingerprint = word(&key, 8);
        if seen.swap(fingerprint, Ordering::Relaxed) != fingerprint {
            return;
        }
        let entry = Box::new(Slot {
            key,
            expires: Instant::now() + self.ttl,
            value,
        });
        // A poisoned slot (a panic while it was held) is simply overwritten.
        let mut guard = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = guard.replace(entry);
        drop(guard);
        // The displaced value is dropped outside the lock.
        drop(old);
    }
}

/// Eight bytes of a digest from `at`, as a number.
fn word(key: &Digest, at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(b) = key.get(at..at + 8) {
        w.copy_from_slice(b);
    }
    u64::from_le_bytes(w)
}

/// SHA-256 of length-prefixed parts (so `("ab","c")` and `("a","bc")` differ).
pub fn digest_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Digest {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Digest {
        digest_parts([[n].as_slice()])
    }

    #[test]
    fn stores_finds_and_overwrites() {
        let c = SlotCache::new(4, Duration::from_secs(60));
        assert_eq!(c.get(&key(1)), None);
        c.insert(key(1), "one");
        c.insert(key(1), "one");
        assert_eq!(c.get(&key(1)), Some("one"));
        c.insert(key(1), "uno");
        assert_eq!(c.get(&key(1)), Some("uno"));
        // Another key in the same slot displaces it; never returns the wrong value.
        let mut displaced = false;
        for n in 2..=40u8 {
            c.insert(key(n), "other");
            c.insert(key(n), "other");
            assert_ne!(c.get(&key(1)), Some("other"));
            displaced |= c.get(&key(1)).is_none();
        }
        assert!(displaced, "4 slots cannot keep 40 keys");
    }

    #[test]
    fn entries_expire_and_zero_capacity_keeps_nothing() {
        let c = SlotCache::new(8, Duration::from_millis(30));
        c.insert(key(1), 1);
        c.insert(key(1), 1);
        assert_eq!(c.get(&key(1)), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&key(1)), None);
        let none = SlotCache::new(0, Duration::from_secs(60));
        none.insert(key(1), 1);
        none.insert(key(1), 1);
        assert_eq!(none.get(&key(1)), None);
    }

    #[test]
    fn a_key_is_admitted_on_its_second_insert_and_one_offs_do_not_displace_it() {
        let c = SlotCache::new(1, Duration::from_secs(60));
        c.insert(key(1), 1);
        assert_eq!(c.get(&key(1)), None, "stored on first sight");
        c.insert(key(1), 1);
        assert_eq!(c.get(&key(1)), Some(1));
        // One slot: every other key lands on it, each inserted once.
        for n in 2..=50u8 {
            c.insert(key(n), u32::from(n));
            assert_eq!(c.get(&key(1)), Some(1), "displaced by a one-off");
            assert_eq!(c.get(&key(n)), None);
        }
        // A key inserted twice in a row displaces it.
        c.insert(key(7), 7);
        c.insert(key(7), 7);
        assert_eq!(c.get(&key(7)), Some(7));
        assert_eq!(c.get(&key(1)), None);
    }

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(
            digest_parts([b"ab".as_slice(), b"c"]),
            digest_parts([b"a".as_slice(), b"bc"])
        );
    }
}
