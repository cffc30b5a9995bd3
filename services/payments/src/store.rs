//! Where payments live: one repository contract, on SQLite and on CQL. A payment is one charge
//! attempt of an order, unique by (order, attempt); a refund is unique per payment. Only the
//! provider's ids, statuses, amounts, card brand and last four digits are stored, never card data.
//!
//! Outcomes are conditional transitions (processing → succeeded | failed; a pending refund →
//! succeeded | failed, a fully refunded payment → refunded), each written with its event, so the
//! synchronous answer and any number of duplicated or reordered webhooks together produce one
//! event per outcome. Webhook event ids are remembered with the effect they caused.

use async_trait::async_trait;
use shopmesh_events::Event;
use shopmesh_proto::shopmesh::payments::v1::PaymentProvider;
use shopmesh_storage::{Migration, StorageError};
use uuid::Uuid;

use self::cql::CqlPayments;
use self::sqlite::SqlitePayments;

pub mod cql;
pub mod sqlite;

/// The topic payment events go to.
pub const TOPIC: &str = shopmesh_events::topics::PAYMENTS;
/// The name webhook event ids are remembered under in the processed-events table.
pub const WEBHOOKS: &str = "stripe-webhooks";
/// Most payments an order can have (the proto's `ListOrderPaymentsResponse` bound).
pub const MAX_ORDER_PAYMENTS: usize = 32;
/// Most refunds listed per payment (the proto's `Payment.refunds` bound).
pub const MAX_REFUNDS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Processing,
    Succeeded,
    Failed,
    Refunded,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Refunded => "refunded",
        }
    }

    pub fn from_name(name: &str) -> Result<Self, StorageError> {
        Ok(match name {
            "processing" => Self::Processing,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "refunded" => Self::Refunded,
            other => return Err(StorageError::Corrupt(format!("payment status {other:?}"))),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundState {
    Pending,
    Succeeded,
    Failed,
}

impl RefundState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn from_name(name: &str) -> Result<Self, StorageError> {
        Ok(match name {
            "pending" => Self::Pending,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            other => return Err(StorageError::Corrupt(format!("refund status {other:?}"))),
        })
    }
}

/// The provider as stored.
pub fn provider_name(provider: PaymentProvider) -> &'static str {
    match provider {
        PaymentProvider::Stripe => "stripe",
        PaymentProvider::Sandbox => "sandbox",
        PaymentProvider::Unspecified => "unspecified",
    }
}

pub fn provider_from(name: &str) -> Result<PaymentProvider, StorageError> {
    Ok(match name {
        "stripe" => PaymentProvider::Stripe,
        "sandbox" => PaymentProvider::Sandbox,
        other => return Err(StorageError::Corrupt(format!("payment provider {other:?}"))),
    })
}

/// One charge attempt of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    pub id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub provider: PaymentProvider,
    /// Empty until the provider has answered.
    pub provider_payment_id: String,
    pub attempt: i32,
    pub status: Status,
    pub currency: String,
    pub amount_minor: i64,
    /// Sum of the succeeded refunds.
    pub amount_refunded_minor: i64,
    pub payment_method: String,
    pub card_brand: String,
    pub card_last4: String,
    pub decline_code: String,
    pub failure_message: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A refund of a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRecord {
    pub id: Uuid,
    pub payment_id: Uuid,
    pub order_id: Uuid,
    /// Empty until the provider has answered.
    pub provider_refund_id: String,
    pub currency: String,
    pub amount_minor: i64,
    pub status: RefundState,
    /// Why it was requested (from the order).
    pub reason: String,
    /// Why the provider refused it.
    pub failure_reason: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// How a charge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded {
        card_brand: String,
        card_last4: String,
    },
    Failed {
        decline_code: String,
        failure_message: String,
    },
}

/// A charge's outcome, to record over a processing payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub payment_id: Uuid,
    pub provider_payment_id: String,
    pub outcome: Outcome,
    pub now_ms: i64,
}

/// How a refund ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Succeeded,
    Failed { reason: String },
}

/// A refund's outcome, to record over a pending refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundSettlement {
    pub refund_id: Uuid,
    pub provider_refund_id: String,
    pub outcome: RefundOutcome,
    pub now_ms: i64,
}

/// What a settling write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled<T> {
    /// The transition happened and its event was written with it.
    Applied(T),
    /// The record had settled already; nothing changed (a webhook id given was remembered).
    Unchanged(T),
    /// The webhook event had been processed before; nothing changed.
    Duplicate,
}

/// An object of the sandbox gateway: a PaymentIntent or a refund, as its own JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxObject {
    pub id: String,
    pub idempotency_key: String,
    pub body: String,
    pub created_at_ms: i64,
}

