//! Reviews on SQLite (`shopmesh up`): a change, the recount of its product's aggregate, the
//! events of both and the processed order event commit in one transaction.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use shopmesh_events::{Event, inbox, outbox};
use shopmesh_storage::sqlite::{Sqlite, json_at, unreadable, uuid_at};
use uuid::Uuid;

use super::{
    Aggregate, Announce, Cursor, LANGUAGE_WEIGHT, MAX_RANKED_VOTES, PlacedOrder, Processed, Queue,
    RANK_WEIGHT, Ranking, ReviewRecord, ReviewStore, Status, StoreError, TOPIC, counts,
    status_from,
};

const COLUMNS: &str = "id, product_id, user_id, status, rating, title, body, language, moderation_reason, report_count, reported_at, created_at, updated_at, version, helpful_count";

#[derive(Debug, Clone)]
pub struct SqliteReviews(pub Sqlite);

fn review(row: &Row<'_>) -> rusqlite::Result<ReviewRecord> {
    let status: String = row.get(3)?;
    Ok(ReviewRecord {
        id: uuid_at(row, 0)?,
        product_id: uuid_at(row, 1)?,
        user_id: uuid_at(row, 2)?,
        status: status_from(&status).map_err(|e| unreadable(3, e))?,
        rating: row.get(4)?,
        title: row.get(5)?,
        body: row.get(6)?,
        language: row.get(7)?,
        moderation_reason: row.get(8)?,
        report_count: row.get(9)?,
        reported_at_ms: row.get(10)?,
        created_at_ms: row.get(11)?,
        updated_at_ms: row.get(12)?,
        version: row.get(13)?,
        helpful_count: row.get(14)?,
    })
}

fn stored_aggregate(db: &Connection, product_id: Uuid) -> Result<Aggregate, StoreError> {
    let found: Option<([i32; 5], i64)> = db
        .prepare_cached("SELECT stars, version FROM ratings WHERE product_id = ?1")?
        .query_row([product_id.to_string()], |row| {
            Ok((json_at(row, 0)?, row.get(1)?))
        })
        .optional()?;
    let (stars, version) = found.unwrap_or_default();
    Ok(Aggregate {
        product_id,
        stars,
        version,
    })
}

