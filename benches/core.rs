//! Criterion benchmark of the synchronous core on real data: decode (Avro single-object) + apply
//! to the profile + evaluate every segment of `examples/segments.yaml`, per event.
//!
//! Input: the shipped REES46 and UCI samples, replayed into encoded messages once; profiles live
//! in a HashMap (no RocksDB here: the core only). `cargo bench --bench core`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tailor::audience::{Core, Source};
use tailor::codec::{Decoder, SingleObjectDecoder};
use tailor::event::Event;
use tailor::profile::Profile;
use tailor::replay::{Produced, Rees46Reader, UciReader};
use tailor::segments::SegmentSet;

fn load() -> Vec<Produced> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v: Vec<Produced> = Rees46Reader::open(&root.join("samples/rees46-2019oct-sample.csv"))
        .unwrap()
        .collect();
    v.extend(UciReader::open(&root.join("samples/uci-online-retail-sample.csv")).unwrap());
    v
}

fn segments() -> Arc<SegmentSet> {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/segments.yaml"),
    )
    .unwrap();
    Arc::new(SegmentSet::parse(&src).unwrap())
}

/// Profiles in memory and the core: what the worker holds, minus RocksDB.
struct Run {
    profiles: HashMap<String, Profile>,
    core: Core,
    out: Vec<tailor::wire::AudienceChange>,
}

impl Run {
    fn new(set: &Arc<SegmentSet>) -> Run {
        Run {
            profiles: HashMap::new(),
            core: Core::new(set.clone()),
            out: Vec::new(),
        }
    }

    fn apply(&mut self, key: &str, ev: &Event) {
        let p = self.profiles.entry(key.to_owned()).or_default();
        self.out.clear();
        let source = Source {
            topic: "t",
            partition: 0,
            offset: 0,
        };
        self.core.process(key, p, ev, source, &mut self.out);
    }
}

fn bench(c: &mut Criterion) {
    let events = load();
    let decoder = SingleObjectDecoder::default();
    let now = i64::MAX / 2;
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.sample_size(20);

    g.bench_function("decode", |b| {
        b.iter(|| {
            for e in &events {
                std::hint::black_box(decoder.decode(e.family, &e.payload).unwrap());
            }
        })
    });

    let decoded: Vec<(String, Event)> = events
        .iter()
        .map(|e| {
            (
                e.key.clone(),
                Event::from_input(decoder.decode(e.family, &e.payload).unwrap(), now).unwrap(),
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

    g.bench_function("decode_apply_evaluate", |b| {
        b.iter_batched(
            || Run::new(&set),
            |mut run| {
                for e in &events {
                    let ev = Event::from_input(decoder.decode(e.family, &e.payload).unwrap(), now)
                        .unwrap();
                    run.apply(&e.key, &ev);
                }
                run
            },
            BatchSize::LargeInput,
        )
    });

    // Evaluation alone, on profiles already built: the cost per event of the rules.
    let mut run = Run::new(&set);
    for (key, ev) in &decoded {
        run.apply(key, ev);
    }
    let profiles = run.profiles;
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
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
