//! Facet counts, with tantivy's aggregations (faster than a hand-written counting collector on
//! this workload: terms aggregations run over the fast fields' term ordinals).

use std::collections::BTreeMap;

use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::agg_result::{AggregationResult, AggregationResults, BucketResult};
use tantivy::aggregation::{AggContextParams, AggregationCollector, Key};

use crate::Facets;
use crate::schema::ATTRIBUTE_SEPARATOR;

/// How many categories are counted (the most frequent).
const CATEGORY_BUCKETS: u32 = 200;
/// How many attribute name/value pairs are counted (the most frequent).
const ATTRIBUTE_BUCKETS: u32 = 1_000;
/// How many values of one attribute are reported.
const VALUES_PER_ATTRIBUTE: usize = 20;
/// The bounds of the price buckets, in minor units: 0–10, 10–25, 25–50, 50–100, 100–250,
/// 250–500, 500–1000 and 1000 and up in a currency with two decimals.
pub(crate) const PRICE_BOUNDS: &[i64] = &[0, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000];

/// The aggregation request, parsed once.
pub(crate) fn request() -> Result<Aggregations, serde_json::Error> {
    let mut ranges = Vec::new();
    for pair in PRICE_BOUNDS.windows(2) {
        ranges.push(serde_json::json!({ "from": pair[0], "to": pair[1] }));
    }
    if let Some(last) = PRICE_BOUNDS.last() {
        ranges.push(serde_json::json!({ "from": last }));
    }
    serde_json::from_value(serde_json::json!({
        "categories": { "terms": { "field": "category", "size": CATEGORY_BUCKETS } },
        "attributes": { "terms": { "field": "attribute", "size": ATTRIBUTE_BUCKETS } },
        "prices": { "range": { "field": "price", "ranges": ranges } },
    }))
}

pub(crate) fn collector(request: &Aggregations) -> AggregationCollector {
    AggregationCollector::from_aggs(request.clone(), AggContextParams::default())
}

fn terms(results: &AggregationResults, name: &str) -> Vec<(String, u64)> {
    let Some(AggregationResult::BucketResult(BucketResult::Terms { buckets, .. })) =
        results.0.get(name)
    else {
        return Vec::new();
    };
    buckets
        .iter()
        .filter_map(|bucket| match &bucket.key {
            Key::Str(key) => Some((key.clone(), bucket.doc_count)),
            _ => None,
        })
        .collect()
}

/// Most products first, then by name.
fn by_count(counts: &mut [(String, u64)]) {
    counts.sort_by(|(a, ca), (b, cb)| cb.cmp(ca).then_with(|| a.cmp(b)));
}

pub(crate) fn read(results: &AggregationResults) -> Facets {
    let mut categories = terms(results, "categories");
    by_count(&mut categories);

    let mut attributes: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (pair, count) in terms(results, "attributes") {
        if let Some((name, value)) = pair.split_once(ATTRIBUTE_SEPARATOR) {
            attributes
                .entry(name.to_owned())
                .or_default()
                .push((value.to_owned(), count));
        }
    }
    for values in attributes.values_mut() {
        by_count(values);
        values.truncate(VALUES_PER_ATTRIBUTE);
    }

    let mut price_buckets = Vec::new();
    if let Some(AggregationResult::BucketResult(BucketResult::Range { buckets })) =
        results.0.get("prices")
    {
        for bucket in buckets.iter() {
            if bucket.doc_count == 0 {
                continue;
            }
            // The bounds are whole minor units we chose; the aggregation reports them as f64.
            let Some(from) = bucket.from else { continue };
            price_buckets.push((from as i64, bucket.to.map(|to| to as i64), bucket.doc_count));
        }
        price_buckets.sort_by_key(|(from, _, _)| *from);
    }

    Facets {
        categories,
        attributes,
        price_buckets,
    }
}
