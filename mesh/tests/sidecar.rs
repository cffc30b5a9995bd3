//! Sidecars end to end on loopback: three nodes, each with its sidecar, a private etcd for
//! discovery, and catalog replicas on two nodes. Calls go service → sidecar → mTLS → sidecar →
//! service; the faults of the mesh issue are played against them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use shopmesh_kit::shutdown::Shutdown;
use shopmesh_mesh::discovery::{DiscoveryConfig, EtcdConfig};
use shopmesh_mesh::identity::{self, ServiceKey, SpiffeId, TrustAnchor};
use shopmesh_mesh::sidecar::config::LocalService;
use shopmesh_mesh::sidecar::{CALLER_HEADER, Sidecar, SidecarConfig};
use shopmesh_testkit::testbed;
use tokio::net::{TcpListener, TcpStream};

const ENV: &str = "test";
const GET: &str = "/shopmesh.catalog.v1.CatalogService/GetProduct";

/// An etcd of this test's own, so stopping it disturbs no other test.
struct Etcd {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Etcd {
    fn start(dir: &Path) -> Self {
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let mut etcd = Self {
            child: Command::new("true").spawn().unwrap(),
            url,
            dir: dir.join("etcd"),
        };
        etcd.child = etcd.spawn(peer);
        etcd
    }

    fn spawn(&self, peer: u16) -> Child {
        let peer = format!("http://127.0.0.1:{peer}");
        Command::new("etcd")
            .args(["--name", "mesh-test", "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &self.url,
                "--advertise-client-urls",
                &self.url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("mesh-test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd on PATH (the test bed installs it)")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.stop();
        // A new peer port: the old one may linger in TIME_WAIT. The member's peer URL is only
        // used for clustering, which a single member never does.
        self.child = self.spawn(free_port());
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A stand-in service: answers gRPC health checks SERVING and every other call with
/// `<name>|<caller>`, the caller being what the mesh says in `x-shopmesh-caller`. Slow on
/// `SearchProducts`, to exceed deadlines.
struct Backend {
    address: SocketAddr,
    stop: Shutdown,
}

async fn backend(name: &str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stop = Shutdown::new();
    let name: Arc<str> = name.into();
    let stopping = stop.clone();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => accepted.unwrap().0,
                () = stopping.wait() => return,
            };
            let (name, stopping) = (name.clone(), stopping.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let name = name.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&name, request).await) }
                });
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                // Stopping drops the connection: the process is gone, not draining.
                tokio::select! {
                    _ = connection => {}
                    () = stopping.wait() => {}
                }
            });
        }
    });
    Backend { address, stop }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn answer(name: &str, request: Request<Incoming>) -> Response<TestBody> {
    let path = request.uri().path().to_owned();
    let caller = request
        .headers()
        .get(CALLER_HEADER)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = request.into_body().collect().await;
    let message = if path == "/grpc.health.v1.Health/Check" {
        // HealthCheckResponse { status: SERVING }.
        vec![0x08, 0x01]
    } else {
        if path.ends_with("SearchProducts") {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        format!("{name}|{caller}").into_bytes()
    };
    let frames = vec![
        Ok(Frame::data(frame(&message))),
        Ok(Frame::trailers({
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers
        })),
    ];
    Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures::stream::iter(frames)).boxed())
        .unwrap()
}

fn frame(message: &[u8]) -> Bytes {
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    framed.into()
}

/// What a call through the mesh came back with: its gRPC status and message text.
#[derive(Debug)]
struct Answer {
    status: String,
    text: String,
}

