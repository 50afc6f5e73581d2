//! The rolling profile of one shopper and how an event changes it.
//!
//! Everything here is bounded: identities, cart lines and recent order ids are capped, counters
//! are [`Series`] with a fixed number of buckets. A profile that receives a million events is no
//! bigger than one that received a thousand.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::event::{Attributes, Cart, Event, EventType, Line};
use crate::identity::KeyKind;
use crate::layout::read;
use crate::layout::state_fields;
use crate::layout::write::Encode;
use crate::sparse::Sparse;
use crate::window::{DailyCounts, Series};
use compact_str::CompactString;
use smallvec::SmallVec;

/// Audience changes kept per profile for lookups, latest last.
pub const RECENT_CHANGES: usize = 20;
/// Events that reached the profile through the repartition topic, remembered by origin.
pub const RECENT_FORWARDED: usize = 64;
/// Messages remembered per profile to apply an exact repeat (a producer's retry) only once.
pub const RECENT_MESSAGES: usize = 16;
/// Most cart lines kept.
pub const MAX_CART_LINES: usize = 100;
/// Order ids remembered to recognise the same order arriving twice (storefront
/// completeCheckout and back-office orderPlaced, or a historical re-sync).
pub const RECENT_ORDERS: usize = 64;
/// Most per-category and per-product series kept (each); the least recently active goes first.
pub const MAX_KEYED_SERIES: usize = 64;
/// Events counted per category and per product: product interest.
pub const KEYED_EVENTS: [EventType; 4] = [
    EventType::ProductPageView,
    EventType::AddToCart,
    EventType::RemoveFromCart,
    EventType::AddToRequisitionList,
];
/// The event kinds that change the cart ([`Profile::apply`]; [`crate::undo`] records the cart
/// before them).
pub const CART_EVENTS: [EventType; 7] = [
    EventType::AddToCart,
    EventType::RemoveFromCart,
    EventType::OpenCart,
    EventType::ShoppingCartView,
    EventType::StartCheckout,
    EventType::CompleteCheckout,
    EventType::OrderPlaced,
];
/// The event kinds that change the order statistics (likewise).
pub const ORDER_EVENTS: [EventType; 5] = [
    EventType::OrderPlaced,
    EventType::CompleteCheckout,
    EventType::OrderCancelled,
    EventType::OrderItemsReturnInitiated,
    EventType::OrderLineItemRefunded,
];
/// Most affinity scores kept per kind (categories, brands); the weakest goes first.
pub const MAX_AFFINITIES: usize = 32;
/// Products viewed kept for journeys (browse abandonment), latest last.
pub const RECENT_PRODUCTS: usize = 10;
/// Causes remembered per journey, so one cause never triggers it twice.
pub const JOURNEY_CAUSES: usize = 16;

/// Up to this many entries, a profile's lists grow one entry at a time ([`room_for_one`]).
const GROWN_ONE_AT_A_TIME: usize = 4;

/// A prefetch of the cache line at `p` into every level of the CPU's caches (x86-64; elsewhere
/// nothing). Prefetching never faults, whatever the address.
#[inline(always)]
pub(crate) fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and cannot fault, whatever `p` is.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Makes room for one more entry in one of a profile's lists, exactly while it is short: most
/// shoppers have one or two entries in each (a category, a product, an event type), and a
/// `Vec`'s first growth reserves four. A profile after its first event held 2.4 KB of heap that
/// way, a quarter of it used (the core bench's `profile memory` line), in a cache of
/// `state.cache_profiles` of them. Past [`GROWN_ONE_AT_A_TIME`] entries, the usual doubling.
/// Called where events, timers and messages add entries; a merge's lists grow as `Vec` does.
#[inline]
pub(crate) fn room_for_one<T>(list: &mut Vec<T>) {
    if list.len() == list.capacity() && list.len() < GROWN_ONE_AT_A_TIME {
        list.reserve_exact(1);
    }
}

/// [`room_for_one`] for a ring.
#[inline]
fn room_for_one_in_ring<T>(list: &mut VecDeque<T>) {
    if list.len() == list.capacity() && list.len() < GROWN_ONE_AT_A_TIME {
        list.reserve_exact(1);
    }
}

/// Half-life of affinity scores: interest halves every 14 days without new signals.
pub const AFFINITY_HALF_LIFE_MS: i64 = 14 * 86_400_000;

/// Daily counts of one event type for one category or product.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedSeries {
    pub kind: EventType,
    /// Hash of `key`, compared first: order lines make long scans of these lists.
    pub hash: u64,
    /// Inline up to 24 bytes (most SKUs and brands, some categories): no allocation.
    pub key: CompactString,
    pub series: DailyCounts,
}

/// A list longer than this keeps its entries' key hashes and orders apart ([`Indexed`]).
pub const INDEXED_FROM: usize = 8;

/// An entry of an [`Indexed`] list.
pub trait Entry {
    /// The hash of its key ([`key_hash`]).
    fn key_hash(&self) -> u64;
    /// Where it stands for the list's bound: a new key pushes out the first entry with the
    /// least.
    fn order(&self) -> i64;
}

impl Entry for KeyedSeries {
    #[inline]
    fn key_hash(&self) -> u64 {
        self.hash
    }
    /// The latest event time, `i64::MIN` for none (no series has an event at that time: event
    /// times are checked to be after 2000): the least recently active goes first.
    #[inline]
    fn order(&self) -> i64 {
        self.series.last().unwrap_or(i64::MIN)
    }
}

/// An identity value (an ECID): found by hash once a profile has many, never pushed out (the
/// identity limit is checked before one is linked).
impl Entry for String {
    #[inline]
    fn key_hash(&self) -> u64 {
        key_hash(self)
    }
    #[inline]
    fn order(&self) -> i64 {
        0
    }
}

impl Entry for Affinity {
    #[inline]
    fn key_hash(&self) -> u64 {
        key_hash(&self.key)
    }
    /// The rank as an integer in `f64::total_cmp`'s order: the weakest goes first.
    #[inline]
    fn order(&self) -> i64 {
        let bits = self.rank.to_bits() as i64;
        bits ^ ((((bits >> 63) as u64) >> 1) as i64)
    }
}

/// A profile's list of entries by key (per-category and per-product series, category and brand
/// affinities, bounded each by its own maximum; ECIDs, bounded by the identity limit and never
/// pushed out): the entries, and once there are more than [`INDEXED_FROM`] of them, each one's
/// key hash and order for the bound in a separate, dense block: the hashes together, then the
/// orders. Finding the event's key scans the hashes, 8 bytes an entry (half the cache lines of
/// the hash and order side by side), instead of the entry's 80 (a series) or 48 (an affinity),
/// or of an ECID's string in a heap block of its own; finding the entry a new key pushes out of
/// a full list scans the orders. A profile held in memory is usually cold by
/// its shopper's next event, and in the deep e2e `perf` profile the scan of the series for the
/// event's key was the hottest instruction of the worker (6 % of its samples, a wait on memory
/// at each entry). Short lists (most shoppers: one or two entries) have no index and allocate
/// nothing more. Reads go through `Deref` to the entries; every change goes through a method
/// that keeps the index ([`Indexed::edit`] for any change, making it again).
#[derive(Debug)]
pub struct Indexed<T> {
    entries: Vec<T>,
    /// Empty up to [`INDEXED_FROM`] entries; else twice as long as the entries' capacity: the
    /// key hashes (one per entry, in the same order, the first `entries.len()` of the first
    /// half), then the orders ([`Entry::order`]'s bits, the same way in the second half). A
    /// boxed slice, not a `Vec`: 16 bytes in the profile rather than 24, which keeps `Profile`
    /// within its allocation size class.
    index: Box<[u64]>,
}

/// Per-category and per-product series.
pub type KeyedList = Indexed<KeyedSeries>;
/// Category and brand affinities.
pub type AffinityList = Indexed<Affinity>;
/// A profile's ECIDs, oldest first. A shopper has a few; one who has had many (up to the
/// identity limit, 32 by default) would have each event's ECID compared with every one, each a
/// string of its own on the heap: found by hash, only the one that matches is read.
pub type IdList = Indexed<String>;

/// An index of `capacity` entries holding the first `n` of `from` (an index of any capacity,
/// `from.len() / 2`, with at least `n` entries; `n` at most `capacity`).
fn index_copy(from: &[u64], n: usize, capacity: usize) -> Box<[u64]> {
    let mut index = vec![0; 2 * capacity].into_boxed_slice();
    let old = from.len() / 2;
    index[..n].copy_from_slice(&from[..n]);
    index[capacity..capacity + n].copy_from_slice(&from[old..old + n]);
    index
}

/// The place of the first of `hashes` equal to `hash` from which `is` accepts the entry. Four
/// hashes are compared at a time (one test for the four, in SIMD registers where the compiler
/// can); a scan ends at the first match in most lists (a key's hash is seldom another's). Under
/// cachegrind's deep core step a plain `find` took 2 % fewer instructions and 10 % more
/// first-level data cache misses, and a hash table of the places (a probe of a slot or two
/// instead of the scan) 2 % more instructions for about the same misses (the sixtieth session's
/// benchmark notes).
#[inline(always)]
fn scan(hashes: &[u64], hash: u64, is: impl Fn(usize) -> bool) -> Option<usize> {
    let mut chunks = hashes.chunks_exact(4);
    for (c, chunk) in (&mut chunks).enumerate() {
        let mut hits = u32::from(chunk[0] == hash)
            | u32::from(chunk[1] == hash) << 1
            | u32::from(chunk[2] == hash) << 2
            | u32::from(chunk[3] == hash) << 3;
        while hits != 0 {
            let i = c * 4 + hits.trailing_zeros() as usize;
            if is(i) {
                return Some(i);
            }
            hits &= hits - 1;
        }
    }
    let base = hashes.len() - chunks.remainder().len();
    (base..hashes.len()).find(|&i| hashes[i] == hash && is(i))
}

/// The entries cloned (a `Vec`'s clone has its length as its capacity) and the index copied
/// into one of that capacity: a derived clone would keep the original's longer index.
impl<T: Clone> Clone for Indexed<T> {
    fn clone(&self) -> Self {
        let entries = self.entries.clone();
        let mut index = Box::default();
        if !self.index.is_empty() {
            index = index_copy(&self.index, entries.len(), entries.capacity());
        }
        Indexed { entries, index }
    }
}

impl<T> Default for Indexed<T> {
    fn default() -> Self {
        Indexed {
            entries: Vec::new(),
            index: Box::default(),
        }
    }
}

impl<T: PartialEq> PartialEq for Indexed<T> {
    fn eq(&self, other: &Indexed<T>) -> bool {
        self.entries == other.entries
    }
}

impl<T> std::ops::Deref for Indexed<T> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        &self.entries
    }
}

impl<'a, T> IntoIterator for &'a Indexed<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

impl<T: Entry> From<Vec<T>> for Indexed<T> {
    fn from(entries: Vec<T>) -> Indexed<T> {
        let mut list = Indexed {
            entries,
            index: Box::default(),
        };
        list.reindex();
        list
    }
}

impl<T: Entry> Indexed<T> {
    /// The entries' key hashes (none when the list has no index).
    #[inline(always)]
    fn hashes(&self) -> &[u64] {
        if self.index.is_empty() {
            &[]
        } else {
            &self.index[..self.entries.len()]
        }
    }

    /// The index's capacity: where its orders start (0 when the list has no index).
    #[inline(always)]
    fn index_capacity(&self) -> usize {
        self.index.len() / 2
    }

    /// The entries' orders, as bits (none when the list has no index).
    #[inline(always)]
    fn orders(&self) -> &[u64] {
        let capacity = self.index_capacity();
        &self.index[capacity..capacity + self.entries.len().min(capacity)]
    }

    /// The place of the first entry that `is` accepts, among those whose key hash is `hash()`
    /// when the list has an index (the hash is worked out only then).
    #[inline(always)]
    fn find(&self, hash: impl FnOnce() -> u64, is: impl Fn(&T) -> bool) -> Option<usize> {
        if self.index.is_empty() {
            self.entries.iter().position(is)
        } else {
            scan(self.hashes(), hash(), |i| is(&self.entries[i]))
        }
    }

    /// The first entry that `is` accepts, as [`Indexed::find`] finds it.
    #[inline(always)]
    fn find_entry(&self, hash: impl FnOnce() -> u64, is: impl Fn(&T) -> bool) -> Option<&T> {
        if self.index.is_empty() {
            self.entries.iter().find(|e| is(e))
        } else {
            self.find(hash, is).map(|i| &self.entries[i])
        }
    }

    /// The place of the first entry with the least order (a full list's next to go).
    pub(crate) fn first_least(&self) -> Option<usize> {
        if self.index.is_empty() {
            (0..self.entries.len()).min_by_key(|&i| self.entries[i].order())
        } else {
            let orders = self.orders();
            (0..orders.len()).min_by_key(|&i| orders[i] as i64)
        }
    }

    /// Adds `e` at the end, first pushing out the first entry with the least order when there
    /// are `max` already.
    fn push_bounded(&mut self, e: T, max: usize) {
        if self.entries.len() >= max {
            let out = self.first_least().expect("full list");
            if !self.index.is_empty() {
                let (last, capacity) = (self.entries.len() - 1, self.index_capacity());
                self.index[out] = self.index[last];
                self.index[capacity + out] = self.index[capacity + last];
            }
            self.entries.swap_remove(out);
        }
        room_for_one(&mut self.entries);
        self.entries.push(e);
        let n = self.entries.len();
        if self.index.is_empty() {
            if n > INDEXED_FROM {
                self.reindex();
            }
        } else {
            if self.index.len() < 2 * n {
                // The entries grew: the index to their capacity.
                self.index = index_copy(&self.index, n - 1, self.entries.capacity());
            }
            let e = &self.entries[n - 1];
            let (hash, order) = (e.key_hash(), e.order());
            let capacity = self.index_capacity();
            self.index[n - 1] = hash;
            self.index[capacity + n - 1] = order as u64;
        }
        debug_assert!(self.indexed_right(), "the index follows the entries");
    }

    /// The entries' capacity.
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// Changes entry `i` as `f` does (not its key).
    #[inline]
    fn update(&mut self, i: usize, f: impl FnOnce(&mut T)) {
        f(&mut self.entries[i]);
        if !self.index.is_empty() {
            let capacity = self.index_capacity();
            self.index[capacity + i] = self.entries[i].order() as u64;
        }
        debug_assert!(self.indexed_right(), "the index follows the entries");
    }

    /// [`Profile::prefetch`]'s hint for the first line a scan reads: the index's, else the
    /// entries'.
    #[inline]
    fn prefetch(&self) {
        if let Some(h) = self.index.first() {
            prefetch_line((h as *const u64).cast());
        } else if let Some(e) = self.entries.first() {
            prefetch_line((e as *const T).cast());
        }
    }

    /// Changes the entries as `f` does, then makes the index again.
    pub fn edit<R>(&mut self, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
        let r = f(&mut self.entries);
        self.reindex();
        r
    }

