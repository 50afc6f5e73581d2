//! (c) Garbage, truncated and invalid messages go to the dead-letter topic with their reason and
//! original bytes, are counted, and the partition keeps flowing.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::Message;
use tailor::codec::{decode, encode};
use tailor::samples;
use tailor::wire::Direction;

const T0: i64 = 1_709_287_200_000;

#[test]
fn bad_messages_are_dead_lettered_and_the_partition_keeps_flowing() {
    let setup = Setup::new("deadletter", 1, 100);
    let topics = &setup.topics;
    let mut worker = setup.start(1);

    let add =
        |id: &str| encode::storefront(&samples::storefront("addToCart", id, T0, "e")).unwrap();
    let good = add("ok-1");
    let mut unknown = samples::storefront("teleport", "bad-type", T0, "e");
    unknown.event_type = "teleport".into();
    let ancient = samples::storefront("addToCart", "bad-time", 0, "e");
    let order = samples::backoffice("orderPlaced", "wrong-topic", T0, "a@b.c", "o", 1.0);
    let messages: Vec<(Option<&str>, Vec<u8>, Option<&str>)> = vec![
        (Some("k1"), good.clone(), None),
        (
            Some("k1"),
            b"hello, I am not Avro".to_vec(),
            Some("bad_framing"),
        ),
        (
            Some("k1"),
            good[..good.len() - 40].to_vec(),
            Some("bad_body"),
        ),
        (Some("k1"), Vec::new(), Some("empty")),
        (
            Some("k1"),
            encode::storefront(&unknown).unwrap(),
            Some("unknown_event_type"),
        ),
        (
            Some("k1"),
            encode::storefront(&ancient).unwrap(),
            Some("bad_event_time"),
        ),
        (
            Some("k1"),
            encode::backoffice(&order).unwrap(),
            Some("wrong_record"),
        ),
        (Some("k2"), add("ok-2"), None),
    ];
    let p = producer();
    for (key, payload, _) in &messages {
        produce_to(&p, &topics.storefront, 0, key.map(str::as_bytes), payload);
    }
    worker.wait_caught_up(messages.len() as u64);

    let bad: Vec<_> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.2.is_some())
        .collect();
    let dead = read_topic(&topics.dead_letter, 1, bad.len(), Duration::from_secs(30));
    assert_eq!(dead.len(), bad.len());
    for (m, (offset, (key, payload, reason))) in dead.iter().zip(&bad) {
        let reason = reason.unwrap();
        assert_eq!(header(m, "tailor.reason").as_deref(), Some(reason));
        assert_eq!(
            header(m, "tailor.source.topic").as_deref(),
            Some(topics.storefront.as_str())
        );
        assert_eq!(header(m, "tailor.source.partition").as_deref(), Some("0"));
        assert_eq!(header(m, "tailor.source.offset"), Some(offset.to_string()));
        assert!(header(m, "tailor.detail").is_some_and(|d| !d.is_empty()));
        let record = decode::dead_letter(m.payload().unwrap()).expect("DeadLetter record");
        assert_eq!(record.reason_code, reason);
        assert_eq!(record.source_offset, *offset as i64);
        assert_eq!(&record.payload, payload, "original bytes kept");
        assert_eq!(record.key.as_deref(), key.map(str::as_bytes));
        assert_eq!(
            worker.metric("tailor_dead_letters_total", &format!("reason=\"{reason}\"")),
            1.0,
            "{reason}"
        );
    }

    // The good messages around the bad ones were applied: k2's change comes from offset 7.
    let changes = read_topic(&topics.audience, 1, 2, Duration::from_secs(30));
    let decoded: Vec<_> = changes
        .iter()
        .map(|m| decode::audience_change(m.payload().unwrap()).unwrap())
        .collect();
    assert_eq!(decoded.len(), 2, "{decoded:?}");
    assert_eq!(
        (decoded[1].profile_key.as_str(), decoded[1].direction),
        ("k2", Direction::Entered)
    );
    assert_eq!(decoded[1].cause.source_offset, Some(7));
    assert_eq!(
        worker.get("/readyz").map(|r| r.0),
        Some(200),
        "still running and ready"
    );
    worker.stop();
}
