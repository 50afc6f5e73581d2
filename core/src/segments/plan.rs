//! Type-checked, compiled rules and their evaluation against a profile.
//!
//! All failure happens in [`compile`]: unknown attributes, wrong types, windows too long. Evaluation
//! cannot fail and does not allocate: it walks the plan and borrows strings from the profile.
//!
//! Absent values: an attribute the profile does not have (no loyalty tier yet, a division by zero)
//! is *missing*. Any comparison with a missing value is false, arithmetic with it stays missing, and
//! a missing boolean attribute counts as false.

use crate::event::EventType;
use crate::profile::Profile;
use crate::window::MAX_WINDOW_MS;
use compact_str::{format_compact, CompactString, ToCompactString};

use super::expr::{BinOp, Expr, ExprError, ExprKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Num,
    Str,
    Bool,
    Dur,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Num => "number",
            Type::Str => "string",
            Type::Bool => "boolean",
            Type::Dur => "duration",
        }
    }
}

/// Profile attributes a rule can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attr {
    OrdersCount,
    OrdersRevenue,
    OrdersLtv,
    OrdersAov,
    OrdersCancelled,
    OrdersCancelledValue,
    OrdersReturns,
    OrdersRefunded,
    CartItems,
    CartQuantity,
    CartValue,
    EventsTotal,
    LoyaltyPoints,
    LoyaltyTier,
    LoyaltyStatus,
    Gender,
    Country,
    City,
    CustomerGroup,
    Device,
    Channel,
    IdentityKnown,
    ConsentEmail,
    ConsentSms,
}

/// The attribute catalogue: rule name, attribute, type, one-line doc (also rendered in the README).
pub const ATTRIBUTES: &[(&str, Attr, Type, &str)] = &[
    (
        "orders.count",
        Attr::OrdersCount,
        Type::Num,
        "orders placed (each order id counted once)",
    ),
    (
        "orders.revenue",
        Attr::OrdersRevenue,
        Type::Num,
        "gross value of orders placed",
    ),
    (
        "orders.ltv",
        Attr::OrdersLtv,
        Type::Num,
        "lifetime value: revenue less cancelled value and refunds",
    ),
    (
        "orders.aov",
        Attr::OrdersAov,
        Type::Num,
        "average order value (missing before the first order)",
    ),
    (
        "orders.cancelled",
        Attr::OrdersCancelled,
        Type::Num,
        "orderCancelled events",
    ),
    (
        "orders.cancelled_value",
        Attr::OrdersCancelledValue,
        Type::Num,
        "value of cancelled orders",
    ),
    (
        "orders.returns",
        Attr::OrdersReturns,
        Type::Num,
        "returns initiated",
    ),
    (
        "orders.refunded",
        Attr::OrdersRefunded,
        Type::Num,
        "amount refunded",
    ),
    (
        "cart.items",
        Attr::CartItems,
        Type::Num,
        "distinct lines in the current cart",
    ),
    (
        "cart.quantity",
        Attr::CartQuantity,
        Type::Num,
        "units in the current cart",
    ),
    (
        "cart.value",
        Attr::CartValue,
        Type::Num,
        "value of the current cart",
    ),
    (
        "events.total",
        Attr::EventsTotal,
        Type::Num,
        "events applied to the profile",
    ),
    (
        "loyalty.points",
        Attr::LoyaltyPoints,
        Type::Num,
        "loyalty points (profile events)",
    ),
    (
        "loyalty.tier",
        Attr::LoyaltyTier,
        Type::Str,
        "loyalty tier, lower case (e.g. gold)",
    ),
    (
        "loyalty.status",
        Attr::LoyaltyStatus,
        Type::Str,
        "loyalty status, lower case",
    ),
    (
        "gender",
        Attr::Gender,
        Type::Str,
        "person.gender, lower case",
    ),
    (
        "country",
        Attr::Country,
        Type::Str,
        "billing (else shipping) address country",
    ),
    (
        "city",
        Attr::City,
        Type::Str,
        "billing (else shipping) address city",
    ),
    (
        "customer_group",
        Attr::CustomerGroup,
        Type::Str,
        "customer group",
    ),
    (
        "device",
        Attr::Device,
        Type::Str,
        "last device type seen (mobile, tablet, desktop...)",
    ),
    (
        "channel",
        Attr::Channel,
        Type::Str,
        "last channel type seen (web, mobile...)",
    ),
    (
        "identity.known",
        Attr::IdentityKnown,
        Type::Bool,
        "the shopper has a customer id or e-mail",
    ),
    (
        "consent.email",
        Attr::ConsentEmail,
        Type::Bool,
        "opted in to marketing e-mail",
    ),
    (
        "consent.sms",
        Attr::ConsentSms,
        Type::Bool,
        "opted in to marketing SMS",
    ),
];

/// Functions a rule can call (rendered in the README).
pub const FUNCTIONS: &[(&str, &str)] = &[
    ("count(EVENT, WINDOW)", "number of EVENT events in the last WINDOW (up to 90d); EVENT `order` means an order placed, each order id once"),
    ("sum(EVENT, WINDOW)", "money EVENT events were worth in the last WINDOW (order totals, cart values added...)"),
    ("since(EVENT)", "time since the latest EVENT (or `order`; `since(last EVENT)` reads the same): a duration, compared with a duration such as `> 90d`; missing if never"),
    ("then_no(FIRST, SECOND, WINDOW)", "FIRST, then no SECOND within WINDOW: true once WINDOW has passed since the latest FIRST without a SECOND in between; a new FIRST starts over. FIRST may be `productPageView(\"CATEGORY\")` (also addToCart, removeFromCart, addToRequisitionList) for one category"),
    ("then(FIRST, SECOND, WINDOW)", "FIRST, then SECOND within WINDOW: the latest FIRST was followed by a SECOND within WINDOW"),
    ("count_category(EVENT, \"CATEGORY\", WINDOW)", "EVENT (productPageView, addToCart, removeFromCart, addToRequisitionList) about products of CATEGORY in the last WINDOW, counted by day (the 64 most recently active category series are kept)"),
    ("count_product(EVENT, \"SKU\", WINDOW)", "EVENT (as for count_category) about product SKU in the last WINDOW, counted by day (the 64 most recently active product series are kept)"),
    ("affinity(\"CATEGORY\")", "decayed interest in a category: a view adds 1, an add to cart 3, a purchase 5; halves every 14 days"),
    ("brand_affinity(\"BRAND\")", "the same for a brand (product manufacturer)"),
    ("top_category()", "the category with the highest affinity now (missing if none)"),
    ("top_brand()", "the brand with the highest affinity now (missing if none)"),
    ("in_segment(\"ID\")", "the shopper is in segment ID (evaluated first; cycles are rejected)"),
    ("exists(ATTRIBUTE)", "the attribute has a value"),
];

