//! The orders repository contract, on SQLite and on the test bed's CQL server: keys make
//! creation idempotent per customer, changes apply over the version read, a saga event is
//! applied once, listings page newest first, and purchases count only paid orders.

use std::sync::Arc;

use shopmesh_events::Event;
use shopmesh_orders::state::Status;
use shopmesh_orders::store::cql::CqlOrders;
use shopmesh_orders::store::sqlite::SqliteOrders;
use shopmesh_orders::store::{
    CQL, Created, IdempotencyKey, Line, OrderBody, OrderRecord, OrderStore, Outgoing, Processed,
    SQLITE, StoreError,
};
use shopmesh_testkit::contract_suite;
use shopmesh_testkit::storage::{self as testing, TempSqlite};
use uuid::Uuid;

type Subject = (Arc<dyn OrderStore>, Option<TempSqlite>);

async fn sqlite_store() -> Option<Subject> {
    let temp = testing::sqlite(SQLITE).await;
    Some((Arc::new(SqliteOrders(temp.db.clone())), Some(temp)))
}

async fn cql_store() -> Option<Subject> {
    let cql = testing::cql(CQL).await?;
    Some((Arc::new(CqlOrders::new(cql).await.unwrap()), None))
}

fn order(user_id: Uuid, product_id: Uuid, created_at_ms: i64) -> OrderRecord {
    OrderRecord {
        id: Uuid::now_v7(),
        user_id,
        status: Status::Created,
        body: OrderBody {
            lines: vec![Line {
                product_id,
                sku: "LAMP-1".into(),
                title: "Lamp".into(),
                quantity: 2,
                unit_minor: 2500,
            }],
            currency: "EUR".into(),
            total_minor: 5000,
            sealed_address: vec![1, 2, 3],
            payment_method: "pm_card_visa".into(),
            locale: "en".into(),
            refund_pending: false,
            charged: false,
            attempts: 0,
            payment: None,
            shipment: None,
            history: Vec::new(),
        },
        created_at_ms,
        updated_at_ms: created_at_ms,
        version: 1,
    }
}

fn key(user_id: Uuid, key: &str, fingerprint: u8) -> IdempotencyKey {
    IdempotencyKey {
        user_id,
        key: key.into(),
        fingerprint: vec![fingerprint; 32],
    }
}

fn events(order: &OrderRecord) -> Vec<Outgoing> {
    vec![Outgoing {
        topic: "test.orders",
        event: Event::new(order.id.to_string(), "test.OrderEvent", vec![]),
    }]
}

async fn keys_make_creation_idempotent_per_customer((store, _db): Subject) {
    let (ada, bob, lamp) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let first = order(ada, lamp, 1_000);
    assert_eq!(
        store
            .create(&first, &key(ada, "k", 1), &events(&first))
            .await
            .unwrap(),
        Created::New
    );
    let retry = order(ada, lamp, 2_000);
    match store
        .create(&retry, &key(ada, "k", 1), &events(&retry))
        .await
        .unwrap()
    {
        Created::Existing(existing) => assert_eq!(*existing, first),
        other => panic!("expected the first order, got {other:?}"),
    }
    assert_eq!(
        store
            .create(&retry, &key(ada, "k", 2), &events(&retry))
            .await
            .unwrap(),
        Created::KeyReused
    );
    assert_eq!(store.order(retry.id).await.unwrap(), None);
    match store.keyed(&key(ada, "k", 1)).await.unwrap() {
        Some(Created::Existing(existing)) => assert_eq!(*existing, first),
        other => panic!("expected the first order, got {other:?}"),
    }
    assert_eq!(
        store.keyed(&key(ada, "k", 2)).await.unwrap(),
        Some(Created::KeyReused)
    );
    assert_eq!(store.keyed(&key(ada, "other", 1)).await.unwrap(), None);
    assert_eq!(store.keyed(&key(bob, "k", 1)).await.unwrap(), None);
    let bobs = order(bob, lamp, 3_000);
    assert_eq!(
        store
            .create(&bobs, &key(bob, "k", 1), &events(&bobs))
            .await
            .unwrap(),
        Created::New,
        "keys are per customer"
    );
}

