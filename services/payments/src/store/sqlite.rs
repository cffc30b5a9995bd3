//! Payments on SQLite (`shopmesh up`): unique constraints for (order, attempt) and one refund
//! per payment; every outcome, its event and the webhook id that caused it commit in one
//! transaction.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, Transaction, params};
use shopmesh_events::{Event, inbox, outbox};
use shopmesh_storage::sqlite::{Sqlite, unreadable, uuid_at};
use uuid::Uuid;

use super::{
    MAX_ORDER_PAYMENTS, MAX_REFUNDS, PaymentRecord, PaymentStore, RefundOutcome, RefundRecord,
    RefundSettlement, RefundState, SandboxObject, Settled, Settlement, Status, StoreError, TOPIC,
    WEBHOOKS, provider_from, provider_name, refund_settled, settled,
};

const PAYMENT_COLUMNS: &str = "id, order_id, user_id, provider, provider_payment_id, attempt, status, currency, amount_minor, amount_refunded_minor, payment_method, card_brand, card_last4, decline_code, failure_message, created_at, updated_at";
const REFUND_COLUMNS: &str = "id, payment_id, order_id, provider_refund_id, currency, amount_minor, status, reason, failure_reason, created_at, updated_at";

#[derive(Debug, Clone)]
pub struct SqlitePayments(pub Sqlite);

fn payment(row: &Row<'_>) -> rusqlite::Result<PaymentRecord> {
    Ok(PaymentRecord {
        id: uuid_at(row, 0)?,
        order_id: uuid_at(row, 1)?,
        user_id: uuid_at(row, 2)?,
        provider: provider_from(&row.get::<_, String>(3)?).map_err(|e| unreadable(3, e))?,
        provider_payment_id: row.get(4)?,
        attempt: row.get(5)?,
        status: Status::from_name(&row.get::<_, String>(6)?).map_err(|e| unreadable(6, e))?,
        currency: row.get(7)?,
        amount_minor: row.get(8)?,
        amount_refunded_minor: row.get(9)?,
        payment_method: row.get(10)?,
        card_brand: row.get(11)?,
        card_last4: row.get(12)?,
        decline_code: row.get(13)?,
        failure_message: row.get(14)?,
        created_at_ms: row.get(15)?,
        updated_at_ms: row.get(16)?,
    })
}

fn refund(row: &Row<'_>) -> rusqlite::Result<RefundRecord> {
    Ok(RefundRecord {
        id: uuid_at(row, 0)?,
        payment_id: uuid_at(row, 1)?,
        order_id: uuid_at(row, 2)?,
        provider_refund_id: row.get(3)?,
        currency: row.get(4)?,
        amount_minor: row.get(5)?,
        status: RefundState::from_name(&row.get::<_, String>(6)?).map_err(|e| unreadable(6, e))?,
        reason: row.get(7)?,
        failure_reason: row.get(8)?,
        created_at_ms: row.get(9)?,
        updated_at_ms: row.get(10)?,
    })
}

fn payment_in(tx: &Transaction<'_>, id: Uuid) -> Result<Option<PaymentRecord>, StoreError> {
    Ok(tx
        .prepare_cached(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = ?1"
        ))?
        .query_row([id.to_string()], payment)
        .optional()?)
}

fn refund_in(tx: &Transaction<'_>, id: Uuid) -> Result<Option<RefundRecord>, StoreError> {
    Ok(tx
        .prepare_cached(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE id = ?1"
        ))?
        .query_row([id.to_string()], refund)
        .optional()?)
}

/// Remembers `webhook` in the transaction; false when it had been processed.
fn first_webhook(tx: &Transaction<'_>, webhook: Option<&str>) -> Result<bool, StoreError> {
    match webhook {
        Some(id) => Ok(inbox::first_delivery(tx, WEBHOOKS, id)?),
        None => Ok(true),
    }
}