/// What `count`, `sum` and `since` look at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Events {
    Type(EventType),
    /// Orders placed, each order id once, whichever family reported it.
    Order,
}

/// The first step of a sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Events(Events),
    /// An event about products of one category.
    Category(EventType, Key),
}

/// A category, SKU or brand a rule names, with its hash ([`crate::profile::key_hash`]) worked
/// out once when the rule compiles: a profile's long keyed lists are searched by hash, and the
/// rule's key is looked up at every evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub text: String,
    pub hash: u64,
}

impl Key {
    pub fn new(text: String) -> Key {
        Key {
            hash: crate::profile::key_hash(&text),
            text,
        }
    }
}

impl std::ops::Deref for Key {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

/// A compiled rule node.
#[derive(Debug, Clone)]
pub enum Node {
    Num(f64),
    Str(String),
    Bool(bool),
    Attr(Attr),
    Count(Events, i64),
    Sum(Events, i64),
    /// Time since the latest event, ms.
    Since(Events),
    /// `then_no` (negated: no SECOND within the window) or `then`.
    Seq {
        first: Step,
        second: Events,
        window: i64,
        negated: bool,
    },
    CountCategory(EventType, Key, i64),
    CountProduct(EventType, Key, i64),
    CategoryAffinity(Key),
    BrandAffinity(Key),
    TopCategory,
    TopBrand,
    /// Index into the segment results of this evaluation pass.
    Segment(usize),
    Exists(Attr),
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(BinOp, Box<Node>, Box<Node>),
    Arith(BinOp, Box<Node>, Box<Node>),
    InList(Box<Node>, Vec<Node>),
}

/// What a rule may refer to while compiling.
pub trait Scope {
    /// Index of segment `id` if it may be referenced from here.
    fn segment(&mut self, id: &str, at: usize) -> Result<usize, ExprError>;
}

fn fail<T>(at: usize, message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError {
        offset: at,
        message: message.into(),
    })
}

fn attr(path: &str, at: usize) -> Result<(Attr, Type), ExprError> {
    ATTRIBUTES
        .iter()
        .find(|(name, ..)| *name == path)
        .map(|(_, a, t, _)| (*a, *t))
        .ok_or_else(|| {
            let known: Vec<_> = ATTRIBUTES.iter().map(|(n, ..)| *n).collect();
            ExprError {
                offset: at,
                message: format!("unknown attribute '{path}'; known: {}", known.join(", ")),
            }
        })
}

fn events(e: &Expr) -> Result<Events, ExprError> {
    match &e.kind {
        ExprKind::Path(name) | ExprKind::Str(name) if name == "order" => Ok(Events::Order),
        _ => event_type(e).map(Events::Type),
    }
}

fn string_arg<'a>(e: &'a Expr, what: &str) -> Result<&'a str, ExprError> {
    match &e.kind {
        ExprKind::Str(s) => Ok(s),
        _ => fail(e.at, format!("expected {what} in quotes")),
    }
}

fn event_type(e: &Expr) -> Result<EventType, ExprError> {
    match &e.kind {
        ExprKind::Path(name) | ExprKind::Str(name) => {
            EventType::parse(name).ok_or_else(|| ExprError {
                offset: e.at,
                message: format!("unknown event type '{name}'"),
            })
        }
        _ => fail(e.at, "expected an event type such as addToCart"),
    }
}

fn window(e: &Expr) -> Result<i64, ExprError> {
    match e.kind {
        ExprKind::Dur(d) if d > 0 && d <= MAX_WINDOW_MS => Ok(d),
        ExprKind::Dur(_) => fail(e.at, "window must be longer than 0 and at most 90d"),
        _ => fail(e.at, "expected a window such as 24h or 7d"),
    }
}

