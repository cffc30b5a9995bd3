//! The transactional outbox: a service writes the events caused by a state change into its own
//! database in the same transaction as the change; a [`Relay`] then publishes them in order and
//! deletes them. A crash between commit and publish only delays the events; a crash between
//! publish and delete publishes them again, which idempotent consumers absorb.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shopmesh_kit::Shutdown;
use tokio::sync::Notify;

use crate::{Event, EventBus, EventError};

pub mod cql;
pub mod sqlite;

pub use cql::{CQL_SCHEMA, CqlOutbox, OutboxRow};
pub use sqlite::{SQLITE_SCHEMA, SqliteOutbox, enqueue};

/// The outbox table as migration `version` of a service's SQLite schema.
pub const fn sqlite_migration(version: u32) -> shopmesh_storage::Migration {
    shopmesh_storage::Migration {
        version,
        name: "outbox",
        statements: SQLITE_SCHEMA,
    }
}

/// The outbox table as migration `version` of a service's CQL schema.
pub const fn cql_migration(version: u32) -> shopmesh_storage::Migration {
    shopmesh_storage::Migration {
        version,
        name: "outbox",
        statements: CQL_SCHEMA,
    }
}

/// Events relayed per round.
const BATCH: usize = 100;
/// How often an idle relay looks for events written without a wake-up (e.g. by another process).
const IDLE_POLL: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// An event waiting in an outbox.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The store's order key (a sequence number, or a time stamp on CQL).
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
    /// Called when the relay stops, to hand over at once to a standby relay.
    async fn release(&self) -> Result<(), EventError> {
        Ok(())
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
        if let Err(error) = self.store.release().await {
            tracing::warn!(%error, "outbox relay could not hand over its lease");
        }
    }

    /// Publishes one batch; returns how many events went out.
    pub async fn round(&self) -> Result<usize, EventError> {
        let batch = self.store.pending(BATCH).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let events: Vec<(String, Event)> = batch
            .iter()
            .map(|pending| (pending.topic.clone(), pending.event.clone()))
            .collect();
        // On failure nothing is removed: what did go out goes again, and consumers drop it.
        self.bus.publish_all(&events).await?;
        self.store.remove(&batch).await?;
        metrics::counter!("shopmesh_outbox_published_total").increment(batch.len() as u64);
        Ok(batch.len())
    }
}
