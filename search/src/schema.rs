//! The index schema, its analyzers and the locale groups.
//!
//! Every locale a product has text in belongs to a *locale group*: the languages with a stemmer
//! (`en`, `de`, `fr`, …) are groups of their own, keyed by their primary subtag (`en-GB` → `en`),
//! and every other locale falls into the group `und`, analysed without stemming. Each group has
//! its own title and description fields, indexed with that language's analyzer.

use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RawTokenizer, RemoveLongFilter, SimpleTokenizer,
    Stemmer, StopWordFilter, TextAnalyzer, TokenizerManager,
};

/// The version of the schema and of the analysis. Bump it whenever either changes: an index
/// written under another version is rebuilt.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// The group of locales without a stemmer.
pub(crate) const UNDETERMINED: &str = "und";

/// The locale groups, with the stemmer and stop words of each.
pub(crate) const GROUPS: &[(&str, Option<Language>)] = &[
    ("en", Some(Language::English)),
    ("de", Some(Language::German)),
    ("fr", Some(Language::French)),
    ("es", Some(Language::Spanish)),
    ("it", Some(Language::Italian)),
    ("nl", Some(Language::Dutch)),
    ("pt", Some(Language::Portuguese)),
    ("sv", Some(Language::Swedish)),
    ("da", Some(Language::Danish)),
    ("no", Some(Language::Norwegian)),
    ("fi", Some(Language::Finnish)),
    ("ru", Some(Language::Russian)),
    (UNDETERMINED, None),
];

/// Tokens longer than this (in bytes) are dropped: they are never words a shopper types.
const MAX_TOKEN_BYTES: usize = 40;

/// Separates an attribute's name from its value in the `attr` field.
pub(crate) const ATTRIBUTE_SEPARATOR: char = '\u{1f}';

/// The tokenizer of exact keywords (SKU, attribute filters): the whole value, lowercased.
pub(crate) const KEYWORD: &str = "keyword";
/// The tokenizer of the typo vocabulary: words, lowercased, not stemmed, accents kept.
pub(crate) const WORDS: &str = "words";

/// The locale group of a locale tag (`de-CH` → `de`, `nb` → `no`, `pl` → `und`).
pub(crate) fn group_of(locale: &str) -> &'static str {
    let primary = locale
        .split(['-', '_'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let primary = match primary.as_str() {
        "nb" | "nn" => "no",
        other => other,
    };
    GROUPS
        .iter()
        .map(|(group, _)| *group)
        .find(|group| *group == primary)
        .unwrap_or(UNDETERMINED)
}

/// The name of the analyzer of a locale group.
pub(crate) fn analyzer_name(group: &str) -> String {
    format!("lang_{group}")
}

fn language_analyzer(language: Option<Language>) -> TextAnalyzer {
    let base = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .dynamic();
    match language {
        Some(language) => {
            let with_stop_words = match StopWordFilter::new(language) {
                Some(stop_words) => base.filter_dynamic(stop_words),
                None => base,
            };
            // Stemming before folding: the stemmers' rules expect accented letters.
            with_stop_words
                .filter_dynamic(Stemmer::new(language))
                .filter_dynamic(AsciiFoldingFilter)
                .build()
        }
        None => base.filter_dynamic(AsciiFoldingFilter).build(),
    }
}

/// Every analyzer the schema names, registered on an index's tokenizer manager.
pub(crate) fn register_analyzers(manager: &TokenizerManager) {
    for (group, language) in GROUPS {
        manager.register(&analyzer_name(group), language_analyzer(*language));
    }
    manager.register(
        KEYWORD,
        TextAnalyzer::builder(RawTokenizer::default())
            .filter(LowerCaser)
            .build(),
    );
    manager.register(
        WORDS,
        TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
            .filter(LowerCaser)
            .build(),
    );
}

/// The text fields of one locale group.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupFields {
    pub title: Field,
    pub description: Field,
}

/// The fields of the schema.
#[derive(Clone, Debug)]
pub(crate) struct Fields {
    /// The product id: indexed whole (deletes and version look-ups) and fast (hits).
    pub id: Field,
    /// False for a tombstone, the record of a deletion kept so an older upsert cannot revive it.
    pub live: Field,
    pub version: Field,
    /// Indexed lowercased for the exact match, fast as given for hits.
    pub sku: Field,
    /// The locale group of the product's default locale.
    pub default_group: Field,
    /// The locale groups the product has a title in.
    pub groups: Field,
    /// The titles by locale, as JSON (stored only; read for the hits of a page).
    pub titles: Field,
    /// Per locale group, in the order of `GROUPS`.
    pub text: Vec<GroupFields>,
    /// Attribute values, analysed without stemming.
    pub attribute_text: Field,
    /// Every word of the titles and attribute values, lowercased: the vocabulary that typos and
    /// prefixes expand to.
    pub words: Field,
    /// `name\u{1f}value` per attribute: indexed lowercased (filters), fast as given (facets).
    pub attribute: Field,
    /// Every category id of the product's path (filters, facets).
    pub category: Field,
    /// The product's own category (hits).
    pub category_leaf: Field,
    pub price: Field,
    pub currency: Field,
    pub stock: Field,
    pub in_stock: Field,
    pub rating: Field,
    pub rating_count: Field,
    pub created: Field,
}

