//! The auth service: the only holder of token-signing keys. Issues EdDSA access tokens and
//! rotating single-use refresh tokens, publishes the JWKS every service verifies with, owns the
//! role table, and ends a user's sessions when users reports a password or role change.

#![forbid(unsafe_code)]

pub mod config;
pub mod consumers;
pub mod grpc;
pub mod handler;
pub mod keys;
pub mod roles;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use shopmesh_events::topics;
use shopmesh_host::{
    AUTH, Calls, GeneratedSecret, Manifest, Serve, Service, ServiceContext, Subscription,
};
use shopmesh_kit::clock::now_ms;
use shopmesh_kit::crypto::Sealer;
use shopmesh_proto::shopmesh::auth::v1::auth_service_server::AuthServiceServer;
use shopmesh_proto::shopmesh::users::v1::user_service_client::UserServiceClient;

pub use config::AuthConfig;

use crate::consumers::{SESSIONS_SUBSCRIPTION, end_sessions};
use crate::grpc::AuthApi;
use crate::handler::AuthHandler;
use crate::keys::{KeyRing, Timing};
use crate::store::AuthStore;

/// How often expired refresh tokens are deleted, and how long after expiry: until then a
/// presented token still reads as expired rather than unknown.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
const PURGE_GRACE_MS: i64 = 24 * 3600 * 1000;

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
        Ok(Serve::grpc(AuthServiceServer::new(AuthApi(handler))))
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

/// Adds a signing key outside a running platform (`shopmesh auth rotate-keys`); running auth
/// replicas pick it up at their next key reload. Returns the new key id.
pub async fn rotate_keys(context: &ServiceContext) -> anyhow::Result<String> {
    let config: AuthConfig = context.config()?;
    let (_, keys) = open(context, &config).await?;
    keys.rotate().await
}
