//! Server-streaming routes over REST as Server-Sent Events, through a real edge (Pingora, the
//! gateway, tonic) over HTTP/1.1. The upstream is `FixtureOrders`, a small tonic server of
//! `OrderService` whose `WatchOrder` plays a script chosen by the order id; its other methods are
//! unimplemented. It is a fixture of the upstream, not the orders service, which has its own
//! end-to-end test through `shopmesh up`. The same stream is also called as gRPC through the
//! edge's passthrough.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::services::Service as _;
use shopmesh_edge::config::CorsConfig;
use shopmesh_edge::gateway::{self, Gateway};
use shopmesh_edge::limits::{Limiter, LimitsConfig};
use shopmesh_edge::routes::Router;
use shopmesh_edge::upstream::Upstreams;
use shopmesh_kit::Shutdown;
use shopmesh_kit::access::{Authority, RoleSource};
use shopmesh_kit::token::{Claims, Policy, SigningKey, Verifier};
use shopmesh_proto::shopmesh::orders::v1::order_service_server::{
    OrderService, OrderServiceServer,
};
use shopmesh_proto::shopmesh::orders::v1::*;
use shopmesh_proto::validate::descriptors;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tonic::codegen::tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// Three messages, a pause before the last, then the end.
const THREE: &str = "00000000-0000-4000-8000-000000000003";
/// `NOT_FOUND` before any message.
const MISSING: &str = "00000000-0000-4000-8000-000000000404";
/// One message, then `FAILED_PRECONDITION`.
const BREAKS: &str = "00000000-0000-4000-8000-000000000500";
/// One message, then silence until the call is dropped, which it reports.
const HOLDS: &str = "00000000-0000-4000-8000-000000000999";

const ORIGIN: &str = "https://shop.example.com";

/// The upstream fixture: scripted `WatchOrder` streams.
#[derive(Clone, Default)]
struct FixtureOrders(Arc<Observed>);

/// What the fixture saw: the metadata of every call, and a notice when a held stream is dropped.
#[derive(Default)]
struct Observed {
    seen: Mutex<Vec<MetadataMap>>,
    dropped: Notify,
}

struct Events(mpsc::Receiver<Result<WatchOrderResponse, Status>>);

impl Stream for Events {
    type Item = Result<WatchOrderResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn event(id: &str, status: OrderStatus) -> Result<WatchOrderResponse, Status> {
    Ok(WatchOrderResponse {
        order: Some(Order {
            id: id.to_owned(),
            status: status as i32,
            ..Order::default()
        }),
        transition: None,
    })
}

#[async_trait]
impl OrderService for FixtureOrders {
    type WatchOrderStream = Events;

    async fn watch_order(
        &self,
        request: Request<WatchOrderRequest>,
    ) -> Result<Response<Events>, Status> {
        self.0.seen.lock().unwrap().push(request.metadata().clone());
        let id = request.into_inner().id;
        if id == MISSING {
            return Err(Status::not_found("no such order"));
        }
        let (tx, rx) = mpsc::channel(4);
        let observed = self.0.clone();
        tokio::spawn(async move {
            let _ = tx.send(event(&id, OrderStatus::Created)).await;
            match id.as_str() {
                THREE => {
                    let _ = tx.send(event(&id, OrderStatus::StockReserved)).await;
                    tokio::time::sleep(Duration::from_millis(350)).await;
                    let _ = tx.send(event(&id, OrderStatus::Rejected)).await;
                }
                BREAKS => {
                    let _ = tx
                        .send(Err(Status::failed_precondition("the order broke")))
                        .await;
                }
                _ => {
                    tx.closed().await;
                    observed.dropped.notify_one();
                }
            }
        });
        Ok(Response::new(Events(rx)))
    }

