//! The answers the edge writes itself, and the headers every answer carries: a [`Reply`]
//! (status, headers, body) for REST and the edge's own endpoints, a trailers-only status for
//! gRPC, and the security headers on written and proxied answers alike. Kept in one place so
//! every route kind answers errors in one shape and no answer leaves without its headers.

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use shopmesh_kit::context::REQUEST_ID;
use shopmesh_kit::error::http_status;
use tonic::Status;
use tonic_types::StatusExt;

use crate::transcode::status_json;

/// Browsers keep to HTTPS for a year once they have seen it.
const HSTS: &str = "max-age=31536000; includeSubDomains";

/// An answer the edge writes itself.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(header::HeaderName, String)>,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: vec![(header::CONTENT_TYPE, "application/json".into())],
            body: body.into(),
        }
    }

    /// The same answer with another HTTP status (405, 413, 431, 408 have no gRPC code of their
    /// own).
    pub(crate) fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// A failure as a `google.rpc.Status` body with the HTTP status grpc-gateway uses.
    pub(crate) fn status(status: &Status) -> Self {
        let mut reply = Self::json(http_status(status.code()), status_json(status));
        if let Some(delay) = status
            .get_error_details()
            .retry_info()
            .and_then(|info| info.retry_delay)
        {
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            reply
                .headers
                .push((header::RETRY_AFTER, seconds.max(1).to_string()));
        }
        reply
    }

    /// Adds `Strict-Transport-Security`, for answers served over TLS.
    pub(crate) fn add_hsts(&mut self) {
        self.headers
            .push((header::STRICT_TRANSPORT_SECURITY, HSTS.into()));
    }
}

/// Writes `reply` whole, with a `Content-Length`.
pub(crate) async fn write_reply(
    session: &mut Session,
    reply: Reply,
    request_id: &str,
) -> pingora::Result<()> {
    let mut response = response_head(&reply, request_id)?;
    response.insert_header(header::CONTENT_LENGTH, reply.body.len().to_string())?;
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(reply.body), true).await
}

/// The head of `reply`, with the headers every REST answer carries; the body's framing is the
/// caller's.
pub(crate) fn response_head(reply: &Reply, request_id: &str) -> pingora::Result<ResponseHeader> {
    let mut response = ResponseHeader::build(reply.status, Some(reply.headers.len() + 4))?;
    for (name, value) in &reply.headers {
        response.insert_header(name.clone(), value)?;
    }
    response.insert_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")?;
    response.insert_header(header::REFERRER_POLICY, "no-referrer")?;
    response.insert_header(REQUEST_ID, request_id)?;
    Ok(response)
}

/// The headers every proxied answer (gRPC passthrough, forward routes) carries; the server
/// behind chose the rest.
pub(crate) fn secure_proxied(
    response: &mut ResponseHeader,
    request_id: &str,
    tls: bool,
) -> pingora::Result<()> {
    response.insert_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")?;
    response.insert_header(REQUEST_ID, request_id)?;
    if tls {
        response.insert_header(header::STRICT_TRANSPORT_SECURITY, HSTS)?;
    }
    Ok(())
}

/// A trailers-only gRPC answer carrying `status`.
pub(crate) async fn write_grpc_status(
    session: &mut Session,
    status: &Status,
) -> pingora::Result<()> {
    let mut response = ResponseHeader::build(200, Some(4))?;
    response.insert_header(header::CONTENT_TYPE, "application/grpc")?;
    response.insert_header("grpc-status", (status.code() as i32).to_string())?;
    response.insert_header("grpc-message", status.message().replace(['\r', '\n'], " "))?;
    session
        .write_response_header(Box::new(response), true)
        .await?;
    session.write_response_body(None, true).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The `Retry-After` of the answer to a `429` that says to wait `wait`.
    fn retry_after(wait: Duration) -> Option<String> {
        let status: Status =
            shopmesh_kit::Error::resource_exhausted("RATE_LIMITED", "too many requests")
                .with_retry_after(wait)
                .into();
        let reply = Reply::status(&status);
        assert_eq!(reply.status, 429);
        reply
            .headers
            .iter()
            .find(|(name, _)| name == header::RETRY_AFTER)
            .map(|(_, value)| value.clone())
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after(Duration::from_secs(3)).as_deref(), Some("3"));
        assert_eq!(
            retry_after(Duration::from_millis(1500)).as_deref(),
            Some("2")
        );
        assert_eq!(retry_after(Duration::from_millis(10)).as_deref(), Some("1"));
    }

    #[test]
    fn a_failure_without_a_delay_has_no_retry_after() {
        let reply = Reply::status(&Status::not_found("no route for /x"));
        assert_eq!(reply.status, 404);
        assert!(
            reply
                .headers
                .iter()
                .all(|(name, _)| name != header::RETRY_AFTER)
        );
    }
}
