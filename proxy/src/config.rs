//! The `services.edge` section.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shopmesh_kit::{ConfigError, Validate};

use crate::limits::LimitsConfig;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Where clients connect: HTTP/1.1, and HTTP/2 with prior knowledge (gRPC clients). Port 0
    /// picks a free port (tests).
    pub listen: SocketAddr,
    /// Largest accepted request body; larger ones get `413`.
    pub max_body_bytes: usize,
    /// How long a request may wait for its service.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub limits: LimitsConfig,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            timeout: Duration::from_secs(15),
            limits: LimitsConfig::default(),
        }
    }
}

impl Validate for EdgeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(ConfigError::invalid(
                "max_body_bytes",
                "must be between 1 byte and 64 MiB",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::invalid("timeout", "must be positive"));
        }
        self.limits.validate()?;
        Ok(())
    }
}
