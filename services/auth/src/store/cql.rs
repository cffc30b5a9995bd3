//! Auth's store on CQL. Tokens and families expire by TTL a day after their own expiry; a
//! token is spent with a lightweight transaction, so one value refreshes once.

use async_trait::async_trait;
use scylla::statement::prepared::PreparedStatement;
use shopmesh_kit::clock::now_ms;
use shopmesh_storage::StorageError;
use shopmesh_storage::cql::{Cql, lwt_applied};
use uuid::Uuid;

use super::{AuthStore, RefreshToken, StoredKey};

/// Rows outlive the expiry they record by this much, so an expired token still reads as expired
/// (not unknown) for a while.
const TTL_MARGIN_SECS: i64 = 24 * 3600;

pub struct CqlAuth {
    cql: Cql,
    keys: PreparedStatement,
    insert_key: PreparedStatement,
    retire_key: PreparedStatement,
    insert_family: PreparedStatement,
    insert_family_by_user: PreparedStatement,
    extend_family: PreparedStatement,
    insert_token: PreparedStatement,
    select_token: PreparedStatement,
    spend: PreparedStatement,
    select_family: PreparedStatement,
    revoke_family: PreparedStatement,
    family_expiry: PreparedStatement,
    families_of_user: PreparedStatement,
}

impl CqlAuth {
    pub async fn new(cql: Cql) -> Result<Self, StorageError> {
        Ok(Self {
            keys: cql
                .prepare("SELECT kid, private_key, created_at, retired_at, remove_after FROM signing_keys")
                .await?,
            insert_key: cql
                .prepare("INSERT INTO signing_keys (kid, private_key, created_at) VALUES (?, ?, ?)")
                .await?,
            retire_key: cql
                .prepare("UPDATE signing_keys SET retired_at = ?, remove_after = ? WHERE kid = ?")
                .await?,
            insert_family: cql
                .prepare(
                    "INSERT INTO token_families (id, user_id, expires_at, revoked) VALUES (?, ?, ?, false) USING TTL ?",
                )
                .await?,
            insert_family_by_user: cql
                .prepare(
                    "INSERT INTO families_by_user (user_id, family, expires_at) VALUES (?, ?, ?) USING TTL ?",
                )
                .await?,
            extend_family: cql
                .prepare("UPDATE token_families USING TTL ? SET expires_at = ? WHERE id = ?")
                .await?,
            insert_token: cql
                .prepare(
                    "INSERT INTO refresh_tokens (hash, family, user_id, expires_at, spent) VALUES (?, ?, ?, ?, false) USING TTL ?",
                )
                .await?,
            select_token: cql
                .prepare("SELECT hash, family, user_id, expires_at, spent FROM refresh_tokens WHERE hash = ?")
                .await?,
            spend: cql
                .prepare("UPDATE refresh_tokens SET spent = true WHERE hash = ? IF spent = false")
                .await?,
            select_family: cql
                .prepare("SELECT revoked FROM token_families WHERE id = ?")
                .await?,
            revoke_family: cql
                .prepare("UPDATE token_families USING TTL ? SET revoked = true WHERE id = ?")
                .await?,
            family_expiry: cql
                .prepare("SELECT expires_at FROM token_families WHERE id = ?")
                .await?,
            families_of_user: cql
                .prepare("SELECT family, expires_at FROM families_by_user WHERE user_id = ?")
                .await?,
            cql,
        })
    }
}

fn ttl(expires_at_ms: i64) -> i32 {
    let seconds = (expires_at_ms - now_ms()) / 1000 + TTL_MARGIN_SECS;
    seconds.clamp(1, i64::from(i32::MAX)) as i32
}

