//! Apache Pulsar backend: persistent topics, Key_Shared subscriptions (events of one key go to
//! one consumer, in order), the client's dead-letter policy, and back-off on negative
//! acknowledgement (Pulsar redelivers at once; this consumer holds the nack until it is due).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use pulsar::consumer::{DeadLetterPolicy, InitialPosition};
use pulsar::proto::MessageIdData;
use pulsar::{
    Consumer, ConsumerBuilder, ConsumerOptions, Producer, Pulsar, SubType, TokioExecutor,
};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{
    Delivery, Event, EventBus, EventError, SubscribeOptions, Subscriber, Token, check_names,
    dead_letter_topic,
};

const ID: &str = "shopmesh-id";
const KIND: &str = "shopmesh-kind";
const OCCURRED_AT: &str = "shopmesh-occurred-at";
/// Event headers travel as message properties under this prefix.
const HEADER: &str = "shopmesh-h-";
/// Attempt counts kept per consumer; cleared when this many accumulate (events dead-lettered by
/// the client never come back to be forgotten).
const MAX_TRACKED: usize = 10_000;

/// One producer per topic, shared by every publisher of the process.
type SharedProducer = Arc<Mutex<Producer<TokioExecutor>>>;

/// A Pulsar connection. Cheap to clone.
#[derive(Clone)]
pub struct PulsarBus {
    client: Pulsar<TokioExecutor>,
    namespace: String,
    producers: Arc<Mutex<HashMap<String, SharedProducer>>>,
}

impl std::fmt::Debug for PulsarBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarBus")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl PulsarBus {
    /// A durable Key_Shared consumer of `subscription` on `topic`, starting (when new) from
    /// the earliest retained message.
    fn consumer(&self, topic: &str, subscription: &str) -> ConsumerBuilder<TokioExecutor> {
        self.client
            .consumer()
            .with_topic(self.full_name(topic))
            .with_subscription(subscription)
            .with_subscription_type(SubType::KeyShared)
            .with_options(
                ConsumerOptions::default()
                    .durable(true)
                    .with_initial_position(InitialPosition::Earliest),
            )
    }

    /// Creates the durable subscription `subscription` on `topic` if it does not exist, so
    /// messages are kept for it from now on.
    async fn ensure_subscription(&self, topic: &str, subscription: &str) -> Result<(), EventError> {
        let mut consumer: Consumer<Vec<u8>, TokioExecutor> = self
            .consumer(topic, subscription)
            .build()
            .await
            .map_err(|e| EventError::Pulsar(format!("subscribe {subscription} to {topic}: {e}")))?;
        consumer
            .close()
            .await
            .map_err(|e| EventError::Pulsar(format!("close {subscription} on {topic}: {e}")))
    }

    /// Connects to the broker at `url` (`pulsar://host:6650`); topics live in `namespace`
    /// (`tenant/namespace`, e.g. `public/default`).
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, EventError> {
        let client = Pulsar::builder(url, TokioExecutor)
            .build()
            .await
            .map_err(|e| EventError::Pulsar(format!("cannot connect to {url}: {e}")))?;
        Ok(Self {
            client,
            namespace: namespace.to_owned(),
            producers: Arc::default(),
        })
    }

    fn full_name(&self, topic: &str) -> String {
        format!("persistent://{}/{}", self.namespace, topic)
    }

    async fn producer(
        &self,
        topic: &str,
    ) -> Result<Arc<Mutex<Producer<TokioExecutor>>>, EventError> {
        let mut producers = self.producers.lock().await;
        if let Some(producer) = producers.get(topic) {
            return Ok(producer.clone());
        }
        let producer = self
            .client
            .producer()
            .with_topic(self.full_name(topic))
            .build()
            .await
            .map_err(|e| EventError::Pulsar(format!("producer for {topic}: {e}")))?;
        let producer = Arc::new(Mutex::new(producer));
        producers.insert(topic.to_owned(), producer.clone());
        Ok(producer)
    }
}

fn to_message(event: &Event) -> pulsar::producer::Message {
    let mut properties = HashMap::from([
        (ID.to_owned(), event.id.clone()),
        (KIND.to_owned(), event.kind.clone()),
        (OCCURRED_AT.to_owned(), event.occurred_at_ms.to_string()),
    ]);
    for (name, value) in &event.headers {
        properties.insert(format!("{HEADER}{name}"), value.clone());
    }
    pulsar::producer::Message {
        payload: event.payload.clone(),
        properties,
        // Key_Shared routes by the ordering key when set, else by the partition key.
        partition_key: Some(event.key.clone()),
        event_time: u64::try_from(event.occurred_at_ms).ok(),
        ..Default::default()
    }
}

fn from_message(message: &pulsar::consumer::Message<Vec<u8>>) -> Result<Event, EventError> {
    let mut properties: BTreeMap<&str, &str> = message
        .payload
        .metadata
        .properties
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    let mut take = |name: &str| properties.remove(name).map(str::to_owned);
    let (Some(id), Some(kind)) = (take(ID), take(KIND)) else {
        return Err(EventError::Invalid(format!(
            "message {:?} on {} is not a shopmesh event",
            message.message_id(),
            message.topic
        )));
    };
    let occurred_at_ms = take(OCCURRED_AT)
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    let headers = properties
        .into_iter()
        .filter_map(|(name, value)| {
            name.strip_prefix(HEADER)
                .map(|name| (name.to_owned(), value.to_owned()))
        })
        .collect();
    Ok(Event {
        id,
        key: message.key().unwrap_or_default(),
        kind,
        payload: message.payload.data.clone(),
        headers,
        occurred_at_ms,
    })
}

