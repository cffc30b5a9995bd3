//! The consuming loop every service runs per subscription: take an event, handle it inside the
//! trace context it was published in, acknowledge on success and negatively acknowledge (for a
//! redelivery after back-off) on failure.

use std::future::Future;
use std::time::Duration;

use shopmesh_kit::{RequestContext, Shutdown};

use crate::{Event, Subscriber};

/// Handles deliveries from `subscriber` with `handler` until `shutdown`. `name` labels logs and
/// metrics. Handlers must be idempotent (see [`crate::inbox`]): delivery is at least once.
pub async fn run<H, F>(
    mut subscriber: Box<dyn Subscriber>,
    name: &'static str,
    shutdown: Shutdown,
    mut handler: H,
) where
    H: FnMut(Event) -> F + Send,
    F: Future<Output = shopmesh_kit::Result<()>> + Send,
{
    loop {
        let delivery = tokio::select! {
            delivery = subscriber.next() => delivery,
            () = shutdown.wait() => return,
        };
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::warn!(%error, consumer = name, "receiving failed, retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.wait() => return,
                }
            }
        };
        let context = context_of(&delivery.event);
        let (event_id, attempt) = (delivery.event.id.clone(), delivery.attempt);
        let outcome = context.scope(handler(delivery.event.clone())).await;
        let settled = match outcome {
            Ok(()) => {
                metrics::counter!("shopmesh_events_handled_total", "consumer" => name, "outcome" => "ok").increment(1);
                subscriber.ack(&delivery).await
            }
            Err(error) => {
                metrics::counter!("shopmesh_events_handled_total", "consumer" => name, "outcome" => "retry").increment(1);
                tracing::warn!(%error, consumer = name, event_id, attempt, "handling failed, will redeliver");
                subscriber.nack(&delivery).await
            }
        };
        if let Err(error) = settled {
            tracing::warn!(%error, consumer = name, event_id, "settling a delivery failed; it will be redelivered");
        }
    }
}

/// The request context an event was published in, so its handling joins the same trace.
fn context_of(event: &Event) -> RequestContext {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &event.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(name.as_str()),
            http::HeaderValue::try_from(value.as_str()),
        ) {
            headers.insert(name, value);
        }
    }
    RequestContext::from_headers(&headers)
}