/// Type-checks and compiles an expression.
pub fn compile(e: &Expr, scope: &mut dyn Scope) -> Result<(Node, Type), ExprError> {
    Ok(match &e.kind {
        ExprKind::Num(n) => (Node::Num(*n), Type::Num),
        ExprKind::Dur(ms) => (Node::Num(*ms as f64), Type::Dur),
        ExprKind::Str(s) => (Node::Str(s.clone()), Type::Str),
        ExprKind::Bool(b) => (Node::Bool(*b), Type::Bool),
        ExprKind::Path(p) => {
            let (a, t) = attr(p, e.at)?;
            (Node::Attr(a), t)
        }
        ExprKind::Call(name, args) => {
            let arity = |n: usize| -> Result<(), ExprError> {
                if args.len() == n {
                    Ok(())
                } else {
                    fail(
                        e.at,
                        format!("{name}() takes {n} argument(s), found {}", args.len()),
                    )
                }
            };
            match name.as_str() {
                "count" | "sum" => {
                    arity(2)?;
                    let (k, w) = (events(&args[0])?, window(&args[1])?);
                    let node = if name == "count" {
                        Node::Count(k, w)
                    } else {
                        Node::Sum(k, w)
                    };
                    (node, Type::Num)
                }
                "since" => {
                    arity(1)?;
                    (Node::Since(events(&args[0])?), Type::Dur)
                }
                "then" | "then_no" => {
                    arity(3)?;
                    let first = match &args[0].kind {
                        ExprKind::Call(kind, cat) => {
                            let k = EventType::parse(kind).ok_or_else(|| ExprError {
                                offset: args[0].at,
                                message: format!("unknown event type '{kind}'"),
                            })?;
                            if !crate::profile::KEYED_EVENTS.contains(&k) || cat.len() != 1 {
                                return fail(args[0].at, format!("{kind}(\"CATEGORY\") needs one category, and works for productPageView, addToCart, removeFromCart or addToRequisitionList"));
                            }
                            Step::Category(
                                k,
                                Key::new(string_arg(&cat[0], "a category")?.to_owned()),
                            )
                        }
                        _ => Step::Events(events(&args[0])?),
                    };
                    let node = Node::Seq {
                        first,
                        second: events(&args[1])?,
                        window: window(&args[2])?,
                        negated: name == "then_no",
                    };
                    (node, Type::Bool)
                }
                "count_category" | "count_product" => {
                    arity(3)?;
                    let k = event_type(&args[0])?;
                    if !crate::profile::KEYED_EVENTS.contains(&k) {
                        return fail(
                            args[0].at,
                            format!("{name}() counts productPageView, addToCart, removeFromCart or addToRequisitionList, not {}", k.name()),
                        );
                    }
                    let key = Key::new(string_arg(&args[1], "a category or SKU")?.to_owned());
                    let w = window(&args[2])?;
                    let node = if name == "count_category" {
                        Node::CountCategory(k, key, w)
                    } else {
                        Node::CountProduct(k, key, w)
                    };
                    (node, Type::Num)
                }
                "affinity" | "brand_affinity" => {
                    arity(1)?;
                    let key = Key::new(string_arg(&args[0], "a category or brand")?.to_owned());
                    let node = if name == "affinity" {
                        Node::CategoryAffinity(key)
                    } else {
                        Node::BrandAffinity(key)
                    };
                    (node, Type::Num)
                }
                "top_category" | "top_brand" => {
                    arity(0)?;
                    let node = if name == "top_category" {
                        Node::TopCategory
                    } else {
                        Node::TopBrand
                    };
                    (node, Type::Str)
                }
                "in_segment" => {
                    arity(1)?;
                    let ExprKind::Str(id) = &args[0].kind else {
                        return fail(args[0].at, "in_segment() takes a segment id in quotes");
                    };
                    (Node::Segment(scope.segment(id, args[0].at)?), Type::Bool)
                }
                "exists" => {
                    arity(1)?;
                    let ExprKind::Path(p) = &args[0].kind else {
                        return fail(args[0].at, "exists() takes an attribute name");
                    };
                    (Node::Exists(attr(p, args[0].at)?.0), Type::Bool)
                }
                other => {
                    let known: Vec<_> = FUNCTIONS.iter().map(|(f, _)| *f).collect();
                    return fail(
                        e.at,
                        format!("unknown function '{other}'; known: {}", known.join(", ")),
                    );
                }
            }
        }
        ExprKind::Not(inner) => (
            Node::Not(Box::new(expect(inner, Type::Bool, scope)?)),
            Type::Bool,
        ),
        ExprKind::Neg(inner) => {
            let n = expect(inner, Type::Num, scope)?;
            continuous(&n, e.at)?;
            (Node::Neg(Box::new(n)), Type::Num)
        }
        ExprKind::Bin(op, l, r) => match op {
            BinOp::And | BinOp::Or => {
                let (l, r) = (expect(l, Type::Bool, scope)?, expect(r, Type::Bool, scope)?);
                let node = if *op == BinOp::And {
                    Node::And(Box::new(l), Box::new(r))
                } else {
                    Node::Or(Box::new(l), Box::new(r))
                };
                (node, Type::Bool)
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => {
                let (l, r) = (expect(l, Type::Num, scope)?, expect(r, Type::Num, scope)?);
                for n in [&l, &r] {
                    continuous(n, e.at)?;
                }
                (Node::Arith(*op, Box::new(l), Box::new(r)), Type::Num)
            }
            _ => {
                let (ln, lt) = compile(l, scope)?;
                let (rn, rt) = compile(r, scope)?;
                let literal = |n: &Node| matches!(n, Node::Num(_));
                if !(literal(&ln) || literal(&rn)) {
                    continuous(&ln, e.at)?;
                    continuous(&rn, e.at)?;
                }
                if lt != rt {
                    return fail(
                        e.at,
                        format!("cannot compare {} with {}", lt.name(), rt.name()),
                    );
                }
                let ordered = matches!(op, BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge);
                if ordered && !matches!(lt, Type::Num | Type::Dur) {
                    return fail(
                        e.at,
                        format!("'{}' needs numbers, found {}", op.symbol(), lt.name()),
                    );
                }
                (Node::Cmp(*op, Box::new(ln), Box::new(rn)), Type::Bool)
            }
        },
        ExprKind::In(l, items) => {
            let (ln, lt) = compile(l, scope)?;
            continuous(&ln, e.at)?;
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                list.push(expect(item, lt, scope)?);
            }
            (Node::InList(Box::new(ln), list), Type::Bool)
        }
    })
}

/// `since()` and affinities change continuously with time. Timers compute the moment their
/// comparison with a constant flips, so that is the only place they may appear.
fn continuous(n: &Node, at: usize) -> Result<(), ExprError> {
    match n {
        Node::Since(_) => fail(at, "since() must be compared with a duration such as 1h (so the moment it changes can be scheduled)"),
        Node::CategoryAffinity(_) | Node::BrandAffinity(_) => fail(at, "affinity() and brand_affinity() must be compared with a number such as 5 (so the moment they change can be scheduled)"),
        _ => Ok(()),
    }
}

fn expect(e: &Expr, want: Type, scope: &mut dyn Scope) -> Result<Node, ExprError> {
    let (node, got) = compile(e, scope)?;
    if got != want {
        return fail(
            e.at,
            format!("expected a {}, found a {}", want.name(), got.name()),
        );
    }
    Ok(node)
}

/// A value during evaluation; strings borrow from the profile or the plan.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Val<'a> {
    Num(f64),
    Str(&'a str),
    Bool(bool),
    Missing,
}

/// What a rule is evaluated against.
pub struct Ctx<'a> {
    pub profile: &'a Profile,
    /// Stream time of the evaluation, ms.
    pub now: i64,
    /// Results of the segments evaluated before this one in this pass.
    pub segments: &'a [bool],
}

fn attr_value<'a>(a: Attr, p: &'a Profile) -> Val<'a> {
    let o = &p.orders;
    let num = Val::Num;
    let s = |v: Option<&'a str>| v.map_or(Val::Missing, Val::Str);
    let b = |v: Option<bool>| v.map_or(Val::Missing, Val::Bool);
    match a {
        Attr::OrdersCount => num(o.count as f64),
        Attr::OrdersRevenue => num(o.revenue),
        Attr::OrdersLtv => num(o.lifetime_value()),
        Attr::OrdersAov => o.average_order_value().map_or(Val::Missing, num),
        Attr::OrdersCancelled => num(o.cancelled as f64),
        Attr::OrdersCancelledValue => num(o.cancelled_value),
        Attr::OrdersReturns => num(o.returns as f64),
        Attr::OrdersRefunded => num(o.refunded),
        Attr::CartItems => num(p.cart.lines.len() as f64),
        Attr::CartQuantity => num(p.cart.quantity()),
        Attr::CartValue => num(p.cart.value()),
        Attr::EventsTotal => num(p.events_total as f64),
        Attr::LoyaltyPoints => p.attributes.loyalty_points.map_or(Val::Missing, num),
        Attr::LoyaltyTier => s(p.attributes.loyalty_tier.as_deref()),
        Attr::LoyaltyStatus => s(p.attributes.loyalty_status.as_deref()),
        Attr::Gender => s(p.attributes.gender.as_deref()),
        Attr::Country => s(p.attributes.country.as_deref()),
        Attr::City => s(p.attributes.city.as_deref()),
        Attr::CustomerGroup => s(p.attributes.customer_group.as_deref()),
        Attr::Device => s(p.last_device.as_deref()),
        Attr::Channel => s(p.last_channel.as_deref()),
        Attr::IdentityKnown => {
            Val::Bool(p.identities.customer_id.is_some() || !p.identities.emails.is_empty())
        }
        Attr::ConsentEmail => b(p.attributes.consent_email),
        Attr::ConsentSms => b(p.attributes.consent_sms),
    }
}

