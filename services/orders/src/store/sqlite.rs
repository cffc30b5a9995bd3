//! Orders on SQLite (`shopmesh up`): every change, its events and the processed saga event
//! commit in one transaction.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, Transaction, params};
use shopmesh_events::{inbox, outbox};
use shopmesh_storage::sqlite::{Sqlite, json_at, unreadable, uuid_at};
use uuid::Uuid;

use super::{
    Created, Cursor, IdempotencyKey, OrderRecord, OrderStore, Outgoing, PURCHASED, Processed,
    StoreError, status_from,
};
use crate::state::Status;

const COLUMNS: &str = "id, user_id, status, body, created_at, updated_at, version";

#[derive(Debug, Clone)]
pub struct SqliteOrders(pub Sqlite);

fn order(row: &Row<'_>) -> rusqlite::Result<OrderRecord> {
    let status: String = row.get(2)?;
    Ok(OrderRecord {
        id: uuid_at(row, 0)?,
        user_id: uuid_at(row, 1)?,
        status: status_from(&status).map_err(|e| unreadable(2, e))?,
        body: json_at(row, 3)?,
        created_at_ms: row.get(4)?,
        updated_at_ms: row.get(5)?,
        version: row.get(6)?,
    })
}

/// What `key` made before, if anything (see [`OrderStore::keyed`]).
fn keyed(db: &rusqlite::Connection, key: &IdempotencyKey) -> Result<Option<Created>, StoreError> {
    let used: Option<(Vec<u8>, String)> = db
        .prepare_cached(
            "SELECT fingerprint, order_id FROM idempotency_keys WHERE user_id = ?1 AND key = ?2",
        )?
        .query_row(params![key.user_id.to_string(), key.key], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let Some((fingerprint, order_id)) = used else {
        return Ok(None);
    };
    if fingerprint != key.fingerprint {
        return Ok(Some(Created::KeyReused));
    }
    let id = Uuid::parse_str(&order_id)
        .map_err(|e| StoreError::from(shopmesh_storage::StorageError::Corrupt(e.to_string())))?;
    let existing = db
        .prepare_cached(&format!("SELECT {COLUMNS} FROM orders WHERE id = ?1"))?
        .query_row([id.to_string()], order)
        .optional()?
        .ok_or(StoreError::NotFound)?;
    Ok(Some(Created::Existing(Box::new(existing))))
}

fn enqueue(tx: &Transaction<'_>, events: &[Outgoing]) -> Result<(), StoreError> {
    for outgoing in events {
        outbox::enqueue(tx, outgoing.topic, &outgoing.event)?;
    }
    Ok(())
}

#[async_trait]
impl OrderStore for SqliteOrders {
    async fn create(
        &self,
        order: &OrderRecord,
        key: &IdempotencyKey,
        events: &[Outgoing],
    ) -> Result<Created, StoreError> {
        let (order, key, events) = (order.clone(), key.clone(), events.to_vec());
        self.0
            .write(move |tx| {
                if let Some(made) = keyed(tx, &key)? {
                    return Ok(made);
                }
                tx.prepare_cached(
                    "INSERT INTO idempotency_keys (user_id, key, fingerprint, order_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    key.user_id.to_string(),
                    key.key,
                    key.fingerprint,
                    order.id.to_string(),
                    order.created_at_ms
                ])?;
                tx.prepare_cached(&format!(
                    "INSERT INTO orders ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ))?
                .execute(params![
                    order.id.to_string(),
                    order.user_id.to_string(),
                    order.status.as_str(),
                    serde_json::to_string(&order.body)?,
                    order.created_at_ms,
                    order.updated_at_ms,
                    order.version
                ])?;
                let mut product = tx.prepare_cached(
                    "INSERT INTO order_products (user_id, product_id, order_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for line in &order.body.lines {
                    product.execute(params![
                        order.user_id.to_string(),
                        line.product_id.to_string(),
                        order.id.to_string(),
                        order.created_at_ms
                    ])?;
                }
                enqueue(tx, &events)?;
                Ok(Created::New)
            })
            .await
    }

    async fn keyed(&self, key: &IdempotencyKey) -> Result<Option<Created>, StoreError> {
        let key = key.clone();
        self.0.read(move |db| keyed(db, &key)).await
    }

    async fn order(&self, id: Uuid) -> Result<Option<OrderRecord>, StoreError> {
        self.0
            .read(move |db| {
                Ok(db
                    .prepare_cached(&format!("SELECT {COLUMNS} FROM orders WHERE id = ?1"))?
                    .query_row([id.to_string()], order)
                    .optional()?)
            })
            .await
    }

    async fn list(
        &self,
        user_id: Uuid,
        status: Option<Status>,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        self.0
            .read(move |db| {
                // Row-value comparison walks the (user_id, created_at, id) index backwards.
                let (at, id) = before.unwrap_or((i64::MAX, Uuid::max()));
                let mut statement = db.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM orders
                     WHERE user_id = ?1 AND (created_at, id) < (?2, ?3) AND (?4 IS NULL OR status = ?4)
                     ORDER BY created_at DESC, id DESC LIMIT ?5"
                ))?;
                let rows = statement.query_map(
                    params![
                        user_id.to_string(),
                        at,
                        id.to_string(),
                        status.map(Status::as_str),
                        limit as i64
                    ],
                    order,
                )?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
    }

    async fn update(
        &self,
        order: &OrderRecord,
        events: &[Outgoing],
        processed: Option<Processed<'_>>,
    ) -> Result<bool, StoreError> {
        let (order, events) = (order.clone(), events.to_vec());
        let processed = processed.map(|p| (p.subscription.to_owned(), p.event_id.to_owned()));
        self.0
            .write(move |tx| {
                if let Some((subscription, event_id)) = &processed
                    && !inbox::first_delivery(tx, subscription, event_id)?
                {
                    return Ok(false);
                }
                let written = tx
                    .prepare_cached(
                        "UPDATE orders SET status = ?1, body = ?2, updated_at = ?3, version = ?4
                         WHERE id = ?5 AND version = ?6",
                    )?
                    .execute(params![
                        order.status.as_str(),
                        serde_json::to_string(&order.body)?,
                        order.updated_at_ms,
                        order.version,
                        order.id.to_string(),
                        order.version - 1
                    ])?;
                if written == 0 {
                    return Err(StoreError::Conflict);
                }
                enqueue(tx, &events)?;
                Ok(true)
            })
            .await
    }

    async fn purchase(&self, user_id: Uuid, product_id: Uuid) -> Result<Option<Uuid>, StoreError> {
        self.0
            .read(move |db| {
                let found: Option<String> = db
                    .prepare_cached(
                        "SELECT o.id FROM order_products p JOIN orders o ON o.id = p.order_id
                         WHERE p.user_id = ?1 AND p.product_id = ?2 AND o.status IN (?3, ?4, ?5)
                         ORDER BY p.created_at DESC LIMIT 1",
                    )?
                    .query_row(
                        params![
                            user_id.to_string(),
                            product_id.to_string(),
                            PURCHASED[0].as_str(),
                            PURCHASED[1].as_str(),
                            PURCHASED[2].as_str()
                        ],
                        |row| row.get(0),
                    )
                    .optional()?;
                found
                    .map(|id| {
                        Uuid::parse_str(&id).map_err(|e| {
                            shopmesh_storage::StorageError::Corrupt(e.to_string()).into()
                        })
                    })
                    .transpose()
            })
            .await
    }
}
