//! Where the catalog lives: one repository contract on SQLite and on CQL. Products carry their
//! text (title, description, attributes, translations) as one JSON document; the columns are
//! what queries and conditional updates need.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shopmesh_events::Event;
use shopmesh_storage::{Migration, StorageError};
use uuid::Uuid;

use self::cql::CqlCatalog;
use self::sqlite::SqliteCatalog;

pub mod cql;
pub mod sqlite;

/// The topic product events go to.
pub const TOPIC: &str = shopmesh_events::topics::PRODUCTS;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryRecord {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub slug: String,
    pub name: String,
    pub translations: BTreeMap<String, String>,
    pub position: i32,
}

impl CategoryRecord {
    /// The name in the best of `accepted`, the original being in `default_locale`.
    pub fn name_in(&self, accepted: &[String], default_locale: &str) -> String {
        shopmesh_kit::locale::choose(accepted, default_locale, &self.translations)
            .1
            .unwrap_or(&self.name)
            .clone()
    }
}

/// A product's text, stored as one document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProductText {
    pub title: String,
    pub description: String,
    pub attributes: BTreeMap<String, String>,
    /// Locale → (title, description).
    pub translations: BTreeMap<String, (String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProductRecord {
    pub id: Uuid,
    pub sku: String,
    pub category_id: Option<Uuid>,
    pub currency: String,
    pub amount_minor: i64,
    pub stock: i32,
    pub rating_average: f64,
    pub rating_count: i32,
    pub text: ProductText,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Increases with every change (stock included); an update applies only over the version read.
    pub version: i64,
}

pub use shopmesh_kit::paging::Cursor;

/// One line of a stock reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub product_id: Uuid,
    pub quantity: i32,
}

/// A line that could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortage {
    pub product_id: Uuid,
    pub requested: i32,
    pub available: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationState {
    Reserved,
    Rejected,
    Released,
    Committed,
}

/// An order's reservation as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub order_id: Uuid,
    pub state: ReservationState,
    pub lines: Vec<Line>,
    pub shortages: Vec<Shortage>,
    pub updated_at_ms: i64,
}

/// Makes the event announcing a stock change.
pub type Announce = std::sync::Arc<dyn Fn(&StockChange) -> Event + Send + Sync>;

/// Makes the event announcing a reservation's outcome (`StockEvent` on the stock topic).
pub type Reply = std::sync::Arc<dyn Fn(&Reservation) -> Event + Send + Sync>;

/// A product whose stock a reservation changed: its new stock and version, for the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockChange {
    pub product_id: Uuid,
    pub stock: i32,
    pub version: i64,
}

/// Repository failures (see [`shopmesh_storage::RepoError`]).
pub use shopmesh_storage::RepoError as StoreError;

#[async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    async fn categories(&self) -> Result<Vec<CategoryRecord>, StoreError>;
    /// [`StoreError::Conflict`] when the slug is taken.
    async fn create_category(&self, category: &CategoryRecord) -> Result<(), StoreError>;
    async fn update_category(&self, category: &CategoryRecord) -> Result<(), StoreError>;
    /// [`StoreError::Precondition`] while it has sub-categories or products.
    async fn delete_category(&self, id: Uuid) -> Result<(), StoreError>;

    /// Stores a new product and its event; [`StoreError::Conflict`] when the SKU is taken.
    async fn create_product(
        &self,
        product: &ProductRecord,
        event: &Event,
    ) -> Result<(), StoreError>;
    async fn product(&self, id: Uuid) -> Result<Option<ProductRecord>, StoreError>;
    /// Writes `product` over version `product.version - 1`, with its event; a taken new SKU or
    /// a concurrent change is [`StoreError::Conflict`].
    async fn update_product(
        &self,
        product: &ProductRecord,
        previous_sku: &str,
        event: &Event,
    ) -> Result<(), StoreError>;
    async fn delete_product(
        &self,
        product: &ProductRecord,
        event: &Event,
    ) -> Result<(), StoreError>;
    /// Products oldest first after `after`, in `categories` when given (any of them).
    async fn list_products(
        &self,
        categories: Option<&[Uuid]>,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<ProductRecord>, StoreError>;

    /// Reserves every line or none. Idempotent per order: the recorded reservation comes back
    /// unchanged; other lines for the same order are a [`StoreError::Conflict`]. A
    /// reservation after a release stays released. Every stock change is announced with the
    /// event `announce` makes for it, written with the change. With `reply`, a reserved or
    /// rejected outcome is announced on the stock topic on every call, new or repeated, so a
    /// redelivered order always gets its answer (its consumer drops duplicates).
    async fn reserve(
        &self,
        order_id: Uuid,
        lines: &[Line],
        now_ms: i64,
        announce: Announce,
        reply: Option<Reply>,
    ) -> Result<Reservation, StoreError>;
    /// Returns a reservation's units (RESERVED or COMMITTED) to stock; records a RELEASED
    /// marker when there was none. Idempotent.
    async fn release(
        &self,
        order_id: Uuid,
        now_ms: i64,
        announce: Announce,
    ) -> Result<Reservation, StoreError>;
    /// RESERVED → COMMITTED; idempotent; any other state is a [`StoreError::Precondition`].
    async fn commit(&self, order_id: Uuid, now_ms: i64) -> Result<Reservation, StoreError>;

    /// Writes `product` with the rating reviews announced at `rating_version`, over version
    /// `product.version - 1`, with its event. `Ok(false)` writes nothing: the product holds
    /// this or a newer rating already (a redelivered or late event). A concurrent change is
    /// [`StoreError::Conflict`].
    async fn rate(
        &self,
        product: &ProductRecord,
        rating_version: i64,
        event: &Event,
    ) -> Result<bool, StoreError>;
}

