//! An input message in JSON framing (the Avro field names), on any of the three input topics:
//! decoded and validated into an event. The first byte picks the family. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor_core::codec::{Family, SchemaCatalog};
use tailor_core::event::Event;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let family = Family::ALL[first as usize % 3];
    let mut msg = Vec::with_capacity(rest.len() + 1);
    if rest.first() != Some(&b'{') {
        msg.push(b'{');
    }
    msg.extend_from_slice(rest);
    if let Ok((decoded, _)) = SchemaCatalog::builtin().decode_input(family, &msg) {
        let _ = Event::from_input(decoded, 1_760_000_000_000);
    }
});
