//! Where reviews live: one repository contract on SQLite and on CQL. It keeps the reviews, the
//! reports against them, each product's rating aggregate, and what the service learnt from order
//! events about who bought what.
//!
//! The store keeps two rules itself: one review per user and product (a unique constraint, or a
//! lightweight transaction on CQL), and a product's aggregate is a recount of its published
//! reviews, written with a new version and its event whenever a change touches a published
//! review, so it is counted once however often a change is retried.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shopmesh_events::Event;
use shopmesh_storage::{Migration, StorageError};
use uuid::Uuid;

use self::cql::CqlReviews;
use self::sqlite::SqliteReviews;

pub mod cql;
pub mod sqlite;

pub use shopmesh_kit::paging::Cursor;
/// Repository failures (see [`shopmesh_storage::RepoError`]).
pub use shopmesh_storage::RepoError as StoreError;

/// The topic review events go to.
pub const TOPIC: &str = shopmesh_events::topics::REVIEWS;

/// Where a review stands with the moderators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Waiting for approval: visible to its author only, not counted.
    Pending,
    /// Visible to everyone, counted in the product's rating.
    Published,
    /// Hidden by a moderator, not counted.
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Published => "published",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => Self::Pending,
            "published" => Self::Published,
            "rejected" => Self::Rejected,
            _ => return None,
        })
    }
}

pub(crate) fn status_from(name: &str) -> Result<Status, StoreError> {
    Status::parse(name)
        .ok_or_else(|| StorageError::Corrupt(format!("review status {name:?}")).into())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRecord {
    pub id: Uuid,
    pub product_id: Uuid,
    pub user_id: Uuid,
    pub status: Status,
    /// Stars, 1 to 5.
    pub rating: i32,
    /// Plain text as the author wrote it.
    pub title: String,
    /// Plain text as the author wrote it.
    pub body: String,
    pub language: String,
    /// Why a moderator rejected it; empty otherwise.
    pub moderation_reason: String,
    /// Users who reported it. Kept by [`ReviewStore::report`] only; other writes leave it.
    pub report_count: i32,
    /// When it was first reported since its last moderation: it is in the reported queue.
    pub reported_at_ms: Option<i64>,
    /// Users who found it helpful. Kept by [`ReviewStore::vote`] only; other writes leave it.
    pub helpful_count: i32,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// 1 at creation, one more with every change; a change applies only over the version read.
    pub version: i64,
}

/// A product's published ratings, recounted from its reviews.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Aggregate {
    pub product_id: Uuid,
    /// Published reviews with 1 to 5 stars.
    pub stars: [i32; 5],
    /// 0 before the first count, one more with every recount written.
    pub version: i64,
}

impl Aggregate {
    pub fn count(&self) -> i32 {
        self.stars.iter().sum()
    }

    /// The mean rating, 0 without ratings.
    pub fn average(&self) -> f64 {
        let count = self.count();
        if count == 0 {
            return 0.0;
        }
        let sum: i64 = self
            .stars
            .iter()
            .zip(1..)
            .map(|(n, stars)| i64::from(*n) * stars)
            .sum();
        sum as f64 / f64::from(count)
    }

    /// A histogram from `(rating, count)` pairs; ratings outside 1 to 5 are corrupt.
    pub(crate) fn counted(
        product_id: Uuid,
        ratings: impl IntoIterator<Item = (i32, i32)>,
        version: i64,
    ) -> Result<Self, StoreError> {
        let mut stars = [0; 5];
        for (rating, count) in ratings {
            let slot = usize::try_from(rating - 1)
                .ok()
                .and_then(|i| stars.get_mut(i))
                .ok_or_else(|| StorageError::Corrupt(format!("review rating {rating}")))?;
            *slot += count;
        }
        Ok(Self {
            product_id,
            stars,
            version,
        })
    }
}

/// Makes the event announcing a product's new aggregate.
pub type Announce = Arc<dyn Fn(&Aggregate) -> Event + Send + Sync>;

/// An order as the service learns it from `OrderCreated`: who ordered which products.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedOrder {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub product_ids: Vec<Uuid>,
}

/// A consumed event, recorded with the change it causes so a redelivery is recognised.
#[derive(Debug, Clone, Copy)]
pub struct Processed<'a> {
    pub subscription: &'a str,
    pub event_id: &'a str,
}

/// The order of a product's reviews. Each is one descending rank, so a page token (the rank
/// and the id of the last review) continues any of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    #[default]
    Newest,
    /// Most stars first.
    Highest,
    /// Fewest stars first.
    Lowest,
    /// Most helpful votes first.
    MostHelpful,
}

/// Ranks weigh their first key by this, above any creation time in milliseconds.
pub(crate) const RANK_WEIGHT: i64 = 10_000_000_000_000;
/// Helpful votes beyond this rank alike, so a rank always fits an `i64`.
pub(crate) const MAX_RANKED_VOTES: i64 = 99_999;
/// Ranks weigh a review in the preferred language by this, above any other key.
pub(crate) const LANGUAGE_WEIGHT: i64 = 4_000_000_000_000_000_000;

