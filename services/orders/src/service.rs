//! The `OrderService` gRPC handlers and the one way an order changes ([`OrderHandler::apply`]),
//! which the handlers and the saga share. Requests arrive validated and access-checked.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message as _;
use shopmesh_events::{Event, envelope, topics};
use shopmesh_kit::access::Caller;
use shopmesh_kit::clock::{now_ms, timestamp};
use shopmesh_kit::crypto::{Sealer, sha256};
use shopmesh_kit::grpc::PeerChannel;
use shopmesh_kit::{Error, Result, locale, paging};
use shopmesh_proto::shopmesh::catalog::v1::GetProductsForOrderRequest;
use shopmesh_proto::shopmesh::catalog::v1::catalog_service_client::CatalogServiceClient;
use shopmesh_proto::shopmesh::common::v1::{Address, Money};
use shopmesh_proto::shopmesh::events::v1::{
    OrderCancelled, OrderCreated, OrderDelivered, OrderEvent, OrderPaid, OrderPaymentFailed,
    OrderRefunded, OrderRejected, OrderShipped, PaymentRequested, RefundRequested, order_event,
};
use shopmesh_proto::shopmesh::orders::v1::order_service_server::OrderService;
use shopmesh_proto::shopmesh::orders::v1::{
    CancelOrderRequest, CheckPurchaseRequest, CheckPurchaseResponse, CreateOrderRequest,
    DeliverOrderRequest, GetOrderRequest, ListOrdersRequest, ListOrdersResponse,
    LookupOrderRequest, Order, OrderItem, OrderStatus, PaymentSummary, ShipOrderRequest,
    StatusTransition, WatchOrderRequest, WatchOrderResponse,
};
use tokio::sync::{Notify, broadcast};
use tonic::{Request, Response, Status as GrpcStatus};
use uuid::Uuid;

use crate::state::{Decision, Emit, Input, Status};
use crate::store::{
    Created, IdempotencyKey, Line, OrderBody, OrderRecord, OrderStore, Outgoing, Processed,
    Shipment, StoreError, Transition,
};

const EVENT_KIND: &str = "shopmesh.events.v1.OrderEvent";
const DEFAULT_PAGE: usize = 20;
/// Attempts at a change that keeps meeting concurrent changes.
const CONFLICT_RETRIES: usize = 8;
/// Metadata carrying the client's idempotency key (the `Idempotency-Key` header at the edge).
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_KEY_LEN: usize = 255;

pub struct OrderHandler {
    store: Arc<dyn OrderStore>,
    catalog: CatalogServiceClient<PeerChannel>,
    sealer: Sealer,
    relay: Arc<Notify>,
    /// Ids of orders this replica changed, for the streams watching them.
    changes: broadcast::Sender<Uuid>,
    watch_interval: Duration,
}

/// Who changes an order and why, for its history.
#[derive(Debug, Clone)]
pub struct Cause {
    /// `user:<uuid>` or `service:<name>`.
    pub actor: String,
    pub reason: String,
}

impl Cause {
    pub fn user(user_id: &str, reason: impl Into<String>) -> Self {
        Self {
            actor: format!("user:{user_id}"),
            reason: reason.into(),
        }
    }

    pub fn service(name: &str, reason: impl Into<String>) -> Self {
        Self {
            actor: format!("service:{name}"),
            reason: reason.into(),
        }
    }
}

/// What [`OrderHandler::apply`] did.
#[derive(Debug)]
pub enum Applied {
    Changed(OrderRecord),
    /// Nothing to do: the order as it is.
    Unchanged(OrderRecord),
    /// The saga event was handled before.
    Duplicate,
}

impl OrderHandler {
    pub fn new(
        store: Arc<dyn OrderStore>,
        catalog: CatalogServiceClient<PeerChannel>,
        sealer: Sealer,
        relay: Arc<Notify>,
        watch_interval: Duration,
    ) -> Self {
        Self {
            store,
            catalog,
            sealer,
            relay,
            changes: broadcast::channel(1024).0,
            watch_interval,
        }
    }

    pub fn store(&self) -> &Arc<dyn OrderStore> {
        &self.store
    }

    async fn load(&self, id: Uuid) -> Result<OrderRecord> {
        self.store
            .order(id)
            .await
            .map_err(storage)?
            .ok_or_else(not_found)
    }

