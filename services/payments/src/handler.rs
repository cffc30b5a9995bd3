//! The payments domain: [`PaymentHandler`] charges, refunds, settles, sweeps and reads payments,
//! and handles webhook deliveries once they are out of their envelope, free of transport
//! (`grpc` is its gRPC face; `consumers` feeds it order events). Requests arrive validated and
//! access-checked.
//!
//! Every outcome goes through [`PaymentHandler::settle`] (or [`PaymentHandler::settle_refund`]),
//! whichever path learnt it: the provider's synchronous answer, a webhook, or a re-read. The
//! store makes each a conditional transition written with its event, so however many paths
//! report the same outcome, one `PaymentEvent` goes out.

use std::sync::Arc;
use std::time::Duration;

use shopmesh_events::Event;
use shopmesh_kit::clock::{now_ms, timestamp};
use shopmesh_kit::{Error, Result, Secret};
use shopmesh_proto::shopmesh::common::v1::Money;
use shopmesh_proto::shopmesh::events::v1::{
    OrderEvent, PaymentEvent, PaymentFailed, PaymentRequested, PaymentSucceeded, RefundFailed,
    RefundRequested, Refunded, payment_event,
};
use shopmesh_proto::shopmesh::payments::v1::{
    HandleStripeWebhookResponse, ListOrderPaymentsResponse, Payment, PaymentStatus, Refund,
    RefundStatus as RefundView,
};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::gateway::{
    self, GatewayError, IntentRequest, MAX_DECLINE_CODE, MAX_MESSAGE, PaymentGateway,
    ProviderPayment, ProviderRefund, ProviderStatus, RefundRequest, RefundStatus, clip,
};
use crate::store::{
    Outcome, PaymentRecord, PaymentStore, RefundOutcome, RefundRecord, RefundSettlement,
    RefundState, Settled, Settlement, Status,
};
use crate::webhook::{self, Subject};

const EVENT_KIND: &str = "shopmesh.events.v1.PaymentEvent";
/// How long a payment may stay processing, unchanged, before the sweeper looks (the
/// `sweep_after` setting's default).
pub const DEFAULT_SWEEP_AFTER: Duration = Duration::from_secs(60);
/// Most payments one sweep looks at; the rest wait for the next round.
pub const SWEEP_BATCH: usize = 100;
/// A charge call is repeated with its idempotency key only within this age: Stripe forgets a
/// key after 24 hours, and a repeat after that could charge again.
const REPEAT_WINDOW_MS: i64 = 23 * 3600 * 1000;

pub struct PaymentHandler {
    store: Arc<dyn PaymentStore>,
    gateway: Arc<dyn PaymentGateway>,
    /// Webhook signing secrets; any of them verifies a delivery.
    secrets: Vec<Secret>,
    /// Wakes the outbox relay after a write that carries an event.
    relay: Arc<Notify>,
    /// How long a payment stays processing, unchanged, before a sweep looks at it.
    sweep_after: Duration,
}

