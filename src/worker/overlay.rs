//! A partition task's profiles: an LRU cache of decoded profiles in front of RocksDB, bounded by
//! their estimated memory and by their number, and the write-back overlay of the open batch
//! (what its commit writes: changed profiles, removed ones, and how each profile's entry in the
//! timer index moves).
//!
//! The overlay is the only record of a change until the commit: a changed profile pushed out of
//! the cache moves into it (and comes back *changed* when read again), a removed profile stays
//! removed there even when its key is read again as an empty placeholder, and only a profile
//! created again under that key replaces the removal.

use std::collections::HashMap;
use std::num::NonZeroUsize;

use lru::LruCache;

use crate::config::CACHED_PROFILE_BYTES;
use crate::footprint;
use crate::profile::{self, Profile};

/// Hashes the profile maps' keys with xxh3's one-shot function, seeded at random per process
/// (keys include browser ids, which outsiders can choose). xxh3's streaming hasher, which the
/// crate's own `Xxh3Builder` builds for every lookup, set up and buffered a state for each key:
/// 3 % of a processing thread in the deep `perf` profile.
#[derive(Clone, Copy)]
pub struct KeyHasher {
    seed: u64,
}

impl KeyHasher {
    pub fn with_seed(seed: u64) -> KeyHasher {
        KeyHasher { seed }
    }

    /// Seeded from the standard library's per-process random keys.
    pub fn random() -> KeyHasher {
        use std::hash::BuildHasher;
        KeyHasher::with_seed(std::collections::hash_map::RandomState::new().hash_one(0u64))
    }
}

/// Without the seed: it is what keeps collisions unpredictable.
impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher")
    }
}

impl std::hash::BuildHasher for KeyHasher {
    type Hasher = KeyHash;

    fn build_hasher(&self) -> KeyHash {
        KeyHash(self.seed)
    }
}

/// A string key is one `write` (its bytes: a one-shot xxh3 call seeded with the hash so far)
/// and one `write_u8` (a terminator: mixed in by a multiplication, not by a second xxh3 call,
/// which made the profile maps hash every key twice; about 1 % of the wide pass's processing
/// threads went to these hashes, several lookups per event).
pub struct KeyHash(u64);

