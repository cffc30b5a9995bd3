//! Self-checks of the harness against servers on loopback whose behaviour is known: if these
//! figures come out wrong, no figure the harness reports can be trusted.
//!
//! - a server answering after a fixed 2 ms is measured at a p50 of 2 to 3 ms;
//! - a server that stalls once for 1 s during a constant-rate run shows the stall at p99.9, and
//!   the requests that were due during the stall are charged for it (coordinated omission);
//! - the achieved rate is within 2 % of the asked one when the server keeps up.
//!
//! The checks run one at a time ([`SERIAL`]): on a small machine, parallel runs would measure
//! each other.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prost::Message as _;
mod common;

use common::ServerThread;
use shopmesh_bench::engine::{self, Load, Mode, Outcome};
use shopmesh_bench::grpc::{GrpcSpec, GrpcTarget};
use shopmesh_bench::http::{HttpSpec, HttpTarget, TlsOptions};
use shopmesh_bench::result::RunResult;
use shopmesh_proto::shopmesh::orders::v1::WatchOrderResponse;
use shopmesh_proto::shopmesh::users::v1::{GetUserRequest, User};
use tokio::time::Instant;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How the test server answers.
#[derive(Debug, Clone)]
enum Behaviour {
    /// `200 ok` after this long (slept on a blocking thread, to the kernel timer's precision).
    Delay(Duration),
    /// `200 ok` at once, except that from the `after`-th request on, every answer waits until
    /// `stall` has passed since that request: a pause of the whole server, as a GC pause or a
    /// stopped process would cause.
    StallOnce { after: u64, stall: Duration },
    /// This status at once.
    Status(StatusCode),
    /// gRPC: `UserService/GetUser` answers the user with the asked id (NOT_FOUND for the nil
    /// id), `OrderService/WatchOrder` streams three events; any other method is UNIMPLEMENTED.
    Grpc,
}

#[derive(Debug)]
struct State {
    behaviour: Behaviour,
    requests: AtomicU64,
    connections: AtomicU64,
    /// Delayed answers under way now, and the most there ever were at once.
    delaying: AtomicU64,
    most_delaying: AtomicU64,
    stall_until: Mutex<Option<Instant>>,
    /// The last request body (the message, for gRPC).
    last_body: Mutex<Option<Bytes>>,
}

/// An HTTP/1.1 + h2 server on its own thread and runtime, so that it does not share the
/// generator's scheduler.
struct TestServer {
    state: Arc<State>,
    server: ServerThread,
}

impl TestServer {
    fn start(behaviour: Behaviour) -> Self {
        let state = Arc::new(State {
            behaviour,
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            delaying: AtomicU64::new(0),
            most_delaying: AtomicU64::new(0),
            stall_until: Mutex::new(None),
            last_body: Mutex::new(None),
        });
        let served = state.clone();
        let server = ServerThread::start(move |stream| {
            stream.set_nodelay(true).unwrap();
            served.connections.fetch_add(1, Ordering::SeqCst);
            let state = served.clone();
            async move {
                let service = service_fn(move |request| answer(request, state.clone()));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        });
        Self { state, server }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.server.addr)
    }

    fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    fn most_at_once(&self) -> u64 {
        self.state.most_delaying.load(Ordering::SeqCst)
    }

