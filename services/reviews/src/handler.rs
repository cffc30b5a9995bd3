//! The reviews domain: [`ReviewHandler`] and what it checks, changes, writes and announces for
//! reviews, free of transport (`grpc` is its gRPC face, `purchases` feeds it order events).
//! Requests arrive validated and access-checked; the handler adds the purchase check,
//! ownership, moderation and visibility.

use std::sync::Arc;

use shopmesh_events::Event;
use shopmesh_kit::access::Caller;
use shopmesh_kit::clock::{now_ms, timestamp};
use shopmesh_kit::{Error, Result, paging};
use shopmesh_proto::shopmesh::common::v1::RatingSummary;
use shopmesh_proto::shopmesh::events::v1::{
    ReviewEvent, ReviewRatingChanged, ReviewRejected, review_event,
};
use shopmesh_proto::shopmesh::reviews::v1::{
    CreateReviewRequest, ListProductReviewsRequest, ListProductReviewsResponse,
    ListReviewsForModerationRequest, ListReviewsForModerationResponse, ModerateReviewRequest,
    ModerationQueue, RatingHistogram, RecountRatingResponse, Review, ReviewSort, ReviewStatus,
    UpdateReviewRequest, VoteHelpfulResponse,
};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::store::{
    Aggregate, Announce, PlacedOrder, Processed, Queue, Ranking, ReviewRecord, ReviewStore, Sort,
    Status, StoreError, primary_language,
};

/// Lets a caller moderate: approve, reject, delete others' reviews, see moderation details.
pub const MODERATE: &str = "reviews.reviews.moderate";
const EVENT_KIND: &str = "shopmesh.events.v1.ReviewEvent";
const DEFAULT_PAGE: usize = 20;
/// Attempts at a change that keeps meeting concurrent changes.
const CONFLICT_RETRIES: usize = 8;

pub struct ReviewHandler {
    store: Arc<dyn ReviewStore>,
    relay: Arc<Notify>,
    /// Publish at once instead of waiting for approval.
    post_moderation: bool,
    default_language: String,
}

impl ReviewHandler {
    pub fn new(
        store: Arc<dyn ReviewStore>,
        relay: Arc<Notify>,
        post_moderation: bool,
        default_language: String,
    ) -> Self {
        Self {
            store,
            relay,
            post_moderation,
            default_language,
        }
    }

    pub fn store(&self) -> &Arc<dyn ReviewStore> {
        &self.store
    }

    /// What a new or edited review becomes.
    fn submitted(&self) -> Status {
        if self.post_moderation {
            Status::Published
        } else {
            Status::Pending
        }
    }

    async fn load(&self, id: &str) -> Result<ReviewRecord> {
        self.store
            .review(Error::parse_id("id", id)?)
            .await?
            .ok_or_else(not_found)
    }

    /// Review `id` if `caller` may see it: published, their own, or any to a moderator.
    async fn visible(&self, caller: &Caller, id: &str) -> Result<ReviewRecord> {
        let review = self.load(id).await?;
        if review.status == Status::Published
            || review.user_id.to_string() == caller.user_id
            || caller.can(MODERATE)
        {
            Ok(review)
        } else {
            Err(not_found())
        }
    }

    /// Reviews a product for `caller`, who must have bought it. `accepted` are the caller's
    /// languages, best first, for a review that names none.
    pub async fn create(
        &self,
        caller: &Caller,
        request: &CreateReviewRequest,
        accepted: &[String],
    ) -> Result<Review> {
        let user_id = Error::parse_id("user_id", &caller.user_id)?;
        let product_id = Error::parse_id("product_id", &request.product_id)?;
        if !self.store.purchased(user_id, product_id).await? {
            return Err(Error::permission_denied(
                "NOT_A_VERIFIED_PURCHASER",
                "only customers with a paid order containing this product can review it",
            ));
        }
        let now = now_ms();
        let review = ReviewRecord {
            id: Uuid::now_v7(),
            product_id,
            user_id,
            status: self.submitted(),
            rating: request.rating,
            title: request.title.clone(),
            body: request.body.clone(),
            language: self.language(&request.language, accepted),
            moderation_reason: String::new(),
            report_count: 0,
            reported_at_ms: None,
            helpful_count: 0,
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
        };
        match self.store.create(&review, &announce()).await {
            Ok(counted) => self.changed(counted),
            Err(StoreError::Conflict) => {
                return Err(Error::already_exists(
                    "REVIEW_EXISTS",
                    "you have reviewed this product already; edit that review instead",
                ));
            }
            Err(other) => return Err(other.into()),
        }
        metrics::counter!("shopmesh_reviews_created_total", "status" => review.status.as_str())
            .increment(1);
        Ok(view(&review, true))
    }

