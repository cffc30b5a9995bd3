//! `shopmesh-sidecar`: one per node. Outbound, a loopback listener per local service turns its
//! plain h2 calls into balanced, retried mTLS calls carrying its identity; inbound, one mTLS
//! listener on the node address admits callers by identity and forwards to the local services.
//! It registers the local services in discovery while their health checks pass.

pub mod config;
mod grpc;
mod inbound;
mod outbound;
mod pool;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;
use shopmesh_kit::admin::{self, Readiness};
use shopmesh_kit::clock;
use shopmesh_kit::shutdown::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use config::SidecarConfig;
pub use inbound::CALLER_HEADER;

use crate::balance::{Balancer, EjectionPolicy, EndpointView, RetryBudget};
use crate::discovery::{Discovery, DiscoveryConfig, Registrar};
use crate::endpoint::Endpoint;
use crate::identity::{self, ServiceKey, TrustAnchor};
use inbound::{CallerLimits, Inbound, Peer};
use outbound::Outbound;
use pool::Pool;

/// Every body the sidecar passes on.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// What every listener of the sidecar shares.
pub struct Shared {
    pub config: SidecarConfig,
    pub discovery: Discovery,
    pub balancer: Balancer,
    pub ejection: EjectionPolicy,
    /// gRPC paths of the methods that may be retried after reaching an endpoint.
    pub idempotent: HashSet<String>,
}

/// The bound listeners of a sidecar that is about to run (tests read the addresses).
pub struct Sidecar {
    shared: Arc<Shared>,
    keys: Vec<Arc<ServiceKey>>,
    anchor: TrustAnchor,
    inbound: TcpListener,
    outbound: Vec<(String, TcpListener)>,
    admin: TcpListener,
    readiness: Readiness,
}

impl Sidecar {
    /// Loads identities and binds every listener; errors here are configuration errors.
    pub async fn bind(mut config: SidecarConfig, shutdown: &Shutdown) -> anyhow::Result<Self> {
        let anchor = TrustAnchor::load(&config.ca)?;
        let mut keys = Vec::new();
        for (name, service) in &config.services {
            keys.push(Arc::new(ServiceKey::load(
                &service.cert,
                &service.key,
                &config.env,
                name,
            )?));
        }
        let inbound = TcpListener::bind(config.inbound.listen)
            .await
            .with_context(|| format!("inbound listener {}", config.inbound.listen))?;
        // Register the port actually bound (port 0 picks one).
        config.inbound.advertise = Some(config.inbound.advertise.unwrap_or(inbound.local_addr()?));
        let mut outbound = Vec::new();
        for (name, service) in &config.services {
            let listener = TcpListener::bind(service.outbound)
                .await
                .with_context(|| format!("outbound listener of {name}, {}", service.outbound))?;
            outbound.push((name.clone(), listener));
        }
        let admin = TcpListener::bind(config.admin)
            .await
            .with_context(|| format!("admin listener {}", config.admin))?;
        let discovery = Discovery::start(&config.discovery, shutdown.clone());
        let shared = Arc::new(Shared {
            ejection: config.ejection.into(),
            discovery,
            balancer: Balancer::new(),
            idempotent: outbound::idempotent_methods(),
            config,
        });
        Ok(Self {
            shared,
            keys,
            anchor,
            inbound,
            outbound,
            admin,
            readiness: Readiness::new(),
        })
    }

    pub fn inbound_address(&self) -> SocketAddr {
        self.inbound.local_addr().expect("a bound listener")
    }

    pub fn outbound_address(&self, service: &str) -> Option<SocketAddr> {
        self.outbound
            .iter()
            .find(|(name, _)| name == service)
            .and_then(|(_, listener)| listener.local_addr().ok())
    }

    pub fn admin_address(&self) -> SocketAddr {
        self.admin.local_addr().expect("a bound listener")
    }

