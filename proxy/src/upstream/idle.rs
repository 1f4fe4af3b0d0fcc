//! Idle connections kept for reuse, bounded per destination and in total:
//! when the whole set is full, the connection idle the longest makes room
//! (a client opening many distinct destinations cannot grow the pool, and
//! so memory, without bound).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// Idle items of type `T` by key `K`, each with the time it became idle.
#[derive(Debug)]
pub struct IdleSet<K, T> {
    by_key: HashMap<K, Vec<(T, Instant)>>,
    total: usize,
    per_key: usize,
    max_total: usize,
}

impl<K: Hash + Eq + Clone, T> IdleSet<K, T> {
    /// At most `per_key` items per key and `max_total` in all.
    pub fn new(per_key: usize, max_total: usize) -> Self {
        Self {
            by_key: HashMap::new(),
            total: 0,
            per_key,
            max_total,
        }
    }

    /// Items held now.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The most recently idled item for `key` that `usable` accepts; the
    /// ones it rejects on the way are moved to `rejected`.
    pub fn take(
        &mut self,
        key: &K,
        usable: impl Fn(&T, Instant) -> bool,
        rejected: &mut Vec<T>,
    ) -> Option<T> {
        let list = self.by_key.get_mut(key)?;
        let mut found = None;
        while let Some((item, since)) = list.pop() {
            self.total -= 1;
            if usable(&item, since) {
                found = Some(item);
                break;
            }
            rejected.push(item);
        }
        if list.is_empty() {
            self.by_key.remove(key);
        }
        found
    }

    /// Keep `item` under `key`. Returns what must be closed instead: `item`
    /// itself when its key is full, or the longest-idle item of the whole
    /// set when the set is full.
    pub fn put(&mut self, key: K, item: T) -> Option<T> {
        if self
            .by_key
            .get(&key)
            .is_some_and(|l| l.len() >= self.per_key)
            || self.max_total == 0
        {
            return Some(item);
        }
        let evicted = if self.total >= self.max_total {
            self.evict_oldest()
        } else {
            None
        };
        self.by_key
            .entry(key)
            .or_default()
            .push((item, Instant::now()));
        self.total += 1;
        evicted
    }

    /// Remove and return every item `keep` rejects.
    pub fn sweep(&mut self, keep: impl Fn(&T, Instant) -> bool) -> Vec<T> {
        let mut gone = Vec::new();
        for list in self.by_key.values_mut() {
            let mut kept = Vec::with_capacity(list.len());
            for (item, since) in list.drain(..) {
                if keep(&item, since) {
                    kept.push((item, since));
                } else {
                    gone.push(item);
                }
            }
            *list = kept;
        }
        self.by_key.retain(|_, l| !l.is_empty());
        self.total -= gone.len();
        gone
    }

    /// Remove and return everything.
    pub fn drain(&mut self) -> Vec<T> {
        self.total = 0;
        self.by_key
            .drain()
            .flat_map(|(_, l)| l.into_iter().map(|(item, _)| item))
            .collect()
    }

    fn evict_oldest(&mut self) -> Option<T> {
        // Lists are in idle order: the oldest of each is its first entry.
        let key = self
            .by_key
            .iter()
            .filter_map(|(k, l)| l.first().map(|(_, since)| (k, *since)))
            .min_by_key(|(_, since)| *since)
            .map(|(k, _)| k.clone())?;
        let list = self.by_key.get_mut(&key)?;
        let (item, _) = list.remove(0);
        if list.is_empty() {
            self.by_key.remove(&key);
        }
        self.total -= 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn always(_: &u32, _: Instant) -> bool {
        true
    }

    #[test]
    fn per_key_cap_rejects_the_new_item() {
        let mut s = IdleSet::new(2, 10);
        assert_eq!(s.put("a", 1), None);
        assert_eq!(s.put("a", 2), None);
        assert_eq!(s.put("a", 3), Some(3));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn total_cap_evicts_the_longest_idle_across_keys() {
        let mut s = IdleSet::new(10, 3);
        s.put("a", 1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        s.put("b", 2);
        s.put("c", 3);
        // Full: the oldest (a/1) makes room for d/4.
        assert_eq!(s.put("d", 4), Some(1));
        assert_eq!(s.len(), 3);
        let mut rejected = Vec::new();
        assert_eq!(s.take(&"a", always, &mut rejected), None);
        assert_eq!(s.take(&"d", always, &mut rejected), Some(4));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn many_distinct_keys_never_exceed_the_total() {
        let mut s = IdleSet::new(32, 8);
        let mut closed = 0;
        for i in 0..1000u32 {
            closed += usize::from(s.put(i, i).is_some());
        }
        assert_eq!((s.len(), closed), (8, 992));
        assert_eq!(s.drain().len(), 8);
        assert!(s.is_empty());
    }

    #[test]
    fn take_returns_the_newest_usable_and_hands_back_the_rest() {
        let mut s = IdleSet::new(10, 10);
        for i in 1..=3 {
            s.put("a", i);
        }
        let mut rejected = Vec::new();
        let got = s.take(&"a", |&i, _| i == 1, &mut rejected);
        assert_eq!((got, rejected, s.len()), (Some(1), vec![3, 2], 0));
    }

    #[test]
    fn sweep_keeps_the_count_right() {
        let mut s = IdleSet::new(10, 10);
        for i in 0..6 {
            s.put(i % 2, i);
        }
        let gone = s.sweep(|&i, _| i >= 3);
        assert_eq!((gone.len(), s.len()), (3, 3));
    }
}
