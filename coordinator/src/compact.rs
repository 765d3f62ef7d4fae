//! A map for the coordinator's per-sample indexes (the corpus's duplicate and id indexes, the
//! ledger's done set), which hold an entry for every sample of a corpus of millions.
//!
//! A hash table right after it doubles holds about twice the memory its entries need, and
//! three of them made the coordinator's RSS climb in steps to 169 MiB at a million samples
//! (BENCHMARKS.md, target 3). Here the entries live in one exactly sized, sorted vector
//! (binary search), and new entries in a small hash map that is merged into the vector in place
//! once it holds an eighth of it (at least [`MIN_MERGE`]): memory stays close to the entries'
//! own size, and the amortised cost of an insert stays constant (each entry is moved about
//! eight times over the map's life).

use std::collections::HashMap;
use std::hash::Hash;

/// Fewest recent entries that trigger a merge.
const MIN_MERGE: usize = 1 << 14;

/// A map from small `Copy` keys to small `Copy` values, compact for millions of entries.
#[derive(Clone, Debug)]
pub struct CompactMap<K, V> {
    sorted: Vec<(K, V)>,
    recent: HashMap<K, V>,
}

impl<K, V> Default for CompactMap<K, V> {
    fn default() -> Self {
        Self {
            sorted: Vec::new(),
            recent: HashMap::new(),
        }
    }
}

impl<K: Copy + Ord + Hash, V: Copy> CompactMap<K, V> {
    /// A map of `entries` (a repeated key keeps its last value), built with one sort: much
    /// cheaper than inserting a million entries one by one, as opening a ledger does.
    pub fn from_entries(mut entries: Vec<(K, V)>) -> Self {
        // Reversed, a stable sort puts a key's last value first, which `dedup` keeps.
        entries.reverse();
        entries.sort_by_key(|entry| entry.0);
        entries.dedup_by_key(|entry| entry.0);
        entries.shrink_to_fit();
        Self {
            sorted: entries,
            recent: HashMap::new(),
        }
    }

    /// The value of `key`, if it has one.
    pub fn get(&self, key: &K) -> Option<V> {
        if let Some(value) = self.recent.get(key) {
            return Some(*value);
        }
        self.sorted
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|index| self.sorted[index].1)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Sets the value of `key`, replacing any earlier one.
    pub fn insert(&mut self, key: K, value: V) {
        if let Ok(index) = self.sorted.binary_search_by(|(k, _)| k.cmp(&key)) {
            self.sorted[index].1 = value;
            return;
        }
        self.insert_recent(key, value);
    }

    /// Adds `key`, which the caller knows is not in the map (it just looked it up): saves the
    /// search of the sorted part, a cache miss per level on a large map.
    pub fn insert_new(&mut self, key: K, value: V) {
        debug_assert!(!self.contains_key(&key), "insert_new of a present key");
        self.insert_recent(key, value);
    }

    /// Sets `key` among the recent entries (it is not in the sorted part), merging them into
    /// the sorted part once there are enough.
    fn insert_recent(&mut self, key: K, value: V) {
        self.recent.insert(key, value);
        if self.recent.len() >= MIN_MERGE.max(self.sorted.len() / 8) {
            self.merge();
        }
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (K, V)> + '_ {
        self.sorted
            .iter()
            .copied()
            .chain(self.recent.iter().map(|(k, v)| (*k, *v)))
    }

    /// Moves the recent entries into the sorted vector: grows it by exactly their number and
    /// merges from the back, so no second copy of the vector is ever allocated.
    fn merge(&mut self) {
        let mut recent: Vec<(K, V)> = self.recent.drain().collect();
        recent.sort_unstable_by_key(|entry| entry.0);
        let old = self.sorted.len();
        let Some(&filler) = recent.first() else {
            return;
        };
        self.sorted.reserve_exact(recent.len());
        self.sorted.resize(old + recent.len(), filler);
        // Merge from the back: `write` never overtakes `left`, so no unread entry is overwritten.
        let (mut left, mut right, mut write) = (old, recent.len(), old + recent.len());
        while right > 0 {
            write -= 1;
            if left > 0 && self.sorted[left - 1].0 > recent[right - 1].0 {
                left -= 1;
                self.sorted[write] = self.sorted[left];
            } else {
                right -= 1;
                self.sorted[write] = recent[right];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic scramble of `i`, so keys arrive out of order.
    fn key(i: u64) -> u64 {
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
    }

    #[test]
    fn behaves_like_a_hash_map_across_merges() {
        let mut compact = CompactMap::default();
        let mut reference = HashMap::new();
        for i in 0..100_000_u64 {
            compact.insert(key(i), i);
            reference.insert(key(i), i);
            if i % 7 == 0 {
                // Overwrite an older entry, which may have been merged already.
                compact.insert(key(i / 2), i);
                reference.insert(key(i / 2), i);
            }
        }
        assert!(compact.sorted.len() > MIN_MERGE, "merges happened");
        assert!(compact.sorted.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(compact.len(), reference.len());
        for i in 0..110_000_u64 {
            assert_eq!(compact.get(&key(i)), reference.get(&key(i)).copied(), "{i}");
        }
        let mut entries: Vec<_> = compact.iter().collect();
        entries.sort_unstable();
        let mut expected: Vec<_> = reference.into_iter().collect();
        expected.sort_unstable();
        assert_eq!(entries, expected);
    }

    #[test]
    fn built_from_entries_the_last_value_of_a_key_wins() {
        let compact = CompactMap::from_entries(vec![(3, 'a'), (1, 'b'), (3, 'c'), (2, 'd')]);
        assert_eq!(compact.len(), 3);
        assert_eq!(
            (compact.get(&1), compact.get(&2), compact.get(&3)),
            (Some('b'), Some('d'), Some('c'))
        );
        let mut grown = compact.clone();
        grown.insert_new(0, 'e');
        assert_eq!((grown.get(&0), grown.len()), (Some('e'), 4));
    }

    #[test]
    fn the_sorted_part_is_exactly_sized() {
        let mut compact = CompactMap::default();
        for i in 0..(5 * MIN_MERGE as u64) {
            compact.insert(key(i), ());
        }
        assert_eq!(compact.sorted.capacity(), compact.sorted.len());
    }
}
