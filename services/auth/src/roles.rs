//! The role table: which permissions each role grants. Auth owns it; the edge and every
//! service read it through `ListRoles` to expand a token's `roles` claim.

use shopmesh_proto::shopmesh::auth::v1::Role;

/// Every permission in use (see `shopmesh/options/v1/options.proto`).
const ALL: &[&str] = &[
    "users.users.read",
    "users.roles.write",
    "auth.keys.rotate",
    "catalog.products.write",
    "catalog.categories.write",
    "orders.orders.fulfil",
    "orders.orders.read_any",
    "orders.orders.cancel_any",
    "reviews.reviews.moderate",
];

const SUPPORT: &[&str] = &[
    "users.users.read",
    "orders.orders.read_any",
    "orders.orders.cancel_any",
];

/// The roles, `customer` first (every new account's role).
pub fn table() -> Vec<Role> {
    let role = |name: &str, permissions: &[&str], description: &str| Role {
        name: name.into(),
        permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        description: description.into(),
    };
    vec![
        role(
            "customer",
            &[],
            "Shoppers: their own profile, orders, reviews and notifications.",
        ),
        role(
            "support",
            SUPPORT,
            "Customer support: reads accounts, reads and cancels any order.",
        ),
        role("admin", ALL, "Administrators: every permission."),
    ]
}

#[cfg(test)]
mod tests {
    use shopmesh_kit::access::{Access, rules};

    use super::*;

    #[test]
    fn every_permission_the_protos_demand_is_granted_to_admin() {
        let admin = table().into_iter().find(|r| r.name == "admin").unwrap();
        for access in rules().values() {
            if let Access::Permission(permission) = access {
                assert!(
                    admin.permissions.contains(permission),
                    "admin lacks {permission}"
                );
            }
        }
    }
}
