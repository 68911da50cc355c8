//! A small least-recently-used map: the stale/cache store and the rate-limit key table
//! both need "bounded, oldest goes first". O(log n) per operation, no unsafe, no linked
//! lists: a hash map for lookups and an ordered map from recency tick to key.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// A map that remembers the order in which keys were last used.
#[derive(Debug)]
pub struct Lru<K, V> {
    entries: HashMap<K, (V, u64)>,
    order: BTreeMap<u64, K>,
    tick: u64,
}

impl<K, V> Default for Lru<K, V> {
    fn default() -> Self {
        Lru {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// The value for `key`, now the most recently used.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.tick += 1;
        let tick = self.tick;
        let (value, old) = self.entries.get_mut(key)?;
        if let Some(k) = self.order.remove(old) {
            self.order.insert(tick, k);
        }
        *old = tick;
        Some(value)
    }

    /// The value for `key`, its recency unchanged (no reordering: cheaper than `get_mut`).
    pub fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|(value, _)| value)
    }

    /// Inserts or replaces; returns the replaced value. One lookup of the key (each hashes
    /// it), not a removal and then an insert.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        let (old, old_tick) = self.entries.insert(key, (value, self.tick))?;
        self.order.remove(&old_tick);
        Some(old)
    }

    /// Removes a key.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (value, tick) = self.entries.remove(key)?;
        self.order.remove(&tick);
        Some(value)
    }

    /// Removes and returns the least recently used entry.
    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        let (_, key) = self.order.pop_first()?;
        let (value, _) = self.entries.remove(&key)?;
        Some((key, value))
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys as the map holds them, in no order.
    #[cfg(test)]
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_is_the_least_recently_used() {
        let mut lru = Lru::default();
        lru.insert("a", 1);
        lru.insert("b", 2);
        lru.insert("c", 3);
        assert_eq!(lru.get_mut("a"), Some(&mut 1));
        assert_eq!(lru.pop_oldest(), Some(("b", 2)));
        assert_eq!(lru.insert("c", 30), Some(3));
        assert_eq!(lru.pop_oldest(), Some(("a", 1)));
        assert_eq!(lru.pop_oldest(), Some(("c", 30)));
        assert!(lru.is_empty());
    }

    #[test]
    fn a_peek_leaves_the_order_alone() {
        let mut lru = Lru::default();
        lru.insert("a", 1);
        lru.insert("b", 2);
        assert_eq!(lru.peek("a"), Some(&1));
        assert_eq!(lru.peek("z"), None);
        assert_eq!(lru.pop_oldest(), Some(("a", 1)));
    }
}
