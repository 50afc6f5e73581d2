//! Time-driven changes and journey triggers through a real broker and the real worker:
//! the cart-abandonment story (and its variants), timers across a hard restart, and a replay of
//! real data run twice giving byte-identical outputs.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use rdkafka::Message;
use tailor::codec::{decode, encode};
use tailor::samples;
use tailor::wire::{AudienceChange, Direction, JourneyTrigger};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

fn wall() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A shopper known by customer id `key` on every topic (message key = customer id).
struct Shopper<'a> {
    key: &'a str,
    topics: &'a Topics,
}

impl Shopper<'_> {
    fn consent(&self, id: &str, time: i64, email_opt_in: bool) -> (String, String, Vec<u8>) {
        let mut e = samples::profile(
            "accountUpdated",
            id,
            time,
            self.key,
            "shopper@example.com",
            None,
        );
        e.consents.as_mut().unwrap().marketing_email =
            Some(if email_opt_in { "y" } else { "n" }.into());
        (
            self.topics.profile.clone(),
            self.key.to_owned(),
            encode::profile(&e).unwrap(),
        )
    }

    fn storefront(&self, kind: &str, id: &str, time: i64) -> tailor::wire::StorefrontEvent {
        let mut e = samples::storefront(kind, id, time, &format!("ecid-{}", self.key));
        e.identity.customer_id = Some(self.key.to_owned());
        e
    }

    fn add_to_cart(&self, id: &str, time: i64) -> (String, String, Vec<u8>) {
        let e = self.storefront("addToCart", id, time);
        (
            self.topics.storefront.clone(),
            self.key.to_owned(),
            encode::storefront(&e).unwrap(),
        )
    }

    fn checkout(&self, id: &str, time: i64, order: &str) -> (String, String, Vec<u8>) {
        let mut e = self.storefront("completeCheckout", id, time);
        e.order_context.as_mut().unwrap().order_id = order.into();
        (
            self.topics.storefront.clone(),
            self.key.to_owned(),
            encode::storefront(&e).unwrap(),
        )
    }
}

fn send(msgs: &[(String, String, Vec<u8>)]) {
    let p = producer();
    let refs: Vec<(&str, &str, Vec<u8>)> = msgs
        .iter()
        .map(|(t, k, v)| (t.as_str(), k.as_str(), v.clone()))
        .collect();
    produce_all(&p, &refs);
}

fn changes(topic: &str, quiet: Duration) -> Vec<AudienceChange> {
    read_topic_until_quiet(topic, 1, quiet)
        .iter()
        .map(|m| decode::audience_change(m.payload().unwrap()).unwrap())
        .collect()
}

fn triggers(topic: &str, quiet: Duration) -> Vec<JourneyTrigger> {
    read_topic_until_quiet(topic, 1, quiet)
        .iter()
        .map(|m| decode::journey_trigger(m.payload().unwrap()).unwrap())
        .collect()
}

fn of<'a>(v: &'a [AudienceChange], key: &str) -> Vec<(&'a str, Direction, i64, &'a str)> {
    v.iter()
        .filter(|c| c.profile_key == key)
        .map(|c| {
            (
                c.segment_id.as_str(),
                c.direction,
                c.event_time,
                c.cause.kind.as_str(),
            )
        })
        .collect()
}

