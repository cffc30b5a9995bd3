//! The catalog on SQLite (`shopmesh up`): unique indexes for SKU and slug, one transaction for
//! a whole reservation.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, Transaction, params};
use shopmesh_events::{Event, outbox, topics};
use shopmesh_storage::sqlite::{Sqlite, json_at, optional_uuid_at, uuid_at};
use uuid::Uuid;

use super::{
    Announce, CatalogStore, CategoryRecord, Cursor, Line, ProductRecord, Reply, Reservation,
    ReservationState, Shortage, StockChange, StoreError, TOPIC, canonical, decided, state_from,
    state_name,
};

const PRODUCT_COLUMNS: &str = "id, sku, category_id, currency, amount_minor, stock, rating_average, rating_count, text, created_at, updated_at, version";

#[derive(Debug, Clone)]
pub struct SqliteCatalog(pub Sqlite);

fn product(row: &Row<'_>) -> rusqlite::Result<ProductRecord> {
    Ok(ProductRecord {
        id: uuid_at(row, 0)?,
        sku: row.get(1)?,
        category_id: optional_uuid_at(row, 2)?,
        currency: row.get(3)?,
        amount_minor: row.get(4)?,
        stock: row.get(5)?,
        rating_average: row.get(6)?,
        rating_count: row.get(7)?,
        text: json_at(row, 8)?,
        created_at_ms: row.get(9)?,
        updated_at_ms: row.get(10)?,
        version: row.get(11)?,
    })
}

fn category(row: &Row<'_>) -> rusqlite::Result<CategoryRecord> {
    Ok(CategoryRecord {
        id: uuid_at(row, 0)?,
        parent_id: optional_uuid_at(row, 1)?,
        slug: row.get(2)?,
        name: row.get(3)?,
        translations: json_at(row, 4)?,
        position: row.get(5)?,
    })
}

fn reservation(tx: &Transaction<'_>, order_id: Uuid) -> Result<Option<Reservation>, StoreError> {
    let row = tx
        .prepare_cached(
            "SELECT state, lines, shortages, updated_at FROM stock_reservations WHERE order_id = ?1",
        )?
        .query_row([order_id.to_string()], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })
        .optional()?;
    row.map(|(state, lines, shortages, updated_at_ms)| {
        Ok(Reservation {
            order_id,
            state: state_from(&state)?,
            lines: serde_json::from_str(&lines)?,
            shortages: serde_json::from_str(&shortages)?,
            updated_at_ms,
        })
    })
    .transpose()
}

fn save(tx: &Transaction<'_>, reservation: &Reservation) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO stock_reservations (order_id, state, lines, shortages, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (order_id) DO UPDATE SET state = ?2, lines = ?3, shortages = ?4, updated_at = ?5",
    )?
    .execute(params![
        reservation.order_id.to_string(),
        state_name(reservation.state),
        serde_json::to_string(&reservation.lines)?,
        serde_json::to_string(&reservation.shortages)?,
        reservation.updated_at_ms
    ])?;
    Ok(())
}

/// Adds `delta` to a product's stock, announcing the change; `None` if the product is gone.
fn adjust(
    tx: &Transaction<'_>,
    product_id: Uuid,
    delta: i32,
    now_ms: i64,
    announce: &Announce,
) -> Result<Option<StockChange>, StoreError> {
    let changed = tx
        .prepare_cached(
            "UPDATE products SET stock = stock + ?1, version = version + 1, updated_at = ?2
             WHERE id = ?3 RETURNING stock, version",
        )?
        .query_row(params![delta, now_ms, product_id.to_string()], |row| {
            Ok(StockChange {
                product_id,
                stock: row.get(0)?,
                version: row.get(1)?,
            })
        })
        .optional()?;
    if let Some(change) = &changed {
        outbox::enqueue(tx, TOPIC, &announce(change))?;
    }
    Ok(changed)
}

