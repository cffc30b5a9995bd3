//! The orders service: idempotent checkout with prices from catalog, the order state machine
//! with its history, and the orders side of the saga (stock and payment outcomes in,
//! `OrderEvent`s out through the outbox).

#![forbid(unsafe_code)]

pub mod config;
pub mod saga;
pub mod service;
pub mod state;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use figment::Figment;
use shopmesh_events::SubscribeOptions;
use shopmesh_events::outbox::{Relay, SqliteOutbox};
use shopmesh_host::{Serve, Service, ServiceContext, Store};
use shopmesh_kit::crypto::Sealer;
use shopmesh_kit::{ConfigError, config::render};
use shopmesh_proto::shopmesh::catalog::v1::catalog_service_client::CatalogServiceClient;
use shopmesh_proto::shopmesh::orders::v1::order_service_server::OrderServiceServer;

pub use config::OrdersConfig;

use crate::service::{OrderApi, OrderHandler};
use crate::store::cql::CqlOrders;
use crate::store::sqlite::SqliteOrders;
use crate::store::{MIGRATIONS, OrderStore};

/// The orders service, as the host runs it.
#[derive(Debug, Clone, Copy)]
pub struct Orders;

#[async_trait]
impl Service for Orders {
    fn name(&self) -> &'static str {
        "orders"
    }

    fn check_config(&self, section: &Figment) -> Result<String, ConfigError> {
        Ok(render(&shopmesh_host::section::<OrdersConfig>(section)?))
    }

    async fn start(&self, context: ServiceContext) -> anyhow::Result<Serve> {
        let config: OrdersConfig = context.config()?;
        let handler = open(&context, &config).await?;
        let options = SubscribeOptions {
            max_attempts: config.max_attempts,
            ..SubscribeOptions::default()
        };
        saga::start(handler.clone(), &context, options).await?;
        Ok(Serve::Grpc(tonic::service::Routes::new(
            OrderServiceServer::new(OrderApi(handler)),
        )))
    }
}

/// Opens the store, starts the outbox relay and builds the handler.
pub async fn open(
    context: &ServiceContext,
    config: &OrdersConfig,
) -> anyhow::Result<Arc<OrderHandler>> {
    let sealer = Sealer::new(
        &context.master_key("data_key", &config.data_key)?,
        "orders.shipping_address",
    );
    let (store, relay): (Arc<dyn OrderStore>, Relay) = match context.open_store(&MIGRATIONS).await?
    {
        Store::Sqlite(db) => (
            Arc::new(SqliteOrders(db.clone())),
            Relay::new(Arc::new(SqliteOutbox(db)), context.events.clone()),
        ),
        Store::Cql(cql) => {
            let orders = CqlOrders::new(cql).await?;
            let relay = Relay::new(orders.outbox(), context.events.clone());
            (Arc::new(orders), relay)
        }
    };
    let waker = relay.waker();
    context.spawn(relay.run(context.shutdown.clone()));
    let catalog = CatalogServiceClient::new(context.peers.channel("catalog")?);
    Ok(Arc::new(OrderHandler::new(
        store,
        catalog,
        sealer,
        waker,
        config.watch_interval,
    )))
}
