//! What an event is about to change of what rules read, recorded before it is applied.
//!
//! An audience change's explanation compares the profile just before its cause with the
//! profile after it. Most events flip no membership, so copying everything rules read before
//! each event ([`Profile::copy_rule_inputs`]; 9.5 % of a processing thread's samples, callees
//! included, in the deep e2e profile) was mostly wasted. [`Undo::record`] keeps only the values
//! the event will change: the scalars, the one counter of its type, the per-key series and
//! affinities of its lines, and the cart, orders or attributes when the event is of a kind that
//! changes them. Only when a membership flips is the copy made, from the profile after the
//! event, with those values put back ([`Undo::revert`]). The result evaluates like the copy made before the event: the unit
//! tests compare the two on the shipped samples and on full lists, where an event pushes an
//! entry out.
//!
//! The recording mirrors [`Profile::apply`] (and the identity links made before it), entry by
//! entry. A new key in a full list pushes out the list's first least entry, which is named
//! ahead when the event touches that one key alone (most events: one line); it falls back to
//! the whole of a list rules read where the event may push out an entry it cannot name ahead
//! (a full list, and several distinct keys, at least one of them new: the others' changes may
//! move which goes).

use crate::event::{Attributes, Event, EventType, Line};
use crate::profile::{
    affinity_weight, copy_affinities, copy_keyed, same_key, Affinity, AffinityList, Entry, Indexed,
    KeyedList, KeyedSeries, OrderStats, Profile, RuleReads, CART_EVENTS, KEYED_EVENTS,
    MAX_AFFINITIES, MAX_KEYED_SERIES, ORDER_EVENTS,
};
use crate::window::Series;
use smallvec::SmallVec;

/// The values before an event of what rules read and the event changes. Kept between events
/// for its allocations.
#[derive(Debug, Default)]
pub struct Undo {
    events_total: u64,
    last_seen: Option<i64>,
    last_device: Option<compact_str::CompactString>,
    last_channel: Option<compact_str::CompactString>,
    customer_id: Option<String>,
    emails: Vec<String>,
    attributes: Option<Attributes>,
    /// The event's type, when rules read its counter, and the counter (`None`: absent).
    counter_kind: Option<EventType>,
    counter: Option<Series>,
    /// The cart's lines, when `cart_recorded` (kept between events for its allocation).
    cart_lines: Vec<Line>,
    cart_recorded: bool,
    /// The order statistics rules read (not the recent orders), when `orders_recorded`.
    orders: OrderStats,
    orders_recorded: bool,
    by_category: Keyed<KeyedSeries>,
    by_product: Keyed<KeyedSeries>,
    category_affinity: Keyed<Affinity>,
    brand_affinity: Keyed<Affinity>,
}

/// What an event may change of one list rules read entries of.
#[derive(Debug)]
struct Keyed<T> {
    /// Every entry rules read, before, when `whole_used` (the event may push out one it cannot
    /// name ahead).
    whole: Vec<T>,
    whole_used: bool,
    /// Else the entries rules read that the event touches: `used` of them are this event's,
    /// each the entry before (`None`: absent) under its (kind, key).
    entries: Vec<(EventType, String, Option<T>)>,
    used: usize,
}

impl<T> Default for Keyed<T> {
    fn default() -> Self {
        Keyed {
            whole: Vec::new(),
            whole_used: false,
            entries: Vec::new(),
            used: 0,
        }
    }
}

impl<T: Clone> Keyed<T> {
    fn clear(&mut self) {
        self.whole_used = false;
        self.used = 0;
    }

    /// Records `before` under (kind, key), reusing the slots of earlier events.
    fn push(&mut self, kind: EventType, key: &str, before: Option<&T>) {
        match self.entries.get_mut(self.used) {
            Some(slot) => {
                slot.0 = kind;
                slot.1.clear();
                slot.1.push_str(key);
                match (&mut slot.2, before) {
                    (Some(s), Some(b)) => s.clone_from(b),
                    (s, b) => *s = b.cloned(),
                }
            }
            None => self.entries.push((kind, key.to_owned(), before.cloned())),
        }
        self.used += 1;
    }

    /// Puts the recorded entries back into `list` (a copy of what rules read), found by `is`.
    /// A list the event did not change is left as it is (its index not made again).
    fn revert(&self, list: &mut Indexed<T>, is: impl Fn(&T, EventType, &str) -> bool)
    where
        T: Entry,
    {
        if !self.whole_used && self.used == 0 {
            return;
        }
        list.edit(|list| {
            if self.whole_used {
                list.clone_from(&self.whole);
                return;
            }
            for (kind, key, before) in &self.entries[..self.used] {
                let at = list.iter().position(|e| is(e, *kind, key));
                match (at, before) {
                    (Some(i), Some(b)) => list[i].clone_from(b),
                    (Some(i), None) => {
                        list.remove(i);
                    }
                    (None, Some(b)) => list.push(b.clone()),
                    (None, None) => {}
                }
            }
        });
    }
}