fn eval<'a>(n: &'a Node, cx: &Ctx<'a>) -> Val<'a> {
    match n {
        Node::Num(v) => Val::Num(*v),
        Node::Str(s) => Val::Str(s),
        Node::Bool(b) => Val::Bool(*b),
        Node::Attr(a) => attr_value(*a, cx.profile),
        Node::Count(k, w) => Val::Num(windowed(cx, *k, *w).0 as f64),
        Node::Sum(k, w) => Val::Num(windowed(cx, *k, *w).1),
        Node::Since(k) => {
            let last = series_of(cx.profile, *k).and_then(|s| s.last());
            last.map_or(Val::Missing, |t| Val::Num((cx.now - t) as f64))
        }
        Node::Seq {
            first,
            second,
            window,
            negated,
        } => {
            let Some(a) = first_time(cx.profile, first) else {
                return Val::Bool(false);
            };
            let followed = first_after(cx.profile, *second, a).is_some_and(|b| b <= a + window);
            Val::Bool(if *negated {
                cx.now >= a + window && !followed
            } else {
                followed
            })
        }
        Node::CountCategory(k, key, w) | Node::CountProduct(k, key, w) => {
            let list = if matches!(n, Node::CountCategory(..)) {
                &cx.profile.by_category
            } else {
                &cx.profile.by_product
            };
            let count = list
                .get_hashed(*k, key, key.hash)
                .map_or(0, |s| s.series.query(*w, cx.now));
            Val::Num(count as f64)
        }
        Node::CategoryAffinity(key) => {
            Val::Num(affinity(&cx.profile.category_affinity, key, cx.now))
        }
        Node::BrandAffinity(key) => Val::Num(affinity(&cx.profile.brand_affinity, key, cx.now)),
        Node::TopCategory => cx
            .profile
            .category_affinity
            .top()
            .map_or(Val::Missing, Val::Str),
        Node::TopBrand => cx
            .profile
            .brand_affinity
            .top()
            .map_or(Val::Missing, Val::Str),
        Node::Segment(i) => Val::Bool(cx.segments[*i]),
        Node::Exists(a) => Val::Bool(attr_value(*a, cx.profile) != Val::Missing),
        Node::Not(x) => Val::Bool(!truth(eval(x, cx))),
        Node::Neg(x) => match eval(x, cx) {
            Val::Num(v) => Val::Num(-v),
            _ => Val::Missing,
        },
        Node::And(l, r) => Val::Bool(truth(eval(l, cx)) && truth(eval(r, cx))),
        Node::Or(l, r) => Val::Bool(truth(eval(l, cx)) || truth(eval(r, cx))),
        Node::Cmp(op, l, r) => Val::Bool(compare(*op, eval(l, cx), eval(r, cx))),
        Node::Arith(op, l, r) => arith(*op, eval(l, cx), eval(r, cx)),
        Node::InList(x, list) => {
            let v = eval(x, cx);
            Val::Bool(
                v != Val::Missing
                    && list
                        .iter()
                        .any(|item| compare(BinOp::Eq, v, eval(item, cx))),
            )
        }
    }
}

fn arith<'a>(op: BinOp, l: Val, r: Val) -> Val<'a> {
    let (Val::Num(a), Val::Num(b)) = (l, r) else {
        return Val::Missing;
    };
    let v = match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        _ => a / b,
    };
    if v.is_finite() {
        Val::Num(v)
    } else {
        Val::Missing
    }
}

/// Time of the latest event of a sequence's first step.
fn first_time(p: &Profile, step: &Step) -> Option<i64> {
    match step {
        Step::Events(k) => series_of(p, *k).and_then(|s| s.last()),
        Step::Category(t, key) => p
            .by_category
            .get_hashed(*t, key, key.hash)
            .and_then(|k| k.series.last()),
    }
}

/// The first `events` after `t` (exact among the latest few; see
/// [`crate::window::Series::first_after`]).
fn first_after(p: &Profile, events: Events, t: i64) -> Option<i64> {
    series_of(p, events).and_then(|s| s.first_after(t))
}

fn windowed(cx: &Ctx, k: Events, w: i64) -> (u64, f64) {
    series_of(cx.profile, k).map_or((0, 0.0), |s| s.query(w, cx.now))
}

fn affinity(list: &crate::profile::AffinityList, key: &Key, now: i64) -> f64 {
    list.get_hashed(key, || key.hash).map_or(0.0, |a| a.at(now))
}

fn truth(v: Val) -> bool {
    matches!(v, Val::Bool(true))
}

fn compare(op: BinOp, l: Val, r: Val) -> bool {
    use std::cmp::Ordering;
    let ord = match (l, r) {
        (Val::Num(a), Val::Num(b)) => a.partial_cmp(&b),
        (Val::Str(a), Val::Str(b)) => Some(a.cmp(b)),
        (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(&b)),
        _ => None,
    };
    let Some(ord) = ord else { return false };
    match op {
        BinOp::Eq => ord == Ordering::Equal,
        BinOp::Ne => ord != Ordering::Equal,
        BinOp::Lt => ord == Ordering::Less,
        BinOp::Le => ord != Ordering::Greater,
        BinOp::Gt => ord == Ordering::Greater,
        BinOp::Ge => ord != Ordering::Less,
        _ => false,
    }
}

/// Evaluates a compiled boolean rule.
pub fn matches(rule: &Node, cx: &Ctx) -> bool {
    truth(eval(rule, cx))
}

/// A node's value, owned (for explanations).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Num(f64),
    Str(String),
    Bool(bool),
    Missing,
}

