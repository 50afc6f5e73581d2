//! State that moves between workers, through the changelog topic, against the real broker:
//! a worker whose state directory is lost restores it and goes on from the restored offsets;
//! two workers share a group, one is killed with SIGKILL for good and the other takes its
//! partitions over from the changelog; workers join one by one during a replay; a worker's
//! processing threads split its partitions over one store. In every case the profiles equal one
//! pass over the input and no output id stands for two different changes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::Message;
use tailor::codec::decode;
use tailor::wire::Direction;

const T0: i64 = 1_709_287_200_000;
const PARTITIONS: i32 = 4;

/// `line` added to section `[section]` of the setup's configuration.
fn with_setting(s: Setup, section: &str, line: &str) -> Setup {
    s.add_setting(section, line);
    s
}

/// A setup whose clocks follow event time only: the 2024 views stay in their windows (with the
/// wall clock, caught-up partitions would let them expire and EXIT).
fn event_time_only(s: Setup) -> Setup {
    with_setting(s, "processing", "wall_clock = false")
}

/// Product views of the test's shoppers (see [`produce_views`]).
fn views(topic: &str, shoppers: usize, from: usize, per_shopper: usize) {
    produce_views(topic, shoppers, from, per_shopper, T0);
}

/// The profile of `key` from whichever worker holds it (the others answer 421). A partition's
/// offsets show in the metrics a moment before its new owner serves it: asked again for up to 5 s.
fn served(workers: &[&Worker], key: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        for w in workers {
            if let Some((200, body)) = w.get(&format!("/profiles/{key}")) {
                return serde_json::from_str(&body).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs: Vec<String> = workers.iter().map(|w| w.log_text()).collect();
    panic!(
        "no worker serves {key}; their logs:\n{}",
        logs.join("\n----\n")
    );
}

/// Every audience change on the topic, checking that an id never stands for two different
/// changes; returns the distinct (profile, direction) pairs with their ids.
fn changes_by_id(topic: &str) -> HashMap<(String, Direction), Vec<String>> {
    let out = read_topic_until_quiet(topic, PARTITIONS, Duration::from_secs(3));
    let mut by_id: HashMap<String, (String, String, Direction, i64)> = HashMap::new();
    let mut pairs: HashMap<(String, Direction), Vec<String>> = HashMap::new();
    for m in &out {
        let c = decode::audience_change(m.payload().unwrap()).unwrap();
        let what = (
            c.profile_key.clone(),
            c.segment_id.to_string(),
            c.direction,
            c.event_time,
        );
        match by_id.get(&c.id) {
            Some(before) => assert_eq!(before, &what, "id {} reused for another change", c.id),
            None => {
                by_id.insert(c.id.clone(), what);
                pairs
                    .entry((c.profile_key, c.direction))
                    .or_default()
                    .push(c.id);
            }
        }
    }
    pairs
}

#[test]
fn a_worker_whose_state_is_lost_restores_it_from_the_changelog() {
    const SHOPPERS: usize = 200;
    let setup = event_time_only(Setup::new("state-lost", PARTITIONS, 300));
    let topics = &setup.topics;
    // 40 views each: not yet active browsers (50 in 24 h).
    views(&topics.storefront, SHOPPERS, 0, 40);
    let mut first = setup.start(1);
    first.wait_caught_up((SHOPPERS * 40) as u64);
    assert_eq!(
        first.metric("tailor_segment_members", "segment=\"active-browsers\""),
        0.0
    );
    first.stop();

    // The volume is lost; 15 more views each arrive meanwhile: only with the 40 restored do
    // they make active browsers. The changelog also holds a timer record as versions before
    // the timer index was left out wrote them (column family 3, then partition, due time and
    // profile key), in a batch of its own: skipped, and retired with a tombstone.
    std::fs::remove_dir_all(setup.dir.path().join("state")).unwrap();
    let mut old_timer = vec![3, 0, 0, 0, 0];
    old_timer.extend_from_slice(&((T0 as u64) ^ (1 << 63)).to_be_bytes());
    old_timer.extend_from_slice(b"shopper-0");
    let p = producer();
    produce_to(&p, &topics.changelog, 0, Some(&old_timer), b"");
    produce_to(&p, &topics.changelog, 0, Some(&[0xFF]), b"");
    views(&topics.storefront, SHOPPERS, 40, 15);
    let mut second = setup.start(2);
    second.wait_caught_up((SHOPPERS * 55) as u64);
    let applied = second.metric("tailor_events_total", "");
    assert_eq!(
        applied,
        (SHOPPERS * 15) as f64,
        "only the events after the restored offsets are applied"
    );
    assert!(second.metric("tailor_changelog_restored_records_total", "") > 0.0);
    assert_eq!(
        second.metric("tailor_changelog_records_total", "kind=\"compensation\""),
        1.0,
        "the old timer record's tombstone"
    );
    assert_eq!(
        second.metric("tailor_segment_members", "segment=\"active-browsers\""),
        SHOPPERS as f64,
        "the restored counts made every shopper enter"
    );
    for s in (0..SHOPPERS).step_by(7) {
        let p = served(&[&second], &format!("shopper-{s}"));
        assert_eq!(p["events_total"], 55, "shopper-{s}: {p}");
    }
    second.stop();
    for line in [
        "partition restored from the changelog",
        "timer records an earlier version wrote to the changelog retired",
    ] {
        assert!(second.log_text().contains(line), "{}", second.log_text());
    }

    // One ENTER per shopper.
    let pairs = changes_by_id(&topics.audience);
    let entered = pairs
        .iter()
        .filter(|((_, d), _)| *d == Direction::Entered)
        .count();
    assert_eq!(entered, SHOPPERS);
    assert!(pairs
        .iter()
        .filter(|((_, d), _)| *d == Direction::Entered)
        .all(|(_, ids)| ids.len() == 1));

    // Lost again, and nothing more arrives for the shoppers: their timers (when the views
    // leave the 24 h window) come back with the restored profiles (the changelog carries no
    // timer index). Views of other shoppers, two days later, move every partition's clock
    // past them: each shopper exits, by its timer alone.
    std::fs::remove_dir_all(setup.dir.path().join("state")).unwrap();
    const TICKS: usize = 40;
    let ticks: Vec<(String, Vec<u8>)> = (0..TICKS)
        .map(|i| {
            let key = format!("tick-{i}");
            let ev = tailor::samples::storefront(
                "productPageView",
                &format!("tick-{i}"),
                T0 + 2 * 86_400_000,
                &format!("ecid-tick-{i}"),
            );
            (key, tailor::codec::encode::storefront(&ev).unwrap())
        })
        .collect();
    let refs: Vec<(&str, &str, Vec<u8>)> = ticks
        .iter()
        .map(|(k, v)| (topics.storefront.as_str(), k.as_str(), v.clone()))
        .collect();
    produce_all(&producer(), &refs);
    let mut third = setup.start(3);
    third.wait_caught_up((SHOPPERS * 55 + TICKS) as u64);
    third.wait_for(
        Duration::from_secs(60),
        "the restored shoppers' timers to fire",
        |w| w.metric("tailor_timers_fired_total", "") >= SHOPPERS as f64,
    );
    third.wait_for(
        Duration::from_secs(30),
        "active-browsers to be empty (the restored size less every exit)",
        |w| w.metric("tailor_segment_members", "segment=\"active-browsers\"") == 0.0,
    );
    assert_eq!(
        third.metric("tailor_events_total", ""),
        TICKS as f64,
        "only the ticks are applied"
    );
    third.stop();
    let pairs = changes_by_id(&topics.audience);
    for s in 0..SHOPPERS {
        let ids = pairs
            .get(&(format!("shopper-{s}"), Direction::Exited))
            .unwrap_or_else(|| panic!("shopper-{s} never exited"));
        assert_eq!(ids.len(), 1, "shopper-{s} exited once: {ids:?}");
    }
}

/// A worker that ran without the changelog (state from before it existed) writes its state to it
/// at the next start (the seed); a worker that then loses its volume restores from it.
#[test]
fn state_from_before_the_changelog_is_seeded_into_it() {
    const SHOPPERS: usize = 100;
    let setup = event_time_only(Setup::new("seed", PARTITIONS, 300));
    let topics = &setup.topics;
    setup.add_setting("state", "changelog = false");
    views(&topics.storefront, SHOPPERS, 0, 40);
    let mut first = setup.start(1);
    first.wait_caught_up((SHOPPERS * 40) as u64);
    first.stop();

    setup.edit_config(|text| text.replace("changelog = false\n", ""));
    let mut second = setup.start(2);
    assert_eq!(
        second.metric("tailor_events_total", ""),
        0.0,
        "nothing processed again"
    );
    assert!(second.metric("tailor_changelog_records_total", "kind=\"seed\"") > 0.0);
    second.stop();
    assert!(second.log_text().contains("changelog seeded"));

    std::fs::remove_dir_all(setup.dir.path().join("state")).unwrap();
    views(&topics.storefront, SHOPPERS, 40, 15);
    let mut third = setup.start(3);
    third.wait_caught_up((SHOPPERS * 55) as u64);
    assert_eq!(
        third.metric("tailor_events_total", ""),
        (SHOPPERS * 15) as f64,
        "resumed at the seeded offsets"
    );
    for s in 0..SHOPPERS {
        let p = served(&[&third], &format!("shopper-{s}"));
        assert_eq!(p["events_total"], 55, "shopper-{s}: {p}");
    }
    assert_eq!(
        third.metric("tailor_segment_members", "segment=\"active-browsers\""),
        SHOPPERS as f64
    );
    third.stop();
}

/// The kill lands wherever the first worker is (often mid-batch, sometimes idle after its
/// share); events produced after it make sure the dead worker's partitions have more to do, so
/// the takeover must start from its committed offsets and its changelog whatever the timing.
#[test]
fn a_worker_killed_for_good_is_taken_over_from_the_changelog() {
    const SHOPPERS: usize = 400;
    const BEFORE_KILL: usize = 50;
    const AFTER_KILL: usize = 10;
    const PER_SHOPPER: usize = BEFORE_KILL + AFTER_KILL;
    let total = (SHOPPERS * PER_SHOPPER) as u64;
    let a = event_time_only(Setup::new("takeover", PARTITIONS, 200));
    let b = event_time_only(a.peer(200, "tests/fixtures/segments.yaml"));
    views(&a.topics.storefront, SHOPPERS, 0, BEFORE_KILL);
    let mut wa = a.start(1);
    let wb = b.start(1);
    // Both hold partitions and have committed some of them.
    wa.wait_for(Duration::from_secs(120), "both workers committing", |w| {
        w.input_offsets() >= 2000 && wb.input_offsets() >= 2000
    });
    let committed_by_a = wa.input_offsets();
    wa.kill_hard();
    views(&a.topics.storefront, SHOPPERS, BEFORE_KILL, AFTER_KILL);

    // The survivor gets every partition, restores the dead worker's from the changelog and
    // finishes from their restored offsets.
    wb.wait_for(
        Duration::from_secs(180),
        "the survivor to hold and finish every partition",
        |w| {
            w.input_offsets() >= total
                && w.metric("tailor_assigned_partitions", "") == f64::from(4 * PARTITIONS)
        },
    );
    let applied = wb.metric("tailor_events_total", "");
    assert!(
        applied <= (total - committed_by_a) as f64,
        "the dead worker's committed events are restored, not applied again ({applied} applied, {committed_by_a} committed by the dead one)"
    );
    assert!(wb.metric("tailor_changelog_restored_records_total", "") > 0.0);
    for s in 0..SHOPPERS {
        let p = served(&[&wb], &format!("shopper-{s}"));
        assert_eq!(p["events_total"], PER_SHOPPER as u64, "shopper-{s}: {p}");
        assert_eq!(
            p["counts"]["productPageView"]["24h"], PER_SHOPPER as u64,
            "shopper-{s}: {p}"
        );
    }
    assert_eq!(
        wb.metric("tailor_segment_members", "segment=\"active-browsers\""),
        SHOPPERS as f64
    );
    let pairs = changes_by_id(&a.topics.audience);
    for s in 0..SHOPPERS {
        let ids = &pairs[&(format!("shopper-{s}"), Direction::Entered)];
        assert_eq!(ids.len(), 1, "shopper-{s} entered once: {ids:?}");
    }
}

#[test]
fn workers_joining_one_by_one_take_their_partitions_state_with_them() {
    const SHOPPERS: usize = 300;
    const ROUNDS: usize = 3;
    const PER_ROUND: usize = 20;
    let a = event_time_only(Setup::new("scale-out", PARTITIONS, 200));
    let b = event_time_only(a.peer(200, "tests/fixtures/segments.yaml"));
    let c = event_time_only(a.peer(200, "tests/fixtures/segments.yaml"));
    let mut sent = 0u64;
    let mut round = |n: usize| {
        views(&a.topics.storefront, SHOPPERS, n * PER_ROUND, PER_ROUND);
        sent += (SHOPPERS * PER_ROUND) as u64;
        sent
    };
    let wa = a.start(1);
    let upto = round(0);
    wa.wait_caught_up(upto);
    let wb = b.start(1);
    let upto = round(1);
    let caught_up = |ws: &[&Worker], n: u64| {
        wa.wait_for(Duration::from_secs(180), "the group caught up", |_| {
            ws.iter().map(|w| w.input_offsets()).sum::<u64>() >= n
                && ws
                    .iter()
                    .all(|w| w.metric("tailor_assigned_partitions", "") > 0.0)
        })
    };
    caught_up(&[&wa, &wb], upto);
    let wc = c.start(1);
    let upto = round(2);
    caught_up(&[&wa, &wb, &wc], upto);
    assert_eq!(upto, (SHOPPERS * ROUNDS * PER_ROUND) as u64);

    // Each partition is held by one worker, and its profiles there are whole.
    let all = [&wa, &wb, &wc];
    for s in 0..SHOPPERS {
        let p = served(&all, &format!("shopper-{s}"));
        assert_eq!(
            p["events_total"],
            (ROUNDS * PER_ROUND) as u64,
            "shopper-{s}: {p}"
        );
    }
    let members: f64 = all
        .iter()
        .map(|w| w.metric("tailor_segment_members", "segment=\"active-browsers\""))
        .sum();
    assert_eq!(
        members, SHOPPERS as f64,
        "every shopper counted once, by its holder"
    );
    let restored: f64 = all
        .iter()
        .map(|w| w.metric("tailor_changelog_restored_records_total", ""))
        .sum();
    assert!(restored > 0.0, "partitions that moved were restored");
    // A moved partition is not processed again from the start: at most the open batches the
    // two rebalances dropped (200 messages each per worker) are applied twice.
    let applied: f64 = all
        .iter()
        .map(|w| w.metric("tailor_events_total", ""))
        .sum();
    assert!(
        applied <= (upto + 3 * 200) as f64,
        "{applied} events applied for {upto} sent"
    );
    let pairs = changes_by_id(&a.topics.audience);
    for s in 0..SHOPPERS {
        let ids = &pairs[&(format!("shopper-{s}"), Direction::Entered)];
        assert_eq!(ids.len(), 1, "shopper-{s} entered once: {ids:?}");
    }
    // Cooperative rebalancing: a join moves only what the newcomer takes. The group gives up 2
    // partitions to B, then 1 to C: 3 revocations, where an eager rebalance takes every
    // partition away at each join (8); A, alone with all 4 at first, brings each level with the
    // changelog once (eagerly, 4 + the 2 it keeps at B's join + 1 or 2 at C's). One spare
    // rebalance on this busy machine (a session lost) is tolerated.
    let revoked: f64 = all
        .iter()
        .map(|w| w.metric("tailor_partitions_revoked_total", ""))
        .sum();
    eprintln!("partitions revoked by the two joins: {revoked}");
    assert!(
        (3.0..=5.0).contains(&revoked),
        "{revoked} partitions revoked by the two joins"
    );
    let checks = wa.metric("tailor_changelog_restore_seconds_count", "");
    assert!(
        checks < 7.0,
        "A checked its partitions against the changelog {checks} times"
    );
}

#[test]
fn processing_threads_split_the_partitions_over_one_store() {
    const SHOPPERS: usize = 300;
    const VIEWS: usize = 60;
    let defs = tempfile::tempdir().unwrap();
    let segments = defs.path().join("segments.yaml");
    let fixture = std::fs::read_to_string("tests/fixtures/segments.yaml").unwrap();
    std::fs::write(&segments, &fixture).unwrap();
    let a = event_time_only(Setup::with_segments(
        "threads",
        PARTITIONS,
        200,
        segments.to_str().unwrap(),
    ));
    let with_threads = |n: usize| {
        a.edit_config(|text| match text.find("threads = ") {
            Some(i) => {
                let end = i + text[i..].find('\n').unwrap();
                format!("{}threads = {n}{}", &text[..i], &text[end..])
            }
            None => text.replace("[processing]\n", &format!("[processing]\nthreads = {n}\n")),
        })
    };
    with_threads(2);
    views(&a.topics.storefront, SHOPPERS, 0, VIEWS);
    let sent = (SHOPPERS * VIEWS) as u64;
    let mut w = a.start(1);
    w.wait_caught_up(sent);

    // Both threads hold partitions (each is a member of the group).
    let log = w.log_text();
    for thread in ["thread=0", "thread=1"] {
        assert!(
            log.lines().any(|l| l.contains("partitions held")
                && l.contains(thread)
                && !l.contains("partitions=[]")),
            "{thread} holds no partition:\n{log}"
        );
    }
    for s in 0..SHOPPERS {
        let p = served(&[&w], &format!("shopper-{s}"));
        assert_eq!(p["events_total"], VIEWS as u64, "shopper-{s}: {p}");
    }
    // The worker-wide gauges add up both threads' shares.
    assert_eq!(w.metric("tailor_events_total", ""), sent as f64);
    assert_eq!(
        w.metric("tailor_segment_members", "segment=\"active-browsers\""),
        SHOPPERS as f64
    );
    assert_eq!(
        w.metric("tailor_assigned_partitions", ""),
        (PARTITIONS * 4) as f64,
        "three inputs and the repartition topic, every partition once"
    );
    assert_eq!(w.metric("tailor_processing_threads", ""), 2.0);
    assert_eq!(w.get("/readyz").map(|(code, _)| code), Some(200));

    // SIGHUP reaches both threads: every profile, whichever thread holds it, is re-evaluated.
    std::fs::write(
        &segments,
        fixture.replacen(
            "segments:\n",
            "segments:\n  - id: threads-added\n    rule: events.total >= 1\n",
            1,
        ),
    )
    .unwrap();
    w.signal("HUP");
    w.wait_for(
        Duration::from_secs(60),
        "every profile entered the added segment",
        |w| w.metric("tailor_segment_members", "segment=\"threads-added\"") == SHOPPERS as f64,
    );
    let pairs = changes_by_id(&a.topics.audience);
    for s in 0..SHOPPERS {
        let ids = &pairs[&(format!("shopper-{s}"), Direction::Entered)];
        assert_eq!(
            ids.len(),
            2,
            "shopper-{s} entered two segments once each: {ids:?}"
        );
    }

    // One thread again on the same store: nothing to restore, every profile whole.
    //
    // It joins a consumer group of its own. The development broker (tansu 0.6.0) can strand
    // a group whose members leave during a rebalance: its leave while the group is forming
    // does not clear a departed leader, so every later member waits for that leader's
    // assignment forever (Apache Kafka has no such state). The positions come from the store,
    // not from the group's committed offsets, so a new group changes nothing else here.
    w.stop();
    // One more view each while no worker runs: the restart must read them, once.
    views(&a.topics.storefront, SHOPPERS, VIEWS, 1);
    with_threads(1);
    let text = std::fs::read_to_string(&a.config).unwrap();
    assert!(text.contains("-group\"\n"), "{text}");
    std::fs::write(
        &a.config,
        text.replace("-group\"\n", "-group-one-thread\"\n"),
    )
    .unwrap();
    let w = a.start(2);
    assert_eq!(
        w.metric("tailor_changelog_restored_records_total", ""),
        0.0,
        "the state was level with the changelog"
    );
    // It goes on from the store's positions (not the new group's, which has none): the view
    // sent while it was down is counted once, nothing before it again.
    w.wait_caught_up(sent + SHOPPERS as u64);
    for s in (0..SHOPPERS).step_by(7) {
        let p = served(&[&w], &format!("shopper-{s}"));
        assert_eq!(p["events_total"], VIEWS as u64 + 1, "shopper-{s}: {p}");
    }
    assert_eq!(
        w.metric("tailor_segment_members", "segment=\"active-browsers\""),
        SHOPPERS as f64
    );
}

/// With `state.standby`, each worker follows the changelog of the partitions the other holds:
/// when one dies, the survivor catches up what was written since its last pass instead of
/// restoring those partitions whole, and goes on from their state.
#[test]
fn a_standby_copy_makes_the_takeover_a_catch_up() {
    const SHOPPERS: usize = 300;
    // 25 views each before the kill and 25 after: active browsers (50 in 24 h) only if the
    // survivor's copy of the dead worker's partitions holds the first 25.
    const PER_ROUND: usize = 25;
    let standby = |s: Setup| with_setting(event_time_only(s), "state", "standby = true");
    let a = standby(Setup::new("standby", PARTITIONS, 200));
    let b = standby(a.peer(200, "tests/fixtures/segments.yaml"));
    let all_topics = f64::from(4 * PARTITIONS);
    let mut wa = a.start(1);
    wa.wait_for(Duration::from_secs(60), "A to hold every partition", |w| {
        w.metric("tailor_assigned_partitions", "") == all_topics
    });
    let wb = b.start(1);
    wa.wait_for(Duration::from_secs(60), "the partitions shared out", |w| {
        let (x, y) = (
            w.metric("tailor_assigned_partitions", ""),
            wb.metric("tailor_assigned_partitions", ""),
        );
        x > 0.0 && y > 0.0 && x + y == all_topics
    });
    views(&a.topics.storefront, SHOPPERS, 0, PER_ROUND);
    let round = (SHOPPERS * PER_ROUND) as u64;
    wa.wait_for(Duration::from_secs(120), "both workers caught up", |w| {
        w.input_offsets() + wb.input_offsets() >= round
    });
    // Each shopper is served by its partition's holder only: a standby copy is not served.
    for s in (0..SHOPPERS).step_by(5) {
        let key = format!("shopper-{s}");
        let answers: Vec<u16> = [&wa, &wb]
            .iter()
            .map(|w| w.get(&format!("/profiles/{key}")).map_or(0, |(st, _)| st))
            .collect();
        assert!(
            answers == [200, 421] || answers == [421, 200],
            "{key}: {answers:?}"
        );
    }
    // B's copies of A's partitions follow the changelog to its end (a pass every 5 s): the
    // count stops moving once A has nothing more to write.
    let mut followed = -1.0;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_secs(6));
        let now = wb.metric("tailor_standby_records_total", "");
        if now > 0.0 && now == followed {
            break;
        }
        followed = now;
    }
    assert!(followed > 0.0, "B followed A's partitions: {followed}");

    let restored_before = wb.metric("tailor_changelog_restored_records_total", "");
    wa.kill_hard();
    views(&a.topics.storefront, SHOPPERS, PER_ROUND, PER_ROUND);
    wb.wait_for(
        Duration::from_secs(180),
        "the survivor to hold and finish every partition",
        |w| {
            w.input_offsets() >= 2 * round
                && w.metric("tailor_assigned_partitions", "") == all_topics
        },
    );
    let restored = wb.metric("tailor_changelog_restored_records_total", "") - restored_before;
    eprintln!(
        "takeover: {restored} changelog records read; the standby copy had followed {followed}"
    );
    assert!(
        restored * 10.0 <= followed,
        "the takeover caught up ({restored} records), it did not restore the {followed} records of A's partitions again"
    );
    for s in 0..SHOPPERS {
        let p = served(&[&wb], &format!("shopper-{s}"));
        assert_eq!(
            p["events_total"],
            (2 * PER_ROUND) as u64,
            "shopper-{s}: {p}"
        );
    }
    assert_eq!(
        wb.metric("tailor_segment_members", "segment=\"active-browsers\""),
        SHOPPERS as f64,
        "every shopper entered, A's with the views kept by the standby copy"
    );
    let pairs = changes_by_id(&a.topics.audience);
    for s in 0..SHOPPERS {
        let ids = &pairs[&(format!("shopper-{s}"), Direction::Entered)];
        assert_eq!(ids.len(), 1, "shopper-{s} entered once: {ids:?}");
    }
}