async fn call(outbound: SocketAddr, service: &str, path: &str, timeout: Option<&str>) -> Answer {
    let stream = TcpStream::connect(outbound).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = Request::post(format!("http://{service}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(timeout) = timeout {
        request = request.header("grpc-timeout", timeout);
    }
    let request = request.body(Full::new(frame(b""))).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .or_else(|| headers.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = collected.to_bytes();
    let text = if body.len() > 5 {
        String::from_utf8_lossy(&body[5..]).into_owned()
    } else {
        headers
            .get("grpc-message")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    Answer { status, text }
}

/// Three nodes: node-a runs the edge and orders (callers only), node-b and node-c a catalog
/// replica each. Only the edge may call catalog.
struct Mesh {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    etcd: Etcd,
    backends: BTreeMap<String, Backend>,
    nodes: BTreeMap<String, Node>,
}

struct Node {
    outbound: BTreeMap<String, SocketAddr>,
    inbound: SocketAddr,
    admin: SocketAddr,
    stop: Shutdown,
}

impl Mesh {
    async fn start() -> Option<Self> {
        testbed::address("SHOPMESH_TEST_ETCD", "etcd")?;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        identity::init_ca(&ca, Duration::from_secs(86_400)).unwrap();
        let etcd = Etcd::start(dir.path());
        let mut mesh = Self {
            ca,
            etcd,
            backends: BTreeMap::new(),
            nodes: BTreeMap::new(),
            _dir: dir,
        };
        mesh.node("node-a", &["edge", "orders"]).await;
        for node in ["node-b", "node-c"] {
            let replica = backend(node).await;
            mesh.backends.insert(node.into(), replica);
            mesh.node(node, &["catalog"]).await;
        }
        mesh.wait_for_instances("node-a", "catalog", 2).await;
        Some(mesh)
    }

    fn issue(&self, service: &str, node: &str) -> (PathBuf, PathBuf) {
        let id = SpiffeId::new(ENV, service).unwrap();
        let issued = identity::issue(
            &self.ca,
            &id,
            Some(node),
            Duration::from_secs(3600),
            &self.ca,
        )
        .unwrap();
        (issued.cert, issued.key)
    }

    async fn node(&mut self, node: &str, services: &[&str]) {
        let mut config = SidecarConfig {
            env: ENV.into(),
            node: node.into(),
            ca: self.ca.join(identity::CA_CERT),
            admin: "127.0.0.1:0".parse().unwrap(),
            health_interval: Duration::from_millis(200),
            discovery: DiscoveryConfig::Etcd(EtcdConfig {
                endpoints: vec![self.etcd.url.clone()],
                lease_ttl: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
            }),
            ..SidecarConfig::default()
        };
        config.inbound.listen = "127.0.0.1:0".parse().unwrap();
        config.allow.insert("catalog".into(), vec!["edge".into()]);
        for service in services {
            let (cert, key) = self.issue(service, node);
            config.services.insert(
                (*service).into(),
                LocalService {
                    address: self.backends.get(node).map(|b| b.address),
                    outbound: "127.0.0.1:0".parse().unwrap(),
                    cert,
                    key,
                    weight: 1,
                },
            );
        }
        let stop = Shutdown::new();
        let sidecar = Sidecar::bind(config, &stop).await.unwrap();
        let outbound = services
            .iter()
            .map(|s| ((*s).to_owned(), sidecar.outbound_address(s).unwrap()))
            .collect();
        let (inbound, admin) = (sidecar.inbound_address(), sidecar.admin_address());
        tokio::spawn(sidecar.run(stop.clone()));
        self.nodes.insert(
            node.into(),
            Node {
                outbound,
                inbound,
                admin,
                stop,
            },
        );
    }

    fn outbound(&self, node: &str, service: &str) -> SocketAddr {
        self.nodes[node].outbound[service]
    }

    async fn endpoints(&self, node: &str) -> serde_json::Value {
        let admin = self.nodes[node].admin;
        let stream = TcpStream::connect(admin).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::get(format!("http://{admin}/endpoints"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let body = sender.send_request(request).await.unwrap().into_body();
        serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap()
    }

    async fn instances(&self, node: &str, service: &str) -> usize {
        self.endpoints(node)
            .await
            .get(service)
            .and_then(|rows| rows.as_array().map(Vec::len))
            .unwrap_or(0)
    }

    /// Waits up to `within` for `node`'s table to hold `count` instances of `service`; returns
    /// how long it took.
    async fn wait_for_instances_within(
        &self,
        node: &str,
        service: &str,
        count: usize,
        within: Duration,
    ) -> Duration {
        let started = tokio::time::Instant::now();
        while self.instances(node, service).await != count {
            assert!(
                started.elapsed() < within,
                "{node} never saw {count} instance(s) of {service}: {}",
                self.endpoints(node).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }

    async fn wait_for_instances(&self, node: &str, service: &str, count: usize) {
        self.wait_for_instances_within(node, service, count, Duration::from_secs(10))
            .await;
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for node in self.nodes.values() {
            node.stop.trigger();
        }
        for backend in self.backends.values() {
            backend.stop.trigger();
        }
    }
}

#[tokio::test]
async fn calls_are_balanced_over_mtls_and_carry_the_verified_caller() {
    let Some(mesh) = Mesh::start().await else {
        return;
    };
    let edge = mesh.outbound("node-a", "edge");
    let mut replicas = BTreeSet::new();
    for _ in 0..40 {
        let answer = call(edge, "catalog", GET, None).await;
        assert_eq!(answer.status, "0", "{answer:?}");
        let (replica, caller) = answer.text.split_once('|').unwrap();
        assert_eq!(caller, "edge");
        replicas.insert(replica.to_owned());
    }
    assert_eq!(replicas, BTreeSet::from(["node-b".into(), "node-c".into()]));

    let endpoints = mesh.endpoints("node-a").await;
    let row = &endpoints["catalog"][0];
    for field in ["instance", "address", "node", "ewma_ms", "in_flight"] {
        assert!(row.get(field).is_some(), "{field} missing in {row}");
    }

    // Unknown services and a missing authority are clear errors, not hangs.
    let answer = call(edge, "reviews", GET, None).await;
    assert_eq!(answer.status, "14", "{answer:?}");
    assert!(answer.text.contains("no endpoint of reviews"), "{answer:?}");
}

#[tokio::test]
async fn a_pair_not_on_the_allow_list_is_refused() {
    let Some(mesh) = Mesh::start().await else {
        return;
    };
    let answer = call(mesh.outbound("node-a", "orders"), "catalog", GET, None).await;
    assert_eq!(answer.status, "7", "{answer:?}");
    assert!(
        answer.text.contains("orders may not call catalog"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn the_callers_deadline_holds_in_the_mesh() {
    let Some(mesh) = Mesh::start().await else {
        return;
    };
    let started = std::time::Instant::now();
    let answer = call(
        mesh.outbound("node-a", "edge"),
        "catalog",
        "/shopmesh.catalog.v1.CatalogService/SearchProducts",
        Some("300m"),
    )
    .await;
    assert_eq!(answer.status, "4", "{answer:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
}

/// Connects to `inbound` as `catalog`'s caller with the given client configuration and makes
/// one call; returns whether it got an answer.
async fn reaches(inbound: SocketAddr, config: rustls::ClientConfig) -> bool {
    let Ok(tcp) = TcpStream::connect(inbound).await else {
        return false;
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("catalog").unwrap();
    let Ok(tls) = connector.connect(name, tcp).await else {
        return false;
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await
    else {
        return false;
    };
    tokio::spawn(connection);
    let request = Request::post(format!("http://catalog{GET}"))
        .header("content-type", "application/grpc")
        .body(Full::new(frame(b"")))
        .unwrap();
    matches!(
        tokio::time::timeout(Duration::from_secs(3), sender.send_request(request)).await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn callers_without_a_valid_mesh_certificate_are_refused() {
    let Some(mesh) = Mesh::start().await else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let inbound = mesh.nodes["node-b"].inbound;
    let anchor = TrustAnchor::load(&mesh.ca.join(identity::CA_CERT)).unwrap();
    let as_edge = |cert: &Path, key: &Path| {
        let key = Arc::new(ServiceKey::load(cert, key, ENV, "edge").unwrap());
        identity::client_config(&anchor, key).unwrap()
    };

    // The control: a current certificate from the mesh CA gets through.
    let (cert, key) = mesh.issue("edge", "node-x");
    assert!(reaches(inbound, as_edge(&cert, &key)).await);

    // From another CA.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca");
    identity::init_ca(&other, Duration::from_secs(86_400)).unwrap();
    let id = SpiffeId::new(ENV, "edge").unwrap();
    let forged = identity::issue(&other, &id, None, Duration::from_secs(3600), dir.path()).unwrap();
    assert!(!reaches(inbound, as_edge(&forged.cert, &forged.key)).await);

    // Expired.
    let expiring = identity::issue(
        &mesh.ca,
        &id,
        Some("old"),
        Duration::from_secs(1),
        dir.path(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(!reaches(inbound, as_edge(&expiring.cert, &expiring.key)).await);

    // None at all.
    let bare = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    let mut bare = bare;
    bare.alpn_protocols = vec![b"h2".to_vec()];
    assert!(!reaches(inbound, bare).await);
}

/// Accepts any server certificate: the test is about the server refusing the client.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Sends `rate` calls per second of `path` for `duration` from the edge, each on the shared
/// connection of the edge's outbound listener; returns the answers that were not OK.
async fn load(
    outbound: SocketAddr,
    path: &'static str,
    rate: u32,
    duration: Duration,
) -> Vec<Answer> {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut calls = tokio::task::JoinSet::new();
    let until = tokio::time::Instant::now() + duration;
    while tokio::time::Instant::now() < until {
        tick.tick().await;
        calls.spawn(call(outbound, "catalog", path, Some("2S")));
    }
    let mut failed = Vec::new();
    while let Some(answer) = calls.join_next().await {
        let answer = answer.unwrap();
        if answer.status != "0" {
            failed.push(answer);
        }
    }
    failed
}

#[tokio::test]
async fn a_replica_that_dies_under_load_costs_no_call_and_leaves_the_table() {
    let Some(mesh) = Mesh::start().await else {
        return;
    };
    let edge = mesh.outbound("node-a", "edge");
    let traffic = tokio::spawn(load(edge, GET, 200, Duration::from_secs(4)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    mesh.backends["node-c"].stop.trigger();
    let gone = mesh
        .wait_for_instances_within("node-a", "catalog", 1, Duration::from_secs(2))
        .await;
    let failed = traffic.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed calls: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    eprintln!("the dead replica left node-a's table after {gone:?}");
}

#[tokio::test]
async fn routing_goes_on_from_the_cache_while_etcd_is_down_and_registrations_catch_up() {
    let Some(mut mesh) = Mesh::start().await else {
        return;
    };
    let edge = mesh.outbound("node-a", "edge");
    mesh.etcd.stop();
    // A replica that starts during the outage cannot register yet.
    let replica = backend("node-d").await;
    mesh.backends.insert("node-d".into(), replica);
    mesh.node("node-d", &["catalog"]).await;
    let failed = load(edge, GET, 50, Duration::from_secs(60)).await;
    assert!(
        failed.is_empty(),
        "{} failed calls: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(mesh.instances("node-a", "catalog").await, 2);
    mesh.etcd.restart();
    mesh.wait_for_instances_within("node-a", "catalog", 3, Duration::from_secs(20))
        .await;
    assert!(call(edge, "catalog", GET, None).await.status == "0");
}

/// The certificate node-b's inbound side presents for catalog to a new connection, and that
/// connection (still open).
async fn served_certificate(
    inbound: SocketAddr,
    config: rustls::ClientConfig,
) -> (Vec<u8>, tokio_rustls::client::TlsStream<TcpStream>) {
    let tcp = TcpStream::connect(inbound).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("catalog").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (served, tls)
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_dropping_connections() {
    let Some(mesh) = Mesh::start().await else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let inbound = mesh.nodes["node-b"].inbound;
    let anchor = TrustAnchor::load(&mesh.ca.join(identity::CA_CERT)).unwrap();
    let (cert, key) = mesh.issue("edge", "node-x");
    let edge = Arc::new(ServiceKey::load(&cert, &key, ENV, "edge").unwrap());
    let config = || identity::client_config(&anchor, edge.clone()).unwrap();

    let edge_outbound = mesh.outbound("node-a", "edge");
    assert_eq!(call(edge_outbound, "catalog", GET, None).await.status, "0");
    let (before, _open) = served_certificate(inbound, config()).await;

    // Renew node-b's catalog certificate on disk, as `shopmesh ca issue` would.
    std::thread::sleep(Duration::from_millis(20));
    let (renewed, _) = mesh.issue("catalog", "node-b");
    let renewed = std::fs::read_to_string(renewed).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (served, _) = served_certificate(inbound, config()).await;
        if served != before {
            let pem = rustls_pki_types::pem::PemObject::from_pem_slice(renewed.as_bytes());
            let expected: rustls_pki_types::CertificateDer = pem.unwrap();
            assert_eq!(served, expected.to_vec());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Calls over the connections opened before go on.
    for _ in 0..10 {
        assert_eq!(call(edge_outbound, "catalog", GET, None).await.status, "0");
    }
}
