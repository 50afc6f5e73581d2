//! Identity stitching, deletion, lookups and definition changes, through a real broker and the
//! real worker. Storefront events are keyed by ECID and back-office events by e-mail, as the
//! platform keys them; the outputs are read back from the topics and the profiles through
//! `GET /profiles/{id}`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tailor::codec::{decode, encode};
use tailor::identity::partition_for;
use tailor::samples;
use tailor::wire::{AudienceChange, Direction};

const MIN: i64 = 60_000;

/// Two hours ago, on the minute: recent enough that every window still counts the events (the
/// worker's clock follows the wall clock once caught up).
fn t0() -> i64 {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        (now - 120 * MIN) / MIN * MIN
    })
}

/// (profile key, segment, direction, cause kind) of every audience change, in topic order per
/// partition; and the keys of tombstones.
/// (profile key, segment, direction, cause kind).
type Change = (String, String, Direction, String);

fn changes(msgs: &[OwnedMessage]) -> (Vec<Change>, Vec<String>) {
    let mut out = Vec::new();
    let mut tombstones = Vec::new();
    for m in msgs {
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        match m.payload() {
            None => tombstones.push(key),
            Some(p) => {
                let c: AudienceChange = decode::audience_change(p).unwrap();
                assert_eq!(c.profile_key, key, "keyed by profile key");
                out.push((
                    c.profile_key,
                    c.segment_id.into(),
                    c.direction,
                    c.cause.kind.into(),
                ));
            }
        }
    }
    (out, tombstones)
}

fn change(key: &str, seg: &str, dir: Direction, cause: &str) -> Change {
    (key.into(), seg.into(), dir, cause.into())
}

