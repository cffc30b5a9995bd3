//! The auth domain: [`AuthHandler`] and what it checks, signs, stores and revokes — logins,
//! refresh rotation with replay detection, logout, the JWKS and key rotation — free of
//! transport (`grpc` is its gRPC face, `consumers` ends sessions on users' events). Accounts
//! and passwords are users' business, reached through [`Accounts`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shopmesh_kit::clock::now_ms;
use shopmesh_kit::crypto::{random_token, sha256};
use shopmesh_kit::token::{Claims, Policy};
use shopmesh_kit::{Error, Result};
use shopmesh_proto::shopmesh::auth::v1::{
    Jwk, Jwks, LoginResponse, RefreshResponse, RevokeUserTokensRequest, RevokeUserTokensResponse,
    RotateKeysResponse,
};
use shopmesh_proto::shopmesh::users::v1::User;
use uuid::Uuid;

use crate::keys::KeyRing;
use crate::store::{AuthStore, RefreshToken};

/// Bytes of randomness in a refresh token.
const REFRESH_TOKEN_BYTES: usize = 32;

/// Users, as auth needs them: whose credentials these are, and which roles an account holds.
#[async_trait]
pub trait Accounts: Send + Sync + 'static {
    /// The account `email` and `password` open; users' refusal (wrong credentials, throttled)
    /// as it gave it.
    async fn verify(&self, email: &str, password: &str) -> Result<User>;

    /// The roles account `user` holds now, or `None` when the account no longer exists.
    async fn roles(&self, user: Uuid) -> Result<Option<Vec<String>>>;
}

pub struct AuthHandler {
    store: Arc<dyn AuthStore>,
    keys: Arc<KeyRing>,
    users: Box<dyn Accounts>,
    policy: Policy,
    access_ttl: Duration,
    refresh_ttl: Duration,
}

/// A freshly issued pair.
struct Pair {
    access_token: String,
    refresh_token: String,
    expires_in: i32,
}

impl AuthHandler {
    pub fn new(
        store: Arc<dyn AuthStore>,
        keys: Arc<KeyRing>,
        users: impl Accounts,
        policy: Policy,
        access_ttl: Duration,
        refresh_ttl: Duration,
    ) -> Self {
        Self {
            store,
            keys,
            users: Box::new(users),
            policy,
            access_ttl,
            refresh_ttl,
        }
    }

    /// Signs an access token for `user` and stores a refresh token in `family` (a new family
    /// when `None`: a login).
    async fn issue(&self, user: Uuid, roles: Vec<String>, family: Option<Uuid>) -> Result<Pair> {
        let now = now_ms();
        let claims = Claims {
            iss: self.policy.issuer.clone(),
            aud: self.policy.audience.clone(),
            sub: user.to_string(),
            exp: (now / 1000) + self.access_ttl.as_secs() as i64,
            iat: now / 1000,
            nbf: now / 1000,
            jti: Uuid::new_v4().to_string(),
            roles,
        };
        let access_token = self.keys.signer().sign(&claims)?;
        let refresh_token = random_token(REFRESH_TOKEN_BYTES);
        let token = RefreshToken {
            hash: sha256(refresh_token.as_bytes()),
            family: family.unwrap_or_else(Uuid::now_v7),
            user_id: user,
            expires_at_ms: now + self.refresh_ttl.as_millis() as i64,
            spent: false,
        };
        match family {
            None => self.store.start_family(&token).await?,
            Some(_) => self.store.add_token(&token).await?,
        }
        Ok(Pair {
            access_token,
            refresh_token,
            expires_in: self.access_ttl.as_secs() as i32,
        })
    }
}

impl AuthHandler {
    /// A spent token came back: it was copied. Ends the whole session it belongs to and
    /// returns the refusal.
    async fn replayed(&self, token: &RefreshToken) -> Result<Error> {
        self.store.revoke_family(token.family).await?;
        tracing::warn!(user_id = %token.user_id, family = %token.family, "refresh token replayed; session revoked");
        Ok(refused("REFRESH_TOKEN_REUSED"))
    }
}

fn refused(reason: &'static str) -> Error {
    Error::unauthenticated(reason, "the refresh token is not valid; log in again")
}