#[test]
fn abandoned_carts_enter_at_one_hour_and_trigger_once_unless_checkout_wait_or_consent_say_no() {
    let setup = Setup::with_segments("journeys", 1, 500, "tests/fixtures/journeys.yaml");
    // Event time only: the story's clock is the events' (the wall-clock path is covered by the
    // restart and replay tests below).
    setup.add_setting("processing", "wall_clock = false");
    let t = &setup.topics;
    let t0: i64 = 1_767_261_600_000; // 2026-01-01T10:00:00Z
    let abandons = Shopper {
        key: "c-abandons",
        topics: t,
    };
    let in_time = Shopper {
        key: "c-in-time",
        topics: t,
    };
    let no_consent = Shopper {
        key: "c-no-consent",
        topics: t,
    };
    let returns = Shopper {
        key: "c-returns",
        topics: t,
    };
    let worker = setup.start(1);
    // Consents first (another topic: waiting for them keeps the story's order across topics).
    send(&[
        abandons.consent("a0", t0 - MIN, true),
        in_time.consent("b0", t0 - MIN, true),
        no_consent.consent("c0", t0 - MIN, false),
        returns.consent("d0", t0 - MIN, true),
    ]);
    worker.wait_caught_up(4);
    let bystander = Shopper {
        key: "c-bystander",
        topics: t,
    };
    send(&[
        abandons.add_to_cart("a1", t0),
        in_time.add_to_cart("b1", t0),
        in_time.checkout("b2", t0 + 59 * MIN, "order-b"),
        no_consent.add_to_cart("c1", t0),
        returns.add_to_cart("d1", t0),
        returns.checkout("d2", t0 + 2 * HOUR, "order-d"),
        returns.add_to_cart("d3", t0 + 3 * HOUR),
        // Another shopper's event moves the partition's clock past every T + 1h.
        (
            t.storefront.clone(),
            bystander.key.to_owned(),
            encode::storefront(&bystander.storefront("pageView", "x1", t0 + 5 * HOUR)).unwrap(),
        ),
    ]);
    worker.wait_for(Duration::from_secs(60), "the timers to fire", |w| {
        w.metric("tailor_audience_changes_total", "cart-abandoners") >= 5.0
    });

    let quiet = Duration::from_secs(3);
    let all = changes(&t.audience, quiet);
    let trig = triggers(&t.journeys, quiet);
    let abandoned: Vec<_> = trig
        .iter()
        .filter(|x| x.journey_id == "abandoned-cart")
        .collect();

    // Abandoned: ENTERED at exactly T + 1h, caused by the timer, and one trigger with the cart.
    assert_eq!(
        of(&all, "c-abandons"),
        vec![("cart-abandoners", Direction::Entered, t0 + HOUR, "timer")]
    );
    let a: Vec<_> = abandoned
        .iter()
        .filter(|x| x.profile_key == "c-abandons")
        .collect();
    assert_eq!(a.len(), 1, "{abandoned:?}");
    assert_eq!(a[0].triggered_at, t0 + HOUR);
    assert_eq!(a[0].contact.email.as_deref(), Some("shopper@example.com"));
    assert_eq!(a[0].cause.segment_id.as_deref(), Some("cart-abandoners"));
    let items = &a[0].context.cart_items;
    assert!(!items.is_empty(), "the cart travels with the trigger");
    assert!(items
        .iter()
        .all(|i| !i.sku.is_empty() && i.quantity > 0.0 && i.price.is_some()));
    assert!(a[0].context.cart_value.unwrap() > 0.0);
    // A timer's trigger, with no event: the currency and store the shopper's events named.
    assert_eq!(a[0].context.currency_code.as_deref(), Some("USD"));
    assert_eq!(a[0].store.store_code.as_deref(), Some("main_website_store"));
    assert_eq!(a[0].store.store_view_code.as_deref(), Some("default"));
    let change = all
        .iter()
        .find(|c| c.profile_key == "c-abandons" && c.segment_id == "cart-abandoners")
        .expect("the abandoner's change");
    assert_eq!(
        change.store.store_code.as_deref(),
        Some("main_website_store")
    );

    // Checked out at T + 59 min: nothing about abandonment, ever.
    assert_eq!(of(&all, "c-in-time"), vec![]);
    // No consent: in the audience, but no trigger.
    assert_eq!(
        of(&all, "c-no-consent"),
        vec![("cart-abandoners", Direction::Entered, t0 + HOUR, "timer")]
    );
    assert!(!abandoned.iter().any(|x| x.profile_key == "c-no-consent"));
    // Abandoned, bought, abandoned again: two entries, one trigger (re-entry wait 1d).
    assert_eq!(
        of(&all, "c-returns"),
        vec![
            ("cart-abandoners", Direction::Entered, t0 + HOUR, "timer"),
            ("cart-abandoners", Direction::Exited, t0 + 2 * HOUR, "event"),
            (
                "cart-abandoners",
                Direction::Entered,
                t0 + 4 * HOUR,
                "timer"
            ),
        ]
    );
    assert_eq!(
        abandoned
            .iter()
            .filter(|x| x.profile_key == "c-returns")
            .count(),
        1
    );
    assert_eq!(
        worker.metric("tailor_journey_suppressed_total", "reason=\"consent\""),
        1.0
    );
    assert_eq!(
        worker.metric("tailor_journey_suppressed_total", "reason=\"reentry_wait\""),
        1.0
    );
    // Post-purchase: one per order (the two checkouts).
    let post: Vec<_> = trig
        .iter()
        .filter(|x| x.journey_id == "post-purchase")
        .collect();
    assert_eq!(post.len(), 2, "{post:?}");

    // Later, the abandoner checks out, and leaves the audience.
    send(&[abandons.checkout("a2", t0 + 6 * HOUR, "order-a")]);
    worker.wait_for(Duration::from_secs(30), "the exit", |w| {
        w.metric("tailor_audience_changes_total", "direction=\"EXITED\"") >= 2.0
    });
    let all = changes(&t.audience, quiet);
    assert_eq!(
        of(&all, "c-abandons"),
        vec![
            ("cart-abandoners", Direction::Entered, t0 + HOUR, "timer"),
            ("cart-abandoners", Direction::Exited, t0 + 6 * HOUR, "event"),
        ]
    );
}