impl std::hash::Hasher for KeyHash {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    /// One-to-one in the hash so far (an odd multiplier): two keys that differ before it still
    /// differ after it.
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0 ^ u64::from(i)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A profile held in memory. Boxed: a profile is about 700 bytes, which the cache moved in and
/// out of its entries at every insertion and eviction (`memmove` under the cache's `put` and
/// `fetch` was 1.2 % of the wide pass's samples); a box moves as a pointer, also into the
/// overlay when it is pushed out.
struct Slot {
    profile: Box<Profile>,
    /// Changed since the last commit.
    dirty: bool,
    /// The profile's entry in the store's timer index (its `next_timer` as last committed).
    committed_timer: Option<i64>,
    /// The memory it is counted for ([`weight`]) as last read or written.
    weight: usize,
}

/// The memory a cached profile is counted for: the `Profile` in its box, the cache's entry,
/// its key and the hash table's share ([`fixed`], about [`CACHED_PROFILE_BYTES`]), and every
/// heap block the profile owns ([`footprint::heap_bytes`]: its lists and strings, walked from
/// their capacities), each at the size the allocator gives for it. Counted when the profile is
/// read into the cache and at each commit that writes it: the events of the open batch are
/// counted at its commit. A profile read from its state has no next changes yet (its first
/// evaluation works them out): `nexts`, the size they took in the last profile committed,
/// stands in for them until then.
pub fn weight(key: &str, profile: &Profile, nexts: usize) -> usize {
    let pending = if profile.known_nexts.worked_out() {
        0
    } else {
        nexts
    };
    fixed(key) + footprint::heap_bytes(profile, &good_size) + pending
}

/// The part of [`weight`] that does not depend on the profile's contents.
pub fn fixed(key: &str) -> usize {
    // The LRU's entry: its key and value, and the links between entries.
    let entry = std::mem::size_of::<String>() + std::mem::size_of::<Slot>() + 16;
    good_size(std::mem::size_of::<Profile>())
        + good_size(entry)
        + if key.is_empty() {
            0
        } else {
            good_size(key.len())
        }
        + TABLE_SLOT_BYTES
}

/// The hash table's share per entry, about: a pointer to the key and one to the entry, and a
/// control byte, at a load between 7/16 and 7/8 (the table grows with the entries, doubling
/// past 7/8: see [`Profiles::new`]).
const TABLE_SLOT_BYTES: usize = 24;
/// How many profiles ahead of the one it encodes a commit asks for a profile's memory
/// ([`Profiles::take_writes`]).
const WRITE_AHEAD: usize = 8;

/// The size the allocator (mimalloc, the binary's) gives for a request of `n` bytes: its size
/// classes are up to a quarter larger than what is asked.
fn good_size(n: usize) -> usize {
    // SAFETY: a pure function of `n`: it reads mimalloc's size classes and allocates nothing.
    unsafe { libmimalloc_sys::mi_good_size(n) }
}

/// What the open batch holds for a key outside the cache.
enum Pending {
    /// Changed, then pushed out of the cache (with its weight): written with the commit.
    Spilled(Box<Profile>, usize),
    /// Removed (absorbed or deleted): deleted with the commit, unless created again.
    Removed,
}

/// What a commit writes for a task's profiles.
#[derive(Debug, Default, PartialEq)]
pub struct Writes {
    pub put: Vec<(String, Vec<u8>)>,
    pub deleted: Vec<String>,
    /// Timer index entries (due time, key) to add and to remove.
    pub timers_added: Vec<(i64, String)>,
    pub timers_removed: Vec<(i64, String)>,
}

impl Writes {
    fn timer_moved(&mut self, key: &str, from: Option<i64>, to: Option<i64>) {
        if from != to {
            if let Some(t) = from {
                self.timers_removed.push((t, key.to_owned()));
            }
            if let Some(t) = to {
                self.timers_added.push((t, key.to_owned()));
            }
        }
    }
}

/// Whether a profile is only a placeholder (nothing stored under its key).
pub fn is_new(p: &Profile) -> bool {
    p.events_total == 0 && crate::identity::count(p) == 0 && p.segments.is_empty()
}

pub struct Profiles {
    cache: LruCache<String, Slot, KeyHasher>,
    /// The cached profiles' [`weight`]s summed, and the most they may sum to.
    bytes: usize,
    budget: usize,
    /// Keys the open batch changed outside the cache, with their committed timer.
    pending: HashMap<String, (Pending, Option<i64>), KeyHasher>,
    /// Keys marked dirty in the open batch, in first-touch order (a key repeats when its
    /// profile was removed and then created or read again), each with its profile's address
    /// then: for [`Profiles::take_writes`] to ask for the profile's memory ahead of its turn,
    /// never dereferenced (a profile spilled keeps its box, and its address; one removed and
    /// made again since is elsewhere: a hint for nothing).
    dirty: Vec<(String, usize)>,
    /// The heap a profile's next changes take, as the last commit saw it (it varies with the
    /// profile: the segments that may change with time alone for that shopper) or
    /// [`Self::expect_nexts`] expects: counted for a profile read from its state, which has
    /// them after its first evaluation.
    nexts: usize,
    /// Keys the open batch changed or removed, each counted once ([`Self::changed_count`]).
    changed: usize,
}

impl Profiles {
    /// At most `capacity` profiles whose [`weight`]s sum to at most `budget` bytes (the most
    /// recently used one is kept whatever its weight). `hasher`: seeded at random per process
    /// ([`KeyHasher::random`]).
    pub fn new(capacity: usize, budget: usize, hasher: KeyHasher) -> Profiles {
        // Not `with_hasher(capacity)`, which sizes the hash table for `capacity` entries at
        // once (17 MiB for 500,000, however few the budget holds): it grows with the entries.
        let mut cache = LruCache::unbounded_with_hasher(hasher);
        cache.resize(NonZeroUsize::new(capacity.max(1)).expect("at least 1"));
        Profiles {
            cache,
            bytes: 0,
            budget,
            pending: HashMap::with_hasher(hasher),
            dirty: Vec::new(),
            nexts: 0,
            changed: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Counts a profile read from its state with the most next changes `segments` segments
    /// may give it (a word of bits per 64 segments and a value per segment, in a list grown
    /// by doubling from four words), until a commit shows what they take.
    pub fn expect_nexts(&mut self, segments: usize) {
        if self.nexts == 0 && segments > 0 {
            let words = (segments.div_ceil(64) + segments)
                .next_power_of_two()
                .max(4);
            self.nexts = good_size(words * std::mem::size_of::<i64>());
        }
    }

    /// The cached profiles' estimated memory ([`weight`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// About how many profiles the cache holds when full: its capacity, or as many as its
    /// budget holds at the profiles' average weight so far if fewer.
    pub fn capacity(&self) -> usize {
        let average = match self.cache.len() {
            0 => CACHED_PROFILE_BYTES,
            n => (self.bytes / n).max(1),
        };
        self.cache.cap().get().min(self.budget / average).max(1)
    }

    /// Changes the cache's capacity and budget; changed profiles pushed out move to the overlay.
    pub fn resize(&mut self, capacity: usize, budget: usize) {
        let capacity = capacity.max(1);
        while self.cache.len() > capacity {
            match self.cache.pop_lru() {
                Some((key, slot)) => self.spill(key, slot),
                None => break,
            }
        }
        self.cache
            .resize(NonZeroUsize::new(capacity).expect("at least 1"));
        self.budget = budget;
        self.fit();
    }

    /// Pushes out the least recently used profiles while their weights sum to more than the
    /// budget, keeping the most recent one.
    fn fit(&mut self) {
        while self.bytes > self.budget && self.cache.len() > 1 {
            match self.cache.pop_lru() {
                Some((key, slot)) => self.spill(key, slot),
                None => break,
            }
        }
    }

    /// Drops `slot` out of the cache: pushed out (to the overlay if changed) or popped.
    fn spill(&mut self, key: String, slot: Slot) {
        self.bytes -= slot.weight;
        // An empty placeholder of a removed key: the removal stands.
        let removed = matches!(self.pending.get(&key), Some((Pending::Removed, _)));
        if slot.dirty && !(removed && is_new(&slot.profile)) {
            self.pending.insert(
                key,
                (
                    Pending::Spilled(slot.profile, slot.weight),
                    slot.committed_timer,
                ),
            );
        }
    }

    /// Takes `key`'s slot out of the cache (not into the overlay).
    fn pop(&mut self, key: &str) -> Option<Slot> {
        let slot = self.cache.pop(key)?;
        self.bytes -= slot.weight;
        Some(slot)
    }

    /// Brings the profile of `key` into the cache: from the overlay, else from the store
    /// (`read`, on a miss), else an empty
    /// placeholder. Pushes out the least recently used ones past the capacity or the budget.
    pub fn fetch<E>(
        &mut self,
        key: &str,
        read: impl FnOnce() -> Result<Option<Profile>, E>,
    ) -> Result<(), E> {
        if self.cache.contains(key) {
            return Ok(());
        }
        let slot = match self.pending.remove(key) {
            // Still changed: its changes are written with the commit.
            Some((Pending::Spilled(profile, weight), committed_timer)) => Slot {
                profile,
                dirty: true,
                committed_timer,
                weight,
            },
            // Removed in this batch: an empty placeholder, and the removal stands until a
            // profile is created again under this key.
            Some((Pending::Removed, committed_timer)) => {
                self.pending
                    .insert(key.to_owned(), (Pending::Removed, committed_timer));
                Slot {
                    profile: Box::default(),
                    dirty: false,
                    committed_timer,
                    weight: weight(key, &Profile::default(), self.nexts),
                }
            }
            None => {
                let profile = Box::new(read()?.unwrap_or_default());
                Slot {
                    committed_timer: profile.next_timer,
                    weight: weight(key, &profile, self.nexts),
                    profile,
                    dirty: false,
                }
            }
        };
        self.bytes += slot.weight;
        if let Some((old_key, old)) = self.cache.push(key.to_owned(), slot) {
            if old_key != key {
                self.spill(old_key, old);
            } else {
                self.bytes -= old.weight;
            }
        }
        self.fit();
        Ok(())
    }

    /// Whether [`Self::fetch`] of `key` would read the store.
    pub fn needs_read(&self, key: &str) -> bool {
        !self.cache.contains(key) && !self.pending.contains_key(key)
    }

    /// The cached profile changed (or is about to): it is written with the batch.
    pub fn mark_dirty(&mut self, key: &str) {
        if let Some(slot) = self.cache.get_mut(key) {
            if !slot.dirty {
                slot.dirty = true;
                let at = &*slot.profile as *const Profile as usize;
                self.dirty.push((key.to_owned(), at));
                // Created again after its removal in this batch: counted with the removal.
                if !self.pending.contains_key(key) {
                    self.changed += 1;
                }
            }
        }
    }

    /// The cached profile of `key` (after [`Self::fetch`]).
    pub fn get(&self, key: &str) -> Option<&Profile> {
        self.cache.peek(key).map(|s| &*s.profile)
    }

    /// The cached profile of `key`, to change (mark it dirty if it does).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Profile> {
        self.cache.get_mut(key).map(|s| &mut *s.profile)
    }

    /// The committed timer of a cached profile (its entry in the store's timer index).
    pub fn committed_timer(&self, key: &str) -> Option<Option<i64>> {
        self.cache.peek(key).map(|s| s.committed_timer)
    }

    /// Removes the profile of `key` (absorbed or deleted): it leaves the cache, and the commit
    /// deletes it and its timer. Returns it (as changed so far in this batch).
    pub fn remove(&mut self, key: &str) -> Option<Profile> {
        let slot = self.pop(key)?;
        // A changed profile (or one created again after a removal) is counted already.
        if !slot.dirty && !self.pending.contains_key(key) {
            self.changed += 1;
        }
        self.pending
            .insert(key.to_owned(), (Pending::Removed, slot.committed_timer));
        Some(*slot.profile)
    }

    /// How many profiles the open batch changed or removed (each key once, in the cache or
    /// pushed out of it): what its commit writes.
    pub fn changed_count(&self) -> usize {
        self.changed
    }

    /// Whether the open batch changed anything.
    pub fn changed(&self) -> bool {
        !self.dirty.is_empty() || !self.pending.is_empty()
    }

    /// Takes what the commit writes; the cached profiles become clean at their new timers.
    pub fn take_writes(&mut self) -> Writes {
        self.changed = 0;
        // Sized ahead (a batch writes thousands of profiles: grown by doubling, each list was
        // copied several times per batch).
        let n = self.dirty.len() + self.pending.len();
        let mut w = Writes {
            put: Vec::with_capacity(n),
            deleted: Vec::new(),
            timers_added: Vec::with_capacity(n),
            timers_removed: Vec::with_capacity(n),
        };
        let mut dirty = std::mem::take(&mut self.dirty);
        for i in 0..dirty.len() {
            // Most of the batch's profiles are cold by its commit (in the wide e2e `perf`
            // profile the encoding's hottest instructions were loads of the profile's fields):
            // the struct's lines are asked for `WRITE_AHEAD` profiles ahead of their turn.
            if let Some(&(_, at)) = dirty.get(i + WRITE_AHEAD) {
                Profile::prefetch_struct(at as *const Profile);
            }
            let key = std::mem::take(&mut dirty[i].0);
            // A key repeats in `dirty` after its profile was removed and made again; written once.
            let Some(slot) = self.cache.peek_mut(&key).filter(|s| s.dirty) else {
                continue;
            };
            if is_new(&slot.profile) && self.pending.contains_key(&key) {
                // Read again after its removal but nothing was created: the removal stands.
                slot.dirty = false;
                continue;
            }
            w.timer_moved(&key, slot.committed_timer, slot.profile.next_timer);
            slot.committed_timer = slot.profile.next_timer;
            slot.dirty = false;
            let bytes = profile::encode(&slot.profile);
            // Counted from now on at its new size.
            let nexts = footprint::nexts_bytes(&slot.profile, &good_size);
            if nexts > 0 {
                self.nexts = nexts;
            }
            let weight = weight(&key, &slot.profile, self.nexts);
            self.bytes = self.bytes - slot.weight + weight;
            slot.weight = weight;
            // Created again after a removal in this batch: the write replaces the removal.
            self.pending.remove(&key);
            w.put.push((key, bytes));
        }
        for (key, (pending, committed_timer)) in self.pending.drain() {
            match pending {
                Pending::Spilled(p, _) => {
                    w.timer_moved(&key, committed_timer, p.next_timer);
                    w.put.push((key, profile::encode(&p)));
                }
                Pending::Removed => {
                    w.timer_moved(&key, committed_timer, None);
                    // A placeholder left in the cache now stands for nothing stored.
                    if let Some(slot) = self.cache.peek_mut(&key) {
                        slot.committed_timer = None;
                    }
                    w.deleted.push(key);
                }
            }
        }
        // Written profiles are counted at their new sizes: back within the budget.
        self.fit();
        w
    }

    /// Drops what the open batch changed: changed and removed profiles leave the cache (they are
    /// read again from the store); unchanged ones stay cached.
    pub fn rollback(&mut self) {
        self.changed = 0;
        for (key, _) in std::mem::take(&mut self.dirty) {
            self.pop(&key);
        }
        let pending: Vec<String> = self.pending.drain().map(|(key, _)| key).collect();
        for key in pending {
            self.pop(&key);
        }
    }

    /// Forgets a cached key (an identity alias changed under it, or a rollback).
    pub fn forget(&mut self, key: &str) {
        if !self.pending.contains_key(key) && !self.cache.peek(key).is_some_and(|s| s.dirty) {
            self.pop(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(events: u64, timer: Option<i64>) -> Profile {
        Profile {
            events_total: events,
            next_timer: timer,
            ..Profile::default()
        }
    }

    fn store_with(p: Profile) -> impl Fn() -> Result<Option<Profile>, ()> {
        move || Ok(Some(p.clone()))
    }

    fn decoded(w: &Writes) -> Vec<(String, u64, Option<i64>)> {
        w.put
            .iter()
            .map(|(k, b)| {
                let p = profile::decode(b).unwrap();
                (k.clone(), p.events_total, p.next_timer)
            })
            .collect()
    }

    /// The count the batch's profile bound reads: each key changed or removed once, however
    /// often it was pushed out of the cache, read back, removed and created again.
    /// Keys hash apart, the same key alike however it is held, and the seed changes them all
    /// (outsiders choose browser ids: they must not be able to predict collisions).
    #[test]
    fn key_hashes_depend_on_the_key_and_the_seed() {
        use std::hash::BuildHasher;
        let (a, b) = (KeyHasher::with_seed(1), KeyHasher::with_seed(2));
        let keys: Vec<String> = (0..1000).map(|i| format!("ecid-{i}")).collect();
        let hashes: std::collections::HashSet<u64> = keys.iter().map(|k| a.hash_one(k)).collect();
        assert_eq!(hashes.len(), keys.len());
        assert_eq!(a.hash_one("ecid-7"), a.hash_one(String::from("ecid-7")));
        assert!(keys.iter().all(|k| a.hash_one(k) != b.hash_one(k)));
        assert_ne!(
            KeyHasher::random().hash_one("k"),
            KeyHasher::random().hash_one("k")
        );
    }

    #[test]
    fn each_changed_key_counts_once() {
        let mut ps = Profiles::new(1, usize::MAX, KeyHasher::with_seed(0));
        let none = || Ok::<_, ()>(None);
        ps.fetch("a", none).unwrap();
        ps.mark_dirty("a");
        ps.fetch("b", none).unwrap(); // pushes a out, changed
        ps.mark_dirty("b");
        ps.fetch("a", none).unwrap(); // a back, b out
        ps.mark_dirty("a");
        assert_eq!(ps.changed_count(), 2);
        ps.remove("a");
        ps.fetch("a", none).unwrap(); // read again (left empty: the removal stands)
        ps.mark_dirty("a");
        assert_eq!(ps.changed_count(), 2);
        ps.fetch("c", store_with(profile(1, None))).unwrap();
        ps.remove("c"); // a stored profile removed unchanged
        ps.fetch("d", none).unwrap(); // read, not changed
        assert_eq!(ps.changed_count(), 3);
        let w = ps.take_writes();
        // b written; a and c deleted.
        assert_eq!((w.put.len(), w.deleted.len()), (1, 2), "{w:?}");
        assert_eq!(ps.changed_count(), 0);
        ps.fetch("e", none).unwrap();
        ps.mark_dirty("e");
        ps.rollback();
        assert_eq!(ps.changed_count(), 0);
    }

    /// Regression: a profile deleted twice in one batch (two accountDeleted, or accountDeleted
    /// and a DELETE) came back from the cache as a clean placeholder that was never marked
    /// dirty; the delete was not committed and the shopper's data and timer stayed in RocksDB.
    #[test]
    fn a_profile_deleted_twice_in_a_batch_is_deleted_at_commit() {
        let mut ps = Profiles::new(8, usize::MAX, KeyHasher::with_seed(0));
        let stored = profile(3, Some(500));
        ps.fetch("ann", store_with(stored.clone())).unwrap();
        ps.mark_dirty("ann");
        assert_eq!(ps.remove("ann"), Some(stored.clone()));
        // The second deletion reads the key again: an empty placeholder, not the stored profile.
        ps.fetch("ann", store_with(stored.clone())).unwrap();
        ps.mark_dirty("ann");
        let again = ps.remove("ann").unwrap();
        assert!(is_new(&again), "{again:?}");
        let w = ps.take_writes();
        assert_eq!(w.deleted, ["ann"]);
        assert!(w.put.is_empty(), "{:?}", decoded(&w));
        assert_eq!(w.timers_removed, [(500, "ann".to_string())]);
        assert!(w.timers_added.is_empty());
        assert!(!ps.changed());
    }

    #[test]
    fn a_removed_key_read_again_but_left_alone_is_still_deleted() {
        let mut ps = Profiles::new(8, usize::MAX, KeyHasher::with_seed(0));
        ps.fetch("ann", store_with(profile(3, Some(500)))).unwrap();
        ps.remove("ann");
        ps.fetch("ann", store_with(profile(3, Some(500)))).unwrap();
        assert!(is_new(ps.get("ann").unwrap()));
        let w = ps.take_writes();
        assert_eq!(w.deleted, ["ann"]);
        assert_eq!(w.timers_removed, [(500, "ann".to_string())]);
        // The placeholder left in the cache now stands for nothing stored: no timer to remove.
        ps.fetch("ann", store_with(profile(3, Some(500)))).unwrap();
        ps.mark_dirty("ann");
        ps.get_mut("ann").unwrap().next_timer = Some(900);
        let w = ps.take_writes();
        assert!(w.timers_removed.is_empty(), "{w:?}");
        assert_eq!(w.timers_added, [(900, "ann".to_string())]);
    }

    #[test]
    fn a_removed_key_loaded_again_but_left_empty_is_still_deleted() {
        let mut ps = Profiles::new(8, usize::MAX, KeyHasher::with_seed(0));
        ps.fetch("ann", store_with(profile(3, Some(500)))).unwrap();
        ps.remove("ann");
        // Loaded (marked changed) by a step that then changed nothing.
        ps.fetch("ann", store_with(profile(3, Some(500)))).unwrap();
        ps.mark_dirty("ann");
        let w = ps.take_writes();
        assert!(w.put.is_empty(), "{:?}", decoded(&w));
        assert_eq!(w.deleted, ["ann"]);
        assert_eq!(w.timers_removed, [(500, "ann".to_string())]);
    }

    #[test]
    fn a_removed_key_loaded_again_and_evicted_empty_is_still_deleted() {
        let mut ps = Profiles::new(1, usize::MAX, KeyHasher::with_seed(0));
        ps.fetch("ann", store_with(profile(3, Some(500)))).unwrap();
        ps.remove("ann");
        ps.fetch("ann", store_with(profile(3, Some(500)))).unwrap();
        ps.mark_dirty("ann");
        // Pushed out while still an empty placeholder.
        ps.fetch("bob", store_with(profile(1, None))).unwrap();
        let w = ps.take_writes();
        assert!(w.put.is_empty(), "{:?}", decoded(&w));
        assert_eq!(w.deleted, ["ann"]);
    }

    #[test]
    fn a_profile_created_again_after_its_removal_is_written_not_deleted() {
        let mut ps = Profiles::new(8, usize::MAX, KeyHasher::with_seed(0));
        ps.fetch("ann", store_with(profile(3, Some(500)))).unwrap();
        ps.remove("ann");
        ps.fetch("ann", store_with(profile(3, Some(500)))).unwrap();
        ps.mark_dirty("ann");
        *ps.get_mut("ann").unwrap() = profile(1, Some(700));
        let w = ps.take_writes();
        assert!(w.deleted.is_empty(), "{w:?}");
        assert_eq!(decoded(&w), [("ann".to_string(), 1, Some(700))]);
        assert_eq!(w.timers_removed, [(500, "ann".to_string())]);
        assert_eq!(w.timers_added, [(700, "ann".to_string())]);
    }

    /// Regression: a changed profile pushed out of the cache inside a batch came back from the
    /// overlay *not* dirty, so its earlier changes could be dropped at the commit.
    #[test]
    fn a_changed_profile_evicted_and_read_back_keeps_its_changes() {
        let mut ps = Profiles::new(1, usize::MAX, KeyHasher::with_seed(0));
        ps.fetch("ann", store_with(profile(1, None))).unwrap();
        ps.mark_dirty("ann");
        ps.get_mut("ann").unwrap().events_total = 2;
        // Another profile pushes it out; it is read back and changed once more.
        ps.fetch("bob", store_with(profile(7, None))).unwrap();
        ps.fetch("ann", || -> Result<_, ()> {
            panic!("must come from the overlay")
        })
        .unwrap();
        assert_eq!(ps.get("ann").unwrap().events_total, 2);
        ps.get_mut("ann").unwrap().events_total = 3;
        // Pushed out again (not marked dirty a second time): still written, with both changes.
        ps.fetch("bob", store_with(profile(7, None))).unwrap();
        let w = ps.take_writes();
        assert_eq!(decoded(&w), [("ann".to_string(), 3, None)]);
    }

    #[test]
    fn shrinking_the_cache_keeps_changed_profiles() {
        let mut ps = Profiles::new(4, usize::MAX, KeyHasher::with_seed(0));
        for k in ["a", "b", "c", "d"] {
            ps.fetch(k, store_with(profile(1, None))).unwrap();
            ps.mark_dirty(k);
            ps.get_mut(k).unwrap().events_total = 9;
        }
        ps.resize(1, usize::MAX);
        assert_eq!(ps.len(), 1);
        let mut keys: Vec<_> = decoded(&ps.take_writes())
            .into_iter()
            .map(|(k, n, _)| (k, n))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [("a", 9), ("b", 9), ("c", 9), ("d", 9)].map(|(k, n)| (k.to_string(), n))
        );
    }

    #[test]
    fn a_rollback_drops_changes_and_removals_and_the_store_is_read_again() {
        let mut ps = Profiles::new(8, usize::MAX, KeyHasher::with_seed(0));
        ps.fetch("ann", store_with(profile(1, None))).unwrap();
        ps.mark_dirty("ann");
        ps.get_mut("ann").unwrap().events_total = 5;
        ps.fetch("bob", store_with(profile(2, None))).unwrap();
        ps.remove("bob");
        ps.rollback();
        assert!(!ps.changed());
        ps.fetch("ann", store_with(profile(1, None))).unwrap();
        ps.fetch("bob", store_with(profile(2, None))).unwrap();
        assert_eq!(ps.get("ann").unwrap().events_total, 1);
        assert_eq!(ps.get("bob").unwrap().events_total, 2);
        assert_eq!(ps.take_writes(), Writes::default());
    }

    /// A profile with `n` products viewed: what it holds grows with `n`.
    fn browsed(n: usize) -> Profile {
        let mut p = profile(1, None);
        for i in 0..n {
            p.recent_products.push_back(crate::event::Line {
                sku: format!("sku-{i:04}").into(),
                name: Some(format!("product number {i}")),
                ..Default::default()
            });
        }
        // A copy, as the tests' store hands out: every list and string at its length, so the
        // same weight as those.
        p.clone()
    }

    /// The budget bounds the profiles' weights, counted from what they hold: more small
    /// profiles fit than large ones, the least recently used go first, changed ones still
    /// reach the commit, and the weights follow a profile that grew once it is written.
    #[test]
    fn the_budget_holds_more_small_profiles_than_large_ones() {
        let (small, large) = (browsed(0), browsed(20));
        let (ws, wl) = (weight("s0", &small, 0), weight("l0", &large, 0));
        assert!(wl > 2 * ws, "{ws} {wl}");
        let budget = 4 * wl;
        let mut ps = Profiles::new(1000, budget, KeyHasher::with_seed(0));
        for i in 0..100 {
            ps.fetch(&format!("s{i}"), store_with(small.clone()))
                .unwrap();
        }
        assert_eq!(ps.len(), budget / ws);
        assert_eq!(ps.bytes(), ps.len() * ws);
        assert!(ps.get("s99").is_some() && ps.get("s0").is_none());
        ps.mark_dirty("s99");
        ps.get_mut("s99").unwrap().events_total = 7;
        for i in 0..100 {
            ps.fetch(&format!("l{i}"), store_with(large.clone()))
                .unwrap();
        }
        assert_eq!(ps.len(), 4);
        assert_eq!(ps.bytes(), 4 * wl);
        assert!(ps.get("s99").is_none());
        // Pushed out changed: written with the commit all the same.
        let w = ps.take_writes();
        assert_eq!(decoded(&w), [("s99".to_string(), 7, None)]);
        // A cached profile that grew is counted at its new size once written, and the least
        // recently used make room for it.
        ps.mark_dirty("l99");
        *ps.get_mut("l99").unwrap() = browsed(60);
        let grown = weight("l99", &browsed(60), 0);
        assert!(3 * wl + grown > budget && wl + grown <= budget);
        let w = ps.take_writes();
        assert_eq!(w.put.len(), 1);
        assert_eq!((ps.len(), ps.bytes()), (2, wl + grown));
        assert!(ps.get("l98").is_some() && ps.get("l97").is_none());
        // Taken out every way, nothing is counted.
        ps.remove("l99");
        ps.forget("l98");
        ps.fetch("new", || Ok::<_, ()>(None)).unwrap();
        ps.mark_dirty("new");
        ps.rollback();
        assert_eq!((ps.len(), ps.bytes()), (0, 0));
        ps.fetch("a", store_with(large.clone())).unwrap();
        ps.fetch("b", store_with(large.clone())).unwrap();
        ps.resize(1000, 0);
        assert_eq!((ps.len(), ps.bytes()), (1, wl), "the most recent one stays");
        assert!(ps.get("b").is_some());
    }

    /// The configuration's least weight per profile (its checks, the README) is the count the
    /// cache makes for an empty profile with a short key.
    #[test]
    fn an_empty_profile_with_a_short_key_weighs_the_configured_least() {
        assert_eq!(
            weight("ecid-1", &Profile::default(), 0),
            CACHED_PROFILE_BYTES
        );
        assert!(fixed("") <= CACHED_PROFILE_BYTES);
        // Next changes not worked out yet are counted at the size the last commit saw, or
        // before any, at the size the segments' count gives them.
        assert_eq!(
            weight("ecid-1", &Profile::default(), 176),
            CACHED_PROFILE_BYTES + 176
        );
        let mut ps = Profiles::new(10, usize::MAX, KeyHasher::with_seed(0));
        ps.expect_nexts(21);
        ps.fetch("ecid-1", || Ok::<_, ()>(None)).unwrap();
        assert_eq!(ps.bytes(), CACHED_PROFILE_BYTES + good_size(32 * 8));
        // Once evaluated, a profile is counted at what its next changes hold: none at all
        // when no segment may change with time alone.
        let set = crate::segments::SegmentSet::parse(
            "segments:\n  - id: viewed\n    rule: count(productPageView, 1h) >= 1\n",
        )
        .unwrap();
        let evaluated = Profile {
            known_nexts: set.empty_nexts().expect("time-independent when empty"),
            ..Profile::default()
        };
        assert_eq!(weight("ecid-1", &evaluated, 176), CACHED_PROFILE_BYTES);
    }

    /// One profile larger than the whole budget is still held while it is used.
    #[test]
    fn the_most_recent_profile_stays_whatever_its_weight() {
        let mut ps = Profiles::new(1000, 1, KeyHasher::with_seed(0));
        ps.fetch("a", store_with(browsed(5))).unwrap();
        ps.fetch("b", store_with(browsed(5))).unwrap();
        assert_eq!(ps.len(), 1);
        assert!(ps.get("b").is_some());
        assert_eq!(ps.capacity(), 1);
    }
}
