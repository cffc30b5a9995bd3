//! Checkout end to end through `shopmesh up` and the edge: orders flow through the saga
//! (catalog reserves, payments charges with the sandbox gateway), keys make checkout
//! idempotent, customers see only their own orders, the status streams as Server-Sent Events,
//! and stock adds up whatever happens.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use shopmesh_kit::Secret;
use shopmesh_kit::crypto::MasterKey;
use shopmesh_payments::webhook;
use shopmesh_proto::shopmesh::catalog::v1::CreateCategoryRequest;
use shopmesh_proto::shopmesh::catalog::v1::catalog_service_client::CatalogServiceClient;
use shopmesh_proto::shopmesh::payments::v1::payment_service_client::PaymentServiceClient;
use shopmesh_proto::shopmesh::payments::v1::{ListOrderPaymentsRequest, PaymentStatus};
use support::{
    Answer, Platform, admin, bearer, customer, embedded, http, on_engines_with, testbed,
};

/// Creates a product (in a category of its own) through the edge; returns its id.
async fn product(platform: &Platform, token: &str, sku: &str, stock: i32) -> String {
    let category = CatalogServiceClient::new(platform.channel("catalog"))
        .create_category(bearer(
            CreateCategoryRequest {
                slug: sku.to_ascii_lowercase(),
                name: format!("Lamps {sku}"),
                ..CreateCategoryRequest::default()
            },
            token.trim_start_matches("Bearer "),
        ))
        .await
        .unwrap()
        .into_inner();
    let created = http(
        &platform.edge,
        "POST",
        "/v1/products",
        &[("authorization", token)],
        &serde_json::to_vec(&json!({
            "sku": sku,
            "title": format!("Lamp {sku}"),
            "price": {"currency_code": "EUR", "amount_minor": "2500"},
            "category_id": category.id,
            "stock": stock,
        }))
        .unwrap(),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    created.json()["id"].as_str().unwrap().to_owned()
}

async fn stock(platform: &Platform, product: &str) -> i64 {
    let answer = http(
        &platform.edge,
        "GET",
        &format!("/v1/products/{product}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.json()["stock"].as_i64().unwrap_or(0)
}

/// Whether the product's stock reaches `expected` within 45 s. The saga settles stock after the
/// order's own change, and after a crash a stock event that was in flight comes back only when
/// the event bus's 30 s ack timeout has run out, after its order has already ended.
async fn stock_becomes(platform: &Platform, product: &str, expected: i64) -> bool {
    for _ in 0..450 {
        if stock(platform, product).await == expected {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn order_body(product: &str, quantity: i32, payment_method: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "items": [{"product_id": product, "quantity": quantity}],
        "shipping_address": {
            "name": "Ada Lovelace", "line1": "12 St James's Square", "city": "London",
            "postal_code": "SW1Y 4JH", "country": "GB"
        },
        "payment_method": payment_method,
    }))
    .unwrap()
}

async fn place(platform: &Platform, token: &str, key: &str, body: &[u8]) -> Answer {
    http(
        &platform.edge,
        "POST",
        "/v1/orders",
        &[("authorization", token), ("idempotency-key", key)],
        body,
    )
    .await
}

async fn get(platform: &Platform, token: &str, id: &str) -> Answer {
    http(
        &platform.edge,
        "GET",
        &format!("/v1/orders/{id}"),
        &[("authorization", token)],
        b"",
    )
    .await
}

/// Polls the order until its status is one of `statuses`; returns it.
async fn until(platform: &Platform, token: &str, id: &str, statuses: &[&str]) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let answer = get(platform, token, id).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        last = answer.json();
        if statuses.contains(&last["status"].as_str().unwrap_or_default()) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("order {id} did not reach {statuses:?}: {last:#}");
}

fn history(order: &Value) -> Vec<String> {
    order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_paid_order_a_declined_one_and_a_refund() {
    let (platform, _dir) = embedded().await;
    let staff = admin(&platform).await;
    let lamp = product(&platform, &staff, "LAMP-1", 10).await;
    let ada = customer(&platform, "ada@example.com").await;

    // Paid with a card that works.
    let placed = place(
        &platform,
        &ada,
        "order-1",
        &order_body(&lamp, 2, "pm_card_visa"),
    )
    .await;
    assert_eq!(placed.status, 202, "{placed:?}");
    let order = placed.json();
    assert_eq!(order["status"], "ORDER_STATUS_CREATED");
    assert_eq!(
        order["total"]["amount_minor"], "5000",
        "prices come from catalog"
    );
    let id = order["id"].as_str().unwrap().to_owned();
    let paid = until(&platform, &ada, &id, &["ORDER_STATUS_PAID"]).await;
    assert_eq!(
        history(&paid),
        [
            "ORDER_STATUS_CREATED",
            "ORDER_STATUS_STOCK_RESERVED",
            "ORDER_STATUS_PAYMENT_PENDING",
            "ORDER_STATUS_PAID"
        ]
    );
    assert_eq!(paid["payment"]["card_brand"], "visa");
    assert_eq!(paid["payment"]["card_last4"], "4242");
    assert_eq!(stock(&platform, &lamp).await, 8);

    // Declined: the order fails and its stock comes back.
    let declined = place(
        &platform,
        &ada,
        "order-2",
        &order_body(&lamp, 3, "pm_card_chargeDeclined"),
    )
    .await;
    assert_eq!(declined.status, 202, "{declined:?}");
    let declined_id = declined.json()["id"].as_str().unwrap().to_owned();
    let failed = until(
        &platform,
        &ada,
        &declined_id,
        &["ORDER_STATUS_PAYMENT_FAILED"],
    )
    .await;
    assert!(
        !failed["payment"]["decline_code"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert!(
        stock_becomes(&platform, &lamp, 8).await,
        "the declined order's stock is released"
    );

    // Watch the paid order as Server-Sent Events while it is cancelled: the current state
    // first, then each transition, and the stream ends at the terminal state.
    let edge = platform.edge.clone();
    let (watch_token, watch_id) = (ada.clone(), id.clone());
    let watching = tokio::spawn(async move {
        http(
            &edge,
            "GET",
            &format!("/v1/orders/{watch_id}/events"),
            &[
                ("authorization", &watch_token),
                ("accept", "text/event-stream"),
            ],
            b"",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled = http(
        &platform.edge,
        "POST",
        &format!("/v1/orders/{id}:cancel"),
        &[("authorization", &ada)],
        br#"{"reason": "changed my mind"}"#,
    )
    .await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    assert_eq!(cancelled.json()["status"], "ORDER_STATUS_CANCELLED");
    let refunded = until(&platform, &ada, &id, &["ORDER_STATUS_REFUNDED"]).await;
    assert_eq!(history(&refunded).last().unwrap(), "ORDER_STATUS_REFUNDED");

    let stream = tokio::time::timeout(Duration::from_secs(20), watching)
        .await
        .expect("the stream ends at the terminal state")
        .unwrap();
    assert_eq!(stream.status, 200, "{stream:?}");
    assert!(
        stream
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = String::from_utf8_lossy(&stream.body);
    let events: Vec<Value> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str(data.trim()).ok())
        .collect();
    assert!(events.len() >= 3, "{text}");
    assert_eq!(events[0]["order"]["status"], "ORDER_STATUS_PAID");
    assert!(events[0].get("transition").is_none_or(Value::is_null));
    let transitions: Vec<&str> = events[1..]
        .iter()
        .map(|e| e["transition"]["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        transitions,
        ["ORDER_STATUS_CANCELLED", "ORDER_STATUS_REFUNDED"]
    );

    // Cancelling gave the stock back too.
    assert!(
        stock_becomes(&platform, &lamp, 10).await,
        "the refunded order's stock was not returned"
    );
}

#[tokio::test]
async fn a_signed_webhook_through_the_edge() {
    let (platform, _dir) = embedded().await;
    let staff = admin(&platform).await;
    let lamp = product(&platform, &staff, "LAMP-W", 5).await;
    let ada = customer(&platform, "ada@example.com").await;
    let placed = place(
        &platform,
        &ada,
        "webhook-1",
        &order_body(&lamp, 1, "pm_card_visa"),
    )
    .await;
    assert_eq!(placed.status, 202, "{placed:?}");
    let id = placed.json()["id"].as_str().unwrap().to_owned();
    let paid = until(&platform, &ada, &id, &["ORDER_STATUS_PAID"]).await;
    let payment = PaymentServiceClient::new(platform.channel("payments"))
        .list_order_payments(ListOrderPaymentsRequest {
            order_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .payments
        .remove(0);

    // The secret `shopmesh up` generated into its data directory, as payments reads it.
    let key = platform.data_dir.join("keys/payments.webhook_secret");
    assert!(key.exists(), "{} was generated", key.display());
    let key = MasterKey::load_or_create(&key).unwrap();
    let secret = Secret::new(format!("whsec_{}", key.to_secret().expose()));
    let body = serde_json::to_vec(&json!({
        "id": format!("evt_e2e_{}", uuid::Uuid::new_v4().simple()),
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": {"id": payment.provider_payment_id, "object": "payment_intent"}},
    }))
    .unwrap();
    let signature = webhook::sign(&body, &secret, webhook::unix_now());
    let headers = [
        ("stripe-signature", signature.as_str()),
        ("content-type", "application/json"),
    ];
    let first = http(
        &platform.edge,
        "POST",
        "/v1/webhooks/stripe",
        &headers,
        &body,
    )
    .await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.json(), json!({"duplicate": false}));
    let again = http(
        &platform.edge,
        "POST",
        "/v1/webhooks/stripe",
        &headers,
        &body,
    )
    .await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json(), json!({"duplicate": true}));
    let tampered = String::from_utf8(body)
        .unwrap()
        .replace("evt_e2e_", "evt_e2f_");
    let tampered = http(
        &platform.edge,
        "POST",
        "/v1/webhooks/stripe",
        &headers,
        tampered.as_bytes(),
    )
    .await;
    assert_eq!(tampered.status, 400, "{tampered:?}");
    assert_eq!(tampered.json()["details"][0]["reason"], "BAD_SIGNATURE");
    // The charge had settled already: the webhook changed nothing.
    let after = get(&platform, &ada, &id).await.json();
    assert_eq!(history(&after), history(&paid));
}

#[tokio::test]
async fn keys_make_checkout_idempotent_and_orders_are_private() {
    let (platform, _dir) = embedded().await;
    let staff = admin(&platform).await;
    let lamp = product(&platform, &staff, "LAMP-2", 10).await;
    let ada = customer(&platform, "ada@example.com").await;
    let bob = customer(&platform, "bob@example.com").await;
    let body = order_body(&lamp, 1, "pm_card_visa");

    let missing_key = http(
        &platform.edge,
        "POST",
        "/v1/orders",
        &[("authorization", &ada)],
        &body,
    )
    .await;
    assert_eq!(missing_key.status, 400, "{missing_key:?}");

    let first = place(&platform, &ada, "key-1", &body).await;
    let again = place(&platform, &ada, "key-1", &body).await;
    assert_eq!((first.status, again.status), (202, 202));
    let id = first.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        again.json()["id"],
        first.json()["id"],
        "same key, same body: same order"
    );

    let other_body = place(
        &platform,
        &ada,
        "key-1",
        &order_body(&lamp, 2, "pm_card_visa"),
    )
    .await;
    assert_eq!(other_body.status, 409, "{other_body:?}");
    // Keys belong to their customer: Bob's "key-1" is his own order.
    let bobs = place(&platform, &bob, "key-1", &body).await;
    assert_eq!(bobs.status, 202, "{bobs:?}");
    assert_ne!(bobs.json()["id"], first.json()["id"]);

    assert_eq!(
        get(&platform, &bob, &id).await.status,
        404,
        "another customer's order"
    );
    assert_eq!(
        get(&platform, &staff, &id).await.status,
        200,
        "staff may read any order"
    );
    let list = http(
        &platform.edge,
        "GET",
        "/v1/orders",
        &[("authorization", &ada)],
        b"",
    )
    .await;
    assert_eq!(list.status, 200, "{list:?}");
    let listed = list.json()["orders"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "only Ada's own order");
    assert_eq!(listed[0]["id"], first.json()["id"]);

    let unknown = place(
        &platform,
        &ada,
        "key-2",
        &order_body("0190a1b2-0000-7000-8000-000000000000", 1, "pm_card_visa"),
    )
    .await;
    assert_eq!(unknown.status, 400, "{unknown:?}");
    let delivered_too_early = http(
        &platform.edge,
        "POST",
        &format!("/v1/orders/{id}:deliver"),
        &[("authorization", &staff)],
        b"{}",
    )
    .await;
    assert_eq!(delivered_too_early.status, 400, "{delivered_too_early:?}");
}

#[tokio::test]
async fn of_two_orders_for_the_last_unit_exactly_one_wins() {
    let (platform, _dir) = embedded().await;
    let staff = admin(&platform).await;
    let lamp = product(&platform, &staff, "LAMP-3", 1).await;
    let ada = customer(&platform, "ada@example.com").await;
    let bob = customer(&platform, "bob@example.com").await;
    let body = order_body(&lamp, 1, "pm_card_visa");
    let (a, b) = tokio::join!(
        place(&platform, &ada, "last-unit", &body),
        place(&platform, &bob, "last-unit", &body)
    );
    assert_eq!((a.status, b.status), (202, 202));
    let done = ["ORDER_STATUS_PAID", "ORDER_STATUS_REJECTED"];
    let a = until(&platform, &ada, a.json()["id"].as_str().unwrap(), &done).await;
    let b = until(&platform, &bob, b.json()["id"].as_str().unwrap(), &done).await;
    let mut outcomes = [a["status"].as_str().unwrap(), b["status"].as_str().unwrap()];
    outcomes.sort();
    assert_eq!(outcomes, ["ORDER_STATUS_PAID", "ORDER_STATUS_REJECTED"]);
    assert_eq!(stock(&platform, &lamp).await, 0);
}

#[tokio::test]
async fn a_crash_mid_pipeline_loses_no_order_and_charges_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let burst = burst();
    let platform = Platform::start(dir.path(), &burst).await;
    let staff = admin(&platform).await;
    let lamp = product(&platform, &staff, "LAMP-4", 40).await;
    let ada = customer(&platform, "ada@example.com").await;
    let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..30 {
        let (edge, token, lamp) = (platform.edge.clone(), ada.clone(), lamp.clone());
        let answered = answered.clone();
        tokio::spawn(async move {
            let card = if n % 3 == 2 {
                "pm_card_chargeDeclined"
            } else {
                "pm_card_visa"
            };
            let key = format!("crash-{n}");
            let headers = [("authorization", token.as_str()), ("idempotency-key", &key)];
            // A request the crash cuts off has no answer (the task ends on the closed socket).
            let answer = http(
                &edge,
                "POST",
                "/v1/orders",
                &headers,
                &order_body(&lamp, 1, card),
            )
            .await;
            let _ = answered.send(answer);
        });
    }
    drop(answered);
    // Crash once a third of the burst is accepted: the rest is in flight or not yet sent, and
    // the accepted orders are somewhere in the saga.
    let mut accepted = Vec::new();
    while accepted.len() < 10 {
        let answer = answers.recv().await.expect("answers before the crash");
        assert_eq!(answer.status, 202, "{answer:?}");
        accepted.push(answer.json()["id"].as_str().unwrap().to_owned());
    }
    platform.kill().await;
    while let Some(answer) = answers.recv().await {
        if answer.status == 202 {
            accepted.push(answer.json()["id"].as_str().unwrap().to_owned());
        }
    }

    let platform = Platform::start(dir.path(), &burst).await;
    let paid = every_order_ends_charged_once(&platform, &ada, &accepted).await;
    assert!(paid > 0, "some orders were paid");
    assert!(
        stock_becomes(&platform, &lamp, 40 - paid).await,
        "stock is 40 less the {paid} paid units"
    );
}

/// Settings that lift checkout's rate limits, for one customer placing a burst.
fn burst() -> Vec<String> {
    ["per_ip", "per_user"]
        .iter()
        .flat_map(|key| {
            [
                format!("services.edge.limits.checkout.{key}.per_second=1000"),
                format!("services.edge.limits.checkout.{key}.burst=1000"),
            ]
        })
        .collect()
}

/// Waits until every order of the customer behind `token` has ended (paid, payment failed or
/// rejected), checks that each of `accepted` is among them and that no order was charged
/// twice (nor an unpaid one at all); returns how many units were paid for.
async fn every_order_ends_charged_once(
    platform: &Platform,
    token: &str,
    accepted: &[String],
) -> i64 {
    let ends = [
        "ORDER_STATUS_PAID",
        "ORDER_STATUS_PAYMENT_FAILED",
        "ORDER_STATUS_REJECTED",
    ];
    let status = |o: &Value| o["status"].as_str().unwrap_or_default().to_owned();
    let mut orders = Vec::new();
    for _ in 0..1200 {
        let list = http(
            &platform.edge,
            "GET",
            "/v1/orders?page_size=100",
            &[("authorization", token)],
            b"",
        )
        .await;
        assert_eq!(list.status, 200, "{list:?}");
        orders = list.json()["orders"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if orders.iter().all(|o| ends.contains(&status(o).as_str())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        orders.iter().all(|o| ends.contains(&status(o).as_str())),
        "every order reaches an end: {:?}",
        orders.iter().map(status).collect::<Vec<_>>()
    );
    for id in accepted {
        assert!(
            orders.iter().any(|o| o["id"] == id.as_str()),
            "accepted order {id} was lost"
        );
    }
    let mut payments = PaymentServiceClient::new(platform.channel("payments"));
    let mut paid = 0;
    for order in &orders {
        let id = order["id"].as_str().unwrap().to_owned();
        let attempts = payments
            .list_order_payments(ListOrderPaymentsRequest {
                order_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .payments;
        let charged = attempts
            .iter()
            .filter(|p| p.status == PaymentStatus::Succeeded as i32)
            .count();
        if status(order) == "ORDER_STATUS_PAID" {
            assert_eq!(charged, 1, "paid order {id} was charged {charged} times");
            paid += order["items"][0]["quantity"].as_i64().unwrap();
        } else {
            assert_eq!(charged, 0, "unpaid order {id} was charged");
        }
    }
    paid
}

/// With Pulsar and CQL: the broker stops during a burst of orders and comes back; every order
/// then completes, and none is charged twice.
#[tokio::test]
async fn orders_survive_a_broker_restart() {
    let Some((platform, _dir)) = on_engines_with(&burst()).await else {
        return;
    };
    let staff = admin(&platform).await;
    let lamp = product(&platform, &staff, "LAMP-5", 100).await;
    let ada = customer(&platform, "ada@example.com").await;
    let mut accepted = Vec::new();
    let place_some = |from: usize| {
        let (edge, token, lamp) = (platform.edge.clone(), ada.clone(), lamp.clone());
        async move {
            let mut ids = Vec::new();
            for n in from..from + 10 {
                let key = format!("restart-{n}");
                let headers = [("authorization", token.as_str()), ("idempotency-key", &key)];
                let answer = http(
                    &edge,
                    "POST",
                    "/v1/orders",
                    &headers,
                    &order_body(&lamp, 1, "pm_card_visa"),
                )
                .await;
                assert_eq!(answer.status, 202, "{answer:?}");
                ids.push(answer.json()["id"].as_str().unwrap().to_owned());
            }
            ids
        }
    };
    accepted.extend(place_some(0).await);
    testbed(&["down", "pulsar"]);
    // Checkout does not need the broker: orders are accepted and wait in the outbox.
    accepted.extend(place_some(10).await);
    testbed(&["up", "pulsar"]);
    let paid = every_order_ends_charged_once(&platform, &ada, &accepted).await;
    assert_eq!(paid, 20, "every order was paid once the broker was back");
    assert_eq!(stock(&platform, &lamp).await, 80);
}
