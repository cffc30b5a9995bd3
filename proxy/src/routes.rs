//! The REST routes, read once from the descriptor set: every `google.api.http` rule (and its
//! additional bindings) of every shopmesh service, with the method's access rule and edge
//! options. Nothing here is written by hand per route.

use std::collections::BTreeSet;

use http::Method;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};
use shopmesh_kit::access::{Access, rules};

use crate::template::{Bindings, Template, TemplateError};

/// How a route takes the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body (GET, DELETE): every field comes from the path and the query.
    None,
    /// `body: "*"`: the body is the whole request message; the query binds nothing.
    Whole,
    /// `body: "field"`: the body is that field; the query binds the rest.
    Field(String),
}

/// One REST route onto one RPC.
#[derive(Debug, Clone)]
pub struct Route {
    pub http_method: Method,
    pub template: Template,
    pub method: MethodDescriptor,
    /// The gRPC path, `/shopmesh.users.v1.UserService/GetMe`.
    pub grpc_path: String,
    /// The owning service's name (`users` for `shopmesh.users.v1`): its upstream.
    pub service: String,
    pub body: Body,
    /// The response field to send as the body instead of the whole message.
    pub response_body: Option<String>,
    pub access: Access,
    /// HTTP status of a success (200 unless the route option says 201 or 202).
    pub success_status: u16,
    /// The rate-limit class (`shopmesh.options.v1.RateClass` number).
    pub rate_class: i32,
    /// Request headers the route reads, forwarded as metadata.
    pub headers: Vec<RouteHeader>,
}

/// A request header a route declares (`shopmesh.options.v1.Header`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteHeader {
    /// Lower case; also the metadata key.
    pub name: String,
    pub required: bool,
    /// Longest accepted value in bytes; 0 for the edge's general limit.
    pub max_len: usize,
    pub description: String,
}

/// The outcome of routing a request that has no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    /// The path exists for these other methods.
    MethodNotAllowed(Vec<Method>),
}

/// Every REST route, most specific template first.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds the routes of every service in `pool`. Internal methods never get one.
    pub fn from_descriptors(pool: &DescriptorPool) -> Result<Self, TemplateError> {
        let Some(http_rule) = pool.get_extension_by_name("google.api.http") else {
            return Ok(Self::default());
        };
        let route_option = pool.get_extension_by_name("shopmesh.options.v1.route");
        let mut routes = Vec::new();
        for service in pool.services() {
            let Some(owner) = owner(service.package_name()) else {
                continue;
            };
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http_rule) {
                    continue;
                }
                let grpc_path = format!("/{}/{}", service.full_name(), method.name());
                let access = rules().get(&grpc_path).cloned().unwrap_or(Access::Internal);
                if access == Access::Internal {
                    continue;
                }
                let (success_status, rate_class, headers) = route_option
                    .as_ref()
                    .filter(|option| options.has_extension(option))
                    .and_then(|option| {
                        let value = options.get_extension(option);
                        let route = value.as_message()?;
                        Some((
                            route
                                .get_field_by_name("success_status")
                                .and_then(|v| v.as_u32())
                                .filter(|status| *status != 0)
                                .unwrap_or(200) as u16,
                            route
                                .get_field_by_name("rate_class")
                                .and_then(|v| v.as_enum_number())
                                .unwrap_or(0),
                            declared_headers(route),
                        ))
                    })
                    .unwrap_or((200, 0, Vec::new()));
                let value = options.get_extension(&http_rule);
                let Some(rule) = value.as_message() else {
                    continue;
                };
                let mut bindings = vec![rule.clone()];
                if let Some(Value::List(more)) =
                    rule.get_field_by_name("additional_bindings").as_deref()
                {
                    bindings.extend(more.iter().filter_map(|v| v.as_message().cloned()));
                }
                for binding in bindings {
                    let Some((http_method, path)) = verb_and_path(&binding) else {
                        continue;
                    };
                    let body = match string_field(&binding, "body").as_str() {
                        "" => Body::None,
                        "*" => Body::Whole,
                        field => Body::Field(field.to_owned()),
                    };
                    let response_body = Some(string_field(&binding, "response_body"))
                        .filter(|field| !field.is_empty());
                    routes.push(Route {
                        http_method,
                        template: Template::parse(&path)?,
                        method: method.clone(),
                        grpc_path: grpc_path.clone(),
                        service: owner.to_owned(),
                        body,
                        response_body,
                        access: access.clone(),
                        success_status,
                        rate_class,
                        headers: headers.clone(),
                    });
                }
            }
        }
        routes.sort_by_key(|route| std::cmp::Reverse(route.template.specificity()));
        Ok(Self { routes })
    }

    /// The route for `method` and `path` (percent-encoded, no query) and its path bindings.
    pub fn find(&self, method: &Method, path: &str) -> Result<(&Route, Bindings), Miss> {
        let mut allowed = BTreeSet::new();
        for route in &self.routes {
            if let Some(bindings) = route.template.matches(path) {
                if route.http_method == *method {
                    return Ok((route, bindings));
                }
                allowed.insert(route.http_method.as_str().to_owned());
            }
        }
        if allowed.is_empty() {
            Err(Miss::NotFound)
        } else {
            Err(Miss::MethodNotAllowed(
                allowed
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
            ))
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

fn declared_headers(route: &DynamicMessage) -> Vec<RouteHeader> {
    let Some(Value::List(headers)) = route.get_field_by_name("headers").as_deref().cloned() else {
        return Vec::new();
    };
    headers
        .iter()
        .filter_map(|header| header.as_message())
        .map(|header| RouteHeader {
            name: string_field(header, "name").to_ascii_lowercase(),
            required: header
                .get_field_by_name("required")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            max_len: header
                .get_field_by_name("max_len")
                .and_then(|v| v.as_u32())
                .unwrap_or(0) as usize,
            description: string_field(header, "description"),
        })
        .filter(|header| !header.name.is_empty())
        .collect()
}

/// `shopmesh.users.v1` → `users`: the service a package belongs to.
pub(crate) fn owner(package: &str) -> Option<&str> {
    let mut parts = package.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("shopmesh"), Some(service), Some(_version), None) => Some(service),
        _ => None,
    }
}

