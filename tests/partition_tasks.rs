//! Regressions of the partition-task redesign that need the real broker: a profile deleted twice
//! in one batch, and inputs whose outputs used to exceed the broker's record limit.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::producer::BaseProducer;
use rdkafka::Message;
use tailor::codec::{decode, encode};
use tailor::samples;
use tailor::wire::Direction;

const T0: i64 = 1_709_287_200_000;

/// Regression: a profile deleted twice in one batch (two accountDeleted) came back from the
/// cache as a clean placeholder and the delete was never committed: the shopper's data and
/// timer stayed in RocksDB while the offsets moved on.
#[test]
fn a_profile_deleted_twice_in_one_batch_is_gone_from_the_store() {
    let setup = Setup::new("double-delete", 1, 500);
    let topics = &setup.topics;
    let p = producer();
    let created = samples::profile(
        "accountCreated",
        "c1",
        T0,
        "c-1",
        "ann@example.com",
        Some("gold"),
    );
    produce_all(
        &p,
        &[(
            topics.profile.as_str(),
            "c-1",
            encode::profile(&created).unwrap(),
        )],
    );
    let mut worker = setup.start(1);
    worker.wait_caught_up(1);
    worker.stop();
    assert!(
        profile(&setup.config, "c-1").is_some(),
        "the profile exists before the deletions"
    );

    // Both deletions wait in the topic, so the restarted worker reads them in one batch.
    let deletes: Vec<Vec<u8>> = ["d1", "d2"]
        .iter()
        .map(|id| {
            let ev = samples::profile(
                "accountDeleted",
                id,
                T0 + 60_000,
                "c-1",
                "ann@example.com",
                None,
            );
            encode::profile(&ev).unwrap()
        })
        .collect();
    produce_all(
        &p,
        &[
            (topics.profile.as_str(), "c-1", deletes[0].clone()),
            (topics.profile.as_str(), "c-1", deletes[1].clone()),
        ],
    );
    let mut worker = setup.start(2);
    worker.wait_caught_up(3);
    worker.wait_repartition_idle(&topics.repartition, 1);
    assert_eq!(
        worker.get("/profiles/c-1").map(|r| r.0),
        Some(404),
        "deleted while running"
    );
    worker.stop();
    assert_eq!(profile(&setup.config, "c-1"), None, "deleted in the store");

    let changes: Vec<_> = read_topic_until_quiet(&topics.audience, 1, Duration::from_secs(3))
        .iter()
        .filter_map(|m| m.payload().map(|b| decode::audience_change(b).unwrap()))
        .filter(|c| c.profile_key == "c-1" && c.segment_id == "gold")
        .map(|c| (c.direction, c.cause.kind.to_string()))
        .collect();
    assert_eq!(
        changes,
        [
            (Direction::Entered, "event".to_string()),
            (Direction::Exited, "deletion".to_string())
        ],
        "one ENTER, one EXIT by deletion"
    );

    // A restart finds nothing to bring back.
    let mut worker = setup.start(3);
    worker.wait_caught_up(3);
    assert_eq!(worker.get("/profiles/c-1").map(|r| r.0), Some(404));
    worker.stop();
}

