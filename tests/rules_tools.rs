//! The tools for the people who write segments, as they use them: `tailor test` on the shipped
//! examples and on a wrong expectation; `tailor preview` and `tailor explain` against the state of
//! a worker fed through the real broker (stopped first: they read the state on disk).

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

/// `tailor preview --config CONFIG --segments SEGMENTS EXTRA… --json`, which must succeed: the
/// report and what it wrote on stderr (progress).
fn preview_json(config: &str, segments: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let mut args = vec!["preview", "--config", config, "--segments", segments];
    args.extend_from_slice(extra);
    args.push("--json");
    let (code, out, err) = tailor(&args);
    assert_eq!(code, 0, "{out}{err}");
    (serde_json::from_str(&out).unwrap(), err)
}

/// The entry of segment `id` in a report's `segments` list.
fn segment(report: &serde_json::Value, id: &str) -> serde_json::Value {
    report["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("{id} in {report}"))
        .clone()
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
    assert_eq!(code, 2, "a wrong file is not a failed expectation");
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
  - id: carting-browsers
    rule: in_segment(\"browsers\") and cart.items > 0
";

const PROPOSED: &str = "segments:
  - id: cart-holders
    rule: cart.items > 0
  - id: browsers
    rule: count(productPageView, 7d) >= 5
  - id: keen
    rule: count(productPageView, 7d) >= 2 and not in_segment(\"cart-holders\")
  - id: carting-browsers
    rule: in_segment(\"browsers\") and cart.items > 0
";

#[test]
fn preview_and_explain_read_a_workers_state() {
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
    // Preview and explain read the state on disk: a stop flushes it (a running worker's is as
    // of its last flush).
    worker.stop();

    let config = s.config.to_str().unwrap();
    let (r, _) = preview_json(config, proposed.to_str().unwrap(), &["--sample", "3"]);
    assert_eq!(r["profiles"], 30, "{r}");
    let seg = |id: &str| segment(&r, id);
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
    assert_eq!(
        seg("carting-browsers")["status"],
        "affected",
        "its rule is the same, but it uses browsers, which changed"
    );
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

    // The same definitions over the recorded input of the last day, in scratch state.
    let (h, err) = preview_json(config, proposed.to_str().unwrap(), &["--history", "1d"]);
    assert_eq!(
        (&h["messages"], &h["events"], &h["shoppers"]),
        (
            &serde_json::json!(60),
            &serde_json::json!(60),
            &serde_json::json!(30)
        ),
        "{h}"
    );
    let hist = |id: &str| {
        let s = segment(&h, id);
        let per_day: u64 = s["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["entered"].as_u64().unwrap())
            .sum();
        assert_eq!(per_day, s["entered"].as_u64().unwrap(), "{s}");
        (get(&s, "entered"), get(&s, "exited"), get(&s, "members"))
    };
    assert_eq!(hist("cart-holders"), (20, 0, 20));
    assert_eq!(hist("keen"), (10, 0, 10));
    assert_eq!(hist("browsers"), (0, 0, 0));
    assert!(err.contains("preview: running 60 events"), "{err}");

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
}

/// The shipped real samples (UCI Online Retail orders, REES46 storefront behaviour) through a
/// worker with the example segments: every change names a condition of its segment's rule with
/// values that differ before and after; previewing the definitions in force finds no one who
/// would enter or exit (the preview evaluates as the live path did); and the history preview's
/// scratch state ends with the live state's members.
#[test]
fn explain_preview_and_history_agree_with_the_live_path_on_real_data() {
    let s = Setup::with_segments("rules-real", 4, 1000, "examples/segments.yaml");
    let config = s.config.to_str().unwrap();
    let mut produced = 0u64;
    for (dataset, file) in [
        ("uci-online-retail", "samples/uci-online-retail-sample.csv"),
        ("rees46", "samples/rees46-2019oct-sample.csv"),
    ] {
        let (code, out, err) = tailor(&[
            "replay",
            "--dataset",
            dataset,
            "--file",
            &root(file),
            "--config",
            config,
        ]);
        assert_eq!(code, 0, "{out}{err}");
        produced += out
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    let mut worker = s.start(1);
    worker.wait_caught_up(produced);
    // Caught up, each partition's clock moves to the wall clock and the time-driven changes of
    // the years since the data (windows emptying) happen: the history preview below runs its
    // timers to now too.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    worker.wait_for(
        std::time::Duration::from_secs(60),
        "every partition's clock at the wall clock",
        |w| {
            (0..4).all(|p| {
                w.metric(
                    "tailor_stream_clock_timestamp_seconds",
                    &format!("partition=\"{p}\""),
                ) > now_s - 86_400.0
            })
        },
    );
    // Then until the timers they made due have fired (no more for two seconds).
    let mut fired = -1.0;
    for _ in 0..60 {
        std::thread::sleep(std::time::Duration::from_secs(2));
        let now = worker.metric("tailor_timers_fired_total", "");
        if now == fired {
            break;
        }
        fired = now;
    }
    worker.stop();

    // Explanations on the output topic, decoded with the contract's schema.
    let segments_src = std::fs::read_to_string(root("examples/segments.yaml")).unwrap();
    let set = tailor::segments::SegmentSet::parse(&segments_src).unwrap();
    let lines: Vec<&str> = segments_src.lines().collect();
    let mut explained = 0;
    for m in read_topic_until_quiet(&s.topics.audience, 4, std::time::Duration::from_secs(3)) {
        use rdkafka::Message;
        let c = tailor::codec::decode::audience_change(m.payload().unwrap()).unwrap();
        if !matches!(c.cause.kind.as_str(), "event" | "timer") {
            continue;
        }
        let e = c
            .explanation
            .unwrap_or_else(|| panic!("no explanation: {}", c.id));
        let seg = &set.segments()[set.index_of(&c.segment_id).unwrap()];
        let rule = seg.rule_text();
        assert!(
            rule.contains(e.expression.as_str()),
            "{} not in {rule}",
            e.expression
        );
        assert_eq!(
            e.expression.matches('(').count(),
            e.expression.matches(')').count(),
            "a whole sub-expression: {}",
            e.expression
        );
        assert_ne!(e.before, e.after, "{e:?}");
        let line = lines[e.line as usize - 1];
        let first_word = e.expression.split([' ', '(']).next().unwrap();
        assert!(
            line[e.column as usize - 1..].starts_with(first_word),
            "{e:?} does not point at {line:?}"
        );
        explained += 1;
    }
    assert!(explained > 1000, "{explained} explained changes");

    // Preview of the definitions in force, against the state the worker left.
    let (r, _) = preview_json(config, &root("examples/segments.yaml"), &[]);
    let mut live = std::collections::BTreeMap::new();
    for seg in r["segments"].as_array().unwrap() {
        assert_eq!(seg["status"], "unchanged", "{seg}");
        assert_eq!(
            (&seg["would_enter"], &seg["would_exit"]),
            (&serde_json::json!(0), &serde_json::json!(0)),
            "{seg}"
        );
        live.insert(
            seg["id"].as_str().unwrap().to_owned(),
            seg["members"].clone(),
        );
    }
    assert!(live.values().any(|m| m.as_u64().unwrap() > 0), "{live:?}");

    // The same input in scratch state: the same members at the end.
    let (h, _) = preview_json(
        config,
        &root("examples/segments.yaml"),
        &["--history", "1d"],
    );
    assert_eq!(h["events"].as_u64().unwrap(), produced, "{}", h["rejected"]);
    let history: std::collections::BTreeMap<String, serde_json::Value> = h["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s["members"].clone()))
        .collect();
    assert_eq!(
        history,
        live,
        "{}",
        serde_json::json!([&h["timers_fired"], &h["timers_pending"], &h["shoppers"]])
    );
}