    /// The order `id` as `caller` may see it: their own, or anyone's with `permission`.
    async fn visible(&self, id: &str, caller: &Caller, permission: &str) -> Result<OrderRecord> {
        let order = self.load(Error::parse_id("id", id)?).await?;
        if order.user_id.to_string() != caller.user_id && !caller.can(permission) {
            return Err(not_found());
        }
        Ok(order)
    }

    /// Feeds `input` to order `id`'s state machine and stores the outcome with its events,
    /// retrying over concurrent changes. `amend` adds the input's facts (payment, shipment) to
    /// a changing order. `processed` records the saga event that caused it.
    pub async fn apply(
        &self,
        id: Uuid,
        input: Input,
        cause: Cause,
        amend: impl Fn(&mut OrderRecord),
        processed: Option<Processed<'_>>,
    ) -> Result<Applied> {
        for _ in 0..CONFLICT_RETRIES {
            let mut order = self.load(id).await?;
            let (path, refund_pending, charged, emit) = match order.machine().decide(input) {
                Decision::Apply {
                    path,
                    refund_pending,
                    charged,
                    emit,
                } => (path, refund_pending, charged, emit),
                Decision::Unchanged | Decision::Ignore => return Ok(Applied::Unchanged(order)),
                Decision::Refuse(message) => {
                    return Err(Error::failed_precondition("ILLEGAL_TRANSITION", message));
                }
            };
            let now = now_ms().max(order.updated_at_ms);
            let before = order.status;
            for to in path {
                order.body.history.push(Transition {
                    from: Some(order.status),
                    to,
                    at_ms: now,
                    actor: cause.actor.clone(),
                    reason: cause.reason.clone(),
                });
                order.status = to;
            }
            order.body.refund_pending = refund_pending;
            order.body.charged = charged;
            if emit.contains(&Emit::PaymentRequested) {
                order.body.attempts += 1;
            }
            amend(&mut order);
            order.updated_at_ms = now;
            order.version += 1;
            let events: Vec<Outgoing> = emit
                .iter()
                .map(|effect| self.event(&order, *effect, &cause))
                .collect();
            match self.store.update(&order, &events, processed).await {
                Ok(true) => {
                    self.relay.notify_one();
                    let _ = self.changes.send(order.id);
                    record(&order, before);
                    return Ok(Applied::Changed(order));
                }
                Ok(false) => return Ok(Applied::Duplicate),
                Err(StoreError::Conflict) => continue,
                Err(error) => return Err(storage(error)),
            }
        }
        Err(Error::aborted(
            "CONCURRENT_UPDATE",
            "the order keeps changing; retry",
        ))
    }

    /// The event announcing `effect` on `order`.
    fn event(&self, order: &OrderRecord, effect: Emit, cause: &Cause) -> Outgoing {
        let money = |minor: i64| money(order, minor);
        let payment_id = order
            .body
            .payment
            .as_ref()
            .map(|p| p.payment_id.clone())
            .unwrap_or_default();
        use order_event::Payload;
        let payload = match effect {
            Emit::PaymentRequested => Payload::PaymentRequested(PaymentRequested {
                amount: Some(money(order.body.total_minor)),
                payment_method: order.body.payment_method.clone(),
                attempt: order.body.attempts,
            }),
            Emit::Rejected => Payload::Rejected(OrderRejected::default()),
            Emit::Paid => Payload::Paid(OrderPaid {
                payment_id,
                amount: Some(money(order.body.total_minor)),
            }),
            Emit::PaymentFailed => Payload::PaymentFailed(OrderPaymentFailed {
                payment_id,
                decline_code: order
                    .body
                    .payment
                    .as_ref()
                    .map(|p| p.decline_code.clone())
                    .unwrap_or_default(),
            }),
            Emit::Cancelled => Payload::Cancelled(OrderCancelled {
                actor: cause.actor.clone(),
                reason: cause.reason.clone(),
                refund_pending: order.body.refund_pending,
            }),
            Emit::RefundRequested => Payload::RefundRequested(RefundRequested {
                payment_id,
                amount: Some(money(order.body.total_minor)),
                reason: cause.reason.clone(),
            }),
            Emit::Refunded => Payload::Refunded(OrderRefunded {
                payment_id,
                refund_id: String::new(),
                amount: Some(money(order.body.total_minor)),
            }),
            Emit::Shipped => {
                let shipment = order.body.shipment.clone();
                Payload::Shipped(OrderShipped {
                    carrier: shipment
                        .as_ref()
                        .map(|s| s.carrier.clone())
                        .unwrap_or_default(),
                    tracking_number: shipment.map(|s| s.tracking_number).unwrap_or_default(),
                })
            }
            Emit::Delivered => Payload::Delivered(OrderDelivered {}),
        };
        order_event(order, payload)
    }