/// Each (key, segment, direction, cause) at most once, then as a sorted list.
fn sorted_once(mut list: Vec<Change>) -> Vec<Change> {
    let mut seen = HashMap::new();
    for c in &list {
        *seen.entry(c.clone()).or_insert(0) += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicate audience changes: {dups:?}");
    list.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    list
}

fn view(id: &str, time: i64, ecid: &str) -> Vec<u8> {
    encode::storefront(&samples::storefront("productPageView", id, time, ecid)).unwrap()
}

fn add_to_cart(id: &str, time: i64, ecid: &str) -> Vec<u8> {
    encode::storefront(&samples::storefront("addToCart", id, time, ecid)).unwrap()
}

fn sign_in(id: &str, time: i64, ecid: &str, email: &str) -> Vec<u8> {
    let mut e = samples::storefront("signIn", id, time, ecid);
    e.identity.email = Some(email.into());
    e.shopping_cart_context = None;
    encode::storefront(&e).unwrap()
}

fn order(id: &str, time: i64, email: &str, order_id: &str) -> Vec<u8> {
    encode::backoffice(&samples::backoffice(
        "orderPlaced",
        id,
        time,
        email,
        order_id,
        120.0,
    ))
    .unwrap()
}

/// Produces the steps one at a time, each once the previous one (and everything it sent through
/// the repartition topic) is committed, so the story's order holds across topics. `done`: input
/// messages committed before; returns the count after.
fn play(
    worker: &Worker,
    p: &rdkafka::producer::BaseProducer,
    t: &Topics,
    partitions: i32,
    done: u64,
    steps: Vec<(&str, &str, Vec<u8>)>,
) -> u64 {
    let mut n = done;
    for (topic, key, payload) in steps {
        produce_all(p, &[(topic, key, payload)]);
        n += 1;
        worker.wait_caught_up(n);
        worker.wait_repartition_idle(&t.repartition, partitions);
    }
    n
}

fn json_of(worker: &Worker, id: &str) -> (u16, serde_json::Value) {
    let (status, body) = worker.get(&format!("/profiles/{id}")).expect("http");
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// Anonymous browsing, then a sign-in: the browser's history moves to the e-mail's profile, the
/// browser's later events follow it, and an order by e-mail lands on it. Every identity looks
/// up the same profile.
#[test]
fn signing_in_merges_the_anonymous_profile_once_and_every_identity_finds_it() {
    let setup = Setup::with_segments("merge", 1, 100, "tests/fixtures/identity.yaml");
    let t = &setup.topics;
    // Access lines are DEBUG: on here, so the check below that no identity is logged covers them.
    setup.edit_config(|text| {
        text.replace(
            "level = \"info,librdkafka=warn\"",
            "level = \"info,tailor::http=debug,librdkafka=warn\"",
        )
    });
    let mut worker = setup.start(1);
    let p = producer();
    let (ecid, email) = ("ecid-anna", "anna@example.com");

    let steps: Vec<(&str, &str, Vec<u8>)> = vec![
        (&t.storefront, ecid, view("v1", t0(), ecid)),
        (&t.storefront, ecid, view("v2", t0() + MIN, ecid)),
        (&t.storefront, ecid, add_to_cart("a1", t0() + 2 * MIN, ecid)),
        (
            &t.storefront,
            ecid,
            sign_in("s1", t0() + 3 * MIN, ecid, email),
        ),
        // After the sign-in: the browser's events go to the merged profile.
        (&t.storefront, ecid, view("v3", t0() + 4 * MIN, ecid)),
        (
            &t.backoffice,
            email,
            order("o1", t0() + 5 * MIN, email, "order-1"),
        ),
    ];
    play(&worker, &p, t, 1, 0, steps);

    let msgs = read_topic_until_quiet(&t.audience, 1, Duration::from_secs(3));
    let (got, tombstones) = changes(&msgs);
    assert!(tombstones.is_empty());
    use Direction::{Entered, Exited};
    let expected = vec![
        change(ecid, "anonymous-browsers", Entered, "event"),
        change(ecid, "cart-holders", Entered, "event"),
        // The sign-in: the browser's profile leaves its segments...
        change(ecid, "anonymous-browsers", Exited, "merge"),
        change(ecid, "cart-holders", Exited, "merge"),
        // ...and the merged profile enters what the merged history qualifies for, once.
        change(email, "cart-holders", Entered, "merge"),
        // The third view, keyed by the ECID, counted with the two before the merge.
        change(email, "browsers", Entered, "event"),
        // The order by e-mail: the cart is bought.
        change(email, "buyers", Entered, "event"),
        change(email, "cart-holders", Exited, "event"),
    ];
    assert_eq!(sorted_once(got), sorted_once(expected));

    // Lookups by every identity give the same profile.
    let (status, by_email) = json_of(&worker, email);
    assert_eq!(status, 200, "{by_email}");
    let (status, by_ecid) = json_of(&worker, ecid);
    assert_eq!(status, 200, "{by_ecid}");
    assert_eq!(by_email, by_ecid);
    assert_eq!(by_email["profile_key"], email);
    assert_eq!(by_email["counts"]["productPageView"]["7d"], 3);
    assert_eq!(by_email["orders"]["count"], 1);
    assert_eq!(by_email["identities"]["ecids"], serde_json::json!([ecid]));
    assert_eq!(by_email["identities"]["emails"], serde_json::json!([email]));
    let segments: Vec<&str> = by_email["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["segment"].as_str().unwrap())
        .collect();
    assert_eq!(segments, vec!["browsers", "buyers"]);
    assert!(
        by_email["recent_changes"].as_array().unwrap().len() >= 4,
        "{by_email}"
    );
    let (status, _) = json_of(&worker, "nobody@example.com");
    assert_eq!(status, 404);
    // No identity in the logs.
    let log = worker.log_text();
    assert!(log.contains("http request"), "access lines are logged");
    assert!(
        !log.contains(email) && !log.contains(ecid),
        "identities in the log:\n{log}"
    );
    // The same through the command line, read-only from the state on disk (a stop flushes it;
    // a running worker's is as of its last flush).
    worker.stop();
    let cli = profile(&setup.config, ecid).expect("found by ECID");
    assert_eq!(cli["profile_key"], email);
}

/// The browser's profile and the e-mail's live on different partitions: the merge moves the
/// state through the repartition topic to the e-mail's partition.
#[test]
fn a_merge_across_partitions_adds_both_histories_up() {
    let setup = Setup::with_segments("merge2", 2, 100, "tests/fixtures/identity.yaml");
    let t = &setup.topics;
    let worker = setup.start(1);
    let p = producer();
    let email = "bob@example.com";
    let ecid = (0..)
        .map(|i| format!("ecid-bob-{i}"))
        .find(|e| partition_for(e.as_bytes(), 2) != partition_for(email.as_bytes(), 2))
        .unwrap();
    let ecid = ecid.as_str();

    let steps: Vec<(&str, &str, Vec<u8>)> = vec![
        // Known side first: an order by e-mail.
        (&t.backoffice, email, order("o1", t0(), email, "order-1")),
        (&t.storefront, ecid, view("v1", t0() + MIN, ecid)),
        (&t.storefront, ecid, view("v2", t0() + 2 * MIN, ecid)),
        (&t.storefront, ecid, add_to_cart("a1", t0() + 3 * MIN, ecid)),
        (
            &t.storefront,
            ecid,
            sign_in("s1", t0() + 4 * MIN, ecid, email),
        ),
        (&t.storefront, ecid, view("v3", t0() + 5 * MIN, ecid)),
    ];
    play(&worker, &p, t, 2, 0, steps);
    let msgs = read_topic_until_quiet(&t.audience, 2, Duration::from_secs(3));
    let (got, _) = changes(&msgs);
    use Direction::{Entered, Exited};
    let expected = vec![
        change(email, "buyers", Entered, "event"),
        change(ecid, "anonymous-browsers", Entered, "event"),
        change(ecid, "cart-holders", Entered, "event"),
        change(ecid, "anonymous-browsers", Exited, "merge"),
        change(ecid, "cart-holders", Exited, "merge"),
        change(email, "cart-holders", Entered, "merge"),
        change(email, "browsers", Entered, "event"),
    ];
    assert_eq!(sorted_once(got), sorted_once(expected));
    let (status, doc) = json_of(&worker, ecid);
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["profile_key"], email);
    assert_eq!(
        doc["partition"],
        partition_for(email.as_bytes(), 2),
        "the merged profile lives on the e-mail's partition"
    );
    assert_eq!(doc["counts"]["productPageView"]["7d"], 3);
    assert_eq!(doc["orders"]["count"], 1);
    assert_eq!(doc["cart"]["items"].as_array().unwrap().len(), 1);
    assert!(worker.metric("tailor_repartition_messages_total", "kind=\"merge\"") >= 1.0);
}

/// accountDeleted and the admin endpoint remove everything: EXITs with cause `deletion`,
/// tombstones, 404 by every identity, and no key or value in the state naming the shopper.
#[test]
fn deletion_leaves_nothing_behind() {
    let setup = Setup::with_segments("delete", 2, 100, "tests/fixtures/identity.yaml");
    let t = &setup.topics;
    let mut worker = setup.start(1);
    let p = producer();
    let shoppers = [
        ("ecid-carl", "carl@example.com"),
        ("ecid-dora", "dora@example.com"),
    ];
    let mut n = 0;
    for (i, (ecid, email)) in shoppers.iter().enumerate() {
        let o = i as i64 * 10 * MIN;
        let steps: Vec<(&str, &str, Vec<u8>)> = vec![
            (&t.storefront, ecid, view(&format!("v1{i}"), t0() + o, ecid)),
            (
                &t.storefront,
                ecid,
                add_to_cart(&format!("a{i}"), t0() + o + MIN, ecid),
            ),
            (
                &t.storefront,
                ecid,
                sign_in(&format!("s{i}"), t0() + o + 2 * MIN, ecid, email),
            ),
            (
                &t.backoffice,
                email,
                order(
                    &format!("o{i}"),
                    t0() + o + 3 * MIN,
                    email,
                    &format!("order-{i}"),
                ),
            ),
            (
                &t.storefront,
                ecid,
                add_to_cart(&format!("b{i}"), t0() + o + 4 * MIN, ecid),
            ),
        ];
        n = play(&worker, &p, t, 2, n, steps);
    }
    for (ecid, email) in shoppers {
        assert_eq!(json_of(&worker, ecid).0, 200);
        assert_eq!(json_of(&worker, email).0, 200);
    }

    // Carl: accountDeleted from the platform, keyed by a customer id Tailor has never seen,
    // naming his e-mail. Dora: the admin endpoint, by her ECID.
    let mut deleted = samples::profile(
        "accountDeleted",
        "del-1",
        t0() + 30 * MIN,
        "cust-carl",
        "carl@example.com",
        None,
    );
    deleted.identity.email = Some("carl@example.com".into());
    produce_all(
        &p,
        &[(&t.profile, "cust-carl", encode::profile(&deleted).unwrap())],
    );
    n += 1;
    worker.wait_caught_up(n);
    let (status, body) = worker.request("DELETE", "/profiles/ecid-dora", "").unwrap();
    assert_eq!(status, 202, "{body}");
    for (ecid, email) in shoppers {
        worker.wait_for(Duration::from_secs(30), "the deletion", |w| {
            json_of(w, ecid).0 == 404 && json_of(w, email).0 == 404
        });
    }
    worker.wait_repartition_idle(&t.repartition, 2);

    let msgs = read_topic_until_quiet(&t.audience, 2, Duration::from_secs(3));
    let (got, tombstones) = changes(&msgs);
    for (ecid, email) in shoppers {
        let exits: Vec<_> = got
            .iter()
            .filter(|c| c.0 == email && c.3 == "deletion")
            .map(|c| (c.1.as_str(), c.2))
            .collect();
        assert_eq!(
            exits,
            vec![
                ("buyers", Direction::Exited),
                ("cart-holders", Direction::Exited)
            ],
            "{email}"
        );
        for key in [ecid, email] {
            assert!(tombstones.iter().any(|k| k == key), "tombstone for {key}");
        }
    }
    assert_eq!(worker.metric("tailor_profile_deletions_total", ""), 2.0);

    // Nothing naming them is left in any column family of the state.
    worker.stop();
    let store = tailor::store::Store::open_read_only(&setup.dir.path().join("state")).unwrap();
    for needle in ["carl", "dora"] {
        assert_eq!(
            store.find_bytes(needle.as_bytes()).unwrap(),
            Vec::<&str>::new(),
            "{needle} is still in the state"
        );
    }
    assert!(profile(&setup.config, "ecid-carl").is_none());
}

/// A segment added to the file enters existing profiles on restart, once; a removed segment
/// exits; an unchanged one says nothing; SIGHUP applies a change without a restart.
#[test]
fn changed_definitions_are_applied_to_every_existing_profile_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("segments.yaml");
    let v1 = "segments:\n  - id: cart-holders\n    rule: cart.items > 0\n  - id: buyers\n    rule: orders.count >= 1\n";
    std::fs::write(&file, v1).unwrap();
    let setup = Setup::with_segments("defs", 2, 100, file.to_str().unwrap());
    let t = &setup.topics;
    let mut worker = setup.start(1);
    let p = producer();
    let mut msgs = Vec::new();
    for i in 0..6 {
        let ecid = format!("ecid-def-{i}");
        msgs.push((
            t.storefront.clone(),
            ecid.clone(),
            view(&format!("v{i}"), t0() + i * MIN, &ecid),
        ));
        if i % 2 == 0 {
            msgs.push((
                t.storefront.clone(),
                ecid.clone(),
                add_to_cart(&format!("a{i}"), t0() + i * MIN + 1, &ecid),
            ));
        }
    }
    let refs: Vec<(&str, &str, Vec<u8>)> = msgs
        .iter()
        .map(|(t, k, v)| (t.as_str(), k.as_str(), v.clone()))
        .collect();
    produce_all(&p, &refs);
    worker.wait_caught_up(refs.len() as u64);
    worker.stop();
    let before = changes(&read_topic_until_quiet(
        &t.audience,
        2,
        Duration::from_secs(2),
    ))
    .0;
    assert_eq!(before.len(), 3, "three cart holders: {before:?}");

    // v2: cart-holders removed, buyers unchanged, viewers added.
    let v2 = "segments:\n  - id: buyers\n    rule: orders.count >= 1\n  - id: viewers\n    rule: count(productPageView, 90d) >= 1\n";
    std::fs::write(&file, v2).unwrap();
    let mut worker = setup.start(2);
    worker.wait_for(Duration::from_secs(30), "the re-evaluation", |w| {
        w.metric("tailor_reevaluated_profiles_total", "") >= 6.0
            && w.metric("tailor_reevaluation_pending_partitions", "") == 0.0
    });
    worker.stop();
    // A restart with the same file changes nothing.
    let mut worker = setup.start(3);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(worker.metric("tailor_reevaluated_profiles_total", ""), 0.0);
    let by_definitions = |list: Vec<Change>| {
        list.into_iter()
            .filter(|c| c.3 == "definition-change")
            .collect::<Vec<_>>()
    };
    let after = changes(&read_topic_until_quiet(
        &t.audience,
        2,
        Duration::from_secs(3),
    ))
    .0;
    let mut expected = Vec::new();
    for i in 0..6 {
        let ecid = format!("ecid-def-{i}");
        expected.push(change(
            &ecid,
            "viewers",
            Direction::Entered,
            "definition-change",
        ));
        if i % 2 == 0 {
            expected.push(change(
                &ecid,
                "cart-holders",
                Direction::Exited,
                "definition-change",
            ));
        }
    }
    assert_eq!(after.len(), before.len() + expected.len(), "{after:?}");
    assert_eq!(
        sorted_once(by_definitions(after)),
        sorted_once(expected.clone())
    );

    // SIGHUP: an invalid file is refused (the rules in force stay), a valid one is applied.
    std::fs::write(&file, "segments:\n  - id: broken\n    rule: cart.items >\n").unwrap();
    worker.signal("HUP");
    worker.wait_for(Duration::from_secs(10), "the refused reload", |w| {
        w.metric("tailor_definition_reloads_total", "result=\"invalid\"") == 1.0
    });
    // Regression: an escaped multi-byte character in a rule panicked the lexer, and a SIGHUP
    // with such a file stopped the running worker. It is refused like any invalid file.
    std::fs::write(
        &file,
        "segments:\n  - id: odd\n    rule: \"city == '\\\\é' >\"\n",
    )
    .unwrap();
    worker.signal("HUP");
    worker.wait_for(Duration::from_secs(10), "the second refused reload", |w| {
        w.metric("tailor_definition_reloads_total", "result=\"invalid\"") == 2.0
    });
    assert_eq!(
        worker.get("/readyz").map(|r| r.0),
        Some(200),
        "still running"
    );
    let v3 = format!("{v2}  - id: cart-holders\n    rule: cart.items > 0\n");
    std::fs::write(&file, v3).unwrap();
    worker.signal("HUP");
    worker.wait_for(Duration::from_secs(30), "the reload", |w| {
        w.metric("tailor_definition_reloads_total", "result=\"applied\"") == 1.0
            && w.metric("tailor_reevaluated_profiles_total", "") >= 6.0
            && w.metric("tailor_reevaluation_pending_partitions", "") == 0.0
    });
    let all = changes(&read_topic_until_quiet(
        &t.audience,
        2,
        Duration::from_secs(3),
    ))
    .0;
    expected.extend((0..6).filter(|i| i % 2 == 0).map(|i| {
        change(
            &format!("ecid-def-{i}"),
            "cart-holders",
            Direction::Entered,
            "definition-change",
        )
    }));
    assert_eq!(sorted_once(by_definitions(all)), sorted_once(expected));
    worker.stop();
}

/// SIGKILL while merges are in flight: after a restart every shopper's profile holds each of its
/// events once (no merge applied twice, none lost), and no output id was reused for another change.
#[test]
fn a_hard_kill_during_merges_loses_nothing_and_merges_nothing_twice() {
    let setup = Setup::with_segments("mergecrash", 2, 20, "tests/fixtures/identity.yaml");
    let t = &setup.topics;
    let p = producer();
    let shoppers = 150;
    let mut msgs: Vec<(String, String, Vec<u8>)> = Vec::new();
    for step in 0..6 {
        for i in 0..shoppers {
            let ecid = format!("ecid-crash-{i}");
            let email = format!("crash-{i}@example.com");
            let at = t0() + step * MIN + i;
            let id = format!("{step}-{i}");
            msgs.push(match step {
                0 | 1 | 4 => (t.storefront.clone(), ecid.clone(), view(&id, at, &ecid)),
                2 => (
                    t.storefront.clone(),
                    ecid.clone(),
                    add_to_cart(&id, at, &ecid),
                ),
                3 => (
                    t.storefront.clone(),
                    ecid.clone(),
                    sign_in(&id, at, &ecid, &email),
                ),
                _ => (
                    t.backoffice.clone(),
                    email.clone(),
                    order(&id, at, &email, &format!("order-{i}")),
                ),
            });
        }
    }
    let refs: Vec<(&str, &str, Vec<u8>)> = msgs
        .iter()
        .map(|(t, k, v)| (t.as_str(), k.as_str(), v.clone()))
        .collect();
    produce_all(&p, &refs);

    let mut first = setup.start(1);
    first.wait_for(Duration::from_secs(120), "merges under way", |w| {
        w.metric("tailor_identity_links_total", "result=\"merged\"") >= 20.0
    });
    first.kill_hard();
    let second = setup.start(2);
    second.wait_caught_up(refs.len() as u64);
    second.wait_repartition_idle(&t.repartition, 2);
    for i in 0..shoppers {
        let (status, doc) = json_of(&second, &format!("ecid-crash-{i}"));
        assert_eq!(status, 200, "shopper {i}: {doc}");
        assert_eq!(doc["profile_key"], format!("crash-{i}@example.com"));
        assert_eq!(
            doc["events_total"], 6,
            "shopper {i}: every event once: {doc}"
        );
        assert_eq!(doc["counts"]["productPageView"]["7d"], 3, "shopper {i}");
        assert_eq!(doc["orders"]["count"], 1, "shopper {i}");
        assert_eq!(json_of(&second, &format!("crash-{i}@example.com")).1, doc);
    }
    // Outputs are at-least-once: a record may repeat, but one id is always the same change.
    let mut by_id: HashMap<String, AudienceChange> = HashMap::new();
    for m in read_topic_until_quiet(&t.audience, 2, Duration::from_secs(3)) {
        let c = decode::audience_change(m.payload().unwrap()).unwrap();
        if let Some(prev) = by_id.insert(c.id.clone(), c.clone()) {
            assert_eq!(
                (&prev.profile_key, &prev.segment_id, prev.direction),
                (&c.profile_key, &c.segment_id, c.direction),
                "id {} reused",
                c.id
            );
        }
    }
}

/// Two workers split the partitions: a lookup on the one that does not hold the profile answers
/// 421 with the partition that does. (The owning member's name comes from the broker's
/// DescribeGroups answer, which the test broker leaves empty: it is `null` here; the decoding of
/// a real answer is unit-tested in `http.rs`.)
#[test]
fn a_lookup_on_the_wrong_worker_names_the_owner() {
    let a_setup = Setup::with_segments("owner", 2, 100, "tests/fixtures/identity.yaml");
    let b_setup = a_setup.peer(100, "tests/fixtures/identity.yaml");
    let t = &a_setup.topics;
    let a = a_setup.start(1);
    let b = b_setup.start(1);
    for w in [&a, &b] {
        w.wait_for(Duration::from_secs(60), "the partitions split", |w| {
            w.metric("tailor_assigned_partitions", "") == 4.0
        });
    }
    let p = producer();
    let keys: Vec<String> = (0..)
        .map(|i| format!("ecid-owner-{i}"))
        .scan([false; 2], |seen, k| {
            let part = partition_for(k.as_bytes(), 2) as usize;
            let new = !seen[part];
            seen[part] = true;
            Some((k, new, seen[0] && seen[1]))
        })
        .filter(|(_, new, _)| *new)
        .map(|(k, _, _)| k)
        .take(2)
        .collect();
    for (i, k) in keys.iter().enumerate() {
        produce_all(&p, &[(&t.storefront, k, view(&format!("o{i}"), t0(), k))]);
    }
    let workers = [(&a, a_setup.port), (&b, b_setup.port)];
    for k in &keys {
        let path = format!("/profiles/{k}");
        a.wait_for(Duration::from_secs(30), "the profile", |_| {
            workers
                .iter()
                .any(|(w, _)| w.get(&path).is_some_and(|(s, _)| s == 200))
        });
        let holder = workers
            .iter()
            .position(|(w, _)| w.get(&path).unwrap().0 == 200)
            .unwrap();
        let (other, _) = workers[1 - holder];
        let (status, body) = other.get(&path).unwrap();
        assert_eq!(status, 421, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["partition"], partition_for(k.as_bytes(), 2));
        if !doc["owner"].is_null() {
            assert_eq!(
                doc["owner"]["client_id"],
                format!("tailor-{}", workers[holder].1),
                "{doc}"
            );
        }
    }
}
