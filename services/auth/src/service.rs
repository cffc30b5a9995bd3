//! The `AuthService` gRPC handlers: logins, refresh rotation with replay detection, logout,
//! the JWKS and the role table.

use std::sync::Arc;
use std::time::Duration;

use shopmesh_kit::clock::now_ms;
use shopmesh_kit::crypto::{random_token, sha256};
use shopmesh_kit::grpc::PeerChannel;
use shopmesh_kit::token::{Claims, Policy};
use shopmesh_kit::{Error, Result};
use shopmesh_proto::shopmesh::auth::v1::auth_service_server::AuthService;
use shopmesh_proto::shopmesh::auth::v1::{
    GetJwksRequest, Jwk, Jwks, ListRolesRequest, ListRolesResponse, LoginRequest, LoginResponse,
    LogoutRequest, LogoutResponse, RefreshRequest, RefreshResponse, RevokeUserTokensRequest,
    RevokeUserTokensResponse, RotateKeysRequest, RotateKeysResponse,
};
use shopmesh_proto::shopmesh::users::v1::user_service_client::UserServiceClient;
use shopmesh_proto::shopmesh::users::v1::{GetUserRequest, VerifyCredentialsRequest};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::keys::KeyRing;
use crate::roles;
use crate::store::{AuthStore, RefreshToken};

/// Bytes of randomness in a refresh token.
const REFRESH_TOKEN_BYTES: usize = 32;

pub struct AuthHandler {
    store: Arc<dyn AuthStore>,
    keys: Arc<KeyRing>,
    users: UserServiceClient<PeerChannel>,
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
        users: UserServiceClient<PeerChannel>,
        policy: Policy,
        access_ttl: Duration,
        refresh_ttl: Duration,
    ) -> Self {
        Self {
            store,
            keys,
            users,
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

#[tonic::async_trait]
impl AuthService for AuthHandler {
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> std::result::Result<Response<LoginResponse>, Status> {
        let request = request.into_inner();
        // users checks the password (and throttles); its refusal passes through unchanged.
        let user = self
            .users
            .clone()
            .verify_credentials(VerifyCredentialsRequest {
                email: request.email,
                password: request.password,
            })
            .await?
            .into_inner()
            .user
            .ok_or_else(|| Error::internal("login", "users returned no user"))?;
        let id = Uuid::parse_str(&user.id).map_err(|e| Error::internal("user id", e))?;
        let pair = self.issue(id, user.roles, None).await?;
        tracing::info!(user_id = %id, "login");
        Ok(Response::new(LoginResponse {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: "Bearer".into(),
            expires_in: pair.expires_in,
        }))
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> std::result::Result<Response<RefreshResponse>, Status> {
        let hash = sha256(request.into_inner().refresh_token.as_bytes());
        let token = self
            .store
            .token(&hash)
            .await?
            .ok_or_else(|| refused("REFRESH_TOKEN_INVALID"))?;
        if token.expires_at_ms <= now_ms() {
            return Err(refused("REFRESH_TOKEN_EXPIRED").into());
        }
        if self.store.family_revoked(token.family).await? {
            return Err(refused("REFRESH_TOKEN_REVOKED").into());
        }
        if token.spent {
            return Err(self.replayed(&token).await?.into());
        }
        // Roles are read afresh, so a role change reaches the next access token. This happens
        // before the token is spent: if users cannot answer, the client may retry with it.
        let user = match self
            .users
            .clone()
            .get_user(GetUserRequest {
                id: token.user_id.to_string(),
            })
            .await
        {
            Ok(user) => user.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                self.store.revoke_family(token.family).await?;
                return Err(refused("REFRESH_TOKEN_REVOKED").into());
            }
            Err(status) => return Err(status),
        };
        if !self.store.spend(&hash).await? {
            return Err(self.replayed(&token).await?.into());
        }
        let pair = self
            .issue(token.user_id, user.roles, Some(token.family))
            .await?;
        Ok(Response::new(RefreshResponse {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: "Bearer".into(),
            expires_in: pair.expires_in,
        }))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> std::result::Result<Response<LogoutResponse>, Status> {
        let hash = sha256(request.into_inner().refresh_token.as_bytes());
        if let Some(token) = self.store.token(&hash).await? {
            self.store.revoke_family(token.family).await?;
        }
        Ok(Response::new(LogoutResponse {}))
    }

    async fn get_jwks(
        &self,
        _request: Request<GetJwksRequest>,
    ) -> std::result::Result<Response<Jwks>, Status> {
        let keys = self.keys.jwks().into_iter().map(Jwk::from).collect();
        Ok(Response::new(Jwks { keys }))
    }

    async fn rotate_keys(
        &self,
        _request: Request<RotateKeysRequest>,
    ) -> std::result::Result<Response<RotateKeysResponse>, Status> {
        let active_kid = self
            .keys
            .rotate()
            .await
            .map_err(|e| Error::internal("key rotation failed", format!("{e:#}")))?;
        Ok(Response::new(RotateKeysResponse {
            active_kid,
            keys: self.keys.describe(),
        }))
    }

    async fn list_roles(
        &self,
        _request: Request<ListRolesRequest>,
    ) -> std::result::Result<Response<ListRolesResponse>, Status> {
        Ok(Response::new(ListRolesResponse {
            roles: roles::table(),
        }))
    }

    async fn revoke_user_tokens(
        &self,
        request: Request<RevokeUserTokensRequest>,
    ) -> std::result::Result<Response<RevokeUserTokensResponse>, Status> {
        let request = request.into_inner();
        let user = Uuid::parse_str(&request.user_id)
            .map_err(|_| Error::invalid_field("user_id", "must be a UUID"))?;
        let revoked = self.store.revoke_user(user, now_ms()).await?;
        tracing::info!(user_id = %user, reason = request.reason, revoked, "user sessions revoked");
        Ok(Response::new(RevokeUserTokensResponse {
            revoked_families: revoked as i32,
        }))
    }
}
