//! The `services.auth` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shopmesh_kit::{ConfigError, Secret, Validate};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of an access token.
    #[serde(with = "humantime_serde")]
    pub access_ttl: Duration,
    /// Lifetime of a refresh token (each refresh issues a new one).
    #[serde(with = "humantime_serde")]
    pub refresh_ttl: Duration,
    /// How often the signing keys are re-read, to pick up rotations made elsewhere.
    #[serde(with = "humantime_serde")]
    pub key_reload: Duration,
    /// How long a new signing key is published before it signs: at least `key_reload` plus
    /// the verifiers' 5 s refetch floor, so every auth replica and verifier knows it first.
    #[serde(with = "humantime_serde")]
    pub key_activation: Duration,
    /// Master key (base64, 32+ bytes) sealing the private signing keys at rest. Required in
    /// distributed mode; `shopmesh up` generates one into its data directory.
    pub data_key: Secret,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            key_reload: Duration::from_secs(30),
            key_activation: Duration::from_secs(60),
            data_key: Secret::default(),
        }
    }
}

impl Validate for AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(Duration::from_secs(30)..=Duration::from_secs(24 * 3600)).contains(&self.access_ttl) {
            return Err(ConfigError::invalid(
                "access_ttl",
                "must be between 30s and 24h",
            ));
        }
        if self.refresh_ttl <= self.access_ttl {
            return Err(ConfigError::invalid(
                "refresh_ttl",
                "must be longer than access_ttl",
            ));
        }
        if self.key_reload.is_zero() {
            return Err(ConfigError::invalid("key_reload", "must be positive"));
        }
        // Every replica must have reloaded, and every verifier be free to fetch keys again,
        // before the first token signed by a new key arrives.
        let shortest = self.key_reload + shopmesh_kit::token::DEFAULT_REFETCH_FLOOR;
        if self.key_activation < shortest {
            return Err(ConfigError::invalid(
                "key_activation",
                format!(
                    "must be at least key_reload plus the verifiers' {}s refetch floor ({}s here)",
                    shopmesh_kit::token::DEFAULT_REFETCH_FLOOR.as_secs(),
                    shortest.as_secs_f32()
                ),
            ));
        }
        Ok(())
    }
}
