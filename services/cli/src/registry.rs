//! The one list of services `shopmesh up` hosts. Adding a service is one line here (see
//! `docs/adding-a-service.md`); `up` starts them in this order, the edge last.

use shopmesh_host::Service;

/// Every service of the platform.
pub static SERVICES: &[&'static dyn Service] = &[
    &shopmesh_users::Users,
    &shopmesh_auth::Auth,
    &shopmesh_catalog::Catalog,
    &shopmesh_orders::Orders,
    &shopmesh_payments::Payments,
    &shopmesh_edge::Edge,
];
