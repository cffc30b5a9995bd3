//! Where users live: one repository contract, on SQLite and on CQL. Records hold personal data
//! sealed (the service seals and opens it) and the e-mail only as a blind index.

use async_trait::async_trait;
use shopmesh_events::Event;
use shopmesh_storage::Migration;
use uuid::Uuid;

use crate::config::ThrottleConfig;

use self::cql::CqlUsers;
use self::sqlite::SqliteUsers;

pub mod cql;
pub mod sqlite;

/// The topic users' events go to.
pub const TOPIC: &str = shopmesh_events::topics::USERS;

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

/// A streak of failures older than this is forgotten.
pub const FAILURE_MEMORY_MS: i64 = 24 * 3600 * 1000;

/// Login attempts in a row, not yet followed by a success, for one e-mail index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failures {
    pub count: u32,
    /// Logins are refused until then (milliseconds since the epoch; 0 for not blocked).
    pub blocked_until_ms: i64,
    pub last_attempt_ms: i64,
}

impl Failures {
    /// The record after one more attempt at `now_ms`, counted as a failure in advance (a
    /// success clears it), or the time the e-mail is blocked until.
    pub fn attempt(self, now_ms: i64, throttle: &ThrottleConfig) -> Result<Self, i64> {
        if self.blocked_until_ms > now_ms {
            return Err(self.blocked_until_ms);
        }
        let earlier = if now_ms - self.last_attempt_ms > FAILURE_MEMORY_MS {
            0
        } else {
            self.count
        };
        let count = earlier.saturating_add(1);
        Ok(Self {
            count,
            blocked_until_ms: throttle
                .delay_after(count)
                .map_or(0, |delay| now_ms + delay.as_millis() as i64),
            last_attempt_ms: now_ms,
        })
    }
}

/// Whether a login attempt may check its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Allowed,
    Blocked { until_ms: i64 },
}

/// Repository failures (see [`shopmesh_storage::RepoError`]).
pub use shopmesh_storage::RepoError as StoreError;

pub use shopmesh_kit::paging::Cursor;

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
    /// Counts a password check for `email_index` before it runs, atomically, as
    /// [`Failures::attempt`] says: concurrent guesses are each counted, so a burst cannot slip
    /// past the throttle.
    async fn begin_attempt(
        &self,
        email_index: &[u8],
        now_ms: i64,
        throttle: &ThrottleConfig,
    ) -> Result<Attempt, StoreError>;
    /// Forgets the attempts after a successful check.
    async fn clear_failures(&self, email_index: &[u8]) -> Result<(), StoreError>;
    /// Deletes attempt records untouched since `before_ms` (CQL rows expire by TTL).
    async fn purge_attempts(&self, before_ms: i64) -> Result<(), StoreError>;
}

// The host opens the repository on either backend, with its outbox relay running.
shopmesh_host::repository!(dyn UserStore, SqliteUsers, CqlUsers, SQLITE, CQL);

/// The SQLite schema.
pub const SQLITE: &[Migration] = &[
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
                blocked_until INTEGER NOT NULL,
                last_attempt INTEGER NOT NULL
            );
        ",
    },
    shopmesh_events::outbox::sqlite_migration(2),
];

/// The CQL schema.
pub const CQL: &[Migration] = &[
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
            CREATE TABLE IF NOT EXISTS users_by_email (email_index blob PRIMARY KEY, user_id uuid, claimed_at bigint);
            CREATE TABLE IF NOT EXISTS users_by_month (
                month int,
                created_at bigint,
                id uuid,
                PRIMARY KEY ((month), created_at, id)
            );
            CREATE TABLE IF NOT EXISTS users_months (shard int, month int, PRIMARY KEY ((shard), month));
            CREATE TABLE IF NOT EXISTS login_failures (
                email_index blob PRIMARY KEY,
                failures int,
                blocked_until bigint,
                last_attempt bigint
            ) WITH default_time_to_live = 86400;
        ",
    },
    shopmesh_events::outbox::cql_migration(2),
];
