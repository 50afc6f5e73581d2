//! `tailor replay`: real public data sets produced as the platform's events.
//!
//! - **UCI Online Retail** (`InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,
//!   CustomerID,Country`): each invoice becomes one back-office `orderPlaced` with its lines; a
//!   `C` invoice becomes `orderCancelled` carrying the cancelled lines and value. Lines without a
//!   customer id (guest sales, stock write-offs) and `A` bad-debt adjustments are skipped and
//!   counted. `17850.0`-style ids become `17850`. Times are the file's (UK local) read as UTC.
//! - **REES46** (`event_time,event_type,product_id,category_id,category_code,brand,price,user_id,
//!   user_session`): `view` → `productPageView`, `cart` → `addToCart`, `purchase` →
//!   `completeCheckout`; purchase rows of one session at the same second are one order.
//!
//! Columns are found by their header names, in any order and spelling of the two UCI releases
//! (Online Retail: `InvoiceNo`, `UnitPrice`, `CustomerID`; Online Retail II: `Invoice`, `Price`,
//! `Customer ID`). A file without a needed column is refused, naming it.
//!
//! Events are keyed by shopper, single-object Avro encoded, and produced in event-time order:
//! [`OrderCheck`] finds a file that is not in time order (a file grouped by country, say), and
//! `tailor replay` then refuses it unless told to sort it (`--sort`), since events produced out of
//! order are late to the worker and make wrong time-based memberships.
//! The parsing is pure ([`UciReader`], [`Rees46Reader`]) and tested without Kafka.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::codec::Family;
use crate::wire::{self, Identity};

/// One event ready to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Produced {
    pub family: Family,
    pub key: String,
    pub time: i64,
    pub event_type: &'static str,
    pub payload: Vec<u8>,
}

/// What a replay skipped, and why (the data's real mess).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Skipped {
    pub no_customer: u64,
    pub adjustments: u64,
    pub unparsable: u64,
}

/// Parses `YYYY-MM-DD HH:MM[:SS][ UTC]` as UTC milliseconds.
/// The repository's shipped samples (`samples/` under `root`) as platform events: the REES46
/// clicks, then the UCI orders. What the tests and benches replay.
pub fn shipped_samples(root: &Path) -> std::io::Result<Vec<Produced>> {
    let mut v: Vec<Produced> =
        Rees46Reader::open(&root.join("samples/rees46-2019oct-sample.csv"))?.collect();
    v.extend(UciReader::open(
        &root.join("samples/uci-online-retail-sample.csv"),
    )?);
    Ok(v)
}

pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim().trim_end_matches(" UTC").trim_end_matches('Z');
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm) = (t.next()??, t.next()??);
    let ss = t.next().flatten().unwrap_or(0);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = crate::clock::days_from_civil(y, m, day);
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000)
}

/// Formats UTC milliseconds as `YYYY-MM-DDTHH:MM:SSZ` (inverse of [`parse_time`]).
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A header name without case, spaces and underscores: `Customer ID` = `CustomerID` = `customer_id`.
fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, ' ' | '_' | '\u{feff}'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The index of each wanted column in `headers`; each is known by any of its spellings.
fn find_columns(
    headers: &csv::StringRecord,
    wanted: &[&[&str]],
    data_set: &str,
) -> std::io::Result<Vec<usize>> {
    let names: Vec<String> = headers.iter().map(normalise).collect();
    wanted
        .iter()
        .map(|spellings| {
            spellings
                .iter()
                .find_map(|s| names.iter().position(|n| *n == normalise(s)))
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "not a {data_set} file: no column {} in the header ({})",
                            spellings.join(" or "),
                            headers.iter().collect::<Vec<_>>().join(",")
                        ),
                    )
                })
        })
        .collect()
}

/// Rows and the column indexes of a CSV file with a header.
fn records<R: Read>(
    r: R,
    wanted: &[&[&str]],
    data_set: &str,
) -> std::io::Result<(csv::StringRecordsIntoIter<R>, Vec<usize>)> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(r);
    let headers = reader.headers().map_err(std::io::Error::other)?.clone();
    let columns = find_columns(&headers, wanted, data_set)?;
    Ok((reader.into_records(), columns))
}

