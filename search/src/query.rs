//! Turns a [`SearchQuery`] into a tantivy query.
//!
//! Every word of the text is required. A word matches, in the fields of the query's locale
//! group (title, description) and in the attribute values, as itself (analysed by that
//! language's analyzer); in titles and attribute values it also matches as a typo correction (a
//! vocabulary word within the edit distance) and, for the last word while it is being typed, as
//! a completion. Descriptions take exact words only: their common words would make every
//! correction match a large share of the catalog. Phrases match as phrases. The whole text also
//! matches a SKU exactly.
//!
//! Ranking tiers: each word or phrase matched exactly adds [`EXACT_TIER`] on top of its BM25
//! score, and corrections and completions score a fraction of their BM25 with no tier, so a
//! product that matches more of the query exactly always ranks above one that needs more
//! corrections; BM25 orders products within a tier. An exact SKU match ranks above everything.
//!
//! Products without a title in the query's locale are shown in their default locale, so they
//! are searched in that locale too: one branch per default locale group in the index, limited to
//! the products that lack the query's locale.

use std::collections::HashSet;
use std::ops::Bound;

use tantivy::Searcher;
use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, Occur, PhraseQuery, Query, RangeQuery, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption, Term};
use tantivy::tokenizer::{TextAnalyzer, TokenizerManager};

use crate::SearchQuery;
use crate::expand::Expander;
use crate::schema::{ATTRIBUTE_SEPARATOR, Fields, KEYWORD, UNDETERMINED, analyzer_name};
use crate::text::{self, Item, ParsedText};
use crate::tier::TierQuery;

/// What an exact match of a word or phrase adds to a product's score.
pub(crate) const EXACT_TIER: f32 = 1_000.0;
/// What an exact SKU match adds: above any text match.
const SKU_SCORE: f32 = 1_000_000.0;
const TITLE_BOOST: f32 = 3.0;
const DESCRIPTION_BOOST: f32 = 1.0;
const ATTRIBUTE_BOOST: f32 = 1.5;
/// The share of its BM25 score a typo correction keeps.
const TYPO_WEIGHT: f32 = 0.3;
/// The share of its BM25 score a completion keeps.
const COMPLETION_WEIGHT: f32 = 0.5;

type Boxed = Box<dyn Query>;

/// What a word may match besides itself.
struct WordPlan {
    word: String,
    typos: Vec<String>,
    completions: Vec<String>,
}

/// Builds queries against one searcher.
pub(crate) struct QueryBuilder<'a> {
    pub fields: &'a Fields,
    pub searcher: &'a Searcher,
    pub tokenizers: &'a TokenizerManager,
    pub expander: &'a Expander,
}

