//! The users domain: [`UserHandler`] and what it checks, changes, writes and announces for
//! accounts, free of transport (`grpc` is its gRPC face). Requests arrive validated against the
//! protos' rules with each method's access rule enforced; the handler adds what only it can
//! check (ownership, password policy, throttling, role names through [`RoleNames`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shopmesh_events::Event;
use shopmesh_kit::access::Caller;
use shopmesh_kit::clock::{now_ms, timestamp};
use shopmesh_kit::paging;
use shopmesh_kit::{Error, Result};
use shopmesh_proto::shopmesh::events::v1::{
    SessionsRevoked, UserEvent, UserRegistered, user_event,
};
use shopmesh_proto::shopmesh::users::v1::{
    CreateUserRequest, ListUsersRequest, ListUsersResponse, SetUserRolesRequest, UpdateMeRequest,
    User,
};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::ThrottleConfig;
use crate::password::{self, Hasher};
use crate::profile::{Profile, Vault, normalize_email};
use crate::store::{Attempt, StoreError, UserRecord, UserStore};

/// The role every new account gets.
pub const DEFAULT_ROLE: &str = "customer";
const DEFAULT_PAGE: usize = 20;
const EVENT_KIND: &str = "shopmesh.events.v1.UserEvent";

/// Auth's role table, as far as users needs it: which role names exist.
#[async_trait]
pub trait RoleNames: Send + Sync + 'static {
    /// The names of every role; an error is the caller's answer as it came.
    async fn role_names(&self) -> Result<Vec<String>>;
}

/// A new account's details.
#[derive(Debug, Clone)]
pub struct Registration {
    pub email: String,
    pub password: String,
    pub display_name: String,
    pub locale: String,
    pub roles: Vec<String>,
}

pub struct UserHandler {
    store: Arc<dyn UserStore>,
    vault: Vault,
    hasher: Hasher,
    throttle: ThrottleConfig,
    /// Auth's role names; absent in tools that run without the platform.
    roles: Option<Box<dyn RoleNames>>,
    /// Wakes the outbox relay after a write that carries an event.
    relay: Arc<Notify>,
}

impl UserHandler {
    pub fn new(
        store: Arc<dyn UserStore>,
        vault: Vault,
        hasher: Hasher,
        throttle: ThrottleConfig,
        roles: Option<impl RoleNames>,
        relay: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            vault,
            hasher,
            throttle,
            roles: roles.map(|roles| Box::new(roles) as Box<dyn RoleNames>),
            relay,
        }
    }

    /// Creates an account after checking the password policy.
    pub async fn register(&self, registration: Registration) -> Result<User> {
        password::check_policy("password", &registration.password)?;
        let email = normalize_email(&registration.email);
        let id = Uuid::now_v7();
        let now = now_ms();
        let profile = Profile {
            email: email.clone(),
            display_name: registration.display_name.trim().to_owned(),
            ..Profile::default()
        };
        let record = UserRecord {
            id,
            email_index: self.vault.email_index(&email),
            password_hash: self.hasher.hash(&registration.password).await?,
            profile: self.vault.seal(id, &profile),
            locale: registration.locale,
            roles: registration.roles,
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
        };
        let event = user_event(
            id,
            user_event::Payload::Registered(UserRegistered {
                locale: record.locale.clone(),
            }),
        );
        match self.store.create(&record, &event).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                return Err(Error::already_exists(
                    "EMAIL_TAKEN",
                    "an account with this e-mail address exists",
                ));
            }
            Err(other) => return Err(storage(other)),
        }
        self.relay.notify_one();
        tracing::info!(user_id = %id, "user registered");
        to_proto(&record, &profile)
    }

    /// The account with `email`, if any.
    pub async fn find_by_email(&self, email: &str) -> Result<Option<User>> {
        match self
            .store
            .find_by_email(&self.vault.email_index(email))
            .await
            .map_err(storage)?
        {
            Some(record) => Ok(Some(self.view(&record)?)),
            None => Ok(None),
        }
    }

    fn view(&self, record: &UserRecord) -> Result<User> {
        to_proto(record, &self.vault.open(record.id, &record.profile)?)
    }

    async fn load(&self, id: &str) -> Result<UserRecord> {
        let id = Uuid::parse_str(id).map_err(|_| Error::invalid_field("id", "must be a UUID"))?;
        self.store
            .get(id)
            .await
            .map_err(storage)?
            .ok_or_else(|| Error::not_found("USER_NOT_FOUND", "no such user"))
    }

    /// Counts a password check against `email_index` before it runs (a success clears the
    /// count); refuses it while the account is blocked.
    async fn begin_attempt(&self, email_index: &[u8]) -> Result<()> {
        let attempt = self
            .store
            .begin_attempt(email_index, now_ms(), &self.throttle)
            .await
            .map_err(storage)?;
        match attempt {
            Attempt::Allowed => Ok(()),
            Attempt::Blocked { until_ms } => {
                let wait = Duration::from_millis((until_ms - now_ms()).max(0) as u64);
                Err(Error::resource_exhausted(
                    "LOGIN_THROTTLED",
                    "too many failed logins for this account; retry later",
                )
                .with_retry_after(wait.max(Duration::from_secs(1))))
            }
        }
    }

    /// Writes `record` as its next version, retrying on a concurrent change by re-reading and
    /// re-applying `change`.
    async fn update(
        &self,
        id: Uuid,
        event: Option<&Event>,
        mut change: impl FnMut(&mut UserRecord, &mut Profile) -> Result<()>,
    ) -> Result<User> {
        for _ in 0..5 {
            let mut record = self
                .store
                .get(id)
                .await
                .map_err(storage)?
                .ok_or_else(|| Error::not_found("USER_NOT_FOUND", "no such user"))?;
            let mut profile = self.vault.open(id, &record.profile)?;
            change(&mut record, &mut profile)?;
            record.profile = self.vault.seal(id, &profile);
            record.version += 1;
            record.updated_at_ms = now_ms();
            match self.store.update(&record, event).await {
                Ok(()) => {
                    if event.is_some() {
                        self.relay.notify_one();
                    }
                    return to_proto(&record, &profile);
                }
                Err(StoreError::Conflict) => continue,
                Err(other) => return Err(storage(other)),
            }
        }
        Err(Error::aborted(
            "CONCURRENT_UPDATE",
            "the account kept changing; retry",
        ))
    }
}

