//! The core's view of an input event: one shape for all three families, validated.
//!
//! [`Event::from_input`] maps the platform's wire shapes ([`crate::wire`]) onto it, resolving the
//! platform's discrepancies (see the event reference, section 9): SDK and docs names of the same
//! event, `orderCanceled` / `orderCancelled`, line totals versus unit prices.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::{Family, InputMessage};
use crate::layout::read::{self, Decode};
use crate::layout::state_fields;
use crate::layout::write::{self, Encode};
use crate::wire::{self, Identity};

macro_rules! event_types {
    ($($variant:ident => $family:ident, $name:literal, [$($alias:literal),*];)*) => {
        /// Every event type Tailor understands. The discriminant is stable: it is stored in state.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[repr(u8)]
        pub enum EventType { $($variant),* }

        impl EventType {
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),*];

            /// The platform's documented name, used in rules, metrics and outputs.
            pub fn name(self) -> &'static str {
                match self { $(EventType::$variant => $name),* }
            }

            pub fn family(self) -> Family {
                match self { $(EventType::$variant => Family::$family),* }
            }

            /// Parses a documented name or one of its accepted spellings (SDK names, XDM types).
            pub fn parse(s: &str) -> Option<EventType> {
                match s {
                    $($name $(| $alias)* => Some(EventType::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

event_types! {
    PageView => Storefront, "pageView", ["page-view", "web.webpagedetails.pageViews"];
    ProductPageView => Storefront, "productPageView", ["productView", "product-page-view", "commerce.productViews"];
    SearchRequestSent => Storefront, "searchRequestSent", ["search-request-sent", "searchRequest"];
    SearchResponseReceived => Storefront, "searchResponseReceived", ["search-response-received", "searchResponse"];
    AddToCart => Storefront, "addToCart", ["add-to-cart", "commerce.productListAdds"];
    RemoveFromCart => Storefront, "removeFromCart", ["remove-from-cart", "commerce.productListRemovals"];
    OpenCart => Storefront, "openCart", ["open-cart", "commerce.productListOpens"];
    ShoppingCartView => Storefront, "shoppingCartView", ["viewCart", "shopping-cart-view", "commerce.productListViews"];
    StartCheckout => Storefront, "startCheckout", ["initiateCheckout", "initiate-checkout", "commerce.checkouts"];
    CompleteCheckout => Storefront, "completeCheckout", ["placeOrder", "place-order", "commerce.purchases"];
    SignIn => Storefront, "signIn", ["sign-in", "userAccount.login"];
    SignOut => Storefront, "signOut", ["sign-out", "userAccount.logout"];
    CreateAccount => Storefront, "createAccount", ["create-account", "userAccount.createProfile"];
    EditAccount => Storefront, "editAccount", ["edit-account", "userAccount.updateProfile"];
    CreateRequisitionList => Storefront, "createRequisitionList", ["create-requisition-list", "commerce.requisitionListOpens"];
    AddToRequisitionList => Storefront, "addToRequisitionList", ["add-to-requisition-list", "commerce.requisitionListAdds"];
    RemoveFromRequisitionList => Storefront, "removeFromRequisitionList", ["remove-from-requisition-list", "commerce.requisitionListRemovals", "commerce.requsitionListRemovals"];
    DeleteRequisitionList => Storefront, "deleteRequisitionList", ["delete-requisition-list", "commerce.requisitionListDeletes"];
    OrderPlaced => Backoffice, "orderPlaced", ["commerce.backofficeOrderPlaced"];
    OrderInvoiced => Backoffice, "orderInvoiced", ["commerce.backofficeOrderInvoiced"];
    OrderItemsShipped => Backoffice, "orderItemsShipped", ["commerce.backofficeOrderItemsShipped"];
    OrderCancelled => Backoffice, "orderCancelled", ["orderCanceled", "commerce.backofficeOrderCancelled"];
    OrderLineItemRefunded => Backoffice, "orderLineItemRefunded", ["commerce.backofficeCreditMemoIssued"];
    OrderItemsReturnInitiated => Backoffice, "orderItemsReturnInitiated", ["orderItemsReturnsInitiated", "commerce.backofficeOrderItemsReturnInitiated"];
    OrderItemReturnCompleted => Backoffice, "orderItemReturnCompleted", ["commerce.backofficeOrderItemsReturnCompleted"];
    OrderShipmentCompleted => Backoffice, "orderShipmentCompleted", ["commerce.backofficeOrderShipmentCompleted", "commerce.backofficeShipmentCompleted"];
    ProfileRecord => Profile, "profileRecord", ["profile"];
    AccountCreated => Profile, "accountCreated", ["userAccount.backofficeCreateProfile"];
    AccountUpdated => Profile, "accountUpdated", ["userAccount.backofficeUpdateProfile"];
    AccountDeleted => Profile, "accountDeleted", ["userAccount.backofficeDeleteProfile"];
}

impl EventType {
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A product line: a cart item, an order line, a product viewed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// SKU, category and brand inline up to 24 bytes (most of them): a profile keeps the latest
    /// products viewed, and decoding, copying and dropping their strings were about a third of a
    /// new shopper's allocations. Encoded as strings are.
    pub sku: CompactString,
    pub name: Option<String>,
    /// Quantity and price: compact in the profile's state since version 6 (most are whole
    /// numbers or whole cents).
    #[serde(with = "crate::layout::compact_f64")]
    pub quantity: f64,
    /// Unit price.
    #[serde(default, with = "crate::layout::compact_f64::option")]
    pub price: Option<f64>,
    pub image_url: Option<String>,
    pub url: Option<String>,
    pub category: Option<CompactString>,
    pub brand: Option<CompactString>,
}

impl Line {
    pub fn total(&self) -> f64 {
        self.price.unwrap_or(0.0) * self.quantity
    }

    /// Makes `self` a copy of `from`, reusing its strings' allocations (the derived
    /// `clone_from` replaces the whole line).
    pub fn copy_from(&mut self, from: &Line) {
        let Line {
            sku,
            name,
            quantity,
            price,
            image_url,
            url,
            category,
            brand,
        } = from;
        self.sku.clone_from(sku);
        self.name.clone_from(name);
        self.quantity = *quantity;
        self.price = *price;
        self.image_url.clone_from(image_url);
        self.url.clone_from(url);
        self.category.clone_from(category);
        self.brand.clone_from(brand);
    }
}

/// Every field, in order (`layout/write.rs`).
impl Encode for Line {
    fn encode(&self, out: &mut Vec<u8>) {
        let Line {
            sku,
            name,
            quantity,
            price,
            image_url,
            url,
            category,
            brand,
        } = self;
        sku.encode(out);
        name.encode(out);
        write::compact_f64(out, *quantity);
        write::compact_f64_option(out, *price);
        image_url.encode(out);
        url.encode(out);
        category.encode(out);
        brand.encode(out);
    }
}

impl Decode for Line {
    fn decode(r: &mut read::Reader<'_>) -> Result<Line, read::Bad> {
        Ok(Line {
            sku: Decode::decode(r)?,
            name: Decode::decode(r)?,
            quantity: read::compact_f64(r)?,
            price: read::compact_f64_option(r)?,
            image_url: Decode::decode(r)?,
            url: Decode::decode(r)?,
            category: Decode::decode(r)?,
            brand: Decode::decode(r)?,
        })
    }
}

/// Sum of money amounts. (`Iterator::sum` of no floats is -0.0, which would show in outputs.)
pub fn total(amounts: impl IntoIterator<Item = f64>) -> f64 {
    amounts.into_iter().fold(0.0, |a, b| a + b)
}

/// Profile attributes carried by profile events and account contexts. Personal data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attributes {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub gender: Option<String>,
    pub birth_date: Option<String>,
    pub country: Option<String>,
    pub city: Option<String>,
    pub loyalty_tier: Option<String>,
    pub loyalty_status: Option<String>,
    pub loyalty_points: Option<f64>,
    pub customer_group: Option<String>,
    pub consent_email: Option<bool>,
    pub consent_sms: Option<bool>,
}

state_fields!(Attributes {
    first_name,
    last_name,
    email,
    phone,
    gender,
    birth_date,
    country,
    city,
    loyalty_tier,
    loyalty_status,
    loyalty_points,
    customer_group,
    consent_email,
    consent_sms
});

/// One validated input event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub kind: EventType,
    /// Event time, ms since the Unix epoch.
    pub time: i64,
    pub identity: Identity,
    /// Money the event is worth: order total, value added to or removed from the cart, refund.
    pub value: f64,
    pub device: Option<CompactString>,
    pub channel: Option<CompactString>,
    /// Lines this event is about (changed cart items, order lines, the product viewed).
    pub lines: Vec<Line>,
    /// The whole cart after the event, where the event carries it.
    pub cart: Option<Cart>,
    pub order_id: Option<String>,
    pub search_phrase: Option<String>,
    pub search_results: Option<u32>,
    /// A profile record's or an account context's attributes. Out of line: most events carry
    /// none, and an event moves by value from its decoding to its profile (656 bytes with them
    /// inline, 376 boxed; decode + apply + evaluate 14,880 -> 14,760 instructions per sample
    /// event, `scripts/icount.sh`).
    pub attributes: Option<Box<Attributes>>,
    /// The store and store view the event names (storefront instance, commerce scope).
    pub store_code: Option<CompactString>,
    pub store_view_code: Option<CompactString>,
    /// The currency of its amounts (the store view's, the order's, or its lines').
    pub currency: Option<CompactString>,
}

/// The cart as the storefront last reported it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cart {
    pub id: Option<String>,
    pub lines: Vec<Line>,
}

/// Why an event was rejected. Bad input: dead-letter and go on.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum InvalidEvent {
    #[error("unknown event type {0:?} for the {1} family")]
    UnknownType(String, &'static str),
    #[error("event carries no identity (ecid, customerId or email) and no message key")]
    NoIdentity,
    #[error("empty eventId")]
    NoEventId,
    #[error("event time {0} ms is outside the accepted range")]
    BadTime(i64),
    #[error("{0} is missing {1}")]
    MissingField(&'static str, &'static str),
    #[error("{0} is not a finite number")]
    NotFinite(&'static str),
    #[error("{0} is {1} bytes long (at most {2})")]
    TooLong(&'static str, usize, usize),
    #[error("{0} has {1} items (at most {2})")]
    TooMany(&'static str, usize, usize),
    #[error("{0} is negative ({1})")]
    Negative(&'static str, f64),
}

impl InvalidEvent {
    /// Every code [`Self::code`] returns.
    pub const CODES: &'static [&'static str] = &[
        "unknown_event_type",
        "no_identity",
        "no_event_id",
        "bad_event_time",
        "missing_field",
        "not_finite",
        "field_too_long",
        "too_many_items",
        "negative_value",
    ];

    /// Low-cardinality class for the dead-letter reason code and metric label.
    pub fn code(&self) -> &'static str {
        match self {
            InvalidEvent::UnknownType(..) => "unknown_event_type",
            InvalidEvent::NoIdentity => "no_identity",
            InvalidEvent::NoEventId => "no_event_id",
            InvalidEvent::BadTime(_) => "bad_event_time",
            InvalidEvent::MissingField(..) => "missing_field",
            InvalidEvent::NotFinite(_) => "not_finite",
            InvalidEvent::TooLong(..) => "field_too_long",
            InvalidEvent::TooMany(..) => "too_many_items",
            InvalidEvent::Negative(..) => "negative_value",
        }
    }
}

/// Longest identity value, event id, order id, cart id or SKU.
pub const MAX_ID_BYTES: usize = 512;
/// Longest free-text field (product name, category, brand, search phrase, profile attribute).
pub const MAX_TEXT_BYTES: usize = 512;
/// Longest product or image URL.
pub const MAX_URL_BYTES: usize = 1024;
/// Largest accepted input message value. An event travels whole through the repartition topic
/// (with a whole profile when it causes a merge), so it must leave room below the broker's
/// record limit (1 MB by default).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Most product lines in one event (and in its cart).
pub const MAX_LINES: usize = 500;

/// Earliest accepted event time: 2000-01-01T00:00:00Z.
pub const MIN_EVENT_TIME: i64 = 946_684_800_000;
/// How far ahead of the processing clock an event time may be.
pub const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;

fn finite(v: Option<f64>, what: &'static str) -> Result<Option<f64>, InvalidEvent> {
    match v {
        Some(x) if !x.is_finite() => Err(InvalidEvent::NotFinite(what)),
        other => Ok(other),
    }
}

fn non_empty<S: AsRef<str>>(s: Option<S>) -> Option<S> {
    s.filter(|s| !blank(s.as_ref()))
}

/// Empty or only whitespace. Most strings start with a character that is neither, which
/// answers without trimming (`trim` walks from both ends, decoding characters).
fn blank(s: &str) -> bool {
    match s.as_bytes().first() {
        // `char::is_whitespace`, which `trim` uses, not `u8::is_ascii_whitespace` (which leaves
        // out the vertical tab).
        Some(&b) if b.is_ascii() && !char::from(b).is_whitespace() => false,
        _ => s.trim().is_empty(),
    }
}

/// ASCII without capitals: enough to know `str::to_lowercase` would leave `s` as it is (most
/// device types, channels and e-mails), so no lower-cased `String` is allocated.
fn is_lower_ascii(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase())
}

/// `s` lower-cased, inline up to 24 bytes.
fn lower(s: &str) -> CompactString {
    if is_lower_ascii(s) {
        CompactString::new(s)
    } else {
        s.to_lowercase().into()
    }
}

/// A device type as the profile keeps it: lower-cased.
fn device(s: CompactString) -> CompactString {
    if is_lower_ascii(&s) {
        s
    } else {
        s.to_lowercase()
    }
}

/// A channel as the profile keeps it: lower-cased, an XDM channel type
/// (`https://ns.adobe.com/xdm/channel-types/web`) by its last segment.
fn channel(t: &str) -> CompactString {
    lower(t.rsplit('/').next().unwrap_or(t))
}

/// An e-mail trimmed and lower-cased, the same string when it already is.
fn email(s: String) -> String {
    if s.len() == s.trim().len() && is_lower_ascii(&s) {
        s
    } else {
        s.trim().to_lowercase()
    }
}

/// An e-mail as Tailor keeps and compares it everywhere: trimmed and lower-cased.
pub fn normalise_email(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_lowercase())
}

/// A phone number as Tailor keeps it: trimmed, without the spaces, dots, dashes and brackets
/// people write between digits (a leading `+` stays).
pub fn normalise_phone(s: &str) -> Option<String> {
    let t: String = s
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '.' | '-' | '(' | ')' | '\u{a0}'))
        .collect();
    (!t.is_empty()).then_some(t)
}

