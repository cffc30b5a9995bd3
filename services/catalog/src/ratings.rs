//! Ratings from reviews: catalog follows `shopmesh.reviews` on one subscription shared by its
//! replicas and stores each product's aggregate on the product, so details and search carry it.
//! An aggregate is the whole new value with a version, so applying it is idempotent: a repeated
//! or older one (by the version catalog keeps per product) changes nothing.

use std::sync::Arc;

use prost::Message as _;
use shopmesh_events::{Event, topics};
use shopmesh_host::{ServiceContext, Subscription};
use shopmesh_kit::Error;
use shopmesh_proto::shopmesh::events::v1::{ReviewEvent, review_event};
use uuid::Uuid;

use crate::handler::CatalogHandler;

/// The catalog's subscription to review events, shared by its replicas.
pub const SUBSCRIPTION: &str = "catalog-ratings";

/// Follows review events until shutdown.
pub async fn follow(handler: Arc<CatalogHandler>, context: &ServiceContext) -> anyhow::Result<()> {
    context
        .runtime
        .consume(
            Subscription::new(topics::REVIEWS, SUBSCRIPTION, SUBSCRIPTION),
            handler,
            |handler, event| async move { handle(&handler, &event).await },
        )
        .await?;
    Ok(())
}

/// Applies one review event: a new aggregate; anything else is not catalog's.
pub async fn handle(handler: &CatalogHandler, event: &Event) -> shopmesh_kit::Result<()> {
    let review = ReviewEvent::decode(event.payload.as_slice()).map_err(|e| {
        Error::invalid_argument("UNDECODABLE_EVENT", format!("event {}: {e}", event.id))
    })?;
    let Some(review_event::Payload::RatingChanged(changed)) = review.payload else {
        return Ok(());
    };
    let product_id = Uuid::parse_str(&review.product_id)
        .map_err(|_| Error::invalid_field("product_id", "must be a UUID"))?;
    let rating = changed.rating.unwrap_or_default();
    if !handler.rate(product_id, rating, changed.version).await? {
        tracing::debug!(%product_id, version = changed.version, "rating already held, or no such product");
    }
    Ok(())
}