#[async_trait]
impl EventBus for PulsarBus {
    async fn publish(&self, topic: &str, event: &Event) -> Result<(), EventError> {
        self.publish_all(&[(topic.to_owned(), event.clone())]).await
    }

    async fn publish_all(&self, events: &[(String, Event)]) -> Result<(), EventError> {
        // Enqueue every message first, in order, then wait for all receipts: one round trip
        // for the batch instead of one per event. A producer is held only to enqueue, so
        // concurrent publishes pipeline their receipts too.
        let mut receipts = Vec::with_capacity(events.len());
        for (topic, event) in events {
            check_names(topic, None)?;
            event.check()?;
            let producer = self.producer(topic).await?;
            let receipt = producer
                .lock()
                .await
                .send_non_blocking(to_message(event))
                .await
                .map_err(|e| EventError::Pulsar(format!("publish to {topic}: {e}")))?;
            receipts.push((topic, receipt));
        }
        for (topic, receipt) in receipts {
            receipt
                .await
                .map_err(|e| EventError::Pulsar(format!("publish to {topic}: {e}")))?;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &str,
        subscription: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscriber>, EventError> {
        check_names(topic, Some(subscription))?;
        let consumer: Consumer<Vec<u8>, TokioExecutor> = self
            .consumer(topic, subscription)
            .with_dead_letter_policy(DeadLetterPolicy {
                max_redeliver_count: options.max_attempts as usize,
                dead_letter_topic: self.full_name(&dead_letter_topic(topic, subscription)),
            })
            .with_unacked_message_resend_delay(Some(options.ack_timeout))
            .build()
            .await
            .map_err(|e| EventError::Pulsar(format!("subscribe {subscription} to {topic}: {e}")))?;
        if !topic.ends_with(".dlq") {
            // Pulsar keeps a message only for the subscriptions that exist when it is written:
            // the operators' subscription must exist before the first letter lands.
            let letters = dead_letter_topic(topic, subscription);
            self.ensure_subscription(&letters, crate::dead_letters::ADMIN_SUBSCRIPTION)
                .await?;
        }
        Ok(Box::new(PulsarSubscriber {
            consumer,
            topic: self.full_name(topic),
            options,
            attempts: HashMap::new(),
            held_nacks: BTreeMap::new(),
            sequence: 0,
        }))
    }
}

struct PulsarSubscriber {
    consumer: Consumer<Vec<u8>, TokioExecutor>,
    topic: String,
    options: SubscribeOptions,
    attempts: HashMap<String, u32>,
    /// Negative acknowledgements waiting for their back-off, by due time.
    held_nacks: BTreeMap<(Instant, u64), MessageIdData>,
    sequence: u64,
}

fn id_key(id: &MessageIdData) -> String {
    format!(
        "{}:{}:{}:{}",
        id.ledger_id,
        id.entry_id,
        id.partition.unwrap_or(-1),
        id.batch_index.unwrap_or(-1)
    )
}

impl PulsarSubscriber {
    async fn send_due_nacks(&mut self) -> Result<(), EventError> {
        let now = Instant::now();
        while let Some(entry) = self.held_nacks.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            self.consumer
                .nack_with_id(&self.topic, id)
                .await
                .map_err(|e| EventError::Pulsar(e.to_string()))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Subscriber for PulsarSubscriber {
    async fn close(mut self: Box<Self>) -> Result<(), EventError> {
        self.consumer
            .close()
            .await
            .map_err(|e| EventError::Pulsar(format!("close consumer on {}: {e}", self.topic)))
    }

    async fn next(&mut self) -> Result<Delivery, EventError> {
        loop {
            self.send_due_nacks().await?;
            let due = self.held_nacks.keys().next().map(|(at, _)| *at);
            let wait = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                message = self.consumer.try_next() => message,
                () = wait => continue,
            };
            let message = message
                .map_err(|e| EventError::Pulsar(e.to_string()))?
                .ok_or_else(|| EventError::Pulsar("consumer stream ended".into()))?;
            let id = message.message_id().clone();
            let event = match from_message(&message) {
                Ok(event) => event,
                Err(error) => {
                    // Not ours to handle, and redelivering would not change it: drop it loudly.
                    tracing::error!(%error, "acknowledging an unreadable message");
                    self.consumer
                        .ack(&message)
                        .await
                        .map_err(|e| EventError::Pulsar(e.to_string()))?;
                    continue;
                }
            };
            if self.attempts.len() >= MAX_TRACKED {
                self.attempts.clear();
            }
            let attempt = self.attempts.entry(id_key(&id)).or_insert(0);
            *attempt += 1;
            return Ok(Delivery {
                event,
                attempt: *attempt,
                token: Token::Pulsar { id },
            });
        }
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), EventError> {
        let Token::Pulsar { id } = &delivery.token else {
            return Err(EventError::ForeignDelivery);
        };
        self.attempts.remove(&id_key(id));
        self.consumer
            .ack_with_id(&self.topic, id.clone())
            .await
            .map_err(|e| EventError::Pulsar(e.to_string()))
    }

    async fn nack(&mut self, delivery: &Delivery) -> Result<(), EventError> {
        let Token::Pulsar { id } = &delivery.token else {
            return Err(EventError::ForeignDelivery);
        };
        if delivery.attempt >= self.options.max_attempts {
            // Out of attempts: no back-off, the redelivery goes straight to the dead-letter topic.
            self.attempts.remove(&id_key(id));
            return self
                .consumer
                .nack_with_id(&self.topic, id.clone())
                .await
                .map_err(|e| EventError::Pulsar(e.to_string()));
        }
        let due = Instant::now() + self.options.backoff_after(delivery.attempt);
        self.sequence += 1;
        self.held_nacks.insert((due, self.sequence), id.clone());
        Ok(())
    }
}