    /// A page of a product's reviews, with its rating: the published ones, and the viewer's own;
    /// those in the first of the viewer's languages `accepted` first.
    pub async fn list(
        &self,
        viewer: Option<&Caller>,
        request: &ListProductReviewsRequest,
        accepted: &[String],
    ) -> Result<ListProductReviewsResponse> {
        let product_id = Error::parse_id("product_id", &request.product_id)?;
        let viewer_id = viewer.and_then(|c| Uuid::parse_str(&c.user_id).ok());
        let sort = match ReviewSort::try_from(request.sort) {
            Ok(ReviewSort::Highest) => Sort::Highest,
            Ok(ReviewSort::Lowest) => Sort::Lowest,
            Ok(ReviewSort::MostHelpful) => Sort::MostHelpful,
            _ => Sort::Newest,
        };
        let before = page_token(&request.page_token)?;
        let limit = page_size(request.page_size);
        let ranking = Ranking {
            sort,
            language: accepted.first().map(|tag| primary_language(tag)),
        };
        let mut reviews = self
            .store
            .product_reviews(product_id, viewer_id, &ranking, before, limit + 1)
            .await?;
        let next_page_token = next_token(&mut reviews, limit, |r| (ranking.rank(r), r.id));
        let aggregate = self.store.aggregate(product_id).await?;
        let moderator = viewer.is_some_and(|c| c.can(MODERATE));
        Ok(ListProductReviewsResponse {
            reviews: reviews
                .iter()
                .map(|r| view(r, moderator || Some(r.user_id) == viewer_id))
                .collect(),
            rating: Some(summary(&aggregate)),
            next_page_token,
            histogram: Some(RatingHistogram {
                stars: aggregate.stars.to_vec(),
            }),
        })
    }

    /// Changes `caller`'s own review; it goes back to moderation unless post-moderated.
    pub async fn update(&self, caller: &Caller, request: &UpdateReviewRequest) -> Result<Review> {
        self.change(&request.id, |previous| {
            if previous.user_id.to_string() != caller.user_id {
                return Err(Error::permission_denied(
                    "NOT_REVIEW_AUTHOR",
                    "only its author can edit a review",
                ));
            }
            let mut next = previous.clone();
            next.rating = request.rating;
            next.title = request.title.clone();
            next.body = request.body.clone();
            if !request.language.is_empty() {
                next.language = request.language.to_ascii_lowercase();
            }
            next.status = self.submitted();
            next.moderation_reason.clear();
            Ok((next, Vec::new()))
        })
        .await
        .map(|review| view(&review, true))
    }

    /// Approves or rejects a review (the caller holds [`MODERATE`]); a rejection tells its
    /// author why. Either takes it out of the reported queue.
    pub async fn moderate(&self, request: &ModerateReviewRequest) -> Result<Review> {
        let status = match ReviewStatus::try_from(request.status) {
            Ok(ReviewStatus::Published) => Status::Published,
            Ok(ReviewStatus::Rejected) => Status::Rejected,
            _ => {
                return Err(Error::invalid_field(
                    "status",
                    "must be published or rejected",
                ));
            }
        };
        self.change(&request.id, |previous| {
            let mut next = previous.clone();
            next.status = status;
            next.moderation_reason = if status == Status::Rejected {
                request.reason.clone()
            } else {
                String::new()
            };
            next.reported_at_ms = None;
            let events = if status == Status::Rejected {
                vec![rejected(&next)]
            } else {
                Vec::new()
            };
            Ok((next, events))
        })
        .await
        .map(|review| view(&review, true))
    }