impl Fields {
    pub(crate) fn group(&self, group: &str) -> GroupFields {
        let position = GROUPS
            .iter()
            .position(|(name, _)| *name == group)
            .unwrap_or(GROUPS.len() - 1);
        self.text[position]
    }

    /// Reads the fields back from a schema built by [`build`].
    pub(crate) fn from_schema(schema: &Schema) -> tantivy::Result<Fields> {
        let field = |name: &str| schema.get_field(name);
        let mut text = Vec::with_capacity(GROUPS.len());
        for (group, _) in GROUPS {
            text.push(GroupFields {
                title: field(&format!("title_{group}"))?,
                description: field(&format!("description_{group}"))?,
            });
        }
        Ok(Fields {
            id: field("id")?,
            live: field("live")?,
            version: field("version")?,
            sku: field("sku")?,
            default_group: field("default_group")?,
            groups: field("groups")?,
            titles: field("titles")?,
            text,
            attribute_text: field("attribute_text")?,
            words: field("words")?,
            attribute: field("attribute")?,
            category: field("category")?,
            category_leaf: field("category_leaf")?,
            price: field("price")?,
            currency: field("currency")?,
            stock: field("stock")?,
            in_stock: field("in_stock")?,
            rating: field("rating")?,
            rating_count: field("rating_count")?,
            created: field("created")?,
        })
    }
}

/// The schema of the product index.
pub(crate) fn build() -> Schema {
    let mut builder = Schema::builder();
    let indexed = |tokenizer: &str, record: IndexRecordOption| {
        TextFieldIndexing::default()
            .set_tokenizer(tokenizer)
            .set_index_option(record)
    };
    // Whole values: indexed as given and fast.
    let exact = TextOptions::default()
        .set_indexing_options(indexed("raw", IndexRecordOption::Basic).set_fieldnorms(false))
        .set_fast("raw");
    // Whole values, indexed only.
    let exact_indexed =
        TextOptions::default().set_indexing_options(indexed("raw", IndexRecordOption::Basic));
    // Whole values, fast only.
    let fast_only = TextOptions::default().set_fast("raw");
    // Whole values, indexed lowercased and fast as given.
    let keyword = TextOptions::default()
        .set_indexing_options(indexed(KEYWORD, IndexRecordOption::Basic).set_fieldnorms(false))
        .set_fast("raw");

    builder.add_text_field("id", exact.clone());
    builder.add_bool_field("live", INDEXED | FAST);
    builder.add_i64_field("version", FAST);
    builder.add_text_field("sku", keyword.clone());
    builder.add_text_field("default_group", exact_indexed.clone());
    builder.add_text_field("groups", exact_indexed);
    builder.add_text_field("titles", STORED);
    for (group, _) in GROUPS {
        let analysed = TextOptions::default().set_indexing_options(indexed(
            &analyzer_name(group),
            IndexRecordOption::WithFreqsAndPositions,
        ));
        builder.add_text_field(&format!("title_{group}"), analysed.clone());
        builder.add_text_field(&format!("description_{group}"), analysed);
    }
    builder.add_text_field(
        "attribute_text",
        TextOptions::default().set_indexing_options(indexed(
            &analyzer_name(UNDETERMINED),
            IndexRecordOption::WithFreqsAndPositions,
        )),
    );
    builder.add_text_field(
        "words",
        TextOptions::default()
            .set_indexing_options(indexed(WORDS, IndexRecordOption::Basic).set_fieldnorms(false)),
    );
    builder.add_text_field("attribute", keyword);
    builder.add_text_field("category", exact);
    builder.add_text_field("category_leaf", fast_only.clone());
    builder.add_i64_field("price", FAST);
    builder.add_text_field("currency", fast_only);
    builder.add_i64_field("stock", FAST);
    builder.add_bool_field("in_stock", INDEXED | FAST);
    builder.add_f64_field("rating", FAST);
    builder.add_i64_field("rating_count", FAST);
    builder.add_i64_field("created", FAST);
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locales_map_to_their_group() {
        assert_eq!(group_of("en"), "en");
        assert_eq!(group_of("de-CH"), "de");
        assert_eq!(group_of("FR_ca"), "fr");
        assert_eq!(group_of("nb"), "no");
        assert_eq!(group_of("pl"), UNDETERMINED);
        assert_eq!(group_of(""), UNDETERMINED);
    }

    #[test]
    fn analyzers_stem_per_language() {
        let manager = TokenizerManager::default();
        register_analyzers(&manager);
        let tokens = |analyzer: &str, text: &str| {
            let mut analyzer = manager.get(analyzer).expect("registered");
            let mut stream = analyzer.token_stream(text);
            let mut out = Vec::new();
            while let Some(token) = stream.next() {
                out.push(token.text.clone());
            }
            out
        };
        assert_eq!(tokens("lang_en", "Running Shoes"), ["run", "shoe"]);
        assert_eq!(tokens("lang_de", "die Kopfhörer"), ["kopfhor"]);
        assert_eq!(tokens("lang_und", "Kopfhörer"), ["kopfhorer"]);
        assert_eq!(tokens(WORDS, "Kopfhörer Élégant"), ["kopfhörer", "élégant"]);
        assert_eq!(tokens(KEYWORD, "AB-12 x"), ["ab-12 x"]);
    }
}
