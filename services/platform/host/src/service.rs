//! The contract between a service and the process hosting it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use figment::Figment;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shopmesh_kit::access::Authority;
use shopmesh_kit::crypto::MasterKey;
use shopmesh_kit::grpc::{self, PeerChannel};
use shopmesh_kit::token::Policy;
use shopmesh_kit::{ConfigError, Error, Secret, Validate, config::render};
use shopmesh_storage::StorageConfig;
use shopmesh_storage::cql::Cql;
use shopmesh_storage::sqlite::Sqlite;

use crate::manifest::{Manifest, Protocol};
use crate::runtime::{Repository, Runtime, Store, Waker};

/// A shopmesh service: its [`Manifest`], its configuration section, and how it starts.
/// Implemented once per service crate; listed once, in the `shopmesh` CLI's registry, and given
/// to its own `shopmesh-<service>` binary.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// What `up`, `cluster up` and the mesh derive from.
    const MANIFEST: Manifest;

    /// Its `services.<name>` section, validated before anything starts.
    type Config: DeserializeOwned + Serialize + Validate + Send;

    /// Opens what the service needs and says what to serve. Long-running work goes to the
    /// context's [`Runtime`], which the host drains at shutdown.
    async fn start(&self, context: ServiceContext, config: Self::Config) -> anyhow::Result<Serve>;
}

/// A service as the host holds it, whatever its configuration type: implemented for every
/// [`Service`].
#[async_trait]
pub trait Hosted: Send + Sync + 'static {
    fn manifest(&self) -> Manifest;

    /// Extracts and validates the service's section; returns it rendered with secrets
    /// redacted, for `--check-config`.
    fn check_config(&self, section: &Figment) -> Result<String, ConfigError>;

    async fn start(&self, context: ServiceContext) -> anyhow::Result<Serve>;

    fn name(&self) -> &'static str {
        self.manifest().name
    }
}

#[async_trait]
impl<S: Service> Hosted for S {
    fn manifest(&self) -> Manifest {
        S::MANIFEST
    }

    fn check_config(&self, section: &Figment) -> Result<String, ConfigError> {
        Ok(render(&self::section::<S::Config>(section)?))
    }

    async fn start(&self, context: ServiceContext) -> anyhow::Result<Serve> {
        let config = context.config::<S::Config>()?;
        Service::start(self, context, config).await
    }
}

/// What a started service serves (see [`Protocol`]).
pub enum Serve {
    /// The host serves these routes on the service's listener, with health and access control.
    Grpc(tonic::service::Routes),
    /// The service serves its own protocol from its runtime; the host announces `url`.
    Own { url: String },
}

impl Serve {
    /// One gRPC service's routes.
    pub fn grpc<S>(service: S) -> Self
    where
        S: tonic::codegen::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Self::Grpc(tonic::service::Routes::new(service))
    }
}

/// Extracts and validates a typed section.
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
    /// The bus, shutdown and background tasks.
    pub runtime: Runtime,
    pub peers: Peers,
    /// The `iss`, `aud` and leeway of access tokens.
    pub tokens: Policy,
    /// Turns access tokens into callers (auth's keys and role table), for a service that checks
    /// tokens itself outside the gRPC access layer (the edge).
    pub authority: Authority,
}

impl ServiceContext {
    /// This service's `services.<name>` section, typed and validated.
    pub fn config<T: DeserializeOwned + Validate>(&self) -> Result<T, ConfigError> {
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

    /// Opens this service's database on the configured backend with `R`'s migrations applied.
    pub async fn open_store<R: Repository + ?Sized>(&self) -> anyhow::Result<Store> {
        Ok(match &self.storage {
            StorageConfig::Sqlite => Store::Sqlite(
                Sqlite::open(self.data_dir.join(format!("{}.db", self.name)), R::SQLITE).await?,
            ),
            StorageConfig::Cql(cql) => {
                Store::Cql(Cql::connect(cql, &cql.keyspace(self.name), R::CQL).await?)
            }
        })
    }

    /// Opens this service's repository with its outbox relay running (see
    /// [`Runtime::repository`]).
    pub async fn repository<R: Repository + ?Sized>(&self) -> anyhow::Result<(Arc<R>, Waker)> {
        let store = self.open_store::<R>().await?;
        Ok(self.runtime.repository::<R>(store).await?)
    }

    /// Ends a tool's context: stops its background tasks (an outbox relay finishing its round)
    /// and waits for them, within the usual drain time.
    pub async fn finish(self) {
        self.runtime.drain().await;
    }
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

/// Is `protocol` gRPC (for the host's listener binding).
pub(crate) fn serves_grpc(service: &dyn Hosted) -> bool {
    service.manifest().protocol == Protocol::Grpc
}
