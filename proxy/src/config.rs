//! The `services.edge` section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shopmesh_kit::{ConfigError, Validate};

use crate::limits::LimitsConfig;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Where clients connect: HTTP/1.1, and HTTP/2 with prior knowledge (gRPC clients). Port 0
    /// picks a free port (tests).
    pub listen: SocketAddr,
    /// Largest accepted request body; larger ones get `413`.
    pub max_body_bytes: usize,
    /// How long a request may wait for its service; on a streaming route, how long the first
    /// message may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a streaming route (Server-Sent Events) may stay open; then it ends with an
    /// `error` event and the client reconnects.
    #[serde(with = "humantime_serde")]
    pub stream_timeout: Duration,
    /// How long a client may stall while sending its body or reading the answer (slow-client
    /// protection); a stalled body gets `408`.
    #[serde(with = "humantime_serde")]
    pub client_timeout: Duration,
    /// Largest request head (path and headers) accepted; larger ones get `431`.
    pub max_header_bytes: usize,
    /// How long an HTTP/1 request head may take to arrive, from its first byte to its blank
    /// line; a slower client's connection is closed (slow-header protection).
    #[serde(with = "humantime_serde")]
    pub head_timeout: Duration,
    pub limits: LimitsConfig,
    pub cors: CorsConfig,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with this certificate; plain HTTP without.
    pub tls: Option<TlsConfig>,
    /// Paths proxied as they are to a plain HTTP/1.1 server (a storefront's web app, static
    /// assets), by longest matching prefix. They get the edge's limits, headers, request ids and
    /// logs, but no token checks: that server answers for its own access.
    pub forward: Vec<ForwardRoute>,
    /// Proxies and load balancers in front of the edge (CIDR blocks, e.g. `10.0.0.0/8`). A
    /// request from one of them is counted and logged under the client address its
    /// `Forwarded` or `X-Forwarded-For` header names; anyone else's such header is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `prefix` → `upstream`, e.g. `{ prefix = "/assets/", upstream = "10.0.0.7:8000" }`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ForwardRoute {
    pub prefix: String,
    pub upstream: SocketAddr,
}

/// Paths the edge answers itself; no forward route may cover them.
const OWN_PATHS: [&str; 4] = ["/v1/", "/openapi.json", "/healthz", "/readyz"];

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsConfig {
    /// Reads both files, so a bad certificate is a clear start-up error (Pingora would panic
    /// on it later, in its listener).
    pub fn check(&self) -> Result<(), ConfigError> {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                ConfigError::invalid("tls.cert", format!("{}: {e}", self.cert.display()))
            })?;
        if certs.is_empty() {
            return Err(ConfigError::invalid(
                "tls.cert",
                format!("{} holds no certificate", self.cert.display()),
            ));
        }
        PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| ConfigError::invalid("tls.key", format!("{}: {e}", self.key.display())))?;
        Ok(())
    }
}

/// Cross-origin access for browser clients: only the listed origins, never a wildcard (answers
/// may carry credentials).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins, e.g. `https://shop.example.com`.
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_age: Duration::from_secs(600),
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            timeout: Duration::from_secs(15),
            stream_timeout: Duration::from_secs(60 * 60),
            client_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            head_timeout: Duration::from_secs(10),
            limits: LimitsConfig::default(),
            cors: CorsConfig::default(),
            tls: None,
            forward: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl Validate for EdgeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(ConfigError::invalid(
                "max_body_bytes",
                "must be between 1 byte and 64 MiB",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::invalid("timeout", "must be positive"));
        }
        if self.stream_timeout.is_zero() {
            return Err(ConfigError::invalid("stream_timeout", "must be positive"));
        }
        if self.head_timeout.is_zero() {
            return Err(ConfigError::invalid("head_timeout", "must be positive"));
        }
        if self.client_timeout.is_zero() {
            return Err(ConfigError::invalid("client_timeout", "must be positive"));
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(ConfigError::invalid(
                "max_header_bytes",
                "must be between 1 KiB and 1 MiB",
            ));
        }
        self.limits.validate()?;
        for route in &self.forward {
            let prefix = route.prefix.as_str();
            if !prefix.starts_with('/') || prefix.contains(['?', '#']) {
                return Err(ConfigError::invalid(
                    "forward",
                    format!("`{prefix}` is not a path prefix like /assets/"),
                ));
            }
            if let Some(own) = OWN_PATHS
                .iter()
                .find(|own| own.starts_with(prefix) || prefix.starts_with(**own))
            {
                return Err(ConfigError::invalid(
                    "forward",
                    format!("`{prefix}` overlaps `{own}`, which the edge answers itself"),
                ));
            }
        }
        if let Some(bad) = self
            .cors
            .allowed_origins
            .iter()
            .find(|o| *o == "*" || !(o.starts_with("https://") || o.starts_with("http://")))
        {
            return Err(ConfigError::invalid(
                "cors.allowed_origins",
                format!("`{bad}` is not an origin like https://shop.example.com (no wildcards)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::{Format, Toml};

    use super::*;

    #[test]
    fn forward_routes_may_not_cover_the_edges_own_paths() {
        let with = |prefix: &str| EdgeConfig {
            forward: vec![ForwardRoute {
                prefix: prefix.into(),
                upstream: "127.0.0.1:9000".parse().unwrap(),
            }],
            ..EdgeConfig::default()
        };
        with("/assets/").validate().unwrap();
        with("/shop").validate().unwrap();
        for bad in ["/", "/v", "/v1/products/", "/openapi", "assets/", "/a?b"] {
            assert!(with(bad).validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn streams_stay_open_an_hour_unless_configured() {
        let config = EdgeConfig::default();
        assert_eq!(config.stream_timeout, Duration::from_secs(60 * 60));
        config.validate().unwrap();
        let config: EdgeConfig = figment::Figment::from(Toml::string(r#"stream_timeout = "30m""#))
            .extract()
            .unwrap();
        assert_eq!(config.stream_timeout, Duration::from_secs(30 * 60));
        let zero = EdgeConfig {
            stream_timeout: Duration::ZERO,
            ..EdgeConfig::default()
        };
        let error = zero.validate().unwrap_err().to_string();
        assert!(error.contains("stream_timeout"), "{error}");
    }
}
