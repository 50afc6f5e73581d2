//! An input message in Confluent framing (`00`, a 4-byte schema id, the body), with a registry
//! that answered ids 1 to 3 with the three input schemas: decoded and validated into an event.
//! The first byte picks the family. Must never panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tailor_core::codec::{Family, SchemaCatalog};
use tailor_core::event::Event;

static CATALOG: LazyLock<SchemaCatalog> = LazyLock::new(|| {
    let mut c = SchemaCatalog::builtin().clone();
    c.enable_registry();
    for (id, family) in [(1, Family::Storefront), (2, Family::Backoffice), (3, Family::Profile)] {
        let json = SchemaCatalog::builtin()
            .reader_json(family.record_name())
            .expect("input schemas are built in");
        c.resolve_id(id, Some(json));
    }
    c
});

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let family = Family::ALL[data[0] as usize % 3];
    let mut msg = vec![0u8, 0, 0, 0, 1 + data[1] % 4];
    msg.extend_from_slice(&data[2..]);
    if let Ok((decoded, _)) = CATALOG.decode_input(family, &msg) {
        let _ = Event::from_input(decoded, 1_760_000_000_000);
    }
});