fn cart_line(item: wire::ShoppingCartItem) -> Result<Line, InvalidEvent> {
    let price = finite(item.prices.map(|p| p.price.value), "cart item price")?;
    if !item.quantity.is_finite() {
        return Err(InvalidEvent::NotFinite("cart item quantity"));
    }
    Ok(Line {
        category: item.product.categories.into_iter().next(),
        brand: non_empty(item.product.manufacturer),
        sku: item.product.sku,
        name: item.product.name,
        quantity: item.quantity,
        price,
        image_url: item.product.main_image_url,
        url: item.product.canonical_url,
    })
}

fn product_line(p: wire::ProductContext) -> Result<Line, InvalidEvent> {
    let price = finite(
        p.pricing
            .as_ref()
            .and_then(|pr| pr.special_price.or(pr.regular_price)),
        "product price",
    )?;
    Ok(Line {
        category: p.categories.into_iter().next(),
        brand: non_empty(p.manufacturer),
        sku: p.sku,
        name: p.name,
        quantity: 1.0,
        price,
        image_url: p.main_image_url,
        url: p.canonical_url,
    })
}

fn list_item_line(item: wire::ProductListItem) -> Result<Line, InvalidEvent> {
    let quantity = finite(item.quantity, "line quantity")?.unwrap_or(1.0);
    let total = finite(item.price_total, "line priceTotal")?;
    // priceTotal is a line total on order items: keep unit prices in Line.
    let price = total.map(|t| if quantity != 0.0 { t / quantity } else { t });
    Ok(Line {
        category: item
            .categories
            .into_iter()
            .find_map(|c| c.path.or(c.name).or(c.id)),
        sku: item.sku,
        name: item.name,
        quantity,
        price,
        image_url: item.product_image_url,
        url: None,
        brand: None,
    })
}

