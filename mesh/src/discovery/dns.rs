//! DNS as the discovery backend, for platforms that publish services in DNS (Kubernetes
//! headless services, Consul, a zone an operator maintains): each service's SRV records
//! `_<service>._tcp.<domain>`, or without them its A records `<service>.<domain>` on a fixed
//! port, re-resolved every `refresh`. Registration is the DNS owner's job, not the sidecar's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use serde::{Deserialize, Serialize};
use shopmesh_kit::ConfigError;
use shopmesh_kit::shutdown::Shutdown;
use tokio::sync::watch;

use crate::endpoint::{Endpoint, Table, is_valid_name};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// The zone services are published in, e.g. `mesh.example.com`.
    pub domain: String,
    /// The DNS server to ask; the system's resolvers (`/etc/resolv.conf`) without one.
    pub nameserver: Option<SocketAddr>,
    /// The port of endpoints found through A records (SRV records carry their own).
    pub port: u16,
    /// The services to look up; every shopmesh service by default.
    pub services: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            domain: String::new(),
            nameserver: None,
            port: 15443,
            services: shopmesh_services(),
            refresh: Duration::from_secs(5),
        }
    }
}

/// The services the protos define (`shopmesh.<service>.v1`).
fn shopmesh_services() -> Vec<String> {
    let mut services: Vec<String> = shopmesh_proto::validate::descriptors()
        .services()
        .filter_map(|service| {
            let mut parts = service.package_name().split('.');
            match (parts.next(), parts.next()) {
                (Some("shopmesh"), Some(name)) => Some(name.to_owned()),
                _ => None,
            }
        })
        .collect();
    services.sort();
    services.dedup();
    services
}

impl DnsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.domain.trim().is_empty() {
            return Err(ConfigError::invalid(
                "discovery.domain",
                "name the zone services are published in",
            ));
        }
        if let Some(bad) = self.services.iter().find(|s| !is_valid_name(s)) {
            return Err(ConfigError::invalid(
                "discovery.services",
                format!("{bad:?} is not a service name"),
            ));
        }
        if self.refresh < Duration::from_millis(100) {
            return Err(ConfigError::invalid("discovery.refresh", "at least 100ms"));
        }
        Ok(())
    }

    fn resolver(&self) -> Result<TokioResolver, hickory_resolver::net::NetError> {
        let builder = match self.nameserver {
            Some(server) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                let mut nameserver = NameServerConfig::udp_and_tcp(server.ip());
                nameserver.connections = vec![udp, tcp];
                Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![nameserver]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => Resolver::builder_tokio()?,
        };
        builder.build()
    }
}

/// Resolves every service every `refresh` until `shutdown`. A service whose lookup fails (the
/// server unreachable, as opposed to "no such name") keeps its last instances.
pub fn follow(config: DnsConfig, shutdown: Shutdown) -> watch::Receiver<Arc<Table>> {
    let (sender, receiver) = watch::channel(Arc::new(Table::new()));
    tokio::spawn(async move {
        let resolver = match config.resolver() {
            Ok(resolver) => resolver,
            Err(error) => {
                tracing::error!(%error, "cannot set up DNS discovery");
                return;
            }
        };
        let mut tick = tokio::time::interval(config.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.wait() => return,
            }
            let mut table = (**sender.borrow()).clone();
            for service in &config.services {
                match resolve(&resolver, &config, service).await {
                    Ok(instances) => {
                        table.replace(service, instances);
                    }
                    Err(error) => {
                        tracing::warn!(service, %error, "DNS lookup failed; keeping the last answer");
                        metrics::counter!("shopmesh_mesh_discovery_errors_total").increment(1);
                    }
                }
            }
            sender.send_if_modified(|current| {
                let changed = **current != table;
                if changed {
                    *current = Arc::new(table);
                }
                changed
            });
        }
    });
    receiver
}

/// The instances of one service: from SRV records if it has any, else from A records.
async fn resolve(
    resolver: &TokioResolver,
    config: &DnsConfig,
    service: &str,
) -> Result<Vec<(String, Endpoint)>, hickory_resolver::net::NetError> {
    let domain = config.domain.trim_end_matches('.');
    let srv = format!("_{service}._tcp.{domain}.");
    let mut instances = Vec::new();
    match resolver.srv_lookup(srv.as_str()).await {
        Ok(found) => {
            for record in found.answers() {
                let RData::SRV(srv) = &record.data else {
                    continue;
                };
                let target = srv.target.to_utf8();
                let host = target.trim_end_matches('.').to_owned();
                for ip in addresses(resolver, &target).await? {
                    instances.push((
                        format!("{host}:{}", srv.port),
                        endpoint(SocketAddr::new(ip, srv.port), &host, srv.weight.max(1)),
                    ));
                }
            }
            return Ok(instances);
        }
        Err(error) if !error.is_no_records_found() => return Err(error),
        Err(_) => {}
    }
    let host = format!("{service}.{domain}.");
    for ip in addresses(resolver, &host).await? {
        instances.push((
            ip.to_string(),
            endpoint(SocketAddr::new(ip, config.port), &ip.to_string(), 1),
        ));
    }
    Ok(instances)
}

/// The addresses of `host`; none when the name does not exist.
async fn addresses(
    resolver: &TokioResolver,
    host: &str,
) -> Result<Vec<IpAddr>, hickory_resolver::net::NetError> {
    match resolver.lookup_ip(host).await {
        Ok(found) => Ok(found.iter().collect()),
        Err(error) if error.is_no_records_found() => Ok(Vec::new()),
        Err(error) => Err(error),
    }
}

fn endpoint(address: SocketAddr, node: &str, weight: u16) -> Endpoint {
    Endpoint {
        address,
        node: node.to_owned(),
        zone: String::new(),
        weight: u32::from(weight),
        version: String::new(),
        started_at: 0,
    }
}
