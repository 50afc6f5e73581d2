//! Wire types: serde mirrors of the Avro records in `avro/`.
//!
//! Field names are the platform's own (ACDL contexts for storefront events, XDM for back-office and
//! profile events). Every context is optional, as the storefront SDK validates nothing. These types
//! are only the contract with Kafka; [`crate::event`] turns them into the core's [`crate::event::Event`].

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// Shopper identities carried by an event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub ecid: Option<String>,
    pub customer_id: Option<String>,
    pub email: Option<String>,
}

// ---------------------------------------------------------------- storefront

/// The large contexts are boxed (one allocation each when present): held in place, they made a
/// 2 KB struct that the decoder built and then moved whole (the copies were about a tenth of a
/// decode). The encodings are the same either way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorefrontEvent {
    pub event_id: String,
    pub event_type: CompactString,
    pub timestamp: i64,
    pub identity: Identity,
    pub search_unit_id: Option<String>,
    pub shopper_context: Option<ShopperContext>,
    pub storefront_instance_context: Option<Box<StorefrontInstanceContext>>,
    pub page_context: Option<PageContext>,
    pub referrer_url_context: Option<ReferrerUrlContext>,
    pub channel_context: Option<Channel>,
    pub device_context: Option<DeviceContext>,
    pub product_context: Option<Box<ProductContext>>,
    pub category_context: Option<CategoryContext>,
    pub shopping_cart_context: Option<Box<ShoppingCartContext>>,
    pub changed_products_context: Option<ChangedProductsContext>,
    pub order_context: Option<Box<OrderContext>>,
    pub search_input_context: Option<SearchInputContext>,
    pub search_results_context: Option<SearchResultsContext>,
    pub account_context: Option<Box<AccountContext>>,
    pub requisition_list_context: Option<RequisitionListContext>,
    pub requisition_list_items_context: Option<RequisitionListItemsContext>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShopperContext {
    pub shopper_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorefrontInstanceContext {
    pub environment_id: Option<String>,
    pub instance_id: Option<String>,
    pub environment: Option<CompactString>,
    pub store_url: Option<String>,
    pub website_id: Option<i64>,
    pub website_code: Option<CompactString>,
    pub store_id: Option<i64>,
    pub store_code: Option<CompactString>,
    pub store_view_id: Option<i64>,
    pub store_view_code: Option<CompactString>,
    pub website_name: Option<String>,
    pub store_name: Option<String>,
    pub store_view_name: Option<String>,
    pub base_currency_code: Option<CompactString>,
    pub store_view_currency_code: Option<CompactString>,
    pub storefront_template: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageContext {
    pub page_type: Option<CompactString>,
    pub page_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferrerUrlContext {
    pub referrer_url: String,
}

/// XDM channel (`channel._id`, `channel._type`), also the ACDL channelContext.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    #[serde(rename = "_id")]
    pub id: Option<String>,
    #[serde(rename = "_type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceContext {
    #[serde(rename = "type")]
    pub kind: Option<CompactString>,
    pub screen_width: Option<i32>,
    pub screen_height: Option<i32>,
    pub screen_orientation: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pricing {
    pub regular_price: Option<f64>,
    pub minimal_price: Option<f64>,
    pub maximal_price: Option<f64>,
    pub special_price: Option<f64>,
    pub currency_code: Option<CompactString>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductContext {
    pub product_id: Option<i64>,
    pub name: Option<String>,
    pub sku: CompactString,
    pub top_level_sku: Option<CompactString>,
    pub manufacturer: Option<CompactString>,
    pub country_of_manufacture: Option<String>,
    pub product_type: Option<CompactString>,
    pub categories: Vec<CompactString>,
    pub pricing: Option<Pricing>,
    pub canonical_url: Option<String>,
    pub main_image_url: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CategoryContext {
    pub name: Option<String>,
    pub url_key: Option<String>,
    pub url_path: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Money {
    pub value: f64,
    pub currency: Option<CompactString>,
    pub regular_price: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CartItemPrices {
    pub price: Money,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurableOption {
    pub id: Option<i64>,
    pub option_label: Option<String>,
    pub value_id: Option<i64>,
    pub value_label: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShoppingCartItem {
    pub id: Option<String>,
    pub product: ProductContext,
    pub quantity: f64,
    /// Unit price.
    pub prices: Option<CartItemPrices>,
    pub configurable_options: Vec<ConfigurableOption>,
    pub discount_amount: Option<f64>,
    pub formatted_price: Option<String>,
    pub can_apply_msrp: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CartPrices {
    pub subtotal_excluding_tax: Option<Money>,
    pub subtotal_including_tax: Option<Money>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShoppingCartContext {
    pub id: Option<String>,
    pub items: Vec<ShoppingCartItem>,
    pub prices: Option<CartPrices>,
    pub total_quantity: Option<f64>,
    pub possible_onepage_checkout: Option<bool>,
    pub gift_message_selected: Option<bool>,
    pub gift_wrapping_selected: Option<bool>,
    pub source: Option<String>,
    pub discount_amount: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangedProductsContext {
    pub items: Vec<ShoppingCartItem>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPayment {
    pub payment_method_code: Option<String>,
    pub payment_method_name: Option<String>,
    pub total: Option<f64>,
    pub order_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderShipping {
    pub shipping_method: Option<String>,
    pub shipping_amount: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderContext {
    pub order_id: String,
    pub email: Option<String>,
    pub grand_total: Option<f64>,
    pub order_type: Option<String>,
    pub applied_coupon_code: Option<String>,
    pub subtotal_excluding_tax: Option<f64>,
    pub subtotal_including_tax: Option<f64>,
    pub sales_tax: Option<f64>,
    pub other_tax: Option<f64>,
    pub tax_amount: Option<f64>,
    pub discount_amount: Option<f64>,
    pub payment_method_code: Option<String>,
    pub payment_method_name: Option<String>,
    pub payments: Vec<OrderPayment>,
    pub shipping: Option<OrderShipping>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchRange {
    pub from: Option<f64>,
    pub to: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchFilter {
    pub attribute: String,
    pub eq: Option<String>,
    #[serde(rename = "in")]
    pub in_: Vec<String>,
    pub range: Option<SearchRange>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchSort {
    pub attribute: String,
    pub direction: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchInputUnit {
    pub search_unit_id: String,
    pub search_request_id: String,
    pub query_types: Vec<String>,
    pub phrase: String,
    pub page_size: Option<i32>,
    pub current_page: Option<i32>,
    pub filter: Vec<SearchFilter>,
    pub sort: Vec<SearchSort>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchInputContext {
    pub units: Vec<SearchInputUnit>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchResultProduct {
    pub name: Option<String>,
    pub sku: String,
    pub url: Option<String>,
    pub image_url: Option<String>,
    pub price: Option<f64>,
    pub rank: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchResultCategory {
    pub name: String,
    pub url: Option<String>,
    pub rank: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchResultSuggestion {
    pub suggestion: String,
    pub rank: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchResultUnit {
    pub search_unit_id: String,
    pub search_request_id: String,
    pub products: Vec<SearchResultProduct>,
    pub categories: Vec<SearchResultCategory>,
    pub suggestions: Vec<SearchResultSuggestion>,
    pub page: Option<i32>,
    pub per_page: Option<i32>,
    pub execution_time: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchResultsContext {
    pub units: Vec<SearchResultUnit>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountContext {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email_address: Option<String>,
    pub phone_number: Option<String>,
    pub country_code: Option<String>,
    pub account_id: Option<String>,
    pub account_type: Option<String>,
    pub company: Option<String>,
    pub customer_group: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequisitionListContext {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SelectedOption {
    pub attribute: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequisitionListItem {
    pub sku: CompactString,
    pub name: Option<String>,
    pub quantity: f64,
    pub product_id: Option<i64>,
    pub pricing: Option<Pricing>,
    pub selected_options: Vec<SelectedOption>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequisitionListItemsContext {
    pub items: Vec<RequisitionListItem>,
}

// ---------------------------------------------------------------- back office

/// Its order, shipping and billing are boxed, like the storefront event's large contexts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackofficeEvent {
    pub event_id: String,
    pub event_type: CompactString,
    pub timestamp: i64,
    pub identity: Identity,
    pub commerce_scope: Option<CommerceScope>,
    pub channel: Option<Channel>,
    pub order: Option<Box<Order>>,
    pub shipping: Option<Box<Shipping>>,
    pub billing: Option<Box<Billing>>,
    pub personal_email: Option<PersonalEmail>,
    pub product_list_items: Vec<ProductListItem>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommerceScope {
    #[serde(rename = "environmentID")]
    pub environment_id: Option<String>,
    pub website_code: Option<CompactString>,
    pub store_code: Option<CompactString>,
    pub store_view_code: Option<CompactString>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentItem {
    #[serde(rename = "transactionID")]
    pub transaction_id: Option<String>,
    pub payment_amount: Option<f64>,
    pub payment_type: Option<String>,
    pub currency_code: Option<CompactString>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundItem {
    #[serde(rename = "transactionID")]
    pub transaction_id: Option<String>,
    pub refund_amount: Option<f64>,
    pub refund_reason: Option<String>,
    pub refund_payment_type: Option<String>,
    pub currency_code: Option<CompactString>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Return {
    #[serde(rename = "returnID")]
    pub return_id: Option<String>,
    #[serde(rename = "returnStatus")]
    pub return_status: Option<String>,
    #[serde(rename = "purchaseID")]
    pub purchase_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    #[serde(rename = "purchaseID")]
    pub purchase_id: String,
    pub purchase_order_number: Option<String>,
    pub price_total: Option<f64>,
    pub currency_code: Option<CompactString>,
    pub tax_amount: Option<f64>,
    pub discount_amount: Option<f64>,
    pub order_type: Option<String>,
    pub created_date: Option<String>,
    pub last_updated_date: Option<String>,
    pub cancel_date: Option<String>,
    pub refund_total: Option<f64>,
    pub payments: Vec<PaymentItem>,
    pub refunds: Vec<RefundItem>,
    pub returns: Option<Return>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub street1: Option<String>,
    pub street2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shipping {
    pub shipping_method: Option<String>,
    pub shipping_amount: Option<f64>,
    pub currency_code: Option<CompactString>,
    pub ship_date: Option<String>,
    pub tracking_number: Option<String>,
    #[serde(rename = "trackingURL")]
    pub tracking_url: Option<String>,
    pub address: Option<Address>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Billing {
    pub address: Option<Address>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersonalEmail {
    pub address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProductCategory {
    pub id: Option<CompactString>,
    pub name: Option<CompactString>,
    pub path: Option<CompactString>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReturnItem {
    pub return_status: Option<String>,
    pub return_reason: Option<String>,
    pub return_item_condition: Option<String>,
    pub return_resolution: Option<String>,
    pub return_quantity_requested: Option<i32>,
    pub return_quantity_authorized: Option<i32>,
    pub return_quantity_received: Option<i32>,
    pub return_quantity_approved: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductListItem {
    pub id: Option<String>,
    #[serde(rename = "SKU")]
    pub sku: CompactString,
    pub name: Option<String>,
    pub quantity: Option<f64>,
    /// Line total.
    pub price_total: Option<f64>,
    pub discount_amount: Option<f64>,
    pub currency_code: Option<CompactString>,
    pub product_image_url: Option<String>,
    pub selected_options: Vec<SelectedOption>,
    pub categories: Vec<ProductCategory>,
    pub return_item: Option<ReturnItem>,
}

// ---------------------------------------------------------------- profile

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileEvent {
    pub event_id: String,
    pub event_type: CompactString,
    pub timestamp: i64,
    pub identity: Identity,
    pub person: Option<Person>,
    pub personal_email: Option<PersonalEmail>,
    pub mobile_phone: Option<Phone>,
    pub billing_address: Option<Address>,
    pub billing_address_phone: Option<Phone>,
    pub shipping_address: Option<Address>,
    pub shipping_address_phone: Option<Phone>,
    pub user_account: Option<UserAccount>,
    pub loyalty: Option<Loyalty>,
    pub consents: Option<Consents>,
    pub customer_group: Option<String>,
    pub commerce_scope: Option<CommerceScope>,
    pub channel: Option<Channel>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersonName {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Person {
    pub name: Option<PersonName>,
    pub birth_date: Option<String>,
    pub gender: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Phone {
    pub number: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserAccount {
    pub start_date: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Loyalty {
    pub tier: Option<String>,
    pub status: Option<String>,
    pub points: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Consents {
    pub marketing_email: Option<String>,
    pub marketing_sms: Option<String>,
    pub marketing_push: Option<String>,
}

// ---------------------------------------------------------------- outputs

/// What caused an output record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cause {
    /// `event`, `timer`, `deletion` or `definition-change`.
    pub kind: CompactString,
    pub event_id: Option<String>,
    pub event_type: Option<CompactString>,
    pub segment_id: Option<CompactString>,
    pub source_topic: Option<CompactString>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    #[serde(rename = "ENTERED")]
    Entered,
    #[serde(rename = "EXITED")]
    Exited,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Entered => "ENTERED",
            Direction::Exited => "EXITED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AudienceChange {
    pub id: String,
    pub profile_key: String,
    pub identity: Identity,
    pub segment_id: CompactString,
    pub direction: Direction,
    pub event_time: i64,
    pub cause: Cause,
    /// The store the shopper was last seen in.
    pub store: StoreRef,
    /// What flipped the membership: the smallest condition of the rule whose value changed.
    /// `None` for exits of removed segments, merges' and deletions' exits, definition changes.
    #[serde(default)]
    pub explanation: Option<Explanation>,
}

/// The smallest sub-expression of a segment's rule whose value changed, as written in the
/// segments file, with its value before and after and the values of its operands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// Its text in the rule.
    pub expression: CompactString,
    /// Where it starts in the segments file (1-based).
    pub line: i32,
    pub column: i32,
    /// Values are short (`3`, `true`, `2h 5m`): held in place up to 24 bytes (most are), they
    /// cost no allocation.
    pub before: CompactString,
    pub after: CompactString,
    /// Its operands (attributes, counts, other conditions), before and after.
    #[serde(default)]
    pub operands: Vec<Operand>,
}

/// One operand of the flipped sub-expression.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operand {
    pub expression: CompactString,
    pub before: CompactString,
    pub after: CompactString,
}

/// The store and store view of the latest event that named them (each `None` if none did).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreRef {
    pub store_code: Option<CompactString>,
    pub store_view_code: Option<CompactString>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub source_timestamp: Option<i64>,
    pub reason_code: String,
    pub reason: String,
    #[serde(with = "opt_bytes")]
    pub key: Option<Vec<u8>>,
    #[serde(with = "serde_bytes_vec")]
    pub payload: Vec<u8>,
    /// Size of the original value; `payload` holds only its start when `payload_truncated`.
    #[serde(default)]
    pub payload_size: Option<i64>,
    #[serde(default)]
    pub payload_truncated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CartLine {
    pub sku: String,
    pub name: Option<String>,
    pub quantity: f64,
    pub price: Option<f64>,
    pub image_url: Option<String>,
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JourneyContext {
    pub cart_items: Vec<CartLine>,
    pub cart_value: Option<f64>,
    pub order_id: Option<String>,
    pub order_total: Option<f64>,
    pub order_items: Vec<CartLine>,
    pub products_viewed: Vec<CartLine>,
    /// The currency of `cart_value`, `order_total` and the lines' prices.
    pub currency_code: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContactPoints {
    pub email: Option<String>,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JourneyTrigger {
    pub id: String,
    pub journey_id: String,
    pub profile_key: String,
    pub identity: Identity,
    pub triggered_at: i64,
    pub cause: Cause,
    pub contact: ContactPoints,
    pub context: JourneyContext,
    /// The store the shopper was last seen in.
    pub store: StoreRef,
}

/// Avro `bytes` through serde: serde's default for `Vec<u8>` is a sequence, not bytes.
mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(V)
    }
}

mod opt_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&Wrap(b)),
            None => s.serialize_none(),
        }
    }

    struct Wrap<'a>(&'a [u8]);
    impl serde::Serialize for Wrap<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Option<Vec<u8>>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("optional bytes")
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
                super::serde_bytes_vec::deserialize(d).map(Some)
            }
        }
        d.deserialize_option(V)
    }
}
