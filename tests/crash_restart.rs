//! (b) The worker is killed with SIGKILL mid-stream and restarted on the same state: every event
//! is applied to state exactly once, and processing resumes from the offsets committed with it.
//! With the changelog, RocksDB's write-ahead log is off by default: what the killed worker had
//! committed since RocksDB's last flush is lost with its memory and comes back from the
//! changelog at the restart (the test keeps the flush far off, so that is all of it).

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
    // The defaults (changelog on, so no write-ahead log), with no periodic flush before the kill.
    setup.add_setting("state", "flush_interval = \"1h\"");
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
    // Nothing the first worker committed had reached RocksDB's files: it came back from the
    // changelog.
    assert!(
        second.metric("tailor_changelog_restored_records_total", "") > 0.0,
        "the restart restored the commits since the last flush from the changelog:\n{}",
        second.log_text()
    );
    // ...with the input offsets of those commits: the restart resumed after everything the first
    // worker had committed (at least what it reported before the kill), not before it.
    let applied_by_second = second.metric("tailor_events_total", "");
    assert!(
        applied_by_second <= total as f64 - committed_before_kill,
        "{applied_by_second} applied after the restart; the first worker had committed {committed_before_kill} of {total}"
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

/// Without the write-ahead log (the default, with the changelog), a running worker's commits
/// reach RocksDB's files at least every `state.flush_interval`, and its changelog positions are
/// stamped afresh meanwhile even with nothing to commit: `tailor profile` next to it finds what
/// it committed, and says how current the state on disk is, later and later while it idles.
#[test]
fn a_running_workers_state_reaches_the_disk_every_flush_interval() {
    let setup = Setup::new("flush", 2, 200);
    let (topics, config) = (&setup.topics, &setup.config);
    setup.add_setting("state", "flush_interval = \"2s\"");
    // Event time only: no timer fires once caught up, so nothing is committed then.
    setup.add_setting("processing", "wall_clock = false");
    produce_views(&topics.storefront, 10, 0, 3, T0);
    let mut worker = setup.start(1);
    worker.wait_caught_up(30);

    // `tailor profile` on the running worker's state: the profile and the stamp on stderr.
    let read = || {
        let out = std::process::Command::new(bin())
            .args(["profile", "--config"])
            .arg(config)
            .arg("shopper-4")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let stamp = err
            .split("current as of ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|t| humantime::parse_rfc3339(t).ok());
        let events = (out.status.code() == Some(0))
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
            .map(|p| p["events_total"].clone());
        (events, stamp, err)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let first = loop {
        let (events, stamp, err) = read();
        if let (Some(events), Some(stamp)) = (events, stamp) {
            assert_eq!(events, 3, "{err}");
            break stamp;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the profile did not reach the disk of the running worker within 30 s: {err}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // Nothing more to commit: the positions are stamped afresh and flushed all the same.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, stamp, err) = read();
        if stamp.is_some_and(|s| s > first) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the state on disk stayed as of {first:?} for 30 s while the worker idled: {err}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    worker.stop();
}
