//! The outbox on CQL. CQL has no multi-table transactions, so a service writes its state change
//! and an [`OutboxRow`] in one *logged batch*: both apply, or (after the batch log's replay) both
//! do. Conditional changes (lightweight transactions) cannot share a batch with other
//! partitions; do the conditional claim first, then the batch.
//!
//! Rows are spread over [`SHARDS`] partitions by a hash of the event key, so one key stays in
//! one partition, in write order. A queue in CQL must not read through its own deletions, so the
//! relay never deletes row by row: it keeps a cursor per shard (persisted in `outbox_cursor`),
//! reads forward from it, and trims everything well behind it with one range deletion now and
//! then. Writers stamp rows with their own clock; a write that becomes visible late (up to
//! [`LATE_WRITE_WINDOW`] behind the cursor) is still found by a periodic sweep of that window.
//!
//! Several replicas of a service may run relays; one lightweight-transaction lease lets a
//! single one publish at a time, the others stand by.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use scylla::statement::prepared::PreparedStatement;
use shopmesh_storage::StorageError;
use shopmesh_storage::cql::{Cql, classify, lwt_applied};

use super::{OutboxStore, Pending};
use crate::{Event, EventError};

/// The outbox tables, to add to a service's CQL migrations.
pub const CQL_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS outbox (
        shard int,
        at bigint,
        id text,
        topic text,
        key text,
        kind text,
        payload blob,
        headers map<text, text>,
        occurred_at bigint,
        PRIMARY KEY ((shard), at, id)
    ) WITH gc_grace_seconds = 3600;
    CREATE TABLE IF NOT EXISTS outbox_cursor (shard int PRIMARY KEY, at bigint);
    CREATE TABLE IF NOT EXISTS outbox_lease (name text PRIMARY KEY, owner uuid);
";

/// Partitions the outbox is spread over. Fixed: rows are found by recomputing it.
pub const SHARDS: i32 = 16;
/// How far behind its cursor the relay still looks for late writes.
pub const LATE_WRITE_WINDOW: Duration = Duration::from_secs(60);
const SWEEP_EVERY: Duration = Duration::from_secs(10);
const TRIM_EVERY: Duration = Duration::from_secs(60);
/// The relay lease lives this long unless renewed; it is renewed at a third of it.
const LEASE: Duration = Duration::from_secs(15);

/// One outbox row, bound by name to [`CqlOutbox::insert`] in the caller's logged batch.
#[derive(Debug, Clone, scylla::SerializeRow)]
pub struct OutboxRow {
    shard: i32,
    at: i64,
    id: String,
    topic: String,
    key: String,
    kind: String,
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
    occurred_at: i64,
}

impl OutboxRow {
    /// The row carrying `event` for `topic`, stamped now.
    pub fn new(topic: &str, event: &Event) -> Result<Self, EventError> {
        event.check()?;
        Ok(Self {
            shard: shard_of(&event.key),
            at: stamp(),
            id: event.id.clone(),
            topic: topic.to_owned(),
            key: event.key.clone(),
            kind: event.kind.clone(),
            payload: event.payload.clone(),
            headers: event.headers.clone(),
            occurred_at: event.occurred_at_ms,
        })
    }
}

/// The outbox of a service's CQL keyspace: the insert statement writers put in their batches,
/// and the reading side a [`super::Relay`] drives.
pub struct CqlOutbox {
    cql: Cql,
    insert: PreparedStatement,
    read: PreparedStatement,
    load_cursors: PreparedStatement,
    save_cursor: PreparedStatement,
    trim: PreparedStatement,
    acquire: PreparedStatement,
    renew: PreparedStatement,
    give_up: PreparedStatement,
    owner: uuid::Uuid,
    relay: Mutex<RelayState>,
}

#[derive(Default)]
struct RelayState {
    /// When the lease was last taken or renewed; `None` while another relay holds it.
    leased_at: Option<Instant>,
    cursors: BTreeMap<i32, i64>,
    /// Rows published within the late-write window, so sweeps skip them.
    published: BTreeMap<i32, BTreeSet<(i64, String)>>,
    last_sweep: Option<Instant>,
    last_trim: Option<Instant>,
}

