//! Which event backend a process uses.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shopmesh_kit::ConfigError;

use crate::log::EmbeddedLog;
use crate::pulsar::PulsarBus;
use crate::{EventBus, EventError};

/// `backend = "embedded"` (a log file in the data dir) or `backend = "pulsar"`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum EventsConfig {
    #[default]
    Embedded,
    Pulsar(PulsarConfig),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PulsarConfig {
    /// Broker service URL.
    pub url: String,
    /// `tenant/namespace` holding shopmesh's topics.
    pub namespace: String,
}

impl Default for PulsarConfig {
    fn default() -> Self {
        Self {
            url: "pulsar://127.0.0.1:6650".to_owned(),
            namespace: "public/default".to_owned(),
        }
    }
}

/// File name of the embedded log inside the data dir.
pub const EMBEDDED_FILE: &str = "events.db";

impl EventsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Self::Pulsar(pulsar) = self {
            if !(pulsar.url.starts_with("pulsar://") || pulsar.url.starts_with("pulsar+ssl://")) {
                return Err(ConfigError::invalid(
                    "events.url",
                    "must start with pulsar:// or pulsar+ssl://",
                ));
            }
            let parts: Vec<&str> = pulsar.namespace.split('/').collect();
            if parts.len() != 2 || !parts.iter().all(|part| crate::valid_name(part)) {
                return Err(ConfigError::invalid(
                    "events.namespace",
                    "must be `tenant/namespace`",
                ));
            }
        }
        Ok(())
    }

    /// Opens the configured backend; the embedded log lives in `data_dir`.
    pub async fn connect(&self, data_dir: &Path) -> Result<Arc<dyn EventBus>, EventError> {
        Ok(match self {
            Self::Embedded => Arc::new(EmbeddedLog::open(data_dir.join(EMBEDDED_FILE)).await?),
            Self::Pulsar(pulsar) => {
                Arc::new(PulsarBus::connect(&pulsar.url, &pulsar.namespace).await?)
            }
        })
    }
}
