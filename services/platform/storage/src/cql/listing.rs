//! Listing records oldest first on CQL, where there is no global order: an index of
//! `(created_at, id)` rows in one partition per month, and a small table naming the months that
//! have rows. A listing reads the months in order from its cursor's month on.
//!
//! A service declares the two tables in its migrations, for a name `X`:
//!
//! ```text
//! CREATE TABLE IF NOT EXISTS X_by_month (month int, created_at bigint, id uuid,
//!     PRIMARY KEY ((month), created_at, id));
//! CREATE TABLE IF NOT EXISTS X_months (shard int, month int, PRIMARY KEY ((shard), month));
//! ```
//!
//! and writes [`CreationIndex::entry`]'s two rows with [`CreationIndex::statements`] in the
//! record's own logged batch.

use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::Cql;
use crate::Result;

/// The single partition of the months table.
const MONTHS_SHARD: i32 = 0;
/// A month here is 30.44 days: partitions need only be ordered and bounded, not calendar months.
const MONTH_MS: i64 = 2_629_746_000;

pub use shopmesh_kit::paging::Cursor;

/// The creation-order index of one kind of record.
pub struct CreationIndex {
    cql: Cql,
    insert: PreparedStatement,
    insert_month: PreparedStatement,
    remove: PreparedStatement,
    months_from: PreparedStatement,
    page: PreparedStatement,
    page_after: PreparedStatement,
}

impl CreationIndex {
    /// Prepares the statements on the tables `{name}_by_month` and `{name}_months`. `name` is
    /// a constant of the calling service, never request data.
    pub async fn new(cql: &Cql, name: &str) -> Result<Self> {
        Ok(Self {
            insert: cql
                .prepare(&format!(
                    "INSERT INTO {name}_by_month (month, created_at, id) VALUES (?, ?, ?)"
                ))
                .await?,
            insert_month: cql
                .prepare(&format!(
                    "INSERT INTO {name}_months (shard, month) VALUES (?, ?)"
                ))
                .await?,
            remove: cql
                .prepare(&format!(
                    "DELETE FROM {name}_by_month WHERE month = ? AND created_at = ? AND id = ?"
                ))
                .await?,
            months_from: cql
                .prepare(&format!(
                    "SELECT month FROM {name}_months WHERE shard = ? AND month >= ?"
                ))
                .await?,
            page: cql
                .prepare(&format!(
                    "SELECT created_at, id FROM {name}_by_month WHERE month = ? LIMIT ?"
                ))
                .await?,
            page_after: cql
                .prepare(&format!(
                    "SELECT created_at, id FROM {name}_by_month WHERE month = ? AND (created_at, id) > (?, ?) LIMIT ?"
                ))
                .await?,
            cql: cql.clone(),
        })
    }

    /// The two statements to append to the record's logged batch, bound to [`Self::entry`].
    pub fn statements(&self) -> [&PreparedStatement; 2] {
        [&self.insert, &self.insert_month]
    }

    /// The values of [`Self::statements`] for a record created at `created_at_ms`.
    pub fn entry(created_at_ms: i64, id: Uuid) -> ((i32, i64, Uuid), (i32, i32)) {
        let month = month_of(created_at_ms);
        ((month, created_at_ms, id), (MONTHS_SHARD, month))
    }

    /// The statement removing a record's entry, bound to [`Self::removal`].
    pub fn remove_statement(&self) -> &PreparedStatement {
        &self.remove
    }

    /// The values of [`Self::remove_statement`].
    pub fn removal(created_at_ms: i64, id: Uuid) -> (i32, i64, Uuid) {
        (month_of(created_at_ms), created_at_ms, id)
    }

    /// Up to `limit` records, oldest first, after `after`.
    pub async fn list(&self, after: Option<Cursor>, limit: usize) -> Result<Vec<Cursor>> {
        let first_month = after.map_or(i32::MIN, |(at, _)| month_of(at));
        let months = self
            .cql
            .rows::<(i32,)>(&self.months_from, (MONTHS_SHARD, first_month))
            .await?;
        let mut found = Vec::new();
        for (month,) in months {
            let wanted = i32::try_from(limit - found.len()).unwrap_or(i32::MAX);
            let page = match after {
                Some((at, id)) if month == first_month => {
                    self.cql
                        .rows::<(i64, Uuid)>(&self.page_after, (month, at, id, wanted))
                        .await?
                }
                _ => {
                    self.cql
                        .rows::<(i64, Uuid)>(&self.page, (month, wanted))
                        .await?
                }
            };
            found.extend(page);
            if found.len() >= limit {
                break;
            }
        }
        Ok(found)
    }
}

fn month_of(at_ms: i64) -> i32 {
    at_ms.div_euclid(MONTH_MS) as i32
}
