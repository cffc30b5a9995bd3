//! Filters, facets, sorts, page tokens and the refusal of bad requests.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::*;
use shopmesh_search::{Index, IndexedProduct, SearchError, SearchQuery, Sort};

/// Ten lamps and ten chairs under `home`, with prices, stock, ratings, colours and ages that
/// differ per product.
fn catalog() -> Vec<IndexedProduct> {
    let mut products = Vec::new();
    for n in 0..20i64 {
        let (kind, leaf) = if n < 10 {
            ("Lamp", "lighting")
        } else {
            ("Chair", "seating")
        };
        let mut p = product(&format!("p{n:02}"), &format!("Oak {kind} {n}"));
        p.category_path = vec!["home".to_owned(), leaf.to_owned()];
        p.price_minor = 500 + n * 700; // 5.00 … 138.00
        p.stock = if n % 4 == 0 { 0 } else { 3 };
        p.rating_average = (n % 5) as f64 + 0.5;
        p.rating_count = n as i32;
        p.created_at_ms = 1_700_000_000_000 + n * 60_000;
        let colour = if n % 2 == 0 { "Red" } else { "Blue" };
        products.push(with_attribute(p, "colour", colour));
    }
    products
}

fn indexed() -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    index_all(&index, catalog());
    (dir, index)
}

fn listing() -> SearchQuery {
    SearchQuery {
        locale: "en".to_owned(),
        page_size: 100,
        ..SearchQuery::default()
    }
}

fn sorted_ids(index: &Index, query: &SearchQuery) -> Vec<String> {
    let mut found = ids(&search(index, query));
    found.sort();
    found
}

fn expected(filter: impl Fn(&IndexedProduct) -> bool) -> Vec<String> {
    let mut ids: Vec<String> = catalog()
        .into_iter()
        .filter(|p| filter(p))
        .map(|p| p.id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn each_filter_narrows_the_results() {
    let (_dir, index) = indexed();
    let everything = search(&index, &listing());
    assert_eq!(everything.total, 20);

    // A category includes its sub-categories.
    let in_category = |category: &str| SearchQuery {
        category: Some(category.to_owned()),
        ..listing()
    };
    assert_eq!(sorted_ids(&index, &in_category("home")).len(), 20);
    assert_eq!(
        sorted_ids(&index, &in_category("seating")),
        expected(|p| p.category_path[1] == "seating")
    );
    assert!(sorted_ids(&index, &in_category("garden")).is_empty());

    let priced = SearchQuery {
        min_price: Some(2_600),
        max_price: Some(5_400),
        ..listing()
    };
    assert_eq!(
        sorted_ids(&index, &priced),
        expected(|p| (2_600..=5_400).contains(&p.price_minor))
    );
    let at_least = SearchQuery {
        min_price: Some(12_000),
        ..listing()
    };
    assert_eq!(
        sorted_ids(&index, &at_least),
        expected(|p| p.price_minor >= 12_000)
    );

    let in_stock = SearchQuery {
        in_stock: true,
        ..listing()
    };
    assert_eq!(sorted_ids(&index, &in_stock), expected(|p| p.stock > 0));
    assert!(
        search(&index, &in_stock)
            .hits
            .iter()
            .all(|hit| hit.in_stock)
    );

    let rated = SearchQuery {
        min_rating: Some(3.5),
        ..listing()
    };
    assert_eq!(
        sorted_ids(&index, &rated),
        expected(|p| p.rating_average >= 3.5)
    );

    // Attribute values match whatever their case.
    let red = SearchQuery {
        attributes: BTreeMap::from([("colour".to_owned(), "red".to_owned())]),
        ..listing()
    };
    assert_eq!(
        sorted_ids(&index, &red),
        expected(|p| p.attributes["colour"] == "Red")
    );

    // Filters combine with each other and with text.
    let combined = SearchQuery {
        q: "chair".to_owned(),
        in_stock: true,
        attributes: BTreeMap::from([("colour".to_owned(), "Blue".to_owned())]),
        max_price: Some(12_000),
        ..listing()
    };
    assert_eq!(
        sorted_ids(&index, &combined),
        expected(|p| p.category_path[1] == "seating"
            && p.stock > 0
            && p.attributes["colour"] == "Blue"
            && p.price_minor <= 12_000)
    );
}

#[test]
fn facets_count_the_filtered_results() {
    let (_dir, index) = indexed();
    let query = SearchQuery {
        q: "lamp".to_owned(),
        in_stock: true,
        ..listing()
    };
    let results = search(&index, &query);
    let lamps_in_stock: Vec<IndexedProduct> = catalog()
        .into_iter()
        .filter(|p| p.category_path[1] == "lighting" && p.stock > 0)
        .collect();
    assert_eq!(results.total, lamps_in_stock.len() as u64);

    let facets = &results.facets;
    let total = lamps_in_stock.len() as u64;
    assert_eq!(
        facets.categories,
        [("home".to_owned(), total), ("lighting".to_owned(), total)]
    );
    let red = lamps_in_stock
        .iter()
        .filter(|p| p.attributes["colour"] == "Red")
        .count() as u64;
    let mut colours = vec![("Blue".to_owned(), total - red), ("Red".to_owned(), red)];
    colours.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    assert_eq!(facets.attributes["colour"], colours);

    // Price buckets: [from, to) in minor units, only non-empty ones, adding up to the total.
    let mut buckets: BTreeMap<i64, u64> = BTreeMap::new();
    for p in &lamps_in_stock {
        let from = [0, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000]
            .into_iter()
            .rev()
            .find(|bound| p.price_minor >= *bound)
            .unwrap();
        *buckets.entry(from).or_default() += 1;
    }
    let got: BTreeMap<i64, u64> = facets
        .price_buckets
        .iter()
        .map(|(from, _, count)| (*from, *count))
        .collect();
    assert_eq!(got, buckets);
    assert!(
        facets
            .price_buckets
            .iter()
            .all(|(from, to, _)| to.is_none_or(|to| to > *from))
    );
}

#[test]
fn each_sort_orders_the_results() {
    let (_dir, index) = indexed();
    let sorted = |sort: Sort| {
        let results = search(&index, &SearchQuery { sort, ..listing() });
        assert_eq!(results.hits.len(), 20);
        results.hits
    };
    let prices: Vec<i64> = sorted(Sort::PriceAsc)
        .iter()
        .map(|h| h.price_minor)
        .collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{prices:?}");
    let prices: Vec<i64> = sorted(Sort::PriceDesc)
        .iter()
        .map(|h| h.price_minor)
        .collect();
    assert!(prices.windows(2).all(|w| w[0] >= w[1]), "{prices:?}");
    let ratings: Vec<(f64, i32)> = sorted(Sort::Rating)
        .iter()
        .map(|h| (h.rating_average, h.rating_count))
        .collect();
    assert!(
        ratings
            .windows(2)
            .all(|w| w[0].0 > w[1].0 || (w[0].0 == w[1].0 && w[0].1 >= w[1].1)),
        "{ratings:?}"
    );
    // Newest first: the catalog's products were created in id order.
    let newest: Vec<String> = sorted(Sort::Newest).iter().map(|h| h.id.clone()).collect();
    let mut by_age = expected(|_| true);
    by_age.reverse();
    assert_eq!(newest, by_age);
    // Relevance without text lists the newest first too.
    let listed: Vec<String> = sorted(Sort::Relevance)
        .iter()
        .map(|h| h.id.clone())
        .collect();
    assert_eq!(listed, by_age);
    // A sort applies to text results as well.
    let lamps = search(
        &index,
        &SearchQuery {
            q: "oak lamp".to_owned(),
            sort: Sort::PriceDesc,
            ..listing()
        },
    );
    assert_eq!(lamps.hits.len(), 10);
    assert_eq!(lamps.hits[0].id, "p09");
    assert_eq!(lamps.hits[9].id, "p00");
}

#[test]
fn hits_carry_what_a_result_page_shows() {
    let (_dir, index) = indexed();
    let results = search(&index, &query("oak chair 13", "en"));
    let hit = &results.hits[0];
    assert_eq!(hit.id, "p13");
    assert_eq!(hit.sku, "SKU-p13");
    assert_eq!(hit.title, "Oak Chair 13");
    assert_eq!(hit.price_minor, 500 + 13 * 700);
    assert_eq!(hit.currency, "EUR");
    assert_eq!(hit.category_id, "seating");
    assert_eq!(hit.rating_average, 3.5);
    assert_eq!(hit.rating_count, 13);
    assert!(hit.in_stock);
}

#[test]
fn page_tokens_visit_every_hit_once() {
    let (_dir, index) = indexed();
    for (q, sort) in [
        ("", Sort::PriceAsc),
        ("", Sort::Rating),
        ("oak", Sort::Relevance),
        ("oak", Sort::Newest),
    ] {
        let mut query = SearchQuery {
            q: q.to_owned(),
            locale: "en".to_owned(),
            sort,
            page_size: 6,
            ..SearchQuery::default()
        };
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let results = search(&index, &query);
            assert_eq!(results.total, 20);
            assert!(results.hits.len() <= 6);
            seen.extend(ids(&results));
            pages += 1;
            match results.next_page_token {
                Some(token) => query.page_token = Some(token),
                None => break,
            }
        }
        assert_eq!(pages, 4, "{q:?} {sort:?}");
        assert_eq!(seen.len(), 20);
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 20);
    }
}