    /// Deletes review `id`: the caller's own, or any with [`MODERATE`].
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<()> {
        for _ in 0..CONFLICT_RETRIES {
            let review = self.visible(caller, id).await?;
            if review.user_id.to_string() != caller.user_id && !caller.can(MODERATE) {
                return Err(Error::permission_denied(
                    "NOT_REVIEW_AUTHOR",
                    "only its author or a moderator can delete a review",
                ));
            }
            match self.store.delete(&review, &announce()).await {
                Ok(counted) => {
                    self.changed(counted);
                    return Ok(());
                }
                Err(StoreError::Conflict) => continue,
                Err(other) => return Err(other.or_missing(not_found)),
            }
        }
        Err(concurrent())
    }

    /// Records `caller`'s report of a review they can see; once per user and review.
    pub async fn report(&self, caller: &Caller, id: &str, reason: &str) -> Result<()> {
        let review = self.visible(caller, id).await?;
        let user_id = Error::parse_id("user_id", &caller.user_id)?;
        let reported = self
            .store
            .report(review.id, user_id, reason, now_ms())
            .await
            .map_err(|e| e.or_missing(not_found))?;
        if !reported {
            return Err(Error::already_exists(
                "REVIEW_ALREADY_REPORTED",
                "you have reported this review already",
            ));
        }
        Ok(())
    }

    /// Records `caller`'s helpful vote for a review they can see, not their own; once.
    pub async fn vote(&self, caller: &Caller, id: &str) -> Result<VoteHelpfulResponse> {
        let review = self.visible(caller, id).await?;
        if review.user_id.to_string() == caller.user_id {
            return Err(Error::failed_precondition(
                "OWN_REVIEW",
                "you cannot vote for your own review",
            ));
        }
        let user_id = Error::parse_id("user_id", &caller.user_id)?;
        match self
            .store
            .vote(review.id, user_id)
            .await
            .map_err(|e| e.or_missing(not_found))?
        {
            Some(helpful_count) => Ok(VoteHelpfulResponse { helpful_count }),
            None => Err(Error::already_exists(
                "ALREADY_VOTED",
                "you have voted for this review already",
            )),
        }
    }

    /// A page of a moderation queue: pending reviews oldest first, or reported ones.
    pub async fn moderation_queue(
        &self,
        request: &ListReviewsForModerationRequest,
    ) -> Result<ListReviewsForModerationResponse> {
        let queue = match ModerationQueue::try_from(request.queue) {
            Ok(ModerationQueue::Reported) => Queue::Reported,
            _ => Queue::Pending,
        };
        let after = page_token(&request.page_token)?;
        let limit = page_size(request.page_size);
        let mut reviews = self.store.queue(queue, after, limit + 1).await?;
        let next_page_token = next_token(&mut reviews, limit, |r| match queue {
            Queue::Pending => (r.created_at_ms, r.id),
            Queue::Reported => (r.reported_at_ms.unwrap_or_default(), r.id),
        });
        Ok(ListReviewsForModerationResponse {
            reviews: reviews.iter().map(|r| view(r, true)).collect(),
            next_page_token,
        })
    }

    /// Recounts a product's rating and sends it to catalog again (the caller holds
    /// [`MODERATE`]).
    pub async fn recount(&self, product_id: &str) -> Result<RecountRatingResponse> {
        let product_id = Error::parse_id("product_id", product_id)?;
        let aggregate = self.store.recount(product_id, &announce()).await?;
        self.changed(Some(aggregate));
        Ok(RecountRatingResponse {
            rating: Some(summary(&aggregate)),
            histogram: Some(RatingHistogram {
                stars: aggregate.stars.to_vec(),
            }),
            version: aggregate.version,
        })
    }

    /// Remembers an order's products (`OrderCreated`), once per event.
    pub async fn order_placed(&self, order: &PlacedOrder, processed: Processed<'_>) -> Result<()> {
        self.store.order_placed(order, processed).await?;
        Ok(())
    }

