//! What the edge reads of a client's request before any route kind's own steps: the client's
//! address, its rate limits, and the size of its head and body. Shared by REST and forward
//! routes so a limit or a size is refused with the same answer whichever route it was for.

use std::net::IpAddr;

use http::{HeaderMap, header};
use ipnet::IpNet;
use pingora::proxy::Session;
use tonic::Status;

use crate::limits::{Key, Limiter};
use crate::reply::Reply;

/// The client's address: the TCP peer's, or, when the peer is a trusted proxy, the one its
/// forwarding headers name (see [`resolve`]).
pub(crate) fn address(session: &Session, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = session.client_addr()?.as_inet()?.ip();
    Some(resolve(peer, &session.req_header().headers, trusted))
}

/// The client behind `peer`. Only a trusted peer's headers count: the chain of addresses in
/// `Forwarded` (RFC 7239 `for=`), or else `X-Forwarded-For`, is read from the nearest hop
/// outwards, and the first address that is not itself a trusted proxy is the client. A hop that
/// cannot be read (obfuscated, `unknown`, garbage) ends the walk at the last address known.
pub(crate) fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                name.eq_ignore_ascii_case("for").then_some(value.trim())
            })
        })
        .collect();
    let hops: Vec<&str> = if forwarded.is_empty() {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect()
    } else {
        forwarded
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// An address as forwarding headers write it: `192.0.2.1`, `"[2001:db8::1]:4711"`,
/// `192.0.2.1:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim_matches('"');
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|net| net.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let claims = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.8"),
        ]);
        assert_eq!(
            resolve(ip("198.51.100.7"), &claims, &nets(&["10.0.0.0/8"])),
            ip("198.51.100.7")
        );
        assert_eq!(resolve(ip("10.0.0.2"), &claims, &[]), ip("10.0.0.2"));
    }

    #[test]
    fn behind_trusted_hops_the_nearest_untrusted_address_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "192.168.0.0/16"]);
        // A client-supplied address further left does not count: the balancer appended the
        // real one, and the chain is read from the nearest hop outwards.
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 192.168.1.4")]);
        assert_eq!(resolve(ip("10.0.0.2"), &chain, &trusted), ip("203.0.113.9"));
        let split = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        assert_eq!(resolve(ip("10.0.0.2"), &split, &trusted), ip("203.0.113.9"));
    }

    #[test]
    fn forwarded_comes_before_x_forwarded_for_and_reads_its_forms() {
        let trusted = nets(&["10.0.0.0/8"]);
        let both = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.9",
            ),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(resolve(ip("10.0.0.2"), &both, &trusted), ip("2001:db8::7"));
        let port = headers(&[("forwarded", "For=192.0.2.60:8080")]);
        assert_eq!(resolve(ip("10.0.0.2"), &port, &trusted), ip("192.0.2.60"));
    }

    #[test]
    fn an_unreadable_hop_ends_the_walk_at_the_last_known_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        let hidden = headers(&[("forwarded", "for=_hidden, for=10.0.0.5")]);
        assert_eq!(resolve(ip("10.0.0.2"), &hidden, &trusted), ip("10.0.0.5"));
        let garbage = headers(&[("x-forwarded-for", "not-an-address")]);
        assert_eq!(resolve(ip("10.0.0.2"), &garbage, &trusted), ip("10.0.0.2"));
        let none = HeaderMap::new();
        assert_eq!(resolve(ip("10.0.0.2"), &none, &trusted), ip("10.0.0.2"));
    }
}