#[async_trait]
impl CatalogStore for SqliteCatalog {
    async fn categories(&self) -> Result<Vec<CategoryRecord>, StoreError> {
        self.0
            .read(|db| {
                let mut statement = db.prepare_cached(
                    "SELECT id, parent_id, slug, name, translations, position FROM categories ORDER BY position, name",
                )?;
                let rows = statement.query_map([], category)?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
    }

    async fn create_category(&self, record: &CategoryRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.0
            .write(move |tx| {
                let inserted = tx
                    .prepare_cached(
                        "INSERT INTO categories (id, parent_id, slug, name, translations, position)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (slug) DO NOTHING",
                    )?
                    .execute(params![
                        record.id.to_string(),
                        record.parent_id.map(|p| p.to_string()),
                        record.slug,
                        record.name,
                        serde_json::to_string(&record.translations)?,
                        record.position
                    ])?;
                if inserted == 0 {
                    Err(StoreError::Conflict)
                } else {
                    Ok(())
                }
            })
            .await
    }

    async fn update_category(&self, record: &CategoryRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.0
            .write(move |tx| {
                let taken: Option<String> = tx
                    .prepare_cached("SELECT id FROM categories WHERE slug = ?1 AND id != ?2")?
                    .query_row(params![record.slug, record.id.to_string()], |r| r.get(0))
                    .optional()?;
                if taken.is_some() {
                    return Err(StoreError::Conflict);
                }
                let updated = tx
                    .prepare_cached(
                        "UPDATE categories SET parent_id = ?1, slug = ?2, name = ?3, translations = ?4, position = ?5 WHERE id = ?6",
                    )?
                    .execute(params![
                        record.parent_id.map(|p| p.to_string()),
                        record.slug,
                        record.name,
                        serde_json::to_string(&record.translations)?,
                        record.position,
                        record.id.to_string()
                    ])?;
                if updated == 0 {
                    Err(StoreError::NotFound)
                } else {
                    Ok(())
                }
            })
            .await
    }

    async fn delete_category(&self, id: Uuid) -> Result<(), StoreError> {
        self.0
            .write(move |tx| {
                let id = id.to_string();
                let in_use: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM categories WHERE parent_id = ?1)
                         OR EXISTS (SELECT 1 FROM products WHERE category_id = ?1)",
                    [&id],
                    |r| r.get(0),
                )?;
                if in_use {
                    return Err(StoreError::Precondition(
                        "the category still has sub-categories or products".into(),
                    ));
                }
                if tx.execute("DELETE FROM categories WHERE id = ?1", [&id])? == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            })
            .await
    }

    async fn create_product(
        &self,
        record: &ProductRecord,
        event: &Event,
    ) -> Result<(), StoreError> {
        let (record, event) = (record.clone(), event.clone());
        self.0
            .write(move |tx| {
                let inserted = tx
                    .prepare_cached(&format!(
                        "INSERT INTO products ({PRODUCT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                         ON CONFLICT (sku) DO NOTHING"
                    ))?
                    .execute(params![
                        record.id.to_string(),
                        record.sku,
                        record.category_id.map(|c| c.to_string()),
                        record.currency,
                        record.amount_minor,
                        record.stock,
                        record.rating_average,
                        record.rating_count,
                        serde_json::to_string(&record.text)?,
                        record.created_at_ms,
                        record.updated_at_ms,
                        record.version
                    ])?;
                if inserted == 0 {
                    return Err(StoreError::Conflict);
                }
                outbox::enqueue(tx, TOPIC, &event)?;
                Ok(())
            })
            .await
    }

    async fn product(&self, id: Uuid) -> Result<Option<ProductRecord>, StoreError> {
        self.0
            .read(move |db| {
                Ok(db
                    .prepare_cached(&format!(
                        "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = ?1"
                    ))?
                    .query_row([id.to_string()], product)
                    .optional()?)
            })
            .await
    }

