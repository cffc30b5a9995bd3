//! Search latency on a generated catalog.
//!
//! `cargo bench -p shopmesh-search --bench search` indexes 100,000 generated products (set
//! `SHOPMESH_BENCH_PRODUCTS=1000000` for the million of the issue), prints the indexing rate,
//! the size on disk, the resident memory and p50/p99 of each query kind over a fixed set of
//! queries, then lets criterion measure each kind:
//!
//! - `two_words`: an adjective and a noun from a product's title, relevance, top 10;
//! - `two_words_typo`: the same with two adjacent letters of the longer word swapped;
//! - `word_category_price_facets`: a noun in a department and a price range, with facets;
//! - `filter_only_listing`: a sub-category, in stock, cheapest first, top 20.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use shopmesh_search::generate::Catalog;
use shopmesh_search::{Index, IndexOptions, SearchQuery, Sort};

const DEFAULT_PRODUCTS: u64 = 100_000;
const QUERIES_PER_KIND: usize = 500;
const SEED: u64 = 20_240_601;

fn products() -> u64 {
    std::env::var("SHOPMESH_BENCH_PRODUCTS")
        .ok()
        .and_then(|value| value.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_PRODUCTS)
}

/// Resident memory of this process, where the OS tells it.
fn resident_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// Swaps two adjacent letters in the middle of a word.
fn with_typo(word: &str) -> String {
    let mut chars: Vec<char> = word.chars().collect();
    let at = chars.len() / 2;
    chars.swap(at - 1, at);
    chars.into_iter().collect()
}

struct Kinds {
    two_words: Vec<SearchQuery>,
    two_words_typo: Vec<SearchQuery>,
    filtered_facets: Vec<SearchQuery>,
    listing: Vec<SearchQuery>,
}

/// Queries built from products of the catalog, so each finds something.
fn kinds(catalog: &Catalog, count: u64) -> Kinds {
    let mut kinds = Kinds {
        two_words: Vec::new(),
        two_words_typo: Vec::new(),
        filtered_facets: Vec::new(),
        listing: Vec::new(),
    };
    let base = SearchQuery {
        locale: "en".to_owned(),
        page_size: 10,
        ..SearchQuery::default()
    };
    for i in 0..QUERIES_PER_KIND as u64 {
        let product = catalog.product((i * 7_919) % count);
        // "{brand} {adjective} {colour} {noun…} {model}": the adjective and the noun's first
        // word.
        let title = product.titles["en"].to_lowercase();
        let words: Vec<&str> = title.split_whitespace().collect();
        let brand_words = product.attributes["brand"].split_whitespace().count();
        let adjective = words[brand_words];
        let noun = words[brand_words + 2];
        kinds.two_words.push(SearchQuery {
            q: format!("{adjective} {noun}"),
            ..base.clone()
        });
        let (long, short) = if adjective.len() >= noun.len() {
            (adjective, noun)
        } else {
            (noun, adjective)
        };
        kinds.two_words_typo.push(SearchQuery {
            q: format!("{short} {}", with_typo(long)),
            ..base.clone()
        });
        kinds.filtered_facets.push(SearchQuery {
            q: noun.to_owned(),
            category: Some(product.category_path[0].clone()),
            min_price: Some(1_000),
            max_price: Some(20_000),
            page_size: 20,
            ..base.clone()
        });
        kinds.listing.push(SearchQuery {
            category: Some(product.category_path[1].clone()),
            in_stock: true,
            sort: Sort::PriceAsc,
            page_size: 20,
            ..base.clone()
        });
    }
    kinds
}

fn percentiles(index: &Index, name: &str, queries: &[SearchQuery]) {
    let mut took = Vec::with_capacity(queries.len());
    let mut found = 0;
    for query in queries {
        let started = Instant::now();
        let results = index.search(query).expect("search");
        took.push(started.elapsed());
        found += usize::from(results.total > 0);
    }
    took.sort();
    let at = |p: f64| took[((took.len() as f64 * p) as usize).min(took.len() - 1)];
    eprintln!(
        "{name:<28} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  ({found}/{} found something)",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3,
        queries.len(),
    );
}

fn bench(c: &mut Criterion) {
    let count = products();
    let catalog = Catalog::new(SEED);
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = IndexOptions {
        writer_threads: 2,
        writer_memory_bytes: 1 << 30,
        ..IndexOptions::default()
    };
    let (index, _) = Index::open_with(dir.path(), options).expect("open");
    let started = Instant::now();
    index
        .rebuild(catalog.products(count), |done| {
            if done % 100_000 == 0 {
                eprintln!("indexed {done}");
            }
        })
        .expect("rebuild");
    let elapsed = started.elapsed();
    drop(index);
    // Reopened, as a replica does at start.
    let (index, _) = Index::open(dir.path()).expect("reopen");
    eprintln!(
        "indexed {count} products in {:.1} s ({:.0} products/s, merges included); {:.1} MB on disk",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        index.size_on_disk().expect("size") as f64 / 1e6,
    );

    let kinds = kinds(&catalog, count);
    // Warm the page cache and the term dictionaries once.
    for query in kinds.two_words.iter().chain(&kinds.listing) {
        black_box(index.search(query).expect("search"));
    }
    percentiles(&index, "two_words", &kinds.two_words);
    percentiles(&index, "two_words_typo", &kinds.two_words_typo);
    percentiles(&index, "word_category_price_facets", &kinds.filtered_facets);
    percentiles(&index, "filter_only_listing", &kinds.listing);
    if let Some(mb) = resident_mb() {
        eprintln!("resident memory after the queries: {mb} MB");
    }

    let mut group = c.benchmark_group("search");
    group.measurement_time(Duration::from_secs(10));
    for (name, queries) in [
        ("two_words", &kinds.two_words),
        ("two_words_typo", &kinds.two_words_typo),
        ("word_category_price_facets", &kinds.filtered_facets),
        ("filter_only_listing", &kinds.listing),
    ] {
        let mut next = queries.iter().cycle();
        group.bench_function(name, |b| {
            b.iter(|| {
                let query = next.next().expect("a query");
                black_box(index.search(query).expect("search"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
