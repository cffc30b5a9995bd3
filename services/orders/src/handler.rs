//! The orders domain: [`OrderHandler`] and what it checks, changes, writes and announces for
//! orders, free of transport (`grpc` is its gRPC face, `saga` feeds it the saga's events). An
//! order changes one way only, [`OrderHandler::apply`], which the API and the saga share.
//! Requests arrive validated and access-checked; the handler adds ownership, idempotency and
//! catalog's prices (through [`Prices`], so it runs without a catalog server in tests).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prost::Message as _;
use shopmesh_events::{Event, topics};
use shopmesh_kit::access::Caller;
use shopmesh_kit::clock::{now_ms, timestamp};
use shopmesh_kit::crypto::{Sealer, sha256};
use shopmesh_kit::{Error, Result, paging};
use shopmesh_proto::shopmesh::catalog::v1::GetProductsForOrderResponse;
use shopmesh_proto::shopmesh::common::v1::{Address, Money};
use shopmesh_proto::shopmesh::events::v1::{
    OrderCancelled, OrderCreated, OrderDelivered, OrderEvent, OrderPaid, OrderPaymentFailed,
    OrderRefunded, OrderRejected, OrderShipped, PaymentRequested, RefundRequested, order_event,
};
use shopmesh_proto::shopmesh::orders::v1::{
    CheckPurchaseResponse, CreateOrderRequest, ListOrdersRequest, ListOrdersResponse, Order,
    OrderItem, OrderStatus, PaymentSummary, ShipOrderRequest, StatusTransition, WatchOrderResponse,
};
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use crate::state::{Decision, Emit, Input, Machine, Status};
use crate::store::{
    Created, IdempotencyKey, Line, OrderBody, OrderRecord, OrderStore, Outgoing, Processed,
    Shipment, StoreError, Transition,
};

const EVENT_KIND: &str = "shopmesh.events.v1.OrderEvent";
const DEFAULT_PAGE: usize = 20;
/// Attempts at a change that keeps meeting concurrent changes.
const CONFLICT_RETRIES: usize = 8;
const MAX_KEY_LEN: usize = 255;

/// Catalog, as checkout needs it: the products an order wants, priced.
#[async_trait]
pub trait Prices: Send + Sync + 'static {
    /// Catalog's quote for `product_ids` (SKU, title, unit price; unknown ids listed as
    /// missing), its titles in `accept_language`, the caller's header passed on as it came.
    /// Any error means catalog could not answer: checkout refuses with `CATALOG_UNAVAILABLE`.
    async fn quote(
        &self,
        product_ids: Vec<String>,
        accept_language: Option<&str>,
    ) -> Result<GetProductsForOrderResponse>;
}

