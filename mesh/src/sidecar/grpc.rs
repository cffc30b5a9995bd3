//! The little of gRPC the sidecar needs to speak itself: deadlines and status answers.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body_util::{BodyExt as _, Empty};

use super::Body;

/// The gRPC codes the sidecar answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unavailable = 14,
    InvalidArgument = 3,
}

/// A trailers-only answer carrying `code` and `message`.
pub fn status(code: Code, message: &str) -> Response<Body> {
    let mut response = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code as u16));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", message);
    }
    response
}

/// gRPC's percent-encoding of `grpc-message`: anything outside printable ASCII, and `%`.
fn percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The caller's deadline from `grpc-timeout`, parsed as the services parse it.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    shopmesh_kit::context::parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

/// `grpc-timeout` for what is left of a deadline, in milliseconds (rounded up).
pub fn timeout_header(left: Duration) -> HeaderValue {
    let millis = left.as_micros().div_ceil(1000).clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{millis}m")).expect("digits and a unit")
}

/// Whether an answer says its endpoint could not serve: not HTTP 200, or a trailers-only
/// `UNAVAILABLE`. Other gRPC errors are the service's answer and count as successes here.
pub fn is_unavailable(response: &Response<hyper::body::Incoming>) -> bool {
    response.status() != http::StatusCode::OK
        || response
            .headers()
            .get("grpc-status")
            .is_some_and(|status| status == "14")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_in_every_unit_and_odd_ones_are_ignored() {
        let parse = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", HeaderValue::from_str(value).unwrap());
            timeout(&headers)
        };
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("10u"), Some(Duration::from_micros(10)));
        for odd in ["", "S", "5", "5x", "123456789S", "-1S"] {
            assert_eq!(parse(odd), None, "{odd}");
        }
        assert_eq!(timeout_header(Duration::from_micros(1500)), "2m");
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("a b%ü"), "a b%25%C3%BC");
        let answer = status(Code::PermissionDenied, "no");
        assert_eq!(answer.headers()["grpc-status"], "7");
    }
}