    async fn create_order(
        &self,
        _: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn list_orders(
        &self,
        _: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn get_order(&self, _: Request<GetOrderRequest>) -> Result<Response<Order>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn cancel_order(
        &self,
        _: Request<CancelOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn ship_order(&self, _: Request<ShipOrderRequest>) -> Result<Response<Order>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn deliver_order(
        &self,
        _: Request<DeliverOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn lookup_order(
        &self,
        _: Request<LookupOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
    async fn check_purchase(
        &self,
        _: Request<CheckPurchaseRequest>,
    ) -> Result<Response<CheckPurchaseResponse>, Status> {
        Err(Status::unimplemented("not in this fixture"))
    }
}

/// Every role grants nothing: `WatchOrder` only needs a valid token.
struct NoPermissions;

#[async_trait]
impl RoleSource for NoPermissions {
    async fn roles(&self) -> shopmesh_kit::Result<HashMap<String, BTreeSet<String>>> {
        Ok(HashMap::new())
    }
}

struct Harness {
    edge: SocketAddr,
    fixture: Arc<Observed>,
    shutdown: Shutdown,
    token: String,
}

/// Starts the fixture and an edge in front of it; streams may stay open `stream_timeout`.
async fn start(stream_timeout: Duration) -> Harness {
    let fixture = FixtureOrders::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(OrderServiceServer::new(fixture.clone()))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);

    let key = SigningKey::generate("k1");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = key
        .sign(&Claims {
            iss: "shopmesh".into(),
            aud: "shopmesh".into(),
            sub: "00000000-0000-4000-8000-00000000000a".into(),
            exp: now + 600,
            iat: now,
            nbf: now,
            jti: "t1".into(),
            roles: vec!["customer".into()],
        })
        .unwrap();
    let verifier = Verifier::new(Arc::new(vec![key.jwk()]), Policy::default());
    let shutdown = Shutdown::new();
    let channel = shopmesh_kit::grpc::connect(&format!("http://{upstream}"), "orders").unwrap();
    let gateway = Gateway {
        router: Router::from_descriptors(descriptors()).unwrap(),
        upstreams: Upstreams::new(HashMap::from([("orders".to_owned(), channel)])),
        grpc_targets: HashMap::from([("orders".to_owned(), upstream)]),
        forward: Vec::new(),
        trusted_proxies: Vec::new(),
        authority: Authority::new(verifier, Arc::new(NoPermissions)),
        limiter: Limiter::new(LimitsConfig::default()),
        cors: CorsConfig {
            allowed_origins: vec![ORIGIN.into()],
            max_age: Duration::from_secs(600),
        },
        openapi: Bytes::new(),
        tls: false,
        max_body_bytes: 1024,
        max_header_bytes: 16 * 1024,
        timeout: Duration::from_secs(5),
        stream_timeout,
        keep_alive: Duration::from_millis(100),
        client_timeout: Duration::from_secs(5),
        shutdown: shutdown.clone(),
    };
    let edge = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut service = gateway::service(gateway, edge, None, Duration::from_secs(10)).unwrap();
    // The edge runs until the test ends; its shutdown token is the one streams watch.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        service.start_service(None, stopped, 1).await;
        drop(stop);
    });
    while TcpStream::connect(edge).await.is_err() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Harness {
        edge,
        fixture: fixture.0,
        shutdown,
        token,
    }
}

impl Harness {
    /// Sends `GET /v1/orders/{id}/events` over HTTP/1.1, with the token unless `anonymous`.
    async fn watch(&self, id: &str, anonymous: bool) -> Client {
        let mut stream = TcpStream::connect(self.edge).await.unwrap();
        let authorization = if anonymous {
            String::new()
        } else {
            format!("authorization: Bearer {}\r\n", self.token)
        };
        let request = format!(
            "GET /v1/orders/{id}/events HTTP/1.1\r\nhost: edge\r\naccept: text/event-stream\r\n\
             accept-language: de\r\nx-request-id: watch-1\r\norigin: {ORIGIN}\r\n\
             {authorization}connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        Client {
            stream,
            raw: Vec::new(),
        }
    }
}

/// An answer read so far: status, lower-cased headers, and the body (de-chunked when chunked).
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
    /// Whether the body has ended (the last chunk, or the whole length).
    complete: bool,
}

fn parse(raw: &[u8]) -> Option<Answer> {
    let raw = std::str::from_utf8(raw).ok()?;
    let (head, rest) = raw.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    if headers.get("transfer-encoding").map(String::as_str) != Some("chunked") {
        let length: usize = headers.get("content-length")?.parse().ok()?;
        return Some(Answer {
            status,
            complete: rest.len() >= length,
            body: rest.to_owned(),
            headers,
        });
    }
    let (mut body, mut rest, mut complete) = (String::new(), rest, false);
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size, 16) else {
            break;
        };
        if size == 0 {
            complete = true;
            break;
        }
        if after.len() < size + 2 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    Some(Answer {
        status,
        headers,
        body,
        complete,
    })
}

/// A request in flight and what has arrived of its answer.
struct Client {
    stream: TcpStream,
    raw: Vec<u8>,
}

impl Client {
    /// Reads until `enough` holds for the answer so far, or the answer or connection ends.
    async fn read_until(&mut self, enough: impl Fn(&Answer) -> bool) -> Answer {
        let mut buf = [0; 4096];
        loop {
            if let Some(answer) = parse(&self.raw)
                && (enough(&answer) || answer.complete)
            {
                return answer;
            }
            let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf))
                .await
                .expect("the edge answers in time")
                .unwrap();
            if read == 0 {
                let raw = String::from_utf8_lossy(&self.raw);
                return parse(&self.raw).unwrap_or_else(|| panic!("a whole answer head: {raw}"));
            }
            self.raw.extend_from_slice(&buf[..read]);
        }
    }

    async fn read_to_end(&mut self) -> Answer {
        self.read_until(|_| false).await
    }
}

