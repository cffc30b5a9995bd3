//! The inbox on CQL: claim an event id before the effect, mark it done after. Rows expire after
//! [`REMEMBER`], far beyond any redelivery.

use std::time::Duration;

use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use shopmesh_kit::clock::now_ms;
use shopmesh_storage::StorageError;
use shopmesh_storage::cql::{Cql, classify, lwt_outcome};

/// How long a processed id is remembered.
pub const REMEMBER: Duration = Duration::from_secs(14 * 24 * 3600);

/// The processed-events table, to add to a consuming service's CQL migrations.
pub const CQL_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS processed_events (
        subscription text,
        event_id text,
        state text,
        lease_until bigint,
        PRIMARY KEY ((subscription, event_id))
    ) WITH default_time_to_live = 1209600;
";

/// The outcome of claiming an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This consumer owns the event now: apply the effect, then [`CqlInbox::complete`] (or
    /// [`CqlInbox::release`] if it failed).
    Acquired,
    /// The effect was applied before: acknowledge and do nothing.
    Done,
    /// Another consumer is applying it right now: negatively acknowledge, to look again later.
    Busy,
}

/// Claims on processed event ids in a service's CQL keyspace.
pub struct CqlInbox {
    cql: Cql,
    claim: PreparedStatement,
    take_over: PreparedStatement,
    complete: PreparedStatement,
    release: PreparedStatement,
    lease: Duration,
}

impl CqlInbox {
    /// Prepares the inbox statements on a keyspace migrated with [`CQL_SCHEMA`]. A claim not
    /// completed within `lease` (the consumer died) may be taken over.
    pub async fn new(cql: &Cql, lease: Duration) -> Result<Self, StorageError> {
        Ok(Self {
            claim: cql
                .prepare(
                    "INSERT INTO processed_events (subscription, event_id, state, lease_until) \
                     VALUES (?, ?, 'claimed', ?) IF NOT EXISTS",
                )
                .await?,
            take_over: cql
                .prepare(
                    "UPDATE processed_events SET lease_until = ? WHERE subscription = ? AND event_id = ? \
                     IF state = 'claimed' AND lease_until = ?",
                )
                .await?,
            complete: cql
                .prepare(
                    "UPDATE processed_events SET state = 'done' WHERE subscription = ? AND event_id = ?",
                )
                .await?,
            release: cql
                .prepare(
                    "DELETE FROM processed_events WHERE subscription = ? AND event_id = ? IF state = 'claimed'",
                )
                .await?,
            lease,
            cql: cql.clone(),
        })
    }

    /// Claims `event_id` for `subscription`.
    pub async fn claim(&self, subscription: &str, event_id: &str) -> Result<Claim, StorageError> {
        let session = self.cql.session();
        let now = now_ms();
        let until = now + self.lease.as_millis() as i64;
        let claimed = lwt_outcome(
            session
                .execute_unpaged(&self.claim, (subscription, event_id, until))
                .await
                .map_err(classify)?,
        )?;
        if claimed.applied {
            return Ok(Claim::Acquired);
        }
        let state = match claimed.get("state") {
            Some(CqlValue::Text(state)) => state.as_str(),
            other => return Err(StorageError::Corrupt(format!("inbox state is {other:?}"))),
        };
        let lease_until = match claimed.get("lease_until") {
            Some(CqlValue::BigInt(at)) => *at,
            other => return Err(StorageError::Corrupt(format!("inbox lease is {other:?}"))),
        };
        match state {
            "done" => Ok(Claim::Done),
            _ if lease_until > now => Ok(Claim::Busy),
            _ => {
                // The claimer's lease ran out; of several consumers taking over, one wins.
                let taken = lwt_outcome(
                    session
                        .execute_unpaged(
                            &self.take_over,
                            (until, subscription, event_id, lease_until),
                        )
                        .await
                        .map_err(classify)?,
                )?;
                Ok(if taken.applied {
                    Claim::Acquired
                } else if matches!(taken.get("state"), Some(CqlValue::Text(s)) if s == "done") {
                    Claim::Done
                } else {
                    Claim::Busy
                })
            }
        }
    }

    /// Marks a claimed event as processed; later deliveries find [`Claim::Done`].
    pub async fn complete(&self, subscription: &str, event_id: &str) -> Result<(), StorageError> {
        self.cql
            .session()
            .execute_unpaged(&self.complete, (subscription, event_id))
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Gives a claim up after a failed effect, so the redelivery can claim it at once.
    pub async fn release(&self, subscription: &str, event_id: &str) -> Result<(), StorageError> {
        self.cql
            .session()
            .execute_unpaged(&self.release, (subscription, event_id))
            .await
            .map_err(classify)?;
        Ok(())
    }
}
