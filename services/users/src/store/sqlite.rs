//! Users on SQLite (`shopmesh up`): uniqueness by a unique index, updates by version.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params};
use shopmesh_events::{Event, outbox};
use shopmesh_storage::StorageError;
use shopmesh_storage::sqlite::{Sqlite, json_at, uuid_at};
use uuid::Uuid;

use super::{Attempt, Cursor, Failures, StoreError, TOPIC, UserRecord, UserStore};
use crate::config::ThrottleConfig;

const COLUMNS: &str =
    "id, email_index, password_hash, profile, locale, roles, created_at, updated_at, version";

#[derive(Debug, Clone)]
pub struct SqliteUsers(pub Sqlite);

fn record(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        id: uuid_at(row, 0)?,
        email_index: row.get(1)?,
        password_hash: row.get(2)?,
        profile: row.get(3)?,
        locale: row.get(4)?,
        roles: json_at(row, 5)?,
        created_at_ms: row.get(6)?,
        updated_at_ms: row.get(7)?,
        version: row.get(8)?,
    })
}

fn roles_json(roles: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(roles).map_err(|e| StorageError::Corrupt(e.to_string()).into())
}

#[async_trait]
impl UserStore for SqliteUsers {
    async fn create(&self, user: &UserRecord, event: &Event) -> Result<(), StoreError> {
        let (user, event, roles) = (user.clone(), event.clone(), roles_json(&user.roles)?);
        self.0
            .write(move |tx| {
                let inserted = tx
                    .prepare_cached(&format!(
                        "INSERT INTO users ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                         ON CONFLICT (email_index) DO NOTHING"
                    ))?
                    .execute(params![
                        user.id.to_string(),
                        user.email_index,
                        user.password_hash,
                        user.profile,
                        user.locale,
                        roles,
                        user.created_at_ms,
                        user.updated_at_ms,
                        user.version
                    ])?;
                if inserted == 0 {
                    return Err(StoreError::Conflict);
                }
                outbox::enqueue(tx, TOPIC, &event)?;
                Ok(())
            })
            .await
    }

    async fn get(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        self.0
            .read(move |db| {
                Ok(db
                    .prepare_cached(&format!("SELECT {COLUMNS} FROM users WHERE id = ?1"))?
                    .query_row([id.to_string()], record)
                    .optional()?)
            })
            .await
    }

    async fn find_by_email(&self, email_index: &[u8]) -> Result<Option<UserRecord>, StoreError> {
        let email_index = email_index.to_vec();
        self.0
            .read(move |db| {
                Ok(db
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM users WHERE email_index = ?1"
                    ))?
                    .query_row([email_index], record)
                    .optional()?)
            })
            .await
    }

    async fn update(&self, user: &UserRecord, event: Option<&Event>) -> Result<(), StoreError> {
        let (user, roles, event) = (user.clone(), roles_json(&user.roles)?, event.cloned());
        self.0
            .write(move |tx| {
                let updated = tx
                    .prepare_cached(
                        "UPDATE users SET password_hash = ?1, profile = ?2, locale = ?3, roles = ?4,
                         updated_at = ?5, version = ?6 WHERE id = ?7 AND version = ?8",
                    )?
                    .execute(params![
                        user.password_hash,
                        user.profile,
                        user.locale,
                        roles,
                        user.updated_at_ms,
                        user.version,
                        user.id.to_string(),
                        user.version - 1
                    ])?;
                if updated != 1 {
                    return Err(StoreError::Conflict);
                }
                if let Some(event) = &event {
                    outbox::enqueue(tx, TOPIC, event)?;
                }
                Ok(())
            })
            .await
    }

    async fn list(
        &self,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let (at, id) = after.map_or((i64::MIN, String::new()), |(at, id)| (at, id.to_string()));
        self.0
            .read(move |db| {
                let mut statement = db.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM users WHERE (created_at, id) > (?1, ?2)
                     ORDER BY created_at, id LIMIT ?3"
                ))?;
                let rows = statement.query_map(params![at, id, limit as i64], record)?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
    }

    async fn begin_attempt(
        &self,
        email_index: &[u8],
        now_ms: i64,
        throttle: &ThrottleConfig,
    ) -> Result<Attempt, StoreError> {
        let (email_index, throttle) = (email_index.to_vec(), throttle.clone());
        self.0
            .write(move |tx| {
                let failures = tx
                    .prepare_cached(
                        "SELECT failures, blocked_until, last_attempt FROM login_failures WHERE email_index = ?1",
                    )?
                    .query_row([&email_index], |row| {
                        Ok(Failures {
                            count: row.get(0)?,
                            blocked_until_ms: row.get(1)?,
                            last_attempt_ms: row.get(2)?,
                        })
                    })
                    .optional()?
                    .unwrap_or_default();
                let next = match failures.attempt(now_ms, &throttle) {
                    Ok(next) => next,
                    Err(until_ms) => return Ok(Attempt::Blocked { until_ms }),
                };
                tx.prepare_cached(
                    "INSERT INTO login_failures (email_index, failures, blocked_until, last_attempt)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (email_index) DO UPDATE SET failures = ?2, blocked_until = ?3, last_attempt = ?4",
                )?
                .execute(params![email_index, next.count, next.blocked_until_ms, next.last_attempt_ms])?;
                Ok(Attempt::Allowed)
            })
            .await
    }

    async fn clear_failures(&self, email_index: &[u8]) -> Result<(), StoreError> {
        let email_index = email_index.to_vec();
        self.0
            .write(move |tx| {
                tx.prepare_cached("DELETE FROM login_failures WHERE email_index = ?1")?
                    .execute([email_index])?;
                Ok(())
            })
            .await
    }

    async fn purge_attempts(&self, before_ms: i64) -> Result<(), StoreError> {
        self.0
            .write(move |tx| {
                tx.prepare_cached(
                    "DELETE FROM login_failures WHERE last_attempt < ?1 AND blocked_until < ?1",
                )?
                .execute([before_ms])?;
                Ok(())
            })
            .await
    }
}
