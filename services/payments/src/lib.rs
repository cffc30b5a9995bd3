//! The payments service: charges orders and refunds them through a payment gateway (Stripe, or
//! the sandbox with Stripe's test-card behaviour under `shopmesh up`), driven by the order
//! saga's events, and receives Stripe's webhooks. Every outcome goes out as a `PaymentEvent`
//! through the outbox, exactly once per outcome however many paths report it.

#![forbid(unsafe_code)]

pub mod config;
pub mod gateway;
pub mod service;
pub mod store;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use figment::Figment;
use shopmesh_events::outbox::{Relay, SqliteOutbox};
use shopmesh_events::{EventBus, SubscribeOptions, consumer, topics};
use shopmesh_host::{Mode, Serve, Service, ServiceContext, Store};
use shopmesh_kit::clock::now_ms;
use shopmesh_kit::shutdown::every;
use shopmesh_kit::{ConfigError, Secret, Shutdown, config::render};
use shopmesh_proto::shopmesh::payments::v1::payment_service_server::PaymentServiceServer;
use tokio::sync::mpsc;

pub use config::{GatewayKind, PaymentsConfig, StripeConfig};
pub use service::PaymentHandler;

use crate::gateway::PaymentGateway;
use crate::gateway::sandbox::{Delivery, Sandbox};
use crate::gateway::stripe::Stripe;
use crate::store::cql::CqlPayments;
use crate::store::sqlite::SqlitePayments;
use crate::store::{MIGRATIONS, PaymentStore};

/// The subscription on `shopmesh.orders` payments charges and refunds from.
pub const SUBSCRIPTION: &str = "payments";
/// Sandbox events waiting for the webhook handler; more are dropped (the synchronous answer
/// settles the payment anyway).
const SANDBOX_QUEUE: usize = 1024;
/// How often the sweeper looks for payments stuck in processing.
const SWEEP_INTERVAL: Duration = Duration::from_secs(15);

/// The payments service, as the host runs it.
#[derive(Debug, Clone, Copy)]
pub struct Payments;

#[async_trait]
impl Service for Payments {
    fn name(&self) -> &'static str {
        "payments"
    }

    fn check_config(&self, section: &Figment) -> Result<String, ConfigError> {
        Ok(render(&shopmesh_host::section::<PaymentsConfig>(section)?))
    }

    async fn start(&self, context: ServiceContext) -> anyhow::Result<Serve> {
        let config: PaymentsConfig = context.config()?;
        let gateway = config.gateway.unwrap_or(match context.mode {
            Mode::Embedded => GatewayKind::Sandbox,
            Mode::Distributed => GatewayKind::Stripe,
        });
        let webhook_secrets = webhook_secrets(&context, &config)?;
        let store = context.open_store(&MIGRATIONS).await?;
        let running = assemble(Setup {
            store,
            events: context.events.clone(),
            gateway,
            stripe: config.stripe.clone(),
            webhook_secrets,
            sweep_after: config.sweep_after,
            shutdown: context.shutdown.clone(),
        })
        .await?;
        for task in running.tasks {
            context.spawn(task);
        }
        Ok(Serve::Grpc(tonic::service::Routes::new(
            PaymentServiceServer::from_arc(running.handler),
        )))
    }
}

/// The configured webhook secrets; under `shopmesh up` without any, one generated into the data
/// directory (kept across restarts).
fn webhook_secrets(
    context: &ServiceContext,
    config: &PaymentsConfig,
) -> anyhow::Result<Vec<Secret>> {
    if !config.webhook_secrets.is_empty() {
        return Ok(config.webhook_secrets.clone());
    }
    match context.mode {
        Mode::Embedded => {
            let key = context.master_key("webhook_secret", &Secret::default())?;
            Ok(vec![Secret::new(format!(
                "whsec_{}",
                key.to_secret().expose()
            ))])
        }
        Mode::Distributed => anyhow::bail!(
            "services.payments.webhook_secrets is required: the signing secret (whsec_…) of the \
             Stripe webhook endpoint, or several while one is being rotated"
        ),
    }
}

