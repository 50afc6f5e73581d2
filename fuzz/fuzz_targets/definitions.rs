//! A whole segments file (YAML: segments, journeys, consent, windows). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor_core::segments::SegmentSet;

fuzz_target!(|src: &str| {
    let _ = SegmentSet::parse(src);
});
