//! Accounts made outside the API: the first administrator, and the operator's
//! `shopmesh admin create-user`. Passwords are random and shown once.

use shopmesh_host::ServiceContext;

use crate::config::UsersConfig;
use crate::handler::{Registration, UserHandler};
use crate::open;

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
pub(crate) async fn ensure_first_admin(handler: &UserHandler, email: &str) -> anyhow::Result<()> {
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
