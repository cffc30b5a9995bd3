//! The payments gRPC face: each `PaymentService` method reads what only the request carries
//! (the webhook's signature metadata), calls [`PaymentHandler`] and wraps its answer; errors
//! become statuses through `shopmesh_kit::Error`'s one mapping.

use std::sync::Arc;

use shopmesh_proto::google::api::HttpBody;
use shopmesh_proto::shopmesh::payments::v1::payment_service_server::PaymentService;
use shopmesh_proto::shopmesh::payments::v1::{
    GetPaymentRequest, HandleStripeWebhookResponse, ListOrderPaymentsRequest,
    ListOrderPaymentsResponse, Payment,
};
use tonic::{Request, Response, Status};

use crate::handler::PaymentHandler;

/// The gRPC metadata entry the edge puts the `Stripe-Signature` header in.
pub const SIGNATURE_METADATA: &str = "stripe-signature";

/// The handler as a `PaymentService`; the server, the order consumer, the sweeper and the
/// sandbox's webhook delivery share one handler.
#[derive(Clone)]
pub struct PaymentApi(pub Arc<PaymentHandler>);

type Answer<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn handle_stripe_webhook(
        &self,
        request: Request<HttpBody>,
    ) -> Answer<HandleStripeWebhookResponse> {
        // A missing or unreadable header checks as an empty signature, which the handler refuses.
        let signature = request
            .metadata()
            .get(SIGNATURE_METADATA)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = request.into_inner().data;
        Ok(Response::new(
            self.0.webhook(&body, signature.as_deref()).await?,
        ))
    }

    async fn get_payment(&self, request: Request<GetPaymentRequest>) -> Answer<Payment> {
        Ok(Response::new(self.0.payment(&request.get_ref().id).await?))
    }

    async fn list_order_payments(
        &self,
        request: Request<ListOrderPaymentsRequest>,
    ) -> Answer<ListOrderPaymentsResponse> {
        Ok(Response::new(
            self.0.order_payments(&request.get_ref().order_id).await?,
        ))
    }
}