fn address_parts(a: Option<&wire::Address>) -> (Option<String>, Option<String>) {
    a.map(|a| (non_empty(a.country.clone()), non_empty(a.city.clone())))
        .unwrap_or((None, None))
}

fn consent(v: Option<&String>) -> Option<bool> {
    match v.map(|s| s.to_ascii_lowercase()) {
        Some(s) if s == "y" || s == "yes" || s == "in" || s == "true" => Some(true),
        Some(s) if s == "n" || s == "no" || s == "out" || s == "false" => Some(false),
        _ => None,
    }
}

impl Event {
    /// Maps a decoded message onto the core's event and validates it. `now` is the processing
    /// clock (wall time), used only to reject absurd future timestamps.
    pub fn from_input(msg: InputMessage, now: i64) -> Result<Event, InvalidEvent> {
        let mut ev = match msg {
            InputMessage::Storefront(e) => Self::from_storefront(e)?,
            InputMessage::Backoffice(e) => Self::from_backoffice(e)?,
            InputMessage::Profile(e) => Self::from_profile(e)?,
        };
        if blank(&ev.id) {
            return Err(InvalidEvent::NoEventId);
        }
        if ev.time < MIN_EVENT_TIME || ev.time > now.saturating_add(MAX_FUTURE_MS) {
            return Err(InvalidEvent::BadTime(ev.time));
        }
        if !ev.value.is_finite() {
            return Err(InvalidEvent::NotFinite("event value"));
        }
        ev.check_sizes()?;
        ev.check_amounts()?;
        if let Some(a) = &mut ev.attributes {
            a.email = a.email.as_deref().and_then(normalise_email);
            a.phone = a.phone.as_deref().and_then(normalise_phone);
        }
        Ok(ev)
    }

