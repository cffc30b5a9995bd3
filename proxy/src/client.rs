//! What the edge reads of a client's request before any route kind's own steps: the client's
//! address, its rate limits, and the size of its head and body. Shared by REST and forward
//! routes so a limit or a size is refused with the same answer whichever route it was for.

use std::net::IpAddr;

use http::header;
use pingora::proxy::Session;
use tonic::Status;

use crate::limits::{Key, Limiter};
use crate::reply::Reply;

/// The address of the client's TCP connection (the edge does not read `X-Forwarded-For`).
pub(crate) fn ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Counts a request against `key`'s limit in `class`; `Err` is the `429`. A request with no key
/// (no client address, no token) is not counted.
pub(crate) fn limit(limiter: &Limiter, class: i32, key: Option<Key>) -> Result<(), Reply> {
    let Some(key) = key else {
        return Ok(());
    };
    limiter.check(class, key).map_err(|wait| {
        Reply::status(
            &shopmesh_kit::Error::resource_exhausted(
                "RATE_LIMITED",
                "too many requests; retry later",
            )
            .with_retry_after(wait)
            .into(),
        )
    })
}

/// Refuses with `431` a request head (path, query and headers) over `limit` bytes.
pub(crate) fn check_head(session: &Session, limit: usize) -> Result<(), Reply> {
    let head = session.req_header();
    let head_bytes = head.uri.path_and_query().map_or(0, |p| p.as_str().len())
        + head
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head_bytes > limit {
        return Err(Reply::status(&Status::invalid_argument(format!(
            "the request head is larger than {limit} bytes"
        )))
        .with_status(431));
    }
    Ok(())
}

/// The request's `Content-Length`, if it has a valid one.
pub(crate) fn declared_length(session: &Session) -> Option<usize> {
    session
        .get_header(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// The `413` of a body over `limit` bytes.
pub(crate) fn too_large(limit: usize) -> Reply {
    Reply::status(&Status::invalid_argument(format!(
        "the body is larger than {limit} bytes"
    )))
    .with_status(413)
}

/// Reads the body, refusing it with `413` beyond `limit` bytes: at once on a larger
/// `Content-Length`, else as soon as the bytes read pass it.
pub(crate) async fn read_body(session: &mut Session, limit: usize) -> Result<Vec<u8>, Reply> {
    let declared = declared_length(session);
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large(limit));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(too_large(limit));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) if matches!(error.etype(), pingora::ErrorType::ReadTimedout) => {
                return Err(Reply::status(&Status::deadline_exceeded(
                    "the request body stalled; send it faster",
                ))
                .with_status(408));
            }
            Err(_) => {
                return Err(Reply::status(&Status::invalid_argument(
                    "the request body could not be read",
                )));
            }
        }
    }
}
