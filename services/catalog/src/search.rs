//! The catalog's search: one tantivy index per replica (`shopmesh-search`), rebuilt from storage
//! when missing or of an older schema, and kept current by the product events every replica
//! follows. The index API blocks, so every call runs on a blocking thread.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use prost::Message as _;
use shopmesh_kit::{Error, Result};
use shopmesh_proto::shopmesh::catalog::v1::Product;
use shopmesh_proto::shopmesh::events::v1::{ProductEvent, product_event};
use shopmesh_search::{Index, IndexedProduct, SearchError, SearchQuery, SearchResults};
use uuid::Uuid;

use crate::store::{CatalogStore, CategoryRecord, ProductRecord, StoreError};

/// Products read from storage per page while rebuilding.
const REBUILD_PAGE: usize = 500;

/// A replica's search index and what it needs to turn products into index documents.
pub struct Search {
    index: Arc<Index>,
    store: Arc<dyn CatalogStore>,
    default_locale: String,
    /// The categories, to give every document its category path and facets their labels.
    categories: RwLock<BTreeMap<Uuid, CategoryRecord>>,
}

impl Search {
    /// Opens the index in `dir`, rebuilding it from `store` when needed (with progress lines).
    pub async fn open(
        dir: &Path,
        store: Arc<dyn CatalogStore>,
        default_locale: String,
    ) -> anyhow::Result<Self> {
        let dir = dir.to_owned();
        let (index, stale) = tokio::task::spawn_blocking(move || Index::open(&dir)).await??;
        let search = Self {
            index: Arc::new(index),
            store,
            default_locale,
            categories: RwLock::default(),
        };
        search.refresh_categories().await?;
        if stale {
            search.rebuild().await?;
        }
        Ok(search)
    }

    async fn refresh_categories(&self) -> std::result::Result<(), StoreError> {
        let categories = self.store.categories().await?;
        *self.categories.write().expect("category lock") =
            categories.into_iter().map(|c| (c.id, c)).collect();
        Ok(())
    }

    /// Streams every stored product into a fresh index.
    async fn rebuild(&self) -> anyhow::Result<()> {
        let (send, receive) = std::sync::mpsc::sync_channel::<IndexedProduct>(REBUILD_PAGE);
        let index = self.index.clone();
        let building = tokio::task::spawn_blocking(move || {
            index.rebuild(receive, |done| {
                if done % 10_000 == 0 && done > 0 {
                    println!("  search index   {done} products indexed");
                }
            })
        });
        let mut after = None;
        let mut fed = 0u64;
        loop {
            let page = self.store.list_products(None, after, REBUILD_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some((last.created_at_ms, last.id));
            for record in &page {
                let document = self.document_of_record(record);
                // A send fails only if the builder stopped; its error comes out below.
                if send.send(document).is_err() {
                    break;
                }
                fed += 1;
            }
        }
        drop(send);
        let indexed = building.await??;
        println!("  search index   rebuilt with {indexed} of {fed} products");
        Ok(())
    }

    /// Applies one product event to the index.
    pub async fn apply(&self, payload: &[u8]) -> Result<()> {
        let event = ProductEvent::decode(payload)
            .map_err(|e| Error::internal("undecodable product event", e))?;
        let id = Uuid::parse_str(&event.product_id)
            .map_err(|e| Error::internal("product event with a bad id", e))?;
        let index = self.index.clone();
        match event.payload {
            Some(product_event::Payload::Changed(changed)) => {
                let Some(product) = changed.product else {
                    return Ok(());
                };
                let document = self.document_of_view(&product, event.version).await?;
                blocking(move || index.upsert(document)).await
            }
            Some(product_event::Payload::StockChanged(_)) => {
                // The event carries only the stock: index the product as stored now.
                match self.store.product(id).await {
                    Ok(Some(record)) => {
                        let document = self.document_of_record(&record);
                        blocking(move || index.upsert(document)).await
                    }
                    Ok(None) => Ok(()),
                    Err(error) => Err(error_of(error)),
                }
            }
            Some(product_event::Payload::Deleted(_)) => {
                let version = event.version;
                blocking(move || index.delete(&id.to_string(), version)).await
            }
            None => Ok(()),
        }
    }

    /// The number of searchable products.
    pub fn searchable(&self) -> u64 {
        self.index.len()
    }

    pub async fn search(&self, query: SearchQuery) -> Result<SearchResults> {
        let index = self.index.clone();
        blocking(move || index.search(&query)).await
    }

    /// A category's name in the best of `accepted`, for facet labels.
    pub fn category_label(&self, id: &str, accepted: &[String]) -> String {
        let categories = self.categories.read().expect("category lock");
        let Some(category) = Uuid::parse_str(id).ok().and_then(|id| categories.get(&id)) else {
            return id.to_owned();
        };
        category.name_in(accepted, &self.default_locale)
    }

    /// The category path (root first) of `category`.
    fn path(&self, category: Option<Uuid>) -> Vec<String> {
        let categories = self.categories.read().expect("category lock");
        let mut path = Vec::new();
        let mut next = category;
        while let Some(id) = next {
            if path.len() > 32 || path.contains(&id.to_string()) {
                break;
            }
            path.push(id.to_string());
            next = categories.get(&id).and_then(|c| c.parent_id);
        }
        path.reverse();
        path
    }

    /// Titles and descriptions by locale: the original under the default locale, then each
    /// translation.
    fn by_locale<'a>(
        &self,
        title: &str,
        description: &str,
        translations: impl Iterator<Item = (&'a String, &'a String, &'a String)>,
    ) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let mut titles = BTreeMap::from([(self.default_locale.clone(), title.to_owned())]);
        let mut descriptions =
            BTreeMap::from([(self.default_locale.clone(), description.to_owned())]);
        for (locale, title, description) in translations {
            titles.insert(locale.clone(), title.clone());
            descriptions.insert(locale.clone(), description.clone());
        }
        (titles, descriptions)
    }

