//! The catalog's domain: [`CatalogHandler`] and what it checks, changes, writes and announces
//! for categories, products and stock, free of transport (`grpc` is its gRPC face; `stock` and
//! `follow` feed it events). Requests arrive validated and access-checked; the handler adds what
//! only the catalog knows (category trees, locales, stock). Callers pass the caller's accepted
//! locales, best first, where a view is translated.

use std::collections::BTreeMap;
use std::sync::Arc;

use shopmesh_events::Event;
use shopmesh_kit::clock::{now_ms, timestamp};
use shopmesh_kit::{Error, Result, locale, paging};
use shopmesh_proto::shopmesh::catalog::v1::{
    AttributeFacet, Category, CreateCategoryRequest, CreateProductRequest, FacetCount,
    GetProductsForOrderResponse, ListCategoriesResponse, ListProductsRequest, ListProductsResponse,
    OrderableProduct, PriceBucket, Product, ProductSummary, ProductTranslation,
    ReleaseStockRequest, ReserveStockRequest, SearchFacets, SearchProductsRequest,
    SearchProductsResponse, SearchSort, StockLine, StockReservation, StockReservationState,
    StockShortage, UpdateCategoryRequest, UpdateProductRequest,
};
use shopmesh_proto::shopmesh::common::v1::{Money, RatingSummary};
use shopmesh_proto::shopmesh::events::v1::{
    ProductChanged, ProductDeleted, ProductEvent, ProductStockChanged, StockEvent, StockRejected,
    StockReserved, product_event, stock_event,
};
use tokio::sync::Notify;
use uuid::Uuid;

use shopmesh_search::{SearchQuery, Sort};

use crate::search::Search;
use crate::store::{
    Announce, CatalogStore, CategoryRecord, Line, ProductRecord, ProductText, Reply, Reservation,
    ReservationState, StockChange, StoreError,
};

const DEFAULT_PAGE: usize = 20;
const DETAIL_CACHE_ENTRIES: u64 = 50_000;
const EVENT_KIND: &str = "shopmesh.events.v1.ProductEvent";
const STOCK_EVENT_KIND: &str = "shopmesh.events.v1.StockEvent";

pub struct CatalogHandler {
    store: Arc<dyn CatalogStore>,
    /// The replica's index; `None` in tools that only write.
    search: Option<Arc<Search>>,
    /// Product details by id; entries leave when a product event for them arrives.
    details: moka::future::Cache<Uuid, Arc<ProductRecord>>,
    /// The locale of products' own title and description, and the fallback.
    default_locale: String,
    relay: Arc<Notify>,
}

