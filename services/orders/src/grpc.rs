//! The gRPC face of orders: [`OrderApi`] reads the caller and metadata off each request, calls
//! the [`OrderHandler`] and wraps its answer; order streams live here. Also catalog's generated
//! client as the handler's [`Prices`].

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Stream;
use shopmesh_kit::access::Caller;
use shopmesh_kit::grpc::PeerChannel;
use shopmesh_kit::{Error, Result, locale};
use shopmesh_proto::shopmesh::catalog::v1::catalog_service_client::CatalogServiceClient;
use shopmesh_proto::shopmesh::catalog::v1::{
    GetProductsForOrderRequest, GetProductsForOrderResponse,
};
use shopmesh_proto::shopmesh::orders::v1::order_service_server::OrderService;
use shopmesh_proto::shopmesh::orders::v1::{
    CancelOrderRequest, CheckPurchaseRequest, CheckPurchaseResponse, CreateOrderRequest,
    DeliverOrderRequest, GetOrderRequest, ListOrdersRequest, ListOrdersResponse,
    LookupOrderRequest, Order, ShipOrderRequest, WatchOrderRequest, WatchOrderResponse,
};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use crate::handler::{OrderHandler, Prices};

/// Metadata carrying the client's idempotency key (the `Idempotency-Key` header at the edge).
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Metadata carrying the caller's languages (the `Accept-Language` header at the edge).
const ACCEPT_LANGUAGE: &str = "accept-language";

type WatchStream =
    Pin<Box<dyn Stream<Item = std::result::Result<WatchOrderResponse, Status>> + Send>>;

/// The gRPC face of a shared [`OrderHandler`] (streams keep a handle to it).
#[derive(Clone)]
pub struct OrderApi(pub Arc<OrderHandler>);

impl std::ops::Deref for OrderApi {
    type Target = OrderHandler;

    fn deref(&self) -> &OrderHandler {
        &self.0
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> std::result::Result<Response<Order>, Status> {
        let caller = Caller::of(&request)?;
        let metadata = request.metadata();
        let order = self
            .create(
                caller,
                text(metadata, IDEMPOTENCY_KEY).unwrap_or_default(),
                request.get_ref(),
                &locale::accepted(metadata),
                text(metadata, ACCEPT_LANGUAGE),
            )
            .await?;
        Ok(Response::new(order))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> std::result::Result<Response<ListOrdersResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let page = self.list(&caller, request.into_inner()).await?;
        Ok(Response::new(page))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> std::result::Result<Response<Order>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.get(caller, &request.get_ref().id).await?,
        ))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> std::result::Result<Response<Order>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.get_ref();
        Ok(Response::new(
            self.cancel(caller, &request.id, &request.reason).await?,
        ))
    }

    async fn ship_order(
        &self,
        request: Request<ShipOrderRequest>,
    ) -> std::result::Result<Response<Order>, Status> {
        let caller = Caller::of(&request)?.clone();
        Ok(Response::new(
            self.ship(&caller, request.into_inner()).await?,
        ))
    }

    async fn deliver_order(
        &self,
        request: Request<DeliverOrderRequest>,
    ) -> std::result::Result<Response<Order>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.deliver(caller, &request.get_ref().id).await?,
        ))
    }

    type WatchOrderStream = WatchStream;

    async fn watch_order(
        &self,
        request: Request<WatchOrderRequest>,
    ) -> std::result::Result<Response<WatchStream>, Status> {
        let caller = Caller::of(&request)?;
        let mut watch = self.0.watch(caller, &request.get_ref().id).await?;
        let stream = async_stream(move |sender| async move {
            loop {
                // A client that hangs up ends the watch at once, not at the next change.
                let told = tokio::select! {
                    told = watch.next() => told?,
                    () = sender.closed() => return Ok(()),
                };
                let Some(told) = told else {
                    return Ok(());
                };
                for message in told {
                    if sender.send(Ok(message)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn lookup_order(
        &self,
        request: Request<LookupOrderRequest>,
    ) -> std::result::Result<Response<Order>, Status> {
        Ok(Response::new(self.lookup(&request.get_ref().id).await?))
    }

    async fn check_purchase(
        &self,
        request: Request<CheckPurchaseRequest>,
    ) -> std::result::Result<Response<CheckPurchaseResponse>, Status> {
        let request = request.get_ref();
        let found = self.purchase(&request.user_id, &request.product_id).await?;
        Ok(Response::new(found))
    }
}

/// The text of metadata `key`, if it was sent and is text.
fn text<'a>(metadata: &'a MetadataMap, key: &str) -> Option<&'a str> {
    metadata.get(key).and_then(|value| value.to_str().ok())
}

/// A response stream fed by `produce` through a bounded channel; an error it returns ends the
/// stream with that status.
fn async_stream<F, Fut>(produce: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<std::result::Result<WatchOrderResponse, Status>>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let failed = sender.clone();
    let task = produce(sender);
    tokio::spawn(async move {
        if let Err(error) = task.await {
            let _ = failed.send(Err(error.into())).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

#[async_trait]
impl Prices for CatalogServiceClient<PeerChannel> {
    async fn quote(
        &self,
        product_ids: Vec<String>,
        accept_language: Option<&str>,
    ) -> Result<GetProductsForOrderResponse> {
        let mut request = Request::new(GetProductsForOrderRequest { product_ids });
        // Catalog answers in the caller's language.
        if let Some(language) = accept_language.and_then(|l| MetadataValue::try_from(l).ok()) {
            request.metadata_mut().insert(ACCEPT_LANGUAGE, language);
        }
        let quote = self
            .clone()
            .get_products_for_order(request)
            .await
            .map_err(|status| {
                tracing::warn!(code = ?status.code(), message = status.message(), "catalog quote failed");
                Error::from(status)
            })?;
        Ok(quote.into_inner())
    }
}
