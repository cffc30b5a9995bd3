//! The `services.payments` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shopmesh_kit::{ConfigError, Secret, Validate};

/// Which gateway charges the orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayKind {
    /// The built-in sandbox with Stripe's test-card behaviour; no money moves.
    Sandbox,
    /// Stripe's API.
    Stripe,
}

/// Bounds of `sweep_after`: a payment younger than a second may still be in its first provider
/// call; one older than twelve hours comes too close to the end of the provider's idempotency
/// window (24 hours at Stripe) for a repeated call to be safe.
const SWEEP_AFTER_MIN: Duration = Duration::from_secs(1);
const SWEEP_AFTER_MAX: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsConfig {
    /// `sandbox` or `stripe`. When unset: `sandbox` under `shopmesh up`, `stripe` for the
    /// `shopmesh-payments` binary (which then needs `stripe.secret_key`).
    pub gateway: Option<GatewayKind>,
    pub stripe: StripeConfig,
    /// The signing secrets of the Stripe webhook endpoint (`whsec_…`); a delivery signed with
    /// any of them is accepted, so a secret can be rotated without refusing deliveries. The
    /// first one signs the sandbox's events. Required by the `shopmesh-payments` binary;
    /// `shopmesh up` generates one into its data directory when none is set.
    pub webhook_secrets: Vec<Secret>,
    /// How long a payment may stay processing without any change before the sweeper asks the
    /// provider about it (and settles it, or repeats the charge call with its idempotency key
    /// when the provider never answered).
    #[serde(with = "humantime_serde")]
    pub sweep_after: Duration,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            gateway: None,
            stripe: StripeConfig::default(),
            webhook_secrets: Vec::new(),
            sweep_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StripeConfig {
    /// Where Stripe's API is; tests point it at stripe-mock.
    pub api_base: String,
    /// The secret API key (`sk_live_…`, `sk_test_…`).
    pub secret_key: Secret,
    /// How long one API call may take before it counts as unanswered (and is retried later with
    /// the same idempotency key).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            api_base: "https://api.stripe.com".into(),
            secret_key: Secret::default(),
            timeout: Duration::from_secs(30),
        }
    }
}

impl Validate for PaymentsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let base = self.stripe.api_base.trim();
        let scheme_ok = base.starts_with("https://") || base.starts_with("http://");
        if !scheme_ok || base.parse::<http::Uri>().is_err() {
            return Err(ConfigError::invalid(
                "stripe.api_base",
                "must be an http:// or https:// URL",
            ));
        }
        if self.stripe.timeout.is_zero() {
            return Err(ConfigError::invalid("stripe.timeout", "must be positive"));
        }
        if self.webhook_secrets.iter().any(Secret::is_empty) {
            return Err(ConfigError::invalid(
                "webhook_secrets",
                "must not contain an empty secret",
            ));
        }
        if !(SWEEP_AFTER_MIN..=SWEEP_AFTER_MAX).contains(&self.sweep_after) {
            return Err(ConfigError::invalid(
                "sweep_after",
                "must be between 1s and 12h",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_redacts_secrets() {
        let config = PaymentsConfig {
            gateway: Some(GatewayKind::Stripe),
            stripe: StripeConfig {
                secret_key: Secret::new("sk_test_abc"),
                ..StripeConfig::default()
            },
            webhook_secrets: vec![Secret::new("whsec_abc")],
            ..PaymentsConfig::default()
        };
        let rendered = shopmesh_kit::config::render(&config);
        assert!(!rendered.contains("sk_test_abc"), "{rendered}");
        assert!(!rendered.contains("whsec_abc"), "{rendered}");
        assert!(rendered.contains("gateway = \"stripe\""), "{rendered}");
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut config = PaymentsConfig::default();
        assert!(config.validate().is_ok());
        config.stripe.api_base = "ftp://example".into();
        assert!(config.validate().is_err());
        config.stripe.api_base = "http://127.0.0.1:12111".into();
        assert!(config.validate().is_ok());
        config.webhook_secrets = vec![Secret::default()];
        assert!(config.validate().is_err());
        config.webhook_secrets = Vec::new();
        config.sweep_after = Duration::ZERO;
        assert!(config.validate().is_err());
        config.sweep_after = Duration::from_secs(2 * 86_400);
        assert!(config.validate().is_err());
        config.sweep_after = Duration::from_secs(90);
        assert!(config.validate().is_ok());
    }
}
