//! Access control in every service, from the protos' `(shopmesh.options.v1.access)` rules: a
//! server layer verifies the caller's access token (the edge did too; this is defence in depth)
//! and enforces the method's rule before any handler runs. Handlers read the verified
//! [`Caller`] for their own ownership checks.
//!
//! Tokens are verified locally ([`crate::token::Verifier`], keys from auth's JWKS); roles are
//! expanded into permissions with auth's role table, cached for [`ROLE_TABLE_TTL`].

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use prost_reflect::Value;
use shopmesh_proto::shopmesh::auth::v1::auth_service_client::AuthServiceClient;
use shopmesh_proto::shopmesh::auth::v1::{self as pb, GetJwksRequest, ListRolesRequest};
use shopmesh_proto::validate::descriptors;
use tonic::transport::server::TcpConnectInfo;

use crate::grpc::PeerChannel;
use crate::token::{Jwk, KeySource, TokenError, Verifier};
use crate::{Error, Result};

/// How long the role → permissions table is kept before it is fetched again.
pub const ROLE_TABLE_TTL: Duration = Duration::from_secs(60);

/// The permission a method without an access rule demands, so that nobody may call it.
const MISSING_RULE: &str = "(no access rule)";

/// Who may call an RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone; a token, if sent, must still be valid.
    Public,
    /// Any caller with a valid access token.
    Authenticated,
    /// A caller whose roles grant this permission.
    Permission(String),
    /// Other services only: callers on this host (the node's mesh sidecar, or the same
    /// process in `shopmesh up`) or in the configured trusted peers. The edge never routes here.
    Internal,
}

/// The rule of every RPC, by its gRPC path (`/shopmesh.users.v1.UserService/GetMe`).
pub fn rules() -> &'static HashMap<String, Access> {
    static RULES: LazyLock<HashMap<String, Access>> = LazyLock::new(|| {
        let pool = descriptors();
        let Some(extension) = pool.get_extension_by_name("shopmesh.options.v1.access") else {
            return HashMap::new();
        };
        let mut rules = HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let options = method.options();
                let value = options.get_extension(&extension);
                let access = value
                    .as_message()
                    .filter(|_| options.has_extension(&extension));
                let Some(access) = access else {
                    // A method without a rule is a defect: nobody holds this permission.
                    rules.insert(path, Access::Permission(MISSING_RULE.to_owned()));
                    continue;
                };
                let rule = if access.has_field_by_name("public") {
                    Access::Public
                } else if access.has_field_by_name("authenticated") {
                    Access::Authenticated
                } else if access.has_field_by_name("internal") {
                    Access::Internal
                } else {
                    match access.get_field_by_name("permission").as_deref() {
                        Some(Value::String(permission)) if !permission.is_empty() => {
                            Access::Permission(permission.clone())
                        }
                        // A method without a rule is a defect: nobody holds this permission.
                        _ => Access::Permission(MISSING_RULE.to_owned()),
                    }
                };
                rules.insert(format!("/{}/{}", service.full_name(), method.name()), rule);
            }
        }
        rules
    });
    &RULES
}

/// The verified caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user id (`sub`).
    pub user_id: String,
    pub roles: Vec<String>,
    /// What the roles grant, from auth's role table.
    pub permissions: BTreeSet<String>,
    /// The token's `jti`, for audit logs.
    pub token_id: String,
}

impl Caller {
    pub fn can(&self, permission: &str) -> bool {
        self.permissions.contains(permission)
    }

    /// `PERMISSION_DENIED` unless the caller holds `permission`.
    pub fn require(&self, permission: &str) -> Result<()> {
        if self.can(permission) {
            Ok(())
        } else {
            Err(denied(permission))
        }
    }

    /// The verified caller of `request`; `UNAUTHENTICATED` when it carried no token.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Caller> {
        request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Error::unauthenticated("TOKEN_MISSING", "an access token is required"))
    }

    /// The verified caller of `request`, if it carried a token.
    pub fn optional<T>(request: &tonic::Request<T>) -> Option<&Caller> {
        request.extensions().get::<Caller>()
    }
}

fn denied(permission: &str) -> Error {
    Error::permission_denied("PERMISSION_DENIED", "the caller's roles do not allow this")
        .with_metadata("permission", permission)
}

/// Where the role → permissions table comes from.
#[async_trait]
pub trait RoleSource: Send + Sync + 'static {
    async fn roles(&self) -> Result<HashMap<String, BTreeSet<String>>>;
}

/// Turns access tokens into [`Caller`]s.
#[derive(Clone)]
pub struct Authority {
    verifier: Verifier,
    /// Addresses besides loopback that may call internal methods.
    trusted: Arc<Vec<IpAddr>>,
    roles: Arc<dyn RoleSource>,
    table: moka::future::Cache<(), Arc<HashMap<String, BTreeSet<String>>>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    pub fn new(verifier: Verifier, roles: Arc<dyn RoleSource>) -> Self {
        Self {
            verifier,
            trusted: Arc::new(Vec::new()),
            roles,
            table: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(ROLE_TABLE_TTL)
                .build(),
        }
    }

    /// Lets `peers` call internal methods too (hosts of peer services in a deployment that
    /// has no mesh sidecar in front of them yet).
    pub fn with_trusted_peers(mut self, peers: Vec<IpAddr>) -> Self {
        self.trusted = Arc::new(peers);
        self
    }

