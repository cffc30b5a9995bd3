//! The outbox and inbox helpers on SQLite and CQL: a state change and its event commit together, the
//! relay publishes them in order and forgets them, and a redelivered event is recognised.

use std::sync::Arc;
use std::time::Duration;

use scylla::statement::batch::{Batch, BatchType};
use shopmesh_events::inbox::{Claim, CqlInbox};
use shopmesh_events::log::EmbeddedLog;
use shopmesh_events::outbox::{self, CqlOutbox, OutboxRow, OutboxStore, Relay, SqliteOutbox};
use shopmesh_events::{Event, EventBus, SubscribeOptions, inbox};
use shopmesh_storage::Migration;
use shopmesh_storage::sqlite::Sqlite;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "outbox",
        statements: outbox::SQLITE_SCHEMA,
    },
    Migration {
        version: 2,
        name: "inbox",
        statements: inbox::SQLITE_SCHEMA,
    },
    Migration {
        version: 3,
        name: "notes",
        statements: "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL);",
    },
];

#[tokio::test]
async fn committed_events_are_relayed_in_order_and_rolled_back_ones_never() {
    let dir = tempfile::tempdir().unwrap();
    let db = Sqlite::open(dir.path().join("service.db"), MIGRATIONS)
        .await
        .unwrap();
    let log: Arc<dyn EventBus> = Arc::new(
        EmbeddedLog::open(dir.path().join("events.db"))
            .await
            .unwrap(),
    );
    let mut subscriber = log
        .subscribe("notes", "reader", SubscribeOptions::default())
        .await
        .unwrap();

    for n in 0..3 {
        db.write(move |tx| {
            tx.execute(
                "INSERT INTO notes (text) VALUES (?1)",
                [format!("note {n}")],
            )?;
            outbox::enqueue(tx, "notes", &Event::new("notes", "test.NoteAdded", vec![n]))
        })
        .await
        .unwrap();
    }
    // A failed change leaves no event behind.
    let failed: Result<(), shopmesh_storage::StorageError> = db
        .write(|tx| {
            outbox::enqueue(
                tx,
                "notes",
                &Event::new("notes", "test.NoteAdded", vec![99]),
            )?;
            tx.execute("INSERT INTO notes (text) VALUES (NULL)", [])?;
            Ok(())
        })
        .await;
    assert!(failed.is_err());

    let relay = Relay::new(Arc::new(SqliteOutbox(db.clone())), log.clone());
    assert_eq!(relay.round().await.unwrap(), 3);
    assert!(
        SqliteOutbox(db.clone())
            .pending(10)
            .await
            .unwrap()
            .is_empty(),
        "published events are forgotten"
    );

    let mut payloads = Vec::new();
    for _ in 0..3 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), subscriber.next())
            .await
            .unwrap()
            .unwrap();
        payloads.push(delivery.event.payload[0]);
        subscriber.ack(&delivery).await.unwrap();
    }
    assert_eq!(payloads, vec![0, 1, 2]);
}

