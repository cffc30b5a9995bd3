//! The orders service: idempotent checkout with prices from catalog, the order state machine
//! with its history, and the orders side of the saga (stock and payment outcomes in,
//! `OrderEvent`s out through the outbox).

#![forbid(unsafe_code)]

pub mod config;
pub mod grpc;
pub mod handler;
pub mod saga;
pub mod state;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use shopmesh_events::SubscribeOptions;
use shopmesh_host::{Calls, GeneratedSecret, Manifest, Replicas, Serve, Service, ServiceContext};
use shopmesh_kit::crypto::Sealer;
use shopmesh_proto::shopmesh::catalog::v1::catalog_service_client::CatalogServiceClient;
use shopmesh_proto::shopmesh::orders::v1::order_service_server::OrderServiceServer;

pub use config::OrdersConfig;

use crate::grpc::OrderApi;
use crate::handler::OrderHandler;
use crate::store::OrderStore;

/// The orders service, as the host runs it.
#[derive(Debug, Clone, Copy)]
pub struct Orders;

#[async_trait]
impl Service for Orders {
    const MANIFEST: Manifest = Manifest {
        calls: Calls::Only(&["catalog"]),
        replicas: Replicas::One { node: 1 },
        secrets: &[GeneratedSecret::master_key("data_key")],
        ..Manifest::new("orders", 7004)
    };
    type Config = OrdersConfig;

    async fn start(&self, context: ServiceContext, config: OrdersConfig) -> anyhow::Result<Serve> {
        let handler = open(&context, &config).await?;
        let options = SubscribeOptions {
            max_attempts: config.max_attempts,
            ..SubscribeOptions::default()
        };
        saga::start(handler.clone(), &context, options).await?;
        Ok(Serve::grpc(OrderServiceServer::new(OrderApi(handler))))
    }
}

/// Opens the store (its outbox relay running) and builds the handler.
pub async fn open(
    context: &ServiceContext,
    config: &OrdersConfig,
) -> anyhow::Result<Arc<OrderHandler>> {
    let sealer = Sealer::new(
        &context.master_key("data_key", &config.data_key)?,
        "orders.shipping_address",
    );
    let (store, waker) = context.repository::<dyn OrderStore>().await?;
    let catalog = CatalogServiceClient::new(context.peers.channel("catalog")?);
    Ok(Arc::new(OrderHandler::new(
        store,
        catalog,
        sealer,
        waker,
        config.watch_interval,
    )))
}
