//! The context of one request as it crosses services: its request id, its W3C trace position and
//! its deadline. The server layer reads them from the incoming headers into a task-local; the
//! client interceptor writes them into every outgoing call made while handling that request, so
//! ids and deadlines propagate without any handler passing them along.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::HeaderMap;
use tonic::metadata::MetadataValue;
use tracing::Instrument;

/// Header carrying the request id end to end.
pub const REQUEST_ID: &str = "x-request-id";
/// W3C Trace Context header.
pub const TRACEPARENT: &str = "traceparent";
/// gRPC deadline header.
const GRPC_TIMEOUT: &str = "grpc-timeout";
const MAX_REQUEST_ID_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// Identity and limits of the request being handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub request_id: String,
    /// 32 lowercase hex digits, shared by every hop of one trace.
    pub trace_id: String,
    /// 16 lowercase hex digits naming this hop; the parent of every call made from it.
    pub span_id: String,
    pub trace_flags: u8,
    pub deadline: Option<Instant>,
}

impl RequestContext {
    /// A context for work that starts here (no incoming request): fresh ids, no deadline.
    pub fn root() -> Self {
        Self::starting(new_request_id())
    }

    fn starting(request_id: String) -> Self {
        Self {
            request_id,
            trace_id: random_hex(16),
            span_id: random_hex(8),
            trace_flags: 1,
            deadline: None,
        }
    }

    /// The context of an incoming request: its id and trace kept when well-formed, replaced when
    /// missing or malformed (a client never gets to inject arbitrary text into our logs).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::from_headers_with_id(headers, request_id(headers))
    }

    /// [`Self::from_headers`] for a hop that has already taken the request's id with
    /// [`request_id`].
    pub fn from_headers_with_id(headers: &HeaderMap, request_id: String) -> Self {
        let mut context = Self::starting(request_id);
        if let Some((trace_id, flags)) = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
        {
            context.trace_id = trace_id;
            context.trace_flags = flags;
        }
        context.deadline = headers
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|timeout| Instant::now() + timeout);
        context
    }

    /// The context of the request being handled by the current task, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `future` with `self` as the current context.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }

    /// The `traceparent` to send on calls made from this hop.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id, self.span_id, self.trace_flags
        )
    }

    /// Time left before the deadline; `Some(ZERO)` once it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }
}

/// The id a request arrives with when it is well-formed, else a fresh one: what a hop that only
/// relays the request (the edge's proxied routes) passes on and answers with.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| valid_request_id(id))
        .map_or_else(new_request_id, str::to_owned)
}

fn new_request_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// `00-<trace-id>-<parent-id>-<flags>`; returns the trace id and flags. All-zero ids are invalid.
fn parse_traceparent(value: &str) -> Option<(String, u8)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    valid.then(|| {
        (
            trace_id.to_owned(),
            u8::from_str_radix(flags, 16).unwrap_or(0),
        )
    })
}

/// gRPC's `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn random_hex(bytes: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let value: String = (0..bytes)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect();
        if value.bytes().any(|b| b != b'0') {
            return value;
        }
    }
}

/// Adds the current request's id, trace position and remaining deadline to an outgoing call.
/// A call made after the deadline fails here instead of wasting the peer's time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContextInterceptor;

impl tonic::service::Interceptor for ContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let context = RequestContext::current().unwrap_or_else(RequestContext::root);
        if let Some(remaining) = context.remaining() {
            if remaining.is_zero() {
                return Err(tonic::Status::deadline_exceeded(
                    "deadline passed before the call was made",
                ));
            }
            request.set_timeout(remaining);
        }
        let metadata = request.metadata_mut();
        if let Ok(value) = MetadataValue::try_from(context.request_id.as_str()) {
            metadata.insert(REQUEST_ID, value);
        }
        if let Ok(value) = MetadataValue::try_from(context.traceparent()) {
            metadata.insert(TRACEPARENT, value);
        }
        Ok(request)
    }
}

/// Tower layer for gRPC servers: sets up the request context, a tracing span and RED metrics
/// around every call. It sits outermost so even rejected calls are counted and logged with an id.
#[derive(Debug, Clone)]
pub struct ContextLayer {
    service: &'static str,
}