#[test]
fn a_timer_survives_a_hard_restart_and_fires_once() {
    let setup = Setup::with_segments("timer-restart", 1, 500, "tests/fixtures/journeys.yaml");
    let t = &setup.topics;
    let s = Shopper {
        key: "c-restart",
        topics: t,
    };
    let mut worker = setup.start(1);
    // Live: the hour ends 8 s from now.
    let t0 = wall() - HOUR + 8_000;
    send(&[s.consent("r0", t0 - MIN, true), s.add_to_cart("r1", t0)]);
    worker.wait_caught_up(2);
    assert_eq!(worker.metric("tailor_timers_fired_total", ""), 0.0);
    // Killed with the timer pending; restarted after it is due (the group waits for the dead
    // member's session to expire first).
    worker.kill_hard();
    std::thread::sleep(Duration::from_secs(8));
    let mut worker = setup.start(2);
    worker.wait_for(Duration::from_secs(60), "the timer to fire", |w| {
        w.metric("tailor_journey_triggers_total", "abandoned-cart") >= 1.0
    });
    // Its lateness counted: the partition was read to its end before the clock reached it.
    assert_eq!(
        worker.metric("tailor_timer_lateness_seconds_count", ""),
        1.0
    );
    // Timed as its batch's phase of its own.
    worker.wait_for(Duration::from_secs(10), "the timers phase timed", |w| {
        w.metric(
            "tailor_batch_phase_duration_seconds_count",
            "phase=\"timers\"",
        ) >= 1.0
    });
    // Let the firing commit, then kill again: nothing fires a second time.
    std::thread::sleep(Duration::from_secs(2));
    worker.kill_hard();
    let worker = setup.start(3);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        worker.metric("tailor_timers_fired_total", ""),
        0.0,
        "nothing left to fire"
    );
    assert_eq!(
        worker.metric(
            "tailor_batch_phase_duration_seconds_count",
            "phase=\"timers\""
        ),
        0.0,
        "no timers phase without timers"
    );
    let quiet = Duration::from_secs(3);
    let fired: Vec<_> = triggers(&t.journeys, quiet)
        .into_iter()
        .filter(|x| x.journey_id == "abandoned-cart")
        .collect();
    assert_eq!(fired.len(), 1, "once, not twice, not never: {fired:?}");
    assert_eq!(fired[0].triggered_at, t0 + HOUR);
    assert_eq!(
        of(&changes(&t.audience, quiet), "c-restart"),
        vec![("cart-abandoners", Direction::Entered, t0 + HOUR, "timer")]
    );
}

#[test]
fn an_idle_batch_closes_when_a_live_timer_comes_due_not_at_its_maximum_wait() {
    let setup = Setup::with_segments("timer-wake", 1, 500, "tests/fixtures/journeys.yaml");
    // A batch with nothing to consume waits 20 s: the timer must not wait with it.
    setup.edit_config(|text| {
        text.replacen("batch_max_wait = \"50ms\"", "batch_max_wait = \"20s\"", 1)
    });
    setup.add_setting("processing", "allowed_lateness = \"0s\"");
    let t = &setup.topics;
    let s = Shopper {
        key: "c-wake",
        topics: t,
    };
    let worker = setup.start(1);
    // The hour ends 30 s after the cart is sent: the cart is applied by then (a batch may hold
    // it until its end while one of the partition's topics is not known to be at its end yet),
    // and the batch after it would wait until 20 s after its start.
    let t0 = wall() - HOUR + 30_000;
    send(&[s.consent("w0", t0 - MIN, true), s.add_to_cart("w1", t0)]);
    let due = t0 + HOUR;
    let within = Duration::from_millis((due + 5_000 - wall()).max(0) as u64);
    worker.wait_for(
        within,
        "the timer to fire within 5 s of its due time",
        |w| w.metric("tailor_journey_triggers_total", "abandoned-cart") >= 1.0,
    );
    // And within a quarter of a second of it (the lateness is 0 s): a batch that closed at
    // its maximum wait by chance near the due time would rarely be this close.
    assert_eq!(
        worker.metric("tailor_timer_lateness_seconds_bucket", "le=\"0.25\""),
        1.0
    );
    let quiet = Duration::from_secs(3);
    assert_eq!(
        of(&changes(&t.audience, quiet), "c-wake"),
        vec![("cart-abandoners", Direction::Entered, due, "timer")]
    );
}

