//! [`Indexed`]: one of a profile's lists of keyed entries (daily counts per category or product,
//! affinities per category or brand) with a compact index of their keys and ages beside it.
//!
//! Finding a key in these lists was a walk over the entries themselves, 80 bytes apart for the
//! series and 48 for the affinities, up to 64 and 32 of them; and a new key in a full list walked
//! them all again for the one to push out (the least recently active series, the weakest
//! affinity). A profile of a shopper with many events, held in memory but cold in the CPU's
//! caches, had every step of those walks wait for memory: in a `perf` profile of the deep
//! workload (4 K shoppers, every profile in memory) adding to the series and the affinities, and
//! recording what an event changes of them for explanations, were about 12 % of the processing
//! threads' samples, most of them on the load of an entry's hash, key or last time. Once a list
//! is longer than [`INDEXED_FROM`] entries, the index holds, per entry, a 32-bit tag (from the
//! key's hash, and the event type for the series) and its age (what decides which entry is
//! pushed out), four to a cache line: a lookup reads the tags and compares the entries whose tag
//! matches; the entry to push out is found from the ages. Shorter lists are walked as before.
//!
//! The index is in memory only: the state and the JSON hold the list as before, and it is rebuilt
//! when a list is read. Every change of the list goes through this type, which keeps the two in
//! step: an entry is changed through [`Indexed::update`] (its age follows; its key must stay)
//! or replaced through [`Indexed::copy_in`].

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::layout::read::{self, Decode};
use crate::layout::write::Encode;

/// What an entry is found and pushed out by.
pub trait Tagged {
    /// From its key (and kind): equal for equal keys. Entries with the same tag are told apart
    /// by comparing them.
    fn tag(&self) -> u32;
    /// The entry with the lowest age (the first of them) is the one a full list pushes out.
    fn age(&self) -> i64;
}

/// An entry's tag and age.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Slot {
    age: i64,
    tag: u32,
}

impl Slot {
    #[inline]
    fn of<T: Tagged>(item: &T) -> Slot {
        Slot {
            age: item.age(),
            tag: item.tag(),
        }
    }
}

/// Up to this many entries a list is walked (a few cache lines); past it, it is indexed.
pub const INDEXED_FROM: usize = 8;

/// A list of entries and, once it is longer than [`INDEXED_FROM`], their slots in the index, in
/// the same order. Most shoppers have one entry or two per list: their lists carry no index
/// (a profile of a shopper with an event or two is read, changed and dropped for nearly every
/// event of a workload of many shoppers, where each allocation shows).
pub struct Indexed<T> {
    items: Vec<T>,
    /// `slots[i]` is `Slot::of(&items[i])`, for every entry; `None` while the list has not
    /// been longer than [`INDEXED_FROM`] (a list cut shorter keeps its index). Boxed: 8 bytes
    /// in the profile while there is none (a `Vec` would take 24 in each of its four lists).
    #[allow(clippy::box_collection)]
    slots: Option<Box<Vec<Slot>>>,
}

impl<T: Tagged> Indexed<T> {
    pub fn new() -> Self {
        Indexed::default()
    }

