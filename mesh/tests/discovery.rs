//! Discovery against the test bed's etcd: registrations appear in every follower's table,
//! withdraw on deregistration and on shutdown (the lease is revoked), and a follower keeps its
//! table through its own restarts.

use std::time::Duration;

use shopmesh_kit::shutdown::Shutdown;
use shopmesh_kit::testbed;
use shopmesh_mesh::Endpoint;
use shopmesh_mesh::discovery::{Discovery, DiscoveryConfig, EtcdConfig, Registrar};

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
