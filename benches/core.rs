//! Criterion benchmark of the synchronous core on real data: decode (Avro single-object) + apply
//! to the profile + evaluate every segment of `examples/segments.yaml` and its journeys, per
//! event; the same with 50 segments; and timers firing. Decode alone is measured for each framing:
//! single-object (spec and legacy fingerprints), Confluent (registry id) and JSON, and for events
//! with every context set; the audience changes' encoding; and the
//! profile's state encoding both ways (what each commit writes and a cache miss reads).
//!
//! Input: the shipped REES46 and UCI samples, replayed into encoded messages once; profiles live
//! in a HashMap (no RocksDB here: the core only). `cargo bench --bench core`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use tailor::audience::{Core, Outputs, Source};
use tailor::codec::{self, canonical, Family, InputMessage, SchemaCatalog, Variant};
use tailor::event::Event;
use tailor::profile::Profile;
use tailor::replay::{shipped_samples, Produced};
use tailor::segments::SegmentSet;
use tailor::worker::KeyHasher;

// The worker's allocator (src/main.rs): glibc malloc took a fifth of this bench's time. Each
// allocation is counted (a thread-local counter, no atomic): `scripts/icount.sh` reports
// allocations per item next to instructions.
#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Counting;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Bytes allocated less bytes freed by this thread while [`MEASURING`] (requested sizes,
    /// not the allocator's size classes; negative while a drop frees): [`profile_memory`]'s
    /// measure.
    static LIVE: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// On during [`profile_memory`] only: the allocation counts of `scripts/icount.sh` stay as they
/// were; its instruction counts include a load and a branch per allocation and free.
static MEASURING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn live() -> i64 {
    LIVE.with(|n| n.get())
}

#[inline]
fn add_live(bytes: i64) {
    if MEASURING.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = LIVE.try_with(|n| n.set(n.get() + bytes));
    }
}

fn allocations() -> u64 {
    ALLOCATIONS.with(|n| n.get())
}

fn count_one() {
    // `try_with`: not during a thread's teardown, when the counter is gone.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call goes to the worker's allocator, with the same arguments.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_one();
        add_live(layout.size() as i64);
        unsafe { tailor::allocator::Mimalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_one();
        add_live(layout.size() as i64);
        unsafe { tailor::allocator::Mimalloc.alloc_zeroed(layout) }
    }

    /// A growth or shrink counts as an allocation (it may move the block).
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        count_one();
        add_live(new as i64 - layout.size() as i64);
        unsafe { tailor::allocator::Mimalloc.realloc(ptr, layout, new) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        add_live(-(layout.size() as i64));
        unsafe { tailor::allocator::Mimalloc.dealloc(ptr, layout) }
    }
}

fn load() -> Vec<Produced> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    shipped_samples(root).unwrap()
}

fn example_file() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/segments.yaml"))
        .unwrap()
}

fn segments() -> Arc<SegmentSet> {
    Arc::new(SegmentSet::parse(&example_file()).unwrap())
}

/// The example file plus generated segments of every rule kind, 50 in all.
fn fifty_segments() -> Arc<SegmentSet> {
    let src = example_file();
    let (segs, journeys) = src.split_at(src.find("\njourneys:").unwrap());
    let mut extra = String::new();
    let base = SegmentSet::parse(&src).unwrap().len();
    let templates = [
        "count(productPageView, {n}h) >= 3",
        "then_no(addToCart, completeCheckout, {n}h) and cart.items > 0",
        "since(last productPageView) > {n}h and orders.count >= 1",
        "sum(order, {n}d) >= 100",
        "affinity(\"electronics.smartphone\") >= {n}",
        "count_category(productPageView, \"electronics.smartphone\", {n}d) >= 2",
        "then_no(productPageView(\"appliances.kitchen.washer\"), addToCart, {n}h)",
        "in_segment(\"cart-holders\") and count(searchResponseReceived, {n}h) >= 2",
    ];
    for i in 0..50 - base {
        let rule =
            templates[i % templates.len()].replace("{n}", &(i / templates.len() + 1).to_string());
        extra.push_str(&format!("  - id: generated-{i}\n    rule: '{rule}'\n"));
    }
    let set = SegmentSet::parse(&format!("{segs}\n{extra}{journeys}")).unwrap();
    assert_eq!(set.len(), 50);
    Arc::new(set)
}

