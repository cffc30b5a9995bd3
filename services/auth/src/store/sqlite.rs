//! Auth's store on SQLite.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use shopmesh_storage::StorageError;
use shopmesh_storage::sqlite::{Sqlite, uuid_at};
use uuid::Uuid;

use super::{AuthStore, RefreshToken, StoredKey};

#[derive(Debug, Clone)]
pub struct SqliteAuth(pub Sqlite);

#[async_trait]
impl AuthStore for SqliteAuth {
    async fn keys(&self) -> Result<Vec<StoredKey>, StorageError> {
        self.0
            .read(|db| {
                let mut statement = db.prepare_cached(
                    "SELECT kid, private_key, created_at, retired_at, remove_after FROM signing_keys",
                )?;
                let rows = statement.query_map([], |row| {
                    Ok(StoredKey {
                        kid: row.get(0)?,
                        sealed_private: row.get(1)?,
                        created_at_ms: row.get(2)?,
                        retired_at_ms: row.get(3)?,
                        remove_after_ms: row.get(4)?,
                    })
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
    }

    async fn add_key(&self, key: &StoredKey, retire: &[(String, i64)]) -> Result<(), StorageError> {
        let (key, retire) = (key.clone(), retire.to_vec());
        self.0
            .write(move |tx| {
                tx.prepare_cached(
                    "INSERT INTO signing_keys (kid, private_key, created_at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![
                    key.kid,
                    key.sealed_private,
                    key.created_at_ms
                ])?;
                let mut retiring = tx.prepare_cached(
                    "UPDATE signing_keys SET retired_at = ?1, remove_after = ?2 WHERE kid = ?3",
                )?;
                for (kid, remove_after) in retire {
                    retiring.execute(params![key.created_at_ms, remove_after, kid])?;
                }
                Ok(())
            })
            .await
    }

    async fn start_family(&self, token: &RefreshToken) -> Result<(), StorageError> {
        let token = token.clone();
        self.0
            .write(move |tx| {
                tx.prepare_cached(
                    "INSERT INTO token_families (id, user_id, expires_at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![
                    token.family.to_string(),
                    token.user_id.to_string(),
                    token.expires_at_ms
                ])?;
                insert_token(tx, &token)
            })
            .await
    }

    async fn add_token(&self, token: &RefreshToken) -> Result<(), StorageError> {
        let token = token.clone();
        self.0
            .write(move |tx| {
                tx.prepare_cached(
                    "UPDATE token_families SET expires_at = MAX(expires_at, ?1) WHERE id = ?2",
                )?
                .execute(params![token.expires_at_ms, token.family.to_string()])?;
                insert_token(tx, &token)
            })
            .await
    }

    async fn token(&self, hash: &[u8]) -> Result<Option<RefreshToken>, StorageError> {
        let hash = hash.to_vec();
        self.0
            .read(move |db| {
                Ok(db
                    .prepare_cached(
                        "SELECT hash, family, user_id, expires_at, spent FROM refresh_tokens WHERE hash = ?1",
                    )?
                    .query_row([hash], |row| {
                        Ok(RefreshToken {
                            hash: row.get(0)?,
                            family: uuid_at(row, 1)?,
                            user_id: uuid_at(row, 2)?,
                            expires_at_ms: row.get(3)?,
                            spent: row.get(4)?,
                        })
                    })
                    .optional()?)
            })
            .await
    }

    async fn spend(&self, hash: &[u8]) -> Result<bool, StorageError> {
        let hash = hash.to_vec();
        self.0
            .write(move |tx| {
                let spent = tx
                    .prepare_cached(
                        "UPDATE refresh_tokens SET spent = 1 WHERE hash = ?1 AND spent = 0",
                    )?
                    .execute([hash])?;
                Ok(spent == 1)
            })
            .await
    }

    async fn family_revoked(&self, family: Uuid) -> Result<bool, StorageError> {
        self.0
            .read(move |db| {
                let revoked: Option<bool> = db
                    .prepare_cached("SELECT revoked FROM token_families WHERE id = ?1")?
                    .query_row([family.to_string()], |row| row.get(0))
                    .optional()?;
                // A token whose family is gone is as good as revoked.
                Ok(revoked.unwrap_or(true))
            })
            .await
    }

    async fn revoke_family(&self, family: Uuid) -> Result<(), StorageError> {
        self.0
            .write(move |tx| {
                tx.prepare_cached("UPDATE token_families SET revoked = 1 WHERE id = ?1")?
                    .execute([family.to_string()])?;
                Ok(())
            })
            .await
    }

    async fn revoke_user(&self, user: Uuid, now_ms: i64) -> Result<u32, StorageError> {
        self.0
            .write(move |tx| {
                let revoked = tx
                    .prepare_cached(
                        "UPDATE token_families SET revoked = 1
                         WHERE user_id = ?1 AND revoked = 0 AND expires_at > ?2",
                    )?
                    .execute(params![user.to_string(), now_ms])?;
                Ok(revoked as u32)
            })
            .await
    }

    async fn purge_expired(&self, before_ms: i64) -> Result<(), StorageError> {
        self.0.write(move |tx| purge(tx, before_ms)).await
    }
}

fn purge(tx: &rusqlite::Transaction<'_>, before_ms: i64) -> Result<(), StorageError> {
    tx.prepare_cached("DELETE FROM refresh_tokens WHERE expires_at < ?1")?
        .execute([before_ms])?;
    tx.prepare_cached(
        "DELETE FROM token_families WHERE expires_at < ?1
         AND NOT EXISTS (SELECT 1 FROM refresh_tokens WHERE family = token_families.id)",
    )?
    .execute([before_ms])?;
    Ok(())
}

fn insert_token(tx: &rusqlite::Transaction<'_>, token: &RefreshToken) -> Result<(), StorageError> {
    tx.prepare_cached(
        "INSERT INTO refresh_tokens (hash, family, user_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        token.hash,
        token.family.to_string(),
        token.user_id.to_string(),
        token.expires_at_ms
    ])?;
    Ok(())
}
