//! The `services.orders` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shopmesh_kit::{ConfigError, Secret, Validate};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct OrdersConfig {
    /// Master key (base64, 32+ bytes) sealing shipping addresses at rest. Required in
    /// distributed mode; `shopmesh up` generates one into its data directory.
    pub data_key: Secret,
    /// How often an order stream looks for changes made by another replica; changes made by
    /// this one arrive at once.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// Deliveries of a saga event before it goes to the dead-letter topic.
    pub max_attempts: u32,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            data_key: Secret::default(),
            watch_interval: Duration::from_secs(1),
            max_attempts: 8,
        }
    }
}

impl Validate for OrdersConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(Duration::from_millis(50)..=Duration::from_secs(60)).contains(&self.watch_interval) {
            return Err(ConfigError::invalid(
                "watch_interval",
                "must be between 50ms and 60s",
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(ConfigError::invalid("max_attempts", "must be 1 to 100"));
        }
        Ok(())
    }
}
