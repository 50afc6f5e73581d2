//! The broker goes away under a running worker (its own broker, started and killed here): the
//! worker says so on `/readyz`, does not log at ERROR (ERROR means it is stopping), keeps running,
//! and a SIGTERM stops it cleanly while outputs wait for an acknowledgement that cannot come.
//!
//! Regression: with the broker down the worker logged ERROR dozens of times a minute; the commit
//! waited up to librdkafka's 300 s delivery timeout without honouring SIGTERM while `/readyz`
//! answered 200, then the worker exited.

mod common;

use std::time::Duration;

use common::*;

const T0: i64 = 1_709_287_200_000;

fn error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("ERROR"))
        .collect()
}

#[test]
fn with_the_broker_gone_the_worker_says_so_logs_no_error_and_stops_on_sigterm() {
    let broker = OwnBroker::start();
    broker.use_for_helpers();
    let setup = Setup::new("outage", 1, 2_000);
    produce_shoppers(&setup.topics.storefront, 30_000, T0);

    let mut worker = setup.start(1);
    worker.wait_for(Duration::from_secs(60), "a first commit", |w| {
        w.input_offsets() > 0
    });
    // Gone mid-replay: outputs of the open batch wait for acknowledgements.
    broker.stop();
    worker.wait_for(
        Duration::from_secs(60),
        "/readyz to answer 503 naming the broker",
        |w| {
            w.get("/readyz")
                .is_some_and(|(s, body)| s == 503 && body.contains("broker"))
        },
    );
    // Still running some seconds later, and still saying why.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(worker.get("/healthz").map(|r| r.0), Some(200), "running");
    let (status, body) = worker.get("/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    let log = worker.log_text();
    assert!(error_lines(&log).is_empty(), "ERROR while retrying:\n{log}");
    // SIGTERM is honoured although outputs are not acknowledged; `stop` asserts a clean exit.
    worker.stop();
    let log = worker.log_text();
    assert!(
        error_lines(&log).is_empty(),
        "ERROR at a requested stop:\n{log}"
    );
    assert!(log.contains("worker stopped"), "{log}");
}
