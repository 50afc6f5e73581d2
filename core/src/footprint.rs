//! What a profile holds on the heap: every block its lists, strings and boxes own, walked from
//! their capacities (not from the encoded size, which says little about them: a shopper with an
//! event or two stores a few hundred bytes and holds over a kilobyte on the heap besides its
//! 768-byte struct, which fills mimalloc's 768-byte size class: a field more takes it to the
//! 896-byte one, and the overlay's test of the configured least weight fails until it is updated).
//!
//! The worker bounds its profile cache by memory (`state.cache_memory`) with this count. Each
//! block is passed through `round`, the allocator's size for a request (mimalloc's
//! `mi_good_size` in the worker; the identity to count the bytes asked for, as the exactness
//! test does). Every field of every part is named where it is walked, so a field added is a
//! compile error here until it is counted.

use compact_str::CompactString;
use smallvec::SmallVec;

use crate::event::{Attributes, Line};
use crate::profile::{
    Affinity, CartState, Hop, Identities, JourneyState, KeyedSeries, Membership, OrderStats,
    Profile, RecentChange, RecentOrder,
};

/// Sums heap blocks, each rounded to what the allocator gives for it.
pub struct Meter<'a> {
    bytes: usize,
    round: &'a dyn Fn(usize) -> usize,
}