impl QueryBuilder<'_> {
    fn analyzer(&self, name: &str) -> tantivy::Result<TextAnalyzer> {
        self.tokenizers.get(name).ok_or_else(|| {
            tantivy::TantivyError::InvalidArgument(format!("no analyzer named {name}"))
        })
    }

    /// The text part of a query, `None` when the text is blank.
    ///
    /// `fallbacks` are the default locale groups of the products that have no title in
    /// `group`.
    pub(crate) fn text(
        &self,
        q: &str,
        group: &str,
        fallbacks: &[String],
    ) -> tantivy::Result<Option<Boxed>> {
        let trimmed = q.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        let mut branches: Vec<(Occur, Boxed)> = Vec::new();
        let mut keyword = self.analyzer(KEYWORD)?;
        if let Some(sku) = text::analyze_word(&mut keyword, trimmed) {
            let exact = TermQuery::new(
                Term::from_field_text(self.fields.sku, &sku),
                IndexRecordOption::Basic,
            );
            branches.push((
                Occur::Should,
                Box::new(ConstScoreQuery::new(Box::new(exact), SKU_SCORE)),
            ));
        }
        let parsed = text::parse(q);
        let plans = self.plan(&parsed)?;
        if let Some(own) = self.conjunction(&parsed, &plans, group)? {
            branches.push((Occur::Should, own));
        }
        for fallback in fallbacks {
            if fallback == group {
                continue;
            }
            if let Some(conjunction) = self.conjunction(&parsed, &plans, fallback)? {
                let lacks_locale = BooleanQuery::new(vec![
                    (Occur::Must, conjunction),
                    (
                        Occur::Must,
                        filter(exact_term(self.fields.default_group, fallback)),
                    ),
                    (
                        Occur::MustNot,
                        filter(exact_term(self.fields.groups, group)),
                    ),
                ]);
                branches.push((Occur::Should, Box::new(lacks_locale)));
            }
        }
        Ok(Some(Box::new(BooleanQuery::new(branches))))
    }

    /// The corrections and completions of each word, from the vocabulary.
    fn plan(&self, parsed: &ParsedText) -> tantivy::Result<Vec<Option<WordPlan>>> {
        let last = parsed.items.len().saturating_sub(1);
        let mut plans = Vec::with_capacity(parsed.items.len());
        for (position, item) in parsed.items.iter().enumerate() {
            let Item::Word(word) = item else {
                plans.push(None);
                continue;
            };
            let typos = self
                .expander
                .typos(self.searcher, self.fields.words, word)?;
            let completions = if position == last && parsed.last_is_partial {
                self.expander
                    .completions(self.searcher, self.fields.words, word)?
            } else {
                Vec::new()
            };
            plans.push(Some(WordPlan {
                word: word.clone(),
                typos,
                completions,
            }));
        }
        Ok(plans)
    }

    /// Every word and phrase, in the fields of `group`; `None` if none is searchable there
    /// (all stop words, say).
    fn conjunction(
        &self,
        parsed: &ParsedText,
        plans: &[Option<WordPlan>],
        group: &str,
    ) -> tantivy::Result<Option<Boxed>> {
        let mut language = self.analyzer(&analyzer_name(group))?;
        let mut plain = self.analyzer(&analyzer_name(UNDETERMINED))?;
        let fields = self.fields.group(group);
        let targets = Targets {
            title: fields.title,
            description: fields.description,
            attribute: self.fields.attribute_text,
        };
        let mut clauses: Vec<(Occur, Boxed)> = Vec::new();
        for (item, plan) in parsed.items.iter().zip(plans) {
            let clause = match (item, plan) {
                (Item::Word(_), Some(plan)) => {
                    word_clause(&targets, &mut language, &mut plain, plan)
                }
                (Item::Phrase(phrase), _) => {
                    phrase_clause(&targets, &mut language, &mut plain, phrase)
                }
                (Item::Word(_), None) => None,
            };
            if let Some(clause) = clause {
                clauses.push((Occur::Must, clause));
            }
        }
        Ok((!clauses.is_empty()).then(|| Box::new(BooleanQuery::new(clauses)) as Boxed))
    }
}

/// The fields a locale group's text is searched in.
struct Targets {
    title: Field,
    description: Field,
    attribute: Field,
}

/// Builds the term queries of words, each analysed token once.
#[derive(Default)]
struct Terms {
    seen_stems: HashSet<String>,
    seen_plain: HashSet<String>,
}

impl Terms {
    fn add(
        &mut self,
        targets: &Targets,
        language: &mut TextAnalyzer,
        plain: &mut TextAnalyzer,
        word: &str,
        with_description: bool,
    ) -> Vec<(Occur, Boxed)> {
        let mut added = Vec::new();
        if let Some(stem) = text::analyze_word(language, word)
            && self.seen_stems.insert(stem.clone())
        {
            added.push(scored(targets.title, &stem, TITLE_BOOST));
            if with_description {
                added.push(scored(targets.description, &stem, DESCRIPTION_BOOST));
            }
        }
        if let Some(token) = text::analyze_word(plain, word)
            && self.seen_plain.insert(token.clone())
        {
            added.push(scored(targets.attribute, &token, ATTRIBUTE_BOOST));
        }
        added
    }
}

fn word_clause(
    targets: &Targets,
    language: &mut TextAnalyzer,
    plain: &mut TextAnalyzer,
    plan: &WordPlan,
) -> Option<Boxed> {
    // A stop word of the language is not required at all.
    text::analyze_word(language, &plan.word)?;
    let mut terms = Terms::default();
    let exact = terms.add(targets, language, plain, &plan.word, true);
    let mut typos = Vec::new();
    for typo in &plan.typos {
        typos.extend(terms.add(targets, language, plain, typo, false));
    }
    let mut completions = Vec::new();
    for completion in &plan.completions {
        completions.extend(terms.add(targets, language, plain, completion, false));
    }
    let mut alternatives: Vec<(Occur, Boxed)> = Vec::new();
    if !exact.is_empty() {
        alternatives.push((
            Occur::Should,
            Box::new(TierQuery::new(
                Box::new(BooleanQuery::new(exact)),
                EXACT_TIER,
            )),
        ));
    }
    for (weight, queries) in [(TYPO_WEIGHT, typos), (COMPLETION_WEIGHT, completions)] {
        if !queries.is_empty() {
            alternatives.push((
                Occur::Should,
                Box::new(BoostQuery::new(
                    Box::new(BooleanQuery::new(queries)),
                    weight,
                )),
            ));
        }
    }
    (!alternatives.is_empty()).then(|| Box::new(BooleanQuery::new(alternatives)) as Boxed)
}

