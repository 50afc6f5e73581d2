//! Every record Tailor produces stays below the broker's default record limit (1,000,000
//! bytes, librdkafka's `message.max.bytes`), whatever valid events a producer sends: a profile
//! grown by adversarial events at every field's cap, the merge message that carries it with the
//! largest accepted event, and every journey trigger and audience change on the way.
//!
//! Regression for a valid event with a 600 KB e-mail (its repartition message) and ten product
//! views with 120 KB product names (the journey trigger's context), each of which stopped the
//! worker with `MessageSizeTooLarge`.

use std::sync::Arc;

use tailor_core::audience::{Core, Outputs, Source, MAX_IDENTITIES_LIMIT};
use tailor_core::codec::encode;
use tailor_core::event::{
    Attributes, Cart, Event, EventType, Line, MAX_EVENT_BYTES, MAX_ID_BYTES, MAX_TEXT_BYTES,
    MAX_URL_BYTES,
};
use tailor_core::identity::{self, Internal, KeyKind, Message, Position, RawEvent};
use tailor_core::profile::{self, Profile};
use tailor_core::segments::SegmentSet;
use tailor_core::wire::Identity;

/// The broker's (and librdkafka's) default largest record.
const BROKER_LIMIT: usize = 1_000_000;
/// Key, headers and record framing on top of a value.
const OVERHEAD: usize = 8 * 1024;

/// A string of exactly `len` bytes, distinct per (`tag`, `i`).
fn s(tag: &str, i: usize, len: usize) -> String {
    let mut v = format!("{tag}{i}-");
    v.push_str(&"x".repeat(len - v.len()));
    v
}

fn line(i: usize) -> Line {
    Line {
        sku: s("sku", i, MAX_ID_BYTES).into(),
        name: Some(s("name", i, MAX_TEXT_BYTES)),
        quantity: 1.0,
        price: Some(10.0 + i as f64),
        image_url: Some(s("img", i, MAX_URL_BYTES)),
        url: Some(s("url", i, MAX_URL_BYTES)),
        category: Some(s("cat", i, MAX_TEXT_BYTES).into()),
        brand: Some(s("brand", i, MAX_TEXT_BYTES).into()),
    }
}

fn event(kind: EventType, i: usize, time: i64) -> Event {
    let identity = Identity {
        ecid: Some(s("ecid", i, MAX_ID_BYTES)),
        email: Some(s("mail", i, MAX_ID_BYTES)),
        customer_id: Some(s("cust", i, MAX_ID_BYTES)),
    };
    let mut ev = Event::base(s("ev", i, MAX_ID_BYTES), kind, time, identity);
    ev.device = Some(s("dev", i, MAX_TEXT_BYTES).into());
    ev.channel = Some(s("ch", i, MAX_TEXT_BYTES).into());
    ev
}

