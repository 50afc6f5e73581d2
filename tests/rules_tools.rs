//! The tools for the people who write segments, as they use them: `tailor test` on the shipped
//! examples and on a wrong expectation; `tailor preview` and `tailor explain` against the state of
//! a running worker fed through the real broker.

mod common;

use std::process::Command;

use common::*;

fn tailor(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root(p: &str) -> String {
    format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_shipped_rule_cases_pass_and_a_wrong_expectation_is_explained() {
    let (code, out, err) = tailor(&[
        "test",
        &root("examples/segments.yaml"),
        &root("examples/segments.test.yaml"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let cases = out.lines().filter(|l| l.starts_with("ok    ")).count();
    assert!(cases >= 16, "{out}");
    assert!(
        out.contains(&format!("{cases} cases")) && out.contains(" 0 failed"),
        "{out}"
    );
    assert!(!out.contains("not named by any expectation"), "{out}");

    // A rule writer's mistake: expecting the abandoned cart after 30 minutes.
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "cases:\n  - name: too early\n    events:\n      - {at: +0m, type: addToCart, sku: S, price: 10}\n    expect:\n      - {at: +30m, members: [cart-abandoners], journeys: [abandoned-cart]}\n",
    )
    .unwrap();
    let (code, out, _) = tailor(&[
        "test",
        &root("examples/segments.yaml"),
        cases.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  too early"), "{out}");
    assert!(
        out.contains("at +30m: expected a member of cart-abandoners, is not; the rule now:"),
        "{out}"
    );
    // The tree names the clause that is false, where it is written, and when time changes it.
    let clause = out
        .lines()
        .find(|l| l.contains("false") && l.contains("then_no(addToCart, completeCheckout, 1h)  ("))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(clause.contains("changes at +1h"), "{clause}");
    assert!(out.contains("expected journeys [abandoned-cart]"), "{out}");
    assert!(
        out.contains("1 cases, 2 checks: 0 passed, 1 failed"),
        "{out}"
    );
    assert!(
        out.contains("not named by any expectation: loyalty-gold"),
        "{out}"
    );

    // A typo in the cases file names the case and the field, and runs nothing.
    std::fs::write(
        &cases,
        "cases:\n  - name: typo\n    expect:\n      - {at: +1m, members: [cart-holder]}\n",
    )
    .unwrap();
    let (code, _, err) = tailor(&[
        "test",
        &root("examples/segments.yaml"),
        cases.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("case 'typo', expect: unknown segment 'cart-holder'"),
        "{err}"
    );
}

const IN_FORCE: &str = "segments:
  - id: cart-holders
    rule: cart.items > 0
  - id: browsers
    rule: count(productPageView, 7d) >= 3
  - id: everyone
    rule: events.total >= 1
";

const PROPOSED: &str = "segments:
  - id: cart-holders
    rule: cart.items > 0
  - id: browsers
    rule: count(productPageView, 7d) >= 5
  - id: keen
    rule: count(productPageView, 7d) >= 2 and not in_segment(\"cart-holders\")
";

#[test]
fn preview_and_explain_read_a_running_workers_state() {
    let dir = tempfile::tempdir().unwrap();
    let in_force = dir.path().join("in-force.yaml");
    let proposed = dir.path().join("proposed.yaml");
    std::fs::write(&in_force, IN_FORCE).unwrap();
    std::fs::write(&proposed, PROPOSED).unwrap();
    let s = Setup::with_segments("preview", 2, 50, in_force.to_str().unwrap());
    let mut worker = s.start(1);
    // Recent events (windows of 7 days hold them whatever the clock): 20 shoppers with a cart,
    // 10 others with 4 product views each.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = now - 3_600_000;
    produce_shoppers(&s.topics.storefront, 20, t0);
    produce_views(&s.topics.storefront, 10, 0, 4, t0);
    worker.wait_caught_up(60);

    let config = s.config.to_str().unwrap();
    let (code, out, err) = tailor(&[
        "preview",
        "--config",
        config,
        "--segments",
        proposed.to_str().unwrap(),
        "--sample",
        "3",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["profiles"], 30, "{r}");
    let seg = |id: &str| {
        r["segments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {r}"))
            .clone()
    };
    let get = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap();
    let cart = seg("cart-holders");
    assert_eq!(cart["status"], "unchanged");
    assert_eq!(
        (
            get(&cart, "members"),
            get(&cart, "would_enter"),
            get(&cart, "would_exit")
        ),
        (20, 0, 0),
        "{cart}"
    );
    let browsers = seg("browsers");
    assert_eq!(browsers["status"], "changed");
    assert_eq!(
        (get(&browsers, "members"), get(&browsers, "would_exit")),
        (0, 10),
        "four views are no longer enough: {browsers}"
    );
    let exits: Vec<&str> = browsers["exit_sample"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(exits.len(), 3, "{browsers}");
    assert!(exits.iter().all(|k| k.starts_with("shopper-")), "{exits:?}");
    let keen = seg("keen");
    assert_eq!(keen["status"], "new");
    assert_eq!(
        (get(&keen, "members"), get(&keen, "would_enter")),
        (10, 10),
        "{keen}"
    );
    let overlap: Vec<(String, u64)> = keen["overlap"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["segment"].as_str().unwrap().to_owned(),
                get(o, "shoppers"),
            )
        })
        .collect();
    assert_eq!(
        overlap,
        vec![("browsers".to_owned(), 10), ("everyone".to_owned(), 10)],
        "{keen}"
    );
    assert_eq!(
        r["removed"],
        serde_json::json!([{"id": "everyone", "members": 30}])
    );

    // The text report, for people, says the same.
    let (code, text, _) = tailor(&[
        "preview",
        "--config",
        config,
        "--segments",
        proposed.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(
        text.contains("everyone (removed): its 30 members would exit"),
        "{text}"
    );

    // Explain, from the same state: why shopper-3 is a browser, and when that will end.
    let (code, out, err) = tailor(&["explain", "--config", config, "shopper-3", "browsers"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("segment browsers (no name): true at "),
        "{out}"
    );
    assert!(out.contains("member since"), "{out}");
    assert!(
        out.contains("4        count(productPageView, 7d)  (5:11)"),
        "{out}"
    );
    assert!(
        out.contains("with no new event, the result may change at "),
        "{out}"
    );
    let (code, _, err) = tailor(&["explain", "--config", config, "shopper-3", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("no segment 'nope'"), "{err}");
    worker.stop();
}
