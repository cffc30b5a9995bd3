//! The Pingora side of the edge: one `ProxyHttp` whose phases decide, in order, what each
//! request is and hand it to the module of its concern. This file is the dispatch; the work is
//! in `rest` (REST/JSON ⇄ gRPC, answered by the edge as the services' client, with [`sse`] for
//! server-streaming methods), `passthrough` (gRPC calls proxied to their service), `forward`
//! (plain HTTP prefixes proxied as they are), `cors`, `client` (address, limits, sizes) and
//! `reply` (answers and the headers every answer carries). Those modules never use this one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use metrics::SharedString;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use shopmesh_kit::Shutdown;
use shopmesh_kit::access::Authority;
use shopmesh_kit::context::request_id;

use crate::config::{CorsConfig, TlsConfig};
use crate::head_guard::HeadGuard;
use crate::limits::Limiter;
use crate::passthrough::Target;
use crate::reply::{Reply, response_head, secure_proxied, write_grpc_status, write_reply};
use crate::rest::{Answer, Rest};
use crate::routes::Router;
use crate::upstream::Upstreams;
use crate::{client, cors, forward, passthrough, sse};

/// `Gateway::forward`'s element type, where it has always been named.
pub use crate::forward::Forward;

/// What the gateway needs, built once at start.
pub struct Gateway {
    pub router: Router,
    pub upstreams: Upstreams,
    /// gRPC passthrough targets: service name → address.
    pub grpc_targets: HashMap<String, SocketAddr>,
    /// Plain HTTP routes, longest prefix first.
    pub forward: Vec<Forward>,
    /// Proxies whose forwarding headers name the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub authority: Authority,
    pub limiter: Limiter,
    pub cors: CorsConfig,
    /// The OpenAPI document, rendered once.
    pub openapi: Bytes,
    /// Whether clients connect over TLS (then answers carry `Strict-Transport-Security`).
    pub tls: bool,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub timeout: Duration,
    /// How long a streaming route may stay open.
    pub stream_timeout: Duration,
    /// How long a stream may stay silent before a keep-alive comment ([`sse::KEEP_ALIVE`]).
    pub keep_alive: Duration,
    pub client_timeout: Duration,
    /// The process's shutdown: streams end when it starts.
    pub shutdown: Shutdown,
}

/// Per-request state, for the access log and the proxied request's upstream.
#[derive(Debug, Default)]
pub struct RequestState {
    started: Option<Instant>,
    /// The route template, forward prefix or gRPC method: a metric label, so shared, not copied.
    route: Option<SharedString>,
    /// Where a proxied request goes; `None` for answers the edge writes itself.
    target: Option<Upstream>,
    /// Body bytes of a forwarded request so far.
    forwarded_bytes: usize,
    request_id: String,
    /// How a stream ended and how many messages it sent.
    stream: Option<(sse::End, u64)>,
    /// The client's address, read once per request.
    client: Option<IpAddr>,
}

/// The upstream of a request the edge proxies rather than answers.
#[derive(Debug, Clone)]
enum Upstream {
    /// A gRPC call, to its owning service or to the node's mesh sidecar.
    Grpc(Target),
    /// A forwarded plain HTTP request (`forward` routes), to its server.
    Http(SocketAddr),
}

