//! Full text: languages and stemming, typos, prefixes, phrases, SKUs, and hostile query text.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shopmesh_search::{SearchError, SearchQuery, Sort};

#[test]
fn finds_title_words_through_each_languages_stemmer() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    index_all(
        &index,
        [
            with_title(
                with_title(
                    product("shoes", "Trail Running Shoes"),
                    "de",
                    "Laufschuhe für Trails",
                ),
                "fr",
                "Chaussures élégantes de course",
            ),
            with_title(
                with_title(
                    product("headphones", "Wireless Headphones"),
                    "de",
                    "Kabellose Kopfhörer",
                ),
                "fr",
                "Casque audio sans fil",
            ),
            product("lamp", "Brass Desk Lamp"),
        ],
    );

    // English: "runs" and "shoe" share stems with "Running" and "Shoes".
    assert_eq!(find(&index, "runs shoe", "en"), ["shoes"]);
    assert_eq!(find(&index, "lamps", "en-GB"), ["lamp"]);
    // German: "kabelloser" and "kabellose" stem alike; umlauts fold.
    assert_eq!(find(&index, "kabelloser Kopfhorer", "de"), ["headphones"]);
    assert_eq!(find(&index, "Laufschuh", "de-AT"), ["shoes"]);
    // French: singular and plural, accents or not.
    assert_eq!(find(&index, "chaussure elegante", "fr"), ["shoes"]);
    // A language's stop words are not required.
    assert_eq!(find(&index, "the lamp", "en"), ["lamp"]);

    // Hits are titled in the query's locale.
    let hits = search(&index, &query("kopfhörer", "de")).hits;
    assert_eq!(hits[0].title, "Kabellose Kopfhörer");
    let hits = search(&index, &query("casque", "fr")).hits;
    assert_eq!(hits[0].title, "Casque audio sans fil");
}

#[test]
fn products_without_the_locale_are_searched_and_shown_in_their_default() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    index_all(
        &index,
        [
            product("lamp", "Brass Desk Lamp"),
            with_title(product("table", "Oak Table"), "de", "Eichentisch"),
        ],
    );
    // No German title: found by its English one, shown in English.
    let results = search(&index, &query("lamp", "de"));
    assert_eq!(ids(&results), ["lamp"]);
    assert_eq!(results.hits[0].title, "Brass Desk Lamp");
    // A German title exists: the English one is not what German shoppers see or search.
    assert!(find(&index, "oak", "de").is_empty());
    assert_eq!(find(&index, "eichentisch", "de"), ["table"]);
    // Any other locale falls back to the default too.
    assert_eq!(find(&index, "table", "it"), ["table"]);
}

#[test]
fn a_word_with_two_letters_swapped_finds_the_product_below_exact_matches() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    index_all(
        &index,
        [
            product("grinder", "Angle Grinder"),
            product("figurine", "Angel Figurine"),
            product("headphones", "Wireless Headphones"),
            product("lamp", "Brass Desk Lamp"),
        ],
    );
    // Typos alone: adjacent letters swapped, 4+ letters at one edit, 8+ at two.
    assert_eq!(find(&index, "lmap", "en"), ["lamp"]);
    assert_eq!(find(&index, "hedaphones", "en"), ["headphones"]);
    assert_eq!(find(&index, "wirelses hedaphnoes", "en"), ["headphones"]);
    // Short words must be exact: "lmp" is two edits from "lamp" and only 3 letters.
    assert!(find(&index, "dsek lmp", "en").is_empty());

    // "angle" is a word of one title and a transposition of a word of another: both are
    // found, the exact one first, whichever is typed.
    assert_eq!(find(&index, "angle", "en"), ["grinder", "figurine"]);
    assert_eq!(find(&index, "angel", "en"), ["figurine", "grinder"]);
}

#[test]
fn the_last_word_also_matches_as_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    index_all(
        &index,
        [
            product("headphones", "Wireless Headphones"),
            product("lamp", "Brass Desk Lamp"),
            product("lampshade", "Linen Lampshade"),
        ],
    );
    assert_eq!(find(&index, "headph", "en"), ["headphones"]);
    assert_eq!(find(&index, "desk la", "en"), ["lamp"]);
    // The whole word ranks above its completions.
    assert_eq!(find(&index, "lamp", "en"), ["lamp", "lampshade"]);
    // A finished word (followed by a space) is not completed; earlier words never are.
    assert_eq!(find(&index, "lamp ", "en"), ["lamp"]);
    assert!(find(&index, "head wireless", "en").is_empty());
}

