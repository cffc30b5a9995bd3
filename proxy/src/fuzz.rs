//! The body of the transcoder's fuzz target (`proxy/fuzz`). It lives here, not in the target,
//! so that the stable test suite replays the fuzzer's corpus through the very same code
//! (`tests/transcoder_fuzz.rs`).
//!
//! An input is one request and one answer made of bytes: the first byte picks the HTTP method,
//! the content type and the route whose answer is decoded; the rest is `path \n query \n body`.
//! The body is also read as the route's protobuf response and as an error's details, so both
//! directions of the transcoder see hostile bytes.

use http::Method;
use prost_reflect::DynamicMessage;
use shopmesh_proto::validate::validate;

use crate::routes::Router;
use crate::transcode::{request_message, response_json, status_json};

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
    Method::PUT,
];

/// Runs one fuzzer input through routing, binding, JSON parsing, validation, response
/// rendering and error rendering. Panics only on a broken invariant, which is the finding.
pub fn transcode_bytes(router: &Router, data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(selector) % METHODS.len()];
    let content_type = if selector & 0x80 == 0 {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let mut parts = rest.splitn(3, |&byte| byte == b'\n');
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let query = parts.next().map(String::from_utf8_lossy);
    let body = parts.next().unwrap_or_default();

    if let Ok((route, bindings)) = router.find(method, &path) {
        match request_message(route, &bindings, query.as_deref(), body, content_type) {
            Ok(message) => {
                let _ = validate(&message);
            }
            Err(violations) => assert!(!violations.is_empty(), "a refusal names its field"),
        }
    }

    let routes = router.routes();
    if !routes.is_empty() {
        let route = &routes[usize::from(selector) % routes.len()];
        if let Ok(answer) = DynamicMessage::decode(route.method.output(), body) {
            let _ = response_json(route, &answer);
        }
    }

    let status =
        tonic::Status::with_details(tonic::Code::InvalidArgument, "fuzz", body.to_vec().into());
    let _ = status_json(&status);
}
