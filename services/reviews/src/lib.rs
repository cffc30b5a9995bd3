//! The reviews service: one review per user and product, from verified purchasers only (learnt
//! from order events), moderation by administrators (pre-moderation by default), reports, and
//! each product's rating aggregate, recounted on every change to its published reviews and sent
//! to catalog as a `ReviewEvent` through the outbox.

#![forbid(unsafe_code)]

pub mod config;
pub mod grpc;
pub mod handler;
pub mod purchases;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use shopmesh_host::{Manifest, Replicas, Serve, Service, ServiceContext};
use shopmesh_proto::shopmesh::reviews::v1::review_service_server::ReviewServiceServer;

pub use config::ReviewsConfig;

use crate::grpc::ReviewApi;
use crate::handler::ReviewHandler;
use crate::store::ReviewStore;

/// The reviews service, as the host runs it.
#[derive(Debug, Clone, Copy)]
pub struct Reviews;

#[async_trait]
impl Service for Reviews {
    const MANIFEST: Manifest = Manifest {
        replicas: Replicas::One { node: 1 },
        ..Manifest::new("reviews", 7007)
    };
    type Config = ReviewsConfig;

    async fn start(&self, context: ServiceContext, config: ReviewsConfig) -> anyhow::Result<Serve> {
        let handler = open(&context, &config).await?;
        purchases::follow(handler.clone(), &context).await?;
        Ok(Serve::grpc(ReviewServiceServer::new(ReviewApi(handler))))
    }
}

/// Opens the store (its outbox relay running) and builds the handler.
pub async fn open(
    context: &ServiceContext,
    config: &ReviewsConfig,
) -> anyhow::Result<Arc<ReviewHandler>> {
    let (store, waker) = context.repository::<dyn ReviewStore>().await?;
    Ok(Arc::new(ReviewHandler::new(
        store,
        waker,
        config.post_moderation,
        config.default_language.clone(),
    )))
}
