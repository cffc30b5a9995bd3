//! Typo tolerance and search as you type, by expanding a word to words of the index's
//! vocabulary (the `words` field: every word of the titles and attribute values, lowercased,
//! unstemmed) and then running the normal query over them.
//!
//! Expanding beats `FuzzyTermQuery` on both ranking and speed: a fuzzy term query scores every
//! fuzzy match alike, and on stemmed terms a typo can land two edits from its word ("cabels" →
//! "cabel", "cables" → "cabl"); expanding unstemmed words and analysing each expansion like the
//! query keeps the stems right and the BM25 weights real.

use std::collections::HashMap;

use levenshtein_automata::{DFA, Distance, LevenshteinAutomatonBuilder};
use tantivy::Searcher;
use tantivy::schema::Field;
use tantivy_fst::Automaton;

/// At most this many typo corrections a word.
pub(crate) const MAX_TYPO_EXPANSIONS: usize = 8;
/// At most this many completions of the last word.
pub(crate) const MAX_COMPLETIONS: usize = 8;
/// Completions start at this many characters.
pub(crate) const MIN_PREFIX_CHARS: usize = 2;
/// At most this many vocabulary words a segment are read for completions.
const COMPLETION_SCAN: usize = 4096;

/// The edit distance a word may be corrected at: 1 from 4 characters, 2 from 8.
pub(crate) fn typo_distance(word: &str) -> Option<u8> {
    match word.chars().count() {
        0..4 => None,
        4..8 => Some(1),
        _ => Some(2),
    }
}

/// Builds the Levenshtein automata (transposition counts as one edit). Building the builders
/// is the expensive part, so one `Expander` lives as long as the index.
pub(crate) struct Expander {
    one: LevenshteinAutomatonBuilder,
    two: LevenshteinAutomatonBuilder,
}

impl Expander {
    pub(crate) fn new() -> Expander {
        Expander {
            one: LevenshteinAutomatonBuilder::new(1, true),
            two: LevenshteinAutomatonBuilder::new(2, true),
        }
    }

    /// Vocabulary words within the typo distance of `word`, other than `word`: closest first,
    /// then the most frequent.
    pub(crate) fn typos(
        &self,
        searcher: &Searcher,
        field: Field,
        word: &str,
    ) -> tantivy::Result<Vec<String>> {
        let dfa = match typo_distance(word) {
            None => return Ok(Vec::new()),
            Some(1) => self.one.build_dfa(word),
            Some(_) => self.two.build_dfa(word),
        };
        let mut found: HashMap<String, (u8, u64)> = HashMap::new();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field)?;
            let mut stream = inverted.terms().search(DfaAutomaton(&dfa)).into_stream()?;
            while stream.advance() {
                let Ok(candidate) = std::str::from_utf8(stream.key()) else {
                    continue;
                };
                if candidate == word {
                    continue;
                }
                let doc_freq = u64::from(stream.value().doc_freq);
                let entry = found.entry(candidate.to_owned()).or_insert_with(|| {
                    let distance = match dfa.eval(candidate) {
                        Distance::Exact(distance) | Distance::AtLeast(distance) => distance,
                    };
                    (distance, 0)
                });
                entry.1 += doc_freq;
            }
        }
        let mut found: Vec<(String, (u8, u64))> = found.into_iter().collect();
        found.sort_by(|(a, (da, fa)), (b, (db, fb))| {
            da.cmp(db).then(fb.cmp(fa)).then_with(|| a.cmp(b))
        });
        found.truncate(MAX_TYPO_EXPANSIONS);
        Ok(found.into_iter().map(|(word, _)| word).collect())
    }

    /// Vocabulary words that start with `prefix`, other than `prefix`: the most frequent first.
    pub(crate) fn completions(
        &self,
        searcher: &Searcher,
        field: Field,
        prefix: &str,
    ) -> tantivy::Result<Vec<String>> {
        if prefix.chars().count() < MIN_PREFIX_CHARS {
            return Ok(Vec::new());
        }
        // No UTF-8 string contains the byte 0xFF, so this bounds every word with the prefix.
        let mut upper = prefix.as_bytes().to_vec();
        upper.push(0xFF);
        let mut found: HashMap<String, u64> = HashMap::new();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field)?;
            let mut stream = inverted
                .terms()
                .range()
                .gt(prefix.as_bytes())
                .lt(&upper)
                .into_stream()?;
            let mut scanned = 0;
            while scanned < COMPLETION_SCAN && stream.advance() {
                scanned += 1;
                let Ok(candidate) = std::str::from_utf8(stream.key()) else {
                    continue;
                };
                *found.entry(candidate.to_owned()).or_default() +=
                    u64::from(stream.value().doc_freq);
            }
        }
        let mut found: Vec<(String, u64)> = found.into_iter().collect();
        found.sort_by(|(a, fa), (b, fb)| fb.cmp(fa).then_with(|| a.cmp(b)));
        found.truncate(MAX_COMPLETIONS);
        Ok(found.into_iter().map(|(word, _)| word).collect())
    }
}

/// A Levenshtein DFA walked over a term dictionary.
struct DfaAutomaton<'a>(&'a DFA);

impl Automaton for DfaAutomaton<'_> {
    type State = u32;

    fn start(&self) -> u32 {
        self.0.initial_state()
    }

    fn is_match(&self, state: &u32) -> bool {
        matches!(self.0.distance(*state), Distance::Exact(_))
    }

    fn can_match(&self, state: &u32) -> bool {
        *state != levenshtein_automata::SINK_STATE
    }

    fn accept(&self, state: &u32, byte: u8) -> u32 {
        self.0.transition(*state, byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_grows_with_length() {
        assert_eq!(typo_distance("lam"), None);
        assert_eq!(typo_distance("lamp"), Some(1));
        assert_eq!(typo_distance("größere"), Some(1));
        assert_eq!(typo_distance("headphone"), Some(2));
    }

    #[test]
    fn a_transposition_is_one_edit() {
        let expander = Expander::new();
        let dfa = expander.one.build_dfa("lmap");
        assert_eq!(dfa.eval("lamp"), Distance::Exact(1));
        let dfa = expander.two.build_dfa("hedaphnoes");
        assert_eq!(dfa.eval("headphones"), Distance::Exact(2));
    }
}
