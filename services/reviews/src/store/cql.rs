//! Reviews on CQL. A user's review of a product is claimed first in `reviews_by_user` with a
//! lightweight transaction (one review per user and product); the review, its listing entry and
//! its queue entry then go in one logged batch. Later changes are conditional on the review's
//! version (an LWT), so what follows them (listing and queue entries, events) is written right
//! after, as catalog does with its product events (decision 0022).
//!
//! A product's aggregate is a recount of its published reviews, written with
//! `IF version = ?` and recounted again when another writer came first, so concurrent changes
//! never leave an older count behind; its event goes to the outbox just after. A crash between
//! a review change and its recount leaves the aggregate one change behind until the product's
//! next change recounts it. Order events are claimed in the inbox before their effect, which is
//! itself an idempotent upsert.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use scylla::statement::prepared::PreparedStatement;
use shopmesh_events::Event;
use shopmesh_events::inbox::{Claim, CqlInbox};
use shopmesh_events::outbox::{CqlOutbox, OutboxRow};
use shopmesh_storage::StorageError;
use shopmesh_storage::cql::{Cql, lwt_applied};
use uuid::Uuid;

use super::{
    Aggregate, Announce, Cursor, PlacedOrder, Processed, Queue, Ranking, ReviewRecord, ReviewStore,
    Sort, Status, StoreError, TOPIC, counts, status_from,
};

const COLUMNS: &str = "id, product_id, user_id, status, rating, title, body, language, moderation_reason, report_count, reported_at, created_at, updated_at, version";
/// How long an order event claimed by a consumer that died stays claimed.
const INBOX_LEASE: Duration = Duration::from_secs(60);
/// Attempts at writing a recount while other writers keep coming first.
const RECOUNT_ATTEMPTS: usize = 16;
/// Queue partitions of `moderation_queue`.
const PENDING: &str = "pending";
const REPORTED: &str = "reported";

type ReviewRow = (
    Uuid,
    Uuid,
    Uuid,
    String,
    i32,
    String,
    String,
    String,
    String,
    i32,
    Option<i64>,
    i64,
    i64,
    i64,
);

pub struct CqlReviews {
    cql: Cql,
    outbox: Arc<CqlOutbox>,
    inbox: CqlInbox,
    insert_placed: PreparedStatement,
    select_placed: PreparedStatement,
    insert_purchase: PreparedStatement,
    select_purchase: PreparedStatement,
    claim_review: PreparedStatement,
    release_claim: PreparedStatement,
    insert_review: PreparedStatement,
    insert_by_product: PreparedStatement,
    delete_by_product: PreparedStatement,
    select_review: PreparedStatement,
    update_review: PreparedStatement,
    delete_review: PreparedStatement,
    product_page: PreparedStatement,
    product_index: PreparedStatement,
    enqueue: PreparedStatement,
    dequeue: PreparedStatement,
    queue_ascending: PreparedStatement,
    queue_descending: PreparedStatement,
    insert_report: PreparedStatement,
    delete_reports: PreparedStatement,
    select_reported: PreparedStatement,
    set_reported: PreparedStatement,
    select_rating: PreparedStatement,
    insert_rating: PreparedStatement,
    update_rating: PreparedStatement,
    insert_vote: PreparedStatement,
    delete_votes: PreparedStatement,
    select_helpful: PreparedStatement,
    first_helpful: PreparedStatement,
    count_helpful: PreparedStatement,
    delete_helpful: PreparedStatement,
}

