//! Users on CQL. The e-mail is claimed with a lightweight transaction in `users_by_email`, then
//! the account, its listing entry and its event go in one logged batch. A claim whose batch
//! never landed (a crash in between) is taken over by the next registration of that e-mail once
//! it is a minute old; a younger one belongs to a registration still in flight.
//! Listing oldest first goes through a [`CreationIndex`]. Updates are
//! conditional on the version read (an LWT).

use std::sync::Arc;

use async_trait::async_trait;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use shopmesh_events::Event;
use shopmesh_events::outbox::{CqlOutbox, OutboxRow};
use shopmesh_kit::clock::now_ms;
use shopmesh_storage::StorageError;
use shopmesh_storage::cql::listing::CreationIndex;
use shopmesh_storage::cql::{Cql, lwt_applied, lwt_outcome};
use uuid::Uuid;

use super::{Attempt, Cursor, Failures, StoreError, TOPIC, UserRecord, UserStore};
use crate::config::ThrottleConfig;

/// How old an e-mail claim without its account must be before another registration may take it
/// over: far longer than a registration takes to write its batch.
const ABANDONED_CLAIM_MS: i64 = 60_000;

type Row = (
    Uuid,
    Vec<u8>,
    String,
    Vec<u8>,
    String,
    Option<Vec<String>>,
    i64,
    i64,
    i64,
);

pub struct CqlUsers {
    cql: Cql,
    outbox: Arc<CqlOutbox>,
    claim_email: PreparedStatement,
    take_over_email: PreparedStatement,
    insert: PreparedStatement,
    by_creation: CreationIndex,
    select: PreparedStatement,
    select_by_email: PreparedStatement,
    update: PreparedStatement,
    select_failures: PreparedStatement,
    insert_failures: PreparedStatement,
    update_failures: PreparedStatement,
    delete_failures: PreparedStatement,
}

impl CqlUsers {
    pub async fn new(cql: Cql) -> Result<Self, StorageError> {
        Ok(Self {
            outbox: Arc::new(CqlOutbox::new(&cql).await?),
            claim_email: cql
                .prepare(
                    "INSERT INTO users_by_email (email_index, user_id, claimed_at) VALUES (?, ?, ?) IF NOT EXISTS",
                )
                .await?,
            take_over_email: cql
                .prepare(
                    "UPDATE users_by_email SET user_id = ?, claimed_at = ? WHERE email_index = ? IF user_id = ?",
                )
                .await?,
            insert: cql
                .prepare(
                    "INSERT INTO users (id, email_index, password_hash, profile, locale, roles, created_at, updated_at, version) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .await?,
            by_creation: CreationIndex::new(&cql, "users").await?,
            select: cql
                .prepare(
                    "SELECT id, email_index, password_hash, profile, locale, roles, created_at, updated_at, version \
                     FROM users WHERE id = ?",
                )
                .await?,
            select_by_email: cql
                .prepare("SELECT user_id FROM users_by_email WHERE email_index = ?")
                .await?,
            update: cql
                .prepare(
                    "UPDATE users SET password_hash = ?, profile = ?, locale = ?, roles = ?, updated_at = ?, version = ? \
                     WHERE id = ? IF version = ?",
                )
                .await?,
            select_failures: cql
                .prepare("SELECT failures, blocked_until, last_attempt FROM login_failures WHERE email_index = ?")
                .await?,
            insert_failures: cql
                .prepare(
                    "INSERT INTO login_failures (email_index, failures, blocked_until, last_attempt) \
                     VALUES (?, ?, ?, ?) IF NOT EXISTS",
                )
                .await?,
            update_failures: cql
                .prepare(
                    "UPDATE login_failures SET failures = ?, blocked_until = ?, last_attempt = ? \
                     WHERE email_index = ? IF failures = ? AND last_attempt = ?",
                )
                .await?,
            delete_failures: cql
                .prepare("DELETE FROM login_failures WHERE email_index = ?")
                .await?,
            cql,
        })
    }

    /// The outbox to relay this store's events from.
    pub fn outbox(&self) -> Arc<CqlOutbox> {
        self.outbox.clone()
    }

    /// Claims `email_index` for `id`; false when another account holds it.
    async fn claim_email(&self, email_index: &[u8], id: Uuid) -> Result<bool, StoreError> {
        let now = now_ms();
        let claim = lwt_outcome(
            self.cql
                .execute(&self.claim_email, (email_index, id, now))
                .await?,
        )?;
        if claim.applied {
            return Ok(true);
        }
        let holder = match claim.get("user_id") {
            Some(CqlValue::Uuid(holder)) => *holder,
            other => {
                return Err(
                    StorageError::Corrupt(format!("users_by_email.user_id is {other:?}")).into(),
                );
            }
        };
        let claimed_at = match claim.get("claimed_at") {
            Some(CqlValue::BigInt(at)) => *at,
            _ => 0,
        };
        // A young claim is a registration still writing its account, not a dead one.
        if now - claimed_at < ABANDONED_CLAIM_MS || self.get(holder).await?.is_some() {
            return Ok(false);
        }
        // The holder's account was never written: its registration died between claim and batch.
        let taken = self
            .cql
            .execute(&self.take_over_email, (id, now, email_index, holder))
            .await?;
        Ok(lwt_applied(taken)?)
    }
}

fn record(row: Row) -> UserRecord {
    let (
        id,
        email_index,
        password_hash,
        profile,
        locale,
        roles,
        created_at_ms,
        updated_at_ms,
        version,
    ) = row;
    UserRecord {
        id,
        email_index,
        password_hash,
        profile,
        locale,
        roles: roles.unwrap_or_default(),
        created_at_ms,
        updated_at_ms,
        version,
    }
}

#[async_trait]
impl UserStore for CqlUsers {
    async fn create(&self, user: &UserRecord, event: &Event) -> Result<(), StoreError> {
        if !self.claim_email(&user.email_index, user.id).await? {
            return Err(StoreError::Conflict);
        }
        let (by_month, month) = CreationIndex::entry(user.created_at_ms, user.id);
        let [insert_by_month, insert_month] = self.by_creation.statements();
        let statements = [
            &self.insert,
            insert_by_month,
            insert_month,
            self.outbox.insert(),
        ];
        let values = (
            (
                user.id,
                &user.email_index,
                &user.password_hash,
                &user.profile,
                &user.locale,
                &user.roles,
                user.created_at_ms,
                user.updated_at_ms,
                user.version,
            ),
            by_month,
            month,
            OutboxRow::new(TOPIC, event).map_err(|e| StorageError::Corrupt(e.to_string()))?,
        );
        Ok(self.cql.logged_batch(&statements, values).await?)
    }

