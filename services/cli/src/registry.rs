//! The one list of services. `shopmesh up` hosts them in this order, the edge last;
//! `shopmesh cluster up` derives its topology from their manifests (ports, replicas, who calls
//! whom, generated secrets). Adding a service is one line here (see
//! `docs/adding-a-service.md`).

use shopmesh_host::{Hosted, Manifest};

/// Every service of the platform, in start order: auth and users first, as every other service
/// checks tokens with auth's keys.
pub static SERVICES: &[&'static dyn Hosted] = &[
    &shopmesh_auth::Auth,
    &shopmesh_users::Users,
    &shopmesh_catalog::Catalog,
    &shopmesh_orders::Orders,
    &shopmesh_payments::Payments,
    &shopmesh_reviews::Reviews,
    &shopmesh_edge::Edge,
];

/// Every service's manifest, in start order.
pub fn manifests() -> impl Iterator<Item = Manifest> {
    SERVICES.iter().map(|service| service.manifest())
}

/// The registered service named `name`.
pub fn find(name: &str) -> Option<&'static dyn Hosted> {
    SERVICES
        .iter()
        .copied()
        .find(|service| service.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ports_are_unique_and_every_called_service_is_registered() {
        let manifests: Vec<Manifest> = manifests().collect();
        for (i, a) in manifests.iter().enumerate() {
            for b in &manifests[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.port, b.port, "{} and {}", a.name, b.name);
            }
            if let shopmesh_host::Calls::Only(targets) = a.calls {
                for target in targets {
                    assert!(find(target).is_some(), "{} calls unknown {target}", a.name);
                }
            }
        }
    }
}
