//! Event-time order across the co-partitioned input topics (issue 11, part 0), against the real
//! broker.
//!
//! Regression: one stream clock per partition is shared by the three input topics, and the
//! worker read them as they arrived. A small topic read ahead of a large one moved the clock:
//! one profile record stamped later made the storefront backlog "late", evaluated at the
//! clock's time, and shoppers who checked out 50 minutes after adding to cart entered
//! `cart-abandoners` (and got the abandoned-cart journey) because their checkout was evaluated
//! after the one-hour timer. Now each partition takes the earliest head among its topics, by
//! record timestamp (the producers here stamp records with the event time).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use rdkafka::Message;
use tailor::codec::{decode, encode};
use tailor::samples;

const MIN: i64 = 60_000;
const SHOPPERS: i64 = 40;

/// Everything a consumer of the outputs sees: (id, profile, segment, direction, time) of each
/// audience change and (id, profile, journey, time) of each journey trigger, deduplicated by id.
fn outputs(t: &Topics) -> (BTreeSet<String>, BTreeSet<String>) {
    let changes = read_topic_until_quiet(&t.audience, 2, Duration::from_secs(2))
        .iter()
        .filter_map(|m| m.payload().map(|p| decode::audience_change(p).unwrap()))
        .map(|c| {
            format!(
                "{} {} {} {:?} {}",
                c.id, c.profile_key, c.segment_id, c.direction, c.event_time
            )
        })
        .collect();
    let triggers = read_topic_until_quiet(&t.journeys, 2, Duration::from_secs(2))
        .iter()
        .filter_map(|m| m.payload().map(|p| decode::journey_trigger(p).unwrap()))
        .map(|j| {
            format!(
                "{} {} {} {}",
                j.id, j.profile_key, j.journey_id, j.triggered_at
            )
        })
        .collect();
    (changes, triggers)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_topic_read_ahead_does_not_make_the_backlog_late_and_batching_changes_nothing() {
    let setup = Setup::with_segments("order", 2, 500, "tests/fixtures/journeys.yaml");
    let t = &setup.topics;
    let now = now_ms();
    let t0 = (now - 180 * MIN) / MIN * MIN;
    let p = producer();
    // The small topic first: one profile record of another shopper, stamped two hours in.
    let late_record = encode::profile(&samples::profile(
        "profileRecord",
        "profile-later",
        t0 + 120 * MIN,
        "c-later",
        "later@example.com",
        None,
    ))
    .unwrap();
    produce_stamped(
        &p,
        &[(t.profile.as_str(), "c-later", late_record, t0 + 120 * MIN)],
    );
    // The backlog: every shopper adds to cart, and checks out 50 minutes later.
    let mut msgs = Vec::new();
    for (offset, kind) in [(0, "addToCart"), (50 * MIN, "completeCheckout")] {
        for i in 0..SHOPPERS {
            let ecid = format!("ecid-order-{i}");
            let at = t0 + offset + i * 1000;
            let ev = samples::storefront(kind, &format!("{kind}-{i}"), at, &ecid);
            msgs.push((ecid, encode::storefront(&ev).unwrap(), at));
        }
    }
    let refs: Vec<(&str, &str, Vec<u8>, i64)> = msgs
        .iter()
        .map(|(k, v, at)| (t.storefront.as_str(), k.as_str(), v.clone(), *at))
        .collect();
    produce_stamped(&p, &refs);
    let total = refs.len() as u64 + 1;

    let mut worker = setup.start(1);
    worker.wait_caught_up(total);
    assert_eq!(
        worker.metric("tailor_late_events_total", ""),
        0.0,
        "no event is late: the profile record is applied in its place in time"
    );
    assert_eq!(worker.metric("tailor_order_forced_total", ""), 0.0);
    let (changes, triggers) = outputs(t);
    let abandoners: Vec<&String> = changes
        .iter()
        .filter(|c| c.contains(" cart-abandoners "))
        .collect();
    assert!(
        abandoners.is_empty(),
        "a checkout 50 minutes after the add: nobody abandoned a cart: {abandoners:?}"
    );
    assert!(
        triggers.iter().all(|j| !j.contains(" abandoned-cart ")),
        "{triggers:?}"
    );
    assert_eq!(
        triggers
            .iter()
            .filter(|j| j.contains(" post-purchase "))
            .count(),
        SHOPPERS as usize,
        "one post-purchase trigger per checkout: {triggers:?}"
    );
    worker.stop();

    // The same input through another group with batches of 3: the same outputs, ids included.
    let small = setup.sibling("order-small", 2, 3, "tests/fixtures/journeys.yaml");
    let mut other = small.start(1);
    other.wait_caught_up(total);
    assert_eq!(other.metric("tailor_late_events_total", ""), 0.0);
    let again = outputs(&small.topics);
    assert_eq!(again.0, changes, "audience changes");
    assert_eq!(again.1, triggers, "journey triggers");
    other.stop();
}

/// A producer's retry (the same record twice) is applied once; a reused event id with other
/// content is another event, and every output keeps an id of its own.
#[test]
fn an_exact_repeat_is_applied_once_and_a_reused_id_is_another_event() {
    let setup = Setup::with_segments("repeat", 1, 50, "tests/fixtures/journeys.yaml");
    let t = &setup.topics;
    let now = now_ms();
    let t0 = now - 10 * MIN;
    let key = "ecid-repeat";
    let add = encode::storefront(&samples::storefront("addToCart", "same-id", t0, key)).unwrap();
    let mut remove = samples::storefront("removeFromCart", "same-id", t0 + 1000, key);
    remove.shopping_cart_context = None;
    let remove = encode::storefront(&remove).unwrap();
    let add_again =
        encode::storefront(&samples::storefront("addToCart", "same-id", t0 + 2000, key)).unwrap();
    let sf = t.storefront.as_str();
    produce_all(
        &producer(),
        &[
            (sf, key, add.clone()),
            (sf, key, add),
            (sf, key, remove),
            (sf, key, add_again),
        ],
    );
    let mut worker = setup.start(1);
    worker.wait_caught_up(4);
    assert_eq!(worker.metric("tailor_repeated_messages_total", ""), 1.0);
    let (status, body) = worker.get(&format!("/profiles/{key}")).expect("http");
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["events_total"], 3, "the retry once: {doc}");
    worker.stop();
}

