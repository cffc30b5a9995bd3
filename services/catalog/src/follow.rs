//! A serving replica's consumer of product events: every replica follows every product change,
//! whichever replica wrote it, to keep its own copies current (the search index, and the
//! detail cache, whose entry for the product it drops).

use std::sync::Arc;

use shopmesh_host::{ServiceContext, Subscription};
use uuid::Uuid;

use crate::handler::CatalogHandler;
use crate::search::Search;
use crate::store;

/// Labels the consumer's logs and metrics, the same on every replica.
const LABEL: &str = "catalog-replica";

/// Follows `shopmesh.products` on the subscription of `replica` until shutdown.
pub async fn products(
    handler: Arc<CatalogHandler>,
    search: Arc<Search>,
    context: &ServiceContext,
    replica: &str,
) -> anyhow::Result<()> {
    // A subscription of its own per replica: each must see every event, not a share of them.
    let subscription = format!("catalog-{replica}");
    context
        .runtime
        .consume(
            Subscription::new(store::TOPIC, &subscription, LABEL),
            (handler, search),
            |(handler, search), event| async move {
                if let Ok(product) = Uuid::parse_str(&event.key) {
                    handler.forget(product).await;
                }
                search.apply(&event.payload).await
            },
        )
        .await?;
    Ok(())
}
