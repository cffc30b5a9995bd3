//! The platform's topics, as listed in `proto/shopmesh/events/v1/events.proto`: one name per
//! topic, so producers and consumers cannot drift apart.

/// `ProductEvent`s keyed by product id; catalog publishes, every catalog replica follows.
pub const PRODUCTS: &str = "shopmesh.products";
/// `OrderEvent`s keyed by order id; orders publishes, catalog, payments and notifications follow.
pub const ORDERS: &str = "shopmesh.orders";
/// `StockEvent`s keyed by order id; catalog publishes the outcome of a reservation.
pub const STOCK: &str = "shopmesh.stock";
/// `PaymentEvent`s keyed by order id; payments publishes the outcome of charges and refunds.
pub const PAYMENTS: &str = "shopmesh.payments";
/// `ReviewEvent`s keyed by product id; reviews publishes rating aggregates (catalog follows) and
/// rejections.
pub const REVIEWS: &str = "shopmesh.reviews";
/// `UserEvent`s keyed by user id.
pub const USERS: &str = "shopmesh.users";
