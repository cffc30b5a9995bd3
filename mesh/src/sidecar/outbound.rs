//! The outbound side: calls from a local service, named by `:authority`, to an endpoint of that
//! service chosen by the balancer, over mutual TLS to the endpoint's node sidecar.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::grpc::{self, Code};
use super::pool::{self, Pool, Sender};
use super::{Body, Shared};
use crate::balance::{EndpointStats, RetryBudget};
use crate::endpoint::is_valid_name;

/// Largest request body kept for a retry; larger calls of retryable methods are refused, since
/// they could not be retried and no read method of ours takes that much.
const MAX_BUFFERED: usize = 4 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One local service's outbound listener: calls made there carry its identity.
pub struct Outbound {
    pub caller: String,
    pub connector: TlsConnector,
    pub shared: Arc<Shared>,
    pub pool: Pool<(String, SocketAddr)>,
    pub budget: RetryBudget,
}

/// The request body of a call: kept whole (retryable methods) or streamed once.
enum Payload {
    Kept(Bytes),
    Streamed(Option<Body>),
}

impl Payload {
    fn take(&mut self) -> Option<Body> {
        match self {
            Self::Kept(bytes) => Some(
                Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed(),
            ),
            Self::Streamed(body) => body.take(),
        }
    }

    fn is_spent(&self) -> bool {
        matches!(self, Self::Streamed(None))
    }
}