    fn last_body(&self) -> Option<Bytes> {
        self.state.last_body.lock().unwrap().clone()
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *response.status_mut() = status;
    response
}

async fn answer(
    request: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Body>, Infallible> {
    let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let path = request.uri().path().to_owned();
    let body = request.into_body().collect().await.map(|b| b.to_bytes());
    let Ok(body) = body else {
        return Ok(text(StatusCode::BAD_REQUEST, "unreadable body"));
    };
    match &state.behaviour {
        Behaviour::Delay(delay) => {
            *state.last_body.lock().unwrap() = Some(body);
            let delay = *delay;
            if !delay.is_zero() {
                let now = state.delaying.fetch_add(1, Ordering::SeqCst) + 1;
                state.most_delaying.fetch_max(now, Ordering::SeqCst);
                tokio::task::spawn_blocking(move || std::thread::sleep(delay))
                    .await
                    .unwrap();
                state.delaying.fetch_sub(1, Ordering::SeqCst);
            }
            Ok(text(StatusCode::OK, "ok"))
        }
        Behaviour::StallOnce { after, stall } => {
            let until = {
                let mut until = state.stall_until.lock().unwrap();
                if n == *after {
                    *until = Some(Instant::now() + *stall);
                }
                *until
            };
            if let Some(until) = until {
                tokio::time::sleep_until(until).await;
            }
            Ok(text(StatusCode::OK, "ok"))
        }
        Behaviour::Status(status) => Ok(text(*status, "no")),
        Behaviour::Grpc => Ok(grpc(&path, body, &state)),
    }
}

fn grpc(path: &str, mut body: Bytes, state: &State) -> Response<Body> {
    let message = if body.len() >= 5 && body[0] == 0 {
        let len = (&body[1..5]).get_u32() as usize;
        body.advance(5);
        body.split_to(len.min(body.len()))
    } else {
        return grpc_response(&[], 13);
    };
    *state.last_body.lock().unwrap() = Some(message.clone());
    match path {
        "/shopmesh.users.v1.UserService/GetUser" => match GetUserRequest::decode(message) {
            Ok(request) if request.id == "00000000-0000-0000-0000-000000000000" => {
                grpc_response(&[], 5)
            }
            Ok(request) => {
                let user = User {
                    id: request.id,
                    display_name: "Test".to_owned(),
                    ..User::default()
                };
                grpc_response(&[user.encode_to_vec()], 0)
            }
            Err(_) => grpc_response(&[], 3),
        },
        "/shopmesh.orders.v1.OrderService/WatchOrder" => {
            let event = WatchOrderResponse::default().encode_to_vec();
            grpc_response(&[event.clone(), event.clone(), event], 0)
        }
        _ => grpc_response(&[], 12),
    }
}

fn grpc_response(messages: &[Vec<u8>], status: u8) -> Response<Body> {
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = messages
        .iter()
        .map(|message| {
            let mut framed = BytesMut::with_capacity(5 + message.len());
            framed.put_u8(0);
            framed.put_u32(message.len() as u32);
            framed.put_slice(message);
            Ok(Frame::data(framed.freeze()))
        })
        .collect();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(u16::from(status)));
    frames.push(Ok(Frame::trailers(trailers)));
    let mut response = Response::new(StreamBody::new(futures::stream::iter(frames)).boxed());
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

fn load(mode: Mode, duration: Duration, connections: usize) -> Load {
    Load {
        mode,
        duration,
        connections,
        streams: 1,
        timeout: Duration::from_secs(5),
    }
}

async fn run_http(server: &TestServer, load: &Load, h2: bool) -> Outcome {
    let target = HttpTarget::new(HttpSpec {
        url: server.url(),
        method: "GET".to_owned(),
        headers: vec![],
        body: Bytes::new(),
        h2,
        tls: TlsOptions::default(),
    })
    .await
    .unwrap();
    engine::run(Arc::new(target), load, false).await.unwrap()
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2ms_server_measures_2_to_3ms_at_p50() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(Behaviour::Delay(Duration::from_millis(2)));
    // Noise on a shared machine only ever adds latency, so the harness's own overhead is what
    // its quietest of three runs shows; every run must still send all and lose nothing.
    let mut p50s = Vec::new();
    for _ in 0..3 {
        let outcome = run_http(
            &server,
            &load(Mode::Rate(200.0), Duration::from_secs(2), 4),
            false,
        )
        .await;
        let total = &outcome.total;
        assert!(total.errors.is_empty(), "{:?}", total.errors);
        assert_eq!(total.ok, 400, "unsent {}", total.unsent);
        assert!(
            ms(total.latency.min()) >= 2.0,
            "no answer comes before 2 ms"
        );
        let p50 = ms(total.latency.value_at_quantile(0.5));
        p50s.push(p50);
        if p50 <= 3.0 {
            break;
        }
    }
    let quietest = p50s.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(
        (2.0..=3.0).contains(&quietest),
        "p50 of each run {p50s:?} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shows_in_the_tail_and_is_charged_to_every_request_due_during_it() {
    let _serial = SERIAL.lock().await;
    let rate = 200.0;
    // The 200th request arrives about 1 s into the run; the server then pauses for 1 s.
    let server = TestServer::start(Behaviour::StallOnce {
        after: 200,
        stall: Duration::from_secs(1),
    });
    let outcome = run_http(
        &server,
        &load(Mode::Rate(rate), Duration::from_secs(3), 4),
        false,
    )
    .await;
    let total = &outcome.total;
    assert!(total.errors.is_empty(), "{:?}", total.errors);
    assert_eq!(total.unsent, 0);
    assert_eq!(total.ok, 600, "unsent {}", total.unsent);

    let p999 = ms(total.latency.value_at_quantile(0.999));
    assert!(
        p999 >= 900.0,
        "the 1 s stall is missing from p99.9: {p999} ms"
    );
    // Requests due during the stall waited for its end: their latencies fall from 1 s to 0, so
    // about half a second's worth of them took 500 ms or more. A generator that measured from
    // the actual send would see only the few requests in flight when the stall began.
    let slow = total.latency.count_between(500_000, u64::MAX);
    let expected = rate * 0.5;
    assert!(
        (expected * 0.7..=expected * 1.3).contains(&(slow as f64)),
        "{slow} requests took 500 ms or more, expected about {expected}"
    );
    let uncorrected_slow = total.service.count_between(500_000, u64::MAX);
    assert!(
        uncorrected_slow <= 4,
        "only the requests in flight on the 4 connections were slow to send"
    );
    // The stall is also visible in the timeline, in the second it ended.
    assert!(
        outcome
            .timeline
            .iter()
            .any(|second| second.max_us.is_some_and(|max| max >= 900_000)),
        "{:?}",
        outcome.timeline
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_achieved_rate_is_within_2_percent_of_the_asked_rate() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(Behaviour::Delay(Duration::ZERO));
    let rate = 1000.0;
    let outcome = run_http(
        &server,
        &load(Mode::Rate(rate), Duration::from_secs(2), 4),
        false,
    )
    .await;
    assert!(
        outcome.total.errors.is_empty(),
        "{:?}",
        outcome.total.errors
    );
    assert_eq!(outcome.total.unsent, 0);
    assert_eq!(outcome.total.requests(), 2000);
    assert_eq!(server.requests(), 2000);
    let achieved = outcome.achieved_rate();
    assert!(
        (achieved - rate).abs() / rate <= 0.02,
        "achieved {achieved} req/s of {rate}"
    );
    // Steady, not bursty: each full second carried the asked rate. The second that ends the
    // run is closed when the run ends, a little after the 2 s mark; a tail of answers that
    // ended after that is a third entry, not a full second.
    let full_seconds: Vec<_> = outcome.timeline.iter().take(2).collect();
    assert_eq!(full_seconds.len(), 2, "{:?}", outcome.timeline);
    assert!(
        full_seconds[1].at <= Duration::from_millis(2_100),
        "{:?}",
        outcome.timeline
    );
    for second in full_seconds {
        let per_second = second.requests as f64;
        assert!(
            (per_second - rate).abs() / rate <= 0.02,
            "{per_second} requests in the second ending at {:?}",
            second.at
        );
    }
    assert_eq!(
        outcome.timeline.iter().map(|s| s.requests).sum::<u64>(),
        2000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_mode_is_closed_loop() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(Behaviour::Delay(Duration::from_millis(2)));
    let outcome = run_http(&server, &load(Mode::Peak, Duration::from_secs(1), 2), false).await;
    let total = &outcome.total;
    assert!(total.errors.is_empty(), "{:?}", total.errors);
    // Two connections, each waiting 2 ms or a little more per request: at most 1000 per
    // second, and well above half of that.
    let achieved = outcome.achieved_rate();
    assert!((500.0..=1000.0).contains(&achieved), "{achieved} req/s");
    let p50 = ms(total.latency.value_at_quantile(0.5));
    assert!((2.0..=3.0).contains(&p50), "p50 {p50} ms");
    assert_eq!(server.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_carries_several_streams_on_one_connection() {
    let _serial = SERIAL.lock().await;
    // A request every 25 ms, each answered after 50 ms: two are always under way, which one
    // connection carries only as concurrent streams. One at a time, the queue would grow
    // without end (twice the work the connection could do).
    let server = TestServer::start(Behaviour::Delay(Duration::from_millis(50)));
    let load = Load {
        streams: 4,
        ..load(Mode::Rate(40.0), Duration::from_secs(1), 1)
    };
    let outcome = run_http(&server, &load, true).await;
    assert!(
        outcome.total.errors.is_empty(),
        "{:?}",
        outcome.total.errors
    );
    assert_eq!(outcome.total.ok, 40, "unsent {}", outcome.total.unsent);
    assert_eq!(server.connections(), 1);
    assert!(server.most_at_once() >= 2, "{}", server.most_at_once());
    let p50 = ms(outcome.total.latency.value_at_quantile(0.5));
    assert!(
        p50 < 100.0,
        "p50 {p50} ms: the streams waited for each other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_kind() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(Behaviour::Status(StatusCode::SERVICE_UNAVAILABLE));
    let outcome = run_http(
        &server,
        &load(Mode::Rate(100.0), Duration::from_millis(500), 2),
        false,
    )
    .await;
    assert_eq!(outcome.total.ok, 0);
    assert_eq!(
        outcome.total.errors.get("status_5xx"),
        Some(&50),
        "{:?}",
        outcome.total.errors
    );
    assert!(outcome.total.latency.is_empty());

    // A server too slow for the timeout: every request times out, and as an HTTP/1.1
    // connection cannot be reused after an abandoned answer, each is replaced.
    let slow = TestServer::start(Behaviour::Delay(Duration::from_millis(300)));
    let impatient = Load {
        timeout: Duration::from_millis(100),
        ..load(Mode::Rate(20.0), Duration::from_millis(500), 2)
    };
    let outcome = run_http(&slow, &impatient, false).await;
    assert_eq!(outcome.total.ok, 0);
    assert_eq!(
        outcome.total.errors.get("timeout"),
        Some(&10),
        "{:?}",
        outcome.total.errors
    );
    assert!(
        outcome.total.reconnects >= 8,
        "{}",
        outcome.total.reconnects
    );

    // Nothing listens: the run does not start.
    let addr = server.server.addr;
    drop(server);
    let target = HttpTarget::new(HttpSpec {
        url: format!("http://{addr}/"),
        method: "GET".to_owned(),
        headers: vec![],
        body: Bytes::new(),
        h2: false,
        tls: TlsOptions::default(),
    })
    .await
    .unwrap();
    let error = engine::run(
        Arc::new(target),
        &load(Mode::Rate(10.0), Duration::from_secs(1), 1),
        false,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, shopmesh_bench::Error::Connect { .. }),
        "{error}"
    );
}

async fn run_grpc(server: &TestServer, method: &str, request: &str, load: &Load) -> Outcome {
    let target = GrpcTarget::new(GrpcSpec {
        url: format!("http://{}", server.server.addr),
        method: method.to_owned(),
        request: request.to_owned(),
        headers: vec!["authorization: Bearer test".to_owned()],
        authority: None,
    })
    .unwrap();
    engine::run(Arc::new(target), load, false).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_methods_are_called_with_the_json_request() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(Behaviour::Grpc);
    let id = "0190a4c6-2b4e-7c1a-9f3e-0123456789ab";
    let load = Load {
        streams: 2,
        ..load(Mode::Rate(100.0), Duration::from_millis(500), 2)
    };

    let outcome = run_grpc(
        &server,
        "shopmesh.users.v1.UserService/GetUser",
        &format!(r#"{{"id": "{id}"}}"#),
        &load,
    )
    .await;
    assert!(
        outcome.total.errors.is_empty(),
        "{:?}",
        outcome.total.errors
    );
    assert_eq!(outcome.total.ok, 50, "unsent {}", outcome.total.unsent);
    let sent = GetUserRequest::decode(server.last_body().unwrap()).unwrap();
    assert_eq!(sent.id, id);
    assert_eq!(server.connections(), 2);

    let outcome = run_grpc(
        &server,
        "shopmesh.orders.v1.OrderService/WatchOrder",
        &format!(r#"{{"id": "{id}"}}"#),
        &load,
    )
    .await;
    assert!(
        outcome.total.errors.is_empty(),
        "{:?}",
        outcome.total.errors
    );
    assert_eq!(outcome.total.ok, 50, "unsent {}", outcome.total.unsent);

    let outcome = run_grpc(
        &server,
        "shopmesh.users.v1.UserService/GetUser",
        r#"{"id": "00000000-0000-0000-0000-000000000000"}"#,
        &load,
    )
    .await;
    assert_eq!(outcome.total.ok, 0);
    assert_eq!(
        outcome.total.errors.get("grpc_not_found"),
        Some(&50),
        "{:?} unsent {}",
        outcome.total.errors,
        outcome.total.unsent
    );

    let outcome = run_grpc(
        &server,
        "shopmesh.users.v1.UserService/ListUsers",
        "{}",
        &load,
    )
    .await;
    assert_eq!(
        outcome.total.errors.get("grpc_unimplemented"),
        Some(&50),
        "{:?} unsent {}",
        outcome.total.errors,
        outcome.total.unsent
    );
}

fn bench() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_shopmesh-bench"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_writes_a_result_and_reports_it() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(Behaviour::Delay(Duration::ZERO));
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, br#"{"q": "shoes"}"#).unwrap();
    let out = dir.path().join("baseline.json");
    let url = server.url();
    let (body_arg, out_arg) = (body.clone(), out.clone());
    let status = tokio::task::spawn_blocking(move || {
        bench()
            .args(["http", "--url", &url, "--method", "post", "--rate", "100"])
            .args(["--duration", "1s", "--connections", "2", "--quiet"])
            .args(["--header", "Authorization: Bearer secret-token"])
            .arg("--body")
            .arg(&body_arg)
            .arg("--out")
            .arg(&out_arg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(status.status.success(), "{status:?}");
    assert_eq!(server.last_body().unwrap(), &br#"{"q": "shoes"}"#[..]);

    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("secret-token"), "header values are not kept");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "requests",
        "errors",
        "achieved_rate",
        "latency_ms",
        "histogram",
        "spectrum",
        "timeline",
        "settings",
        "machine",
    ] {
        assert!(json.get(key).is_some(), "{key} is missing");
    }
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(json["latency_ms"][key].is_number(), "latency_ms.{key}");
    }
    assert_eq!(json["requests"], 100);
    assert_eq!(json["settings"]["http_method"], "POST");
    assert_eq!(json["settings"]["body_bytes"], 14);
    assert_eq!(json["settings"]["header_names"][0], "authorization");
    assert_eq!(json["label"], "baseline");
    let result = RunResult::read(&out).unwrap();
    let histogram = result.histogram.decode().unwrap();
    assert_eq!(histogram.len(), 100);
    assert!(result.machine.kernel.is_some());

    let report = bench().arg("report").arg(&out).arg(&out).output().unwrap();
    assert!(report.status.success(), "{report:?}");
    let table = String::from_utf8(report.stdout).unwrap();
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| baseline"))
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[1].contains("100 (1.00×)"), "{table}");

    for command in [
        &["--help"][..],
        &["http", "--help"],
        &["grpc", "--help"],
        &["report", "--help"],
    ] {
        let help = bench().args(command).output().unwrap();
        assert!(help.status.success(), "{command:?}");
        assert!(String::from_utf8(help.stdout).unwrap().contains("Usage:"));
    }
    let missing_mode = bench()
        .args(["http", "--url", "http://127.0.0.1:1/"])
        .output()
        .unwrap();
    assert!(!missing_mode.status.success());
}