    /// Verifies `token` and expands its roles.
    pub async fn authenticate(&self, token: &str) -> Result<Caller> {
        let claims = self.verifier.verify(token).await?;
        let table = self
            .table
            .try_get_with((), async { self.roles.roles().await.map(Arc::new) })
            .await
            .map_err(|error: Arc<Error>| (*error).clone())?;
        let permissions = claims
            .roles
            .iter()
            .filter_map(|role| table.get(role))
            .flatten()
            .cloned()
            .collect();
        Ok(Caller {
            user_id: claims.sub,
            roles: claims.roles,
            permissions,
            token_id: claims.jti,
        })
    }

    /// Checks a call to `path` from `remote` with its `authorization` header against the
    /// method's rule; returns the caller, if there is one.
    pub async fn admit(
        &self,
        path: &str,
        remote: Option<IpAddr>,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Option<Caller>> {
        let caller = match authorization {
            None => None,
            Some(value) => {
                let token = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        Error::unauthenticated(
                            "TOKEN_MALFORMED",
                            "the authorization header must be `Bearer <token>`",
                        )
                    })?;
                Some(self.authenticate(token.trim()).await?)
            }
        };
        match (rules().get(path), &caller) {
            // Unknown paths (health, or methods that do not exist) are left to the router.
            (None | Some(Access::Public), _) => Ok(caller),
            (Some(Access::Internal), _) => {
                if remote.is_some_and(|ip| ip.is_loopback() || self.trusted.contains(&ip)) {
                    Ok(caller)
                } else {
                    Err(Error::permission_denied(
                        "INTERNAL_ONLY",
                        "this method is only for other shopmesh services",
                    ))
                }
            }
            (Some(Access::Authenticated | Access::Permission(_)), None) => Err(
                Error::unauthenticated("TOKEN_MISSING", "an access token is required"),
            ),
            (Some(Access::Authenticated), Some(_)) => Ok(caller),
            (Some(Access::Permission(permission)), Some(found)) => {
                found.require(permission)?;
                Ok(caller)
            }
        }
    }
}

/// Auth as a key and role source, over gRPC.
#[derive(Debug, Clone)]
pub struct AuthPeer(AuthServiceClient<PeerChannel>);

impl AuthPeer {
    pub fn new(channel: PeerChannel) -> Self {
        Self(AuthServiceClient::new(channel))
    }
}

#[async_trait]
impl KeySource for AuthPeer {
    async fn fetch(&self) -> std::result::Result<Vec<Jwk>, TokenError> {
        let keys = self
            .0
            .clone()
            .get_jwks(GetJwksRequest {})
            .await
            .map_err(|status| TokenError::KeysUnavailable(status.message().to_owned()))?
            .into_inner()
            .keys;
        Ok(keys.into_iter().map(Jwk::from).collect())
    }
}

#[async_trait]
impl RoleSource for AuthPeer {
    async fn roles(&self) -> Result<HashMap<String, BTreeSet<String>>> {
        let roles = self
            .0
            .clone()
            .list_roles(ListRolesRequest {})
            .await?
            .into_inner()
            .roles;
        Ok(roles
            .into_iter()
            .map(|role| (role.name, role.permissions.into_iter().collect()))
            .collect())
    }
}

impl From<pb::Jwk> for Jwk {
    fn from(key: pb::Jwk) -> Self {
        Self {
            kty: key.kty,
            crv: key.crv,
            x: key.x,
            kid: key.kid,
            alg: key.alg,
            use_: key.r#use,
        }
    }
}

impl From<Jwk> for pb::Jwk {
    fn from(key: Jwk) -> Self {
        Self {
            kty: key.kty,
            crv: key.crv,
            x: key.x,
            kid: key.kid,
            alg: key.alg,
            r#use: key.use_,
        }
    }
}

/// Server layer enforcing [`rules`] with an [`Authority`]; sits inside the context layer.
#[derive(Debug, Clone)]
pub struct AccessLayer {
    authority: Authority,
}

impl AccessLayer {
    pub fn new(authority: Authority) -> Self {
        Self { authority }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            inner,
            authority: self.authority.clone(),
        }
    }
}

/// See [`AccessLayer`].
#[derive(Debug, Clone)]
pub struct AccessService<S> {
    inner: S,
    authority: Authority,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for AccessService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<std::result::Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authority = self.authority.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let remote = request
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
                .map(|address| address.ip());
            let authorization = request.headers().get(http::header::AUTHORIZATION).cloned();
            match authority.admit(&path, remote, authorization.as_ref()).await {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        request.extensions_mut().insert(caller);
                    }
                    inner.call(request).await
                }
                Err(error) => Ok(tonic::Status::from(error).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_kind_is_read_from_the_protos() {
        let rules = rules();
        assert_eq!(
            rules.get("/shopmesh.users.v1.UserService/CreateUser"),
            Some(&Access::Public)
        );
        assert_eq!(
            rules.get("/shopmesh.users.v1.UserService/GetMe"),
            Some(&Access::Authenticated)
        );
        assert_eq!(
            rules.get("/shopmesh.users.v1.UserService/ListUsers"),
            Some(&Access::Permission("users.users.read".into()))
        );
        assert_eq!(
            rules.get("/shopmesh.users.v1.UserService/VerifyCredentials"),
            Some(&Access::Internal)
        );
    }
}