    /// Records a paid order's products as bought (`OrderPaid`, and later steps that imply
    /// payment), once per event.
    pub async fn order_paid(&self, order_id: Uuid, processed: Processed<'_>) -> Result<()> {
        match self.store.order_paid(order_id, processed).await {
            Ok(_) => Ok(()),
            // Placed before this service followed orders: there is nothing to learn from it.
            Err(StoreError::NotFound) => {
                tracing::warn!(%order_id, "paid order was never seen placed; no purchase recorded");
                Ok(())
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Applies `edit` to review `id` and stores the result with its events, retrying over
    /// concurrent changes.
    async fn change(
        &self,
        id: &str,
        edit: impl Fn(&ReviewRecord) -> Result<(ReviewRecord, Vec<Event>)>,
    ) -> Result<ReviewRecord> {
        for _ in 0..CONFLICT_RETRIES {
            let previous = self.load(id).await?;
            let (mut next, events) = edit(&previous)?;
            next.version = previous.version + 1;
            next.updated_at_ms = now_ms().max(previous.updated_at_ms);
            match self
                .store
                .update(&previous, &next, &events, &announce())
                .await
            {
                Ok(counted) => {
                    if !events.is_empty() {
                        self.relay.notify_one();
                    }
                    self.changed(counted);
                    // The report count is the store's; show it as stored.
                    return Ok(next);
                }
                Err(StoreError::Conflict) => continue,
                Err(other) => return Err(other.or_missing(not_found)),
            }
        }
        Err(concurrent())
    }

    /// After a write: wakes the relay when the aggregate changed, and counts it.
    fn changed(&self, counted: Option<Aggregate>) {
        if counted.is_some() {
            self.relay.notify_one();
            metrics::counter!("shopmesh_reviews_ratings_changed_total").increment(1);
        }
    }

    /// The review's language: the one sent, else the caller's first, else the default.
    fn language(&self, sent: &str, accepted: &[String]) -> String {
        let chosen = if sent.is_empty() {
            accepted
                .first()
                .map(String::as_str)
                .unwrap_or(&self.default_language)
        } else {
            sent
        };
        chosen.to_ascii_lowercase()
    }
}

/// The event announcing a product's new aggregate.
pub fn announce() -> Announce {
    Arc::new(|aggregate: &Aggregate| {
        review_event(
            aggregate.product_id,
            review_event::Payload::RatingChanged(ReviewRatingChanged {
                rating: Some(summary(aggregate)),
                version: aggregate.version,
                stars: aggregate.stars.to_vec(),
            }),
        )
    })
}

fn rejected(review: &ReviewRecord) -> Event {
    review_event(
        review.product_id,
        review_event::Payload::Rejected(ReviewRejected {
            review_id: review.id.to_string(),
            user_id: review.user_id.to_string(),
            reason: review.moderation_reason.clone(),
            language: review.language.clone(),
        }),
    )
}

fn review_event(product_id: Uuid, payload: review_event::Payload) -> Event {
    Event::enveloped(product_id.to_string(), EVENT_KIND, "reviews", |meta| {
        ReviewEvent {
            meta: Some(meta),
            product_id: product_id.to_string(),
            payload: Some(payload),
        }
    })
}

pub fn summary(aggregate: &Aggregate) -> RatingSummary {
    RatingSummary {
        average: aggregate.average(),
        count: aggregate.count(),
    }
}

/// The API view of a review; `privileged` (its author, or a moderator) also sees moderation
/// details. Text goes out exactly as stored: JSON escapes it, nothing renders it.
fn view(review: &ReviewRecord, privileged: bool) -> Review {
    Review {
        id: review.id.to_string(),
        product_id: review.product_id.to_string(),
        user_id: review.user_id.to_string(),
        rating: review.rating,
        title: review.title.clone(),
        body: review.body.clone(),
        status: match review.status {
            Status::Pending => ReviewStatus::Pending,
            Status::Published => ReviewStatus::Published,
            Status::Rejected => ReviewStatus::Rejected,
        } as i32,
        moderation_reason: if privileged {
            review.moderation_reason.clone()
        } else {
            String::new()
        },
        created_at: Some(timestamp(review.created_at_ms)),
        updated_at: Some(timestamp(review.updated_at_ms)),
        language: review.language.clone(),
        report_count: if privileged { review.report_count } else { 0 },
        helpful_count: review.helpful_count,
    }
}

fn page_token(token: &str) -> Result<Option<paging::Cursor>> {
    if token.is_empty() {
        Ok(None)
    } else {
        paging::decode(token).map(Some)
    }
}

fn page_size(requested: i32) -> usize {
    match requested {
        n if n <= 0 => DEFAULT_PAGE,
        n => (n as usize).min(100),
    }
}

/// Trims a page read with one extra record to `limit`, and the token of the next page.
fn next_token(
    records: &mut Vec<ReviewRecord>,
    limit: usize,
    cursor: impl Fn(&ReviewRecord) -> paging::Cursor,
) -> String {
    let more = records.len() > limit;
    records.truncate(limit);
    match records.last() {
        Some(last) if more => paging::encode(cursor(last)),
        _ => String::new(),
    }
}

fn not_found() -> Error {
    Error::not_found("REVIEW_NOT_FOUND", "no such review")
}

fn concurrent() -> Error {
    Error::aborted("CONCURRENT_UPDATE", "the review keeps changing; retry")
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use shopmesh_kit::ErrorKind;
    use shopmesh_proto::shopmesh::events::v1::{OrderCreated, OrderEvent, OrderPaid, order_event};
    use shopmesh_proto::shopmesh::orders::v1::OrderItem;
    use shopmesh_proto::shopmesh::reviews::v1::DeleteReviewRequest;
    use shopmesh_testkit::storage::{self as testing, TempSqlite};

    use super::*;
    use crate::purchases;
    use crate::store::SQLITE;
    use crate::store::sqlite::SqliteReviews;

    async fn handler(post_moderation: bool) -> (ReviewHandler, TempSqlite) {
        let temp = testing::sqlite(SQLITE).await;
        let handler = ReviewHandler::new(
            Arc::new(SqliteReviews(temp.db.clone())),
            Arc::new(Notify::new()),
            post_moderation,
            "en".into(),
        );
        (handler, temp)
    }

    fn caller(permissions: &[&str]) -> Caller {
        Caller {
            user_id: Uuid::now_v7().to_string(),
            roles: vec!["customer".into()],
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            token_id: "token".into(),
        }
    }

    fn order_event(order_id: Uuid, user: &Caller, payload: order_event::Payload) -> Event {
        Event::new(
            order_id.to_string(),
            "shopmesh.events.v1.OrderEvent",
            OrderEvent {
                meta: None,
                order_id: order_id.to_string(),
                user_id: user.user_id.clone(),
                status: 0,
                payload: Some(payload),
            }
            .encode_to_vec(),
        )
    }

    /// Feeds the order events of `user` buying `product`, each twice (a redelivery).
    async fn buy(handler: &ReviewHandler, user: &Caller, product: Uuid) {
        let order_id = Uuid::now_v7();
        let created = order_event(
            order_id,
            user,
            order_event::Payload::Created(OrderCreated {
                items: vec![OrderItem {
                    product_id: product.to_string(),
                    quantity: 1,
                    ..OrderItem::default()
                }],
                ..OrderCreated::default()
            }),
        );
        let paid = order_event(
            order_id,
            user,
            order_event::Payload::Paid(OrderPaid::default()),
        );
        for event in [&created, &created, &paid, &paid] {
            purchases::handle(handler, event).await.unwrap();
        }
    }

    fn request(product: Uuid, rating: i32) -> CreateReviewRequest {
        CreateReviewRequest {
            product_id: product.to_string(),
            rating,
            title: "Good".into(),
            body: "<i>really</i> good".into(),
            language: String::new(),
        }
    }

    fn listing(product: Uuid) -> ListProductReviewsRequest {
        ListProductReviewsRequest {
            product_id: product.to_string(),
            ..ListProductReviewsRequest::default()
        }
    }

    #[tokio::test]
    async fn only_verified_purchasers_review_and_only_once() {
        let (handler, _db) = handler(false).await;
        let (ada, lamp) = (caller(&[]), Uuid::now_v7());
        let error = handler
            .create(&ada, &request(lamp, 4), &[])
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::PermissionDenied);
        assert_eq!(error.reason(), "NOT_A_VERIFIED_PURCHASER");

        // A placed order that is not paid does not count.
        let unpaid = Uuid::now_v7();
        let created = order_event(
            unpaid,
            &ada,
            order_event::Payload::Created(OrderCreated {
                items: vec![OrderItem {
                    product_id: lamp.to_string(),
                    quantity: 1,
                    ..OrderItem::default()
                }],
                ..OrderCreated::default()
            }),
        );
        purchases::handle(&handler, &created).await.unwrap();
        let error = handler
            .create(&ada, &request(lamp, 4), &[])
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "NOT_A_VERIFIED_PURCHASER");

        buy(&handler, &ada, lamp).await;
        let accepted = ["de".to_owned()];
        let review = handler
            .create(&ada, &request(lamp, 4), &accepted)
            .await
            .unwrap();
        assert_eq!(review.status, ReviewStatus::Pending as i32);
        assert_eq!(review.language, "de");
        assert_eq!(review.body, "<i>really</i> good");
        let error = handler
            .create(&ada, &request(lamp, 5), &[])
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::AlreadyExists);
        assert_eq!(error.reason(), "REVIEW_EXISTS");
    }

