//! What a worker remembers about destinations (which spoke HTTP/2, which
//! only HTTP/1.1), bounded: a pod reaching many distinct hosts — a crawler,
//! per-bucket or per-tenant names — must not grow the node proxy's memory
//! without bound. When the set is full, the older half of its entries (by
//! the last time each was inserted) is forgotten; forgetting costs one more
//! ALPN probe to that destination, never a failed request.

use std::collections::HashMap;
use std::hash::Hash;

/// Destinations remembered per worker, per kind of fact.
pub const MAX_REMEMBERED: usize = 4096;

/// A set of at most `cap` keys that forgets its least recently inserted
/// half when full.
#[derive(Debug)]
pub struct RecentSet<K> {
    at: HashMap<K, u64>,
    tick: u64,
    cap: usize,
}

impl<K: Hash + Eq> Default for RecentSet<K> {
    fn default() -> Self {
        Self::new(MAX_REMEMBERED)
    }
}

impl<K: Hash + Eq> RecentSet<K> {
    /// At most `cap` keys (at least 2).
    pub fn new(cap: usize) -> Self {
        Self {
            at: HashMap::new(),
            tick: 0,
            cap: cap.max(2),
        }
    }

    /// Remember `key` (again: it becomes the most recent).
    pub fn insert(&mut self, key: K) {
        self.tick += 1;
        self.at.insert(key, self.tick);
        if self.at.len() > self.cap {
            // Keep the newer half: ticks are unique, so the cut is exact.
            let mut ticks: Vec<u64> = self.at.values().copied().collect();
            let keep = self.cap / 2;
            let cut = ticks.len() - keep;
            let (_, nth, _) = ticks.select_nth_unstable(cut);
            let oldest_kept = *nth;
            self.at.retain(|_, t| *t >= oldest_kept);
        }
    }

    /// Whether `key` is remembered.
    pub fn contains(&self, key: &K) -> bool {
        self.at.contains_key(key)
    }

    /// Forget `key`.
    pub fn remove(&mut self, key: &K) {
        self.at.remove(key);
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded_and_keeps_the_most_recent_half() {
        let mut s = RecentSet::new(8);
        for k in 0..9 {
            s.insert(k);
        }
        // The ninth insert overflowed 8: the newest 4 stay.
        assert_eq!(s.len(), 4);
        assert!((5..9).all(|k| s.contains(&k)), "{s:?}");
        assert!(!s.contains(&0));
        for k in 0..100_000 {
            s.insert(k);
            assert!(s.len() <= 8);
        }
        assert!(s.contains(&99_999));
    }

    #[test]
    fn inserting_again_makes_a_key_recent() {
        let mut s = RecentSet::new(4);
        for k in [1, 2, 3, 4] {
            s.insert(k);
        }
        s.insert(1);
        s.insert(5);
        assert_eq!(s.len(), 2);
        assert!(s.contains(&1) && s.contains(&5), "{s:?}");
        s.remove(&1);
        assert!(!s.contains(&1));
    }
}