/// The primary language subtag of a BCP 47 tag, lower case (`de` of `de-AT`).
pub fn primary_language(tag: &str) -> String {
    tag.split('-')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// How a product's reviews are listed: by `sort`, and those in `language` (a primary subtag,
/// see [`primary_language`]) first when given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranking {
    pub sort: Sort,
    pub language: Option<String>,
}

impl Ranking {
    /// Where `review` stands, highest first (see [`Sort::rank`]).
    pub fn rank(&self, review: &ReviewRecord) -> i64 {
        let preferred = self
            .language
            .as_deref()
            .is_some_and(|language| primary_language(&review.language) == language);
        i64::from(preferred) * LANGUAGE_WEIGHT + self.sort.rank(review)
    }
}

impl Sort {
    /// The number the store matches the rank's first key with (0 for creation time alone).
    pub(crate) fn code(self) -> i64 {
        match self {
            Self::Newest => 0,
            Self::Highest => 1,
            Self::Lowest => 2,
            Self::MostHelpful => 3,
        }
    }

    /// Where `review` stands in this order, highest first; newer first among equals.
    pub fn rank(self, review: &ReviewRecord) -> i64 {
        let first = match self {
            Self::Newest => 0,
            Self::Highest => i64::from(review.rating),
            Self::Lowest => 6 - i64::from(review.rating),
            Self::MostHelpful => i64::from(review.helpful_count).min(MAX_RANKED_VOTES),
        };
        first * RANK_WEIGHT + review.created_at_ms
    }
}

/// Which moderation queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Pending reviews, oldest first.
    Pending,
    /// Reported reviews, most recently (first) reported first.
    Reported,
}

#[async_trait]
pub trait ReviewStore: Send + Sync + 'static {
    /// Remembers which products an order holds, once per event; `Ok(false)` for an event
    /// processed before.
    async fn order_placed(
        &self,
        order: &PlacedOrder,
        processed: Processed<'_>,
    ) -> Result<bool, StoreError>;

    /// Records the products of a placed order as bought by its customer, once per event.
    /// [`StoreError::NotFound`] when the order was never placed here.
    async fn order_paid(
        &self,
        order_id: Uuid,
        processed: Processed<'_>,
    ) -> Result<bool, StoreError>;

    /// Whether `user_id` has a paid order containing `product_id`.
    async fn purchased(&self, user_id: Uuid, product_id: Uuid) -> Result<bool, StoreError>;

    /// Stores a new review; [`StoreError::Conflict`] when its author reviewed the product
    /// already. A published one recounts the product's aggregate (see [`Self::update`]).
    async fn create(
        &self,
        review: &ReviewRecord,
        announce: &Announce,
    ) -> Result<Option<Aggregate>, StoreError>;

    async fn review(&self, id: Uuid) -> Result<Option<ReviewRecord>, StoreError>;

    /// Writes `review` over `previous` (same id, `review.version == previous.version + 1`), with
    /// `events`; everything but the report count. A concurrent change is
    /// [`StoreError::Conflict`]. When either is published, the product's aggregate is recounted
    /// and written with the event `announce` makes, and returned.
    async fn update(
        &self,
        previous: &ReviewRecord,
        review: &ReviewRecord,
        events: &[Event],
        announce: &Announce,
    ) -> Result<Option<Aggregate>, StoreError>;

    /// Deletes `review` at its version, with its reports (a concurrent change is
    /// [`StoreError::Conflict`]); its author may review the product again. A published one
    /// recounts the aggregate.
    async fn delete(
        &self,
        review: &ReviewRecord,
        announce: &Announce,
    ) -> Result<Option<Aggregate>, StoreError>;

    /// A product's reviews in `ranking`'s order, after `before` (a rank and an id, see
    /// [`Ranking::rank`]): the published ones and, with `viewer`, that user's own in any status.
    async fn product_reviews(
        &self,
        product_id: Uuid,
        viewer: Option<Uuid>,
        ranking: &Ranking,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<ReviewRecord>, StoreError>;

    /// Records `user_id`'s helpful vote for review `id`: the review's new count, or `None`
    /// when they voted for it before; [`StoreError::NotFound`] when there is no such review.
    async fn vote(&self, id: Uuid, user_id: Uuid) -> Result<Option<i32>, StoreError>;

    /// A moderation queue, after `after` in its order. The cursor is the queue's time (creation
    /// for pending, first report for reported) and the id.
    async fn queue(
        &self,
        queue: Queue,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<ReviewRecord>, StoreError>;

    /// Records `user_id`'s report of review `id`; `Ok(false)` when they reported it before,
    /// [`StoreError::NotFound`] when there is no such review.
    async fn report(
        &self,
        id: Uuid,
        user_id: Uuid,
        reason: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError>;

    /// A product's aggregate as last written (all zero, version 0, before its first review).
    async fn aggregate(&self, product_id: Uuid) -> Result<Aggregate, StoreError>;

    /// Recounts a product's published reviews and writes the aggregate one version up with its
    /// event, whatever it said before (a repair).
    async fn recount(&self, product_id: Uuid, announce: &Announce)
    -> Result<Aggregate, StoreError>;
}

// The host opens the repository on either backend, with its outbox relay running.
shopmesh_host::repository!(dyn ReviewStore, SqliteReviews, CqlReviews, SQLITE, CQL);

/// The SQLite schema.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "reviews",
        statements: "
            CREATE TABLE reviews (
                id TEXT PRIMARY KEY,
                product_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                status TEXT NOT NULL,
                rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
                title TEXT NOT NULL,
                body TEXT NOT NULL,
                language TEXT NOT NULL,
                moderation_reason TEXT NOT NULL,
                report_count INTEGER NOT NULL,
                reported_at INTEGER,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL,
                version INTEGER NOT NULL,
                UNIQUE (product_id, user_id)
            );
            CREATE INDEX reviews_by_product ON reviews (product_id, created_at DESC, id DESC);
            CREATE INDEX reviews_by_status ON reviews (status, created_at, id);
            CREATE INDEX reviews_reported ON reviews (reported_at, id) WHERE reported_at IS NOT NULL;
            CREATE TABLE review_reports (
                review_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                reason TEXT NOT NULL,
                reported_at INTEGER NOT NULL,
                PRIMARY KEY (review_id, user_id)
            );
            CREATE TABLE ratings (
                product_id TEXT PRIMARY KEY,
                stars TEXT NOT NULL,
                version INTEGER NOT NULL
            );
            CREATE TABLE placed_orders (
                order_id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                product_ids TEXT NOT NULL
            );
            CREATE TABLE purchases (
                user_id TEXT NOT NULL,
                product_id TEXT NOT NULL,
                order_id TEXT NOT NULL,
                PRIMARY KEY (user_id, product_id)
            );
        ",
    },
    shopmesh_events::outbox::sqlite_migration(2),
    shopmesh_events::inbox::sqlite_migration(3),
    Migration {
        version: 4,
        name: "helpful_votes",
        statements: "
            ALTER TABLE reviews ADD COLUMN helpful_count INTEGER NOT NULL DEFAULT 0;
            CREATE TABLE helpful_votes (
                review_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                PRIMARY KEY (review_id, user_id)
            );
        ",
    },
];

