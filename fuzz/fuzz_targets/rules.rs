//! One segment rule, as a segment writer types it: lexed, parsed, type-checked and planned the
//! way `tailor check` and a SIGHUP reload do. Must never panic, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor_core::segments::SegmentSet;

fuzz_target!(|rule: &str| {
    // A JSON string is a valid YAML double-quoted scalar: the rule reaches the parser verbatim.
    let yaml = format!(
        "segments:\n  - id: fuzzed\n    rule: {}\n",
        serde_json::to_string(rule).expect("a string serialises")
    );
    let _ = SegmentSet::parse(&yaml);
});