    /// The place of the first entry with `tag` that `is` accepts.
    #[inline]
    pub fn position(&self, tag: u32, is: impl Fn(&T) -> bool) -> Option<usize> {
        debug_assert!(self.in_step(), "the index is out of step with its list");
        match &self.slots {
            Some(slots) => slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.tag == tag)
                .map(|(i, _)| i)
                .find(|&i| is(&self.items[i])),
            None => self.items.iter().position(is),
        }
    }

    /// The first entry with `tag` that `is` accepts.
    #[inline]
    pub fn find(&self, tag: u32, is: impl Fn(&T) -> bool) -> Option<&T> {
        self.position(tag, is).map(|i| &self.items[i])
    }

    /// The place of the first entry with the lowest age (None: the list is empty).
    pub fn oldest(&self) -> Option<usize> {
        debug_assert!(self.in_step(), "the index is out of step with its list");
        match &self.slots {
            Some(slots) => (0..slots.len()).min_by_key(|&i| slots[i].age),
            None => (0..self.items.len()).min_by_key(|&i| self.items[i].age()),
        }
    }

    /// Appends an entry.
    pub fn push(&mut self, item: T) {
        self.items.push(item);
        match &mut self.slots {
            Some(slots) => slots.push(Slot::of(self.items.last().expect("pushed"))),
            None if self.items.len() > INDEXED_FROM => {
                let mut slots = Vec::with_capacity(self.items.capacity());
                slots.extend(self.items.iter().map(Slot::of));
                self.slots = Some(Box::new(slots));
            }
            None => {}
        }
    }

    /// Removes entry `i`, the last taking its place.
    pub fn swap_remove(&mut self, i: usize) -> T {
        if let Some(slots) = &mut self.slots {
            slots.swap_remove(i);
        }
        self.items.swap_remove(i)
    }

    /// Removes entry `i`, keeping the order of the others.
    pub fn remove(&mut self, i: usize) -> T {
        if let Some(slots) = &mut self.slots {
            slots.remove(i);
        }
        self.items.remove(i)
    }

    /// Changes entry `i`, but not its key (nor kind): its age follows.
    #[inline]
    pub fn update<R>(&mut self, i: usize, change: impl FnOnce(&mut T) -> R) -> R {
        let r = change(&mut self.items[i]);
        if let Some(slots) = &mut self.slots {
            slots[i].age = self.items[i].age();
            debug_assert_eq!(slots[i].tag, self.items[i].tag(), "a key changed in place");
        }
        r
    }

    /// Makes entry `i` a copy of `from`'s entry `j` through `copy` (which reuses what entry `i`
    /// holds), or appends a clone of it when `i` is the length.
    pub fn copy_in(&mut self, i: usize, from: &Indexed<T>, j: usize, copy: impl FnOnce(&mut T, &T))
    where
        T: Clone,
    {
        if i < self.items.len() {
            copy(&mut self.items[i], &from.items[j]);
            if let Some(slots) = &mut self.slots {
                slots[i] = match &from.slots {
                    Some(theirs) => theirs[j],
                    None => Slot::of(&self.items[i]),
                };
            }
        } else {
            assert_eq!(i, self.items.len(), "copied past the end");
            self.push(from.items[j].clone());
        }
        debug_assert!(
            self.slots
                .as_ref()
                .is_none_or(|s| s[i] == Slot::of(&self.items[i])),
            "copied other than whole"
        );
    }

    /// Keeps the first `len` entries.
    pub fn truncate(&mut self, len: usize) {
        self.items.truncate(len);
        if let Some(slots) = &mut self.slots {
            slots.truncate(len);
        }
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// The entries' capacity (for the memory a profile holds).
    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }

    /// Makes room for one more entry exactly while the list is short ([`crate::profile`]'s
    /// `room_for_one`).
    pub(crate) fn room_for_one(&mut self) {
        crate::profile::room_for_one(&mut self.items);
    }

    pub fn into_vec(self) -> Vec<T> {
        self.items
    }

    /// `items` with an index however short (for the tests of both ways).
    #[cfg(test)]
    fn with_index(items: Vec<T>) -> Self {
        Indexed {
            slots: Some(Box::new(items.iter().map(Slot::of).collect())),
            items,
        }
    }

    /// Whether the list carries an index (it has been longer than [`INDEXED_FROM`]).
    pub fn is_indexed(&self) -> bool {
        self.slots.is_some()
    }

    /// Whether the index, if any, is the entries'.
    pub fn in_step(&self) -> bool {
        match &self.slots {
            None => self.items.len() <= INDEXED_FROM,
            Some(slots) => {
                slots.len() == self.items.len()
                    && self
                        .items
                        .iter()
                        .zip(slots.iter())
                        .all(|(e, s)| Slot::of(e) == *s)
            }
        }
    }
}

impl<T> Default for Indexed<T> {
    fn default() -> Self {
        Indexed {
            items: Vec::new(),
            slots: None,
        }
    }
}

/// `clone_from` reuses the allocations of the entries it overwrites.
impl<T: Clone> Clone for Indexed<T> {
    fn clone(&self) -> Self {
        Indexed {
            items: self.items.clone(),
            slots: self.slots.clone(),
        }
    }

    fn clone_from(&mut self, from: &Self) {
        self.items.clone_from(&from.items);
        match (&mut self.slots, &from.slots) {
            (Some(mine), Some(theirs)) => mine.clone_from(theirs),
            (mine, theirs) => mine.clone_from(theirs),
        }
    }
}

