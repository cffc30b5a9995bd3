//! The sidecar's configuration: its node, the local services it fronts and speaks for, where
//! discovery comes from, who may call whom, and the limits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shopmesh_kit::telemetry::LogConfig;
use shopmesh_kit::{ConfigError, Validate};

use crate::balance::EjectionPolicy;
use crate::discovery::DiscoveryConfig;
use crate::endpoint::is_valid_name;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SidecarConfig {
    /// The environment every identity on this mesh names (`spiffe://shopmesh/<env>/<service>`).
    pub env: String,
    /// This node's name: the instance id of its registrations.
    pub node: String,
    pub zone: String,
    /// The mesh CA certificate every peer's chain must lead to.
    pub ca: PathBuf,
    pub inbound: InboundConfig,
    /// `/metrics`, `/healthz`, `/ready` and `/endpoints`.
    pub admin: SocketAddr,
    pub discovery: DiscoveryConfig,
    /// The services on this node, by name.
    pub services: BTreeMap<String, LocalService>,
    /// Which services may call each local service: `allow.catalog = ["edge", "orders"]`. A
    /// service with no entry accepts no caller.
    pub allow: BTreeMap<String, Vec<String>>,
    /// Calls each caller service may make into this node, per second, with bursts up to `burst`.
    pub caller_limit: RateLimit,
    /// The deadline of a call whose caller set none (`grpc-timeout`), up to its answer's headers.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    pub retries: RetryConfig,
    pub ejection: EjectionConfig,
    /// How often local services' gRPC health is checked.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    pub log: LogConfig,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            env: "dev".into(),
            node: "node-1".into(),
            zone: String::new(),
            ca: PathBuf::from("mesh-ca/ca.pem"),
            inbound: InboundConfig::default(),
            admin: SocketAddr::from(([127, 0, 0, 1], 15090)),
            discovery: DiscoveryConfig::default(),
            services: BTreeMap::new(),
            allow: BTreeMap::new(),
            caller_limit: RateLimit::default(),
            default_timeout: Duration::from_secs(30),
            retries: RetryConfig::default(),
            ejection: EjectionConfig::default(),
            health_interval: Duration::from_millis(500),
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct InboundConfig {
    /// Where peers' sidecars connect (mTLS only).
    pub listen: SocketAddr,
    /// The address registered for callers, when it differs from `listen` (e.g. `0.0.0.0`).
    pub advertise: Option<SocketAddr>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 15443)),
            advertise: None,
        }
    }
}

/// A service on this node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocalService {
    /// Its gRPC address, for inbound calls and health checks. None for a service that only
    /// calls out (the edge).
    #[serde(default)]
    pub address: Option<SocketAddr>,
    /// The loopback listener it sends its outbound calls to; calls arriving there are made with
    /// this service's identity.
    pub outbound: SocketAddr,
    /// Its certificate and key, issued by the mesh CA for this service.
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: 5_000,
            burst: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries per call at most, the first included. Calls are retried on another endpoint when
    /// they were never sent, or when the method is free of side effects
    /// (`idempotency_level` in its proto) and the endpoint failed.
    pub attempts: u32,
    /// Retries allowed as a share of calls.
    pub budget: f64,
    /// Retries allowed per second on top of the share.
    pub min_per_second: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            budget: 0.2,
            min_per_second: 10.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EjectionConfig {
    pub consecutive_failures: u32,
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        let policy = EjectionPolicy::default();
        Self {
            consecutive_failures: policy.failures,
            base: policy.base,
            max: policy.max,
        }
    }
}

impl From<EjectionConfig> for EjectionPolicy {
    fn from(config: EjectionConfig) -> Self {
        Self {
            failures: config.consecutive_failures,
            base: config.base,
            max: config.max,
        }
    }
}

impl SidecarConfig {
    /// Where callers reach this node's services.
    pub fn advertised(&self) -> SocketAddr {
        self.inbound.advertise.unwrap_or(self.inbound.listen)
    }
}

impl Validate for SidecarConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, name) in [("env", &self.env), ("node", &self.node)] {
            if !is_valid_name(name) {
                return Err(ConfigError::invalid(
                    key,
                    "lowercase letters, digits and dashes",
                ));
            }
        }
        self.discovery.validate()?;
        if self.services.is_empty() {
            return Err(ConfigError::invalid(
                "services",
                "list at least one local service",
            ));
        }
        let mut ports = std::collections::BTreeSet::new();
        for (name, service) in &self.services {
            if !is_valid_name(name) {
                return Err(ConfigError::invalid(
                    format!("services.{name}"),
                    "lowercase letters, digits and dashes",
                ));
            }
            if !service.outbound.ip().is_loopback() {
                return Err(ConfigError::invalid(
                    format!("services.{name}.outbound"),
                    "must be a loopback address: calls there are made with this service's identity",
                ));
            }
            if service.outbound.port() != 0 && !ports.insert(service.outbound) {
                return Err(ConfigError::invalid(
                    format!("services.{name}.outbound"),
                    "each service needs its own outbound listener",
                ));
            }
        }
        for (target, callers) in &self.allow {
            for caller in callers {
                if !is_valid_name(caller) {
                    return Err(ConfigError::invalid(
                        format!("allow.{target}"),
                        format!("{caller:?} is not a service name"),
                    ));
                }
            }
        }
        if self.retries.attempts == 0 || self.retries.attempts > 5 {
            return Err(ConfigError::invalid("retries.attempts", "between 1 and 5"));
        }
        if !(0.0..=1.0).contains(&self.retries.budget) {
            return Err(ConfigError::invalid(
                "retries.budget",
                "a share between 0 and 1",
            ));
        }
        if self.caller_limit.per_second == 0 || self.caller_limit.burst == 0 {
            return Err(ConfigError::invalid("caller_limit", "must be above 0"));
        }
        if self.ejection.consecutive_failures == 0 {
            return Err(ConfigError::invalid(
                "ejection.consecutive_failures",
                "must be above 0",
            ));
        }
        Ok(())
    }
}
