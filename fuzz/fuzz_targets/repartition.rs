//! A message of the repartition topic (the identity protocol between workers) and the profile
//! state it may carry: decoded as a worker reads them. Must never panic or allocate without
//! bound.
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
            let _ = profile::decode(&state);
        }
    }
    let _ = profile::decode(data);
});
