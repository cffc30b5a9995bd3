//! Who bought what, learnt from order events into the service's own store, so the purchase
//! check on a new review needs no call to orders and works while orders is down.
//! `OrderCreated` carries an order's products and `OrderPaid` only the payment, so the products
//! are remembered when the order is placed and become purchases when it is paid; shipping and
//! delivery imply payment and count too. Each event is recorded in the inbox with its effect.

use std::sync::Arc;

use prost::Message as _;
use shopmesh_events::{Event, topics};
use shopmesh_host::{ServiceContext, Subscription};
use shopmesh_kit::Error;
use shopmesh_proto::shopmesh::events::v1::{OrderEvent, order_event};
use uuid::Uuid;

use crate::handler::ReviewHandler;
use crate::store::{PlacedOrder, Processed};

/// The reviews service's subscription to order events, shared by its replicas.
pub const SUBSCRIPTION: &str = "reviews-purchases";

/// Follows order events until shutdown.
pub async fn follow(handler: Arc<ReviewHandler>, context: &ServiceContext) -> anyhow::Result<()> {
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

/// Applies one order event.
pub async fn handle(handler: &ReviewHandler, event: &Event) -> shopmesh_kit::Result<()> {
    let order = OrderEvent::decode(event.payload.as_slice()).map_err(|e| {
        Error::invalid_argument("UNDECODABLE_EVENT", format!("event {}: {e}", event.id))
    })?;
    let order_id = id("order_id", &order.order_id)?;
    let processed = Processed {
        subscription: SUBSCRIPTION,
        event_id: &event.id,
    };
    use order_event::Payload;
    match order.payload {
        Some(Payload::Created(created)) => {
            let placed = PlacedOrder {
                order_id,
                user_id: id("user_id", &order.user_id)?,
                product_ids: created
                    .items
                    .iter()
                    .map(|item| id("items.product_id", &item.product_id))
                    .collect::<shopmesh_kit::Result<_>>()?,
            };
            handler.order_placed(&placed, processed).await
        }
        Some(Payload::Paid(_) | Payload::Shipped(_) | Payload::Delivered(_)) => {
            handler.order_paid(order_id, processed).await
        }
        _ => Ok(()),
    }
}

fn id(field: &str, text: &str) -> shopmesh_kit::Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| Error::invalid_field(field.to_owned(), "must be a UUID"))
}