#[async_trait]
impl AuthStore for CqlAuth {
    async fn keys(&self) -> Result<Vec<StoredKey>, StorageError> {
        let rows = self
            .cql
            .rows::<(String, Vec<u8>, i64, Option<i64>, Option<i64>)>(&self.keys, ())
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(kid, sealed_private, created_at_ms, retired_at_ms, remove_after_ms)| StoredKey {
                    kid,
                    sealed_private,
                    created_at_ms,
                    retired_at_ms,
                    remove_after_ms,
                },
            )
            .collect())
    }

    async fn add_key(&self, key: &StoredKey, retire: &[(String, i64)]) -> Result<(), StorageError> {
        // The new key is written before the old ones retire: at every moment one key signs.
        self.cql
            .execute(
                &self.insert_key,
                (&key.kid, &key.sealed_private, key.created_at_ms),
            )
            .await?;
        for (kid, remove_after) in retire {
            self.cql
                .execute(&self.retire_key, (key.created_at_ms, remove_after, kid))
                .await?;
        }
        Ok(())
    }

    async fn start_family(&self, token: &RefreshToken) -> Result<(), StorageError> {
        let ttl = ttl(token.expires_at_ms);
        let statements = [
            &self.insert_family,
            &self.insert_family_by_user,
            &self.insert_token,
        ];
        let values = (
            (token.family, token.user_id, token.expires_at_ms, ttl),
            (token.user_id, token.family, token.expires_at_ms, ttl),
            (
                &token.hash,
                token.family,
                token.user_id,
                token.expires_at_ms,
                ttl,
            ),
        );
        self.cql.logged_batch(&statements, values).await
    }

    async fn add_token(&self, token: &RefreshToken) -> Result<(), StorageError> {
        let ttl = ttl(token.expires_at_ms);
        let statements = [
            &self.extend_family,
            &self.insert_family_by_user,
            &self.insert_token,
        ];
        let values = (
            (ttl, token.expires_at_ms, token.family),
            (token.user_id, token.family, token.expires_at_ms, ttl),
            (
                &token.hash,
                token.family,
                token.user_id,
                token.expires_at_ms,
                ttl,
            ),
        );
        self.cql.logged_batch(&statements, values).await
    }

    async fn token(&self, hash: &[u8]) -> Result<Option<RefreshToken>, StorageError> {
        let row = self
            .cql
            .first_row::<(Vec<u8>, Uuid, Uuid, i64, Option<bool>)>(&self.select_token, (hash,))
            .await?;
        Ok(row.map(
            |(hash, family, user_id, expires_at_ms, spent)| RefreshToken {
                hash,
                family,
                user_id,
                expires_at_ms,
                spent: spent.unwrap_or(false),
            },
        ))
    }

    async fn spend(&self, hash: &[u8]) -> Result<bool, StorageError> {
        lwt_applied(self.cql.execute(&self.spend, (hash,)).await?)
    }

    async fn family_revoked(&self, family: Uuid) -> Result<bool, StorageError> {
        let row = self
            .cql
            .first_row::<(Option<bool>,)>(&self.select_family, (family,))
            .await?;
        Ok(row.is_none_or(|(revoked,)| revoked.unwrap_or(false)))
    }

    async fn revoke_family(&self, family: Uuid) -> Result<(), StorageError> {
        // The flag lives as long as the family's other cells.
        let expires_at = self
            .cql
            .first_row::<(Option<i64>,)>(&self.family_expiry, (family,))
            .await?;
        if let Some((Some(expires_at_ms),)) = expires_at {
            self.cql
                .execute(&self.revoke_family, (ttl(expires_at_ms), family))
                .await?;
        }
        Ok(())
    }

    async fn purge_expired(&self, _before_ms: i64) -> Result<(), StorageError> {
        Ok(())
    }

    async fn revoke_user(&self, user: Uuid, now_ms: i64) -> Result<u32, StorageError> {
        let families = self
            .cql
            .rows::<(Uuid, i64)>(&self.families_of_user, (user,))
            .await?;
        let mut revoked = 0;
        for (family, expires_at_ms) in families {
            if expires_at_ms <= now_ms || self.family_revoked(family).await? {
                continue;
            }
            self.revoke_family(family).await?;
            revoked += 1;
        }
        Ok(revoked)
    }
}
