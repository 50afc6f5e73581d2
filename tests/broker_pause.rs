//! The broker stops answering (SIGSTOP) for 30 s under a running worker whose outputs then time
//! out (`message.timeout.ms` = 5 s here): a transient fault. The open batch is rolled back and
//! retried with backoff, `/readyz` says why meanwhile, and when the broker answers again (SIGCONT)
//! the worker finishes with nothing lost and nothing applied twice: every shopper has its one
//! ENTER, and the committed segment size counts each shopper once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::Message;
use tailor::codec::decode;
use tailor::wire::Direction;

const T0: i64 = 1_709_287_200_000;
const SHOPPERS: usize = 20_000;

#[test]
fn a_broker_that_stops_answering_rolls_the_batch_back_and_nothing_is_lost() {
    let broker = OwnBroker::start();
    broker.use_for_helpers();
    let setup = Setup::new("pause", 2, 1_000);
    setup.add_setting("kafka", "\"message.timeout.ms\" = \"5000\"");
    produce_shoppers(&setup.topics.storefront, SHOPPERS, T0);

    let mut worker = setup.start(1);
    worker.wait_for(Duration::from_secs(60), "a first commit", |w| {
        w.input_offsets() > 0
    });
    broker.signal("-STOP");
    let stopped = std::time::Instant::now();
    worker.wait_for(
        Duration::from_secs(60),
        "a transient fault that rolled the batch back",
        |w| w.metric("tailor_transient_faults_total", "what=\"broker\"") >= 1.0,
    );
    let (status, body) = worker.get("/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("broker"), "{body}");
    // 30 s without a broker: longer than the session timeout, so the group rebalances when it
    // answers again and the partitions are checked against the changelog.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed()));
    broker.signal("-CONT");

    worker.wait_caught_up(SHOPPERS as u64);
    worker.wait_for(Duration::from_secs(60), "ready again", |w| {
        w.get("/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(
        worker.metric("tailor_segment_members", "segment=\"cart-holders\""),
        SHOPPERS as f64,
        "each shopper counted once in the committed state"
    );
    // Each event's latency is counted once, with the batch that committed it: not for the
    // batch the pause rolled back (or dropped with its partitions at the rebalance), whose
    // events were applied again.
    worker.wait_for(Duration::from_secs(15), "each event's latency", |w| {
        w.metric("tailor_event_latency_seconds_count", "") >= SHOPPERS as f64
    });
    assert_eq!(
        worker.metric("tailor_event_latency_seconds_count", ""),
        SHOPPERS as f64
    );
    let mut by_id: HashMap<String, (String, Direction)> = HashMap::new();
    for m in read_topic_until_quiet(&setup.topics.audience, 2, Duration::from_secs(5)) {
        let c = decode::audience_change(m.payload().unwrap()).unwrap();
        let content = (c.profile_key.clone(), c.direction);
        if let Some(seen) = by_id.insert(c.id.clone(), content.clone()) {
            assert_eq!(seen, content, "an id reused for a different change");
        }
    }
    let mut entered: Vec<&String> = by_id
        .values()
        .filter(|(_, d)| *d == Direction::Entered)
        .map(|(k, _)| k)
        .collect();
    entered.sort();
    entered.dedup();
    assert_eq!(
        entered.len(),
        SHOPPERS,
        "every shopper's ENTER was delivered"
    );
    let log = worker.log_text();
    assert!(
        !log.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("ERROR")),
        "{log}"
    );
    worker.stop();
}
