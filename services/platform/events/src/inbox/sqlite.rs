//! The inbox in a SQLite database: the processed id commits with the effect, so it is exact.

use rusqlite::{Transaction, params};
use shopmesh_storage::StorageError;

/// The processed-events table, to add to a consuming service's SQLite migrations.
pub const SQLITE_SCHEMA: &str = "
    CREATE TABLE processed_events (
        subscription TEXT NOT NULL,
        event_id TEXT NOT NULL,
        processed_at INTEGER NOT NULL,
        PRIMARY KEY (subscription, event_id)
    );
";

/// Records `event_id` as processed by `subscription` inside the caller's transaction. Returns
/// `false` when it already was: the caller then skips the effect (and commits nothing new).
pub fn first_delivery(
    tx: &Transaction<'_>,
    subscription: &str,
    event_id: &str,
) -> Result<bool, StorageError> {
    let inserted = tx
        .prepare_cached(
            "INSERT INTO processed_events (subscription, event_id, processed_at) VALUES (?1, ?2, unixepoch())
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![subscription, event_id])?;
    Ok(inserted == 1)
}
