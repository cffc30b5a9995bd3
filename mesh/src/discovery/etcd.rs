//! etcd as the discovery backend: registrations are keys under a lease the registering sidecar
//! keeps alive, so a node that dies disappears when its lease expires; followers list the prefix
//! and then watch it from the list's revision, and list again whenever the watch breaks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions, WatchResponse,
};
use serde::{Deserialize, Serialize};
use shopmesh_kit::ConfigError;
use shopmesh_kit::shutdown::Shutdown;
use tokio::sync::{mpsc, watch};

use crate::endpoint::{self, Endpoint, PREFIX, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd cluster, e.g. `http://10.0.0.5:2379`.
    pub endpoints: Vec<String>,
    /// How long a registration outlives its sidecar: the lease's time to live.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            lease_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(3),
        }
    }
}

impl EtcdConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::invalid(
                "discovery.endpoints",
                "name at least one etcd URL",
            ));
        }
        if self.lease_ttl < Duration::from_secs(2) {
            return Err(ConfigError::invalid(
                "discovery.lease_ttl",
                "must be at least 2s (etcd grants whole seconds)",
            ));
        }
        Ok(())
    }

    /// A client; connecting fails fast when etcd is unreachable, so callers retry on their own
    /// schedule.
    pub async fn connect(&self) -> Result<Client, etcd_client::Error> {
        let options = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(5), self.timeout)
            .with_keep_alive_while_idle(true);
        Client::connect(&self.endpoints, Some(options)).await
    }
}

/// Back-off between attempts to reach etcd again.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

fn next_delay(delay: Duration) -> Duration {
    (delay * 2).min(RETRY_MAX)
}

/// Follows the registrations in etcd until `shutdown`, publishing a new table after every change.
/// While etcd is unreachable the last table stays published.
pub fn follow(config: EtcdConfig, shutdown: Shutdown) -> watch::Receiver<Arc<Table>> {
    let (sender, receiver) = watch::channel(Arc::new(Table::new()));
    tokio::spawn(async move {
        let mut delay = RETRY_MIN;
        loop {
            let outcome = tokio::select! {
                outcome = follow_once(&config, &sender) => outcome,
                () = shutdown.wait() => return,
            };
            match outcome {
                // The watch ended after working for a while: list again at once.
                Ok(()) => delay = RETRY_MIN,
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        retry_in = ?delay,
                        "etcd unreachable; routing from the last table"
                    );
                    metrics::counter!("shopmesh_mesh_discovery_errors_total").increment(1);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.wait() => return,
                    }
                    delay = next_delay(delay);
                }
            }
        }
    });
    receiver
}

/// One list and the watch that follows it. Returns `Ok` when the watch ends in a way that calls
/// for a new list (compaction, cancellation), `Err` when etcd cannot be reached.
async fn follow_once(
    config: &EtcdConfig,
    sender: &watch::Sender<Arc<Table>>,
) -> anyhow::Result<()> {
    let mut client = config.connect().await?;
    let listed = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = listed.header().map_or(0, |header| header.revision());
    let mut table = Table::new();
    for kv in listed.kvs() {
        apply_put(&mut table, kv.key(), kv.value());
    }
    publish(sender, &table);
    let mut stream = client
        .watch(
            PREFIX,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    while let Some(response) = stream.message().await? {
        if needs_relist(&response) {
            tracing::info!(
                compact_revision = response.compact_revision(),
                reason = response.cancel_reason(),
                "etcd watch cancelled; listing again"
            );
            return Ok(());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => apply_put(&mut table, kv.key(), kv.value()),
                EventType::Delete => {
                    if let Some((service, instance)) = key_of(kv.key()) {
                        table.remove(service, instance);
                    }
                }
            }
        }
        if !response.events().is_empty() {
            publish(sender, &table);
        }
    }
    anyhow::bail!("etcd closed the watch stream")
}

fn needs_relist(response: &WatchResponse) -> bool {
    response.canceled() || response.compact_revision() > 0
}

fn key_of(key: &[u8]) -> Option<(&str, &str)> {
    endpoint::parse_key(std::str::from_utf8(key).ok()?)
}

/// Adds one registration; a value that is not a valid endpoint is logged and left out, so one
/// bad writer cannot empty the table.
fn apply_put(table: &mut Table, key: &[u8], value: &[u8]) {
    let Some((service, instance)) = key_of(key) else {
        return;
    };
    match serde_json::from_slice::<Endpoint>(value) {
        Ok(endpoint) => table.insert(service, instance, endpoint),
        Err(error) => {
            tracing::warn!(service, instance, %error, "ignoring an unreadable registration");
            table.remove(service, instance);
        }
    }
}

fn publish(sender: &watch::Sender<Arc<Table>>, table: &Table) {
    sender.send_if_modified(|current| {
        let changed = **current != *table;
        if changed {
            *current = Arc::new(table.clone());
        }
        changed
    });
}

enum Command {
    Register(String, String),
    Deregister(String),
}