impl CatalogHandler {
    pub fn new(
        store: Arc<dyn CatalogStore>,
        search: Option<Arc<Search>>,
        default_locale: String,
        relay: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            search,
            details: moka::future::Cache::builder()
                .max_capacity(DETAIL_CACHE_ENTRIES)
                // A bound on staleness should an event ever be lost.
                .time_to_live(std::time::Duration::from_secs(300))
                .build(),
            default_locale,
            relay,
        }
    }

    pub fn store(&self) -> &Arc<dyn CatalogStore> {
        &self.store
    }

    /// How many products the search index holds, if this handler keeps one.
    pub fn searchable(&self) -> Option<u64> {
        self.search.as_ref().map(|search| search.searchable())
    }

    /// Drops a product's cached details; called for every product event, whichever replica
    /// wrote the change.
    pub async fn forget(&self, product: Uuid) {
        self.details.invalidate(&product).await;
    }

    /// A product's details, from the cache when there.
    async fn cached(&self, id: &str) -> Result<Arc<ProductRecord>> {
        let id = Error::parse_id("id", id)?;
        let store = self.store.clone();
        self.details
            .try_get_with(id, async move {
                match store.product(id).await {
                    Ok(Some(record)) => Ok(Arc::new(record)),
                    Ok(None) => Err(Error::not_found("PRODUCT_NOT_FOUND", "no such product")),
                    Err(error) => Err(Error::from(error)),
                }
            })
            .await
            .map_err(|error: Arc<Error>| (*error).clone())
    }

    async fn product_record(&self, id: &str) -> Result<ProductRecord> {
        let id = Error::parse_id("id", id)?;
        self.store
            .product(id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("PRODUCT_NOT_FOUND", "no such product"))
    }

    /// `category` and every category below it.
    async fn subtree(&self, category: Uuid) -> Result<Vec<Uuid>> {
        let categories = self.store.categories().await.map_err(Error::from)?;
        if !categories.iter().any(|c| c.id == category) {
            return Err(Error::invalid_field("category", "no such category"));
        }
        let mut found = vec![category];
        let mut index = 0;
        while index < found.len() {
            let parent = found[index];
            found.extend(
                categories
                    .iter()
                    .filter(|c| c.parent_id == Some(parent))
                    .map(|c| c.id),
            );
            index += 1;
        }
        Ok(found)
    }

    /// Creates a product (handlers and the demo seed).
    pub async fn create(&self, request: CreateProductRequest) -> Result<Product> {
        let price = request.price.unwrap_or_default();
        let category_id = optional_id("category_id", &request.category_id)?;
        if let Some(category) = category_id {
            self.subtree(category)
                .await
                .map_err(|_| Error::invalid_field("category_id", "no such category"))?;
        }
        let now = now_ms();
        let record = ProductRecord {
            id: Uuid::now_v7(),
            sku: request.sku,
            category_id,
            currency: price.currency_code,
            amount_minor: price.amount_minor,
            stock: request.stock,
            rating_average: 0.0,
            rating_count: 0,
            text: ProductText {
                title: request.title,
                description: request.description,
                attributes: request.attributes.into_iter().collect(),
                translations: translations_in(request.translations),
            },
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
        };
        let event = self.changed(&record);
        match self.store.create_product(&record, &event).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                return Err(
                    Error::already_exists("SKU_TAKEN", "a product with this SKU exists")
                        .with_metadata("sku", record.sku),
                );
            }
            Err(other) => return Err(Error::from(other)),
        }
        self.relay.notify_one();
        Ok(self.view(&record, &[]))
    }

    /// Stores a product made outside the API (`shopmesh seed`), with its event; `false` when
    /// its SKU exists already.
    pub async fn import(&self, record: ProductRecord) -> Result<bool> {
        let event = self.changed(&record);
        match self.store.create_product(&record, &event).await {
            Ok(()) => {
                self.relay.notify_one();
                Ok(true)
            }
            Err(StoreError::Conflict) => Ok(false),
            Err(other) => Err(Error::from(other)),
        }
    }

    /// A product as the API shows it, in the best of the caller's languages.
    fn view(&self, record: &ProductRecord, accepted: &[String]) -> Product {
        let text = &record.text;
        let (chosen, translation) =
            locale::choose(accepted, &self.default_locale, &text.translations);
        let (title, description) = translation
            .cloned()
            .unwrap_or_else(|| (text.title.clone(), text.description.clone()));
        Product {
            id: record.id.to_string(),
            sku: record.sku.clone(),
            title,
            description,
            price: Some(Money {
                currency_code: record.currency.clone(),
                amount_minor: record.amount_minor,
            }),
            category_id: record
                .category_id
                .map(|c| c.to_string())
                .unwrap_or_default(),
            attributes: text.attributes.clone().into_iter().collect(),
            stock: record.stock,
            rating: Some(RatingSummary {
                average: record.rating_average,
                count: record.rating_count,
            }),
            translations: text
                .translations
                .iter()
                .map(|(locale, (title, description))| {
                    (
                        locale.clone(),
                        ProductTranslation {
                            title: title.clone(),
                            description: description.clone(),
                        },
                    )
                })
                .collect(),
            locale: chosen.to_owned(),
            created_at: Some(timestamp(record.created_at_ms)),
            updated_at: Some(timestamp(record.updated_at_ms)),
        }
    }

    fn changed(&self, record: &ProductRecord) -> Event {
        product_event(
            record.id,
            record.version,
            product_event::Payload::Changed(ProductChanged {
                product: Some(self.view(record, &[])),
            }),
        )
    }

    /// Reserves an order's lines (the `ReserveStock` RPC and the saga's `OrderCreated`); the
    /// outcome goes out as a `StockEvent` with the change.
    pub async fn reserve(&self, order_id: Uuid, lines: &[Line]) -> Result<Reservation> {
        let reply: Reply = Arc::new(stock_event);
        let reservation = self
            .store
            .reserve(order_id, lines, now_ms(), self.announce(), Some(reply))
            .await
            .map_err(|error| match error {
                StoreError::Conflict => Error::already_exists(
                    "RESERVATION_EXISTS",
                    "the order already has a reservation with other lines",
                ),
                other => Error::from(other),
            })?;
        self.relay.notify_one();
        Ok(reservation)
    }

    /// Returns an order's units to stock (payment failed, or cancelled).
    pub async fn release(&self, order_id: Uuid) -> Result<Reservation> {
        let reservation = self
            .store
            .release(order_id, now_ms(), self.announce())
            .await
            .map_err(Error::from)?;
        self.relay.notify_one();
        Ok(reservation)
    }

    /// Marks an order's units sold (paid).
    pub async fn commit(&self, order_id: Uuid) -> Result<Reservation> {
        self.store
            .commit(order_id, now_ms())
            .await
            .map_err(|error| match error {
                StoreError::NotFound => Error::failed_precondition(
                    "NO_RESERVATION",
                    "the order has no reservation to commit",
                ),
                other => Error::from(other),
            })
    }

    /// Sets a product's rating to the aggregate reviews announced at `rating_version`, unless
    /// the product holds this or a newer one; the change goes out as `ProductChanged`, so search
    /// indexes and detail caches follow. `false` when nothing changed (a repeated or late
    /// aggregate, or a product that is gone).
    pub async fn rate(
        &self,
        product_id: Uuid,
        rating: RatingSummary,
        rating_version: i64,
    ) -> Result<bool> {
        for _ in 0..5 {
            let Some(mut record) = self.store.product(product_id).await.map_err(Error::from)?
            else {
                return Ok(false);
            };
            record.rating_average = rating.average;
            record.rating_count = rating.count;
            record.version += 1;
            record.updated_at_ms = now_ms().max(record.updated_at_ms);
            let event = self.changed(&record);
            match self.store.rate(&record, rating_version, &event).await {
                Ok(changed) => {
                    if changed {
                        self.forget(product_id).await;
                        self.relay.notify_one();
                    }
                    return Ok(changed);
                }
                Err(StoreError::Conflict) => continue,
                Err(other) => return Err(Error::from(other)),
            }
        }
        Err(Error::aborted(
            "CONCURRENT_UPDATE",
            "the product kept changing; retry",
        ))
    }

    fn announce(&self) -> Announce {
        Arc::new(|change: &StockChange| {
            product_event(
                change.product_id,
                change.version,
                product_event::Payload::StockChanged(ProductStockChanged {
                    stock: change.stock,
                }),
            )
        })
    }

    fn category_view(&self, record: &CategoryRecord, accepted: &[String]) -> Category {
        Category {
            id: record.id.to_string(),
            parent_id: record.parent_id.map(|p| p.to_string()).unwrap_or_default(),
            slug: record.slug.clone(),
            name: record.name_in(accepted, &self.default_locale),
            translations: record.translations.clone().into_iter().collect(),
            position: record.position,
        }
    }

    /// Creates a category (handlers and the demo seed).
    pub async fn create_category_record(&self, request: CreateCategoryRequest) -> Result<Category> {
        let parent_id = optional_id("parent_id", &request.parent_id)?;
        if let Some(parent) = parent_id {
            self.subtree(parent)
                .await
                .map_err(|_| Error::invalid_field("parent_id", "no such category"))?;
        }
        let record = CategoryRecord {
            id: Uuid::now_v7(),
            parent_id,
            slug: request.slug,
            name: request.name,
            translations: request.translations.into_iter().collect(),
            position: request.position,
        };
        match self.store.create_category(&record).await {
            Ok(()) => Ok(self.category_view(&record, &[])),
            Err(StoreError::Conflict) => Err(Error::already_exists(
                "SLUG_TAKEN",
                "a category with this slug exists",
            )),
            Err(other) => Err(Error::from(other)),
        }
    }

    /// Every category, parents before their children, named in the best of `accepted`.
    pub async fn list_categories(&self, accepted: &[String]) -> Result<ListCategoriesResponse> {
        let mut categories = self.store.categories().await.map_err(Error::from)?;
        // Parents before their children: by depth, then as stored (position, name).
        let depth = |category: &CategoryRecord| {
            let mut depth = 0;
            let mut parent = category.parent_id;
            while let Some(id) = parent
                && depth < 32
            {
                depth += 1;
                parent = categories
                    .iter()
                    .find(|c| c.id == id)
                    .and_then(|c| c.parent_id);
            }
            depth
        };
        let depths: Vec<usize> = categories.iter().map(depth).collect();
        let mut order: Vec<usize> = (0..categories.len()).collect();
        order.sort_by_key(|&i| depths[i]);
        categories = order.into_iter().map(|i| categories[i].clone()).collect();
        Ok(ListCategoriesResponse {
            categories: categories
                .iter()
                .map(|c| self.category_view(c, accepted))
                .collect(),
        })
    }

    /// A page of products in creation order, optionally of one category and those below it;
    /// a listing carries no translations.
    pub async fn list_products(
        &self,
        request: ListProductsRequest,
        accepted: &[String],
    ) -> Result<ListProductsResponse> {
        let categories = match optional_id("category", &request.category)? {
            Some(category) => Some(self.subtree(category).await?),
            None => None,
        };
        let size = match request.page_size {
            0 => DEFAULT_PAGE,
            size => size.clamp(1, 100) as usize,
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(paging::decode(token)?),
        };
        let mut records = self
            .store
            .list_products(categories.as_deref(), after, size + 1)
            .await
            .map_err(Error::from)?;
        let more = records.len() > size;
        records.truncate(size);
        let next_page_token = match records.last() {
            Some(last) if more => paging::encode((last.created_at_ms, last.id)),
            _ => String::new(),
        };
        Ok(ListProductsResponse {
            products: records
                .iter()
                .map(|record| {
                    let mut product = self.view(record, accepted);
                    product.translations.clear();
                    product
                })
                .collect(),
            next_page_token,
        })
    }

    /// One product, read through the detail cache, in the best of `accepted`.
    pub async fn product(&self, id: &str, accepted: &[String]) -> Result<Product> {
        let record = self.cached(id).await?;
        Ok(self.view(&record, accepted))
    }

    /// Full-text search with facets on this replica's index; `accepted`'s first locale picks
    /// the language searched.
    pub async fn search_products(
        &self,
        request: SearchProductsRequest,
        accepted: &[String],
    ) -> Result<SearchProductsResponse> {
        let search = self.search.as_ref().ok_or_else(|| {
            Error::unavailable(
                "SEARCH_UNAVAILABLE",
                "this catalog process has no search index",
            )
        })?;
        let sort = match SearchSort::try_from(request.sort).unwrap_or_default() {
            SearchSort::PriceAsc => Sort::PriceAsc,
            SearchSort::PriceDesc => Sort::PriceDesc,
            SearchSort::Rating => Sort::Rating,
            SearchSort::Newest => Sort::Newest,
            SearchSort::Relevance | SearchSort::Unspecified => Sort::Relevance,
        };
        let query = SearchQuery {
            q: request.q,
            locale: accepted
                .first()
                .cloned()
                .unwrap_or_else(|| self.default_locale.clone()),
            category: Some(request.category).filter(|c| !c.is_empty()),
            min_price: request.min_price,
            max_price: request.max_price,
            in_stock: request.in_stock,
            min_rating: request.min_rating,
            attributes: request.attr.into_iter().collect(),
            sort,
            page_size: request.page_size.max(0) as usize,
            page_token: Some(request.page_token).filter(|t| !t.is_empty()),
        };
        let results = search.search(query).await?;
        let count = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
        let facets = SearchFacets {
            categories: results
                .facets
                .categories
                .iter()
                .map(|(id, n)| FacetCount {
                    value: id.clone(),
                    label: search.category_label(id, accepted),
                    count: count(*n),
                })
                .collect(),
            attributes: results
                .facets
                .attributes
                .iter()
                .map(|(name, values)| AttributeFacet {
                    name: name.clone(),
                    values: values
                        .iter()
                        .map(|(value, n)| FacetCount {
                            value: value.clone(),
                            label: value.clone(),
                            count: count(*n),
                        })
                        .collect(),
                })
                .collect(),
            price_buckets: results
                .facets
                .price_buckets
                .iter()
                .map(|(min, max, n)| PriceBucket {
                    min_amount_minor: *min,
                    max_amount_minor: *max,
                    count: count(*n),
                })
                .collect(),
        };
        Ok(SearchProductsResponse {
            results: results
                .hits
                .into_iter()
                .map(|hit| ProductSummary {
                    id: hit.id,
                    sku: hit.sku,
                    title: hit.title,
                    price: Some(Money {
                        currency_code: hit.currency,
                        amount_minor: hit.price_minor,
                    }),
                    category_id: hit.category_id,
                    rating: Some(RatingSummary {
                        average: hit.rating_average,
                        count: hit.rating_count,
                    }),
                    in_stock: hit.in_stock,
                })
                .collect(),
            facets: Some(facets),
            total: count(results.total),
            next_page_token: results.next_page_token.unwrap_or_default(),
        })
    }

    /// Changes the fields the update mask names, retrying over concurrent changes.
    pub async fn update_product(&self, request: UpdateProductRequest) -> Result<Product> {
        let update = request.product.unwrap_or_default();
        let mask = request.update_mask.map(|m| m.paths).unwrap_or_default();
        for _ in 0..5 {
            let mut record = self.product_record(&request.id).await?;
            let previous_sku = record.sku.clone();
            for path in &mask {
                match path.as_str() {
                    "sku" => record.sku = update.sku.clone(),
                    "title" => record.text.title = update.title.clone(),
                    "description" => record.text.description = update.description.clone(),
                    "price" => {
                        let price = update.price.clone().unwrap_or_default();
                        record.currency = price.currency_code;
                        record.amount_minor = price.amount_minor;
                    }
                    "category_id" => {
                        let category = optional_id("product.category_id", &update.category_id)?;
                        if let Some(category) = category {
                            self.subtree(category).await.map_err(|_| {
                                Error::invalid_field("product.category_id", "no such category")
                            })?;
                        }
                        record.category_id = category;
                    }
                    "attributes" => {
                        record.text.attributes = update.attributes.clone().into_iter().collect();
                    }
                    "stock" => record.stock = update.stock,
                    "translations" => {
                        record.text.translations = translations_in(update.translations.clone());
                    }
                    other => {
                        return Err(Error::invalid_field(
                            "update_mask",
                            format!("`{other}` cannot be changed"),
                        ));
                    }
                }
            }
            record.version += 1;
            record.updated_at_ms = now_ms();
            let event = self.changed(&record);
            match self
                .store
                .update_product(&record, &previous_sku, &event)
                .await
            {
                Ok(()) => {
                    // This replica answers with the change at once; the event tells the others.
                    self.forget(record.id).await;
                    self.relay.notify_one();
                    return Ok(self.view(&record, &[]));
                }
                Err(StoreError::Conflict) if previous_sku != record.sku => {
                    // Either the new SKU is taken or the product changed; a re-read tells.
                    let current = self.product_record(&request.id).await?;
                    if current.version == record.version - 1 {
                        return Err(Error::already_exists(
                            "SKU_TAKEN",
                            "a product with this SKU exists",
                        ));
                    }
                }
                Err(StoreError::Conflict) => {}
                Err(other) => return Err(Error::from(other)),
            }
        }
        Err(Error::aborted(
            "CONCURRENT_UPDATE",
            "the product kept changing; retry",
        ))
    }

    /// Deletes a product, with its event, retrying over concurrent changes.
    pub async fn delete_product(&self, id: &str) -> Result<()> {
        for _ in 0..5 {
            let record = self.product_record(id).await?;
            let event = product_event(
                record.id,
                record.version + 1,
                product_event::Payload::Deleted(ProductDeleted {}),
            );
            match self.store.delete_product(&record, &event).await {
                Ok(()) => {
                    self.forget(record.id).await;
                    self.relay.notify_one();
                    return Ok(());
                }
                Err(StoreError::Conflict) => continue,
                Err(other) => return Err(Error::from(other)),
            }
        }
        Err(Error::aborted(
            "CONCURRENT_UPDATE",
            "the product kept changing; retry",
        ))
    }

    /// Changes the fields the update mask names; a category cannot move below itself.
    pub async fn update_category(&self, request: UpdateCategoryRequest) -> Result<Category> {
        let id = Error::parse_id("id", &request.id)?;
        let update = request.category.unwrap_or_default();
        let mut record = self
            .store
            .categories()
            .await
            .map_err(Error::from)?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| Error::not_found("CATEGORY_NOT_FOUND", "no such category"))?;
        for path in request.update_mask.map(|m| m.paths).unwrap_or_default() {
            match path.as_str() {
                "parent_id" => {
                    let parent = optional_id("category.parent_id", &update.parent_id)?;
                    if let Some(parent) = parent
                        && self.subtree(id).await?.contains(&parent)
                    {
                        return Err(Error::failed_precondition(
                            "CATEGORY_CYCLE",
                            "a category cannot move below itself",
                        ));
                    }
                    record.parent_id = parent;
                }
                "slug" => record.slug = update.slug.clone(),
                "name" => record.name = update.name.clone(),
                "translations" => {
                    record.translations = update.translations.clone().into_iter().collect()
                }
                "position" => record.position = update.position,
                other => {
                    return Err(Error::invalid_field(
                        "update_mask",
                        format!("`{other}` cannot be changed"),
                    ));
                }
            }
        }
        match self.store.update_category(&record).await {
            Ok(()) => Ok(self.category_view(&record, &[])),
            Err(StoreError::Conflict) => Err(Error::already_exists(
                "SLUG_TAKEN",
                "a category with this slug exists",
            )),
            Err(other) => Err(Error::from(other)),
        }
    }

    /// Deletes a category; the store refuses one that still has children or products.
    pub async fn delete_category(&self, id: &str) -> Result<()> {
        let id = Error::parse_id("id", id)?;
        self.store.delete_category(id).await.map_err(Error::from)
    }

    /// What orders needs to price an order: each product found, in the best of `accepted`,
    /// and the ids of those that are not.
    pub async fn products_for_order(
        &self,
        product_ids: Vec<String>,
        accepted: &[String],
    ) -> Result<GetProductsForOrderResponse> {
        let mut products = Vec::new();
        let mut missing_product_ids = Vec::new();
        for id in product_ids {
            let found = self
                .store
                .product(Error::parse_id("product_ids", &id)?)
                .await
                .map_err(Error::from)?;
            match found {
                Some(record) => {
                    let view = self.view(&record, accepted);
                    products.push(OrderableProduct {
                        product_id: view.id,
                        sku: view.sku,
                        title: view.title,
                        unit_price: view.price,
                        stock: view.stock,
                    });
                }
                None => missing_product_ids.push(id),
            }
        }
        Ok(GetProductsForOrderResponse {
            products,
            missing_product_ids,
        })
    }

    /// The `ReserveStock` request: one line per product, then [`CatalogHandler::reserve`].
    pub async fn reserve_stock(&self, request: ReserveStockRequest) -> Result<StockReservation> {
        let order_id = Error::parse_id("order_id", &request.order_id)?;
        let mut lines: BTreeMap<Uuid, i32> = BTreeMap::new();
        for item in request.items {
            let product_id = Error::parse_id("items.product_id", &item.product_id)?;
            if lines.insert(product_id, item.quantity).is_some() {
                return Err(Error::invalid_field("items", "one line per product"));
            }
        }
        let lines: Vec<Line> = lines
            .into_iter()
            .map(|(product_id, quantity)| Line {
                product_id,
                quantity,
            })
            .collect();
        let reservation = self.reserve(order_id, &lines).await?;
        Ok(reservation_view(&reservation))
    }

    /// The `ReleaseStock` request: [`CatalogHandler::release`], its reason logged.
    pub async fn release_stock(&self, request: ReleaseStockRequest) -> Result<StockReservation> {
        let order_id = Error::parse_id("order_id", &request.order_id)?;
        let reservation = self.release(order_id).await?;
        tracing::info!(order_id = %order_id, reason = request.reason, "stock released");
        Ok(reservation_view(&reservation))
    }

    /// The `CommitStock` request: [`CatalogHandler::commit`].
    pub async fn commit_stock(&self, order_id: &str) -> Result<StockReservation> {
        let order_id = Error::parse_id("order_id", order_id)?;
        let reservation = self.commit(order_id).await?;
        Ok(reservation_view(&reservation))
    }
}

