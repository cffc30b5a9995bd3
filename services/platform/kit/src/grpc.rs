//! Serving and calling gRPC the one shopmesh way: every server gets the context layer and the
//! standard health service and access control; every client carries the context interceptor.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::ServingStatus;

use crate::access::AccessLayer;
use crate::context::{ContextInterceptor, ContextLayer};
use crate::shutdown::Shutdown;

/// Largest message a server or client accepts.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A channel to a peer with the request context added to every call.
pub type PeerChannel = InterceptedService<Channel, ContextInterceptor>;

/// Serves `routes` plus `grpc.health.v1.Health` on `listener` until `shutdown`, then drains.
/// Every call passes the context layer, then `access` (the method's access rule).
/// Health reports SERVING for the whole server (`""`) and for `service` while running, and
/// NOT_SERVING as soon as shutdown starts so balancers stop sending new calls during the drain.
pub async fn serve(
    service: &'static str,
    routes: Routes,
    listener: TcpListener,
    access: AccessLayer,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in ["", service] {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let draining = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.wait().await;
            for name in ["", service] {
                reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        }
    };
    Server::builder()
        .layer(
            tower::ServiceBuilder::new()
                .layer(ContextLayer::new(service))
                .layer(access),
        )
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_routes(routes.add_service(health))
        .serve_with_incoming_shutdown(incoming(listener), draining)
        .await
}

/// Accepted connections with Nagle's algorithm off. tonic's `tcp_nodelay` applies only to
/// listeners it binds itself; without it, small answers wait out the peer's delayed ACK (~40 ms).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// A lazily connected channel to `service` at `uri` (`http://host:port`); the first call
/// connects. Calls name the service as their `:authority`, so the same channel works whether
/// `uri` is the service itself or its node's mesh sidecar, which routes by that name.
pub fn connect(uri: &str, service: &str) -> Result<PeerChannel, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(uri.to_owned())?;
    if let Ok(origin) = format!("http://{service}").parse::<http::Uri>() {
        endpoint = endpoint.origin(origin);
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy();
    Ok(InterceptedService::new(channel, ContextInterceptor))
}
