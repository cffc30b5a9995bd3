//! The sandbox gateway of `shopmesh up`: behaves like Stripe with its test payment methods
//! (`pm_card_visa` succeeds, `pm_card_chargeDeclinedInsufficientFunds` is declined with
//! `insufficient_funds`, …), so the whole payment path runs without an account or a network.
//!
//! Its PaymentIntents and refunds are kept in the payments store (so `retrieve` works after a
//! restart), once per idempotency key, with ids shaped like Stripe's (`pi_sbx_…`, `re_sbx_…`).
//! After creating one it sends a Stripe-format event, signed with the webhook secret, to the
//! same webhook handler the HTTP endpoint uses, so the sandbox exercises the webhook path too.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shopmesh_kit::Secret;
use shopmesh_kit::clock::now_ms;
use shopmesh_proto::shopmesh::payments::v1::PaymentProvider;
use tokio::sync::mpsc;

use super::{
    GatewayError, IntentRequest, PaymentGateway, ProviderPayment, ProviderRefund, ProviderStatus,
    RefundRequest, RefundStatus,
};
use crate::store::{PaymentStore, SandboxObject, StoreError};
use crate::webhook;

/// A signed webhook delivery, as the HTTP endpoint would receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub body: Vec<u8>,
    pub signature: String,
}

