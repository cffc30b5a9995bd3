//! The payments side of the order saga: of `shopmesh.orders`, `PaymentRequested` charges and
//! `RefundRequested` refunds; the rest is not payments' business. Charges and refunds are
//! idempotent per order attempt and per payment, so a redelivery does nothing new.

use prost::Message as _;
use shopmesh_events::Event;
use shopmesh_kit::{Error, Result};
use shopmesh_proto::shopmesh::events::v1::{OrderEvent, order_event};

use crate::handler::PaymentHandler;

/// Handles one event of `shopmesh.orders`: charges on `PaymentRequested`, refunds on
/// `RefundRequested`, ignores the rest. An `Err` is redelivered after a back-off.
pub async fn on_order_event(handler: &PaymentHandler, event: &Event) -> Result<()> {
    let order = OrderEvent::decode(event.payload.as_slice())
        .map_err(|e| Error::internal("undecodable order event", e))?;
    match &order.payload {
        Some(order_event::Payload::PaymentRequested(requested)) => {
            handler.charge(&order, requested).await.map(|_| ())
        }
        Some(order_event::Payload::RefundRequested(requested)) => {
            handler.refund(&order, requested).await
        }
        _ => Ok(()),
    }
}