    async fn update_product(
        &self,
        record: &ProductRecord,
        _previous_sku: &str,
        event: &Event,
    ) -> Result<(), StoreError> {
        let (record, event) = (record.clone(), event.clone());
        self.0
            .write(move |tx| {
                let taken: Option<String> = tx
                    .prepare_cached("SELECT id FROM products WHERE sku = ?1 AND id != ?2")?
                    .query_row(params![record.sku, record.id.to_string()], |r| r.get(0))
                    .optional()?;
                if taken.is_some() {
                    return Err(StoreError::Conflict);
                }
                let updated = tx
                    .prepare_cached(
                        "UPDATE products SET sku = ?1, category_id = ?2, currency = ?3, amount_minor = ?4, stock = ?5,
                         rating_average = ?6, rating_count = ?7, text = ?8, updated_at = ?9, version = ?10
                         WHERE id = ?11 AND version = ?12",
                    )?
                    .execute(params![
                        record.sku,
                        record.category_id.map(|c| c.to_string()),
                        record.currency,
                        record.amount_minor,
                        record.stock,
                        record.rating_average,
                        record.rating_count,
                        serde_json::to_string(&record.text)?,
                        record.updated_at_ms,
                        record.version,
                        record.id.to_string(),
                        record.version - 1
                    ])?;
                if updated == 0 {
                    return Err(StoreError::Conflict);
                }
                outbox::enqueue(tx, TOPIC, &event)?;
                Ok(())
            })
            .await
    }

    async fn delete_product(
        &self,
        record: &ProductRecord,
        event: &Event,
    ) -> Result<(), StoreError> {
        let (id, version, event) = (record.id, record.version, event.clone());
        self.0
            .write(move |tx| {
                let deleted = tx
                    .prepare_cached("DELETE FROM products WHERE id = ?1 AND version = ?2")?
                    .execute(params![id.to_string(), version])?;
                if deleted == 0 {
                    return Err(StoreError::Conflict);
                }
                outbox::enqueue(tx, TOPIC, &event)?;
                Ok(())
            })
            .await
    }