/// How a test payment method behaves: its card, and the decline it causes, if any.
struct TestCard {
    brand: &'static str,
    last4: &'static str,
    /// (error code, decline code, message)
    decline: Option<(&'static str, &'static str, &'static str)>,
}

const DECLINED: &str = "Your card was declined.";

/// Stripe's test payment methods the sandbox knows
/// (<https://docs.stripe.com/testing#declined-payments>).
fn test_card(payment_method: &str) -> Option<TestCard> {
    let card = |brand, last4, decline| {
        Some(TestCard {
            brand,
            last4,
            decline,
        })
    };
    match payment_method {
        "pm_card_visa" => card("visa", "4242", None),
        "pm_card_visa_debit" => card("visa", "5556", None),
        "pm_card_mastercard" => card("mastercard", "4444", None),
        "pm_card_amex" => card("amex", "8431", None),
        "pm_card_discover" => card("discover", "1117", None),
        "pm_card_chargeDeclined" => card(
            "visa",
            "0002",
            Some(("card_declined", "generic_decline", DECLINED)),
        ),
        "pm_card_chargeDeclinedInsufficientFunds" => card(
            "visa",
            "9995",
            Some((
                "card_declined",
                "insufficient_funds",
                "Your card has insufficient funds.",
            )),
        ),
        "pm_card_chargeDeclinedLostCard" => card(
            "visa",
            "9987",
            Some(("card_declined", "lost_card", DECLINED)),
        ),
        "pm_card_chargeDeclinedStolenCard" => card(
            "visa",
            "9979",
            Some(("card_declined", "stolen_card", DECLINED)),
        ),
        "pm_card_chargeDeclinedExpiredCard" => card(
            "visa",
            "0069",
            Some(("expired_card", "expired_card", "Your card has expired.")),
        ),
        "pm_card_chargeDeclinedProcessingError" => card(
            "visa",
            "0119",
            Some((
                "processing_error",
                "processing_error",
                "An error occurred while processing your card. Try again in a little bit.",
            )),
        ),
        _ => None,
    }
}

/// A PaymentIntent as the sandbox keeps and shows it (Stripe's field names).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Intent {
    id: String,
    object: String,
    amount: i64,
    amount_received: i64,
    currency: String,
    status: String,
    payment_method: String,
    created: i64,
    livemode: bool,
    metadata: BTreeMap<String, String>,
    /// Expanded, as `expand[]=latest_charge` shows it.
    latest_charge: Option<Charge>,
    last_payment_error: Option<PaymentError>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge {
    id: String,
    object: String,
    amount: i64,
    currency: String,
    payment_intent: String,
    status: String,
    paid: bool,
    payment_method_details: MethodDetails,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MethodDetails {
    #[serde(rename = "type")]
    kind: String,
    card: Card,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Card {
    brand: String,
    last4: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PaymentError {
    #[serde(rename = "type")]
    kind: String,
    code: String,
    decline_code: String,
    message: String,
}

/// A refund as the sandbox keeps and shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Refund {
    id: String,
    object: String,
    amount: i64,
    currency: String,
    payment_intent: String,
    charge: String,
    status: String,
    created: i64,
    metadata: BTreeMap<String, String>,
}

pub struct Sandbox {
    store: Arc<dyn PaymentStore>,
    /// Signs the sandbox's events (the first configured webhook secret).
    secret: Secret,
    deliveries: mpsc::Sender<Delivery>,
}

impl Sandbox {
    /// A sandbox keeping its objects in `store` and sending its events to `deliveries`.
    pub fn new(
        store: Arc<dyn PaymentStore>,
        secret: Secret,
        deliveries: mpsc::Sender<Delivery>,
    ) -> Self {
        Self {
            store,
            secret,
            deliveries,
        }
    }

    /// Sends a Stripe-format event about `object` to the webhook handler, without waiting for
    /// it: Stripe's events arrive on their own too. A full queue drops the event, which the
    /// synchronous answer makes up for.
    fn emit(&self, kind: &str, object: serde_json::Value) {
        let created = webhook::unix_now();
        let event = json!({
            "id": format!("evt_sbx_{}", uuid::Uuid::new_v4().simple()),
            "object": "event",
            "api_version": "sandbox",
            "type": kind,
            "created": created,
            "livemode": false,
            "data": { "object": object },
        });
        let body = event.to_string().into_bytes();
        let signature = webhook::sign(&body, &self.secret, created);
        if self
            .deliveries
            .try_send(Delivery { body, signature })
            .is_err()
        {
            tracing::warn!(
                kind,
                "sandbox webhook queue is full or closed; event dropped"
            );
        }
    }

    /// Stores `object` under `key` unless the key has one; returns the stored body and whether it
    /// is new.
    async fn keep(
        &self,
        id: &str,
        key: &str,
        body: String,
    ) -> Result<(String, bool), GatewayError> {
        let stored = self
            .store
            .sandbox_create(&SandboxObject {
                id: id.to_owned(),
                idempotency_key: key.to_owned(),
                body,
                created_at_ms: now_ms(),
            })
            .await
            .map_err(unavailable)?;
        Ok((stored.body, stored.id == id))
    }

    async fn intent(&self, id: &str) -> Result<Intent, GatewayError> {
        let object = self
            .store
            .sandbox_get(id)
            .await
            .map_err(unavailable)?
            .filter(|object| object.id.starts_with("pi_"))
            .ok_or_else(|| missing("payment_intent", id))?;
        serde_json::from_str(&object.body).map_err(|e| unavailable(StoreError::from(e)))
    }
}

fn unavailable(error: StoreError) -> GatewayError {
    GatewayError::Unavailable(format!("sandbox store: {error}"))
}

fn missing(kind: &str, id: &str) -> GatewayError {
    GatewayError::Refused {
        code: "resource_missing".into(),
        message: format!("No such {kind}: '{id}'"),
    }
}

fn corrupt(error: serde_json::Error) -> GatewayError {
    GatewayError::Unavailable(format!("sandbox object unreadable: {error}"))
}

fn payment_of(intent: &Intent) -> ProviderPayment {
    let status = match (&intent.last_payment_error, intent.status.as_str()) {
        (_, "succeeded") => ProviderStatus::Succeeded,
        (Some(error), _) => ProviderStatus::Failed {
            decline_code: error.decline_code.clone(),
            message: error.message.clone(),
        },
        _ => ProviderStatus::Processing,
    };
    let card = intent
        .latest_charge
        .as_ref()
        .map(|charge| &charge.payment_method_details.card);
    ProviderPayment {
        provider_payment_id: intent.id.clone(),
        status,
        amount_minor: intent.amount,
        currency: intent.currency.to_ascii_uppercase(),
        card_brand: card.map(|c| c.brand.clone()).unwrap_or_default(),
        card_last4: card.map(|c| c.last4.clone()).unwrap_or_default(),
        payment_id: intent.metadata.get("payment_id").cloned(),
    }
}

fn refund_of(refund: &Refund) -> ProviderRefund {
    ProviderRefund {
        id: refund.id.clone(),
        status: match refund.status.as_str() {
            "succeeded" => RefundStatus::Succeeded,
            "failed" | "canceled" => RefundStatus::Failed {
                reason: refund.status.clone(),
            },
            _ => RefundStatus::Pending,
        },
        provider_payment_id: Some(refund.payment_intent.clone()),
        refund_id: refund.metadata.get("refund_id").cloned(),
    }
}

#[async_trait]
impl PaymentGateway for Sandbox {
    fn provider(&self) -> PaymentProvider {
        PaymentProvider::Sandbox
    }

    async fn create_and_confirm(
        &self,
        request: &IntentRequest,
    ) -> Result<ProviderPayment, GatewayError> {
        if request.amount_minor <= 0 {
            return Err(GatewayError::Refused {
                code: "parameter_invalid_integer".into(),
                message: "amount must be positive".into(),
            });
        }
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let id = format!("pi_sbx_{suffix}");
        let card = test_card(&request.payment_method);
        let (brand, last4) = card.as_ref().map_or(("", ""), |c| (c.brand, c.last4));
        let decline = match &card {
            Some(card) => card.decline,
            None => Some((
                "card_declined",
                "generic_decline",
                "The sandbox declines payment methods it does not know; use one of Stripe's test \
                 payment methods such as pm_card_visa or pm_card_chargeDeclined.",
            )),
        };
        let currency = request.currency.to_ascii_lowercase();
        let succeeded = decline.is_none();
        let intent = Intent {
            id: id.clone(),
            object: "payment_intent".into(),
            amount: request.amount_minor,
            amount_received: if succeeded { request.amount_minor } else { 0 },
            currency: currency.clone(),
            status: if succeeded {
                "succeeded"
            } else {
                "requires_payment_method"
            }
            .into(),
            payment_method: request.payment_method.clone(),
            created: webhook::unix_now(),
            livemode: false,
            metadata: [
                ("order_id".to_owned(), request.order_id.clone()),
                ("payment_id".to_owned(), request.payment_id.clone()),
            ]
            .into(),
            latest_charge: card.as_ref().map(|_| Charge {
                id: format!("ch_sbx_{suffix}"),
                object: "charge".into(),
                amount: request.amount_minor,
                currency,
                payment_intent: id.clone(),
                status: if succeeded { "succeeded" } else { "failed" }.into(),
                paid: succeeded,
                payment_method_details: MethodDetails {
                    kind: "card".into(),
                    card: Card {
                        brand: brand.into(),
                        last4: last4.into(),
                    },
                },
            }),
            last_payment_error: decline.map(|(code, decline_code, message)| PaymentError {
                kind: "card_error".into(),
                code: code.into(),
                decline_code: decline_code.into(),
                message: message.into(),
            }),
        };
        let body = serde_json::to_string(&intent).map_err(corrupt)?;
        let (stored, created) = self.keep(&id, &request.idempotency_key, body).await?;
        let intent: Intent = serde_json::from_str(&stored).map_err(corrupt)?;
        if created {
            let kind = if intent.status == "succeeded" {
                "payment_intent.succeeded"
            } else {
                "payment_intent.payment_failed"
            };
            self.emit(kind, serde_json::to_value(&intent).map_err(corrupt)?);
        }
        Ok(payment_of(&intent))
    }

    async fn retrieve(&self, provider_payment_id: &str) -> Result<ProviderPayment, GatewayError> {
        Ok(payment_of(&self.intent(provider_payment_id).await?))
    }

    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, GatewayError> {
        let intent = self.intent(&request.provider_payment_id).await?;
        let charge = match (&intent.latest_charge, intent.status.as_str()) {
            (Some(charge), "succeeded") => charge.clone(),
            _ => {
                return Err(GatewayError::Refused {
                    code: "charge_not_refundable".into(),
                    message: "This PaymentIntent does not have a successful charge to refund."
                        .into(),
                });
            }
        };
        if request.amount_minor <= 0 || request.amount_minor > intent.amount {
            return Err(GatewayError::Refused {
                code: "amount_too_large".into(),
                message: format!(
                    "Refund amount ({}) is greater than the charge amount ({}) or not positive",
                    request.amount_minor, intent.amount
                ),
            });
        }
        let id = format!("re_sbx_{}", uuid::Uuid::new_v4().simple());
        let refund = Refund {
            id: id.clone(),
            object: "refund".into(),
            amount: request.amount_minor,
            currency: intent.currency.clone(),
            payment_intent: intent.id.clone(),
            charge: charge.id.clone(),
            status: "succeeded".into(),
            created: webhook::unix_now(),
            metadata: [
                ("payment_id".to_owned(), request.payment_id.clone()),
                ("refund_id".to_owned(), request.refund_id.clone()),
            ]
            .into(),
        };
        let body = serde_json::to_string(&refund).map_err(corrupt)?;
        let (stored, created) = self.keep(&id, &request.idempotency_key, body).await?;
        let refund: Refund = serde_json::from_str(&stored).map_err(corrupt)?;
        if created {
            // Stripe's `charge.refunded` carries the charge, with its refunds.
            let refund_json = serde_json::to_value(&refund).map_err(corrupt)?;
            self.emit(
                "charge.refunded",
                json!({
                    "id": charge.id,
                    "object": "charge",
                    "amount": charge.amount,
                    "amount_refunded": refund.amount,
                    "currency": charge.currency,
                    "payment_intent": intent.id,
                    "refunded": refund.amount >= charge.amount,
                    "status": "succeeded",
                    "refunds": { "object": "list", "data": [refund_json] },
                }),
            );
        }
        Ok(refund_of(&refund))
    }

    async fn retrieve_refund(
        &self,
        provider_refund_id: &str,
    ) -> Result<ProviderRefund, GatewayError> {
        let object = self
            .store
            .sandbox_get(provider_refund_id)
            .await
            .map_err(unavailable)?
            .filter(|object| object.id.starts_with("re_"))
            .ok_or_else(|| missing("refund", provider_refund_id))?;
        let refund: Refund = serde_json::from_str(&object.body).map_err(corrupt)?;
        Ok(refund_of(&refund))
    }
}