/// A profile cache whose memory budget holds about half of the shoppers: profiles are pushed
/// out and read back from RocksDB (for their next event, and for their timers), the cache stays
/// within its budget, and the outputs are those of a worker whose cache holds everyone.
#[test]
fn a_cache_too_small_for_the_shoppers_changes_no_output() {
    const N: i64 = 1500;
    let setup = Setup::with_segments("cache-budget", 2, 200, "tests/fixtures/journeys.yaml");
    setup.add_setting("state", "cache_memory = \"1MiB\"");
    // A batch's changed profiles must fit in the budget (1,000 at 880 bytes at the least).
    setup.add_setting("processing", "batch_max_profiles = 1000");
    let t = &setup.topics;
    let t0 = (now_ms() - 180 * MIN) / MIN * MIN;
    // Every shopper adds to cart; the even ones check out half an hour later, the odd ones
    // abandon their carts (their timers fire an hour after the add, once the clock follows
    // the wall clock).
    let mut msgs = Vec::new();
    for i in 0..N {
        let ecid = format!("ecid-cache-{i}");
        let at = t0 + i * 100;
        let ev = samples::storefront("addToCart", &format!("add-{i}"), at, &ecid);
        msgs.push((ecid, encode::storefront(&ev).unwrap(), at));
    }
    for i in (0..N).step_by(2) {
        let ecid = format!("ecid-cache-{i}");
        let at = t0 + 30 * MIN + i * 100;
        let ev = samples::storefront("completeCheckout", &format!("checkout-{i}"), at, &ecid);
        msgs.push((ecid, encode::storefront(&ev).unwrap(), at));
    }
    let refs: Vec<(&str, &str, Vec<u8>, i64)> = msgs
        .iter()
        .map(|(k, v, at)| (t.storefront.as_str(), k.as_str(), v.clone(), *at))
        .collect();
    produce_stamped(&producer(), &refs);
    let total = refs.len() as u64;
    // Every message committed and every abandoned cart's timer fired.
    let settled = |w: &Worker| {
        w.wait_caught_up(total);
        w.wait_for(
            Duration::from_secs(60),
            "the abandoned carts' timers",
            |w| w.metric("tailor_audience_changes_total", "cart-abandoners") >= (N / 2) as f64,
        );
    };

    let mut worker = setup.start(1);
    settled(&worker);
    let cached = worker.metric("tailor_profiles_cached", "");
    let bytes = worker.metric("tailor_profile_cache_bytes", "");
    assert!(
        cached > 0.0 && cached < N as f64,
        "{cached} profiles cached of {N}"
    );
    assert!(
        bytes > 0.0 && bytes <= (1 << 20) as f64,
        "{bytes} bytes counted for a budget of 1 MiB"
    );
    let reads = worker.metric("tailor_state_reads_total", "");
    let (changes, triggers) = outputs(t);
    let entered: Vec<&String> = changes
        .iter()
        .filter(|c| c.contains(" cart-abandoners Entered "))
        .collect();
    assert_eq!(entered.len(), (N / 2) as usize, "{entered:?}");
    assert!(
        entered.iter().all(|c| c
            .split(' ')
            .nth(1)
            .and_then(|k| k.rsplit('-').next())
            .and_then(|i| i.parse::<i64>().ok())
            .is_some_and(|i| i % 2 == 1)),
        "only the shoppers who did not check out: {entered:?}"
    );
    worker.stop();

    // The same inputs through a worker whose cache holds every shopper: the same outputs.
    let roomy = setup.sibling("cache-roomy", 2, 200, "tests/fixtures/journeys.yaml");
    let mut other = roomy.start(1);
    settled(&other);
    assert!(other.metric("tailor_profiles_cached", "") >= N as f64);
    // Each shopper's first event looks for a profile in the store either way; the small cache
    // read back, besides, profiles it had pushed out (for checkouts and for timers).
    let roomy_reads = other.metric("tailor_state_reads_total", "");
    assert!(
        reads > roomy_reads + (N / 10) as f64,
        "{reads} reads with the small cache, {roomy_reads} with the roomy one"
    );
    let again = outputs(&roomy.topics);
    assert_eq!(again.0, changes, "audience changes");
    assert_eq!(again.1, triggers, "journey triggers");
    other.stop();
}
