//! In-process single-flight: concurrent identical cache misses wait for one mint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// One async lock per in-flight key; entries vanish when nobody holds them.
#[derive(Default)]
pub struct SingleFlight {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl SingleFlight {
    /// The lock for `key` (shared with every concurrent caller of the same key).
    pub fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let Ok(mut locks) = self.locks.lock() else {
            // A poisoned map only loses deduplication, never correctness.
            return Arc::new(tokio::sync::Mutex::new(()));
        };
        if let Some(existing) = locks.get(key).and_then(Weak::upgrade) {
            return existing;
        }
        if locks.len() > 1024 {
            locks.retain(|_, w| w.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_lock() {
        let f = SingleFlight::default();
        let a = f.lock_for("k");
        let b = f.lock_for("k");
        assert!(Arc::ptr_eq(&a, &b));
        let c = f.lock_for("other");
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b));
        let d = f.lock_for("k");
        assert_eq!(Arc::strong_count(&d), 1);
    }
}
