//! What auth keeps: signing keys (private halves sealed) and refresh tokens (by hash only), on
//! SQLite and on CQL behind one contract.

use async_trait::async_trait;
use shopmesh_storage::{Migration, StorageError};
use uuid::Uuid;

use self::cql::CqlAuth;
use self::sqlite::SqliteAuth;

pub mod cql;
pub mod sqlite;

/// A stored signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    /// The PKCS#8 private key, sealed with the service's data key and bound to `kid`.
    pub sealed_private: Vec<u8>,
    pub created_at_ms: i64,
    /// When a newer key replaced it; `None` while it is the newest.
    pub retired_at_ms: Option<i64>,
    /// When it leaves the JWKS (its last token has expired); set when retired.
    pub remove_after_ms: Option<i64>,
}

/// A refresh token, known by the SHA-256 of its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub hash: Vec<u8>,
    /// The login session it descends from; revoking the family ends every token in it.
    pub family: Uuid,
    pub user_id: Uuid,
    pub expires_at_ms: i64,
    pub spent: bool,
}

#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    /// Every key, retired ones included.
    async fn keys(&self) -> Result<Vec<StoredKey>, StorageError>;
    /// Adds `key` as the newest and retires the keys in `retire` (kid, remove after).
    async fn add_key(&self, key: &StoredKey, retire: &[(String, i64)]) -> Result<(), StorageError>;

    /// Starts a login session: a family and its first token.
    async fn start_family(&self, token: &RefreshToken) -> Result<(), StorageError>;
    /// Adds a token to an existing family (after a refresh).
    async fn add_token(&self, token: &RefreshToken) -> Result<(), StorageError>;
    async fn token(&self, hash: &[u8]) -> Result<Option<RefreshToken>, StorageError>;
    /// Spends a token; `false` when it had been spent already (a replay). Atomic: of two
    /// concurrent refreshes with one token, exactly one spends it.
    async fn spend(&self, hash: &[u8]) -> Result<bool, StorageError>;
    async fn family_revoked(&self, family: Uuid) -> Result<bool, StorageError>;
    async fn revoke_family(&self, family: Uuid) -> Result<(), StorageError>;
    /// Revokes every live family of `user`; returns how many there were.
    async fn revoke_user(&self, user: Uuid, now_ms: i64) -> Result<u32, StorageError>;
    /// Deletes tokens and families that expired before `before_ms` (CQL rows expire by TTL).
    async fn purge_expired(&self, before_ms: i64) -> Result<(), StorageError>;
}

// The host opens the repository on either backend, with its outbox relay running.
shopmesh_host::repository!(dyn AuthStore, SqliteAuth, CqlAuth, SQLITE, CQL, without outbox);

/// The SQLite schema.
pub const SQLITE: &[Migration] = &[Migration {
    version: 1,
    name: "auth",
    statements: "
        CREATE TABLE signing_keys (
            kid TEXT PRIMARY KEY,
            private_key BLOB NOT NULL,
            created_at INTEGER NOT NULL,
            retired_at INTEGER,
            remove_after INTEGER
        );
        CREATE TABLE token_families (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            expires_at INTEGER NOT NULL,
            revoked INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX token_families_by_user ON token_families (user_id);
        CREATE TABLE refresh_tokens (
            hash BLOB PRIMARY KEY,
            family TEXT NOT NULL REFERENCES token_families (id),
            user_id TEXT NOT NULL,
            expires_at INTEGER NOT NULL,
            spent INTEGER NOT NULL DEFAULT 0
        );
    ",
}];

/// The CQL schema.
pub const CQL: &[Migration] = &[Migration {
    version: 1,
    name: "auth",
    statements: "
        CREATE TABLE IF NOT EXISTS signing_keys (
            kid text PRIMARY KEY,
            private_key blob,
            created_at bigint,
            retired_at bigint,
            remove_after bigint
        );
        CREATE TABLE IF NOT EXISTS token_families (
            id uuid PRIMARY KEY,
            user_id uuid,
            expires_at bigint,
            revoked boolean
        );
        CREATE TABLE IF NOT EXISTS families_by_user (
            user_id uuid,
            family uuid,
            expires_at bigint,
            PRIMARY KEY ((user_id), family)
        );
        CREATE TABLE IF NOT EXISTS refresh_tokens (
            hash blob PRIMARY KEY,
            family uuid,
            user_id uuid,
            expires_at bigint,
            spent boolean
        );
    ",
}];
