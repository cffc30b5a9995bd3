//! The edge gateway: the platform's front door. Every REST route comes from the protos'
//! `google.api.http` rules ([`routes`], [`template`]); requests are transcoded to gRPC and back
//! ([`transcode`]), checked against each method's access rule before their body is read,
//! validated with the same rules the services apply, and sent to the owning service
//! ([`upstream`]); server-streaming methods answer as Server-Sent Events ([`sse`]). gRPC
//! clients pass through to the services, and `forward` routes to plain HTTP servers.
//! [`gateway`] is the Pingora side: its phases dispatch each request to the module of its
//! concern (REST pipeline, gRPC passthrough, forward routes, CORS, replies).

#![forbid(unsafe_code)]

mod client;
pub mod config;
mod cors;
mod forward;
// The fuzz target's body: for `proxy/fuzz` and the replay test only, not the edge binary.
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod gateway;
pub mod head_guard;
pub mod limits;
pub mod openapi;
mod passthrough;
mod reply;
mod rest;
pub mod routes;
pub mod sse;
pub mod template;
pub mod transcode;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Context as _;
use async_trait::async_trait;
use pingora::services::Service as _;
use shopmesh_host::{Calls, Manifest, Protocol, Serve, Service, ServiceContext};
use shopmesh_kit::grpc;
use shopmesh_proto::validate::descriptors;

pub use config::EdgeConfig;

use crate::gateway::Gateway;
use crate::limits::Limiter;
use crate::routes::Router;
use crate::upstream::Upstreams;

/// How long in-flight requests may finish after the edge stops accepting.
const GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The edge, as the host runs it.
#[derive(Debug, Clone, Copy)]
pub struct Edge;

#[async_trait]
impl Service for Edge {
    const MANIFEST: Manifest = Manifest {
        protocol: Protocol::Own,
        calls: Calls::Every,
        ..Manifest::new("edge", 8080)
    };
    type Config = EdgeConfig;

    async fn start(&self, context: ServiceContext, config: EdgeConfig) -> anyhow::Result<Serve> {
        let router = Router::from_descriptors(descriptors())?;
        let mut channels = HashMap::new();
        let mut grpc_targets = HashMap::new();
        for service in services() {
            let Some(address) = context.peers.address(&service) else {
                continue;
            };
            channels.insert(service.clone(), grpc::connect(address, &service)?);
            grpc_targets.insert(service, resolve(address).await?);
        }
        let openapi = serde_json::to_vec(&openapi::document(&router))?.into();
        let listen = free_port(config.listen)?;
        let gateway = Gateway {
            router,
            upstreams: Upstreams::new(channels),
            grpc_targets,
            forward: forward::routes(&config.forward),
            trusted_proxies: config.trusted_proxies.clone(),
            authority: context.authority.clone(),
            limiter: Limiter::new(config.limits.clone()),
            cors: config.cors.clone(),
            openapi,
            tls: config.tls.is_some(),
            max_body_bytes: config.max_body_bytes,
            max_header_bytes: config.max_header_bytes,
            timeout: config.timeout,
            stream_timeout: config.stream_timeout,
            keep_alive: sse::KEEP_ALIVE,
            client_timeout: config.client_timeout,
            shutdown: context.runtime.shutdown.clone(),
        };
        if let Some(tls) = &config.tls {
            tls.check()?;
        }
        let mut service =
            gateway::service(gateway, listen, config.tls.as_ref(), config.head_timeout)?;
        let shutdown = context.runtime.shutdown.clone();
        context.runtime.spawn(async move {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let serving = tokio::spawn(async move {
                service.start_service(None, stopped, 1).await;
            });
            shutdown.wait().await;
            let _ = stop.send(true);
            let _ = serving.await;
            // Pingora stops accepting at once; requests in flight get a moment to finish.
            tokio::time::sleep(GRACE).await;
        });
        // Pingora binds in the background: ready means accepting.
        listening(listen).await?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(Serve::Own {
            url: format!("{scheme}://{listen}"),
        })
    }
}

/// Every shopmesh service that has methods in the protos.
fn services() -> Vec<String> {
    let mut names: Vec<String> = descriptors()
        .services()
        .filter_map(|service| routes::owner(service.package_name()).map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The socket address of a peer URL (`http://host:port`).
async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/');
    tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("cannot resolve {url}"))?
        .next()
        .with_context(|| format!("{url} resolves to no address"))
}

/// Waits until `address` accepts connections.
async fn listening(address: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("edge: {address} does not accept connections");
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// `listen`, with port 0 replaced by a port that is free now. Pingora binds by address and
/// panics when it cannot, so binding once here also turns a taken port into a clear error.
fn free_port(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    let probe = std::net::TcpListener::bind(listen)
        .with_context(|| format!("edge: cannot listen on {listen}"))?;
    Ok(probe.local_addr()?)
}
