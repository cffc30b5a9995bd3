//! Payments on CQL. Uniqueness is claimed with lightweight transactions: (order, attempt) in
//! `payments_by_order`, one refund per payment in `refunds_by_payment`, a sandbox idempotency
//! key in `sandbox_keys`; the record is then written `IF NOT EXISTS` under the claim's id, so a
//! writer that died between claim and record is completed by the next one, and never
//! overwritten.
//!
//! An outcome is a conditional update (`IF status = 'processing'`), which cannot share a batch
//! with the outbox's partition. So the event rides in the same conditional update, in the
//! record's `pending_event` column, and is copied to the outbox and cleared right after. A crash
//! in between leaves it in the record; the next settle of that record (the redelivered order
//! event, the provider's retried webhook) finds it and writes it out, with its original id, so
//! consumers see it once.
//!
//! CQL cannot find payments by status, so the processing ones are also listed in
//! `payments_processing`, spread over [`PROCESSING_SHARDS`] partitions by id. The row is written
//! before the payment (a processing payment always has one) and deleted once the payment has
//! settled; the sweeper reads the payment again before acting, and drops rows whose payment
//! settled or was never written.
//!
//! Webhook ids are claimed in the inbox (`processed_events`) before the effect and completed
//! after it (released on failure), as every CQL consumer does.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use scylla::{DeserializeRow, SerializeRow};
use shopmesh_events::Event;
use shopmesh_events::inbox::{Claim, CqlInbox};
use shopmesh_events::outbox::{CqlOutbox, OutboxRow};
use shopmesh_storage::StorageError;
use shopmesh_storage::cql::{Cql, lwt_applied, lwt_outcome};
use uuid::Uuid;

use super::{
    MAX_ORDER_PAYMENTS, PaymentRecord, PaymentStore, RefundRecord, RefundSettlement, RefundState,
    SandboxObject, Settled, Settlement, Status, StoreError, TOPIC, WEBHOOKS, provider_from,
    provider_name, refund_settled, settled,
};

/// How long a webhook claim holds before another delivery may take it over.
const WEBHOOK_LEASE: Duration = Duration::from_secs(60);
/// Partitions of `payments_processing`.
pub const PROCESSING_SHARDS: i32 = 16;

/// The `payments_processing` partition of a payment (UUIDv7's low bits are random).
fn shard(id: Uuid) -> i32 {
    // The remainder is below PROCESSING_SHARDS, so it fits.
    (id.as_u128() % PROCESSING_SHARDS.unsigned_abs() as u128) as i32
}

const PAYMENT_COLUMNS: &str = "id, order_id, user_id, provider, provider_payment_id, attempt, status, currency, amount_minor, amount_refunded_minor, payment_method, card_brand, card_last4, decline_code, failure_message, created_at, updated_at, pending_event";
const REFUND_COLUMNS: &str = "id, payment_id, order_id, provider_refund_id, currency, amount_minor, status, reason, failure_reason, created_at, updated_at, pending_event";

/// A `payments` row, read and written by column name.
#[derive(Debug, Clone, DeserializeRow, SerializeRow)]
struct PaymentRow {
    id: Uuid,
    order_id: Uuid,
    user_id: Uuid,
    provider: String,
    provider_payment_id: String,
    attempt: i32,
    status: String,
    currency: String,
    amount_minor: i64,
    amount_refunded_minor: i64,
    payment_method: String,
    card_brand: String,
    card_last4: String,
    decline_code: String,
    failure_message: String,
    created_at: i64,
    updated_at: i64,
    pending_event: Option<String>,
}

#[derive(Debug, Clone, DeserializeRow, SerializeRow)]
struct RefundRow {
    id: Uuid,
    payment_id: Uuid,
    order_id: Uuid,
    provider_refund_id: String,
    currency: String,
    amount_minor: i64,
    status: String,
    reason: String,
    failure_reason: String,
    created_at: i64,
    updated_at: i64,
    pending_event: Option<String>,
}

