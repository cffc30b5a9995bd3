//! Hosts shopmesh services in a process. The same code runs one service (`shopmesh-<service>`,
//! distributed mode) or all of them (`shopmesh up`): it loads the [`PlatformConfig`], opens the
//! event bus, binds every service's listener, starts each [`Service`] as a real gRPC server,
//! serves the admin port, and on SIGINT or SIGTERM drains everything within a bounded time.

#![forbid(unsafe_code)]

mod config;
mod launch;
mod manifest;
mod runtime;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use figment::Figment;
use shopmesh_kit::access::{AccessLayer, AuthPeer, Authority};
use shopmesh_kit::admin::{self, Readiness};
use shopmesh_kit::token::Verifier;
use shopmesh_kit::{Shutdown, grpc};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use config::{AdminConfig, PlatformConfig, TokenConfig};
pub use launch::{launch, service_main};
pub use manifest::{AUTH, Calls, GeneratedSecret, Manifest, Protocol, Replicas, SecretForm};
/// For [`main!`]: the allocator a binary chooses.
#[doc(hidden)]
pub use mimalloc;
pub use runtime::{Opened, Repository, Runtime, Store, Subscription, Waker};
pub use service::{Hosted, Mode, Peers, Serve, Service, ServiceContext, section};
/// For [`repository!`].
#[doc(hidden)]
pub use {
    async_trait::async_trait,
    shopmesh_storage::{Migration, StorageError, cql::Cql, sqlite::Sqlite},
};

/// The `main` of a `shopmesh-<service>` binary: [`service_main`] for the given service, and
/// the binary's global allocator. Hosting processes allocate through mimalloc: a proxied
/// request makes dozens of small, short-lived allocations (Pingora's headers and buffers,
/// tonic's frames), and a bare Pingora proxy served 17 % more requests per core on mimalloc
/// than on glibc's malloc. Libraries (and so tests and tools) keep the system allocator.
#[macro_export]
macro_rules! main {
    ($service:expr) => {
        #[global_allocator]
        static ALLOCATOR: $crate::mimalloc::MiMalloc = $crate::mimalloc::MiMalloc;

        fn main() -> ::std::process::ExitCode {
            $crate::service_main(&$service)
        }
    };
}

/// A hosted component's line of the start-up banner: name and URL.
fn announce(component: &str, url: &str) {
    println!("  {component:<14} {url}");
}