fn refused(index: &Index, query: SearchQuery) -> &'static str {
    match index.search(&query) {
        Err(SearchError::InvalidQuery { field, .. }) => field,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn bad_requests_name_the_parameter() {
    let (_dir, index) = indexed();
    assert_eq!(
        refused(
            &index,
            SearchQuery {
                q: "a".repeat(257),
                ..listing()
            }
        ),
        "q"
    );
    // 256 characters (not bytes) are fine.
    assert!(
        index
            .search(&SearchQuery {
                q: "ü".repeat(256),
                ..listing()
            })
            .is_ok()
    );
    assert_eq!(
        refused(
            &index,
            SearchQuery {
                page_size: 101,
                ..listing()
            }
        ),
        "page_size"
    );
    assert_eq!(
        refused(
            &index,
            SearchQuery {
                min_price: Some(500),
                max_price: Some(499),
                ..listing()
            }
        ),
        "min_price"
    );
    assert_eq!(
        refused(
            &index,
            SearchQuery {
                min_rating: Some(f64::NAN),
                ..listing()
            }
        ),
        "min_rating"
    );
    for token in ["garbage", "", "cDEAAAAGAAAAAAAAAAAA", "%%%"] {
        assert_eq!(
            refused(
                &index,
                SearchQuery {
                    page_token: Some(token.to_owned()),
                    ..listing()
                }
            ),
            "page_token"
        );
    }
    // A token of one query does not page another.
    let first = search(
        &index,
        &SearchQuery {
            page_size: 5,
            ..listing()
        },
    );
    let token = first.next_page_token.expect("a second page");
    assert_eq!(
        refused(
            &index,
            SearchQuery {
                q: "lamp".to_owned(),
                page_size: 5,
                page_token: Some(token),
                ..listing()
            }
        ),
        "page_token"
    );
}
