//! A query that adds a constant to the score of every document it matches: the exact-match
//! tier. Cheaper than a union of the query with a constant-score copy of itself, which walks
//! the same postings twice.

use std::fmt;

use tantivy::query::{EnableScoring, Explanation, Query, Scorer, Weight};
use tantivy::{DocId, DocSet, Score, SegmentReader, Term};

/// Matches what `query` matches, scoring `query`'s score plus `tier`.
pub(crate) struct TierQuery {
    query: Box<dyn Query>,
    tier: Score,
}

impl TierQuery {
    pub(crate) fn new(query: Box<dyn Query>, tier: Score) -> TierQuery {
        TierQuery { query, tier }
    }
}

impl Clone for TierQuery {
    fn clone(&self) -> TierQuery {
        TierQuery {
            query: self.query.box_clone(),
            tier: self.tier,
        }
    }
}

impl fmt::Debug for TierQuery {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Tier(query={:?}, tier={})", self.query, self.tier)
    }
}

impl Query for TierQuery {
    fn weight(&self, enable_scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let weight = self.query.weight(enable_scoring)?;
        if enable_scoring.is_scoring_enabled() {
            Ok(Box::new(TierWeight {
                weight,
                tier: self.tier,
            }))
        } else {
            Ok(weight)
        }
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.query.query_terms(visitor)
    }
}

struct TierWeight {
    weight: Box<dyn Weight>,
    tier: Score,
}

impl Weight for TierWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(Box::new(TierScorer {
            scorer: self.weight.scorer(reader, boost)?,
            tier: self.tier * boost,
        }))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let underlying = self.weight.explain(reader, doc)?;
        let mut explanation = Explanation::new_with_string(
            format!("exact match tier +{}", self.tier),
            underlying.value() + self.tier,
        );
        explanation.add_detail(underlying);
        Ok(explanation)
    }

    fn count(&self, reader: &SegmentReader) -> tantivy::Result<u32> {
        self.weight.count(reader)
    }
}

struct TierScorer {
    scorer: Box<dyn Scorer>,
    tier: Score,
}

impl DocSet for TierScorer {
    fn advance(&mut self) -> DocId {
        self.scorer.advance()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        self.scorer.seek(target)
    }

    fn doc(&self) -> DocId {
        self.scorer.doc()
    }

    fn size_hint(&self) -> u32 {
        self.scorer.size_hint()
    }

    fn cost(&self) -> u64 {
        self.scorer.cost()
    }
}

impl Scorer for TierScorer {
    fn score(&mut self) -> Score {
        self.scorer.score() + self.tier
    }
}

#[cfg(test)]
mod tests {
    use tantivy::collector::TopDocs;
    use tantivy::query::{BooleanQuery, Occur, TermQuery};
    use tantivy::schema::{IndexRecordOption, Schema, TEXT};
    use tantivy::{Index, IndexWriter, TantivyDocument, doc};

    use super::*;

    #[test]
    fn adds_the_tier_to_matches_only() {
        let mut builder = Schema::builder();
        let title = builder.add_text_field("title", TEXT);
        let index = Index::create_in_ram(builder.build());
        let mut writer: IndexWriter<TantivyDocument> = index.writer(15_000_000).unwrap();
        writer.add_document(doc!(title => "brass lamp")).unwrap();
        writer
            .add_document(doc!(title => "lamp lamp lamp shade"))
            .unwrap();
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        let term = |word: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(title, word),
                IndexRecordOption::WithFreqs,
            ))
        };
        let query = BooleanQuery::new(vec![
            (
                Occur::Should,
                Box::new(TierQuery::new(term("brass"), 100.0)),
            ),
            (Occur::Should, term("lamp")),
        ]);
        let top = searcher
            .search(&query, &TopDocs::with_limit(2).order_by_score())
            .unwrap();
        // The tiered document wins by the tier, whatever BM25 says of "lamp".
        assert_eq!(top[0].1.doc_id, 0);
        assert!(top[0].0 > 100.0 && top[1].0 < 100.0);
        let explained = query.explain(&searcher, top[0].1).unwrap();
        assert!(explained.to_pretty_json().contains("exact match tier"));
    }
}