#[test]
fn outputs_stay_below_the_broker_limit_whatever_valid_events_arrive() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/segments.yaml"
    ))
    .unwrap();
    let mut core = Core::new(Arc::new(SegmentSet::parse(&rules).unwrap()))
        .with_max_identities(MAX_IDENTITIES_LIMIT);
    // Each event below comes before the timers that fired after the one before it: time goes
    // back, which the worker never does, and evaluating only the segments an event changed
    // needs it not to.
    core.set_incremental(false);
    let mut p = Profile::default();
    let key = s("key", 0, MAX_ID_BYTES);
    let mut out = Outputs::default();
    let (mut max_profile, mut max_trigger, mut max_change, mut triggers) = (0, 0, 0, 0);
    let mut t = 1_760_000_000_000i64;
    for i in 0..400 {
        t += 60_000;
        let kind = [
            EventType::ProductPageView,
            EventType::AddToCart,
            EventType::CompleteCheckout,
            EventType::OrderPlaced,
            EventType::SignIn,
            EventType::SearchRequestSent,
            EventType::ProfileRecord,
            EventType::ShoppingCartView,
        ][i % 8];
        let mut ev = event(kind, i, t);
        ev.lines = (0..120).map(|j| line(i * 1000 + j)).collect();
        ev.value = 100.0;
        ev.cart = Some(Cart {
            id: Some(s("cart", i, MAX_ID_BYTES)),
            lines: (0..120).map(|j| line(i * 1000 + 500 + j)).collect(),
        });
        ev.order_id = Some(s("order", i, MAX_ID_BYTES));
        ev.search_phrase = Some(s("q", i, MAX_TEXT_BYTES));
        ev.attributes = Some(Box::new(Attributes {
            first_name: Some(s("fn", i, MAX_TEXT_BYTES)),
            last_name: Some(s("ln", i, MAX_TEXT_BYTES)),
            email: Some(s("em", i, MAX_TEXT_BYTES)),
            phone: Some(s("ph", i, MAX_TEXT_BYTES)),
            city: Some(s("city", i, MAX_TEXT_BYTES)),
            country: Some(s("co", i, MAX_TEXT_BYTES)),
            customer_group: Some(s("grp", i, MAX_TEXT_BYTES)),
            consent_email: Some(true),
            ..Attributes::default()
        }));
        ev.check_sizes()
            .expect("every field at its cap is accepted");
        out.clear();
        let source = Source {
            topic: "storefront",
            partition: 0,
            offset: i as i64,
        };
        core.process(&key, &mut p, &ev, source, t, &mut out);
        // Time passes too: every timer fires.
        core.advance(&key, &mut p, t + 30 * 86_400_000, &mut out);
        for tr in &out.triggers {
            max_trigger = max_trigger.max(encode::journey_trigger(tr).unwrap().len());
            triggers += 1;
        }
        for c in &out.changes {
            max_change = max_change.max(encode::audience_change(c).unwrap().len());
        }
        max_profile = max_profile.max(profile::encode(&p).len());
    }
    assert_eq!(
        tailor_core::identity::count(&p),
        MAX_IDENTITIES_LIMIT,
        "the profile must hold the most identities allowed for this test to mean anything"
    );
    assert!(
        triggers > 0,
        "the example journeys must trigger for this test to mean anything"
    );
    let merge = identity::encode(&Internal {
        target: s("target", 0, MAX_ID_BYTES),
        via: Position {
            topic: "tailor.repartition".into(),
            partition: 0,
            offset: i64::MAX,
        },
        message: Message::Merge {
            from: key.clone(),
            profile: Some(profile::encode(&p)),
            kind: KeyKind::Customer,
            event: Some(RawEvent {
                family: 0,
                payload: vec![0xAB; MAX_EVENT_BYTES],
                origin: Position {
                    topic: "storefront".into(),
                    partition: 0,
                    offset: i64::MAX,
                },
            }),
        },
    });
    println!(
        "largest profile {max_profile} B, merge message {} B, journey trigger {max_trigger} B ({triggers} triggers), audience change {max_change} B",
        merge.len()
    );
    assert!(
        max_profile + MAX_EVENT_BYTES + OVERHEAD < BROKER_LIMIT,
        "{max_profile}"
    );
    assert!(merge.len() + OVERHEAD < BROKER_LIMIT, "{}", merge.len());
    assert!(max_trigger + OVERHEAD < BROKER_LIMIT, "{max_trigger}");
    assert!(max_change + OVERHEAD < BROKER_LIMIT, "{max_change}");
}

#[test]
fn oversized_fields_are_refused_naming_the_field() {
    let mut ev = event(EventType::SignIn, 1, 1_760_000_000_000);
    ev.identity.email = Some("a".repeat(600_000));
    let e = ev.check_sizes().unwrap_err();
    assert_eq!(e.code(), "field_too_long");
    assert!(
        e.to_string().contains("identity.email is 600000 bytes"),
        "{e}"
    );

    let mut ev = event(EventType::ProductPageView, 1, 1_760_000_000_000);
    let mut l = line(1);
    l.name = Some("n".repeat(120_000));
    ev.lines = vec![l];
    let e = ev.check_sizes().unwrap_err();
    assert!(
        e.to_string()
            .contains("product name is 120000 bytes long (at most 512)"),
        "{e}"
    );

    let mut ev = event(EventType::OrderPlaced, 1, 1_760_000_000_000);
    ev.lines = (0..501).map(line).collect();
    assert_eq!(ev.check_sizes().unwrap_err().code(), "too_many_items");
}
