//! The payments side of the order saga: of `shopmesh.orders`, `PaymentRequested` charges and
//! `RefundRequested` refunds; the rest is not payments' business. Charges and refunds are
//! idempotent per order attempt and per payment, so a redelivery does nothing new. Also the
//! sandbox's webhook deliveries, which take the same path as Stripe's.

use std::sync::Arc;

use prost::Message as _;
use shopmesh_events::Event;
use shopmesh_kit::{Error, Result};
use shopmesh_proto::shopmesh::events::v1::{OrderEvent, order_event};

use tokio::sync::mpsc;

use crate::gateway::sandbox::Delivery;
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

/// The sandbox's events take the webhook path in-process, signature check included.
pub(crate) async fn deliver_sandbox_events(
    handler: Arc<PaymentHandler>,
    mut delivered: mpsc::Receiver<Delivery>,
    shutdown: shopmesh_kit::Shutdown,
) {
    loop {
        let delivery = tokio::select! {
            delivery = delivered.recv() => delivery,
            () = shutdown.wait() => return,
        };
        let Some(delivery) = delivery else { return };
        if let Err(error) = handler
            .webhook(&delivery.body, Some(&delivery.signature))
            .await
        {
            tracing::warn!(%error, "sandbox webhook delivery failed");
        }
    }
}