async fn changes_apply_over_the_version_read_and_events_once((store, _db): Subject) {
    let (ada, lamp) = (Uuid::now_v7(), Uuid::now_v7());
    let created = order(ada, lamp, 1_000);
    store
        .create(&created, &key(ada, "k", 1), &events(&created))
        .await
        .unwrap();

    let mut reserved = created.clone();
    reserved.status = Status::PaymentPending;
    reserved.version = 2;
    reserved.updated_at_ms = 1_500;
    let processed = Processed {
        subscription: "orders-saga",
        event_id: "event-1",
    };
    assert!(
        store
            .update(&reserved, &events(&reserved), Some(processed))
            .await
            .unwrap()
    );
    assert_eq!(store.order(created.id).await.unwrap().unwrap(), reserved);

    // The same saga event again: recognised, nothing written.
    let mut replay = reserved.clone();
    replay.status = Status::Rejected;
    replay.version = 3;
    assert!(!store.update(&replay, &[], Some(processed)).await.unwrap());
    assert_eq!(store.order(created.id).await.unwrap().unwrap(), reserved);

    // A change decided on an old version loses.
    let mut stale = created.clone();
    stale.status = Status::Cancelled;
    stale.version = 2;
    assert!(matches!(
        store.update(&stale, &[], None).await,
        Err(StoreError::Conflict)
    ));
    // A conflict does not use up the event: it can be applied on a retry.
    let mut paid = reserved.clone();
    paid.status = Status::Paid;
    paid.version = 3;
    let second = Processed {
        subscription: "orders-saga",
        event_id: "event-2",
    };
    let mut stale_paid = paid.clone();
    stale_paid.version = 2;
    assert!(store.update(&stale_paid, &[], Some(second)).await.is_err());
    assert!(
        store
            .update(&paid, &events(&paid), Some(second))
            .await
            .unwrap()
    );
    assert_eq!(
        store.order(created.id).await.unwrap().unwrap().status,
        Status::Paid
    );
}

async fn listings_page_newest_first_and_filter_by_status((store, _db): Subject) {
    let (ada, bob, lamp) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut ids = Vec::new();
    for n in 0..5 {
        let placed = order(ada, lamp, 1_000 + n);
        store
            .create(&placed, &key(ada, &format!("k{n}"), 1), &events(&placed))
            .await
            .unwrap();
        ids.push(placed.id);
    }
    let bobs = order(bob, lamp, 1_002);
    store
        .create(&bobs, &key(bob, "k", 1), &events(&bobs))
        .await
        .unwrap();

    let first = store.list(ada, None, None, 2).await.unwrap();
    assert_eq!(
        first.iter().map(|o| o.id).collect::<Vec<_>>(),
        [ids[4], ids[3]]
    );
    let last = first.last().unwrap();
    let rest = store
        .list(ada, None, Some((last.created_at_ms, last.id)), 10)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|o| o.id).collect::<Vec<_>>(),
        [ids[2], ids[1], ids[0]]
    );

    let mut paid = store.order(ids[1]).await.unwrap().unwrap();
    paid.status = Status::Paid;
    paid.version += 1;
    store.update(&paid, &[], None).await.unwrap();
    let only_paid = store.list(ada, Some(Status::Paid), None, 10).await.unwrap();
    assert_eq!(only_paid.iter().map(|o| o.id).collect::<Vec<_>>(), [ids[1]]);
}

async fn purchases_count_only_paid_orders((store, _db): Subject) {
    let (ada, lamp, chair) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let placed = order(ada, lamp, 1_000);
    store
        .create(&placed, &key(ada, "k", 1), &events(&placed))
        .await
        .unwrap();
    assert_eq!(
        store.purchase(ada, lamp).await.unwrap(),
        None,
        "not paid yet"
    );
    let mut paid = placed.clone();
    paid.status = Status::Delivered;
    paid.version = 2;
    store.update(&paid, &[], None).await.unwrap();
    assert_eq!(store.purchase(ada, lamp).await.unwrap(), Some(placed.id));
    assert_eq!(store.purchase(ada, chair).await.unwrap(), None);
    assert_eq!(store.purchase(Uuid::now_v7(), lamp).await.unwrap(), None);
}

contract_suite! {
    sqlite => sqlite_store,
    cql => cql_store;
    [
        keys_make_creation_idempotent_per_customer,
        changes_apply_over_the_version_read_and_events_once,
        listings_page_newest_first_and_filter_by_status,
        purchases_count_only_paid_orders,
    ]
}

/// On CQL a change parks its events in the order row before they reach the outbox; a writer
/// that dies in between leaves them there, and the next read moves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_events_parked_by_a_dead_writer_move_on_the_next_read() {
    let Some(cql) = testing::cql(CQL).await else {
        return;
    };
    let store = CqlOrders::new(cql.clone()).await.unwrap();
    let (ada, lamp) = (Uuid::now_v7(), Uuid::now_v7());
    let placed = order(ada, lamp, 1_000);
    store
        .create(&placed, &key(ada, "k", 1), &events(&placed))
        .await
        .unwrap();
    // What a writer that died after its conditional update leaves behind.
    let mut event = Event::new(placed.id.to_string(), "test.OrderEvent", vec![]);
    event.id = "parked-event".into();
    let parked = serde_json::to_value([("test.orders", event)]).unwrap();
    cql.session()
        .query_unpaged(
            "UPDATE orders SET pending = ? WHERE id = ?",
            (parked.to_string(), placed.id),
        )
        .await
        .unwrap();

    assert_eq!(store.order(placed.id).await.unwrap().unwrap(), placed);
    let (pending,): (Option<String>,) = cql
        .session()
        .query_unpaged("SELECT pending FROM orders WHERE id = ?", (placed.id,))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert_eq!(pending, None, "the parked events left the row");
    let outbox: Vec<(String,)> = cql
        .session()
        .query_unpaged("SELECT id FROM outbox", ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        outbox.iter().any(|(id,)| id == "parked-event"),
        "{outbox:?}"
    );
}