impl PaymentRow {
    fn of(record: &PaymentRecord) -> Self {
        Self {
            id: record.id,
            order_id: record.order_id,
            user_id: record.user_id,
            provider: provider_name(record.provider).to_owned(),
            provider_payment_id: record.provider_payment_id.clone(),
            attempt: record.attempt,
            status: record.status.name().to_owned(),
            currency: record.currency.clone(),
            amount_minor: record.amount_minor,
            amount_refunded_minor: record.amount_refunded_minor,
            payment_method: record.payment_method.clone(),
            card_brand: record.card_brand.clone(),
            card_last4: record.card_last4.clone(),
            decline_code: record.decline_code.clone(),
            failure_message: record.failure_message.clone(),
            created_at: record.created_at_ms,
            updated_at: record.updated_at_ms,
            pending_event: None,
        }
    }

    fn record(&self) -> Result<PaymentRecord, StoreError> {
        Ok(PaymentRecord {
            id: self.id,
            order_id: self.order_id,
            user_id: self.user_id,
            provider: provider_from(&self.provider)?,
            provider_payment_id: self.provider_payment_id.clone(),
            attempt: self.attempt,
            status: Status::from_name(&self.status)?,
            currency: self.currency.clone(),
            amount_minor: self.amount_minor,
            amount_refunded_minor: self.amount_refunded_minor,
            payment_method: self.payment_method.clone(),
            card_brand: self.card_brand.clone(),
            card_last4: self.card_last4.clone(),
            decline_code: self.decline_code.clone(),
            failure_message: self.failure_message.clone(),
            created_at_ms: self.created_at,
            updated_at_ms: self.updated_at,
        })
    }
}

impl RefundRow {
    fn of(record: &RefundRecord) -> Self {
        Self {
            id: record.id,
            payment_id: record.payment_id,
            order_id: record.order_id,
            provider_refund_id: record.provider_refund_id.clone(),
            currency: record.currency.clone(),
            amount_minor: record.amount_minor,
            status: record.status.name().to_owned(),
            reason: record.reason.clone(),
            failure_reason: record.failure_reason.clone(),
            created_at: record.created_at_ms,
            updated_at: record.updated_at_ms,
            pending_event: None,
        }
    }

    fn record(&self) -> Result<RefundRecord, StoreError> {
        Ok(RefundRecord {
            id: self.id,
            payment_id: self.payment_id,
            order_id: self.order_id,
            provider_refund_id: self.provider_refund_id.clone(),
            currency: self.currency.clone(),
            amount_minor: self.amount_minor,
            status: RefundState::from_name(&self.status)?,
            reason: self.reason.clone(),
            failure_reason: self.failure_reason.clone(),
            created_at_ms: self.created_at,
            updated_at_ms: self.updated_at,
        })
    }
}

pub struct CqlPayments {
    cql: Cql,
    outbox: Arc<CqlOutbox>,
    inbox: CqlInbox,
    claim_attempt: PreparedStatement,
    insert_payment: PreparedStatement,
    select_payment: PreparedStatement,
    order_attempts: PreparedStatement,
    index_payment: PreparedStatement,
    payment_by_provider: PreparedStatement,
    note_payment_provider: PreparedStatement,
    settle_payment: PreparedStatement,
    track_processing: PreparedStatement,
    untrack_processing: PreparedStatement,
    processing_since: PreparedStatement,
    clear_payment_event: PreparedStatement,
    add_refunded: PreparedStatement,
    claim_refund: PreparedStatement,
    insert_refund: PreparedStatement,
    select_refund: PreparedStatement,
    payment_refund: PreparedStatement,
    index_refund: PreparedStatement,
    refund_by_provider: PreparedStatement,
    note_refund_provider: PreparedStatement,
    settle_refund: PreparedStatement,
    clear_refund_event: PreparedStatement,
    webhook_state: PreparedStatement,
    insert_sandbox: PreparedStatement,
    claim_sandbox_key: PreparedStatement,
    select_sandbox: PreparedStatement,
}