/// Seconds in a `grpc-timeout` value (`59991824u`).
fn grpc_timeout_seconds(value: &str) -> f64 {
    let (amount, unit) = value.split_at(value.len() - 1);
    let amount: f64 = amount.parse().unwrap();
    amount
        * match unit {
            "H" => 3600.0,
            "M" => 60.0,
            "S" => 1.0,
            "m" => 1e-3,
            "u" => 1e-6,
            _ => 1e-9,
        }
}

/// The `data` of every event named `name`, in order.
fn data_of<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    body.split("\n\n")
        .filter(|event| event.lines().any(|l| l == format!("event: {name}")))
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .collect()
}

#[tokio::test]
async fn messages_arrive_as_numbered_events_then_the_stream_ends() {
    let harness = start(Duration::from_secs(60)).await;
    let mut stream = harness.watch(THREE, false).await;
    let answer = stream.read_to_end().await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.complete, "the stream ends with the last chunk");
    let header = |name: &str| answer.headers.get(name).map(String::as_str);
    assert_eq!(header("content-type"), Some("text/event-stream"));
    assert_eq!(header("cache-control"), Some("no-cache"));
    assert_eq!(header("content-length"), None);
    assert_eq!(header("x-request-id"), Some("watch-1"));
    assert_eq!(header("access-control-allow-origin"), Some(ORIGIN));
    let ids: Vec<_> = answer
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(ids, ["1", "2", "3"]);
    let data = data_of(&answer.body, "message");
    assert_eq!(data.len(), 3, "{}", answer.body);
    let last: serde_json::Value = serde_json::from_str(data[2]).unwrap();
    assert_eq!(last["order"]["status"], "ORDER_STATUS_REJECTED");
    assert_eq!(last["order"]["id"], THREE);
    // The pause before the last message is longer than the keep-alive interval.
    assert!(answer.body.contains(": keep-alive\n\n"), "{}", answer.body);
    assert!(data_of(&answer.body, "error").is_empty());
    // The service saw the caller's language, request id and a deadline beyond the unary one.
    let seen = harness.fixture.seen.lock().unwrap().pop().unwrap();
    assert_eq!(seen.get("accept-language").unwrap(), "de");
    assert_eq!(seen.get("x-request-id").unwrap(), "watch-1");
    let timeout = seen.get("grpc-timeout").unwrap().to_str().unwrap();
    assert!(grpc_timeout_seconds(timeout) > 30.0, "{timeout}");
}

