//! gRPC passthrough: a gRPC client's call goes as it came, over h2 and with its trailers, to the
//! service that owns its package. The edge checks it first: the method must be one the protos
//! declare and its service must have an upstream; then the default class's per-address limit
//! and the method's access rule. Refusals are trailers-only gRPC answers
//! ([`crate::reply::write_grpc_status`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use http::header;
use metrics::SharedString;
use pingora::http::RequestHeader;
use pingora::protocols::ALPN;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use shopmesh_kit::access::Authority;
use shopmesh_kit::context::REQUEST_ID;
use tonic::Status;

use crate::limits::{Key, Limiter};

/// Whether the request is a gRPC call. gRPC proper only: gRPC-Web (`application/grpc-web`) is
/// not spoken by the services.
pub(crate) fn is_grpc(session: &Session) -> bool {
    session
        .get_header(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "application/grpc" || v.starts_with("application/grpc+"))
}

/// Where an admitted call goes: its owning service, or the node's mesh sidecar in front of it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The service's name, sent as `:authority`, which a sidecar routes by.
    service: String,
    address: SocketAddr,
}

/// Checks a gRPC request's method and access and picks its service's address from `targets`.
/// `Ok` is the method's path (the route's name in logs and metrics) and the target; `Err` is
/// the refusal.
pub(crate) async fn admit(
    session: &Session,
    client: Option<IpAddr>,
    targets: &HashMap<String, SocketAddr>,
    limiter: &Limiter,
    authority: &Authority,
) -> Result<(SharedString, Target), Status> {
    let path = session.req_header().uri.path();
    // Only methods the protos declare: nothing else reaches a service, or a metric label.
    let Some((path, _)) = shopmesh_kit::access::rules().get_key_value(path) else {
        return Err(Status::unimplemented(format!("unknown method {path}")));
    };
    let path: &'static str = path;
    let service = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .and_then(|(service, _)| service.rsplit_once('.'))
        .and_then(|(package, _)| crate::routes::owner(package))
        .ok_or_else(|| Status::unimplemented(format!("unknown method {path}")))?;
    let target = targets
        .get(service)
        .map(|address| Target {
            service: service.to_owned(),
            address: *address,
        })
        .ok_or_else(|| Status::unimplemented(format!("unknown service {service}")))?;
    if let Some(ip) = client {
        limiter
            .check(0, Key::Ip(ip))
            .map_err(|_| Status::resource_exhausted("too many requests; retry later"))?;
    }
    let authorization = session.get_header(header::AUTHORIZATION).cloned();
    authority.admit(path, None, authorization.as_ref()).await?;
    Ok((SharedString::const_str(path), target))
}

/// The service's end of a call: h2, many streams per connection.
pub(crate) fn peer(target: &Target) -> HttpPeer {
    let mut peer = HttpPeer::new(target.address, false, String::new());
    peer.options.alpn = ALPN::H2;
    peer.options.max_h2_streams = 128;
    peer
}

/// The call as the service receives it: the service's name as `:authority` (which a mesh
/// sidecar routes by), and the request id, so the edge's and the service's logs share it.
pub(crate) fn upstream_request(
    upstream_request: &mut RequestHeader,
    target: &Target,
    request_id: &str,
) -> pingora::Result<()> {
    let path = upstream_request
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e| pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "path", e))?;
    upstream_request.set_uri(path);
    upstream_request.insert_header(header::HOST, target.service.as_str())?;
    upstream_request.insert_header(REQUEST_ID, request_id)?;
    Ok(())
}