    #[tokio::test]
    async fn a_review_waits_for_approval_and_then_counts() {
        let (handler, _db) = handler(false).await;
        let (ada, bob, admin, lamp) = (
            caller(&[]),
            caller(&[]),
            caller(&[MODERATE]),
            Uuid::now_v7(),
        );
        buy(&handler, &ada, lamp).await;
        let review = handler.create(&ada, &request(lamp, 4), &[]).await.unwrap();

        let own = handler.list(Some(&ada), &listing(lamp), &[]).await.unwrap();
        assert_eq!(own.reviews.len(), 1, "its author sees it at once");
        let others = handler.list(Some(&bob), &listing(lamp), &[]).await.unwrap();
        assert!(others.reviews.is_empty(), "others see it after approval");
        assert_eq!(others.rating.unwrap().count, 0);
        let queue = handler
            .moderation_queue(&ListReviewsForModerationRequest::default())
            .await
            .unwrap();
        assert_eq!(queue.reviews[0].id, review.id);

        handler
            .moderate(&ModerateReviewRequest {
                id: review.id.clone(),
                status: ReviewStatus::Published as i32,
                reason: String::new(),
            })
            .await
            .unwrap();
        let anyone = handler.list(None, &listing(lamp), &[]).await.unwrap();
        assert_eq!(anyone.reviews.len(), 1);
        assert_eq!(
            anyone.rating.unwrap(),
            RatingSummary {
                average: 4.0,
                count: 1
            }
        );
        assert_eq!(anyone.histogram.unwrap().stars, [0, 0, 0, 1, 0]);

        // Rejection hides it again and keeps the reason for its author only.
        handler
            .moderate(&ModerateReviewRequest {
                id: review.id.clone(),
                status: ReviewStatus::Rejected as i32,
                reason: "mentions a competitor".into(),
            })
            .await
            .unwrap();
        let anyone = handler.list(None, &listing(lamp), &[]).await.unwrap();
        assert!(anyone.reviews.is_empty());
        assert_eq!(anyone.rating.unwrap().count, 0);
        let own = handler.list(Some(&ada), &listing(lamp), &[]).await.unwrap();
        assert_eq!(own.reviews[0].moderation_reason, "mentions a competitor");
        let seen_by_admin = handler
            .list(Some(&admin), &listing(lamp), &[])
            .await
            .unwrap();
        assert!(
            seen_by_admin.reviews.is_empty(),
            "listings show published reviews"
        );
    }

