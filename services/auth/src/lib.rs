//! The auth service: the only holder of token-signing keys. Issues EdDSA access tokens and
//! rotating single-use refresh tokens, publishes the JWKS every service verifies with, owns the
//! role table, and ends a user's sessions when users reports a password or role change.

#![forbid(unsafe_code)]

pub mod config;
pub mod keys;
pub mod roles;
pub mod service;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use prost::Message as _;
use shopmesh_events::{Event, topics};
use shopmesh_host::{
    AUTH, Calls, GeneratedSecret, Manifest, Serve, Service, ServiceContext, Subscription,
};
use shopmesh_kit::Error;
use shopmesh_kit::clock::now_ms;
use shopmesh_kit::crypto::Sealer;
use shopmesh_proto::shopmesh::auth::v1::auth_service_server::AuthServiceServer;
use shopmesh_proto::shopmesh::events::v1::{UserEvent, user_event};
use shopmesh_proto::shopmesh::users::v1::user_service_client::UserServiceClient;
use uuid::Uuid;

pub use config::AuthConfig;

use crate::keys::{KeyRing, Timing};
use crate::service::AuthHandler;
use crate::store::AuthStore;

/// How often expired refresh tokens are deleted, and how long after expiry: until then a
/// presented token still reads as expired rather than unknown.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
const PURGE_GRACE_MS: i64 = 24 * 3600 * 1000;

/// The subscription on which auth learns that sessions must end.
const SESSIONS_SUBSCRIPTION: &str = "auth-sessions";

/// The auth service, as the host runs it.
#[derive(Debug, Clone, Copy)]
pub struct Auth;

#[async_trait]
impl Service for Auth {
    const MANIFEST: Manifest = Manifest {
        calls: Calls::Only(&["users"]),
        secrets: &[GeneratedSecret::master_key("data_key")],
        ..Manifest::new(AUTH, 7001)
    };
    type Config = AuthConfig;

    async fn start(&self, context: ServiceContext, config: AuthConfig) -> anyhow::Result<Serve> {
        let (store, keys) = open(&context, &config).await?;
        let runtime = &context.runtime;
        runtime.every(
            "reload signing keys",
            config.key_reload,
            keys.clone(),
            |keys| async move { keys.reload().await },
        );
        runtime.every(
            "purge expired refresh tokens",
            PURGE_EVERY,
            store.clone(),
            |store| async move { Ok(store.purge_expired(now_ms() - PURGE_GRACE_MS).await?) },
        );
        runtime
            .consume(
                Subscription::new(topics::USERS, SESSIONS_SUBSCRIPTION, SESSIONS_SUBSCRIPTION),
                store.clone(),
                end_sessions,
            )
            .await?;
        let handler = AuthHandler::new(
            store,
            keys,
            UserServiceClient::new(context.peers.channel("users")?),
            context.tokens.clone(),
            config.access_ttl,
            config.refresh_ttl,
        );
        Ok(Serve::grpc(AuthServiceServer::new(handler)))
    }
}

/// Opens auth's store and its key ring (creating the first key on a fresh store).
pub async fn open(
    context: &ServiceContext,
    config: &AuthConfig,
) -> anyhow::Result<(Arc<dyn AuthStore>, Arc<KeyRing>)> {
    let sealer = Sealer::new(
        &context.master_key("data_key", &config.data_key)?,
        "auth.signing_keys",
    );
    let (store, _) = context.repository::<dyn AuthStore>().await?;
    let timing = Timing {
        activation: config.key_activation,
        // A retired key stays published for the life of the tokens it signed, plus clock skew.
        retention: config.access_ttl + context.tokens.leeway,
    };
    let keys = Arc::new(KeyRing::open(store.clone(), sealer, timing).await?);
    Ok((store, keys))
}

/// Revokes a user's sessions on `SessionsRevoked`. Revoking twice changes nothing, so a
/// redelivered event needs no inbox.
async fn end_sessions(store: Arc<dyn AuthStore>, event: Event) -> shopmesh_kit::Result<()> {
    let event = UserEvent::decode(event.payload.as_slice())
        .map_err(|e| Error::internal("undecodable user event", e))?;
    if let Some(user_event::Payload::SessionsRevoked(revoked)) = event.payload {
        let user = Uuid::parse_str(&event.user_id)
            .map_err(|e| Error::internal("user event with a bad user id", e))?;
        let count = store.revoke_user(user, now_ms()).await?;
        tracing::info!(user_id = %user, reason = revoked.reason, revoked = count, "sessions ended");
    }
    Ok(())
}

/// Adds a signing key outside a running platform (`shopmesh auth rotate-keys`); running auth
/// replicas pick it up at their next key reload. Returns the new key id.
pub async fn rotate_keys(context: &ServiceContext) -> anyhow::Result<String> {
    let config: AuthConfig = context.config()?;
    let (_, keys) = open(context, &config).await?;
    keys.rotate().await
}