impl PaymentHandler {
    pub fn new(
        store: Arc<dyn PaymentStore>,
        gateway: Arc<dyn PaymentGateway>,
        secrets: Vec<Secret>,
        relay: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            gateway,
            secrets,
            relay,
            sweep_after: DEFAULT_SWEEP_AFTER,
        }
    }

    /// Sets how long a payment stays processing, unchanged, before a sweep looks at it.
    #[must_use]
    pub fn with_sweep_after(mut self, sweep_after: Duration) -> Self {
        self.sweep_after = sweep_after;
        self
    }

    pub fn store(&self) -> &Arc<dyn PaymentStore> {
        &self.store
    }

    /// Charges an order once per attempt: the payment row is unique by (order, attempt) and the
    /// provider call carries `shopmesh-<order>-<attempt>`, so a redelivery finds the first
    /// charge instead of making another.
    pub async fn charge(
        &self,
        order: &OrderEvent,
        requested: &PaymentRequested,
    ) -> Result<PaymentRecord> {
        let order_id = event_id_field("order_id", &order.order_id)?;
        let user_id = event_id_field("user_id", &order.user_id)?;
        let amount = requested.amount.clone().unwrap_or_default();
        let now = now_ms();
        let fresh = PaymentRecord {
            id: Uuid::now_v7(),
            order_id,
            user_id,
            provider: self.gateway.provider(),
            provider_payment_id: String::new(),
            attempt: requested.attempt,
            status: Status::Processing,
            currency: amount.currency_code,
            amount_minor: amount.amount_minor,
            amount_refunded_minor: 0,
            payment_method: requested.payment_method.clone(),
            card_brand: String::new(),
            card_last4: String::new(),
            decline_code: String::new(),
            failure_message: String::new(),
            created_at_ms: now,
            updated_at_ms: now,
        };
        let payment = self
            .store
            .begin_payment(&fresh)
            .await
            .map_err(Error::from)?;
        if payment.status != Status::Processing {
            // Settled before; its event went out with the outcome.
            return Ok(payment);
        }
        if payment.provider != self.gateway.provider() {
            // The gateway changed between the first delivery and this one: the charge (if any)
            // is at the other provider, and this one cannot look it up.
            let outcome = Outcome::Failed {
                decline_code: "provider_changed".into(),
                failure_message: "the payment gateway changed while the charge was in flight"
                    .into(),
            };
            let settled = self.record(&payment, "", outcome, None).await?;
            return Ok(settled_record(settled, payment));
        }
        let request = IntentRequest {
            amount_minor: payment.amount_minor,
            currency: payment.currency.clone(),
            payment_method: payment.payment_method.clone(),
            idempotency_key: gateway::charge_key(&order.order_id, payment.attempt),
            order_id: payment.order_id.to_string(),
            payment_id: payment.id.to_string(),
        };
        match self.gateway.create_and_confirm(&request).await {
            Ok(answer) => {
                let settled = self.settle(&payment, &answer, None).await?;
                Ok(settled_record(settled, payment))
            }
            Err(GatewayError::Refused { code, message }) => {
                // The provider will refuse this request every time: the attempt failed.
                let outcome = Outcome::Failed {
                    decline_code: clip(&code, MAX_DECLINE_CODE),
                    failure_message: clip(&message, MAX_MESSAGE),
                };
                let settled = self.record(&payment, "", outcome, None).await?;
                Ok(settled_record(settled, payment))
            }
            Err(error @ GatewayError::Unavailable(_)) => Err(unavailable(error)),
        }
    }

    /// Applies what the provider says about `payment`: an outcome settles it (once), a charge
    /// still processing only records the provider's id. With `webhook`, the event id is
    /// remembered with the effect.
    pub async fn settle(
        &self,
        payment: &PaymentRecord,
        answer: &ProviderPayment,
        webhook: Option<&str>,
    ) -> Result<Settled<PaymentRecord>> {
        let outcome = match &answer.status {
            ProviderStatus::Succeeded => Outcome::Succeeded {
                card_brand: answer.card_brand.clone(),
                card_last4: answer.card_last4.clone(),
            },
            ProviderStatus::Failed {
                decline_code,
                message,
            } => Outcome::Failed {
                decline_code: clip(decline_code, MAX_DECLINE_CODE),
                failure_message: clip(message, MAX_MESSAGE),
            },
            ProviderStatus::Processing => {
                if let Some(id) = webhook
                    && !self.store.note_webhook(id).await.map_err(Error::from)?
                {
                    return Ok(Settled::Duplicate);
                }
                if !answer.provider_payment_id.is_empty() {
                    self.store
                        .note_provider_payment_id(payment.id, &answer.provider_payment_id, now_ms())
                        .await
                        .map_err(Error::from)?;
                }
                return Ok(Settled::Unchanged(payment.clone()));
            }
        };
        self.record(payment, &answer.provider_payment_id, outcome, webhook)
            .await
    }

    /// Writes an outcome over a processing payment, with its event.
    async fn record(
        &self,
        payment: &PaymentRecord,
        provider_payment_id: &str,
        outcome: Outcome,
        webhook: Option<&str>,
    ) -> Result<Settled<PaymentRecord>> {
        let payload = match &outcome {
            Outcome::Succeeded {
                card_brand,
                card_last4,
            } => payment_event::Payload::Succeeded(PaymentSucceeded {
                attempt: payment.attempt,
                amount: Some(Money::new(&payment.currency, payment.amount_minor)),
                card_brand: card_brand.clone(),
                card_last4: card_last4.clone(),
            }),
            Outcome::Failed {
                decline_code,
                failure_message,
            } => payment_event::Payload::Failed(PaymentFailed {
                attempt: payment.attempt,
                decline_code: decline_code.clone(),
                failure_message: failure_message.clone(),
            }),
        };
        let event = event_for(payment.order_id, payment.id, payload);
        let settlement = Settlement {
            payment_id: payment.id,
            provider_payment_id: provider_payment_id.to_owned(),
            outcome,
            now_ms: now_ms(),
        };
        let settled = self
            .store
            .settle(&settlement, &event, webhook)
            .await
            .map_err(Error::from)?;
        if let Settled::Applied(payment) = &settled {
            self.relay.notify_one();
            tracing::info!(
                payment_id = %payment.id,
                order_id = %payment.order_id,
                status = payment.status.name(),
                decline_code = payment.decline_code,
                "payment settled"
            );
        }
        Ok(settled)
    }

    /// Finishes payments stuck in processing, unchanged for `sweep_after` before `now_ms`: no
    /// webhook came, or the charge's deliveries ran out (dead-lettered) before the provider
    /// answered. With the provider's id, the charge is retrieved; without it (the call never went
    /// out, or its answer was lost), the charge call is repeated with the attempt's idempotency
    /// key, which returns the first charge instead of making another. Either answer goes
    /// through [`PaymentHandler::settle`], as a webhook's would, so one event goes out however
    /// many paths report the outcome. A provider that does not answer is asked again next round.
    /// Returns how many payments this sweep settled.
    pub async fn sweep_processing(&self, now_ms: i64) -> Result<usize> {
        let sweep_after = i64::try_from(self.sweep_after.as_millis()).unwrap_or(i64::MAX);
        let stale = self
            .store
            .stale_processing(now_ms.saturating_sub(sweep_after), SWEEP_BATCH)
            .await
            .map_err(Error::from)?;
        let mut settled = 0;
        for payment in &stale {
            let outcome = match self.sweep_one(payment, now_ms).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    tracing::warn!(payment_id = %payment.id, %error, "sweeping a processing payment failed; next round retries");
                    "error"
                }
            };
            if outcome == "settled" {
                settled += 1;
            }
            metrics::counter!("shopmesh_payments_swept_total", "outcome" => outcome).increment(1);
        }
        Ok(settled)
    }

    /// Asks the provider about one stuck payment and settles it when there is an outcome;
    /// returns what happened, as the metric's `outcome` label.
    async fn sweep_one(&self, payment: &PaymentRecord, now_ms: i64) -> Result<&'static str> {
        if payment.provider != self.gateway.provider() {
            // As a redelivered request would: the charge is at a provider this one cannot ask.
            let outcome = Outcome::Failed {
                decline_code: "provider_changed".into(),
                failure_message: "the payment gateway changed while the charge was in flight"
                    .into(),
            };
            return Ok(sweep_result(self.record(payment, "", outcome, None).await?));
        }
        let answer = if payment.provider_payment_id.is_empty() {
            if now_ms.saturating_sub(payment.created_at_ms) > REPEAT_WINDOW_MS {
                tracing::error!(
                    payment_id = %payment.id,
                    order_id = %payment.order_id,
                    "payment processing for too long to repeat its charge call safely; an operator must check it at the provider"
                );
                return Ok("expired");
            }
            let request = IntentRequest {
                amount_minor: payment.amount_minor,
                currency: payment.currency.clone(),
                payment_method: payment.payment_method.clone(),
                idempotency_key: gateway::charge_key(
                    &payment.order_id.to_string(),
                    payment.attempt,
                ),
                order_id: payment.order_id.to_string(),
                payment_id: payment.id.to_string(),
            };
            match self.gateway.create_and_confirm(&request).await {
                Ok(answer) => answer,
                Err(GatewayError::Refused { code, message }) => {
                    // As in the charge path: the provider will refuse this request every time.
                    let outcome = Outcome::Failed {
                        decline_code: clip(&code, MAX_DECLINE_CODE),
                        failure_message: clip(&message, MAX_MESSAGE),
                    };
                    return Ok(sweep_result(self.record(payment, "", outcome, None).await?));
                }
                Err(error @ GatewayError::Unavailable(_)) => {
                    tracing::warn!(payment_id = %payment.id, %error, "provider unavailable while sweeping; next round retries");
                    return Ok("unavailable");
                }
            }
        } else {
            match self.gateway.retrieve(&payment.provider_payment_id).await {
                Ok(answer) => answer,
                Err(GatewayError::Refused { code, .. }) => {
                    tracing::error!(
                        payment_id = %payment.id,
                        provider_payment_id = payment.provider_payment_id,
                        code,
                        "the provider refuses to show a processing payment's charge; an operator must check it"
                    );
                    return Ok("refused");
                }
                Err(error @ GatewayError::Unavailable(_)) => {
                    tracing::warn!(payment_id = %payment.id, %error, "provider unavailable while sweeping; next round retries");
                    return Ok("unavailable");
                }
            }
        };
        Ok(sweep_result(self.settle(payment, &answer, None).await?))
    }

    /// Refunds a payment once: one refund per payment, with the provider key
    /// `shopmesh-refund-<payment>`.
    pub async fn refund(&self, order: &OrderEvent, requested: &RefundRequested) -> Result<()> {
        let payment_id = event_id_field("payment_id", &requested.payment_id)?;
        let mut payment = self
            .store
            .payment(payment_id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| {
                Error::failed_precondition(
                    "PAYMENT_NOT_FOUND",
                    format!("refund requested for unknown payment {payment_id}"),
                )
            })?;
        if payment.order_id.to_string() != order.order_id {
            return Err(Error::failed_precondition(
                "PAYMENT_OF_ANOTHER_ORDER",
                format!(
                    "payment {payment_id} does not belong to order {}",
                    order.order_id
                ),
            ));
        }
        if payment.status == Status::Processing && !payment.provider_payment_id.is_empty() {
            // The outcome may be known at the provider before its webhook arrived.
            let answer = self
                .gateway
                .retrieve(&payment.provider_payment_id)
                .await
                .map_err(unavailable)?;
            if let Settled::Applied(settled) | Settled::Unchanged(settled) =
                self.settle(&payment, &answer, None).await?
            {
                payment = settled;
            }
        }
        match payment.status {
            Status::Processing => {
                return Err(Error::unavailable(
                    "PAYMENT_PROCESSING",
                    "the charge to refund has no outcome yet",
                ));
            }
            Status::Failed => {
                tracing::info!(%payment_id, "refund requested for a failed charge: nothing to return");
                return Ok(());
            }
            Status::Succeeded | Status::Refunded => {}
        }
        let amount = requested.amount.clone().unwrap_or_default();
        if amount.currency_code != payment.currency
            || amount.amount_minor <= 0
            || amount.amount_minor > payment.amount_minor
        {
            return Err(Error::failed_precondition(
                "REFUND_AMOUNT",
                format!(
                    "refund of {} {} does not fit payment {payment_id} of {} {}",
                    amount.amount_minor,
                    amount.currency_code,
                    payment.amount_minor,
                    payment.currency
                ),
            ));
        }
        let now = now_ms();
        let fresh = RefundRecord {
            id: Uuid::now_v7(),
            payment_id,
            order_id: payment.order_id,
            provider_refund_id: String::new(),
            currency: payment.currency.clone(),
            amount_minor: amount.amount_minor,
            status: RefundState::Pending,
            reason: clip(&requested.reason, MAX_MESSAGE),
            failure_reason: String::new(),
            created_at_ms: now,
            updated_at_ms: now,
        };
        let refund = self.store.begin_refund(&fresh).await.map_err(Error::from)?;
        if refund.status != RefundState::Pending {
            return Ok(());
        }
        if payment.provider != self.gateway.provider() {
            let reason = "the payment was made through another gateway than the configured one";
            self.record_refund(
                &refund,
                "",
                RefundOutcome::Failed {
                    reason: reason.into(),
                },
                None,
            )
            .await?;
            return Ok(());
        }
        let request = RefundRequest {
            provider_payment_id: payment.provider_payment_id.clone(),
            amount_minor: refund.amount_minor,
            currency: refund.currency.clone(),
            idempotency_key: gateway::refund_key(&payment.id.to_string()),
            payment_id: payment.id.to_string(),
            refund_id: refund.id.to_string(),
        };
        match self.gateway.refund(&request).await {
            Ok(answer) => self.settle_refund(&refund, &answer, None).await.map(|_| ()),
            Err(GatewayError::Refused { code, message }) => {
                let reason = clip(&format!("{code}: {message}"), MAX_MESSAGE);
                self.record_refund(&refund, "", RefundOutcome::Failed { reason }, None)
                    .await
                    .map(|_| ())
            }
            Err(error @ GatewayError::Unavailable(_)) => Err(unavailable(error)),
        }
    }

    /// Applies what the provider says about `refund`, as [`PaymentHandler::settle`] does for
    /// charges.
    pub async fn settle_refund(
        &self,
        refund: &RefundRecord,
        answer: &ProviderRefund,
        webhook: Option<&str>,
    ) -> Result<Settled<RefundRecord>> {
        let outcome = match &answer.status {
            RefundStatus::Succeeded => RefundOutcome::Succeeded,
            RefundStatus::Failed { reason } => RefundOutcome::Failed {
                reason: clip(reason, MAX_MESSAGE),
            },
            RefundStatus::Pending => {
                if let Some(id) = webhook
                    && !self.store.note_webhook(id).await.map_err(Error::from)?
                {
                    return Ok(Settled::Duplicate);
                }
                self.store
                    .note_provider_refund_id(refund.id, &answer.id, now_ms())
                    .await
                    .map_err(Error::from)?;
                return Ok(Settled::Unchanged(refund.clone()));
            }
        };
        self.record_refund(refund, &answer.id, outcome, webhook)
            .await
    }

    async fn record_refund(
        &self,
        refund: &RefundRecord,
        provider_refund_id: &str,
        outcome: RefundOutcome,
        webhook: Option<&str>,
    ) -> Result<Settled<RefundRecord>> {
        let payload = match &outcome {
            RefundOutcome::Succeeded => payment_event::Payload::Refunded(Refunded {
                refund_id: refund.id.to_string(),
                amount: Some(Money::new(&refund.currency, refund.amount_minor)),
            }),
            RefundOutcome::Failed { reason } => {
                payment_event::Payload::RefundFailed(RefundFailed {
                    refund_id: refund.id.to_string(),
                    reason: reason.clone(),
                })
            }
        };
        let event = event_for(refund.order_id, refund.payment_id, payload);
        let settlement = RefundSettlement {
            refund_id: refund.id,
            provider_refund_id: provider_refund_id.to_owned(),
            outcome,
            now_ms: now_ms(),
        };
        let settled = self
            .store
            .settle_refund(&settlement, &event, webhook)
            .await
            .map_err(Error::from)?;
        if let Settled::Applied(refund) = &settled {
            self.relay.notify_one();
            match refund.status {
                RefundState::Failed => tracing::error!(
                    refund_id = %refund.id,
                    payment_id = %refund.payment_id,
                    reason = refund.failure_reason,
                    "refund failed at the provider; an operator must act"
                ),
                _ => {
                    tracing::info!(refund_id = %refund.id, payment_id = %refund.payment_id, "refund settled")
                }
            }
        }
        Ok(settled)
    }

    /// Handles one webhook delivery: the signature first (nothing else happens without a good
    /// one), then the event, once per event id, acting on what the provider says when asked
    /// again rather than on the event's copy.
    pub async fn webhook(
        &self,
        payload: &[u8],
        signature: Option<&str>,
    ) -> Result<HandleStripeWebhookResponse> {
        if payload.len() > webhook::MAX_BODY_BYTES {
            return Err(Error::invalid_argument(
                "BODY_TOO_LARGE",
                "the webhook body is too large",
            ));
        }
        webhook::verify(
            signature.unwrap_or(""),
            payload,
            &self.secrets,
            webhook::unix_now(),
        )
        .map_err(|error| Error::invalid_argument("BAD_SIGNATURE", error.to_string()))?;
        let event = webhook::parse_event(payload)
            .map_err(|error| Error::invalid_argument("BAD_EVENT", error.to_string()))?;
        if self
            .store
            .webhook_seen(&event.id)
            .await
            .map_err(Error::from)?
        {
            return Ok(HandleStripeWebhookResponse { duplicate: true });
        }
        let duplicate = match event.subject() {
            Subject::Intent {
                provider_payment_id,
                payment_id,
            } => {
                self.intent_changed(&event.id, &provider_payment_id, payment_id)
                    .await?
            }
            Subject::Refunds {
                provider_refund_ids,
                provider_payment_id,
            } => {
                self.refunds_changed(&event.id, &provider_refund_ids, provider_payment_id)
                    .await?
            }
            // Events payments does not act on are acknowledged so Stripe stops sending them.
            Subject::Other => false,
        };
        Ok(HandleStripeWebhookResponse { duplicate })
    }

    /// A PaymentIntent changed: re-fetch it and settle its payment. Returns whether the event
    /// was a duplicate.
    async fn intent_changed(
        &self,
        event_id: &str,
        provider_payment_id: &str,
        payment_id: Option<String>,
    ) -> Result<bool> {
        let answer = match self.gateway.retrieve(provider_payment_id).await {
            Ok(answer) => answer,
            Err(error @ GatewayError::Unavailable(_)) => return Err(unavailable(error)),
            // Not an object this account can read (another mode or account): nothing to do.
            Err(GatewayError::Refused { code, .. }) => {
                tracing::warn!(
                    event_id,
                    code,
                    "webhook about an intent the provider refuses to show"
                );
                return Ok(!self
                    .store
                    .note_webhook(event_id)
                    .await
                    .map_err(Error::from)?);
            }
        };
        let ours = answer.payment_id.clone().or(payment_id);
        let payment = match ours.as_deref().and_then(|id| Uuid::parse_str(id).ok()) {
            Some(id) => self.store.payment(id).await.map_err(Error::from)?,
            None => self
                .store
                .payment_by_provider_id(&answer.provider_payment_id)
                .await
                .map_err(Error::from)?,
        };
        let Some(payment) = payment.filter(|p| {
            p.provider_payment_id.is_empty() || p.provider_payment_id == answer.provider_payment_id
        }) else {
            // Another integration's intent on the same account.
            return Ok(!self
                .store
                .note_webhook(event_id)
                .await
                .map_err(Error::from)?);
        };
        Ok(matches!(
            self.settle(&payment, &answer, Some(event_id)).await?,
            Settled::Duplicate
        ))
    }

    /// Refunds changed: re-fetch each one of ours and settle it. Returns whether the event was a
    /// duplicate.
    async fn refunds_changed(
        &self,
        event_id: &str,
        provider_refund_ids: &[String],
        provider_payment_id: Option<String>,
    ) -> Result<bool> {
        let mut found: Vec<(RefundRecord, ProviderRefund)> = Vec::new();
        for id in provider_refund_ids {
            let answer = match self.gateway.retrieve_refund(id).await {
                Ok(answer) => answer,
                Err(error @ GatewayError::Unavailable(_)) => return Err(unavailable(error)),
                Err(GatewayError::Refused { .. }) => continue,
            };
            let refund = match answer
                .refund_id
                .as_deref()
                .and_then(|r| Uuid::parse_str(r).ok())
            {
                Some(ours) => self.store.refund(ours).await.map_err(Error::from)?,
                None => self
                    .store
                    .refund_by_provider_id(&answer.id)
                    .await
                    .map_err(Error::from)?,
            };
            if let Some(refund) = refund {
                found.push((refund, answer));
            }
        }
        // A charge event that lists no refunds: look at the refunds of its payment.
        if found.is_empty()
            && let Some(intent) = provider_payment_id
            && let Some(payment) = self
                .store
                .payment_by_provider_id(&intent)
                .await
                .map_err(Error::from)?
        {
            for refund in self.store.refunds(payment.id).await.map_err(Error::from)? {
                if refund.status != RefundState::Pending || refund.provider_refund_id.is_empty() {
                    continue;
                }
                match self
                    .gateway
                    .retrieve_refund(&refund.provider_refund_id)
                    .await
                {
                    Ok(answer) => found.push((refund, answer)),
                    Err(error @ GatewayError::Unavailable(_)) => return Err(unavailable(error)),
                    Err(GatewayError::Refused { .. }) => {}
                }
            }
        }
        if found.is_empty() {
            return Ok(!self
                .store
                .note_webhook(event_id)
                .await
                .map_err(Error::from)?);
        }
        // The event id is remembered with the first effect; the rest need no record of it.
        let mut webhook = Some(event_id);
        for (refund, answer) in &found {
            if let Settled::Duplicate = self.settle_refund(refund, answer, webhook).await? {
                return Ok(true);
            }
            webhook = None;
        }
        Ok(false)
    }

    /// One payment, with its refunds.
    pub async fn payment(&self, id: &str) -> Result<Payment> {
        let id = Uuid::parse_str(id).map_err(|_| Error::invalid_field("id", "must be a UUID"))?;
        let payment = self
            .store
            .payment(id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found("PAYMENT_NOT_FOUND", "no such payment"))?;
        self.view(&payment).await
    }

    /// Every payment of an order (one per attempt), with its refunds.
    pub async fn order_payments(&self, order_id: &str) -> Result<ListOrderPaymentsResponse> {
        let order_id = Uuid::parse_str(order_id)
            .map_err(|_| Error::invalid_field("order_id", "must be a UUID"))?;
        let records = self
            .store
            .order_payments(order_id)
            .await
            .map_err(Error::from)?;
        let mut payments = Vec::with_capacity(records.len());
        for record in &records {
            payments.push(self.view(record).await?);
        }
        Ok(ListOrderPaymentsResponse { payments })
    }

    /// A payment as the API shows it, with its refunds.
    async fn view(&self, payment: &PaymentRecord) -> Result<Payment> {
        let refunds = self.store.refunds(payment.id).await.map_err(Error::from)?;
        Ok(payment_view(payment, &refunds))
    }
}

