//! Orders on CQL. An idempotency key is claimed with a lightweight transaction, then the order,
//! its listing entry and its event go in one logged batch. Changes are conditional on the
//! version (an LWT), which cannot share a batch with the outbox: a change carries its events in
//! the order row (`pending`), and they move to the outbox right after. A crash in between
//! leaves them in the row, and the next read of the order moves them (the saga event that
//! caused the change is redelivered, and reads the order again). A saga event is claimed in the
//! inbox first, so a redelivery does not apply twice.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use shopmesh_events::inbox::{Claim, CqlInbox};
use shopmesh_events::outbox::{CqlOutbox, OutboxRow};
use shopmesh_storage::StorageError;
use shopmesh_storage::cql::{Cql, lwt_applied, lwt_outcome};
use uuid::Uuid;

use super::{
    Created, Cursor, IdempotencyKey, OrderRecord, OrderStore, Outgoing, PURCHASED, Processed,
    StoreError, status_from,
};
use crate::state::Status;

const COLUMNS: &str = "id, user_id, status, body, created_at, updated_at, version";
/// A key whose order never appeared this long after the claim belongs to a writer that died.
const ABANDONED_CLAIM_MS: i64 = 60_000;
/// How long a saga event claimed by a consumer that died stays claimed.
const INBOX_LEASE: Duration = Duration::from_secs(60);

type OrderRow = (Uuid, Uuid, String, String, i64, i64, i64, Option<String>);

/// An event waiting in an order row for the outbox: its topic and the event.
type Parked = (String, shopmesh_events::Event);

pub struct CqlOrders {
    cql: Cql,
    outbox: Arc<CqlOutbox>,
    inbox: CqlInbox,
    claim_key: PreparedStatement,
    select_key: PreparedStatement,
    take_over_key: PreparedStatement,
    insert_order: PreparedStatement,
    insert_by_user: PreparedStatement,
    insert_product: PreparedStatement,
    select_order: PreparedStatement,
    update_order: PreparedStatement,
    clear_parked: PreparedStatement,
    list_by_user: PreparedStatement,
    purchases: PreparedStatement,
}

