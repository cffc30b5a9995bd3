//! The caller's languages, from the `accept-language` metadata the edge passes on.

use std::collections::BTreeMap;

/// The languages of `accept-language`, most preferred first (by `q`, then order), keeping
/// only plain BCP 47 tags; `*` and malformed entries are dropped.
pub fn accepted(metadata: &tonic::metadata::MetadataMap) -> Vec<String> {
    let Some(header) = metadata
        .get("accept-language")
        .and_then(|value| value.to_str().ok())
    else {
        return Vec::new();
    };
    let mut ranked: Vec<(u16, usize, String)> = header
        .split(',')
        .take(16)
        .enumerate()
        .filter_map(|(index, entry)| {
            let mut parts = entry.split(';');
            let tag = parts.next()?.trim();
            let quality = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .map_or(Some(1000), |q| {
                    q.trim().parse::<f32>().ok().map(|q| (q * 1000.0) as u16)
                })?;
            (valid_tag(tag) && quality > 0).then(|| (quality, index, tag.to_owned()))
        })
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, _, tag)| tag).collect()
}

/// A language tag like `de`, `fr-CH` or `zh-Hant-TW`: letters first, then alphanumeric parts.
fn valid_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let Some(language) = parts.next() else {
        return false;
    };
    (2..=3).contains(&language.len())
        && language.bytes().all(|b| b.is_ascii_alphabetic())
        && tag.len() <= 35
        && parts.all(|part| {
            (1..=8).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// The best of `available` locales for a caller accepting `accepted`: an exact match, then a
/// match of the language alone (`de-CH` → `de`), else `None`.
pub fn best<'a>(
    accepted: &[String],
    available: impl Iterator<Item = &'a str> + Clone,
) -> Option<&'a str> {
    for wanted in accepted {
        if let Some(found) = available.clone().find(|a| a.eq_ignore_ascii_case(wanted)) {
            return Some(found);
        }
        let language = wanted.split('-').next().unwrap_or(wanted);
        if let Some(found) = available.clone().find(|a| {
            a.split('-')
                .next()
                .is_some_and(|l| l.eq_ignore_ascii_case(language))
        }) {
            return Some(found);
        }
    }
    None
}

/// The locale to answer in among `default` (the original text) and the `translations`, and the
/// translation to use: `None` means the original. The original competes like any translation,
/// so `en, de` on an English original with a German translation stays English.
pub fn choose<'a, T>(
    accepted: &[String],
    default: &'a str,
    translations: &'a BTreeMap<String, T>,
) -> (&'a str, Option<&'a T>) {
    let chosen = best(
        accepted,
        translations
            .keys()
            .map(String::as_str)
            .chain(std::iter::once(default)),
    )
    .unwrap_or(default);
    if chosen == default {
        (default, None)
    } else {
        (chosen, translations.get(chosen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> Vec<String> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("accept-language", value.parse().unwrap());
        accepted(&metadata)
    }

    #[test]
    fn languages_are_ranked_by_quality_then_order() {
        assert_eq!(header("fr;q=0.5, de-CH, en;q=0.8"), ["de-CH", "en", "fr"]);
        assert_eq!(header("*, 1234, x;q=0, it"), ["it"]);
        assert!(accepted(&tonic::metadata::MetadataMap::new()).is_empty());
    }

    #[test]
    fn the_best_locale_falls_back_to_the_language() {
        let available = ["en", "de", "fr"];
        assert_eq!(
            best(&header("de-CH"), available.iter().copied()),
            Some("de")
        );
        assert_eq!(
            best(&header("it, fr"), available.iter().copied()),
            Some("fr")
        );
        assert_eq!(best(&header("it"), available.iter().copied()), None);
    }

    #[test]
    fn the_original_competes_with_its_translations() {
        let translations = BTreeMap::from([("de".to_owned(), "Schuhe")]);
        assert_eq!(choose(&header("en, de"), "en", &translations), ("en", None));
        assert_eq!(
            choose(&header("de-CH"), "en", &translations),
            ("de", Some(&"Schuhe"))
        );
        assert_eq!(choose(&header("it"), "en", &translations), ("en", None));
    }
}