impl Value {
    /// The value as a person reads it: durations (`ty` Dur) in days, hours, minutes, seconds.
    /// Most values fit in place (24 bytes): an explanation's values cost no allocation.
    pub fn render(&self, ty: Type) -> CompactString {
        match self {
            Value::Num(v) if ty == Type::Dur => render_duration(*v),
            Value::Num(v) if v.fract() == 0.0 && v.abs() < 1e15 => (*v as i64).to_compact_string(),
            Value::Num(v) => render_decimal(*v),
            Value::Str(s) => format_compact!("{s:?}"),
            Value::Bool(true) => CompactString::const_new("true"),
            Value::Bool(false) => CompactString::const_new("false"),
            Value::Missing => CompactString::const_new("missing"),
        }
    }
}

/// A number with at most four decimals, trailing zeros dropped: what `format!("{:.4}")`
/// trimmed writes. Below 10^7, and away from a rounding tie, the value rounded to four decimals
/// is written from the integer `round(v * 10^4)` instead: the same digits, without `{:.4}`'s
/// exact (big-number) formatting, which was 2.5 % of the core bench with 50 segments
/// (explanations of affinity scores and sums), nor the float formatting of the rounded value
/// (what `{}` writes of `n / 10^4` is the decimal `n / 10^4` itself: with at most 11
/// significant digits, no shorter decimal reads back as the same double). Near a tie the
/// product `v * 10^4` may have rounded across it, so the exact formatting decides.
fn render_decimal(v: f64) -> CompactString {
    if v.abs() < 1e7 {
        let scaled = v * 1e4;
        let frac = (scaled - scaled.trunc()).abs();
        if (frac - 0.5).abs() > 1e-4 {
            let n = scaled.round() as i64;
            if n == 0 {
                // `{:.4}` writes "-0.0000" for a small negative number: "-0" trimmed.
                return CompactString::const_new(if v.is_sign_negative() { "-0" } else { "0" });
            }
            let mut out = CompactString::const_new(if n < 0 { "-" } else { "" });
            let (whole, mut part) = (n.unsigned_abs() / 10_000, n.unsigned_abs() % 10_000);
            out.push_str(&whole.to_compact_string());
            if part != 0 {
                out.push('.');
                let mut digits = 4;
                while part % 10 == 0 {
                    part /= 10;
                    digits -= 1;
                }
                let text = part.to_compact_string();
                for _ in text.len()..digits {
                    out.push('0');
                }
                out.push_str(&text);
            }
            return out;
        }
    }
    let exact = format_compact!("{:.4}", v);
    CompactString::new(exact.trim_end_matches('0').trim_end_matches('.'))
}