    /// The API view of an order.
    fn view(&self, order: &OrderRecord) -> Result<Order> {
        let address = self
            .sealer
            .open(&order.body.sealed_address, order.id.as_bytes())
            .ok()
            .and_then(|bytes| Address::decode(bytes.as_slice()).ok())
            .ok_or_else(|| {
                Error::internal("shipping address", format!("order {} unreadable", order.id))
            })?;
        Ok(Order {
            id: order.id.to_string(),
            user_id: order.user_id.to_string(),
            status: order.status.proto() as i32,
            items: items(order),
            total: Some(money(order, order.body.total_minor)),
            shipping_address: Some(address),
            payment_method: order.body.payment_method.clone(),
            payment: order.body.payment.as_ref().map(|p| PaymentSummary {
                payment_id: p.payment_id.clone(),
                card_brand: p.card_brand.clone(),
                card_last4: p.card_last4.clone(),
                decline_code: p.decline_code.clone(),
            }),
            shipment: order.body.shipment.as_ref().map(|s| {
                shopmesh_proto::shopmesh::orders::v1::Shipment {
                    carrier: s.carrier.clone(),
                    tracking_number: s.tracking_number.clone(),
                    shipped_at: Some(timestamp(s.shipped_at_ms)),
                }
            }),
            history: order.body.history.iter().map(transition_view).collect(),
            created_at: Some(timestamp(order.created_at_ms)),
            updated_at: Some(timestamp(order.updated_at_ms)),
        })
    }

    /// Builds a new order from the request, with prices from catalog.
    async fn build(
        &self,
        request: &CreateOrderRequest,
        user_id: Uuid,
        accepted: &[String],
        language: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ) -> Result<OrderRecord> {
        let mut wanted: BTreeMap<Uuid, i32> = BTreeMap::new();
        for item in &request.items {
            let product_id = Error::parse_id("items.product_id", &item.product_id)?;
            if wanted.insert(product_id, item.quantity).is_some() {
                return Err(Error::invalid_field(
                    "items",
                    "each product_id may appear only once",
                ));
            }
        }
        let mut quote = Request::new(GetProductsForOrderRequest {
            product_ids: wanted.keys().map(Uuid::to_string).collect(),
        });
        if let Some(language) = language {
            quote
                .metadata_mut()
                .insert("accept-language", language.clone());
        }
        let quote = self
            .catalog
            .clone()
            .get_products_for_order(quote)
            .await
            .map_err(|status| {
                tracing::warn!(code = ?status.code(), message = status.message(), "catalog quote failed");
                Error::unavailable("CATALOG_UNAVAILABLE", "prices cannot be fetched now; retry")
            })?
            .into_inner();
        if !quote.missing_product_ids.is_empty() {
            return Err(Error::invalid_field(
                "items.product_id",
                format!("no such product: {}", quote.missing_product_ids.join(", ")),
            ));
        }
        let mut lines = Vec::with_capacity(wanted.len());
        let mut currency: Option<String> = None;
        let mut total: i64 = 0;
        for product in quote.products {
            let product_id = Error::parse_id("product_id", &product.product_id)?;
            let Some(quantity) = wanted.get(&product_id).copied() else {
                continue;
            };
            let price = product.unit_price.unwrap_or_default();
            match &currency {
                None => currency = Some(price.currency_code.clone()),
                Some(first) if *first != price.currency_code => {
                    return Err(Error::failed_precondition(
                        "MIXED_CURRENCIES",
                        "the products are priced in different currencies; order them separately",
                    ));
                }
                Some(_) => {}
            }
            total = price
                .amount_minor
                .checked_mul(i64::from(quantity))
                .and_then(|line| total.checked_add(line))
                .ok_or_else(|| Error::invalid_field("items", "the order total is too large"))?;
            lines.push(Line {
                product_id,
                sku: product.sku,
                title: product.title,
                quantity,
                unit_minor: price.amount_minor,
            });
        }
        if lines.len() != wanted.len() {
            return Err(Error::unavailable(
                "CATALOG_INCOMPLETE",
                "catalog did not quote every product; retry",
            ));
        }
        let id = Uuid::now_v7();
        let now = now_ms();
        let address = request.shipping_address.clone().unwrap_or_default();
        Ok(OrderRecord {
            id,
            user_id,
            status: Status::Created,
            body: OrderBody {
                lines,
                currency: currency.unwrap_or_default(),
                total_minor: total,
                sealed_address: self.sealer.seal(&address.encode_to_vec(), id.as_bytes()),
                payment_method: request.payment_method.clone(),
                locale: accepted.first().cloned().unwrap_or_default(),
                refund_pending: false,
                charged: false,
                attempts: 0,
                payment: None,
                shipment: None,
                history: vec![Transition {
                    from: None,
                    to: Status::Created,
                    at_ms: now,
                    actor: format!("user:{user_id}"),
                    reason: String::new(),
                }],
            },
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
        })
    }
}

