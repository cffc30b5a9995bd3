//! The outbox and inbox helpers on SQLite: a state change and its event commit together, the
//! relay publishes them in order and forgets them, and a redelivered event is recognised.

use std::sync::Arc;
use std::time::Duration;

use shopmesh_events::log::EmbeddedLog;
use shopmesh_events::outbox::{self, OutboxStore, Relay, SqliteOutbox};
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