impl ContextLayer {
    /// `service` labels the metrics and spans (`users`, `catalog`).
    pub fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl<S> tower::Layer<S> for ContextLayer {
    type Service = ContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ContextService {
            inner,
            service: self.service,
        }
    }
}

/// See [`ContextLayer`].
#[derive(Debug, Clone)]
pub struct ContextService<S> {
    inner: S,
    service: &'static str,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for ContextService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The ready clone handles this call; a fresh clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let context = RequestContext::from_headers(request.headers());
        let method = request.uri().path().to_owned();
        let service = self.service;
        let span = tracing::info_span!(
            "rpc",
            service,
            method = %method,
            request_id = %context.request_id,
            trace_id = %context.trace_id,
        );
        let started = Instant::now();
        let call = async move {
            let result = inner.call(request).await;
            if let Ok(response) = &result {
                record(service, &method, response, started.elapsed());
            }
            result
        };
        Box::pin(context.scope(call.instrument(span)))
    }
}

/// RED metrics for one call. The status of a failed call travels in the headers of a
/// trailers-only response; a call that fails mid-stream is counted by its opening status.
fn record<R>(service: &'static str, method: &str, response: &http::Response<R>, elapsed: Duration) {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from);
    // Unknown paths come from clients: never let them mint new label values.
    let method = if code == tonic::Code::Unimplemented {
        "unknown".to_owned()
    } else {
        method.to_owned()
    };
    let code = format!("{code:?}");
    metrics::counter!("shopmesh_rpc_requests_total", "service" => service, "method" => method.clone(), "code" => code).increment(1);
    metrics::histogram!("shopmesh_rpc_duration_seconds", "service" => service, "method" => method)
        .record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_ids_are_kept_when_well_formed() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, "req-42".parse().unwrap());
        headers.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        headers.insert(GRPC_TIMEOUT, "250m".parse().unwrap());
        let context = RequestContext::from_headers(&headers);
        assert_eq!(context.request_id, "req-42");
        assert_eq!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(
            context.span_id, "00f067aa0ba902b7",
            "each hop gets its own span id"
        );
        let remaining = context.remaining().unwrap();
        assert!(remaining <= Duration::from_millis(250) && remaining > Duration::from_millis(200));
        assert!(
            context
                .traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
    }

    #[test]
    fn malformed_ids_are_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, "has spaces and \"quotes\"".parse().unwrap());
        headers.insert(
            TRACEPARENT,
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        headers.insert(GRPC_TIMEOUT, "123456789S".parse().unwrap());
        let context = RequestContext::from_headers(&headers);
        assert_ne!(context.request_id, "has spaces and \"quotes\"");
        assert!(valid_request_id(&context.request_id));
        assert_ne!(context.trace_id, "00000000000000000000000000000000");
        assert_eq!(context.deadline, None);
        assert_eq!(context.trace_id.len(), 32);
        assert_eq!(context.span_id.len(), 16);
    }

    #[test]
    fn grpc_timeouts_parse_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("5m"), Some(Duration::from_millis(5)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "10", "10x", "-1S", "999999999S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn interceptor_propagates_the_current_context() {
        use tonic::service::Interceptor;
        let mut context = RequestContext::root();
        context.deadline = Some(Instant::now() + Duration::from_secs(2));
        let expected = context.clone();
        let request = context
            .scope(async { ContextInterceptor.call(tonic::Request::new(())).unwrap() })
            .await;
        let metadata = request.metadata();
        assert_eq!(
            metadata.get(REQUEST_ID).unwrap(),
            expected.request_id.as_str()
        );
        assert_eq!(
            metadata.get(TRACEPARENT).unwrap(),
            expected.traceparent().as_str()
        );
        assert!(metadata.get(GRPC_TIMEOUT).is_some());

        let mut late = RequestContext::root();
        late.deadline = Some(Instant::now());
        let refused = late
            .scope(async { ContextInterceptor.call(tonic::Request::new(())) })
            .await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::DeadlineExceeded);
    }
}