/// Output records by id: (key, payload bytes).
type ById = BTreeMap<String, (Vec<u8>, Vec<u8>)>;

/// Everything on a worker's output topics: audience changes and journey triggers.
fn outputs(setup: &Setup) -> (ById, ById) {
    let quiet = Duration::from_secs(4);
    let read = |topic: &str, id: &dyn Fn(&[u8]) -> String| {
        read_topic_until_quiet(topic, 2, quiet)
            .iter()
            .map(|m| {
                let payload = m.payload().unwrap().to_vec();
                (id(&payload), (m.key().unwrap().to_vec(), payload))
            })
            .collect::<BTreeMap<_, _>>()
    };
    (
        read(&setup.topics.audience, &|p| {
            decode::audience_change(p).unwrap().id
        }),
        read(&setup.topics.journeys, &|p| {
            decode::journey_trigger(p).unwrap().id
        }),
    )
}

#[test]
fn a_replay_of_real_data_run_twice_gives_byte_identical_outputs() {
    // The example segments and journeys, without the consent requirement (the UCI data has no
    // consents), so every journey shows.
    let dir = tempfile::tempdir().unwrap();
    let defs = dir.path().join("segments.yaml");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/segments.yaml"
    ))
    .unwrap();
    std::fs::write(&defs, example.replace("consent: email", "consent: none")).unwrap();
    let defs = defs.to_str().unwrap();

    let first = Setup::with_segments("replay-twice-a", 2, 1000, defs);
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/samples/uci-online-retail-sample.csv"
    );
    let out = Command::new(bin())
        .args([
            "replay",
            "--dataset",
            "uci-online-retail",
            "--file",
            sample,
            "--config",
        ])
        .arg(&first.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let produced: u64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let second = first.sibling("replay-twice-b", 2, 1000, defs);

    let mut runs = Vec::new();
    for (i, setup) in [&first, &second].into_iter().enumerate() {
        let mut worker = setup.start(i + 1);
        worker.wait_caught_up(produced);
        worker.wait_for(Duration::from_secs(60), "the timers to settle", |w| {
            w.metric("tailor_timers_fired_total", "") > 0.0
        });
        runs.push(outputs(setup));
        worker.stop();
    }
    let (changes_a, triggers_a) = &runs[0];
    let (changes_b, triggers_b) = &runs[1];
    assert!(changes_a.len() > 100, "{} changes", changes_a.len());
    assert!(triggers_a.len() > 50, "{} triggers", triggers_a.len());
    let timer_caused = changes_a
        .values()
        .filter(|(_, p)| decode::audience_change(p).unwrap().cause.kind == "timer")
        .count();
    assert!(
        timer_caused > 10,
        "time-driven changes are part of the replay: {timer_caused}"
    );
    assert_eq!(
        changes_a.keys().collect::<Vec<_>>(),
        changes_b.keys().collect::<Vec<_>>()
    );
    assert!(
        changes_a == changes_b,
        "same ids, same keys, same payload bytes"
    );
    assert!(triggers_a == triggers_b, "same triggers, byte for byte");
}

/// Regression: caught up, the clock followed the wall clock without the allowed lateness, so a
/// live event stamped when it was sent was counted late by the time it was read.
#[test]
fn live_events_sent_on_time_are_not_late() {
    let setup = Setup::new("live-on-time", 1, 500);
    let t = &setup.topics;
    let mut worker = setup.start(1);
    // Caught up (nothing to read): the clock follows the wall clock from now on.
    std::thread::sleep(Duration::from_secs(1));
    let p = producer();
    for i in 0..40 {
        let s = Shopper {
            key: &format!("c-live-{i}"),
            topics: t,
        };
        let (topic, key, payload) = s.add_to_cart(&format!("live-{i}"), wall());
        produce_all(&p, &[(topic.as_str(), key.as_str(), payload)]);
        std::thread::sleep(Duration::from_millis(75));
    }
    worker.wait_caught_up(40);
    assert_eq!(worker.metric("tailor_events_total", "addToCart"), 40.0);
    assert_eq!(
        worker.metric("tailor_late_events_total", ""),
        0.0,
        "{}",
        worker.log_text()
    );
    worker.stop();
}