/// Profiles in memory and the core: what the worker holds, minus RocksDB. The profiles are
/// keyed as the worker's cache keys them: its hasher, and a key copied only when a profile is
/// new (until the fortieth session, SipHash and a copy of the key at every event, not only for a
/// new profile: about 170 instructions and 0.67 allocations per event that were the harness's,
/// not the core's).
struct Run {
    profiles: HashMap<String, Profile, KeyHasher>,
    core: Core,
    out: Outputs,
}

impl Run {
    fn new(set: &Arc<SegmentSet>) -> Run {
        Run {
            profiles: HashMap::with_hasher(KeyHasher::random()),
            core: Core::new(set.clone()),
            out: Outputs::default(),
        }
    }

    fn apply(&mut self, key: &str, ev: &Event) {
        let p = match self.profiles.get_mut(key) {
            Some(p) => p,
            None => self.profiles.entry(key.to_owned()).or_default(),
        };
        self.out.clear();
        let source = Source {
            topic: "t",
            partition: 0,
            offset: 0,
        };
        // A replay: the stream clock is the event's time.
        self.core
            .process(key, p, ev, source, ev.time, &mut self.out);
    }
}

/// The deep workload of the e2e bench in memory: the samples' events over [`DEEP_SHOPPERS`]
/// shoppers, event `j` to shopper `(j × 7919) mod DEEP_SHOPPERS` (the e2e bench's keys), so each
/// shopper's lists fill up and its profile (about 20 KiB) is cold by its next event: the
/// profiles take far more than the CPU's caches, as in the worker. `Deep::pass` applies the next
/// `DEEP_PASS` events.
const DEEP_SHOPPERS: usize = 2_000;
const DEEP_PASS: usize = 100_000;

struct Deep<'a> {
    run: Run,
    keys: Vec<String>,
    events: &'a [(String, Event)],
    next: usize,
}