#[tokio::test]
async fn a_failure_before_the_first_message_is_json_and_after_it_an_error_event() {
    let harness = start(Duration::from_secs(60)).await;
    let mut anonymous = harness.watch(THREE, true).await;
    let answer = anonymous.read_to_end().await;
    assert_eq!(answer.status, 401, "{}", answer.body);

    let mut missing = harness.watch(MISSING, false).await;
    let answer = missing.read_to_end().await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.headers["content-type"], "application/json");
    let status: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(status["code"], 5);

    let mut breaks = harness.watch(BREAKS, false).await;
    let answer = breaks.read_to_end().await;
    assert_eq!(answer.status, 200);
    assert!(answer.complete);
    assert_eq!(data_of(&answer.body, "message").len(), 1);
    let errors = data_of(&answer.body, "error");
    assert_eq!(errors.len(), 1, "{}", answer.body);
    let status: serde_json::Value = serde_json::from_str(errors[0]).unwrap();
    assert_eq!(status["code"], 9);
    assert_eq!(status["message"], "the order broke");
}

#[tokio::test]
async fn a_client_that_leaves_drops_the_call_upstream() {
    let harness = start(Duration::from_secs(60)).await;
    let mut stream = harness.watch(HOLDS, false).await;
    let answer = stream.read_until(|a| a.body.contains("id: 1\n")).await;
    assert_eq!(answer.status, 200);
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), harness.fixture.dropped.notified())
        .await
        .expect("the upstream call is dropped");
}

#[tokio::test]
async fn streams_end_with_an_error_event_at_their_time_limit_and_at_shutdown() {
    let harness = start(Duration::from_millis(500)).await;
    let mut stream = harness.watch(HOLDS, false).await;
    let answer = stream.read_to_end().await;
    assert!(answer.complete);
    let errors = data_of(&answer.body, "error");
    let status: serde_json::Value = serde_json::from_str(errors[0]).unwrap();
    assert_eq!(status["code"], 4, "{}", answer.body);

    let harness = start(Duration::from_secs(60)).await;
    let mut stream = harness.watch(HOLDS, false).await;
    stream.read_until(|a| a.body.contains("id: 1\n")).await;
    harness.shutdown.trigger();
    let answer = stream.read_to_end().await;
    assert!(answer.complete);
    let errors = data_of(&answer.body, "error");
    let status: serde_json::Value = serde_json::from_str(errors[0]).unwrap();
    assert_eq!(status["code"], 14, "{}", answer.body);
    tokio::time::timeout(Duration::from_secs(5), harness.fixture.dropped.notified())
        .await
        .expect("the upstream call is dropped");
}

#[tokio::test]
async fn a_grpc_stream_passes_through_with_one_request_id_both_ways() {
    use shopmesh_proto::shopmesh::orders::v1::order_service_client::OrderServiceClient;
    let harness = start(Duration::from_secs(60)).await;
    let mut client = OrderServiceClient::connect(format!("http://{}", harness.edge))
        .await
        .unwrap();
    let mut request = Request::new(WatchOrderRequest { id: THREE.into() });
    let bearer = format!("Bearer {}", harness.token).parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    let answer = client.watch_order(request).await.unwrap();
    let answered_id = answer.metadata().get("x-request-id").unwrap().clone();
    let mut stream = answer.into_inner();
    let mut statuses = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        statuses.push(message.order.unwrap().status);
    }
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    // The client sent no id: the edge made one, gave it to the service and to the client.
    let seen = harness.fixture.seen.lock().unwrap().pop().unwrap();
    assert_eq!(seen.get("x-request-id"), Some(&answered_id));
    assert_eq!(answered_id.len(), 32);
}
