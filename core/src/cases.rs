//! Tests for rules, written by the people who write segments: `tailor test SEGMENTS CASES`.
//!
//! A cases file lists shoppers' stories: events in a compact form at times relative to the
//! case's start, and what must hold at given moments (memberships, journeys triggered). Each case
//! runs through the same core as the worker ([`Core`]: the same profile update, rules, timers
//! and journeys), one shopper, in memory. A mismatch is reported with the rule's evaluation tree
//! at that moment (see [`crate::segments::Evaluated`]).
//!
//! ```yaml
//! start: 2026-01-05T09:00:00Z        # optional; times below are relative to it
//! cases:
//!   - name: an abandoned cart enters after one hour
//!     events:
//!       - {at: +0m, type: addToCart, sku: SKU-1, price: 60, quantity: 2}
//!     expect:
//!       - at: +59m
//!         not_members: [cart-abandoners]
//!       - at: +1h
//!         members: [cart-abandoners, cart-holders]
//!         journeys: [abandoned-cart]   # exactly these since the previous check
//! ```

use std::fmt::Write;
use std::sync::Arc;

use yaml_rust2::{Yaml, YamlLoader};

use crate::audience::{Core, Outputs, Source};
use crate::event::{Attributes, Cart, Event, EventType, Line};
use crate::profile::Profile;
use crate::segments::{render_duration, SegmentSet};
use crate::wire::Identity;

/// 2026-01-01T00:00:00Z, the default start of a case.
pub const DEFAULT_START: i64 = 1_767_225_600_000;

/// The profile key every case's shopper has.
const KEY: &str = "test-shopper";

/// One event of a case.
#[derive(Debug, Clone)]
struct Step {
    at: i64,
    event: Event,
}

/// What must hold at `at`.
#[derive(Debug, Clone, Default)]
struct Check {
    at: i64,
    members: Vec<String>,
    not_members: Vec<String>,
    /// Journeys triggered since the previous check, exactly (sorted); `None`: not checked.
    journeys: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    start: i64,
    steps: Vec<Step>,
    checks: Vec<Check>,
}

/// A parsed cases file.
#[derive(Debug, Clone)]
pub struct Cases {
    cases: Vec<Case>,
}

/// How one case went.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub name: String,
    /// Expectations checked (one per segment or journey list named).
    pub checks: usize,
    /// Each mismatch, with the explanation (several lines).
    pub failures: Vec<String>,
}

fn problem(case: &str, what: &str, msg: impl std::fmt::Display) -> String {
    if case.is_empty() {
        format!("{what}: {msg}")
    } else {
        format!("case '{case}', {what}: {msg}")
    }
}

