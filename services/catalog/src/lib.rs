//! The catalog service: categories, products with translations, browsing in creation order,
//! and the stock the order pipeline reserves, releases and commits. Every product change
//! goes out as a `ProductEvent` through the outbox.

#![forbid(unsafe_code)]

pub mod config;
pub mod follow;
pub mod grpc;
pub mod handler;
pub mod ratings;
pub mod search;
pub mod seed;
pub mod stock;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use shopmesh_host::{Manifest, Mode, Replicas, Serve, Service, ServiceContext};
use shopmesh_proto::shopmesh::catalog::v1::catalog_service_server::CatalogServiceServer;

pub use config::CatalogConfig;

use crate::grpc::CatalogApi;
use crate::handler::CatalogHandler;
use crate::search::Search;
use crate::store::CatalogStore;

/// The catalog service, as the host runs it.
#[derive(Debug, Clone, Copy)]
pub struct Catalog;

#[async_trait]
impl Service for Catalog {
    const MANIFEST: Manifest = Manifest {
        replicas: Replicas::EveryNode,
        ..Manifest::new("catalog", 7003)
    };
    type Config = CatalogConfig;

    async fn start(&self, context: ServiceContext, config: CatalogConfig) -> anyhow::Result<Serve> {
        let handler = open(&context, &config, Follow::Yes).await?;
        stock::follow(handler.clone(), &context).await?;
        ratings::follow(handler.clone(), &context).await?;
        if context.mode == Mode::Embedded
            && config.demo_catalog
            && handler.store().categories().await?.is_empty()
        {
            let products = seed::demo(&handler).await?;
            // Ready means searchable: the products reach the index through their events.
            searchable(&handler, u64::try_from(products).unwrap_or(u64::MAX)).await;
            println!("  demo catalog   {products} products in 5 departments (first start only)");
        }
        Ok(Serve::grpc(CatalogServiceServer::new(CatalogApi(handler))))
    }
}

/// Waits until the search index holds at least `products` products, or says why it stopped
/// waiting (the index then catches up on its own).
async fn searchable(handler: &CatalogHandler, products: u64) {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);
    let started = std::time::Instant::now();
    while handler
        .searchable()
        .is_some_and(|indexed| indexed < products)
    {
        if started.elapsed() > PATIENCE {
            tracing::warn!(
                products,
                "the search index is still catching up; starting anyway"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Whether a handler follows product events with a search index and a detail cache (a serving
/// replica), or only writes (a tool next to a running replica, which owns the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    Yes,
    No,
}

/// Opens the store (its outbox relay running) and builds the handler; a following one also
/// opens the search index and follows product events.
pub async fn open(
    context: &ServiceContext,
    config: &CatalogConfig,
    follow: Follow,
) -> anyhow::Result<Arc<CatalogHandler>> {
    let (store, waker) = context.repository::<dyn CatalogStore>().await?;
    let locale = config.default_locale.clone();
    if follow == Follow::No {
        return Ok(Arc::new(CatalogHandler::new(store, None, locale, waker)));
    }
    let search = Arc::new(
        Search::open(
            &context.data_dir.join("search").join(&config.replica),
            store.clone(),
            locale.clone(),
        )
        .await?,
    );
    let handler = Arc::new(CatalogHandler::new(
        store,
        Some(search.clone()),
        locale,
        waker,
    ));
    crate::follow::products(handler.clone(), search, context, &config.replica).await?;
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
