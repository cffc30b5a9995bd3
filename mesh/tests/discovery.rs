//! Discovery against the test bed's etcd: registrations appear in every follower's table,
//! withdraw on deregistration and on shutdown (the lease is revoked), and a follower keeps its
//! table through its own restarts.

use std::time::Duration;

use shopmesh_kit::shutdown::Shutdown;
use shopmesh_mesh::Endpoint;
use shopmesh_mesh::discovery::{Discovery, DiscoveryConfig, EtcdConfig, Registrar};
use shopmesh_testkit::testbed;

fn etcd() -> Option<EtcdConfig> {
    let url = testbed::address("SHOPMESH_TEST_ETCD", "etcd")?;
    Some(EtcdConfig {
        endpoints: vec![url],
        lease_ttl: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
    })
}

/// A service name no other test uses, so tests can share one etcd.
fn unique_service() -> String {
    format!("t{}", uuid_like())
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

fn endpoint(port: u16, node: &str) -> Endpoint {
    Endpoint {
        address: format!("127.0.0.2:{port}").parse().unwrap(),
        node: node.into(),
        zone: "z1".into(),
        weight: 1,
        version: "test".into(),
        started_at: 1,
    }
}

/// Waits until the table's instances of `service` satisfy `ready`, or fails after 5 s.
async fn wait_for(discovery: &mut Discovery, service: &str, ready: impl Fn(usize) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if ready(discovery.table().instances(service).len()) {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "table never reached the expected state: {:?}",
            discovery.table()
        );
        let _ = tokio::time::timeout(left, discovery.changed()).await;
    }
}

#[tokio::test]
async fn registrations_come_and_go_in_every_follower() {
    let Some(etcd) = etcd() else { return };
    let service = unique_service();
    let shutdown = Shutdown::new();
    let mut follower = Discovery::start(&DiscoveryConfig::Etcd(etcd.clone()), shutdown.clone());

    let node_a = Shutdown::new();
    let (a, a_task) = Registrar::start(etcd.clone(), node_a.clone());
    let node_b = Shutdown::new();
    let (b, _b_task) = Registrar::start(etcd.clone(), node_b.clone());
    a.register(&service, "node-a", &endpoint(1001, "node-a"));
    b.register(&service, "node-b", &endpoint(1002, "node-b"));
    wait_for(&mut follower, &service, |n| n == 2).await;
    let listed = follower.table().instances(&service);
    assert_eq!(listed[0].id, "node-a");
    assert_eq!(listed[0].endpoint, endpoint(1001, "node-a"));

    // A follower started now lists what is there already.
    let late = Discovery::start(&DiscoveryConfig::Etcd(etcd.clone()), shutdown.clone());
    let mut late = late;
    wait_for(&mut late, &service, |n| n == 2).await;

    b.deregister(&service, "node-b");
    wait_for(&mut follower, &service, |n| n == 1).await;

    // Shutting a node down revokes its lease: its registrations leave at once, not after the TTL.
    let stopped = tokio::time::Instant::now();
    node_a.trigger();
    a_task.await.unwrap();
    wait_for(&mut follower, &service, |n| n == 0).await;
    assert!(stopped.elapsed() < Duration::from_secs(3));
    node_b.trigger();
    shutdown.trigger();
}