fn is_series(s: &KeyedSeries, kind: EventType, key: &str) -> bool {
    s.kind == kind && s.key == key
}

fn is_affinity(a: &Affinity, _: EventType, key: &str) -> bool {
    same_key(&a.key, key)
}

/// The distinct categories (or brands) of an event's lines, in order (a few: kept on the stack).
fn distinct<'a>(
    lines: &'a [Line],
    of: impl Fn(&'a Line) -> Option<&'a str>,
) -> SmallVec<[&'a str; 4]> {
    let mut keys: SmallVec<[&str; 4]> = SmallVec::new();
    for k in lines.iter().filter_map(of) {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

impl Undo {
    /// Records what `ev` is about to change of what `reads` names in `p`: call it before the
    /// identity links and [`Profile::apply`].
    pub fn record(&mut self, p: &Profile, ev: &Event, reads: &RuleReads) {
        self.events_total = p.events_total;
        self.last_seen = p.last_seen;
        self.last_device.clone_from(&p.last_device);
        self.last_channel.clone_from(&p.last_channel);
        self.customer_id.clone_from(&p.identities.customer_id);
        self.emails.clone_from(&p.identities.emails);
        self.attributes = ev.attributes.as_ref().map(|_| (*p.attributes).clone());
        self.counter_kind = reads
            .counters
            .binary_search(&ev.kind)
            .is_ok()
            .then_some(ev.kind);
        if self.counter_kind.is_some() {
            match (&mut self.counter, p.series(ev.kind)) {
                (Some(s), Some(b)) => s.clone_from(b),
                (s, b) => *s = b.cloned(),
            }
        }
        self.cart_recorded = CART_EVENTS.contains(&ev.kind);
        if self.cart_recorded {
            self.cart_lines.clone_from(&p.cart.lines);
        }
        self.orders_recorded = ORDER_EVENTS.contains(&ev.kind);
        if self.orders_recorded {
            self.orders.copy_rule_inputs(&p.orders, reads.order_series);
        }
        for k in [&mut self.by_category, &mut self.by_product] {
            k.clear();
        }
        self.category_affinity.clear();
        self.brand_affinity.clear();
        if ev.lines.is_empty() {
            return;
        }
        if KEYED_EVENTS.contains(&ev.kind) && !reads.by_product.is_empty() {
            let skus: SmallVec<[&str; 4]> = ev.lines.iter().map(|l| l.sku.as_str()).collect();
            record_keyed(
                &mut self.by_product,
                &p.by_product,
                ev.kind,
                &skus,
                &reads.by_product,
            );
        }
        let keyed_categories = KEYED_EVENTS.contains(&ev.kind) && !reads.by_category.is_empty();
        let affinities = affinity_weight(ev.kind) > 0.0;
        if !keyed_categories && !affinities {
            return;
        }
        let categories = distinct(&ev.lines, |l| l.category.as_deref());
        if keyed_categories {
            record_keyed(
                &mut self.by_category,
                &p.by_category,
                ev.kind,
                &categories,
                &reads.by_category,
            );
        }
        if affinities {
            record_affinities(
                &mut self.category_affinity,
                &p.category_affinity,
                &categories,
                reads.category_affinity,
                &reads.category_affinity_keys,
            );
            let brands = distinct(&ev.lines, |l| l.brand.as_deref());
            record_affinities(
                &mut self.brand_affinity,
                &p.brand_affinity,
                &brands,
                reads.brand_affinity,
                &reads.brand_affinity_keys,
            );
        }
    }

    /// How many lists the last recording copied whole (the event may push out an entry it
    /// cannot name ahead).
    #[cfg(test)]
    pub(crate) fn whole_lists(&self) -> usize {
        [
            self.by_category.whole_used,
            self.by_product.whole_used,
            self.category_affinity.whole_used,
            self.brand_affinity.whole_used,
        ]
        .iter()
        .filter(|&&w| w)
        .count()
    }

    /// Turns `copy` — what `reads` names of the profile after the event
    /// ([`Profile::copy_rule_inputs`]) — into the same of the profile before it.
    pub fn revert(&self, copy: &mut Profile, reads: &RuleReads) {
        copy.events_total = self.events_total;
        copy.last_seen = self.last_seen;
        copy.last_device.clone_from(&self.last_device);
        copy.last_channel.clone_from(&self.last_channel);
        copy.identities.customer_id.clone_from(&self.customer_id);
        copy.identities.emails.clone_from(&self.emails);
        if let Some(a) = &self.attributes {
            *copy.attributes = a.clone();
        }
        if let Some(kind) = self.counter_kind {
            let at = copy.counters.binary_search_by_key(&kind, |(k, _)| *k);
            match (at, &self.counter) {
                (Ok(i), Some(b)) => copy.counters[i].1.clone_from(b),
                (Ok(i), None) => {
                    copy.counters.remove(i);
                }
                (Err(i), Some(b)) => copy.counters.insert(i, (kind, b.clone())),
                (Err(_), None) => {}
            }
        }
        if self.cart_recorded {
            copy.cart.lines.clone_from(&self.cart_lines);
        }
        if self.orders_recorded {
            copy.orders
                .copy_rule_inputs(&self.orders, reads.order_series);
        }
        self.by_category.revert(&mut copy.by_category, is_series);
        self.by_product.revert(&mut copy.by_product, is_series);
        self.category_affinity
            .revert(&mut copy.category_affinity, is_affinity);
        self.brand_affinity
            .revert(&mut copy.brand_affinity, is_affinity);
    }
}

/// Whether an event about `touched` keys pushes an entry out of a list of `len` entries of at
/// most `max`: each distinct key of `touched` that is `absent` adds one. Only looked for when
/// the list is that close to full (most events cannot push one out).
fn pushes_out(len: usize, touched: &[&str], max: usize, absent: impl Fn(&str) -> bool) -> bool {
    if len + touched.len() <= max {
        return false;
    }
    let new = touched
        .iter()
        .enumerate()
        .filter(|(i, k)| !touched[..*i].contains(k) && absent(k))
        .count();
    len + new > max
}

/// Records the per-key series rules read (`keys`) that an event of `kind` about `touched` keys
/// changes in `list`.
fn record_keyed(
    undo: &mut Keyed<KeyedSeries>,
    list: &KeyedList,
    kind: EventType,
    touched: &[&str],
    keys: &[(EventType, String)],
) {
    if keys.is_empty() {
        return;
    }
    let find = |key: &str| list.get(kind, key);
    if pushes_out(list.len(), touched, MAX_KEYED_SERIES, |k| find(k).is_none()) {
        // A new key pushes out the least recently active series, which may be one rules read.
        if let Some(key) = only_key(touched) {
            // Named ahead: the list's first least recently active series (the one
            // `KeyedList::add` pushes out) goes back, the new key's goes.
            let out = &list[list.first_least().expect("a full list")];
            if RuleReads::reads_key(keys, kind, key) {
                undo.push(kind, key, None);
            }
            if RuleReads::reads_keyed(keys, out) {
                undo.push(out.kind, &out.key, Some(out));
            }
            return;
        }
        copy_keyed(&mut undo.whole, list, keys);
        undo.whole_used = true;
        return;
    }
    for key in touched {
        if RuleReads::reads_key(keys, kind, key) {
            undo.push(kind, key, find(key));
        }
    }
}

/// The one key `touched` names (an event's lines may name it more than once), if one.
fn only_key<'a>(touched: &[&'a str]) -> Option<&'a str> {
    let (first, rest) = touched.split_first()?;
    rest.iter().all(|k| k == first).then_some(*first)
}