fn verb_and_path(rule: &DynamicMessage) -> Option<(Method, String)> {
    for (field, method) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if rule.has_field_by_name(field) {
            return Some((method, string_field(rule, field)));
        }
    }
    let custom = rule.get_field_by_name("custom")?;
    let custom = custom.as_message()?;
    let method = Method::from_bytes(string_field(custom, "kind").as_bytes()).ok()?;
    Some((method, string_field(custom, "path")))
}

fn string_field(message: &DynamicMessage, name: &str) -> String {
    message
        .get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use shopmesh_proto::validate::descriptors;

    use super::*;

    fn router() -> Router {
        Router::from_descriptors(descriptors()).unwrap()
    }

    #[test]
    fn every_public_api_route_is_found() {
        let router = router();
        let (route, bindings) = router.find(&Method::GET, "/v1/users/me").unwrap();
        assert_eq!(route.grpc_path, "/shopmesh.users.v1.UserService/GetMe");
        assert!(bindings.is_empty());
        let (route, bindings) = router.find(&Method::POST, "/v1/users/u-1/roles").unwrap();
        assert_eq!(
            route.grpc_path,
            "/shopmesh.users.v1.UserService/SetUserRoles"
        );
        assert_eq!(bindings, [("id".to_owned(), "u-1".to_owned())]);
        assert_eq!(route.body, Body::Whole);
        let (route, _) = router.find(&Method::POST, "/v1/users").unwrap();
        assert_eq!(
            (route.success_status, route.service.as_str()),
            (201, "users")
        );
        let (route, _) = router.find(&Method::GET, "/v1/products:search").unwrap();
        assert_eq!(route.method.name(), "SearchProducts");
        let (route, _) = router.find(&Method::POST, "/v1/orders/o-1:cancel").unwrap();
        assert_eq!(route.method.name(), "CancelOrder");
        let (route, _) = router.find(&Method::PATCH, "/v1/users/me").unwrap();
        assert_eq!(route.body, Body::Field("user".into()));
        let (route, _) = router.find(&Method::GET, "/.well-known/jwks.json").unwrap();
        assert_eq!(route.access, Access::Public);
    }

    #[test]
    fn misses_say_not_found_or_which_methods_exist() {
        let router = router();
        assert_eq!(
            router.find(&Method::GET, "/v1/nothing").unwrap_err(),
            Miss::NotFound
        );
        assert_eq!(
            router.find(&Method::DELETE, "/v1/users/me").unwrap_err(),
            Miss::MethodNotAllowed(vec![Method::GET, Method::PATCH])
        );
    }

    #[test]
    fn declared_headers_come_with_their_routes() {
        let router = router();
        let (route, _) = router.find(&Method::POST, "/v1/webhooks/stripe").unwrap();
        let signature = route
            .headers
            .iter()
            .find(|h| h.name == "stripe-signature")
            .expect("the webhook declares its signature header");
        assert!(signature.required);
        assert_eq!(signature.max_len, 2048);
    }

    #[test]
    fn internal_methods_have_no_route() {
        let router = router();
        assert!(
            router
                .routes()
                .iter()
                .all(|route| route.access != Access::Internal)
        );
        assert!(
            !router
                .routes()
                .iter()
                .any(|route| route.method.name() == "VerifyCredentials")
        );
    }
}