#[async_trait]
impl PaymentStore for SqlitePayments {
    async fn begin_payment(&self, record: &PaymentRecord) -> Result<PaymentRecord, StoreError> {
        let record = record.clone();
        self.0
            .write(move |tx| {
                tx.prepare_cached(&format!(
                    "INSERT INTO payments ({PAYMENT_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
                     ON CONFLICT (order_id, attempt) DO NOTHING"
                ))?
                .execute(params![
                    record.id.to_string(),
                    record.order_id.to_string(),
                    record.user_id.to_string(),
                    provider_name(record.provider),
                    record.provider_payment_id,
                    record.attempt,
                    record.status.name(),
                    record.currency,
                    record.amount_minor,
                    record.amount_refunded_minor,
                    record.payment_method,
                    record.card_brand,
                    record.card_last4,
                    record.decline_code,
                    record.failure_message,
                    record.created_at_ms,
                    record.updated_at_ms
                ])?;
                Ok(tx
                    .prepare_cached(&format!(
                        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = ?1 AND attempt = ?2"
                    ))?
                    .query_row(
                        params![record.order_id.to_string(), record.attempt],
                        payment,
                    )?)
            })
            .await
    }

    async fn payment(&self, id: Uuid) -> Result<Option<PaymentRecord>, StoreError> {
        self.0
            .read(move |db| {
                Ok(db
                    .prepare_cached(&format!(
                        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = ?1"
                    ))?
                    .query_row([id.to_string()], payment)
                    .optional()?)
            })
            .await
    }

    async fn payment_by_provider_id(
        &self,
        provider_payment_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        if provider_payment_id.is_empty() {
            return Ok(None);
        }
        let provider_payment_id = provider_payment_id.to_owned();
        self.0
            .read(move |db| {
                Ok(db
                    .prepare_cached(&format!(
                        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE provider_payment_id = ?1 LIMIT 1"
                    ))?
                    .query_row([provider_payment_id], payment)
                    .optional()?)
            })
            .await
    }

