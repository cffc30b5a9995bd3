//! The configuration of a hosting process, shared by `shopmesh up` and every `shopmesh-<service>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shopmesh_events::EventsConfig;
use shopmesh_kit::telemetry::LogConfig;
use shopmesh_kit::{ConfigError, Validate};
use shopmesh_storage::StorageConfig;

/// Everything a process needs besides each service's own `services.<name>` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformConfig {
    /// Where embedded data lives: one SQLite file per service, the event log, generated keys.
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub storage: StorageConfig,
    pub events: EventsConfig,
    /// gRPC listen address per service; a service without one gets a free loopback port.
    pub listen: BTreeMap<String, SocketAddr>,
    /// Where peer services run that this process does not host (static discovery), as
    /// `http://host:port`.
    pub peers: BTreeMap<String, String>,
    /// Per-service settings, read by each service itself (and validated by it at start-up).
    #[serde(skip_serializing)]
    pub services: BTreeMap<String, figment::value::Dict>,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("shopmesh-data"),
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            storage: StorageConfig::default(),
            events: EventsConfig::default(),
            listen: BTreeMap::new(),
            peers: BTreeMap::new(),
            services: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9900)),
        }
    }
}

impl Validate for PlatformConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data_dir", "must not be empty"));
        }
        if let StorageConfig::Cql(cql) = &self.storage {
            cql.validate()?;
        }
        self.events.validate()?;
        for (service, url) in &self.peers {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    format!("peers.{service}"),
                    "must be an http:// or https:// URL",
                ));
            }
        }
        Ok(())
    }
}
