//! Operator access to a subscription's dead-letter topic: look at the events that kept failing,
//! and, once the cause is fixed, send them back to their topic to be handled again.

use std::sync::Arc;
use std::time::Duration;

use crate::{Event, EventBus, EventError, SubscribeOptions, dead_letter_topic};

/// The subscription operators read dead-letter topics through.
pub const ADMIN_SUBSCRIPTION: &str = "shopmesh-admin";

/// What to do with the dead letters read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Only read them; they stay in the dead-letter topic.
    Inspect,
    /// Publish each back to its topic, then remove it from the dead-letter topic.
    Replay,
}

/// Reads up to `limit` dead letters of `subscription` on `topic`, stopping once none arrives
/// for `idle`, and applies `action` to each. Returns the events read, oldest first.
pub async fn handle(
    bus: &Arc<dyn EventBus>,
    topic: &str,
    subscription: &str,
    action: Action,
    limit: usize,
    idle: Duration,
) -> Result<Vec<Event>, EventError> {
    let letters = dead_letter_topic(topic, subscription);
    // An inspected letter is handed back (negatively acknowledged) and reappears only after
    // this read has gone idle, so one read shows each letter once; it never dead-letters again.
    let options = SubscribeOptions {
        max_attempts: u32::MAX,
        backoff: idle + Duration::from_secs(1),
        max_backoff: idle + Duration::from_secs(1),
        ..SubscribeOptions::default()
    };
    let mut subscriber = bus.subscribe(&letters, ADMIN_SUBSCRIPTION, options).await?;
    let mut read = Vec::new();
    while read.len() < limit {
        let Ok(delivery) = tokio::time::timeout(idle, subscriber.next()).await else {
            break;
        };
        let delivery = delivery?;
        if read.iter().any(|seen: &Event| seen.id == delivery.event.id) {
            break; // an inspected letter came round again: everything has been seen
        }
        match action {
            Action::Replay => {
                bus.publish(topic, &delivery.event).await?;
                subscriber.ack(&delivery).await?;
            }
            Action::Inspect => subscriber.nack(&delivery).await?,
        }
        read.push(delivery.event);
    }
    subscriber.close().await?;
    Ok(read)
}
