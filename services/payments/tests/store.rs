//! The payments repository contract, on SQLite and on the test bed's CQL server: one payment per
//! (order, attempt), one refund per payment, outcomes as single transitions with one event each,
//! webhook ids remembered with their effect, and sandbox objects once per idempotency key.

use std::sync::Arc;

use shopmesh_events::Event;
use shopmesh_events::outbox::{OutboxStore, SqliteOutbox};
use shopmesh_payments::store::cql::CqlPayments;
use shopmesh_payments::store::sqlite::SqlitePayments;
use shopmesh_payments::store::{
    CQL, Outcome, PaymentRecord, PaymentStore, RefundOutcome, RefundRecord, RefundSettlement,
    RefundState, SQLITE, SandboxObject, Settled, Settlement, Status, StoreError,
};
use shopmesh_proto::shopmesh::payments::v1::PaymentProvider;
use shopmesh_testkit::contract_suite;
use shopmesh_testkit::storage::{self as testing, TempSqlite};
use uuid::Uuid;

struct Subject {
    store: Arc<dyn PaymentStore>,
    outbox: Arc<dyn OutboxStore>,
    _keep: Option<TempSqlite>,
}

async fn cql_store() -> Option<Subject> {
    let cql = testing::cql(CQL).await?;
    let store = CqlPayments::new(cql).await.unwrap();
    Some(Subject {
        outbox: store.outbox(),
        store: Arc::new(store),
        _keep: None,
    })
}

async fn sqlite_store() -> Option<Subject> {
    let temp = testing::sqlite(SQLITE).await;
    Some(Subject {
        store: Arc::new(SqlitePayments(temp.db.clone())),
        outbox: Arc::new(SqliteOutbox(temp.db.clone())),
        _keep: Some(temp),
    })
}

fn event(order_id: Uuid) -> Event {
    Event::new(order_id.to_string(), "test.PaymentEvent", vec![1, 2, 3])
}

fn payment(order_id: Uuid, attempt: i32) -> PaymentRecord {
    PaymentRecord {
        id: Uuid::now_v7(),
        order_id,
        user_id: Uuid::now_v7(),
        provider: PaymentProvider::Sandbox,
        provider_payment_id: String::new(),
        attempt,
        status: Status::Processing,
        currency: "EUR".into(),
        amount_minor: 1999,
        amount_refunded_minor: 0,
        payment_method: "pm_card_visa".into(),
        card_brand: String::new(),
        card_last4: String::new(),
        decline_code: String::new(),
        failure_message: String::new(),
        created_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_000_000,
    }
}

fn succeeded(payment_id: Uuid, provider_id: &str) -> Settlement {
    Settlement {
        payment_id,
        provider_payment_id: provider_id.into(),
        outcome: Outcome::Succeeded {
            card_brand: "visa".into(),
            card_last4: "4242".into(),
        },
        now_ms: 1_700_000_001_000,
    }
}

fn refund(payment: &PaymentRecord, amount_minor: i64) -> RefundRecord {
    RefundRecord {
        id: Uuid::now_v7(),
        payment_id: payment.id,
        order_id: payment.order_id,
        provider_refund_id: String::new(),
        currency: payment.currency.clone(),
        amount_minor,
        status: RefundState::Pending,
        reason: "cancelled".into(),
        failure_reason: String::new(),
        created_at_ms: 1_700_000_002_000,
        updated_at_ms: 1_700_000_002_000,
    }
}

/// Events waiting in the outbox with this id.
async fn queued(outbox: &Arc<dyn OutboxStore>, id: &str) -> usize {
    outbox
        .pending(1000)
        .await
        .unwrap()
        .iter()
        .filter(|p| p.event.id == id)
        .count()
}

