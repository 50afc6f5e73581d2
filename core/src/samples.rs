//! Example events in the platform's wire shape, with every context filled in. Used by the tests
//! and benchmarks, and a reference for producers of what a full event looks like.

use crate::codec::Family;
use crate::event::EventType;
use crate::wire::*;

/// A `String` or a `CompactString`, as the field is.
fn s<T: for<'a> From<&'a str>>(v: &str) -> Option<T> {
    Some(v.into())
}

pub fn product(sku: &str, price: f64) -> ProductContext {
    ProductContext {
        product_id: Some(1234),
        name: s("Mock Product"),
        sku: sku.into(),
        top_level_sku: s(sku),
        manufacturer: s("Acme"),
        country_of_manufacture: s("IT"),
        product_type: s("simple"),
        categories: vec!["14".into(), "15".into()],
        pricing: Some(Pricing {
            regular_price: Some(price),
            minimal_price: Some(price),
            maximal_price: Some(price),
            special_price: None,
            currency_code: s("USD"),
        }),
        canonical_url: s("https://shop.example/p/mock"),
        main_image_url: s("https://shop.example/img/mock.jpg"),
        created_at: s("2024-01-01 10:00:00"),
        updated_at: None,
    }
}

pub fn cart_item(sku: &str, qty: f64, price: f64) -> ShoppingCartItem {
    ShoppingCartItem {
        id: s("item-1"),
        product: product(sku, price),
        quantity: qty,
        prices: Some(CartItemPrices {
            price: Money {
                value: price,
                currency: s("USD"),
                regular_price: Some(price),
            },
        }),
        configurable_options: vec![ConfigurableOption {
            id: Some(1),
            option_label: s("Size"),
            value_id: Some(2),
            value_label: s("M"),
        }],
        discount_amount: Some(0.0),
        formatted_price: s("$10.00"),
        can_apply_msrp: Some(false),
    }
}