    /// No negative quantity or price on any line (a negative quantity times a negative price
    /// would count as a positive cart value).
    pub fn check_amounts(&self) -> Result<(), InvalidEvent> {
        let lines = self
            .lines
            .iter()
            .chain(self.cart.iter().flat_map(|c| c.lines.iter()));
        for l in lines {
            if l.quantity < 0.0 {
                return Err(InvalidEvent::Negative("line quantity", l.quantity));
            }
            if let Some(p) = l.price.filter(|p| *p < 0.0) {
                return Err(InvalidEvent::Negative("line price", p));
            }
        }
        Ok(())
    }

    /// Every identity and free-text field within its cap, and at most [`MAX_LINES`] lines: what
    /// an event brings into a profile, a journey's context or a repartition message stays far
    /// below the broker's record size, whatever the producer sends.
    pub fn check_sizes(&self) -> Result<(), InvalidEvent> {
        fn cap(field: &'static str, v: Option<&str>, max: usize) -> Result<(), InvalidEvent> {
            match v {
                Some(s) if s.len() > max => Err(InvalidEvent::TooLong(field, s.len(), max)),
                _ => Ok(()),
            }
        }
        fn lines(what: &'static str, lines: &[Line]) -> Result<(), InvalidEvent> {
            if lines.len() > MAX_LINES {
                return Err(InvalidEvent::TooMany(what, lines.len(), MAX_LINES));
            }
            for l in lines {
                cap("sku", Some(&l.sku), MAX_ID_BYTES)?;
                cap("product name", l.name.as_deref(), MAX_TEXT_BYTES)?;
                cap("category", l.category.as_deref(), MAX_TEXT_BYTES)?;
                cap("brand", l.brand.as_deref(), MAX_TEXT_BYTES)?;
                cap("product url", l.url.as_deref(), MAX_URL_BYTES)?;
                cap("image url", l.image_url.as_deref(), MAX_URL_BYTES)?;
            }
            Ok(())
        }
        cap("eventId", Some(&self.id), MAX_ID_BYTES)?;
        cap("storeCode", self.store_code.as_deref(), MAX_ID_BYTES)?;
        cap(
            "storeViewCode",
            self.store_view_code.as_deref(),
            MAX_ID_BYTES,
        )?;
        cap("currency", self.currency.as_deref(), MAX_ID_BYTES)?;
        cap("identity.ecid", self.identity.ecid.as_deref(), MAX_ID_BYTES)?;
        cap(
            "identity.email",
            self.identity.email.as_deref(),
            MAX_ID_BYTES,
        )?;
        cap(
            "identity.customerId",
            self.identity.customer_id.as_deref(),
            MAX_ID_BYTES,
        )?;
        cap("order id", self.order_id.as_deref(), MAX_ID_BYTES)?;
        cap("device", self.device.as_deref(), MAX_TEXT_BYTES)?;
        cap("channel", self.channel.as_deref(), MAX_TEXT_BYTES)?;
        cap(
            "search phrase",
            self.search_phrase.as_deref(),
            MAX_TEXT_BYTES,
        )?;
        lines("lines", &self.lines)?;
        if let Some(cart) = &self.cart {
            cap("cart id", cart.id.as_deref(), MAX_ID_BYTES)?;
            lines("cart", &cart.lines)?;
        }
        if let Some(a) = &self.attributes {
            for (field, v) in [
                ("first name", &a.first_name),
                ("last name", &a.last_name),
                ("email", &a.email),
                ("phone", &a.phone),
                ("gender", &a.gender),
                ("birth date", &a.birth_date),
                ("country", &a.country),
                ("city", &a.city),
                ("loyalty tier", &a.loyalty_tier),
                ("loyalty status", &a.loyalty_status),
                ("customer group", &a.customer_group),
            ] {
                cap(field, v.as_deref(), MAX_TEXT_BYTES)?;
            }
        }
        Ok(())
    }

