//! The Pingora side of the edge: one `ProxyHttp` whose phases do, in order, what every request
//! needs. REST routes are answered from `request_filter` (the edge is their gRPC client): JSON
//! for unary methods, Server-Sent Events ([`sse`]) for server-streaming ones. gRPC requests
//! pass through to the owning service over h2.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Method, header};
use metrics::SharedString;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::ALPN;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use prost_reflect::DynamicMessage;
use shopmesh_kit::access::Authority;
use shopmesh_kit::context::{REQUEST_ID, request_id};
use shopmesh_kit::error::http_status;
use shopmesh_kit::{RequestContext, Shutdown};
use shopmesh_proto::validate::{invalid_argument, validate};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::config::{CorsConfig, ForwardRoute, TlsConfig};
use crate::head_guard::HeadGuard;
use crate::limits::{Key, Limiter};
use crate::routes::{Miss, Route, Router};
use crate::sse;
use crate::transcode::{request_message, response_json, status_json};
use crate::upstream::Upstreams;

/// The longest value of a declared header without a limit of its own.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Browsers keep to HTTPS for a year once they have seen it.
const HSTS: &str = "max-age=31536000; includeSubDomains";

/// What the gateway needs, built once at start.
pub struct Gateway {
    pub router: Router,
    pub upstreams: Upstreams,
    /// gRPC passthrough targets: service name → address.
    pub grpc_targets: HashMap<String, SocketAddr>,
    /// Plain HTTP routes, longest prefix first.
    pub forward: Vec<Forward>,
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

/// Per-request state, for the access log and the passthrough target.
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
}

/// The upstream of a request the edge proxies rather than answers.
#[derive(Debug, Clone)]
enum Upstream {
    /// A gRPC call, to its owning service or to the node's mesh sidecar: h2, and the service's
    /// name as `:authority`, which a sidecar routes by.
    Grpc {
        service: String,
        address: SocketAddr,
    },
    /// A forwarded plain HTTP request (`forward` routes): HTTP/1.1, as it came.
    Http(SocketAddr),
}

/// What a REST request gets.
enum Answer<'a> {
    /// An answer written at once: JSON, or an empty one (preflight).
    Reply(Reply),
    /// A server-streaming call of `route` that has produced its first message (or ended
    /// without one), to answer as Server-Sent Events.
    Events(&'a Route, Box<sse::Opened>),
}

/// A REST request that passed every check, ready for its call.
struct Call<'a> {
    route: &'a Route,
    message: DynamicMessage,
    /// The caller's token, language and address, and the headers the route declares.
    metadata: MetadataMap,
    /// The request id, trace position and the call's deadline.
    context: RequestContext,
    /// Whether the request carried a token (then a JSON success is `no-store`).
    authorized: bool,
}

/// An answer the edge writes itself.
struct Reply {
    status: u16,
    headers: Vec<(header::HeaderName, String)>,
    body: Bytes,
}

impl Reply {
    fn json(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: vec![(header::CONTENT_TYPE, "application/json".into())],
            body: body.into(),
        }
    }

    /// The same answer with another HTTP status (405, 413, 431, 408 have no gRPC code of their
    /// own).
    fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The answer that starts a stream of events; [`sse::serve`] frames its body.
    fn events() -> Self {
        Self {
            status: 200,
            headers: vec![
                (header::CONTENT_TYPE, sse::CONTENT_TYPE.into()),
                (header::CACHE_CONTROL, "no-cache".into()),
                // nginx, and proxies that honour it, would otherwise buffer the stream.
                (
                    header::HeaderName::from_static("x-accel-buffering"),
                    "no".into(),
                ),
            ],
            body: Bytes::new(),
        }
    }

    /// A failure as a `google.rpc.Status` body with the HTTP status grpc-gateway uses.
    fn status(status: &Status) -> Self {
        let mut reply = Self::json(http_status(status.code()), status_json(status));
        if let Some(delay) = status
            .get_error_details()
            .retry_info()
            .and_then(|info| info.retry_delay)
        {
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            reply
                .headers
                .push((header::RETRY_AFTER, seconds.max(1).to_string()));
        }
        reply
    }
}