/// Counts a change of status, and times checkout from acceptance to payment.
fn record(order: &OrderRecord, before: Status) {
    if order.status == before {
        return;
    }
    metrics::counter!("shopmesh_orders_transitions_total", "to" => order.status.as_str())
        .increment(1);
    if order.status == Status::Paid {
        let waited = (order.updated_at_ms - order.created_at_ms).max(0) as f64 / 1000.0;
        metrics::histogram!("shopmesh_orders_time_to_paid_seconds").record(waited);
    }
}

/// `minor` units of the order's currency.
fn money(order: &OrderRecord, minor: i64) -> Money {
    Money::new(&order.body.currency, minor)
}

/// The order's lines as the API and its events show them.
fn items(order: &OrderRecord) -> Vec<OrderItem> {
    order
        .body
        .lines
        .iter()
        .map(|line| OrderItem {
            product_id: line.product_id.to_string(),
            sku: line.sku.clone(),
            title: line.title.clone(),
            quantity: line.quantity,
            unit_price: Some(money(order, line.unit_minor)),
            line_total: Some(money(order, line.unit_minor * i64::from(line.quantity))),
        })
        .collect()
}

/// The `OrderEvent` carrying `payload` for `order`.
fn order_event(order: &OrderRecord, payload: order_event::Payload) -> Outgoing {
    let mut event = Event::new(order.id.to_string(), EVENT_KIND, Vec::new());
    event.payload = OrderEvent {
        meta: Some(envelope(&event, "orders")),
        order_id: order.id.to_string(),
        user_id: order.user_id.to_string(),
        status: order.status.proto() as i32,
        payload: Some(payload),
    }
    .encode_to_vec();
    Outgoing {
        topic: topics::ORDERS,
        event,
    }
}

fn transition_view(transition: &Transition) -> StatusTransition {
    StatusTransition {
        from: transition
            .from
            .map_or(OrderStatus::Unspecified, Status::proto) as i32,
        to: transition.to.proto() as i32,
        at: Some(timestamp(transition.at_ms)),
        actor: transition.actor.clone(),
        reason: transition.reason.clone(),
    }
}