/// Recounts the product's published reviews, writes the aggregate one version up and enqueues
/// its event.
fn recount(
    tx: &Transaction<'_>,
    product_id: Uuid,
    announce: &Announce,
) -> Result<Aggregate, StoreError> {
    let ratings = tx
        .prepare_cached(
            "SELECT rating, COUNT(*) FROM reviews WHERE product_id = ?1 AND status = ?2 GROUP BY rating",
        )?
        .query_map(
            params![product_id.to_string(), Status::Published.as_str()],
            |row| Ok((row.get::<_, i32>(0)?, row.get::<_, i32>(1)?)),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let previous = stored_aggregate(tx, product_id)?;
    let aggregate = Aggregate::counted(product_id, ratings, previous.version + 1)?;
    tx.prepare_cached(
        "INSERT INTO ratings (product_id, stars, version) VALUES (?1, ?2, ?3)
         ON CONFLICT (product_id) DO UPDATE SET stars = ?2, version = ?3",
    )?
    .execute(params![
        product_id.to_string(),
        serde_json::to_string(&aggregate.stars)?,
        aggregate.version
    ])?;
    outbox::enqueue(tx, TOPIC, &announce(&aggregate))?;
    Ok(aggregate)
}

#[async_trait]
impl ReviewStore for SqliteReviews {
    async fn order_placed(
        &self,
        order: &PlacedOrder,
        processed: Processed<'_>,
    ) -> Result<bool, StoreError> {
        let order = order.clone();
        let (subscription, event_id) = (
            processed.subscription.to_owned(),
            processed.event_id.to_owned(),
        );
        self.0
            .write(move |tx| {
                if !inbox::first_delivery(tx, &subscription, &event_id)? {
                    return Ok(false);
                }
                tx.prepare_cached(
                    "INSERT INTO placed_orders (order_id, user_id, product_ids) VALUES (?1, ?2, ?3)
                     ON CONFLICT (order_id) DO NOTHING",
                )?
                .execute(params![
                    order.order_id.to_string(),
                    order.user_id.to_string(),
                    serde_json::to_string(&order.product_ids)?
                ])?;
                Ok(true)
            })
            .await
    }

    async fn order_paid(
        &self,
        order_id: Uuid,
        processed: Processed<'_>,
    ) -> Result<bool, StoreError> {
        let (subscription, event_id) = (
            processed.subscription.to_owned(),
            processed.event_id.to_owned(),
        );
        self.0
            .write(move |tx| {
                if !inbox::first_delivery(tx, &subscription, &event_id)? {
                    return Ok(false);
                }
                let placed: Option<(String, Vec<Uuid>)> = tx
                    .prepare_cached(
                        "SELECT user_id, product_ids FROM placed_orders WHERE order_id = ?1",
                    )?
                    .query_row([order_id.to_string()], |row| {
                        Ok((row.get(0)?, json_at(row, 1)?))
                    })
                    .optional()?;
                let (user_id, product_ids) = placed.ok_or(StoreError::NotFound)?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO purchases (user_id, product_id, order_id) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id, product_id) DO NOTHING",
                )?;
                for product_id in product_ids {
                    insert.execute(params![
                        user_id,
                        product_id.to_string(),
                        order_id.to_string()
                    ])?;
                }
                Ok(true)
            })
            .await
    }

    async fn purchased(&self, user_id: Uuid, product_id: Uuid) -> Result<bool, StoreError> {
        self.0
            .read(move |db| {
                Ok(db
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM purchases WHERE user_id = ?1 AND product_id = ?2)",
                    )?
                    .query_row(params![user_id.to_string(), product_id.to_string()], |row| {
                        row.get(0)
                    })?)
            })
            .await
    }

    async fn create(
        &self,
        review: &ReviewRecord,
        announce: &Announce,
    ) -> Result<Option<Aggregate>, StoreError> {
        let (review, announce) = (review.clone(), announce.clone());
        self.0
            .write(move |tx| {
                let inserted = tx
                    .prepare_cached(&format!(
                        "INSERT INTO reviews ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                         ON CONFLICT (product_id, user_id) DO NOTHING"
                    ))?
                    .execute(params![
                        review.id.to_string(),
                        review.product_id.to_string(),
                        review.user_id.to_string(),
                        review.status.as_str(),
                        review.rating,
                        review.title,
                        review.body,
                        review.language,
                        review.moderation_reason,
                        review.report_count,
                        review.reported_at_ms,
                        review.created_at_ms,
                        review.updated_at_ms,
                        review.version,
                        review.helpful_count
                    ])?;
                if inserted == 0 {
                    return Err(StoreError::Conflict);
                }
                counts(None, Some(&review))
                    .then(|| recount(tx, review.product_id, &announce))
                    .transpose()
            })
            .await
    }

    async fn review(&self, id: Uuid) -> Result<Option<ReviewRecord>, StoreError> {
        self.0
            .read(move |db| {
                Ok(db
                    .prepare_cached(&format!("SELECT {COLUMNS} FROM reviews WHERE id = ?1"))?
                    .query_row([id.to_string()], review)
                    .optional()?)
            })
            .await
    }

    async fn update(
        &self,
        previous: &ReviewRecord,
        next: &ReviewRecord,
        events: &[Event],
        announce: &Announce,
    ) -> Result<Option<Aggregate>, StoreError> {
        let (previous, next, events, announce) = (
            previous.clone(),
            next.clone(),
            events.to_vec(),
            announce.clone(),
        );
        self.0
            .write(move |tx| {
                let written = tx
                    .prepare_cached(
                        "UPDATE reviews SET status = ?1, rating = ?2, title = ?3, body = ?4, language = ?5,
                         moderation_reason = ?6, reported_at = ?7, updated_at = ?8, version = ?9
                         WHERE id = ?10 AND version = ?11",
                    )?
                    .execute(params![
                        next.status.as_str(),
                        next.rating,
                        next.title,
                        next.body,
                        next.language,
                        next.moderation_reason,
                        next.reported_at_ms,
                        next.updated_at_ms,
                        next.version,
                        next.id.to_string(),
                        previous.version
                    ])?;
                if written == 0 {
                    return Err(StoreError::Conflict);
                }
                for event in &events {
                    outbox::enqueue(tx, TOPIC, event)?;
                }
                counts(Some(&previous), Some(&next))
                    .then(|| recount(tx, next.product_id, &announce))
                    .transpose()
            })
            .await
    }

    async fn delete(
        &self,
        review: &ReviewRecord,
        announce: &Announce,
    ) -> Result<Option<Aggregate>, StoreError> {
        let (review, announce) = (review.clone(), announce.clone());
        self.0
            .write(move |tx| {
                let deleted = tx
                    .prepare_cached("DELETE FROM reviews WHERE id = ?1 AND version = ?2")?
                    .execute(params![review.id.to_string(), review.version])?;
                if deleted == 0 {
                    return Err(StoreError::Conflict);
                }
                tx.prepare_cached("DELETE FROM review_reports WHERE review_id = ?1")?
                    .execute([review.id.to_string()])?;
                tx.prepare_cached("DELETE FROM helpful_votes WHERE review_id = ?1")?
                    .execute([review.id.to_string()])?;
                counts(Some(&review), None)
                    .then(|| recount(tx, review.product_id, &announce))
                    .transpose()
            })
            .await
    }

    async fn product_reviews(
        &self,
        product_id: Uuid,
        viewer: Option<Uuid>,
        ranking: &Ranking,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<ReviewRecord>, StoreError> {
        let (sort, language) = (ranking.sort.code(), ranking.language.clone());
        self.0
            .read(move |db| {
                let (at, id) = before.unwrap_or((i64::MAX, Uuid::max()));
                // The rank of `Ranking::rank`, computed here so every order pages the same way.
                let mut statement = db.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM (
                         SELECT *,
                             (CASE WHEN lower(substr(language, 1, instr(language || '-', '-') - 1)) = ?9
                                   THEN ?10 ELSE 0 END)
                             + (CASE ?6 WHEN 1 THEN rating WHEN 2 THEN 6 - rating
                                        WHEN 3 THEN MIN(helpful_count, ?11) ELSE 0 END) * ?7
                             + created_at AS rank
                         FROM reviews WHERE product_id = ?1 AND (status = ?2 OR user_id = ?3))
                     WHERE (rank, id) < (?4, ?5)
                     ORDER BY rank DESC, id DESC LIMIT ?8"
                ))?;
                let rows = statement.query_map(
                    params![
                        product_id.to_string(),
                        Status::Published.as_str(),
                        viewer.map(|v| v.to_string()),
                        at,
                        id.to_string(),
                        sort,
                        RANK_WEIGHT,
                        limit as i64,
                        language,
                        LANGUAGE_WEIGHT,
                        MAX_RANKED_VOTES
                    ],
                    review,
                )?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
    }

    async fn vote(&self, id: Uuid, user_id: Uuid) -> Result<Option<i32>, StoreError> {
        self.0
            .write(move |tx| {
                let exists: bool = tx
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM reviews WHERE id = ?1)")?
                    .query_row([id.to_string()], |row| row.get(0))?;
                if !exists {
                    return Err(StoreError::NotFound);
                }
                let inserted = tx
                    .prepare_cached(
                        "INSERT INTO helpful_votes (review_id, user_id) VALUES (?1, ?2)
                         ON CONFLICT (review_id, user_id) DO NOTHING",
                    )?
                    .execute(params![id.to_string(), user_id.to_string()])?;
                if inserted == 0 {
                    return Ok(None);
                }
                let count = tx
                    .prepare_cached(
                        "UPDATE reviews SET helpful_count = helpful_count + 1 WHERE id = ?1
                         RETURNING helpful_count",
                    )?
                    .query_row([id.to_string()], |row| row.get(0))?;
                Ok(Some(count))
            })
            .await
    }

    async fn queue(
        &self,
        queue: Queue,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<ReviewRecord>, StoreError> {
        self.0
            .read(move |db| {
                let rows = match queue {
                    Queue::Pending => {
                        let (at, id) = after.unwrap_or((i64::MIN, Uuid::nil()));
                        let mut statement = db.prepare_cached(&format!(
                            "SELECT {COLUMNS} FROM reviews WHERE status = ?1 AND (created_at, id) > (?2, ?3)
                             ORDER BY created_at, id LIMIT ?4"
                        ))?;
                        statement
                            .query_map(
                                params![Status::Pending.as_str(), at, id.to_string(), limit as i64],
                                review,
                            )?
                            .collect::<rusqlite::Result<Vec<_>>>()?
                    }
                    Queue::Reported => {
                        let (at, id) = after.unwrap_or((i64::MAX, Uuid::max()));
                        let mut statement = db.prepare_cached(&format!(
                            "SELECT {COLUMNS} FROM reviews WHERE reported_at IS NOT NULL AND (reported_at, id) < (?1, ?2)
                             ORDER BY reported_at DESC, id DESC LIMIT ?3"
                        ))?;
                        statement
                            .query_map(params![at, id.to_string(), limit as i64], review)?
                            .collect::<rusqlite::Result<Vec<_>>>()?
                    }
                };
                Ok(rows)
            })
            .await
    }

    async fn report(
        &self,
        id: Uuid,
        user_id: Uuid,
        reason: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let reason = reason.to_owned();
        self.0
            .write(move |tx| {
                let exists: bool = tx
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM reviews WHERE id = ?1)")?
                    .query_row([id.to_string()], |row| row.get(0))?;
                if !exists {
                    return Err(StoreError::NotFound);
                }
                let inserted = tx
                    .prepare_cached(
                        "INSERT INTO review_reports (review_id, user_id, reason, reported_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (review_id, user_id) DO NOTHING",
                    )?
                    .execute(params![id.to_string(), user_id.to_string(), reason, at_ms])?;
                if inserted == 0 {
                    return Ok(false);
                }
                tx.prepare_cached(
                    "UPDATE reviews SET report_count = report_count + 1, reported_at = COALESCE(reported_at, ?1)
                     WHERE id = ?2",
                )?
                .execute(params![at_ms, id.to_string()])?;
                Ok(true)
            })
            .await
    }

    async fn aggregate(&self, product_id: Uuid) -> Result<Aggregate, StoreError> {
        self.0
            .read(move |db| stored_aggregate(db, product_id))
            .await
    }

    async fn recount(
        &self,
        product_id: Uuid,
        announce: &Announce,
    ) -> Result<Aggregate, StoreError> {
        let announce = announce.clone();
        self.0
            .write(move |tx| recount(tx, product_id, &announce))
            .await
    }
}