    /// The review events waiting in the outbox, decoded.
    async fn outbox(db: &TempSqlite) -> Vec<ReviewEvent> {
        use shopmesh_events::outbox::OutboxStore as _;
        shopmesh_events::outbox::sqlite::SqliteOutbox(db.db.clone())
            .pending(100)
            .await
            .unwrap()
            .into_iter()
            .filter(|pending| pending.topic == crate::store::TOPIC)
            .map(|pending| ReviewEvent::decode(pending.event.payload.as_slice()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn moderation_announces_ratings_and_rejections_through_the_outbox() {
        let (handler, db) = handler(false).await;
        let (ada, lamp) = (caller(&[]), Uuid::now_v7());
        buy(&handler, &ada, lamp).await;
        let review = handler.create(&ada, &request(lamp, 3), &[]).await.unwrap();
        assert!(
            outbox(&db).await.is_empty(),
            "a pending review announces nothing"
        );
        let decide = |status: ReviewStatus, reason: &str| ModerateReviewRequest {
            id: review.id.clone(),
            status: status as i32,
            reason: reason.into(),
        };
        handler
            .moderate(&decide(ReviewStatus::Published, ""))
            .await
            .unwrap();
        handler
            .moderate(&decide(ReviewStatus::Rejected, "spam"))
            .await
            .unwrap();
        let events = outbox(&db).await;
        let payloads: Vec<_> = events.iter().map(|e| e.payload.clone().unwrap()).collect();
        match &payloads[..] {
            [
                review_event::Payload::RatingChanged(published),
                review_event::Payload::Rejected(rejected),
                review_event::Payload::RatingChanged(withdrawn),
            ] => {
                assert_eq!(published.version, 1);
                assert_eq!(
                    published.rating,
                    Some(RatingSummary {
                        average: 3.0,
                        count: 1
                    })
                );
                assert_eq!(rejected.reason, "spam");
                assert_eq!(rejected.user_id, ada.user_id);
                assert_eq!(withdrawn.version, 2);
                assert_eq!(withdrawn.rating.unwrap().count, 0);
            }
            other => panic!("unexpected events {other:?}"),
        }
        assert!(events.iter().all(|e| e.product_id == lamp.to_string()));
    }

    #[tokio::test]
    async fn post_moderation_publishes_at_once_and_authors_edit_and_delete_their_own() {
        let (handler, _db) = handler(true).await;
        let (ada, bob, lamp) = (caller(&[]), caller(&[]), Uuid::now_v7());
        buy(&handler, &ada, lamp).await;
        let review = handler.create(&ada, &request(lamp, 2), &[]).await.unwrap();
        assert_eq!(review.status, ReviewStatus::Published as i32);
        let edit = UpdateReviewRequest {
            id: review.id.clone(),
            rating: 5,
            title: "Better than I thought".into(),
            body: String::new(),
            language: String::new(),
        };
        let error = handler.update(&bob, &edit).await.unwrap_err();
        assert_eq!(error.reason(), "NOT_REVIEW_AUTHOR");
        let edited = handler.update(&ada, &edit).await.unwrap();
        assert_eq!((edited.rating, edited.language.as_str()), (5, "en"));
        let rating = handler
            .list(None, &listing(lamp), &[])
            .await
            .unwrap()
            .rating
            .unwrap();
        assert_eq!(
            rating,
            RatingSummary {
                average: 5.0,
                count: 1
            }
        );

        assert_eq!(
            handler.vote(&bob, &review.id).await.unwrap().helpful_count,
            1
        );
        let error = handler.vote(&bob, &review.id).await.unwrap_err();
        assert_eq!(error.reason(), "ALREADY_VOTED");
        let error = handler.vote(&ada, &review.id).await.unwrap_err();
        assert_eq!(error.reason(), "OWN_REVIEW");
        let helpful = ListProductReviewsRequest {
            sort: ReviewSort::MostHelpful as i32,
            ..listing(lamp)
        };
        let listed = handler.list(None, &helpful, &[]).await.unwrap();
        assert_eq!(listed.reviews[0].helpful_count, 1);
        let recounted = handler.recount(&lamp.to_string()).await.unwrap();
        assert_eq!(
            recounted.rating.unwrap(),
            RatingSummary {
                average: 5.0,
                count: 1
            }
        );
        assert_eq!(recounted.histogram.unwrap().stars, [0, 0, 0, 0, 1]);

        handler.report(&bob, &review.id, "spam").await.unwrap();
        let error = handler.report(&bob, &review.id, "spam").await.unwrap_err();
        assert_eq!(error.reason(), "REVIEW_ALREADY_REPORTED");
        let reported = handler
            .moderation_queue(&ListReviewsForModerationRequest {
                queue: ModerationQueue::Reported as i32,
                ..ListReviewsForModerationRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(reported.reviews[0].report_count, 1);

        let delete = DeleteReviewRequest {
            id: review.id.clone(),
        };
        let error = handler.delete(&bob, &delete.id).await.unwrap_err();
        assert_eq!(error.reason(), "NOT_REVIEW_AUTHOR");
        handler.delete(&ada, &delete.id).await.unwrap();
        let after = handler.list(None, &listing(lamp), &[]).await.unwrap();
        assert!(after.reviews.is_empty());
        assert_eq!(after.rating.unwrap().count, 0);
        let error = handler.delete(&ada, &delete.id).await.unwrap_err();
        assert_eq!(error.reason(), "REVIEW_NOT_FOUND");
    }
}
