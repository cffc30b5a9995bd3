//! The contract between a service and the process hosting it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use figment::Figment;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shopmesh_events::EventBus;
use shopmesh_kit::access::Authority;
use shopmesh_kit::crypto::MasterKey;
use shopmesh_kit::grpc::{self, PeerChannel};
use shopmesh_kit::token::Policy;
use shopmesh_kit::{ConfigError, Error, Secret, Shutdown, Validate};
use shopmesh_storage::cql::Cql;
use shopmesh_storage::sqlite::Sqlite;
use shopmesh_storage::{Migration, StorageConfig, StorageError};
use tokio_util::task::TaskTracker;

/// A shopmesh service: a name, its own configuration section, and a start function returning
/// its gRPC routes. Implemented once per service crate; listed once in the `shopmesh` CLI's
/// registry and given to its own `shopmesh-<service>` binary.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// Stable name: the config section `services.<name>`, the database file, the keyspace, the
    /// discovery name and the binary `shopmesh-<name>`.
    fn name(&self) -> &'static str;

    /// Extracts and validates this service's section; returns it rendered with secrets
    /// redacted, for `--check-config`.
    fn check_config(&self, section: &Figment) -> Result<String, ConfigError>;

    /// What the host serves for it: gRPC (the default) on a listener the host binds, or the
    /// service's own protocol (the edge's HTTP), which it serves itself.
    fn protocol(&self) -> Protocol {
        Protocol::Grpc
    }

    /// Opens what the service needs and says what to serve. Long-running work (consumers,
    /// relays, an own server) goes to [`ServiceContext::spawn`], which the host drains at
    /// shutdown.
    async fn start(&self, context: ServiceContext) -> anyhow::Result<Serve>;
}

/// See [`Service::protocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Own,
}

/// What a started service serves.
pub enum Serve {
    /// The host serves these routes on the service's listener, with health and access control.
    Grpc(tonic::service::Routes),
    /// The service serves its own protocol through [`ServiceContext::spawn`]; the host announces
    /// `url`.
    Own { url: String },
}

/// Extracts and validates a typed section, as [`Service::check_config`] and services use it.
pub fn section<T: DeserializeOwned + Validate>(section: &Figment) -> Result<T, ConfigError> {
    let config: T = section.extract().map_err(ConfigError::from)?;
    config.validate()?;
    Ok(config)
}

/// How the platform runs: decides what a service may do on its own when configuration is
/// missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `shopmesh up`: one process on a data directory; missing keys are generated there, and a
    /// first administrator is created.
    Embedded,
    /// `shopmesh-<service>` binaries: every key comes from configuration.
    Distributed,
}

/// What the host gives a starting service.
pub struct ServiceContext {
    pub name: &'static str,
    pub mode: Mode,
    pub(crate) section: Figment,
    pub data_dir: PathBuf,
    pub storage: StorageConfig,
    pub events: Arc<dyn EventBus>,
    pub peers: Peers,
    /// The `iss`, `aud` and leeway of access tokens.
    pub tokens: Policy,
    /// Turns access tokens into callers (auth's keys and role table), for a service that checks
    /// tokens itself outside the gRPC access layer (the edge).
    pub authority: Authority,
    pub shutdown: Shutdown,
    pub(crate) tasks: TaskTracker,
}

impl ServiceContext {
    /// This service's `services.<name>` section, typed and validated.
    pub fn config<T: DeserializeOwned + Validate + Serialize>(&self) -> Result<T, ConfigError> {
        section(&self.section)
    }

    /// The master key in setting `services.<name>.<setting>`. When it is empty, `shopmesh up`
    /// generates one into the data directory (kept across restarts); a distributed service
    /// refuses to start.
    pub fn master_key(&self, setting: &str, configured: &Secret) -> anyhow::Result<MasterKey> {
        let key = format!("services.{}.{setting}", self.name);
        if !configured.is_empty() {
            return Ok(MasterKey::from_secret(configured, &key)?);
        }
        match self.mode {
            Mode::Embedded => {
                let path = self
                    .data_dir
                    .join("keys")
                    .join(format!("{}.{setting}", self.name));
                MasterKey::load_or_create(&path)
                    .with_context(|| format!("cannot load or create {}", path.display()))
            }
            Mode::Distributed => anyhow::bail!(
                "{key} is required: at least {} random bytes, base64 (e.g. `openssl rand -base64 32`)",
                shopmesh_kit::crypto::MASTER_KEY_BYTES
            ),
        }
    }

    /// Opens this service's store on the configured backend and applies its migrations.
    pub async fn open_store(&self, migrations: &Migrations) -> Result<Store, StorageError> {
        Ok(match &self.storage {
            StorageConfig::Sqlite => Store::Sqlite(
                Sqlite::open(
                    self.data_dir.join(format!("{}.db", self.name)),
                    migrations.sqlite,
                )
                .await?,
            ),
            StorageConfig::Cql(cql) => {
                Store::Cql(Cql::connect(cql, &cql.keyspace(self.name), migrations.cql).await?)
            }
        })
    }

    /// Ends a tool's context: stops its background tasks (an outbox relay finishing its round)
    /// and waits for them, within the usual drain time.
    pub async fn finish(self) {
        self.shutdown.trigger();
        self.tasks.close();
        let _ =
            tokio::time::timeout(shopmesh_kit::shutdown::DEFAULT_DRAIN, self.tasks.wait()).await;
    }

    /// Runs `task` in the background until it ends; the host waits for it when draining.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }
}

/// A service's schema, once per backend.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    pub sqlite: &'static [Migration],
    pub cql: &'static [Migration],
}

/// A service's opened store.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(Sqlite),
    Cql(Cql),
}

/// Where peer services are reached: their own address (services in this process, and static
/// `peers` entries), or else the node's mesh sidecar, which finds them by name.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    addresses: Arc<BTreeMap<String, String>>,
    mesh: Option<Arc<str>>,
}

impl Peers {
    pub fn new(addresses: BTreeMap<String, String>, mesh: Option<String>) -> Self {
        Self {
            addresses: Arc::new(addresses),
            mesh: mesh.map(Into::into),
        }
    }

    /// The URL calls to `service` are sent to.
    pub fn address(&self, service: &str) -> Option<&str> {
        self.addresses
            .get(service)
            .map(String::as_str)
            .or(self.mesh.as_deref())
    }

    /// A lazily connected channel to `service`, carrying the request context.
    pub fn channel(&self, service: &str) -> Result<PeerChannel, Error> {
        let address = self.address(service).ok_or_else(|| {
            Error::unavailable(
                "PEER_UNKNOWN",
                format!("no address configured for service {service}"),
            )
        })?;
        grpc::connect(address, service).map_err(|e| Error::internal("invalid peer address", e))
    }
}