pub struct OrderHandler {
    store: Arc<dyn OrderStore>,
    catalog: Box<dyn Prices>,
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
        catalog: impl Prices,
        sealer: Sealer,
        relay: Arc<Notify>,
        watch_interval: Duration,
    ) -> Self {
        Self {
            store,
            catalog: Box::new(catalog),
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

    /// Places `caller`'s order under the client's idempotency `key` (empty when none was
    /// sent). A retry with the same key and request is answered with the order the first one
    /// made. `accepted` are the caller's languages, best first (the first becomes the order's
    /// locale); `accept_language` is their header as it came, for catalog.
    pub async fn create(
        &self,
        caller: &Caller,
        key: &str,
        request: &CreateOrderRequest,
        accepted: &[String],
        accept_language: Option<&str>,
    ) -> Result<Order> {
        let user_id = Error::parse_id("user_id", &caller.user_id)?;
        let key = IdempotencyKey {
            user_id,
            key: idempotency_key(key)?,
            fingerprint: fingerprint(request),
        };
        // A retry is answered from what its key made, without asking catalog again.
        if let Some(made) = self.store.keyed(&key).await.map_err(storage)? {
            return self.view(&answer(made)?);
        }
        let order = self
            .build(request, user_id, accepted, accept_language)
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
        self.view(&order)
    }

    /// A page of one customer's orders, newest first: the caller's own, or another's with
    /// `orders.orders.read_any`.
    pub async fn list(
        &self,
        caller: &Caller,
        request: ListOrdersRequest,
    ) -> Result<ListOrdersResponse> {
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
        Ok(ListOrdersResponse {
            orders: page
                .iter()
                .map(|order| self.view(order))
                .collect::<Result<_>>()?,
            next_page_token,
        })
    }

    /// Order `id`, if `caller` may see it.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<Order> {
        let order = self.visible(id, caller, "orders.orders.read_any").await?;
        self.view(&order)
    }

    /// Cancels order `id` for `caller` (their own, or any with `orders.orders.cancel_any`).
    pub async fn cancel(&self, caller: &Caller, id: &str, reason: &str) -> Result<Order> {
        let order = self.visible(id, caller, "orders.orders.cancel_any").await?;
        let cause = Cause::user(&caller.user_id, reason);
        let applied = self
            .apply(order.id, Input::Cancel, cause, |_| {}, None)
            .await?;
        self.view(&settled(self, order.id, applied).await?)
    }

    /// Records the shipment of an order.
    pub async fn ship(&self, caller: &Caller, request: ShipOrderRequest) -> Result<Order> {
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
        self.view(&settled(self, id, applied).await?)
    }

    /// Records the delivery of order `id`.
    pub async fn deliver(&self, caller: &Caller, id: &str) -> Result<Order> {
        let id = Error::parse_id("id", id)?;
        let applied = self
            .apply(
                id,
                Input::Deliver,
                Cause::user(&caller.user_id, ""),
                |_| {},
                None,
            )
            .await?;
        self.view(&settled(self, id, applied).await?)
    }

    /// Starts following order `id` as `caller` may see it; see [`Watch`].
    pub async fn watch(self: &Arc<Self>, caller: &Caller, id: &str) -> Result<Watch> {
        // Subscribed before the read, so no change after it is missed.
        let changes = self.changes.subscribe();
        let order = self.visible(id, caller, "orders.orders.read_any").await?;
        Ok(Watch {
            handler: self.clone(),
            id: order.id,
            changes,
            seen: order.body.history.len(),
            machine: order.machine(),
            first: Some(order),
        })
    }

    /// Order `id` for another service, whoever owns it.
    pub async fn lookup(&self, id: &str) -> Result<Order> {
        let order = self.load(Error::parse_id("id", id)?).await?;
        self.view(&order)
    }

    /// Whether `user_id` bought `product_id` (in a paid, shipped or delivered order), and in
    /// which order.
    pub async fn purchase(&self, user_id: &str, product_id: &str) -> Result<CheckPurchaseResponse> {
        let found = self
            .store
            .purchase(
                Error::parse_id("user_id", user_id)?,
                Error::parse_id("product_id", product_id)?,
            )
            .await
            .map_err(storage)?;
        Ok(CheckPurchaseResponse {
            purchased: found.is_some(),
            order_id: found.map(|id| id.to_string()).unwrap_or_default(),
        })
    }

    /// Builds a new order from the request, with prices from catalog.
    async fn build(
        &self,
        request: &CreateOrderRequest,
        user_id: Uuid,
        accepted: &[String],
        accept_language: Option<&str>,
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
        let quote = self
            .catalog
            .quote(
                wanted.keys().map(Uuid::to_string).collect(),
                accept_language,
            )
            .await
            .map_err(|_| {
                Error::unavailable("CATALOG_UNAVAILABLE", "prices cannot be fetched now; retry")
            })?;
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

/// One caller's view of an order as it changes (`WatchOrder`): the order as it is, then each
/// new transition with the order after it, until the order is final.
pub struct Watch {
    handler: Arc<OrderHandler>,
    id: Uuid,
    /// Ids of orders this replica changed.
    changes: broadcast::Receiver<Uuid>,
    /// The order as it was read, until it is told.
    first: Option<OrderRecord>,
    /// Transitions already told.
    seen: usize,
    machine: Machine,
}

impl Watch {
    /// What to tell next (possibly nothing, when a wake-up found no new transition), or `None`
    /// once the order is final. Waits for a change from the second call on.
    pub async fn next(&mut self) -> Result<Option<Vec<WatchOrderResponse>>> {
        if let Some(order) = self.first.take() {
            return Ok(Some(vec![WatchOrderResponse {
                order: Some(self.handler.view(&order)?),
                transition: None,
            }]));
        }
        if self.machine.is_final() {
            return Ok(None);
        }
        self.changed().await;
        let current = self.handler.load(self.id).await?;
        let told = current
            .body
            .history
            .iter()
            .skip(self.seen)
            .map(|transition| {
                Ok(WatchOrderResponse {
                    order: Some(self.handler.view(&current)?),
                    transition: Some(transition_view(transition)),
                })
            })
            .collect::<Result<_>>()?;
        self.seen = current.body.history.len();
        self.machine = current.machine();
        Ok(Some(told))
    }

    /// Waits for a change by this replica to the order, or for the clock (another replica's
    /// changes arrive no other way).
    async fn changed(&mut self) {
        let deadline = tokio::time::sleep(self.handler.watch_interval);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                changed = self.changes.recv() => match changed {
                    Ok(changed) if changed != self.id => continue,
                    _ => break,
                },
                () = &mut deadline => break,
            }
        }
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
    let event = Event::enveloped(order.id.to_string(), EVENT_KIND, "orders", |meta| {
        OrderEvent {
            meta: Some(meta),
            order_id: order.id.to_string(),
            user_id: order.user_id.to_string(),
            status: order.status.proto() as i32,
            payload: Some(payload),
        }
    });
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

/// The idempotency key of a request (empty when it sent none): 1 to 255 visible ASCII
/// characters.
fn idempotency_key(key: &str) -> Result<String> {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use shopmesh_kit::ErrorKind;
    use shopmesh_kit::crypto::MasterKey;
    use shopmesh_proto::shopmesh::catalog::v1::OrderableProduct;
    use shopmesh_proto::shopmesh::orders::v1::OrderItemRequest;
    use shopmesh_testkit::storage::{self as testing, TempSqlite};

    use super::*;
    use crate::store::SQLITE;
    use crate::store::sqlite::SqliteOrders;

    /// Catalog as a fixed price list (`None`: catalog cannot be reached), noting each quote's
    /// language.
    struct PriceList {
        products: Option<Vec<(Uuid, &'static str, i64)>>,
        asked: Arc<Mutex<Vec<Option<String>>>>,
    }

    #[async_trait]
    impl Prices for PriceList {
        async fn quote(
            &self,
            product_ids: Vec<String>,
            accept_language: Option<&str>,
        ) -> Result<GetProductsForOrderResponse> {
            self.asked
                .lock()
                .unwrap()
                .push(accept_language.map(str::to_owned));
            let Some(products) = &self.products else {
                return Err(Error::unavailable("UNAVAILABLE", "connection refused"));
            };
            let mut quote = GetProductsForOrderResponse::default();
            for id in product_ids {
                match products.iter().find(|(p, ..)| p.to_string() == id) {
                    Some((_, currency, minor)) => quote.products.push(OrderableProduct {
                        product_id: id.clone(),
                        sku: format!("SKU-{}", &id[..8]),
                        title: "Lamp".into(),
                        unit_price: Some(Money::new(*currency, *minor)),
                        stock: 10,
                    }),
                    None => quote.missing_product_ids.push(id),
                }
            }
            Ok(quote)
        }
    }

    type Asked = Arc<Mutex<Vec<Option<String>>>>;

    async fn handler(
        products: Option<Vec<(Uuid, &'static str, i64)>>,
    ) -> (OrderHandler, Asked, TempSqlite) {
        let temp = testing::sqlite(SQLITE).await;
        let asked = Asked::default();
        let handler = OrderHandler::new(
            Arc::new(SqliteOrders(temp.db.clone())),
            PriceList {
                products,
                asked: asked.clone(),
            },
            Sealer::new(&MasterKey::generate(), "orders.shipping_address"),
            Arc::new(Notify::new()),
            Duration::from_secs(1),
        );
        (handler, asked, temp)
    }

    fn customer() -> Caller {
        Caller {
            user_id: Uuid::now_v7().to_string(),
            roles: vec!["customer".into()],
            permissions: Default::default(),
            token_id: "token".into(),
        }
    }

    fn request(lines: &[(Uuid, i32)]) -> CreateOrderRequest {
        CreateOrderRequest {
            items: lines
                .iter()
                .map(|(product_id, quantity)| OrderItemRequest {
                    product_id: product_id.to_string(),
                    quantity: *quantity,
                })
                .collect(),
            shipping_address: Some(Address::default()),
            payment_method: "pm_card_visa".into(),
        }
    }

    #[tokio::test]
    async fn checkout_prices_lines_from_catalog_and_a_retry_does_not_ask_again() {
        let (lamp, bulb) = (Uuid::now_v7(), Uuid::now_v7());
        let (handler, asked, _db) =
            handler(Some(vec![(lamp, "EUR", 1250), (bulb, "EUR", 300)])).await;
        let caller = customer();
        let wanted = request(&[(lamp, 2), (bulb, 1)]);
        let accepted = ["de".to_owned(), "en".to_owned()];
        let order = handler
            .create(&caller, "key-1", &wanted, &accepted, Some("de, en;q=0.5"))
            .await
            .unwrap();
        assert_eq!(order.total, Some(Money::new("EUR", 2800)));
        assert_eq!(order.items.len(), 2);
        assert_eq!(order.user_id, caller.user_id);
        assert_eq!(order.status, OrderStatus::Created as i32);
        let again = handler
            .create(&caller, "key-1", &wanted, &accepted, None)
            .await
            .unwrap();
        assert_eq!(again.id, order.id);
        assert_eq!(*asked.lock().unwrap(), [Some("de, en;q=0.5".to_owned())]);
    }

    #[tokio::test]
    async fn checkout_refuses_a_key_reused_for_another_order() {
        let lamp = Uuid::now_v7();
        let (handler, _, _db) = handler(Some(vec![(lamp, "EUR", 1250)])).await;
        let caller = customer();
        handler
            .create(&caller, "key-1", &request(&[(lamp, 1)]), &[], None)
            .await
            .unwrap();
        let error = handler
            .create(&caller, "key-1", &request(&[(lamp, 2)]), &[], None)
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "IDEMPOTENCY_KEY_REUSED");
    }

    #[tokio::test]
    async fn checkout_needs_a_well_formed_idempotency_key() {
        let lamp = Uuid::now_v7();
        let (handler, asked, _db) = handler(Some(vec![(lamp, "EUR", 1250)])).await;
        for key in ["", "with space", &"k".repeat(MAX_KEY_LEN + 1)] {
            let error = handler
                .create(&customer(), key, &request(&[(lamp, 1)]), &[], None)
                .await
                .unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{key:?}");
            assert_eq!(error.violations()[0].field, "Idempotency-Key");
        }
        assert!(asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_catalog_refuses_checkout_as_unavailable() {
        let (handler, _, _db) = handler(None).await;
        let error = handler
            .create(
                &customer(),
                "key-1",
                &request(&[(Uuid::now_v7(), 1)]),
                &[],
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unavailable);
        assert_eq!(error.reason(), "CATALOG_UNAVAILABLE");
    }

    #[tokio::test]
    async fn checkout_refuses_unknown_products_and_mixed_currencies() {
        let (lamp, bulb) = (Uuid::now_v7(), Uuid::now_v7());
        let (handler, _, _db) = handler(Some(vec![(lamp, "EUR", 1250), (bulb, "USD", 300)])).await;
        let unknown = Uuid::now_v7();
        let error = handler
            .create(&customer(), "a", &request(&[(unknown, 1)]), &[], None)
            .await
            .unwrap_err();
        assert_eq!(error.violations()[0].field, "items.product_id");
        assert!(
            error.violations()[0]
                .description
                .contains(&unknown.to_string())
        );
        let error = handler
            .create(
                &customer(),
                "b",
                &request(&[(lamp, 1), (bulb, 1)]),
                &[],
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "MIXED_CURRENCIES");
    }

    #[tokio::test]
    async fn a_watch_tells_the_order_then_each_transition_until_it_is_final() {
        let lamp = Uuid::now_v7();
        let (handler, _, _db) = handler(Some(vec![(lamp, "EUR", 1250)])).await;
        let handler = Arc::new(handler);
        let caller = customer();
        let order = handler
            .create(&caller, "key-1", &request(&[(lamp, 1)]), &[], None)
            .await
            .unwrap();
        let mut watch = handler.watch(&caller, &order.id).await.unwrap();
        let first = watch.next().await.unwrap().unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].order.as_ref().unwrap().id, order.id);
        assert!(first[0].transition.is_none());
        handler
            .cancel(&caller, &order.id, "changed my mind")
            .await
            .unwrap();
        let told = watch.next().await.unwrap().unwrap();
        let transition = told[0].transition.as_ref().unwrap();
        assert_eq!(transition.to, OrderStatus::Cancelled as i32);
        assert_eq!(transition.reason, "changed my mind");
        assert!(watch.next().await.unwrap().is_none());
        let stranger = customer();
        let error = handler.watch(&stranger, &order.id).await.err().unwrap();
        assert_eq!(error.reason(), "ORDER_NOT_FOUND");
    }
}
