//! The users service: accounts, profiles, addresses, roles, and the credential check behind
//! auth's login. The only holder of password hashes (bcrypt) and personal data (sealed at rest,
//! the e-mail found through a blind index).

#![forbid(unsafe_code)]

pub mod accounts;
pub mod config;
pub mod grpc;
pub mod handler;
pub mod password;
pub mod profile;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shopmesh_host::{GeneratedSecret, Manifest, Mode, Serve, Service, ServiceContext};
use shopmesh_kit::clock::now_ms;
use shopmesh_proto::shopmesh::auth::v1::auth_service_client::AuthServiceClient;
use shopmesh_proto::shopmesh::users::v1::user_service_server::UserServiceServer;

pub use accounts::{create_first_admin, create_user};
pub use config::UsersConfig;

use crate::grpc::UserApi;
use crate::handler::UserHandler;
use crate::password::Hasher;
use crate::profile::Vault;
use crate::store::{FAILURE_MEMORY_MS, UserStore};

/// The users service, as the host runs it.
#[derive(Debug, Clone, Copy)]
pub struct Users;

#[async_trait]
impl Service for Users {
    const MANIFEST: Manifest = Manifest {
        secrets: &[GeneratedSecret::master_key("data_key")],
        ..Manifest::new("users", 7002)
    };
    type Config = UsersConfig;

    async fn start(&self, context: ServiceContext, config: UsersConfig) -> anyhow::Result<Serve> {
        let handler = Arc::new(open(&context, &config).await?);
        if context.mode == Mode::Embedded {
            accounts::ensure_first_admin(&handler, &config.first_admin_email).await?;
        }
        Ok(Serve::grpc(UserServiceServer::new(UserApi(handler))))
    }
}

/// Opens the store (its outbox relay running) and builds the handler.
pub async fn open(context: &ServiceContext, config: &UsersConfig) -> anyhow::Result<UserHandler> {
    let vault = Vault::new(&context.master_key("data_key", &config.data_key)?);
    let (store, waker) = context.repository::<dyn UserStore>().await?;
    context.runtime.every(
        "purge login attempts",
        Duration::from_secs(3600),
        store.clone(),
        |store| async move { Ok(store.purge_attempts(now_ms() - FAILURE_MEMORY_MS).await?) },
    );
    let hasher = Hasher::new(config.bcrypt_cost, config.hashing_concurrency).await?;
    let auth = context
        .peers
        .channel("auth")
        .ok()
        .map(AuthServiceClient::new);
    Ok(UserHandler::new(
        store,
        vault,
        hasher,
        config.throttle.clone(),
        auth,
        waker,
    ))
}
