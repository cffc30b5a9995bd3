//! Stripe through async-stripe: a PaymentIntent created and confirmed in one call (server-side,
//! without redirects, failing instead of asking the customer to authenticate), refunds, and
//! reads with the latest charge expanded for the card's brand and last four digits.
//!
//! A decline comes back from Stripe as an HTTP 402 `card_error` carrying the PaymentIntent; it is
//! an outcome, not an error. Stripe's own errors (5xx, 429, a lost connection, a timeout) are
//! [`GatewayError::Unavailable`] and retried later with the same idempotency key; the request
//! errors Stripe will answer the same way every time are [`GatewayError::Refused`].
//!
//! Error texts are built from Stripe's code and message only: the library's own `Display`
//! prints whole objects (a PaymentIntent's `client_secret` among them), so it is never logged.

use std::collections::HashMap;
use std::str::FromStr;

use ::stripe::{
    Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest as _,
};
use async_trait::async_trait;
use shopmesh_kit::Secret;
use shopmesh_proto::shopmesh::payments::v1::PaymentProvider;
use stripe_core::payment_intent::{
    CreatePaymentIntent, CreatePaymentIntentAutomaticPaymentMethods,
    CreatePaymentIntentAutomaticPaymentMethodsAllowRedirects, RetrievePaymentIntent,
};
use stripe_core::refund::{CreateRefund, RetrieveRefund};
use stripe_shared::{ApiErrors, ApiErrorsType, PaymentIntent, PaymentIntentStatus, Refund};
use stripe_types::{Currency, Expandable};

use super::{
    GatewayError, IntentRequest, MAX_BRAND, MAX_DECLINE_CODE, MAX_LAST4, MAX_MESSAGE,
    MAX_PROVIDER_ID, PaymentGateway, ProviderPayment, ProviderRefund, ProviderStatus,
    RefundRequest, RefundStatus, clip,
};
use crate::config::StripeConfig;

pub struct Stripe {
    client: Client,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stripe(<client>)")
    }
}

impl Stripe {
    /// A client for the API at `config.api_base` with `config.secret_key`.
    pub fn new(config: &StripeConfig) -> Result<Self, GatewayError> {
        Self::with_key(config, &config.secret_key)
    }

    fn with_key(config: &StripeConfig, key: &Secret) -> Result<Self, GatewayError> {
        if key.is_empty() {
            return Err(GatewayError::Refused {
                code: "configuration".into(),
                message: "services.payments.stripe.secret_key is required".into(),
            });
        }
        // The library joins `<base>v1/<path>`: the base must end with a slash.
        let mut base = config.api_base.trim().to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        let client = ClientBuilder::new(key.expose())
            .url(base)
            .timeout(config.timeout)
            .app_info("shopmesh", Some(env!("CARGO_PKG_VERSION").into()), None)
            .build()
            .map_err(|error| GatewayError::Refused {
                code: "configuration".into(),
                message: configuration_problem(&error),
            })?;
        Ok(Self { client })
    }
}

/// What is wrong with the client's configuration, without the key.
fn configuration_problem(error: &StripeError) -> String {
    match error {
        StripeError::ConfigError(message) => message.clone(),
        StripeError::ClientError(message) if !message.contains("secret") => message.clone(),
        _ => "invalid Stripe client configuration (check api_base and secret_key)".into(),
    }
}

fn strategy(key: &str) -> Result<RequestStrategy, GatewayError> {
    IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|error| GatewayError::Refused {
            code: "idempotency_key".into(),
            message: error.to_string(),
        })
}

/// Stripe's answer, as a gateway error: its code and message, never the objects it carries.
fn failure(error: StripeError) -> GatewayError {
    match error {
        StripeError::Stripe(api, status) => {
            let code = api
                .code
                .as_ref()
                .map(|c| c.as_str().to_owned())
                .unwrap_or_else(|| api.type_.as_str().to_owned());
            let message = clip(api.message.as_deref().unwrap_or(""), MAX_MESSAGE);
            // 5xx and rate limits are Stripe's trouble; so is a concurrent request with the same
            // key (409 idempotency_error while the first is in flight). Retry those.
            if status >= 500 || status == 429 || status == 409 {
                GatewayError::Unavailable(format!("stripe answered {status} ({code}): {message}"))
            } else {
                GatewayError::Refused { code, message }
            }
        }
        StripeError::JSONDeserialize(message) => {
            GatewayError::Unavailable(format!("unreadable stripe answer: {message}"))
        }
        StripeError::ClientError(message) => {
            GatewayError::Unavailable(format!("stripe unreachable: {message}"))
        }
        StripeError::ConfigError(message) => GatewayError::Refused {
            code: "configuration".into(),
            message,
        },
        StripeError::Timeout => GatewayError::Unavailable("stripe did not answer in time".into()),
    }
}

fn decline_of(error: &ApiErrors) -> (String, String) {
    let code = error
        .decline_code
        .clone()
        .or_else(|| error.code.as_ref().map(|c| c.as_str().to_owned()))
        .unwrap_or_else(|| error.type_.as_str().to_owned());
    (
        clip(&code, MAX_DECLINE_CODE),
        clip(error.message.as_deref().unwrap_or(""), MAX_MESSAGE),
    )
}

