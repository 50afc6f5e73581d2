//! An input message in single-object Avro framing (`C3 01`, an 8-byte fingerprint, the body),
//! on any of the three input topics: decoded with the built-in writer schemas and validated into
//! an event. The first byte picks the family; the second picks the fingerprint of one of the
//! known writer schemas, so the fuzzer reaches the body decoder (0xFF: the bytes as they are).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tailor_core::codec::{Family, SchemaCatalog};
use tailor_core::event::Event;

/// The 8 fingerprint bytes of every known writer schema, as written after `C3 01`.
static FINGERPRINTS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    SchemaCatalog::builtin()
        .known()
        .into_iter()
        .map(|(_, hex)| {
            (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
});

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let family = Family::ALL[data[0] as usize % 3];
    let mut msg = Vec::with_capacity(data.len() + 10);
    if data[1] != 0xFF && !FINGERPRINTS.is_empty() {
        msg.extend_from_slice(&[0xC3, 0x01]);
        msg.extend_from_slice(&FINGERPRINTS[data[1] as usize % FINGERPRINTS.len()]);
    }
    msg.extend_from_slice(&data[2..]);
    if let Ok((decoded, _)) = SchemaCatalog::builtin().decode_input(family, &msg) {
        let _ = Event::from_input(decoded, 1_760_000_000_000);
    }
});