impl CqlPayments {
    pub async fn new(cql: Cql) -> Result<Self, StorageError> {
        Ok(Self {
            outbox: Arc::new(CqlOutbox::new(&cql).await?),
            inbox: CqlInbox::new(&cql, WEBHOOK_LEASE).await?,
            claim_attempt: cql
                .prepare(
                    "INSERT INTO payments_by_order (order_id, attempt, payment_id) VALUES (?, ?, ?) IF NOT EXISTS",
                )
                .await?,
            insert_payment: cql
                .prepare(&format!(
                    "INSERT INTO payments ({PAYMENT_COLUMNS}) VALUES ({}) IF NOT EXISTS",
                    markers(18)
                ))
                .await?,
            select_payment: cql
                .prepare(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = ?"))
                .await?,
            order_attempts: cql
                .prepare("SELECT payment_id FROM payments_by_order WHERE order_id = ? LIMIT ?")
                .await?,
            index_payment: cql
                .prepare(
                    "INSERT INTO payments_by_provider_id (provider_payment_id, payment_id) VALUES (?, ?)",
                )
                .await?,
            payment_by_provider: cql
                .prepare(
                    "SELECT payment_id FROM payments_by_provider_id WHERE provider_payment_id = ?",
                )
                .await?,
            note_payment_provider: cql
                .prepare(
                    "UPDATE payments SET provider_payment_id = ?, updated_at = ? WHERE id = ? IF provider_payment_id = ''",
                )
                .await?,
            settle_payment: cql
                .prepare(
                    "UPDATE payments SET provider_payment_id = ?, status = ?, card_brand = ?, card_last4 = ?, \
                     decline_code = ?, failure_message = ?, updated_at = ?, pending_event = ? \
                     WHERE id = ? IF status = 'processing'",
                )
                .await?,
            track_processing: cql
                .prepare("INSERT INTO payments_processing (shard, id, since) VALUES (?, ?, ?)")
                .await?,
            untrack_processing: cql
                .prepare("DELETE FROM payments_processing WHERE shard = ? AND id = ?")
                .await?,
            processing_since: cql
                .prepare(
                    "SELECT id FROM payments_processing WHERE shard = ? AND since < ? LIMIT ? \
                     ALLOW FILTERING",
                )
                .await?,
            clear_payment_event: cql
                .prepare("UPDATE payments SET pending_event = null WHERE id = ? IF pending_event = ?")
                .await?,
            add_refunded: cql
                .prepare(
                    "UPDATE payments SET amount_refunded_minor = ?, status = ?, updated_at = ? \
                     WHERE id = ? IF status = ? AND amount_refunded_minor = ?",
                )
                .await?,
            claim_refund: cql
                .prepare(
                    "INSERT INTO refunds_by_payment (payment_id, refund_id) VALUES (?, ?) IF NOT EXISTS",
                )
                .await?,
            insert_refund: cql
                .prepare(&format!(
                    "INSERT INTO refunds ({REFUND_COLUMNS}) VALUES ({}) IF NOT EXISTS",
                    markers(12)
                ))
                .await?,
            select_refund: cql
                .prepare(&format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = ?"))
                .await?,
            payment_refund: cql
                .prepare("SELECT refund_id FROM refunds_by_payment WHERE payment_id = ?")
                .await?,
            index_refund: cql
                .prepare(
                    "INSERT INTO refunds_by_provider_id (provider_refund_id, refund_id) VALUES (?, ?)",
                )
                .await?,
            refund_by_provider: cql
                .prepare("SELECT refund_id FROM refunds_by_provider_id WHERE provider_refund_id = ?")
                .await?,
            note_refund_provider: cql
                .prepare(
                    "UPDATE refunds SET provider_refund_id = ?, updated_at = ? WHERE id = ? IF provider_refund_id = ''",
                )
                .await?,
            settle_refund: cql
                .prepare(
                    "UPDATE refunds SET provider_refund_id = ?, status = ?, failure_reason = ?, updated_at = ?, \
                     pending_event = ? WHERE id = ? IF status = 'pending'",
                )
                .await?,
            clear_refund_event: cql
                .prepare("UPDATE refunds SET pending_event = null WHERE id = ? IF pending_event = ?")
                .await?,
            webhook_state: cql
                .prepare("SELECT state FROM processed_events WHERE subscription = ? AND event_id = ?")
                .await?,
            insert_sandbox: cql
                .prepare(
                    "INSERT INTO sandbox_objects (id, idempotency_key, body, created_at) VALUES (?, ?, ?, ?)",
                )
                .await?,
            claim_sandbox_key: cql
                .prepare("INSERT INTO sandbox_keys (idempotency_key, id) VALUES (?, ?) IF NOT EXISTS")
                .await?,
            select_sandbox: cql
                .prepare(
                    "SELECT id, idempotency_key, body, created_at FROM sandbox_objects WHERE id = ?",
                )
                .await?,
            cql,
        })
    }

    /// The outbox to relay this store's events from.
    pub fn outbox(&self) -> Arc<CqlOutbox> {
        self.outbox.clone()
    }

    async fn payment_row(&self, id: Uuid) -> Result<Option<PaymentRow>, StoreError> {
        Ok(self
            .cql
            .first_row::<PaymentRow>(&self.select_payment, (id,))
            .await?)
    }

    async fn refund_row(&self, id: Uuid) -> Result<Option<RefundRow>, StoreError> {
        Ok(self
            .cql
            .first_row::<RefundRow>(&self.select_refund, (id,))
            .await?)
    }

    /// The holder of an LWT claim: ours when it applied, the earlier one's otherwise.
    async fn claim(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        column: &str,
        ours: Uuid,
    ) -> Result<Uuid, StoreError> {
        let claimed = lwt_outcome(self.cql.execute(statement, values).await?)?;
        if claimed.applied {
            return Ok(ours);
        }
        match claimed.get(column) {
            Some(CqlValue::Uuid(holder)) => Ok(*holder),
            other => {
                Err(StorageError::Corrupt(format!("claim column {column} is {other:?}")).into())
            }
        }
    }

    /// Writes an event that waits in a record to the outbox, then clears it from the record.
    async fn flush(
        &self,
        pending: Option<&str>,
        clear: &PreparedStatement,
        id: Uuid,
    ) -> Result<(), StoreError> {
        let Some(pending) = pending else {
            return Ok(());
        };
        let event: Event = serde_json::from_str(pending)?;
        let row =
            OutboxRow::new(TOPIC, &event).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        self.cql.execute(self.outbox.insert(), row).await?;
        self.cql.execute(clear, (id, pending)).await?;
        Ok(())
    }

    /// Runs `effect` under a claim on `webhook` (when given): `None` when the webhook had been
    /// processed. A failed effect gives the claim back, so the provider's retry can take it.
    async fn once<T, F>(&self, webhook: Option<&str>, effect: F) -> Result<Option<T>, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let Some(id) = webhook else {
            return effect.await.map(Some);
        };
        match self.inbox.claim(WEBHOOKS, id).await? {
            Claim::Done => Ok(None),
            // Another delivery of the same event is being handled; the provider retries later.
            Claim::Busy => Err(StoreError::Conflict),
            Claim::Acquired => match effect.await {
                Ok(value) => {
                    self.inbox.complete(WEBHOOKS, id).await?;
                    Ok(Some(value))
                }
                Err(error) => {
                    if let Err(release) = self.inbox.release(WEBHOOKS, id).await {
                        tracing::warn!(%release, "could not release a webhook claim");
                    }
                    Err(error)
                }
            },
        }
    }

    async fn settle_payment(
        &self,
        settlement: &Settlement,
        event: &Event,
    ) -> Result<Settled<PaymentRecord>, StoreError> {
        let current = self
            .payment_row(settlement.payment_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let record = current.record()?;
        if record.status == Status::Processing {
            let next = settled(record, settlement);
            let pending = serde_json::to_string(event)?;
            let written = self
                .cql
                .execute(
                    &self.settle_payment,
                    (
                        &next.provider_payment_id,
                        next.status.name(),
                        &next.card_brand,
                        &next.card_last4,
                        &next.decline_code,
                        &next.failure_message,
                        next.updated_at_ms,
                        &pending,
                        next.id,
                    ),
                )
                .await?;
            if lwt_applied(written)? {
                if !next.provider_payment_id.is_empty() {
                    self.cql
                        .execute(&self.index_payment, (&next.provider_payment_id, next.id))
                        .await?;
                }
                self.flush(Some(&pending), &self.clear_payment_event, next.id)
                    .await?;
                self.untrack(next.id).await?;
                return Ok(Settled::Applied(next));
            }
        }
        // Settled already (perhaps just now, by another path): finish what it may have left.
        let current = self
            .payment_row(settlement.payment_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        self.flush(
            current.pending_event.as_deref(),
            &self.clear_payment_event,
            current.id,
        )
        .await?;
        let record = current.record()?;
        if record.status != Status::Processing {
            self.untrack(record.id).await?;
        }
        Ok(Settled::Unchanged(record))
    }

    /// Lists a processing payment for the sweeper.
    async fn track(&self, id: Uuid, since_ms: i64) -> Result<(), StoreError> {
        self.cql
            .execute(&self.track_processing, (shard(id), id, since_ms))
            .await?;
        Ok(())
    }

    /// Drops a payment from the sweeper's list.
    async fn untrack(&self, id: Uuid) -> Result<(), StoreError> {
        self.cql
            .execute(&self.untrack_processing, (shard(id), id))
            .await?;
        Ok(())
    }

    async fn settle_refund_now(
        &self,
        settlement: &RefundSettlement,
        event: &Event,
    ) -> Result<Settled<RefundRecord>, StoreError> {
        let current = self
            .refund_row(settlement.refund_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let record = current.record()?;
        if record.status == RefundState::Pending {
            let next = refund_settled(record, settlement);
            let pending = serde_json::to_string(event)?;
            let written = self
                .cql
                .execute(
                    &self.settle_refund,
                    (
                        &next.provider_refund_id,
                        next.status.name(),
                        &next.failure_reason,
                        next.updated_at_ms,
                        &pending,
                        next.id,
                    ),
                )
                .await?;
            if lwt_applied(written)? {
                if !next.provider_refund_id.is_empty() {
                    self.cql
                        .execute(&self.index_refund, (&next.provider_refund_id, next.id))
                        .await?;
                }
                self.count_refund(&next, settlement.now_ms).await?;
                self.flush(Some(&pending), &self.clear_refund_event, next.id)
                    .await?;
                return Ok(Settled::Applied(next));
            }
        }
        let current = self
            .refund_row(settlement.refund_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let record = current.record()?;
        self.count_refund(&record, settlement.now_ms).await?;
        self.flush(
            current.pending_event.as_deref(),
            &self.clear_refund_event,
            current.id,
        )
        .await?;
        Ok(Settled::Unchanged(record))
    }

    /// Brings the payment's refunded amount (and status) in line with its succeeded refund.
    /// Idempotent, so a settle that stopped halfway is completed by the next one.
    async fn count_refund(&self, refund: &RefundRecord, now_ms: i64) -> Result<(), StoreError> {
        if refund.status != RefundState::Succeeded {
            return Ok(());
        }
        loop {
            let payment = self
                .payment_row(refund.payment_id)
                .await?
                .ok_or(StoreError::NotFound)?
                .record()?;
            // One refund per payment: its amount is the payment's refunded amount.
            if payment.amount_refunded_minor >= refund.amount_minor
                || !matches!(payment.status, Status::Succeeded | Status::Refunded)
            {
                return Ok(());
            }
            let status = if refund.amount_minor >= payment.amount_minor {
                Status::Refunded
            } else {
                payment.status
            };
            let written = self
                .cql
                .execute(
                    &self.add_refunded,
                    (
                        refund.amount_minor,
                        status.name(),
                        now_ms,
                        payment.id,
                        payment.status.name(),
                        payment.amount_refunded_minor,
                    ),
                )
                .await?;
            if lwt_applied(written)? {
                return Ok(());
            }
        }
    }
}

/// `?, ?, …` for `count` values.
fn markers(count: usize) -> String {
    vec!["?"; count].join(", ")
}

#[async_trait]
impl PaymentStore for CqlPayments {
    async fn begin_payment(&self, record: &PaymentRecord) -> Result<PaymentRecord, StoreError> {
        let holder = self
            .claim(
                &self.claim_attempt,
                (record.order_id, record.attempt, record.id),
                "payment_id",
                record.id,
            )
            .await?;
        if holder != record.id
            && let Some(stored) = self.payment_row(holder).await?
        {
            let stored = stored.record()?;
            if stored.status == Status::Processing {
                // Listed again, in case a sweep dropped the row while its writer was stalled.
                self.track(holder, stored.updated_at_ms).await?;
            }
            return Ok(stored);
        }
        // Listed before it is written, so no processing payment goes without its row.
        if record.status == Status::Processing {
            self.track(holder, record.updated_at_ms).await?;
        }
        // Under the holder's id: completes a claim whose writer died, never overwrites a record.
        let mut row = PaymentRow::of(record);
        row.id = holder;
        self.cql.execute(&self.insert_payment, &row).await?;
        self.payment_row(holder)
            .await?
            .ok_or(StoreError::NotFound)?
            .record()
    }

    async fn payment(&self, id: Uuid) -> Result<Option<PaymentRecord>, StoreError> {
        self.payment_row(id)
            .await?
            .map(|row| row.record())
            .transpose()
    }

    async fn payment_by_provider_id(
        &self,
        provider_payment_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        if provider_payment_id.is_empty() {
            return Ok(None);
        }
        let Some((id,)) = self
            .cql
            .first_row::<(Uuid,)>(&self.payment_by_provider, (provider_payment_id,))
            .await?
        else {
            return Ok(None);
        };
        self.payment(id).await
    }

    async fn order_payments(&self, order_id: Uuid) -> Result<Vec<PaymentRecord>, StoreError> {
        let ids = self
            .cql
            .rows::<(Uuid,)>(&self.order_attempts, (order_id, MAX_ORDER_PAYMENTS as i32))
            .await?;
        let mut payments = Vec::with_capacity(ids.len());
        for (id,) in ids {
            // A claim whose record was never written is skipped until a redelivery writes it.
            if let Some(payment) = self.payment(id).await? {
                payments.push(payment);
            }
        }
        Ok(payments)
    }

    async fn note_provider_payment_id(
        &self,
        payment_id: Uuid,
        provider_payment_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.cql
            .execute(
                &self.note_payment_provider,
                (provider_payment_id, now_ms, payment_id),
            )
            .await?;
        self.cql
            .execute(&self.index_payment, (provider_payment_id, payment_id))
            .await?;
        Ok(())
    }

    async fn stale_processing(
        &self,
        older_than_ms: i64,
        limit: usize,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let per_shard = i32::try_from(limit).unwrap_or(i32::MAX);
        let mut stale = Vec::new();
        for shard in 0..PROCESSING_SHARDS {
            let ids = self
                .cql
                .rows::<(Uuid,)>(&self.processing_since, (shard, older_than_ms, per_shard))
                .await?;
            for (id,) in ids {
                let Some(row) = self.payment_row(id).await? else {
                    // A claim whose writer died before writing the payment: a redelivery lists
                    // it again.
                    self.untrack(id).await?;
                    continue;
                };
                let payment = match row.record() {
                    Ok(payment) => payment,
                    Err(error) => {
                        tracing::warn!(payment_id = %id, %error, "unreadable processing payment skipped");
                        continue;
                    }
                };
                if payment.status != Status::Processing {
                    // Settled; the row outlived it.
                    self.untrack(id).await?;
                } else if payment.updated_at_ms < older_than_ms {
                    stale.push(payment);
                }
            }
        }
        stale.sort_by_key(|payment| payment.updated_at_ms);
        stale.truncate(limit);
        Ok(stale)
    }

    async fn settle(
        &self,
        settlement: &Settlement,
        event: &Event,
        webhook: Option<&str>,
    ) -> Result<Settled<PaymentRecord>, StoreError> {
        if self.payment_row(settlement.payment_id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        Ok(self
            .once(webhook, self.settle_payment(settlement, event))
            .await?
            .unwrap_or(Settled::Duplicate))
    }

    async fn begin_refund(&self, record: &RefundRecord) -> Result<RefundRecord, StoreError> {
        if self.payment_row(record.payment_id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        let holder = self
            .claim(
                &self.claim_refund,
                (record.payment_id, record.id),
                "refund_id",
                record.id,
            )
            .await?;
        let mut row = RefundRow::of(record);
        row.id = holder;
        self.cql.execute(&self.insert_refund, &row).await?;
        self.refund_row(holder)
            .await?
            .ok_or(StoreError::NotFound)?
            .record()
    }

    async fn refund(&self, id: Uuid) -> Result<Option<RefundRecord>, StoreError> {
        self.refund_row(id)
            .await?
            .map(|row| row.record())
            .transpose()
    }

    async fn refund_by_provider_id(
        &self,
        provider_refund_id: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        if provider_refund_id.is_empty() {
            return Ok(None);
        }
        let Some((id,)) = self
            .cql
            .first_row::<(Uuid,)>(&self.refund_by_provider, (provider_refund_id,))
            .await?
        else {
            return Ok(None);
        };
        self.refund(id).await
    }

    async fn refunds(&self, payment_id: Uuid) -> Result<Vec<RefundRecord>, StoreError> {
        let Some((id,)) = self
            .cql
            .first_row::<(Uuid,)>(&self.payment_refund, (payment_id,))
            .await?
        else {
            return Ok(Vec::new());
        };
        Ok(self.refund(id).await?.into_iter().collect())
    }

    async fn note_provider_refund_id(
        &self,
        refund_id: Uuid,
        provider_refund_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.cql
            .execute(
                &self.note_refund_provider,
                (provider_refund_id, now_ms, refund_id),
            )
            .await?;
        self.cql
            .execute(&self.index_refund, (provider_refund_id, refund_id))
            .await?;
        Ok(())
    }

    async fn settle_refund(
        &self,
        settlement: &RefundSettlement,
        event: &Event,
        webhook: Option<&str>,
    ) -> Result<Settled<RefundRecord>, StoreError> {
        if self.refund_row(settlement.refund_id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        Ok(self
            .once(webhook, self.settle_refund_now(settlement, event))
            .await?
            .unwrap_or(Settled::Duplicate))
    }

    async fn note_webhook(&self, event_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .once(Some(event_id), async { Ok::<_, StoreError>(()) })
            .await?
            .is_some())
    }

    async fn webhook_seen(&self, event_id: &str) -> Result<bool, StoreError> {
        let state = self
            .cql
            .first_row::<(Option<String>,)>(&self.webhook_state, (WEBHOOKS, event_id))
            .await?;
        Ok(matches!(state, Some((Some(state),)) if state == "done"))
    }

    async fn sandbox_create(&self, object: &SandboxObject) -> Result<SandboxObject, StoreError> {
        // The object first, then the key: a key always leads to a stored object.
        self.cql
            .execute(
                &self.insert_sandbox,
                (
                    &object.id,
                    &object.idempotency_key,
                    &object.body,
                    object.created_at_ms,
                ),
            )
            .await?;
        let claimed = lwt_outcome(
            self.cql
                .execute(
                    &self.claim_sandbox_key,
                    (&object.idempotency_key, &object.id),
                )
                .await?,
        )?;
        if claimed.applied {
            return Ok(object.clone());
        }
        let holder = match claimed.get("id") {
            Some(CqlValue::Text(holder)) => holder.clone(),
            other => {
                return Err(
                    StorageError::Corrupt(format!("sandbox key holder is {other:?}")).into(),
                );
            }
        };
        self.sandbox_get(&holder).await?.ok_or(StoreError::NotFound)
    }

    async fn sandbox_get(&self, id: &str) -> Result<Option<SandboxObject>, StoreError> {
        Ok(self
            .cql
            .first_row::<(String, String, String, i64)>(&self.select_sandbox, (id,))
            .await?
            .map(|(id, idempotency_key, body, created_at_ms)| SandboxObject {
                id,
                idempotency_key,
                body,
                created_at_ms,
            }))
    }
}
