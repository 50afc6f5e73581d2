//! (d) The shipped sample of the real UCI Online Retail data, replayed through Kafka by
//! `tailor replay`: for every customer in it, the profile's order count and revenue equal what the
//! CSV says.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn replayed_orders_add_up_to_the_csv() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sample = root.join("samples/uci-online-retail-sample.csv");
    let setup = Setup::with_segments("replay", 4, 1000, "examples/segments.yaml");
    let config = setup.config.as_path();

    let out = Command::new(bin())
        .args(["replay", "--dataset", "uci-online-retail", "--file"])
        .arg(&sample)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay failed: {report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("no customer id 300"),
        "guest lines are skipped and counted: {report}"
    );
    let produced: u64 = report.split_whitespace().nth(1).unwrap().parse().unwrap();

    // What the CSV says, computed here straight from the rows.
    let mut invoices: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut revenue: BTreeMap<String, f64> = BTreeMap::new();
    let mut cancellations: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut rdr = csv::Reader::from_path(&sample).unwrap();
    for row in rdr.records() {
        let row = row.unwrap();
        let customer = row[6].trim_end_matches(".0").to_string();
        if customer.is_empty() {
            continue;
        }
        let (invoice, qty, price): (&str, f64, f64) =
            (&row[0], row[3].parse().unwrap(), row[5].parse().unwrap());
        if invoice.starts_with('C') {
            cancellations
                .entry(customer)
                .or_default()
                .insert(invoice.to_string());
        } else {
            invoices
                .entry(customer.clone())
                .or_default()
                .insert(invoice.to_string());
            *revenue.entry(customer).or_default() += qty * price;
        }
    }
    let expected_events: usize = invoices
        .values()
        .chain(cancellations.values())
        .map(BTreeSet::len)
        .sum();
    assert_eq!(produced as usize, expected_events, "one event per invoice");

    let mut worker = setup.start(1);
    worker.wait_caught_up(produced);
    assert_eq!(
        worker.metric("tailor_dead_letters_total", ""),
        0.0,
        "real data, no dead letters"
    );
    worker.stop();

    let customers: BTreeSet<&String> = invoices.keys().chain(cancellations.keys()).collect();
    assert_eq!(customers.len(), 60);
    for c in customers {
        let prof = profile(config, c).unwrap_or_else(|| panic!("no profile for customer {c}"));
        let orders = invoices.get(c).map_or(0, BTreeSet::len);
        assert_eq!(prof["orders"]["count"], orders, "customer {c}");
        let want = revenue.get(c).copied().unwrap_or(0.0);
        let got = prof["orders"]["revenue"].as_f64().unwrap();
        // Each invoice total is rounded to the penny once.
        assert!(
            (got - want).abs() <= 0.005 * orders.max(1) as f64,
            "customer {c}: revenue {got} != {want}"
        );
        assert_eq!(
            prof["orders"]["cancelled"],
            cancellations.get(c).map_or(0, BTreeSet::len),
            "customer {c}"
        );
    }
}

/// A file not in event-time order (here: the sample grouped by country, as an export might be) is
/// refused with where it goes wrong; with `--sort` it is produced in event-time order, the way
/// Online Retail II spells its columns.
#[test]
fn an_unordered_file_is_refused_and_sorted_on_request() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut rdr =
        csv::Reader::from_path(root.join("samples/uci-online-retail-sample.csv")).unwrap();
    let mut rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    rows.sort_by(|a, b| a[7].cmp(&b[7]).then(a[4].cmp(&b[4])));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("by-country.csv");
    let mut w = csv::Writer::from_path(&file).unwrap();
    // Online Retail II's header: other names, price before date.
    w.write_record([
        "Invoice",
        "StockCode",
        "Description",
        "Quantity",
        "Price",
        "InvoiceDate",
        "Customer ID",
        "Country",
    ])
    .unwrap();
    for r in &rows {
        w.write_record([&r[0], &r[1], &r[2], &r[3], &r[5], &r[4], &r[6], &r[7]])
            .unwrap();
    }
    w.flush().unwrap();

    let setup = Setup::with_segments("replay-order", 1, 1000, "examples/segments.yaml");
    let replay = |extra: &[&str]| {
        Command::new(bin())
            .args(["replay", "--dataset", "uci-online-retail", "--file"])
            .arg(&file)
            .arg("--config")
            .arg(&setup.config)
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = replay(&[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "an unordered file must be refused"
    );
    assert!(
        err.contains("is not in event-time order") && err.contains("--sort"),
        "{err}"
    );
    assert_eq!(
        end_offsets(&setup.topics.backoffice, 1),
        0,
        "nothing produced when refused"
    );

    let sorted = replay(&["--sort"]);
    assert!(
        sorted.status.success(),
        "{}",
        String::from_utf8_lossy(&sorted.stderr)
    );
    let produced: usize = String::from_utf8_lossy(&sorted.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let records = read_topic(
        &setup.topics.backoffice,
        1,
        produced,
        std::time::Duration::from_secs(60),
    );
    assert_eq!(records.len(), produced);
    let times: Vec<i64> = records
        .iter()
        .map(|m| rdkafka::Message::timestamp(m).to_millis().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "records in event-time order"
    );
}