/// Runs `services` until shutdown. `figment` holds the merged configuration layers, from which
/// each service reads its own `services.<name>` section.
pub async fn run(
    config: PlatformConfig,
    figment: Figment,
    services: &[&'static dyn Hosted],
    mode: Mode,
) -> anyhow::Result<()> {
    let started = Instant::now();
    // From the first line on, a signal cancels the start cleanly.
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    println!(
        "shopmesh {} starting, data in {}",
        env!("CARGO_PKG_VERSION"),
        config.data_dir.display()
    );
    // Install the recorder before anything records, and say which build is running.
    shopmesh_kit::telemetry::metrics();
    metrics::gauge!("shopmesh_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;

    let readiness = Readiness::new();
    readiness.register("events");
    for service in services {
        readiness.register(service.name());
    }
    let admin_listener = bind(config.admin.listen, "admin").await?;
    let admin_address = admin_listener.local_addr()?;
    let mut servers = JoinSet::new();
    servers.spawn({
        let (readiness, shutdown) = (readiness.clone(), shutdown.clone());
        async move {
            admin::serve(admin_listener, readiness, shutdown)
                .await
                .context("admin server failed")
        }
    });
    announce(
        "admin",
        &format!("http://{admin_address}  (/healthz /readyz /metrics)"),
    );

    let events = config
        .events
        .connect(&config.data_dir)
        .await
        .context("cannot open the event bus")?;
    readiness.set("events", true);

    // Bind every gRPC listener before starting any service, so each knows where its peers are.
    let mut listeners = Vec::with_capacity(services.len());
    let mut addresses = config.peers.clone();
    for service in services {
        if !service::serves_grpc(*service) {
            listeners.push(None);
            continue;
        }
        let address = config
            .listen
            .get(service.name())
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = bind(address, service.name()).await?;
        addresses.insert(
            service.name().to_owned(),
            format!("http://{}", listener.local_addr()?),
        );
        listeners.push(Some(listener));
    }
    let peers = Peers::new(addresses, config.mesh.clone());
    let authority = authority(&config, &peers)?;

    let runtime = Runtime::new(events, shutdown.clone());
    for (service, listener) in services.iter().zip(listeners) {
        let name = service.name();
        let context = ServiceContext {
            name,
            mode,
            section: figment.clone().focus(&format!("services.{name}")),
            data_dir: config.data_dir.clone(),
            storage: config.storage.clone(),
            runtime: runtime.clone(),
            peers: peers.clone(),
            tokens: config.tokens.policy(),
            authority: authority.clone(),
        };
        // A signal while a service starts cancels the start: what started so far is stopped
        // and the process exits cleanly (a start that fails because of it is no failure).
        let started = tokio::select! {
            started = service.start(context) => Some(started),
            () = shutdown.wait() => None,
        };
        let serve = match started {
            Some(Ok(serve)) => serve,
            Some(Err(error)) if !shutdown.is_triggered() => {
                return Err(error.context(format!("{name} failed to start")));
            }
            _ => {
                println!("shopmesh start cancelled; stopped what had started");
                return drain(&mut servers, &runtime, None).await;
            }
        };
        let url = match (serve, listener) {
            (Serve::Grpc(routes), Some(listener)) => {
                let address = listener.local_addr()?;
                let (access, shutdown) = (AccessLayer::new(authority.clone()), shutdown.clone());
                servers.spawn(async move {
                    grpc::serve(name, routes, listener, access, shutdown)
                        .await
                        .with_context(|| format!("{name} server failed"))
                });
                format!("grpc://{address}")
            }
            (Serve::Own { url }, None) => url,
            _ => anyhow::bail!("{name} served another protocol than it declared"),
        };
        readiness.set(name, true);
        announce(name, &url);
    }
    println!(
        "shopmesh is ready in {} ms (Ctrl-C stops)",
        started.elapsed().as_millis()
    );
    tracing::info!(
        services = services.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ready"
    );

    // Run until a signal, or until any server fails (which stops the rest).
    let mut failure = None;
    tokio::select! {
        () = shutdown.wait() => {}
        Some(result) = servers.join_next() => {
            failure = flatten(result).err();
            shutdown.trigger();
        }
    }
    drain(&mut servers, &runtime, failure).await
}

/// Stops the servers and background work, within the drain time; returns the first failure.
async fn drain(
    servers: &mut JoinSet<anyhow::Result<()>>,
    runtime: &Runtime,
    mut failure: Option<anyhow::Error>,
) -> anyhow::Result<()> {
    runtime.shutdown.trigger();
    runtime.close();
    let drained = tokio::time::timeout(shopmesh_kit::shutdown::DEFAULT_DRAIN, async {
        while let Some(result) = servers.join_next().await {
            if let Err(error) = flatten(result) {
                failure.get_or_insert(error);
            }
        }
        runtime.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(after = ?shopmesh_kit::shutdown::DEFAULT_DRAIN, "drain timed out; stopping with work in flight");
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// A service's context outside a running platform, for one-off tools (`shopmesh admin
/// create-user`, `shopmesh auth rotate-keys`): the same configuration, store and event bus as
/// the service, but no server.
pub async fn tool_context(
    args: &shopmesh_kit::ConfigArgs,
    service: &'static dyn Hosted,
    mode: Mode,
) -> anyhow::Result<ServiceContext> {
    let config: PlatformConfig = args.load()?;
    let figment = args.figment()?;
    let section = figment.focus(&format!("services.{}", service.name()));
    service
        .check_config(&section)
        .map_err(|e| anyhow::anyhow!("services.{}: {e}", service.name()))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let events = config
        .events
        .connect(&config.data_dir)
        .await
        .context("cannot open the event bus")?;
    // A tool talks to no peer; auth's address is only needed by the (unused) token checks.
    let mut addresses = config.peers.clone();
    addresses
        .entry("auth".to_owned())
        .or_insert_with(|| "http://127.0.0.1:9".to_owned());
    let peers = Peers::new(addresses, config.mesh.clone());
    Ok(ServiceContext {
        name: service.name(),
        mode,
        section,
        data_dir: config.data_dir.clone(),
        storage: config.storage.clone(),
        runtime: Runtime::new(events, Shutdown::new()),
        peers: peers.clone(),
        tokens: config.tokens.policy(),
        authority: authority(&config, &peers)?,
    })
}

/// Token verification with auth's keys and role table, for every server of the process.
fn authority(config: &PlatformConfig, peers: &Peers) -> anyhow::Result<Authority> {
    let auth = AuthPeer::new(peers.channel("auth").map_err(|_| {
        anyhow::anyhow!("peers.auth is required: services verify access tokens with auth's keys")
    })?);
    Ok(Authority::new(
        Verifier::new(Arc::new(auth.clone()), config.tokens.policy()),
        Arc::new(auth),
    )
    .with_trusted_peers(config.trusted_peers.clone()))
}

fn flatten(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    result.context("server task panicked")?
}

async fn bind(address: SocketAddr, component: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("{component}: cannot listen on {address}"))
}