fn payment_of(intent: &PaymentIntent) -> ProviderPayment {
    let status = match &intent.status {
        PaymentIntentStatus::Succeeded => ProviderStatus::Succeeded,
        PaymentIntentStatus::Canceled => ProviderStatus::Failed {
            decline_code: "canceled".into(),
            message: "the payment was canceled".into(),
        },
        // A confirmation that failed leaves the intent waiting for another method.
        PaymentIntentStatus::RequiresPaymentMethod | PaymentIntentStatus::RequiresAction => {
            match intent.last_payment_error.as_deref() {
                Some(error) => {
                    let (decline_code, message) = decline_of(error);
                    ProviderStatus::Failed {
                        decline_code,
                        message,
                    }
                }
                None if intent.status == PaymentIntentStatus::RequiresAction => {
                    ProviderStatus::Failed {
                        decline_code: "authentication_required".into(),
                        message: "the card needs the customer to authenticate".into(),
                    }
                }
                None => ProviderStatus::Processing,
            }
        }
        _ => ProviderStatus::Processing,
    };
    let card = match &intent.latest_charge {
        Some(Expandable::Object(charge)) => charge
            .payment_method_details
            .as_ref()
            .and_then(|details| details.card.as_ref()),
        _ => None,
    };
    ProviderPayment {
        provider_payment_id: clip(intent.id.as_str(), MAX_PROVIDER_ID),
        status,
        amount_minor: intent.amount,
        currency: intent.currency.to_string().to_ascii_uppercase(),
        card_brand: clip(
            card.and_then(|c| c.brand.as_deref()).unwrap_or(""),
            MAX_BRAND,
        ),
        card_last4: clip(
            card.and_then(|c| c.last4.as_deref()).unwrap_or(""),
            MAX_LAST4,
        ),
        payment_id: intent.metadata.get("payment_id").cloned(),
    }
}

fn refund_of(refund: &Refund) -> ProviderRefund {
    let status = match refund.status.as_deref() {
        Some("succeeded") => RefundStatus::Succeeded,
        Some(state @ ("failed" | "canceled")) => RefundStatus::Failed {
            reason: clip(
                refund.failure_reason.as_deref().unwrap_or(state),
                MAX_MESSAGE,
            ),
        },
        _ => RefundStatus::Pending,
    };
    ProviderRefund {
        id: clip(refund.id.as_str(), MAX_PROVIDER_ID),
        status,
        provider_payment_id: refund
            .payment_intent
            .as_ref()
            .map(|intent| intent.id().as_str().to_owned()),
        refund_id: refund
            .metadata
            .as_ref()
            .and_then(|metadata| metadata.get("refund_id").cloned()),
    }
}

#[async_trait]
impl PaymentGateway for Stripe {
    fn provider(&self) -> PaymentProvider {
        PaymentProvider::Stripe
    }

    async fn create_and_confirm(
        &self,
        request: &IntentRequest,
    ) -> Result<ProviderPayment, GatewayError> {
        let currency = Currency::from_str(&request.currency.to_ascii_lowercase())
            .unwrap_or_else(|never| match never {});
        let metadata = HashMap::from([
            ("order_id".to_owned(), request.order_id.clone()),
            ("payment_id".to_owned(), request.payment_id.clone()),
        ]);
        let mut automatic = CreatePaymentIntentAutomaticPaymentMethods::new(true);
        automatic.allow_redirects =
            Some(CreatePaymentIntentAutomaticPaymentMethodsAllowRedirects::Never);
        let create = CreatePaymentIntent::new(request.amount_minor, currency)
            .payment_method(request.payment_method.clone())
            .confirm(true)
            .automatic_payment_methods(automatic)
            .error_on_requires_action(true)
            .metadata(metadata)
            .expand(vec!["latest_charge".to_owned()]);
        let sent = create
            .customize()
            .request_strategy(strategy(&request.idempotency_key)?)
            .send(&self.client)
            .await;
        match sent {
            Ok(intent) => Ok(payment_of(&intent)),
            // A decline: Stripe answers 402 with the failed intent inside the error.
            Err(StripeError::Stripe(error, _)) if error.type_ == ApiErrorsType::CardError => {
                let (decline_code, message) = decline_of(&error);
                match &error.payment_intent {
                    Some(intent) => {
                        let mut payment = payment_of(intent);
                        payment.status = ProviderStatus::Failed {
                            decline_code,
                            message,
                        };
                        Ok(payment)
                    }
                    None => Ok(ProviderPayment {
                        provider_payment_id: String::new(),
                        status: ProviderStatus::Failed {
                            decline_code,
                            message,
                        },
                        amount_minor: request.amount_minor,
                        currency: request.currency.clone(),
                        card_brand: String::new(),
                        card_last4: String::new(),
                        payment_id: Some(request.payment_id.clone()),
                    }),
                }
            }
            Err(error) => Err(failure(error)),
        }
    }

    async fn retrieve(&self, provider_payment_id: &str) -> Result<ProviderPayment, GatewayError> {
        let intent = RetrievePaymentIntent::new(provider_payment_id)
            .expand(vec!["latest_charge".to_owned()])
            .send(&self.client)
            .await
            .map_err(failure)?;
        Ok(payment_of(&intent))
    }

    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, GatewayError> {
        let metadata = HashMap::from([
            ("payment_id".to_owned(), request.payment_id.clone()),
            ("refund_id".to_owned(), request.refund_id.clone()),
        ]);
        let refund = CreateRefund::new()
            .payment_intent(request.provider_payment_id.clone())
            .amount(request.amount_minor)
            .metadata(metadata)
            .customize()
            .request_strategy(strategy(&request.idempotency_key)?)
            .send(&self.client)
            .await
            .map_err(failure)?;
        Ok(refund_of(&refund))
    }

    async fn retrieve_refund(
        &self,
        provider_refund_id: &str,
    ) -> Result<ProviderRefund, GatewayError> {
        let refund = RetrieveRefund::new(provider_refund_id)
            .send(&self.client)
            .await
            .map_err(failure)?;
        Ok(refund_of(&refund))
    }
}