#[tokio::test]
async fn a_registration_written_while_etcd_is_unreachable_lands_when_it_returns() {
    let Some(etcd) = etcd() else { return };
    let service = unique_service();
    // A registrar pointed at nothing keeps its wish list and retries; the follower on the real
    // etcd sees nothing meanwhile.
    let shutdown = Shutdown::new();
    let unreachable = EtcdConfig {
        endpoints: vec!["http://127.0.0.1:9".into()],
        ..etcd.clone()
    };
    let (lost, _task) = Registrar::start(unreachable, shutdown.clone());
    lost.register(&service, "node-x", &endpoint(1003, "node-x"));
    let mut follower = Discovery::start(&DiscoveryConfig::Etcd(etcd.clone()), shutdown.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(follower.table().instances(&service).is_empty());

    let (found, _task) = Registrar::start(etcd, shutdown.clone());
    found.register(&service, "node-y", &endpoint(1004, "node-y"));
    wait_for(&mut follower, &service, |n| n == 1).await;
    shutdown.trigger();
}

#[tokio::test]
async fn a_follower_of_an_unreachable_etcd_keeps_an_empty_table_and_does_not_fail() {
    let shutdown = Shutdown::new();
    let config = DiscoveryConfig::Etcd(EtcdConfig {
        endpoints: vec!["http://127.0.0.1:9".into()],
        ..EtcdConfig::default()
    });
    let follower = Discovery::start(&config, shutdown.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(follower.table().is_empty());
    shutdown.trigger();
}

/// A dnsmasq of this test's own, answering for `mesh.test` only.
struct Dnsmasq(std::process::Child, std::net::SocketAddr);

impl Dnsmasq {
    fn start(records: &[String]) -> Self {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let program = ["dnsmasq", "/usr/sbin/dnsmasq"]
            .into_iter()
            .find(|p| {
                std::process::Command::new(p)
                    .arg("--version")
                    .output()
                    .is_ok()
            })
            .expect("dnsmasq (the test bed installs it with etcd)");
        let child = std::process::Command::new(program)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
            ])
            .args(["--listen-address=127.0.0.1", "--user=root", "--pid-file="])
            // Authoritative for the test zone: unknown names are NXDOMAIN, not refused.
            .arg("--local=/mesh.test/")
            .arg(format!("--port={port}"))
            .args(records)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self(child, format!("127.0.0.1:{port}").parse().unwrap())
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn dns_discovery_reads_srv_records_and_falls_back_to_a_records() {
    // dnsmasq comes with the test bed's etcd.
    if testbed::address("SHOPMESH_TEST_ETCD", "etcd").is_none() {
        return;
    }
    let dns = Dnsmasq::start(&[
        "--srv-host=_catalog._tcp.mesh.test,cat-a.mesh.test,15443,0,5".into(),
        "--srv-host=_catalog._tcp.mesh.test,cat-b.mesh.test,15444,0,1".into(),
        "--host-record=cat-a.mesh.test,127.0.0.3".into(),
        "--host-record=cat-b.mesh.test,127.0.0.4".into(),
        "--host-record=auth.mesh.test,127.0.0.5".into(),
    ]);
    let shutdown = Shutdown::new();
    let config = DiscoveryConfig::Dns(shopmesh_mesh::discovery::DnsConfig {
        domain: "mesh.test".into(),
        nameserver: Some(dns.1),
        port: 15443,
        services: vec!["catalog".into(), "auth".into(), "orders".into()],
        refresh: Duration::from_millis(200),
    });
    config.validate().unwrap();
    let mut discovery = Discovery::start(&config, shutdown.clone());
    wait_for(&mut discovery, "catalog", |n| n == 2).await;
    wait_for(&mut discovery, "auth", |n| n == 1).await;
    let table = discovery.table();
    let catalog = table.instances("catalog");
    let addresses: Vec<String> = catalog
        .iter()
        .map(|i| i.endpoint.address.to_string())
        .collect();
    assert_eq!(addresses, ["127.0.0.3:15443", "127.0.0.4:15444"]);
    assert_eq!(catalog[0].endpoint.weight, 5);
    assert_eq!(catalog[0].endpoint.node, "cat-a.mesh.test");
    assert_eq!(
        table.instances("auth")[0].endpoint.address.to_string(),
        "127.0.0.5:15443"
    );
    assert!(table.instances("orders").is_empty());

    // The server going away keeps the last answer.
    drop(dns);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(discovery.table().instances("catalog").len(), 2);
    shutdown.trigger();
}
