//! The inbound side: mutual TLS from peers' sidecars, the caller's identity from its
//! certificate, the allow-list and the per-caller limit, then the local service over plain h2.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::net::TcpStream;

use super::config::RateLimit;
use super::grpc::{self, Code};
use super::pool::{self, Pool, Sender};
use super::{Body, Shared};
use crate::identity::SpiffeId;

/// The header that tells a local service which service called it, as verified by the mesh.
pub const CALLER_HEADER: &str = "x-shopmesh-caller";

/// Who is calling on one inbound connection, and which local service it asked for.
#[derive(Debug, Clone)]
pub struct Peer {
    pub caller: Option<SpiffeId>,
    pub target: String,
}

pub struct Inbound {
    pub shared: Arc<Shared>,
    pub pool: Pool<SocketAddr>,
    pub limits: CallerLimits,
}

impl Inbound {
    pub async fn handle(
        self: Arc<Self>,
        peer: Arc<Peer>,
        mut request: Request<Incoming>,
    ) -> Response<Body> {
        let started = Instant::now();
        let caller_name = peer
            .caller
            .as_ref()
            .map_or("unknown", |id| id.service.as_str())
            .to_owned();
        let answer = match self.admit(&peer) {
            Err((code, message, reason)) => {
                metrics::counter!("shopmesh_mesh_denied_total",
                    "caller" => caller_name.clone(), "service" => peer.target.clone(), "reason" => reason)
                .increment(1);
                grpc::status(code, &message)
            }
            Ok(address) => {
                let headers = request.headers_mut();
                headers.remove(CALLER_HEADER);
                if let Ok(value) = HeaderValue::from_str(&caller_name) {
                    headers.insert(CALLER_HEADER, value);
                }
                self.forward(address, request).await
            }
        };
        metrics::histogram!("shopmesh_mesh_request_duration_seconds",
            "direction" => "inbound", "service" => peer.target.clone())
        .record(started.elapsed().as_secs_f64());
        metrics::counter!("shopmesh_mesh_requests_total",
            "direction" => "inbound", "caller" => caller_name, "service" => peer.target.clone(),
            "outcome" => if answer.headers().get("grpc-status").is_some_and(|s| s != "0") { "error" } else { "ok" })
        .increment(1);
        answer
    }

    /// The local address the call may go to, or why it may not.
    fn admit(&self, peer: &Peer) -> Result<SocketAddr, (Code, String, &'static str)> {
        let config = &self.shared.config;
        let Some(caller) = &peer.caller else {
            return Err((
                Code::PermissionDenied,
                "no mesh identity".into(),
                "identity",
            ));
        };
        if caller.env != config.env {
            return Err((
                Code::PermissionDenied,
                format!("{caller} belongs to another environment"),
                "identity",
            ));
        }
        let Some(address) = config
            .services
            .get(&peer.target)
            .and_then(|service| service.address)
        else {
            return Err((
                Code::Unavailable,
                format!("{} does not run on node {}", peer.target, config.node),
                "unknown_service",
            ));
        };
        let allowed = config
            .allow
            .get(&peer.target)
            .is_some_and(|callers| callers.contains(&caller.service));
        if !allowed {
            return Err((
                Code::PermissionDenied,
                format!("{} may not call {}", caller.service, peer.target),
                "not_allowed",
            ));
        }
        if !self.limits.admit(&caller.service) {
            return Err((
                Code::ResourceExhausted,
                format!(
                    "{} exceeds its call rate into node {}",
                    caller.service, config.node
                ),
                "rate_limited",
            ));
        }
        Ok(address)
    }

    async fn forward(&self, address: SocketAddr, request: Request<Incoming>) -> Response<Body> {
        let mut sender = match self.connection(address).await {
            Ok(sender) => sender,
            Err(error) => {
                return grpc::status(Code::Unavailable, &format!("local service down: {error:#}"));
            }
        };
        let request = request.map(|body| body.boxed());
        match sender.send_request(request).await {
            Ok(response) => response.map(|body| body.boxed()),
            Err(error) => {
                self.pool.discard(&address);
                grpc::status(Code::Unavailable, &format!("local service: {error}"))
            }
        }
    }

    async fn connection(&self, address: SocketAddr) -> anyhow::Result<Sender> {
        self.pool
            .get(&address, || async {
                let tcp = TcpStream::connect(address).await?;
                tcp.set_nodelay(true)?;
                pool::handshake(tcp).await
            })
            .await
    }
}

/// A token bucket per caller service. Callers are services with a valid certificate, a short
/// list, so the map stays small.
pub struct CallerLimits {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl CallerLimits {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn admit(&self, caller: &str) -> bool {
        let now = Instant::now();
        let burst = f64::from(self.limit.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = buckets.entry(caller.to_owned()).or_insert((burst, now));
        *tokens =
            (*tokens + (now - *at).as_secs_f64() * f64::from(self.limit.per_second)).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_has_its_own_bucket() {
        let limits = CallerLimits::new(RateLimit {
            per_second: 1,
            burst: 3,
        });
        assert_eq!((0..5).filter(|_| limits.admit("orders")).count(), 3);
        assert!(limits.admit("edge"));
    }
}
