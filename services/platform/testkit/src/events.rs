//! Buses for tests: a fresh embedded log, or the test bed's Pulsar broker (see
//! [`crate::testbed`] for when engine tests run, skip or fail).

use std::path::PathBuf;
use std::sync::Arc;

use shopmesh_events::log::EmbeddedLog;
use shopmesh_events::pulsar::PulsarBus;
use shopmesh_events::{EventBus, EventError};

/// Variable naming the test bed's broker (`pulsar://127.0.0.1:6650`).
pub const PULSAR_VARIABLE: &str = "SHOPMESH_TEST_PULSAR";

/// A bus under test that can be reconnected, to check that subscriptions survive a restart.
pub enum TestBus {
    Embedded {
        path: PathBuf,
        _dir: tempfile::TempDir,
    },
    Pulsar {
        url: String,
    },
}

impl TestBus {
    /// A fresh embedded log in a temporary directory.
    pub fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("create temporary directory");
        Self::Embedded {
            path: dir.path().join("events.db"),
            _dir: dir,
        }
    }

    /// The test bed's broker, or `None` when a local run has no bed.
    pub fn pulsar() -> Option<Self> {
        crate::testbed::address(PULSAR_VARIABLE, "pulsar").map(|url| Self::Pulsar { url })
    }

    /// A new connection, as a restarted process would open.
    pub async fn connect(&self) -> Result<Arc<dyn EventBus>, EventError> {
        Ok(match self {
            Self::Embedded { path, .. } => Arc::new(EmbeddedLog::open(path).await?),
            Self::Pulsar { url } => Arc::new(PulsarBus::connect(url, "public/default").await?),
        })
    }
}

/// A topic name no other test uses, so tests share one broker safely.
pub fn unique_topic(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
