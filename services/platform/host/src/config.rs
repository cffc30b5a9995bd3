//! The configuration of a hosting process, shared by `shopmesh up` and every `shopmesh-<service>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shopmesh_events::EventsConfig;
use shopmesh_kit::telemetry::LogConfig;
use shopmesh_kit::token::Policy;
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
    /// The outbound listener the node's mesh sidecar keeps for this process's service, e.g.
    /// `http://127.0.0.1:15001`: peers not hosted here and not in `peers` are called through it.
    pub mesh: Option<String>,
    /// What access tokens say and every service checks.
    pub tokens: TokenConfig,
    /// Addresses besides loopback allowed to call internal methods: the hosts of peer
    /// services, in a deployment without a mesh sidecar in front of each service.
    pub trusted_peers: Vec<std::net::IpAddr>,
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
            mesh: None,
            tokens: TokenConfig::default(),
            trusted_peers: Vec::new(),
            services: BTreeMap::new(),
        }
    }
}

/// The `iss` and `aud` of access tokens: auth writes them, every verifier requires them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: "shopmesh".into(),
            audience: "shopmesh".into(),
            leeway: Duration::from_secs(30),
        }
    }
}

impl TokenConfig {
    pub fn policy(&self) -> Policy {
        Policy {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway: self.leeway,
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
        if self.tokens.issuer.is_empty() || self.tokens.audience.is_empty() {
            return Err(ConfigError::invalid(
                "tokens",
                "issuer and audience must not be empty",
            ));
        }
        if let Some(url) = &self.mesh
            && !url.starts_with("http://")
        {
            return Err(ConfigError::invalid(
                "mesh",
                "must be an http:// URL (the sidecar's loopback listener)",
            ));
        }
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
