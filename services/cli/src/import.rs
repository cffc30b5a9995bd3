//! `shopmesh catalog import`: products given as JSON Lines, one `CreateProductRequest` (the
//! public API's shape, proto3 JSON as `POST /v1/products` takes it) per line.
//!
//! Each line is parsed against the message's descriptor (unknown fields refused), checked with
//! the same `buf.validate` rules the API applies, and created through the catalog's own create
//! (the same writes and product events as the API), so imported products reach every replica's
//! search index. A line that fails any of these is rejected with its number and the reason;
//! the others are imported. Lines are read with a bounded buffer: a longer line is rejected
//! without being held in memory.

use std::io::BufRead;

use prost_reflect::DynamicMessage;
use shopmesh_proto::shopmesh::catalog::v1::CreateProductRequest;

/// The longest line accepted. A product at every limit of its rules (a 5 000-character
/// description in 16 languages, 32 attributes) stays well below it.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// A line that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 1-based.
    pub line: u64,
    pub reason: String,
}

/// What an import did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines read, blank ones included.
    pub lines: u64,
    /// Lines that held a product (not blank).
    pub products: u64,
    pub added: u64,
    pub rejected: u64,
}

/// One line as read: its text, or that it was too long (and was skipped).
enum Line {
    Text(Vec<u8>),
    TooLong,
}

/// Reads the next line, keeping at most `max` bytes of it; `None` at the end.
fn next_line(reader: &mut impl BufRead, max: usize) -> std::io::Result<Option<Line>> {
    let mut text = Vec::new();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            break;
        }
        read_any = true;
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..end], Some(end + 1)),
            None => (available, None),
        };
        if !too_long {
            if text.len() + chunk.len() > max {
                too_long = true;
                text = Vec::new();
            } else {
                text.extend_from_slice(chunk);
            }
        }
        let consumed = found.unwrap_or(available.len());
        reader.consume(consumed);
        if found.is_some() {
            break;
        }
    }
    Ok(read_any.then_some(if too_long {
        Line::TooLong
    } else {
        Line::Text(text)
    }))
}