impl Gateway {
    /// The REST pipeline's view of the gateway, for one request.
    fn rest(&self, client: Option<IpAddr>) -> Rest<'_> {
        Rest {
            router: &self.router,
            upstreams: &self.upstreams,
            authority: &self.authority,
            limiter: &self.limiter,
            cors: &self.cors,
            openapi: &self.openapi,
            max_body_bytes: self.max_body_bytes,
            timeout: self.timeout,
            stream_timeout: self.stream_timeout,
            shutdown: &self.shutdown,
            client,
        }
    }

    /// The header policies of a REST answer, on top of those every written answer carries
    /// (`reply::response_head`): CORS for a listed origin, and `Strict-Transport-Security` over
    /// TLS.
    fn decorate(&self, session: &Session, reply: &mut Reply) {
        cors::expose(&self.cors, session, reply);
        if self.tls {
            reply.add_hsts();
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestState;

    fn new_ctx(&self) -> RequestState {
        RequestState::default()
    }

    /// Everything is decided here, in this order: the head's size (every request), forward
    /// routes by prefix, gRPC by content type, and REST for the rest. REST answers are the
    /// edge's own (it is the services' gRPC client); forwarded and gRPC requests are admitted
    /// here and proxied by the phases below.
    async fn request_filter(
        &self,
        session: &mut Session,
        state: &mut RequestState,
    ) -> pingora::Result<bool> {
        state.started = Some(Instant::now());
        state.request_id = request_id(&session.req_header().headers);
        state.client = client::address(session, &self.trusted_proxies);
        // A client that stalls while sending or reading holds a connection for at most this.
        session.set_read_timeout(Some(self.client_timeout));
        session.set_write_timeout(Some(self.client_timeout));
        if let Err(reply) = client::check_head(session, self.max_header_bytes) {
            write_reply(session, reply, &state.request_id).await?;
            return Ok(true);
        }
        let path = session.req_header().uri.path();
        if let Some(route) = forward::find(&self.forward, path) {
            return match forward::admit(session, state.client, &self.limiter, self.max_body_bytes) {
                Ok(()) => {
                    state.route = Some(SharedString::from_shared(route.prefix.clone()));
                    state.target = Some(Upstream::Http(route.upstream));
                    Ok(false)
                }
                Err(reply) => {
                    write_reply(session, reply, &state.request_id).await?;
                    Ok(true)
                }
            };
        }
        if passthrough::is_grpc(session) {
            let admitted = passthrough::admit(
                session,
                state.client,
                &self.grpc_targets,
                &self.limiter,
                &self.authority,
            )
            .await;
            return match admitted {
                Ok((method, target)) => {
                    state.route = Some(method);
                    state.target = Some(Upstream::Grpc(target));
                    Ok(false)
                }
                Err(status) => {
                    write_grpc_status(session, &status).await?;
                    Ok(true)
                }
            };
        }
        // Boxed: the REST path's future (checks, the call, transcoding) is far larger than the
        // rest of this phase, and Pingora allocates this phase's future for every request.
        let answer = Box::pin(self.rest(state.client).answer(
            session,
            &state.request_id,
            &mut state.route,
        ))
        .await;
        match answer {
            Answer::Reply(mut reply) => {
                self.decorate(session, &mut reply);
                write_reply(session, reply, &state.request_id).await?;
            }
            Answer::Events(route, opened) => {
                let mut reply = sse::answer();
                self.decorate(session, &mut reply);
                let head = response_head(&reply, &state.request_id)?;
                let (end, events) = sse::serve(
                    session,
                    head,
                    route,
                    *opened,
                    self.keep_alive,
                    &self.shutdown,
                )
                .await;
                state.stream = Some((end, events));
            }
        }
        Ok(true)
    }

    /// Only proxied requests get here: gRPC calls over h2 to their service, forwarded ones
    /// over HTTP/1.1 to their server.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        state: &mut RequestState,
    ) -> pingora::Result<Box<HttpPeer>> {
        let peer = match &state.target {
            Some(Upstream::Grpc(target)) => passthrough::peer(target),
            Some(Upstream::Http(address)) => forward::peer(*address, self.timeout),
            None => {
                return Err(pingora::Error::explain(
                    pingora::ErrorType::InternalError,
                    "no upstream chosen",
                ));
            }
        };
        let mut peer = Box::new(peer);
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        Ok(peer)
    }

    /// A gRPC call names its service as `:authority`, which a mesh sidecar routes by; a
    /// forwarded request tells its server who asked and under which request id.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        state: &mut RequestState,
    ) -> pingora::Result<()> {
        match &state.target {
            Some(Upstream::Grpc(target)) => {
                passthrough::upstream_request(upstream_request, target, &state.request_id)
            }
            Some(Upstream::Http(_)) => {
                forward::upstream_request(upstream_request, &state.request_id, state.client)
            }
            None => Ok(()),
        }
    }

    /// A forwarded body is counted as it streams: one without a length, or lying about it,
    /// still stops at the limit.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        state: &mut RequestState,
    ) -> pingora::Result<()> {
        if let (Some(Upstream::Http(_)), Some(chunk)) = (&state.target, body.as_ref()) {
            forward::count_body(&mut state.forwarded_bytes, chunk, self.max_body_bytes)?;
        }
        Ok(())
    }

    /// Headers every proxied answer carries.
    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        state: &mut RequestState,
    ) -> pingora::Result<()> {
        secure_proxied(response, &state.request_id, self.tls)
    }

    /// The access log and the per-route metrics, once per request however it ended.
    async fn logging(
        &self,
        session: &mut Session,
        error: Option<&pingora::Error>,
        state: &mut RequestState,
    ) {
        let status = session
            .response_written()
            .map_or(0, |response| response.status.as_u16());
        let elapsed = state.started.map_or(Duration::ZERO, |at| at.elapsed());
        let route = state
            .route
            .take()
            .unwrap_or(SharedString::const_str("unrouted"));
        metrics::counter!("shopmesh_edge_requests_total", "route" => route.clone(), "status" => status.to_string())
            .increment(1);
        metrics::histogram!("shopmesh_edge_request_duration_seconds", "route" => route.clone())
            .record(elapsed.as_secs_f64());
        let request = session.req_header();
        tracing::info!(
            method = %request.method,
            path = request.uri.path(),
            route = &*route,
            status,
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            request_id = state.request_id,
            stream_end = state.stream.map(|(end, _)| end.as_str()),
            stream_events = state.stream.map(|(_, events)| events),
            error = error.map(|e| e.to_string()),
            "request"
        );
    }
}

/// Builds the gateway's Pingora service on `listen`: with `tls`, HTTPS with HTTP/2 and
/// HTTP/1.1 by ALPN; without, plain HTTP/1.1 and HTTP/2 with prior knowledge (gRPC clients).
pub fn service(
    gateway: Gateway,
    listen: SocketAddr,
    tls: Option<&TlsConfig>,
    head_timeout: Duration,
) -> pingora::Result<
    pingora::services::listening::Service<HeadGuard<pingora::proxy::HttpProxy<Gateway>>>,
> {
    let conf = Arc::new(pingora::server::configuration::ServerConf::default());
    let mut proxy = pingora::proxy::http_proxy(&conf, gateway);
    if tls.is_none() {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = true;
        proxy.server_options = Some(options);
    }
    let mut service = pingora::services::listening::Service::new(
        "shopmesh edge".to_owned(),
        HeadGuard::new(proxy, head_timeout),
    );
    match tls {
        Some(tls) => {
            let mut settings = pingora::listeners::tls::TlsSettings::intermediate(
                &tls.cert.to_string_lossy(),
                &tls.key.to_string_lossy(),
            )?;
            settings.enable_h2();
            service.add_tls_with_settings(&listen.to_string(), None, settings);
        }
        None => service.add_tcp(&listen.to_string()),
    }
    Ok(service)
}