    /// An event with only its id, type, time and (normalised) identities; the rest empty.
    pub fn base(id: String, kind: EventType, time: i64, identity: Identity) -> Event {
        Event {
            id,
            kind,
            time,
            identity: Identity {
                ecid: non_empty(identity.ecid),
                customer_id: non_empty(identity.customer_id),
                email: non_empty(identity.email).map(email),
            },
            value: 0.0,
            device: None,
            channel: None,
            lines: Vec::new(),
            cart: None,
            order_id: None,
            search_phrase: None,
            search_results: None,
            attributes: None,
            store_code: None,
            store_view_code: None,
            currency: None,
        }
    }

    fn from_storefront(e: Box<wire::StorefrontEvent>) -> Result<Event, InvalidEvent> {
        let kind = EventType::parse(&e.event_type)
            .filter(|k| k.family() == Family::Storefront)
            .ok_or_else(|| InvalidEvent::UnknownType(e.event_type.to_string(), "storefront"))?;
        let mut ev = Event::base(e.event_id, kind, e.timestamp, e.identity);
        if let Some(s) = e.storefront_instance_context {
            ev.store_code = non_empty(s.store_code);
            ev.store_view_code = non_empty(s.store_view_code);
            ev.currency = non_empty(s.store_view_currency_code);
        }
        ev.device = e.device_context.and_then(|d| non_empty(d.kind)).map(device);
        ev.channel = e
            .channel_context
            .and_then(|c| non_empty(c.kind))
            .map(|t| channel(&t));
        if let Some(cart) = e.shopping_cart_context {
            let lines = cart
                .items
                .into_iter()
                .map(cart_line)
                .collect::<Result<Vec<_>, _>>()?;
            ev.cart = Some(Cart { id: cart.id, lines });
        }
        if let Some(changed) = e.changed_products_context {
            ev.lines = changed
                .items
                .into_iter()
                .map(cart_line)
                .collect::<Result<_, _>>()?;
        }
        match kind {
            EventType::ProductPageView => {
                let p = e.product_context.ok_or(InvalidEvent::MissingField(
                    "productPageView",
                    "productContext",
                ))?;
                let line = product_line(*p)?;
                ev.value = line.price.unwrap_or(0.0);
                ev.lines = vec![line];
            }
            EventType::AddToCart | EventType::RemoveFromCart => {
                if ev.lines.is_empty() {
                    if let Some(p) = e.product_context {
                        ev.lines = vec![product_line(*p)?];
                    }
                }
                ev.value = total(ev.lines.iter().map(Line::total));
            }
            EventType::CompleteCheckout => {
                let order = e.order_context.ok_or(InvalidEvent::MissingField(
                    "completeCheckout",
                    "orderContext",
                ))?;
                ev.value =
                    finite(order.grand_total, "orderContext.grandTotal")?.unwrap_or_else(|| {
                        ev.cart
                            .as_ref()
                            .map(|c| total(c.lines.iter().map(Line::total)))
                            .unwrap_or(0.0)
                    });
                ev.order_id = non_empty(Some(order.order_id));
                if let Some(cart) = &ev.cart {
                    ev.lines = cart.lines.clone();
                }
            }
            EventType::SearchRequestSent => {
                let units = e.search_input_context.map(|c| c.units).unwrap_or_default();
                let unit = pick_unit(units, e.search_unit_id.as_deref(), |u| &u.search_unit_id);
                ev.search_phrase = unit.map(|u| u.phrase);
            }
            EventType::SearchResponseReceived => {
                let units = e
                    .search_results_context
                    .map(|c| c.units)
                    .unwrap_or_default();
                let unit = pick_unit(units, e.search_unit_id.as_deref(), |u| &u.search_unit_id);
                ev.search_results = unit.map(|u| u.products.len() as u32);
            }
            _ => {}
        }
        if let Some(acct) = e.account_context {
            if ev.identity.email.is_none() {
                ev.identity.email = non_empty(acct.email_address.clone()).map(email);
            }
            if ev.identity.customer_id.is_none() {
                ev.identity.customer_id = non_empty(acct.account_id.clone());
            }
            ev.attributes = Some(Box::new(Attributes {
                first_name: non_empty(acct.first_name),
                last_name: non_empty(acct.last_name),
                email: non_empty(acct.email_address),
                phone: non_empty(acct.phone_number),
                customer_group: non_empty(acct.customer_group),
                ..Attributes::default()
            }));
        }
        Ok(ev)
    }

