//! The `services.catalog` section.

use serde::{Deserialize, Serialize};
use shopmesh_kit::{ConfigError, Validate};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// The locale of products' own title and description, and the fallback of every read.
    pub default_locale: String,
    /// This replica's name: its subscription to product events is `catalog-<replica>`. Give
    /// each replica its own (e.g. the host name); the default suits one replica.
    pub replica: String,
    /// Whether `shopmesh up` seeds the demo catalog into an empty store.
    pub demo_catalog: bool,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            default_locale: "en".into(),
            replica: "main".into(),
            demo_catalog: true,
        }
    }
}

impl Validate for CatalogConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let valid = (2..=3).contains(&self.default_locale.len())
            && self.default_locale.bytes().all(|b| b.is_ascii_lowercase());
        let replica_valid = !self.replica.is_empty()
            && self.replica.len() <= 64
            && self
                .replica
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !replica_valid {
            return Err(ConfigError::invalid(
                "replica",
                "must be 1 to 64 letters, digits, `-` or `_`",
            ));
        }
        if valid {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                "default_locale",
                "must be a two- or three-letter language code such as \"en\"",
            ))
        }
    }
}
