//! The event seam: services publish keyed events and consume them through named subscriptions,
//! with the same contract on two backends:
//!
//! - [`pulsar::PulsarBus`]: Apache Pulsar, Key_Shared subscriptions (distributed mode);
//! - [`log::EmbeddedLog`]: a durable log in SQLite (`shopmesh up`).
//!
//! The contract: delivery is at least once; events of one key arrive in publish order (until one
//! is negatively acknowledged, which redelivers it after a back-off); an event that fails
//! `max_attempts` times moves to the dead-letter topic [`dead_letter_topic`]; a subscription
//! survives restarts and resumes after its last acknowledged event.
//!
//! Effects happen once anyway: producers write events through an [`outbox`] in the same write as
//! their state change, and consumers record processed event ids with [`inbox`]. Nothing relies on
//! broker de-duplication.

#![forbid(unsafe_code)]

pub mod config;
pub mod consumer;
pub mod dead_letters;
pub mod inbox;
pub mod log;
pub mod outbox;
pub mod pulsar;
pub mod topics;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use shopmesh_kit::RequestContext;
use shopmesh_kit::context::{REQUEST_ID, TRACEPARENT};

pub use config::EventsConfig;

/// The `EventMeta` every event payload carries, filled from the event itself, so the id a
/// consumer de-duplicates on is the one the bus delivers.
pub fn envelope(event: &Event, producer: &str) -> shopmesh_proto::shopmesh::events::v1::EventMeta {
    shopmesh_proto::shopmesh::events::v1::EventMeta {
        event_id: event.id.clone(),
        occurred_at: Some(shopmesh_kit::clock::timestamp(event.occurred_at_ms)),
        producer: producer.to_owned(),
        traceparent: event.headers.get(TRACEPARENT).cloned().unwrap_or_default(),
    }
}

impl Event {
    /// An event of `kind` for aggregate `key`, whose payload is the message `payload` builds
    /// around this very event's envelope (see [`envelope`]).
    pub fn enveloped<M: prost::Message>(
        key: impl Into<String>,
        kind: &str,
        producer: &str,
        payload: impl FnOnce(shopmesh_proto::shopmesh::events::v1::EventMeta) -> M,
    ) -> Self {
        let mut event = Self::new(key, kind, Vec::new());
        event.payload = payload(envelope(&event, producer)).encode_to_vec();
        event
    }
}

/// Largest event payload accepted, well under Pulsar's 5 MB frame.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// One event: what happened (`kind`) to which aggregate (`key`), with an encoded payload.
/// Serializable, so a store can keep it where an outbox row cannot go (inside a row written by
/// a conditional update) until it moves to the outbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// Unique per event (UUIDv7); consumers de-duplicate on it.
    pub id: String,
    /// The aggregate id; events of one key are delivered in order.
    pub key: String,
    /// The payload's type, e.g. `shopmesh.events.v1.OrderCreated`.
    pub kind: String,
    pub payload: Vec<u8>,
    /// Propagated context: `traceparent` and `x-request-id` of the request that caused it.
    pub headers: BTreeMap<String, String>,
    /// Milliseconds since the Unix epoch.
    pub occurred_at_ms: i64,
}

impl Event {
    /// A new event carrying the current request's trace context, if any.
    pub fn new(key: impl Into<String>, kind: impl Into<String>, payload: Vec<u8>) -> Self {
        let mut headers = BTreeMap::new();
        if let Some(context) = RequestContext::current() {
            headers.insert(TRACEPARENT.to_owned(), context.traceparent());
            headers.insert(REQUEST_ID.to_owned(), context.request_id);
        }
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            key: key.into(),
            kind: kind.into(),
            payload,
            headers,
            occurred_at_ms: now_ms(),
        }
    }

    fn check(&self) -> Result<(), EventError> {
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(EventError::TooLarge(self.payload.len()));
        }
        if self.key.is_empty() || self.id.is_empty() {
            return Err(EventError::Invalid("an event needs an id and a key".into()));
        }
        Ok(())
    }
}

