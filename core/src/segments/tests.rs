//! Table tests of the definitions file and the rule language: valid rules and how they evaluate,
//! invalid rules and where the error points.

use super::*;
use crate::event::{Attributes, Event, EventType};
use crate::wire::Identity;

fn one(rule: &str) -> String {
    format!("segments:\n  - id: s\n    rule: {rule}\n")
}

/// A fixed pseudo-random sequence (xorshift64), the same at every run.
fn xorshift() -> impl FnMut() -> u64 {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

fn profile_with(f: impl FnOnce(&mut Profile)) -> Profile {
    let mut p = Profile::default();
    f(&mut p);
    p
}

fn event(kind: EventType, time: i64, value: f64) -> Event {
    Event {
        id: format!("{time}"),
        kind,
        time,
        identity: Identity {
            ecid: Some("e".into()),
            ..Default::default()
        },
        value,
        device: None,
        channel: None,
        lines: Vec::new(),
        cart: None,
        order_id: Some(format!("o{time}")),
        search_phrase: None,
        search_results: None,
        attributes: None,
        store_code: None,
        store_view_code: None,
        currency: None,
    }
}

fn eval(rule: &str, p: &Profile, now: i64) -> bool {
    let set = SegmentSet::parse(&one(rule)).unwrap_or_else(|e| panic!("{rule}: {e}"));
    let mut out = Vec::new();
    set.evaluate(p, now, &mut out);
    out[0]
}

const H: i64 = 3_600_000;
const T0: i64 = 1_700_000_000_000;

fn shopper() -> Profile {
    let mut p = Profile::default();
    for (i, v) in [100.0, 250.0, 40.0].into_iter().enumerate() {
        p.apply(&event(EventType::OrderPlaced, T0 + i as i64 * 24 * H, v));
    }
    p.apply(&event(EventType::OrderCancelled, T0 + 50 * H, 40.0));
    let mut pv = event(EventType::ProductPageView, T0 + 60 * H, 10.0);
    pv.device = Some("mobile".into());
    pv.lines = vec![crate::event::Line {
        sku: "SKU-9".into(),
        category: Some("bags".into()),
        brand: Some("acme".into()),
        quantity: 1.0,
        ..Default::default()
    }];
    pv.attributes = Some(Box::new(Attributes {
        loyalty_tier: Some("gold".into()),
        consent_email: Some(true),
        ..Default::default()
    }));
    p.apply(&pv);
    p
}

macro_rules! rules_evaluate {
    ($($name:ident: $rule:expr => $want:expr;)*) => {$(
        #[test]
        fn $name() {
            let p = shopper();
            assert_eq!(eval($rule, &p, T0 + 60 * H), $want, "{}", $rule);
        }
    )*};
}

rules_evaluate! {
    attr_string_eq: r#"loyalty.tier == "gold""# => true;
    attr_string_ne: r#"loyalty.tier != "gold""# => false;
    order_count: "orders.count >= 3" => true;
    revenue_arith: "orders.revenue - orders.cancelled_value == 350" => true;
    ltv: "orders.ltv == 350" => true;
    aov: "orders.aov > 129 and orders.aov < 131" => true;
    ratio: "orders.cancelled / orders.count >= 0.3" => true;
    window_count_recent: "count(orderPlaced, 24h) == 1" => true;
    window_count_none_recent: "count(orderPlaced, 1h) >= 1" => false;
    window_count_long: "count(orderPlaced, 7d) == 3" => true;
    window_sum: "sum(orderPlaced, 30d) == 390" => true;
    in_list: r#"device in ["tablet", "mobile"]"# => true;
    not_in_list: r#"not (device in ["desktop"])"# => true;
    bool_attr: "consent.email" => true;
    bool_attr_missing_is_false: "consent.sms" => false;
    missing_compare_is_false: r#"gender == "female" or gender != "female""# => false;
    exists_fn: "exists(loyalty.tier) and not exists(gender)" => true;
    division_by_zero_is_missing: "orders.returns / orders.returns > 0 or orders.returns / orders.returns <= 0" => false;
    negation_and_precedence: "-orders.count < 0 and 1 + 2 * 3 == 7" => true;
    event_type_alias: "count(placeOrder, 90d) == 0" => true;
    since_order: "since(order) == 12h" => true;
    since_event_type: "since(orderPlaced) > 11h and since(orderPlaced) < 13h" => true;
    since_never_is_missing: "since(addToCart) > 0m or since(addToCart) <= 0m" => false;
    order_windows: "count(order, 90d) == 3 and sum(order, 90d) == 390" => true;
    lapsed_but_repeat: "count(order, 1h) == 0 and orders.count >= 2" => true;
    per_category: r#"count_category(productPageView, "bags", 7d) == 1"# => true;
    per_category_other: r#"count_category(productPageView, "shoes", 7d) == 0"# => true;
    per_product: r#"count_product(productPageView, "SKU-9", 1h) == 1"# => true;
    affinities: r#"affinity("bags") == 1 and brand_affinity("acme") == 1 and affinity("shoes") == 0"# => true;
    top_category_fn: r#"top_category() == "bags" and top_brand() == "acme""# => true;
    weeks: "since(order) < 1w" => true;
    minutes_and_last: "since(order) > 700min and since(last productPageView) < 1m" => true;
    seq_wait_not_over: "then_no(productPageView, addToCart, 30m)" => false;
    seq_category_wait_not_over: r#"then_no(productPageView("bags"), addToCart, 30m)"# => false;
    seq_no_view_within_an_hour_of_the_order: "then_no(order, productPageView, 1h)" => true;
    seq_view_within_a_day_of_the_order: "then(orderPlaced, productPageView, 24h)" => true;
    seq_view_not_within_an_hour: "then(orderPlaced, productPageView, 1h)" => false;
    seq_never_started: "then_no(addToCart, completeCheckout, 1h) or then(addToCart, orderPlaced, 1h)" => false;
}

#[test]
fn segments_see_the_results_of_the_segments_they_use_in_this_pass() {
    let src = r#"
segments:
  - id: vip
    rule: in_segment("gold") and orders.count >= 3
  - id: gold
    rule: loyalty.tier == "gold"
"#;
    let set = SegmentSet::parse(src).unwrap();
    let ids: Vec<_> = set.segments().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["gold", "vip"], "dependencies first");
    let mut out = Vec::new();
    set.evaluate(&shopper(), T0, &mut out);
    assert_eq!(out, [true, true]);
    set.evaluate(&profile_with(|_| {}), T0, &mut out);
    assert_eq!(out, [false, false]);
}

/// (file, expected "line:col: message" fragments).
macro_rules! definition_errors {
    ($($name:ident: $src:expr => [$($want:expr),*];)*) => {$(
        #[test]
        fn $name() {
            let errs = SegmentSet::parse($src).unwrap_err().to_string();
            $(assert!(errs.contains($want), "want {:?} in:\n{}", $want, errs);)*
        }
    )*};
}

