//! (a) A scenario of hand-written events through a real broker and the real worker: the audience
//! changes are read back from the output topic, decoded, and checked field by field.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::Message;
use tailor::audience::output_id;
use tailor::codec::{decode, encode};
use tailor::samples;
use tailor::wire::Direction;

const T0: i64 = 1_709_287_200_000; // 2024-03-01T10:00:00Z
const MIN: i64 = 60_000;

#[test]
fn a_shoppers_story_becomes_the_right_audience_changes() {
    let setup = Setup::new("scenario", 1, 100);
    let (topics, config) = (&setup.topics, &setup.config);
    let mut worker = setup.start(1);
    // The default configuration turns transparent huge pages off for the worker's process.
    if cfg!(target_os = "linux") {
        assert_eq!(worker.transparent_huge_pages(), Some(false));
    }
    let p = producer();
    let key = "c-100";

    let mut account = samples::profile(
        "accountCreated",
        "ev-1",
        T0,
        "c-100",
        "Ann@Example.com",
        Some("gold"),
    );
    account.identity.email = Some("Ann@Example.com".into());
    let mut add = samples::storefront("addToCart", "ev-2", T0 + MIN, "ecid-9");
    add.identity.customer_id = Some("c-100".into());
    add.shopping_cart_context = None; // only the changed items: the cart is built from them
    let mut checkout = samples::storefront("completeCheckout", "ev-3", T0 + 5 * MIN, "ecid-9");
    checkout.identity.customer_id = Some("c-100".into());
    checkout.order_context.as_mut().unwrap().order_id = "o-1".into();
    checkout.order_context.as_mut().unwrap().grand_total = Some(600.0);
    let same_order = samples::backoffice(
        "orderPlaced",
        "ev-4",
        T0 + 6 * MIN,
        "ann@example.com",
        "o-1",
        600.0,
    );
    let second = samples::backoffice(
        "orderPlaced",
        "ev-5",
        T0 + 60 * MIN,
        "ann@example.com",
        "o-2",
        500.0,
    );
    let cancel = samples::backoffice(
        "orderCancelled",
        "ev-6",
        T0 + 90 * MIN,
        "ann@example.com",
        "o-2",
        500.0,
    );

    // One step at a time, so the order across the three topics is the story's order.
    let steps: Vec<(&str, Vec<u8>)> = vec![
        (&topics.profile, encode::profile(&account).unwrap()),
        (&topics.storefront, encode::storefront(&add).unwrap()),
        (&topics.storefront, encode::storefront(&checkout).unwrap()),
        (&topics.backoffice, encode::backoffice(&same_order).unwrap()),
        (&topics.backoffice, encode::backoffice(&second).unwrap()),
        (&topics.backoffice, encode::backoffice(&cancel).unwrap()),
    ];
    let first_sent = std::time::Instant::now();
    for (i, (topic, payload)) in steps.iter().enumerate() {
        produce_all(&p, &[(topic, key, payload.clone())]);
        worker.wait_caught_up(i as u64 + 1);
    }

    let expected = [
        (
            "gold",
            Direction::Entered,
            "ev-1",
            "accountCreated",
            &topics.profile,
            0,
            T0,
        ),
        (
            "cart-holders",
            Direction::Entered,
            "ev-2",
            "addToCart",
            &topics.storefront,
            0,
            T0 + MIN,
        ),
        (
            "cart-holders",
            Direction::Exited,
            "ev-3",
            "completeCheckout",
            &topics.storefront,
            1,
            T0 + 5 * MIN,
        ),
        (
            "repeat-buyers",
            Direction::Entered,
            "ev-5",
            "orderPlaced",
            &topics.backoffice,
            1,
            T0 + 60 * MIN,
        ),
        (
            "high-ltv",
            Direction::Entered,
            "ev-5",
            "orderPlaced",
            &topics.backoffice,
            1,
            T0 + 60 * MIN,
        ),
        (
            "vip",
            Direction::Entered,
            "ev-5",
            "orderPlaced",
            &topics.backoffice,
            1,
            T0 + 60 * MIN,
        ),
        (
            "high-ltv",
            Direction::Exited,
            "ev-6",
            "orderCancelled",
            &topics.backoffice,
            2,
            T0 + 90 * MIN,
        ),
    ];
    let msgs = read_topic_until_quiet(&topics.audience, 1, Duration::from_secs(3));
    assert_eq!(
        msgs.len(),
        expected.len(),
        "audience changes: {:?}",
        msgs.iter()
            .map(|m| decode::audience_change(m.payload().unwrap()).unwrap())
            .collect::<Vec<_>>()
    );
    for (m, (segment, direction, event_id, event_type, topic, offset, time)) in
        msgs.iter().zip(expected)
    {
        let c = decode::audience_change(m.payload().unwrap()).expect("AudienceChange");
        assert_eq!(m.key(), Some(key.as_bytes()), "keyed by profile");
        assert_eq!(c.profile_key, key);
        assert_eq!(c.segment_id, segment);
        assert_eq!(c.direction, direction, "{segment}");
        assert_eq!(c.event_time, time);
        assert_eq!(
            m.timestamp().to_millis(),
            Some(time),
            "record time is stream time"
        );
        // The causing event's id and where it was read.
        let cause = tailor::audience::Source {
            topic: topic.as_str(),
            partition: 0,
            offset,
        }
        .cause_id(event_id);
        assert_eq!(
            c.id,
            output_id(&[key, segment, direction.as_str(), &cause]),
            "deterministic id"
        );
        assert_eq!(c.cause.kind, "event");
        assert_eq!(c.cause.event_id.as_deref(), Some(event_id));
        assert_eq!(c.cause.event_type.as_deref(), Some(event_type));
        assert_eq!(c.cause.source_topic.as_deref(), Some(topic.as_str()));
        assert_eq!(c.cause.source_partition, Some(0));
        assert_eq!(c.cause.source_offset, Some(offset));
        assert_eq!(c.identity.customer_id.as_deref(), Some("c-100"));
        assert_eq!(
            c.identity.email.as_deref(),
            Some("ann@example.com"),
            "normalised e-mail"
        );
    }
    let ecid_seen = decode::audience_change(msgs[1].payload().unwrap())
        .unwrap()
        .identity
        .ecid;
    assert_eq!(
        ecid_seen.as_deref(),
        Some("ecid-9"),
        "identities seen so far are carried"
    );

    assert_eq!(
        worker.metric("tailor_segment_members", "segment=\"vip\""),
        1.0
    );
    assert_eq!(
        worker.metric("tailor_segment_members", "segment=\"high-ltv\""),
        0.0
    );
    assert_eq!(
        worker.metric("tailor_audience_changes_total", "direction=\"ENTERED\""),
        5.0
    );
    // The heaps are reported with the progress line (every 5 s): mimalloc is the Rust code's
    // allocator, glibc's malloc (where there is one) holds RocksDB's memtables at least.
    let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
    worker.wait_for(Duration::from_secs(15), "the heaps reported", |w| {
        w.metric("tailor_heap_bytes", "part=\"rust_committed\"") > 0.0
            && (!glibc || w.metric("tailor_heap_bytes", "part=\"c_in_use\"") > 0.0)
    });
    // RocksDB's compaction backlog and write stall are served, a series for each column
    // family, for dashboards and alerts (their values: the store's and metrics' unit tests).
    let (_, body) = worker.get("/metrics").expect("metrics served");
    for family in [
        "profiles",
        "offsets",
        "segment_sizes",
        "timers",
        "clocks",
        "aliases",
        "meta",
    ] {
        for name in [
            "tailor_state_compaction_pending_bytes",
            "tailor_state_level0_files",
        ] {
            let series = format!("{name}{{family=\"{family}\"}} ");
            assert!(body.contains(&series), "no {series} in\n{body}");
        }
    }
    assert!(
        body.lines().any(|l| l == "tailor_state_write_stall 0"),
        "writes not stalled:\n{body}"
    );
    // Each event's latency, from its record timestamp (the producer's clock: these records
    // carry the time they were sent) to its batch's outputs acknowledged: once per message, in
    // seconds, each no longer than the time since the first was sent.
    let events = steps.len() as f64;
    worker.wait_for(Duration::from_secs(15), "each event's latency", |w| {
        w.metric("tailor_event_latency_seconds_count", "") >= events
    });
    let since_first = first_sent.elapsed().as_secs_f64();
    assert_eq!(
        worker.metric("tailor_event_latency_seconds_count", ""),
        events,
        "each event counted once"
    );
    for (family, n) in [("profile", 1.0), ("storefront", 2.0), ("backoffice", 3.0)] {
        assert_eq!(
            worker.metric(
                "tailor_event_latency_seconds_count",
                &format!("family=\"{family}\"")
            ),
            n,
            "{family} events"
        );
    }
    let sum = worker.metric("tailor_event_latency_seconds_sum", "");
    assert!(
        sum > 0.0 && sum <= events * since_first,
        "latencies sum to {sum} s over {events} events sent within {since_first} s"
    );
    // Each one step of the story: sent, applied, its changes acknowledged (debug build).
    assert_eq!(
        worker.metric("tailor_event_latency_seconds_bucket", "le=\"5\""),
        events,
        "each within 5 s"
    );
    worker.stop();

    let prof = profile(config, key).expect("profile exists");
    assert_eq!(
        prof["orders"]["count"], 2,
        "the same order from storefront and back office counts once"
    );
    assert_eq!(prof["orders"]["revenue"], 1100.0);
    assert_eq!(prof["orders"]["cancelled"], 1);
    assert_eq!(prof["orders"]["lifetime_value"], 600.0);
    assert_eq!(prof["attributes"]["loyalty_tier"], "gold");
    assert_eq!(prof["events_total"], 6);
    let segments: Vec<&str> = prof["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["segment"].as_str().unwrap())
        .collect();
    assert_eq!(segments, ["gold", "repeat-buyers", "vip"]);
}