/// A storefront event of `event_type` with every context set.
pub fn storefront(event_type: &str, id: &str, time: i64, ecid: &str) -> StorefrontEvent {
    let items = vec![cart_item("SKU-1", 2.0, 10.0)];
    StorefrontEvent {
        event_id: id.to_owned(),
        event_type: event_type.into(),
        timestamp: time,
        identity: Identity {
            ecid: s(ecid),
            customer_id: None,
            email: None,
        },
        search_unit_id: s("search-bar"),
        shopper_context: Some(ShopperContext {
            shopper_id: "guest".into(),
        }),
        storefront_instance_context: Some(Box::new(StorefrontInstanceContext {
            environment_id: s("00000000-0000-0000-0000-000000000000"),
            environment: s("Production"),
            store_url: s("https://shop.example"),
            website_id: Some(1),
            website_code: s("base"),
            store_id: Some(1),
            store_code: s("main_website_store"),
            store_view_id: Some(1),
            store_view_code: s("default"),
            website_name: s("Main Website"),
            store_name: s("Main Website Store"),
            store_view_name: s("Default Store View"),
            base_currency_code: s("USD"),
            store_view_currency_code: s("USD"),
            storefront_template: s("Luma"),
            instance_id: None,
        })),
        page_context: Some(PageContext {
            page_type: s("PDP"),
            page_name: s("Mock Product"),
        }),
        referrer_url_context: Some(ReferrerUrlContext {
            referrer_url: "https://search.example/".into(),
        }),
        channel_context: Some(Channel {
            id: s("https://ns.adobe.com/xdm/channels/web"),
            kind: s("https://ns.adobe.com/xdm/channel-types/web"),
        }),
        device_context: Some(DeviceContext {
            kind: s("mobile"),
            screen_width: Some(390),
            screen_height: Some(844),
            screen_orientation: s("portrait"),
        }),
        product_context: Some(Box::new(product("SKU-1", 10.0))),
        category_context: Some(CategoryContext {
            name: s("Bags"),
            url_key: s("bags"),
            url_path: s("gear/bags"),
        }),
        shopping_cart_context: Some(Box::new(ShoppingCartContext {
            id: s("cart-1"),
            items: items.clone(),
            prices: Some(CartPrices {
                subtotal_excluding_tax: Some(Money {
                    value: 20.0,
                    currency: s("USD"),
                    regular_price: None,
                }),
                subtotal_including_tax: Some(Money {
                    value: 22.0,
                    currency: s("USD"),
                    regular_price: None,
                }),
            }),
            total_quantity: Some(2.0),
            possible_onepage_checkout: Some(true),
            gift_message_selected: Some(false),
            gift_wrapping_selected: Some(false),
            source: s("product-page"),
            discount_amount: Some(0.0),
        })),
        changed_products_context: Some(ChangedProductsContext { items }),
        order_context: Some(Box::new(OrderContext {
            order_id: format!("order-{id}"),
            email: None,
            grand_total: Some(22.0),
            order_type: s("checkout"),
            applied_coupon_code: s("WELCOME"),
            subtotal_excluding_tax: Some(20.0),
            subtotal_including_tax: Some(22.0),
            sales_tax: Some(2.0),
            other_tax: Some(0.0),
            tax_amount: Some(2.0),
            discount_amount: Some(0.0),
            payment_method_code: s("checkmo"),
            payment_method_name: s("Check / Money order"),
            payments: vec![OrderPayment {
                payment_method_code: s("checkmo"),
                payment_method_name: s("Check"),
                total: Some(22.0),
                order_id: None,
            }],
            shipping: Some(OrderShipping {
                shipping_method: s("flatrate"),
                shipping_amount: Some(5.0),
            }),
        })),
        search_input_context: Some(SearchInputContext {
            units: vec![SearchInputUnit {
                search_unit_id: "search-bar".into(),
                search_request_id: "req-1".into(),
                query_types: vec!["products".into()],
                phrase: "red bag".into(),
                page_size: Some(20),
                current_page: Some(1),
                filter: vec![SearchFilter {
                    attribute: "price".into(),
                    eq: None,
                    in_: vec![],
                    range: Some(SearchRange {
                        from: Some(0.0),
                        to: Some(50.0),
                    }),
                }],
                sort: vec![SearchSort {
                    attribute: "relevance".into(),
                    direction: "DESC".into(),
                }],
            }],
        }),
        search_results_context: Some(SearchResultsContext {
            units: vec![SearchResultUnit {
                search_unit_id: "search-bar".into(),
                search_request_id: "req-1".into(),
                products: vec![SearchResultProduct {
                    name: s("Red bag"),
                    sku: "SKU-1".into(),
                    url: s("/red-bag"),
                    image_url: None,
                    price: Some(10.0),
                    rank: 1,
                }],
                categories: vec![SearchResultCategory {
                    name: "Bags".into(),
                    url: s("/bags"),
                    rank: 1,
                }],
                suggestions: vec![SearchResultSuggestion {
                    suggestion: "red bags".into(),
                    rank: 1,
                }],
                page: Some(1),
                per_page: Some(20),
                execution_time: Some(12.5),
            }],
        }),
        account_context: None,
        requisition_list_context: Some(RequisitionListContext {
            id: "rl-1".into(),
            name: s("Monthly"),
            description: None,
        }),
        requisition_list_items_context: Some(RequisitionListItemsContext {
            items: vec![RequisitionListItem {
                sku: "SKU-1".into(),
                name: s("Mock Product"),
                quantity: 3.0,
                product_id: Some(1234),
                pricing: None,
                selected_options: vec![SelectedOption {
                    attribute: "Size".into(),
                    value: "M".into(),
                }],
            }],
        }),
    }
}