definition_errors! {
    unknown_attribute: &one("orders.cnt > 1") => ["3:11: unknown attribute 'orders.cnt'"];
    type_mismatch: &one("loyalty.tier > 1") => ["3:11: cannot compare string with number"];
    ordered_strings: &one(r#"loyalty.tier > "a""#) => ["3:11: '>' needs numbers"];
    not_a_condition: &one("orders.count + 1") => ["3:11: a rule must be a condition"];
    window_too_long: &one("count(addToCart, 91d) > 0") => ["3:28: window must be longer than 0 and at most 90d"];
    unknown_event: &one("count(addToBasket, 1d) > 0") => ["3:17: unknown event type 'addToBasket'"];
    unknown_function: &one("avg(addToCart, 1d) > 0") => ["3:11: unknown function 'avg'"];
    wrong_arity: &one("count(addToCart) > 0") => ["3:11: count() takes 2 argument(s), found 1"];
    quoted_rule_column: "segments:\n  - id: s\n    rule: \"orders.count >> 1\"\n" => ["3:26: expected a value, found '>'"];
    block_rule_line: "segments:\n  - id: s\n    rule: |\n      orders.count > 1\n      and cart.itms > 0\n" => ["5:11: unknown attribute 'cart.itms'"];
    unknown_segment: &one(r#"in_segment("nope")"#) => ["3:22: unknown segment 'nope'"];
    cycle: "segments:\n  - id: a\n    rule: in_segment(\"b\")\n  - id: b\n    rule: in_segment(\"a\")\n" => ["depends on itself"];
    duplicate_and_bad_ids: "segments:\n  - id: a\n    rule: true\n  - id: a\n    rule: true\n  - id: Bad Id\n    rule: true\n" => ["4:9: duplicate segment id 'a'", "6:9: segment id \"Bad Id\""];
    missing_rule_and_unknown_key: "segments:\n  - id: a\n    rul: true\n" => ["3:5: unknown key 'rul'", "segment 'a' has no 'rule'"];
    unknown_top_level: "segmets: []\n" => ["1:1: unknown top-level key 'segmets'", "missing 'segments' list"];
    yaml_syntax: "segments:\n  - id: [unclosed\n" => ["3:1"];
    duration_vs_number: &one("since(order) > 5") => ["3:11: cannot compare duration with number"];
    duration_arithmetic: &one("since(order) + 1d > 2d") => ["3:11: expected a number, found a duration"];
    unquoted_category: &one("count_category(productPageView, bags, 7d) > 1") => ["3:43: expected a category or SKU in quotes"];
    top_category_args: &one(r#"top_category("x") == "y""#) => ["3:11: top_category() takes 0 argument(s), found 1"];
    keyed_orders: &one(r#"count_product(orderPlaced, "A", 7d) > 0"#) => ["3:25: count_product() counts productPageView"];
    since_vs_since: &one("since(order) > since(addToCart)") => ["3:11: since() must be compared with a duration"];
    affinity_arithmetic: &one(r#"affinity("a") * 2 > 1"#) => ["affinity() and brand_affinity() must be compared with a number"];
    seq_category_of_orders: &one(r#"then_no(orderPlaced("x"), addToCart, 1h)"#) => ["3:19: orderPlaced(\"CATEGORY\") needs one category"];
    seq_window_too_long: &one("then_no(addToCart, completeCheckout, 100d)") => ["3:48: window must be longer than 0"];
    seq_arity: &one("then_no(addToCart, completeCheckout)") => ["3:11: then_no() takes 3 argument(s), found 2"];
    bad_unit_min: &one("since(order) > 5mins") => ["unknown duration unit \"mins\""];
    journey_problems: "segments:\n  - id: a\n    rule: true\njourneys:\n  - id: j1\n    on_enter: nope\n  - id: j2\n    on_event: addToBasket\n    reentry_wait: soon\n    consent: postcard\n  - id: j3\n    on_enter: a\n    on_exit: a\n  - id: j4\n    name: no trigger\n  - id: j5\n    on_exit: a\n    when: cart.itms > 0\n" => [
        "6:15: unknown segment 'nope'",
        "8:15: unknown event type 'addToBasket'",
        "9:19: reentry_wait \"soon\" is not a duration",
        "10:14: consent \"postcard\"",
        "13:5: a journey has exactly one of on_event, on_enter, on_exit",
        "journey 'j4' needs one of on_event, on_enter, on_exit",
        "18:11: unknown attribute 'cart.itms'"
    ];
}

#[test]
fn journeys_compile_with_their_triggers_and_options() {
    let src = "segments:\n  - id: a\n    rule: cart.items > 0\njourneys:\n  - id: j\n    on_enter: a\n    when: cart.value > 5\n    reentry_wait: 2h\n    consent: sms\n  - id: k\n    on_event: [orderPlaced, placeOrder]\n";
    let set = SegmentSet::parse(src).unwrap();
    let j = &set.journeys()[0];
    assert_eq!(j.trigger, crate::journey::Trigger::Enter(0));
    assert_eq!(
        (j.reentry_wait, j.consent),
        (2 * H, crate::journey::Consent::Sms)
    );
    assert!(j.when.is_some());
    assert_eq!(
        set.journeys()[1].trigger,
        crate::journey::Trigger::Event(vec![EventType::OrderPlaced, EventType::CompleteCheckout])
    );
}

#[test]
fn every_problem_in_a_file_is_reported_not_just_the_first() {
    let src =
        "segments:\n  - id: a\n    rule: cart.itms > 0\n  - id: b\n    rule: orders.count >\n";
    let errs = SegmentSet::parse(src).unwrap_err();
    assert_eq!(errs.0.len(), 2, "{errs}");
}

#[test]
fn the_shipped_example_file_compiles_with_at_least_eight_segments() {
    let set = SegmentSet::parse(include_str!("../../../examples/segments.yaml")).unwrap();
    assert!(set.len() >= 8);
}

#[test]
fn the_readme_documents_every_attribute_and_function() {
    let readme = include_str!("../../../README.md");
    for (name, ..) in ATTRIBUTES {
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "README misses attribute {name}"
        );
    }
    for (f, _) in FUNCTIONS {
        assert!(
            readme.contains(&format!("| `{f}` |")),
            "README misses function {f}"
        );
    }
}

/// Random rules from a soup of the language's tokens and stray characters: parsing never panics,
/// and every error points inside the file.
#[test]
fn random_rules_never_panic_and_errors_point_inside_the_file() {
    const TOKENS: &[&str] = &[
        "orders.count",
        "cart.value",
        "loyalty.tier",
        "count(",
        "sum(",
        "in_segment(",
        "exists(",
        "addToCart",
        ",",
        "24h",
        "90d",
        "91d",
        "0m",
        "(",
        ")",
        "[",
        "]",
        "and",
        "or",
        "not",
        "in",
        "==",
        "!=",
        "<",
        ">=",
        "+",
        "-",
        "*",
        "/",
        "1",
        "2.5",
        "\"gold\"",
        "'x",
        "\"s\"",
        "true",
        ".",
        "=",
        "&",
        "é",
        "#c",
        "\n",
        "  ",
    ];
    let mut next = xorshift();
    for _ in 0..3000 {
        let n = 1 + next() % 12;
        let rule: String = (0..n)
            .map(|_| TOKENS[(next() % TOKENS.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(" ");
        let quoted = rule
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let src = format!(
            "segments:\n  - id: s\n    rule: \"{quoted}\"\n  - id: t\n    rule: |\n      {}\n",
            rule.replace('\n', "\n      ")
        );
        if let Err(errs) = SegmentSet::parse(&src) {
            let lines = src.lines().count();
            for e in errs.0 {
                assert!(e.line >= 1 && e.line <= lines + 1, "{e} for {src:?}");
                assert!(e.col >= 1, "{e} for {src:?}");
            }
        }
    }
    // Arbitrary bytes as the whole file.
    for _ in 0..500 {
        let bytes: Vec<u8> = (0..(next() % 64)).map(|_| (next() % 128) as u8).collect();
        let _ = SegmentSet::parse(&String::from_utf8_lossy(&bytes));
    }
}

/// Explanations evaluate the profile as it was before an event on a copy of what rules read
/// (`Profile::copy_rule_inputs`): every attribute and function must read the same on the copy,
/// even when the copy's allocations held a larger profile before.
/// The example segments, one that calls every profile-reading function and one per attribute.
fn reading_everything() -> SegmentSet {
    let mut defs = String::from(include_str!("../../../examples/segments.yaml"));
    defs = defs.replace("journeys:", "  - id: zz-functions\n    rule: count_product(productPageView, \"SKU-9\", 7d) >= 0 and count_category(productPageView, \"bags\", 7d) >= 0 and brand_affinity(\"acme\") >= 0 and affinity(\"bags\") >= 1 and top_brand() == top_category() and then(productPageView, addToCart, 1h) and since(order) > 1h and sum(order, 90d) > 0\njourneys:");
    for (name, ..) in ATTRIBUTES {
        defs = defs.replace(
            "journeys:",
            &format!(
                "  - id: attr-{}\n    rule: {name} == {name}\njourneys:",
                name.replace('.', "-")
            ),
        );
    }
    SegmentSet::parse(&defs).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_copy_explanations_compare_with_reads_like_the_profile() {
    let set = reading_everything();
    // Every attribute a rule reads set, to values neither default nor the larger profile's.
    let mut p = shopper();
    let mut record = event(EventType::ProfileRecord, T0 + 61 * H, 0.0);
    record.channel = Some("web".into());
    record.identity.email = Some("p@example.com".into());
    record.attributes = Some(Box::new(Attributes {
        gender: Some("f".into()),
        country: Some("GB".into()),
        city: Some("Leeds".into()),
        loyalty_tier: Some("silver".into()),
        loyalty_status: Some("active".into()),
        loyalty_points: Some(120.0),
        customer_group: Some("wholesale".into()),
        consent_email: Some(true),
        consent_sms: Some(false),
        ..Default::default()
    }));
    p.apply(&record);
    p.apply(&event(
        EventType::OrderItemsReturnInitiated,
        T0 + 62 * H,
        0.0,
    ));
    p.apply(&event(EventType::OrderLineItemRefunded, T0 + 63 * H, 7.5));
    let mut big = shopper();
    for (i, kind) in [
        EventType::AddToCart,
        EventType::SearchResponseReceived,
        EventType::ProductPageView,
        EventType::AccountCreated,
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = event(kind, T0 + 70 * H + i as i64, 30.0);
        e.device = Some("desktop".into());
        e.channel = Some("app".into());
        e.identity.customer_id = Some("c-1".into());
        e.attributes = Some(Box::new(Attributes {
            gender: Some("m".into()),
            country: Some("FR".into()),
            city: Some("Lyon".into()),
            loyalty_tier: Some("bronze".into()),
            loyalty_status: Some("lapsed".into()),
            loyalty_points: Some(3.0),
            customer_group: Some("retail".into()),
            consent_email: Some(false),
            consent_sms: Some(true),
            ..Default::default()
        }));
        e.lines = vec![crate::event::Line {
            sku: compact_str::format_compact!("SKU-{i}"),
            category: Some(compact_str::format_compact!("cat-{i}")),
            brand: Some(compact_str::format_compact!("brand-{i}")),
            quantity: 2.0,
            price: Some(15.0),
            ..Default::default()
        }];
        big.apply(&e);
    }
    let mut copy = Profile::default();
    copy.copy_rule_inputs(&big, set.reads());
    copy.copy_rule_inputs(&p, set.reads());
    let r = set.reads();
    assert!(
        r.order_series
            && !r.by_category.is_empty()
            && !r.by_product.is_empty()
            && r.category_affinity
            && r.brand_affinity,
        "this set reads every kind of list: {r:?}"
    );
    // Per-category series: only those a rule names ("bags" page views), not the larger
    // profile's others.
    let mut from_big = Profile::default();
    from_big.copy_rule_inputs(&big, set.reads());
    assert!(from_big.by_category.len() < big.by_category.len());
    assert!(from_big.by_category.iter().all(|s| s.key == "bags"));
    assert_eq!(copy.by_category, p.by_category);
    assert!(!copy.by_category.is_empty());
    // The example file alone reads less (no per-product counts, no brands): its copy leaves
    // those out and its rules still read the same.
    let examples = SegmentSet::parse(include_str!("../../../examples/segments.yaml")).unwrap();
    assert!(examples.reads().by_product.is_empty() && !examples.reads().brand_affinity);
    let mut partial = Profile::default();
    partial.copy_rule_inputs(&big, examples.reads());
    partial.copy_rule_inputs(&p, examples.reads());
    assert!(partial.by_product.is_empty() && partial.counters.len() < p.counters.len());
    // Every example segment explains the same on a copy as on its profile.
    let reads_alike = |copy: &Profile, profile: &Profile, nows: [i64; 2]| {
        for now in nows {
            for (i, seg) in examples.segments().iter().enumerate() {
                assert_eq!(
                    examples.explain(i, copy, now),
                    examples.explain(i, profile, now),
                    "{}",
                    seg.id
                );
            }
        }
    };
    reads_alike(&partial, &p, [T0 + 61 * H, T0 + 30 * 24 * H]);
    let mut checked = 0;
    for now in [T0 + 61 * H, T0 + 30 * 24 * H, T0 + 100 * 24 * H] {
        for (i, seg) in set.segments().iter().enumerate() {
            let (want, got) = (set.explain(i, &p, now), set.explain(i, &copy, now));
            assert!(want.is_some(), "{}", seg.id);
            assert_eq!(got, want, "{}", seg.id);
            checked += 1;
        }
    }
    assert!(checked > 3 * (21 + ATTRIBUTES.len()));
    // And the larger profile reads differently (the comparison can fail).
    assert_ne!(
        set.explain(set.index_of("mobile-shoppers").unwrap(), &big, T0 + 71 * H),
        set.explain(set.index_of("mobile-shoppers").unwrap(), &copy, T0 + 71 * H)
    );
    // `affinity("x")` without `top_category()`: the copy holds the named category's affinity
    // only, and the rule reads the same on it.
    assert!(!examples.reads().category_affinity);
    assert_eq!(
        examples.reads().category_affinity_keys,
        ["electronics.smartphone"]
    );
    let mut fan = shopper();
    for (i, category) in ["cat-a", "electronics.smartphone", "cat-b"]
        .into_iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        let mut e = event(EventType::ProductPageView, T0 + 80 * H + i as i64, 0.0);
        e.lines = vec![crate::event::Line {
            sku: compact_str::format_compact!("SKU-{i}"),
            category: Some(category.into()),
            quantity: 1.0,
            ..Default::default()
        }];
        fan.apply(&e);
    }
    assert!(
        fan.category_affinity.len() >= 3,
        "{:?}",
        fan.category_affinity
    );
    let mut fan_copy = Profile::default();
    fan_copy.copy_rule_inputs(&big, examples.reads());
    fan_copy.copy_rule_inputs(&fan, examples.reads());
    assert_eq!(fan_copy.category_affinity.len(), 1);
    assert_eq!(fan_copy.category_affinity[0].key, "electronics.smartphone");
    let phones = examples
        .index_of("smartphone-enthusiasts")
        .expect("the example segment that reads the smartphone affinity");
    reads_alike(&fan_copy, &fan, [T0 + 81 * H, T0 + 30 * 24 * H]);
    assert_ne!(
        examples.explain(phones, &fan, T0 + 81 * H),
        examples.explain(phones, &Profile::default(), T0 + 81 * H),
        "the affinity read is not the default's"
    );
}

/// A folded rule (`rule: >-` over several lines) is one line of text for the parser; positions
/// (errors, explanations) point at the line and column where each part is written.
#[test]
fn positions_in_a_folded_rule_point_at_the_written_line() {
    let src = "segments:\n  - id: s\n    rule: >-\n      orders.count >= 2\n      and cart.items > 0\n      and bogus > 1\n";
    let err = SegmentSet::parse(src).unwrap_err();
    assert_eq!((err.0[0].line, err.0[0].col), (6, 11), "{err}");
    let set = SegmentSet::parse(&src.replace("bogus", "events.total")).unwrap();
    let tree = set.explain(0, &Profile::default(), 0).unwrap();
    let at: Vec<(String, usize, usize)> = tree
        .children
        .iter()
        .map(|c| (c.expression.clone(), c.line, c.column))
        .collect();
    assert_eq!(
        at,
        vec![
            ("orders.count >= 2".to_string(), 4, 7),
            ("cart.items > 0".to_string(), 5, 11),
            ("events.total > 1".to_string(), 6, 11),
        ]
    );
}

/// Folded rules with trailing spaces and a blank line keep their parts' positions; parenthesised
/// groups are part of the text of what contains them.
#[test]
fn positions_survive_trailing_spaces_blank_lines_and_parentheses() {
    let src = "segments:\n  - id: s\n    rule: >-\n      orders.count >= 2   \n\n      and (orders.cancelled + orders.returns) / orders.count >= 0.3\n";
    let set = SegmentSet::parse(src).unwrap();
    let tree = set.explain(0, &Profile::default(), 0).unwrap();
    let at: Vec<(String, usize, usize)> = tree
        .children
        .iter()
        .map(|c| (c.expression.clone(), c.line, c.column))
        .collect();
    assert_eq!(
        at,
        vec![
            ("orders.count >= 2".to_string(), 4, 7),
            (
                "(orders.cancelled + orders.returns) / orders.count >= 0.3".to_string(),
                6,
                11
            ),
        ]
    );
    let ratio = &tree.children[1].children[0];
    assert_eq!(
        (ratio.expression.as_str(), ratio.line, ratio.column),
        ("(orders.cancelled + orders.returns) / orders.count", 6, 11)
    );
    assert_eq!(
        ratio.children[0].expression,
        "(orders.cancelled + orders.returns)"
    );
    let err = SegmentSet::parse(&src.replace("orders.count >= 0.3", "orders.count >= bogus"))
        .unwrap_err();
    assert_eq!((err.0[0].line, err.0[0].col), (6, 65), "{err}");
    // The shipped VIP rule: an `or` of a call and a parenthesised `and`.
    let set = SegmentSet::parse(include_str!("../../../examples/segments.yaml")).unwrap();
    let vip = set
        .explain(set.index_of("vip").unwrap(), &Profile::default(), 0)
        .unwrap();
    assert_eq!(
        vip.expression,
        "in_segment(\"loyalty-gold\") or (in_segment(\"high-ltv\") and in_segment(\"repeat-buyers\"))"
    );
    assert_eq!(
        vip.children[1].expression,
        "(in_segment(\"high-ltv\") and in_segment(\"repeat-buyers\"))"
    );
}

/// What rules read of a profile, lists in key order: a copy made before an event and one made
/// after it with the event undone must agree on all of it.
fn rule_inputs(p: &Profile, r: &crate::profile::RuleReads) -> String {
    let a = &*p.attributes;
    let mut keyed: Vec<_> = [&p.by_category, &p.by_product]
        .map(|l| {
            let mut l: Vec<_> = l
                .iter()
                .map(|s| format!("{:?}", (s.kind, &s.key, &s.series)))
                .collect();
            l.sort();
            l
        })
        .into();
    let mut affinities: Vec<_> = [&p.category_affinity, &p.brand_affinity]
        .map(|l| {
            let mut l: Vec<_> = l.iter().map(|a| format!("{a:?}")).collect();
            l.sort();
            l
        })
        .into();
    keyed.append(&mut affinities);
    let o = &*p.orders;
    format!(
        "{:?}",
        (
            (&p.identities.customer_id, &p.identities.emails),
            (
                &a.gender,
                &a.country,
                &a.city,
                &a.loyalty_tier,
                &a.loyalty_status
            ),
            (
                a.loyalty_points,
                &a.customer_group,
                a.consent_email,
                a.consent_sms
            ),
            &p.counters,
            &p.cart.lines,
            (
                o.count,
                o.revenue,
                o.cancelled,
                o.cancelled_value,
                o.returns,
                o.refunded
            ),
            r.order_series.then_some(&o.series),
            (&p.last_device, &p.last_channel, p.events_total, p.last_seen),
            keyed,
        )
    )
}

/// A sample event of every type, as the worker decodes it.
fn every_sample_event() -> Vec<Event> {
    let catalog = crate::codec::SchemaCatalog::builtin();
    crate::samples::every_type(T0)
        .into_iter()
        .map(|(_, family, payload)| {
            Event::from_input(catalog.decode(family, &payload).unwrap(), T0).unwrap()
        })
        .collect()
}

/// Explanations see the profile before an event as the profile after it with what
/// [`crate::undo::Undo`] recorded put back. Event after event (a sample of every type, with
/// lines that fill the per-key lists and push entries out, and identities linked), that agrees
/// with the copy made before the event, for a set reading everything, the shipped examples and
/// a set naming per-key series and affinities without `top_*()`.
#[test]
fn an_event_undone_gives_back_the_profile_before_it() {
    use crate::identity::{Id, KeyKind};
    use crate::undo::Undo;
    let samples = every_sample_event();
    let named = SegmentSet::parse(&one(
        "count_product(productPageView, \"SKU-1\", 7d) >= 1 and count_category(addToCart, \"cat-2\", 30d) >= 1 and affinity(\"cat-1\") > 1 and brand_affinity(\"brand-3\") > 0",
    ))
    .unwrap();
    let examples = SegmentSet::parse(include_str!("../../../examples/segments.yaml")).unwrap();
    let (mut undone, mut whole, mut pushed_out) = (0, 0, [0; 4]);
    for set in [&reading_everything(), &examples, &named] {
        let reads = set.reads();
        let mut p = Profile::default();
        let mut undo = Undo::default();
        for round in 0..90i64 {
            for (i, sample) in samples.iter().enumerate() {
                let mut ev = sample.clone();
                ev.time = T0 + round * H + i as i64;
                // Keys that cycle through more than a list holds (64 series, 32 affinities).
                for line in ev.lines.iter_mut() {
                    let k = (round * 7 + i as i64) % 97;
                    line.sku = compact_str::format_compact!("SKU-{}", k % 70);
                    line.category = Some(compact_str::format_compact!("cat-{}", k % 45));
                    line.brand = Some(compact_str::format_compact!("brand-{}", k % 40));
                }
                // Some events have three lines: the same SKU and category twice, and other
                // keys (two new ones at a time).
                if round % 4 == 1 && !ev.lines.is_empty() {
                    let mut other = ev.lines[0].clone();
                    other.sku = compact_str::format_compact!("SKU-{}", (round + 3) % 70);
                    other.category =
                        Some(compact_str::format_compact!("cat-{}", (round + 11) % 45));
                    other.brand = Some(compact_str::format_compact!("brand-{}", (round + 5) % 40));
                    ev.lines.push(ev.lines[0].clone());
                    ev.lines.push(other);
                }
                if round % 3 == 0 {
                    ev.identity.email = Some(format!("r{round}@example.com"));
                }
                let mut before = Profile::default();
                before.copy_rule_inputs(&p, reads);
                undo.record(&p, &ev, reads);
                // The links `Core::process` makes between the two.
                for (kind, value) in [
                    (KeyKind::Customer, &ev.identity.customer_id),
                    (KeyKind::Email, &ev.identity.email),
                ] {
                    if let Some(value) = value {
                        let id = Id {
                            kind,
                            value: value.clone(),
                        };
                        let _ = crate::identity::link(&mut p, &id, 8);
                    }
                }
                p.apply(&ev);
                let mut after = Profile::default();
                after.copy_rule_inputs(&p, reads);
                if rule_inputs(&after, reads) != rule_inputs(&before, reads) {
                    undone += 1;
                }
                // An entry rules read pushed out of a full list by the event.
                let gone = |b: &[String], a: &[String]| b.iter().any(|x| !a.contains(x));
                let keyed = |l: &[crate::profile::KeyedSeries]| -> Vec<String> {
                    l.iter()
                        .map(|s| format!("{:?} {}", s.kind, s.key))
                        .collect()
                };
                let keys = |l: &[crate::profile::Affinity]| -> Vec<String> {
                    l.iter().map(|a| a.key.to_string()).collect()
                };
                for (n, (b, a)) in [
                    (keyed(&before.by_product), keyed(&after.by_product)),
                    (keyed(&before.by_category), keyed(&after.by_category)),
                    (
                        keys(&before.category_affinity),
                        keys(&after.category_affinity),
                    ),
                    (keys(&before.brand_affinity), keys(&after.brand_affinity)),
                ]
                .iter()
                .enumerate()
                {
                    pushed_out[n] += usize::from(gone(b, a));
                }
                undo.revert(&mut after, reads);
                assert_eq!(
                    rule_inputs(&after, reads),
                    rule_inputs(&before, reads),
                    "round {round}, {:?}",
                    ev.kind
                );
                if round % 3 == 0 {
                    let now = ev.time + 20 * 24 * H;
                    for s in 0..set.len() {
                        assert_eq!(set.explain(s, &after, now), set.explain(s, &before, now));
                    }
                }
                whole += usize::from(p.by_product.len() == crate::profile::MAX_KEYED_SERIES);
            }
        }
    }
    // The events changed what rules read, the lists were full, and each kind of list had an
    // entry rules read pushed out.
    assert!(undone > 1000 && whole > 100, "{undone} {whole}");
    assert!(pushed_out.iter().all(|&n| n > 0), "{pushed_out:?}");
    // One short of full, an event with two new keys pushes out the weakest: the named one.
    let view = |time: i64, categories: &[String]| {
        let mut ev = event(EventType::ProductPageView, time, 1.0);
        ev.lines = categories
            .iter()
            .map(|c| crate::event::Line {
                sku: "SKU-0".into(),
                category: Some(c.as_str().into()),
                quantity: 1.0,
                ..Default::default()
            })
            .collect();
        ev
    };
    let mut p = Profile::default();
    p.apply(&view(T0, &["cat-1".into()]));
    for i in 0..crate::profile::MAX_AFFINITIES as i64 - 2 {
        p.apply(&view(T0 + 24 * H + i, &[format!("other-{i}")]));
    }
    assert_eq!(
        p.category_affinity.len(),
        crate::profile::MAX_AFFINITIES - 1
    );
    let reads = named.reads();
    let mut before = Profile::default();
    before.copy_rule_inputs(&p, reads);
    let ev = view(T0 + 48 * H, &["new-1".into(), "new-2".into()]);
    let mut undo = Undo::default();
    undo.record(&p, &ev, reads);
    p.apply(&ev);
    assert!(!p.category_affinity.iter().any(|a| a.key == "cat-1"));
    let mut after = Profile::default();
    after.copy_rule_inputs(&p, reads);
    undo.revert(&mut after, reads);
    assert_eq!(rule_inputs(&after, reads), rule_inputs(&before, reads));
}

/// One new key in a full list: the undo records the entry the event pushes out (and the new
/// key's absence) rather than every entry rules read, and that gives back the profile before
/// the event: a per-product series named by a rule, and the weakest category affinity where
/// `top_category()` reads them all.
#[test]
fn one_new_key_in_a_full_list_records_the_entry_it_pushes_out() {
    use crate::profile::{MAX_AFFINITIES, MAX_KEYED_SERIES};
    use crate::undo::Undo;
    let named = SegmentSet::parse(&one(
        "count_product(productPageView, \"SKU-1\", 7d) >= 1 and affinity(\"cat-1\") > 0 and count_product(productPageView, \"SKU-new\", 7d) >= 0 and affinity(\"cat-new\") >= 0",
    ))
    .unwrap();
    let everything = reading_everything();
    let view = |time: i64, skus: &[&str], category: Option<&str>| {
        let mut ev = event(EventType::ProductPageView, time, 1.0);
        ev.lines = skus
            .iter()
            .map(|s| crate::event::Line {
                sku: (*s).into(),
                category: category.map(Into::into),
                quantity: 1.0,
                ..Default::default()
            })
            .collect();
        ev
    };
    // SKU-1 and cat-1 first: the least recently active series, the weakest affinity.
    let mut p = Profile::default();
    p.apply(&view(T0, &["SKU-1"], Some("cat-1")));
    for i in 1..MAX_KEYED_SERIES as i64 {
        let category = (i < MAX_AFFINITIES as i64).then(|| format!("cat-other-{i}"));
        p.apply(&view(
            T0 + H + i,
            &[&format!("SKU-other-{i}")],
            category.as_deref(),
        ));
    }
    assert_eq!(p.by_product.len(), MAX_KEYED_SERIES);
    assert_eq!(p.category_affinity.len(), MAX_AFFINITIES);
    // The new SKU on two lines, one new category.
    let ev = view(T0 + 2 * H, &["SKU-new", "SKU-new"], Some("cat-new"));
    for set in [&named, &everything] {
        let reads = set.reads();
        let mut before = Profile::default();
        before.copy_rule_inputs(&p, reads);
        let mut undo = Undo::default();
        undo.record(&p, &ev, reads);
        assert_eq!(undo.whole_lists(), 0, "no list copied whole");
        let mut q = p.clone();
        q.apply(&ev);
        assert!(q
            .by_product
            .get(EventType::ProductPageView, "SKU-1")
            .is_none());
        assert!(q.category_affinity.get("cat-1").is_none());
        let mut after = Profile::default();
        after.copy_rule_inputs(&q, reads);
        undo.revert(&mut after, reads);
        assert_eq!(rule_inputs(&after, reads), rule_inputs(&before, reads));
        let now = ev.time + H;
        for s in 0..set.len() {
            assert_eq!(set.explain(s, &after, now), set.explain(s, &before, now));
        }
    }
}

/// An event evaluates only the segments whose rules read something it changed: the outputs are
/// those of evaluating every segment at every event, through events of every type (four rule
/// sets, one of 150 segments; keys that push entries out of full lists; identities linked; gaps of minutes to weeks,
/// so that windows expire and timers fire in between), and the next timer is never later.
#[test]
fn evaluating_only_what_an_event_changed_gives_the_same_outputs() {
    use crate::audience::{Core, Outputs, Source};
    use std::sync::Arc;
    let samples = every_sample_event();
    let named = SegmentSet::parse(&format!(
        "{}  - id: t\n    rule: in_segment(\"s\") or count(pageView, 1h) >= 2\n  - id: u\n    rule: count_category(addToCart, \"cat-2\", 3d) >= 1\n  - id: v\n    rule: sum(order, 3d) > 0 and loyalty.tier == \"gold\"\n",
        one("count_product(productPageView, \"SKU-1\", 7d) >= 1 and count_category(addToCart, \"cat-2\", 30d) >= 1 or affinity(\"cat-1\") > 1 or top_brand() == \"brand-3\""),
    ))
    .unwrap();
    let examples = SegmentSet::parse(include_str!("../../../examples/segments.yaml")).unwrap();
    // More segments than one 64-bit word of the set's index by input holds, and rules that use
    // segments in other words.
    let mut src = String::from("segments:\n");
    for i in 0..150 {
        let kind = EventType::ALL[i % EventType::ALL.len()].name();
        let hours = 1 + i % 5 * 20;
        let rule = match i % 3 {
            _ if i >= 64 && i % 7 == 0 => {
                format!(
                    "in_segment(\"m{}\") or count({kind}, {hours}h) >= 2",
                    i - 63
                )
            }
            0 => format!("count({kind}, {hours}h) >= 1"),
            1 => format!("since(last {kind}) <= {hours}h and cart.items > 0"),
            _ => format!("count({kind}, 30d) >= 2 or orders.count >= 2"),
        };
        src.push_str(&format!("  - id: m{i}\n    rule: '{rule}'\n"));
    }
    let many = SegmentSet::parse(&src).unwrap();
    assert_eq!(many.len(), 150);
    // A shopper's first event too evaluates only what it changed (against an empty profile's
    // results, which do not depend on the time for these sets).
    assert!(examples.empty_results().is_some() && named.empty_results().is_some());
    let source = Source {
        topic: "t",
        partition: 0,
        offset: 0,
    };
    let (mut skipped, mut changes, mut fired, mut early) = (0u64, 0usize, 0u64, 0usize);
    let mut differ = 0usize;
    for set in [reading_everything(), examples, named, many] {
        let set = Arc::new(set);
        let mut some = Core::new(set.clone());
        let mut every = Core::new(set.clone());
        every.set_incremental(false);
        // `p` kept in memory throughout; `r` read back from its state every third event (its
        // segments' next changes unknown until an evaluation works them out again).
        let (mut p, mut q, mut r) = (Profile::default(), Profile::default(), Profile::default());
        let (mut a, mut b, mut c) = (Outputs::default(), Outputs::default(), Outputs::default());
        let (mut time, mut clock) = (T0, T0);
        for round in 0..60i64 {
            for (i, sample) in samples.iter().enumerate() {
                let mut ev = sample.clone();
                time += [60_000, 7 * 60_000, 2 * H, 26 * H, 9 * 24 * H][(round as usize + i) % 5];
                ev.time = time;
                // The stream clock behind the event or ahead of it (never back).
                clock = clock.max(time + [-5 * 60_000, 0, 10 * 60_000][(round as usize + i) % 3]);
                // New orders, amounts in cents (sums that do not round to 0), and attributes
                // that change.
                ev.order_id = ev.order_id.as_ref().map(|o| format!("{o}-{round}"));
                ev.value = [19.99, 5.01, 0.1, 0.2, 0.0][(round as usize + i) % 5];
                if let Some(a) = ev.attributes.as_mut() {
                    a.loyalty_tier = Some(["gold", "silver"][round as usize % 2].into());
                }
                for line in ev.lines.iter_mut() {
                    let k = (round * 7 + i as i64) % 97;
                    line.sku = compact_str::format_compact!("SKU-{}", k % 70);
                    line.category = Some(compact_str::format_compact!("cat-{}", k % 45));
                    line.brand = Some(compact_str::format_compact!("brand-{}", k % 40));
                }
                if round % 3 == 0 {
                    ev.identity.email = Some(format!("r{round}@example.com"));
                }
                a.clear();
                b.clear();
                c.clear();
                if i % 3 == 0 {
                    r = crate::profile::decode(&crate::profile::encode(&r)).unwrap();
                }
                some.process("k", &mut p, &ev, source, clock, &mut a);
                every.process("k", &mut q, &ev, source, clock, &mut b);
                some.process("k", &mut r, &ev, source, clock, &mut c);
                assert_eq!(format!("{:?}", a.changes), format!("{:?}", b.changes));
                assert_eq!(format!("{:?}", a.triggers), format!("{:?}", b.triggers));
                assert_eq!(format!("{:?}", c.changes), format!("{:?}", b.changes));
                assert_eq!(p.segments, q.segments);
                differ += usize::from(r.next_timer != p.next_timer);
                assert!(q
                    .next_timer
                    .is_none_or(|t| r.next_timer.is_some_and(|n| n <= t)));
                // Never later; when earlier, the timer finds nothing to change.
                assert!(q
                    .next_timer
                    .is_none_or(|t| p.next_timer.is_some_and(|n| n <= t)));
                early += usize::from(p.next_timer != q.next_timer);
                changes += a.changes.len();
                fired += a.timers_fired;
            }
        }
        // Counted where the core left them out.
        assert_eq!(every.segments_skipped(), 0);
        skipped += some.segments_skipped();
    }
    // Segments were left out, memberships changed and timers fired.
    assert!(
        skipped > 1000 && changes > 100 && fired > 100,
        "{skipped} {changes} {fired}"
    );
    // And the segments left alone had their own timers worked out where the event moved the
    // earliest (the code that gave them the old timer set 49 of these 7,200 events' timers
    // early). A timer evaluates only the segments due, so a left-alone rule's next change that
    // is a bound (a conjunction's, say) stays as its last walk left it rather than moving with
    // each timer: 2 of these 7,200 events' timers come earlier than the full pass's that way
    // (such a timer finds nothing to change, and walks that rule again); never later.
    assert!(early <= 10, "{early} events set an early timer");
    assert!(
        differ <= 10,
        "{differ} events timed otherwise read back than kept"
    );
}

/// A core of `set` and a profile that added to its cart at T0 and viewed a product a minute
/// later, and the source its events came from.
fn carted_then_viewed(
    set: &std::sync::Arc<SegmentSet>,
) -> (
    crate::audience::Core,
    Profile,
    crate::audience::Source<'static>,
) {
    let source = crate::audience::Source {
        topic: "t",
        partition: 0,
        offset: 0,
    };
    let mut core = crate::audience::Core::new(set.clone());
    let mut out = crate::audience::Outputs::default();
    let mut p = Profile::default();
    for ev in [
        event(EventType::AddToCart, T0, 0.0),
        event(EventType::ProductPageView, T0 + 60_000, 0.0),
    ] {
        core.process("k", &mut p, &ev, source, ev.time, &mut out);
    }
    (core, p, source)
}

/// An event that moves the next change of the segment that set the profile's timer leaves the
/// segments it does not re-evaluate with their own next changes, not that old timer: a timer set
/// there would fire and find nothing to change.
#[test]
fn a_timer_the_event_moved_is_not_kept_for_the_segments_left_alone() {
    let set = std::sync::Arc::new(
        SegmentSet::parse(
            "segments:\n  - id: viewed\n    rule: count(productPageView, 1h) >= 1\n  - id: carted\n    rule: count(addToCart, 7d) >= 1\n",
        )
        .unwrap(),
    );
    let (mut core, mut p, source) = carted_then_viewed(&set);
    let mut out = crate::audience::Outputs::default();
    // The view leaves its hour first (its 5-minute bucket's end, within the hour after it).
    let first = p.next_timer.expect("the view leaves its window");
    assert!(first > T0 + 60_000 && first <= T0 + 60_000 + H + 5 * 60_000);
    // A second view 30 minutes later moves "viewed"'s change; "carted" (left alone: the event
    // changes nothing it reads) changes only in a week.
    let later = event(EventType::ProductPageView, T0 + 31 * 60_000, 0.0);
    core.process("k", &mut p, &later, source, later.time, &mut out);
    let mut results = Vec::new();
    let (_, full) =
        set.evaluate_with_next(&p, later.time, None, &mut results, &mut Vec::new(), None);
    assert!(full.unwrap() > first, "the view's change moved");
    assert_eq!(p.next_timer, full, "the timer is the full pass's");
    assert!(core.segments_skipped() > 0, "a segment was left alone");
}

/// A profile kept in memory carries each segment's next change from its last evaluation, and an
/// event reads the ones it leaves alone from there instead of walking their rules: the same
/// timers as a profile read from the state (which carries none, and compares equal), and the
/// kept values are what the timer is made of (a value put there shows in the timer).
#[test]
fn a_profile_kept_in_memory_times_the_segments_left_alone_from_its_last_evaluation() {
    let set = std::sync::Arc::new(
        SegmentSet::parse(
            "segments:\n  - id: viewed\n    rule: count(productPageView, 1h) >= 1\n  - id: carted\n    rule: count(addToCart, 7d) >= 1\n",
        )
        .unwrap(),
    );
    let source = crate::audience::Source {
        topic: "t",
        partition: 0,
        offset: 0,
    };
    let mut core = crate::audience::Core::new(set.clone());
    let mut out = crate::audience::Outputs::default();
    let mut kept = Profile::default();
    let first = [
        event(EventType::AddToCart, T0, 0.0),
        event(EventType::ProductPageView, T0 + 60_000, 0.0),
    ];
    for ev in &first {
        core.process("k", &mut kept, ev, source, ev.time, &mut out);
    }
    // From the first event on (a fresh profile's untouched segments never change with time).
    assert_eq!(kept.known_nexts.known(set.len()), 2);
    let read = crate::profile::decode(&crate::profile::encode(&kept)).unwrap();
    assert_eq!(read, kept, "not part of the profile's value");
    assert_eq!(read.known_nexts.known(set.len()), 0, "not in the state");
    // The next views leave "carted" alone: the kept profile and the one read from the state
    // (which works "carted"'s next change out again) get the same timer and changes.
    let mut read = read;
    for minutes in [31, 50, 200] {
        let ev = event(EventType::ProductPageView, T0 + minutes * 60_000, 0.0);
        let (mut a, mut b) = (
            crate::audience::Outputs::default(),
            crate::audience::Outputs::default(),
        );
        core.process("k", &mut kept, &ev, source, ev.time, &mut a);
        core.process("k", &mut read, &ev, source, ev.time, &mut b);
        assert_eq!(format!("{:?}", a.changes), format!("{:?}", b.changes));
        assert_eq!(kept.next_timer, read.next_timer, "at {minutes} min");
        assert_eq!(read.known_nexts.known(set.len()), 2);
    }
    let mut results = Vec::new();
    let (_, full) = set.evaluate_with_next(
        &kept,
        T0 + 200 * 60_000,
        None,
        &mut results,
        &mut Vec::new(),
        None,
    );
    assert_eq!(kept.next_timer, full);
    // What the timer is made of: "carted"'s kept next change, said to be sooner than the
    // view's, becomes the timer at the next view (its rule is not walked again).
    let carted = set.index_of("carted").unwrap();
    let soon = T0 + 230 * 60_000;
    assert!(kept.next_timer.unwrap() > soon);
    kept.known_nexts.set_at(set.len(), carted, soon);
    let ev = event(EventType::ProductPageView, T0 + 210 * 60_000, 0.0);
    core.process("k", &mut kept, &ev, source, ev.time, &mut out);
    assert_eq!(kept.next_timer, Some(soon));
}

/// A profile's next changes are kept packed (the segments that change with time alone, then
/// their times): what is packed unpacks the same, for sets of any size, and a profile none of
/// whose segments changes with time alone holds no heap for them.
#[test]
fn next_changes_pack_and_unpack_the_same() {
    let mut rand = xorshift();
    for n in [0, 1, 2, 21, 63, 64, 65, 130] {
        for _ in 0..50 {
            let dense: Vec<i64> = (0..n)
                .map(|_| match rand() % 4 {
                    0 => KnownNexts::UNKNOWN,
                    1 => T0 + (rand() % 1_000_000) as i64,
                    _ => KnownNexts::NEVER,
                })
                .collect();
            let mut k = KnownNexts::default();
            k.pack(7, n, |i| dense[i]);
            let mut back = Dense::new();
            k.unpack(n, &mut back);
            assert_eq!(&back[..], &dense[..], "{n} segments");
            let kept = dense.iter().filter(|&&t| t != KnownNexts::NEVER).count();
            let words = if kept == 0 { 0 } else { n.div_ceil(64) };
            assert_eq!(k.packed.len(), words + kept);
            // Packed again over what it held: other segments timed, none, then some again.
            let later: Vec<i64> = (0..n)
                .map(|i| match rand() % 3 {
                    0 => T0 + i as i64,
                    _ => KnownNexts::NEVER,
                })
                .collect();
            for again in [&later, &vec![KnownNexts::NEVER; n], &dense] {
                k.pack(7, n, |i| again[i]);
                k.unpack(n, &mut back);
                assert_eq!(&back[..], &again[..], "{n} segments, packed again");
                assert!(k.worked_out());
            }
        }
    }
    let mut never = KnownNexts::default();
    never.pack(3, 21, |_| KnownNexts::NEVER);
    assert!(never.worked_out() && never.packed.is_empty());
}

/// A timer evaluates the segments whose next change is due and those that use them; the others
/// keep their results and next changes: a next change put in a profile kept in memory for a
/// segment not due stays the timer after the due one fires (its rule is not walked).
#[test]
fn a_timer_evaluates_only_the_segments_due() {
    let set = std::sync::Arc::new(
        SegmentSet::parse(
            "segments:\n  - id: viewed\n    rule: count(productPageView, 1h) >= 1\n  - id: carted\n    rule: count(addToCart, 7d) >= 1\n  - id: both\n    rule: in_segment(\"viewed\") and in_segment(\"carted\")\n",
        )
        .unwrap(),
    );
    let (mut core, mut p, _) = carted_then_viewed(&set);
    let mut out = crate::audience::Outputs::default();
    let ids = |p: &Profile| {
        p.segments
            .iter()
            .map(|m| m.segment.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&p), ["both", "carted", "viewed"]);
    // "carted" changes in a week; say two hours instead.
    let carted = set.index_of("carted").unwrap();
    let said = T0 + 2 * H;
    assert!(p.known_nexts.at(set.len(), carted) > T0 + 7 * 24 * H);
    p.known_nexts.set_at(set.len(), carted, said);
    out.clear();
    core.advance("k", &mut p, T0 + 90 * 60_000, &mut out);
    // The view left its hour: "viewed" exited and "both", which uses it, with it.
    assert_eq!(ids(&p), ["carted"]);
    assert_eq!(out.changes.len(), 2);
    assert_eq!(out.timers_fired, 1);
    assert_eq!(
        p.next_timer,
        Some(said),
        "carted's rule was not walked again"
    );
    // A profile read from the state has no next changes: its timer evaluates everything.
    let mut read = crate::profile::decode(&crate::profile::encode(&p)).unwrap();
    let mut results = Vec::new();
    let (_, full) = set.evaluate_with_next(&read, said, None, &mut results, &mut Vec::new(), None);
    read.next_timer = Some(said);
    core.advance("k", &mut read, said, &mut out);
    assert_eq!(read.next_timer, full, "walked: carted's own next change");
}

/// A sum in a window flips when evaluation says so: taking the leaving buckets off the current
/// sum rounds otherwise (19.99 + 5.01 − 19.99 − 5.01 is not 0, and the timer was never set).
#[test]
fn a_sum_in_a_window_gets_a_timer_whatever_the_rounding() {
    let set = SegmentSet::parse(&one("sum(orderPlaced, 30d) > 0")).unwrap();
    let mut p = Profile::default();
    p.apply(&event(EventType::OrderPlaced, T0, 19.99));
    p.apply(&event(EventType::OrderPlaced, T0 + 24 * H, 5.01));
    let now = T0 + 25 * H;
    let mut results = Vec::new();
    let (_, next) = set.evaluate_with_next(&p, now, None, &mut results, &mut Vec::new(), None);
    assert_eq!(results, [true]);
    let next = next.expect("the sum leaves the window");
    set.evaluate(&p, next, &mut results);
    assert_eq!(results, [false], "flipped at the timer");
    set.evaluate(&p, next - 1, &mut results);
    assert_eq!(results, [true], "not before");
}

/// A conjunction held false by a side that time does not change sets no timer; held false by
/// two timed sides, its timer is the later of theirs; a count that must rise to flip sets none.
/// And no rule of `and`, `or`, `not`, `in` and segment references over timed parts flips before
/// its next change: checked every 10 s and at the millisecond before each timer, from each event
/// to the next (the 5-minute buckets' edges fall at 1 min 40 s past T0's 5-minute mark), and
/// past each timer to see that the flips are found.
#[test]
fn conjunctions_are_timed_by_the_sides_that_hold_them() {
    let next_of = |set: &SegmentSet, p: &Profile, now: i64| {
        let mut results = Vec::new();
        let (_, next) = set.evaluate_with_next(p, now, None, &mut results, &mut Vec::new(), None);
        (results, next)
    };
    let no_order = "since(last productPageView) > 1h and orders.count >= 1";
    let set = SegmentSet::parse(&one(no_order)).unwrap();
    let mut p = Profile::default();
    p.apply(&event(EventType::ProductPageView, T0, 0.0));
    assert_eq!(
        next_of(&set, &p, T0),
        (vec![false], None),
        "no order: the rule stays false whatever the time"
    );
    p.apply(&event(EventType::OrderPlaced, T0 + 1, 10.0));
    assert_eq!(
        next_of(&set, &p, T0 + 1),
        (vec![false], Some(T0 + H + 1)),
        "an order: the rule turns true an hour after the page view"
    );
    let rising = SegmentSet::parse(&one("count(productPageView, 1h) >= 2")).unwrap();
    assert_eq!(
        next_of(&rising, &p, T0 + 1),
        (vec![false], None),
        "a count of 1 never rises to 2 without an event"
    );
    let both = SegmentSet::parse(&one(
        "since(last productPageView) > 1h and since(last orderPlaced) > 2h",
    ))
    .unwrap();
    assert_eq!(
        next_of(&both, &p, T0 + 1),
        (vec![false], Some(T0 + 2 * H + 2)),
        "false on both sides: true no sooner than both have changed (the order's 2 h, after 1 ms)"
    );

    let sets: Vec<String> = [
        no_order,
        "orders.count >= 1 or since(last productPageView) <= 1h",
        "count(productPageView, 2h) >= 2 and since(last productPageView) > 30m",
        "count(productPageView, 2h) >= 2 or count(addToCart, 3h) >= 1",
        "count(productPageView, 2h) <= 1 and count(addToCart, 90m) < 1",
        "count(productPageView, 3h) > 1 and 2 > count(productPageView, 1h)",
        "not (count(productPageView, 90m) >= 1 and count(addToCart, 1h) == 0)",
        "(count(addToCart, 1h) == 0 and count(productPageView, 3h) >= 1) or since(last orderPlaced) <= 2h",
        "count(productPageView, 2h) in [1, 3] or -count(addToCart, 1h) == -1",
    ]
    .into_iter()
    .map(one)
    .chain([r#"segments:
  - id: a
    rule: count(productPageView, 2h) >= 2
  - id: b
    rule: in_segment("a") and since(last addToCart) > 20m
  - id: c
    rule: not in_segment("b") and then_no(productPageView, addToCart, 45m)
  - id: d
    rule: count_category(productPageView, "cat-1", 3h) >= 1 or sum(orderPlaced, 4h) >= 15
  - id: e
    rule: device in ["mobile", "tablet"] and count(productPageView, 90m) >= 1
  - id: f
    rule: in_segment("d") or (in_segment("c") and count_product(productPageView, "SKU-1", 2h) >= 2)
"#
    .to_string()])
    .collect();
    let events = [
        (EventType::ProductPageView, 0),
        (EventType::ProductPageView, 20),
        (EventType::AddToCart, 50),
        (EventType::ProductPageView, 61),
        (EventType::OrderPlaced, 130),
        (EventType::ProductPageView, 400),
    ];
    const M: i64 = 60_000;
    const STEP: i64 = 10_000;
    let mut flips = 0;
    for src in &sets {
        let set = SegmentSet::parse(src).unwrap();
        let mut p = Profile::default();
        for (i, &(kind, minute)) in events.iter().enumerate() {
            let mut ev = event(kind, T0 + minute * M, 10.0);
            if kind == EventType::ProductPageView {
                ev.device = Some("mobile".into());
                ev.lines = vec![crate::event::Line {
                    sku: "SKU-1".into(),
                    name: None,
                    quantity: 1.0,
                    price: Some(10.0),
                    image_url: None,
                    url: None,
                    category: Some("cat-1".into()),
                    brand: None,
                }];
            }
            p.apply(&ev);
            let until = T0 + events.get(i + 1).map_or(minute + 600, |e| e.1) * M;
            let mut now = T0 + minute * M;
            let (mut at, mut later, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
            while now < until {
                let (_, next) = set.evaluate_with_next(&p, now, None, &mut at, &mut scratch, None);
                let last = next.map_or(until, |n| n.min(until)) - 1;
                let mut t = now + 1;
                while t <= last {
                    set.evaluate(&p, t, &mut later);
                    assert_eq!(
                        later,
                        at,
                        "{src}: flipped {} ms after T0, before its next change {next:?}",
                        t - T0
                    );
                    t = if t == last {
                        t + 1
                    } else {
                        (t + STEP).min(last)
                    };
                }
                match next {
                    Some(n) if n < until => {
                        set.evaluate(&p, n, &mut later);
                        flips += usize::from(later != at);
                        now = n;
                    }
                    _ => break,
                }
            }
        }
    }
    assert!(flips >= 12, "the timers found flips ({flips})");
}
