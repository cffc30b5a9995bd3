//! The payments service: charges orders and refunds them through a payment gateway (Stripe, or
//! the sandbox with Stripe's test-card behaviour under `shopmesh up`), driven by the order
//! saga's events, and receives Stripe's webhooks. Every outcome goes out as a `PaymentEvent`
//! through the outbox, exactly once per outcome however many paths report it.

#![forbid(unsafe_code)]

pub mod config;
pub mod consumers;
pub mod gateway;
pub mod grpc;
pub mod handler;
pub mod store;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use shopmesh_events::topics;
use shopmesh_host::{
    GeneratedSecret, Manifest, Mode, Replicas, Runtime, SecretForm, Serve, Service, ServiceContext,
    Store, Subscription,
};
use shopmesh_kit::Secret;
use shopmesh_kit::clock::now_ms;
use shopmesh_proto::shopmesh::payments::v1::payment_service_server::PaymentServiceServer;
use tokio::sync::mpsc;

pub use config::{GatewayKind, PaymentsConfig, StripeConfig};
pub use handler::PaymentHandler;

use crate::gateway::PaymentGateway;
use crate::gateway::sandbox::{Delivery, Sandbox};
use crate::gateway::stripe::Stripe;
use crate::grpc::PaymentApi;
use crate::store::PaymentStore;

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
    const MANIFEST: Manifest = Manifest {
        replicas: Replicas::One { node: 2 },
        secrets: &[GeneratedSecret {
            setting: "webhook_secrets",
            form: SecretForm::PrefixedList("whsec_"),
        }],
        // A local cluster pays on the sandbox; a real deployment configures Stripe.
        local_settings: &["gateway = \"sandbox\""],
        ..Manifest::new("payments", 7005)
    };
    type Config = PaymentsConfig;

    async fn start(
        &self,
        context: ServiceContext,
        config: PaymentsConfig,
    ) -> anyhow::Result<Serve> {
        let gateway = config.gateway.unwrap_or(match context.mode {
            Mode::Embedded => GatewayKind::Sandbox,
            Mode::Distributed => GatewayKind::Stripe,
        });
        let webhook_secrets = webhook_secrets(&context, &config)?;
        let store = context.open_store::<dyn PaymentStore>().await?;
        let setup = Setup {
            gateway,
            stripe: config.stripe.clone(),
            webhook_secrets,
            sweep_after: config.sweep_after,
        };
        let handler = assemble(&context.runtime, store, setup).await?;
        Ok(Serve::grpc(PaymentServiceServer::new(PaymentApi(handler))))
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

/// How the service pays: the gateway and its secrets.
pub struct Setup {
    pub gateway: GatewayKind,
    pub stripe: StripeConfig,
    /// At least one; the first signs the sandbox's events.
    pub webhook_secrets: Vec<Secret>,
    /// How long a payment stays processing, unchanged, before the sweeper asks the provider.
    pub sweep_after: Duration,
}

/// Builds the repository, the gateway and the handler on `store`, and starts on `runtime` what
/// keeps it going: the outbox relay, the order consumer, the sweeper and the sandbox's webhook
/// delivery. Tests run the same wiring on a runtime and store of their own.
pub async fn assemble(
    runtime: &Runtime,
    store: Store,
    setup: Setup,
) -> anyhow::Result<Arc<PaymentHandler>> {
    let secret = setup
        .webhook_secrets
        .first()
        .filter(|s| !s.is_empty())
        .cloned()
        .context("at least one webhook secret is needed")?;
    let (store, waker) = runtime.repository::<dyn PaymentStore>(store).await?;
    let (deliveries, delivered) = mpsc::channel::<Delivery>(SANDBOX_QUEUE);
    let gateway: Arc<dyn PaymentGateway> = match setup.gateway {
        GatewayKind::Sandbox => Arc::new(Sandbox::new(store.clone(), secret, deliveries)),
        GatewayKind::Stripe => Arc::new(
            Stripe::new(&setup.stripe).map_err(|e| anyhow::anyhow!("cannot set up Stripe: {e}"))?,
        ),
    };
    let handler = Arc::new(
        PaymentHandler::new(store, gateway, setup.webhook_secrets, waker)
            .with_sweep_after(setup.sweep_after),
    );
    runtime
        .consume(
            Subscription::new(topics::ORDERS, SUBSCRIPTION, SUBSCRIPTION),
            handler.clone(),
            |handler, event| async move { consumers::on_order_event(&handler, &event).await },
        )
        .await?;
    runtime.every(
        "sweep processing payments",
        SWEEP_INTERVAL,
        handler.clone(),
        |handler| async move { Ok(handler.sweep_processing(now_ms()).await.map(drop)?) },
    );
    runtime.spawn(consumers::deliver_sandbox_events(
        handler.clone(),
        delivered,
        runtime.shutdown.clone(),
    ));
    Ok(handler)
}