    fn reindex(&mut self) {
        let n = self.entries.len();
        if n <= INDEXED_FROM {
            if !self.index.is_empty() {
                // A list that shrank gives its index's allocation back.
                self.index = Box::default();
            }
            return;
        }
        if self.index.len() != 2 * self.entries.capacity() {
            self.index = vec![0; 2 * self.entries.capacity()].into_boxed_slice();
        }
        let capacity = self.entries.capacity();
        let (hashes, orders) = self.index.split_at_mut(capacity);
        for ((h, o), e) in hashes.iter_mut().zip(orders.iter_mut()).zip(&self.entries) {
            *h = e.key_hash();
            *o = e.order() as u64;
        }
        debug_assert!(self.indexed_right(), "the index follows the entries");
    }

    /// Whether the index matches the entries (tests and debug builds).
    pub(crate) fn indexed_right(&self) -> bool {
        if self.entries.len() > INDEXED_FROM {
            self.index.len() == 2 * self.entries.capacity()
                && self.entries.iter().enumerate().all(|(i, e)| {
                    self.hashes()[i] == e.key_hash() && self.orders()[i] == e.order() as u64
                })
        } else {
            self.index.is_empty()
        }
    }
}

impl<T: crate::footprint::Footprint> Indexed<T> {
    /// The entries' and the index's heap blocks.
    pub(crate) fn footprint(&self, m: &mut crate::footprint::Meter) {
        m.list_of(&self.entries);
        m.block(std::mem::size_of_val(&*self.index));
    }
}

impl IdList {
    /// Whether `value` is one of them.
    #[inline]
    pub fn holds(&self, value: &str) -> bool {
        self.find_entry(|| key_hash(value), |e| e == value)
            .is_some()
    }

    /// Adds `value` at the end.
    pub fn push(&mut self, value: String) {
        self.push_bounded(value, usize::MAX);
    }
}

impl KeyedList {
    /// The series of `kind` events about `key`, if kept.
    #[inline]
    pub fn get(&self, kind: EventType, key: &str) -> Option<&KeyedSeries> {
        self.get_hashed(kind, key, key_hash(key))
    }

    /// The same, `hash` being `key`'s ([`key_hash`]).
    #[inline]
    pub fn get_hashed(&self, kind: EventType, key: &str, hash: u64) -> Option<&KeyedSeries> {
        self.find_entry(
            || hash,
            |s| s.hash == hash && s.kind == kind && s.key == key,
        )
    }

    /// Counts an event of `kind` about `key` at `time`; a new key pushes out the least
    /// recently active series of a full list (the first of them).
    pub fn add(&mut self, kind: EventType, key: &str, time: i64, now: i64) {
        let hash = key_hash(key);
        let i = match self.find(
            || hash,
            |s| s.hash == hash && s.kind == kind && s.key == key,
        ) {
            Some(i) => i,
            None => {
                self.push_bounded(
                    KeyedSeries {
                        kind,
                        hash,
                        key: key.into(),
                        series: DailyCounts::default(),
                    },
                    MAX_KEYED_SERIES,
                );
                self.entries.len() - 1
            }
        };
        self.update(i, |s| s.series.add(time, now));
    }
}

impl AffinityList {
    /// The affinity for `key`, if kept.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&Affinity> {
        self.get_hashed(key, || key_hash(key))
    }

    /// The same, `hash` giving `key`'s ([`key_hash`]; asked only of a list with an index).
    #[inline]
    pub fn get_hashed(&self, key: &str, hash: impl FnOnce() -> u64) -> Option<&Affinity> {
        self.find_entry(hash, |a| same_key(&a.key, key))
    }

    /// Adds `weight` of interest in `key` at `time`; a new key pushes out the weakest affinity
    /// of a full list.
    pub fn add(&mut self, key: &str, weight: f64, time: i64) {
        match self.find(|| key_hash(key), |a| same_key(&a.key, key)) {
            Some(i) => self.update(i, |a| a.signal(weight, time)),
            None => self.push_bounded(Affinity::new(key, weight, time), MAX_AFFINITIES),
        }
    }

    /// The key with the highest affinity (the same at any time: all scores decay alike); of
    /// two alike, the first in byte order.
    pub fn top(&self) -> Option<&str> {
        let better = |i: usize, j: usize| {
            let (a, b) = (&self.entries[i], &self.entries[j]);
            a.rank
                .total_cmp(&b.rank)
                .then_with(|| b.key.cmp(&a.key))
                .is_gt()
        };
        let mut best: Option<usize> = None;
        if self.index.is_empty() {
            for i in 0..self.entries.len() {
                if best.is_none_or(|b| !better(b, i)) {
                    best = Some(i);
                }
            }
        } else {
            let orders = self.orders();
            for (i, &order) in orders.iter().enumerate() {
                // The rank is read only where the orders tie (an order is the rank's).
                let take = match best {
                    None => true,
                    Some(b) => match (order as i64).cmp(&(orders[b] as i64)) {
                        std::cmp::Ordering::Greater => true,
                        std::cmp::Ordering::Less => false,
                        std::cmp::Ordering::Equal => !better(b, i),
                    },
                };
                if take {
                    best = Some(i);
                }
            }
        }
        best.map(|i| self.entries[i].key.as_str())
    }
}

impl<T: Encode> Encode for Indexed<T> {
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        self.entries.encode(out);
    }
}

impl<T: Entry + read::Decode> read::Decode for Indexed<T> {
    #[inline]
    fn decode(r: &mut read::Reader<'_>) -> Result<Indexed<T>, read::Bad> {
        Vec::<T>::decode(r).map(Indexed::from)
    }
}

impl<T: Serialize> Serialize for Indexed<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.entries.serialize(s)
    }
}

impl<'de, T: Entry + Deserialize<'de>> Deserialize<'de> for Indexed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Indexed<T>, D::Error> {
        Vec::<T>::deserialize(d).map(Indexed::from)
    }
}

/// `a == b` for the short keys of these lists (categories, brands, SKUs): the length and the
/// last byte first, where most keys of a list differ, so a call to `memcmp` is made only for
/// the likely match (string compares of affinity keys were 7 % of the deep bench's samples).
#[inline]
pub(crate) fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.last() == b.last() && a == b
}

pub(crate) fn key_hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

/// A decayed interest score in a category or brand: `score` as of time `at`.
#[derive(Debug, Clone, PartialEq)]
pub struct Affinity {
    /// Inline up to 24 bytes.
    pub key: CompactString,
    pub score: f64,
    pub at: i64,
    /// `log2(score) + at / half-life`: every score decays at the same rate, so this orders the
    /// affinities as their decayed values do at any time, without computing a power.
    pub rank: f64,
}

impl Affinity {
    fn new(key: &str, score: f64, at: i64) -> Affinity {
        let mut a = Affinity {
            key: key.into(),
            score,
            at,
            rank: 0.0,
        };
        a.rerank();
        a
    }

    pub(crate) fn rerank(&mut self) {
        self.rank = affinity_rank(self.score, self.at);
    }

    /// Adds `weight` of interest at `time`.
    fn signal(&mut self, weight: f64, time: i64) {
        if time >= self.at {
            self.score = decay(self.score, time - self.at) + weight;
            self.at = time;
        } else {
            // A late signal counts as much as it has decayed since.
            self.score += decay(weight, self.at - time);
        }
        self.rerank();
    }

    /// The score decayed to `now`.
    pub fn at(&self, now: i64) -> f64 {
        decay(self.score, now - self.at)
    }
}

/// An affinity's [`Affinity::rank`].
fn affinity_rank(score: f64, at: i64) -> f64 {
    score.log2() + at as f64 / AFFINITY_HALF_LIFE_MS as f64
}

fn decay(score: f64, elapsed_ms: i64) -> f64 {
    score * (-(elapsed_ms as f64) / AFFINITY_HALF_LIFE_MS as f64).exp2()
}

/// How much an event says about interest in what it is about.
pub(crate) fn affinity_weight(kind: EventType) -> f64 {
    match kind {
        EventType::ProductPageView => 1.0,
        EventType::AddToCart | EventType::AddToRequisitionList => 3.0,
        EventType::CompleteCheckout | EventType::OrderPlaced => 5.0,
        _ => 0.0,
    }
}

/// Identities linked to the shopper (see [`crate::identity`]); bounded by the configured limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Identities {
    /// The kind of identity the profile key is.
    pub kind: KeyKind,
    pub ecids: IdList,
    pub customer_id: Option<String>,
    pub emails: Vec<String>,
    /// A producer's own shopper key, when that is the profile key.
    pub key: Option<String>,
}

/// The shopper's current cart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CartState {
    pub id: Option<String>,
    pub lines: Vec<Line>,
    /// Last change, ms.
    pub updated_at: Option<i64>,
}

impl CartState {
    pub fn value(&self) -> f64 {
        crate::event::total(self.lines.iter().map(Line::total))
    }

    pub fn quantity(&self) -> f64 {
        crate::event::total(self.lines.iter().map(|l| l.quantity))
    }
}

/// An order remembered to count it once: (id, time, value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentOrder {
    pub id: String,
    pub at: i64,
    pub value: f64,
}

/// Order history aggregates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderStats {
    pub count: u64,
    /// Gross value of orders placed.
    pub revenue: f64,
    pub first_at: Option<i64>,
    pub last_at: Option<i64>,
    pub cancelled: u64,
    pub cancelled_value: f64,
    pub returns: u64,
    pub refunded: f64,
    /// Most recent orders (bounded), oldest first.
    pub recent: Vec<RecentOrder>,
    /// Orders over time, each order id once (value: order total).
    pub series: Series,
}

crate::sparse::empty_default!(OrderStats);
crate::sparse::empty_default!(Attributes);

impl OrderStats {
    /// Copies what rules read (the series only with `series`), reusing `self`'s allocations;
    /// the dates and the recent orders are left as they were.
    pub fn copy_rule_inputs(&mut self, from: &OrderStats, series: bool) {
        // Every field named: a new one must be sorted into "read by rules" or not.
        let OrderStats {
            count,
            revenue,
            first_at: _,
            last_at: _,
            cancelled,
            cancelled_value,
            returns,
            refunded,
            recent: _,
            series: from_series,
        } = from;
        self.count = *count;
        self.revenue = *revenue;
        self.cancelled = *cancelled;
        self.cancelled_value = *cancelled_value;
        self.returns = *returns;
        self.refunded = *refunded;
        if series {
            self.series.clone_from(from_series);
        }
    }

    /// Lifetime value: revenue less cancellations and refunds.
    pub fn lifetime_value(&self) -> f64 {
        self.revenue - self.cancelled_value - self.refunded
    }

    pub fn average_order_value(&self) -> Option<f64> {
        (self.count > 0).then(|| self.revenue / self.count as f64)
    }
}

/// A segment the profile is in, and since when (stream time, ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    /// Inline up to 24 bytes (most segment ids): no allocation to decode, copy or drop.
    pub segment: CompactString,
    pub since: i64,
    /// Where the segment sits in the definitions that last evaluated the profile in memory
    /// (not stored).
    #[serde(skip)]
    pub place: PlaceHint,
}

/// A segment's place in a set of definitions, as the evaluating core found it: `generation`
/// names that core and its definitions (0: none), so that the next evaluation by them finds a
/// membership's segment without reading its id (a deep profile's ids are cold in the CPU's
/// caches: hashing them was 5 % of the deep e2e profile). Equal to any other: it says nothing
/// about the profile.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlaceHint {
    pub generation: u64,
    pub place: usize,
}

impl PartialEq for PlaceHint {
    fn eq(&self, _: &PlaceHint) -> bool {
        true
    }
}

/// One audience change, kept for lookups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentChange {
    /// Inline up to 24 bytes, as the cause always is.
    pub segment: CompactString,
    pub entered: bool,
    pub at: i64,
    /// `event`, `timer`, `merge`, `definition-change`.
    pub cause: CompactString,
}

/// The highest position applied from one sending partition of the repartition protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What a journey remembers about one shopper: re-entry wait and causes already triggered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JourneyState {
    /// Inline up to 24 bytes.
    pub journey: CompactString,
    /// Last trigger, stream time ms.
    pub last_at: i64,
    /// Hashes of the latest causes that triggered it (bounded).
    pub causes: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub identities: Identities,
    /// Latest known value of each attribute (profile events and account contexts). Out of
    /// line, and not allocated while empty (most shoppers browse anonymously).
    pub attributes: Sparse<Attributes>,
    /// Per event type: (type, counts and sums over time). Only types seen are present.
    pub counters: Vec<(EventType, Series)>,
    pub cart: CartState,
    /// Out of line, and not allocated while the shopper has no order.
    pub orders: Sparse<OrderStats>,
    /// These and the store codes and currency below: inline up to 24 bytes (all but the
    /// longest), encoded as strings are.
    pub last_device: Option<CompactString>,
    pub last_channel: Option<CompactString>,
    pub first_seen: Option<i64>,
    /// Latest event time seen: the profile's own clock for windows.
    pub last_seen: Option<i64>,
    pub events_total: u64,
    /// Current segment memberships, sorted by segment id.
    pub segments: Vec<Membership>,
    /// Per event type and category (bounded).
    pub by_category: KeyedList,
    /// Per event type and product SKU (bounded).
    pub by_product: KeyedList,
    /// Decayed interest per category and per brand (bounded).
    pub category_affinity: AffinityList,
    pub brand_affinity: AffinityList,
    /// The latest products viewed, latest last (bounded), for browse-abandonment journeys. A
    /// ring: when the list is full, the oldest leaves from the front without moving the others
    /// (a `Vec` moved its ten 168-byte lines at each new product viewed). Stored as a list.
    pub recent_products: VecDeque<Line>,
    /// Journeys triggered for the shopper, sorted by journey id.
    pub journeys: Vec<JourneyState>,
    /// When the passing of time alone may next change a membership (stream time, ms). The timer
    /// index in the store holds exactly this entry for the profile.
    pub next_timer: Option<i64>,
    /// The latest audience changes, latest last (bounded).
    pub recent_changes: Vec<RecentChange>,
    /// Repartition messages applied, per sending partition (duplicates are skipped).
    pub hops: Vec<Hop>,
    /// Hashed input positions of the latest events that came through the repartition topic: a
    /// sender's crash can send one again by another path (through an alias made since).
    pub forwarded: Vec<u64>,
    /// Hashes of the latest messages applied (event id and bytes): an exact repeat of one, a
    /// producer's retry, is applied once. Version 4 added it (last, so version 3 state reads as
    /// version 4 with none).
    pub seen: Vec<u64>,
    /// The store, store view and currency of the latest events that named them. Version 4
    /// added them, last, with `seen`.
    pub store_code: Option<CompactString>,
    pub store_view_code: Option<CompactString>,
    pub currency: Option<CompactString>,
    /// Each segment's next change at the last evaluation: in memory only (not in the state,
    /// not in the HTTP API's JSON), so that an event finds the next timer without walking the
    /// rules it left alone. A decoded profile has none until it is evaluated.
    #[serde(skip)]
    pub known_nexts: crate::segments::KnownNexts,
}

