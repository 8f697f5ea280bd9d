//! A small direct-mapped cache for the request path: a fixed array of slots, each
//! behind its own mutex, indexed by a SHA-256 digest. A lookup or insert is one hash-free
//! index, one uncontended lock and a 32-byte compare; an insert overwrites whatever
//! held the slot. There is no eviction bookkeeping, no background work and no
//! allocation after construction — which is what a cache consulted on every exchange
//! needs, and what a general-purpose cache (moka's TinyLFU admission, its write queues and
//! rehashing) costs about 10 µs per fresh token to provide (see BENCHMARKS.md).
//!
//! Keys are SHA-256 outputs, so their bits are uniform and no caller can aim many keys
//! at one slot; a collision only costs a miss.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A 32-byte digest used as a key.
pub type Digest = [u8; 32];

struct Slot<V> {
    key: Digest,
    expires: Instant,
    value: V,
}

/// A fixed-size, direct-mapped cache from digests to values, with a lifetime per entry.
pub struct SlotCache<V> {
    slots: Box<[Mutex<Option<Slot<V>>>]>,
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
            mask: n.saturating_sub(1),
            ttl,
        }
    }

    fn slot(&self, key: &Digest) -> Option<&Mutex<Option<Slot<V>>>> {
        let mut index = [0u8; 8];
        index.copy_from_slice(key.get(..8)?);
        let i = usize::try_from(u64::from_le_bytes(index)).unwrap_or(0) & self.mask;
        self.slots.get(i)
    }

    /// The value under `key`, if present and not expired.
    pub fn get(&self, key: &Digest) -> Option<V> {
        let guard = self.slot(key)?.lock().ok()?;
        match guard.as_ref() {
            Some(s) if s.key == *key && Instant::now() < s.expires => Some(s.value.clone()),
            _ => None,
        }
    }

    /// Stores `value` under `key`, replacing whatever held its slot.
    pub fn insert(&self, key: Digest, value: V) {
        let Some(slot) = self.slot(&key) else { return };
        let entry = Slot {
            key,
            expires: Instant::now() + self.ttl,
            value,
        };
        // A poisoned slot (a panic while it was held) is simply overwritten.
        let mut guard = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = guard.replace(entry);
        drop(guard);
        // The displaced value is dropped outside the lock.
        drop(old);
    }

    /// Empties every slot.
    pub fn clear(&self) {
        for slot in &self.slots {
            if let Ok(mut g) = slot.lock() {
                g.take();
            }
        }
    }
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
        assert_eq!(c.get(&key(1)), Some("one"));
        c.insert(key(1), "uno");
        assert_eq!(c.get(&key(1)), Some("uno"));
        // Another key in the same slot displaces it; never returns the wrong value.
        let mut displaced = false;
        for n in 2..=40u8 {
            c.insert(key(n), "other");
            assert_ne!(c.get(&key(1)), Some("other"));
            displaced |= c.get(&key(1)).is_none();
        }
        assert!(displaced, "4 slots cannot keep 40 keys");
        c.clear();
        assert!((2..=40u8).all(|n| c.get(&key(n)).is_none()));
    }

    #[test]
    fn entries_expire_and_zero_capacity_keeps_nothing() {
        let c = SlotCache::new(8, Duration::from_millis(30));
        c.insert(key(1), 1);
        assert_eq!(c.get(&key(1)), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&key(1)), None);
        let none = SlotCache::new(0, Duration::from_secs(60));
        none.insert(key(1), 1);
        assert_eq!(none.get(&key(1)), None);
    }

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(
            digest_parts([b"ab".as_slice(), b"c"]),
            digest_parts([b"a".as_slice(), b"bc"])
        );
    }
}