/// What [`assemble`] needs: everything the host would otherwise give, so tests run the same
/// wiring on a bus and store of their own.
pub struct Setup {
    pub store: Store,
    pub events: Arc<dyn EventBus>,
    pub gateway: GatewayKind,
    pub stripe: StripeConfig,
    /// At least one; the first signs the sandbox's events.
    pub webhook_secrets: Vec<Secret>,
    /// How long a payment stays processing, unchanged, before the sweeper asks the provider.
    pub sweep_after: Duration,
    pub shutdown: Shutdown,
}

/// A background task of the service (outbox relay, order consumer, sweeper, sandbox webhook
/// delivery).
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The assembled service: its handler and the tasks to run until shutdown.
pub struct Running {
    pub handler: Arc<PaymentHandler>,
    pub tasks: Vec<Task>,
}

/// Builds the store, the gateway and the handler, subscribes to order events, and returns the
/// background tasks that keep it going.
pub async fn assemble(setup: Setup) -> anyhow::Result<Running> {
    let Setup {
        store,
        events,
        gateway,
        stripe,
        webhook_secrets,
        sweep_after,
        shutdown,
    } = setup;
    let secret = webhook_secrets
        .first()
        .filter(|s| !s.is_empty())
        .cloned()
        .context("at least one webhook secret is needed")?;
    let (store, relay): (Arc<dyn PaymentStore>, Relay) = match store {
        Store::Sqlite(db) => (
            Arc::new(SqlitePayments(db.clone())),
            Relay::new(Arc::new(SqliteOutbox(db)), events.clone()),
        ),
        Store::Cql(cql) => {
            let payments = CqlPayments::new(cql).await?;
            let relay = Relay::new(payments.outbox(), events.clone());
            (Arc::new(payments), relay)
        }
    };
    let waker = relay.waker();
    let (deliveries, mut delivered) = mpsc::channel::<Delivery>(SANDBOX_QUEUE);
    let gateway: Arc<dyn PaymentGateway> = match gateway {
        GatewayKind::Sandbox => Arc::new(Sandbox::new(store.clone(), secret, deliveries)),
        GatewayKind::Stripe => Arc::new(
            Stripe::new(&stripe).map_err(|e| anyhow::anyhow!("cannot set up Stripe: {e}"))?,
        ),
    };
    let handler = Arc::new(
        PaymentHandler::new(store, gateway, webhook_secrets, waker).with_sweep_after(sweep_after),
    );
    let subscriber = events
        .subscribe(topics::ORDERS, SUBSCRIPTION, SubscribeOptions::default())
        .await?;
    let consuming = handler.clone();
    let sweeping = handler.clone();
    let mut tasks: Vec<Task> = vec![
        Box::pin(relay.run(shutdown.clone())),
        Box::pin(consumer::run(
            subscriber,
            SUBSCRIPTION,
            shutdown.clone(),
            move |event| {
                let handler = consuming.clone();
                async move { handler.on_order_event(event).await }
            },
        )),
        Box::pin(every(
            shutdown.clone(),
            SWEEP_INTERVAL,
            "sweep processing payments",
            move || {
                let handler = sweeping.clone();
                async move {
                    handler.sweep_processing(now_ms()).await?;
                    Ok(())
                }
            },
        )),
    ];
    // The sandbox's events take the webhook path in-process, signature check included.
    let receiving = handler.clone();
    tasks.push(Box::pin(async move {
        loop {
            let delivery = tokio::select! {
                delivery = delivered.recv() => delivery,
                () = shutdown.wait() => return,
            };
            let Some(delivery) = delivery else { return };
            if let Err(error) = receiving
                .webhook(&delivery.body, Some(&delivery.signature))
                .await
            {
                tracing::warn!(%error, "sandbox webhook delivery failed");
            }
        }
    }));
    Ok(Running { handler, tasks })
}
