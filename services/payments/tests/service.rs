//! Payments end to end on a fresh embedded bus and SQLite store, with the sandbox gateway:
//! the test cards, charges from `PaymentRequested` (once, however often delivered), refunds, and
//! the webhook path (signature, de-duplication, one effect).

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use shopmesh_events::outbox::{OutboxStore, SqliteOutbox};
use shopmesh_events::{Event, EventBus, SubscribeOptions, Subscriber, envelope, topics};
use shopmesh_host::{Runtime, Store};
use shopmesh_kit::{ErrorKind, Secret, Shutdown};
use shopmesh_payments::consumers::on_order_event;
use shopmesh_payments::gateway::sandbox::{Delivery, Sandbox};
use shopmesh_payments::gateway::{
    IntentRequest, PaymentGateway, ProviderStatus, RefundRequest, RefundStatus, charge_key,
    refund_key,
};
use shopmesh_payments::grpc::PaymentApi;
use shopmesh_payments::store::sqlite::SqlitePayments;
use shopmesh_payments::store::{CQL, PaymentRecord, PaymentStore, SQLITE, Status};
use shopmesh_payments::webhook::{self, TOLERANCE_SECS};
use shopmesh_payments::{GatewayKind, PaymentHandler, Setup, StripeConfig, assemble};
use shopmesh_proto::google::api::HttpBody;
use shopmesh_proto::shopmesh::common::v1::Money;
use shopmesh_proto::shopmesh::events::v1::{
    OrderEvent, PaymentEvent, PaymentRequested, RefundRequested, order_event, payment_event,
};
use shopmesh_proto::shopmesh::payments::v1::payment_service_server::PaymentService;
use shopmesh_proto::shopmesh::payments::v1::{
    GetPaymentRequest, ListOrderPaymentsRequest, PaymentProvider, PaymentStatus,
    RefundStatus as RefundView,
};
use shopmesh_testkit::events::TestBus;
use shopmesh_testkit::storage::{self as testing, TempSqlite};
use tokio::sync::mpsc;
use uuid::Uuid;

const SECRET: &str = "whsec_shopmesh_test_secret";

fn secret() -> Secret {
    Secret::new(SECRET)
}

/// The payments service on its own bus and store, its background tasks running.
struct Running {
    handler: Arc<PaymentHandler>,
    bus: Arc<dyn EventBus>,
    /// The SQLite store, or `None` on CQL.
    temp: Option<TempSqlite>,
    shutdown: Shutdown,
    _bus: TestBus,
}

