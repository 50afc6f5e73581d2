//! The profile cache's budget (`state.cache_memory`) counts each profile's heap with
//! `footprint::heap_bytes`, walked from the lists' and strings' capacities. This checks the walk
//! against the allocator itself: a counting global allocator (this test binary's own) records
//! the bytes each drop frees on this thread, and for every profile the shipped samples build
//! (as the events build it, after its timers fire, as read back from its state) that is exactly
//! what the walk counts. A part of the profile the walk misses, or counts twice, fails here.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;

use tailor::audience::{Core, Outputs, Source};
use tailor::codec::SchemaCatalog;
use tailor::event::Event;
use tailor::footprint;
use tailor::profile::{self, Profile};
use tailor::replay::shipped_samples;
use tailor::segments::SegmentSet;

struct Counting;

thread_local! {
    /// Bytes allocated less bytes freed by this thread (the sizes asked for).
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn add(bytes: i64) {
    // `try_with`: not during a thread's teardown, when the counter is gone.
    let _ = LIVE.try_with(|n| n.set(n.get() + bytes));
}

fn live() -> i64 {
    LIVE.with(Cell::get)
}

// SAFETY: every call goes to the worker's allocator, with the same arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        unsafe { tailor::allocator::Mimalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        unsafe { tailor::allocator::Mimalloc.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as i64));
        unsafe { tailor::allocator::Mimalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as i64 - layout.size() as i64);
        unsafe { tailor::allocator::Mimalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What dropping `p` frees.
fn freed_by_drop(p: Profile) -> i64 {
    let before = live();
    drop(p);
    before - live()
}

/// The shipped samples' events, keyed by shopper, decoded (stream time: the event's own).
fn sample_events() -> Vec<(String, Event)> {
    let produced = shipped_samples(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
    let catalog = SchemaCatalog::builtin();
    let mut events: Vec<(String, Event)> = produced
        .iter()
        .map(|e| {
            let input = catalog.decode_for_event(e.family, &e.payload).unwrap().0;
            (
                e.key.clone(),
                Event::from_input(input, i64::MAX / 2).unwrap(),
            )
        })
        .collect();
    // One shopper with an event of every type, every field filled (identities, attributes,
    // orders, returns, requisition lists…).
    let t = events.iter().map(|(_, e)| e.time).max().unwrap_or(0);
    for (i, (_, family, payload)) in tailor::samples::every_type(t).into_iter().enumerate() {
        let input = catalog.decode_for_event(family, &payload).unwrap().0;
        let mut ev = Event::from_input(input, i64::MAX / 2).unwrap();
        ev.time = t + i as i64 * 1000;
        events.push(("every-type".to_string(), ev));
    }
    // One deep shopper: the product views and cart adds of the samples, past the bound of the
    // per-product and per-category series and of the affinities (full lists, with their index,
    // and entries pushed out), with more ECIDs than an unindexed list holds.
    let views: Vec<Event> = events
        .iter()
        .filter(|(_, e)| {
            matches!(
                e.kind,
                tailor::event::EventType::ProductPageView | tailor::event::EventType::AddToCart
            )
        })
        .map(|(_, e)| e.clone())
        .take(400)
        .collect();
    events.extend(views.into_iter().map(|e| ("deep".to_string(), e)));
    events
}

#[test]
fn the_walk_counts_exactly_what_a_profile_holds_on_the_heap() {
    let set = Arc::new(
        SegmentSet::parse(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/segments.yaml"),
            )
            .unwrap(),
        )
        .unwrap(),
    );
    let mut core = Core::new(set);
    let mut out = Outputs::default();
    let events = sample_events();
    let source = Source {
        topic: "t",
        partition: 0,
        offset: 0,
    };
    let mut profiles: std::collections::BTreeMap<String, Profile> = Default::default();
    for (key, ev) in &events {
        out.clear();
        let p = profiles.entry(key.clone()).or_default();
        core.process(key, p, ev, source, ev.time, &mut out);
    }
    assert!(profiles.len() > 1000, "{} shoppers", profiles.len());
    let deep = &profiles["deep"];
    let full = |n: usize, max: usize| n == max;
    assert!(
        full(deep.by_product.len(), profile::MAX_KEYED_SERIES)
            && full(deep.by_category.len(), profile::MAX_KEYED_SERIES)
            && full(deep.category_affinity.len(), profile::MAX_AFFINITIES)
            && full(deep.brand_affinity.len(), profile::MAX_AFFINITIES)
            && deep.identities.ecids.len() > profile::INDEXED_FROM,
        "deep: {} products, {} categories, {} category and {} brand affinities, {} ECIDs",
        deep.by_product.len(),
        deep.by_category.len(),
        deep.category_affinity.len(),
        deep.brand_affinity.len(),
        deep.identities.ecids.len()
    );
    // What the worker's shell keeps beside the core's parts: the repartition protocol's
    // positions and the hashes of the messages applied (duplicates skipped).
    let every = profiles.get_mut("every-type").unwrap();
    every.seen.extend([1, 2, 3]);
    every.forwarded.push(4);
    every.hops.push(profile::Hop {
        topic: "a-repartition-topic-named-past-24-bytes".into(),
        partition: 3,
        offset: 9,
    });
    let identity = |n: usize| n;
    let check = |what: &str, p: Profile| -> usize {
        let counted = footprint::heap_bytes(&p, &identity);
        let nexts = footprint::nexts_bytes(&p, &identity);
        assert!(nexts <= counted);
        let freed = freed_by_drop(p);
        assert_eq!(
            freed, counted as i64,
            "{what}: freed {freed}, counted {counted}"
        );
        counted
    };
    let (mut built, mut fired, mut read) = (0, 0, 0);
    let late = events.iter().map(|(_, e)| e.time).max().unwrap() + 400 * 86_400_000;
    for (key, p) in profiles {
        let state = profile::encode(&p);
        // A copy (each list and string at its length) for the timers below.
        let mut later = p.clone();
        // As the events built it (spare capacity, next changes).
        built += check(&key, p);
        // After every timer due within the next 400 days fired (memberships left, recent
        // changes added).
        out.clear();
        core.advance(&key, &mut later, late, &mut out);
        fired += check(&key, later);
        // As read back from its state (lists at their length, no next changes yet).
        let back = profile::decode(&state).unwrap();
        assert_eq!(footprint::nexts_bytes(&back, &identity), 0);
        read += check(&key, back);
    }
    // Something was counted in each form: the walk is not trivially zero.
    assert!(built > 0 && fired > 0 && read > 0, "{built} {fired} {read}");
}
