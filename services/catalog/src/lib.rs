//! The catalog service: categories, products with translations, browsing in creation order,
//! and the stock the order pipeline reserves, releases and commits. Every product change
//! goes out as a `ProductEvent` through the outbox.

#![forbid(unsafe_code)]

pub mod config;
pub mod search;
pub mod seed;
pub mod service;
pub mod stock;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use figment::Figment;
use shopmesh_events::outbox::{Relay, SqliteOutbox};
use shopmesh_events::{SubscribeOptions, consumer};
use shopmesh_host::{Mode, Serve, Service, ServiceContext, Store};
use shopmesh_kit::{ConfigError, config::render};
use shopmesh_proto::shopmesh::catalog::v1::catalog_service_server::CatalogServiceServer;

pub use config::CatalogConfig;

use crate::search::Search;
use crate::service::CatalogHandler;
use crate::store::cql::CqlCatalog;
use crate::store::sqlite::SqliteCatalog;
use crate::store::{CatalogStore, MIGRATIONS};

/// The catalog service, as the host runs it.
#[derive(Debug, Clone, Copy)]
pub struct Catalog;

#[async_trait]
impl Service for Catalog {
    fn name(&self) -> &'static str {
        "catalog"
    }

    fn check_config(&self, section: &Figment) -> Result<String, ConfigError> {
        Ok(render(&shopmesh_host::section::<CatalogConfig>(section)?))
    }

    async fn start(&self, context: ServiceContext) -> anyhow::Result<Serve> {
        let config: CatalogConfig = context.config()?;
        let handler = open(&context, &config, Follow::Yes).await?;
        stock::follow(handler.clone(), &context).await?;
        if context.mode == Mode::Embedded
            && config.demo_catalog
            && handler.store().categories().await?.is_empty()
        {
            let products = seed::demo(&handler).await?;
            println!("  demo catalog   {products} products in 5 departments (first start only)");
        }
        Ok(Serve::Grpc(tonic::service::Routes::new(
            CatalogServiceServer::from_arc(handler),
        )))
    }
}

/// Whether a handler follows product events with a search index and a detail cache (a serving
/// replica), or only writes (a tool next to a running replica, which owns the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    Yes,
    No,
}

/// Opens the store and builds the handler; a following one also opens the search index and
/// subscribes to product events.
pub async fn open(
    context: &ServiceContext,
    config: &CatalogConfig,
    follow: Follow,
) -> anyhow::Result<Arc<CatalogHandler>> {
    let (store, relay): (Arc<dyn CatalogStore>, Relay) =
        match context.open_store(&MIGRATIONS).await? {
            Store::Sqlite(db) => (
                Arc::new(SqliteCatalog(db.clone())),
                Relay::new(Arc::new(SqliteOutbox(db)), context.events.clone()),
            ),
            Store::Cql(cql) => {
                let catalog = CqlCatalog::new(cql).await?;
                let relay = Relay::new(catalog.outbox(), context.events.clone());
                (Arc::new(catalog), relay)
            }
        };
    let waker = relay.waker();
    context.spawn(relay.run(context.shutdown.clone()));
    if follow == Follow::No {
        return Ok(Arc::new(CatalogHandler::new(
            store,
            None,
            config.default_locale.clone(),
            waker,
        )));
    }
    let search = Arc::new(
        Search::open(
            &context.data_dir.join("search").join(&config.replica),
            store.clone(),
            config.default_locale.clone(),
        )
        .await?,
    );
    let handler = Arc::new(CatalogHandler::new(
        store.clone(),
        Some(search.clone()),
        config.default_locale.clone(),
        waker,
    ));
    // Every replica follows every product change on a subscription of its own.
    let subscription = format!("catalog-{}", config.replica);
    let subscriber = context
        .events
        .subscribe(store::TOPIC, &subscription, SubscribeOptions::default())
        .await?;
    let following = handler.clone();
    context.spawn(consumer::run(
        subscriber,
        "catalog-replica",
        context.shutdown.clone(),
        move |event| {
            let (handler, search) = (following.clone(), search.clone());
            async move {
                if let Ok(product) = uuid::Uuid::parse_str(&event.key) {
                    handler.forget(product).await;
                }
                search.apply(&event.payload).await
            }
        },
    ));
    Ok(handler)
}

/// Adds `count` generated products to the catalog of `context` (`shopmesh seed`).
pub async fn seed_generated(
    context: &ServiceContext,
    count: u64,
    seed: u64,
    progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let config: CatalogConfig = context.config()?;
    let handler = open(context, &config, Follow::No).await?;
    seed::generated(&handler, count, seed, progress).await
}