/// A back-office event of `event_type` for order `order_id`.
pub fn backoffice(
    event_type: &str,
    id: &str,
    time: i64,
    email: &str,
    order_id: &str,
    total: f64,
) -> BackofficeEvent {
    let address = Address {
        street1: s("1 Main St"),
        street2: None,
        city: s("Leeds"),
        state: None,
        postal_code: s("LS1"),
        country: s("GB"),
    };
    BackofficeEvent {
        event_id: id.to_owned(),
        event_type: event_type.into(),
        timestamp: time,
        identity: Identity {
            ecid: None,
            customer_id: None,
            email: s(email),
        },
        commerce_scope: Some(CommerceScope {
            environment_id: s("env"),
            website_code: s("base"),
            store_code: s("main"),
            store_view_code: s("default"),
        }),
        channel: Some(Channel {
            id: None,
            kind: s("https://ns.adobe.com/xdm/channel-types/web"),
        }),
        order: Some(Box::new(Order {
            purchase_id: order_id.to_owned(),
            purchase_order_number: None,
            price_total: Some(total),
            currency_code: s("GBP"),
            tax_amount: Some(0.0),
            discount_amount: Some(0.0),
            order_type: s("checkout"),
            created_date: s("2024-01-01T10:00:00+00:00"),
            last_updated_date: None,
            cancel_date: None,
            refund_total: None,
            payments: vec![PaymentItem {
                transaction_id: s("t1"),
                payment_amount: Some(total),
                payment_type: s("credit_card"),
                currency_code: s("GBP"),
            }],
            refunds: vec![RefundItem {
                transaction_id: s("r1"),
                refund_amount: Some(1.0),
                refund_reason: s("return"),
                refund_payment_type: s("credit_card"),
                currency_code: s("GBP"),
            }],
            returns: Some(Return {
                return_id: s("ret-1"),
                return_status: s("pending"),
                purchase_id: Some(order_id.to_owned()),
            }),
        })),
        shipping: Some(Box::new(Shipping {
            shipping_method: s("flatrate"),
            shipping_amount: Some(5.0),
            currency_code: s("GBP"),
            ship_date: None,
            tracking_number: s("1Z999AA10123456784"),
            tracking_url: None,
            address: Some(address.clone()),
        })),
        billing: Some(Box::new(Billing {
            address: Some(address),
        })),
        personal_email: Some(PersonalEmail {
            address: email.to_owned(),
        }),
        product_list_items: vec![ProductListItem {
            id: s("line-1"),
            sku: "SKU-1".into(),
            name: s("Mock Product"),
            quantity: Some(1.0),
            price_total: Some(total),
            discount_amount: Some(0.0),
            currency_code: s("GBP"),
            product_image_url: None,
            selected_options: vec![],
            categories: vec![ProductCategory {
                id: s("14"),
                name: s("Bags"),
                path: s("gear/bags"),
            }],
            return_item: Some(ReturnItem {
                return_status: s("pending"),
                return_quantity_requested: Some(1),
                ..Default::default()
            }),
        }],
    }
}

/// A profile event of `event_type` for a customer.
pub fn profile(
    event_type: &str,
    id: &str,
    time: i64,
    customer_id: &str,
    email: &str,
    tier: Option<&str>,
) -> ProfileEvent {
    ProfileEvent {
        event_id: id.to_owned(),
        event_type: event_type.into(),
        timestamp: time,
        identity: Identity {
            ecid: None,
            customer_id: s(customer_id),
            email: s(email),
        },
        person: Some(Person {
            name: Some(PersonName {
                first_name: s("Ann"),
                last_name: s("Example"),
            }),
            birth_date: s("1990-05-17"),
            gender: s("female"),
        }),
        personal_email: Some(PersonalEmail {
            address: email.to_owned(),
        }),
        mobile_phone: Some(Phone {
            number: "+44 113 496 0000".into(),
        }),
        billing_address: Some(Address {
            street1: s("1 Main St"),
            street2: None,
            city: s("Leeds"),
            state: None,
            postal_code: None,
            country: s("GB"),
        }),
        billing_address_phone: None,
        shipping_address: None,
        shipping_address_phone: None,
        user_account: Some(UserAccount {
            start_date: s("2024-01-01T10:00:00Z"),
            status: s("active"),
        }),
        loyalty: tier.map(|t| Loyalty {
            tier: s(t),
            status: s("active"),
            points: Some(1200.0),
        }),
        consents: Some(Consents {
            marketing_email: s("y"),
            marketing_sms: s("n"),
            marketing_push: None,
        }),
        customer_group: s("General"),
        commerce_scope: None,
        channel: None,
    }
}

/// One fully populated event of every type, encoded: (type, family, payload).
pub fn every_type(time: i64) -> Vec<(EventType, Family, Vec<u8>)> {
    use crate::codec::encode;
    EventType::ALL
        .iter()
        .map(|t| {
            let id = format!("sample-{}", t.name());
            let payload = match t.family() {
                Family::Storefront => {
                    encode::storefront(&storefront(t.name(), &id, time, "ecid-1"))
                }
                Family::Backoffice => encode::backoffice(&backoffice(
                    t.name(),
                    &id,
                    time,
                    "ann@example.com",
                    "100",
                    42.0,
                )),
                Family::Profile => encode::profile(&profile(
                    t.name(),
                    &id,
                    time,
                    "c-1",
                    "ann@example.com",
                    Some("gold"),
                )),
            }
            .expect("samples match the schemas");
            (*t, t.family(), payload)
        })
        .collect()
}
