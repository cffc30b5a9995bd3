//! The catalog on CQL. SKUs and slugs are claimed with lightweight transactions; a new product,
//! its listing entries and its event go in one logged batch. Changes to a product are
//! conditional on its version (an LWT), so its event is written after the change succeeds: a
//! crash in between leaves readers one change behind until the next one.
//!
//! Stock moves one product at a time with `UPDATE … IF version = ?`, retried on contention; a
//! reservation is claimed first (`IF NOT EXISTS`), so one order reserves once, and a line that
//! turns out short undoes the lines already taken.

use std::collections::BTreeMap;

use async_trait::async_trait;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use shopmesh_events::outbox::{CqlOutbox, OutboxRow};
use shopmesh_events::{Event, topics};
use shopmesh_storage::StorageError;
use shopmesh_storage::cql::listing::CreationIndex;
use shopmesh_storage::cql::{Cql, lwt_applied, lwt_outcome};
use std::sync::Arc;
use uuid::Uuid;

use super::{
    Announce, CatalogStore, CategoryRecord, Cursor, Line, ProductRecord, Reply, Reservation,
    ReservationState, Shortage, StockChange, StoreError, TOPIC, canonical, decided, state_from,
    state_name,
};

/// The partition of products without a category in `products_by_category`.
const UNCATEGORISED: Uuid = Uuid::nil();

type ProductRow = (
    Uuid,
    String,
    Option<Uuid>,
    String,
    i64,
    i32,
    f64,
    i32,
    String,
    i64,
    i64,
    i64,
);

pub struct CqlCatalog {
    cql: Cql,
    outbox: Arc<CqlOutbox>,
    by_creation: CreationIndex,
    categories: PreparedStatement,
    claim_slug: PreparedStatement,
    release_slug: PreparedStatement,
    upsert_category: PreparedStatement,
    delete_category: PreparedStatement,
    claim_sku: PreparedStatement,
    release_sku: PreparedStatement,
    insert_product: PreparedStatement,
    select_product: PreparedStatement,
    update_product: PreparedStatement,
    delete_product: PreparedStatement,
    insert_by_category: PreparedStatement,
    remove_by_category: PreparedStatement,
    category_page: PreparedStatement,
    category_page_after: PreparedStatement,
    stock_of: PreparedStatement,
    set_stock: PreparedStatement,
    select_reservation: PreparedStatement,
    claim_reservation: PreparedStatement,
    set_reservation: PreparedStatement,
    move_reservation: PreparedStatement,
    select_rating_version: PreparedStatement,
    set_rating: PreparedStatement,
    set_rating_version: PreparedStatement,
}