    /// Serves until `shutdown`, then withdraws the registrations and drains.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Self {
            shared,
            keys,
            anchor,
            inbound,
            outbound,
            admin,
            readiness,
        } = self;
        let mut tasks = tokio::task::JoinSet::new();

        readiness.register("inbound");
        let acceptor = TlsAcceptor::from(Arc::new(identity::server_config(&anchor, keys.clone())?));
        let handler = Arc::new(Inbound {
            shared: shared.clone(),
            pool: Pool::default(),
            limits: CallerLimits::new(shared.config.caller_limit),
        });
        tasks.spawn(serve_inbound(inbound, acceptor, handler, shutdown.clone()));
        readiness.set("inbound", true);

        for (name, listener) in outbound {
            let key = keys
                .iter()
                .find(|key| key.id.service == name)
                .expect("a key per service")
                .clone();
            let config = identity::client_config(&anchor, key)?;
            let handler = Arc::new(Outbound {
                caller: name,
                connector: TlsConnector::from(Arc::new(config)),
                shared: shared.clone(),
                pool: Pool::default(),
                budget: RetryBudget::new(
                    shared.config.retries.budget,
                    shared.config.retries.min_per_second,
                ),
            });
            let shutdown = shutdown.clone();
            tasks.spawn(serve_plain(listener, shutdown, move |request| {
                handler.clone().handle(request)
            }));
        }

        let registrar = match &shared.config.discovery {
            DiscoveryConfig::Etcd(etcd) => {
                let (registrar, task) = Registrar::start(etcd.clone(), shutdown.clone());
                tasks.spawn(async move {
                    let _ = task.await;
                });
                Some(registrar)
            }
            // DNS and static lists are maintained by their owners.
            DiscoveryConfig::Dns(_) | DiscoveryConfig::Static { .. } => None,
        };
        for (name, service) in &shared.config.services {
            if let Some(address) = service.address {
                readiness.register(name);
                tasks.spawn(keep_registered(
                    shared.clone(),
                    name.clone(),
                    address,
                    registrar.clone(),
                    readiness.clone(),
                    shutdown.clone(),
                ));
            }
        }
        tasks.spawn(reload_certificates(keys, shutdown.clone()));
        tasks.spawn(export_table(shared.clone(), shutdown.clone()));

        let router = axum::Router::new()
            .route("/endpoints", get(endpoints))
            .with_state(shared.clone())
            .route(
                "/ready",
                get({
                    let readiness = readiness.clone();
                    move || async move {
                        let code = if readiness.is_ready() {
                            http::StatusCode::OK
                        } else {
                            http::StatusCode::SERVICE_UNAVAILABLE
                        };
                        (code, axum::Json(readiness.snapshot()))
                    }
                }),
            )
            .merge(admin::router(readiness));
        let admin_shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _ = axum::serve(admin, router)
                .with_graceful_shutdown(async move { admin_shutdown.wait().await })
                .await;
        });

        shutdown.wait().await;
        // Registrations go first (the lease is revoked), then in-flight calls drain.
        let drain = tokio::time::timeout(shopmesh_kit::shutdown::DEFAULT_DRAIN, async {
            while tasks.join_next().await.is_some() {}
        });
        let _ = drain.await;
        Ok(())
    }
}

/// Accepts plain h2 (from local services) and serves each call with `handle`.
async fn serve_plain<H, F>(listener: TcpListener, shutdown: Shutdown, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => { tracing::warn!(%error, "accept failed"); continue; }
            },
            () = shutdown.wait() => return,
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(serve_connection(stream, shutdown.clone(), handle));
    }
}

async fn serve_inbound(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<Inbound>,
    shutdown: Shutdown,
) {
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => { tracing::warn!(%error, "accept failed"); continue; }
            },
            () = shutdown.wait() => return,
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, handler, shutdown) = (acceptor.clone(), handler.clone(), shutdown.clone());
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::info!(%remote, %error, "refused a TLS handshake");
                        metrics::counter!("shopmesh_mesh_tls_handshakes_total",
                        "direction" => "inbound", "result" => "refused")
                        .increment(1);
                        return;
                    }
                    Err(_) => return,
                };
            metrics::counter!("shopmesh_mesh_tls_handshakes_total",
                "direction" => "inbound", "result" => "ok")
            .increment(1);
            let (_, session) = tls.get_ref();
            let peer = Arc::new(Peer {
                caller: identity::peer_identity(session.peer_certificates()),
                target: session.server_name().unwrap_or_default().to_owned(),
            });
            serve_connection(tls, shutdown, move |request| {
                handler.clone().handle(peer.clone(), request)
            })
            .await;
        });
    }
}

