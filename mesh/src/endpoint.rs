//! What discovery knows about a service instance, and the table of all of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Where every registration lives in etcd: `<PREFIX><service>/<instance>`.
pub const PREFIX: &str = "/shopmesh/v1/services/";

/// One instance of a service, as registered: the JSON value under its discovery key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Where callers connect: the inbound listener of the instance's node sidecar.
    pub address: SocketAddr,
    pub node: String,
    #[serde(default)]
    pub zone: String,
    /// Relative share of traffic; 0 takes the instance out of rotation without deregistering.
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub version: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub started_at: i64,
}

fn default_weight() -> u32 {
    1
}

/// An endpoint with the instance name it is registered under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub id: String,
    #[serde(flatten)]
    pub endpoint: Endpoint,
}

/// Every known instance, by service and then instance id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table(BTreeMap<String, BTreeMap<String, Endpoint>>);

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, service: &str, instance: &str, endpoint: Endpoint) {
        self.0
            .entry(service.to_owned())
            .or_default()
            .insert(instance.to_owned(), endpoint);
    }

    /// Sets the instances of `service` to exactly `instances`.
    pub fn replace(&mut self, service: &str, instances: Vec<(String, Endpoint)>) {
        if instances.is_empty() {
            self.0.remove(service);
        } else {
            self.0
                .insert(service.to_owned(), instances.into_iter().collect());
        }
    }

    pub fn remove(&mut self, service: &str, instance: &str) {
        if let Some(instances) = self.0.get_mut(service) {
            instances.remove(instance);
            if instances.is_empty() {
                self.0.remove(service);
            }
        }
    }

    /// The instances of `service` that take traffic (weight above 0).
    pub fn instances(&self, service: &str) -> Vec<Instance> {
        self.0
            .get(service)
            .into_iter()
            .flatten()
            .filter(|(_, endpoint)| endpoint.weight > 0)
            .map(|(id, endpoint)| Instance {
                id: id.clone(),
                endpoint: endpoint.clone(),
            })
            .collect()
    }

    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The etcd key of one registration.
pub fn key(service: &str, instance: &str) -> String {
    format!("{PREFIX}{service}/{instance}")
}

/// The service and instance a discovery key names, or `None` for a key of another shape.
pub fn parse_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (service, instance) = rest.split_once('/')?;
    let valid = |part: &str| !part.is_empty() && !part.contains('/');
    (valid(service) && valid(instance)).then_some((service, instance))
}

/// Service and instance names: what may appear in a key, a certificate and an `:authority`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_odd_keys_are_ignored() {
        assert_eq!(
            key("catalog", "node-1"),
            "/shopmesh/v1/services/catalog/node-1"
        );
        assert_eq!(
            parse_key("/shopmesh/v1/services/catalog/node-1"),
            Some(("catalog", "node-1"))
        );
        for odd in [
            "/shopmesh/v1/services/catalog",
            "/shopmesh/v1/services/catalog/",
            "/shopmesh/v1/services//x",
            "/shopmesh/v1/services/a/b/c",
            "/other/catalog/x",
        ] {
            assert_eq!(parse_key(odd), None, "{odd}");
        }
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(is_valid_name("catalog"));
        assert!(is_valid_name("node-2"));
        for bad in ["", "Catalog", "-a", "a-", "a.b", "a/b", &"x".repeat(64)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_table_hides_drained_instances_and_forgets_empty_services() {
        let endpoint = |weight| Endpoint {
            address: "127.0.0.2:15443".parse().unwrap(),
            node: "node-1".into(),
            zone: String::new(),
            weight,
            version: String::new(),
            started_at: 0,
        };
        let mut table = Table::new();
        table.insert("catalog", "a", endpoint(1));
        table.insert("catalog", "b", endpoint(0));
        assert_eq!(table.instances("catalog").len(), 1);
        assert_eq!(table.len(), 2);
        table.remove("catalog", "a");
        table.remove("catalog", "b");
        assert!(table.is_empty());
        let json: Endpoint =
            serde_json::from_str(r#"{"address":"127.0.0.3:15443","node":"n"}"#).unwrap();
        assert_eq!(json.weight, 1);
    }
}