/// Regression: an input whose dead letter, repartition message or journey trigger was larger
/// than the broker accepts stopped the worker with `MessageSizeTooLarge`, and again at the same
/// message after every restart. Now every such input is dead-lettered, bounded, and the partition
/// goes on.
#[test]
fn inputs_too_large_for_their_outputs_are_dead_lettered_and_the_partition_goes_on() {
    let setup = Setup::new("oversized", 1, 500);
    let topics = &setup.topics;
    let big: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.max.bytes", "2000000")
        .create()
        .expect("producer");
    let mut inputs: Vec<(Vec<u8>, &str)> = vec![(vec![0xAB; 1_040_000], "too_large")];
    let mut huge_mail = samples::storefront("addToCart", "huge-mail", T0, "e-1");
    huge_mail.identity.email = Some("a".repeat(600_000));
    inputs.push((encode::storefront(&huge_mail).unwrap(), "too_large"));
    let mut long_mail = samples::storefront("addToCart", "long-mail", T0, "e-1");
    long_mail.identity.email = Some(format!("{}@example.com", "a".repeat(100_000)));
    inputs.push((encode::storefront(&long_mail).unwrap(), "field_too_long"));
    for i in 0..10 {
        let mut view = samples::storefront("productPageView", &format!("view-{i}"), T0 + i, "e-2");
        let mut product = samples::product(&format!("sku-{i}"), 10.0);
        product.name = Some("n".repeat(120_000));
        view.product_context = Some(Box::new(product));
        inputs.push((encode::storefront(&view).unwrap(), "field_too_long"));
    }
    let good = encode::storefront(&samples::storefront("addToCart", "good", T0, "e-3")).unwrap();
    let mut worker = setup.start(1);
    for (payload, _) in &inputs {
        produce_to(&big, &topics.storefront, 0, Some(b"k1"), payload);
    }
    produce_to(&big, &topics.storefront, 0, Some(b"k2"), &good);
    worker.wait_caught_up(inputs.len() as u64 + 1);

    let dead = read_topic(
        &topics.dead_letter,
        1,
        inputs.len(),
        Duration::from_secs(30),
    );
    assert_eq!(dead.len(), inputs.len());
    for (m, (payload, reason)) in dead.iter().zip(&inputs) {
        assert_eq!(header(m, "tailor.reason").as_deref(), Some(*reason));
        assert_eq!(
            header(m, "tailor.payload.size"),
            Some(payload.len().to_string())
        );
        let record = decode::dead_letter(m.payload().unwrap()).unwrap();
        assert_eq!(record.payload_size, Some(payload.len() as i64));
        let kept = payload.len().min(tailor::worker::DEAD_LETTER_PAYLOAD_BYTES);
        assert_eq!(
            record.payload,
            payload[..kept],
            "the start of the original bytes"
        );
        assert_eq!(record.payload_truncated, payload.len() > kept);
    }
    let first = decode::dead_letter(dead[0].payload().unwrap()).unwrap();
    assert!(first.payload_truncated && first.payload.len() == 65_536);

    // The message after them was applied.
    let changes: Vec<_> = read_topic_until_quiet(&topics.audience, 1, Duration::from_secs(3))
        .iter()
        .filter_map(|m| m.payload().map(|b| decode::audience_change(b).unwrap()))
        .collect();
    assert!(
        changes
            .iter()
            .any(|c| c.profile_key == "k2" && c.direction == Direction::Entered),
        "{changes:?}"
    );
    assert_eq!(worker.get("/readyz").map(|r| r.0), Some(200));
    worker.stop();
    assert!(
        !worker.log_text().contains("MessageSizeTooLarge"),
        "{}",
        worker.log_text()
    );
}

/// A batch that has caught up (no message waiting) commits at once: below the maximum rate a
/// batch holds what arrived during the previous commit, not `batch_max_wait` of the stream.
/// Thirty events 0.3 s apart with 5 s batches would be committed in two or three batches.
#[test]
fn a_caught_up_batch_commits_without_waiting_for_its_maximum_wait() {
    const SHOPPERS: usize = 30;
    let setup = Setup::new("caught-up-commit", 2, 10_000);
    setup.edit_config(|text| text.replace("batch_max_wait = \"50ms\"", "batch_max_wait = \"5s\""));
    let mut worker = setup.start(1);
    let before = worker.metric("tailor_batch_messages_count", "");
    let p = producer();
    for i in 0..SHOPPERS {
        let key = format!("k{i}");
        let ev = samples::storefront("addToCart", &format!("e{i}"), T0 + i as i64, &key);
        let payload = encode::storefront(&ev).unwrap();
        produce_all(&p, &[(setup.topics.storefront.as_str(), &key, payload)]);
        std::thread::sleep(Duration::from_millis(300));
    }
    worker.wait_caught_up(SHOPPERS as u64);
    let batches = worker.metric("tailor_batch_messages_count", "") - before;
    assert!(
        batches >= 10.0,
        "{batches} batches committed the {SHOPPERS} events: a caught-up batch waited for more"
    );
    assert_eq!(
        worker.metric("tailor_segment_members", "segment=\"cart-holders\""),
        SHOPPERS as f64,
        "every shopper's membership committed"
    );
    let (status, body) = worker.get("/profiles/k7").expect("the HTTP API answers");
    assert_eq!(status, 200, "{body}");
    let mut entered = std::collections::BTreeSet::new();
    for m in read_topic_until_quiet(&setup.topics.audience, 2, Duration::from_secs(3)) {
        let c = decode::audience_change(m.payload().unwrap()).unwrap();
        if c.direction == Direction::Entered && c.segment_id == "cart-holders" {
            entered.insert(c.profile_key);
        }
    }
    assert_eq!(entered.len(), SHOPPERS, "{entered:?}");
    worker.stop();
}

