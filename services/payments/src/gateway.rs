//! The payment provider seam: what payments asks of a provider, implemented by [`stripe`]
//! (Stripe's API through async-stripe) and [`sandbox`] (Stripe's test-card behaviour, built in,
//! for `shopmesh up`). Every call that moves money carries an idempotency key, so repeating it
//! (a redelivered event, a retry after a lost answer) returns the first result instead of
//! charging or refunding again.

use async_trait::async_trait;
use shopmesh_proto::shopmesh::payments::v1::PaymentProvider;

pub mod sandbox;
pub mod stripe;

/// Longest decline code, failure message, brand and last-4 the events and views accept (the
/// protos' `max_len`); provider text is cut to these.
pub const MAX_DECLINE_CODE: usize = 64;
pub const MAX_MESSAGE: usize = 500;
pub const MAX_BRAND: usize = 32;
pub const MAX_LAST4: usize = 4;
/// Longest provider object id stored (the protos' `max_len`).
pub const MAX_PROVIDER_ID: usize = 255;

/// A charge to create and confirm at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentRequest {
    /// Minor units of `currency`.
    pub amount_minor: i64,
    /// ISO 4217, upper case as the platform stores it.
    pub currency: String,
    /// The provider's payment method id, e.g. `pm_card_visa`.
    pub payment_method: String,
    /// `shopmesh-<order_id>-<attempt>`: the same charge is never made twice.
    pub idempotency_key: String,
    /// Stored on the provider's object, so a webhook leads back to the payment.
    pub order_id: String,
    pub payment_id: String,
}

/// What the provider says about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPayment {
    pub provider_payment_id: String,
    pub status: ProviderStatus,
    pub amount_minor: i64,
    /// Upper case, as the platform stores it.
    pub currency: String,
    pub card_brand: String,
    pub card_last4: String,
    /// The payment id payments stored in the provider object's metadata, when there.
    pub payment_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStatus {
    Succeeded,
    /// Not decided yet; a webhook will tell.
    Processing,
    Failed {
        decline_code: String,
        message: String,
    },
}

/// A refund of a whole or partial charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub provider_payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// `shopmesh-refund-<payment_id>`.
    pub idempotency_key: String,
    /// Stored on the provider's object, so a webhook leads back to the refund.
    pub payment_id: String,
    pub refund_id: String,
}

/// What the provider says about a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRefund {
    pub id: String,
    pub status: RefundStatus,
    /// The charge's provider id, when the provider says.
    pub provider_payment_id: Option<String>,
    /// The refund id payments stored in the provider object's metadata, when there.
    pub refund_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundStatus {
    Succeeded,
    Pending,
    Failed { reason: String },
}

/// Why a provider call did not give an answer about the money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The provider could not be reached, timed out or failed on its side: worth retrying with
    /// the same idempotency key.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the request itself (invalid parameters, an unknown object): retrying
    /// will not help. `code` is the provider's error code.
    #[error("payment provider refused the request ({code}): {message}")]
    Refused { code: String, message: String },
}

/// A payment provider.
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// Which provider this is, as payments records it.
    fn provider(&self) -> PaymentProvider;

    /// Creates a charge and confirms it in one call. A decline is an `Ok` with
    /// [`ProviderStatus::Failed`]; only a missing answer or a refused request is an `Err`.
    async fn create_and_confirm(
        &self,
        request: &IntentRequest,
    ) -> Result<ProviderPayment, GatewayError>;

    /// The charge as the provider holds it now.
    async fn retrieve(&self, provider_payment_id: &str) -> Result<ProviderPayment, GatewayError>;

    /// Refunds (part of) a charge.
    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, GatewayError>;

    /// The refund as the provider holds it now.
    async fn retrieve_refund(
        &self,
        provider_refund_id: &str,
    ) -> Result<ProviderRefund, GatewayError>;
}

/// The provider idempotency key of a charge attempt.
pub fn charge_key(order_id: &str, attempt: i32) -> String {
    format!("shopmesh-{order_id}-{attempt}")
}

/// The provider idempotency key of a payment's refund.
pub fn refund_key(payment_id: &str) -> String {
    format!("shopmesh-refund-{payment_id}")
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_whole_characters() {
        assert_eq!(clip("visa", 32), "visa");
        assert_eq!(clip("abcdef", 4), "abcd");
        assert_eq!(clip("ééé", 3), "é");
    }

    #[test]
    fn idempotency_keys_follow_the_contract() {
        assert_eq!(charge_key("o-1", 2), "shopmesh-o-1-2");
        assert_eq!(refund_key("p-1"), "shopmesh-refund-p-1");
    }
}