impl Outbound {
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let Some(service) = target(&request) else {
            return grpc::status(
                Code::InvalidArgument,
                "set :authority to the name of the service to call",
            );
        };
        let retryable = self.shared.idempotent.contains(request.uri().path());
        let deadline = started
            + grpc::timeout(request.headers()).unwrap_or(self.shared.config.default_timeout);
        let (mut parts, body) = request.into_parts();
        let mut payload = if retryable {
            match Limited::new(body, MAX_BUFFERED).collect().await {
                Ok(collected) => Payload::Kept(collected.to_bytes()),
                Err(error) => {
                    return grpc::status(
                        Code::ResourceExhausted,
                        &format!("request body not read: {error}"),
                    );
                }
            }
        } else {
            Payload::Streamed(Some(body.boxed()))
        };
        parts.uri = match rebuild_uri(&service, &parts.uri) {
            Some(uri) => uri,
            None => return grpc::status(Code::InvalidArgument, "unusable request path"),
        };
        self.budget.deposit();
        let path = parts.uri.path().to_owned();
        let answer = self
            .attempts(&service, &mut parts, &mut payload, retryable, deadline)
            .await;
        let outcome = answer
            .headers()
            .get("grpc-status")
            .map_or("ok", |status| if status == "0" { "ok" } else { "error" });
        metrics::histogram!("shopmesh_mesh_request_duration_seconds",
            "direction" => "outbound", "service" => service.clone())
        .record(started.elapsed().as_secs_f64());
        metrics::counter!("shopmesh_mesh_requests_total",
            "direction" => "outbound", "caller" => self.caller.clone(), "service" => service, "outcome" => outcome)
        .increment(1);
        tracing::trace!(path, "outbound call");
        answer
    }

    async fn attempts(
        &self,
        service: &str,
        parts: &mut http::request::Parts,
        payload: &mut Payload,
        retryable: bool,
        deadline: Instant,
    ) -> Response<Body> {
        let instances = self.shared.discovery.table().instances(service);
        if instances.is_empty() {
            return grpc::status(
                Code::Unavailable,
                &format!("no endpoint of {service} is registered"),
            );
        }
        let mut tried = Vec::new();
        let mut last_failure = format!("no endpoint of {service} could be reached");
        let attempts = self.shared.config.retries.attempts;
        for attempt in 0..attempts {
            if attempt > 0 {
                if !self.budget.try_withdraw() {
                    metrics::counter!("shopmesh_mesh_retries_exhausted_total", "service" => service.to_owned()).increment(1);
                    break;
                }
                metrics::counter!("shopmesh_mesh_retries_total", "service" => service.to_owned())
                    .increment(1);
            }
            let Some(endpoint) = self.shared.balancer.pick(&instances, &tried) else {
                break;
            };
            let address = endpoint.address();
            tried.push(address);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return grpc::status(Code::DeadlineExceeded, "deadline exceeded in the mesh");
            }
            let sender = match tokio::time::timeout(left, self.connection(service, address)).await {
                Ok(Ok(sender)) => sender,
                Ok(Err(error)) => {
                    // Nothing was sent: any call may go to another endpoint.
                    self.failed(&endpoint, service);
                    last_failure = format!("{service} at {address}: {error:#}");
                    continue;
                }
                Err(_) => {
                    return grpc::status(Code::DeadlineExceeded, "deadline exceeded connecting");
                }
            };
            let Some(body) = payload.take() else { break };
            let mut request = Request::from_parts(parts.clone(), body);
            request
                .headers_mut()
                .insert("grpc-timeout", grpc::timeout_header(left));
            let in_flight = endpoint.start();
            let sent = Instant::now();
            let answer = tokio::time::timeout(left, sender.clone().try_send_request(request)).await;
            drop(in_flight);
            match answer {
                Err(_) => {
                    return grpc::status(Code::DeadlineExceeded, "deadline exceeded in the mesh");
                }
                Ok(Ok(response)) => {
                    if grpc::is_unavailable(&response) {
                        self.failed(&endpoint, service);
                        if retryable && attempt + 1 < attempts {
                            last_failure = format!("{service} at {address} is unavailable");
                            continue;
                        }
                    } else {
                        endpoint.succeeded(sent.elapsed());
                    }
                    metrics::histogram!("shopmesh_mesh_peer_latency_seconds",
                        "service" => service.to_owned(), "peer" => address.to_string())
                    .record(sent.elapsed().as_secs_f64());
                    return response.map(|body| body.boxed());
                }
                Ok(Err(mut error)) => {
                    self.failed(&endpoint, service);
                    self.pool.discard(&(service.to_owned(), address));
                    last_failure = format!("{service} at {address}: {}", error.error());
                    // A request the connection never took can go elsewhere whatever its method.
                    if let (Some(unsent), Payload::Streamed(slot)) =
                        (error.take_message(), &mut *payload)
                    {
                        *slot = Some(unsent.into_body());
                    }
                    if !retryable && payload.is_spent() {
                        break;
                    }
                }
            }
        }
        grpc::status(Code::Unavailable, &last_failure)
    }

    fn failed(&self, endpoint: &EndpointStats, service: &str) {
        if let Some(length) = endpoint.failed(&self.shared.ejection) {
            tracing::warn!(service, endpoint = %endpoint.address(), ejected_for = ?length, "endpoint ejected");
            metrics::counter!("shopmesh_mesh_ejections_total", "service" => service.to_owned())
                .increment(1);
        }
    }

    async fn connection(&self, service: &str, address: SocketAddr) -> anyhow::Result<Sender> {
        let key = (service.to_owned(), address);
        self.pool
            .get(&key, || async {
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
                    .await
                    .map_err(|_| anyhow::anyhow!("connect timed out"))??;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(service.to_owned())?;
                let tls = self.connector.connect(name, tcp).await;
                metrics::counter!("shopmesh_mesh_tls_handshakes_total",
                    "direction" => "outbound", "result" => if tls.is_ok() { "ok" } else { "failed" })
                .increment(1);
                pool::handshake(tls?).await
            })
            .await
    }
}

/// The service a call is for: the host of its `:authority`.
fn target(request: &Request<Incoming>) -> Option<String> {
    let authority = request
        .uri()
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            let host = request.headers().get(http::header::HOST)?.to_str().ok()?;
            Some(host.split(':').next().unwrap_or(host).to_owned())
        })?;
    is_valid_name(&authority).then_some(authority)
}

fn rebuild_uri(service: &str, uri: &Uri) -> Option<Uri> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("http://{service}{path}").parse().ok()
}

/// Every method whose proto declares it free of side effects or idempotent, as gRPC paths.
pub fn idempotent_methods() -> HashSet<String> {
    let mut paths = HashSet::new();
    for service in shopmesh_proto::validate::descriptors().services() {
        for method in service.methods() {
            let level = method
                .options()
                .get_field_by_name("idempotency_level")
                .and_then(|value| value.as_enum_number());
            // 1 = NO_SIDE_EFFECTS, 2 = IDEMPOTENT.
            if matches!(level, Some(1 | 2)) {
                paths.insert(format!("/{}/{}", service.full_name(), method.name()));
            }
        }
    }
    paths
}