    async fn get(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        Ok(self
            .cql
            .first_row::<Row>(&self.select, (id,))
            .await?
            .map(record))
    }

    async fn find_by_email(&self, email_index: &[u8]) -> Result<Option<UserRecord>, StoreError> {
        let Some((id,)) = self
            .cql
            .first_row::<(Uuid,)>(&self.select_by_email, (email_index,))
            .await?
        else {
            return Ok(None);
        };
        self.get(id).await
    }

    async fn update(&self, user: &UserRecord, event: Option<&Event>) -> Result<(), StoreError> {
        // A conditional update cannot share a batch with the outbox's partition. The event goes
        // first: it only ever revokes sessions, which is harmless if the update then loses.
        if let Some(event) = event {
            let row =
                OutboxRow::new(TOPIC, event).map_err(|e| StorageError::Corrupt(e.to_string()))?;
            self.cql.execute(self.outbox.insert(), row).await?;
        }
        let result = self
            .cql
            .execute(
                &self.update,
                (
                    &user.password_hash,
                    &user.profile,
                    &user.locale,
                    &user.roles,
                    user.updated_at_ms,
                    user.version,
                    user.id,
                    user.version - 1,
                ),
            )
            .await?;
        if lwt_applied(result)? {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    async fn list(
        &self,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let ids: Vec<Uuid> = self
            .by_creation
            .list(after, limit)
            .await?
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        let mut users = Vec::with_capacity(ids.len());
        for id in ids {
            // A listing entry is written in the account's batch, so the account exists.
            if let Some(user) = self.get(id).await? {
                users.push(user);
            }
        }
        Ok(users)
    }

    async fn begin_attempt(
        &self,
        email_index: &[u8],
        now_ms: i64,
        throttle: &ThrottleConfig,
    ) -> Result<Attempt, StoreError> {
        // Read, then write conditionally on what was read; a concurrent attempt makes the
        // condition fail and this one reads again.
        loop {
            let row = self
                .cql
                .first_row::<(Option<i32>, Option<i64>, Option<i64>)>(
                    &self.select_failures,
                    (email_index,),
                )
                .await?;
            let failures = row.map_or_else(Failures::default, |(count, blocked, last)| Failures {
                count: count.unwrap_or(0).max(0) as u32,
                blocked_until_ms: blocked.unwrap_or(0),
                last_attempt_ms: last.unwrap_or(0),
            });
            let next = match failures.attempt(now_ms, throttle) {
                Ok(next) => next,
                Err(until_ms) => return Ok(Attempt::Blocked { until_ms }),
            };
            let count = i32::try_from(next.count).unwrap_or(i32::MAX);
            let written = match row {
                None => {
                    self.cql
                        .execute(
                            &self.insert_failures,
                            (
                                email_index,
                                count,
                                next.blocked_until_ms,
                                next.last_attempt_ms,
                            ),
                        )
                        .await?
                }
                Some((seen, _, seen_at)) => {
                    self.cql
                        .execute(
                            &self.update_failures,
                            (
                                count,
                                next.blocked_until_ms,
                                next.last_attempt_ms,
                                email_index,
                                seen,
                                seen_at,
                            ),
                        )
                        .await?
                }
            };
            if lwt_applied(written)? {
                return Ok(Attempt::Allowed);
            }
        }
    }

    async fn clear_failures(&self, email_index: &[u8]) -> Result<(), StoreError> {
        self.cql
            .execute(&self.delete_failures, (email_index,))
            .await?;
        Ok(())
    }

    async fn purge_attempts(&self, _before_ms: i64) -> Result<(), StoreError> {
        Ok(())
    }
}
