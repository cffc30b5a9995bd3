//! The `services.users` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shopmesh_kit::{ConfigError, Secret, Validate};

/// The bcrypt costs the `bcrypt` crate accepts.
const MIN_COST: u32 = 4;
const MAX_COST: u32 = 31;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct UsersConfig {
    /// bcrypt cost of new password hashes (each step doubles the work); 12 by default.
    pub bcrypt_cost: u32,
    /// How many hashes are computed at once; more wait their turn. 0 means one per core.
    pub hashing_concurrency: usize,
    /// Master key (base64, 32+ bytes) sealing personal data and keying the e-mail index.
    /// Required in distributed mode; `shopmesh up` generates one into its data directory.
    pub data_key: Secret,
    pub throttle: ThrottleConfig,
    /// The administrator `shopmesh up` creates on first start.
    pub first_admin_email: String,
}

impl Default for UsersConfig {
    fn default() -> Self {
        Self {
            bcrypt_cost: bcrypt::DEFAULT_COST,
            hashing_concurrency: 0,
            data_key: Secret::default(),
            throttle: ThrottleConfig::default(),
            first_admin_email: "admin@shopmesh.local".into(),
        }
    }
}

/// Per-account login throttling: once `free_failures` attempts in a row have failed, the
/// account's logins are blocked for `base_delay`, and each further failure doubles the block,
/// up to `max_delay`. A success, or a day without attempts, starts the count again.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    pub free_failures: u32,
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            free_failures: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15 * 60),
        }
    }
}

impl ThrottleConfig {
    /// How long an account stays blocked after its `failures`-th failure in a row.
    pub fn delay_after(&self, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.free_failures)?;
        let factor = 2u32.checked_pow(over).unwrap_or(u32::MAX);
        Some(self.base_delay.saturating_mul(factor).min(self.max_delay))
    }
}

impl Validate for UsersConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_COST..=MAX_COST).contains(&self.bcrypt_cost) {
            return Err(ConfigError::invalid(
                "bcrypt_cost",
                format!("must be between {MIN_COST} and {MAX_COST}"),
            ));
        }
        if self.throttle.max_delay < self.throttle.base_delay {
            return Err(ConfigError::invalid(
                "throttle.max_delay",
                "must not be shorter than throttle.base_delay",
            ));
        }
        if !self.first_admin_email.contains('@') {
            return Err(ConfigError::invalid(
                "first_admin_email",
                "must be an e-mail address",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_starts_after_the_free_failures_and_doubles_to_a_ceiling() {
        let throttle = ThrottleConfig::default();
        assert_eq!(throttle.delay_after(4), None);
        assert_eq!(throttle.delay_after(5), Some(Duration::from_secs(1)));
        assert_eq!(throttle.delay_after(7), Some(Duration::from_secs(4)));
        assert_eq!(throttle.delay_after(40), Some(Duration::from_secs(15 * 60)));
    }
}
