//! Scenarios against a small shop on loopback that checks what a real one would: tokens belong
//! to the users that logged in, idempotency keys are never reused, an order is only visible to
//! its owner. If per-user state or captures were wrong, the shop would answer 4xx and the run
//! would show errors.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
mod common;

use common::ServerThread;
use shopmesh_bench::engine::{self, Load, Mode};
use shopmesh_bench::http::{Origin, TlsOptions};
use shopmesh_bench::result::RunResult;
use shopmesh_bench::scenario::{Scenario, ScenarioTarget};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Default)]
struct Shop {
    /// email → password.
    accounts: Mutex<HashMap<String, String>>,
    /// token → email.
    tokens: Mutex<HashMap<String, String>>,
    /// order id → owner's email.
    orders: Mutex<HashMap<String, String>>,
    keys: Mutex<HashSet<String>>,
    products: Mutex<Vec<String>>,
    /// Requests per path kind, for the checks.
    seen: Mutex<HashMap<&'static str, u64>>,
    serial: AtomicU64,
}

impl Shop {
    fn count(&self, kind: &'static str) -> u64 {
        self.seen.lock().unwrap().get(kind).copied().unwrap_or(0)
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
}

async fn answer(
    request: Request<Incoming>,
    shop: Arc<Shop>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let owner = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| shop.tokens.lock().unwrap().get(token).cloned());
    let key = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let n = shop.serial.fetch_add(1, Ordering::Relaxed);
    let seen = |kind: &'static str| *shop.seen.lock().unwrap().entry(kind).or_default() += 1;
    let text = |field: &str| body[field].as_str().unwrap_or_default().to_owned();
    Ok(match (method.as_str(), path.as_str()) {
        ("POST", "/v1/users") => {
            seen("register");
            let email = text("email");
            let mut accounts = shop.accounts.lock().unwrap();
            if email.is_empty() || accounts.contains_key(&email) {
                json(StatusCode::CONFLICT, serde_json::json!({}))
            } else {
                accounts.insert(email.clone(), text("password"));
                json(StatusCode::CREATED, serde_json::json!({ "email": email }))
            }
        }
        ("POST", "/v1/auth/login") => {
            seen("login");
            let email = text("email");
            if shop.accounts.lock().unwrap().get(&email) == Some(&text("password")) {
                let token = format!("t{n}");
                shop.tokens.lock().unwrap().insert(token.clone(), email);
                json(StatusCode::OK, serde_json::json!({ "access_token": token }))
            } else {
                json(StatusCode::UNAUTHORIZED, serde_json::json!({}))
            }
        }
        ("POST", "/v1/products") => {
            seen("create product");
            if owner.as_deref() != Some("admin@example.com") {
                return Ok(json(StatusCode::FORBIDDEN, serde_json::json!({})));
            }
            let id = text("sku");
            shop.products.lock().unwrap().push(id.clone());
            json(StatusCode::CREATED, serde_json::json!({ "id": id }))
        }
        ("GET", "/v1/products") => {
            seen("browse");
            let products: Vec<serde_json::Value> = shop
                .products
                .lock()
                .unwrap()
                .iter()
                .map(|id| serde_json::json!({ "id": id }))
                .collect();
            json(StatusCode::OK, serde_json::json!({ "products": products }))
        }
        ("GET", product) if product.starts_with("/v1/products/") => {
            seen("details");
            let id = &product["/v1/products/".len()..];
            if shop.products.lock().unwrap().iter().any(|p| p == id) {
                json(StatusCode::OK, serde_json::json!({ "id": id }))
            } else {
                json(StatusCode::NOT_FOUND, serde_json::json!({}))
            }
        }
        ("POST", "/v1/orders") => {
            seen("checkout");
            let Some(owner) = owner else {
                return Ok(json(StatusCode::UNAUTHORIZED, serde_json::json!({})));
            };
            let product = body["items"][0]["product_id"].as_str().unwrap_or_default();
            if !shop.products.lock().unwrap().iter().any(|p| p == product) {
                return Ok(json(StatusCode::BAD_REQUEST, serde_json::json!({})));
            }
            match key {
                Some(key) if shop.keys.lock().unwrap().insert(key.clone()) => {
                    let id = format!("o{n}");
                    shop.orders.lock().unwrap().insert(id.clone(), owner);
                    json(StatusCode::ACCEPTED, serde_json::json!({ "id": id }))
                }
                _ => json(StatusCode::CONFLICT, serde_json::json!({})),
            }
        }
        ("GET", order) if order.starts_with("/v1/orders/") => {
            seen("order status");
            let id = &order["/v1/orders/".len()..];
            let orders = shop.orders.lock().unwrap();
            match (orders.get(id), owner) {
                (Some(by), Some(caller)) if *by == caller => {
                    json(StatusCode::OK, serde_json::json!({ "id": id }))
                }
                _ => json(StatusCode::NOT_FOUND, serde_json::json!({})),
            }
        }
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({})),
    })
}