/// Records the affinities rules read (all, or those `keys` names) that an event about
/// `touched` keys changes in `list`.
fn record_affinities(
    undo: &mut Keyed<Affinity>,
    list: &AffinityList,
    touched: &[&str],
    all: bool,
    keys: &[String],
) {
    if touched.is_empty() || (!all && keys.is_empty()) {
        return;
    }
    let find = |key: &str| list.get(key);
    // `top_category()` reads them all, but an event changes only the affinities of its keys
    // (the others' values are unchanged, and `top()` breaks ties by key, not by place).
    let read = |key: &str| all || keys.iter().any(|name| same_key(name, key));
    // Affinities are by key alone: the kind recorded is not compared (`is_affinity`).
    let kind = EventType::ProductPageView;
    if pushes_out(list.len(), touched, MAX_AFFINITIES, |k| find(k).is_none()) {
        // A new key pushes out the weakest, which may be one rules read.
        if let Some(key) = only_key(touched) {
            // Named ahead: the list's first weakest (the one `AffinityList::add` pushes out)
            // goes back, the new key's goes.
            let out = &list[list.first_least().expect("a full list")];
            if read(key) {
                undo.push(kind, key, None);
            }
            if read(&out.key) {
                undo.push(kind, &out.key, Some(out));
            }
            return;
        }
        copy_affinities(&mut undo.whole, list, all, keys);
        undo.whole_used = true;
        return;
    }
    for key in touched {
        if read(key) {
            undo.push(kind, key, find(key));
        }
    }
}