#[test]
fn phrases_match_words_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    index_all(
        &index,
        [
            product("desk-lamp", "Brass Desk Lamp"),
            product("lamp-desk", "Lamp for a Desk"),
        ],
    );
    let mut both = find(&index, "desk lamp", "en");
    both.sort();
    assert_eq!(both, ["desk-lamp", "lamp-desk"]);
    assert_eq!(find(&index, "\"desk lamp\"", "en"), ["desk-lamp"]);
    // Stop words inside a phrase keep their place.
    assert_eq!(find(&index, "\"lamp for a desk\"", "en"), ["lamp-desk"]);
    // An unterminated quote is a phrase to the end.
    assert_eq!(find(&index, "brass \"desk lamp", "en"), ["desk-lamp"]);
}

#[test]
fn a_sku_matches_exactly_and_first() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    let mut lamp = product("lamp", "Brass Desk Lamp");
    lamp.sku = "HOM-03-0042".to_owned();
    let mut other = product("other", "Lamp HOM 03");
    other.sku = "HOM-03-0043".to_owned();
    index_all(&index, [lamp, other]);
    let results = search(&index, &query("HOM-03-0042", "en"));
    assert_eq!(ids(&results), ["lamp"]);
    assert_eq!(results.hits[0].sku, "HOM-03-0042");
    assert_eq!(find(&index, "  hom-03-0043 ", "en")[0], "other");
    assert!(find(&index, "HOM-03-004", "en").is_empty());
}

#[test]
fn searches_attribute_values_and_descriptions() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    index_all(
        &index,
        [
            with_attribute(product("lamp", "Desk Lamp"), "brand", "Nordlys"),
            with_description(
                product("kettle", "Kettle"),
                "en",
                "Boils water quietly thanks to its insulated walls.",
            ),
        ],
    );
    assert_eq!(find(&index, "nordlys", "en"), ["lamp"]);
    assert_eq!(find(&index, "insulation kettle", "en"), ["kettle"]);
    // Title words weigh more than description words.
    index_all(
        &index,
        [with_description(
            product("pot", "Insulated Pot"),
            "en",
            "Keeps food warm.",
        )],
    );
    assert_eq!(find(&index, "insulated", "en"), ["pot", "kettle"]);
}

#[test]
fn no_query_text_breaks_a_search() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    index_all(
        &index,
        (0..30).map(|n| {
            with_attribute(
                product(&format!("p{n}"), &format!("Lamp {n} with shade")),
                "colour",
                "red",
            )
        }),
    );
    let mut runner = TestRunner::new(Config {
        cases: 400,
        ..Config::default()
    });
    let text = prop_oneof![
        ".{0,300}",
        "[\"*:~^()\\[\\]{}!+\\-&|/\\\\ a-z0-9]{0,80}",
        "(lamp|shade|\"|\\*|~2|AND|OR|NOT|-|:|\\(|\\)| ){0,40}",
    ];
    let locale = prop_oneof!["en", "de", "fr", "", ".{0,8}"];
    let sort = prop_oneof![
        Just(Sort::Relevance),
        Just(Sort::PriceAsc),
        Just(Sort::PriceDesc),
        Just(Sort::Rating),
        Just(Sort::Newest),
    ];
    runner
        .run(
            &(
                text,
                locale,
                sort,
                0usize..120,
                proptest::option::of(".{0,30}"),
            ),
            |(q, locale, sort, page_size, page_token)| {
                let query = SearchQuery {
                    q: q.clone(),
                    locale,
                    sort,
                    page_size,
                    page_token,
                    ..SearchQuery::default()
                };
                match index.search(&query) {
                    Ok(results) => prop_assert!(results.hits.len() <= 100),
                    Err(SearchError::InvalidQuery { field, .. }) => {
                        prop_assert!(["q", "page_size", "page_token"].contains(&field))
                    }
                    Err(error) => prop_assert!(false, "{q:?}: {error}"),
                }
                Ok(())
            },
        )
        .unwrap();
}
