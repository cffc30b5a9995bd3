//! Where the instances of every service are. A source (etcd, DNS or a static list) keeps one
//! [`Table`] up to date; consumers read the latest table or wait for the next one. A source that
//! loses its backend keeps publishing nothing new, so the last good table stays in use.

pub mod dns;
pub mod etcd;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shopmesh_kit::ConfigError;
use shopmesh_kit::shutdown::Shutdown;
use tokio::sync::watch;

use crate::endpoint::{Endpoint, Table, is_valid_name};

pub use dns::DnsConfig;
pub use etcd::{EtcdConfig, Registrar};

/// Which source the table comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "source", rename_all = "lowercase", deny_unknown_fields)]
pub enum DiscoveryConfig {
    /// Registrations in etcd under `/shopmesh/v1/services/`, followed with a watch.
    Etcd(EtcdConfig),
    /// SRV (or A) records in a DNS zone, re-resolved periodically.
    Dns(DnsConfig),
    /// A fixed list: `services.<name>.<instance> = { address = "...", node = "..." }`.
    Static {
        #[serde(default)]
        services: BTreeMap<String, BTreeMap<String, Endpoint>>,
    },
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self::Etcd(EtcdConfig::default())
    }
}

impl DiscoveryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::Etcd(etcd) => etcd.validate(),
            Self::Dns(dns) => dns.validate(),
            Self::Static { services } => {
                for (service, instances) in services {
                    for instance in instances.keys() {
                        if !is_valid_name(service) || !is_valid_name(instance) {
                            return Err(ConfigError::invalid(
                                format!("discovery.services.{service}.{instance}"),
                                "names are lowercase letters, digits and dashes",
                            ));
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// The latest table of a running source.
#[derive(Debug, Clone)]
pub struct Discovery {
    table: watch::Receiver<Arc<Table>>,
}

impl Discovery {
    /// Starts following `config`'s source until `shutdown`.
    pub fn start(config: &DiscoveryConfig, shutdown: Shutdown) -> Self {
        match config {
            DiscoveryConfig::Etcd(etcd) => Self::from(etcd::follow(etcd.clone(), shutdown)),
            DiscoveryConfig::Dns(dns) => Self::from(dns::follow(dns.clone(), shutdown)),
            DiscoveryConfig::Static { services } => {
                let mut table = Table::new();
                for (service, instances) in services {
                    for (instance, endpoint) in instances {
                        table.insert(service, instance, endpoint.clone());
                    }
                }
                Self::fixed(table)
            }
        }
    }

    /// A table that never changes.
    pub fn fixed(table: Table) -> Self {
        // With its sender gone the channel reports no change, ever; the value stays readable.
        let (_, table) = watch::channel(Arc::new(table));
        Self { table }
    }

    pub fn table(&self) -> Arc<Table> {
        self.table.borrow().clone()
    }

    /// Waits until the table differs from the last one seen through this handle.
    pub async fn changed(&mut self) -> Arc<Table> {
        if self.table.changed().await.is_err() {
            // The source stopped (shutdown): the table stays as it is.
            std::future::pending::<()>().await;
        }
        self.table.borrow_and_update().clone()
    }
}

impl From<watch::Receiver<Arc<Table>>> for Discovery {
    fn from(table: watch::Receiver<Arc<Table>>) -> Self {
        Self { table }
    }
}