/// A changelog topic made beforehand (by an operator, or a tool such as a Kubernetes topic
/// operator) with settings that lose state: one that is not compacted is refused at the start,
/// naming the topic and the setting, before anything is read or written; one compacted too
/// soon for a never-closed batch to be compensated is used, with a warning.
#[test]
fn a_changelog_topic_made_with_settings_that_lose_state_is_refused_or_warned_about() {
    let setup = Setup::new("changelog-settings", 2, 200);
    let changelog = &setup.topics.changelog;
    create_topics_with(&[changelog], 2, &[("cleanup.policy", "delete")]);
    views(&setup.topics.storefront, 10, 0, 2);
    let log = setup.dir.path().join("refused.log");
    let mut child = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&setup.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker started on a changelog topic with cleanup.policy=delete");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "changelog topic {changelog} has cleanup.policy=delete: it must be compact"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(end_offsets(changelog, 2), 0, "nothing written to it");

    // Compacted, with a lag of a minute: the worker runs, and says what it risks.
    let setup = setup.sibling("changelog-lag", 2, 200, "tests/fixtures/segments.yaml");
    create_topics_with(
        &[&setup.topics.changelog],
        2,
        &[
            ("cleanup.policy", "compact"),
            ("min.compaction.lag.ms", "60000"),
        ],
    );
    let mut worker = setup.start(1);
    worker.wait_caught_up(20);
    worker.stop();
    let log = worker.log_text();
    assert!(
        log.contains("min.compaction.lag.ms is below a day") && log.contains("60000"),
        "{log}"
    );
    assert!(end_offsets(&setup.topics.changelog, 2) > 0);
}
