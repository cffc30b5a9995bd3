//! Page tokens: opaque to clients, a creation time and an id to the services, so a listing in
//! creation order is stable while records are added.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::{Error, Result};

/// Where a listing continues: after this creation time and id.
pub type Cursor = (i64, Uuid);

pub fn encode((at, id): Cursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("{at}:{id}"))
}

/// Reads a page token; a malformed one is `INVALID_ARGUMENT` naming `page_token`.
pub fn decode(token: &str) -> Result<Cursor> {
    let invalid = || Error::invalid_field("page_token", "is not a token from a previous page");
    let text = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(invalid)?;
    let (at, id) = text.split_once(':').ok_or_else(invalid)?;
    Ok((
        at.parse().map_err(|_| invalid())?,
        Uuid::parse_str(id).map_err(|_| invalid())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_junk_is_refused() {
        let cursor = (1_700_000_000_000, Uuid::now_v7());
        assert_eq!(decode(&encode(cursor)).unwrap(), cursor);
        for junk in ["", "!!", "MTIz", &URL_SAFE_NO_PAD.encode("x:y")] {
            assert_eq!(
                decode(junk).unwrap_err().violations()[0].field,
                "page_token"
            );
        }
    }
}