/// The units a duration is written in, each with its length in ms, largest first.
const DURATION_UNITS: [(&str, i64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// `90061001` ms as `1d 1h 1m 1s 1ms` (each unit only when not zero; `0ms` for zero).
pub fn render_duration(ms: f64) -> CompactString {
    let mut rest = ms.abs().round() as i64;
    if rest == 0 {
        return CompactString::const_new("0ms");
    }
    let mut out = CompactString::const_new(if ms < 0.0 { "-" } else { "" });
    for (unit, size) in DURATION_UNITS {
        if rest >= size {
            if !out.is_empty() && out != "-" {
                out.push(' ');
            }
            out.push_str(&(rest / size).to_compact_string());
            out.push_str(unit);
            rest %= size;
        }
    }
    out
}

/// Evaluates any compiled node.
pub fn value(n: &Node, cx: &Ctx) -> Value {
    match eval(n, cx) {
        Val::Num(v) => Value::Num(v),
        Val::Str(s) => Value::Str(s.to_owned()),
        Val::Bool(b) => Value::Bool(b),
        Val::Missing => Value::Missing,
    }
}

// ------------------------------------------------------------------ timers

/// Adds what `n` reads of a profile to `r` (counters unsorted; the caller sorts).
pub fn reads(n: &Node, r: &mut crate::profile::RuleReads) {
    let events = |e: &Events, r: &mut crate::profile::RuleReads| match e {
        Events::Order => r.order_series = true,
        Events::Type(t) => r.counters.push(*t),
    };
    match n {
        Node::Count(e, _) | Node::Sum(e, _) | Node::Since(e) => events(e, r),
        Node::Seq { first, second, .. } => {
            match first {
                Step::Events(e) => events(e, r),
                Step::Category(kind, key) => r.by_category.push((*kind, key.text.clone())),
            }
            events(second, r);
        }
        Node::CountCategory(kind, key, _) => r.by_category.push((*kind, key.text.clone())),
        Node::CountProduct(kind, key, _) => r.by_product.push((*kind, key.text.clone())),
        Node::CategoryAffinity(key) => r.category_affinity_keys.push(key.text.clone()),
        Node::BrandAffinity(key) => r.brand_affinity_keys.push(key.text.clone()),
        Node::TopCategory => r.category_affinity = true,
        Node::TopBrand => r.brand_affinity = true,
        Node::Not(x) | Node::Neg(x) => reads(x, r),
        Node::And(a, b) | Node::Or(a, b) | Node::Cmp(_, a, b) | Node::Arith(_, a, b) => {
            reads(a, r);
            reads(b, r);
        }
        Node::InList(x, items) => {
            reads(x, r);
            items.iter().for_each(|i| reads(i, r));
        }
        Node::Num(_)
        | Node::Str(_)
        | Node::Bool(_)
        | Node::Attr(_)
        | Node::Exists(_)
        | Node::Segment(_) => {}
    }
}

/// Whether the passing of time alone can change the node's value (it reads a window, a time
/// since, a decaying score, a sequence, or a segment that does).
pub fn timed(n: &Node, segments: &[bool]) -> bool {
    match n {
        Node::Count(..)
        | Node::Sum(..)
        | Node::Since(_)
        | Node::Seq { .. }
        | Node::CountCategory(..)
        | Node::CountProduct(..)
        | Node::CategoryAffinity(_)
        | Node::BrandAffinity(_) => true,
        // Out of range only while reporting errors (a referenced segment failed to compile).
        Node::Segment(i) => segments.get(*i).copied().unwrap_or(true),
        Node::Not(x) | Node::Neg(x) => timed(x, segments),
        Node::And(l, r) | Node::Or(l, r) | Node::Cmp(_, l, r) | Node::Arith(_, l, r) => {
            timed(l, segments) || timed(r, segments)
        }
        Node::InList(x, items) => timed(x, segments) || items.iter().any(|i| timed(i, segments)),
        _ => false,
    }
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The earliest time after `cx.now` at which the node's value may differ, if no event arrives.
/// Never later than the true moment; it may be earlier (a timer that finds nothing changed only
/// schedules the next one). `segments` holds the same for the segments evaluated before.
pub fn next_change(n: &Node, cx: &Ctx, segments: &[Option<i64>]) -> Option<i64> {
    eval_next(n, cx, segments).1
}

/// Evaluates a compiled boolean rule and, in the same walk, its [`next_change`].
pub fn matches_next(rule: &Node, cx: &Ctx, segments: &[Option<i64>]) -> (bool, Option<i64>) {
    let (v, next) = eval_next(rule, cx, segments);
    (truth(v), next)
}

/// A node's value at `cx.now` and its next change, in one walk.
///
/// A conjunction one side holds false stays false until that side may change; both sides
/// false, until both may have changed (a disjunction held true by a side, likewise). So a rule
/// that stays false because of something time does not change (`since(last productPageView) >
/// 1h and orders.count >= 1` for a shopper with no order) sets no timer, and a left side that
/// holds it false for good is enough: the right is not evaluated. Never later than the true moment:
/// the conjunction cannot turn true before each side that holds it false has changed.
fn eval_next<'a>(n: &'a Node, cx: &Ctx<'a>, segments: &[Option<i64>]) -> (Val<'a>, Option<i64>) {
    let p = cx.profile;
    match n {
        Node::Count(k, w) | Node::Sum(k, w) => match series_of(p, *k) {
            None => (Val::Num(0.0), None),
            Some(s) => {
                let (count, sum) = s.query(*w, cx.now);
                let v = if matches!(n, Node::Count(..)) {
                    count as f64
                } else {
                    sum
                };
                (Val::Num(v), s.expiries(*w, cx.now).next().map(|e| e.0))
            }
        },
        Node::CountCategory(k, key, w) | Node::CountProduct(k, key, w) => {
            let list = if matches!(n, Node::CountCategory(..)) {
                &p.by_category
            } else {
                &p.by_product
            };
            match list.get_hashed(*k, key, key.hash) {
                None => (Val::Num(0.0), None),
                Some(s) => (
                    Val::Num(s.series.query(*w, cx.now) as f64),
                    s.series.expiries(*w, cx.now).next().map(|e| e.0),
                ),
            }
        }
        Node::Seq {
            first,
            second,
            window,
            negated,
        } => {
            let Some(a) = first_time(p, first) else {
                return (Val::Bool(false), None);
            };
            let followed = first_after(p, *second, a).is_some_and(|b| b <= a + window);
            if *negated {
                let end = a + window;
                (
                    Val::Bool(cx.now >= end && !followed),
                    Some(end).filter(|&t| t > cx.now),
                )
            } else {
                (Val::Bool(followed), None)
            }
        }
        Node::Segment(i) => (Val::Bool(cx.segments[*i]), segments[*i]),
        Node::Not(x) => {
            let (v, next) = eval_next(x, cx, segments);
            (Val::Bool(!truth(v)), next)
        }
        Node::Neg(x) => match eval_next(x, cx, segments) {
            (Val::Num(v), next) => (Val::Num(-v), next),
            (_, next) => (Val::Missing, next),
        },
        Node::And(l, r) | Node::Or(l, r) => {
            // The value that decides alone: false for `and`, true for `or`.
            let decides = matches!(n, Node::Or(..));
            let (vl, nl) = eval_next(l, cx, segments);
            let l_decides = truth(vl) == decides;
            if l_decides && nl.is_none() {
                return (Val::Bool(decides), None); // for good
            }
            let (vr, nr) = eval_next(r, cx, segments);
            let next = match (l_decides, truth(vr) == decides) {
                // Until both may have changed ("never" if one never does).
                (true, true) => nl.zip(nr).map(|(a, b)| a.max(b)),
                (true, false) => nl,
                (false, true) => nr,
                (false, false) => return (Val::Bool(!decides), earliest(nl, nr)),
            };
            (Val::Bool(decides), next)
        }
        Node::Cmp(op, l, r) => match (&**l, &**r) {
            (x, Node::Num(c)) if !matches!(x, Node::Num(_)) => compared(*op, x, *c, cx, segments),
            (Node::Num(c), x) => compared(op.flipped(), x, *c, cx, segments),
            _ => {
                let (vl, nl) = eval_next(l, cx, segments);
                let (vr, nr) = eval_next(r, cx, segments);
                (Val::Bool(compare(*op, vl, vr)), earliest(nl, nr))
            }
        },
        Node::Arith(op, l, r) => {
            let (vl, nl) = eval_next(l, cx, segments);
            let (vr, nr) = eval_next(r, cx, segments);
            (arith(*op, vl, vr), earliest(nl, nr))
        }
        Node::InList(x, items) => {
            let (v, mut next) = eval_next(x, cx, segments);
            let mut hit = false;
            for item in items {
                let (vi, ni) = eval_next(item, cx, segments);
                hit |= v != Val::Missing && compare(BinOp::Eq, v, vi);
                next = earliest(next, ni);
            }
            (Val::Bool(hit), next)
        }
        _ => (eval(n, cx), None),
    }
}

/// `x op c`: its value, and when it next flips (from the value of `x`, evaluated once).
fn compared<'a>(
    op: BinOp,
    x: &'a Node,
    c: f64,
    cx: &Ctx<'a>,
    segments: &[Option<i64>],
) -> (Val<'a>, Option<i64>) {
    let (current, next) = if crosses(x) {
        let current = eval(x, cx);
        let next = crossing(op, x, current, c, cx).unwrap_or_else(|| next_change(x, cx, segments));
        (current, next)
    } else {
        eval_next(x, cx, segments)
    };
    (Val::Bool(compare(op, current, Val::Num(c))), next)
}

/// Whether [`crossing`] knows when a comparison of `x` with a constant flips.
fn crosses(x: &Node) -> bool {
    matches!(
        x,
        Node::Count(..)
            | Node::Sum(..)
            | Node::CountCategory(..)
            | Node::CountProduct(..)
            | Node::Since(_)
            | Node::CategoryAffinity(_)
            | Node::BrandAffinity(_)
    )
}

/// The series `count`, `sum`, `since` and sequences read for `k`.
fn series_of(p: &Profile, k: Events) -> Option<&crate::window::Series> {
    match k {
        Events::Order => Some(&p.orders.series),
        Events::Type(t) => p.series(t),
    }
}

/// When `x op c` flips, for the nodes whose course in time is known exactly. `None` means "not
/// such a node" (the caller falls back); `Some(None)` means it never flips. `current` is the
/// value of `x` now.
fn crossing(op: BinOp, x: &Node, current: Val, c: f64, cx: &Ctx) -> Option<Option<i64>> {
    let p = cx.profile;
    let now_holds = compare(op, current, Val::Num(c));
    let differs = |v: f64| compare(op, Val::Num(v), Val::Num(c)) != now_holds;
    // A count falling step by step as buckets leave the window (integers: exact). Without
    // events a count only falls: `count >= c` that does not hold now, or `count <= c` that
    // does, never flips (most of a shopper's counts are below a rule's threshold).
    let never = match op {
        BinOp::Ge | BinOp::Gt => !now_holds,
        BinOp::Le | BinOp::Lt => now_holds,
        _ => false,
    };
    let walk = |steps: &mut dyn Iterator<Item = (i64, u64, f64)>| {
        let Val::Num(mut v) = current else {
            return None;
        };
        if never {
            return None;
        }
        for (at, n, _) in steps {
            v -= n as f64;
            if differs(v) {
                return Some(at);
            }
        }
        None
    };
    Some(match x {
        Node::Count(k, w) => series_of(p, *k).and_then(|s| walk(&mut s.expiries(*w, cx.now))),
        // A sum is taken again at each step, as evaluation takes it: subtracting the buckets
        // from the current sum rounds differently (19.99 + 5.01 − 19.99 − 5.01 is not 0), and
        // could put the flip after the time it happens.
        Node::Sum(k, w) => series_of(p, *k).and_then(|s| {
            s.expiries(*w, cx.now)
                .map(|(at, ..)| at)
                .find(|&at| differs(s.query(*w, at).1))
        }),
        Node::CountCategory(k, key, w) | Node::CountProduct(k, key, w) => {
            let list = if matches!(x, Node::CountCategory(..)) {
                &p.by_category
            } else {
                &p.by_product
            };
            list.get_hashed(*k, key, key.hash)
                .and_then(|s| walk(&mut s.series.expiries(*w, cx.now)))
        }
        Node::Since(k) => {
            let last = series_of(p, *k)?.last()?;
            // since = t - last: the comparison can only flip at last + c or one ms later.
            let at = last + c as i64;
            [at, at + 1]
                .into_iter()
                .find(|&t| t > cx.now && differs((t - last) as f64))
        }
        Node::CategoryAffinity(key) | Node::BrandAffinity(key) => {
            let list = if matches!(x, Node::CategoryAffinity(_)) {
                &p.category_affinity
            } else {
                &p.brand_affinity
            };
            let a = list.get_hashed(key, || key.hash)?;
            if c <= 0.0 {
                return Some(None); // a positive score never decays to 0 or below
            }
            // score * 2^(-(t - at) / half-life) = c
            let t =
                a.at as f64 + crate::profile::AFFINITY_HALF_LIFE_MS as f64 * (a.score / c).log2();
            if !t.is_finite() || t >= i64::MAX as f64 / 2.0 {
                return Some(None);
            }
            let t = t.ceil() as i64;
            let found = [t - 1, t, t + 1]
                .into_iter()
                .find(|&u| u > cx.now && differs(a.at(u)));
            // If rounding hid the flip, look again just after it.
            found.or((t + 1 > cx.now).then_some(t + 2))
        }
        _ => return None,
    })
}

// ------------------------------------------------------------------ what an event can change

/// Which parts of a profile a rule reads and an event changes, as bits: one per event type (the
/// counter of that type), then the classes below. A segment whose rule reads nothing an event
/// changes keeps its result through the event (see [`crate::audience::Core::process`]).
pub mod inputs {
    use crate::event::{Event, EventType};
    use crate::profile::{affinity_weight, CART_EVENTS, KEYED_EVENTS, ORDER_EVENTS};

    /// Every event changes it (`events.total`).
    pub const EVERY: u64 = 1 << 48;
    /// The order statistics and the order series (`orders.*`, `count(order, …)`).
    pub const ORDERS: u64 = 1 << 49;
    /// The cart (`cart.*`).
    pub const CART: u64 = 1 << 50;
    /// The profile attributes (loyalty, gender, country, consent …).
    pub const ATTRIBUTES: u64 = 1 << 51;
    /// The identities (`identity.known`).
    pub const IDENTITY: u64 = 1 << 52;
    /// The latest device and channel.
    pub const DEVICE: u64 = 1 << 53;
    /// The per-category and per-product series (a new key may push out any other).
    pub const KEYED: u64 = 1 << 54;
    /// The category and brand affinities (likewise).
    pub const AFFINITY: u64 = 1 << 55;

    const _: () = assert!(
        EventType::ALL.len() <= 48,
        "one bit per event type below EVERY"
    );

    /// The counter of one event type.
    pub fn kind(k: EventType) -> u64 {
        1 << k.index()
    }

    /// What `ev` may change of a profile, [`crate::profile::Profile::apply`] and the identity
    /// links before it: a superset (an event that carries a device changes the device class even
    /// when the device is the same).
    pub fn of_event(ev: &Event) -> u64 {
        let mut m = EVERY | kind(ev.kind);
        if ORDER_EVENTS.contains(&ev.kind) {
            m |= ORDERS;
        }
        if CART_EVENTS.contains(&ev.kind) {
            m |= CART;
        }
        if ev.attributes.is_some() {
            m |= ATTRIBUTES;
        }
        if ev.identity.customer_id.is_some() || ev.identity.email.is_some() {
            m |= IDENTITY;
        }
        if ev.device.is_some() || ev.channel.is_some() {
            m |= DEVICE;
        }
        if !ev.lines.is_empty() {
            if KEYED_EVENTS.contains(&ev.kind) {
                m |= KEYED;
            }
            if affinity_weight(ev.kind) > 0.0 {
                m |= AFFINITY;
            }
        }
        m
    }
}

fn attr_inputs(a: Attr) -> u64 {
    use Attr::*;
    match a {
        OrdersCount | OrdersRevenue | OrdersLtv | OrdersAov | OrdersCancelled
        | OrdersCancelledValue | OrdersReturns | OrdersRefunded => inputs::ORDERS,
        CartItems | CartQuantity | CartValue => inputs::CART,
        EventsTotal => inputs::EVERY,
        LoyaltyPoints | LoyaltyTier | LoyaltyStatus | Gender | Country | City | CustomerGroup
        | ConsentEmail | ConsentSms => inputs::ATTRIBUTES,
        Device | Channel => inputs::DEVICE,
        IdentityKnown => inputs::IDENTITY,
    }
}

fn events_inputs(e: &Events) -> u64 {
    match e {
        Events::Order => inputs::ORDERS,
        Events::Type(t) => inputs::kind(*t),
    }
}

/// What the node reads of a profile ([`inputs`]); `segments` holds the inputs of the segments
/// before it (`in_segment` reads what they read).
pub fn inputs_of(n: &Node, segments: &[u64]) -> u64 {
    match n {
        Node::Num(_) | Node::Str(_) | Node::Bool(_) => 0,
        Node::Attr(a) | Node::Exists(a) => attr_inputs(*a),
        Node::Count(e, _) | Node::Sum(e, _) | Node::Since(e) => events_inputs(e),
        Node::Seq { first, second, .. } => {
            let first = match first {
                Step::Events(e) => events_inputs(e),
                Step::Category(kind, _) => inputs::KEYED | inputs::kind(*kind),
            };
            first | events_inputs(second)
        }
        Node::CountCategory(..) | Node::CountProduct(..) => inputs::KEYED,
        Node::CategoryAffinity(_) | Node::BrandAffinity(_) | Node::TopCategory | Node::TopBrand => {
            inputs::AFFINITY
        }
        // Out of range only while reporting errors: then it reads everything.
        Node::Segment(i) => segments.get(*i).copied().unwrap_or(u64::MAX),
        Node::Not(x) | Node::Neg(x) => inputs_of(x, segments),
        Node::And(a, b) | Node::Or(a, b) | Node::Cmp(_, a, b) | Node::Arith(_, a, b) => {
            inputs_of(a, segments) | inputs_of(b, segments)
        }
        Node::InList(x, items) => items
            .iter()
            .fold(inputs_of(x, segments), |m, i| m | inputs_of(i, segments)),
    }
}

#[cfg(test)]
mod tests {
    use super::{render_decimal, render_duration, Type, Value, DURATION_UNITS};

    /// What `render_duration` wrote before it built its text in place (parts joined).
    fn duration_joined(ms: f64) -> String {
        let sign = if ms < 0.0 { "-" } else { "" };
        let mut rest = ms.abs().round() as i64;
        if rest == 0 {
            return "0ms".into();
        }
        let mut parts = Vec::new();
        for (unit, size) in DURATION_UNITS {
            if rest >= size {
                parts.push(format!("{}{unit}", rest / size));
                rest %= size;
            }
        }
        format!("{sign}{}", parts.join(" "))
    }

    #[test]
    fn durations_read_as_days_hours_minutes_seconds_and_milliseconds() {
        assert_eq!(render_duration(90_061_001.0), "1d 1h 1m 1s 1ms");
        assert_eq!(render_duration(-3_600_000.0), "-1h");
        assert_eq!(render_duration(-7_500_000.0), "-2h 5m");
        assert_eq!(render_duration(0.4), "0ms");
        assert_eq!(render_duration(1e15), "11574074d 1h 46m 40s");
        for ms in [
            -0.4,
            -0.5,
            0.5,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            assert_eq!(render_duration(ms), duration_joined(ms), "{ms}");
        }
        assert_eq!(render_duration(-0.5), "-1ms");
        assert_eq!(render_duration(f64::NAN), "0ms");
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Magnitudes from milliseconds to about 300 years (bits 0-3), either sign (bit 4),
            // whole or not (bit 5), each independent of the others.
            let whole = (x >> 8) % 10u64.pow(1 + ((x & 0xF) % 13) as u32);
            let ms = whole as f64 / if x & 1 << 5 == 0 { 1.0 } else { 7.0 };
            let ms = if x & 1 << 4 == 0 { ms } else { -ms };
            assert_eq!(render_duration(ms), duration_joined(ms), "{ms}");
        }
    }

    #[test]
    fn values_render_as_people_read_them() {
        let cases: [(Value, Type, &str); 13] = [
            (Value::Num(3.0), Type::Num, "3"),
            (Value::Num(-12.0), Type::Num, "-12"),
            (Value::Num(2.5), Type::Num, "2.5"),
            (Value::Num(7_200_000.0), Type::Dur, "2h"),
            (Value::Bool(true), Type::Bool, "true"),
            (Value::Bool(false), Type::Bool, "false"),
            (Value::Missing, Type::Num, "missing"),
            (Value::Str("a \"b\"".into()), Type::Str, "\"a \\\"b\\\"\""),
            (Value::Num(f64::NAN), Type::Num, "NaN"),
            (Value::Num(f64::INFINITY), Type::Num, "inf"),
            (Value::Num(f64::NEG_INFINITY), Type::Num, "-inf"),
            (Value::Num(-0.00016), Type::Num, "-0.0002"),
            (Value::Num(1e15), Type::Num, "1000000000000000"),
        ];
        for (v, ty, text) in cases {
            assert_eq!(v.render(ty), text, "{v:?}");
        }
        for i in [
            0i64,
            1,
            -1,
            999_999_999_999_999,
            -999_999_999_999_999,
            123_456_789,
        ] {
            assert_eq!(Value::Num(i as f64).render(Type::Num), i.to_string());
        }
    }

    fn four_decimals(v: f64) -> String {
        format!("{:.4}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }

    #[test]
    fn decimals_are_written_as_four_decimal_formatting_writes_them() {
        // Scores, sums and averages as rules meet them, and a spread of magnitudes.
        let mut values = vec![
            0.3,
            0.1 + 0.2,
            -0.3,
            1.999987966267188,
            150.71,
            2.99999,
            0.00001,
            -0.00001,
            123456.78915,
            99_999_999_999.5,
            9_999_999.999_95,
            0.00005,
            -0.00015,
            1e12 + 0.25,
            -7.25e13,
        ];
        // A deterministic pseudo-random spread (xorshift), from 1e-6 to 1e8, both signs.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mantissa = (x >> 11) as f64 / (1u64 << 53) as f64;
            let exp = (x % 15) as i32 - 6;
            let sign = if x & 1 << 20 == 0 { 1.0 } else { -1.0 };
            values.push(sign * mantissa * 10f64.powi(exp));
        }
        let mut differ = Vec::new();
        for v in values {
            if render_decimal(v) != four_decimals(v) {
                differ.push((v, render_decimal(v), four_decimals(v)));
            }
        }
        assert!(
            differ.is_empty(),
            "{} differ: {:?}",
            differ.len(),
            &differ[..differ.len().min(5)]
        );
    }
}