impl CqlOrders {
    pub async fn new(cql: Cql) -> Result<Self, StorageError> {
        Ok(Self {
            outbox: Arc::new(CqlOutbox::new(&cql).await?),
            inbox: CqlInbox::new(&cql, INBOX_LEASE).await?,
            claim_key: cql
                .prepare(
                    "INSERT INTO idempotency_keys (user_id, key, fingerprint, order_id, created_at) \
                     VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
                )
                .await?,
            select_key: cql
                .prepare(
                    "SELECT fingerprint, order_id FROM idempotency_keys WHERE user_id = ? AND key = ?",
                )
                .await?,
            take_over_key: cql
                .prepare(
                    "UPDATE idempotency_keys SET order_id = ?, created_at = ? \
                     WHERE user_id = ? AND key = ? IF order_id = ?",
                )
                .await?,
            insert_order: cql
                .prepare(&format!(
                    "INSERT INTO orders ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                ))
                .await?,
            insert_by_user: cql
                .prepare("INSERT INTO orders_by_user (user_id, created_at, id) VALUES (?, ?, ?)")
                .await?,
            insert_product: cql
                .prepare(
                    "INSERT INTO order_products (user_id, product_id, order_id) VALUES (?, ?, ?)",
                )
                .await?,
            select_order: cql
                .prepare(&format!("SELECT {COLUMNS}, pending FROM orders WHERE id = ?"))
                .await?,
            update_order: cql
                .prepare(
                    "UPDATE orders SET status = ?, body = ?, updated_at = ?, version = ?, pending = ? \
                     WHERE id = ? IF version = ?",
                )
                .await?,
            clear_parked: cql
                .prepare("UPDATE orders SET pending = null WHERE id = ? IF version = ?")
                .await?,
            list_by_user: cql
                .prepare(
                    "SELECT created_at, id FROM orders_by_user \
                     WHERE user_id = ? AND (created_at, id) < (?, ?) LIMIT ?",
                )
                .await?,
            purchases: cql
                .prepare("SELECT order_id FROM order_products WHERE user_id = ? AND product_id = ?")
                .await?,
            cql,
        })
    }

    /// The outbox this store writes, for the service's relay.
    pub fn outbox(&self) -> Arc<CqlOutbox> {
        self.outbox.clone()
    }

    async fn publish(&self, events: &[Outgoing]) -> Result<(), StoreError> {
        for outgoing in events {
            let row = OutboxRow::new(outgoing.topic, &outgoing.event)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?;
            self.cql.execute(self.outbox.insert(), row).await?;
        }
        Ok(())
    }

    /// Writes a new order: product index first (harmless alone, a purchase check reads the
    /// order), then the order, its listing entry and its first event together.
    async fn insert(&self, order: &OrderRecord, events: &[Outgoing]) -> Result<(), StoreError> {
        for line in &order.body.lines {
            self.cql
                .execute(
                    &self.insert_product,
                    (order.user_id, line.product_id, order.id),
                )
                .await?;
        }
        let (first, rest) = events
            .split_first()
            .ok_or_else(|| StorageError::Corrupt("a new order needs its event".into()))?;
        let row = OutboxRow::new(first.topic, &first.event)
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        self.cql
            .logged_batch(
                &[
                    &self.insert_order,
                    &self.insert_by_user,
                    self.outbox.insert(),
                ],
                (
                    (
                        order.id,
                        order.user_id,
                        order.status.as_str(),
                        serde_json::to_string(&order.body)?,
                        order.created_at_ms,
                        order.updated_at_ms,
                        order.version,
                    ),
                    (order.user_id, order.created_at_ms, order.id),
                    row,
                ),
            )
            .await?;
        self.publish(rest).await
    }
}

fn record(row: OrderRow) -> Result<OrderRecord, StoreError> {
    let (id, user_id, status, body, created_at_ms, updated_at_ms, version, _) = row;
    Ok(OrderRecord {
        id,
        user_id,
        status: status_from(&status)?,
        body: serde_json::from_str(&body)?,
        created_at_ms,
        updated_at_ms,
        version,
    })
}

#[async_trait]
impl OrderStore for CqlOrders {
    async fn create(
        &self,
        order: &OrderRecord,
        key: &IdempotencyKey,
        events: &[Outgoing],
    ) -> Result<Created, StoreError> {
        let claim = lwt_outcome(
            self.cql
                .execute(
                    &self.claim_key,
                    (
                        key.user_id,
                        &key.key,
                        &key.fingerprint,
                        order.id,
                        order.created_at_ms,
                    ),
                )
                .await?,
        )?;
        if claim.applied {
            self.insert(order, events).await?;
            return Ok(Created::New);
        }
        if !matches!(claim.get("fingerprint"), Some(CqlValue::Blob(f)) if *f == key.fingerprint) {
            return Ok(Created::KeyReused);
        }
        let Some(CqlValue::Uuid(holder)) = claim.get("order_id").cloned() else {
            return Err(StorageError::Corrupt("idempotency key without order".into()).into());
        };
        if let Some(existing) = self.order(holder).await? {
            return Ok(Created::Existing(Box::new(existing)));
        }
        // The first writer has not written the order (yet): wait for it, unless it is long gone.
        let claimed_at = match claim.get("created_at") {
            Some(CqlValue::BigInt(at)) => *at,
            _ => 0,
        };
        if order.created_at_ms - claimed_at < ABANDONED_CLAIM_MS {
            return Err(StoreError::Conflict);
        }
        let taken = self
            .cql
            .execute(
                &self.take_over_key,
                (order.id, order.created_at_ms, key.user_id, &key.key, holder),
            )
            .await?;
        if !lwt_applied(taken)? {
            return Err(StoreError::Conflict);
        }
        self.insert(order, events).await?;
        Ok(Created::New)
    }

    async fn keyed(&self, key: &IdempotencyKey) -> Result<Option<Created>, StoreError> {
        let used: Option<(Vec<u8>, Uuid)> = self
            .cql
            .first_row(&self.select_key, (key.user_id, &key.key))
            .await?;
        Ok(match used {
            None => None,
            Some((fingerprint, _)) if fingerprint != key.fingerprint => Some(Created::KeyReused),
            // Claimed, but the order may not be written yet: let `create` decide.
            Some((_, order_id)) => self
                .order(order_id)
                .await?
                .map(|existing| Created::Existing(Box::new(existing))),
        })
    }

    async fn order(&self, id: Uuid) -> Result<Option<OrderRecord>, StoreError> {
        let Some(row) = self
            .cql
            .first_row::<OrderRow>(&self.select_order, (id,))
            .await?
        else {
            return Ok(None);
        };
        if let Some(parked) = row.7.as_deref().filter(|p| !p.is_empty()) {
            // A change whose events did not reach the outbox (its writer died): move them now.
            let parked: Vec<Parked> = serde_json::from_str(parked)?;
            self.unpark(id, row.6, &parked).await?;
        }
        record(row).map(Some)
    }

    async fn list(
        &self,
        user_id: Uuid,
        status: Option<Status>,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let (mut at, mut id) = before.unwrap_or((i64::MAX, Uuid::max()));
        let mut found = Vec::with_capacity(limit);
        // With a status filter, read on in pages until the page is full or the user has no more.
        loop {
            let page = (limit.max(1) * 2).min(200);
            let entries: Vec<(i64, Uuid)> = self
                .cql
                .rows(&self.list_by_user, (user_id, at, id, page as i32))
                .await?;
            for (created_at, order_id) in &entries {
                if let Some(order) = self.order(*order_id).await?
                    && status.is_none_or(|wanted| order.status == wanted)
                {
                    found.push(order);
                    if found.len() == limit {
                        return Ok(found);
                    }
                }
                (at, id) = (*created_at, *order_id);
            }
            if entries.len() < page {
                return Ok(found);
            }
        }
    }

    async fn update(
        &self,
        order: &OrderRecord,
        events: &[Outgoing],
        processed: Option<Processed<'_>>,
    ) -> Result<bool, StoreError> {
        if let Some(processed) = processed {
            match self
                .inbox
                .claim(processed.subscription, processed.event_id)
                .await?
            {
                Claim::Acquired => {}
                Claim::Done => return Ok(false),
                Claim::Busy => return Err(StoreError::Conflict),
            }
        }
        let outcome = self.write(order, events).await;
        if let Some(processed) = processed {
            match &outcome {
                Ok(()) => {
                    self.inbox
                        .complete(processed.subscription, processed.event_id)
                        .await?
                }
                Err(_) => {
                    self.inbox
                        .release(processed.subscription, processed.event_id)
                        .await?
                }
            }
        }
        outcome.map(|()| true)
    }

    async fn purchase(&self, user_id: Uuid, product_id: Uuid) -> Result<Option<Uuid>, StoreError> {
        let candidates: Vec<(Uuid,)> = self
            .cql
            .rows(&self.purchases, (user_id, product_id))
            .await?;
        let mut newest: Option<OrderRecord> = None;
        for (order_id,) in candidates {
            if let Some(order) = self.order(order_id).await?
                && PURCHASED.contains(&order.status)
                && newest
                    .as_ref()
                    .is_none_or(|n| n.created_at_ms < order.created_at_ms)
            {
                newest = Some(order);
            }
        }
        Ok(newest.map(|order| order.id))
    }
}

impl CqlOrders {
    async fn write(&self, order: &OrderRecord, events: &[Outgoing]) -> Result<(), StoreError> {
        let parked: Vec<Parked> = events
            .iter()
            .map(|outgoing| (outgoing.topic.to_owned(), outgoing.event.clone()))
            .collect();
        let written = self
            .cql
            .execute(
                &self.update_order,
                (
                    order.status.as_str(),
                    serde_json::to_string(&order.body)?,
                    order.updated_at_ms,
                    order.version,
                    (!parked.is_empty())
                        .then(|| serde_json::to_string(&parked))
                        .transpose()?,
                    order.id,
                    order.version - 1,
                ),
            )
            .await?;
        if !lwt_applied(written)? {
            return Err(StoreError::Conflict);
        }
        self.unpark(order.id, order.version, &parked).await
    }

    /// Moves the events parked in an order row at `version` to the outbox, then clears them
    /// (unless the order changed meanwhile: the newer change parked its own).
    async fn unpark(&self, id: Uuid, version: i64, parked: &[Parked]) -> Result<(), StoreError> {
        if parked.is_empty() {
            return Ok(());
        }
        for (topic, event) in parked {
            let row =
                OutboxRow::new(topic, event).map_err(|e| StorageError::Corrupt(e.to_string()))?;
            self.cql.execute(self.outbox.insert(), row).await?;
        }
        self.cql.execute(&self.clear_parked, (id, version)).await?;
        Ok(())
    }
}