impl CqlOutbox {
    /// Prepares the outbox statements on a keyspace migrated with [`CQL_SCHEMA`].
    pub async fn new(cql: &Cql) -> Result<Self, StorageError> {
        Ok(Self {
            insert: cql
                .prepare(
                    "INSERT INTO outbox (shard, at, id, topic, key, kind, payload, headers, occurred_at) \
                     VALUES (:shard, :at, :id, :topic, :key, :kind, :payload, :headers, :occurred_at)",
                )
                .await?,
            read: cql
                .prepare(
                    "SELECT at, id, topic, key, kind, payload, headers, occurred_at FROM outbox \
                     WHERE shard = ? AND at >= ? LIMIT ?",
                )
                .await?,
            load_cursors: cql.prepare("SELECT shard, at FROM outbox_cursor").await?,
            save_cursor: cql
                .prepare("UPDATE outbox_cursor SET at = ? WHERE shard = ?")
                .await?,
            trim: cql
                .prepare("DELETE FROM outbox WHERE shard = ? AND at < ?")
                .await?,
            give_up: cql
                .prepare("DELETE FROM outbox_lease WHERE name = 'relay' IF owner = ?")
                .await?,
            acquire: cql
                .prepare(&format!(
                    "INSERT INTO outbox_lease (name, owner) VALUES ('relay', ?) IF NOT EXISTS USING TTL {}",
                    LEASE.as_secs()
                ))
                .await?,
            renew: cql
                .prepare(&format!(
                    "UPDATE outbox_lease USING TTL {} SET owner = ? WHERE name = 'relay' IF owner = ?",
                    LEASE.as_secs()
                ))
                .await?,
            owner: uuid::Uuid::new_v4(),
            relay: Mutex::new(RelayState::default()),
            cql: cql.clone(),
        })
    }

    /// The statement to append to a logged batch, bound to an [`OutboxRow`].
    pub fn insert(&self) -> &PreparedStatement {
        &self.insert
    }

    /// Whether this relay may publish: takes, keeps or renews the lease. Taking it (re)loads the
    /// cursors, which another relay may have moved.
    async fn hold_lease(&self) -> Result<bool, StorageError> {
        let leased_at = self.relay.lock().expect("relay state").leased_at;
        if leased_at.is_some_and(|at| at.elapsed() < LEASE / 3) {
            return Ok(true);
        }
        let session = self.cql.session();
        let held = if leased_at.is_some() {
            let renewed = session
                .execute_unpaged(&self.renew, (self.owner, self.owner))
                .await
                .map_err(classify)?;
            lwt_applied(renewed)?
        } else {
            false
        };
        let held = held || {
            let taken = session
                .execute_unpaged(&self.acquire, (self.owner,))
                .await
                .map_err(classify)?;
            lwt_applied(taken)?
        };
        if !held {
            self.relay.lock().expect("relay state").leased_at = None;
            return Ok(false);
        }
        if leased_at.is_none() {
            let cursors = self.read_cursors().await?;
            let mut state = self.relay.lock().expect("relay state");
            *state = RelayState {
                cursors,
                ..RelayState::default()
            };
        }
        self.relay.lock().expect("relay state").leased_at = Some(Instant::now());
        Ok(true)
    }