    fn from_backoffice(e: Box<wire::BackofficeEvent>) -> Result<Event, InvalidEvent> {
        let kind = EventType::parse(&e.event_type)
            .filter(|k| k.family() == Family::Backoffice)
            .ok_or_else(|| InvalidEvent::UnknownType(e.event_type.to_string(), "backoffice"))?;
        let mut ev = Event::base(e.event_id, kind, e.timestamp, e.identity);
        if ev.identity.email.is_none() {
            ev.identity.email = e
                .personal_email
                .map(|p| email(p.address))
                .filter(|s| !s.is_empty());
        }
        ev.channel = e
            .channel
            .and_then(|c| non_empty(c.kind))
            .map(|t| channel(&t));
        let line_currency = e
            .product_list_items
            .iter()
            .find_map(|i| non_empty(i.currency_code.clone()));
        ev.lines = e
            .product_list_items
            .into_iter()
            .map(list_item_line)
            .collect::<Result<_, _>>()?;
        let order = e
            .order
            .ok_or(InvalidEvent::MissingField("back-office event", "order"))?;
        if let Some(scope) = &e.commerce_scope {
            ev.store_code = non_empty(scope.store_code.clone());
            ev.store_view_code = non_empty(scope.store_view_code.clone());
        }
        ev.currency = non_empty(order.currency_code.clone()).or(line_currency);
        ev.order_id = non_empty(Some(order.purchase_id));
        if ev.order_id.is_none() {
            return Err(InvalidEvent::MissingField(
                "back-office event",
                "order.purchaseID",
            ));
        }
        let lines_total = total(ev.lines.iter().map(Line::total));
        ev.value = match kind {
            EventType::OrderLineItemRefunded => {
                let refunds = total(order.refunds.iter().filter_map(|r| r.refund_amount));
                finite(order.refund_total, "order.refundTotal")?.unwrap_or(if refunds != 0.0 {
                    refunds
                } else {
                    lines_total
                })
            }
            _ => finite(order.price_total, "order.priceTotal")?.unwrap_or(lines_total),
        };
        Ok(ev)
    }

    fn from_profile(e: Box<wire::ProfileEvent>) -> Result<Event, InvalidEvent> {
        let kind = EventType::parse(&e.event_type)
            .filter(|k| k.family() == Family::Profile)
            .ok_or_else(|| InvalidEvent::UnknownType(e.event_type.to_string(), "profile"))?;
        let mut ev = Event::base(e.event_id, kind, e.timestamp, e.identity);
        if let Some(scope) = &e.commerce_scope {
            ev.store_code = non_empty(scope.store_code.clone());
            ev.store_view_code = non_empty(scope.store_view_code.clone());
        }
        let email = e.personal_email.map(|p| p.address);
        if ev.identity.email.is_none() {
            ev.identity.email = non_empty(email.clone()).map(self::email);
        }
        ev.channel = e
            .channel
            .and_then(|c| non_empty(c.kind))
            .map(|t| channel(&t));
        let (country, city) =
            address_parts(e.billing_address.as_ref().or(e.shipping_address.as_ref()));
        let person = e.person.unwrap_or_default();
        let name = person.name.unwrap_or_default();
        let loyalty = e.loyalty.unwrap_or_default();
        let consents = e.consents.unwrap_or_default();
        ev.attributes = Some(Box::new(Attributes {
            first_name: non_empty(name.first_name),
            last_name: non_empty(name.last_name),
            email: non_empty(email),
            phone: e
                .mobile_phone
                .or(e.billing_address_phone)
                .or(e.shipping_address_phone)
                .map(|p| p.number)
                .filter(|n| !n.trim().is_empty()),
            gender: non_empty(person.gender).map(|g| g.to_lowercase()),
            birth_date: non_empty(person.birth_date),
            country,
            city,
            loyalty_tier: non_empty(loyalty.tier).map(|t| t.to_lowercase()),
            loyalty_status: non_empty(loyalty.status).map(|t| t.to_lowercase()),
            loyalty_points: finite(loyalty.points, "loyalty.points")?,
            customer_group: non_empty(e.customer_group),
            consent_email: consent(consents.marketing_email.as_ref()),
            consent_sms: consent(consents.marketing_sms.as_ref()),
        }));
        Ok(ev)
    }

    /// The key a profile is stored under when a message has no key: customer id, else e-mail,
    /// else ECID (the producer's own keying rule).
    pub fn fallback_key(&self) -> Option<&str> {
        self.identity
            .customer_id
            .as_deref()
            .or(self.identity.email.as_deref())
            .or(self.identity.ecid.as_deref())
    }
}

