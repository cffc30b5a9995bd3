//! Forward routes: whole path prefixes proxied unchanged to a plain HTTP/1.1 server, for what
//! sits beside the API (a web app, static assets). A forwarded request gets the per-address
//! limit, the body limit (on its `Content-Length` and again as it streams), a request id and
//! `x-forwarded-for`, but no token check: the server behind answers for its own access.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::protocols::ALPN;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use shopmesh_kit::context::REQUEST_ID;

use crate::client;
use crate::config::ForwardRoute;
use crate::limits::{Key, Limiter};
use crate::reply::Reply;

/// A `forward` route as the gateway matches it.
#[derive(Debug, Clone)]
pub struct Forward {
    /// Also the route's name in logs and metric labels.
    pub prefix: Arc<str>,
    pub upstream: SocketAddr,
}

impl From<&ForwardRoute> for Forward {
    fn from(route: &ForwardRoute) -> Self {
        Self {
            prefix: route.prefix.as_str().into(),
            upstream: route.upstream,
        }
    }
}

/// The configured routes, longest prefix first, so [`find`] picks the most specific.
pub(crate) fn routes(config: &[ForwardRoute]) -> Vec<Forward> {
    let mut routes: Vec<_> = config.iter().map(Forward::from).collect();
    routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
    routes
}

/// The route `path` belongs to, if any: the first match of `routes`, longest prefix first.
pub(crate) fn find<'a>(routes: &'a [Forward], path: &str) -> Option<&'a Forward> {
    routes.iter().find(|route| path.starts_with(&*route.prefix))
}

/// Admits a request of a forward route: the per-address limit (default class) and the body's
/// declared size. `Err` is the refusal.
pub(crate) fn admit(
    session: &Session,
    client: Option<IpAddr>,
    limiter: &Limiter,
    max_body_bytes: usize,
) -> Result<(), Reply> {
    client::limit(limiter, 0, client.map(Key::Ip))?;
    if client::declared_length(session).is_some_and(|length| length > max_body_bytes) {
        return Err(client::too_large(max_body_bytes));
    }
    Ok(())
}

/// The server behind a forward route: HTTP/1.1, as the request came; a server that stops
/// answering for `read_timeout` fails the request.
pub(crate) fn peer(address: SocketAddr, read_timeout: Duration) -> HttpPeer {
    let mut peer = HttpPeer::new(address, false, String::new());
    peer.options.alpn = ALPN::H1;
    peer.options.read_timeout = Some(read_timeout);
    peer
}

/// Tells the server who asked and under which request id.
pub(crate) fn upstream_request(
    upstream_request: &mut RequestHeader,
    request_id: &str,
    client: Option<IpAddr>,
) -> pingora::Result<()> {
    upstream_request.insert_header(REQUEST_ID, request_id)?;
    if let Some(ip) = client {
        upstream_request.insert_header("x-forwarded-for", ip.to_string())?;
    }
    Ok(())
}

/// Counts a chunk of a forwarded body into `sent`: a body without a length, or lying about it,
/// still stops at `limit`.
pub(crate) fn count_body(sent: &mut usize, chunk: &Bytes, limit: usize) -> pingora::Result<()> {
    *sent += chunk.len();
    if *sent > limit {
        return Err(pingora::Error::explain(
            pingora::ErrorType::HTTPStatus(413),
            "forwarded body over the limit",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str) -> ForwardRoute {
        ForwardRoute {
            prefix: prefix.into(),
            upstream: "127.0.0.1:9000".parse().unwrap(),
        }
    }

    #[test]
    fn the_longest_prefix_wins() {
        let routes = routes(&[route("/assets/"), route("/assets/img/"), route("/shop/")]);
        assert_eq!(
            &*find(&routes, "/assets/img/a.png").unwrap().prefix,
            "/assets/img/"
        );
        assert_eq!(&*find(&routes, "/assets/a.css").unwrap().prefix, "/assets/");
        assert!(find(&routes, "/v1/users").is_none());
    }

    #[test]
    fn a_streamed_body_stops_at_the_limit() {
        let mut sent = 0;
        let chunk = Bytes::from_static(&[0; 600]);
        assert!(count_body(&mut sent, &chunk, 1000).is_ok());
        assert!(count_body(&mut sent, &chunk, 1000).is_err());
    }
}