impl Gateway {
    /// Serves a REST request: the checks, then a unary call answered as JSON, or a
    /// server-streaming call answered as Server-Sent Events.
    async fn rest<'a>(&'a self, session: &mut Session, state: &mut RequestState) -> Answer<'a> {
        let call = match self.prepare(session, state).await {
            Ok(call) => call,
            Err(reply) => return Answer::Reply(reply),
        };
        let Call {
            route,
            message,
            metadata,
            context,
            authorized,
        } = call;
        if route.method.is_server_streaming() {
            return match self.open_stream(route, message, metadata, context).await {
                Ok(opened) => Answer::Events(route, Box::new(opened)),
                Err(status) => Answer::Reply(Reply::status(&status)),
            };
        }
        match context
            .scope(self.upstreams.call(route, message, metadata))
            .await
        {
            Ok(response) => {
                let json = match response_json(route, &response) {
                    Ok(json) => json,
                    Err(status) => return Answer::Reply(Reply::status(&status)),
                };
                let mut reply = Reply::json(route.success_status, json);
                if authorized {
                    reply
                        .headers
                        .push((header::CACHE_CONTROL, "no-store".into()));
                }
                Answer::Reply(reply)
            }
            Err(status) => Answer::Reply(Reply::status(&upstream_failure(route, status))),
        }
    }

    /// Everything a REST request passes before its call: route, limit per address, access,
    /// limit per user, body, declared headers, transcoding, validation. `Err` is the answer
    /// when one of them refuses (or the request is for one of the edge's own endpoints).
    async fn prepare<'a>(
        &'a self,
        session: &mut Session,
        state: &mut RequestState,
    ) -> Result<Call<'a>, Reply> {
        let mut context = RequestContext::from_headers_with_id(
            &session.req_header().headers,
            state.request_id.clone(),
        );
        let request = session.req_header();
        let (method, path) = (request.method.clone(), request.uri.path().to_owned());
        let query = request.uri.query().map(str::to_owned);
        if method == Method::GET && matches!(path.as_str(), "/healthz" | "/readyz") {
            return Err(Reply::json(200, br#"{"status":"ok"}"#.to_vec()));
        }
        if method == Method::GET && path == "/openapi.json" {
            return Err(Reply {
                status: 200,
                headers: vec![(header::CONTENT_TYPE, "application/json".into())],
                body: self.openapi.clone(),
            });
        }
        if method == Method::OPTIONS {
            return Err(self.preflight(session, &path));
        }
        let (route, bindings) = match self.router.find(&method, &path) {
            Ok(found) => found,
            Err(Miss::NotFound) => {
                return Err(Reply::status(&Status::not_found(format!(
                    "no route for {path}"
                ))));
            }
            Err(Miss::MethodNotAllowed(allowed)) => {
                let mut reply = Reply::status(&Status::unimplemented(format!(
                    "{method} is not allowed on {path}"
                )))
                .with_status(405);
                let allowed: Vec<&str> = allowed.iter().map(Method::as_str).collect();
                reply.headers.push((header::ALLOW, allowed.join(", ")));
                return Err(reply);
            }
        };
        state.route = Some(SharedString::from_shared(route.template.text().clone()));
        if route.method.is_client_streaming() {
            return Err(Reply::status(&Status::unimplemented(
                "a client-streaming method is not served over REST; use gRPC",
            )));
        }
        // A stream may stay open for `stream_timeout`; its first message still has `timeout`
        // (`open_stream`).
        let limit = if route.method.is_server_streaming() {
            self.stream_timeout
        } else {
            self.timeout
        };
        let deadline = Instant::now() + limit;
        context.deadline = Some(context.deadline.map_or(deadline, |d| d.min(deadline)));
        // Limits per address first (cheap), then access: a caller without the right gets
        // 401/403 before its body is read; then limits per user.
        self.limit(route.rate_class, client_ip(session).map(Key::Ip))?;
        let authorization = session.get_header(header::AUTHORIZATION).cloned();
        let caller = self
            .authority
            .admit(&route.grpc_path, None, authorization.as_ref())
            .await
            .map_err(|error| Reply::status(&error.into()))?;
        self.limit(
            route.rate_class,
            caller.map(|caller| Key::User(caller.user_id)),
        )?;
        let body = read_body(session, self.max_body_bytes).await?;
        let declared = declared_headers(session, route).map_err(|status| Reply::status(&status))?;
        let content_type = session
            .get_header(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let message = request_message(route, &bindings, query.as_deref(), &body, &content_type)
            .map_err(|violations| Reply::status(&invalid_argument(&violations)))?;
        validate(&message).map_err(|violations| Reply::status(&invalid_argument(&violations)))?;
        let mut metadata = forwarded_metadata(session, authorization.as_ref());
        for (name, value) in declared {
            metadata.insert(name, value);
        }
        Ok(Call {
            route,
            message,
            metadata,
            context,
            authorized: authorization.is_some(),
        })
    }

    /// Opens `route`'s server-streaming call and waits for its first message, for at most
    /// `timeout` (within the stream's own deadline). A failure until then is an ordinary error
    /// answer; so is the edge starting to shut down meanwhile.
    async fn open_stream(
        &self,
        route: &Route,
        message: DynamicMessage,
        metadata: MetadataMap,
        context: RequestContext,
    ) -> Result<sse::Opened, Status> {
        let now = tokio::time::Instant::now();
        let ends_at = context
            .remaining()
            .map_or(now + self.stream_timeout, |left| now + left);
        let first_by = ends_at.min(now + self.timeout);
        let opening = async {
            let mut rest = context
                .scope(self.upstreams.server_streaming(route, message, metadata))
                .await?;
            let first = rest.message().await?;
            Ok::<_, Status>((first, rest))
        };
        tokio::select! {
            opened = tokio::time::timeout_at(first_by, opening) => match opened {
                Ok(Ok((first, rest))) => Ok(sse::Opened { first, rest, ends_at }),
                Ok(Err(status)) => Err(upstream_failure(route, status)),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "{} did not answer in time",
                    route.service
                ))),
            },
            () = self.shutdown.wait() => {
                Err(Status::unavailable("the edge is shutting down; try again"))
            }
        }
    }

    /// The headers every answer to a listed origin carries, and `Strict-Transport-Security`
    /// over TLS.
    fn decorate(&self, session: &Session, reply: &mut Reply) {
        if let Some(origin) = self.allowed_origin(session)
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
        if self.tls {
            reply
                .headers
                .push((header::STRICT_TRANSPORT_SECURITY, HSTS.into()));
        }
    }

    /// Answers a CORS preflight: allowed only for a listed origin and an existing route.
    fn preflight(&self, session: &Session, path: &str) -> Reply {
        let origin = self.allowed_origin(session);
        let requested = session
            .get_header(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok());
        let allowed = match (origin, requested) {
            (Some(origin), Some(requested)) => {
                let methods = match self.router.find(&requested, path) {
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
                    self.cors.max_age.as_secs().to_string(),
                ),
                (header::VARY, "Origin".into()),
            ],
            body: Bytes::new(),
        }
    }

    /// The request's `Origin`, if it is on the allow-list.
    fn allowed_origin(&self, session: &Session) -> Option<String> {
        let origin = session.get_header(header::ORIGIN)?.to_str().ok()?;
        self.cors
            .allowed_origins
            .iter()
            .any(|allowed| allowed == origin)
            .then(|| origin.to_owned())
    }

    /// Counts a request against `key`'s limit; `Err` is the `429`.
    fn limit(&self, class: i32, key: Option<Key>) -> Result<(), Reply> {
        let Some(key) = key else {
            return Ok(());
        };
        self.limiter.check(class, key).map_err(|wait| {
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

    /// Admits a request of a `forward` route: the per-address limit and the body size.
    fn forward(&self, session: &Session, route: &Forward) -> Result<Upstream, Reply> {
        self.limit(0, client_ip(session).map(Key::Ip))?;
        if declared_length(session).is_some_and(|length| length > self.max_body_bytes) {
            return Err(too_large(self.max_body_bytes));
        }
        Ok(Upstream::Http(route.upstream))
    }

    /// Checks a gRPC request's method and access, and picks its service; `Err` is the refusal.
    async fn grpc(&self, session: &Session, state: &mut RequestState) -> Result<(), Status> {
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
        let target = self
            .grpc_targets
            .get(service)
            .map(|address| Upstream::Grpc {
                service: service.to_owned(),
                address: *address,
            })
            .ok_or_else(|| Status::unimplemented(format!("unknown service {service}")))?;
        if let Some(ip) = client_ip(session) {
            self.limiter
                .check(0, Key::Ip(ip))
                .map_err(|_| Status::resource_exhausted("too many requests; retry later"))?;
        }
        let authorization = session.get_header(header::AUTHORIZATION).cloned();
        self.authority
            .admit(path, None, authorization.as_ref())
            .await?;
        state.route = Some(SharedString::const_str(path));
        state.target = Some(target);
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestState;

    fn new_ctx(&self) -> RequestState {
        RequestState::default()
    }

    /// Everything happens here: REST answers are the edge's own (it is the services' gRPC
    /// client), and gRPC requests are checked before they are passed on.
    async fn request_filter(
        &self,
        session: &mut Session,
        state: &mut RequestState,
    ) -> pingora::Result<bool> {
        state.started = Some(Instant::now());
        state.request_id = request_id(&session.req_header().headers);
        // A client that stalls while sending or reading holds a connection for at most this.
        session.set_read_timeout(Some(self.client_timeout));
        session.set_write_timeout(Some(self.client_timeout));
        let head = session.req_header();
        let head_bytes = head.uri.path_and_query().map_or(0, |p| p.as_str().len())
            + head
                .headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 4)
                .sum::<usize>();
        if head_bytes > self.max_header_bytes {
            let reply = Reply::status(&Status::invalid_argument(format!(
                "the request head is larger than {} bytes",
                self.max_header_bytes
            )))
            .with_status(431);
            write_reply(session, reply, &state.request_id).await?;
            return Ok(true);
        }
        let path = session.req_header().uri.path();
        if let Some(route) = self.forward.iter().find(|r| path.starts_with(&*r.prefix)) {
            return match self.forward(session, route) {
                Ok(upstream) => {
                    state.route = Some(SharedString::from_shared(route.prefix.clone()));
                    state.target = Some(upstream);
                    Ok(false)
                }
                Err(reply) => {
                    write_reply(session, reply, &state.request_id).await?;
                    Ok(true)
                }
            };
        }
        // gRPC proper only: gRPC-Web (`application/grpc-web`) is not spoken by the services.
        let is_grpc = session
            .get_header(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "application/grpc" || v.starts_with("application/grpc+"));
        if is_grpc {
            return match self.grpc(session, state).await {
                Ok(()) => Ok(false),
                Err(status) => {
                    write_grpc_status(session, &status).await?;
                    Ok(true)
                }
            };
        }
        // Boxed: the REST path's future (checks, the call, transcoding) is far larger than the
        // rest of this phase, and Pingora allocates this phase's future for every request.
        match Box::pin(self.rest(session, state)).await {
            Answer::Reply(mut reply) => {
                self.decorate(session, &mut reply);
                write_reply(session, reply, &state.request_id).await?;
            }
            Answer::Events(route, opened) => {
                let mut reply = Reply::events();
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

    /// Only gRPC requests get here: h2 to the owning service, many streams per connection.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        state: &mut RequestState,
    ) -> pingora::Result<Box<HttpPeer>> {
        let peer = match &state.target {
            Some(Upstream::Grpc { address, .. }) => {
                let mut peer = HttpPeer::new(*address, false, String::new());
                peer.options.alpn = ALPN::H2;
                peer.options.max_h2_streams = 128;
                peer
            }
            Some(Upstream::Http(address)) => {
                let mut peer = HttpPeer::new(*address, false, String::new());
                peer.options.alpn = ALPN::H1;
                peer.options.read_timeout = Some(self.timeout);
                peer
            }
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
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        state: &mut RequestState,
    ) -> pingora::Result<()> {
        match &state.target {
            Some(Upstream::Grpc { service, .. }) => {
                let path = upstream_request
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .parse()
                    .map_err(|e| {
                        pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "path", e)
                    })?;
                upstream_request.set_uri(path);
                upstream_request.insert_header(header::HOST, service.as_str())?;
                upstream_request.insert_header(REQUEST_ID, state.request_id.as_str())?;
            }
            Some(Upstream::Http(_)) => {
                upstream_request.insert_header(REQUEST_ID, state.request_id.as_str())?;
                if let Some(ip) = client_ip(session) {
                    upstream_request.insert_header("x-forwarded-for", ip.to_string())?;
                }
            }
            None => {}
        }
        Ok(())
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
            state.forwarded_bytes += chunk.len();
            if state.forwarded_bytes > self.max_body_bytes {
                return Err(pingora::Error::explain(
                    pingora::ErrorType::HTTPStatus(413),
                    "forwarded body over the limit",
                ));
            }
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
        response.insert_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")?;
        response.insert_header(REQUEST_ID, state.request_id.as_str())?;
        if self.tls {
            response.insert_header(header::STRICT_TRANSPORT_SECURITY, HSTS)?;
        }
        Ok(())
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

/// A declared header on its way to the service, as metadata.
type Forwarded = (
    tonic::metadata::MetadataKey<tonic::metadata::Ascii>,
    MetadataValue<tonic::metadata::Ascii>,
);

/// The values of the headers `route` declares, checked: a missing required one or one over its
/// length is a `400` naming it.
fn declared_headers(session: &Session, route: &Route) -> Result<Vec<Forwarded>, Status> {
    let mut found = Vec::new();
    for declared in &route.headers {
        let invalid = |description: String| {
            invalid_argument(&[shopmesh_proto::validate::Violation {
                field: declared.name.clone(),
                description,
            }])
        };
        let Some(value) = session.get_header(declared.name.as_str()) else {
            if declared.required {
                return Err(invalid("this header is required".into()));
            }
            continue;
        };
        let limit = if declared.max_len == 0 {
            MAX_HEADER_BYTES
        } else {
            declared.max_len
        };
        if value.len() > limit {
            return Err(invalid(format!("longer than {limit} bytes")));
        }
        let key = tonic::metadata::MetadataKey::from_bytes(declared.name.as_bytes())
            .map_err(|_| invalid("not a valid header name".into()))?;
        let value = MetadataValue::try_from(value.as_bytes())
            .map_err(|_| invalid("not a valid header value".into()))?;
        found.push((key, value));
    }
    Ok(found)
}

/// The request's `Content-Length`, if it has a valid one.
fn declared_length(session: &Session) -> Option<usize> {
    session
        .get_header(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// The `413` of a body over `limit` bytes.
fn too_large(limit: usize) -> Reply {
    Reply::status(&Status::invalid_argument(format!(
        "the body is larger than {limit} bytes"
    )))
    .with_status(413)
}

/// Reads the body, refusing it with `413` beyond `limit` bytes.
async fn read_body(session: &mut Session, limit: usize) -> Result<Vec<u8>, Reply> {
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

/// What the service learns about the caller: its token, language and address.
fn forwarded_metadata(session: &Session, authorization: Option<&HeaderValue>) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    if let Some(value) = authorization.and_then(|v| MetadataValue::try_from(v.as_bytes()).ok()) {
        metadata.insert("authorization", value);
    }
    if let Some(value) = session
        .get_header(header::ACCEPT_LANGUAGE)
        .and_then(|v| MetadataValue::try_from(v.as_bytes()).ok())
    {
        metadata.insert("accept-language", value);
    }
    if let Some(ip) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        && let Ok(value) = MetadataValue::try_from(ip.to_string())
    {
        metadata.insert("x-forwarded-for", value);
    }
    metadata
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// A failed call as the client should see it: the service's own status, or 503/504 when the
/// service could not be reached in time.
pub(crate) fn upstream_failure(route: &Route, status: Status) -> Status {
    match status.code() {
        Code::Unavailable | Code::Unknown if status.get_error_details().error_info().is_none() => {
            tracing::warn!(service = route.service, error = %status.message(), "upstream unavailable");
            Status::unavailable(format!("{} is unavailable, try again", route.service))
        }
        Code::Cancelled | Code::DeadlineExceeded
            if status.get_error_details().error_info().is_none() =>
        {
            Status::deadline_exceeded(format!("{} did not answer in time", route.service))
        }
        _ => status,
    }
}

async fn write_reply(session: &mut Session, reply: Reply, request_id: &str) -> pingora::Result<()> {
    let mut response = response_head(&reply, request_id)?;
    response.insert_header(header::CONTENT_LENGTH, reply.body.len().to_string())?;
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(reply.body), true).await
}

/// The head of `reply`, with the headers every REST answer carries; the body's framing is the
/// caller's.
fn response_head(reply: &Reply, request_id: &str) -> pingora::Result<ResponseHeader> {
    let mut response = ResponseHeader::build(reply.status, Some(reply.headers.len() + 4))?;
    for (name, value) in &reply.headers {
        response.insert_header(name.clone(), value)?;
    }
    response.insert_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")?;
    response.insert_header(header::REFERRER_POLICY, "no-referrer")?;
    response.insert_header(REQUEST_ID, request_id)?;
    Ok(response)
}

/// A trailers-only gRPC answer carrying `status`.
async fn write_grpc_status(session: &mut Session, status: &Status) -> pingora::Result<()> {
    let mut response = ResponseHeader::build(200, Some(4))?;
    response.insert_header(header::CONTENT_TYPE, "application/grpc")?;
    response.insert_header("grpc-status", (status.code() as i32).to_string())?;
    response.insert_header("grpc-message", status.message().replace(['\r', '\n'], " "))?;
    session
        .write_response_header(Box::new(response), true)
        .await?;
    session.write_response_body(None, true).await
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
