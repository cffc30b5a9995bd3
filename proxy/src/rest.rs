//! The REST pipeline: the edge is the services' gRPC client for REST/JSON requests. Its steps
//! run in the order `docs/edge.md` gives ("The request pipeline"), cheapest refusal first: the
//! edge's own endpoints and CORS preflights, route, limit per address, access, limit per user,
//! body, declared headers, transcoding, validation; then the call, answered as JSON for a unary
//! method or as Server-Sent Events ([`crate::sse`]) for a server-streaming one. The gateway
//! writes the answer, with its header policies.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, header};
use metrics::SharedString;
use pingora::proxy::Session;
use prost_reflect::DynamicMessage;
use shopmesh_kit::access::Authority;
use shopmesh_kit::{RequestContext, Shutdown};
use shopmesh_proto::validate::{Violation, invalid_argument, validate};
use tonic::Status;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};

use crate::client;
use crate::config::CorsConfig;
use crate::cors;
use crate::limits::{Key, Limiter};
use crate::reply::Reply;
use crate::routes::{Miss, Route, Router};
use crate::sse;
use crate::transcode::{request_message, response_json};
use crate::upstream::{self, Upstreams};

/// The longest value of a declared header without a limit of its own.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// What the REST pipeline uses of the gateway, borrowed for one request.
pub(crate) struct Rest<'a> {
    pub(crate) router: &'a Router,
    pub(crate) upstreams: &'a Upstreams,
    pub(crate) authority: &'a Authority,
    pub(crate) limiter: &'a Limiter,
    pub(crate) cors: &'a CorsConfig,
    /// The OpenAPI document, rendered once.
    pub(crate) openapi: &'a Bytes,
    pub(crate) max_body_bytes: usize,
    /// How long a unary call, or a stream's first message, may take.
    pub(crate) timeout: Duration,
    /// How long a streaming route may stay open.
    pub(crate) stream_timeout: Duration,
    /// Streams still opening give up when the edge starts shutting down.
    pub(crate) shutdown: &'a Shutdown,
    /// The client's address (behind trusted proxies, the one they name).
    pub(crate) client: Option<IpAddr>,
}

/// What a REST request gets.
pub(crate) enum Answer<'a> {
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

impl<'a> Rest<'a> {
    /// Serves a REST request: the checks, then a unary call answered as JSON, or a
    /// server-streaming call answered as Server-Sent Events. Once the request is routed,
    /// `label` is its route template, for the access log and metrics.
    pub(crate) async fn answer(
        &self,
        session: &mut Session,
        request_id: &str,
        label: &mut Option<SharedString>,
    ) -> Answer<'a> {
        let call = match self.prepare(session, request_id, label).await {
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
            Err(status) => Answer::Reply(Reply::status(&upstream::failure(route, status))),
        }
    }

    /// Everything a REST request passes before its call: route, limit per address, access,
    /// limit per user, body, declared headers, transcoding, validation. `Err` is the answer
    /// when one of them refuses (or the request is for one of the edge's own endpoints).
    async fn prepare(
        &self,
        session: &mut Session,
        request_id: &str,
        label: &mut Option<SharedString>,
    ) -> Result<Call<'a>, Reply> {
        let router: &'a Router = self.router;
        let mut context = RequestContext::from_headers_with_id(
            &session.req_header().headers,
            request_id.to_owned(),
        );
        let request = session.req_header();
        let (method, path) = (request.method.clone(), request.uri.path().to_owned());
        let query = request.uri.query().map(str::to_owned);
        if method == Method::GET && matches!(path.as_str(), "/healthz" | "/readyz") {
            return Err(Reply::json(200, &br#"{"status":"ok"}"#[..]));
        }
        if method == Method::GET && path == "/openapi.json" {
            return Err(Reply::json(200, self.openapi.clone()));
        }
        if method == Method::OPTIONS {
            return Err(cors::preflight(self.cors, router, session, &path));
        }
        let (route, bindings) = match router.find(&method, &path) {
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
        *label = Some(SharedString::from_shared(route.template.text().clone()));
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
        client::limit(self.limiter, route.rate_class, self.client.map(Key::Ip))?;
        let authorization = session.get_header(header::AUTHORIZATION).cloned();
        let caller = self
            .authority
            .admit(&route.grpc_path, None, authorization.as_ref())
            .await
            .map_err(|error| Reply::status(&error.into()))?;
        client::limit(
            self.limiter,
            route.rate_class,
            caller.map(|caller| Key::User(caller.user_id)),
        )?;
        let body = client::read_body(session, self.max_body_bytes).await?;
        let declared = declared_headers(session, route).map_err(|status| Reply::status(&status))?;
        let content_type = session
            .get_header(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let message = request_message(route, &bindings, query.as_deref(), &body, &content_type)
            .map_err(|violations| Reply::status(&invalid_argument(&violations)))?;
        validate(&message).map_err(|violations| Reply::status(&invalid_argument(&violations)))?;
        let mut metadata = forwarded_metadata(session, self.client, authorization.as_ref());
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
                Ok(Err(status)) => Err(upstream::failure(route, status)),
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
}

/// A declared header on its way to the service, as metadata.
type Forwarded = (MetadataKey<Ascii>, MetadataValue<Ascii>);

/// The values of the headers `route` declares, checked: a missing required one or one over its
/// length is a `400` naming it.
fn declared_headers(session: &Session, route: &Route) -> Result<Vec<Forwarded>, Status> {
    let mut found = Vec::new();
    for declared in &route.headers {
        let invalid = |description: String| {
            invalid_argument(&[Violation {
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
        let key = MetadataKey::from_bytes(declared.name.as_bytes())
            .map_err(|_| invalid("not a valid header name".into()))?;
        let value = MetadataValue::try_from(value.as_bytes())
            .map_err(|_| invalid("not a valid header value".into()))?;
        found.push((key, value));
    }
    Ok(found)
}

/// What the service learns about the caller: its token, language and address.
fn forwarded_metadata(
    session: &Session,
    client: Option<IpAddr>,
    authorization: Option<&HeaderValue>,
) -> MetadataMap {
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
    if let Some(ip) = client
        && let Ok(value) = MetadataValue::try_from(ip.to_string())
    {
        metadata.insert("x-forwarded-for", value);
    }
    metadata
}
