//! The shopper's query text: split into words and quoted phrases by our own rules, so no input
//! reaches tantivy's query parser and none can fail to parse.

use tantivy::tokenizer::TextAnalyzer;

/// At most this many words and phrases of a query are used; the rest are ignored.
pub(crate) const MAX_ITEMS: usize = 16;

/// A part of the query text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// A word, lowercased: a run of letters and digits.
    Word(String),
    /// The text between double quotes.
    Phrase(String),
}

/// The query text, split.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ParsedText {
    pub items: Vec<Item>,
    /// The last item is a word the shopper may still be typing (no space or quote after it).
    pub last_is_partial: bool,
}

/// Splits query text into words and phrases. A quote left open runs to the end of the text.
pub(crate) fn parse(q: &str) -> ParsedText {
    let mut items = Vec::new();
    let mut word = String::new();
    let mut phrase: Option<String> = None;
    for c in q.chars() {
        if let Some(open) = phrase.as_mut() {
            if c == '"' {
                let text = std::mem::take(open);
                phrase = None;
                if !text.trim().is_empty() {
                    items.push(Item::Phrase(text));
                }
            } else {
                open.push(c);
            }
        } else if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else {
            if !word.is_empty() {
                items.push(Item::Word(std::mem::take(&mut word)));
            }
            if c == '"' {
                phrase = Some(String::new());
            }
        }
    }
    let last_is_partial = !word.is_empty();
    if last_is_partial {
        items.push(Item::Word(word));
    }
    if let Some(text) = phrase
        && !text.trim().is_empty()
    {
        items.push(Item::Phrase(text));
    }
    let truncated = items.len() > MAX_ITEMS;
    items.truncate(MAX_ITEMS);
    ParsedText {
        items,
        last_is_partial: last_is_partial && !truncated,
    }
}

/// The tokens of `text` under `analyzer`, with their positions.
pub(crate) fn analyze(analyzer: &mut TextAnalyzer, text: &str) -> Vec<(usize, String)> {
    let mut stream = analyzer.token_stream(text);
    let mut tokens = Vec::new();
    while let Some(token) = stream.next() {
        tokens.push((token.position, token.text.clone()));
    }
    tokens
}

/// The single token `word` analyses to, if it is one (a stop word or an overlong word is none).
pub(crate) fn analyze_word(analyzer: &mut TextAnalyzer, word: &str) -> Option<String> {
    let mut tokens = analyze(analyzer, word);
    if tokens.len() == 1 {
        tokens.pop().map(|(_, token)| token)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(items: &[&str]) -> Vec<Item> {
        items.iter().map(|w| Item::Word((*w).to_owned())).collect()
    }

    #[test]
    fn splits_words_on_anything_but_letters_and_digits() {
        let parsed = parse("Wireless  T-Shirt, größe:XL");
        assert_eq!(
            parsed.items,
            words(&["wireless", "t", "shirt", "größe", "xl"])
        );
        assert!(parsed.last_is_partial);
        assert!(!parse("lamp ").last_is_partial);
    }

    #[test]
    fn quotes_make_phrases_and_an_open_quote_runs_to_the_end() {
        let parsed = parse(r#"red "running shoes" men"#);
        assert_eq!(
            parsed.items,
            vec![
                Item::Word("red".into()),
                Item::Phrase("running shoes".into()),
                Item::Word("men".into()),
            ]
        );
        let open = parse(r#"lamp "brass des"#);
        assert_eq!(
            open.items,
            vec![Item::Word("lamp".into()), Item::Phrase("brass des".into())]
        );
        assert!(!open.last_is_partial);
        assert!(parse(r#""" " "#).items.is_empty());
    }

    #[test]
    fn caps_the_number_of_items() {
        let parsed = parse(&"ab ".repeat(40));
        assert_eq!(parsed.items.len(), MAX_ITEMS);
    }
}
