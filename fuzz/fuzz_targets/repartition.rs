//! A message of the repartition topic (the identity protocol between workers) and the profile
//! state it may carry: decoded as a worker reads them. Must never panic or allocate without
//! bound. Profile state read by hand (`profile::decode_by_hand`) must be read the same through
//! serde (`profile::decode_serde`): never a profile serde refuses, never another one. A profile
//! that decodes is encoded again both ways: the hand-written encoding (`profile::encode`) must
//! be postcard's through serde (`profile::encode_as`), byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor_core::identity::{self, Message};
use tailor_core::profile;

fuzz_target!(|data: &[u8]| {
    if let Ok(internal) = identity::decode(data) {
        if let Message::Merge {
            profile: Some(state),
            ..
        } = internal.message
        {
            same_both_ways(&state);
        }
    }
    same_both_ways(data);
});

fn same_both_ways(state: &[u8]) {
    if let Some(by_hand) = profile::decode_by_hand(state) {
        match profile::decode_serde(state[0], &state[1..]) {
            // Compared as their debug output: every field, the computed ones too (a NaN is
            // not equal to itself).
            Ok(p) => {
                assert!(
                    format!("{by_hand:?}") == format!("{p:?}"),
                    "read by hand as another profile than serde reads"
                );
                // Bit for bit (the debug output shows any NaN as NaN).
                assert!(
                    profile::encode(&by_hand) == profile::encode(&p),
                    "read by hand with other bits than serde reads"
                );
            }
            Err(e) => panic!("read by hand, refused by serde: {e}"),
        }
    }
    if let Ok(p) = profile::decode(state) {
        assert!(
            profile::encode(&p) == profile::encode_as(&p, profile::STATE_VERSION),
            "the hand-written encoding differs from postcard's"
        );
    }
}
