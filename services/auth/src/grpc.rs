//! The gRPC face of auth: [`AuthApi`] unwraps each request, calls the [`AuthHandler`] and
//! wraps its answer. Also users' generated client as the handler's [`Accounts`].

use async_trait::async_trait;
use shopmesh_kit::grpc::PeerChannel;
use shopmesh_kit::{Error, Result};
use shopmesh_proto::shopmesh::auth::v1::auth_service_server::AuthService;
use shopmesh_proto::shopmesh::auth::v1::{
    GetJwksRequest, Jwks, ListRolesRequest, ListRolesResponse, LoginRequest, LoginResponse,
    LogoutRequest, LogoutResponse, RefreshRequest, RefreshResponse, RevokeUserTokensRequest,
    RevokeUserTokensResponse, RotateKeysRequest, RotateKeysResponse,
};
use shopmesh_proto::shopmesh::users::v1::user_service_client::UserServiceClient;
use shopmesh_proto::shopmesh::users::v1::{GetUserRequest, User, VerifyCredentialsRequest};
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::handler::{Accounts, AuthHandler};
use crate::roles;

/// The gRPC face of an [`AuthHandler`].
pub struct AuthApi(pub AuthHandler);

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> std::result::Result<Response<LoginResponse>, Status> {
        let request = request.get_ref();
        let pair = self.0.login(&request.email, &request.password).await?;
        Ok(Response::new(pair))
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> std::result::Result<Response<RefreshResponse>, Status> {
        let pair = self.0.refresh(&request.get_ref().refresh_token).await?;
        Ok(Response::new(pair))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> std::result::Result<Response<LogoutResponse>, Status> {
        self.0.logout(&request.get_ref().refresh_token).await?;
        Ok(Response::new(LogoutResponse {}))
    }

    async fn get_jwks(
        &self,
        _request: Request<GetJwksRequest>,
    ) -> std::result::Result<Response<Jwks>, Status> {
        Ok(Response::new(self.0.jwks()))
    }

    async fn rotate_keys(
        &self,
        _request: Request<RotateKeysRequest>,
    ) -> std::result::Result<Response<RotateKeysResponse>, Status> {
        Ok(Response::new(self.0.rotate_keys().await?))
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
        let revoked = self.0.revoke_user_tokens(request.into_inner()).await?;
        Ok(Response::new(revoked))
    }
}

#[async_trait]
impl Accounts for UserServiceClient<PeerChannel> {
    async fn verify(&self, email: &str, password: &str) -> Result<User> {
        self.clone()
            .verify_credentials(VerifyCredentialsRequest {
                email: email.to_owned(),
                password: password.to_owned(),
            })
            .await?
            .into_inner()
            .user
            .ok_or_else(|| Error::internal("login", "users returned no user"))
    }

    async fn roles(&self, user: Uuid) -> Result<Option<Vec<String>>> {
        let request = GetUserRequest {
            id: user.to_string(),
        };
        match self.clone().get_user(request).await {
            Ok(user) => Ok(Some(user.into_inner().roles)),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status.into()),
        }
    }
}