impl<'a> Deep<'a> {
    /// Shoppers that already saw two passes' events.
    fn warm(set: &Arc<SegmentSet>, events: &'a [(String, Event)]) -> Deep<'a> {
        let mut deep = Deep {
            run: Run::new(set),
            keys: (0..DEEP_SHOPPERS).map(|i| format!("shopper-{i}")).collect(),
            events,
            next: 0,
        };
        deep.pass();
        deep.pass();
        deep
    }

    fn pass(&mut self) {
        for j in self.next..self.next + DEEP_PASS {
            let (_, ev) = &self.events[j % self.events.len()];
            self.run.apply(&self.keys[(j * 7919) % DEEP_SHOPPERS], ev);
        }
        self.next += DEEP_PASS;
    }
}

fn bench(c: &mut Criterion) {
    let events = load();
    let decoder = SchemaCatalog::builtin();
    let now = i64::MAX / 2;
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.sample_size(20);

    // The same events in each framing. Confluent ids 1-3 stand for the three reader schemas.
    let mut confluent_catalog = decoder.clone();
    confluent_catalog.enable_registry();
    for (i, f) in Family::ALL.iter().enumerate() {
        confluent_catalog.resolve_id(i as u32 + 1, decoder.reader_json(f.record_name()));
    }
    type Payloads = Vec<(Family, Vec<u8>)>;
    let framings: Vec<(&str, &SchemaCatalog, Payloads)> = vec![
        (
            "decode_single_object",
            decoder,
            events
                .iter()
                .map(|e| (e.family, e.payload.clone()))
                .collect(),
        ),
        ("decode_single_object_legacy_fingerprint", decoder, {
            // One fingerprint per family (canonicalising the schema per event made the
            // bench's set-up slow).
            let legacy: Vec<[u8; 8]> = Family::ALL
                .iter()
                .map(|f| {
                    let json = decoder.reader_json(f.record_name()).unwrap();
                    canonical::fingerprint(json, Variant::Legacy).unwrap()
                })
                .collect();
            events
                .iter()
                .map(|e| {
                    let mut p = e.payload.clone();
                    let i = Family::ALL.iter().position(|f| *f == e.family).unwrap();
                    p[2..10].copy_from_slice(&legacy[i]);
                    (e.family, p)
                })
                .collect()
        }),
        (
            "decode_confluent",
            &confluent_catalog,
            events
                .iter()
                .map(|e| {
                    let id = Family::ALL.iter().position(|f| *f == e.family).unwrap() as u32 + 1;
                    (e.family, codec::to_confluent(&e.payload, id))
                })
                .collect(),
        ),
        (
            "decode_json",
            decoder,
            events
                .iter()
                .map(|e| {
                    let json = match decoder.decode(e.family, &e.payload).unwrap() {
                        InputMessage::Storefront(v) => serde_json::to_vec(&v),
                        InputMessage::Backoffice(v) => serde_json::to_vec(&v),
                        InputMessage::Profile(v) => serde_json::to_vec(&v),
                    };
                    (e.family, json.unwrap())
                })
                .collect(),
        ),
    ];
    for (name, catalog, payloads) in &framings {
        g.bench_function(*name, |b| {
            b.iter(|| {
                for (family, payload) in payloads {
                    std::hint::black_box(catalog.decode_for_event(*family, payload).unwrap().0);
                }
            })
        });
    }

    // Events as the storefront SDK sends them carry every context set on the page (store,
    // page, shopper, channel, device…), most of which the core does not read: one fully
    // populated event of each type.
    let full = tailor::samples::every_type(1_700_000_000_000);
    println!(
        "payload: {:.0} bytes on average for the samples, {:.0} with every context set",
        events.iter().map(|e| e.payload.len()).sum::<usize>() as f64 / events.len() as f64,
        full.iter().map(|(_, _, p)| p.len()).sum::<usize>() as f64 / full.len() as f64
    );
    g.throughput(Throughput::Elements(full.len() as u64));
    g.bench_function("decode_single_object_every_context", |b| {
        b.iter(|| {
            for (_, family, payload) in &full {
                std::hint::black_box(decoder.decode_for_event(*family, payload).unwrap().0);
            }
        })
    });
    g.throughput(Throughput::Elements(events.len() as u64));

    let decoded: Vec<(String, Event)> = events
        .iter()
        .map(|e| {
            (
                e.key.clone(),
                Event::from_input(
                    decoder.decode_for_event(e.family, &e.payload).unwrap().0,
                    now,
                )
                .unwrap(),
            )
        })
        .collect();
    let set = segments();

    g.bench_function("apply_and_evaluate", |b| {
        b.iter_batched(
            || Run::new(&set),
            |mut run| {
                for (key, ev) in &decoded {
                    run.apply(key, ev);
                }
                run
            },
            BatchSize::LargeInput,
        )
    });

    // Deep shoppers whose profiles are cold at each event (apply and evaluate, decoded).
    g.throughput(Throughput::Elements(DEEP_PASS as u64));
    let mut deep = Deep::warm(&set, &decoded);
    g.bench_function("apply_evaluate_deep", |b| b.iter(|| deep.pass()));
    drop(deep);
    g.throughput(Throughput::Elements(events.len() as u64));

    let fifty = fifty_segments();
    for (name, set) in [
        ("decode_apply_evaluate", &set),
        ("decode_apply_evaluate_50_segments", &fifty),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || Run::new(set),
                |mut run| {
                    for e in &events {
                        let ev = Event::from_input(
                            decoder.decode_for_event(e.family, &e.payload).unwrap().0,
                            now,
                        )
                        .unwrap();
                        run.apply(&e.key, &ev);
                    }
                    run
                },
                BatchSize::LargeInput,
            )
        });
    }

    // Evaluation alone, on profiles already built: the cost per event of the rules.
    let mut run = Run::new(&set);
    for (key, ev) in &decoded {
        run.apply(key, ev);
    }
    let profiles = run.profiles;

    // The audience changes the samples produce, encoded as the worker writes them (generated
    // writer) and through serde (the generic path, same bytes).
    let changes: Vec<tailor::wire::AudienceChange> = {
        let mut run = Run::new(&set);
        let mut all = Vec::new();
        for (key, ev) in &decoded {
            run.apply(key, ev);
            all.append(&mut run.out.changes);
        }
        all
    };
    g.throughput(Throughput::Elements(changes.len() as u64));
    g.bench_function("encode_audience_change", |b| {
        b.iter(|| {
            for c in &changes {
                std::hint::black_box(codec::encode::audience_change(c).unwrap());
            }
        })
    });
    g.bench_function("encode_audience_change_serde", |b| {
        b.iter(|| {
            for c in &changes {
                std::hint::black_box(decoder.encode(codec::AUDIENCE_CHANGE, c).unwrap());
            }
        })
    });
    g.throughput(Throughput::Elements(events.len() as u64));
    let built: Vec<&Profile> = decoded.iter().map(|(k, _)| &profiles[k]).collect();
    g.bench_function("evaluate_segments", |b| {
        let mut results = Vec::with_capacity(set.len());
        b.iter(|| {
            for p in &built {
                set.evaluate(p, p.last_seen.unwrap_or(0), &mut results);
                std::hint::black_box(&results);
            }
        })
    });

    // The profile's state encoding: written (and mirrored to the changelog) at each commit of a
    // changed profile, decoded on a cache miss. One per event here (the profile after the run).
    let encoded: Vec<Vec<u8>> = built.iter().map(|p| tailor::profile::encode(p)).collect();
    println!(
        "state: {:.0} bytes per encoded profile on average",
        encoded.iter().map(Vec::len).sum::<usize>() as f64 / encoded.len().max(1) as f64
    );
    g.bench_function("state_encode", |b| {
        b.iter(|| {
            for p in &built {
                std::hint::black_box(tailor::profile::encode(p));
            }
        })
    });
    g.bench_function("state_decode", |b| {
        b.iter(|| {
            for e in &encoded {
                std::hint::black_box(tailor::profile::decode(e).unwrap());
            }
        })
    });
    g.finish();

    // Timers: every profile built from the samples, its clock jumped to 100 days later (as when
    // a replay catches up with the wall clock): each pending timer fires at its own due time,
    // and the next is scheduled, until none is left.
    let mut run = Run::new(&fifty);
    for (key, ev) in &decoded {
        run.apply(key, ev);
    }
    let pending: Vec<(String, Profile)> = run
        .profiles
        .into_iter()
        .filter(|(_, p)| p.next_timer.is_some())
        .collect();
    let until = decoded.iter().map(|(_, e)| e.time).max().unwrap() + 100 * 86_400_000;
    let mut fired = 0;
    {
        let mut core = Core::new(fifty.clone());
        let mut out = Outputs::default();
        for (k, p) in &pending {
            core.advance(k, &mut p.clone(), until, &mut out);
        }
        fired += out.timers_fired;
    }
    println!(
        "timers: {} profiles with a pending timer fire {fired} timers until none is left",
        pending.len()
    );
    let mut g = c.benchmark_group("timers");
    g.throughput(Throughput::Elements(fired));
    g.sample_size(20);
    g.bench_function("fire_until_none_left_50_segments", |b| {
        b.iter_batched(
            || (Core::new(fifty.clone()), pending.clone()),
            |(mut core, mut profiles)| {
                let mut out = Outputs::default();
                for (k, p) in &mut profiles {
                    core.advance(k, p, until, &mut out);
                    out.clear();
                }
                profiles
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);

/// What a profile takes in memory (the worker's cache holds `state.cache_profiles` of them),
/// printed before the timings: its struct and the heap blocks it owns (bytes asked for, counted
/// by the bench's allocator while the profiles are dropped; the allocator's rounding to its
/// size classes and the cache entry's own come on top), for a shopper after its first event (the
/// wide workload: most shoppers have one or two) and after all of the samples' events, as the
/// events built it (spare capacity and the segments' next changes included) and as read back
/// from its encoded state (what a cache miss holds until its first evaluation adds the next
/// changes), next to the encoded size.
fn profile_memory() {
    let events = load();
    let decoder = SchemaCatalog::builtin();
    let set = segments();
    let decoded: Vec<(String, Event)> = events
        .iter()
        .map(|e| {
            let input = decoder.decode_for_event(e.family, &e.payload).unwrap().0;
            (
                e.key.clone(),
                Event::from_input(input, i64::MAX / 2).unwrap(),
            )
        })
        .collect();
    let first_only: Vec<&(String, Event)> = {
        let mut seen = std::collections::HashSet::new();
        decoded.iter().filter(|(k, _)| seen.insert(k)).collect()
    };
    // The heap a list of profiles owns: what dropping it frees, less the list's own buffer.
    let heap = |profiles: Vec<Profile>| -> f64 {
        let (n, slots) = (profiles.len(), profiles.capacity());
        MEASURING.store(true, std::sync::atomic::Ordering::Relaxed);
        let before = live();
        drop(profiles);
        let freed = before - live();
        MEASURING.store(false, std::sync::atomic::Ordering::Relaxed);
        (freed - (slots * std::mem::size_of::<Profile>()) as i64) as f64 / n as f64
    };
    let line = |what: &str, pairs: Vec<&(String, Event)>| {
        let mut run = Run::new(&set);
        for (key, ev) in pairs {
            run.apply(key, ev);
        }
        let built: Vec<Profile> = run.profiles.into_values().collect();
        let n = built.len();
        let encoded: Vec<Vec<u8>> = built.iter().map(tailor::profile::encode).collect();
        let bytes = encoded.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
        let back: Vec<Profile> = encoded
            .iter()
            .map(|b| tailor::profile::decode(b).unwrap())
            .collect();
        println!(
            "profile memory, {what} ({n} shoppers): {} B struct; heap {:.0} B as the events built it, {:.0} B as read back from its state; {bytes:.0} B encoded",
            std::mem::size_of::<Profile>(),
            heap(built),
            heap(back),
        );
    };
    line("after a shopper's first event", first_only);
    line("after all of the samples' events", decoded.iter().collect());
}

/// With `TAILOR_ICOUNT_STEP` set, runs that one step `TAILOR_ICOUNT_PASSES` times (default 1)
/// over the samples and exits, without criterion: `scripts/icount.sh` runs it under cachegrind
/// twice (one pass, two passes) and takes the difference, the instructions of one pass. On this
/// machine the time of one build moves by ±10 % between runs; the count by about 10
/// instructions per item.
fn main() {
    if let Ok(step) = std::env::var("TAILOR_ICOUNT_STEP") {
        let passes = std::env::var("TAILOR_ICOUNT_PASSES")
            .ok()
            .map(|v| v.parse().expect("TAILOR_ICOUNT_PASSES: a number"))
            .unwrap_or(1);
        icount(&step, passes);
        return;
    }
    profile_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// One step of the bench, `passes` times; prints how many items a pass handles.
fn icount(step: &str, passes: usize) {
    let events = load();
    let decoder = SchemaCatalog::builtin();
    let now = i64::MAX / 2;
    let decoded = || -> Vec<(String, Event)> {
        events
            .iter()
            .map(|e| {
                let input = decoder.decode_for_event(e.family, &e.payload).unwrap().0;
                (e.key.clone(), Event::from_input(input, now).unwrap())
            })
            .collect()
    };
    let built = |set: &Arc<SegmentSet>| -> Vec<Profile> {
        let mut run = Run::new(set);
        let decoded = decoded();
        for (key, ev) in &decoded {
            run.apply(key, ev);
        }
        decoded
            .iter()
            .map(|(k, _)| run.profiles[k].clone())
            .collect()
    };
    let items = match step {
        "decode" => {
            for _ in 0..passes {
                for e in &events {
                    std::hint::black_box(decoder.decode_for_event(e.family, &e.payload).unwrap().0);
                }
            }
            events.len()
        }
        "decode_every_context" => {
            // One event of each type with every context set, as the storefront SDK sends them;
            // 200 times per pass (a count over 30 events moves by thousands per event).
            let full = tailor::samples::every_type(1_700_000_000_000);
            for _ in 0..passes * 200 {
                for (_, family, payload) in &full {
                    std::hint::black_box(decoder.decode_for_event(*family, payload).unwrap().0);
                }
            }
            full.len() * 200
        }
        "apply_evaluate" => {
            let (set, decoded) = (segments(), decoded());
            for _ in 0..passes {
                let mut run = Run::new(&set);
                for (key, ev) in &decoded {
                    run.apply(key, ev);
                }
            }
            decoded.len()
        }
        "apply_evaluate_deep" => {
            let decoded = decoded();
            let mut deep = Deep::warm(&segments(), &decoded);
            for _ in 0..passes {
                deep.pass();
            }
            DEEP_PASS
        }
        "decode_apply_evaluate" | "decode_apply_evaluate_50_segments" => {
            let set = if step.ends_with("50_segments") {
                fifty_segments()
            } else {
                segments()
            };
            for _ in 0..passes {
                let mut run = Run::new(&set);
                for e in &events {
                    let input = decoder.decode_for_event(e.family, &e.payload).unwrap().0;
                    run.apply(&e.key, &Event::from_input(input, now).unwrap());
                }
            }
            events.len()
        }
        "state_encode" => {
            let profiles = built(&segments());
            for _ in 0..passes {
                for p in &profiles {
                    std::hint::black_box(tailor::profile::encode(p));
                }
            }
            profiles.len()
        }
        "state_decode" => {
            let encoded: Vec<Vec<u8>> = built(&segments())
                .iter()
                .map(tailor::profile::encode)
                .collect();
            for _ in 0..passes {
                for e in &encoded {
                    std::hint::black_box(tailor::profile::decode(e).unwrap());
                }
            }
            encoded.len()
        }
        other => panic!(
            "TAILOR_ICOUNT_STEP={other}: one of decode, decode_every_context, apply_evaluate, \
             apply_evaluate_deep, decode_apply_evaluate, decode_apply_evaluate_50_segments, state_encode, state_decode"
        ),
    };
    // Counted over the whole run, set-up included: `scripts/icount.sh` takes the difference
    // of two runs as it does for instructions.
    println!("allocations: {}", allocations());
    println!("items per pass: {items}");
}