/// A line as a product to create, or why it cannot be one.
pub fn parse(line: &[u8]) -> Result<CreateProductRequest, String> {
    let descriptor = shopmesh_proto::validate::descriptors()
        .get_message_by_name("shopmesh.catalog.v1.CreateProductRequest")
        .ok_or("the catalog protos lack CreateProductRequest")?;
    let text = std::str::from_utf8(line).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let message = DynamicMessage::deserialize(descriptor, &mut deserializer)
        .map_err(|e| format!("not a product: {e}"))?;
    deserializer
        .end()
        .map_err(|e| format!("not a product: {e}"))?;
    shopmesh_proto::validate::validate(&message).map_err(|violations| {
        violations
            .iter()
            .map(|v| {
                if v.field.is_empty() {
                    v.description.clone()
                } else {
                    format!("{}: {}", v.field, v.description)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    message
        .transcode_to::<CreateProductRequest>()
        .map_err(|e| format!("not a product: {e}"))
}

/// Imports every line of `reader`: `create` adds one product (its error is the reason of the
/// rejection), `rejected` hears of each rejected line, `progress` is called after each line.
pub async fn import<F, Fut>(
    mut reader: impl BufRead,
    max_line: usize,
    mut create: F,
    mut rejected: impl FnMut(&Rejection),
    mut progress: impl FnMut(&Summary),
) -> std::io::Result<Summary>
where
    F: FnMut(CreateProductRequest) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut summary = Summary::default();
    while let Some(line) = next_line(&mut reader, max_line)? {
        summary.lines += 1;
        let outcome = match line {
            Line::TooLong => Err(format!("longer than {max_line} bytes")),
            Line::Text(text) if text.trim_ascii().is_empty() => {
                progress(&summary);
                continue;
            }
            Line::Text(text) => match parse(&text) {
                Ok(product) => create(product).await,
                Err(reason) => Err(reason),
            },
        };
        summary.products += 1;
        match outcome {
            Ok(()) => summary.added += 1,
            Err(reason) => {
                summary.rejected += 1;
                rejected(&Rejection {
                    line: summary.lines,
                    reason,
                });
            }
        }
        progress(&summary);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(input: &[u8], max: usize) -> (Summary, Vec<String>, Vec<Rejection>) {
        let mut created = Vec::new();
        let mut rejections = Vec::new();
        let summary = import(
            input,
            max,
            |product: CreateProductRequest| {
                let taken = product.sku == "TAKEN";
                created.push(product.sku);
                async move {
                    if taken {
                        Err("a product with this SKU exists (SKU_TAKEN)".to_owned())
                    } else {
                        Ok(())
                    }
                }
            },
            |rejection| rejections.push(rejection.clone()),
            |_| {},
        )
        .await
        .unwrap();
        (summary, created, rejections)
    }

    const GOOD: &str = r#"{"sku": "A-1", "title": "Tent", "category_id": "0190a4c6-2b4e-7c1a-9f3e-0123456789ab", "price": {"currency_code": "EUR", "amount_minor": "1999"}, "stock": 3, "attributes": {"colour": "green"}, "translations": {"de": {"title": "Zelt"}}}"#;

    #[tokio::test]
    async fn good_lines_are_created_and_bad_ones_rejected_with_their_number() {
        let input = [
            GOOD,
            "",
            r#"{"sku": "A-2", "title": "No price"}"#,
            r#"{"sku": "A-3", "title": "T", "price": {"currency_code": "EUR", "amount_minor": "1"}, "colour": "red"}"#,
            "{not json",
            r#"{"sku": "TAKEN", "title": "T", "category_id": "0190a4c6-2b4e-7c1a-9f3e-0123456789ab", "price": {"currency_code": "EUR", "amount_minor": "1"}}"#,
            r#"{"sku": "bad sku!", "title": "T", "price": {"currency_code": "EUR", "amount_minor": "1"}, "stock": -1}"#,
            GOOD,
        ]
        .join("\n");
        let (summary, created, rejections) = run(input.as_bytes(), MAX_LINE_BYTES).await;
        assert_eq!(
            summary,
            Summary {
                lines: 8,
                products: 7,
                added: 2,
                rejected: 5
            }
        );
        assert_eq!(created, ["A-1", "TAKEN", "A-1"]);
        let lines: Vec<u64> = rejections.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 4, 5, 6, 7]);
        assert!(rejections[0].reason.contains("price"), "{rejections:?}");
        assert!(rejections[1].reason.contains("colour"), "{rejections:?}");
        assert!(
            rejections[2].reason.starts_with("not a product"),
            "{rejections:?}"
        );
        assert!(rejections[3].reason.contains("SKU_TAKEN"), "{rejections:?}");
        // Every broken rule of a line is named.
        assert!(rejections[4].reason.contains("sku"), "{rejections:?}");
        assert!(rejections[4].reason.contains("stock"), "{rejections:?}");
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_skipped_without_losing_the_next() {
        let long = format!(r#"{{"sku": "L-1", "title": "{}"}}"#, "x".repeat(300));
        let input = format!("{long}\n{GOOD}\r\n{long}");
        let limit = GOOD.len() + 1;
        // A reader that hands out a few bytes at a time, as a pipe would.
        let reader = std::io::BufReader::with_capacity(7, input.as_bytes());
        let mut rejections = Vec::new();
        let mut created = Vec::new();
        let summary = import(
            reader,
            limit,
            |product: CreateProductRequest| {
                created.push(product.sku);
                async { Ok(()) }
            },
            |r| rejections.push(r.clone()),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(summary.lines, 3);
        assert_eq!(summary.added, 1, "{rejections:?}");
        assert_eq!(created, ["A-1"]);
        assert_eq!(
            rejections,
            [
                Rejection {
                    line: 1,
                    reason: format!("longer than {limit} bytes")
                },
                Rejection {
                    line: 3,
                    reason: format!("longer than {limit} bytes")
                }
            ]
        );
    }
}