    async fn read_cursors(&self) -> Result<BTreeMap<i32, i64>, StorageError> {
        let rows = self
            .cql
            .session()
            .execute_unpaged(&self.load_cursors, ())
            .await
            .map_err(classify)?
            .into_rows_result()
            .map_err(|e| StorageError::Cql(e.to_string()))?;
        rows.rows::<(i32, i64)>()
            .map_err(|e| StorageError::Cql(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| StorageError::Corrupt(e.to_string()))
    }

    async fn read_shard(
        &self,
        shard: i32,
        from: i64,
        limit: usize,
    ) -> Result<Vec<Pending>, EventError> {
        type Row = (
            i64,
            String,
            String,
            String,
            String,
            Vec<u8>,
            Option<BTreeMap<String, String>>,
            i64,
        );
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows = self
            .cql
            .session()
            .execute_unpaged(&self.read, (shard, from, limit))
            .await
            .map_err(classify)?
            .into_rows_result()
            .map_err(|e| StorageError::Cql(e.to_string()))?;
        let rows = rows
            .rows::<Row>()
            .map_err(|e| StorageError::Cql(e.to_string()))?;
        let mut pending = Vec::new();
        for row in rows {
            let (at, id, topic, key, kind, payload, headers, occurred_at_ms) =
                row.map_err(|e| StorageError::Corrupt(e.to_string()))?;
            pending.push(Pending {
                position: at,
                topic,
                event: Event {
                    id,
                    key,
                    kind,
                    payload,
                    headers: headers.unwrap_or_default(),
                    occurred_at_ms,
                },
            });
        }
        Ok(pending)
    }
}

#[async_trait]
impl OutboxStore for CqlOutbox {
    async fn pending(&self, limit: usize) -> Result<Vec<Pending>, EventError> {
        if !self.hold_lease().await? {
            return Ok(Vec::new());
        }
        let (reads, sweep) = {
            let mut state = self.relay.lock().expect("relay state");
            let sweep = state
                .last_sweep
                .is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
            if sweep {
                state.last_sweep = Some(Instant::now());
            }
            let window = LATE_WRITE_WINDOW.as_micros() as i64;
            let reads: Vec<(i32, i64, usize)> = (0..SHARDS)
                .map(|shard| {
                    let cursor = state.cursors.get(&shard).copied();
                    let from = match cursor {
                        None => i64::MIN,
                        Some(cursor) if sweep => cursor.saturating_sub(window),
                        Some(cursor) => cursor,
                    };
                    let skipped = state.published.get(&shard).map_or(0, BTreeSet::len);
                    (shard, from, limit + skipped)
                })
                .collect();
            (reads, sweep)
        };
        let results = futures::future::join_all(
            reads
                .iter()
                .map(|&(shard, from, limit)| self.read_shard(shard, from, limit)),
        )
        .await;
        let state = self.relay.lock().expect("relay state");
        let mut pending = Vec::new();
        for ((shard, _, _), rows) in reads.iter().zip(results) {
            let published = state.published.get(shard);
            pending.extend(rows?.into_iter().filter(|row| {
                !published.is_some_and(|set| set.contains(&(row.position, row.event.id.clone())))
            }));
        }
        // Oldest first overall; a stable sort keeps each shard's (and so each key's) order.
        pending.sort_by_key(|row| row.position);
        pending.truncate(limit);
        if sweep && !pending.is_empty() {
            tracing::debug!(rows = pending.len(), "outbox sweep found pending rows");
        }
        Ok(pending)
    }

    async fn remove(&self, published: &[Pending]) -> Result<(), EventError> {
        let window = LATE_WRITE_WINDOW.as_micros() as i64;
        let (moved, trims) = {
            let mut state = self.relay.lock().expect("relay state");
            let mut moved = BTreeMap::new();
            for row in published {
                let shard = shard_of(&row.event.key);
                state
                    .published
                    .entry(shard)
                    .or_default()
                    .insert((row.position, row.event.id.clone()));
                let cursor = state.cursors.entry(shard).or_insert(row.position);
                *cursor = (*cursor).max(row.position);
                moved.insert(shard, *cursor);
            }
            let RelayState {
                cursors, published, ..
            } = &mut *state;
            for (shard, set) in published.iter_mut() {
                let floor = cursors[shard].saturating_sub(window);
                set.retain(|(at, _)| *at >= floor);
            }
            let trim = state.last_trim.is_none_or(|at| at.elapsed() >= TRIM_EVERY);
            let trims: Vec<(i32, i64)> = if trim {
                state.last_trim = Some(Instant::now());
                state
                    .cursors
                    .iter()
                    .map(|(&shard, &cursor)| (shard, cursor.saturating_sub(2 * window)))
                    .collect()
            } else {
                Vec::new()
            };
            (moved, trims)
        };
        let session = self.cql.session();
        for (shard, cursor) in moved {
            session
                .execute_unpaged(&self.save_cursor, (cursor, shard))
                .await
                .map_err(classify)?;
        }
        for (shard, below) in trims {
            session
                .execute_unpaged(&self.trim, (shard, below))
                .await
                .map_err(classify)?;
        }
        Ok(())
    }

    async fn release(&self) -> Result<(), EventError> {
        let held = self.relay.lock().expect("relay state").leased_at.take();
        if held.is_some() {
            self.cql
                .session()
                .execute_unpaged(&self.give_up, (self.owner,))
                .await
                .map_err(classify)?;
        }
        Ok(())
    }
}

/// The shard of an event key: FNV-1a, stable across builds and platforms.
pub fn shard_of(key: &str) -> i32 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % SHARDS as u64) as i32
}

/// Microseconds since the epoch, strictly increasing within this process, so two writes of one
/// key from one process keep their order even if the clock steps back.
fn stamp() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}
