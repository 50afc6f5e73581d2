//! (b) The worker is killed with SIGKILL mid-stream and restarted on the same state: every event
//! is applied to state exactly once, and processing resumes from the offsets stored in RocksDB.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use rdkafka::Message;
use tailor::codec::decode;
use tailor::wire::Direction;

const SHOPPERS: usize = 300;
/// Views per shopper produced before the kill and after it: the kill usually lands mid-stream
/// (the first worker is some 3,000 events in); those produced after it make sure the restart has
/// work to resume whatever the timing.
const BEFORE_KILL: usize = 100;
const AFTER_KILL: usize = 20;
const PER_SHOPPER: usize = BEFORE_KILL + AFTER_KILL;
const T0: i64 = 1_709_287_200_000;

#[test]
fn a_hard_kill_loses_nothing_and_applies_nothing_twice() {
    let setup = Setup::new("crash", 4, 200);
    let (topics, config) = (&setup.topics, &setup.config);
    let total = (SHOPPERS * PER_SHOPPER) as u64;
    produce_views(&topics.storefront, SHOPPERS, 0, BEFORE_KILL, T0);

    let mut first = setup.start(1);
    first.wait_for(Duration::from_secs(120), "some batches committed", |w| {
        w.input_offsets() >= 3000
    });
    let committed_before_kill = first.input_offsets() as f64;
    first.kill_hard();
    if committed_before_kill >= (SHOPPERS * BEFORE_KILL) as f64 {
        eprintln!("the first worker had committed everything before the kill");
    }
    produce_views(&topics.storefront, SHOPPERS, BEFORE_KILL, AFTER_KILL, T0);

    let mut second = setup.start(2);
    second.wait_caught_up(total);
    let applied_by_second = second.metric("tailor_events_total", "");
    assert!(
        applied_by_second < total as f64,
        "the restart resumed from the stored offsets, not from the beginning ({applied_by_second} applied)"
    );
    assert!(
        second.log_text().contains("offset=Offset("),
        "assignment used stored offsets:\n{}",
        second.log_text()
    );
    second.stop();

    // Exactly once to state: every shopper's counters equal a single pass over its events.
    for s in (0..SHOPPERS).step_by(10) {
        let prof = profile(config, &format!("shopper-{s}")).expect("profile");
        assert_eq!(prof["events_total"], PER_SHOPPER, "shopper-{s}");
        assert_eq!(
            prof["counts"]["productPageView"]["24h"], PER_SHOPPER,
            "shopper-{s}"
        );
    }

    // At-least-once output with stable ids: each shopper entered active-browsers under one id.
    // (Once caught up, the clock follows the wall clock and the 2024 views leave the 24 h
    // window: the EXITED changes a timer causes keep one id per shopper too.)
    let out = read_topic_until_quiet(&topics.audience, 4, Duration::from_secs(3));
    let mut ids: HashMap<(String, Direction), HashSet<String>> = HashMap::new();
    for m in &out {
        let c = decode::audience_change(m.payload().unwrap()).unwrap();
        assert_eq!(c.segment_id, "active-browsers");
        ids.entry((c.profile_key, c.direction))
            .or_default()
            .insert(c.id);
    }
    let entered = ids.keys().filter(|(_, d)| *d == Direction::Entered).count();
    assert_eq!(entered, SHOPPERS, "every shopper entered");
    assert!(
        ids.values().all(|set| set.len() == 1),
        "a re-sent change keeps its id"
    );
}