/// The idempotency key of a request: 1 to 255 visible ASCII characters.
fn idempotency_key(metadata: &tonic::metadata::MetadataMap) -> Result<String> {
    let key = metadata
        .get(IDEMPOTENCY_KEY)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if key.is_empty() {
        return Err(Error::invalid_field(
            "Idempotency-Key",
            "the header is required: a unique key per order, reused only to retry it",
        ));
    }
    if key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid_field(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(key.to_owned())
}

/// A fingerprint of what the request asks for, independent of the order of its lines.
fn fingerprint(request: &CreateOrderRequest) -> Vec<u8> {
    let mut canonical = request.clone();
    canonical
        .items
        .sort_by(|a, b| a.product_id.cmp(&b.product_id));
    sha256(&canonical.encode_to_vec())
}

fn not_found() -> Error {
    Error::not_found("ORDER_NOT_FOUND", "no such order")
}

fn storage(error: StoreError) -> Error {
    error.or_missing(not_found)
}

type WatchStream =
    Pin<Box<dyn Stream<Item = std::result::Result<WatchOrderResponse, GrpcStatus>> + Send>>;

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
    ) -> std::result::Result<Response<Order>, GrpcStatus> {
        let caller = Caller::of(&request)?.clone();
        let user_id = Error::parse_id("user_id", &caller.user_id)?;
        let key = IdempotencyKey {
            user_id,
            key: idempotency_key(request.metadata())?,
            fingerprint: fingerprint(request.get_ref()),
        };
        // A retry is answered from what its key made, without asking catalog again.
        if let Some(made) = self.store.keyed(&key).await.map_err(storage)? {
            return Ok(Response::new(self.view(&answer(made)?)?));
        }
        let accepted = locale::accepted(request.metadata());
        let language = request.metadata().get("accept-language").cloned();
        let order = self
            .build(request.get_ref(), user_id, &accepted, language.as_ref())
            .await?;
        let created = order_event(
            &order,
            order_event::Payload::Created(OrderCreated {
                items: items(&order),
                total: Some(money(&order, order.body.total_minor)),
                locale: order.body.locale.clone(),
            }),
        );
        let order =
            match self.store.create(&order, &key, &[created]).await.map_err(
                |error| match error {
                    StoreError::Conflict => Error::aborted(
                        "IDEMPOTENCY_KEY_IN_USE",
                        "an order with this key is being placed; retry",
                    ),
                    other => storage(other),
                },
            )? {
                Created::New => {
                    self.relay.notify_one();
                    metrics::counter!("shopmesh_orders_created_total").increment(1);
                    order
                }
                made => answer(made)?,
            };
        Ok(Response::new(self.view(&order)?))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> std::result::Result<Response<ListOrdersResponse>, GrpcStatus> {
        let caller = Caller::of(&request)?.clone();
        let request = request.into_inner();
        let owner = if request.user_id.is_empty() || request.user_id == caller.user_id {
            caller.user_id.clone()
        } else {
            caller.require("orders.orders.read_any")?;
            request.user_id.to_ascii_lowercase()
        };
        let owner = Error::parse_id("user_id", &owner)?;
        let status = match OrderStatus::try_from(request.status) {
            Ok(OrderStatus::Unspecified) | Err(_) => None,
            Ok(status) => Status::from_proto(status),
        };
        let before = if request.page_token.is_empty() {
            None
        } else {
            Some(paging::decode(&request.page_token)?)
        };
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            n => n as usize,
        };
        let orders = self
            .store
            .list(owner, status, before, limit + 1)
            .await
            .map_err(storage)?;
        let more = orders.len() > limit;
        let page = &orders[..orders.len().min(limit)];
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => paging::encode((last.created_at_ms, last.id)),
            _ => String::new(),
        };
        Ok(Response::new(ListOrdersResponse {
            orders: page
                .iter()
                .map(|order| self.view(order))
                .collect::<Result<_>>()?,
            next_page_token,
        }))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> std::result::Result<Response<Order>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let order = self
            .visible(&request.get_ref().id, caller, "orders.orders.read_any")
            .await?;
        Ok(Response::new(self.view(&order)?))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> std::result::Result<Response<Order>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let order = self
            .visible(&request.get_ref().id, caller, "orders.orders.cancel_any")
            .await?;
        let cause = Cause::user(&caller.user_id, request.get_ref().reason.clone());
        let applied = self
            .apply(order.id, Input::Cancel, cause, |_| {}, None)
            .await?;
        Ok(Response::new(
            self.view(&settled(self, order.id, applied).await?)?,
        ))
    }

    async fn ship_order(
        &self,
        request: Request<ShipOrderRequest>,
    ) -> std::result::Result<Response<Order>, GrpcStatus> {
        let caller = Caller::of(&request)?.clone();
        let request = request.into_inner();
        let id = Error::parse_id("id", &request.id)?;
        let shipment = Shipment {
            carrier: request.carrier,
            tracking_number: request.tracking_number,
            shipped_at_ms: now_ms(),
        };
        let cause = Cause::user(&caller.user_id, "");
        let applied = self
            .apply(
                id,
                Input::Ship,
                cause,
                |order| order.body.shipment = Some(shipment.clone()),
                None,
            )
            .await?;
        Ok(Response::new(
            self.view(&settled(self, id, applied).await?)?,
        ))
    }

    async fn deliver_order(
        &self,
        request: Request<DeliverOrderRequest>,
    ) -> std::result::Result<Response<Order>, GrpcStatus> {
        let caller = Caller::of(&request)?.clone();
        let id = Error::parse_id("id", &request.get_ref().id)?;
        let applied = self
            .apply(
                id,
                Input::Deliver,
                Cause::user(&caller.user_id, ""),
                |_| {},
                None,
            )
            .await?;
        Ok(Response::new(
            self.view(&settled(self, id, applied).await?)?,
        ))
    }

    type WatchOrderStream = WatchStream;

    async fn watch_order(
        &self,
        request: Request<WatchOrderRequest>,
    ) -> std::result::Result<Response<WatchStream>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let mut changes = self.changes.subscribe();
        let order = self
            .visible(&request.get_ref().id, caller, "orders.orders.read_any")
            .await?;
        let handler = self.0.clone();
        let stream = async_stream(move |sender| async move {
            let mut seen = order.body.history.len();
            let mut machine = order.machine();
            let first = WatchOrderResponse {
                order: Some(handler.view(&order)?),
                transition: None,
            };
            if sender.send(Ok(first)).await.is_err() {
                return Ok(());
            }
            let id = order.id;
            while !machine.is_final() {
                // Woken by this replica's changes, or by the clock for another replica's.
                let deadline = tokio::time::sleep(handler.watch_interval);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        changed = changes.recv() => match changed {
                            Ok(changed) if changed != id => continue,
                            _ => break,
                        },
                        () = &mut deadline => break,
                        () = sender.closed() => return Ok(()),
                    }
                }
                let current = handler.load(id).await?;
                for transition in current.body.history.iter().skip(seen) {
                    let message = WatchOrderResponse {
                        order: Some(handler.view(&current)?),
                        transition: Some(transition_view(transition)),
                    };
                    if sender.send(Ok(message)).await.is_err() {
                        return Ok(());
                    }
                }
                seen = current.body.history.len();
                machine = current.machine();
            }
            Ok(())
        });
        Ok(Response::new(stream))
    }

    async fn lookup_order(
        &self,
        request: Request<LookupOrderRequest>,
    ) -> std::result::Result<Response<Order>, GrpcStatus> {
        let order = self
            .load(Error::parse_id("id", &request.get_ref().id)?)
            .await?;
        Ok(Response::new(self.view(&order)?))
    }

    async fn check_purchase(
        &self,
        request: Request<CheckPurchaseRequest>,
    ) -> std::result::Result<Response<CheckPurchaseResponse>, GrpcStatus> {
        let request = request.into_inner();
        let found = self
            .store
            .purchase(
                Error::parse_id("user_id", &request.user_id)?,
                Error::parse_id("product_id", &request.product_id)?,
            )
            .await
            .map_err(storage)?;
        Ok(Response::new(CheckPurchaseResponse {
            purchased: found.is_some(),
            order_id: found.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }
}

/// The order an earlier use of a key made, or why the key cannot be used again.
fn answer(made: Created) -> Result<OrderRecord> {
    match made {
        Created::Existing(existing) => Ok(*existing),
        Created::KeyReused => Err(Error::already_exists(
            "IDEMPOTENCY_KEY_REUSED",
            "this Idempotency-Key was used for another order; use a new key",
        )),
        Created::New => Err(Error::internal(
            "idempotency",
            "a new order is no answer to a retry",
        )),
    }
}

/// The order after a command, whatever [`OrderHandler::apply`] answered.
async fn settled(handler: &OrderHandler, id: Uuid, applied: Applied) -> Result<OrderRecord> {
    match applied {
        Applied::Changed(order) | Applied::Unchanged(order) => Ok(order),
        Applied::Duplicate => handler.load(id).await,
    }
}

/// A response stream fed by `produce` through a bounded channel; an error it returns ends the
/// stream with that status.
fn async_stream<F, Fut>(produce: F) -> WatchStream
where
    F: FnOnce(
        tokio::sync::mpsc::Sender<std::result::Result<WatchOrderResponse, GrpcStatus>>,
    ) -> Fut,
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