impl CqlCatalog {
    pub async fn new(cql: Cql) -> Result<Self, StorageError> {
        const PRODUCT: &str = "id, sku, category_id, currency, amount_minor, stock, rating_average, rating_count, text, created_at, updated_at, version";
        Ok(Self {
            outbox: Arc::new(CqlOutbox::new(&cql).await?),
            by_creation: CreationIndex::new(&cql, "products").await?,
            categories: cql
                .prepare("SELECT id, parent_id, slug, name, translations, position FROM categories")
                .await?,
            claim_slug: cql
                .prepare("INSERT INTO categories_by_slug (slug, id) VALUES (?, ?) IF NOT EXISTS")
                .await?,
            release_slug: cql
                .prepare("DELETE FROM categories_by_slug WHERE slug = ? IF id = ?")
                .await?,
            upsert_category: cql
                .prepare(
                    "INSERT INTO categories (id, parent_id, slug, name, translations, position) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .await?,
            delete_category: cql.prepare("DELETE FROM categories WHERE id = ?").await?,
            claim_sku: cql
                .prepare("INSERT INTO products_by_sku (sku, id) VALUES (?, ?) IF NOT EXISTS")
                .await?,
            release_sku: cql
                .prepare("DELETE FROM products_by_sku WHERE sku = ? IF id = ?")
                .await?,
            insert_product: cql
                .prepare(&format!(
                    "INSERT INTO products ({PRODUCT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ))
                .await?,
            select_product: cql
                .prepare(&format!("SELECT {PRODUCT} FROM products WHERE id = ?"))
                .await?,
            update_product: cql
                .prepare(
                    "UPDATE products SET sku = ?, category_id = ?, currency = ?, amount_minor = ?, stock = ?, \
                     rating_average = ?, rating_count = ?, text = ?, updated_at = ?, version = ? WHERE id = ? IF version = ?",
                )
                .await?,
            delete_product: cql
                .prepare("DELETE FROM products WHERE id = ? IF version = ?")
                .await?,
            insert_by_category: cql
                .prepare("INSERT INTO products_by_category (category_id, created_at, id) VALUES (?, ?, ?)")
                .await?,
            remove_by_category: cql
                .prepare("DELETE FROM products_by_category WHERE category_id = ? AND created_at = ? AND id = ?")
                .await?,
            category_page: cql
                .prepare("SELECT created_at, id FROM products_by_category WHERE category_id = ? LIMIT ?")
                .await?,
            category_page_after: cql
                .prepare(
                    "SELECT created_at, id FROM products_by_category WHERE category_id = ? AND (created_at, id) > (?, ?) LIMIT ?",
                )
                .await?,
            stock_of: cql
                .prepare("SELECT stock, version FROM products WHERE id = ?")
                .await?,
            set_stock: cql
                .prepare("UPDATE products SET stock = ?, version = ?, updated_at = ? WHERE id = ? IF version = ?")
                .await?,
            select_rating_version: cql
                .prepare("SELECT version FROM product_ratings WHERE product_id = ?")
                .await?,
            set_rating: cql
                .prepare(
                    "UPDATE products SET rating_average = ?, rating_count = ?, updated_at = ?, version = ? \
                     WHERE id = ? IF version = ?",
                )
                .await?,
            set_rating_version: cql
                .prepare("INSERT INTO product_ratings (product_id, version) VALUES (?, ?)")
                .await?,
            select_reservation: cql
                .prepare("SELECT state, lines, shortages, updated_at FROM stock_reservations WHERE order_id = ?")
                .await?,
            claim_reservation: cql
                .prepare(
                    "INSERT INTO stock_reservations (order_id, state, lines, shortages, updated_at) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
                )
                .await?,
            set_reservation: cql
                .prepare(
                    "UPDATE stock_reservations SET state = ?, shortages = ?, updated_at = ? WHERE order_id = ?",
                )
                .await?,
            move_reservation: cql
                .prepare(
                    "UPDATE stock_reservations SET state = ?, updated_at = ? WHERE order_id = ? IF state = ?",
                )
                .await?,
            cql,
        })
    }

    /// The outbox to relay this store's events from.
    pub fn outbox(&self) -> Arc<CqlOutbox> {
        self.outbox.clone()
    }

    async fn publish(&self, event: &Event) -> Result<(), StoreError> {
        self.publish_to(TOPIC, event).await
    }

    async fn publish_to(&self, topic: &str, event: &Event) -> Result<(), StoreError> {
        let row = OutboxRow::new(topic, event).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        self.cql.execute(self.outbox.insert(), row).await?;
        Ok(())
    }

    /// Claims `key` in a `*_by_*` table for `id`; false when another record holds it.
    async fn claim(
        &self,
        statement: &PreparedStatement,
        key: &str,
        id: Uuid,
    ) -> Result<bool, StoreError> {
        let claimed = lwt_outcome(self.cql.execute(statement, (key, id)).await?)?;
        Ok(claimed.applied
            || matches!(claimed.get("id"), Some(CqlValue::Uuid(holder)) if *holder == id))
    }

    async fn reservation(&self, order_id: Uuid) -> Result<Option<Reservation>, StoreError> {
        let row = self
            .cql
            .first_row::<(String, String, String, i64)>(&self.select_reservation, (order_id,))
            .await?;
        row.map(|(state, lines, shortages, updated_at_ms)| {
            if state == "pending" {
                return Err(StoreError::Precondition(
                    "the order's reservation is in progress; retry".into(),
                ));
            }
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

    /// Adds `delta` to a product's stock unless that would make it negative; returns the
    /// change, `Err(available)` when short, or `Ok(None)` when the product is gone.
    async fn adjust(
        &self,
        product_id: Uuid,
        delta: i32,
        now_ms: i64,
        announce: &Announce,
    ) -> Result<Result<Option<StockChange>, i32>, StoreError> {
        loop {
            let Some((stock, version)) = self
                .cql
                .first_row::<(i32, i64)>(&self.stock_of, (product_id,))
                .await?
            else {
                return Ok(Ok(None));
            };
            if stock + delta < 0 {
                return Ok(Err(stock));
            }
            let written = self
                .cql
                .execute(
                    &self.set_stock,
                    (stock + delta, version + 1, now_ms, product_id, version),
                )
                .await?;
            if lwt_applied(written)? {
                let change = StockChange {
                    product_id,
                    stock: stock + delta,
                    version: version + 1,
                };
                self.publish(&announce(&change)).await?;
                return Ok(Ok(Some(change)));
            }
        }
    }
}

fn product(row: ProductRow) -> Result<ProductRecord, StoreError> {
    let (
        id,
        sku,
        category_id,
        currency,
        amount_minor,
        stock,
        rating_average,
        rating_count,
        text,
        created_at_ms,
        updated_at_ms,
        version,
    ) = row;
    Ok(ProductRecord {
        id,
        sku,
        category_id: category_id.filter(|c| !c.is_nil()),
        currency,
        amount_minor,
        stock,
        rating_average,
        rating_count,
        text: serde_json::from_str(&text)?,
        created_at_ms,
        updated_at_ms,
        version,
    })
}

#[async_trait]
impl CatalogStore for CqlCatalog {
    async fn categories(&self) -> Result<Vec<CategoryRecord>, StoreError> {
        type Row = (
            Uuid,
            Option<Uuid>,
            String,
            String,
            Option<BTreeMap<String, String>>,
            i32,
        );
        let mut categories: Vec<CategoryRecord> = self
            .cql
            .rows::<Row>(&self.categories, ())
            .await?
            .into_iter()
            .map(
                |(id, parent_id, slug, name, translations, position)| CategoryRecord {
                    id,
                    parent_id,
                    slug,
                    name,
                    translations: translations.unwrap_or_default(),
                    position,
                },
            )
            .collect();
        categories.sort_by(|a, b| (a.position, &a.name).cmp(&(b.position, &b.name)));
        Ok(categories)
    }

    async fn create_category(&self, record: &CategoryRecord) -> Result<(), StoreError> {
        if !self
            .claim(&self.claim_slug, &record.slug, record.id)
            .await?
        {
            return Err(StoreError::Conflict);
        }
        self.cql
            .execute(
                &self.upsert_category,
                (
                    record.id,
                    record.parent_id,
                    &record.slug,
                    &record.name,
                    &record.translations,
                    record.position,
                ),
            )
            .await?;
        Ok(())
    }

    async fn update_category(&self, record: &CategoryRecord) -> Result<(), StoreError> {
        let previous = self
            .categories()
            .await?
            .into_iter()
            .find(|c| c.id == record.id)
            .ok_or(StoreError::NotFound)?;
        if previous.slug != record.slug {
            if !self
                .claim(&self.claim_slug, &record.slug, record.id)
                .await?
            {
                return Err(StoreError::Conflict);
            }
            self.cql
                .execute(&self.release_slug, (&previous.slug, record.id))
                .await?;
        }
        self.cql
            .execute(
                &self.upsert_category,
                (
                    record.id,
                    record.parent_id,
                    &record.slug,
                    &record.name,
                    &record.translations,
                    record.position,
                ),
            )
            .await?;
        Ok(())
    }

    async fn delete_category(&self, id: Uuid) -> Result<(), StoreError> {
        let categories = self.categories().await?;
        let category = categories
            .iter()
            .find(|c| c.id == id)
            .ok_or(StoreError::NotFound)?;
        let has_children = categories.iter().any(|c| c.parent_id == Some(id));
        let has_products = !self
            .cql
            .rows::<(i64, Uuid)>(&self.category_page, (id, 1))
            .await?
            .is_empty();
        if has_children || has_products {
            return Err(StoreError::Precondition(
                "the category still has sub-categories or products".into(),
            ));
        }
        self.cql.execute(&self.delete_category, (id,)).await?;
        self.cql
            .execute(&self.release_slug, (&category.slug, id))
            .await?;
        Ok(())
    }

    async fn create_product(
        &self,
        record: &ProductRecord,
        event: &Event,
    ) -> Result<(), StoreError> {
        if !self.claim(&self.claim_sku, &record.sku, record.id).await? {
            return Err(StoreError::Conflict);
        }
        let (by_month, month) = CreationIndex::entry(record.created_at_ms, record.id);
        let [insert_by_month, insert_month] = self.by_creation.statements();
        let statements = [
            &self.insert_product,
            &self.insert_by_category,
            insert_by_month,
            insert_month,
            self.outbox.insert(),
        ];
        let values = (
            (
                record.id,
                &record.sku,
                record.category_id,
                &record.currency,
                record.amount_minor,
                record.stock,
                record.rating_average,
                record.rating_count,
                serde_json::to_string(&record.text)?,
                record.created_at_ms,
                record.updated_at_ms,
                record.version,
            ),
            (
                record.category_id.unwrap_or(UNCATEGORISED),
                record.created_at_ms,
                record.id,
            ),
            by_month,
            month,
            OutboxRow::new(TOPIC, event).map_err(|e| StorageError::Corrupt(e.to_string()))?,
        );
        self.cql.logged_batch(&statements, values).await?;
        Ok(())
    }

    async fn product(&self, id: Uuid) -> Result<Option<ProductRecord>, StoreError> {
        self.cql
            .first_row::<ProductRow>(&self.select_product, (id,))
            .await?
            .map(product)
            .transpose()
    }

    async fn update_product(
        &self,
        record: &ProductRecord,
        previous_sku: &str,
        event: &Event,
    ) -> Result<(), StoreError> {
        let previous = self.product(record.id).await?.ok_or(StoreError::NotFound)?;
        if previous.version != record.version - 1 {
            return Err(StoreError::Conflict);
        }
        let new_sku = previous_sku != record.sku;
        if new_sku && !self.claim(&self.claim_sku, &record.sku, record.id).await? {
            return Err(StoreError::Conflict);
        }
        let written = self
            .cql
            .execute(
                &self.update_product,
                (
                    &record.sku,
                    record.category_id,
                    &record.currency,
                    record.amount_minor,
                    record.stock,
                    record.rating_average,
                    record.rating_count,
                    serde_json::to_string(&record.text)?,
                    record.updated_at_ms,
                    record.version,
                    record.id,
                    record.version - 1,
                ),
            )
            .await?;
        if !lwt_applied(written)? {
            if new_sku {
                self.cql
                    .execute(&self.release_sku, (&record.sku, record.id))
                    .await?;
            }
            return Err(StoreError::Conflict);
        }
        if new_sku {
            self.cql
                .execute(&self.release_sku, (previous_sku, record.id))
                .await?;
        }
        if previous.category_id != record.category_id {
            let at = record.created_at_ms;
            self.cql
                .execute(
                    &self.remove_by_category,
                    (previous.category_id.unwrap_or(UNCATEGORISED), at, record.id),
                )
                .await?;
            self.cql
                .execute(
                    &self.insert_by_category,
                    (record.category_id.unwrap_or(UNCATEGORISED), at, record.id),
                )
                .await?;
        }
        self.publish(event).await
    }

    async fn delete_product(
        &self,
        record: &ProductRecord,
        event: &Event,
    ) -> Result<(), StoreError> {
        let deleted = self
            .cql
            .execute(&self.delete_product, (record.id, record.version))
            .await?;
        if !lwt_applied(deleted)? {
            return Err(StoreError::Conflict);
        }
        let at = record.created_at_ms;
        self.cql
            .execute(
                &self.remove_by_category,
                (record.category_id.unwrap_or(UNCATEGORISED), at, record.id),
            )
            .await?;
        self.cql
            .execute(
                self.by_creation.remove_statement(),
                CreationIndex::removal(at, record.id),
            )
            .await?;
        self.cql
            .execute(&self.release_sku, (&record.sku, record.id))
            .await?;
        self.publish(event).await
    }

    async fn list_products(
        &self,
        categories: Option<&[Uuid]>,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<ProductRecord>, StoreError> {
        let mut found: Vec<Cursor> = match categories {
            None => self.by_creation.list(after, limit).await?,
            Some(categories) => {
                // Each category partition is in creation order: merge their first pages.
                let wanted = i32::try_from(limit).unwrap_or(i32::MAX);
                let mut found = Vec::new();
                for category in categories {
                    let page = match after {
                        Some((at, id)) => {
                            self.cql
                                .rows::<(i64, Uuid)>(
                                    &self.category_page_after,
                                    (*category, at, id, wanted),
                                )
                                .await?
                        }
                        None => {
                            self.cql
                                .rows::<(i64, Uuid)>(&self.category_page, (*category, wanted))
                                .await?
                        }
                    };
                    found.extend(page);
                }
                found
            }
        };
        found.sort_unstable();
        found.truncate(limit);
        let mut products = Vec::with_capacity(found.len());
        for (_, id) in found {
            // A listing entry can briefly outlive a deleted product; skip it.
            if let Some(product) = self.product(id).await? {
                products.push(product);
            }
        }
        Ok(products)
    }

    async fn reserve(
        &self,
        order_id: Uuid,
        lines: &[Line],
        now_ms: i64,
        announce: Announce,
        reply: Option<Reply>,
    ) -> Result<Reservation, StoreError> {
        let reservation = self.decide(order_id, lines, now_ms, &announce).await?;
        if let Some(reply) = reply
            && decided(&reservation)
        {
            self.publish_to(topics::STOCK, &reply(&reservation)).await?;
        }
        Ok(reservation)
    }

    async fn release(
        &self,
        order_id: Uuid,
        now_ms: i64,
        announce: Announce,
    ) -> Result<Reservation, StoreError> {
        loop {
            let Some(mut reservation) = self.reservation(order_id).await? else {
                // No reservation yet: a marker makes a late one stay released.
                let marker = self
                    .cql
                    .execute(
                        &self.claim_reservation,
                        (
                            order_id,
                            state_name(ReservationState::Released),
                            "[]",
                            "[]",
                            now_ms,
                        ),
                    )
                    .await?;
                if lwt_applied(marker)? {
                    return Ok(Reservation {
                        order_id,
                        state: ReservationState::Released,
                        lines: Vec::new(),
                        shortages: Vec::new(),
                        updated_at_ms: now_ms,
                    });
                }
                continue;
            };
            if !matches!(
                reservation.state,
                ReservationState::Reserved | ReservationState::Committed
            ) {
                return Ok(reservation);
            }
            // The state moves first, so of two releases exactly one gives the units back.
            let moved = self
                .cql
                .execute(
                    &self.move_reservation,
                    (
                        state_name(ReservationState::Released),
                        now_ms,
                        order_id,
                        state_name(reservation.state),
                    ),
                )
                .await?;
            if !lwt_applied(moved)? {
                continue;
            }
            for line in &reservation.lines {
                self.adjust(line.product_id, line.quantity, now_ms, &announce)
                    .await?
                    .ok();
            }
            reservation.state = ReservationState::Released;
            reservation.updated_at_ms = now_ms;
            return Ok(reservation);
        }
    }

    async fn commit(&self, order_id: Uuid, now_ms: i64) -> Result<Reservation, StoreError> {
        loop {
            let mut reservation = self
                .reservation(order_id)
                .await?
                .ok_or(StoreError::NotFound)?;
            match reservation.state {
                ReservationState::Committed => return Ok(reservation),
                ReservationState::Reserved => {
                    let moved = self
                        .cql
                        .execute(
                            &self.move_reservation,
                            (
                                state_name(ReservationState::Committed),
                                now_ms,
                                order_id,
                                state_name(ReservationState::Reserved),
                            ),
                        )
                        .await?;
                    if lwt_applied(moved)? {
                        reservation.state = ReservationState::Committed;
                        reservation.updated_at_ms = now_ms;
                        return Ok(reservation);
                    }
                }
                other => {
                    return Err(StoreError::Precondition(format!(
                        "a {} reservation cannot be committed",
                        state_name(other)
                    )));
                }
            }
        }
    }

    async fn rate(
        &self,
        record: &ProductRecord,
        rating_version: i64,
        event: &Event,
    ) -> Result<bool, StoreError> {
        let held: Option<(i64,)> = self
            .cql
            .first_row(&self.select_rating_version, (record.id,))
            .await?;
        if held.is_some_and(|(held,)| held >= rating_version) {
            return Ok(false);
        }
        let written = self
            .cql
            .execute(
                &self.set_rating,
                (
                    record.rating_average,
                    record.rating_count,
                    record.updated_at_ms,
                    record.version,
                    record.id,
                    record.version - 1,
                ),
            )
            .await?;
        if !lwt_applied(written)? {
            return Err(StoreError::Conflict);
        }
        // Events of one product arrive in order, so the version is written by one consumer at
        // a time; a crash before it re-applies the same rating on redelivery, which is harmless.
        self.publish(event).await?;
        self.cql
            .execute(&self.set_rating_version, (record.id, rating_version))
            .await?;
        Ok(true)
    }
}

impl CqlCatalog {
    /// Reserves, or finds the recorded reservation (see [`CatalogStore::reserve`]).
    async fn decide(
        &self,
        order_id: Uuid,
        lines: &[Line],
        now_ms: i64,
        announce: &Announce,
    ) -> Result<Reservation, StoreError> {
        let lines = canonical(lines);
        let lines_json = serde_json::to_string(&lines)?;
        let claimed = self
            .cql
            .execute(
                &self.claim_reservation,
                (order_id, "pending", &lines_json, "[]", now_ms),
            )
            .await?;
        if !lwt_applied(claimed)? {
            let existing = self.reservation(order_id).await;
            return match existing {
                Ok(Some(existing))
                    if existing.state != ReservationState::Released && existing.lines != lines =>
                {
                    Err(StoreError::Conflict)
                }
                Ok(Some(existing)) => Ok(existing),
                Ok(None) => Err(StoreError::NotFound),
                Err(other) => Err(other),
            };
        }
        let mut taken = Vec::new();
        let mut shortages = Vec::new();
        for line in &lines {
            match self
                .adjust(line.product_id, -line.quantity, now_ms, announce)
                .await?
            {
                Ok(Some(_)) => taken.push(*line),
                Ok(None) => shortages.push(Shortage {
                    product_id: line.product_id,
                    requested: line.quantity,
                    available: 0,
                }),
                Err(available) => shortages.push(Shortage {
                    product_id: line.product_id,
                    requested: line.quantity,
                    available,
                }),
            }
        }
        let state = if shortages.is_empty() {
            ReservationState::Reserved
        } else {
            // All or nothing: give back what was taken.
            for line in &taken {
                self.adjust(line.product_id, line.quantity, now_ms, announce)
                    .await?
                    .ok();
            }
            ReservationState::Rejected
        };
        self.cql
            .execute(
                &self.set_reservation,
                (
                    state_name(state),
                    serde_json::to_string(&shortages)?,
                    now_ms,
                    order_id,
                ),
            )
            .await?;
        Ok(Reservation {
            order_id,
            state,
            lines,
            shortages,
            updated_at_ms: now_ms,
        })
    }
}