fn keys(y: &Yaml, allowed: &[&str], case: &str, what: &str) -> Result<(), String> {
    let Some(h) = y.as_hash() else {
        return Err(problem(case, what, "expected a mapping"));
    };
    for k in h.keys() {
        let k = k.as_str().unwrap_or("?");
        if !allowed.contains(&k) {
            return Err(problem(
                case,
                what,
                format!("unknown key '{k}'; expected one of {}", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

/// A scalar as text (YAML reads `60` as a number and `SKU-1` as a string; both are fine).
fn text(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn number(y: &Yaml) -> Option<f64> {
    match y {
        Yaml::Integer(i) => Some(*i as f64),
        Yaml::Real(_) => y.as_f64(),
        Yaml::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `+90m`, `+1d` (after `start`), `-5m` (before it) or `2026-01-05T09:00:00Z`.
fn time(y: &Yaml, start: i64) -> Option<i64> {
    let s = text(y)?;
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('+') {
        return duration(rel).and_then(|d| start.checked_add(d));
    }
    if let Some(rel) = s.strip_prefix('-') {
        return duration(rel).and_then(|d| start.checked_sub(d));
    }
    parse_utc(s)
}

fn duration(s: &str) -> Option<i64> {
    if s.trim() == "0" {
        return Some(0);
    }
    // `1h30m`: a sum of single durations.
    let mut total = 0;
    let mut rest = s.trim();
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let unit_end = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| digits + i);
        let part = crate::segments::parse_duration(&rest[..unit_end])
            .or_else(|| (rest[..digits].parse::<f64>().ok() == Some(0.0)).then_some(0))?;
        total = i64::checked_add(total, part)?;
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// `YYYY-MM-DDTHH:MM:SSZ` (or `YYYY-MM-DD`), UTC, in ms.
pub fn parse_utc(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, clock) = s.split_once(['T', ' ']).unwrap_or((s, "00:00:00"));
    // Unsigned parts (no `-1` hours); years 1970 to 9999.
    let part = |p: &str| p.parse::<u32>().ok().map(i64::from);
    let d: Vec<i64> = date.split('-').map(part).collect::<Option<_>>()?;
    let c: Vec<i64> = clock.split(':').map(part).collect::<Option<_>>()?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), c.as_slice()) else {
        return None;
    };
    if !(1970..=9999).contains(y)
        || !(1..=12).contains(m)
        || !(1..=31).contains(day)
        || *hh > 23
        || *mm > 59
        || *ss > 60
    {
        return None;
    }
    let days = crate::clock::days_from_civil(*y, *m, *day);
    Some(((days * 86_400) + hh * 3_600 + mm * 60 + ss) * 1_000)
}

fn names(y: &Yaml, case: &str, what: &str) -> Result<Vec<String>, String> {
    match y {
        Yaml::BadValue | Yaml::Null => Ok(Vec::new()),
        Yaml::Array(items) => items
            .iter()
            .map(|i| text(i).ok_or_else(|| problem(case, what, "expected a list of ids")))
            .collect(),
        other => text(other)
            .map(|s| vec![s])
            .ok_or_else(|| problem(case, what, "expected a list of ids")),
    }
}

const EVENT_KEYS: &[&str] = &[
    "at",
    "type",
    "id",
    "value",
    "order",
    "device",
    "channel",
    "sku",
    "name",
    "price",
    "quantity",
    "category",
    "brand",
    "lines",
    "cart",
    "search",
    "results",
    "store",
    "currency",
    "ecid",
    "customer",
    "email",
    "attributes",
];

const LINE_KEYS: &[&str] = &["sku", "name", "price", "quantity", "category", "brand"];

const ATTRIBUTE_KEYS: &[&str] = &[
    "first_name",
    "last_name",
    "email",
    "phone",
    "gender",
    "birth_date",
    "country",
    "city",
    "loyalty_tier",
    "loyalty_status",
    "loyalty_points",
    "customer_group",
    "consent_email",
    "consent_sms",
];

fn line(y: &Yaml, case: &str, what: &str) -> Result<Line, String> {
    keys(y, LINE_KEYS, case, what)?;
    let opt = |k: &str| text(&y[k]);
    Ok(Line {
        sku: opt("sku")
            .ok_or_else(|| problem(case, what, "a line needs a sku"))?
            .into(),
        name: opt("name"),
        quantity: number(&y["quantity"]).unwrap_or(1.0),
        price: number(&y["price"]),
        category: opt("category").map(Into::into),
        brand: opt("brand").map(Into::into),
        ..Default::default()
    })
}

fn lines(y: &Yaml, case: &str, what: &str) -> Result<Vec<Line>, String> {
    match y.as_vec() {
        Some(items) => items.iter().map(|l| line(l, case, what)).collect(),
        None => Err(problem(case, what, "expected a list of lines")),
    }
}

fn attributes(y: &Yaml, case: &str, what: &str) -> Result<Attributes, String> {
    keys(y, ATTRIBUTE_KEYS, case, what)?;
    let s = |k: &str| text(&y[k]);
    let b = |k: &str| -> Result<Option<bool>, String> {
        match &y[k] {
            Yaml::BadValue => Ok(None),
            Yaml::Boolean(v) => Ok(Some(*v)),
            _ => Err(problem(case, what, format!("{k} is true or false"))),
        }
    };
    Ok(Attributes {
        first_name: s("first_name"),
        last_name: s("last_name"),
        email: s("email").map(|e| e.trim().to_lowercase()),
        phone: s("phone"),
        gender: s("gender"),
        birth_date: s("birth_date"),
        country: s("country"),
        city: s("city"),
        loyalty_tier: s("loyalty_tier"),
        loyalty_status: s("loyalty_status"),
        loyalty_points: number(&y["loyalty_points"]),
        customer_group: s("customer_group"),
        consent_email: b("consent_email")?,
        consent_sms: b("consent_sms")?,
    })
}

fn event(y: &Yaml, n: usize, start: i64, case: &str) -> Result<Step, String> {
    let what = format!("event {}", n + 1);
    keys(y, EVENT_KEYS, case, &what)?;
    let at = time(&y["at"], start).ok_or_else(|| {
        problem(
            case,
            &what,
            "'at' must be +DURATION (such as +0m, +90m, +1d) or a UTC time such as 2026-01-05T09:00:00Z",
        )
    })?;
    let kind_name = text(&y["type"]).ok_or_else(|| problem(case, &what, "missing 'type'"))?;
    let kind = EventType::parse(&kind_name)
        .ok_or_else(|| problem(case, &what, format!("unknown event type '{kind_name}'")))?;
    let s = |k: &str| text(&y[k]);
    let mut lines_of = Vec::new();
    if !y["lines"].is_badvalue() {
        lines_of = lines(&y["lines"], case, &what)?;
    } else if let Some(sku) = s("sku") {
        lines_of.push(Line {
            sku: sku.into(),
            name: s("name"),
            quantity: number(&y["quantity"]).unwrap_or(1.0),
            price: number(&y["price"]),
            category: s("category").map(Into::into),
            brand: s("brand").map(Into::into),
            ..Default::default()
        });
    }
    let cart = if y["cart"].is_badvalue() {
        None
    } else {
        Some(Cart {
            id: None,
            lines: lines(&y["cart"], case, &what)?,
        })
    };
    let value = number(&y["value"])
        .unwrap_or_else(|| crate::event::total(lines_of.iter().map(Line::total)));
    let attributes = if y["attributes"].is_badvalue() {
        None
    } else {
        Some(Box::new(attributes(&y["attributes"], case, &what)?))
    };
    if at < crate::event::MIN_EVENT_TIME {
        return Err(problem(
            case,
            &what,
            "before 2000-01-01: the worker refuses such events",
        ));
    }
    let email = s("email")
        .or_else(|| attributes.as_ref().and_then(|a| a.email.clone()))
        .map(|e| e.trim().to_lowercase());
    let customer = s("customer");
    let ecid =
        s("ecid").or_else(|| (customer.is_none() && email.is_none()).then(|| KEY.to_owned()));
    let event = Event {
        id: s("id").unwrap_or_else(|| format!("event-{}", n + 1)),
        kind,
        time: at,
        identity: Identity {
            ecid,
            customer_id: customer,
            email,
        },
        value,
        device: s("device").map(Into::into),
        channel: s("channel").map(Into::into),
        lines: lines_of,
        cart,
        order_id: s("order").or_else(|| {
            matches!(kind, EventType::OrderPlaced | EventType::CompleteCheckout)
                .then(|| format!("order-{}", n + 1))
        }),
        search_phrase: s("search"),
        search_results: number(&y["results"]).map(|r| r as u32),
        attributes,
        store_code: s("store").map(Into::into),
        store_view_code: None,
        currency: s("currency").map(Into::into),
    };
    // What the worker checks of every event (negative amounts, sizes).
    event
        .check_amounts()
        .and_then(|()| event.check_sizes())
        .map_err(|e| problem(case, &what, e))?;
    Ok(Step { at, event })
}

fn check(y: &Yaml, n: usize, start: i64, case: &str) -> Result<Check, String> {
    let what = format!("expectation {}", n + 1);
    keys(
        y,
        &["at", "members", "not_members", "journeys"],
        case,
        &what,
    )?;
    let at = time(&y["at"], start)
        .ok_or_else(|| problem(case, &what, "'at' must be +DURATION or a UTC time"))?;
    let journeys = match &y["journeys"] {
        Yaml::BadValue => None,
        j => {
            let mut v = names(j, case, &what)?;
            v.sort();
            Some(v)
        }
    };
    Ok(Check {
        at,
        members: names(&y["members"], case, &what)?,
        not_members: names(&y["not_members"], case, &what)?,
        journeys,
    })
}

impl Cases {
    /// Parses a cases file, checking the segment and journey ids it names against `set`.
    pub fn parse(src: &str, set: &SegmentSet) -> Result<Cases, String> {
        let docs = YamlLoader::load_from_str(src).map_err(|e| e.to_string())?;
        let doc = docs.first().ok_or("empty cases file")?;
        keys(doc, &["start", "cases"], "", "the file")?;
        let start = match &doc["start"] {
            Yaml::BadValue => DEFAULT_START,
            y => text(y)
                .as_deref()
                .and_then(parse_utc)
                .ok_or("start: expected a UTC time such as 2026-01-05T09:00:00Z")?,
        };
        let list = doc["cases"].as_vec().ok_or("expected a 'cases' list")?;
        let mut cases = Vec::with_capacity(list.len());
        for (i, c) in list.iter().enumerate() {
            let fallback = format!("#{}", i + 1);
            let name = text(&c["name"]).unwrap_or(fallback);
            keys(c, &["name", "events", "expect"], &name, "the case")?;
            let steps = match &c["events"] {
                Yaml::BadValue => Vec::new(),
                Yaml::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(n, e)| event(e, n, start, &name))
                    .collect::<Result<_, _>>()?,
                _ => return Err(problem(&name, "events", "expected a list")),
            };
            let checks: Vec<Check> = match &c["expect"] {
                Yaml::Array(items) if !items.is_empty() => items
                    .iter()
                    .enumerate()
                    .map(|(n, e)| check(e, n, start, &name))
                    .collect::<Result<_, _>>()?,
                _ => return Err(problem(&name, "expect", "expected a non-empty list")),
            };
            let last_check = checks.iter().map(|c| c.at).max().unwrap_or(i64::MIN);
            if let Some((n, late)) = steps.iter().enumerate().find(|(_, s)| s.at > last_check) {
                return Err(problem(
                    &name,
                    &format!("event {}", n + 1),
                    format!(
                        "at {} comes after the last expectation: nothing would check it",
                        relative(late.at, start)
                    ),
                ));
            }
            for ch in &checks {
                for id in ch.members.iter().chain(&ch.not_members) {
                    if set.index_of(id).is_none() {
                        return Err(problem(&name, "expect", format!("unknown segment '{id}'")));
                    }
                }
                for id in ch.journeys.iter().flatten() {
                    if !set.journeys().iter().any(|j| j.id == *id) {
                        return Err(problem(&name, "expect", format!("unknown journey '{id}'")));
                    }
                }
            }
            cases.push(Case {
                name,
                start,
                steps,
                checks,
            });
        }
        Ok(Cases { cases })
    }

    pub fn len(&self) -> usize {
        self.cases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cases.is_empty()
    }

    /// Segment and journey ids named by some expectation (for coverage reports).
    pub fn named(&self) -> (Vec<String>, Vec<String>) {
        let (mut segs, mut journeys) = (Vec::new(), Vec::new());
        for ch in self.cases.iter().flat_map(|c| &c.checks) {
            segs.extend(ch.members.iter().chain(&ch.not_members).cloned());
            journeys.extend(ch.journeys.iter().flatten().cloned());
        }
        for v in [&mut segs, &mut journeys] {
            v.sort();
            v.dedup();
        }
        (segs, journeys)
    }

    /// Runs every case through the core with `set`.
    pub fn run(&self, set: &Arc<SegmentSet>) -> Vec<Outcome> {
        self.cases.iter().map(|c| run_case(c, set)).collect()
    }
}

fn relative(t: i64, start: i64) -> String {
    if t >= start {
        format!("+{}", render_duration((t - start) as f64))
    } else {
        format!("-{}", render_duration((start - t) as f64))
    }
}

fn run_case(case: &Case, set: &Arc<SegmentSet>) -> Outcome {
    let mut core = Core::new(set.clone());
    let mut profile = Profile::default();
    let mut out = Outputs::default();
    // Events first at equal times (an expectation at +1h sees the event at +1h), each list in
    // file order.
    let mut steps: Vec<&Step> = case.steps.iter().collect();
    steps.sort_by_key(|s| s.at);
    let mut checks: Vec<&Check> = case.checks.iter().collect();
    checks.sort_by_key(|c| c.at);
    let mut steps = steps.into_iter().enumerate().peekable();
    let mut outcome = Outcome {
        name: case.name.clone(),
        checks: 0,
        failures: Vec::new(),
    };
    let mut since_check: Vec<String> = Vec::new();
    let mut suppressed = Vec::new();
    for check in checks {
        while let Some((n, step)) = steps.next_if(|(_, s)| s.at <= check.at) {
            let source = Source {
                topic: "test",
                partition: 0,
                offset: n as i64,
            };
            core.process(KEY, &mut profile, &step.event, source, step.at, &mut out);
            since_check.extend(out.triggers.drain(..).map(|t| t.journey_id));
            suppressed.append(&mut out.suppressed);
            out.clear();
        }
        core.advance(KEY, &mut profile, check.at, &mut out);
        since_check.extend(out.triggers.drain(..).map(|t| t.journey_id));
        suppressed.append(&mut out.suppressed);
        out.clear();
        let now = check.at.max(profile.last_seen.unwrap_or(i64::MIN));
        let when = relative(check.at, case.start);
        for (ids, want) in [(&check.members, true), (&check.not_members, false)] {
            for id in ids {
                outcome.checks += 1;
                let member = profile.segments.iter().any(|m| m.segment == *id);
                if member == want {
                    continue;
                }
                let mut msg = format!(
                    "at {when}: expected {} {id}, {}",
                    if want {
                        "a member of"
                    } else {
                        "not a member of"
                    },
                    if member { "is one" } else { "is not" }
                );
                let index = set.index_of(id).expect("checked when parsed");
                if let Some(tree) = set.explain(index, &profile, now) {
                    msg.push_str("; the rule now:\n");
                    tree.to_text(&mut msg, 1, &|t| relative(t, case.start));
                }
                outcome.failures.push(msg.trim_end().to_owned());
            }
        }
        since_check.sort();
        if let Some(want) = &check.journeys {
            outcome.checks += 1;
            if since_check != *want {
                let mut msg = format!(
                    "at {when}: expected journeys [{}] since the previous check, got [{}]",
                    want.join(", "),
                    since_check.join(", ")
                );
                for (j, why) in &suppressed {
                    let _ = write!(msg, "\n  {j} matched but was suppressed: {why:?}");
                }
                outcome.failures.push(msg);
            }
        }
        since_check.clear();
        suppressed.clear();
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
segments:
  - id: cart-holders
    rule: cart.items > 0
  - id: cart-abandoners
    rule: then_no(addToCart, completeCheckout, 1h) and cart.items > 0
journeys:
  - id: abandoned-cart
    on_enter: cart-abandoners
"#;

    fn outcomes(cases: &str) -> Vec<Outcome> {
        let set = Arc::new(SegmentSet::parse(RULES).unwrap());
        Cases::parse(cases, &set).unwrap().run(&set)
    }

    #[test]
    fn utc_times_and_relative_durations_parse() {
        assert_eq!(parse_utc("2026-01-01T00:00:00Z"), Some(DEFAULT_START));
        assert_eq!(parse_utc("2026-01-01"), Some(DEFAULT_START));
        assert_eq!(parse_utc("1970-01-02T00:00:01Z"), Some(86_401_000));
        assert_eq!(parse_utc("2026-13-01T00:00:00Z"), None);
        assert_eq!(duration("1h30m"), Some(90 * 60_000));
        assert_eq!(duration("0"), Some(0));
        assert_eq!(duration("2d"), Some(2 * 86_400_000));
        assert_eq!(duration("soon"), None);
    }

    #[test]
    fn a_passing_case_and_a_failing_one_with_the_rule_explained() {
        let got = outcomes(
            r#"
cases:
  - name: right
    events:
      - {at: +0m, type: addToCart, sku: S, price: 10}
    expect:
      - {at: +59m, members: [cart-holders], not_members: [cart-abandoners], journeys: []}
      - {at: +1h, members: [cart-abandoners], journeys: [abandoned-cart]}
  - name: wrong
    events:
      - {at: +0m, type: addToCart, sku: S, price: 10}
      - {at: +30m, type: completeCheckout, value: 10}
    expect:
      - {at: +2h, members: [cart-abandoners], journeys: [abandoned-cart]}
"#,
        );
        assert_eq!(got[0].failures, Vec::<String>::new());
        assert_eq!(got[0].checks, 5);
        assert_eq!(got[1].checks, 2);
        assert_eq!(got[1].failures.len(), 2, "{:#?}", got[1].failures);
        let f = &got[1].failures[0];
        assert!(
            f.starts_with("at +2h: expected a member of cart-abandoners, is not; the rule now:"),
            "{f}"
        );
        assert!(f.contains("false    cart.items > 0  (6:56)"), "{f}");
        assert!(f.contains("0        cart.items  (6:56)"), "{f}");
        assert!(
            got[1].failures[1].contains("expected journeys [abandoned-cart]"),
            "{}",
            got[1].failures[1]
        );
    }

    /// The shipped cases pass, and name every example segment and journey.
    #[test]
    fn the_shipped_cases_pass_and_cover_every_example_segment_and_journey() {
        let set =
            Arc::new(SegmentSet::parse(include_str!("../../examples/segments.yaml")).unwrap());
        let cases = Cases::parse(include_str!("../../examples/segments.test.yaml"), &set).unwrap();
        let outcomes = cases.run(&set);
        let failed: Vec<_> = outcomes.iter().filter(|o| !o.failures.is_empty()).collect();
        assert!(failed.is_empty(), "{failed:#?}");
        let (segs, journeys) = cases.named();
        let mut all: Vec<String> = set.segments().iter().map(|s| s.id.clone()).collect();
        all.sort();
        assert_eq!(segs, all, "every example segment has an expectation");
        let mut all: Vec<String> = set.journeys().iter().map(|j| j.id.clone()).collect();
        all.sort();
        assert_eq!(journeys, all, "every example journey has an expectation");
    }

    #[test]
    fn mistakes_in_a_cases_file_name_the_case_and_the_field() {
        let set = SegmentSet::parse(RULES).unwrap();
        let err = |src: &str| Cases::parse(src, &set).unwrap_err();
        assert_eq!(
            err("cases:\n  - name: a\n    events:\n      - {at: +0m, type: addToKart}\n    expect:\n      - {at: +1m}\n"),
            "case 'a', event 1: unknown event type 'addToKart'"
        );
        assert_eq!(
            err("cases:\n  - name: a\n    expect:\n      - {at: +1m, members: [nope]}\n"),
            "case 'a', expect: unknown segment 'nope'"
        );
        assert!(err("cases:\n  - name: a\n    events:\n      - {at: soon, type: addToCart}\n    expect:\n      - {at: +1m}\n")
            .starts_with("case 'a', event 1: 'at' must be"));
        assert!(err(
            "cases:\n  - name: a\n    expect:\n      - {at: +1m, member: [cart-holders]}\n"
        )
        .contains("unknown key 'member'"));
        assert_eq!(
            err("cases:\n  - name: a\n    events:\n      - {at: +2h, type: addToCart, sku: S}\n    expect:\n      - {at: +1h}\n"),
            "case 'a', event 1: at +2h comes after the last expectation: nothing would check it"
        );
        assert!(err("cases:\n  - name: a\n    events:\n      - {at: +0m, type: addToCart, sku: S, price: -5}\n    expect:\n      - {at: +1h}\n")
            .starts_with("case 'a', event 1: "));
        assert!(err("cases:\n  - name: a\n    events:\n      - {at: +999999999999d, type: addToCart}\n    expect:\n      - {at: +1h}\n")
            .contains("'at' must be"));
        assert!(err("start: 2026-01-01T-1:00:00Z\ncases: []\n").starts_with("start:"));
    }
}
