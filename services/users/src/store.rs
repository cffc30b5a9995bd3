//! Where users live: one repository contract, on SQLite and on CQL. Records hold personal data
//! sealed (the service seals and opens it) and the e-mail only as a blind index.

use async_trait::async_trait;
use shopmesh_events::Event;
use shopmesh_host::Migrations;
use shopmesh_storage::{Migration, StorageError};
use uuid::Uuid;

pub mod cql;
pub mod sqlite;

/// The topic users' events go to.
pub const TOPIC: &str = "shopmesh.users";

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: Uuid,
    /// Keyed hash of the normalised e-mail; unique.
    pub email_index: Vec<u8>,
    pub password_hash: String,
    /// The sealed [`crate::profile::Profile`] (e-mail, name, phone, addresses).
    pub profile: Vec<u8>,
    pub locale: String,
    pub roles: Vec<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Increases with every update; an update applies only over the version it read.
    pub version: i64,
}

/// Failed logins in a row for one e-mail index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failures {
    pub count: u32,
    /// Logins are refused until then (milliseconds since the epoch; 0 for not blocked).
    pub blocked_until_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The e-mail is taken (create), or the record changed since it was read (update).
    #[error("conflict")]
    Conflict,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Storage(error.into())
    }
}

impl From<scylla::errors::ExecutionError> for StoreError {
    fn from(error: scylla::errors::ExecutionError) -> Self {
        Self::Storage(shopmesh_storage::cql::classify(error))
    }
}

/// Where a listing continues: after this creation time and id.
pub type Cursor = (i64, Uuid);

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Stores a new account and its registration event together; [`StoreError::Conflict`]
    /// when the e-mail index is taken. Uniqueness is the store's (a unique index or an LWT).
    async fn create(&self, user: &UserRecord, event: &Event) -> Result<(), StoreError>;
    async fn get(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError>;
    async fn find_by_email(&self, email_index: &[u8]) -> Result<Option<UserRecord>, StoreError>;
    /// Writes `user` (password, profile, locale, roles) if the stored version is
    /// `user.version - 1`, [`StoreError::Conflict`] otherwise, with `event` if given. The event
    /// is one that is safe to act on even if the update loses (a session revocation).
    async fn update(&self, user: &UserRecord, event: Option<&Event>) -> Result<(), StoreError>;
    /// Accounts oldest first, after `after`.
    async fn list(
        &self,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError>;
    async fn failures(&self, email_index: &[u8]) -> Result<Failures, StoreError>;
    async fn set_failures(&self, email_index: &[u8], failures: Failures) -> Result<(), StoreError>;
    async fn clear_failures(&self, email_index: &[u8]) -> Result<(), StoreError>;
}

/// The users schema on both backends.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: SQLITE,
    cql: CQL,
};

const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "users",
        statements: "
            CREATE TABLE users (
                id TEXT PRIMARY KEY,
                email_index BLOB NOT NULL UNIQUE,
                password_hash TEXT NOT NULL,
                profile BLOB NOT NULL,
                locale TEXT NOT NULL,
                roles TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL,
                version INTEGER NOT NULL
            );
            CREATE INDEX users_by_created ON users (created_at, id);
            CREATE TABLE login_failures (
                email_index BLOB PRIMARY KEY,
                failures INTEGER NOT NULL,
                blocked_until INTEGER NOT NULL
            );
        ",
    },
    Migration {
        version: 2,
        name: "outbox",
        statements: shopmesh_events::outbox::SQLITE_SCHEMA,
    },
];

const CQL: &[Migration] = &[
    Migration {
        version: 1,
        name: "users",
        statements: "
            CREATE TABLE IF NOT EXISTS users (
                id uuid PRIMARY KEY,
                email_index blob,
                password_hash text,
                profile blob,
                locale text,
                roles list<text>,
                created_at bigint,
                updated_at bigint,
                version bigint
            );
            CREATE TABLE IF NOT EXISTS users_by_email (email_index blob PRIMARY KEY, user_id uuid);
            CREATE TABLE IF NOT EXISTS users_by_month (
                month int,
                created_at bigint,
                id uuid,
                PRIMARY KEY ((month), created_at, id)
            );
            CREATE TABLE IF NOT EXISTS user_months (shard int, month int, PRIMARY KEY ((shard), month));
            CREATE TABLE IF NOT EXISTS login_failures (
                email_index blob PRIMARY KEY,
                failures int,
                blocked_until bigint
            ) WITH default_time_to_live = 86400;
        ",
    },
    Migration {
        version: 2,
        name: "outbox",
        statements: shopmesh_events::outbox::CQL_SCHEMA,
    },
];
