//! The orders side of the saga: the outcomes catalog (`StockEvent`) and payments
//! (`PaymentEvent`) publish move orders through their state machine. Each event is recorded as
//! processed in the same write as the change it causes, so a redelivery changes nothing.

use std::sync::Arc;

use prost::Message as _;
use shopmesh_events::{Event, SubscribeOptions, topics};
use shopmesh_host::{ServiceContext, Subscription};
use shopmesh_kit::{Error, ErrorKind};
use shopmesh_proto::shopmesh::events::v1::{PaymentEvent, StockEvent, payment_event, stock_event};
use uuid::Uuid;

use crate::handler::{Cause, OrderHandler};
use crate::state::Input;
use crate::store::{PaymentFacts, Processed};

/// The saga's subscription on the stock and payments topics.
pub const SUBSCRIPTION: &str = "orders-saga";

/// Subscribes to both outcome topics and feeds them to `handler` until `shutdown`.
pub async fn start(
    handler: Arc<OrderHandler>,
    context: &ServiceContext,
    options: SubscribeOptions,
) -> anyhow::Result<()> {
    let runtime = &context.runtime;
    runtime
        .consume(
            Subscription::new(topics::STOCK, SUBSCRIPTION, "orders-stock")
                .with_options(options.clone()),
            handler.clone(),
            |handler, event| async move { settle(stock_outcome(&handler, &event).await, &event) },
        )
        .await?;
    runtime
        .consume(
            Subscription::new(topics::PAYMENTS, SUBSCRIPTION, "orders-payments")
                .with_options(options),
            handler,
            |handler, event| async move { settle(payment_outcome(&handler, &event).await, &event) },
        )
        .await?;
    Ok(())
}

/// An event about an order that does not exist cannot succeed on a retry: it is logged and
/// dropped rather than sent round until it dead-letters.
fn settle(outcome: shopmesh_kit::Result<()>, event: &Event) -> shopmesh_kit::Result<()> {
    match outcome {
        Err(error) if error.kind() == ErrorKind::NotFound => {
            tracing::warn!(
                event_id = event.id,
                key = event.key,
                "saga event for an unknown order, dropped"
            );
            Ok(())
        }
        other => other,
    }
}

fn undecodable(event: &Event, error: impl std::fmt::Display) -> Error {
    Error::invalid_argument("UNDECODABLE_EVENT", format!("event {}: {error}", event.id))
}

fn order_id(text: &str) -> shopmesh_kit::Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| Error::invalid_field("order_id", "must be a UUID"))
}

async fn stock_outcome(handler: &OrderHandler, event: &Event) -> shopmesh_kit::Result<()> {
    let stock = StockEvent::decode(event.payload.as_slice()).map_err(|e| undecodable(event, e))?;
    let (input, reason) = match stock.payload {
        Some(stock_event::Payload::Reserved(_)) => (Input::StockReserved, String::new()),
        Some(stock_event::Payload::Rejected(rejected)) => {
            let short: Vec<String> = rejected
                .shortages
                .iter()
                .map(|s| format!("{} ({} of {})", s.product_id, s.available, s.requested))
                .collect();
            (
                Input::StockRejected,
                format!("insufficient_stock: {}", short.join(", ")),
            )
        }
        None => return Err(undecodable(event, "no payload")),
    };
    let processed = Processed {
        subscription: SUBSCRIPTION,
        event_id: &event.id,
    };
    handler
        .apply(
            order_id(&stock.order_id)?,
            input,
            Cause::service("catalog", reason),
            |_| {},
            Some(processed),
        )
        .await
        .map(drop)
}

async fn payment_outcome(handler: &OrderHandler, event: &Event) -> shopmesh_kit::Result<()> {
    let payment =
        PaymentEvent::decode(event.payload.as_slice()).map_err(|e| undecodable(event, e))?;
    let payment_id = payment.payment_id.clone();
    let (input, reason, facts) = match payment.payload {
        Some(payment_event::Payload::Succeeded(succeeded)) => (
            Input::PaymentSucceeded,
            String::new(),
            PaymentFacts {
                payment_id,
                card_brand: succeeded.card_brand,
                card_last4: succeeded.card_last4,
                decline_code: String::new(),
            },
        ),
        Some(payment_event::Payload::Failed(failed)) => (
            Input::PaymentFailed,
            format!("card_declined: {}", failed.decline_code),
            PaymentFacts {
                payment_id,
                decline_code: failed.decline_code,
                ..PaymentFacts::default()
            },
        ),
        Some(payment_event::Payload::Refunded(_)) => {
            (Input::Refunded, String::new(), PaymentFacts::default())
        }
        Some(payment_event::Payload::RefundFailed(failed)) => {
            // Money is owed and the provider refused: people have to look at it.
            metrics::counter!("shopmesh_orders_refunds_failed_total").increment(1);
            tracing::error!(
                order_id = payment.order_id,
                refund_id = failed.refund_id,
                reason = failed.reason,
                "refund failed; the order stays cancelled with a refund pending"
            );
            return Ok(());
        }
        None => return Err(undecodable(event, "no payload")),
    };
    let processed = Processed {
        subscription: SUBSCRIPTION,
        event_id: &event.id,
    };
    let record = |order: &mut crate::store::OrderRecord| {
        if !facts.payment_id.is_empty() {
            order.body.payment = Some(facts.clone());
        }
    };
    handler
        .apply(
            order_id(&payment.order_id)?,
            input,
            Cause::service("payments", reason),
            record,
            Some(processed),
        )
        .await
        .map(drop)
}
