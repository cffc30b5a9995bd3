//! The gRPC face of users: [`UserApi`] reads the caller and metadata off each request, calls
//! the [`UserHandler`] and wraps its answer. Also auth's generated client as the handler's
//! [`RoleNames`].

use std::sync::Arc;

use async_trait::async_trait;
use shopmesh_kit::access::Caller;
use shopmesh_kit::grpc::PeerChannel;
use shopmesh_kit::{Result, locale};
use shopmesh_proto::shopmesh::auth::v1::ListRolesRequest;
use shopmesh_proto::shopmesh::auth::v1::auth_service_client::AuthServiceClient;
use shopmesh_proto::shopmesh::users::v1::user_service_server::UserService;
use shopmesh_proto::shopmesh::users::v1::{
    CreateUserRequest, GetMeRequest, GetUserRequest, ListUsersRequest, ListUsersResponse,
    SetUserRolesRequest, UpdateMeRequest, User, VerifyCredentialsRequest,
    VerifyCredentialsResponse,
};
use tonic::{Request, Response, Status};

use crate::handler::{RoleNames, UserHandler};

/// The gRPC face of a shared [`UserHandler`].
#[derive(Clone)]
pub struct UserApi(pub Arc<UserHandler>);

impl std::ops::Deref for UserApi {
    type Target = UserHandler;

    fn deref(&self) -> &UserHandler {
        &self.0
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> std::result::Result<Response<User>, Status> {
        let accepted = locale::accepted(request.metadata());
        let user = self.create(request.into_inner(), &accepted).await?;
        Ok(Response::new(user))
    }

    async fn get_me(
        &self,
        request: Request<GetMeRequest>,
    ) -> std::result::Result<Response<User>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(self.me(caller).await?))
    }

    async fn update_me(
        &self,
        request: Request<UpdateMeRequest>,
    ) -> std::result::Result<Response<User>, Status> {
        let caller = Caller::of(&request)?.clone();
        let user = self.0.update_me(&caller, request.into_inner()).await?;
        Ok(Response::new(user))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> std::result::Result<Response<ListUsersResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn set_user_roles(
        &self,
        request: Request<SetUserRolesRequest>,
    ) -> std::result::Result<Response<User>, Status> {
        Ok(Response::new(self.set_roles(request.into_inner()).await?))
    }

    async fn verify_credentials(
        &self,
        request: Request<VerifyCredentialsRequest>,
    ) -> std::result::Result<Response<VerifyCredentialsResponse>, Status> {
        let request = request.get_ref();
        let user = self
            .0
            .verify_credentials(&request.email, &request.password)
            .await?;
        Ok(Response::new(VerifyCredentialsResponse {
            user: Some(user),
        }))
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> std::result::Result<Response<User>, Status> {
        Ok(Response::new(self.get(&request.get_ref().id).await?))
    }
}

#[async_trait]
impl RoleNames for AuthServiceClient<PeerChannel> {
    async fn role_names(&self) -> Result<Vec<String>> {
        let roles = self.clone().list_roles(ListRolesRequest {}).await?;
        Ok(roles
            .into_inner()
            .roles
            .into_iter()
            .map(|r| r.name)
            .collect())
    }
}
