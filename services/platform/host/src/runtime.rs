//! The wiring every service needs and writes once here: its store opened with the outbox
//! relay running, consumers on its subscriptions, periodic jobs, all drained at shutdown.
//!
//! A [`Runtime`] needs no running host: tests and one-off tools build one over a bus of their
//! own ([`Runtime::new`]) and run a service's real wiring on it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shopmesh_events::outbox::{OutboxStore, Relay, SqliteOutbox};
use shopmesh_events::{Event, EventBus, EventError, SubscribeOptions, consumer};
use shopmesh_kit::Shutdown;
use shopmesh_kit::shutdown::{DEFAULT_DRAIN, every};
use shopmesh_storage::cql::Cql;
use shopmesh_storage::sqlite::Sqlite;
use shopmesh_storage::{Migration, StorageError};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

/// What a service's background work runs on: the event bus, the shutdown signal, and the
/// tasks the host waits for when draining.
#[derive(Clone)]
pub struct Runtime {
    pub events: Arc<dyn EventBus>,
    pub shutdown: Shutdown,
    /// `None` for an inert runtime.
    tasks: Option<TaskTracker>,
}

/// Wakes an outbox relay at once; call it after committing outbox writes.
pub type Waker = Arc<Notify>;

/// One consumer of a topic.
#[derive(Debug, Clone)]
pub struct Subscription<'a> {
    pub topic: &'a str,
    /// The subscription's name: consumers sharing it share the events.
    pub name: &'a str,
    /// Labels the consumer's logs and metrics.
    pub label: &'static str,
    pub options: SubscribeOptions,
}

impl<'a> Subscription<'a> {
    /// A subscription with default options, labelled `label`.
    pub fn new(topic: &'a str, name: &'a str, label: &'static str) -> Self {
        Self {
            topic,
            name,
            label,
            options: SubscribeOptions::default(),
        }
    }

    pub fn with_options(self, options: SubscribeOptions) -> Self {
        Self { options, ..self }
    }
}

impl Runtime {
    pub fn new(events: Arc<dyn EventBus>, shutdown: Shutdown) -> Self {
        Self {
            events,
            shutdown,
            tasks: Some(TaskTracker::new()),
        }
    }

    /// A runtime that drops background work rather than run it: for tests that drive a
    /// service's handlers by hand and look at what its outbox keeps.
    pub fn inert(events: Arc<dyn EventBus>) -> Self {
        Self {
            events,
            shutdown: Shutdown::new(),
            tasks: None,
        }
    }

    /// Runs `task` in the background; draining waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Some(tasks) = &self.tasks {
            tasks.spawn(task);
        }
    }

    /// Runs `job(state)` every `period` until shutdown; a failure is logged and the job runs
    /// again at its next time.
    pub fn every<S, F, Fut>(&self, name: &'static str, period: Duration, state: S, job: F)
    where
        S: Clone + Send + 'static,
        F: Fn(S) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.spawn(every(self.shutdown.clone(), period, name, move || {
            job(state.clone())
        }));
    }

    /// Subscribes, then hands every delivery to `handle(state, event)` until shutdown (see
    /// [`consumer::run`] for acknowledgement and redelivery).
    pub async fn consume<S, F, Fut>(
        &self,
        subscription: Subscription<'_>,
        state: S,
        handle: F,
    ) -> Result<(), EventError>
    where
        S: Clone + Send + 'static,
        F: Fn(S, Event) -> Fut + Send + 'static,
        Fut: Future<Output = shopmesh_kit::Result<()>> + Send + 'static,
    {
        let subscriber = self
            .events
            .subscribe(subscription.topic, subscription.name, subscription.options)
            .await?;
        self.spawn(consumer::run(
            subscriber,
            subscription.label,
            self.shutdown.clone(),
            move |event| handle(state.clone(), event),
        ));
        Ok(())
    }

    /// Builds repository `R` on an opened database, and starts its outbox relay if it has one.
    pub async fn repository<R: Repository + ?Sized>(
        &self,
        store: Store,
    ) -> Result<(Arc<R>, Waker), StorageError> {
        let opened = match store {
            Store::Sqlite(db) => R::on_sqlite(db).await?,
            Store::Cql(cql) => R::on_cql(cql).await?,
        };
        let waker = match opened.outbox {
            Some(outbox) => {
                let relay = Relay::new(outbox, self.events.clone());
                let waker = relay.waker();
                self.spawn(relay.run(self.shutdown.clone()));
                waker
            }
            None => Waker::default(),
        };
        Ok((opened.store, waker))
    }

    /// Stops the background work and waits for it, within the usual drain time (a tool's end).
    pub async fn drain(&self) {
        self.shutdown.trigger();
        self.close();
        let _ = tokio::time::timeout(DEFAULT_DRAIN, self.wait()).await;
    }

    /// Takes no more tasks.
    pub(crate) fn close(&self) {
        if let Some(tasks) = &self.tasks {
            tasks.close();
        }
    }

    /// Waits for every task, once closed.
    pub(crate) async fn wait(&self) {
        if let Some(tasks) = &self.tasks {
            tasks.wait().await;
        }
    }
}