impl Running {
    /// The service's gRPC face, over the same handler.
    fn api(&self) -> PaymentApi {
        PaymentApi(self.handler.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn start(spawn_tasks: bool) -> Running {
    let temp = testing::sqlite(SQLITE).await;
    let store = Store::Sqlite(temp.db.clone());
    start_on(store, Some(temp), spawn_tasks).await
}

async fn start_on(store: Store, temp: Option<TempSqlite>, spawn_tasks: bool) -> Running {
    let test_bus = TestBus::embedded();
    let bus = test_bus.connect().await.unwrap();
    let runtime = if spawn_tasks {
        Runtime::new(bus.clone(), Shutdown::new())
    } else {
        Runtime::inert(bus.clone())
    };
    let setup = Setup {
        gateway: GatewayKind::Sandbox,
        stripe: StripeConfig::default(),
        webhook_secrets: vec![secret()],
        sweep_after: Duration::from_secs(60),
    };
    let handler = assemble(&runtime, store, setup).await.unwrap();
    Running {
        handler,
        bus,
        temp,
        shutdown: runtime.shutdown.clone(),
        _bus: test_bus,
    }
}

fn order_event(order_id: Uuid, payload: order_event::Payload) -> Event {
    let mut event = Event::new(
        order_id.to_string(),
        "shopmesh.events.v1.OrderEvent",
        Vec::new(),
    );
    event.payload = OrderEvent {
        meta: Some(envelope(&event, "orders")),
        order_id: order_id.to_string(),
        user_id: Uuid::now_v7().to_string(),
        status: 0,
        payload: Some(payload),
    }
    .encode_to_vec();
    event
}

fn payment_requested(order_id: Uuid, payment_method: &str, attempt: i32) -> Event {
    order_event(
        order_id,
        order_event::Payload::PaymentRequested(PaymentRequested {
            amount: Some(Money {
                currency_code: "EUR".into(),
                amount_minor: 4200,
            }),
            payment_method: payment_method.into(),
            attempt,
        }),
    )
}

async fn payments_subscription(bus: &Arc<dyn EventBus>) -> Box<dyn Subscriber> {
    bus.subscribe(topics::PAYMENTS, "orders-saga", SubscribeOptions::default())
        .await
        .unwrap()
}

/// The next payment event within `wait`, acknowledged.
async fn next_event(subscriber: &mut Box<dyn Subscriber>, wait: Duration) -> Option<PaymentEvent> {
    let delivery = tokio::time::timeout(wait, subscriber.next()).await.ok()?;
    let delivery = delivery.unwrap();
    subscriber.ack(&delivery).await.unwrap();
    assert_eq!(delivery.event.kind, "shopmesh.events.v1.PaymentEvent");
    let event = PaymentEvent::decode(delivery.event.payload.as_slice()).unwrap();
    assert_eq!(event.order_id, delivery.event.key, "keyed by order");
    let meta = event.meta.clone().unwrap();
    assert_eq!(meta.event_id, delivery.event.id);
    assert_eq!(meta.producer, "payments");
    Some(event)
}

const SOON: Duration = Duration::from_secs(15);
/// Long enough for a duplicate to have shown up if one were coming.
const QUIET: Duration = Duration::from_millis(1500);

async fn sandbox_on(temp: &TempSqlite) -> (Sandbox, mpsc::Receiver<Delivery>) {
    let store: Arc<dyn PaymentStore> = Arc::new(SqlitePayments(temp.db.clone()));
    let (sender, receiver) = mpsc::channel(16);
    (Sandbox::new(store, secret(), sender), receiver)
}

fn intent_request(payment_method: &str) -> IntentRequest {
    let order_id = Uuid::now_v7().to_string();
    IntentRequest {
        amount_minor: 4200,
        currency: "EUR".into(),
        payment_method: payment_method.into(),
        idempotency_key: charge_key(&order_id, 1),
        order_id,
        payment_id: Uuid::now_v7().to_string(),
    }
}

/// The event a sandbox delivery carries, after checking its signature.
fn delivered(delivery: &Delivery) -> serde_json::Value {
    webhook::verify(
        &delivery.signature,
        &delivery.body,
        &[secret()],
        webhook::unix_now(),
    )
    .expect("sandbox events are signed with the webhook secret");
    serde_json::from_slice(&delivery.body).unwrap()
}

#[tokio::test]
async fn the_sandbox_follows_stripes_test_cards() {
    let temp = testing::sqlite(SQLITE).await;
    let (sandbox, mut deliveries) = sandbox_on(&temp).await;
    assert_eq!(sandbox.provider(), PaymentProvider::Sandbox);
    let cases = [
        ("pm_card_visa", None, "visa", "4242"),
        ("pm_card_mastercard", None, "mastercard", "4444"),
        (
            "pm_card_chargeDeclined",
            Some("generic_decline"),
            "visa",
            "0002",
        ),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            Some("insufficient_funds"),
            "visa",
            "9995",
        ),
        (
            "pm_card_chargeDeclinedExpiredCard",
            Some("expired_card"),
            "visa",
            "0069",
        ),
        ("pm_card_unheard_of", Some("generic_decline"), "", ""),
    ];
    for (method, decline, brand, last4) in cases {
        let request = intent_request(method);
        let payment = sandbox.create_and_confirm(&request).await.unwrap();
        assert!(
            payment.provider_payment_id.starts_with("pi_sbx_"),
            "{method}"
        );
        assert_eq!(
            payment.payment_id.as_deref(),
            Some(request.payment_id.as_str())
        );
        assert_eq!(
            (payment.amount_minor, payment.currency.as_str()),
            (4200, "EUR")
        );
        assert_eq!(
            (payment.card_brand.as_str(), payment.card_last4.as_str()),
            (brand, last4),
            "{method}"
        );
        let event = delivered(&deliveries.try_recv().expect("an event per intent"));
        assert_eq!(event["object"], "event");
        assert!(event["id"].as_str().unwrap().starts_with("evt_"));
        assert!(event["created"].as_i64().is_some());
        assert_eq!(
            event["data"]["object"]["id"],
            payment.provider_payment_id.as_str()
        );
        match decline {
            None => {
                assert_eq!(payment.status, ProviderStatus::Succeeded, "{method}");
                assert_eq!(event["type"], "payment_intent.succeeded");
            }
            Some(code) => {
                let ProviderStatus::Failed {
                    decline_code,
                    message,
                } = &payment.status
                else {
                    panic!("{method} should be declined, got {:?}", payment.status);
                };
                assert_eq!(decline_code, code, "{method}");
                assert!(!message.is_empty());
                assert_eq!(event["type"], "payment_intent.payment_failed");
                assert_eq!(
                    event["data"]["object"]["last_payment_error"]["decline_code"],
                    code
                );
            }
        }
    }
    let unknown = sandbox
        .create_and_confirm(&intent_request("pm_card_unheard_of"))
        .await
        .unwrap();
    let ProviderStatus::Failed { message, .. } = unknown.status else {
        panic!("unknown methods are declined");
    };
    assert!(message.contains("pm_card_visa"), "{message}");
}

#[tokio::test]
async fn the_sandbox_is_idempotent_and_survives_a_restart() {
    let temp = testing::sqlite(SQLITE).await;
    let (sandbox, mut deliveries) = sandbox_on(&temp).await;
    let request = intent_request("pm_card_visa");
    let first = sandbox.create_and_confirm(&request).await.unwrap();
    let again = sandbox.create_and_confirm(&request).await.unwrap();
    assert_eq!(first, again, "the same key gives the same intent");
    deliveries.try_recv().unwrap();
    assert!(
        deliveries.try_recv().is_err(),
        "a replay sends no new event"
    );

    let refund = RefundRequest {
        provider_payment_id: first.provider_payment_id.clone(),
        amount_minor: 4200,
        currency: "EUR".into(),
        idempotency_key: refund_key(&request.payment_id),
        payment_id: request.payment_id.clone(),
        refund_id: Uuid::now_v7().to_string(),
    };
    let refunded = sandbox.refund(&refund).await.unwrap();
    assert!(refunded.id.starts_with("re_sbx_"));
    assert_eq!(refunded.status, RefundStatus::Succeeded);
    assert_eq!(sandbox.refund(&refund).await.unwrap(), refunded);
    let event = delivered(&deliveries.try_recv().unwrap());
    assert_eq!(event["type"], "charge.refunded");
    assert_eq!(event["data"]["object"]["object"], "charge");
    assert_eq!(
        event["data"]["object"]["refunds"]["data"][0]["id"],
        refunded.id.as_str()
    );
    assert!(deliveries.try_recv().is_err());

    // Too much, and refunds of declined charges, are refused.
    let declined = sandbox
        .create_and_confirm(&intent_request("pm_card_chargeDeclined"))
        .await
        .unwrap();
    assert!(
        sandbox
            .refund(&RefundRequest {
                provider_payment_id: declined.provider_payment_id,
                idempotency_key: refund_key(&Uuid::now_v7().to_string()),
                ..refund.clone()
            })
            .await
            .is_err()
    );
    assert!(
        sandbox
            .refund(&RefundRequest {
                amount_minor: 5000,
                idempotency_key: refund_key(&Uuid::now_v7().to_string()),
                ..refund.clone()
            })
            .await
            .is_err()
    );

    // A new process on the same database knows the objects.
    let reopened = shopmesh_storage::sqlite::Sqlite::open(temp.db.path(), SQLITE)
        .await
        .unwrap();
    let store: Arc<dyn PaymentStore> = Arc::new(SqlitePayments(reopened));
    let (sender, _receiver) = mpsc::channel(4);
    let restarted = Sandbox::new(store, secret(), sender);
    assert_eq!(
        restarted
            .retrieve(&first.provider_payment_id)
            .await
            .unwrap(),
        first
    );
    assert_eq!(
        restarted.retrieve_refund(&refunded.id).await.unwrap(),
        refunded
    );
    assert!(restarted.retrieve("pi_sbx_missing").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_request_is_charged_once_however_often_delivered() {
    charged_once(start(true).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_request_is_charged_once_on_cql() {
    let Some(cql) = testing::cql(CQL).await else {
        return;
    };
    charged_once(start_on(Store::Cql(cql), None, true).await).await;
}

async fn charged_once(service: Running) {
    let mut outcomes = payments_subscription(&service.bus).await;
    let order_id = Uuid::now_v7();
    let request = payment_requested(order_id, "pm_card_visa", 1);
    // The same event twice (a redelivery), and a second event for the same attempt.
    service.bus.publish(topics::ORDERS, &request).await.unwrap();
    service.bus.publish(topics::ORDERS, &request).await.unwrap();
    service
        .bus
        .publish(
            topics::ORDERS,
            &payment_requested(order_id, "pm_card_visa", 1),
        )
        .await
        .unwrap();

    let event = next_event(&mut outcomes, SOON).await.expect("an outcome");
    let Some(payment_event::Payload::Succeeded(succeeded)) = event.payload else {
        panic!("expected PaymentSucceeded, got {:?}", event.payload);
    };
    assert_eq!(succeeded.attempt, 1);
    assert_eq!(
        succeeded.amount,
        Some(Money {
            currency_code: "EUR".into(),
            amount_minor: 4200
        })
    );
    assert_eq!(
        (succeeded.card_brand.as_str(), succeeded.card_last4.as_str()),
        ("visa", "4242")
    );
    assert_eq!(event.order_id, order_id.to_string());
    // One outcome, one event: the sandbox's webhook and the redeliveries add none. (Delivery is
    // at least once, so the bus may hand the same event again; it never carries another one.)
    while let Some(again) = next_event(&mut outcomes, QUIET).await {
        assert_eq!(again.meta, event.meta, "a second payment event: {again:?}");
    }

    let listed = service
        .api()
        .list_order_payments(tonic::Request::new(ListOrderPaymentsRequest {
            order_id: order_id.to_string(),
        }))
        .await
        .unwrap()
        .into_inner()
        .payments;
    assert_eq!(listed.len(), 1, "one payment per (order, attempt)");
    let payment = &listed[0];
    assert_eq!(payment.id, event.payment_id);
    assert_eq!(payment.status, PaymentStatus::Succeeded as i32);
    assert_eq!(payment.provider, PaymentProvider::Sandbox as i32);
    assert!(payment.provider_payment_id.starts_with("pi_sbx_"));
    assert_eq!(payment.payment_method, "pm_card_visa");
    let fetched = service
        .api()
        .get_payment(tonic::Request::new(GetPaymentRequest {
            id: payment.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&fetched, payment);
    let missing = service
        .api()
        .get_payment(tonic::Request::new(GetPaymentRequest {
            id: Uuid::now_v7().to_string(),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_fails_with_its_decline_code() {
    let service = start(true).await;
    let mut outcomes = payments_subscription(&service.bus).await;
    let order_id = Uuid::now_v7();
    service
        .bus
        .publish(
            topics::ORDERS,
            &payment_requested(order_id, "pm_card_chargeDeclinedInsufficientFunds", 2),
        )
        .await
        .unwrap();
    let event = next_event(&mut outcomes, SOON).await.expect("an outcome");
    let Some(payment_event::Payload::Failed(failed)) = event.payload else {
        panic!("expected PaymentFailed, got {:?}", event.payload);
    };
    assert_eq!(failed.attempt, 2);
    assert_eq!(failed.decline_code, "insufficient_funds");
    assert!(!failed.failure_message.is_empty());
    assert!(next_event(&mut outcomes, QUIET).await.is_none());
    let payment = service
        .handler
        .store()
        .payment(Uuid::parse_str(&event.payment_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payment.status, Status::Failed);
    assert_eq!(payment.decline_code, "insufficient_funds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_request_refunds_the_payment_once() {
    let service = start(true).await;
    let mut outcomes = payments_subscription(&service.bus).await;
    let order_id = Uuid::now_v7();
    service
        .bus
        .publish(
            topics::ORDERS,
            &payment_requested(order_id, "pm_card_mastercard", 1),
        )
        .await
        .unwrap();
    let charged = next_event(&mut outcomes, SOON).await.expect("a charge");
    assert!(matches!(
        charged.payload,
        Some(payment_event::Payload::Succeeded(_))
    ));

    let refund = order_event(
        order_id,
        order_event::Payload::RefundRequested(RefundRequested {
            payment_id: charged.payment_id.clone(),
            amount: Some(Money {
                currency_code: "EUR".into(),
                amount_minor: 4200,
            }),
            reason: "cancelled by the customer".into(),
        }),
    );
    service.bus.publish(topics::ORDERS, &refund).await.unwrap();
    service.bus.publish(topics::ORDERS, &refund).await.unwrap();
    let event = next_event(&mut outcomes, SOON)
        .await
        .expect("a refund outcome");
    assert_eq!(event.payment_id, charged.payment_id);
    let Some(payment_event::Payload::Refunded(refunded)) = event.payload else {
        panic!("expected Refunded, got {:?}", event.payload);
    };
    assert_eq!(refunded.amount.as_ref().map(|m| m.amount_minor), Some(4200));
    assert!(next_event(&mut outcomes, QUIET).await.is_none());

    let payment = service
        .api()
        .get_payment(tonic::Request::new(GetPaymentRequest {
            id: charged.payment_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(payment.status, PaymentStatus::Refunded as i32);
    assert_eq!(payment.amount_refunded.map(|m| m.amount_minor), Some(4200));
    assert_eq!(payment.refunds.len(), 1);
    assert_eq!(payment.refunds[0].id, refunded.refund_id);
    assert_eq!(payment.refunds[0].status, RefundView::Succeeded as i32);
    assert!(payment.refunds[0].provider_refund_id.starts_with("re_sbx_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_order_events_are_ignored() {
    let service = start(true).await;
    let mut outcomes = payments_subscription(&service.bus).await;
    let order_id = Uuid::now_v7();
    service
        .bus
        .publish(
            topics::ORDERS,
            &order_event(
                order_id,
                order_event::Payload::Delivered(Default::default()),
            ),
        )
        .await
        .unwrap();
    assert!(next_event(&mut outcomes, QUIET).await.is_none());
    assert!(
        service
            .handler
            .store()
            .order_payments(order_id)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A processing payment with a sandbox intent behind it (charged, but not yet settled), and
/// the signed event the sandbox sent about it.
async fn in_flight(service: &Running, method: &str) -> (PaymentRecord, Delivery) {
    let store = service.handler.store();
    let order_id = Uuid::now_v7();
    let record = store
        .begin_payment(&PaymentRecord {
            id: Uuid::now_v7(),
            order_id,
            user_id: Uuid::now_v7(),
            provider: PaymentProvider::Sandbox,
            provider_payment_id: String::new(),
            attempt: 1,
            status: Status::Processing,
            currency: "EUR".into(),
            amount_minor: 4200,
            amount_refunded_minor: 0,
            payment_method: method.into(),
            card_brand: String::new(),
            card_last4: String::new(),
            decline_code: String::new(),
            failure_message: String::new(),
            created_at_ms: 1_700_000_000_000,
            updated_at_ms: 1_700_000_000_000,
        })
        .await
        .unwrap();
    let (sandbox, mut deliveries) = sandbox_on(service.temp.as_ref().unwrap()).await;
    sandbox
        .create_and_confirm(&IntentRequest {
            amount_minor: 4200,
            currency: "EUR".into(),
            payment_method: method.into(),
            idempotency_key: charge_key(&order_id.to_string(), 1),
            order_id: order_id.to_string(),
            payment_id: record.id.to_string(),
        })
        .await
        .unwrap();
    (record, deliveries.try_recv().unwrap())
}

async fn outbox_len(temp: &Option<TempSqlite>) -> usize {
    let db = temp.as_ref().unwrap().db.clone();
    SqliteOutbox(db).pending(1000).await.unwrap().len()
}

#[tokio::test]
async fn a_webhook_is_applied_once() {
    // No background tasks: the outbox keeps what the webhook wrote, to be counted.
    let service = start(false).await;
    let (record, delivery) = in_flight(&service, "pm_card_visa").await;
    let mut request = tonic::Request::new(HttpBody {
        content_type: "application/json".into(),
        data: delivery.body.clone(),
        extensions: Vec::new(),
    });
    request
        .metadata_mut()
        .insert("stripe-signature", delivery.signature.parse().unwrap());
    let answer = service
        .api()
        .handle_stripe_webhook(request)
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.duplicate);
    let settled = service
        .handler
        .store()
        .payment(record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(settled.status, Status::Succeeded);
    assert!(settled.provider_payment_id.starts_with("pi_sbx_"));
    assert_eq!(
        (settled.card_brand.as_str(), settled.card_last4.as_str()),
        ("visa", "4242")
    );
    assert_eq!(outbox_len(&service.temp).await, 1);

    let replay = service
        .handler
        .webhook(&delivery.body, Some(&delivery.signature))
        .await
        .unwrap();
    assert!(replay.duplicate);
    assert_eq!(outbox_len(&service.temp).await, 1, "one effect, one event");

    // A newer delivery of the same event id, signed afresh, is still a duplicate.
    let resigned = webhook::sign(&delivery.body, &secret(), webhook::unix_now());
    assert!(
        service
            .handler
            .webhook(&delivery.body, Some(&resigned))
            .await
            .unwrap()
            .duplicate
    );
    assert_eq!(outbox_len(&service.temp).await, 1);
}

#[tokio::test]
async fn a_bad_or_stale_signature_changes_nothing() {
    let service = start(false).await;
    let (record, delivery) = in_flight(&service, "pm_card_chargeDeclined").await;
    let now = webhook::unix_now();
    let refused = [
        webhook::sign(&delivery.body, &secret(), now - TOLERANCE_SECS - 60),
        webhook::sign(&delivery.body, &secret(), now + TOLERANCE_SECS + 60),
        webhook::sign(&delivery.body, &Secret::new("whsec_someone_else"), now),
        format!("t={now},v1={}", "ab".repeat(32)),
        "nonsense".to_owned(),
    ];
    for signature in &refused {
        let error = service
            .handler
            .webhook(&delivery.body, Some(signature))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{signature}");
    }
    let error = service
        .handler
        .webhook(&delivery.body, None)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    // Through gRPC, a missing header is INVALID_ARGUMENT (the edge answers 400).
    let status = service
        .api()
        .handle_stripe_webhook(tonic::Request::new(HttpBody {
            content_type: "application/json".into(),
            data: delivery.body.clone(),
            extensions: Vec::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let unchanged = service
        .handler
        .store()
        .payment(record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unchanged, record);
    assert_eq!(outbox_len(&service.temp).await, 0);
    let event_id = serde_json::from_slice::<serde_json::Value>(&delivery.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !service
            .handler
            .store()
            .webhook_seen(&event_id)
            .await
            .unwrap()
    );

    // The genuine delivery then settles it, as declined.
    service
        .handler
        .webhook(&delivery.body, Some(&delivery.signature))
        .await
        .unwrap();
    let failed = service
        .handler
        .store()
        .payment(record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.decline_code, "generic_decline");
    assert_eq!(outbox_len(&service.temp).await, 1);
}

#[tokio::test]
async fn unknown_events_are_acknowledged_without_effect() {
    let service = start(false).await;
    let body = br#"{"id":"evt_other","object":"event","type":"customer.created","data":{"object":{"id":"cus_1","object":"customer"}}}"#;
    let signature = webhook::sign(body, &secret(), webhook::unix_now());
    let answer = service
        .handler
        .webhook(body, Some(&signature))
        .await
        .unwrap();
    assert!(!answer.duplicate);
    assert_eq!(outbox_len(&service.temp).await, 0);
    // Signed but not an event: refused.
    let junk = b"[1, 2, 3]";
    let signature = webhook::sign(junk, &secret(), webhook::unix_now());
    let error = service
        .handler
        .webhook(junk, Some(&signature))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
}

/// The payment events in the outbox, by payload.
async fn outbox_payloads(temp: &Option<TempSqlite>) -> Vec<payment_event::Payload> {
    let db = temp.as_ref().unwrap().db.clone();
    let pending = SqliteOutbox(db).pending(1000).await.unwrap();
    pending
        .iter()
        .map(|row| {
            let event = PaymentEvent::decode(row.event.payload.as_slice()).unwrap();
            event.payload.expect("a payload")
        })
        .collect()
}

#[tokio::test]
async fn webhooks_out_of_order_have_one_effect_each() {
    // No background tasks, and the handler on a sandbox whose events the test holds back.
    let service = start(false).await;
    let store = service.handler.store().clone();
    let (sandbox, mut deliveries) = sandbox_on(service.temp.as_ref().unwrap()).await;
    let handler = PaymentHandler::new(
        store.clone(),
        Arc::new(sandbox),
        vec![secret()],
        Arc::default(),
    );
    let order_id = Uuid::now_v7();
    on_order_event(&handler, &payment_requested(order_id, "pm_card_visa", 1))
        .await
        .unwrap();
    let payment_id = store.order_payments(order_id).await.unwrap()[0].id;
    let refund = order_event::Payload::RefundRequested(RefundRequested {
        payment_id: payment_id.to_string(),
        amount: Some(Money {
            currency_code: "EUR".into(),
            amount_minor: 4200,
        }),
        reason: "cancelled by the customer".into(),
    });
    on_order_event(&handler, &order_event(order_id, refund))
        .await
        .unwrap();
    let succeeded = deliveries.try_recv().unwrap();
    let refunded = deliveries.try_recv().unwrap();
    assert_eq!(delivered(&succeeded)["type"], "payment_intent.succeeded");
    assert_eq!(delivered(&refunded)["type"], "charge.refunded");

    // The refund's event first, then the charge's; then each again.
    for (delivery, duplicate) in [
        (&refunded, false),
        (&succeeded, false),
        (&refunded, true),
        (&succeeded, true),
    ] {
        let answer = handler
            .webhook(&delivery.body, Some(&delivery.signature))
            .await
            .unwrap();
        assert_eq!(answer.duplicate, duplicate);
    }
    // Ten minutes later: signed afresh, a duplicate; with the signature of then, refused.
    let now = webhook::unix_now();
    for delivery in [&refunded, &succeeded] {
        let resigned = webhook::sign(&delivery.body, &secret(), now);
        let answer = handler
            .webhook(&delivery.body, Some(&resigned))
            .await
            .unwrap();
        assert!(answer.duplicate);
        let stale = webhook::sign(&delivery.body, &secret(), now - 600);
        let error = handler
            .webhook(&delivery.body, Some(&stale))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidArgument);
        assert_eq!(error.reason(), "BAD_SIGNATURE");
    }

    let payment = store.payment(payment_id).await.unwrap().unwrap();
    assert_eq!(payment.status, Status::Refunded);
    assert_eq!(payment.amount_refunded_minor, 4200);
    let payloads = outbox_payloads(&service.temp).await;
    assert_eq!(payloads.len(), 2, "{payloads:?}");
    assert!(matches!(payloads[0], payment_event::Payload::Succeeded(_)));
    assert!(matches!(payloads[1], payment_event::Payload::Refunded(_)));
}

/// A payment begun in the store whose charge call never went out, as after a crash, or
/// deliveries that ran out before the provider answered.
async fn never_charged(service: &Running, method: &str) -> PaymentRecord {
    let now = shopmesh_kit::clock::now_ms();
    service
        .handler
        .store()
        .begin_payment(&PaymentRecord {
            id: Uuid::now_v7(),
            order_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            provider: PaymentProvider::Sandbox,
            provider_payment_id: String::new(),
            attempt: 1,
            status: Status::Processing,
            currency: "EUR".into(),
            amount_minor: 4200,
            amount_refunded_minor: 0,
            payment_method: method.into(),
            card_brand: String::new(),
            card_last4: String::new(),
            decline_code: String::new(),
            failure_message: String::new(),
            created_at_ms: now,
            updated_at_ms: now,
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_payment_stuck_processing_is_swept_once() {
    // No background tasks: the outbox keeps what the sweep wrote, to be counted.
    let service = start(false).await;
    let store = service.handler.store().clone();
    let record = never_charged(&service, "pm_card_visa").await;
    let begun = record.updated_at_ms;

    // Not stuck yet: left alone.
    assert_eq!(
        service
            .handler
            .sweep_processing(begun + 30_000)
            .await
            .unwrap(),
        0
    );
    // Stuck for longer than the provider keeps an idempotency key: not charged again blindly.
    assert_eq!(
        service
            .handler
            .sweep_processing(begun + 24 * 3600 * 1000)
            .await
            .unwrap(),
        0
    );
    let still = store.payment(record.id).await.unwrap().unwrap();
    assert_eq!(still.status, Status::Processing);
    assert_eq!(outbox_len(&service.temp).await, 0);

    assert_eq!(
        service
            .handler
            .sweep_processing(begun + 61_000)
            .await
            .unwrap(),
        1
    );
    let swept = store.payment(record.id).await.unwrap().unwrap();
    assert_eq!(swept.status, Status::Succeeded);
    assert!(swept.provider_payment_id.starts_with("pi_sbx_"));
    assert_eq!(
        (swept.card_brand.as_str(), swept.card_last4.as_str()),
        ("visa", "4242")
    );
    let payloads = outbox_payloads(&service.temp).await;
    assert_eq!(payloads.len(), 1, "{payloads:?}");
    let payment_event::Payload::Succeeded(succeeded) = &payloads[0] else {
        panic!("expected PaymentSucceeded, got {payloads:?}");
    };
    assert_eq!(succeeded.attempt, 1);

    // Nothing is left to sweep.
    assert_eq!(
        service
            .handler
            .sweep_processing(begun + 122_000)
            .await
            .unwrap(),
        0
    );
    assert_eq!(outbox_len(&service.temp).await, 1);
    assert!(
        store
            .stale_processing(begun + 122_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_sweep_finds_the_first_charge_and_a_webhook_adds_nothing() {
    let service = start(false).await;
    let store = service.handler.store().clone();
    // Charged at the sandbox, the answer lost: the sweep's repeated call (same key) finds it.
    let (lost, lost_delivery) = in_flight(&service, "pm_card_chargeDeclined").await;
    let first_intent = delivered(&lost_delivery)["data"]["object"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Charged, its id noted, no webhook: the sweep retrieves it.
    let (noted, noted_delivery) = in_flight(&service, "pm_card_mastercard").await;
    let noted_intent = delivered(&noted_delivery)["data"]["object"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    store
        .note_provider_payment_id(noted.id, &noted_intent, noted.updated_at_ms)
        .await
        .unwrap();

    let now = lost.updated_at_ms + 61_000;
    assert_eq!(service.handler.sweep_processing(now).await.unwrap(), 2);
    let failed = store.payment(lost.id).await.unwrap().unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.decline_code, "generic_decline");
    assert_eq!(failed.provider_payment_id, first_intent, "no second charge");
    let succeeded = store.payment(noted.id).await.unwrap().unwrap();
    assert_eq!(succeeded.status, Status::Succeeded);
    assert_eq!(succeeded.card_last4, "4444");
    assert_eq!(outbox_len(&service.temp).await, 2);

    // The webhooks arrive late: acknowledged, no second event.
    for delivery in [&lost_delivery, &noted_delivery] {
        service
            .handler
            .webhook(&delivery.body, Some(&delivery.signature))
            .await
            .unwrap();
    }
    assert_eq!(service.handler.sweep_processing(now).await.unwrap(), 0);
    assert_eq!(outbox_len(&service.temp).await, 2, "one event per outcome");
}