impl CqlReviews {
    pub async fn new(cql: Cql) -> Result<Self, StorageError> {
        Ok(Self {
            outbox: Arc::new(CqlOutbox::new(&cql).await?),
            inbox: CqlInbox::new(&cql, INBOX_LEASE).await?,
            insert_placed: cql
                .prepare("INSERT INTO placed_orders (order_id, user_id, product_ids) VALUES (?, ?, ?)")
                .await?,
            select_placed: cql
                .prepare("SELECT user_id, product_ids FROM placed_orders WHERE order_id = ?")
                .await?,
            insert_purchase: cql
                .prepare("INSERT INTO purchases (user_id, product_id, order_id) VALUES (?, ?, ?)")
                .await?,
            select_purchase: cql
                .prepare("SELECT order_id FROM purchases WHERE user_id = ? AND product_id = ?")
                .await?,
            claim_review: cql
                .prepare(
                    "INSERT INTO reviews_by_user (user_id, product_id, review_id) VALUES (?, ?, ?) IF NOT EXISTS",
                )
                .await?,
            release_claim: cql
                .prepare(
                    "DELETE FROM reviews_by_user WHERE user_id = ? AND product_id = ? IF review_id = ?",
                )
                .await?,
            insert_review: cql
                .prepare(&format!(
                    "INSERT INTO reviews ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ))
                .await?,
            insert_by_product: cql
                .prepare("INSERT INTO reviews_by_product (product_id, created_at, id) VALUES (?, ?, ?)")
                .await?,
            delete_by_product: cql
                .prepare("DELETE FROM reviews_by_product WHERE product_id = ? AND created_at = ? AND id = ?")
                .await?,
            select_review: cql
                .prepare(&format!("SELECT {COLUMNS} FROM reviews WHERE id = ?"))
                .await?,
            update_review: cql
                .prepare(
                    "UPDATE reviews SET status = ?, rating = ?, title = ?, body = ?, language = ?, \
                     moderation_reason = ?, reported_at = ?, updated_at = ?, version = ? WHERE id = ? IF version = ?",
                )
                .await?,
            delete_review: cql
                .prepare("DELETE FROM reviews WHERE id = ? IF version = ?")
                .await?,
            product_page: cql
                .prepare(
                    "SELECT created_at, id FROM reviews_by_product \
                     WHERE product_id = ? AND (created_at, id) < (?, ?) LIMIT ?",
                )
                .await?,
            product_index: cql
                .prepare("SELECT id FROM reviews_by_product WHERE product_id = ?")
                .await?,
            enqueue: cql
                .prepare("INSERT INTO moderation_queue (queue, at, id) VALUES (?, ?, ?)")
                .await?,
            dequeue: cql
                .prepare("DELETE FROM moderation_queue WHERE queue = ? AND at = ? AND id = ?")
                .await?,
            queue_ascending: cql
                .prepare(
                    "SELECT at, id FROM moderation_queue WHERE queue = ? AND (at, id) > (?, ?) \
                     ORDER BY at ASC, id ASC LIMIT ?",
                )
                .await?,
            queue_descending: cql
                .prepare(
                    "SELECT at, id FROM moderation_queue WHERE queue = ? AND (at, id) < (?, ?) \
                     ORDER BY at DESC, id DESC LIMIT ?",
                )
                .await?,
            insert_report: cql
                .prepare(
                    "INSERT INTO review_reports (review_id, user_id, reason, reported_at) VALUES (?, ?, ?, ?) IF NOT EXISTS",
                )
                .await?,
            delete_reports: cql
                .prepare("DELETE FROM review_reports WHERE review_id = ?")
                .await?,
            select_reported: cql
                .prepare("SELECT report_count, reported_at FROM reviews WHERE id = ?")
                .await?,
            set_reported: cql
                .prepare(
                    "UPDATE reviews SET report_count = ?, reported_at = ? WHERE id = ? IF report_count = ?",
                )
                .await?,
            select_rating: cql
                .prepare("SELECT stars, version FROM ratings WHERE product_id = ?")
                .await?,
            insert_rating: cql
                .prepare("INSERT INTO ratings (product_id, stars, version) VALUES (?, ?, ?) IF NOT EXISTS")
                .await?,
            update_rating: cql
                .prepare("UPDATE ratings SET stars = ?, version = ? WHERE product_id = ? IF version = ?")
                .await?,
            insert_vote: cql
                .prepare("INSERT INTO helpful_votes (review_id, user_id) VALUES (?, ?) IF NOT EXISTS")
                .await?,
            delete_votes: cql
                .prepare("DELETE FROM helpful_votes WHERE review_id = ?")
                .await?,
            select_helpful: cql
                .prepare("SELECT votes FROM helpful_counts WHERE review_id = ?")
                .await?,
            first_helpful: cql
                .prepare("INSERT INTO helpful_counts (review_id, votes) VALUES (?, 1) IF NOT EXISTS")
                .await?,
            count_helpful: cql
                .prepare("UPDATE helpful_counts SET votes = ? WHERE review_id = ? IF votes = ?")
                .await?,
            delete_helpful: cql
                .prepare("DELETE FROM helpful_counts WHERE review_id = ?")
                .await?,
            cql,
        })
    }

    /// The outbox this store writes, for the service's relay.
    pub fn outbox(&self) -> Arc<CqlOutbox> {
        self.outbox.clone()
    }

    async fn publish(&self, event: &Event) -> Result<(), StoreError> {
        let row = OutboxRow::new(TOPIC, event).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        self.cql.execute(self.outbox.insert(), row).await?;
        Ok(())
    }

    /// Runs `effect` once per consumed event: claimed in the inbox first, completed after, and
    /// released for a redelivery when it fails.
    async fn once<F>(&self, processed: Processed<'_>, effect: F) -> Result<bool, StoreError>
    where
        F: Future<Output = Result<(), StoreError>>,
    {
        match self
            .inbox
            .claim(processed.subscription, processed.event_id)
            .await?
        {
            Claim::Acquired => {}
            Claim::Done => return Ok(false),
            Claim::Busy => return Err(StoreError::Conflict),
        }
        match effect.await {
            Ok(()) => {
                self.inbox
                    .complete(processed.subscription, processed.event_id)
                    .await?;
                Ok(true)
            }
            Err(error) => {
                self.inbox
                    .release(processed.subscription, processed.event_id)
                    .await?;
                Err(error)
            }
        }
    }

    async fn stored_aggregate(&self, product_id: Uuid) -> Result<Aggregate, StoreError> {
        let found: Option<(Option<Vec<i32>>, i64)> = self
            .cql
            .first_row(&self.select_rating, (product_id,))
            .await?;
        let Some((stars, version)) = found else {
            return Ok(Aggregate {
                product_id,
                ..Aggregate::default()
            });
        };
        let stars: [i32; 5] = stars
            .unwrap_or_default()
            .try_into()
            .map_err(|_| StorageError::Corrupt(format!("rating histogram of {product_id}")))?;
        Ok(Aggregate {
            product_id,
            stars,
            version,
        })
    }

    /// Recounts the product's published reviews and writes the count over the version read,
    /// again while other writers come first; then announces it.
    async fn recount(
        &self,
        product_id: Uuid,
        announce: &Announce,
    ) -> Result<Aggregate, StoreError> {
        for _ in 0..RECOUNT_ATTEMPTS {
            let previous = self.stored_aggregate(product_id).await?;
            let ids: Vec<(Uuid,)> = self.cql.rows(&self.product_index, (product_id,)).await?;
            let mut ratings = Vec::with_capacity(ids.len());
            for (id,) in ids {
                if let Some(review) = self.review(id).await?
                    && review.status == Status::Published
                {
                    ratings.push((review.rating, 1));
                }
            }
            let aggregate = Aggregate::counted(product_id, ratings, previous.version + 1)?;
            let stars = aggregate.stars.to_vec();
            let written = if previous.version == 0 {
                self.cql
                    .execute(&self.insert_rating, (product_id, &stars, aggregate.version))
                    .await?
            } else {
                self.cql
                    .execute(
                        &self.update_rating,
                        (&stars, aggregate.version, product_id, previous.version),
                    )
                    .await?
            };
            if lwt_applied(written)? {
                self.publish(&announce(&aggregate)).await?;
                return Ok(aggregate);
            }
        }
        Err(StoreError::Conflict)
    }

    async fn reviews(&self, entries: &[(i64, Uuid)]) -> Result<Vec<ReviewRecord>, StoreError> {
        let mut found = Vec::with_capacity(entries.len());
        for (_, id) in entries {
            if let Some(review) = self.review(*id).await? {
                found.push(review);
            }
        }
        Ok(found)
    }
}

fn record(row: ReviewRow) -> Result<ReviewRecord, StoreError> {
    let (
        id,
        product_id,
        user_id,
        status,
        rating,
        title,
        body,
        language,
        moderation_reason,
        report_count,
        reported_at_ms,
        created_at_ms,
        updated_at_ms,
        version,
    ) = row;
    Ok(ReviewRecord {
        id,
        product_id,
        user_id,
        status: status_from(&status)?,
        rating,
        title,
        body,
        language,
        moderation_reason,
        report_count,
        reported_at_ms,
        created_at_ms,
        updated_at_ms,
        version,
        helpful_count: 0,
    })
}

#[async_trait]
impl ReviewStore for CqlReviews {
    async fn order_placed(
        &self,
        order: &PlacedOrder,
        processed: Processed<'_>,
    ) -> Result<bool, StoreError> {
        self.once(processed, async {
            self.cql
                .execute(
                    &self.insert_placed,
                    (order.order_id, order.user_id, &order.product_ids),
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn order_paid(
        &self,
        order_id: Uuid,
        processed: Processed<'_>,
    ) -> Result<bool, StoreError> {
        self.once(processed, async {
            let (user_id, product_ids): (Uuid, Option<Vec<Uuid>>) = self
                .cql
                .first_row(&self.select_placed, (order_id,))
                .await?
                .ok_or(StoreError::NotFound)?;
            for product_id in product_ids.unwrap_or_default() {
                self.cql
                    .execute(&self.insert_purchase, (user_id, product_id, order_id))
                    .await?;
            }
            Ok(())
        })
        .await
    }

    async fn purchased(&self, user_id: Uuid, product_id: Uuid) -> Result<bool, StoreError> {
        let found: Option<(Uuid,)> = self
            .cql
            .first_row(&self.select_purchase, (user_id, product_id))
            .await?;
        Ok(found.is_some())
    }

    async fn create(
        &self,
        review: &ReviewRecord,
        announce: &Announce,
    ) -> Result<Option<Aggregate>, StoreError> {
        let claimed = self
            .cql
            .execute(
                &self.claim_review,
                (review.user_id, review.product_id, review.id),
            )
            .await?;
        if !lwt_applied(claimed)? {
            return Err(StoreError::Conflict);
        }
        let values = (
            review.id,
            review.product_id,
            review.user_id,
            review.status.as_str(),
            review.rating,
            &review.title,
            &review.body,
            &review.language,
            &review.moderation_reason,
            review.report_count,
            review.reported_at_ms,
            review.created_at_ms,
            review.updated_at_ms,
            review.version,
        );
        let listed = (review.product_id, review.created_at_ms, review.id);
        let written = if review.status == Status::Pending {
            self.cql
                .logged_batch(
                    &[&self.insert_review, &self.insert_by_product, &self.enqueue],
                    (values, listed, (PENDING, review.created_at_ms, review.id)),
                )
                .await
        } else {
            self.cql
                .logged_batch(
                    &[&self.insert_review, &self.insert_by_product],
                    (values, listed),
                )
                .await
        };
        if let Err(error) = written {
            // Give the claim back, so the author can try again.
            self.cql
                .execute(
                    &self.release_claim,
                    (review.user_id, review.product_id, review.id),
                )
                .await?;
            return Err(error.into());
        }
        if counts(None, Some(review)) {
            return self.recount(review.product_id, announce).await.map(Some);
        }
        Ok(None)
    }

    async fn review(&self, id: Uuid) -> Result<Option<ReviewRecord>, StoreError> {
        let Some(mut review) = self
            .cql
            .first_row::<ReviewRow>(&self.select_review, (id,))
            .await?
            .map(record)
            .transpose()?
        else {
            return Ok(None);
        };
        let votes: Option<(Option<i32>,)> = self.cql.first_row(&self.select_helpful, (id,)).await?;
        review.helpful_count = votes.and_then(|(votes,)| votes).unwrap_or(0);
        Ok(Some(review))
    }

    async fn update(
        &self,
        previous: &ReviewRecord,
        next: &ReviewRecord,
        events: &[Event],
        announce: &Announce,
    ) -> Result<Option<Aggregate>, StoreError> {
        let written = self
            .cql
            .execute(
                &self.update_review,
                (
                    next.status.as_str(),
                    next.rating,
                    &next.title,
                    &next.body,
                    &next.language,
                    &next.moderation_reason,
                    next.reported_at_ms,
                    next.updated_at_ms,
                    next.version,
                    next.id,
                    previous.version,
                ),
            )
            .await?;
        if !lwt_applied(written)? {
            return Err(StoreError::Conflict);
        }
        let entry = |queue: &'static str, at: i64| (queue, at, next.id);
        match (previous.status, next.status) {
            (Status::Pending, Status::Pending) => {}
            (Status::Pending, _) => {
                self.cql
                    .execute(&self.dequeue, entry(PENDING, previous.created_at_ms))
                    .await?;
            }
            (_, Status::Pending) => {
                self.cql
                    .execute(&self.enqueue, entry(PENDING, next.created_at_ms))
                    .await?;
            }
            _ => {}
        }
        if let Some(at) = previous.reported_at_ms
            && next.reported_at_ms.is_none()
        {
            self.cql.execute(&self.dequeue, entry(REPORTED, at)).await?;
        }
        for event in events {
            self.publish(event).await?;
        }
        if counts(Some(previous), Some(next)) {
            return self.recount(next.product_id, announce).await.map(Some);
        }
        Ok(None)
    }

    async fn delete(
        &self,
        review: &ReviewRecord,
        announce: &Announce,
    ) -> Result<Option<Aggregate>, StoreError> {
        let deleted = self
            .cql
            .execute(&self.delete_review, (review.id, review.version))
            .await?;
        if !lwt_applied(deleted)? {
            return Err(StoreError::Conflict);
        }
        self.cql
            .execute(
                &self.delete_by_product,
                (review.product_id, review.created_at_ms, review.id),
            )
            .await?;
        if review.status == Status::Pending {
            self.cql
                .execute(&self.dequeue, (PENDING, review.created_at_ms, review.id))
                .await?;
        }
        if let Some(at) = review.reported_at_ms {
            self.cql
                .execute(&self.dequeue, (REPORTED, at, review.id))
                .await?;
        }
        self.cql.execute(&self.delete_reports, (review.id,)).await?;
        self.cql.execute(&self.delete_votes, (review.id,)).await?;
        self.cql.execute(&self.delete_helpful, (review.id,)).await?;
        self.cql
            .execute(
                &self.release_claim,
                (review.user_id, review.product_id, review.id),
            )
            .await?;
        if counts(Some(review), None) {
            return self.recount(review.product_id, announce).await.map(Some);
        }
        Ok(None)
    }

    async fn product_reviews(
        &self,
        product_id: Uuid,
        viewer: Option<Uuid>,
        ranking: &Ranking,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<ReviewRecord>, StoreError> {
        let visible = |review: &ReviewRecord| {
            review.status == Status::Published || Some(review.user_id) == viewer
        };
        if ranking.sort != Sort::Newest || ranking.language.is_some() {
            // Other orders rank the whole product partition: a product's reviews, not the shop's.
            let (at, id) = before.unwrap_or((i64::MAX, Uuid::max()));
            let entries: Vec<(i64, Uuid)> = self
                .cql
                .rows(
                    &self.product_page,
                    (product_id, i64::MAX, Uuid::max(), i32::MAX),
                )
                .await?;
            let mut ranked: Vec<(i64, Uuid, ReviewRecord)> = self
                .reviews(&entries)
                .await?
                .into_iter()
                .filter(|review| visible(review))
                .map(|review| (ranking.rank(&review), review.id, review))
                .filter(|(rank, review_id, _)| (*rank, *review_id) < (at, id))
                .collect();
            ranked.sort_by_key(|(rank, id, _)| std::cmp::Reverse((*rank, *id)));
            return Ok(ranked
                .into_iter()
                .take(limit)
                .map(|(_, _, review)| review)
                .collect());
        }
        let (mut at, mut id) = before.unwrap_or((i64::MAX, Uuid::max()));
        let mut found = Vec::with_capacity(limit);
        // Hidden reviews are skipped, so read on in pages until the page is full.
        loop {
            let page = (limit.max(1) * 2).min(200);
            let entries: Vec<(i64, Uuid)> = self
                .cql
                .rows(&self.product_page, (product_id, at, id, page as i32))
                .await?;
            for review in self.reviews(&entries).await? {
                if visible(&review) {
                    found.push(review);
                    if found.len() == limit {
                        return Ok(found);
                    }
                }
            }
            match entries.last() {
                Some(last) if entries.len() == page => (at, id) = *last,
                _ => return Ok(found),
            }
        }
    }

    async fn vote(&self, id: Uuid, user_id: Uuid) -> Result<Option<i32>, StoreError> {
        if self.review(id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        let inserted = self.cql.execute(&self.insert_vote, (id, user_id)).await?;
        if !lwt_applied(inserted)? {
            return Ok(None);
        }
        loop {
            let votes: Option<(Option<i32>,)> =
                self.cql.first_row(&self.select_helpful, (id,)).await?;
            let (written, count) = match votes.and_then(|(votes,)| votes) {
                None => (self.cql.execute(&self.first_helpful, (id,)).await?, 1),
                Some(votes) => (
                    self.cql
                        .execute(&self.count_helpful, (votes + 1, id, votes))
                        .await?,
                    votes + 1,
                ),
            };
            if lwt_applied(written)? {
                return Ok(Some(count));
            }
        }
    }

    async fn queue(
        &self,
        queue: Queue,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<ReviewRecord>, StoreError> {
        let wanted = i32::try_from(limit).unwrap_or(i32::MAX);
        let entries: Vec<(i64, Uuid)> = match queue {
            Queue::Pending => {
                let (at, id) = after.unwrap_or((i64::MIN, Uuid::nil()));
                self.cql
                    .rows(&self.queue_ascending, (PENDING, at, id, wanted))
                    .await?
            }
            Queue::Reported => {
                let (at, id) = after.unwrap_or((i64::MAX, Uuid::max()));
                self.cql
                    .rows(&self.queue_descending, (REPORTED, at, id, wanted))
                    .await?
            }
        };
        // An entry can briefly outlive its review's move out of the queue; skip those.
        Ok(self
            .reviews(&entries)
            .await?
            .into_iter()
            .filter(|review| match queue {
                Queue::Pending => review.status == Status::Pending,
                Queue::Reported => review.reported_at_ms.is_some(),
            })
            .collect())
    }

    async fn report(
        &self,
        id: Uuid,
        user_id: Uuid,
        reason: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        if self.review(id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        let inserted = self
            .cql
            .execute(&self.insert_report, (id, user_id, reason, at_ms))
            .await?;
        if !lwt_applied(inserted)? {
            return Ok(false);
        }
        loop {
            let (count, reported_at): (i32, Option<i64>) = self
                .cql
                .first_row(&self.select_reported, (id,))
                .await?
                .ok_or(StoreError::NotFound)?;
            let queued_at = reported_at.unwrap_or(at_ms);
            let counted = self
                .cql
                .execute(&self.set_reported, (count + 1, queued_at, id, count))
                .await?;
            if lwt_applied(counted)? {
                if reported_at.is_none() {
                    self.cql
                        .execute(&self.enqueue, (REPORTED, at_ms, id))
                        .await?;
                }
                return Ok(true);
            }
        }
    }

    async fn aggregate(&self, product_id: Uuid) -> Result<Aggregate, StoreError> {
        self.stored_aggregate(product_id).await
    }

    async fn recount(
        &self,
        product_id: Uuid,
        announce: &Announce,
    ) -> Result<Aggregate, StoreError> {
        CqlReviews::recount(self, product_id, announce).await
    }
}