/// The metric label of a sweep's settling write: `settled` when this sweep applied the outcome,
/// `unchanged` when another path had (or the charge is still processing at the provider).
fn sweep_result(settled: Settled<PaymentRecord>) -> &'static str {
    match settled {
        Settled::Applied(_) => "settled",
        Settled::Unchanged(payment) if payment.status == Status::Processing => "processing",
        Settled::Unchanged(_) | Settled::Duplicate => "unchanged",
    }
}

/// The payment after a settling write; `before` when the write reports no record (only a
/// webhook can be a duplicate, and the charge path passes none).
fn settled_record(settled: Settled<PaymentRecord>, before: PaymentRecord) -> PaymentRecord {
    match settled {
        Settled::Applied(payment) | Settled::Unchanged(payment) => payment,
        Settled::Duplicate => before,
    }
}

pub fn payment_view(payment: &PaymentRecord, refunds: &[RefundRecord]) -> Payment {
    Payment {
        id: payment.id.to_string(),
        order_id: payment.order_id.to_string(),
        user_id: payment.user_id.to_string(),
        provider: payment.provider as i32,
        provider_payment_id: payment.provider_payment_id.clone(),
        attempt: payment.attempt,
        status: match payment.status {
            Status::Processing => PaymentStatus::Processing,
            Status::Succeeded => PaymentStatus::Succeeded,
            Status::Failed => PaymentStatus::Failed,
            Status::Refunded => PaymentStatus::Refunded,
        } as i32,
        amount: Some(Money::new(&payment.currency, payment.amount_minor)),
        amount_refunded: Some(Money::new(&payment.currency, payment.amount_refunded_minor)),
        payment_method: payment.payment_method.clone(),
        card_brand: payment.card_brand.clone(),
        card_last4: payment.card_last4.clone(),
        decline_code: payment.decline_code.clone(),
        failure_message: payment.failure_message.clone(),
        refunds: refunds
            .iter()
            .map(|refund| Refund {
                id: refund.id.to_string(),
                provider_refund_id: refund.provider_refund_id.clone(),
                amount: Some(Money::new(&refund.currency, refund.amount_minor)),
                status: match refund.status {
                    RefundState::Pending => RefundView::Pending,
                    RefundState::Succeeded => RefundView::Succeeded,
                    RefundState::Failed => RefundView::Failed,
                } as i32,
                failure_reason: refund.failure_reason.clone(),
                created_at: Some(timestamp(refund.created_at_ms)),
            })
            .collect(),
        created_at: Some(timestamp(payment.created_at_ms)),
        updated_at: Some(timestamp(payment.updated_at_ms)),
    }
}

/// A payment event keyed by its order, its envelope filled from the event itself.
fn event_for(order_id: Uuid, payment_id: Uuid, payload: payment_event::Payload) -> Event {
    Event::enveloped(order_id.to_string(), EVENT_KIND, "payments", |meta| {
        PaymentEvent {
            meta: Some(meta),
            order_id: order_id.to_string(),
            payment_id: payment_id.to_string(),
            payload: Some(payload),
        }
    })
}

/// A UUID field of a consumed event; a bad one is a producer bug (the event dead-letters).
fn event_id_field(field: &str, text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| {
        Error::failed_precondition(
            "BAD_EVENT",
            format!("order event field {field} is not a UUID"),
        )
    })
}

fn unavailable(error: GatewayError) -> Error {
    tracing::warn!(%error, "payment provider call failed; will retry");
    Error::unavailable(
        "PROVIDER_UNAVAILABLE",
        "the payment provider did not answer",
    )
}