/// A service's opened database.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(Sqlite),
    Cql(Cql),
}

/// A service's repository on both backends: its schema, and how it is built on an opened
/// database, with the outbox its writes put events in. Implemented once per service, for the
/// repository trait object (`impl Repository for dyn UserStore`).
#[async_trait]
pub trait Repository: Send + Sync + 'static {
    const SQLITE: &'static [Migration];
    const CQL: &'static [Migration];

    async fn on_sqlite(db: Sqlite) -> Result<Opened<Self>, StorageError>;
    async fn on_cql(cql: Cql) -> Result<Opened<Self>, StorageError>;
}

/// Implements [`Repository`] for the usual shape of a service's store: a SQLite backend that is
/// a newtype over [`Sqlite`] and writes its events to the outbox table of the same database, and
/// a CQL backend built by `new(Cql)` that names the outbox its batches write to with `outbox()`.
/// `without outbox` declares a store whose writes emit no events.
///
/// ```ignore
/// shopmesh_host::repository!(dyn OrderStore, SqliteOrders, CqlOrders, SQLITE, CQL);
/// shopmesh_host::repository!(dyn AuthStore, SqliteAuth, CqlAuth, SQLITE, CQL, without outbox);
/// ```
#[macro_export]
macro_rules! repository {
    (dyn $store:path, $sqlite:ident, $cql:ident, $sqlite_schema:expr, $cql_schema:expr) => {
        $crate::repository!(@impl $store, $sqlite_schema, $cql_schema,
            |db| $crate::Opened::sqlite(::std::sync::Arc::new($sqlite(db.clone())), db),
            |cql| {
                let store = $cql::new(cql).await?;
                $crate::Opened::cql(store.outbox(), ::std::sync::Arc::new(store))
            });
    };
    (dyn $store:path, $sqlite:ident, $cql:ident, $sqlite_schema:expr, $cql_schema:expr, without outbox) => {
        $crate::repository!(@impl $store, $sqlite_schema, $cql_schema,
            |db| $crate::Opened::without_outbox(::std::sync::Arc::new($sqlite(db))),
            |cql| $crate::Opened::without_outbox(::std::sync::Arc::new($cql::new(cql).await?)));
    };
    (@impl $store:path, $sqlite_schema:expr, $cql_schema:expr,
        |$db:ident| $on_sqlite:expr, |$c:ident| $on_cql:expr) => {
        #[$crate::async_trait]
        impl $crate::Repository for dyn $store {
            const SQLITE: &'static [$crate::Migration] = $sqlite_schema;
            const CQL: &'static [$crate::Migration] = $cql_schema;

            async fn on_sqlite(
                $db: $crate::Sqlite,
            ) -> ::std::result::Result<$crate::Opened<Self>, $crate::StorageError> {
                Ok($on_sqlite)
            }

            async fn on_cql(
                $c: $crate::Cql,
            ) -> ::std::result::Result<$crate::Opened<Self>, $crate::StorageError> {
                Ok($on_cql)
            }
        }
    };
}

/// A built repository and the outbox its relay publishes, if it writes events.
pub struct Opened<R: ?Sized> {
    pub store: Arc<R>,
    pub outbox: Option<Arc<dyn OutboxStore>>,
}

impl<R: ?Sized> Opened<R> {
    /// A SQLite repository whose events go to the outbox table of the same database.
    pub fn sqlite(store: Arc<R>, db: Sqlite) -> Self {
        Self {
            store,
            outbox: Some(Arc::new(SqliteOutbox(db))),
        }
    }

    /// A CQL repository whose events go to `outbox`.
    pub fn cql(outbox: Arc<dyn OutboxStore>, store: Arc<R>) -> Self {
        Self {
            store,
            outbox: Some(outbox),
        }
    }

    /// A repository whose writes emit no events.
    pub fn without_outbox(store: Arc<R>) -> Self {
        Self {
            store,
            outbox: None,
        }
    }
}