/// The shop on its own thread and runtime.
struct Server {
    shop: Arc<Shop>,
    server: ServerThread,
}

impl Server {
    fn start() -> Self {
        let shop = Arc::new(Shop::default());
        shop.accounts
            .lock()
            .unwrap()
            .insert("admin@example.com".into(), "admin pw".into());
        let served = shop.clone();
        let server = ServerThread::start(move |stream| {
            let shop = served.clone();
            async move {
                let service = service_fn(move |r| answer(r, shop.clone()));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        });
        Self { shop, server }
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }
}

const SHOP: &str = r#"
name = "shop"

[vars]
password = "pw"

[[setup]]
name = "admin"
method = "POST"
path = "/v1/auth/login"
json = { email = "admin@example.com", password = "{env:SHOP_ADMIN_PASSWORD}" }
capture = { admin = "access_token" }

[[setup]]
name = "products"
repeat = 5
method = "POST"
path = "/v1/products"
headers = { authorization = "Bearer {admin}" }
json = { sku = "p{n}" }

[[user]]
method = "POST"
path = "/v1/users"
json = { email = "u{user}@example.com", password = "{password}" }

[[user]]
method = "POST"
path = "/v1/auth/login"
json = { email = "u{user}@example.com", password = "{password}" }
capture = { token = "access_token" }

[[step]]
name = "browse"
weight = 3
[[step.requests]]
path = "/v1/products"
capture = { product = "products.*.id" }

[[step]]
name = "details"
weight = 2
[[step.requests]]
path = "/v1/products/{product}"

[[step]]
name = "checkout"
weight = 2
[[step.requests]]
method = "POST"
path = "/v1/orders"
headers = { authorization = "Bearer {token}", idempotency-key = "{unique}" }
json = { items = [{ product_id = "{product}", quantity = 1 }] }
capture = { order = "id" }

[[step]]
name = "status"
weight = 2
[[step.requests]]
path = "/v1/orders/{order}"
headers = { authorization = "Bearer {token}" }

[[step]]
name = "wrong password"
weight = 1
[[step.requests]]
method = "POST"
path = "/v1/auth/login"
json = { email = "u{user}@example.com", password = "nope" }
expect = [401]
"#;

fn env(name: &str) -> Option<String> {
    (name == "SHOP_ADMIN_PASSWORD").then(|| "admin pw".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_keep_their_tokens_and_captures_and_every_step_is_measured() {
    let _serial = SERIAL.lock().await;
    let server = Server::start();
    let scenario = Scenario::parse(Path::new("shop.toml"), SHOP, &env).unwrap();
    let (origin, _) = Origin::new(&server.url(), false, &TlsOptions::default())
        .await
        .unwrap();
    let target = ScenarioTarget::prepare(origin, scenario, 6, 3, 7)
        .await
        .unwrap();
    // The setup ran before the clock: the products exist and every user has logged in.
    assert_eq!(server.shop.count("create product"), 5);
    assert_eq!(server.shop.count("register"), 6);
    assert_eq!(server.shop.count("login"), 7);

    let load = Load {
        mode: Mode::Rate(300.0),
        duration: Duration::from_secs(2),
        connections: 3,
        streams: 1,
        timeout: Duration::from_secs(2),
    };
    let outcome = engine::run(Arc::new(target), &load, false).await.unwrap();
    let total = &outcome.total;
    assert!(total.errors.is_empty(), "{:?}", total.errors);
    assert_eq!(total.unsent, 0);
    assert_eq!(total.ok, 600);
    let steps = &total.steps;
    assert_eq!(steps.len(), 5);
    assert_eq!(steps.iter().map(|s| s.requests()).sum::<u64>(), 600);
    for (index, step) in steps.iter().enumerate() {
        assert!(step.ok > 0, "step {index} never ran");
        assert_eq!(step.latency.len(), step.ok);
    }
    // The mix follows the weights (3:2:2:2:1), within what randomness and the late start of
    // the steps that need a capture allow.
    let share = |index: usize| steps[index].requests() as f64 / 600.0;
    assert!((0.22..=0.40).contains(&share(0)), "browse {}", share(0));
    assert!(
        (0.04..=0.16).contains(&share(4)),
        "wrong password {}",
        share(4)
    );
    // Each checkout used a fresh key and the owner's token; each status found its order.
    assert_eq!(server.shop.count("checkout"), steps[2].ok);
    assert_eq!(server.shop.count("order status"), steps[3].ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_setup_stops_the_run_and_says_where() {
    let _serial = SERIAL.lock().await;
    let server = Server::start();
    let wrong = |name: &str| (name == "SHOP_ADMIN_PASSWORD").then(|| "wrong".to_owned());
    let scenario = Scenario::parse(Path::new("shop.toml"), SHOP, &wrong).unwrap();
    let (origin, _) = Origin::new(&server.url(), false, &TlsOptions::default())
        .await
        .unwrap();
    let error = ScenarioTarget::prepare(origin, scenario, 2, 2, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains(r#"[[setup]] "admin""#), "{error}");
    assert!(error.contains("401"), "{error}");
}

fn bench() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_shopmesh-bench"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_runs_a_scenario_and_plots_it() {
    let _serial = SERIAL.lock().await;
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.toml");
    std::fs::write(&file, SHOP).unwrap();
    let out = dir.path().join("shop.json");
    let plots = dir.path().join("plots");
    let url = server.url();
    let (file_arg, out_arg) = (file.clone(), out.clone());
    let run = tokio::task::spawn_blocking(move || {
        bench()
            .arg("scenario")
            .arg(&file_arg)
            .args(["--url", &url, "--rate", "100", "--duration", "1s"])
            .args(["--connections", "2", "--users", "4", "--quiet"])
            .env("SHOP_ADMIN_PASSWORD", "admin pw")
            .arg("--out")
            .arg(&out_arg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(run.status.success(), "{run:?}");
    let result = RunResult::read(&out).unwrap();
    assert_eq!(result.requests, 100);
    assert_eq!(result.error_count(), 0, "{:?}", result.errors);
    let scenario = result.settings.scenario.as_ref().unwrap();
    assert_eq!((scenario.name.as_str(), scenario.users), ("shop", 4));
    let names: Vec<&str> = result.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["browse", "details", "checkout", "status", "wrong password"]
    );
    assert_eq!(result.steps[0].weight, 3.0);
    assert_eq!(result.steps.iter().map(|s| s.requests).sum::<u64>(), 100);
    let browse = result.steps[0].histogram.decode().unwrap();
    assert_eq!(browse.len(), result.steps[0].ok);

    let report = bench()
        .arg("report")
        .arg(&out)
        .arg(&out)
        .arg("--plots")
        .arg(&plots)
        .output()
        .unwrap();
    assert!(report.status.success(), "{report:?}");
    let table = String::from_utf8(report.stdout).unwrap();
    assert!(table.contains("| shop | wrong password | 1 |"), "{table}");
    for name in ["latency-spectrum.png", "timeline.png", "shop-steps.png"] {
        let png = std::fs::read(plots.join(name)).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}");
        // Width and height from the IHDR chunk.
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        assert_eq!(width, 1200, "{name}");
        assert!(png.len() > 10_000, "{name} is nearly empty");
    }

    // A mistake in the file is reported with its line, before anything is sent.
    std::fs::write(
        &file,
        SHOP.replace(
            "weight = 2\n[[step.requests]]\npath = \"/v1/products/{product}\"",
            "weight = 2\n[[step.requests]]\npath = \"/v1/products/{prodcut}\"",
        ),
    )
    .unwrap();
    let before = server.shop.serial.load(Ordering::Relaxed);
    let bad = bench()
        .arg("scenario")
        .arg(&file)
        .args(["--url", &server.url(), "--rate", "10", "--duration", "1s"])
        .env("SHOP_ADMIN_PASSWORD", "admin pw")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let message = String::from_utf8(bad.stderr).unwrap();
    assert!(message.contains("shop.toml:"), "{message}");
    assert!(message.contains("{prodcut}"), "{message}");
    assert_eq!(server.shop.serial.load(Ordering::Relaxed), before);
}
