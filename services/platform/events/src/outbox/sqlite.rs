//! The outbox in a SQLite database: one table, written in the state change's transaction.

use async_trait::async_trait;
use rusqlite::{Transaction, params};
use shopmesh_storage::StorageError;
use shopmesh_storage::sqlite::Sqlite;

use super::{OutboxStore, Pending};
use crate::{Event, EventError};

/// The outbox table, to add to a service's SQLite migrations.
pub const SQLITE_SCHEMA: &str = "
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        id TEXT NOT NULL,
        key TEXT NOT NULL,
        kind TEXT NOT NULL,
        payload BLOB NOT NULL,
        headers TEXT NOT NULL,
        occurred_at INTEGER NOT NULL
    );
";

/// Adds `event` for `topic` to the outbox inside the caller's transaction.
pub fn enqueue(tx: &Transaction<'_>, topic: &str, event: &Event) -> Result<(), StorageError> {
    let headers =
        serde_json::to_string(&event.headers).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO outbox (topic, id, key, kind, payload, headers, occurred_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![topic, event.id, event.key, event.kind, event.payload, headers, event.occurred_at_ms])?;
    Ok(())
}

/// The outbox of a SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteOutbox(pub Sqlite);

#[async_trait]
impl OutboxStore for SqliteOutbox {
    async fn pending(&self, limit: usize) -> Result<Vec<Pending>, EventError> {
        self.0
            .read(move |db| {
                let mut statement = db.prepare_cached(
                    "SELECT seq, topic, id, key, kind, payload, headers, occurred_at FROM outbox ORDER BY seq LIMIT ?1",
                )?;
                let rows = statement.query_map([limit as i64], |row| {
                    Ok(Pending { position: row.get(0)?, topic: row.get(1)?, event: crate::event_from_row(row, 2)? })
                })?;
                Ok::<_, EventError>(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
    }

    async fn remove(&self, published: &[Pending]) -> Result<(), EventError> {
        let positions: Vec<i64> = published.iter().map(|p| p.position).collect();
        self.0
            .write(move |tx| {
                let mut statement = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
                for position in positions {
                    statement.execute([position])?;
                }
                Ok::<_, EventError>(())
            })
            .await
    }
}
