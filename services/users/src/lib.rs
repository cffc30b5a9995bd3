//! The users service: accounts, profiles, addresses, roles, and the credential check behind
//! auth's login. The only holder of password hashes (bcrypt) and personal data (sealed at rest,
//! the e-mail found through a blind index).

#![forbid(unsafe_code)]

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

pub use config::UsersConfig;

use crate::grpc::UserApi;
use crate::handler::{Registration, UserHandler};
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
            ensure_first_admin(&handler, &config.first_admin_email).await?;
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

/// Creates an account outside a running platform (`shopmesh admin create-user`) with a random
/// password, which is returned to be shown once.
pub async fn create_user(
    context: &ServiceContext,
    email: &str,
    display_name: &str,
    roles: Vec<String>,
) -> anyhow::Result<(shopmesh_proto::shopmesh::users::v1::User, String)> {
    let config: UsersConfig = context.config()?;
    let handler = open(context, &config).await?;
    let password = shopmesh_kit::crypto::random_token(15);
    let user = handler
        .register(Registration {
            email: email.to_owned(),
            password: password.clone(),
            display_name: display_name.to_owned(),
            locale: "en".into(),
            roles,
        })
        .await?;
    Ok((user, password))
}

/// `shopmesh up` only: creates the first administrator with a random password, printed once.
async fn ensure_first_admin(handler: &UserHandler, email: &str) -> anyhow::Result<()> {
    if let Some(password) = first_admin(handler, email).await? {
        println!("  first admin    {email}  password {password}  (shown once: keep it)");
    }
    Ok(())
}

/// Creates the first administrator (`first_admin_email`) unless it exists, outside a running
/// platform (`shopmesh cluster up`); returns its e-mail address and password, to be shown once.
pub async fn create_first_admin(
    context: &ServiceContext,
) -> anyhow::Result<Option<(String, String)>> {
    let config: UsersConfig = context.config()?;
    let handler = open(context, &config).await?;
    let email = config.first_admin_email;
    Ok(first_admin(&handler, &email)
        .await?
        .map(|password| (email, password)))
}

/// The first administrator's password if this call created it.
async fn first_admin(handler: &UserHandler, email: &str) -> anyhow::Result<Option<String>> {
    if handler.find_by_email(email).await?.is_some() {
        return Ok(None);
    }
    let password = shopmesh_kit::crypto::random_token(15);
    handler
        .register(Registration {
            email: email.to_owned(),
            password: password.clone(),
            display_name: "Administrator".into(),
            locale: "en".into(),
            roles: vec!["admin".into()],
        })
        .await?;
    Ok(Some(password))
}