/// The operations of the API.
impl UserHandler {
    /// Registers a customer; the account's locale is the request's, else the caller's best
    /// accepted language, else `en`.
    pub async fn create(&self, request: CreateUserRequest, accepted: &[String]) -> Result<User> {
        let locale = if request.locale.is_empty() {
            accepted.first().cloned().unwrap_or_else(|| "en".to_owned())
        } else {
            request.locale
        };
        self.register(Registration {
            email: request.email,
            password: request.password,
            display_name: request.display_name,
            locale,
            roles: vec![DEFAULT_ROLE.to_owned()],
        })
        .await
    }

    /// The caller's own account.
    pub async fn me(&self, caller: &Caller) -> Result<User> {
        let record = self.load(&caller.user_id).await?;
        self.view(&record)
    }

    /// Changes the caller's own account: the fields in the mask, or every field given when
    /// there is none. A new password needs the current one and ends every session.
    pub async fn update_me(&self, caller: &Caller, request: UpdateMeRequest) -> Result<User> {
        let id = Uuid::parse_str(&caller.user_id).map_err(|_| {
            Error::unauthenticated("TOKEN_INVALID", "the token's subject is not a user id")
        })?;
        let update = request.user.unwrap_or_default();
        let mask: Vec<String> = match request.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths,
            // No mask: every field that was given.
            _ => {
                let mut paths = Vec::new();
                for (path, given) in [
                    ("display_name", !update.display_name.is_empty()),
                    ("phone", !update.phone.is_empty()),
                    ("addresses", !update.addresses.is_empty()),
                    ("locale", !update.locale.is_empty()),
                    ("password", update.password.is_some()),
                ] {
                    if given {
                        paths.push(path.to_owned());
                    }
                }
                paths
            }
        };
        let changes_password = mask.iter().any(|path| path == "password");
        let new_hash = if changes_password {
            let change = update.password.clone().ok_or_else(|| {
                Error::invalid_field("user.password", "is in the update mask but not given")
            })?;
            password::check_policy("user.password.new_password", &change.new_password)?;
            let record = self
                .store
                .get(id)
                .await
                .map_err(storage)?
                .ok_or_else(|| Error::not_found("USER_NOT_FOUND", "no such user"))?;
            self.begin_attempt(&record.email_index).await?;
            if !self
                .hasher
                .verify(&change.current_password, Some(&record.password_hash))
                .await?
            {
                return Err(Error::permission_denied(
                    "WRONG_PASSWORD",
                    "the current password is wrong",
                )
                .with_metadata("field", "user.password.current_password"));
            }
            self.store
                .clear_failures(&record.email_index)
                .await
                .map_err(storage)?;
            Some(self.hasher.hash(&change.new_password).await?)
        } else {
            None
        };
        let event = changes_password.then(|| {
            user_event(
                id,
                user_event::Payload::SessionsRevoked(SessionsRevoked {
                    reason: "password_changed".into(),
                }),
            )
        });
        self.update(id, event.as_ref(), |record, profile| {
            for path in &mask {
                match path.as_str() {
                    "display_name" => profile.display_name = update.display_name.trim().to_owned(),
                    "phone" => profile.phone = update.phone.clone(),
                    "addresses" => profile.addresses = update.addresses.clone(),
                    "locale" => record.locale = update.locale.clone(),
                    "password" => {
                        record.password_hash = new_hash.clone().unwrap_or_default();
                    }
                    other => {
                        return Err(Error::invalid_field(
                            "update_mask",
                            format!("`{other}` cannot be changed"),
                        ));
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// The account with the request's e-mail address, or a page of accounts, oldest first.
    pub async fn list(&self, request: ListUsersRequest) -> Result<ListUsersResponse> {
        if !request.email.is_empty() {
            let users = self
                .find_by_email(&request.email)
                .await?
                .into_iter()
                .collect();
            return Ok(ListUsersResponse {
                users,
                next_page_token: String::new(),
            });
        }
        let size = match request.page_size {
            0 => DEFAULT_PAGE,
            size => size.clamp(1, 100) as usize,
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(paging::decode(&request.page_token)?)
        };
        // One more than asked tells whether another page follows.
        let mut records = self.store.list(after, size + 1).await.map_err(storage)?;
        let more = records.len() > size;
        records.truncate(size);
        let next_page_token = match records.last() {
            Some(last) if more => paging::encode((last.created_at_ms, last.id)),
            _ => String::new(),
        };
        let users = records
            .iter()
            .map(|record| self.view(record))
            .collect::<Result<_>>()?;
        Ok(ListUsersResponse {
            users,
            next_page_token,
        })
    }

    /// Gives an account exactly the request's roles, which must exist in auth's table; ends
    /// the account's sessions so the next token carries them.
    pub async fn set_roles(&self, request: SetUserRolesRequest) -> Result<User> {
        let roles = self.roles.as_ref().ok_or_else(|| {
            Error::unavailable("PEER_UNKNOWN", "no auth service to check role names with")
        })?;
        let known = roles.role_names().await?;
        if let Some(unknown) = request.roles.iter().find(|role| !known.contains(role)) {
            return Err(Error::invalid_field(
                "roles",
                format!("no role named `{unknown}`"),
            ));
        }
        let id = self.load(&request.id).await?.id;
        let event = user_event(
            id,
            user_event::Payload::SessionsRevoked(SessionsRevoked {
                reason: "roles_changed".into(),
            }),
        );
        let roles = request.roles;
        let user = self
            .update(id, Some(&event), |record, _| {
                record.roles = roles.clone();
                Ok(())
            })
            .await?;
        tracing::info!(user_id = %id, roles = ?user.roles, "roles changed");
        Ok(user)
    }

    /// The account `email` and `password` open (auth's login), counted against the account's
    /// throttle; a wrong password and an unknown account get the same answer.
    pub async fn verify_credentials(&self, email: &str, password: &str) -> Result<User> {
        let email_index = self.vault.email_index(email);
        self.begin_attempt(&email_index).await?;
        let record = self
            .store
            .find_by_email(&email_index)
            .await
            .map_err(storage)?;
        // An unknown account is checked against a dummy hash: same work, same answer.
        let matched = self
            .hasher
            .verify(password, record.as_ref().map(|r| r.password_hash.as_str()))
            .await?;
        let Some(record) = record.filter(|_| matched) else {
            return Err(Error::unauthenticated(
                "INVALID_CREDENTIALS",
                "wrong e-mail address or password",
            ));
        };
        self.store
            .clear_failures(&email_index)
            .await
            .map_err(storage)?;
        self.view(&record)
    }

    /// Account `id`.
    pub async fn get(&self, id: &str) -> Result<User> {
        let record = self.load(id).await?;
        self.view(&record)
    }
}

fn storage(error: StoreError) -> Error {
    error.or_missing(|| Error::not_found("USER_NOT_FOUND", "no such user"))
}

fn to_proto(record: &UserRecord, profile: &Profile) -> Result<User> {
    Ok(User {
        id: record.id.to_string(),
        email: profile.email.clone(),
        display_name: profile.display_name.clone(),
        roles: record.roles.clone(),
        phone: profile.phone.clone(),
        addresses: profile.addresses.clone(),
        locale: record.locale.clone(),
        created_at: Some(timestamp(record.created_at_ms)),
        updated_at: Some(timestamp(record.updated_at_ms)),
    })
}

/// An event of this service for `user`, its envelope filled from the event itself.
fn user_event(user: Uuid, payload: user_event::Payload) -> Event {
    Event::enveloped(user.to_string(), EVENT_KIND, "users", |meta| UserEvent {
        meta: Some(meta),
        user_id: user.to_string(),
        payload: Some(payload),
    })
}

#[cfg(test)]
mod tests {
    use shopmesh_kit::ErrorKind;
    use shopmesh_kit::crypto::MasterKey;
    use shopmesh_testkit::storage::{self as testing, TempSqlite};

    use super::*;
    use crate::store::SQLITE;
    use crate::store::sqlite::SqliteUsers;

    /// Auth's role table as a fixed list.
    struct Table(&'static [&'static str]);

    #[async_trait]
    impl RoleNames for Table {
        async fn role_names(&self) -> Result<Vec<String>> {
            Ok(self.0.iter().map(|name| (*name).to_owned()).collect())
        }
    }

    const PASSWORD: &str = "correct horse battery";

    async fn handler(roles: Option<Table>) -> (UserHandler, TempSqlite) {
        let temp = testing::sqlite(SQLITE).await;
        let handler = UserHandler::new(
            Arc::new(SqliteUsers(temp.db.clone())),
            Vault::new(&MasterKey::generate()),
            Hasher::new(4, 2).await.unwrap(),
            ThrottleConfig::default(),
            roles,
            Arc::new(Notify::new()),
        );
        (handler, temp)
    }

    async fn register(handler: &UserHandler) -> User {
        handler
            .create(
                CreateUserRequest {
                    email: "Ada@Example.com".into(),
                    password: PASSWORD.into(),
                    display_name: " Ada ".into(),
                    locale: String::new(),
                },
                &["de-CH".to_owned()],
            )
            .await
            .unwrap()
    }

    fn set(user: &User, roles: &[&str]) -> SetUserRolesRequest {
        SetUserRolesRequest {
            id: user.id.clone(),
            roles: roles.iter().map(|role| (*role).to_owned()).collect(),
        }
    }

    #[tokio::test]
    async fn a_new_customer_takes_the_callers_language() {
        let (handler, _db) = handler(None).await;
        let user = register(&handler).await;
        assert_eq!(user.roles, [DEFAULT_ROLE]);
        assert_eq!(user.locale, "de-CH");
        assert_eq!(user.email, "ada@example.com");
        assert_eq!(user.display_name, "Ada");
    }

    #[tokio::test]
    async fn roles_are_checked_against_auths_table() {
        let (handler, _db) = handler(Some(Table(&["customer", "support", "admin"]))).await;
        let user = register(&handler).await;
        let error = handler
            .set_roles(set(&user, &["support", "wizard"]))
            .await
            .unwrap_err();
        assert_eq!(error.violations()[0].field, "roles");
        assert_eq!(error.violations()[0].description, "no role named `wizard`");
        let changed = handler.set_roles(set(&user, &["support"])).await.unwrap();
        assert_eq!(changed.roles, ["support"]);
    }

    #[tokio::test]
    async fn without_auth_roles_cannot_be_set() {
        let (handler, _db) = handler(None).await;
        let user = register(&handler).await;
        let error = handler.set_roles(set(&user, &["admin"])).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unavailable);
        assert_eq!(error.reason(), "PEER_UNKNOWN");
    }

    #[tokio::test]
    async fn credentials_open_the_account_and_nothing_else() {
        let (handler, _db) = handler(None).await;
        let user = register(&handler).await;
        let found = handler
            .verify_credentials("ada@example.com", PASSWORD)
            .await
            .unwrap();
        assert_eq!(found.id, user.id);
        for (email, password) in [
            ("ada@example.com", "wrong horse battery"),
            ("bob@example.com", PASSWORD),
        ] {
            let error = handler
                .verify_credentials(email, password)
                .await
                .unwrap_err();
            assert_eq!(error.reason(), "INVALID_CREDENTIALS", "{email}");
        }
    }
}