#[tokio::test]
async fn the_inbox_recognises_a_redelivered_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = Sqlite::open(dir.path().join("service.db"), MIGRATIONS)
        .await
        .unwrap();
    let event_id = Event::new("k", "test.Once", vec![]).id;
    let mut effects = 0;
    for _ in 0..3 {
        let id = event_id.clone();
        let first = db
            .write(move |tx| {
                let first = inbox::first_delivery(tx, "counter", &id)?;
                if first {
                    tx.execute("INSERT INTO notes (text) VALUES ('effect')", [])?;
                }
                Ok::<_, shopmesh_storage::StorageError>(first)
            })
            .await
            .unwrap();
        effects += usize::from(first);
    }
    assert_eq!(effects, 1);
    let rows: i64 = db
        .read(|c| {
            Ok::<_, shopmesh_storage::StorageError>(c.query_row(
                "SELECT COUNT(*) FROM notes",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

// The CQL outbox and inbox, on the test bed's CQL server.

const CQL_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "outbox",
        statements: outbox::CQL_SCHEMA,
    },
    Migration {
        version: 2,
        name: "inbox",
        statements: inbox::CQL_SCHEMA,
    },
    Migration {
        version: 3,
        name: "notes",
        statements: "CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, text text);",
    },
];

async fn received(subscriber: &mut Box<dyn shopmesh_events::Subscriber>, count: usize) -> Vec<u8> {
    let mut payloads = Vec::new();
    for _ in 0..count {
        let delivery = tokio::time::timeout(Duration::from_secs(5), subscriber.next())
            .await
            .expect("an event within 5 s")
            .unwrap();
        payloads.push(delivery.event.payload[0]);
        subscriber.ack(&delivery).await.unwrap();
    }
    payloads
}

#[tokio::test]
async fn cql_batches_carry_events_and_one_relay_publishes_them_once_in_order() {
    let Some(cql) = shopmesh_testkit::storage::cql(CQL_MIGRATIONS).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventBus> = Arc::new(
        EmbeddedLog::open(dir.path().join("events.db"))
            .await
            .unwrap(),
    );
    let mut subscriber = log
        .subscribe("notes", "reader", SubscribeOptions::default())
        .await
        .unwrap();
    let outbox = Arc::new(CqlOutbox::new(&cql).await.unwrap());
    let insert_note = cql
        .prepare("INSERT INTO notes (id, text) VALUES (?, ?)")
        .await
        .unwrap();
    for n in 0..3u8 {
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(insert_note.clone());
        batch.append_statement(outbox.insert().clone());
        let event = Event::new("notes", "test.NoteAdded", vec![n]);
        let values = (
            (i32::from(n), format!("note {n}")),
            OutboxRow::new("notes", &event).unwrap(),
        );
        cql.session().batch(&batch, values).await.unwrap();
    }

    // A second replica's relay stands by while the first holds the lease.
    let standby = CqlOutbox::new(&cql).await.unwrap();
    let relay = Relay::new(outbox.clone(), log.clone());
    assert_eq!(relay.round().await.unwrap(), 3);
    assert!(standby.pending(10).await.unwrap().is_empty());
    assert_eq!(
        relay.round().await.unwrap(),
        0,
        "published events go out once"
    );
    assert_eq!(received(&mut subscriber, 3).await, vec![0, 1, 2]);

    // A row that became visible late, stamped behind the cursor, is found by the sweep of the
    // standby that takes over once the first relay hands its lease back.
    let late = Event::new("notes", "test.NoteAdded", vec![7]);
    let stamped_late = cql
        .prepare(
            "INSERT INTO outbox (shard, at, id, topic, key, kind, payload, headers, occurred_at) \
             VALUES (?, ?, ?, 'notes', ?, ?, ?, {}, ?)",
        )
        .await
        .unwrap();
    let behind = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
        - 5_000_000;
    cql.session()
        .execute_unpaged(
            &stamped_late,
            (
                outbox::cql::shard_of(&late.key),
                behind,
                late.id.clone(),
                late.key.clone(),
                late.kind.clone(),
                late.payload.clone(),
                late.occurred_at_ms,
            ),
        )
        .await
        .unwrap();
    outbox.release().await.unwrap();
    let found = standby.pending(10).await.unwrap();
    assert!(
        found.iter().any(|pending| pending.event.id == late.id),
        "the sweep finds the late row"
    );
}

#[tokio::test]
async fn cql_inbox_claims_once_and_lets_an_expired_claim_be_taken_over() {
    let Some(cql) = shopmesh_testkit::storage::cql(CQL_MIGRATIONS).await else {
        return;
    };
    let inbox = CqlInbox::new(&cql, Duration::from_secs(60)).await.unwrap();
    let id = Event::new("k", "test.Once", vec![]).id;
    assert_eq!(inbox.claim("counter", &id).await.unwrap(), Claim::Acquired);
    assert_eq!(inbox.claim("counter", &id).await.unwrap(), Claim::Busy);
    assert_eq!(
        inbox.claim("other", &id).await.unwrap(),
        Claim::Acquired,
        "subscriptions are independent"
    );
    inbox.complete("counter", &id).await.unwrap();
    assert_eq!(inbox.claim("counter", &id).await.unwrap(), Claim::Done);

    // A failed effect gives the claim back.
    inbox.release("other", &id).await.unwrap();
    assert_eq!(inbox.claim("other", &id).await.unwrap(), Claim::Acquired);

    // A consumer that died leaves a claim that outlives its lease; exactly one taker wins.
    let short = CqlInbox::new(&cql, Duration::ZERO).await.unwrap();
    let crashed = Event::new("k", "test.Once", vec![]).id;
    assert_eq!(
        short.claim("counter", &crashed).await.unwrap(),
        Claim::Acquired
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (a, b) = tokio::join!(
        inbox.claim("counter", &crashed),
        inbox.claim("counter", &crashed)
    );
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|claim| *claim as u8);
    assert_eq!(outcomes, [Claim::Acquired, Claim::Busy]);
}