/// An event handed to a consumer, to be acknowledged or negatively acknowledged.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: Event,
    /// 1 on first delivery, counting up on each redelivery this consumer has seen.
    pub attempt: u32,
    token: Token,
}

/// Backend bookkeeping of a delivery.
#[derive(Debug, Clone)]
enum Token {
    Log { seq: i64 },
    Pulsar { id: ::pulsar::proto::MessageIdData },
}

/// How a subscription retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Deliveries before an event moves to the dead-letter topic.
    pub max_attempts: u32,
    /// Back-off after the first negative acknowledgement, doubling up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// An event neither acknowledged nor negatively acknowledged within this time is redelivered.
    pub ack_timeout: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(30),
        }
    }
}

impl SubscribeOptions {
    /// The wait before redelivering an event that failed on `attempt`.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// The dead-letter topic of a subscription.
pub fn dead_letter_topic(topic: &str, subscription: &str) -> String {
    format!("{topic}.{subscription}.dlq")
}

/// Topic and subscription names: letters, digits, `.`, `_` and `-`, at most 200 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An event bus backend.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Appends `event` to `topic`; returns once the backend has stored it durably.
    async fn publish(&self, topic: &str, event: &Event) -> Result<(), EventError>;

    /// Appends `(topic, event)` pairs in order; returns once all are stored durably. On an
    /// error, a prefix of them may have been stored (publishing again is safe: consumers drop
    /// duplicates). Backends that can store a batch at once override it.
    async fn publish_all(&self, events: &[(String, Event)]) -> Result<(), EventError> {
        for (topic, event) in events {
            self.publish(topic, event).await?;
        }
        Ok(())
    }

    /// Opens (creating if new, from the earliest retained event) the named subscription.
    async fn subscribe(
        &self,
        topic: &str,
        subscription: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscriber>, EventError>;
}

/// A consumer of one subscription.
#[async_trait]
pub trait Subscriber: Send {
    /// The next event, waiting until one is available.
    async fn next(&mut self) -> Result<Delivery, EventError>;

    /// The event is handled; it will not be delivered again.
    async fn ack(&mut self, delivery: &Delivery) -> Result<(), EventError>;

    /// The event could not be handled now; redeliver it after the back-off.
    async fn nack(&mut self, delivery: &Delivery) -> Result<(), EventError>;

    /// Leaves the subscription now, so events delivered but not acknowledged go to the next
    /// consumer at once (dropping a subscriber may leave them held until a time-out).
    async fn close(self: Box<Self>) -> Result<(), EventError> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("invalid event: {0}")]
    Invalid(String),
    #[error("event payload of {0} bytes is over the limit of {MAX_PAYLOAD_BYTES}")]
    TooLarge(usize),
    #[error("invalid topic or subscription name {0:?}")]
    BadName(String),
    #[error("event store: {0}")]
    Storage(#[from] shopmesh_storage::StorageError),
    #[error("pulsar: {0}")]
    Pulsar(String),
    #[error("a delivery from another backend was acknowledged here")]
    ForeignDelivery,
}

impl From<rusqlite::Error> for EventError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Storage(error.into())
    }
}

impl From<EventError> for shopmesh_kit::Error {
    fn from(error: EventError) -> Self {
        shopmesh_kit::Error::internal("event bus failed", error)
    }
}

fn check_names(topic: &str, subscription: Option<&str>) -> Result<(), EventError> {
    for name in std::iter::once(topic).chain(subscription) {
        if !valid_name(name) {
            return Err(EventError::BadName(name.to_owned()));
        }
    }
    Ok(())
}

/// Reads an event stored as the columns `id, key, kind, payload, headers, occurred_at`, starting
/// at column `first` (the embedded log and the SQLite outbox store events the same way).
fn event_from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Event> {
    let headers = shopmesh_storage::sqlite::json_at(row, first + 4)?;
    Ok(Event {
        id: row.get(first)?,
        key: row.get(first + 1)?,
        kind: row.get(first + 2)?,
        payload: row.get(first + 3)?,
        headers,
        occurred_at_ms: row.get(first + 5)?,
    })
}

pub(crate) use shopmesh_kit::clock::now_ms;