async fn a_payment_is_unique_per_order_and_attempt(subject: Subject) {
    let store = subject.store;
    let order = Uuid::now_v7();
    let first = payment(order, 1);
    assert_eq!(store.begin_payment(&first).await.unwrap(), first);
    // A redelivery makes a new record with a new id: the stored one comes back.
    let again = store.begin_payment(&payment(order, 1)).await.unwrap();
    assert_eq!(again, first);
    let second = payment(order, 2);
    store.begin_payment(&second).await.unwrap();
    let listed = store.order_payments(order).await.unwrap();
    assert_eq!(
        listed.iter().map(|p| p.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(store.payment(first.id).await.unwrap(), Some(first.clone()));
    assert_eq!(store.payment(Uuid::now_v7()).await.unwrap(), None);
    assert!(
        store
            .order_payments(Uuid::now_v7())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn settling_happens_once_with_one_event(subject: Subject) {
    let (store, outbox) = (subject.store, subject.outbox);
    let record = payment(Uuid::now_v7(), 1);
    store.begin_payment(&record).await.unwrap();
    store
        .note_provider_payment_id(record.id, "pi_1", 1_700_000_000_500)
        .await
        .unwrap();
    let found = store.payment_by_provider_id("pi_1").await.unwrap().unwrap();
    assert_eq!(found.id, record.id);
    assert_eq!(store.payment_by_provider_id("").await.unwrap(), None);

    let first = event(record.order_id);
    let settled = store
        .settle(&succeeded(record.id, "pi_1"), &first, None)
        .await
        .unwrap();
    let Settled::Applied(settled) = settled else {
        panic!("expected the transition, got {settled:?}");
    };
    assert_eq!(settled.status, Status::Succeeded);
    assert_eq!(
        (settled.card_brand.as_str(), settled.card_last4.as_str()),
        ("visa", "4242")
    );
    assert_eq!(
        store.payment(record.id).await.unwrap(),
        Some(settled.clone())
    );
    assert_eq!(queued(&outbox, &first.id).await, 1);

    // A late failure report (another path, reordered) changes nothing and writes no event.
    let late = event(record.order_id);
    let failure = Settlement {
        outcome: Outcome::Failed {
            decline_code: "generic_decline".into(),
            failure_message: "declined".into(),
        },
        ..succeeded(record.id, "pi_1")
    };
    assert_eq!(
        store.settle(&failure, &late, None).await.unwrap(),
        Settled::Unchanged(settled)
    );
    assert_eq!(queued(&outbox, &late.id).await, 0);
    assert!(matches!(
        store
            .settle(
                &succeeded(Uuid::now_v7(), "pi_x"),
                &event(Uuid::now_v7()),
                None
            )
            .await,
        Err(StoreError::NotFound)
    ));
}

async fn a_webhook_id_counts_once(subject: Subject) {
    let (store, outbox) = (subject.store, subject.outbox);
    let record = payment(Uuid::now_v7(), 1);
    store.begin_payment(&record).await.unwrap();
    let webhook = format!("evt_{}", Uuid::new_v4().simple());
    assert!(!store.webhook_seen(&webhook).await.unwrap());
    let first = event(record.order_id);
    assert!(matches!(
        store
            .settle(&succeeded(record.id, "pi_2"), &first, Some(&webhook))
            .await
            .unwrap(),
        Settled::Applied(_)
    ));
    assert!(store.webhook_seen(&webhook).await.unwrap());
    let replay = event(record.order_id);
    assert_eq!(
        store
            .settle(&succeeded(record.id, "pi_2"), &replay, Some(&webhook))
            .await
            .unwrap(),
        Settled::Duplicate
    );
    assert_eq!(queued(&outbox, &first.id).await, 1);
    assert_eq!(queued(&outbox, &replay.id).await, 0);

    // An event without effect is remembered too.
    let idle = format!("evt_{}", Uuid::new_v4().simple());
    assert!(store.note_webhook(&idle).await.unwrap());
    assert!(!store.note_webhook(&idle).await.unwrap());
    assert!(store.webhook_seen(&idle).await.unwrap());
}

async fn a_full_refund_refunds_the_payment_once(subject: Subject) {
    let (store, outbox) = (subject.store, subject.outbox);
    let record = payment(Uuid::now_v7(), 1);
    store.begin_payment(&record).await.unwrap();
    store
        .settle(&succeeded(record.id, "pi_3"), &event(record.order_id), None)
        .await
        .unwrap();
    let first = refund(&record, record.amount_minor);
    assert_eq!(store.begin_refund(&first).await.unwrap(), first);
    // One refund per payment: a second request finds the first.
    assert_eq!(
        store
            .begin_refund(&refund(&record, record.amount_minor))
            .await
            .unwrap(),
        first
    );
    assert!(matches!(
        store
            .begin_refund(&refund(&payment(Uuid::now_v7(), 1), 10))
            .await,
        Err(StoreError::NotFound)
    ));
    store
        .note_provider_refund_id(first.id, "re_1", 1_700_000_002_500)
        .await
        .unwrap();
    assert_eq!(
        store
            .refund_by_provider_id("re_1")
            .await
            .unwrap()
            .map(|r| r.id),
        Some(first.id)
    );

    let done = event(record.order_id);
    let settlement = RefundSettlement {
        refund_id: first.id,
        provider_refund_id: "re_1".into(),
        outcome: RefundOutcome::Succeeded,
        now_ms: 1_700_000_003_000,
    };
    let webhook = format!("evt_{}", Uuid::new_v4().simple());
    let Settled::Applied(settled) = store
        .settle_refund(&settlement, &done, Some(&webhook))
        .await
        .unwrap()
    else {
        panic!("expected the refund to settle");
    };
    assert_eq!(settled.status, RefundState::Succeeded);
    assert_eq!(queued(&outbox, &done.id).await, 1);
    let refunded = store.payment(record.id).await.unwrap().unwrap();
    assert_eq!(refunded.status, Status::Refunded);
    assert_eq!(refunded.amount_refunded_minor, record.amount_minor);
    assert_eq!(
        store.refunds(record.id).await.unwrap(),
        vec![settled.clone()]
    );
    assert_eq!(store.refund(first.id).await.unwrap(), Some(settled.clone()));

    // Replayed and late reports change nothing.
    assert_eq!(
        store
            .settle_refund(&settlement, &event(record.order_id), Some(&webhook))
            .await
            .unwrap(),
        Settled::Duplicate
    );
    let failed = RefundSettlement {
        outcome: RefundOutcome::Failed {
            reason: "expired".into(),
        },
        ..settlement
    };
    assert_eq!(
        store
            .settle_refund(&failed, &event(record.order_id), None)
            .await
            .unwrap(),
        Settled::Unchanged(settled)
    );
    let again = store.payment(record.id).await.unwrap().unwrap();
    assert_eq!(again.amount_refunded_minor, record.amount_minor);
}

async fn a_partial_refund_leaves_the_payment_succeeded(subject: Subject) {
    let store = subject.store;
    let record = payment(Uuid::now_v7(), 1);
    store.begin_payment(&record).await.unwrap();
    store
        .settle(&succeeded(record.id, "pi_4"), &event(record.order_id), None)
        .await
        .unwrap();
    let part = store.begin_refund(&refund(&record, 500)).await.unwrap();
    store
        .settle_refund(
            &RefundSettlement {
                refund_id: part.id,
                provider_refund_id: "re_4".into(),
                outcome: RefundOutcome::Succeeded,
                now_ms: 1_700_000_003_000,
            },
            &event(record.order_id),
            None,
        )
        .await
        .unwrap();
    let after = store.payment(record.id).await.unwrap().unwrap();
    assert_eq!(after.status, Status::Succeeded);
    assert_eq!(after.amount_refunded_minor, 500);

    // A failed refund records its reason and leaves the payment alone.
    let other = payment(Uuid::now_v7(), 1);
    store.begin_payment(&other).await.unwrap();
    store
        .settle(&succeeded(other.id, "pi_5"), &event(other.order_id), None)
        .await
        .unwrap();
    let refused = store
        .begin_refund(&refund(&other, other.amount_minor))
        .await
        .unwrap();
    let Settled::Applied(failed) = store
        .settle_refund(
            &RefundSettlement {
                refund_id: refused.id,
                provider_refund_id: String::new(),
                outcome: RefundOutcome::Failed {
                    reason: "charge_not_refundable".into(),
                },
                now_ms: 1_700_000_003_000,
            },
            &event(other.order_id),
            None,
        )
        .await
        .unwrap()
    else {
        panic!("expected the refund to fail");
    };
    assert_eq!(failed.failure_reason, "charge_not_refundable");
    assert_eq!(
        store.payment(other.id).await.unwrap().unwrap().status,
        Status::Succeeded
    );
}

async fn stale_processing_payments_are_listed(subject: Subject) {
    let store = subject.store;
    let ids = |payments: Vec<PaymentRecord>| payments.iter().map(|p| p.id).collect::<Vec<_>>();
    // Processing since 1_700_000_000_000.
    let stuck = payment(Uuid::now_v7(), 1);
    store.begin_payment(&stuck).await.unwrap();
    // Settled at 1_700_000_001_000.
    let done = payment(Uuid::now_v7(), 1);
    store.begin_payment(&done).await.unwrap();
    store
        .settle(&succeeded(done.id, "pi_done"), &event(done.order_id), None)
        .await
        .unwrap();
    // Processing, but begun later.
    let mut fresh = payment(Uuid::now_v7(), 1);
    fresh.created_at_ms = 1_700_000_100_000;
    fresh.updated_at_ms = 1_700_000_100_000;
    store.begin_payment(&fresh).await.unwrap();
    // Redeliveries change nothing: the processing one is listed once, the settled one not.
    store
        .begin_payment(&payment(stuck.order_id, 1))
        .await
        .unwrap();
    store
        .begin_payment(&payment(done.order_id, 1))
        .await
        .unwrap();

    let bound = 1_700_000_050_000;
    assert_eq!(
        ids(store.stale_processing(bound, 10).await.unwrap()),
        vec![stuck.id]
    );
    // The bound is exclusive; a later one lists the fresh one too, least recently changed first.
    assert!(
        store
            .stale_processing(stuck.updated_at_ms, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let later = 1_700_000_200_000;
    assert_eq!(
        ids(store.stale_processing(later, 10).await.unwrap()),
        vec![stuck.id, fresh.id]
    );
    assert_eq!(
        ids(store.stale_processing(later, 1).await.unwrap()),
        vec![stuck.id]
    );
    assert!(store.stale_processing(later, 0).await.unwrap().is_empty());
    // The provider's id noted counts as a change.
    store
        .note_provider_payment_id(fresh.id, "pi_fresh", 1_700_000_150_000)
        .await
        .unwrap();
    assert_eq!(
        ids(store.stale_processing(1_700_000_120_000, 10).await.unwrap()),
        vec![stuck.id]
    );
    // Once settled, it is no longer listed.
    store
        .settle(
            &succeeded(stuck.id, "pi_stuck"),
            &event(stuck.order_id),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        ids(store.stale_processing(later, 10).await.unwrap()),
        vec![fresh.id]
    );
}

async fn sandbox_objects_are_kept_once_per_key(subject: Subject) {
    let store = subject.store;
    let key = format!("shopmesh-{}-1", Uuid::now_v7());
    let object = SandboxObject {
        id: format!("pi_sbx_{}", Uuid::new_v4().simple()),
        idempotency_key: key.clone(),
        body: r#"{"id":"first"}"#.into(),
        created_at_ms: 1_700_000_000_000,
    };
    assert_eq!(store.sandbox_create(&object).await.unwrap(), object);
    let retry = SandboxObject {
        id: format!("pi_sbx_{}", Uuid::new_v4().simple()),
        body: r#"{"id":"second"}"#.into(),
        ..object.clone()
    };
    assert_eq!(store.sandbox_create(&retry).await.unwrap(), object);
    assert_eq!(
        store.sandbox_get(&object.id).await.unwrap(),
        Some(object.clone())
    );
}

contract_suite! {
    sqlite => sqlite_store,
    cql => cql_store;
    [
        a_payment_is_unique_per_order_and_attempt,
        settling_happens_once_with_one_event,
        a_webhook_id_counts_once,
        a_full_refund_refunds_the_payment_once,
        a_partial_refund_leaves_the_payment_succeeded,
        sandbox_objects_are_kept_once_per_key,
        stale_processing_payments_are_listed,
    ]
}