    fn document_of_record(&self, record: &ProductRecord) -> IndexedProduct {
        let text = &record.text;
        let (titles, descriptions) = self.by_locale(
            &text.title,
            &text.description,
            text.translations.iter().map(|(l, (t, d))| (l, t, d)),
        );
        IndexedProduct {
            id: record.id.to_string(),
            sku: record.sku.clone(),
            titles,
            descriptions,
            default_locale: self.default_locale.clone(),
            attributes: text.attributes.clone(),
            category_path: self.path(record.category_id),
            price_minor: record.amount_minor,
            currency: record.currency.clone(),
            stock: record.stock,
            rating_average: record.rating_average,
            rating_count: record.rating_count,
            created_at_ms: record.created_at_ms,
            version: record.version,
        }
    }

    /// A document from an event's product (the whole product, translations included).
    async fn document_of_view(&self, product: &Product, version: i64) -> Result<IndexedProduct> {
        let category = if product.category_id.is_empty() {
            None
        } else {
            Uuid::parse_str(&product.category_id).ok()
        };
        if let Some(category) = category
            && !self
                .categories
                .read()
                .expect("category lock")
                .contains_key(&category)
        {
            self.refresh_categories().await.map_err(error_of)?;
        }
        let (titles, descriptions) = self.by_locale(
            &product.title,
            &product.description,
            product
                .translations
                .iter()
                .map(|(l, t)| (l, &t.title, &t.description)),
        );
        let price = product.price.clone().unwrap_or_default();
        let rating = product.rating.unwrap_or_default();
        Ok(IndexedProduct {
            id: product.id.clone(),
            sku: product.sku.clone(),
            titles,
            descriptions,
            default_locale: self.default_locale.clone(),
            attributes: product.attributes.clone().into_iter().collect(),
            category_path: self.path(category),
            price_minor: price.amount_minor,
            currency: price.currency_code,
            stock: product.stock,
            rating_average: rating.average,
            rating_count: rating.count,
            created_at_ms: product
                .created_at
                .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
            version,
        })
    }
}

fn error_of(error: StoreError) -> shopmesh_kit::Error {
    match error {
        StoreError::Storage(error) => error.into(),
        other => Error::internal("search indexing", other),
    }
}

/// Runs an index call on a blocking thread, mapping its errors: a bad query names the
/// parameter; anything else is ours.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::result::Result<T, SearchError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::internal("search task failed", e))?
        .map_err(|error| match error {
            SearchError::InvalidQuery { field, reason } => Error::invalid_field(field, reason),
            SearchError::Index(cause) => Error::internal("search index", cause),
        })
}