impl<T: Tagged> From<Vec<T>> for Indexed<T> {
    fn from(items: Vec<T>) -> Self {
        Indexed {
            slots: (items.len() > INDEXED_FROM)
                .then(|| Box::new(items.iter().map(Slot::of).collect())),
            items,
        }
    }
}

impl<T: Tagged> FromIterator<T> for Indexed<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Indexed::from(iter.into_iter().collect::<Vec<T>>())
    }
}

impl<T: Tagged> IntoIterator for Indexed<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a Indexed<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// Read as the slice of entries.
impl<T> Deref for Indexed<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        &self.items
    }
}

/// The entries alone (the index follows from them).
impl<T: PartialEq> PartialEq for Indexed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
    }
}

impl<T: fmt::Debug> fmt::Debug for Indexed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.items.fmt(f)
    }
}

/// As the list (the state and the JSON are unchanged).
impl<T: Serialize> Serialize for Indexed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.items.serialize(s)
    }
}

impl<'de, T: Tagged + Deserialize<'de>> Deserialize<'de> for Indexed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(d).map(Indexed::from)
    }
}

impl<T: Encode> Encode for Indexed<T> {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        self.items[..].encode(out);
    }
}

impl<T: Tagged + Decode> Decode for Indexed<T> {
    #[inline]
    fn decode(r: &mut read::Reader<'_>) -> Result<Self, read::Bad> {
        Vec::<T>::decode(r).map(Indexed::from)
    }
}