/// The CQL schema, query first: a review by id; a product's reviews newest first; a user's
/// review of a product (the uniqueness claim); the moderation queues by time; reports and
/// helpful votes per review (the count beside the review, as the review row changes only
/// over its version); aggregates per product; and purchases per user.
pub const CQL: &[Migration] = &[
    Migration {
        version: 1,
        name: "reviews",
        statements: "
            CREATE TABLE IF NOT EXISTS reviews (
                id uuid PRIMARY KEY,
                product_id uuid,
                user_id uuid,
                status text,
                rating int,
                title text,
                body text,
                language text,
                moderation_reason text,
                report_count int,
                reported_at bigint,
                created_at bigint,
                updated_at bigint,
                version bigint
            );
            CREATE TABLE IF NOT EXISTS reviews_by_product (
                product_id uuid,
                created_at bigint,
                id uuid,
                PRIMARY KEY ((product_id), created_at, id)
            ) WITH CLUSTERING ORDER BY (created_at DESC, id DESC);
            CREATE TABLE IF NOT EXISTS reviews_by_user (
                user_id uuid,
                product_id uuid,
                review_id uuid,
                PRIMARY KEY ((user_id), product_id)
            );
            CREATE TABLE IF NOT EXISTS moderation_queue (
                queue text,
                at bigint,
                id uuid,
                PRIMARY KEY ((queue), at, id)
            );
            CREATE TABLE IF NOT EXISTS review_reports (
                review_id uuid,
                user_id uuid,
                reason text,
                reported_at bigint,
                PRIMARY KEY ((review_id), user_id)
            );
            CREATE TABLE IF NOT EXISTS ratings (
                product_id uuid PRIMARY KEY,
                stars list<int>,
                version bigint
            );
            CREATE TABLE IF NOT EXISTS placed_orders (
                order_id uuid PRIMARY KEY,
                user_id uuid,
                product_ids list<uuid>
            );
            CREATE TABLE IF NOT EXISTS purchases (
                user_id uuid,
                product_id uuid,
                order_id uuid,
                PRIMARY KEY ((user_id), product_id)
            );
        ",
    },
    shopmesh_events::outbox::cql_migration(2),
    shopmesh_events::inbox::cql_migration(3),
    Migration {
        version: 4,
        name: "helpful_votes",
        statements: "
            CREATE TABLE IF NOT EXISTS helpful_votes (
                review_id uuid,
                user_id uuid,
                PRIMARY KEY ((review_id), user_id)
            );
            CREATE TABLE IF NOT EXISTS helpful_counts (review_id uuid PRIMARY KEY, votes int);
        ",
    },
];

/// Whether a change from `previous` to `next` can move the product's aggregate.
pub(crate) fn counts(previous: Option<&ReviewRecord>, next: Option<&ReviewRecord>) -> bool {
    [previous, next]
        .into_iter()
        .flatten()
        .any(|review| review.status == Status::Published)
}
