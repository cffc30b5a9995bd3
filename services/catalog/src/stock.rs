//! The catalog side of the order saga: stock follows the order's life. `OrderCreated`
//! reserves (answering on the stock topic), `OrderPaid` commits, `OrderPaymentFailed` and
//! `OrderCancelled` release. Each step is idempotent per order, so redeliveries do nothing new.

use std::sync::Arc;

use prost::Message as _;
use shopmesh_events::{Event, topics};
use shopmesh_host::{ServiceContext, Subscription};
use shopmesh_kit::{Error, ErrorKind};
use shopmesh_proto::shopmesh::events::v1::{OrderEvent, order_event};
use uuid::Uuid;

use crate::handler::CatalogHandler;
use crate::store::Line;

/// The catalog's one subscription to order events, shared by its replicas.
pub const SUBSCRIPTION: &str = "catalog-stock";

/// Follows order events until shutdown.
pub async fn follow(handler: Arc<CatalogHandler>, context: &ServiceContext) -> anyhow::Result<()> {
    context
        .runtime
        .consume(
            Subscription::new(topics::ORDERS, SUBSCRIPTION, SUBSCRIPTION),
            handler,
            |handler, event| async move { handle(&handler, &event).await },
        )
        .await?;
    Ok(())
}

async fn handle(handler: &CatalogHandler, event: &Event) -> shopmesh_kit::Result<()> {
    let order = OrderEvent::decode(event.payload.as_slice()).map_err(|e| {
        Error::invalid_argument("UNDECODABLE_EVENT", format!("event {}: {e}", event.id))
    })?;
    let order_id = Uuid::parse_str(&order.order_id)
        .map_err(|_| Error::invalid_field("order_id", "must be a UUID"))?;
    match order.payload {
        Some(order_event::Payload::Created(created)) => {
            let lines = created
                .items
                .iter()
                .map(|item| {
                    Ok(Line {
                        product_id: Uuid::parse_str(&item.product_id).map_err(|_| {
                            Error::invalid_field("items.product_id", "must be a UUID")
                        })?,
                        quantity: item.quantity,
                    })
                })
                .collect::<shopmesh_kit::Result<Vec<_>>>()?;
            handler.reserve(order_id, &lines).await?;
        }
        Some(order_event::Payload::Paid(_)) => match handler.commit(order_id).await {
            // Released meanwhile (a cancel overtook the payment): nothing is left to sell.
            Err(error) if error.kind() == ErrorKind::FailedPrecondition => {
                tracing::warn!(%order_id, %error, "paid order has no reservation to commit");
            }
            other => {
                other?;
            }
        },
        Some(order_event::Payload::PaymentFailed(_) | order_event::Payload::Cancelled(_)) => {
            handler.release(order_id).await?;
        }
        _ => {}
    }
    Ok(())
}