/// `f`'s place in `f64::total_cmp`'s order, as an `i64` (for ages that are scores).
#[inline]
pub fn total_order(f: f64) -> i64 {
    let bits = f.to_bits() as i64;
    bits ^ (((bits >> 63) as u64) >> 1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Entry {
        key: String,
        n: i64,
    }

    /// A deliberately poor tag (the key's length): entries with the same tag are told apart by
    /// comparing them. The age is `n`.
    impl Tagged for Entry {
        fn tag(&self) -> u32 {
            self.key.len() as u32
        }

        fn age(&self) -> i64 {
            self.n
        }
    }

    fn entry(key: &str, n: i64) -> Entry {
        Entry { key: key.into(), n }
    }

    fn find<'a>(l: &'a Indexed<Entry>, key: &str) -> Option<&'a Entry> {
        l.find(key.len() as u32, |e| e.key == key)
    }

    /// The same answers walked (a short list) and through the index.
    #[test]
    fn finds_entries_and_the_oldest_through_every_change_of_the_list() {
        let items = vec![entry("ab", 1), entry("cd", 2), entry("xyz", 3)];
        let walked = Indexed::from(items.clone());
        assert!(!walked.is_indexed());
        every_change(walked);
        every_change(Indexed::with_index(items));
    }

    fn every_change(mut l: Indexed<Entry>) {
        assert_eq!(find(&l, "cd").map(|e| e.n), Some(2));
        assert_eq!(find(&l, "xyz").map(|e| e.n), Some(3));
        assert_eq!(find(&l, "ef"), None, "a tag shared with other keys");
        assert_eq!(find(&l, "q"), None, "a tag no entry has");
        assert_eq!(l.oldest(), Some(0));
        l.push(entry("ef", 0));
        assert_eq!(find(&l, "ef").map(|e| e.n), Some(0));
        assert_eq!(l.oldest(), Some(3));
        assert_eq!(l.swap_remove(0), entry("ab", 1));
        assert_eq!(find(&l, "ab"), None);
        // [ef 0, cd 2, xyz 3]
        assert_eq!(find(&l, "ef").map(|e| e.n), Some(0));
        l.update(0, |e| e.n = 30);
        assert_eq!(find(&l, "ef").map(|e| e.n), Some(30));
        assert_eq!(l.oldest(), Some(1), "the age follows an update");
        l.update(2, |e| e.n = 2);
        assert_eq!(l.oldest(), Some(1), "the first of equal ages");
        let from: Indexed<Entry> = vec![entry("long key", -5)].into();
        l.copy_in(2, &from, 0, |t, f| t.clone_from(f));
        assert_eq!(find(&l, "xyz"), None);
        assert_eq!(find(&l, "long key").map(|e| e.n), Some(-5));
        assert_eq!(l.oldest(), Some(2));
        l.copy_in(3, &from, 0, |t, f| t.clone_from(f));
        assert_eq!(l.len(), 4);
        assert_eq!(l.remove(0), entry("ef", 30));
        assert_eq!(find(&l, "cd").map(|e| e.n), Some(2));
        l.truncate(1);
        assert_eq!(l.len(), 1);
        assert_eq!(find(&l, "long key"), None);
        assert!(l.in_step());
        l.clear();
        assert!(l.is_empty() && find(&l, "cd").is_none() && l.oldest().is_none() && l.in_step());
    }

    /// A list is indexed once it grows past [`INDEXED_FROM`] (or is read so long), and keeps
    /// its index when cut shorter; either way every entry is found.
    #[test]
    fn a_list_is_indexed_past_its_first_entries() {
        let key = |i: usize| format!("key-{i}");
        let mut l = Indexed::new();
        for i in 0..INDEXED_FROM + 3 {
            l.push(entry(&key(i), 100 - i as i64));
            assert_eq!(l.is_indexed(), i >= INDEXED_FROM, "{i}");
            for j in 0..=i {
                assert_eq!(find(&l, &key(j)).map(|e| e.n), Some(100 - j as i64));
            }
            assert_eq!(l.oldest(), Some(i));
            assert!(l.in_step());
        }
        l.truncate(2);
        assert!(l.is_indexed() && l.in_step());
        assert_eq!(find(&l, &key(1)).map(|e| e.n), Some(99));
        assert_eq!(find(&l, &key(2)), None);
        let long: Vec<Entry> = (0..INDEXED_FROM + 1).map(|i| entry(&key(i), 0)).collect();
        assert!(Indexed::from(long.clone()).is_indexed());
        assert!(!Indexed::from(long[..INDEXED_FROM].to_vec()).is_indexed());
        // A copy into a short list of entries of an indexed one, and the other way round.
        let mut short = Indexed::from(vec![entry("a", 1)]);
        let indexed = Indexed::from(long);
        short.copy_in(0, &indexed, 3, |t, f| t.clone_from(f));
        assert_eq!(find(&short, &key(3)).map(|e| e.n), Some(0));
        let mut other = Indexed::from(indexed.to_vec());
        other.copy_in(5, &short, 0, |t, f| t.clone_from(f));
        assert_eq!(find(&other, &key(5)), None);
        assert!(other.in_step());
        other.clone_from(&short);
        assert!(!other.is_indexed() && other.in_step());
    }

    /// Debug builds (every test) catch a key changed in place.
    #[test]
    #[should_panic(expected = "a key changed in place")]
    #[cfg(debug_assertions)]
    fn a_key_changed_by_update_is_caught() {
        let mut l: Indexed<Entry> = Indexed::with_index(vec![entry("ab", 1)]);
        l.update(0, |e| e.key = "abc".into());
    }

    #[test]
    fn compares_clones_and_prints_as_its_entries() {
        let a: Indexed<Entry> = vec![entry("ab", 1), entry("cd", 2)].into();
        let b: Indexed<Entry> = [entry("ab", 1), entry("cd", 2)].into_iter().collect();
        assert_eq!(a, b);
        assert_eq!(
            format!("{a:?}"),
            format!("{:?}", vec![entry("ab", 1), entry("cd", 2)])
        );
        assert_ne!(a, Indexed::new());
        let mut c: Indexed<Entry> = vec![entry("x", 9)].into();
        c.clone_from(&a);
        assert!(c == a && c.in_step());
    }

    #[test]
    fn total_order_orders_as_total_cmp() {
        let values = [
            -f64::NAN,
            f64::NEG_INFINITY,
            f64::MIN,
            -1e300,
            -2.5,
            -f64::MIN_POSITIVE,
            -1e-320,
            -0.0,
            0.0,
            1e-320,
            f64::MIN_POSITIVE,
            1e-300,
            2.5,
            1e300,
            f64::MAX,
            f64::INFINITY,
            f64::NAN,
            f64::from_bits(f64::NAN.to_bits() | 1),
        ];
        for a in values {
            for b in values {
                assert_eq!(
                    total_order(a).cmp(&total_order(b)),
                    a.total_cmp(&b),
                    "{a} {b}"
                );
            }
        }
    }
}
