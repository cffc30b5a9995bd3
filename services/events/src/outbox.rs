//! The transactional outbox: a service writes the events caused by a state change into its own
//! database in the same transaction as the change; a [`Relay`] then publishes them in order and
//! deletes them. A crash between commit and publish only delays the events; a crash between
//! publish and delete publishes them again, which idempotent consumers absorb.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Transaction, params};
use shopmesh_kit::Shutdown;
use shopmesh_storage::StorageError;
use shopmesh_storage::sqlite::Sqlite;
use tokio::sync::Notify;

use crate::{Event, EventBus, EventError};

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

/// Events relayed per round.
const BATCH: usize = 100;
/// How often an idle relay looks for events written without a wake-up (e.g. by another process).
const IDLE_POLL: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

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

/// An event waiting in an outbox.
#[derive(Debug, Clone)]
pub struct Pending {
    pub position: i64,
    pub topic: String,
    pub event: Event,
}

/// Where a relay reads pending events from.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// The oldest pending events, in write order.
    async fn pending(&self, limit: usize) -> Result<Vec<Pending>, EventError>;
    /// Forgets events once published.
    async fn remove(&self, published: &[Pending]) -> Result<(), EventError>;
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

/// Publishes an outbox's events, oldest first, until shutdown.
pub struct Relay {
    store: Arc<dyn OutboxStore>,
    bus: Arc<dyn EventBus>,
    wake: Arc<Notify>,
}

impl Relay {
    pub fn new(store: Arc<dyn OutboxStore>, bus: Arc<dyn EventBus>) -> Self {
        Self {
            store,
            bus,
            wake: Arc::new(Notify::new()),
        }
    }

    /// A handle that makes the relay look at once; call it after committing outbox writes.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Relays until `shutdown`. Publish failures are retried with back-off, never skipped: an
    /// event is removed only after the bus has stored it.
    pub async fn run(self, shutdown: Shutdown) {
        let mut delay = Duration::from_millis(100);
        while !shutdown.is_triggered() {
            match self.round().await {
                Ok(0) => {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(IDLE_POLL) => {}
                        () = shutdown.wait() => {}
                    }
                }
                Ok(_) => delay = Duration::from_millis(100),
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?delay, "outbox relay failed, retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.wait() => {}
                    }
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    /// Publishes one batch; returns how many events went out.
    pub async fn round(&self) -> Result<usize, EventError> {
        let batch = self.store.pending(BATCH).await?;
        let mut published = Vec::with_capacity(batch.len());
        for pending in batch {
            if let Err(error) = self.bus.publish(&pending.topic, &pending.event).await {
                // Keep what went out, so the next round does not publish it again.
                self.store.remove(&published).await?;
                return Err(error);
            }
            published.push(pending);
        }
        self.store.remove(&published).await?;
        metrics::counter!("shopmesh_outbox_published_total").increment(published.len() as u64);
        Ok(published.len())
    }
}