/// Whether a stream of events is in event-time order, and where it first is not.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OrderCheck {
    pub events: u64,
    /// Events earlier than an event before them.
    pub out_of_order: u64,
    /// The first of them: (its position, its time, the latest time before it).
    pub first: Option<(u64, i64, i64)>,
    latest: Option<i64>,
}

impl OrderCheck {
    pub fn see(&mut self, time: i64) {
        if let Some(latest) = self.latest {
            if time < latest {
                self.out_of_order += 1;
                self.first.get_or_insert((self.events, time, latest));
            }
        }
        self.latest = Some(self.latest.map_or(time, |l| l.max(time)));
        self.events += 1;
    }

    pub fn in_order(&self) -> bool {
        self.out_of_order == 0
    }
}

/// `17850.0` → `17850`; empty or non-numeric → None.
fn customer_id(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    let id = raw.strip_suffix(".0").unwrap_or(raw);
    id.chars()
        .all(|c| c.is_ascii_digit())
        .then(|| id.to_owned())
}

fn open(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let f = std::fs::File::open(path)?;
    let r: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, r)))
}

struct UciLine {
    invoice: String,
    stock: String,
    description: String,
    quantity: f64,
    time: i64,
    price: f64,
    customer: Option<String>,
    country: String,
}

/// Reads UCI Online Retail rows and yields one event per invoice.
pub struct UciReader<R: Read> {
    rows: csv::StringRecordsIntoIter<R>,
    /// Invoice, stock code, description, quantity, date, price, customer, country.
    columns: Vec<usize>,
    pending: Vec<UciLine>,
    pub skipped: Skipped,
    done: bool,
    /// Percent of customers given a synthetic opt-in ([`UciReader::opted_in`]).
    opted_in: u8,
    /// Customers seen so far (for the opt-ins).
    customers: std::collections::HashSet<String>,
    /// Events waiting behind the one just returned (an invoice behind its customer's opt-in
    /// record and browsing session).
    queued: std::collections::VecDeque<Produced>,
    /// Give each invoice an anonymous browsing session and a sign-in ([`UciReader::browsing`]).
    browsing: bool,
}

/// Lines of an invoice viewed and added to the cart in its browsing session.
const BROWSED_LINES: usize = 10;

impl UciReader<Box<dyn BufRead>> {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        UciReader::new(open(path)?)
    }
}

impl<R: Read> UciReader<R> {
    pub fn new(r: R) -> std::io::Result<Self> {
        let (rows, columns) = records(
            r,
            &[
                &["InvoiceNo", "Invoice"],
                &["StockCode"],
                &["Description"],
                &["Quantity"],
                &["InvoiceDate"],
                &["UnitPrice", "Price"],
                &["CustomerID"],
                &["Country"],
            ],
            "UCI Online Retail",
        )?;
        Ok(UciReader {
            rows,
            columns,
            pending: Vec::new(),
            skipped: Skipped::default(),
            done: false,
            opted_in: 0,
            customers: std::collections::HashSet::new(),
            queued: Default::default(),
            browsing: false,
        })
    }

    /// Gives `percent` of the customers (chosen by a hash of their id, so the same ones every
    /// run) a profile record just before their first invoice: a synthetic e-mail address
    /// (`uci-<id>@example.com`) and marketing e-mail consent. The public data has no consents,
    /// and every journey of the examples needs one: with this the demo's journeys trigger.
    pub fn opted_in(mut self, percent: u8) -> Self {
        self.opted_in = percent.min(100);
        self
    }

    /// Gives each placed order an anonymous browsing session before it, in the storefront
    /// family: a browser of its own (ECID `uci-browser-<invoice>`) views each of the first ten
    /// lines' products and adds them to the cart over the 20 minutes before the invoice, then
    /// signs in as the customer a minute before it. The sign-in stitches the browser's profile
    /// into the customer's (an identity merge, usually across partitions). The data set's own
    /// lines, times and customers; only the browser ids and the session's timing are made up.
    /// The events are not in time order with the other invoices': replay with `--sort`.
    pub fn browsing(mut self, on: bool) -> Self {
        self.browsing = on;
        self
    }