/// Serves one h2 connection until it ends; on shutdown it is told to finish (GOAWAY) and given
/// the drain time.
async fn serve_connection<S, H, F>(stream: S, shutdown: Shutdown, handle: H)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |request| {
        let answer = handle(request);
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .keep_alive_interval(Duration::from_secs(20))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended");
            }
        }
        () = shutdown.wait() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(shopmesh_kit::shutdown::DEFAULT_DRAIN, connection).await;
        }
    }
}

/// Registers `service` while its gRPC health check passes, and withdraws it when it fails.
async fn keep_registered(
    shared: Arc<Shared>,
    service: String,
    address: SocketAddr,
    registrar: Option<Registrar>,
    readiness: Readiness,
    shutdown: Shutdown,
) {
    let config = &shared.config;
    let endpoint = Endpoint {
        address: config.advertised(),
        node: config.node.clone(),
        zone: config.zone.clone(),
        weight: config.services[&service].weight,
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: clock::now_ms(),
    };
    let mut registered = false;
    let mut checker = None;
    let mut tick = tokio::time::interval(config.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => return,
        }
        let healthy = check_health(&mut checker, address, config.health_interval).await;
        if healthy != registered {
            registered = healthy;
            readiness.set(&service, healthy);
            if let Some(registrar) = &registrar {
                if healthy {
                    registrar.register(&service, &config.node, &endpoint);
                } else {
                    registrar.deregister(&service, &config.node);
                }
            }
            if healthy {
                tracing::info!(service, %address, "local service healthy; registered");
            } else {
                tracing::warn!(service, %address, "local service unhealthy; deregistered");
            }
        }
    }
}

type HealthClient = tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>;

async fn check_health(
    client: &mut Option<HealthClient>,
    address: SocketAddr,
    timeout: Duration,
) -> bool {
    let client = match client {
        Some(client) => client,
        None => {
            let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            else {
                return false;
            };
            client.insert(HealthClient::new(
                endpoint
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_lazy(),
            ))
        }
    };
    let request = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    matches!(
        client.check(request).await,
        Ok(answer) if answer.get_ref().status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    )
}

/// Re-reads changed certificates every few seconds and warns as expiry nears.
/// Keeps `shopmesh_mesh_endpoints{service}` at the number of endpoints the table holds for each
/// service this node may call or serve, from start (at 0 until discovery lists them), so an
/// alert on a service with no endpoint, or on the metric's absence, means something.
async fn export_table(shared: Arc<Shared>, shutdown: Shutdown) {
    let mut services: std::collections::BTreeSet<String> =
        shared.config.allow.keys().cloned().collect();
    let mut discovery = shared.discovery.clone();
    let mut table = discovery.table();
    loop {
        services.extend(table.services().map(str::to_owned));
        for service in &services {
            let endpoints = table.instances(service).len();
            metrics::gauge!("shopmesh_mesh_endpoints", "service" => service.clone())
                .set(endpoints as f64);
        }
        table = tokio::select! {
            table = discovery.changed() => table,
            () = shutdown.wait() => return,
        };
    }
}

async fn reload_certificates(keys: Vec<Arc<ServiceKey>>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => return,
        }
        for key in &keys {
            match key.reload_if_changed() {
                Ok(true) => tracing::info!(identity = %key.id, "certificate reloaded"),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(identity = %key.id, %error, "certificate not reloaded")
                }
            }
            let (left, lifetime) = key.remaining();
            metrics::gauge!("shopmesh_mesh_certificate_expiry_seconds", "service" => key.id.service.clone())
                .set(left.as_secs_f64());
            if left < lifetime / 5 {
                tracing::warn!(identity = %key.id, left = ?left, "certificate expires soon; issue a new one");
            }
        }
    }
}

#[derive(Serialize)]
struct EndpointRow {
    instance: String,
    #[serde(flatten)]
    endpoint: Endpoint,
    #[serde(flatten)]
    balancer: EndpointView,
}

/// The current table with what the balancer knows of each endpoint.
async fn endpoints(
    State(shared): State<Arc<Shared>>,
) -> axum::Json<BTreeMap<String, Vec<EndpointRow>>> {
    let table = shared.discovery.table();
    let rows = table
        .services()
        .map(|service| {
            let rows = table
                .instances(service)
                .into_iter()
                .map(|instance| EndpointRow {
                    balancer: shared.balancer.stats(instance.endpoint.address).view(),
                    instance: instance.id,
                    endpoint: instance.endpoint,
                })
                .collect();
            (service.to_owned(), rows)
        })
        .collect();
    axum::Json(rows)
}
