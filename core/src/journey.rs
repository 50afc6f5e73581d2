//! Journey triggers: "start journey X for this shopper", declared next to the segments.
//!
//! ```yaml
//! journeys:
//!   - id: abandoned-cart
//!     on_enter: cart-abandoners     # or on_exit: SEGMENT, or on_event: EVENT (or a list)
//!     when: cart.value >= 20        # optional condition on the profile at that moment
//!     reentry_wait: 7d              # no second trigger for the same shopper within 7 days
//!     consent: email                # email | sms | none (default none)
//! ```
//!
//! A journey triggers at most once per cause: per segment entry or exit (the audience change),
//! per order id for order events (the storefront's completeCheckout and the back office's
//! orderPlaced of one order are one cause), per event (its id and input position) otherwise. The trigger carries the
//! contact points the shopper's consent allows and the context the journey needs: the cart, the
//! order of the triggering event, the products viewed last. Synchronous, no I/O.

use xxhash_rust::xxh3::xxh3_64;

use crate::event::{Event, EventType, Line};
use crate::profile::{JourneyState, Profile, JOURNEY_CAUSES};
use crate::segments::Node;
use crate::wire::{CartLine, ContactPoints, JourneyContext};

/// What starts a journey.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// Any of these event types.
    Event(Vec<EventType>),
    /// Entering the segment (index into the compiled segments).
    Enter(usize),
    /// Exiting the segment.
    Exit(usize),
}

/// Consent a journey needs before it may contact the shopper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    None,
    Email,
    Sms,
}

/// One compiled journey definition.
#[derive(Debug, Clone)]
pub struct Journey {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub trigger: Trigger,
    /// Optional condition, evaluated with the segment results of the same moment.
    pub when: Option<Node>,
    /// Shortest time between two triggers for one shopper, ms (0: no wait).
    pub reentry_wait: i64,
    pub consent: Consent,
}

/// Why a journey that matched did not trigger (the `reason` label of
/// `tailor_journey_suppressed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressed {
    /// Triggered for the shopper less than `reentry_wait` ago.
    ReentryWait,
    /// The shopper has not opted in to the journey's channel.
    Consent,
    /// This cause already triggered the journey (an order seen from both families).
    DuplicateCause,
}

impl Suppressed {
    pub const ALL: [Suppressed; 3] = [
        Suppressed::ReentryWait,
        Suppressed::Consent,
        Suppressed::DuplicateCause,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Suppressed::ReentryWait => "reentry_wait",
            Suppressed::Consent => "consent",
            Suppressed::DuplicateCause => "duplicate_cause",
        }
    }
}

impl Journey {
    /// Decides whether the journey may trigger now for `cause` and, if so, records it in the
    /// profile (re-entry wait, cause). Call only when the trigger and the condition matched.
    pub fn admit(&self, profile: &mut Profile, cause: &str, at: i64) -> Result<(), Suppressed> {
        let hash = xxh3_64(cause.as_bytes());
        let pos = profile
            .journeys
            .binary_search_by(|j| j.journey.as_str().cmp(&self.id));
        if let Ok(i) = pos {
            let state = &profile.journeys[i];
            if state.causes.contains(&hash) {
                return Err(Suppressed::DuplicateCause);
            }
            if self.reentry_wait > 0 && at < state.last_at.saturating_add(self.reentry_wait) {
                return Err(Suppressed::ReentryWait);
            }
        }
        let a = &profile.attributes;
        let consented = match self.consent {
            Consent::None => true,
            Consent::Email => a.consent_email == Some(true),
            Consent::Sms => a.consent_sms == Some(true),
        };
        if !consented {
            return Err(Suppressed::Consent);
        }
        let i = match pos {
            Ok(i) => i,
            Err(i) => {
                crate::profile::room_for_one(&mut profile.journeys);
                profile.journeys.insert(
                    i,
                    JourneyState {
                        journey: self.id.as_str().into(),
                        last_at: at,
                        causes: Vec::new(),
                    },
                );
                i
            }
        };
        let state = &mut profile.journeys[i];
        state.last_at = state.last_at.max(at);
        if state.causes.len() >= JOURNEY_CAUSES {
            state.causes.remove(0);
        }
        crate::profile::room_for_one(&mut state.causes);
        state.causes.push(hash);
        Ok(())
    }
}

/// The contact points the shopper's consent allows (none without an explicit opt-in).
pub fn contact(p: &Profile) -> ContactPoints {
    let a = &p.attributes;
    ContactPoints {
        email: (a.consent_email == Some(true))
            .then(|| {
                a.email
                    .clone()
                    .or_else(|| p.identities.emails.last().cloned())
            })
            .flatten(),
        phone: (a.consent_sms == Some(true))
            .then(|| a.phone.clone())
            .flatten(),
    }
}

fn cart_line(l: &Line) -> CartLine {
    CartLine {
        sku: l.sku.to_string(),
        name: l.name.clone(),
        quantity: l.quantity,
        price: l.price,
        image_url: l.image_url.clone(),
        url: l.url.clone(),
    }
}

/// Most lines in each list of a journey's context (cart, order, products viewed): a trigger stays
/// a bounded record however large the cart or the order. `cartValue` and `orderTotal` are
/// always the whole amounts.
pub const MAX_CONTEXT_LINES: usize = 25;

/// What a journey needs to act: the cart, the order of the triggering event (if it is an
/// order), the products viewed last (latest first).
pub fn context(p: &Profile, ev: Option<&Event>) -> JourneyContext {
    let order = ev.filter(|e| {
        e.order_id.is_some()
            && matches!(
                e.kind,
                EventType::OrderPlaced | EventType::CompleteCheckout | EventType::OrderInvoiced
            )
    });
    let n = MAX_CONTEXT_LINES;
    JourneyContext {
        cart_items: p.cart.lines.iter().take(n).map(cart_line).collect(),
        cart_value: (!p.cart.lines.is_empty()).then(|| p.cart.value()),
        order_id: order.and_then(|e| e.order_id.clone()),
        order_total: order.map(|e| e.value),
        order_items: order.map_or_else(Vec::new, |e| {
            e.lines.iter().take(n).map(cart_line).collect()
        }),
        products_viewed: p
            .recent_products
            .iter()
            .rev()
            .take(n)
            .map(cart_line)
            .collect(),
        currency_code: ev
            .and_then(|e| e.currency.as_deref())
            .or(p.currency.as_deref())
            .map(str::to_owned),
    }
}

/// The cause key of an event trigger: the order id for order events (an order triggers once
/// whichever events report it), else the event id and where it was read (a reused event id
/// is another cause).
pub fn event_cause(ev: &Event, source: Option<&crate::audience::Source>) -> String {
    match (&ev.order_id, ev.kind, source) {
        (
            Some(order),
            EventType::OrderPlaced | EventType::CompleteCheckout | EventType::OrderInvoiced,
            _,
        ) => format!("order:{order}"),
        (_, _, Some(s)) => format!("event:{}", s.cause_id(&ev.id)),
        _ => format!("event:{}", ev.id),
    }
}