    /// The browsing session of an invoice ([`UciReader::browsing`]).
    fn session(lines: &[UciLine]) -> Vec<Produced> {
        let first = &lines[0];
        let customer = first
            .customer
            .clone()
            .expect("only invoices with a customer");
        let ecid = format!("uci-browser-{}", first.invoice);
        let start = first.time - 20 * 60_000;
        let mut out = Vec::new();
        let event = |n: usize, event_type: &str, time: i64| wire::StorefrontEvent {
            event_id: format!("uci-{}-{event_type}-{n}", first.invoice),
            event_type: event_type.into(),
            timestamp: time,
            identity: Identity {
                ecid: Some(ecid.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        for (n, l) in lines.iter().take(BROWSED_LINES).enumerate() {
            let product = wire::ProductContext {
                sku: l.stock.as_str().into(),
                name: (!l.description.is_empty()).then(|| l.description.clone()),
                pricing: Some(wire::Pricing {
                    regular_price: Some(l.price),
                    currency_code: Some("GBP".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let at = start + n as i64 * 60_000;
            let mut view = event(n, "productPageView", at);
            view.product_context = Some(Box::new(product.clone()));
            out.push(Rees46Reader::<&[u8]>::storefront(
                &ecid,
                view,
                "productPageView",
            ));
            let mut cart = event(n, "addToCart", at + 30_000);
            cart.changed_products_context = Some(wire::ChangedProductsContext {
                items: vec![wire::ShoppingCartItem {
                    product,
                    quantity: l.quantity.abs(),
                    prices: Some(wire::CartItemPrices {
                        price: wire::Money {
                            value: l.price,
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                }],
            });
            out.push(Rees46Reader::<&[u8]>::storefront(&ecid, cart, "addToCart"));
        }
        let mut sign_in = event(0, "signIn", first.time - 60_000);
        sign_in.identity.customer_id = Some(customer);
        out.push(Rees46Reader::<&[u8]>::storefront(&ecid, sign_in, "signIn"));
        out
    }

    /// Queues what goes before an invoice (its customer's opt-in record when new and chosen,
    /// its browsing session) and the invoice; returns the first of them.
    fn with_opt_in(&mut self, invoice: Produced, session: Vec<Produced>) -> Produced {
        self.queued.extend(session);
        self.queued.push_back(invoice);
        if let Some(record) = self.opt_in(&self.queued.back().expect("just queued").clone()) {
            self.queued.push_front(record);
        }
        self.queued.pop_front().expect("not empty")
    }

    /// The customer's opt-in record when the customer is new and chosen.
    fn opt_in(&mut self, invoice: &Produced) -> Option<Produced> {
        if self.opted_in == 0 || !self.customers.insert(invoice.key.clone()) {
            return None;
        }
        if xxhash_rust::xxh3::xxh3_64(invoice.key.as_bytes()) % 100 >= u64::from(self.opted_in) {
            return None;
        }
        let customer = invoice.key.clone();
        let time = invoice.time - 1;
        let mut ev = crate::samples::profile(
            "profileRecord",
            &format!("uci-optin-{customer}"),
            time,
            &customer,
            &format!("uci-{customer}@example.com"),
            None,
        );
        // Only what the opt-in needs: no invented name, phone or address.
        ev.person = None;
        ev.mobile_phone = None;
        ev.billing_address = None;
        ev.user_account = None;
        ev.customer_group = None;
        Some(Produced {
            family: Family::Profile,
            key: customer,
            time,
            event_type: "profileRecord",
            payload: crate::codec::encode::profile(&ev)
                .expect("ProfileEvent matches avro/profile.avsc"),
        })
    }

    fn parse(&mut self, rec: &csv::StringRecord) -> Option<UciLine> {
        let f = |i: usize| rec.get(self.columns[i]).unwrap_or("").trim();
        let line = UciLine {
            invoice: f(0).to_owned(),
            stock: f(1).to_owned(),
            description: f(2).to_owned(),
            quantity: f(3).parse().ok()?,
            time: parse_time(f(4))?,
            price: f(5).parse().ok()?,
            customer: customer_id(f(6)),
            country: f(7).to_owned(),
        };
        (!line.invoice.is_empty() && line.quantity.is_finite() && line.price.is_finite())
            .then_some(line)
    }

    fn invoice_event(lines: Vec<UciLine>) -> Produced {
        let first = &lines[0];
        let cancelled = first.invoice.starts_with('C');
        let customer = first
            .customer
            .clone()
            .expect("only invoices with a customer are built");
        let items: Vec<wire::ProductListItem> = lines
            .iter()
            .map(|l| wire::ProductListItem {
                sku: l.stock.as_str().into(),
                name: (!l.description.is_empty()).then(|| l.description.clone()),
                quantity: Some(l.quantity.abs()),
                price_total: Some((l.quantity * l.price).abs()),
                currency_code: Some("GBP".into()),
                ..Default::default()
            })
            .collect();
        let total = crate::event::total(items.iter().filter_map(|i| i.price_total));
        let event_type = if cancelled {
            "orderCancelled"
        } else {
            "orderPlaced"
        };
        let ev = wire::BackofficeEvent {
            event_id: format!("uci-{}", first.invoice),
            event_type: event_type.into(),
            timestamp: first.time,
            identity: Identity {
                customer_id: Some(customer.clone()),
                ..Default::default()
            },
            order: Some(Box::new(wire::Order {
                purchase_id: first.invoice.trim_start_matches('C').to_owned(),
                price_total: Some((total * 100.0).round() / 100.0),
                currency_code: Some("GBP".into()),
                ..Default::default()
            })),
            billing: Some(Box::new(wire::Billing {
                address: Some(wire::Address {
                    country: Some(first.country.clone()),
                    ..Default::default()
                }),
            })),
            product_list_items: items,
            ..Default::default()
        };
        Produced {
            family: Family::Backoffice,
            key: customer,
            time: first.time,
            event_type,
            payload: crate::codec::encode::backoffice(&ev)
                .expect("BackofficeEvent matches avro/backoffice.avsc"),
        }
    }

    /// Closes the pending invoice: an event (with its browsing session, if asked for), or a
    /// counted skip.
    fn close(&mut self) -> Option<(Produced, Vec<Produced>)> {
        if self.pending.is_empty() {
            return None;
        }
        let lines = std::mem::take(&mut self.pending);
        if lines[0].invoice.starts_with('A') {
            self.skipped.adjustments += lines.len() as u64;
            return None;
        }
        if lines[0].customer.is_none() {
            self.skipped.no_customer += lines.len() as u64;
            return None;
        }
        let session = if self.browsing && !lines[0].invoice.starts_with('C') {
            Self::session(&lines)
        } else {
            Vec::new()
        };
        Some((Self::invoice_event(lines), session))
    }
}

impl<R: Read> Iterator for UciReader<R> {
    type Item = Produced;

    fn next(&mut self) -> Option<Produced> {
        if let Some(next) = self.queued.pop_front() {
            return Some(next);
        }
        while !self.done {
            match self.rows.next() {
                None => {
                    self.done = true;
                    return self.close().map(|(i, s)| self.with_opt_in(i, s));
                }
                Some(Err(_)) => self.skipped.unparsable += 1,
                Some(Ok(rec)) => {
                    let Some(line) = self.parse(&rec) else {
                        self.skipped.unparsable += 1;
                        continue;
                    };
                    let same = self
                        .pending
                        .first()
                        .is_some_and(|p| p.invoice == line.invoice);
                    let out = if same { None } else { self.close() };
                    self.pending.push(line);
                    if let Some((invoice, session)) = out {
                        return Some(self.with_opt_in(invoice, session));
                    }
                }
            }
        }
        None
    }
}

/// Reads REES46 rows and yields storefront events.
pub struct Rees46Reader<R: Read> {
    rows: csv::StringRecordsIntoIter<R>,
    /// The nine columns of the data set, in its documented order.
    columns: [usize; 9],
    /// Purchases waiting for their second to end: (session, user, time) → products.
    purchases: BTreeMap<(String, String, i64), Vec<wire::ShoppingCartItem>>,
    ready: std::collections::VecDeque<Produced>,
    row: u64,
    pub skipped: Skipped,
    done: bool,
}

impl Rees46Reader<Box<dyn BufRead>> {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Rees46Reader::new(open(path)?)
    }
}

fn rees_product(rec: &csv::StringRecord, columns: &[usize], price: f64) -> wire::ProductContext {
    let f = |i: usize| rec.get(columns[i]).unwrap_or("").trim();
    let category = if f(4).is_empty() { f(3) } else { f(4) };
    wire::ProductContext {
        product_id: f(2).parse().ok(),
        sku: f(2).into(),
        manufacturer: (!f(5).is_empty()).then(|| f(5).into()),
        categories: if category.is_empty() {
            Vec::new()
        } else {
            vec![category.into()]
        },
        pricing: Some(wire::Pricing {
            regular_price: Some(price),
            currency_code: Some("USD".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl<R: Read> Rees46Reader<R> {
    pub fn new(r: R) -> std::io::Result<Self> {
        let (rows, columns) = records(
            r,
            &[
                &["event_time"],
                &["event_type"],
                &["product_id"],
                &["category_id"],
                &["category_code"],
                &["brand"],
                &["price"],
                &["user_id"],
                &["user_session"],
            ],
            "REES46",
        )?;
        Ok(Rees46Reader {
            rows,
            columns: columns.try_into().expect("nine columns"),
            purchases: BTreeMap::new(),
            ready: Default::default(),
            row: 0,
            skipped: Skipped::default(),
            done: false,
        })
    }

    fn storefront(key: &str, ev: wire::StorefrontEvent, event_type: &'static str) -> Produced {
        Produced {
            family: Family::Storefront,
            key: key.to_owned(),
            time: ev.timestamp,
            event_type,
            payload: crate::codec::encode::storefront(&ev)
                .expect("StorefrontEvent matches avro/storefront.avsc"),
        }
    }

    /// Emits the purchases of seconds before `time` (all of them when `time` is None).
    fn flush_purchases(&mut self, time: Option<i64>) {
        let keys: Vec<_> = self
            .purchases
            .keys()
            .filter(|(_, _, t)| time.is_none_or(|now| *t < now))
            .cloned()
            .collect();
        for k in keys {
            let items = self.purchases.remove(&k).expect("listed");
            let (session, user, t) = k;
            let total = crate::event::total(
                items
                    .iter()
                    .map(|i| i.prices.as_ref().map_or(0.0, |p| p.price.value) * i.quantity),
            );
            let ev = wire::StorefrontEvent {
                event_id: format!("rees46-{session}-{t}-purchase"),
                event_type: "completeCheckout".into(),
                timestamp: t,
                identity: Identity {
                    ecid: Some(user.clone()),
                    ..Default::default()
                },
                order_context: Some(Box::new(wire::OrderContext {
                    order_id: format!("rees46-{session}-{}", t / 1000),
                    grand_total: Some((total * 100.0).round() / 100.0),
                    ..Default::default()
                })),
                shopping_cart_context: Some(Box::new(wire::ShoppingCartContext {
                    items,
                    ..Default::default()
                })),
                ..Default::default()
            };
            self.ready
                .push_back(Self::storefront(&user, ev, "completeCheckout"));
        }
    }

    fn row(&mut self, rec: &csv::StringRecord) -> Option<()> {
        let columns = self.columns;
        let f = |i: usize| rec.get(columns[i]).unwrap_or("").trim();
        let time = parse_time(f(0))?;
        let user = f(7);
        if user.is_empty() || !user.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        let price: f64 = f(6).parse().ok().filter(|p: &f64| p.is_finite())?;
        let session = f(8).to_owned();
        self.flush_purchases(Some(time));
        self.row += 1;
        let product = rees_product(rec, &columns, price);
        let base = |event_type: &str| wire::StorefrontEvent {
            event_id: format!("rees46-{}-{}", session, self.row),
            event_type: event_type.into(),
            timestamp: time,
            identity: Identity {
                ecid: Some(user.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        let item = |product: wire::ProductContext| wire::ShoppingCartItem {
            product,
            quantity: 1.0,
            prices: Some(wire::CartItemPrices {
                price: wire::Money {
                    value: price,
                    ..Default::default()
                },
            }),
            ..Default::default()
        };
        match f(1) {
            "view" => {
                let mut ev = base("productPageView");
                ev.product_context = Some(Box::new(product));
                self.ready
                    .push_back(Self::storefront(user, ev, "productPageView"));
            }
            "cart" => {
                let mut ev = base("addToCart");
                ev.changed_products_context = Some(wire::ChangedProductsContext {
                    items: vec![item(product)],
                });
                self.ready
                    .push_back(Self::storefront(user, ev, "addToCart"));
            }
            "remove_from_cart" => {
                let mut ev = base("removeFromCart");
                ev.changed_products_context = Some(wire::ChangedProductsContext {
                    items: vec![item(product)],
                });
                self.ready
                    .push_back(Self::storefront(user, ev, "removeFromCart"));
            }
            "purchase" => {
                self.purchases
                    .entry((session, user.to_owned(), time))
                    .or_default()
                    .push(item(product));
            }
            _ => return None,
        }
        Some(())
    }
}

impl<R: Read> Iterator for Rees46Reader<R> {
    type Item = Produced;

    fn next(&mut self) -> Option<Produced> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Some(p);
            }
            if self.done {
                return None;
            }
            match self.rows.next() {
                None => {
                    self.done = true;
                    self.flush_purchases(None);
                }
                Some(Err(_)) => self.skipped.unparsable += 1,
                Some(Ok(rec)) => {
                    if self.row(&rec).is_none() {
                        self.skipped.unparsable += 1;
                    }
                }
            }
        }
    }
}

/// Either data set's reader, for callers that pick one at run time.
pub enum ReplayReader {
    Uci(UciReader<Box<dyn BufRead>>),
    Rees46(Rees46Reader<Box<dyn BufRead>>),
}

impl ReplayReader {
    pub fn skipped(&self) -> &Skipped {
        match self {
            ReplayReader::Uci(r) => &r.skipped,
            ReplayReader::Rees46(r) => &r.skipped,
        }
    }
}

impl Iterator for ReplayReader {
    type Item = Produced;

    fn next(&mut self) -> Option<Produced> {
        match self {
            ReplayReader::Uci(r) => r.next(),
            ReplayReader::Rees46(r) => r.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{InputMessage, SchemaCatalog};

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_time("2010-12-01 08:26:00"), Some(1_291_191_960_000));
        assert_eq!(
            parse_time("2019-10-01 00:00:01 UTC"),
            Some(1_569_888_001_000)
        );
        assert_eq!(parse_time("2011-13-01 00:00"), None);
        assert_eq!(parse_time("garbage"), None);
        for t in [0, 1_291_191_960_000, 1_569_888_001_000, 951_782_400_000] {
            assert_eq!(parse_time(&format_time(t)), Some(t));
        }
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    const UCI: &str = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,\"WHITE HANGING HEART, T-LIGHT HOLDER\",6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom
536366,22633,HAND WARMER,6,2010-12-01 08:28:00,0,,United Kingdom
C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,17850.0,United Kingdom
A563185,B,Adjust bad debt,1,2011-08-12 14:50:00,-11062.06,,United Kingdom
536367,84879,BIRD,not-a-number,2010-12-01 08:34:00,1.69,13047.0,United Kingdom
";

    #[test]
    fn columns_are_found_by_header_name_in_either_uci_release() {
        // Online Retail II: other names, another order.
        let v2 = "Invoice,StockCode,Description,Quantity,Price,InvoiceDate,Customer ID,Country
489434,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,12,6.95,2009-12-01 07:45:00,13085.0,United Kingdom
";
        let out: Vec<_> = UciReader::new(v2.as_bytes()).unwrap().collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, "13085");
        let InputMessage::Backoffice(ev) = SchemaCatalog::builtin()
            .decode(Family::Backoffice, &out[0].payload)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(ev.order.unwrap().price_total, Some(83.4));
        let err = UciReader::new("Invoice,StockCode\n1,2\n".as_bytes())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no column Description"), "{err}");
        assert!(Rees46Reader::new(v2.as_bytes()).is_err());
    }

    #[test]
    fn order_check_finds_the_first_event_out_of_time_order() {
        let mut c = OrderCheck::default();
        for t in [1, 2, 2, 5, 3, 4, 6] {
            c.see(t);
        }
        assert!(!c.in_order());
        assert_eq!(c.out_of_order, 2);
        assert_eq!(c.first, Some((4, 3, 5)));
        let mut c = OrderCheck::default();
        for p in UciReader::open(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/samples/uci-online-retail-sample.csv"
        )))
        .unwrap()
        {
            c.see(p.time);
        }
        assert!(c.in_order(), "{c:?}");
    }

    /// The demo's opt-ins: a consent record just before a chosen customer's first invoice,
    /// once per customer, with nothing invented beyond the address and the consent.
    #[test]
    fn opted_in_customers_get_a_consent_record_before_their_first_invoice() {
        let plain: Vec<_> = UciReader::new(UCI.as_bytes()).unwrap().collect();
        let none: Vec<_> = UciReader::new(UCI.as_bytes())
            .unwrap()
            .opted_in(0)
            .collect();
        assert_eq!(none.len(), plain.len());
        let all: Vec<_> = UciReader::new(UCI.as_bytes())
            .unwrap()
            .opted_in(100)
            .collect();
        let customers: std::collections::BTreeSet<&str> =
            plain.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(all.len(), plain.len() + customers.len());
        for c in customers {
            let first = all.iter().position(|p| p.key == c).unwrap();
            assert_eq!(all[first].event_type, "profileRecord", "{c}");
            assert_eq!(all[first].time, all[first + 1].time - 1);
            assert_eq!(
                all.iter()
                    .filter(|p| p.key == c && p.event_type == "profileRecord")
                    .count(),
                1
            );
            let InputMessage::Profile(ev) = SchemaCatalog::builtin()
                .decode(Family::Profile, &all[first].payload)
                .unwrap()
            else {
                panic!()
            };
            assert_eq!(ev.consents.unwrap().marketing_email.as_deref(), Some("y"));
            assert_eq!(
                ev.personal_email.unwrap().address,
                format!("uci-{c}@example.com")
            );
            assert!(
                ev.person.is_none() && ev.mobile_phone.is_none() && ev.billing_address.is_none()
            );
        }
    }

    #[test]
    fn uci_invoices_become_orders_and_cancellations_and_the_mess_is_counted() {
        let mut r = UciReader::new(UCI.as_bytes()).unwrap();
        let out: Vec<_> = r.by_ref().collect();
        assert_eq!(
            out.iter().map(|p| p.event_type).collect::<Vec<_>>(),
            ["orderPlaced", "orderCancelled"]
        );
        assert_eq!(out[0].key, "17850");
        assert_eq!(
            r.skipped,
            Skipped {
                no_customer: 1,
                adjustments: 1,
                unparsable: 1
            }
        );
        let InputMessage::Backoffice(ev) = SchemaCatalog::builtin()
            .decode(Family::Backoffice, &out[0].payload)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(ev.order.unwrap().price_total, Some(35.64));
        assert_eq!(
            ev.product_list_items[0].name.as_deref(),
            Some("WHITE HANGING HEART, T-LIGHT HOLDER")
        );
        let InputMessage::Backoffice(c) = SchemaCatalog::builtin()
            .decode(Family::Backoffice, &out[1].payload)
            .unwrap()
        else {
            panic!()
        };
        let order = c.order.unwrap();
        assert_eq!(
            (order.purchase_id.as_str(), order.price_total),
            ("536379", Some(27.5))
        );
    }

    const REES: &str = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session
2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,s1
2019-10-01 00:00:01 UTC,cart,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,541312140,s1
2019-10-01 00:00:05 UTC,purchase,3900821,2053013552326770905,,aqua,33.20,541312140,s1
2019-10-01 00:00:05 UTC,purchase,1307067,2053013558920217191,computers.notebook,lenovo,251.74,541312140,s1
2019-10-01 00:00:05 UTC,view,1,2,,,1.0,,s2
2019-10-01 00:00:06 UTC,view,1307067,2053013558920217191,computers.notebook,lenovo,251.74,9,s3
";

    #[test]
    fn rees46_rows_become_storefront_events_and_one_order_per_session_second() {
        let mut r = Rees46Reader::new(REES.as_bytes()).unwrap();
        let out: Vec<_> = r.by_ref().collect();
        let types: Vec<_> = out.iter().map(|p| p.event_type).collect();
        assert_eq!(
            types,
            [
                "productPageView",
                "addToCart",
                "completeCheckout",
                "productPageView"
            ]
        );
        assert_eq!(r.skipped.unparsable, 1, "the row without a user");
        let InputMessage::Storefront(ev) = SchemaCatalog::builtin()
            .decode(Family::Storefront, &out[2].payload)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(ev.order_context.unwrap().grand_total, Some(284.94));
        assert_eq!(ev.shopping_cart_context.unwrap().items.len(), 2);
        assert!(out.windows(2).all(|w| w[0].time <= w[1].time), "time order");
    }
}