/// The operations of the API.
impl AuthHandler {
    /// Logs in: users checks the password (and throttles), and its refusal passes through
    /// unchanged; a new session starts with a token pair.
    pub async fn login(&self, email: &str, password: &str) -> Result<LoginResponse> {
        let user = self.users.verify(email, password).await?;
        let id = Uuid::parse_str(&user.id).map_err(|e| Error::internal("user id", e))?;
        let pair = self.issue(id, user.roles, None).await?;
        tracing::info!(user_id = %id, "login");
        Ok(LoginResponse {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: "Bearer".into(),
            expires_in: pair.expires_in,
        })
    }

    /// Spends `refresh_token` for a new pair in the same session. A spent token presented
    /// again ends the session (it was copied).
    pub async fn refresh(&self, refresh_token: &str) -> Result<RefreshResponse> {
        let hash = sha256(refresh_token.as_bytes());
        let token = self
            .store
            .token(&hash)
            .await?
            .ok_or_else(|| refused("REFRESH_TOKEN_INVALID"))?;
        if token.expires_at_ms <= now_ms() {
            return Err(refused("REFRESH_TOKEN_EXPIRED"));
        }
        if self.store.family_revoked(token.family).await? {
            return Err(refused("REFRESH_TOKEN_REVOKED"));
        }
        if token.spent {
            return Err(self.replayed(&token).await?);
        }
        // Roles are read afresh, so a role change reaches the next access token. This happens
        // before the token is spent: if users cannot answer, the client may retry with it.
        let Some(roles) = self.users.roles(token.user_id).await? else {
            self.store.revoke_family(token.family).await?;
            return Err(refused("REFRESH_TOKEN_REVOKED"));
        };
        if !self.store.spend(&hash).await? {
            return Err(self.replayed(&token).await?);
        }
        let pair = self.issue(token.user_id, roles, Some(token.family)).await?;
        Ok(RefreshResponse {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: "Bearer".into(),
            expires_in: pair.expires_in,
        })
    }

    /// Ends the session `refresh_token` belongs to, if it is one.
    pub async fn logout(&self, refresh_token: &str) -> Result<()> {
        let hash = sha256(refresh_token.as_bytes());
        if let Some(token) = self.store.token(&hash).await? {
            self.store.revoke_family(token.family).await?;
        }
        Ok(())
    }

    /// The public keys tokens are verified with.
    pub fn jwks(&self) -> Jwks {
        let keys = self.keys.jwks().into_iter().map(Jwk::from).collect();
        Jwks { keys }
    }

    /// Adds a signing key; it signs once the activation delay has passed.
    pub async fn rotate_keys(&self) -> Result<RotateKeysResponse> {
        let active_kid = self
            .keys
            .rotate()
            .await
            .map_err(|e| Error::internal("key rotation failed", format!("{e:#}")))?;
        Ok(RotateKeysResponse {
            active_kid,
            keys: self.keys.describe(),
        })
    }