fn phrase_clause(
    targets: &Targets,
    language: &mut TextAnalyzer,
    plain: &mut TextAnalyzer,
    phrase: &str,
) -> Option<Boxed> {
    let stems = text::analyze(language, phrase);
    if stems.is_empty() {
        return None;
    }
    let mut queries = vec![
        phrase_in(targets.title, &stems, TITLE_BOOST),
        phrase_in(targets.description, &stems, DESCRIPTION_BOOST),
    ];
    let tokens = text::analyze(plain, phrase);
    if !tokens.is_empty() {
        queries.push(phrase_in(targets.attribute, &tokens, ATTRIBUTE_BOOST));
    }
    Some(Box::new(TierQuery::new(
        Box::new(BooleanQuery::new(queries)),
        EXACT_TIER,
    )))
}

/// A phrase of analysed tokens (with their positions) in one field; one token is a term.
fn phrase_in(field: Field, tokens: &[(usize, String)], boost: f32) -> (Occur, Boxed) {
    if let [(_, token)] = tokens {
        return scored(field, token, boost);
    }
    let first = tokens.first().map(|(position, _)| *position).unwrap_or(0);
    let terms = tokens
        .iter()
        .map(|(position, token)| (position - first, Term::from_field_text(field, token)))
        .collect();
    let phrase = PhraseQuery::new_with_offset(terms);
    (
        Occur::Should,
        Box::new(BoostQuery::new(Box::new(phrase), boost)),
    )
}

fn scored(field: Field, token: &str, boost: f32) -> (Occur, Boxed) {
    let term = TermQuery::new(
        Term::from_field_text(field, token),
        IndexRecordOption::WithFreqs,
    );
    (
        Occur::Should,
        Box::new(BoostQuery::new(Box::new(term), boost)),
    )
}

fn exact_term(field: Field, value: &str) -> Boxed {
    Box::new(TermQuery::new(
        Term::from_field_text(field, value),
        IndexRecordOption::Basic,
    ))
}

/// A clause that selects without adding to the score.
pub(crate) fn filter(query: Boxed) -> Boxed {
    Box::new(ConstScoreQuery::new(query, 0.0))
}

/// The filters of a query, live products first.
pub(crate) fn filters(
    fields: &Fields,
    tokenizers: &TokenizerManager,
    query: &SearchQuery,
) -> Vec<Boxed> {
    let mut filters: Vec<Boxed> = vec![Box::new(TermQuery::new(
        Term::from_field_bool(fields.live, true),
        IndexRecordOption::Basic,
    ))];
    if let Some(category) = query.category.as_deref().filter(|c| !c.is_empty()) {
        filters.push(exact_term(fields.category, category));
    }
    if query.min_price.is_some() || query.max_price.is_some() {
        let bound = |value: Option<i64>| match value {
            Some(value) => Bound::Included(Term::from_field_i64(fields.price, value)),
            None => Bound::Unbounded,
        };
        filters.push(Box::new(RangeQuery::new(
            bound(query.min_price),
            bound(query.max_price),
        )));
    }
    if query.in_stock {
        filters.push(Box::new(TermQuery::new(
            Term::from_field_bool(fields.in_stock, true),
            IndexRecordOption::Basic,
        )));
    }
    if let Some(min_rating) = query.min_rating {
        filters.push(Box::new(RangeQuery::new(
            Bound::Included(Term::from_field_f64(fields.rating, min_rating)),
            Bound::Unbounded,
        )));
    }
    let mut keyword = tokenizers.get(KEYWORD);
    for (name, value) in &query.attributes {
        let pair = format!("{name}{ATTRIBUTE_SEPARATOR}{value}");
        // The keyword analyzer lowercases exactly as the indexing did.
        let token = keyword
            .as_mut()
            .and_then(|keyword| text::analyze_word(keyword, &pair))
            .unwrap_or(pair);
        filters.push(exact_term(fields.attribute, &token));
    }
    filters
}
