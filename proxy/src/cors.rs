//! CORS: which browser origins may read the edge's REST answers. A preflight is answered from
//! the router (the methods a path is served with); every other answer to a listed origin is
//! marked readable by it. Origins match exactly, never by wildcard, because answers may carry
//! credentials.

use bytes::Bytes;
use http::{Method, header};
use pingora::proxy::Session;
use tonic::Status;

use crate::config::CorsConfig;
use crate::reply::Reply;
use crate::routes::{Miss, Router};

/// Answers a CORS preflight: allowed only for a listed origin and an existing route.
pub(crate) fn preflight(
    cors: &CorsConfig,
    router: &Router,
    session: &Session,
    path: &str,
) -> Reply {
    let origin = allowed_origin(cors, session);
    let requested = session
        .get_header(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok());
    let allowed = match (origin, requested) {
        (Some(origin), Some(requested)) => {
            let methods = match router.find(&requested, path) {
                Ok(_) => vec![requested],
                Err(Miss::MethodNotAllowed(methods)) => methods,
                Err(Miss::NotFound) => Vec::new(),
            };
            (!methods.is_empty()).then_some((origin, methods))
        }
        _ => None,
    };
    let Some((origin, methods)) = allowed else {
        return Reply::status(&Status::permission_denied(
            "cross-origin requests from this origin are not allowed",
        ))
        .with_status(403);
    };
    let methods: Vec<&str> = methods.iter().map(Method::as_str).collect();
    Reply {
        status: 204,
        headers: vec![
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
            (header::ACCESS_CONTROL_ALLOW_METHODS, methods.join(", ")),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, content-type, idempotency-key, x-request-id".into(),
            ),
            (header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".into()),
            (
                header::ACCESS_CONTROL_MAX_AGE,
                cors.max_age.as_secs().to_string(),
            ),
            (header::VARY, "Origin".into()),
        ],
        body: Bytes::new(),
    }
}

/// Marks `reply` readable by the request's origin when it is listed. A granted preflight
/// (`204`) already carries its own CORS headers.
pub(crate) fn expose(cors: &CorsConfig, session: &Session, reply: &mut Reply) {
    if let Some(origin) = allowed_origin(cors, session)
        && reply.status != 204
    {
        reply.headers.extend([
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
            (header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".into()),
            (
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                "retry-after, x-request-id".into(),
            ),
            (header::VARY, "Origin".into()),
        ]);
    }
}

/// The request's `Origin`, if it is on the allow-list.
fn allowed_origin(cors: &CorsConfig, session: &Session) -> Option<String> {
    let origin = session.get_header(header::ORIGIN)?.to_str().ok()?;
    cors.allowed_origins
        .iter()
        .any(|allowed| allowed == origin)
        .then(|| origin.to_owned())
}