    async fn order_payments(&self, order_id: Uuid) -> Result<Vec<PaymentRecord>, StoreError> {
        self.0
            .read(move |db| {
                let mut statement = db.prepare_cached(&format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = ?1 ORDER BY attempt LIMIT ?2"
                ))?;
                let rows = statement
                    .query_map(
                        params![order_id.to_string(), MAX_ORDER_PAYMENTS as i64],
                        payment,
                    )?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await
    }

    async fn note_provider_payment_id(
        &self,
        payment_id: Uuid,
        provider_payment_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let provider_payment_id = provider_payment_id.to_owned();
        self.0
            .write(move |tx| {
                tx.prepare_cached(
                    "UPDATE payments SET provider_payment_id = ?1, updated_at = ?2
                     WHERE id = ?3 AND provider_payment_id = ''",
                )?
                .execute(params![
                    provider_payment_id,
                    now_ms,
                    payment_id.to_string()
                ])?;
                Ok(())
            })
            .await
    }

    async fn stale_processing(
        &self,
        older_than_ms: i64,
        limit: usize,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.0
            .read(move |db| {
                let mut statement = db.prepare_cached(&format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments
                     WHERE status = 'processing' AND updated_at < ?1
                     ORDER BY updated_at LIMIT ?2"
                ))?;
                let rows = statement
                    .query_map(params![older_than_ms, limit], payment)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await
    }

    async fn settle(
        &self,
        settlement: &Settlement,
        event: &Event,
        webhook: Option<&str>,
    ) -> Result<Settled<PaymentRecord>, StoreError> {
        let (settlement, event) = (settlement.clone(), event.clone());
        let webhook = webhook.map(str::to_owned);
        self.0
            .write(move |tx| {
                let current =
                    payment_in(tx, settlement.payment_id)?.ok_or(StoreError::NotFound)?;
                if !first_webhook(tx, webhook.as_deref())? {
                    return Ok(Settled::Duplicate);
                }
                if current.status != Status::Processing {
                    return Ok(Settled::Unchanged(current));
                }
                let next = settled(current, &settlement);
                tx.prepare_cached(
                    "UPDATE payments SET provider_payment_id = ?1, status = ?2, card_brand = ?3, card_last4 = ?4,
                     decline_code = ?5, failure_message = ?6, updated_at = ?7
                     WHERE id = ?8 AND status = 'processing'",
                )?
                .execute(params![
                    next.provider_payment_id,
                    next.status.name(),
                    next.card_brand,
                    next.card_last4,
                    next.decline_code,
                    next.failure_message,
                    next.updated_at_ms,
                    next.id.to_string()
                ])?;
                outbox::enqueue(tx, TOPIC, &event)?;
                Ok(Settled::Applied(next))
            })
            .await
    }

    async fn begin_refund(&self, record: &RefundRecord) -> Result<RefundRecord, StoreError> {
        let record = record.clone();
        self.0
            .write(move |tx| {
                if payment_in(tx, record.payment_id)?.is_none() {
                    return Err(StoreError::NotFound);
                }
                tx.prepare_cached(&format!(
                    "INSERT INTO refunds ({REFUND_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (payment_id) DO NOTHING"
                ))?
                .execute(params![
                    record.id.to_string(),
                    record.payment_id.to_string(),
                    record.order_id.to_string(),
                    record.provider_refund_id,
                    record.currency,
                    record.amount_minor,
                    record.status.name(),
                    record.reason,
                    record.failure_reason,
                    record.created_at_ms,
                    record.updated_at_ms
                ])?;
                Ok(tx
                    .prepare_cached(&format!(
                        "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = ?1"
                    ))?
                    .query_row([record.payment_id.to_string()], refund)?)
            })
            .await
    }

    async fn refund(&self, id: Uuid) -> Result<Option<RefundRecord>, StoreError> {
        self.0
            .read(move |db| {
                Ok(db
                    .prepare_cached(&format!(
                        "SELECT {REFUND_COLUMNS} FROM refunds WHERE id = ?1"
                    ))?
                    .query_row([id.to_string()], refund)
                    .optional()?)
            })
            .await
    }

    async fn refund_by_provider_id(
        &self,
        provider_refund_id: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        if provider_refund_id.is_empty() {
            return Ok(None);
        }
        let provider_refund_id = provider_refund_id.to_owned();
        self.0
            .read(move |db| {
                Ok(db
                    .prepare_cached(&format!(
                        "SELECT {REFUND_COLUMNS} FROM refunds WHERE provider_refund_id = ?1 LIMIT 1"
                    ))?
                    .query_row([provider_refund_id], refund)
                    .optional()?)
            })
            .await
    }

    async fn refunds(&self, payment_id: Uuid) -> Result<Vec<RefundRecord>, StoreError> {
        self.0
            .read(move |db| {
                let mut statement = db.prepare_cached(&format!(
                    "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = ?1 ORDER BY created_at, id LIMIT ?2"
                ))?;
                let rows = statement
                    .query_map(
                        params![payment_id.to_string(), MAX_REFUNDS as i64],
                        refund,
                    )?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await
    }

    async fn note_provider_refund_id(
        &self,
        refund_id: Uuid,
        provider_refund_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let provider_refund_id = provider_refund_id.to_owned();
        self.0
            .write(move |tx| {
                tx.prepare_cached(
                    "UPDATE refunds SET provider_refund_id = ?1, updated_at = ?2
                     WHERE id = ?3 AND provider_refund_id = ''",
                )?
                .execute(params![
                    provider_refund_id,
                    now_ms,
                    refund_id.to_string()
                ])?;
                Ok(())
            })
            .await
    }

    async fn settle_refund(
        &self,
        settlement: &RefundSettlement,
        event: &Event,
        webhook: Option<&str>,
    ) -> Result<Settled<RefundRecord>, StoreError> {
        let (settlement, event) = (settlement.clone(), event.clone());
        let webhook = webhook.map(str::to_owned);
        self.0
            .write(move |tx| {
                let current = refund_in(tx, settlement.refund_id)?.ok_or(StoreError::NotFound)?;
                if !first_webhook(tx, webhook.as_deref())? {
                    return Ok(Settled::Duplicate);
                }
                if current.status != RefundState::Pending {
                    return Ok(Settled::Unchanged(current));
                }
                let next = refund_settled(current, &settlement);
                tx.prepare_cached(
                    "UPDATE refunds SET provider_refund_id = ?1, status = ?2, failure_reason = ?3, updated_at = ?4
                     WHERE id = ?5 AND status = 'pending'",
                )?
                .execute(params![
                    next.provider_refund_id,
                    next.status.name(),
                    next.failure_reason,
                    next.updated_at_ms,
                    next.id.to_string()
                ])?;
                if settlement.outcome == RefundOutcome::Succeeded {
                    // Refunded in full: succeeded → refunded; a partial refund only adds up.
                    tx.prepare_cached(
                        "UPDATE payments SET amount_refunded_minor = amount_refunded_minor + ?1,
                         status = CASE WHEN status = 'succeeded' AND amount_refunded_minor + ?1 >= amount_minor
                                       THEN 'refunded' ELSE status END,
                         updated_at = ?2
                         WHERE id = ?3",
                    )?
                    .execute(params![
                        next.amount_minor,
                        settlement.now_ms,
                        next.payment_id.to_string()
                    ])?;
                }
                outbox::enqueue(tx, TOPIC, &event)?;
                Ok(Settled::Applied(next))
            })
            .await
    }

    async fn note_webhook(&self, event_id: &str) -> Result<bool, StoreError> {
        let event_id = event_id.to_owned();
        self.0
            .write(move |tx| Ok(inbox::first_delivery(tx, WEBHOOKS, &event_id)?))
            .await
    }

    async fn webhook_seen(&self, event_id: &str) -> Result<bool, StoreError> {
        let event_id = event_id.to_owned();
        self.0
            .read(move |db| {
                Ok(db
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM processed_events WHERE subscription = ?1 AND event_id = ?2)",
                    )?
                    .query_row(params![WEBHOOKS, event_id], |row| row.get(0))?)
            })
            .await
    }

    async fn sandbox_create(&self, object: &SandboxObject) -> Result<SandboxObject, StoreError> {
        let object = object.clone();
        self.0
            .write(move |tx| {
                tx.prepare_cached(
                    "INSERT INTO sandbox_objects (id, idempotency_key, body, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (idempotency_key) DO NOTHING",
                )?
                .execute(params![
                    object.id,
                    object.idempotency_key,
                    object.body,
                    object.created_at_ms
                ])?;
                Ok(tx
                    .prepare_cached(
                        "SELECT id, idempotency_key, body, created_at FROM sandbox_objects WHERE idempotency_key = ?1",
                    )?
                    .query_row([&object.idempotency_key], sandbox_object)?)
            })
            .await
    }

    async fn sandbox_get(&self, id: &str) -> Result<Option<SandboxObject>, StoreError> {
        let id = id.to_owned();
        self.0
            .read(move |db| {
                Ok(db
                    .prepare_cached(
                        "SELECT id, idempotency_key, body, created_at FROM sandbox_objects WHERE id = ?1",
                    )?
                    .query_row([id], sandbox_object)
                    .optional()?)
            })
            .await
    }
}

fn sandbox_object(row: &Row<'_>) -> rusqlite::Result<SandboxObject> {
    Ok(SandboxObject {
        id: row.get(0)?,
        idempotency_key: row.get(1)?,
        body: row.get(2)?,
        created_at_ms: row.get(3)?,
    })
}