    /// Ends every session of a user.
    pub async fn revoke_user_tokens(
        &self,
        request: RevokeUserTokensRequest,
    ) -> Result<RevokeUserTokensResponse> {
        let user = Uuid::parse_str(&request.user_id)
            .map_err(|_| Error::invalid_field("user_id", "must be a UUID"))?;
        let revoked = self.store.revoke_user(user, now_ms()).await?;
        tracing::info!(user_id = %user, reason = request.reason, revoked, "user sessions revoked");
        Ok(RevokeUserTokensResponse {
            revoked_families: revoked as i32,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use shopmesh_kit::ErrorKind;
    use shopmesh_kit::crypto::{MasterKey, Sealer};
    use shopmesh_kit::token::Verifier;
    use shopmesh_testkit::storage::{self as testing, TempSqlite};

    use super::*;
    use crate::keys::Timing;
    use crate::store::SQLITE;
    use crate::store::sqlite::SqliteAuth;

    const PASSWORD: &str = "correct horse battery";

    /// Users as a table of accounts by e-mail address (`None`: users cannot be reached).
    #[derive(Clone, Default)]
    struct Directory(Arc<Mutex<Option<HashMap<String, User>>>>);

    impl Directory {
        fn with(email: &str, roles: &[&str]) -> (Self, Uuid) {
            let id = Uuid::now_v7();
            let user = User {
                id: id.to_string(),
                email: email.into(),
                roles: roles.iter().map(|role| (*role).to_owned()).collect(),
                ..User::default()
            };
            let accounts = HashMap::from([(email.to_owned(), user)]);
            (Self(Arc::new(Mutex::new(Some(accounts)))), id)
        }

        fn change(&self, change: impl FnOnce(&mut Option<HashMap<String, User>>)) {
            change(&mut self.0.lock().unwrap());
        }
    }

    fn unreachable() -> Error {
        Error::unavailable("UNAVAILABLE", "connection refused")
    }

    #[async_trait]
    impl Accounts for Directory {
        async fn verify(&self, email: &str, password: &str) -> Result<User> {
            let accounts = self.0.lock().unwrap();
            let accounts = accounts.as_ref().ok_or_else(unreachable)?;
            accounts
                .get(email)
                .filter(|_| password == PASSWORD)
                .cloned()
                .ok_or_else(|| {
                    Error::unauthenticated(
                        "INVALID_CREDENTIALS",
                        "wrong e-mail address or password",
                    )
                })
        }

        async fn roles(&self, user: Uuid) -> Result<Option<Vec<String>>> {
            let accounts = self.0.lock().unwrap();
            let accounts = accounts.as_ref().ok_or_else(unreachable)?;
            Ok(accounts
                .values()
                .find(|account| account.id == user.to_string())
                .map(|account| account.roles.clone()))
        }
    }

    async fn handler(users: Directory) -> (AuthHandler, TempSqlite) {
        let temp = testing::sqlite(SQLITE).await;
        let store: Arc<dyn AuthStore> = Arc::new(SqliteAuth(temp.db.clone()));
        let timing = Timing {
            activation: Duration::ZERO,
            retention: Duration::from_secs(900),
        };
        let sealer = Sealer::new(&MasterKey::generate(), "auth.signing_keys");
        let keys = Arc::new(KeyRing::open(store.clone(), sealer, timing).await.unwrap());
        let handler = AuthHandler::new(
            store,
            keys,
            users,
            Policy::default(),
            Duration::from_secs(900),
            Duration::from_secs(3600),
        );
        (handler, temp)
    }

    #[tokio::test]
    async fn users_refusal_of_a_login_passes_through() {
        let (users, _) = Directory::with("ada@example.com", &["customer"]);
        let (handler, _db) = handler(users).await;
        let error = handler
            .login("ada@example.com", "wrong horse battery")
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unauthenticated);
        assert_eq!(error.reason(), "INVALID_CREDENTIALS");
    }

    #[tokio::test]
    async fn a_refresh_reads_roles_afresh_and_a_replay_ends_the_session() {
        let (users, id) = Directory::with("ada@example.com", &["customer"]);
        let (handler, _db) = handler(users.clone()).await;
        let login = handler.login("ada@example.com", PASSWORD).await.unwrap();
        assert_eq!(login.token_type, "Bearer");
        assert_eq!(login.expires_in, 900);
        users.change(|accounts| {
            let account = accounts
                .as_mut()
                .unwrap()
                .get_mut("ada@example.com")
                .unwrap();
            account.roles = vec!["support".into()];
        });
        let refreshed = handler.refresh(&login.refresh_token).await.unwrap();
        assert_ne!(refreshed.refresh_token, login.refresh_token);
        let verifier = Verifier::new(Arc::new(handler.keys.jwks()), Policy::default());
        let claims = verifier.verify(&refreshed.access_token).await.unwrap();
        assert_eq!(claims.sub, id.to_string());
        assert_eq!(claims.roles, ["support"]);
        let replay = handler.refresh(&login.refresh_token).await.unwrap_err();
        assert_eq!(replay.reason(), "REFRESH_TOKEN_REUSED");
        let after = handler.refresh(&refreshed.refresh_token).await.unwrap_err();
        assert_eq!(after.reason(), "REFRESH_TOKEN_REVOKED");
    }

    #[tokio::test]
    async fn a_refresh_waits_out_users_and_ends_with_the_account() {
        let (users, _) = Directory::with("ada@example.com", &["customer"]);
        let (handler, _db) = handler(users.clone()).await;
        let login = handler.login("ada@example.com", PASSWORD).await.unwrap();
        let saved = users.0.lock().unwrap().take();
        let error = handler.refresh(&login.refresh_token).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unavailable);
        // Users could not answer before the token was spent: it still works.
        *users.0.lock().unwrap() = saved;
        let refreshed = handler.refresh(&login.refresh_token).await.unwrap();
        users.change(|accounts| accounts.as_mut().unwrap().clear());
        let error = handler.refresh(&refreshed.refresh_token).await.unwrap_err();
        assert_eq!(error.reason(), "REFRESH_TOKEN_REVOKED");
    }
}
