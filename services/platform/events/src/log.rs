//! The embedded event log: a durable, append-only log in one SQLite file, for `shopmesh up`.
//!
//! Each topic is the ordered sequence of its events. A subscription is a cursor (the last event
//! it took from the log) plus a table of events in flight (delivered, not yet acknowledged), each
//! with its attempt count and the time it becomes visible again. Taking an event, acknowledging
//! it and scheduling its redelivery are single transactions, so a crash at any point loses
//! nothing: in-flight events become visible again when the process restarts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, params};
use shopmesh_storage::Migration;
use shopmesh_storage::sqlite::Sqlite;
use tokio::sync::Notify;

use crate::{
    Delivery, Event, EventBus, EventError, SubscribeOptions, Subscriber, Token, check_names,
    dead_letter_topic, now_ms,
};

/// How long an idle subscriber sleeps before looking again when nothing wakes it (a publish in
/// this process wakes it at once).
const IDLE_POLL: Duration = Duration::from_millis(250);

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "event_log",
    statements: "
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            topic TEXT NOT NULL,
            id TEXT NOT NULL,
            key TEXT NOT NULL,
            kind TEXT NOT NULL,
            payload BLOB NOT NULL,
            headers TEXT NOT NULL,
            occurred_at INTEGER NOT NULL
        );
        CREATE INDEX events_by_topic ON events (topic, seq);
        CREATE TABLE subscriptions (
            topic TEXT NOT NULL,
            name TEXT NOT NULL,
            cursor INTEGER NOT NULL,
            PRIMARY KEY (topic, name)
        );
        CREATE TABLE in_flight (
            topic TEXT NOT NULL,
            subscription TEXT NOT NULL,
            seq INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            visible_at INTEGER NOT NULL,
            PRIMARY KEY (topic, subscription, seq)
        );
        CREATE INDEX in_flight_by_visibility ON in_flight (topic, subscription, visible_at);
    ",
}];

/// The embedded log. Cheap to clone; every clone shares one database and the wake-up signals.
#[derive(Clone, Debug)]
pub struct EmbeddedLog {
    db: Sqlite,
    /// One signal per topic: a publish wakes only the subscribers of its topic, which then
    /// look in the log (a write transaction each, so waking all of them would cost dearly).
    published: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log stored at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, EventError> {
        Ok(Self {
            db: Sqlite::open(path, MIGRATIONS).await?,
            published: Arc::default(),
        })
    }

    /// The wake-up signal of `topic`.
    fn signal(&self, topic: &str) -> Arc<Notify> {
        let mut signals = self
            .published
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        signals.entry(topic.to_owned()).or_default().clone()
    }