// The host opens the repository on either backend, with its outbox relay running.
shopmesh_host::repository!(dyn CatalogStore, SqliteCatalog, CqlCatalog, SQLITE, CQL);

/// The SQLite schema.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "catalog",
        statements: "
            CREATE TABLE categories (
                id TEXT PRIMARY KEY,
                parent_id TEXT,
                slug TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                translations TEXT NOT NULL,
                position INTEGER NOT NULL
            );
            CREATE TABLE products (
                id TEXT PRIMARY KEY,
                sku TEXT NOT NULL UNIQUE,
                category_id TEXT,
                currency TEXT NOT NULL,
                amount_minor INTEGER NOT NULL,
                stock INTEGER NOT NULL CHECK (stock >= 0),
                rating_average REAL NOT NULL,
                rating_count INTEGER NOT NULL,
                text TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL,
                version INTEGER NOT NULL
            );
            CREATE INDEX products_by_created ON products (created_at, id);
            CREATE INDEX products_by_category ON products (category_id, created_at, id);
            CREATE TABLE stock_reservations (
                order_id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                lines TEXT NOT NULL,
                shortages TEXT NOT NULL,
                updated_at INTEGER NOT NULL
            );
        ",
    },
    shopmesh_events::outbox::sqlite_migration(2),
    Migration {
        version: 3,
        name: "product_ratings",
        statements: "
            CREATE TABLE product_ratings (
                product_id TEXT PRIMARY KEY,
                version INTEGER NOT NULL
            );
        ",
    },
];

/// The CQL schema.
pub const CQL: &[Migration] = &[
    Migration {
        version: 1,
        name: "catalog",
        statements: "
            CREATE TABLE IF NOT EXISTS categories (
                id uuid PRIMARY KEY,
                parent_id uuid,
                slug text,
                name text,
                translations map<text, text>,
                position int
            );
            CREATE TABLE IF NOT EXISTS categories_by_slug (slug text PRIMARY KEY, id uuid);
            CREATE TABLE IF NOT EXISTS products (
                id uuid PRIMARY KEY,
                sku text,
                category_id uuid,
                currency text,
                amount_minor bigint,
                stock int,
                rating_average double,
                rating_count int,
                text text,
                created_at bigint,
                updated_at bigint,
                version bigint
            );
            CREATE TABLE IF NOT EXISTS products_by_sku (sku text PRIMARY KEY, id uuid);
            CREATE TABLE IF NOT EXISTS products_by_month (
                month int,
                created_at bigint,
                id uuid,
                PRIMARY KEY ((month), created_at, id)
            );
            CREATE TABLE IF NOT EXISTS products_months (shard int, month int, PRIMARY KEY ((shard), month));
            CREATE TABLE IF NOT EXISTS products_by_category (
                category_id uuid,
                created_at bigint,
                id uuid,
                PRIMARY KEY ((category_id), created_at, id)
            );
            CREATE TABLE IF NOT EXISTS stock_reservations (
                order_id uuid PRIMARY KEY,
                state text,
                lines text,
                shortages text,
                updated_at bigint
            );
        ",
    },
    shopmesh_events::outbox::cql_migration(2),
    Migration {
        version: 3,
        name: "product_ratings",
        statements: "
            CREATE TABLE IF NOT EXISTS product_ratings (product_id uuid PRIMARY KEY, version bigint);
        ",
    },
];

/// The reservation state as stored.
pub(crate) fn state_name(state: ReservationState) -> &'static str {
    match state {
        ReservationState::Reserved => "reserved",
        ReservationState::Rejected => "rejected",
        ReservationState::Released => "released",
        ReservationState::Committed => "committed",
    }
}

pub(crate) fn state_from(name: &str) -> Result<ReservationState, StoreError> {
    Ok(match name {
        "reserved" => ReservationState::Reserved,
        "rejected" => ReservationState::Rejected,
        "released" => ReservationState::Released,
        "committed" => ReservationState::Committed,
        other => {
            return Err(StorageError::Corrupt(format!("reservation state {other:?}")).into());
        }
    })
}

/// Lines in a canonical order, so a repeated reservation compares equal however it was sent.
pub(crate) fn canonical(lines: &[Line]) -> Vec<Line> {
    let mut lines = lines.to_vec();
    lines.sort_by_key(|line| line.product_id);
    lines
}

/// Whether a reservation has an outcome to announce: reserved or rejected.
pub(crate) fn decided(reservation: &Reservation) -> bool {
    matches!(
        reservation.state,
        ReservationState::Reserved | ReservationState::Rejected
    )
}