/// The `StockEvent` announcing a reserved or rejected reservation.
fn stock_event(reservation: &Reservation) -> Event {
    let view = reservation_view(reservation);
    let payload = if reservation.state == ReservationState::Rejected {
        stock_event::Payload::Rejected(StockRejected {
            shortages: view.shortages,
        })
    } else {
        stock_event::Payload::Reserved(StockReserved { items: view.items })
    };
    let key = reservation.order_id.to_string();
    Event::enveloped(key.clone(), STOCK_EVENT_KIND, "catalog", |meta| {
        StockEvent {
            meta: Some(meta),
            order_id: key,
            payload: Some(payload),
        }
    })
}

fn reservation_view(reservation: &Reservation) -> StockReservation {
    StockReservation {
        order_id: reservation.order_id.to_string(),
        state: match reservation.state {
            ReservationState::Reserved => StockReservationState::Reserved,
            ReservationState::Rejected => StockReservationState::Rejected,
            ReservationState::Released => StockReservationState::Released,
            ReservationState::Committed => StockReservationState::Committed,
        } as i32,
        items: reservation
            .lines
            .iter()
            .map(|line| StockLine {
                product_id: line.product_id.to_string(),
                quantity: line.quantity,
            })
            .collect(),
        shortages: reservation
            .shortages
            .iter()
            .map(|s| StockShortage {
                product_id: s.product_id.to_string(),
                requested: s.requested,
                available: s.available,
            })
            .collect(),
        updated_at: Some(timestamp(reservation.updated_at_ms)),
    }
}

fn translations_in(
    translations: impl IntoIterator<Item = (String, ProductTranslation)>,
) -> BTreeMap<String, (String, String)> {
    translations
        .into_iter()
        .map(|(locale, t)| (locale, (t.title, t.description)))
        .collect()
}

fn optional_id(field: &str, text: &str) -> Result<Option<Uuid>> {
    if text.is_empty() {
        Ok(None)
    } else {
        Error::parse_id(field, text).map(Some)
    }
}

/// A product event, its envelope filled from the event itself.
fn product_event(product: Uuid, version: i64, payload: product_event::Payload) -> Event {
    Event::enveloped(product.to_string(), EVENT_KIND, "catalog", |meta| {
        ProductEvent {
            meta: Some(meta),
            product_id: product.to_string(),
            version,
            payload: Some(payload),
        }
    })
}