    async fn list_products(
        &self,
        categories: Option<&[Uuid]>,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<ProductRecord>, StoreError> {
        let (at, id) = after.map_or((i64::MIN, String::new()), |(at, id)| (at, id.to_string()));
        let categories: Option<Vec<String>> =
            categories.map(|ids| ids.iter().map(Uuid::to_string).collect());
        self.0
            .read(move |db| {
                let rows = match categories {
                    None => {
                        let mut statement = db.prepare_cached(&format!(
                            "SELECT {PRODUCT_COLUMNS} FROM products WHERE (created_at, id) > (?1, ?2)
                             ORDER BY created_at, id LIMIT ?3"
                        ))?;
                        statement
                            .query_map(params![at, id, limit as i64], product)?
                            .collect::<rusqlite::Result<Vec<_>>>()?
                    }
                    Some(categories) => {
                        // The category set is bound as one JSON array, never formatted in.
                        let mut statement = db.prepare_cached(&format!(
                            "SELECT {PRODUCT_COLUMNS} FROM products
                             WHERE category_id IN (SELECT value FROM json_each(?1)) AND (created_at, id) > (?2, ?3)
                             ORDER BY created_at, id LIMIT ?4"
                        ))?;
                        statement
                            .query_map(
                                params![serde_json::to_string(&categories)?, at, id, limit as i64],
                                product,
                            )?
                            .collect::<rusqlite::Result<Vec<_>>>()?
                    }
                };
                Ok(rows)
            })
            .await
    }

    async fn reserve(
        &self,
        order_id: Uuid,
        lines: &[Line],
        now_ms: i64,
        announce: Announce,
        reply: Option<Reply>,
    ) -> Result<Reservation, StoreError> {
        let lines = canonical(lines);
        self.0
            .write(move |tx| {
                let answer = |reservation: Reservation| -> Result<Reservation, StoreError> {
                    if let Some(reply) = &reply
                        && decided(&reservation)
                    {
                        outbox::enqueue(tx, topics::STOCK, &reply(&reservation))?;
                    }
                    Ok(reservation)
                };
                if let Some(existing) = reservation(tx, order_id)? {
                    if existing.state != ReservationState::Released && existing.lines != lines {
                        return Err(StoreError::Conflict);
                    }
                    return answer(existing);
                }
                let mut shortages = Vec::new();
                for line in &lines {
                    let available: Option<i32> = tx
                        .prepare_cached("SELECT stock FROM products WHERE id = ?1")?
                        .query_row([line.product_id.to_string()], |r| r.get(0))
                        .optional()?;
                    let available = available.unwrap_or(0);
                    if available < line.quantity {
                        shortages.push(Shortage {
                            product_id: line.product_id,
                            requested: line.quantity,
                            available,
                        });
                    }
                }
                let state = if shortages.is_empty() {
                    for line in &lines {
                        adjust(tx, line.product_id, -line.quantity, now_ms, &announce)?;
                    }
                    ReservationState::Reserved
                } else {
                    ReservationState::Rejected
                };
                let reservation = Reservation {
                    order_id,
                    state,
                    lines,
                    shortages,
                    updated_at_ms: now_ms,
                };
                save(tx, &reservation)?;
                answer(reservation)
            })
            .await
    }

    async fn release(
        &self,
        order_id: Uuid,
        now_ms: i64,
        announce: Announce,
    ) -> Result<Reservation, StoreError> {
        self.0
            .write(move |tx| {
                let mut reservation = match reservation(tx, order_id)? {
                    Some(existing) => existing,
                    None => Reservation {
                        order_id,
                        state: ReservationState::Released,
                        lines: Vec::new(),
                        shortages: Vec::new(),
                        updated_at_ms: now_ms,
                    },
                };
                if matches!(
                    reservation.state,
                    ReservationState::Reserved | ReservationState::Committed
                ) {
                    for line in &reservation.lines {
                        adjust(tx, line.product_id, line.quantity, now_ms, &announce)?;
                    }
                    reservation.state = ReservationState::Released;
                    reservation.updated_at_ms = now_ms;
                }
                if reservation.state == ReservationState::Released {
                    save(tx, &reservation)?;
                }
                Ok(reservation)
            })
            .await
    }

    async fn commit(&self, order_id: Uuid, now_ms: i64) -> Result<Reservation, StoreError> {
        self.0
            .write(move |tx| {
                let mut reservation = reservation(tx, order_id)?.ok_or(StoreError::NotFound)?;
                match reservation.state {
                    ReservationState::Committed => Ok(reservation),
                    ReservationState::Reserved => {
                        reservation.state = ReservationState::Committed;
                        reservation.updated_at_ms = now_ms;
                        save(tx, &reservation)?;
                        Ok(reservation)
                    }
                    other => Err(StoreError::Precondition(format!(
                        "a {} reservation cannot be committed",
                        super::state_name(other)
                    ))),
                }
            })
            .await
    }

    async fn rate(
        &self,
        record: &ProductRecord,
        rating_version: i64,
        event: &Event,
    ) -> Result<bool, StoreError> {
        let (record, event) = (record.clone(), event.clone());
        self.0
            .write(move |tx| {
                let held: i64 = tx
                    .prepare_cached("SELECT version FROM product_ratings WHERE product_id = ?1")?
                    .query_row([record.id.to_string()], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0);
                if held >= rating_version {
                    return Ok(false);
                }
                let updated = tx
                    .prepare_cached(
                        "UPDATE products SET rating_average = ?1, rating_count = ?2, updated_at = ?3, version = ?4
                         WHERE id = ?5 AND version = ?6",
                    )?
                    .execute(params![
                        record.rating_average,
                        record.rating_count,
                        record.updated_at_ms,
                        record.version,
                        record.id.to_string(),
                        record.version - 1
                    ])?;
                if updated == 0 {
                    return Err(StoreError::Conflict);
                }
                tx.prepare_cached(
                    "INSERT INTO product_ratings (product_id, version) VALUES (?1, ?2)
                     ON CONFLICT (product_id) DO UPDATE SET version = ?2",
                )?
                .execute(params![record.id.to_string(), rating_version])?;
                outbox::enqueue(tx, TOPIC, &event)?;
                Ok(true)
            })
            .await
    }
}