impl<'a> Meter<'a> {
    pub fn new(round: &'a dyn Fn(usize) -> usize) -> Meter<'a> {
        Meter { bytes: 0, round }
    }

    /// One block of `size` bytes (none for 0: empty lists and strings allocate nothing).
    #[inline]
    pub fn block(&mut self, size: usize) {
        if size > 0 {
            self.bytes += (self.round)(size);
        }
    }

    /// A list's buffer: its capacity, not its length.
    #[inline]
    pub fn list<T>(&mut self, v: &Vec<T>) {
        self.block(v.capacity() * std::mem::size_of::<T>());
    }

    /// A list's buffer and what each element owns.
    #[inline]
    pub fn list_of<T: Footprint>(&mut self, v: &Vec<T>) {
        self.list(v);
        for e in v {
            e.heap(self);
        }
    }

    /// A ring's buffer (its capacity) and what each element owns.
    #[inline]
    pub fn deque_of<T: Footprint>(&mut self, v: &std::collections::VecDeque<T>) {
        self.block(v.capacity() * std::mem::size_of::<T>());
        for e in v {
            e.heap(self);
        }
    }

    /// A small vector's buffer, once it no longer fits inline.
    #[inline]
    pub fn small<A: smallvec::Array>(&mut self, v: &SmallVec<A>) {
        if v.spilled() {
            self.block(v.capacity() * std::mem::size_of::<A::Item>());
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A value's heap blocks (not its own size: that is its owner's).
pub trait Footprint {
    fn heap(&self, m: &mut Meter);
}

impl Footprint for String {
    #[inline]
    fn heap(&self, m: &mut Meter) {
        m.block(self.capacity());
    }
}

impl Footprint for CompactString {
    #[inline]
    fn heap(&self, m: &mut Meter) {
        if self.is_heap_allocated() {
            m.block(self.capacity());
        }
    }
}

impl<T: Footprint> Footprint for Option<T> {
    #[inline]
    fn heap(&self, m: &mut Meter) {
        if let Some(v) = self {
            v.heap(m);
        }
    }
}

impl<T: Footprint> Footprint for Box<T> {
    #[inline]
    fn heap(&self, m: &mut Meter) {
        m.block(std::mem::size_of::<T>());
        (**self).heap(m);
    }
}

/// The heap blocks `p` owns, each rounded by `round` (its own struct not included).
pub fn heap_bytes(p: &Profile, round: &dyn Fn(usize) -> usize) -> usize {
    let mut m = Meter::new(round);
    p.heap(&mut m);
    m.bytes()
}

/// The heap blocks of `p`'s next changes alone ([`crate::segments::KnownNexts`]): a profile
/// read from its state has none until its first evaluation works them out.
pub fn nexts_bytes(p: &Profile, round: &dyn Fn(usize) -> usize) -> usize {
    let mut m = Meter::new(round);
    p.known_nexts.heap(&mut m);
    m.bytes()
}

impl Footprint for Profile {
    fn heap(&self, m: &mut Meter) {
        let Profile {
            identities,
            attributes,
            counters,
            cart,
            orders,
            last_device,
            last_channel,
            first_seen: _,
            last_seen: _,
            events_total: _,
            segments,
            by_category,
            by_product,
            category_affinity,
            brand_affinity,
            recent_products,
            journeys,
            next_timer: _,
            recent_changes,
            hops,
            forwarded,
            seen,
            store_code,
            store_view_code,
            currency,
            known_nexts,
        } = self;
        identities.heap(m);
        // `Sparse` named: its `Deref` would walk the lent default and miss its box.
        crate::footprint::Footprint::heap(attributes, m);
        m.list(counters);
        for (_, series) in counters {
            series.heap(m);
        }
        cart.heap(m);
        crate::footprint::Footprint::heap(orders, m);
        last_device.heap(m);
        last_channel.heap(m);
        m.list_of(segments);
        by_category.footprint(m);
        by_product.footprint(m);
        category_affinity.footprint(m);
        brand_affinity.footprint(m);
        m.deque_of(recent_products);
        m.list_of(journeys);
        m.list_of(recent_changes);
        m.list_of(hops);
        m.list(forwarded);
        m.list(seen);
        store_code.heap(m);
        store_view_code.heap(m);
        currency.heap(m);
        known_nexts.heap(m);
    }
}

impl Footprint for Identities {
    fn heap(&self, m: &mut Meter) {
        let Identities {
            kind: _,
            ecids,
            customer_id,
            emails,
            key,
        } = self;
        ecids.footprint(m);
        customer_id.heap(m);
        m.list_of(emails);
        key.heap(m);
    }
}

impl Footprint for Attributes {
    fn heap(&self, m: &mut Meter) {
        let Attributes {
            first_name,
            last_name,
            email,
            phone,
            gender,
            birth_date,
            country,
            city,
            loyalty_tier,
            loyalty_status,
            loyalty_points: _,
            customer_group,
            consent_email: _,
            consent_sms: _,
        } = self;
        for s in [
            first_name,
            last_name,
            email,
            phone,
            gender,
            birth_date,
            country,
            city,
            loyalty_tier,
            loyalty_status,
            customer_group,
        ] {
            s.heap(m);
        }
    }
}

impl Footprint for CartState {
    fn heap(&self, m: &mut Meter) {
        let CartState {
            id,
            lines,
            updated_at: _,
        } = self;
        id.heap(m);
        m.list_of(lines);
    }
}

impl Footprint for Line {
    fn heap(&self, m: &mut Meter) {
        let Line {
            sku,
            name,
            quantity: _,
            price: _,
            image_url,
            url,
            category,
            brand,
        } = self;
        sku.heap(m);
        name.heap(m);
        image_url.heap(m);
        url.heap(m);
        category.heap(m);
        brand.heap(m);
    }
}

impl Footprint for OrderStats {
    fn heap(&self, m: &mut Meter) {
        let OrderStats {
            count: _,
            revenue: _,
            first_at: _,
            last_at: _,
            cancelled: _,
            cancelled_value: _,
            returns: _,
            refunded: _,
            recent,
            series,
        } = self;
        m.list_of(recent);
        series.heap(m);
    }
}

impl Footprint for RecentOrder {
    fn heap(&self, m: &mut Meter) {
        let RecentOrder {
            id,
            at: _,
            value: _,
        } = self;
        id.heap(m);
    }
}

impl Footprint for Membership {
    fn heap(&self, m: &mut Meter) {
        let Membership {
            segment,
            since: _,
            place: _,
        } = self;
        segment.heap(m);
    }
}

impl Footprint for KeyedSeries {
    fn heap(&self, m: &mut Meter) {
        let KeyedSeries {
            kind: _,
            hash: _,
            key,
            series,
        } = self;
        key.heap(m);
        series.heap(m);
    }
}

impl Footprint for Affinity {
    fn heap(&self, m: &mut Meter) {
        let Affinity {
            key,
            score: _,
            at: _,
            rank: _,
        } = self;
        key.heap(m);
    }
}

impl Footprint for JourneyState {
    fn heap(&self, m: &mut Meter) {
        let JourneyState {
            journey,
            last_at: _,
            causes,
        } = self;
        journey.heap(m);
        m.list(causes);
    }
}

impl Footprint for RecentChange {
    fn heap(&self, m: &mut Meter) {
        let RecentChange {
            segment,
            entered: _,
            at: _,
            cause,
        } = self;
        segment.heap(m);
        cause.heap(m);
    }
}

impl Footprint for Hop {
    fn heap(&self, m: &mut Meter) {
        let Hop {
            topic,
            partition: _,
            offset: _,
        } = self;
        topic.heap(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_profile_owns_nothing() {
        assert_eq!(heap_bytes(&Profile::default(), &|n| n), 0);
    }

    #[test]
    fn lists_count_their_capacity_and_strings_past_the_inline_ones() {
        let mut p = Profile {
            seen: Vec::with_capacity(3),
            // Inline up to 24 bytes: nothing; longer: its buffer.
            currency: Some("EUR".into()),
            store_code: Some(CompactString::from("a-store-code-longer-than-24-bytes")),
            ..Profile::default()
        };
        p.seen.push(1);
        let long = p.store_code.as_ref().unwrap().capacity();
        assert!(long >= 33);
        assert_eq!(heap_bytes(&p, &|n| n), 3 * 8 + long);
        // Each block rounded.
        assert_eq!(
            heap_bytes(&p, &|n| n.next_multiple_of(64)),
            64 + long.next_multiple_of(64)
        );
    }
}