    /// Every event stored on `topic`, oldest first: for inspecting dead-letter topics.
    pub async fn read_topic(&self, topic: &str, limit: usize) -> Result<Vec<Event>, EventError> {
        let topic = topic.to_owned();
        self.db
            .read(move |db| {
                let mut statement = db.prepare_cached(
                    "SELECT id, key, kind, payload, headers, occurred_at FROM events WHERE topic = ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = statement.query_map(params![topic, limit as i64], read_event)?;
                Ok::<_, EventError>(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
    }
}

fn read_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    crate::event_from_row(row, 0)
}

fn append(tx: &Transaction<'_>, topic: &str, event: &Event) -> Result<(), EventError> {
    let headers =
        serde_json::to_string(&event.headers).map_err(|e| EventError::Invalid(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO events (topic, id, key, kind, payload, headers, occurred_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![topic, event.id, event.key, event.kind, event.payload, headers, event.occurred_at_ms])?;
    Ok(())
}

#[async_trait]
impl EventBus for EmbeddedLog {
    async fn publish(&self, topic: &str, event: &Event) -> Result<(), EventError> {
        self.publish_all(&[(topic.to_owned(), event.clone())]).await
    }

    async fn publish_all(&self, events: &[(String, Event)]) -> Result<(), EventError> {
        for (topic, event) in events {
            check_names(topic, None)?;
            event.check()?;
        }
        let batch = events.to_vec();
        self.db
            .write(move |tx| {
                for (topic, event) in &batch {
                    append(tx, topic, event)?;
                }
                Ok::<_, EventError>(())
            })
            .await?;
        let topics: std::collections::BTreeSet<&String> = events.iter().map(|(t, _)| t).collect();
        for topic in topics {
            self.signal(topic).notify_waiters();
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
        let (t, s) = (topic.to_owned(), subscription.to_owned());
        self.db
            .write(move |tx| {
                tx.execute(
                    "INSERT OR IGNORE INTO subscriptions (topic, name, cursor) VALUES (?1, ?2, 0)",
                    params![t, s],
                )?;
                Ok::<_, EventError>(())
            })
            .await?;
        Ok(Box::new(LogSubscriber {
            log: self.clone(),
            signal: self.signal(topic),
            acked: Vec::new(),
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
            options,
        }))
    }
}

struct LogSubscriber {
    log: EmbeddedLog,
    /// The topic's wake-up signal.
    signal: Arc<Notify>,
    /// Acknowledged deliveries not yet removed from `in_flight`: they go in the next write
    /// (usually the next `take`), which saves a transaction per event. Should the process die
    /// first, they are delivered again, which at-least-once allows.
    acked: Vec<i64>,
    topic: String,
    subscription: String,
    options: SubscribeOptions,
}

/// What one look at the log found.
enum Take {
    Delivery(Delivery),
    /// Nothing to deliver; the earliest in-flight event becomes visible at this time, if any.
    Idle(Option<i64>),
}

impl LogSubscriber {
    /// In one transaction: redeliver the oldest due in-flight event (or dead-letter it when out
    /// of attempts), else take the next event after the cursor.
    async fn take(&mut self) -> Result<Take, EventError> {
        let (topic, subscription, options) = (
            self.topic.clone(),
            self.subscription.clone(),
            self.options.clone(),
        );
        let acked = std::mem::take(&mut self.acked);
        self.log
            .db
            .write(move |tx| {
                settle_acked(tx, &topic, &subscription, &acked)?;
                loop {
                let now = now_ms();
                let due: Option<(i64, u32)> = tx
                    .prepare_cached(
                        "SELECT seq, attempts FROM in_flight WHERE topic = ?1 AND subscription = ?2 AND visible_at <= ?3 ORDER BY seq LIMIT 1",
                    )?
                    .query_row(params![topic, subscription, now], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let (seq, attempt) = match due {
                    // Timed out on its last attempt.
                    Some((seq, attempts)) if attempts >= options.max_attempts => {
                        dead_letter(tx, &topic, &subscription, seq)?;
                        continue;
                    }
                    Some((seq, attempts)) => (seq, attempts + 1),
                    None => {
                        let next: Option<i64> = tx
                            .prepare_cached(
                                "SELECT e.seq FROM events e JOIN subscriptions s ON s.topic = e.topic AND s.name = ?2
                                 WHERE e.topic = ?1 AND e.seq > s.cursor ORDER BY e.seq LIMIT 1",
                            )?
                            .query_row(params![topic, subscription], |r| r.get(0))
                            .optional()?;
                        let Some(seq) = next else {
                            let wake: Option<i64> = tx
                                .prepare_cached("SELECT MIN(visible_at) FROM in_flight WHERE topic = ?1 AND subscription = ?2")?
                                .query_row(params![topic, subscription], |r| r.get(0))?;
                            return Ok(Take::Idle(wake));
                        };
                        tx.execute("UPDATE subscriptions SET cursor = ?3 WHERE topic = ?1 AND name = ?2", params![topic, subscription, seq])?;
                        (seq, 1)
                    }
                };
                let visible_at = now + options.ack_timeout.as_millis() as i64;
                tx.prepare_cached(
                    "INSERT INTO in_flight (topic, subscription, seq, attempts, visible_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (topic, subscription, seq) DO UPDATE SET attempts = excluded.attempts, visible_at = excluded.visible_at",
                )?
                .execute(params![topic, subscription, seq, attempt, visible_at])?;
                let event = load(tx, seq)?;
                return Ok(Take::Delivery(Delivery { event, attempt, token: Token::Log { seq } }));
                }
            })
            .await
    }

    fn seq(delivery: &Delivery) -> Result<i64, EventError> {
        match delivery.token {
            Token::Log { seq } => Ok(seq),
            Token::Pulsar { .. } => Err(EventError::ForeignDelivery),
        }
    }
}

fn load(tx: &Transaction<'_>, seq: i64) -> Result<Event, EventError> {
    Ok(tx
        .prepare_cached(
            "SELECT id, key, kind, payload, headers, occurred_at FROM events WHERE seq = ?1",
        )?
        .query_row([seq], read_event)?)
}

#[async_trait]
impl Subscriber for LogSubscriber {
    async fn next(&mut self) -> Result<Delivery, EventError> {
        loop {
            // Register interest before looking, so a publish between the look and the wait
            // still wakes us.
            let signal = self.signal.clone();
            let woken = signal.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let wait = match self.take().await? {
                Take::Delivery(delivery) => return Ok(delivery),
                Take::Idle(Some(visible_at)) => Duration::from_millis(
                    (visible_at - now_ms()).clamp(1, IDLE_POLL.as_millis() as i64) as u64,
                ),
                Take::Idle(None) => IDLE_POLL,
            };
            let _ = tokio::time::timeout(wait, woken).await;
        }
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), EventError> {
        self.acked.push(Self::seq(delivery)?);
        Ok(())
    }

    async fn close(mut self: Box<Self>) -> Result<(), EventError> {
        let acked = std::mem::take(&mut self.acked);
        let (topic, subscription) = (self.topic.clone(), self.subscription.clone());
        self.log
            .db
            .write(move |tx| settle_acked(tx, &topic, &subscription, &acked))
            .await
    }

    async fn nack(&mut self, delivery: &Delivery) -> Result<(), EventError> {
        let seq = Self::seq(delivery)?;
        let out_of_attempts = delivery.attempt >= self.options.max_attempts;
        let visible_at = now_ms() + self.options.backoff_after(delivery.attempt).as_millis() as i64;
        let (topic, subscription) = (self.topic.clone(), self.subscription.clone());
        let acked = std::mem::take(&mut self.acked);
        self.log
            .db
            .write(move |tx| {
                settle_acked(tx, &topic, &subscription, &acked)?;
                if out_of_attempts {
                    dead_letter(tx, &topic, &subscription, seq)
                } else {
                    tx.prepare_cached("UPDATE in_flight SET visible_at = ?4 WHERE topic = ?1 AND subscription = ?2 AND seq = ?3")?
                        .execute(params![topic, subscription, seq, visible_at])?;
                    Ok(())
                }
            })
            .await?;
        if out_of_attempts {
            let letters = dead_letter_topic(&self.topic, &self.subscription);
            self.log.signal(&letters).notify_waiters();
        }
        Ok(())
    }
}

/// Forgets acknowledged deliveries.
fn settle_acked(
    tx: &Transaction<'_>,
    topic: &str,
    subscription: &str,
    acked: &[i64],
) -> Result<(), EventError> {
    let mut delete = tx.prepare_cached(
        "DELETE FROM in_flight WHERE topic = ?1 AND subscription = ?2 AND seq = ?3",
    )?;
    for seq in acked {
        delete.execute(params![topic, subscription, seq])?;
    }
    Ok(())
}

/// Moves an in-flight event to the subscription's dead-letter topic.
fn dead_letter(
    tx: &Transaction<'_>,
    topic: &str,
    subscription: &str,
    seq: i64,
) -> Result<(), EventError> {
    let event = load(tx, seq)?;
    append(tx, &dead_letter_topic(topic, subscription), &event)?;
    tx.execute(
        "DELETE FROM in_flight WHERE topic = ?1 AND subscription = ?2 AND seq = ?3",
        params![topic, subscription, seq],
    )?;
    tracing::warn!(
        topic,
        subscription,
        event_id = event.id,
        "event moved to the dead-letter topic"
    );
    Ok(())
}
