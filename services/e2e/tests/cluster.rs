//! The distributed mode on one machine (`shopmesh cluster up`): every service a process of its
//! own, each node behind its mesh sidecar, discovery in etcd. The public API works through the
//! edge and the mesh, and the mesh's faults cost no request: a catalog replica killed under
//! load, and etcd gone for a minute.
//!
//! The cluster binds fixed addresses (127.0.0.2 and up), so this file holds one test.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shopmesh_proto::shopmesh::catalog::v1::CreateCategoryRequest;
use shopmesh_proto::shopmesh::catalog::v1::catalog_service_client::CatalogServiceClient;
use support::{PASSWORD, bearer, http};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const LIFTED: [&str; 4] = [
    "services.edge.limits.default.per_ip.per_second=100000",
    "services.edge.limits.default.per_ip.burst=100000",
    "services.edge.limits.default.per_user.per_second=100000",
    "services.edge.limits.default.per_user.burst=100000",
];

/// A running `shopmesh cluster up`.
struct Cluster {
    child: Child,
    edge: String,
    admin_password: String,
    /// Each component's pid, by its printed name (`etcd`, `node-3/catalog`, ...).
    pids: BTreeMap<String, u32>,
}

impl Cluster {
    async fn start(dir: &Path) -> Self {
        let mut child = Command::new(shopmesh_testkit::binaries::path("shopmesh"))
            .args(["cluster", "up", "--nodes", "3", "--data-dir"])
            .arg(dir)
            .args(["--set", "services.users.bcrypt_cost=4"])
            // One test client sends all the load: lift the edge's per-client limits.
            .args(LIFTED.iter().flat_map(|setting| ["--set", setting]))
            // Its own process group, which its processes join: a failed test kills them all.
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start shopmesh cluster up");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut edge, mut admin_password, mut pids) = (None, None, BTreeMap::new());
        let ready = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                eprintln!("{line}");
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["first", "admin", _, "password", password, ..] => {
                        admin_password = Some((*password).to_owned());
                    }
                    ["edge", url] => edge = Some((*url).to_owned()),
                    [name, .., "pid", pid] => {
                        pids.insert((*name).to_owned(), pid.parse().unwrap());
                    }
                    ["cluster", "is", "ready", ..] => return true,
                    _ => {}
                }
            }
            false
        })
        .await;
        assert_eq!(ready, Ok(true), "the cluster did not start");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            edge: edge.expect("the edge's URL"),
            admin_password: admin_password.expect("the first administrator"),
            pids,
        }
    }

    fn signal(&self, component: &str, signal: &str) {
        let pid = self.pids[component];
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {component}");
    }

    /// The instances of `service` in node-1's sidecar table.
    async fn instances(&self, service: &str) -> Vec<String> {
        let answer = http("http://127.0.0.2:15090", "GET", "/endpoints", &[], b"").await;
        answer.json()[service]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|row| row["instance"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn login(&self, email: &str, password: &str) -> String {
        let body = serde_json::to_vec(&json!({"email": email, "password": password})).unwrap();
        let login = http(&self.edge, "POST", "/v1/auth/login", &[], &body).await;
        assert_eq!(login.status, 200, "{login:?}");
        format!("Bearer {}", login.json()["access_token"].as_str().unwrap())
    }

    /// Stops the cluster as Ctrl-C would; it must stop every process and exit cleanly.
    async fn stop(mut self) {
        let pid = self.child.id().unwrap();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the cluster stops within 30 s")
            .unwrap();
        assert!(status.success(), "{status}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

/// Sends `rate` GETs of `path` per second through the edge for `duration`; returns the answers
/// that were not 200, as `status body`.
async fn load(edge: &str, path: &str, rate: u32, duration: Duration) -> Vec<String> {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut calls = tokio::task::JoinSet::new();
    let until = Instant::now() + duration;
    while Instant::now() < until {
        tick.tick().await;
        let (edge, path) = (edge.to_owned(), path.to_owned());
        calls.spawn(async move { http(&edge, "GET", &path, &[], b"").await });
    }
    let mut failed = Vec::new();
    while let Some(answer) = calls.join_next().await {
        let answer = answer.unwrap();
        if answer.status != 200 {
            failed.push(format!(
                "{} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
        }
    }
    failed
}

/// The keys under the discovery prefix in the cluster's etcd.
fn registrations() -> Vec<String> {
    let output = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints=http://127.0.0.2:2379",
            "--dial-timeout=2s",
            "get",
        ])
        .args(["--prefix", "--keys-only", "/shopmesh/v1/services/"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_cluster_serves_through_the_mesh_and_its_faults_cost_no_request() {
    // The cluster runs the test bed's etcd binary (not its server).
    if shopmesh_testkit::testbed::address("SHOPMESH_TEST_ETCD", "etcd").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path()).await;
    let edge = cluster.edge.clone();
    let admin = cluster
        .login("admin@shopmesh.local", &cluster.admin_password.clone())
        .await;

    // gRPC through the edge's passthrough, then REST: both cross the mesh.
    let channel = tonic::transport::Channel::from_shared(edge.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let category = CatalogServiceClient::new(channel)
        .create_category(bearer(
            CreateCategoryRequest {
                slug: "cluster-shoes".into(),
                name: "Shoes".into(),
                ..CreateCategoryRequest::default()
            },
            admin.trim_start_matches("Bearer "),
        ))
        .await
        .unwrap()
        .into_inner();
    let product = json!({
        "sku": "CLUSTER-1", "title": "Mesh runner", "category_id": category.id, "stock": 5,
        "price": {"currency_code": "EUR", "amount_minor": "4999"},
    });
    let created = http(
        &edge,
        "POST",
        "/v1/products",
        &[("authorization", &admin)],
        &serde_json::to_vec(&product).unwrap(),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let product_id = created.json()["id"].as_str().unwrap().to_owned();

    // A customer's order goes through orders, catalog and payments on three nodes.
    let register = json!({"email": "mesh@example.com", "password": PASSWORD, "display_name": "Mo"});
    let registered = http(
        &edge,
        "POST",
        "/v1/users",
        &[],
        &serde_json::to_vec(&register).unwrap(),
    )
    .await;
    assert_eq!(registered.status, 201, "{registered:?}");
    let customer = cluster.login("mesh@example.com", PASSWORD).await;
    let order = json!({
        "items": [{"product_id": product_id, "quantity": 1}],
        "shipping_address": {"name": "Mo", "line1": "1 Loop Road", "city": "Localhost",
            "postal_code": "12700", "country": "GB"},
        "payment_method": "pm_card_visa",
    });
    let placed = http(
        &edge,
        "POST",
        "/v1/orders",
        &[
            ("authorization", &customer),
            ("idempotency-key", "cluster-1"),
        ],
        &serde_json::to_vec(&order).unwrap(),
    )
    .await;
    assert_eq!(placed.status, 202, "{placed:?}");
    let order_id = placed.json()["id"].as_str().unwrap().to_owned();
    let mut status = Value::Null;
    for _ in 0..300 {
        let answer = http(
            &edge,
            "GET",
            &format!("/v1/orders/{order_id}"),
            &[("authorization", &customer)],
            b"",
        )
        .await;
        status = answer.json()["status"].clone();
        if status == "ORDER_STATUS_PAID" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "ORDER_STATUS_PAID");

    // Every sidecar, a process of its own, exports its own metrics: the documented families,
    // with the calls it carried counted.
    for node in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let scraped = http(&format!("http://{node}:15090"), "GET", "/metrics", &[], b"").await;
        assert_eq!(scraped.status, 200, "{node}");
        let text = String::from_utf8_lossy(&scraped.body).into_owned();
        for family in [
            "shopmesh_mesh_requests_total",
            "shopmesh_mesh_request_duration_seconds",
            "shopmesh_mesh_tls_handshakes_total",
            "shopmesh_mesh_certificate_expiry_seconds",
            "shopmesh_mesh_endpoints",
        ] {
            assert!(
                text.lines().any(|line| line.starts_with(family)),
                "{node} exports no {family}:\n{text}"
            );
        }
        let requests: f64 = text
            .lines()
            .filter(|line| line.starts_with("shopmesh_mesh_requests_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(requests > 0.0, "{node} counted no request:\n{text}");
    }

    // A catalog replica killed at 200 requests per second: no request fails, and the dead
    // replica leaves the table within 2 s.
    let path = format!("/v1/products/{product_id}");
    assert_eq!(cluster.instances("catalog").await, ["node-2", "node-3"]);
    let traffic = tokio::spawn({
        let (edge, path) = (edge.clone(), path.clone());
        async move { load(&edge, &path, 200, Duration::from_secs(6)).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.signal("node-3/catalog", "-KILL");
    let killed = Instant::now();
    while cluster.instances("catalog").await != ["node-2"] {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "the dead replica is still listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "the killed replica left the table after {:?}",
        killed.elapsed()
    );
    let failed = traffic.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );

    // etcd gone for 60 s: routing goes on from every sidecar's table.
    let etcd_pid = cluster.pids["etcd"];
    let command_line = std::fs::read(format!("/proc/{etcd_pid}/cmdline")).unwrap();
    let mut etcd_args = command_line
        .split(|byte| *byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned());
    let etcd_program = etcd_args.next().unwrap();
    let etcd_args: Vec<String> = etcd_args.collect();
    cluster.signal("etcd", "-KILL");
    let failed = load(&edge, &path, 20, Duration::from_secs(60)).await;
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(cluster.instances("catalog").await, ["node-2"]);

    // When it returns, every live registration is there again.
    let _etcd = Command::new(etcd_program)
        .args(&etcd_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let back = Instant::now();
    let expected = [
        "auth/node-1",
        "catalog/node-2",
        "orders/node-2",
        "payments/node-3",
        "users/node-1",
    ];
    loop {
        let keys = registrations();
        if expected
            .iter()
            .all(|key| keys.iter().any(|k| k.ends_with(key)))
        {
            assert!(
                !keys.iter().any(|k| k.ends_with("catalog/node-3")),
                "{keys:?}"
            );
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "registrations after etcd returned: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        load(&edge, &path, 20, Duration::from_secs(2))
            .await
            .is_empty()
    );
    cluster.stop().await;
}
