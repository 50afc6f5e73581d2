//! The profile's state bytes as the worker writes them (`profile::encode`, written by hand) are
//! postcard's through serde (`profile::encode_as`, the reference), byte for byte, and read back
//! by hand (`profile::decode_by_hand`, what `profile::decode` tries first) as serde reads them
//! (`profile::decode_serde`), on the profiles the shipped samples of real data build: every
//! shopper after each of its events, through the core with the example segments (memberships,
//! recent changes and timers filled as the worker fills them). Pure: no broker, no RocksDB.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tailor::audience::{Core, Outputs, Source};
use tailor::codec::SchemaCatalog;
use tailor::event::Event;
use tailor::profile::{self, Profile, STATE_VERSION};
use tailor::replay::shipped_samples;
use tailor::segments::SegmentSet;

#[test]
fn the_samples_profiles_encode_and_decode_as_postcard_does() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let produced = shipped_samples(root).unwrap();
    let set =
        SegmentSet::parse(&std::fs::read_to_string(root.join("examples/segments.yaml")).unwrap())
            .unwrap();
    let mut core = Core::new(Arc::new(set));
    let decoder = SchemaCatalog::builtin();
    let mut profiles: HashMap<String, Profile> = HashMap::new();
    let mut out = Outputs::default();
    let (mut compared, mut bytes) = (0usize, 0usize);
    let (mut in_segments, mut with_orders, mut with_products) = (0, 0, 0);
    for m in &produced {
        let input = decoder.decode(m.family, &m.payload).unwrap();
        let ev = Event::from_input(input, i64::MAX / 2).unwrap();
        let p = profiles.entry(m.key.clone()).or_default();
        out.clear();
        let source = Source {
            topic: "t",
            partition: 0,
            offset: 0,
        };
        core.process(&m.key, p, &ev, source, ev.time, &mut out);
        let written = profile::encode(p);
        let reference = profile::encode_as(p, STATE_VERSION);
        if written != reference {
            let at = written
                .iter()
                .zip(&reference)
                .position(|(a, b)| a != b)
                .unwrap_or(written.len().min(reference.len()));
            panic!(
                "shopper {}'s profile after event {} is not encoded as postcard encodes it: \
                 byte {at} differs ({} and {} bytes in all)",
                m.key,
                ev.id,
                written.len(),
                reference.len()
            );
        }
        // Read back both ways: the same profile (every field, the computed ones too, shown by
        // its debug output).
        let by_hand = profile::decode_by_hand(&written).unwrap_or_else(|| {
            panic!(
                "shopper {}'s profile after event {} is not read by hand",
                m.key, ev.id
            )
        });
        let by_serde = profile::decode_serde(STATE_VERSION, &written[1..]).unwrap();
        assert_eq!(
            format!("{by_hand:?}"),
            format!("{by_serde:?}"),
            "shopper {}'s profile after event {}, read by hand and through serde",
            m.key,
            ev.id
        );
        compared += 1;
        bytes += written.len();
        in_segments += usize::from(!p.segments.is_empty());
        with_orders += usize::from(p.orders.is_held());
        with_products += usize::from(!p.recent_products.is_empty());
    }
    println!(
        "{compared} profiles compared ({} bytes on average); {in_segments} in segments, \
         {with_orders} with orders, {with_products} with products viewed",
        bytes / compared.max(1)
    );
    // What the comparison covered: the samples' profiles fill these parts (no journey state:
    // the unit test `the_hand_written_encoding_is_postcards` in the core covers it).
    assert!(compared > 5_000, "{compared} profiles");
    assert!(in_segments > 0 && with_orders > 0 && with_products > 0);
}