/// Repository failures (see [`shopmesh_storage::RepoError`]).
pub use shopmesh_storage::RepoError as StoreError;

#[async_trait]
pub trait PaymentStore: Send + Sync + 'static {
    /// Records a processing payment unless its (order, attempt) has one; returns the stored
    /// payment either way, so a redelivered request finds the first one.
    async fn begin_payment(&self, payment: &PaymentRecord) -> Result<PaymentRecord, StoreError>;
    async fn payment(&self, id: Uuid) -> Result<Option<PaymentRecord>, StoreError>;
    async fn payment_by_provider_id(
        &self,
        provider_payment_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError>;
    /// An order's payments, oldest attempt first (at most [`MAX_ORDER_PAYMENTS`]).
    async fn order_payments(&self, order_id: Uuid) -> Result<Vec<PaymentRecord>, StoreError>;
    /// Records the provider's id of a payment still waiting for its outcome.
    async fn note_provider_payment_id(
        &self,
        payment_id: Uuid,
        provider_payment_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Payments still processing whose last change is older than `older_than_ms` (their
    /// `updated_at` is before it), least recently changed first, at most `limit`: what the
    /// sweeper asks the provider about.
    async fn stale_processing(
        &self,
        older_than_ms: i64,
        limit: usize,
    ) -> Result<Vec<PaymentRecord>, StoreError>;
    /// Moves a processing payment to its outcome with `event`. With `webhook`, remembers that
    /// event id in the same write, or answers [`Settled::Duplicate`] when it was seen before.
    async fn settle(
        &self,
        settlement: &Settlement,
        event: &Event,
        webhook: Option<&str>,
    ) -> Result<Settled<PaymentRecord>, StoreError>;

    /// Records a pending refund unless the payment has one; returns the stored refund either
    /// way. [`StoreError::NotFound`] without the payment.
    async fn begin_refund(&self, refund: &RefundRecord) -> Result<RefundRecord, StoreError>;
    async fn refund(&self, id: Uuid) -> Result<Option<RefundRecord>, StoreError>;
    async fn refund_by_provider_id(
        &self,
        provider_refund_id: &str,
    ) -> Result<Option<RefundRecord>, StoreError>;
    /// A payment's refunds, oldest first (at most [`MAX_REFUNDS`]).
    async fn refunds(&self, payment_id: Uuid) -> Result<Vec<RefundRecord>, StoreError>;
    async fn note_provider_refund_id(
        &self,
        refund_id: Uuid,
        provider_refund_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Moves a pending refund to its outcome with `event`; a succeeded one adds to the
    /// payment's refunded amount, and a payment refunded in full becomes refunded. `webhook` as
    /// for [`PaymentStore::settle`].
    async fn settle_refund(
        &self,
        settlement: &RefundSettlement,
        event: &Event,
        webhook: Option<&str>,
    ) -> Result<Settled<RefundRecord>, StoreError>;

    /// Remembers a webhook event id that had no effect; false when it was seen before.
    async fn note_webhook(&self, event_id: &str) -> Result<bool, StoreError>;
    /// Whether a webhook event id was processed before.
    async fn webhook_seen(&self, event_id: &str) -> Result<bool, StoreError>;

    /// Stores a sandbox object unless its idempotency key has one; returns the one the key
    /// leads to. (On CQL an object that lost the race may stay stored, unreferenced.)
    async fn sandbox_create(&self, object: &SandboxObject) -> Result<SandboxObject, StoreError>;
    async fn sandbox_get(&self, id: &str) -> Result<Option<SandboxObject>, StoreError>;
}

// The host opens the repository on either backend, with its outbox relay running.
shopmesh_host::repository!(dyn PaymentStore, SqlitePayments, CqlPayments, SQLITE, CQL);

/// The SQLite schema.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "payments",
        statements: "
            CREATE TABLE payments (
                id TEXT PRIMARY KEY,
                order_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                provider TEXT NOT NULL,
                provider_payment_id TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                status TEXT NOT NULL,
                currency TEXT NOT NULL,
                amount_minor INTEGER NOT NULL,
                amount_refunded_minor INTEGER NOT NULL,
                payment_method TEXT NOT NULL,
                card_brand TEXT NOT NULL,
                card_last4 TEXT NOT NULL,
                decline_code TEXT NOT NULL,
                failure_message TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL,
                UNIQUE (order_id, attempt)
            );
            CREATE INDEX payments_by_provider_id ON payments (provider_payment_id);
            CREATE TABLE refunds (
                id TEXT PRIMARY KEY,
                payment_id TEXT NOT NULL UNIQUE REFERENCES payments (id),
                order_id TEXT NOT NULL,
                provider_refund_id TEXT NOT NULL,
                currency TEXT NOT NULL,
                amount_minor INTEGER NOT NULL,
                status TEXT NOT NULL,
                reason TEXT NOT NULL,
                failure_reason TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL
            );
            CREATE INDEX refunds_by_provider_id ON refunds (provider_refund_id);
            CREATE TABLE sandbox_objects (
                id TEXT PRIMARY KEY,
                idempotency_key TEXT NOT NULL UNIQUE,
                body TEXT NOT NULL,
                created_at INTEGER NOT NULL
            );
        ",
    },
    shopmesh_events::outbox::sqlite_migration(2),
    shopmesh_events::inbox::sqlite_migration(3),
    Migration {
        version: 4,
        name: "payments by status",
        statements: "CREATE INDEX payments_by_status ON payments (status, updated_at);",
    },
];

/// The CQL schema.
pub const CQL: &[Migration] = &[
    Migration {
        version: 1,
        name: "payments",
        statements: "
            CREATE TABLE IF NOT EXISTS payments (
                id uuid PRIMARY KEY,
                order_id uuid,
                user_id uuid,
                provider text,
                provider_payment_id text,
                attempt int,
                status text,
                currency text,
                amount_minor bigint,
                amount_refunded_minor bigint,
                payment_method text,
                card_brand text,
                card_last4 text,
                decline_code text,
                failure_message text,
                created_at bigint,
                updated_at bigint,
                pending_event text
            );
            CREATE TABLE IF NOT EXISTS payments_by_order (
                order_id uuid,
                attempt int,
                payment_id uuid,
                PRIMARY KEY ((order_id), attempt)
            );
            CREATE TABLE IF NOT EXISTS payments_by_provider_id (
                provider_payment_id text PRIMARY KEY,
                payment_id uuid
            );
            CREATE TABLE IF NOT EXISTS refunds (
                id uuid PRIMARY KEY,
                payment_id uuid,
                order_id uuid,
                provider_refund_id text,
                currency text,
                amount_minor bigint,
                status text,
                reason text,
                failure_reason text,
                created_at bigint,
                updated_at bigint,
                pending_event text
            );
            CREATE TABLE IF NOT EXISTS refunds_by_payment (payment_id uuid PRIMARY KEY, refund_id uuid);
            CREATE TABLE IF NOT EXISTS refunds_by_provider_id (
                provider_refund_id text PRIMARY KEY,
                refund_id uuid
            );
            CREATE TABLE IF NOT EXISTS sandbox_objects (
                id text PRIMARY KEY,
                idempotency_key text,
                body text,
                created_at bigint
            );
            CREATE TABLE IF NOT EXISTS sandbox_keys (idempotency_key text PRIMARY KEY, id text);
        ",
    },
    shopmesh_events::outbox::cql_migration(2),
    shopmesh_events::inbox::cql_migration(3),
    // The processing payments, spread over a few partitions (see `store/cql.rs`). A row is only
    // a hint (the payment is read again before acting), so a deleted row coming back after a
    // short grace period does no harm, and tombstones go early.
    Migration {
        version: 4,
        name: "payments processing",
        statements: "
            CREATE TABLE IF NOT EXISTS payments_processing (
                shard int,
                id uuid,
                since bigint,
                PRIMARY KEY ((shard), id)
            ) WITH gc_grace_seconds = 3600;
        ",
    },
];

/// A payment after `settlement` (the caller has checked it was processing).
pub(crate) fn settled(mut payment: PaymentRecord, settlement: &Settlement) -> PaymentRecord {
    if !settlement.provider_payment_id.is_empty() {
        payment.provider_payment_id = settlement.provider_payment_id.clone();
    }
    match &settlement.outcome {
        Outcome::Succeeded {
            card_brand,
            card_last4,
        } => {
            payment.status = Status::Succeeded;
            payment.card_brand = card_brand.clone();
            payment.card_last4 = card_last4.clone();
        }
        Outcome::Failed {
            decline_code,
            failure_message,
        } => {
            payment.status = Status::Failed;
            payment.decline_code = decline_code.clone();
            payment.failure_message = failure_message.clone();
        }
    }
    payment.updated_at_ms = settlement.now_ms;
    payment
}

/// A refund after `settlement` (the caller has checked it was pending).
pub(crate) fn refund_settled(
    mut refund: RefundRecord,
    settlement: &RefundSettlement,
) -> RefundRecord {
    if !settlement.provider_refund_id.is_empty() {
        refund.provider_refund_id = settlement.provider_refund_id.clone();
    }
    match &settlement.outcome {
        RefundOutcome::Succeeded => refund.status = RefundState::Succeeded,
        RefundOutcome::Failed { reason } => {
            refund.status = RefundState::Failed;
            refund.failure_reason = reason.clone();
        }
    }
    refund.updated_at_ms = settlement.now_ms;
    refund
}
