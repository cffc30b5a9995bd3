//! The product search index of a catalog replica, on tantivy.
//!
//! Each catalog replica keeps one [`Index`] in its data directory, feeds it from product events
//! ([`Index::upsert`], [`Index::delete`]) and rebuilds it from storage when [`Index::open`] says
//! so. Searches ([`Index::search`]) combine full text in the shopper's language (stemming per
//! locale, typo tolerance, search as you type, phrases, exact SKU) with filters, facet counts,
//! sorts and page tokens.
//!
//! All methods block (disk and CPU): call them from a blocking thread (`spawn_blocking`), never
//! directly on an async executor.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

mod expand;
mod facets;
pub mod generate;
mod index;
mod query;
mod schema;
mod text;
mod tier;
mod token;

pub use index::{Index, IndexOptions};

/// The largest `q` accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 256;
/// The largest `page_size` accepted.
pub const MAX_PAGE_SIZE: usize = 100;
/// The page size used when a query asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// How deep page tokens reach: no token is handed out for results past this many hits.
pub const MAX_RESULT_WINDOW: usize = 10_000;

/// A product as the index sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexedProduct {
    /// The product id (a UUID).
    pub id: String,
    pub sku: String,
    /// Locale (`en`, `de`, `fr`, …) → title.
    pub titles: BTreeMap<String, String>,
    /// Locale → description.
    pub descriptions: BTreeMap<String, String>,
    /// The locale of the titles and descriptions to fall back to.
    pub default_locale: String,
    /// Colour, size, brand…
    pub attributes: BTreeMap<String, String>,
    /// Category ids from the root to the product's own category.
    pub category_path: Vec<String>,
    pub price_minor: i64,
    pub currency: String,
    pub stock: i32,
    pub rating_average: f64,
    pub rating_count: i32,
    pub created_at_ms: i64,
    /// Increases with every change; an older version never overwrites a newer one.
    pub version: i64,
}

/// The order of results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Sort {
    /// Best match first; without query text, newest first.
    #[default]
    Relevance,
    PriceAsc,
    PriceDesc,
    /// Highest average rating first, then most ratings.
    Rating,
    /// Most recently created first.
    Newest,
}

/// A search request. An empty `q` lists the products that pass the filters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchQuery {
    /// The shopper's text: words, `"quoted phrases"`, or a SKU.
    pub q: String,
    /// The shopper's locale (`de`, `de-CH`): picks the analyzer and the title of each hit.
    pub locale: String,
    /// A category id: matches the category and every category below it.
    pub category: Option<String>,
    /// Minor units, inclusive.
    pub min_price: Option<i64>,
    /// Minor units, inclusive.
    pub max_price: Option<i64>,
    pub in_stock: bool,
    pub min_rating: Option<f64>,
    /// Attribute name → value every hit must have (case-insensitive).
    pub attributes: BTreeMap<String, String>,
    pub sort: Sort,
    /// At most [`MAX_PAGE_SIZE`]; 0 means [`DEFAULT_PAGE_SIZE`].
    pub page_size: usize,
    /// The `next_page_token` of the previous page of the same query.
    pub page_token: Option<String>,
}

/// One result.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub id: String,
    pub sku: String,
    /// In the query's locale, falling back to the product's default locale.
    pub title: String,
    pub price_minor: i64,
    pub currency: String,
    /// The product's own category.
    pub category_id: String,
    pub rating_average: f64,
    pub rating_count: i32,
    pub in_stock: bool,
}

/// Counts over every product that matches the query and its filters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facets {
    /// Category id → products, a product counting in its own category and every ancestor;
    /// most products first.
    pub categories: Vec<(String, u64)>,
    /// Attribute name → (value, products), most products first (up to 20 values a name).
    pub attributes: BTreeMap<String, Vec<(String, u64)>>,
    /// `(from, to, products)` in minor units, `from` inclusive, `to` exclusive (`None`: no upper
    /// bound); only buckets with products.
    pub price_buckets: Vec<(i64, Option<i64>, u64)>,
}

/// A page of results.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchResults {
    pub hits: Vec<Hit>,
    /// How many products match.
    pub total: u64,
    pub facets: Facets,
    /// Asks for the next page; `None` on the last one.
    pub next_page_token: Option<String>,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The request is invalid (a `400` naming `field`).
    #[error("invalid {field}: {reason}")]
    InvalidQuery { field: &'static str, reason: String },
    /// The index failed (an internal error).
    #[error("search index: {0}")]
    Index(String),
}

impl SearchError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> SearchError {
        SearchError::InvalidQuery {
            field,
            reason: reason.into(),
        }
    }
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(error: tantivy::TantivyError) -> SearchError {
        SearchError::Index(error.to_string())
    }
}

impl From<std::io::Error> for SearchError {
    fn from(error: std::io::Error) -> SearchError {
        SearchError::Index(error.to_string())
    }
}
