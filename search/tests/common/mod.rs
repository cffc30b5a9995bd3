//! Helpers shared by the search tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use shopmesh_search::{Index, IndexOptions, IndexedProduct, SearchQuery, SearchResults};

/// An index with a small writer, opened in `dir`.
pub fn open(dir: &Path) -> (Index, bool) {
    let options = IndexOptions {
        writer_threads: 1,
        writer_memory_bytes: 20 << 20,
        ..IndexOptions::default()
    };
    Index::open_with(dir, options).expect("open the index")
}

/// A product with an English title and otherwise plain values.
pub fn product(id: &str, title_en: &str) -> IndexedProduct {
    IndexedProduct {
        id: id.to_owned(),
        sku: format!("SKU-{id}"),
        titles: BTreeMap::from([("en".to_owned(), title_en.to_owned())]),
        descriptions: BTreeMap::new(),
        default_locale: "en".to_owned(),
        attributes: BTreeMap::new(),
        category_path: vec!["root".to_owned()],
        price_minor: 1_000,
        currency: "EUR".to_owned(),
        stock: 5,
        rating_average: 4.0,
        rating_count: 10,
        created_at_ms: 1_700_000_000_000,
        version: 1,
    }
}

/// Sets a title or description in another locale.
pub fn with_title(mut product: IndexedProduct, locale: &str, title: &str) -> IndexedProduct {
    product.titles.insert(locale.to_owned(), title.to_owned());
    product
}

pub fn with_description(
    mut product: IndexedProduct,
    locale: &str,
    description: &str,
) -> IndexedProduct {
    product
        .descriptions
        .insert(locale.to_owned(), description.to_owned());
    product
}

pub fn with_attribute(mut product: IndexedProduct, name: &str, value: &str) -> IndexedProduct {
    product.attributes.insert(name.to_owned(), value.to_owned());
    product
}

/// A query for `q` in `locale`, everything else default.
pub fn query(q: &str, locale: &str) -> SearchQuery {
    SearchQuery {
        q: q.to_owned(),
        locale: locale.to_owned(),
        ..SearchQuery::default()
    }
}

/// Indexes products and makes them searchable.
pub fn index_all(index: &Index, products: impl IntoIterator<Item = IndexedProduct>) {
    for product in products {
        index.upsert(product).expect("upsert");
    }
    index.flush().expect("flush");
}

pub fn search(index: &Index, query: &SearchQuery) -> SearchResults {
    index.search(query).expect("search")
}

/// The ids of the hits, in order.
pub fn ids(results: &SearchResults) -> Vec<String> {
    results.hits.iter().map(|hit| hit.id.clone()).collect()
}

/// The ids of the hits of a query in a locale.
pub fn find(index: &Index, q: &str, locale: &str) -> Vec<String> {
    ids(&search(index, &query(q, locale)))
}
