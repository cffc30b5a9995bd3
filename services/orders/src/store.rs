//! Where orders live: one repository contract on SQLite and on CQL. An order is stored as one
//! document (lines, sealed address, payment, history) plus the columns queries need; every
//! change is written over the version it was decided on, with its events.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shopmesh_events::Event;
use shopmesh_storage::Migration;
use uuid::Uuid;

use crate::state::{Machine, Status};

use self::cql::CqlOrders;
use self::sqlite::SqliteOrders;

pub mod cql;
pub mod sqlite;

pub use shopmesh_kit::paging::Cursor;
/// Repository failures (see [`shopmesh_storage::RepoError`]).
pub use shopmesh_storage::RepoError as StoreError;

/// One line of an order, as catalog quoted it at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub product_id: Uuid,
    pub sku: String,
    pub title: String,
    pub quantity: i32,
    /// Price of one unit in minor units of the order's currency.
    pub unit_minor: i64,
}

/// One recorded change of status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// `None` for the creation.
    pub from: Option<Status>,
    pub to: Status,
    pub at_ms: i64,
    /// `user:<uuid>` or `service:<name>`.
    pub actor: String,
    pub reason: String,
}

/// What the order knows of its payment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFacts {
    pub payment_id: String,
    pub card_brand: String,
    pub card_last4: String,
    pub decline_code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    pub carrier: String,
    pub tracking_number: String,
    pub shipped_at_ms: i64,
}

/// The order document: everything but the id, owner, status and times, which are columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderBody {
    pub lines: Vec<Line>,
    pub currency: String,
    pub total_minor: i64,
    /// The shipping address, sealed (it is personal data).
    pub sealed_address: Vec<u8>,
    pub payment_method: String,
    /// The customer's language at checkout, for messages about the order.
    pub locale: String,
    pub refund_pending: bool,
    /// A charge succeeded and was not refunded.
    #[serde(default)]
    pub charged: bool,
    /// Charge attempts so far.
    pub attempts: i32,
    pub payment: Option<PaymentFacts>,
    pub shipment: Option<Shipment>,
    pub history: Vec<Transition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: Status,
    pub body: OrderBody,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// 1 at creation, one more with every change; a change applies only over the version read.
    pub version: i64,
}

impl OrderRecord {
    pub fn machine(&self) -> Machine {
        Machine {
            status: self.status,
            refund_pending: self.body.refund_pending,
            charged: self.body.charged,
        }
    }
}

/// A caller's idempotency key and the fingerprint of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub user_id: Uuid,
    pub key: String,
    /// SHA-256 of the canonical request.
    pub fingerprint: Vec<u8>,
}

/// An event to publish through the outbox with a change.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: &'static str,
    pub event: Event,
}

/// What [`OrderStore::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The order is new.
    New,
    /// The key had made this order already, from the same request.
    Existing(Box<OrderRecord>),
    /// The key had been used with another request.
    KeyReused,
}

/// A processed saga event, recorded with the change it caused so a redelivery is recognised.
#[derive(Debug, Clone, Copy)]
pub struct Processed<'a> {
    pub subscription: &'a str,
    pub event_id: &'a str,
}

#[async_trait]
pub trait OrderStore: Send + Sync + 'static {
    /// Stores a new order with its key and its events, unless the key was used before.
    async fn create(
        &self,
        order: &OrderRecord,
        key: &IdempotencyKey,
        events: &[Outgoing],
    ) -> Result<Created, StoreError>;

    /// What `key` made before, if anything: [`Created::Existing`] for the same request,
    /// [`Created::KeyReused`] for another. A retry is answered from here without new work.
    async fn keyed(&self, key: &IdempotencyKey) -> Result<Option<Created>, StoreError>;

    async fn order(&self, id: Uuid) -> Result<Option<OrderRecord>, StoreError>;

    /// A user's orders, newest first, before `before`; only `status` when given.
    async fn list(
        &self,
        user_id: Uuid,
        status: Option<Status>,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError>;

    /// Writes `order` over version `order.version - 1` with its events, and records `processed`
    /// when the change answers a saga event. A concurrent change is [`StoreError::Conflict`];
    /// an event recorded before is `Ok(false)` and writes nothing.
    async fn update(
        &self,
        order: &OrderRecord,
        events: &[Outgoing],
        processed: Option<Processed<'_>>,
    ) -> Result<bool, StoreError>;

    /// The newest order of `user_id` containing `product_id` that is paid, shipped or
    /// delivered.
    async fn purchase(&self, user_id: Uuid, product_id: Uuid) -> Result<Option<Uuid>, StoreError>;
}

/// Statuses that count as a purchase (reviews admits their buyers).
pub const PURCHASED: [Status; 3] = [Status::Paid, Status::Shipped, Status::Delivered];

// The host opens the repository on either backend, with its outbox relay running.
shopmesh_host::repository!(dyn OrderStore, SqliteOrders, CqlOrders, SQLITE, CQL);

/// The SQLite schema.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "orders",
        statements: "
            CREATE TABLE orders (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                status TEXT NOT NULL,
                body TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL,
                version INTEGER NOT NULL
            );
            CREATE INDEX orders_by_user ON orders (user_id, created_at DESC, id DESC);
            CREATE TABLE order_products (
                user_id TEXT NOT NULL,
                product_id TEXT NOT NULL,
                order_id TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                PRIMARY KEY (user_id, product_id, order_id)
            );
            CREATE TABLE idempotency_keys (
                user_id TEXT NOT NULL,
                key TEXT NOT NULL,
                fingerprint BLOB NOT NULL,
                order_id TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                PRIMARY KEY (user_id, key)
            );
        ",
    },
    shopmesh_events::outbox::sqlite_migration(2),
    shopmesh_events::inbox::sqlite_migration(3),
];

/// The CQL schema.
pub const CQL: &[Migration] = &[
    Migration {
        version: 1,
        name: "orders",
        statements: "
            CREATE TABLE IF NOT EXISTS orders (
                id uuid PRIMARY KEY,
                user_id uuid,
                status text,
                body text,
                created_at bigint,
                updated_at bigint,
                version bigint,
                pending text
            );
            CREATE TABLE IF NOT EXISTS orders_by_user (
                user_id uuid,
                created_at bigint,
                id uuid,
                PRIMARY KEY ((user_id), created_at, id)
            ) WITH CLUSTERING ORDER BY (created_at DESC, id DESC);
            CREATE TABLE IF NOT EXISTS order_products (
                user_id uuid,
                product_id uuid,
                order_id uuid,
                PRIMARY KEY ((user_id, product_id), order_id)
            );
            CREATE TABLE IF NOT EXISTS idempotency_keys (
                user_id uuid,
                key text,
                fingerprint blob,
                order_id uuid,
                created_at bigint,
                PRIMARY KEY ((user_id), key)
            );
        ",
    },
    shopmesh_events::outbox::cql_migration(2),
    shopmesh_events::inbox::cql_migration(3),
];

pub(crate) fn status_from(name: &str) -> Result<Status, StoreError> {
    Status::parse(name).ok_or_else(|| {
        shopmesh_storage::StorageError::Corrupt(format!("order status {name:?}")).into()
    })
}
