//! Page tokens: opaque to clients, checked on the way back in.
//!
//! A token carries the offset of the page it asks for and a fingerprint of the query it
//! belongs to, so a token altered by hand or replayed against another query is refused rather
//! than silently paging something else. Offsets stop at [`MAX_RESULT_WINDOW`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{MAX_RESULT_WINDOW, SearchError, SearchQuery, Sort};

const MAGIC: &[u8; 2] = b"p1";
const LENGTH: usize = MAGIC.len() + 4 + 8;

/// The token of the page at `offset` of `query`.
pub(crate) fn encode(query: &SearchQuery, offset: usize) -> String {
    let offset = u32::try_from(offset).unwrap_or(u32::MAX);
    let mut bytes = Vec::with_capacity(LENGTH);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&offset.to_be_bytes());
    bytes.extend_from_slice(&fingerprint(query).to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The offset a token asks for; a token that is malformed, altered, or from another query is
/// an invalid `page_token`.
pub(crate) fn decode(query: &SearchQuery, token: &str) -> Result<usize, SearchError> {
    let malformed = || SearchError::invalid("page_token", "malformed page token");
    if token.len() > 64 {
        return Err(malformed());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
    if bytes.len() != LENGTH || &bytes[..2] != MAGIC {
        return Err(malformed());
    }
    let offset = u32::from_be_bytes(bytes[2..6].try_into().map_err(|_| malformed())?);
    let print = u64::from_be_bytes(bytes[6..].try_into().map_err(|_| malformed())?);
    if print != fingerprint(query) {
        return Err(SearchError::invalid(
            "page_token",
            "the page token belongs to another query",
        ));
    }
    let offset = usize::try_from(offset).map_err(|_| malformed())?;
    if offset > MAX_RESULT_WINDOW {
        return Err(malformed());
    }
    Ok(offset)
}

/// FNV-1a over everything that selects and orders results (not the page size or token), so it
/// is the same in every replica and every build.
fn fingerprint(query: &SearchQuery) -> u64 {
    let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
    hash.field(query.q.as_bytes());
    hash.field(query.locale.as_bytes());
    hash.field(query.category.as_deref().unwrap_or("\u{0}none").as_bytes());
    hash.field(&option_bytes(query.min_price));
    hash.field(&option_bytes(query.max_price));
    hash.field(&[u8::from(query.in_stock)]);
    hash.field(&option_bytes(query.min_rating.map(f64::to_bits)));
    for (name, value) in &query.attributes {
        hash.field(name.as_bytes());
        hash.field(value.as_bytes());
    }
    let sort: u8 = match query.sort {
        Sort::Relevance => 0,
        Sort::PriceAsc => 1,
        Sort::PriceDesc => 2,
        Sort::Rating => 3,
        Sort::Newest => 4,
    };
    hash.field(&[sort]);
    hash.0
}

fn option_bytes<T: Into<i128>>(value: Option<T>) -> Vec<u8> {
    match value {
        None => vec![0],
        Some(value) => {
            let mut bytes = vec![1];
            bytes.extend_from_slice(&value.into().to_be_bytes());
            bytes
        }
    }
}

struct Fnv(u64);

impl Fnv {
    fn field(&mut self, bytes: &[u8]) {
        // The length first, so ("ab", "c") and ("a", "bc") differ.
        for byte in (bytes.len() as u64).to_be_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> SearchQuery {
        SearchQuery {
            q: q.to_owned(),
            locale: "en".to_owned(),
            ..SearchQuery::default()
        }
    }

    #[test]
    fn round_trips_and_ignores_page_size() {
        let token = encode(&query("lamp"), 40);
        let mut other_size = query("lamp");
        other_size.page_size = 7;
        assert_eq!(decode(&other_size, &token).unwrap(), 40);
    }

    #[test]
    fn refuses_tokens_of_other_queries_and_garbage() {
        let token = encode(&query("lamp"), 20);
        for (q, token) in [
            ("lamps", token.as_str()),
            ("lamp", "not a token"),
            ("lamp", ""),
            ("lamp", "cDEAAAAUAAAAAAAAAAAA"),
        ] {
            match decode(&query(q), token) {
                Err(SearchError::InvalidQuery { field, .. }) => assert_eq!(field, "page_token"),
                other => panic!("{q:?} {token:?} gave {other:?}"),
            }
        }
        let beyond = encode(&query("lamp"), MAX_RESULT_WINDOW + 1);
        assert!(decode(&query("lamp"), &beyond).is_err());
    }
}
