//! Which backend a service stores its data in, and how to reach it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shopmesh_kit::{ConfigError, Secret};

/// `backend = "sqlite"` (one file per service under the data dir) or `backend = "cql"`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum StorageConfig {
    #[default]
    Sqlite,
    Cql(CqlConfig),
}

/// A CQL cluster (ScyllaDB or Cassandra). Each service gets the keyspace `<keyspace_prefix><service>`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CqlConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace_prefix: String,
    /// Replication options of keyspaces created by migrations.
    pub replication: BTreeMap<String, String>,
    pub username: Option<String>,
    pub password: Secret,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for CqlConfig {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".to_owned()],
            keyspace_prefix: "shopmesh_".to_owned(),
            replication: BTreeMap::from([
                ("class".to_owned(), "SimpleStrategy".to_owned()),
                ("replication_factor".to_owned(), "1".to_owned()),
            ]),
            username: None,
            password: Secret::default(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl CqlConfig {
    /// The keyspace of `service`.
    pub fn keyspace(&self, service: &str) -> String {
        format!("{}{}", self.keyspace_prefix, service)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::invalid(
                "storage.nodes",
                "at least one CQL node is required",
            ));
        }
        if !valid_identifier(&self.keyspace("x")) || self.keyspace_prefix.len() > 32 {
            return Err(ConfigError::invalid(
                "storage.keyspace_prefix",
                "use at most 32 lowercase letters, digits and underscores, starting with a letter",
            ));
        }
        if !self.replication.contains_key("class") {
            return Err(ConfigError::invalid(
                "storage.replication",
                "needs a `class`",
            ));
        }
        let safe = |s: &String| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
        };
        if !self.replication.iter().all(|(k, v)| safe(k) && safe(v)) {
            return Err(ConfigError::invalid(
                "storage.replication",
                "keys and values may hold letters, digits, `_` and `.` only",
            ));
        }
        Ok(())
    }

    /// The `WITH replication = {...}` map in CQL syntax (validated to hold only safe characters).
    pub fn replication_cql(&self) -> String {
        let entries: Vec<String> = self
            .replication
            .iter()
            .map(|(k, v)| format!("'{k}': '{v}'"))
            .collect();
        format!("{{{}}}", entries.join(", "))
    }
}

/// A CQL identifier we create unquoted: lowercase, starts with a letter, at most 48 characters.
pub fn valid_identifier(name: &str) -> bool {
    name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