/// `processing.batch_max_profiles` bounds what a batch holds in memory: the profiles it changed,
/// written at its commit. A backlog of 40 new shoppers with a bound of 4 (and room for 10,000
/// messages and 5 s per batch) is committed in batches of at most 4 messages, every shopper's
/// membership and output intact.
#[test]
fn a_batch_commits_once_it_has_changed_batch_max_profiles_profiles() {
    const SHOPPERS: usize = 40;
    let setup = Setup::new("profile-bound", 1, 10_000);
    setup.edit_config(|text| {
        text.replace(
            "batch_max_wait = \"50ms\"",
            "batch_max_wait = \"5s\"\nbatch_max_profiles = 4",
        )
    });
    // The backlog is there before the worker starts: without the bound the first fetch's
    // messages would all go into one batch.
    let p = producer();
    produce_storefront(
        &p,
        &setup.topics.storefront,
        (0..SHOPPERS).map(|i| (format!("k{i}"), "addToCart", format!("e{i}"), T0 + i as i64)),
    );
    let mut worker = setup.start(1);
    worker.wait_caught_up(SHOPPERS as u64);
    let batches = worker.metric("tailor_batch_messages_count", "");
    let within = worker.metric("tailor_batch_messages_bucket", "le=\"4\"");
    assert!(
        batches >= (SHOPPERS / 4) as f64,
        "{batches} batches committed {SHOPPERS} new shoppers with at most 4 profiles each"
    );
    assert_eq!(
        within,
        batches,
        "every batch holds at most 4 messages (each a new shopper): {}",
        worker
            .get("/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("tailor_batch_messages"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(
        worker.metric("tailor_segment_members", "segment=\"cart-holders\""),
        SHOPPERS as f64,
        "every shopper's membership committed"
    );
    let mut entered = std::collections::BTreeSet::new();
    for m in read_topic_until_quiet(&setup.topics.audience, 1, Duration::from_secs(3)) {
        let c = decode::audience_change(m.payload().unwrap()).unwrap();
        if c.direction == Direction::Entered && c.segment_id == "cart-holders" {
            entered.insert(c.profile_key);
        }
    }
    assert_eq!(entered.len(), SHOPPERS, "{entered:?}");
    worker.stop();

    // Deep shoppers: 40 more events of two of them, again a backlog at the start. They change
    // two profiles, so the bound does not close their batch: at least one batch holds more
    // than 4 messages, and each profile has every event once.
    const REPEATS: usize = 20;
    produce_storefront(
        &p,
        &setup.topics.storefront,
        (0..2 * REPEATS).map(|i| {
            let at = T0 + (SHOPPERS + i) as i64;
            (
                format!("k{}", i % 2),
                "productPageView",
                format!("d{i}"),
                at,
            )
        }),
    );
    let mut worker = setup.start(2);
    worker.wait_caught_up((SHOPPERS + 2 * REPEATS) as u64);
    let batches = worker.metric("tailor_batch_messages_count", "");
    let within = worker.metric("tailor_batch_messages_bucket", "le=\"4\"");
    assert!(
        within < batches,
        "a batch of the two shoppers' {} events held more than 4 messages ({within} of {batches} batches held 4 or fewer)",
        2 * REPEATS
    );
    for key in ["k0", "k1"] {
        let (status, body) = worker
            .get(&format!("/profiles/{key}"))
            .expect("the API answers");
        assert_eq!(status, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["events_total"], 1 + REPEATS, "{key}: {doc}");
    }
    worker.stop();
}

/// Produces storefront events (profile key, event type, event id, time) to `topic`, encoded as
/// the platform does.
fn produce_storefront(
    p: &BaseProducer,
    topic: &str,
    events: impl Iterator<Item = (String, &'static str, String, i64)>,
) {
    let encoded: Vec<(String, Vec<u8>)> = events
        .map(|(key, kind, id, at)| {
            let ev = samples::storefront(kind, &id, at, &key);
            (key, encode::storefront(&ev).unwrap())
        })
        .collect();
    let msgs: Vec<(&str, &str, Vec<u8>)> = encoded
        .iter()
        .map(|(k, v)| (topic, k.as_str(), v.clone()))
        .collect();
    produce_all(p, &msgs);
}