// The profile's parts in version 6's layout, written and read by hand (layout/write.rs,
// layout/read.rs):
// every field named, in the order the derives write them (a field added is a compile error
// here until it is listed; the tests compare the bytes with postcard's).
state_fields!(Profile {
    identities,
    attributes,
    counters,
    cart,
    orders,
    last_device,
    last_channel,
    first_seen,
    last_seen,
    events_total,
    segments,
    by_category,
    by_product,
    category_affinity,
    brand_affinity,
    recent_products,
    journeys,
    next_timer,
    recent_changes,
    hops,
    forwarded,
    seen,
    store_code,
    store_view_code,
    currency;
    known_nexts
});

state_fields!(Identities {
    kind,
    ecids,
    customer_id,
    emails,
    key
});

state_fields!(CartState {
    id,
    lines,
    updated_at
});

state_fields!(OrderStats {
    count,
    revenue,
    first_at,
    last_at,
    cancelled,
    cancelled_value,
    returns,
    refunded,
    recent,
    series
});

state_fields!(RecentOrder { id, at, value });

// Its place is not stored.
state_fields!(#[inline] Membership { segment, since; place });

state_fields!(
    #[inline]
    RecentChange {
        segment,
        entered,
        at,
        cause
    }
);

state_fields!(Hop {
    topic,
    partition,
    offset
});

state_fields!(JourneyState {
    journey,
    last_at,
    causes
});

// Version 6 leaves out the key's hash (layout.rs).
state_fields!(#[inline] KeyedSeries { kind, key, series; hash = |s| key_hash(&s.key) });

// Version 6 leaves out the rank (layout.rs); the score is the eight bytes.
state_fields!(#[inline] Affinity { key, score, at; rank = |a| affinity_rank(a.score, a.at) });

fn merge_opt<T: Clone>(into: &mut Option<T>, from: &Option<T>) {
    if from.is_some() {
        into.clone_from(from);
    }
}

/// Up to this many keys named by rules, a list's entries are compared with each of them (more:
/// a binary search of the sorted keys, in `RuleReads::reads_keyed`), and the copies of what rules
/// read filter an indexed list through its hashes (more: through its entries).
const FEW_KEYS: usize = 16;

/// Which parts of a profile the rules in force read, beyond the attributes and aggregates
/// (always copied): [`Profile::copy_rule_inputs`] copies only those.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleReads {
    /// Event types whose counters some rule reads (windows, `since`, sequences), sorted.
    pub counters: Vec<EventType>,
    /// `count(order, …)`, `sum(order, …)`, `since(order)`.
    pub order_series: bool,
    /// The per-category and per-product series some rule reads, by (event type, key), sorted:
    /// rules name both (`count(productPageView in category "x", 7d)`), so a copy needs only
    /// those few of a profile's up to [`MAX_KEYED_SERIES`] series.
    pub by_category: Vec<(EventType, String)>,
    pub by_product: Vec<(EventType, String)>,
    /// Every category (brand) affinity: `top_category()` (`top_brand()`) compares them all.
    pub category_affinity: bool,
    pub brand_affinity: bool,
    /// The category (brand) affinities rules name, sorted: `affinity("x")`
    /// (`brand_affinity("x")`) reads one of a profile's up to [`MAX_AFFINITIES`].
    pub category_affinity_keys: Vec<String>,
    pub brand_affinity_keys: Vec<String>,
}

impl RuleReads {
    /// Sorts and deduplicates the lists (after the rules added what they read).
    pub fn normalise(&mut self) {
        self.counters.sort();
        self.counters.dedup();
        for keys in [&mut self.by_category, &mut self.by_product] {
            keys.sort();
            keys.dedup();
        }
        for keys in [
            &mut self.category_affinity_keys,
            &mut self.brand_affinity_keys,
        ] {
            keys.sort();
            keys.dedup();
        }
    }

    /// Runs before every event for each of a profile's up to 2 × [`MAX_KEYED_SERIES`] series:
    /// rules name few keys, and a key of another length is told apart without comparing bytes
    /// (the binary search compared bytes at every step: 3 % of the deep e2e profile).
    #[inline]
    pub(crate) fn reads_keyed(keys: &[(EventType, String)], s: &KeyedSeries) -> bool {
        Self::reads_key(keys, s.kind, &s.key)
    }

    /// Whether `keys` (sorted, as [`RuleReads`] keeps them) names the series of `kind` events
    /// about `key`.
    #[inline]
    pub(crate) fn reads_key(keys: &[(EventType, String)], kind: EventType, key: &str) -> bool {
        if keys.len() <= FEW_KEYS {
            return keys
                .iter()
                .any(|(k, name)| *k == kind && same_key(name, key));
        }
        keys.binary_search_by(|(k, name)| (*k, name.as_str()).cmp(&(kind, key)))
            .is_ok()
    }
}

/// Makes `to` the series of `from` that `keys` names, in order, reusing `to`'s allocations.
/// With `from` indexed and few keys, an entry is read only when its hash is one of the keys'.
pub(crate) fn copy_keyed(
    to: &mut Vec<KeyedSeries>,
    from: &KeyedList,
    keys: &[(EventType, String)],
) {
    let mut kept = 0;
    let mut copy = |f: &KeyedSeries| {
        match to.get_mut(kept) {
            Some(t) => {
                t.kind = f.kind;
                t.hash = f.hash;
                t.key.clone_from(&f.key);
                t.series.clone_from(&f.series);
            }
            None => to.push(f.clone()),
        }
        kept += 1;
    };
    if from.index.is_empty() || keys.len() > FEW_KEYS {
        if !keys.is_empty() {
            for f in from.iter().filter(|s| RuleReads::reads_keyed(keys, s)) {
                copy(f);
            }
        }
    } else {
        let hashes: SmallVec<[u64; FEW_KEYS]> = keys.iter().map(|(_, k)| key_hash(k)).collect();
        for (i, h) in from.hashes().iter().enumerate() {
            let f = &from.entries[i];
            if hashes.contains(h) && RuleReads::reads_keyed(keys, f) {
                copy(f);
            }
        }
    }
    to.truncate(kept);
}

/// Makes `to` the affinities of `from` that rules read: all of them, or those `keys` names
/// (in `from`'s order), reusing `to`'s allocations.
pub(crate) fn copy_affinities(
    to: &mut Vec<Affinity>,
    from: &AffinityList,
    all: bool,
    keys: &[String],
) {
    let copy = |t: &mut Affinity, f: &Affinity| {
        t.key.clone_from(&f.key);
        t.score = f.score;
        t.at = f.at;
        t.rank = f.rank;
    };
    if all {
        return copy_vec(to, from, copy, Clone::clone);
    }
    let mut kept = 0;
    let mut keep = |f: &Affinity| {
        match to.get_mut(kept) {
            Some(t) => copy(t, f),
            None => to.push(f.clone()),
        }
        kept += 1;
    };
    let named = |a: &Affinity| keys.iter().any(|k| same_key(k, &a.key));
    if from.index.is_empty() || keys.len() > FEW_KEYS {
        for f in from.iter().filter(|a| named(a)) {
            keep(f);
        }
    } else {
        // With an index and few keys, an entry is read only when its hash is one of theirs.
        let hashes: SmallVec<[u64; FEW_KEYS]> = keys.iter().map(|k| key_hash(k)).collect();
        for (i, h) in from.hashes().iter().enumerate() {
            let f = &from.entries[i];
            if hashes.contains(h) && named(f) {
                keep(f);
            }
        }
    }
    to.truncate(kept);
}

/// Makes `to` equal to `from`, reusing `to`'s elements' allocations through `copy`.
fn copy_vec<T>(to: &mut Vec<T>, from: &[T], copy: impl Fn(&mut T, &T), new: impl Fn(&T) -> T) {
    to.truncate(from.len());
    let kept = to.len();
    for (t, f) in to.iter_mut().zip(from) {
        copy(t, f);
    }
    to.extend(from[kept..].iter().map(new));
}

impl Profile {
    /// Asks the CPU to bring the `Profile` at `p` — its own bytes, not its lists' — into its
    /// caches. For the commit, which encodes thousands of profiles the batch changed, most of
    /// them cold by then: the hottest instructions of the encoding in the wide e2e `perf`
    /// profile were loads of the struct's fields. Called eight profiles ahead of the one being
    /// encoded, from the address the profile had when it was changed (the lists' first lines
    /// too, [`Self::prefetch`], would need the profile looked up again: tried, the lookups cost
    /// about what the prefetches saved). A hint only: `p` is never dereferenced (any address
    /// will do).
    #[inline]
    pub fn prefetch_struct(p: *const Profile) {
        let base = p.cast::<u8>();
        let size = std::mem::size_of::<Profile>();
        for offset in (0..size).step_by(64) {
            prefetch_line(base.wrapping_add(offset));
        }
        // The struct need not start on a line: its last byte's line too.
        prefetch_line(base.wrapping_add(size - 1));
    }

    /// Asks the CPU to bring the lists an event reads into its caches, all at once, ahead of
    /// the event. A profile held in memory is usually cold by its shopper's next event (the
    /// deep bench's 4,000 profiles take about 90 MiB), and applying an event walks a dozen of
    /// its heap blocks one after another, each a wait on memory when first touched (in the deep
    /// `perf` profile, the hottest instructions of recording the undo, adding to the daily
    /// counts and the repeat check were loads of the profile's lists). Called before the event
    /// is decoded, the loads overlap the decoding and each other (deep 1.5 M-event passes, four
    /// each, alternated: 7.44-7.95 µs of worker CPU per event or timer fired against 7.79-8.74
    /// without it; a small gain, within the runs' spread). A hint only: nothing is read, and an
    /// address is never dereferenced. The first line of each list only: the first 512 bytes of
    /// each did no better. For the lists searched by key (series, affinities, ECIDs), the first
    /// line a search reads: their index's once they have one.
    #[inline]
    pub fn prefetch(&self) {
        fn first<T>(list: &[T]) {
            if !list.is_empty() {
                prefetch_line(list.as_ptr().cast());
            }
        }
        first(&self.seen);
        first(&self.counters);
        self.by_category.prefetch();
        self.by_product.prefetch();
        self.category_affinity.prefetch();
        self.brand_affinity.prefetch();
        first(self.recent_products.as_slices().0);
        first(&self.segments);
        first(&self.recent_changes);
        first(&self.cart.lines);
        self.identities.ecids.prefetch();
        self.known_nexts.prefetch();
    }

    /// Copies into `self` everything a segment rule reads from `from`, reusing `self`'s
    /// allocations where the shapes match (a list longer than before still allocates, a shorter
    /// one frees): explanations compare the profile just before a cause with the profile after
    /// it; for an event, this copies the profile after it and [`crate::undo::Undo::revert`]
    /// puts back what the event changed. The other fields of `self` are left as they were. `segments::tests` checks that every
    /// attribute and function evaluates the same on the copy.
    pub fn copy_rule_inputs(&mut self, from: &Profile, reads: &RuleReads) {
        // Every field named: a new one must be sorted into "read by rules" or not.
        let Profile {
            identities,
            attributes,
            counters,
            cart,
            orders,
            last_device,
            last_channel,
            first_seen: _,
            last_seen,
            events_total,
            segments: _,
            by_category,
            by_product,
            category_affinity,
            brand_affinity,
            recent_products: _,
            journeys: _,
            next_timer: _,
            recent_changes: _,
            hops: _,
            forwarded: _,
            seen: _,
            store_code: _,
            store_view_code: _,
            currency: _,
            known_nexts: _,
        } = from;
        // `identity.known`: a customer id or an e-mail.
        self.identities
            .customer_id
            .clone_from(&identities.customer_id);
        self.identities.emails.clone_from(&identities.emails);
        let Attributes {
            first_name: _,
            last_name: _,
            email: _,
            phone: _,
            gender,
            birth_date: _,
            country,
            city,
            loyalty_tier,
            loyalty_status,
            loyalty_points,
            customer_group,
            consent_email,
            consent_sms,
        } = &**attributes;
        let a = &mut *self.attributes;
        a.gender.clone_from(gender);
        a.country.clone_from(country);
        a.city.clone_from(city);
        a.loyalty_tier.clone_from(loyalty_tier);
        a.loyalty_status.clone_from(loyalty_status);
        a.loyalty_points = *loyalty_points;
        a.customer_group.clone_from(customer_group);
        a.consent_email = *consent_email;
        a.consent_sms = *consent_sms;
        // The counters rules read, in the same (sorted) order.
        let mut kept = 0;
        for (kind, series) in counters
            .iter()
            .filter(|(k, _)| reads.counters.binary_search(k).is_ok())
        {
            match self.counters.get_mut(kept) {
                Some(slot) => {
                    slot.0 = *kind;
                    slot.1.clone_from(series);
                }
                None => self.counters.push((*kind, series.clone())),
            }
            kept += 1;
        }
        self.counters.truncate(kept);
        self.cart.lines.clone_from(&cart.lines);
        self.orders.copy_rule_inputs(orders, reads.order_series);
        self.last_device.clone_from(last_device);
        self.last_channel.clone_from(last_channel);
        self.events_total = *events_total;
        self.last_seen = *last_seen;
        // Only the series rules name; what no rule reads is left empty.
        self.by_category
            .edit(|to| copy_keyed(to, by_category, &reads.by_category));
        self.by_product
            .edit(|to| copy_keyed(to, by_product, &reads.by_product));
        self.category_affinity.edit(|to| {
            copy_affinities(
                to,
                category_affinity,
                reads.category_affinity,
                &reads.category_affinity_keys,
            )
        });
        self.brand_affinity.edit(|to| {
            copy_affinities(
                to,
                brand_affinity,
                reads.brand_affinity,
                &reads.brand_affinity_keys,
            )
        });
    }

    /// Applies one event. Pure: the same profile and event always give the same result.
    pub fn apply(&mut self, ev: &Event) {
        self.events_total += 1;
        self.first_seen = Some(self.first_seen.map_or(ev.time, |t| t.min(ev.time)));
        let now = self.last_seen.map_or(ev.time, |t| t.max(ev.time));
        self.last_seen = Some(now);
        for (mine, theirs) in [
            (&mut self.last_device, &ev.device),
            (&mut self.last_channel, &ev.channel),
            (&mut self.store_code, &ev.store_code),
            (&mut self.store_view_code, &ev.store_view_code),
            (&mut self.currency, &ev.currency),
        ] {
            if let Some(theirs) = theirs {
                if mine.as_deref() != Some(theirs.as_str()) {
                    *mine = Some(theirs.as_str().into());
                }
            }
        }
        self.series_mut(ev.kind).add(ev.time, ev.value, now);
        if let Some(a) = &ev.attributes {
            self.merge_attributes(a);
        }
        self.apply_cart(ev);
        self.apply_orders(ev, now);
        self.apply_keyed(ev, now);
        if ev.kind == EventType::ProductPageView {
            // Latest last, each product once: one viewed again moves to the end, a new one
            // pushes the oldest out when the list is full; the entry that moves to the end
            // takes the line's values in the allocations it has.
            let list = &mut self.recent_products;
            for line in &ev.lines {
                // Searched in the ring's two pieces, each a slice (its iterator's chained
                // walk cost more than the moves saved).
                let (older, newer) = list.as_slices();
                let viewed = |l: &Line| same_key(&l.sku, &line.sku);
                let at = match older.iter().position(viewed) {
                    Some(i) => Some(i),
                    None => newer.iter().position(viewed).map(|i| older.len() + i),
                };
                let moved = match at {
                    Some(i) if i + 1 == list.len() => {
                        list.back_mut().expect("found").copy_from(line);
                        continue;
                    }
                    Some(i) => list.remove(i),
                    None if list.len() >= RECENT_PRODUCTS => list.pop_front(),
                    None => {
                        room_for_one_in_ring(list);
                        list.push_back(line.clone());
                        continue;
                    }
                };
                let mut entry = moved.expect("in the list");
                entry.copy_from(line);
                list.push_back(entry);
            }
        }
    }

    /// Takes in the history of another profile of the same shopper (an anonymous browser's
    /// profile when the shopper signs in). Counters, windows, per-key series and affinities add
    /// up; an order both had seen counts once; the later cart wins; known attributes are kept
    /// and gaps filled. Memberships are the survivor's until the caller re-evaluates, and
    /// identities beyond `limit` are dropped.
    pub fn merge(&mut self, other: Profile, limit: usize) {
        // What the rules read changes: the next changes are worked out again.
        self.known_nexts = Default::default();
        let now = self.last_seen.max(other.last_seen).unwrap_or(0);
        for id in crate::identity::all_ids(&other) {
            let _ = crate::identity::link(self, &id, limit);
        }
        // Empty attributes change nothing: left unallocated.
        if other.attributes.is_held() {
            self.fill_attributes_from(&other.attributes);
        }
        for (kind, series) in &other.counters {
            self.series_mut(*kind).merge(series, now);
        }
        if other.cart.updated_at > self.cart.updated_at {
            self.cart = other.cart.clone();
        }
        self.merge_orders(other.orders.into_inner(), now);
        if other.last_seen > self.last_seen {
            if other.last_device.is_some() {
                self.last_device = other.last_device;
            }
            if other.last_channel.is_some() {
                self.last_channel = other.last_channel;
            }
        }
        self.first_seen = match (self.first_seen, other.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_seen = self.last_seen.max(other.last_seen);
        self.events_total += other.events_total;
        for (mine, theirs) in [
            (&mut self.by_category, other.by_category),
            (&mut self.by_product, other.by_product),
        ] {
            mine.edit(|mine| {
                for k in theirs.entries {
                    match mine
                        .iter_mut()
                        .find(|m| m.hash == k.hash && m.kind == k.kind && m.key == k.key)
                    {
                        Some(m) => m.series.merge(&k.series, now),
                        None => {
                            if mine.len() >= MAX_KEYED_SERIES {
                                let stalest = (0..mine.len())
                                    .min_by_key(|&i| mine[i].series.last())
                                    .expect("full list");
                                if mine[stalest].series.last() >= k.series.last() {
                                    continue;
                                }
                                mine.swap_remove(stalest);
                            }
                            mine.push(k);
                        }
                    }
                }
            });
        }
        for (mine, theirs) in [
            (&mut self.category_affinity, other.category_affinity),
            (&mut self.brand_affinity, other.brand_affinity),
        ] {
            for a in theirs.entries {
                mine.add(&a.key, a.score, a.at);
            }
        }
        for line in other.recent_products.into_iter().rev() {
            if self.recent_products.len() < RECENT_PRODUCTS
                && !self.recent_products.iter().any(|l| l.sku == line.sku)
            {
                self.recent_products.push_front(line);
            }
        }
        for j in other.journeys {
            match self
                .journeys
                .binary_search_by(|m| m.journey.as_str().cmp(&j.journey))
            {
                Ok(i) => {
                    let m = &mut self.journeys[i];
                    m.last_at = m.last_at.max(j.last_at);
                    for c in j.causes {
                        if !m.causes.contains(&c) {
                            if m.causes.len() >= JOURNEY_CAUSES {
                                m.causes.remove(0);
                            }
                            m.causes.push(c);
                        }
                    }
                }
                Err(i) => self.journeys.insert(i, j),
            }
        }
        for h in other.hops {
            self.record_hop(&h.topic, h.partition, h.offset);
        }
        for f in other.forwarded {
            self.first_forward(f);
        }
        for m in other.seen {
            self.first_message(m);
        }
        // The other side's store and currency only where this one has none.
        for (mine, theirs) in [
            (&mut self.store_code, other.store_code),
            (&mut self.store_view_code, other.store_view_code),
            (&mut self.currency, other.currency),
        ] {
            if mine.is_none() {
                *mine = theirs;
            }
        }
    }

    /// The attributes of a profile merged into this one: each kept where this one has none.
    fn fill_attributes_from(&mut self, a: &Attributes) {
        let t = &mut *self.attributes;
        for (mine, theirs) in [
            (&mut t.first_name, &a.first_name),
            (&mut t.last_name, &a.last_name),
            (&mut t.email, &a.email),
            (&mut t.phone, &a.phone),
            (&mut t.gender, &a.gender),
            (&mut t.birth_date, &a.birth_date),
            (&mut t.country, &a.country),
            (&mut t.city, &a.city),
            (&mut t.loyalty_tier, &a.loyalty_tier),
            (&mut t.loyalty_status, &a.loyalty_status),
            (&mut t.customer_group, &a.customer_group),
        ] {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        }
        for (mine, theirs) in [
            (&mut t.consent_email, &a.consent_email),
            (&mut t.consent_sms, &a.consent_sms),
        ] {
            if mine.is_none() {
                *mine = *theirs;
            }
        }
        if t.loyalty_points.is_none() {
            t.loyalty_points = a.loyalty_points;
        }
    }

    /// Whether a message (its event id and bytes hashed, see [`message_hash`]) is new to this
    /// profile; records it if so.
    pub fn first_message(&mut self, hash: u64) -> bool {
        if self.seen.contains(&hash) {
            return false;
        }
        if self.seen.len() >= RECENT_MESSAGES {
            self.seen.remove(0);
        }
        room_for_one(&mut self.seen);
        self.seen.push(hash);
        true
    }

    /// Whether a forwarded event (its origin hashed) is new to this profile; records it if so.
    pub fn first_forward(&mut self, origin: u64) -> bool {
        if self.forwarded.contains(&origin) {
            return false;
        }
        if self.forwarded.len() >= RECENT_FORWARDED {
            self.forwarded.remove(0);
        }
        room_for_one(&mut self.forwarded);
        self.forwarded.push(origin);
        true
    }

    fn merge_orders(&mut self, mut other: OrderStats, now: i64) {
        if !self.orders.is_held() && other == OrderStats::default() {
            return; // both empty: left unallocated
        }
        // An order both profiles counted (a guest checkout on the browser's profile, and the
        // back office's orderPlaced on the e-mail's) is taken out of the other's totals first.
        let shared: Vec<RecentOrder> = other
            .recent
            .iter()
            .filter(|r| self.orders.recent.iter().any(|m| m.id == r.id))
            .cloned()
            .collect();
        for r in &shared {
            other.count = other.count.saturating_sub(1);
            other.revenue -= r.value;
            other.series.remove(r.at, r.value);
        }
        let o = &mut *self.orders;
        o.count += other.count;
        o.revenue += other.revenue;
        o.cancelled += other.cancelled;
        o.cancelled_value += other.cancelled_value;
        o.returns += other.returns;
        o.refunded += other.refunded;
        o.first_at = match (o.first_at, other.first_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        o.last_at = o.last_at.max(other.last_at);
        o.series.merge(&other.series, now);
        for r in other.recent {
            if !o.recent.iter().any(|m| m.id == r.id) {
                o.recent.push(r);
            }
        }
        o.recent.sort_by_key(|r| r.at);
        let drop = o.recent.len().saturating_sub(RECENT_ORDERS);
        o.recent.drain(..drop);
    }

    /// Whether a repartition message sent from `partition` of `topic` at `offset` is new for this
    /// profile; records it if so. Senders' messages to one profile arrive in their order, and
    /// a crashed sender sends again what it sent after its last commit: those are not new.
    pub fn record_hop(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        match self
            .hops
            .iter_mut()
            .find(|h| h.partition == partition && h.topic == topic)
        {
            Some(h) if h.offset >= offset => false,
            Some(h) => {
                h.offset = offset;
                true
            }
            None => {
                room_for_one(&mut self.hops);
                self.hops.push(Hop {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                });
                true
            }
        }
    }

    /// Per-category and per-product counts, and affinities, from the event's lines.
    fn apply_keyed(&mut self, ev: &Event, now: i64) {
        let weight = affinity_weight(ev.kind);
        // Per-key counts are for product interest; order lines feed affinities and the order
        // aggregates (and would churn the bounded lists: orders have dozens of lines).
        let counted = KEYED_EVENTS.contains(&ev.kind);
        let mut seen_categories: SmallVec<[&str; 4]> = SmallVec::new();
        let mut seen_brands: SmallVec<[&str; 4]> = SmallVec::new();
        for line in &ev.lines {
            if counted {
                self.by_product.add(ev.kind, &line.sku, ev.time, now);
            }
            if let Some(c) = line
                .category
                .as_deref()
                .filter(|c| !seen_categories.contains(c))
            {
                seen_categories.push(c);
                if counted {
                    self.by_category.add(ev.kind, c, ev.time, now);
                }
                if weight > 0.0 {
                    self.category_affinity.add(c, weight, ev.time);
                }
            }
            if let Some(b) = line.brand.as_deref().filter(|b| !seen_brands.contains(b)) {
                seen_brands.push(b);
                if weight > 0.0 {
                    self.brand_affinity.add(b, weight, ev.time);
                }
            }
        }
    }

    /// Counts of `kind` events about `key` (a category or a SKU) in the last `window` ms.
    #[cfg(test)]
    pub fn keyed_window(
        list: &KeyedList,
        kind: EventType,
        key: &str,
        window: i64,
        now: i64,
    ) -> u64 {
        list.get(kind, key)
            .map_or(0, |k| k.series.query(window, now))
    }

    fn merge_attributes(&mut self, a: &Attributes) {
        let t = &mut *self.attributes;
        merge_opt(&mut t.first_name, &a.first_name);
        merge_opt(&mut t.last_name, &a.last_name);
        merge_opt(&mut t.email, &a.email);
        merge_opt(&mut t.phone, &a.phone);
        merge_opt(&mut t.gender, &a.gender);
        merge_opt(&mut t.birth_date, &a.birth_date);
        merge_opt(&mut t.country, &a.country);
        merge_opt(&mut t.city, &a.city);
        merge_opt(&mut t.loyalty_tier, &a.loyalty_tier);
        merge_opt(&mut t.loyalty_status, &a.loyalty_status);
        merge_opt(&mut t.loyalty_points, &a.loyalty_points);
        merge_opt(&mut t.customer_group, &a.customer_group);
        merge_opt(&mut t.consent_email, &a.consent_email);
        merge_opt(&mut t.consent_sms, &a.consent_sms);
    }

    fn apply_cart(&mut self, ev: &Event) {
        if !CART_EVENTS.contains(&ev.kind) {
            return;
        }
        let cart = &mut self.cart;
        if matches!(
            ev.kind,
            EventType::CompleteCheckout | EventType::OrderPlaced
        ) {
            *cart = CartState {
                id: None,
                lines: Vec::new(),
                updated_at: Some(ev.time),
            };
            return;
        }
        // Events older than the cart's last change do not roll it back.
        if cart.updated_at.is_some_and(|t| t > ev.time) {
            return;
        }
        cart.updated_at = Some(ev.time);
        if let Some(Cart { id, lines }) = &ev.cart {
            // The storefront sent the whole cart: it is the truth.
            cart.id.clone_from(id);
            cart.lines = lines.iter().take(MAX_CART_LINES).cloned().collect();
            return;
        }
        for line in &ev.lines {
            let pos = cart.lines.iter().position(|l| l.sku == line.sku);
            match (ev.kind, pos) {
                (EventType::AddToCart, Some(i)) => cart.lines[i].quantity += line.quantity,
                (EventType::AddToCart, None) if cart.lines.len() < MAX_CART_LINES => {
                    room_for_one(&mut cart.lines);
                    cart.lines.push(line.clone())
                }
                (EventType::RemoveFromCart, Some(i)) => {
                    cart.lines[i].quantity -= line.quantity;
                    if cart.lines[i].quantity <= 0.0 {
                        cart.lines.remove(i);
                    }
                }
                _ => {}
            }
        }
    }

    fn apply_orders(&mut self, ev: &Event, now: i64) {
        if !ORDER_EVENTS.contains(&ev.kind) {
            return; // the order statistics stay unallocated for a shopper who only browses
        }
        let o = &mut *self.orders;
        match ev.kind {
            EventType::OrderPlaced | EventType::CompleteCheckout => {
                if let Some(id) = &ev.order_id {
                    if o.recent.iter().any(|r| r.id == *id) {
                        return; // the same order seen again (other family, or a re-sync)
                    }
                    if o.recent.len() >= RECENT_ORDERS {
                        o.recent.remove(0);
                    }
                    room_for_one(&mut o.recent);
                    o.recent.push(RecentOrder {
                        id: id.clone(),
                        at: ev.time,
                        value: ev.value,
                    });
                }
                o.count += 1;
                o.revenue += ev.value;
                o.series.add(ev.time, ev.value, now);
                o.first_at = Some(o.first_at.map_or(ev.time, |t| t.min(ev.time)));
                o.last_at = Some(o.last_at.map_or(ev.time, |t| t.max(ev.time)));
            }
            EventType::OrderCancelled => {
                o.cancelled += 1;
                o.cancelled_value += ev.value;
            }
            EventType::OrderItemsReturnInitiated => o.returns += 1,
            EventType::OrderLineItemRefunded => o.refunded += ev.value,
            _ => {}
        }
    }

    fn series_mut(&mut self, kind: EventType) -> &mut Series {
        let i = match self.counters.binary_search_by_key(&kind, |(k, _)| *k) {
            Ok(i) => i,
            Err(i) => {
                room_for_one(&mut self.counters);
                self.counters.insert(i, (kind, Series::default()));
                i
            }
        };
        &mut self.counters[i].1
    }

    /// Counts and sums of `kind` in the last `window` ms, as of `now`.
    pub fn window(&self, kind: EventType, window: i64, now: i64) -> (u64, f64) {
        self.counters
            .binary_search_by_key(&kind, |(k, _)| *k)
            .map(|i| self.counters[i].1.query(window, now))
            .unwrap_or((0, 0.0))
    }

    /// Time of the latest `kind` event, ms.
    pub fn last_time(&self, kind: EventType) -> Option<i64> {
        self.series(kind).and_then(Series::last)
    }

    /// The counts of `kind` over time, if the profile has seen one.
    pub fn series(&self, kind: EventType) -> Option<&Series> {
        self.counters
            .binary_search_by_key(&kind, |(k, _)| *k)
            .ok()
            .map(|i| &self.counters[i].1)
    }

    /// Identities in the output records' shape.
    /// The store the shopper was last seen in, for outputs.
    pub fn store(&self) -> crate::wire::StoreRef {
        crate::wire::StoreRef {
            store_code: self.store_code.clone(),
            store_view_code: self.store_view_code.clone(),
        }
    }

    pub fn identity(&self) -> crate::wire::Identity {
        crate::wire::Identity {
            ecid: self.identities.ecids.last().cloned(),
            customer_id: self.identities.customer_id.clone(),
            email: self.identities.emails.last().cloned(),
        }
    }
}

/// A readable summary of a profile: attributes, aggregates, memberships, and windowed counts.
pub fn summary(p: &Profile) -> serde_json::Value {
    const WINDOWS: [(&str, i64); 5] = [
        ("1h", 3_600_000),
        ("24h", 86_400_000),
        ("7d", 7 * 86_400_000),
        ("30d", 30 * 86_400_000),
        ("90d", 90 * 86_400_000),
    ];
    let now = p.last_seen.unwrap_or(0);
    let counters: serde_json::Map<String, serde_json::Value> = p
        .counters
        .iter()
        .map(|(kind, series)| {
            let w: serde_json::Map<String, serde_json::Value> = WINDOWS
                .iter()
                .map(|(name, ms)| (name.to_string(), series.query(*ms, now).0.into()))
                .collect();
            (kind.name().to_string(), w.into())
        })
        .collect();
    serde_json::json!({
        "identities": p.identities,
        "attributes": p.attributes,
        "orders": {
            "count": p.orders.count,
            "revenue": p.orders.revenue,
            "lifetime_value": p.orders.lifetime_value(),
            "average_order_value": p.orders.average_order_value(),
            "cancelled": p.orders.cancelled,
            "cancelled_value": p.orders.cancelled_value,
            "returns": p.orders.returns,
            "refunded": p.orders.refunded,
            "first_at": p.orders.first_at,
            "last_at": p.orders.last_at,
        },
        "cart": { "items": p.cart.lines, "value": p.cart.value(), "updated_at": p.cart.updated_at },
        "last_device": p.last_device,
        "last_channel": p.last_channel,
        "first_seen": p.first_seen,
        "last_seen": p.last_seen,
        "events_total": p.events_total,
        "counts": counters,
        "segments": p.segments,
        "recent_products": p.recent_products.iter().map(|l| &l.sku).collect::<Vec<_>>(),
        "journeys": p.journeys.iter().map(|j| serde_json::json!({"journey": j.journey, "last_at": j.last_at})).collect::<Vec<_>>(),
        "next_timer": p.next_timer,
        "category_affinity": top_affinities(&p.category_affinity, now),
        "brand_affinity": top_affinities(&p.brand_affinity, now),
    })
}

/// The five strongest affinities at `now`, strongest first, rounded for reading.
fn top_affinities(list: &[Affinity], now: i64) -> Vec<(&str, f64)> {
    let mut v: Vec<(&str, f64)> = list
        .iter()
        .map(|a| (a.key.as_str(), (a.at(now) * 100.0).round() / 100.0))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    v.truncate(5);
    v
}

/// State encoding: one version byte, then postcard, then (since version 5) the next timer
/// again as a fixed trailer ([`TIMER_TRAILER`]). Bump the version when [`Profile`] changes
/// incompatibly and migrate on read; [`encode`] writes the current version by hand
/// (`layout/write.rs`), to be changed with it (a compile-time check below says so).
///
/// Version 2 added sequences, journeys and timers; version 3 identity kinds, order values,
/// recent changes and repartition positions; version 4 the hashes of the latest messages
/// (read from version 3 as none); version 5 the trailer (the body is version 4's), so that a
/// restore rebuilds the timer index from the changelog's profiles without decoding them
/// ([`next_timer`]); version 6 stores less: empty parts in one byte, no hashes or ranks that
/// are computed from what is stored, compact sums ([`crate::layout`]; versions 3 to 5 read in
/// their layouts). State written by earlier versions (pre-release builds) is refused with a
/// message saying to rebuild it by replay.
pub const STATE_VERSION: u8 = 6;

// The hand-written encoding (`layout/write.rs`) is version 6's layout.
const _: () = assert!(
    STATE_VERSION == 6,
    "a new state version: write its layout in layout/write.rs"
);

/// Bytes after the body since version 5: 1 if the profile has a next timer (else 0), then its
/// due time (big-endian i64; 0 without one).
pub const TIMER_TRAILER: usize = 9;

/// Bytes version 4 appended to version 3's encoding when empty: `seen`, `store_code`,
/// `store_view_code`, `currency`.
const V4_APPENDED: usize = 4;

/// The hash an exact repeat of a message shares: its event id and its bytes.
pub fn message_hash(event_id: &str, payload: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(event_id.len() as u64).to_be_bytes());
    h.update(event_id.as_bytes());
    h.update(payload);
    h.digest()
}

/// The capacity [`encode`]'s scratch buffer starts with (it keeps the largest profile's), and
/// [`encode_as`]'s buffer (tests and fuzz seeds only): through serde, on the core bench's
/// samples, 512 bytes took 1.64 allocations per profile (each growth a copy of what was
/// written), 1024 took 1.11. [`encode`] itself allocates once, the bytes at their length.
const ENCODE_CAPACITY: usize = 1024;

thread_local! {
    /// [`encode`]'s scratch buffer, one per thread, kept at the largest profile it encoded.
    static ENCODE_SCRATCH: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(ENCODE_CAPACITY));
}

/// `p` in [`STATE_VERSION`], written by hand (`layout/write.rs`): the bytes [`encode_as`]
/// writes through postcard's serde, in about 6,080 instructions per profile of the core bench's
/// samples instead of 8,317 (`scripts/icount.sh state_encode`). Written into a scratch buffer
/// and copied out at its length: the bytes are held until the commit's write, thousands per
/// batch, and a buffer of [`ENCODE_CAPACITY`] each (for ~270 bytes of a shopper with an event or
/// two) spread them over four times the memory.
pub fn encode(p: &Profile) -> Vec<u8> {
    ENCODE_SCRATCH.with_borrow_mut(|out| {
        out.clear();
        out.push(STATE_VERSION);
        p.encode(out);
        out.push(u8::from(p.next_timer.is_some()));
        out.extend_from_slice(&p.next_timer.unwrap_or(0).to_be_bytes());
        out.as_slice().to_vec()
    })
}

/// `p` in state version `version`, from 5 (the first with the next timer's trailer) to
/// [`STATE_VERSION`], through postcard's serde: the tests and the fuzz seeds write version 5 to
/// check that it still reads, and compare [`encode`]'s bytes with version 6's. The worker
/// writes [`STATE_VERSION`] only ([`encode`]).
#[doc(hidden)]
pub fn encode_as(p: &Profile, version: u8) -> Vec<u8> {
    assert!(
        (5..=STATE_VERSION).contains(&version),
        "state version {version} is not written"
    );
    let _layout = crate::layout::Reading::version(version);
    // Into one buffer sized for most profiles (growing from 8 bytes and copying the
    // serialised bytes after the version showed in the worker's profile, when the worker
    // encoded through serde).
    let mut out = Vec::with_capacity(ENCODE_CAPACITY);
    out.push(version);
    let mut out = postcard::serialize_with_flavor(p, AppendVec(out)).expect("profile serialises");
    out.push(u8::from(p.next_timer.is_some()));
    out.extend_from_slice(&p.next_timer.unwrap_or(0).to_be_bytes());
    out
}

/// postcard's output into a `Vec`, a byte or a slice at a time (its `to_extend` goes through
/// `Extend`, an iterator per string; the profile's encoding showed in the worker's samples when
/// the worker encoded through serde; now [`encode_as`] alone does).
struct AppendVec(Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendVec {
    type Output = Vec<u8>;

    #[inline(always)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    /// Most calls are postcard's varints, one per integer, and most of those one byte: pushed,
    /// not copied by a call to `memcpy` (which showed in the worker's samples of the encoding).
    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if let [b] = data {
            self.0.push(*b);
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// The profile in `bytes`, of any state version still read. [`STATE_VERSION`]'s are read by
/// hand (`layout/read.rs`), in 12,145 instructions per profile of the core bench's samples
/// instead of 14,529 through postcard's serde (`scripts/icount.sh state_decode`); what that
/// reader does not take (nothing the worker writes), and the earlier versions, through serde,
/// which also says what is wrong with bytes that are not a profile.
pub fn decode(bytes: &[u8]) -> Result<Profile, String> {
    let Some((&version, rest)) = bytes.split_first() else {
        return Err("empty profile state".into());
    };
    if let Some(p) = decode_by_hand(bytes) {
        return Ok(p);
    }
    decode_serde(version, rest)
}

/// A [`STATE_VERSION`] profile read by hand, or `None` for bytes that reader does not take
/// (then [`decode`] reads them through serde).
#[doc(hidden)]
pub fn decode_by_hand(bytes: &[u8]) -> Option<Profile> {
    match bytes.split_first() {
        Some((&STATE_VERSION, rest)) if rest.len() >= TIMER_TRAILER => {
            read::whole(&rest[..rest.len() - TIMER_TRAILER])
        }
        _ => None,
    }
}

/// [`decode`] through postcard's serde alone: the reference the tests compare the hand-written
/// reader with.
#[doc(hidden)]
pub fn decode_serde(version: u8, rest: &[u8]) -> Result<Profile, String> {
    // The parts' layouts follow the version read ([`crate::layout`]).
    let _layout = crate::layout::Reading::version(version);
    match version {
        5..=STATE_VERSION => {
            let body = rest
                .len()
                .checked_sub(TIMER_TRAILER)
                .map(|n| &rest[..n])
                .ok_or("profile state shorter than its timer trailer")?;
            postcard::from_bytes(body).map_err(|e| e.to_string())
        }
        4 => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        3 => {
            // Version 4 only appended `seen` and three optional strings: an empty list and a
            // `None` are one zero byte each in postcard.
            let mut v4 = Vec::with_capacity(rest.len() + V4_APPENDED);
            v4.extend_from_slice(rest);
            v4.extend_from_slice(&[0; V4_APPENDED]);
            postcard::from_bytes(&v4).map_err(|e| e.to_string())
        }
        v @ (1 | 2) => Err(format!("profile state version {v} comes from a pre-release build; delete the state directory and replay the topics to rebuild it")),
        v => Err(format!("unknown profile state version {v}")),
    }
}

/// The next timer of an encoded profile: read from the trailer (since version 5) without
/// decoding the profile; an earlier version's state is decoded.
pub fn next_timer(bytes: &[u8]) -> Result<Option<i64>, String> {
    match bytes.split_first() {
        Some((&(5..=STATE_VERSION), rest)) if rest.len() >= TIMER_TRAILER => {
            let t = &rest[rest.len() - TIMER_TRAILER..];
            match t[0] {
                0 => Ok(None),
                1 => Ok(Some(i64::from_be_bytes(
                    t[1..].try_into().expect("8 bytes"),
                ))),
                f => Err(format!("profile state: timer flag {f} (expected 0 or 1)")),
            }
        }
        _ => Ok(decode(bytes)?.next_timer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next of a linear congruential sequence (the tests' random steps, the same each run).
    fn next(x: &mut u64) {
        *x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
    }
    use crate::wire::Identity;

    /// The key comparison with its shortcuts agrees with `==` on keys alike at either end, of
    /// other lengths, and empty.
    #[test]
    fn keys_compare_as_strings_do() {
        let keys = [
            "", "a", "b", "ab", "ba", "cat-1", "cat-2", "dog-1", "cat-12", "électro",
        ];
        for a in keys {
            for b in keys {
                assert_eq!(same_key(a, b), a == b, "{a:?} vs {b:?}");
            }
        }
    }

    /// Both ways of finding a series among the keys rules read (a scan for a few keys, a binary
    /// search for many) give the same answer.
    #[test]
    fn a_series_is_read_by_rules_whatever_the_number_of_keys() {
        let series = |kind, key: &str| KeyedSeries {
            kind,
            hash: key_hash(key),
            key: key.into(),
            series: DailyCounts::default(),
        };
        for n in [1, 2, 16, 17, 40] {
            let mut keys: Vec<(EventType, String)> = (0..n)
                .map(|i| (EventType::ProductPageView, format!("cat-{i:02}")))
                .collect();
            keys.sort();
            for i in 0..n {
                let named = series(EventType::ProductPageView, &format!("cat-{i:02}"));
                assert!(RuleReads::reads_keyed(&keys, &named), "{n} keys, key {i}");
                let other_kind = series(EventType::AddToCart, &format!("cat-{i:02}"));
                assert!(
                    !RuleReads::reads_keyed(&keys, &other_kind),
                    "{n} keys, key {i}"
                );
            }
            for other in ["cat-", "cat-99", "cat-0", "cat-000", ""] {
                let unnamed = series(EventType::ProductPageView, other);
                assert!(
                    !RuleReads::reads_keyed(&keys, &unnamed),
                    "{n} keys, {other:?}"
                );
            }
        }
    }

    /// The index's scans agree with a plain scan where hashes collide: `find` gives the first
    /// entry its test accepts (past entries of the same hash; two entries accept key 5 past 20
    /// entries), and the entry pushed out is the first of the least order, at every length.
    #[test]
    fn an_index_with_colliding_hashes_finds_the_first_entry_as_a_plain_scan() {
        #[derive(Debug, Clone, PartialEq)]
        struct E(u32, i64);
        impl Entry for E {
            fn key_hash(&self) -> u64 {
                u64::from(self.0 % 3)
            }
            fn order(&self) -> i64 {
                self.1
            }
        }
        for n in 0..40u32 {
            // The least order first at the fourth entry, again every fifth after it.
            let entries: Vec<E> = (0..n)
                .map(|k| E(k, i64::from(((k + 2) * 7) % 5) - 2))
                .collect();
            let list = Indexed::from(entries.clone());
            assert_eq!(list.index.is_empty(), n as usize <= INDEXED_FROM);
            assert!(list.indexed_right());
            for k in 0..n + 3 {
                let want = entries.iter().position(|e| e.0 == k);
                let got = list.find(|| u64::from(k % 3), |e| e.0 == k);
                assert_eq!(got, want, "{n} entries, key {k}");
            }
            // Two entries accepted (keys 5 and 20, the same hash): the first.
            let is = |e: &E| e.0 == 5 || e.0 == 20;
            let want = entries.iter().position(is);
            assert_eq!(list.find(|| 2, is), want, "{n} entries");
            // Two accepted within one chunk of four hashes (keys 4 and 7, the same hash): the
            // first, not the chunk's last.
            let is = |e: &E| e.0 == 4 || e.0 == 7;
            let want = entries.iter().position(is);
            assert_eq!(list.find(|| 1, is), want, "{n} entries");
            let least = (0..entries.len()).min_by_key(|&i| entries[i].1);
            assert_eq!(list.first_least(), least, "{n} entries");
        }
    }

    /// The index keeps every entry findable, and the first of a hash's entries found first, as
    /// entries are pushed out and the last takes their place: bounded lists whose keys' hashes
    /// take three values (`k % 3`), two, four, or spread, against a plain list, every key looked
    /// for after every push; orders negative and positive (the index keeps their bits).
    #[test]
    fn an_index_finds_every_entry_through_push_outs() {
        #[derive(Debug, Clone)]
        struct E(u64, i64, fn(u64) -> u64);
        impl PartialEq for E {
            fn eq(&self, other: &E) -> bool {
                (self.0, self.1) == (other.0, other.1)
            }
        }
        impl Entry for E {
            fn key_hash(&self) -> u64 {
                (self.2)(self.0)
            }
            fn order(&self) -> i64 {
                self.1
            }
        }
        type Hash = fn(u64) -> u64;
        let hashes: [(&str, Hash); 4] = [
            ("three hashes", |k| k % 3),
            ("two hashes", |k| k % 2),
            ("four hashes", |k| u64::MAX - k % 4),
            ("spread", |k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        ];
        for (what, hash) in hashes {
            for max in [9, 13, 32, 64] {
                let mut list: Indexed<E> = Indexed::default();
                let mut plain: Vec<E> = Vec::new();
                let mut x: u64 = 99;
                for step in 0..1_500i64 {
                    next(&mut x);
                    let key = (x >> 33) % (2 * max as u64);
                    let order = ((x >> 45) % 50) as i64 - 25;
                    if let Some(i) = plain.iter().position(|e| e.0 == key) {
                        assert_eq!(list.find(|| hash(key), |e| e.0 == key), Some(i));
                        continue;
                    }
                    if plain.len() >= max {
                        let out = (0..plain.len()).min_by_key(|&i| plain[i].1).unwrap();
                        plain.swap_remove(out);
                    }
                    plain.push(E(key, order, hash));
                    list.push_bounded(E(key, order, hash), max);
                    assert_eq!(&list[..], &plain[..], "{what}, max {max}, step {step}");
                    assert!(list.indexed_right(), "{what}, max {max}, step {step}");
                    for k in 0..2 * max as u64 + 2 {
                        let want = plain.iter().position(|e| e.0 == k);
                        let got = list.find(|| hash(k), |e| e.0 == k);
                        assert_eq!(got, want, "{what}, max {max}, step {step}, key {k}");
                        // Every entry of the key's hash accepted: the first in the list (the
                        // last entry moved into the place of one pushed out counts from there).
                        let same = |e: &E| hash(e.0) == hash(k);
                        let want = plain.iter().position(same);
                        let got = list.find(|| hash(k), same);
                        assert_eq!(got, want, "{what}, max {max}, step {step}, hash of {k}");
                    }
                }
                assert!(!list.index.is_empty(), "{what}, max {max}");
            }
        }
    }

    /// A keyed list with its index finds, counts and pushes out exactly as a plain list
    /// scanned entry by entry (the way before the index): keys past the bound, one key under
    /// two event types, events out of order, the list growing past [`INDEXED_FROM`] and
    /// shrinking under it again through `edit`, and a decoded list.
    #[test]
    fn an_indexed_keyed_list_counts_as_a_plain_one() {
        fn plain_add(list: &mut Vec<KeyedSeries>, kind: EventType, key: &str, time: i64) {
            let hash = key_hash(key);
            let i = match list
                .iter()
                .position(|k| k.hash == hash && k.kind == kind && k.key == key)
            {
                Some(i) => i,
                None => {
                    if list.len() >= MAX_KEYED_SERIES {
                        let stalest = (0..list.len())
                            .min_by_key(|&i| list[i].series.last())
                            .unwrap();
                        list.swap_remove(stalest);
                    }
                    list.push(KeyedSeries {
                        kind,
                        hash,
                        key: key.into(),
                        series: DailyCounts::default(),
                    });
                    list.len() - 1
                }
            };
            list[i].series.add(time, time);
        }
        let day = 86_400_000;
        let mut list = KeyedList::default();
        let mut plain: Vec<KeyedSeries> = Vec::new();
        let mut indexed_at = None;
        // A linear congruential sequence: keys drawn from 150 (more than the bound), times
        // mostly rising with some late.
        let mut x: u64 = 12_345;
        for step in 0..5_000i64 {
            next(&mut x);
            let key = format!("sku-{}", (x >> 33) % 150);
            let kind = if (x >> 20) % 5 == 0 {
                EventType::AddToCart
            } else {
                EventType::ProductPageView
            };
            let time = 1_700_000_000_000 + step * 60_000 - ((x >> 40) % 3) as i64 * day;
            list.add(kind, &key, time, time);
            plain_add(&mut plain, kind, &key, time);
            assert_eq!(&list[..], &plain[..], "step {step}");
            assert!(list.indexed_right(), "step {step}");
            if indexed_at.is_none() && !list.index.is_empty() {
                indexed_at = Some(list.len());
            }
            for probe in ["sku-0", "sku-7", "sku-149", "nothing"] {
                let want = plain.iter().find(|k| k.kind == kind && k.key == probe);
                assert_eq!(list.get(kind, probe), want, "step {step}, {probe}");
            }
        }
        assert_eq!(indexed_at, Some(INDEXED_FROM + 1));
        assert_eq!(list.len(), MAX_KEYED_SERIES);
        // Decoded: the same entries, indexed again.
        let mut bytes = Vec::new();
        list.encode(&mut bytes);
        let back = <KeyedList as read::Decode>::decode(&mut read::Reader::new(&bytes)).unwrap();
        assert!(back == list && back.indexed_right());
        // Cut under the bound and back: no index, then one again.
        list.edit(|l| l.truncate(INDEXED_FROM));
        assert!(list.index.is_empty() && list.indexed_right());
        list.add(
            EventType::ProductPageView,
            "new",
            1_800_000_000_000,
            1_800_000_000_000,
        );
        assert!(!list.index.is_empty() && list.indexed_right());
    }

    /// A clone of an indexed list with room to spare takes additions as the original does; the
    /// copies of what rules read, filtered through the index, are what the plain filter gives;
    /// a merge of two deep profiles keeps every index right.
    #[test]
    fn indexed_lists_clone_copy_and_merge_as_plain_ones() {
        let t = 1_700_000_000_000;
        let view = EventType::ProductPageView;
        let mut list = KeyedList::default();
        for i in 0..20 {
            list.add(view, &format!("c-{i}"), t + i, t + i);
        }
        assert!(list.capacity() > list.len() && !list.index.is_empty());
        let mut clone = list.clone();
        assert!(clone.indexed_right() && clone == list);
        for i in 20..40 {
            clone.add(view, &format!("c-{i}"), t + i, t + i);
            list.add(view, &format!("c-{i}"), t + i, t + i);
        }
        assert!(clone.indexed_right() && clone == list);

        let mut keys: Vec<(EventType, String)> = [
            (view, "c-3"),
            (view, "c-25"),
            (EventType::AddToCart, "c-4"),
            (view, "none"),
        ]
        .iter()
        .map(|(k, s)| (*k, s.to_string()))
        .collect();
        keys.sort();
        let mut copied = Vec::new();
        copy_keyed(&mut copied, &list, &keys);
        let plain: Vec<KeyedSeries> = list
            .iter()
            .filter(|s| RuleReads::reads_keyed(&keys, s))
            .cloned()
            .collect();
        assert_eq!(copied, plain);
        assert_eq!(copied.len(), 2);

        let mut affinities = AffinityList::default();
        for i in 0..20 {
            affinities.add(&format!("a-{i}"), 1.0, t + i);
        }
        let names = ["a-3".to_string(), "a-17".into(), "none".into()];
        let mut copied = Vec::new();
        copy_affinities(&mut copied, &affinities, false, &names);
        let plain: Vec<Affinity> = affinities
            .iter()
            .filter(|a| names.iter().any(|k| *k == a.key))
            .cloned()
            .collect();
        assert_eq!(copied, plain);
        assert_eq!(copied.len(), 2);

        let deep = |prefix: &str| {
            let mut p = Profile::default();
            for i in 0..80 {
                let mut v = ev(view, t + i * 1000, 0.0);
                v.lines = vec![line(&format!("{prefix}-{i}"), 1.0, 1.0)];
                v.lines[0].category = Some(format!("{prefix}-cat-{}", i % 40).into());
                v.lines[0].brand = Some(format!("{prefix}-brand-{}", i % 36).into());
                p.apply(&v);
            }
            p
        };
        let mut merged = deep("a");
        let mut other = deep("b");
        let ecid = |i: usize| format!("ecid-{i:03}");
        for i in 0..20 {
            merged.identities.ecids.push(ecid(i));
            other.identities.ecids.push(ecid(i + 10));
        }
        merged.merge(other, 100);
        let ids = &merged.identities.ecids;
        assert!(ids.indexed_right() && ids.iter().enumerate().all(|(i, e)| *e == ecid(i)));
        assert_eq!(ids.len(), 30);
        assert!((0..30).all(|i| ids.holds(&ecid(i))) && !ids.holds(&ecid(30)));
        for l in [&merged.by_product, &merged.by_category] {
            assert!(l.indexed_right() && l.len() == MAX_KEYED_SERIES);
        }
        for l in [&merged.category_affinity, &merged.brand_affinity] {
            assert!(l.indexed_right() && l.len() == MAX_AFFINITIES);
        }
    }

    /// ECIDs are found with and without an index, kept in order, none pushed out, and read back
    /// from the state with their index.
    #[test]
    fn ecids_are_found_by_hash_once_there_are_many() {
        let mut ids = IdList::default();
        let ecid = |i: usize| format!("{:038}", 12_345_678_901_234_567_890u128 + i as u128 * 7);
        for n in 0..40 {
            for i in 0..40 {
                assert_eq!(ids.holds(&ecid(i)), i < n, "{n} held, ecid {i}");
            }
            assert!(!ids.holds("") && !ids.holds(&ecid(n)[1..]));
            assert_eq!(ids.index.is_empty(), n <= INDEXED_FROM, "{n} held");
            assert!(ids.indexed_right());
            ids.push(ecid(n));
        }
        assert_eq!(ids.len(), 40);
        assert!(ids.iter().enumerate().all(|(i, e)| *e == ecid(i)));
        let mut bytes = Vec::new();
        ids.encode(&mut bytes);
        let back = <IdList as read::Decode>::decode(&mut read::Reader::new(&bytes)).unwrap();
        assert!(back == ids && back.indexed_right() && back.holds(&ecid(39)));
    }

    /// An indexed affinity list finds, adds, pushes out and names the top key exactly as a
    /// plain list scanned entry by entry (the way before the index), growing past
    /// [`INDEXED_FROM`] and past its bound, with late signals and ties of rank.
    #[test]
    fn an_indexed_affinity_list_ranks_as_a_plain_one() {
        fn plain_add(list: &mut Vec<Affinity>, key: &str, weight: f64, time: i64) {
            match list.iter_mut().find(|a| same_key(&a.key, key)) {
                // The list's mechanics are the oracle here, not the score's arithmetic.
                Some(a) => a.signal(weight, time),
                None => {
                    if list.len() >= MAX_AFFINITIES {
                        let weakest = (0..list.len())
                            .min_by(|&i, &j| list[i].rank.total_cmp(&list[j].rank))
                            .unwrap();
                        list.swap_remove(weakest);
                    }
                    list.push(Affinity::new(key, weight, time));
                }
            }
        }
        fn plain_top(list: &[Affinity]) -> Option<&str> {
            list.iter()
                .max_by(|a, b| a.rank.total_cmp(&b.rank).then_with(|| b.key.cmp(&a.key)))
                .map(|a| a.key.as_str())
        }
        let mut list = AffinityList::default();
        let mut plain: Vec<Affinity> = Vec::new();
        let mut x: u64 = 987_654_321;
        for step in 0..4_000i64 {
            next(&mut x);
            let key = format!("cat-{}", (x >> 33) % 60);
            // Weights of a few values at the same times give ties of rank.
            let weight = [1.0, 2.0, 3.0][((x >> 20) % 3) as usize];
            let time =
                1_700_000_000_000 + (step / 4) * 3_600_000 - ((x >> 40) % 2) as i64 * 86_400_000;
            list.add(&key, weight, time);
            plain_add(&mut plain, &key, weight, time);
            assert_eq!(&list[..], &plain[..], "step {step}");
            assert!(list.indexed_right(), "step {step}");
            assert_eq!(list.top(), plain_top(&plain), "step {step}");
            for probe in ["cat-0", "cat-59", "none"] {
                let want = plain.iter().find(|a| a.key == probe);
                assert_eq!(list.get(probe), want, "step {step}, {probe}");
            }
        }
        assert_eq!(list.len(), MAX_AFFINITIES);
        // The order is the rank's `total_cmp` order, negative ranks and edges included.
        let ranks = [
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            1.0,
            1400.25,
            f64::INFINITY,
            f64::NAN,
        ];
        for a in ranks {
            for b in ranks {
                let (x, y) = (
                    Affinity {
                        rank: a,
                        ..Affinity::new("a", 1.0, 0)
                    },
                    Affinity {
                        rank: b,
                        ..Affinity::new("b", 1.0, 0)
                    },
                );
                assert_eq!(x.order().cmp(&y.order()), a.total_cmp(&b), "{a} vs {b}");
            }
        }
        // Equal ranks: the top is the first key in byte order, indexed or not.
        let tied: Vec<Affinity> = (0..12)
            .map(|i| Affinity::new(&format!("k-{:02}", 11 - i), 2.0, 1_700_000_000_000))
            .collect();
        for n in [3, 12] {
            let l = AffinityList::from(tied[..n].to_vec());
            assert_eq!(l.index.is_empty(), n <= INDEXED_FROM);
            assert_eq!(l.top(), plain_top(&tied[..n]));
            assert_eq!(l.top(), Some(tied[n - 1].key.as_str()));
        }
    }

    fn ev(kind: EventType, time: i64, value: f64) -> Event {
        Event {
            id: format!("e{time}"),
            kind,
            time,
            identity: Identity {
                ecid: Some("ecid-1".into()),
                ..Default::default()
            },
            value,
            device: None,
            channel: None,
            lines: Vec::new(),
            cart: None,
            order_id: None,
            search_phrase: None,
            search_results: None,
            attributes: None,
            store_code: None,
            store_view_code: None,
            currency: None,
        }
    }

    fn line(sku: &str, qty: f64, price: f64) -> Line {
        Line {
            sku: sku.into(),
            quantity: qty,
            price: Some(price),
            ..Default::default()
        }
    }

    /// A shopper with one or two events (most of them) holds no spare entries in its lists:
    /// they grow one entry at a time up to four, then by doubling as `Vec` does.
    #[test]
    fn a_new_shoppers_lists_hold_what_they_have_and_no_more() {
        let mut p = Profile::default();
        let event = |p: &mut Profile, t: i64, sku: &str, kind: EventType| {
            let mut e = ev(kind, t, 0.0);
            let mut l = line(sku, 1.0, 10.0);
            l.category = Some(format!("cat-{sku}").into());
            l.brand = Some(format!("brand-{sku}").into());
            e.lines = vec![l];
            p.apply(&e);
        };
        let spare = |p: &Profile| {
            [
                ("counters", p.counters.capacity() - p.counters.len()),
                (
                    "by_category",
                    p.by_category.entries.capacity() - p.by_category.len(),
                ),
                (
                    "by_product",
                    p.by_product.entries.capacity() - p.by_product.len(),
                ),
                (
                    "category_affinity",
                    p.category_affinity.entries.capacity() - p.category_affinity.len(),
                ),
                (
                    "brand_affinity",
                    p.brand_affinity.entries.capacity() - p.brand_affinity.len(),
                ),
                (
                    "recent_products",
                    p.recent_products.capacity() - p.recent_products.len(),
                ),
                ("cart.lines", p.cart.lines.capacity() - p.cart.lines.len()),
            ]
        };
        event(&mut p, 1_000, "A", EventType::ProductPageView);
        assert!(p.first_message(1));
        assert!(p.first_forward(1));
        assert!(p.record_hop("commerce.repartition", 0, 1));
        assert_eq!(
            (p.seen.capacity(), p.forwarded.capacity(), p.hops.capacity()),
            (1, 1, 1)
        );
        assert_eq!(p.by_product.len(), 1);
        assert_eq!(p.recent_products.len(), 1);
        assert!(spare(&p).iter().all(|(_, n)| *n == 0), "{:?}", spare(&p));
        event(&mut p, 2_000, "B", EventType::ProductPageView);
        event(&mut p, 3_000, "B", EventType::AddToCart);
        assert_eq!((p.counters.len(), p.recent_products.len()), (2, 2));
        assert_eq!(p.cart.lines.len(), 1);
        assert!(spare(&p).iter().all(|(_, n)| *n == 0), "{:?}", spare(&p));
        for (i, sku) in ["C", "D", "E", "F", "G"].into_iter().enumerate() {
            event(&mut p, 4_000 + i as i64, sku, EventType::ProductPageView);
        }
        assert_eq!(p.recent_products.len(), 7);
        assert_eq!(p.recent_products.capacity(), 8, "doubled past four");
    }

    /// The latest products viewed: latest last, each once, with what the latest view said of
    /// it; a new one pushes the oldest out of a full list.
    #[test]
    fn recent_products_keep_the_latest_view_of_each_product_latest_last() {
        let mut p = Profile::default();
        let view = |p: &mut Profile, t: i64, l: Line| {
            let mut e = ev(EventType::ProductPageView, t, 0.0);
            e.lines = vec![l];
            p.apply(&e);
        };
        let skus = |p: &Profile| {
            p.recent_products
                .iter()
                .map(|l| l.sku.to_string())
                .collect::<Vec<_>>()
        };
        let mut a = line("A", 1.0, 10.0);
        a.name = Some("first name".into());
        a.url = Some("https://shop.example/a".into());
        view(&mut p, 1_000, a);
        view(&mut p, 2_000, line("B", 1.0, 20.0));
        view(&mut p, 3_000, line("C", 1.0, 30.0));
        let mut again = line("A", 1.0, 12.5);
        again.name = Some("new name".into());
        view(&mut p, 4_000, again.clone());
        assert_eq!(skus(&p), ["B", "C", "A"]);
        assert_eq!(
            p.recent_products[2], again,
            "the latest view's values, url gone too"
        );
        for i in 0..RECENT_PRODUCTS {
            view(&mut p, 5_000 + i as i64, line(&format!("N{i}"), 1.0, 1.0));
        }
        assert_eq!(p.recent_products.len(), RECENT_PRODUCTS);
        let expected: Vec<String> = (0..RECENT_PRODUCTS).map(|i| format!("N{i}")).collect();
        assert_eq!(
            skus(&p),
            expected,
            "the oldest pushed out, one per new product"
        );
        view(&mut p, 9_000, line("N0", 2.0, 1.0));
        assert_eq!(skus(&p)[RECENT_PRODUCTS - 1], "N0");
        assert_eq!(p.recent_products[RECENT_PRODUCTS - 1].quantity, 2.0);
        assert_eq!(p.recent_products.len(), RECENT_PRODUCTS);
        // The ring has wrapped round its buffer: stored in the order read, as a list is (the
        // bytes of the same lines held in one piece, and postcard's).
        let mut viewed = skus(&p);
        let mut t = 10_000;
        while p.recent_products.as_slices().1.is_empty() {
            assert!(t < 10_100, "the ring never wraps");
            viewed.push(format!("W{t}"));
            view(&mut p, t, line(&format!("W{t}"), 1.0, 1.0));
            t += 1;
        }
        assert_eq!(skus(&p), viewed[viewed.len() - RECENT_PRODUCTS..]);
        let mut in_one_piece = p.clone();
        in_one_piece.recent_products = p.recent_products.iter().cloned().collect::<Vec<_>>().into();
        assert!(in_one_piece.recent_products.as_slices().1.is_empty());
        let bytes = encode(&p);
        assert_eq!(bytes, encode(&in_one_piece));
        assert_eq!(bytes, encode_as(&p, STATE_VERSION));
        assert_eq!(decode(&bytes).unwrap().recent_products, p.recent_products);

        // Viewed again in each piece of the wrapped ring: moved to the end, the others keeping
        // their order, with the latest view's values; the latest itself updated where it is.
        let view_again = |p: &mut Profile, sku: String, t: i64, quantity: f64| {
            let mut order = skus(p);
            order.retain(|s| *s != sku);
            order.push(sku.clone());
            view(p, t, line(&sku, quantity, 1.0));
            assert_eq!(skus(p), order, "{sku} viewed again");
            let latest = p.recent_products.back().expect("not empty");
            assert_eq!(
                (latest.sku.as_str(), latest.quantity),
                (sku.as_str(), quantity)
            );
        };
        view(&mut p, t, line(&format!("W{t}"), 1.0, 1.0));
        let (older, newer) = p.recent_products.as_slices();
        assert!(
            newer.len() >= 2 && older.len() >= 2,
            "both pieces hold two or more"
        );
        let (in_newer, in_older) = (newer[0].sku.to_string(), older[1].sku.to_string());
        view_again(&mut p, in_newer, t + 1, 5.0);
        view_again(&mut p, in_older, t + 2, 6.0);
        let latest = skus(&p)[RECENT_PRODUCTS - 1].clone();
        view_again(&mut p, latest, t + 3, 7.0);
        assert_eq!(p.recent_products.len(), RECENT_PRODUCTS);
    }

    #[test]
    fn cart_follows_adds_and_removes_and_empties_on_checkout() {
        let mut p = Profile::default();
        let mut add = ev(EventType::AddToCart, 1_000, 20.0);
        add.lines = vec![line("A", 2.0, 10.0)];
        p.apply(&add);
        let mut add2 = ev(EventType::AddToCart, 2_000, 10.0);
        add2.lines = vec![line("A", 1.0, 10.0), line("B", 1.0, 5.0)];
        p.apply(&add2);
        assert_eq!(p.cart.value(), 35.0);
        let mut rm = ev(EventType::RemoveFromCart, 3_000, 0.0);
        rm.lines = vec![line("A", 3.0, 10.0)];
        p.apply(&rm);
        assert_eq!(p.cart.lines.len(), 1);
        assert_eq!(p.cart.value(), 5.0);
        let mut done = ev(EventType::CompleteCheckout, 4_000, 5.0);
        done.order_id = Some("o1".into());
        p.apply(&done);
        assert!(p.cart.lines.is_empty());
        assert!(
            p.cart.value().is_sign_positive(),
            "an empty cart is worth 0, not -0"
        );
        assert_eq!(p.orders.count, 1);
    }

    #[test]
    fn browsing_leaves_attributes_and_orders_unallocated_and_the_encoding_unchanged() {
        let mut p = Profile::default();
        let mut view = ev(EventType::ProductPageView, 1_000, 0.0);
        view.lines = vec![line("A", 1.0, 10.0)];
        p.apply(&view);
        p.apply(&ev(EventType::AddToCart, 2_000, 10.0));
        assert!(!p.orders.is_held() && !p.attributes.is_held(), "{p:?}");
        // Decoded from the store, it stays so.
        let back = decode(&encode(&p)).unwrap();
        assert!(!back.orders.is_held() && !back.attributes.is_held());
        assert_eq!(back, p);
        // Nor does merging another browsing profile into it.
        let mut other = Profile::default();
        other.apply(&ev(EventType::ProductPageView, 1_500, 0.0));
        p.merge(other, 10);
        assert_eq!(p.events_total, 3);
        assert!(!p.orders.is_held() && !p.attributes.is_held(), "{p:?}");
        let mut placed = ev(EventType::OrderPlaced, 3_000, 30.0);
        placed.order_id = Some("o-1".into());
        p.apply(&placed);
        assert!(p.orders.is_held());
        let back = decode(&encode(&p)).unwrap();
        assert_eq!(back.orders.count, 1);
        assert!(back.orders.is_held() && !back.attributes.is_held());
    }

    #[test]
    fn the_same_order_from_storefront_and_back_office_counts_once() {
        let mut p = Profile::default();
        for kind in [
            EventType::CompleteCheckout,
            EventType::OrderPlaced,
            EventType::OrderPlaced,
        ] {
            let mut e = ev(kind, 1_000, 50.0);
            e.order_id = Some("o-7".into());
            p.apply(&e);
        }
        assert_eq!((p.orders.count, p.orders.revenue), (1, 50.0));
        let mut c = ev(EventType::OrderCancelled, 2_000, 50.0);
        c.order_id = Some("o-7".into());
        p.apply(&c);
        assert_eq!(p.orders.cancelled, 1);
        assert_eq!(p.orders.lifetime_value(), 0.0);
    }

    #[test]
    fn categories_products_and_affinities_are_counted_and_bounded() {
        let day = 86_400_000;
        let mut p = Profile::default();
        let mut q = Profile::default();
        // A series that stays active keeps counting.
        for i in 0..3 {
            let mut e = ev(EventType::AddToCart, i * 1000, 0.0);
            e.lines = vec![Line {
                sku: "kept".into(),
                category: Some("kept".into()),
                quantity: 1.0,
                ..Default::default()
            }];
            q.apply(&e);
        }
        assert_eq!(
            Profile::keyed_window(&q.by_category, EventType::AddToCart, "kept", day, 3_000),
            3
        );
        for i in 0..200 {
            let mut e = ev(EventType::ProductPageView, i * 1000, 0.0);
            e.lines = vec![Line {
                sku: compact_str::format_compact!("sku-{i}"),
                category: Some(compact_str::format_compact!("cat-{}", i % 100)),
                brand: Some("acme".into()),
                quantity: 1.0,
                ..Default::default()
            }];
            p.apply(&e);
        }
        assert!(p.by_product.len() <= MAX_KEYED_SERIES && p.by_category.len() <= MAX_KEYED_SERIES);
        assert!(p.category_affinity.len() <= MAX_AFFINITIES);
        assert_eq!(
            Profile::keyed_window(
                &p.by_product,
                EventType::ProductPageView,
                "sku-199",
                day,
                200_000
            ),
            1
        );
        // 100 categories cycle through 64 series: cat-99 was evicted between its two views.
        assert_eq!(
            Profile::keyed_window(
                &p.by_category,
                EventType::ProductPageView,
                "cat-99",
                day,
                200_000
            ),
            1
        );
        assert_eq!(
            Profile::keyed_window(
                &p.by_product,
                EventType::ProductPageView,
                "sku-0",
                day,
                200_000
            ),
            0,
            "evicted"
        );
        let acme = p.brand_affinity.iter().find(|a| a.key == "acme").unwrap();
        assert!((acme.at(acme.at) - 200.0).abs() < 0.1, "{acme:?}");
        assert!(
            (acme.at(acme.at + AFFINITY_HALF_LIFE_MS) - 100.0).abs() < 0.1,
            "halves in one half-life"
        );

        // A purchase says more than views: the bought category becomes the top one.
        let mut buy = ev(EventType::OrderPlaced, 300_000, 10.0);
        buy.order_id = Some("o".into());
        buy.lines = vec![Line {
            sku: "x".into(),
            category: Some("cat-5".into()),
            quantity: 1.0,
            ..Default::default()
        }];
        p.apply(&buy);
        assert_eq!(p.category_affinity.top(), Some("cat-5"));
        // The order of decayed values is the order of ranks, at any time.
        for later in [
            300_000,
            300_000 + AFFINITY_HALF_LIFE_MS,
            300_000 + 20 * AFFINITY_HALF_LIFE_MS,
        ] {
            let mut by_value = p.category_affinity.to_vec();
            by_value.sort_by(|a, b| b.at(later).total_cmp(&a.at(later)));
            let mut by_rank = p.category_affinity.to_vec();
            by_rank.sort_by(|a, b| b.rank.total_cmp(&a.rank));
            let keys = |v: &[Affinity]| v.iter().map(|a| a.key.clone()).collect::<Vec<_>>();
            assert_eq!(keys(&by_value)[..5], keys(&by_rank)[..5]);
        }
    }

    #[test]
    fn a_merged_profile_counts_both_histories_and_each_order_once() {
        let t = 1_700_000_000_000;
        let mut anon = Profile::default();
        anon.identities.ecids.push("e1".into());
        anon.apply(&ev(EventType::PageView, t, 0.0));
        anon.apply(&ev(EventType::ProductPageView, t + 1_000, 0.0));
        let mut add = ev(EventType::AddToCart, t + 2_000, 20.0);
        add.lines = vec![line("A", 1.0, 20.0)];
        anon.apply(&add);
        let mut guest_order = ev(EventType::CompleteCheckout, t + 3_000, 50.0);
        guest_order.order_id = Some("o1".into());
        anon.apply(&guest_order);
        anon.apply(&add_at(t + 4_000));

        let mut known = Profile::default();
        known.identities.kind = KeyKind::Email;
        known.identities.emails.push("ann@x.com".into());
        known.attributes.first_name = Some("Ann".into());
        let mut bo = ev(EventType::OrderPlaced, t + 3_500, 50.0);
        bo.order_id = Some("o1".into());
        known.apply(&bo);
        let mut other = ev(EventType::OrderPlaced, t - 86_400_000, 30.0);
        other.order_id = Some("o0".into());
        known.apply(&other);
        known.apply(&ev(EventType::PageView, t - 5_000, 0.0));

        known.merge(anon, 20);
        assert_eq!(
            known.window(EventType::PageView, 86_400_000, t + 4_000).0,
            2
        );
        assert_eq!(
            known
                .window(EventType::ProductPageView, 3_600_000, t + 4_000)
                .0,
            1
        );
        assert_eq!(known.orders.count, 2, "o1 seen by both counts once");
        assert_eq!(known.orders.revenue, 80.0);
        assert_eq!(
            known.orders.series.query(7 * 86_400_000, t + 4_000),
            (2, 80.0)
        );
        assert_eq!(
            known.cart.lines.len(),
            1,
            "the anonymous cart is the later one"
        );
        assert_eq!(known.events_total, 3 + 5);
        assert_eq!(known.first_seen, Some(t - 86_400_000));
        assert_eq!(known.last_seen, Some(t + 4_000));
        assert_eq!(known.identities.ecids[..], ["e1".to_string()]);
        assert_eq!(known.identities.emails, vec!["ann@x.com".to_string()]);
        assert_eq!(known.identities.kind, KeyKind::Email);
        assert_eq!(known.attributes.first_name.as_deref(), Some("Ann"));
        assert_eq!(known.by_product.len(), 2, "product views and adds of A");
    }

    fn add_at(time: i64) -> Event {
        let mut add = ev(EventType::AddToCart, time, 10.0);
        add.lines = vec![line("B", 1.0, 10.0)];
        add
    }

    #[test]
    fn repartition_positions_are_applied_once() {
        let mut p = Profile::default();
        assert!(p.record_hop("r", 1, 10));
        assert!(!p.record_hop("r", 1, 10));
        assert!(!p.record_hop("r", 1, 9));
        assert!(p.record_hop("r", 2, 3));
        assert!(p.record_hop("r", 1, 11));
        assert!(p.first_forward(7));
        assert!(!p.first_forward(7), "the same event by another path");
        for f in 100..100 + RECENT_FORWARDED as u64 {
            assert!(p.first_forward(f));
        }
        assert_eq!(p.forwarded.len(), RECENT_FORWARDED, "bounded");
        assert!(p.first_forward(7), "forgotten after 64 others");
    }

    #[test]
    fn state_round_trips_and_rejects_unknown_versions() {
        let mut p = Profile::default();
        p.apply(&ev(EventType::PageView, 1_000, 0.0));
        let bytes = encode(&p);
        assert_eq!(decode(&bytes).unwrap(), p);
        let mut bad = bytes.clone();
        bad[0] = 99;
        assert!(decode(&bad).unwrap_err().contains("version 99"));
    }

    /// Version 3 state (written before `seen` existed) is read as version 4 with no messages
    /// remembered: an upgrade needs no replay.
    #[test]
    fn version_3_state_reads_with_no_messages_remembered() {
        let mut p = Profile::default();
        p.apply(&ev(EventType::PageView, 1_000, 0.0));
        assert!(p.first_forward(9));
        let mut v4 = vec![4];
        v4.extend(in_layout(4, &p));
        assert_eq!(decode(&v4).unwrap(), p);
        // What version 3 wrote: the same fields without the trailing (empty) new ones.
        assert!(v4.ends_with(&[0; V4_APPENDED]));
        let mut v3 = v4[..v4.len() - V4_APPENDED].to_vec();
        v3[0] = 3;
        assert_eq!(decode(&v3).unwrap(), p);
    }

    /// Version 5 is version 4's body and the next timer, which reads without decoding; version 4
    /// state reads as before, its timer decoded.
    #[test]
    fn the_next_timer_reads_from_the_trailer_and_version_4_still_decodes() {
        for timer in [None, Some(-5), Some(1_709_287_200_000)] {
            let mut p = Profile::default();
            p.apply(&ev(EventType::PageView, 1_000, 0.0));
            p.next_timer = timer;
            let v6 = encode(&p);
            assert_eq!(v6[0], 6);
            let v5 = encode_as(&p, 5);
            assert_eq!(v5[0], 5);
            let mut v4 = vec![4];
            v4.extend(in_layout(4, &p));
            assert_eq!(&v5[1..v5.len() - TIMER_TRAILER], &v4[1..], "the same body");
            assert_eq!(
                &v6[v6.len() - TIMER_TRAILER..],
                &v5[v5.len() - TIMER_TRAILER..]
            );
            for state in [&v6, &v5, &v4] {
                assert_eq!(decode(state).unwrap(), p);
                assert_eq!(next_timer(state).unwrap(), timer);
            }
            // The trailer is what is read: change it alone and the answer follows.
            for state in [&v6, &v5] {
                let mut moved = state.clone();
                let n = moved.len();
                moved[n - 8..].copy_from_slice(&42i64.to_be_bytes());
                moved[n - 9] = 1;
                assert_eq!(next_timer(&moved).unwrap(), Some(42));
            }
        }
        assert!(
            next_timer(&[5, 0, 0]).is_err(),
            "shorter than a trailer: decoded, refused"
        );
        assert!(decode(&[5, 1, 2]).is_err());
    }

    /// `p`'s postcard body in state version `version`'s layouts.
    fn in_layout(version: u8, p: &Profile) -> Vec<u8> {
        let _layout = crate::layout::Reading::version(version);
        postcard::to_stdvec(p).unwrap()
    }

    /// A profile with every part filled: attributes, orders with sums that are not whole
    /// cents, categories, products, affinities, cart and recent products.
    fn filled() -> Profile {
        let mut p = Profile::default();
        let mut view = ev(EventType::ProductPageView, 1_000, 0.0);
        view.lines = vec![line("SKU-1", 1.0, 19.99)];
        view.lines[0].category = Some("electronics.audio.headphone".into());
        view.lines[0].brand = Some("acme".into());
        p.apply(&view);
        p.apply(&add_at(2_000));
        let mut order = ev(EventType::OrderPlaced, 3_000, 1.0 / 3.0);
        order.order_id = Some("o-1".into());
        order.lines = vec![line("B", 3.0, 1.0 / 3.0)];
        p.apply(&order);
        let mut refund = ev(EventType::OrderLineItemRefunded, 4_000, -0.0);
        refund.order_id = Some("o-1".into());
        p.apply(&refund);
        p.attributes.country = Some("fr".into());
        p.attributes.loyalty_points = Some(12.5);
        p.next_timer = Some(9_000);
        p
    }

    /// Version 6 reads back exactly what it wrote, and is shorter than version 5, which reads
    /// as before: the hashes and ranks it leaves out are computed again, bit for bit.
    #[test]
    fn version_6_stores_less_and_version_5_still_reads() {
        let browsing = {
            let mut p = Profile::default();
            let mut view = ev(EventType::ProductPageView, 1_000, 0.0);
            view.lines = vec![line("SKU-1", 1.0, 19.99)];
            view.lines[0].category = Some("apparel.shoes".into());
            p.apply(&view);
            p
        };
        for p in [filled(), browsing] {
            assert!(!p.by_category.is_empty() && !p.category_affinity.is_empty());
            let (v6, v5) = (encode(&p), encode_as(&p, 5));
            let back = decode(&v6).unwrap();
            assert_eq!(back, p);
            assert_eq!(decode(&v5).unwrap(), p);
            for (a, b) in back
                .category_affinity
                .iter()
                .zip(p.category_affinity.iter())
            {
                assert_eq!(a.rank.to_bits(), b.rank.to_bits());
            }
            for (a, b) in back.by_category.iter().zip(p.by_category.iter()) {
                assert_eq!(a.hash, b.hash);
            }
            assert!(v6.len() < v5.len(), "{} >= {} bytes", v6.len(), v5.len());
        }
    }

    /// A profile filling every part, each field of the attributes and orders with a value of
    /// its own (a swap of two would show): every event type, strings of 128 bytes and more
    /// (two-byte lengths), numbers in every layout (whole cents, fractions, NaN, signed zero,
    /// extremes), a list longer than 127 (two-byte length).
    fn every_part() -> Profile {
        let mut every = filled();
        // Every event type once (the cart is set below: a checkout empties it).
        for (i, kind) in EventType::ALL.iter().enumerate() {
            let mut e = ev(*kind, 10_000 + i as i64 * 977_000, i as f64 * 1.01);
            e.lines = vec![line(&format!("S{i}"), 1.0, 1e15 + 0.5)];
            e.lines[0].category = Some(format!("c{}", i % 7).into());
            e.order_id = Some(format!("o-{}", i % 3));
            every.apply(&e);
        }
        every.first_seen = Some(i64::MIN);
        every.events_total = u64::MAX;
        let long = "x".repeat(200);
        every.identities = Identities {
            kind: KeyKind::Customer,
            ecids: vec!["ecid-1".into(), long.clone()].into(),
            customer_id: Some("c-42".into()),
            emails: vec!["a@example.com".into()],
            key: Some(long.clone()),
        };
        every.attributes = Sparse::new(Attributes {
            first_name: Some("Ada".into()),
            last_name: Some("Lovelace".into()),
            email: Some(long.clone()),
            phone: Some("+41 44 000".into()),
            gender: Some("f".into()),
            birth_date: Some("1815-12-10".into()),
            country: Some("ch".into()),
            city: Some("Zürich".into()),
            loyalty_tier: Some("gold".into()),
            loyalty_status: Some("active".into()),
            loyalty_points: Some(f64::NAN),
            customer_group: Some("retail".into()),
            consent_email: Some(true),
            consent_sms: Some(false),
        });
        every.cart.id = Some("cart-1".into());
        every.cart.lines.push(Line {
            sku: long.as_str().into(),
            name: Some("Mock Product".into()),
            quantity: 1.0 / 3.0,
            price: None,
            image_url: Some("https://shop.example/i.png".into()),
            url: Some(long.clone()),
            category: Some("14".into()),
            brand: Some("acme".into()),
        });
        every.cart.lines.push(line("NEG", -2.0, -0.0));
        every.last_device = Some("mobile".into());
        every.last_channel = Some("web".into());
        every.segments = (0..130)
            .map(|i| Membership {
                segment: format!("segment-{i}").into(),
                since: -i,
                place: PlaceHint::default(),
            })
            .collect();
        every.journeys = vec![JourneyState {
            journey: long.as_str().into(),
            last_at: 5_000,
            causes: vec![0, u64::MAX, 1 << 35],
        }];
        every.recent_changes = vec![RecentChange {
            segment: "cart-holders".into(),
            entered: true,
            at: 2_000,
            cause: "event".into(),
        }];
        assert!(every.record_hop("tailor-repartition", 3, i64::MAX));
        assert!(every.record_hop("r", i32::MIN, 0));
        for f in 0..RECENT_FORWARDED as u64 + 3 {
            assert!(every.first_forward(f << 40));
        }
        assert!(every.first_message(message_hash("e1", b"{}")));
        every.store_code = Some("main".into());
        every.store_view_code = Some("default".into());
        every.currency = Some("EUR".into());
        every.next_timer = None;
        assert!(every.orders.is_held() && !every.orders.recent.is_empty());
        // Distinct values in the orders' fields of one type.
        every.orders.returns = 7;
        every.orders.refunded = 0.125;
        every.orders.first_at = Some(-3);
        assert!(!every.brand_affinity.is_empty() && !every.by_product.is_empty());
        every
    }

    /// [`encode`] and [`decode`] (written by hand) are version 6 as postcard writes and reads
    /// it through serde ([`encode_as`], [`decode_serde`]), byte for byte and field for field, on
    /// [`every_part`]; on parts written to and left empty, `filled()` and the default profile.
    /// The tailor crate's `tests/state_encoding.rs` compares the samples' profiles.
    #[test]
    fn the_hand_written_encoding_is_postcards() {
        let every = every_part();
        // Written to and left at their default: held, and stored as not held.
        let mut emptied = Profile::default();
        emptied.orders.count = 0;
        emptied.attributes.country = None;
        assert!(emptied.orders.is_held() && emptied.attributes.is_held());

        for (name, p) in [
            ("every part", every),
            ("emptied", emptied),
            ("filled", filled()),
            ("default", Profile::default()),
        ] {
            let bytes = encode(&p);
            same_bytes(&bytes, &encode_as(&p, STATE_VERSION), name);
            // Read back by hand, and through serde: the same profile (compared as their debug
            // output, which shows every field, the computed ones too: the NaN is not equal to
            // itself), and the same bytes again.
            let hand = decode_by_hand(&bytes).expect("read by hand");
            let serde = decode_serde(STATE_VERSION, &bytes[1..]).unwrap();
            assert_eq!(format!("{hand:?}"), format!("{serde:?}"), "{name}");
            same_bytes(&encode(&hand), &bytes, name);
            same_bytes(&encode(&serde), &bytes, name);
            assert_eq!(
                format!("{:?}", decode(&bytes).unwrap()),
                format!("{serde:?}")
            );
        }
    }

    /// A version 6 state's body: between the version and the timer trailer.
    fn body(bytes: &[u8]) -> &[u8] {
        &bytes[1..bytes.len() - TIMER_TRAILER]
    }

    /// The reader written by hand never reads what serde refuses, nor anything other than what
    /// serde reads: on every truncation of [`every_part`]'s bytes and of `filled()`'s, and on
    /// copies with one byte changed (each byte of `filled()`'s, every seventh of the larger
    /// one's, to a few values each: both tags, the edges of a varint's byte, the byte's
    /// neighbour). A refusal leaves the bytes to serde ([`decode`]).
    #[test]
    fn the_hand_written_reader_reads_only_what_serde_reads() {
        let check = |b: &[u8], what: &str| {
            let hand = read::whole::<Profile>(b);
            let mut state = vec![STATE_VERSION];
            state.extend_from_slice(b);
            state.extend_from_slice(&[0; TIMER_TRAILER]);
            match decode_serde(STATE_VERSION, &state[1..]) {
                Ok(p) => {
                    if let Some(h) = hand {
                        assert_eq!(format!("{h:?}"), format!("{p:?}"), "{what}");
                        // Bit for bit (the debug output shows any NaN as NaN).
                        assert_eq!(encode(&h), encode(&p), "{what}");
                    }
                }
                Err(e) => assert!(
                    hand.is_none(),
                    "{what}: read by hand, refused by serde ({e})"
                ),
            }
        };
        let (mut read_by_hand, mut mangled) = (0, 0);
        for (name, p, stride) in [("filled", filled(), 1), ("every part", every_part(), 7)] {
            let bytes = encode(&p);
            let b = body(&bytes);
            for n in 0..b.len() {
                check(&b[..n], &format!("{name} cut to {n} bytes"));
            }
            for i in (0..b.len()).step_by(stride) {
                for v in [0, 1, 0x7f, 0x80, 0xff, b[i] ^ 1] {
                    let mut m = b.to_vec();
                    m[i] = v;
                    check(&m, &format!("{name}, byte {i} set to {v}"));
                    mangled += 1;
                    read_by_hand += usize::from(read::whole::<Profile>(&m).is_some());
                }
            }
        }
        // Not a test that passes by refusing everything: most changed copies still read.
        assert!(
            read_by_hand * 2 > mangled,
            "{read_by_hand} of {mangled} read by hand"
        );
    }

    /// `a == b`, or where they first differ.
    fn same_bytes(a: &[u8], b: &[u8], name: &str) {
        if let Some(at) = (0..a.len().min(b.len())).find(|&i| a[i] != b[i]) {
            panic!(
                "{name}: byte {at} differs ({} against {}; {} and {} bytes in all)",
                a[at],
                b[at],
                a.len(),
                b.len()
            );
        }
        assert_eq!(a.len(), b.len(), "{name}: one is the other's prefix");
    }

    #[test]
    fn an_exact_repeat_is_recognised_and_the_memory_is_bounded() {
        let mut p = Profile::default();
        let a = message_hash("e1", b"{\"x\":1}");
        assert!(p.first_message(a));
        assert!(!p.first_message(a), "the same id and bytes again");
        assert!(
            p.first_message(message_hash("e1", b"{\"x\":2}")),
            "same id, other content: a different message"
        );
        assert_ne!(message_hash("e", b"1x"), message_hash("e1", b"x"));
        for i in 0..RECENT_MESSAGES as u64 {
            assert!(p.first_message(i));
        }
        assert_eq!(p.seen.len(), RECENT_MESSAGES, "bounded");
        let mut q = Profile::default();
        q.merge(p.clone(), 32);
        assert!(!q.first_message(3), "remembered across a merge");
    }
}