/// Search contexts hold several units; the event's `searchUnitId` picks one (else the first).
fn pick_unit<U>(units: Vec<U>, id: Option<&str>, unit_id: impl Fn(&U) -> &String) -> Option<U> {
    let pos = id
        .and_then(|id| units.iter().position(|u| unit_id(u) == id))
        .unwrap_or(0);
    units.into_iter().nth(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Profiles stored before SKU, category and brand were inline strings read the same: the
    /// encoding is the one of `String`, short and long (heap) values alike. (postcard writes a
    /// struct as the tuple of its fields.)
    #[test]
    fn a_line_is_encoded_as_with_owned_strings() {
        let long = "électroménager.".repeat(4);
        for (sku, category, brand) in [
            ("A-1", Some("electronics.smartphone"), Some("acme")),
            (long.as_str(), Some(long.as_str()), None),
            ("", None, Some("")),
        ] {
            let line = Line {
                sku: sku.into(),
                name: Some("Phone".into()),
                quantity: 2.0,
                price: Some(9.5),
                image_url: None,
                url: Some("https://shop.example/p".into()),
                category: category.map(Into::into),
                brand: brand.map(Into::into),
            };
            let owned: (String, _, _, _, _, _, Option<String>, Option<String>) = (
                sku.to_owned(),
                line.name.clone(),
                line.quantity,
                line.price,
                line.image_url.clone(),
                line.url.clone(),
                category.map(String::from),
                brand.map(String::from),
            );
            {
                // As state versions 3 to 5 wrote it.
                let _v5 = crate::layout::Reading::version(5);
                let bytes = postcard::to_stdvec(&line).unwrap();
                assert_eq!(bytes, postcard::to_stdvec(&owned).unwrap());
                assert_eq!(postcard::from_bytes::<Line>(&bytes).unwrap(), line);
            }
            // Version 6: the same strings, the numbers compact.
            let _v6 = crate::layout::Reading::version(crate::layout::COMPACT_SINCE);
            #[derive(Serialize)]
            struct Owned6(
                String,
                Option<String>,
                #[serde(with = "crate::layout::compact_f64")] f64,
                #[serde(with = "crate::layout::compact_f64::option")] Option<f64>,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            );
            let (a, b, c, d, e, f, g, h) = owned;
            let bytes = postcard::to_stdvec(&line).unwrap();
            assert_eq!(
                bytes,
                postcard::to_stdvec(&Owned6(a, b, c, d, e, f, g, h)).unwrap()
            );
            assert_eq!(postcard::from_bytes::<Line>(&bytes).unwrap(), line);
        }
    }

    #[test]
    fn every_type_parses_by_its_name_and_belongs_to_its_family() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.name()), Some(*t));
        }
        assert_eq!(EventType::ALL.len(), 30);
    }

    #[test]
    fn accepts_the_platforms_other_spellings() {
        assert_eq!(
            EventType::parse("orderCanceled"),
            Some(EventType::OrderCancelled)
        );
        assert_eq!(
            EventType::parse("orderItemsReturnsInitiated"),
            Some(EventType::OrderItemsReturnInitiated)
        );
        assert_eq!(
            EventType::parse("initiateCheckout"),
            Some(EventType::StartCheckout)
        );
        assert_eq!(
            EventType::parse("placeOrder"),
            Some(EventType::CompleteCheckout)
        );
        assert_eq!(
            EventType::parse("commerce.backofficeShipmentCompleted"),
            Some(EventType::OrderShipmentCompleted)
        );
        assert_eq!(EventType::parse("orderShipped"), None);
    }

    fn order_placed(total: Option<f64>) -> wire::BackofficeEvent {
        wire::BackofficeEvent {
            event_id: "e1".into(),
            event_type: "orderPlaced".into(),
            timestamp: 1_700_000_000_000,
            identity: Identity {
                email: Some(" Ann@Example.COM ".into()),
                ..Default::default()
            },
            order: Some(Box::new(wire::Order {
                purchase_id: "100".into(),
                price_total: total,
                ..Default::default()
            })),
            product_list_items: vec![wire::ProductListItem {
                sku: "A".into(),
                quantity: Some(2.0),
                price_total: Some(10.0),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn order_value_falls_back_to_line_totals_and_email_is_normalised() {
        let ev = Event::from_input(
            InputMessage::Backoffice(Box::new(order_placed(None))),
            1_700_000_000_000,
        )
        .unwrap();
        assert_eq!(ev.value, 10.0);
        assert_eq!(ev.lines[0].price, Some(5.0));
        assert_eq!(ev.identity.email.as_deref(), Some("ann@example.com"));
        let ev = Event::from_input(
            InputMessage::Backoffice(Box::new(order_placed(Some(12.5)))),
            1_700_000_000_000,
        )
        .unwrap();
        assert_eq!(ev.value, 12.5);
    }

    #[test]
    fn rejects_absurd_times_unknown_types_and_nan() {
        let mut e = order_placed(None);
        e.timestamp = 5;
        assert_eq!(
            Event::from_input(InputMessage::Backoffice(Box::new(e)), 1_700_000_000_000)
                .unwrap_err()
                .code(),
            "bad_event_time"
        );
        let mut e = order_placed(None);
        e.event_type = "addToCart".into();
        assert_eq!(
            Event::from_input(InputMessage::Backoffice(Box::new(e)), 1_700_000_000_000)
                .unwrap_err()
                .code(),
            "unknown_event_type"
        );
        let e = order_placed(Some(f64::NAN));
        assert_eq!(
            Event::from_input(InputMessage::Backoffice(Box::new(e)), 1_700_000_000_000)
                .unwrap_err()
                .code(),
            "not_finite"
        );
    }

    #[test]
    fn every_code_is_listed() {
        let all = [
            InvalidEvent::UnknownType(String::new(), "storefront"),
            InvalidEvent::NoIdentity,
            InvalidEvent::NoEventId,
            InvalidEvent::BadTime(0),
            InvalidEvent::MissingField("a", "b"),
            InvalidEvent::NotFinite("a"),
            InvalidEvent::TooLong("a", 1, 0),
            InvalidEvent::TooMany("a", 1, 0),
            InvalidEvent::Negative("a", -1.0),
        ];
        let codes: Vec<&str> = all.iter().map(InvalidEvent::code).collect();
        assert_eq!(codes, InvalidEvent::CODES);
    }

    /// Regression: a negative quantity times a negative price counted as a cart value of +500.
    #[test]
    fn negative_quantities_and_prices_are_refused_naming_the_field() {
        let mut e = order_placed(None);
        e.product_list_items[0].quantity = Some(-5.0);
        e.product_list_items[0].price_total = Some(-500.0);
        let err = Event::from_input(InputMessage::Backoffice(Box::new(e)), 1_700_000_000_000)
            .unwrap_err();
        assert_eq!(err.code(), "negative_value");
        assert!(
            err.to_string().contains("line quantity is negative"),
            "{err}"
        );

        let mut e = crate::samples::storefront("addToCart", "a1", 1_700_000_000_000, "e");
        e.shopping_cart_context.as_mut().unwrap().items[0]
            .prices
            .as_mut()
            .unwrap()
            .price
            .value = -10.0;
        let err = Event::from_input(InputMessage::Storefront(Box::new(e)), 1_700_000_000_000)
            .unwrap_err();
        assert!(err.to_string().contains("line price is negative"), "{err}");
    }

    /// Regression: `contact.email` came out as "Eco.Shopper@Example.com " although e-mails are
    /// documented as trimmed and lower-cased.
    #[test]
    fn e_mails_and_phones_are_normalised_wherever_they_are_read() {
        let mut e = crate::samples::storefront("signIn", "s1", 1_700_000_000_000, "e");
        e.account_context = Some(Box::new(wire::AccountContext {
            email_address: Some("Eco.Shopper@Example.com ".into()),
            phone_number: Some(" +44 (0)20-7946.0000 ".into()),
            ..Default::default()
        }));
        let ev =
            Event::from_input(InputMessage::Storefront(Box::new(e)), 1_700_000_000_000).unwrap();
        assert_eq!(
            ev.identity.email.as_deref(),
            Some("eco.shopper@example.com")
        );
        let a = ev.attributes.unwrap();
        assert_eq!(a.email.as_deref(), Some("eco.shopper@example.com"));
        assert_eq!(a.phone.as_deref(), Some("+4402079460000"));
        assert_eq!(normalise_email("  "), None);
        assert_eq!(normalise_phone(" - "), None);
    }

    /// Device types, channels and e-mails lower-cased (as they came when they already are),
    /// beyond ASCII too; e-mails trimmed; a channel type by its URI's last segment.
    #[test]
    fn devices_channels_and_identity_e_mails_are_lower_cased() {
        let mut e = crate::samples::storefront("pageView", "s1", 1_700_000_000_000, "e");
        let read = |e: &wire::StorefrontEvent| {
            Event::from_input(
                InputMessage::Storefront(Box::new(e.clone())),
                1_700_000_000_000,
            )
            .unwrap()
        };
        for (device, channel, email, want) in [
            (
                "mobile",
                "https://ns.adobe.com/xdm/channel-types/web",
                "a@b.c",
                ("mobile", "web", "a@b.c"),
            ),
            (
                "Tablet",
                "https://ns.adobe.com/xdm/channel-types/Mobile",
                " A@B.c",
                ("tablet", "mobile", "a@b.c"),
            ),
            (
                "ÉCRAN",
                "App",
                "Ünï@Example.org",
                ("écran", "app", "ünï@example.org"),
            ),
            (
                "a-device-type-longer-than-24-bytes",
                "web",
                "x@y.z",
                ("a-device-type-longer-than-24-bytes", "web", "x@y.z"),
            ),
            // Lower-case but padded: trimmed. A type URI ending in `/`: an empty last segment,
            // as before.
            ("Mobile", "a/", " a@b.c ", ("mobile", "", "a@b.c")),
        ] {
            e.device_context.as_mut().unwrap().kind = Some(device.into());
            e.channel_context.as_mut().unwrap().kind = Some(channel.into());
            e.identity.email = Some(email.into());
            let ev = read(&e);
            assert_eq!(
                (
                    ev.device.as_deref(),
                    ev.channel.as_deref(),
                    ev.identity.email.as_deref()
                ),
                (Some(want.0), Some(want.1), Some(want.2)),
                "{device} {channel} {email}"
            );
        }
    }

    /// `blank` answers as trimming would, the quick path included.
    #[test]
    fn blank_is_what_trims_to_nothing() {
        for s in [
            "",
            " ",
            "\t\n",
            "\u{b}",
            "\u{a0}",
            " \u{3000} ",
            "\r\n\u{c}",
        ] {
            assert!(blank(s), "{s:?}");
        }
        for s in ["a", " a ", "\u{b}a", "é", "\u{a0}x", "-"] {
            assert!(!blank(s), "{s:?}");
        }
        for b in 0u8..128 {
            let s = char::from(b).to_string();
            assert_eq!(blank(&s), s.trim().is_empty(), "byte {b}");
        }
    }
}