/// Keeps this node's registrations in etcd: every key under one lease, kept alive; after etcd
/// comes back (or the lease expired meanwhile), a new lease and every current key are written
/// again. Dropping the registrar, or shutdown, revokes the lease, which removes them all.
#[derive(Debug, Clone)]
pub struct Registrar {
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Register(key, _) => write!(f, "register {key}"),
            Self::Deregister(key) => write!(f, "deregister {key}"),
        }
    }
}

impl Registrar {
    /// Starts the registering task; it runs until `shutdown` and then revokes its lease.
    pub fn start(config: EtcdConfig, shutdown: Shutdown) -> (Self, tokio::task::JoinHandle<()>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(keep_registered(config, receiver, shutdown));
        (Self { commands }, task)
    }

    pub fn register(&self, service: &str, instance: &str, endpoint: &Endpoint) {
        let value = serde_json::to_string(endpoint).expect("an endpoint serializes");
        let _ = self
            .commands
            .send(Command::Register(endpoint::key(service, instance), value));
    }

    pub fn deregister(&self, service: &str, instance: &str) {
        let _ = self
            .commands
            .send(Command::Deregister(endpoint::key(service, instance)));
    }
}

async fn keep_registered(
    config: EtcdConfig,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shutdown: Shutdown,
) {
    let ttl = i64::try_from(config.lease_ttl.as_secs()).unwrap_or(i64::MAX);
    let keep_alive_every = config.lease_ttl / 3;
    // What should be in etcd, whether or not it is reachable right now.
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    let mut delay = RETRY_MIN;
    'session: loop {
        let mut session = tokio::select! {
            session = Session::open(&config, ttl, &wanted) => session,
            () = shutdown.wait() => return,
        };
        let mut tick = tokio::time::interval(keep_alive_every);
        loop {
            let live = match &mut session {
                Ok(live) => live,
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), retry_in = ?delay, "cannot register in etcd");
                    metrics::counter!("shopmesh_mesh_discovery_errors_total").increment(1);
                    // Keep taking commands while etcd is away, so the next session writes them.
                    let until = tokio::time::sleep(delay);
                    tokio::pin!(until);
                    loop {
                        tokio::select! {
                            () = &mut until => break,
                            command = commands.recv() => match command {
                                Some(command) => apply(&mut wanted, command),
                                None => return,
                            },
                            () = shutdown.wait() => return,
                        }
                    }
                    delay = next_delay(delay);
                    continue 'session;
                }
            };
            delay = RETRY_MIN;
            let step = tokio::select! {
                _ = tick.tick() => live.keep_alive().await,
                command = commands.recv() => match command {
                    Some(command) => {
                        let written = live.write(&command).await;
                        apply(&mut wanted, command);
                        written
                    }
                    None => { live.revoke().await; return; }
                },
                () = shutdown.wait() => { live.revoke().await; return; }
            };
            if let Err(error) = step {
                session = Err(error);
            }
        }
    }
}

fn apply(wanted: &mut BTreeMap<String, String>, command: Command) {
    match command {
        Command::Register(key, value) => {
            wanted.insert(key, value);
        }
        Command::Deregister(key) => {
            wanted.remove(&key);
        }
    }
}

/// A lease with every wanted key written under it.
struct Session {
    client: Client,
    lease: i64,
    keeper: etcd_client::LeaseKeeper,
    responses: etcd_client::LeaseKeepAliveStream,
}

impl Session {
    async fn open(
        config: &EtcdConfig,
        ttl: i64,
        wanted: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let mut client = config.connect().await?;
        let lease = client.lease_grant(ttl, None).await?.id();
        let (keeper, responses) = client.lease_keep_alive(lease).await?;
        let mut session = Self {
            client,
            lease,
            keeper,
            responses,
        };
        for (key, value) in wanted {
            session.put(key, value).await?;
        }
        tracing::info!(lease, keys = wanted.len(), "registered in etcd");
        Ok(session)
    }

    async fn put(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        self.client
            .put(key, value, Some(PutOptions::new().with_lease(self.lease)))
            .await?;
        Ok(())
    }

    async fn write(&mut self, command: &Command) -> anyhow::Result<()> {
        match command {
            Command::Register(key, value) => self.put(key, value).await,
            Command::Deregister(key) => {
                self.client.delete(key.as_str(), None).await?;
                Ok(())
            }
        }
    }

    /// Renews the lease; an answer with no time left means it expired while we were away.
    async fn keep_alive(&mut self) -> anyhow::Result<()> {
        self.keeper.keep_alive().await?;
        match self.responses.message().await? {
            Some(answer) if answer.ttl() > 0 => Ok(()),
            Some(_) => anyhow::bail!("lease {} expired", self.lease),
            None => anyhow::bail!("etcd closed the keep-alive stream"),
        }
    }

    async fn revoke(&mut self) {
        match self.client.lease_revoke(self.lease).await {
            Ok(_) => tracing::info!(lease = self.lease, "registrations withdrawn"),
            Err(error) => tracing::warn!(%error, "cannot revoke the lease; it expires on its own"),
        }
    }
}
