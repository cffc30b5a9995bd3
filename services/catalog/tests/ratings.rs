//! Ratings from reviews reach a product: a `ReviewRatingChanged` sets the product's rating
//! (details show it at once, the change goes out as a product event), and a repeated or older
//! aggregate changes nothing.

use std::sync::Arc;

use prost::Message as _;
use shopmesh_catalog::handler::CatalogHandler;
use shopmesh_catalog::ratings;
use shopmesh_catalog::store::SQLITE;
use shopmesh_catalog::store::sqlite::SqliteCatalog;
use shopmesh_events::Event;
use shopmesh_proto::shopmesh::catalog::v1::CreateProductRequest;
use shopmesh_proto::shopmesh::common::v1::{Money, RatingSummary};
use shopmesh_proto::shopmesh::events::v1::{ReviewEvent, ReviewRatingChanged, review_event};
use shopmesh_testkit::storage as testing;
use tokio::sync::Notify;

fn rating_changed(product_id: &str, average: f64, count: i32, version: i64) -> Event {
    Event::new(
        product_id,
        "shopmesh.events.v1.ReviewEvent",
        ReviewEvent {
            meta: None,
            product_id: product_id.to_owned(),
            payload: Some(review_event::Payload::RatingChanged(ReviewRatingChanged {
                rating: Some(RatingSummary { average, count }),
                version,
                stars: vec![0, 0, 0, count, 0],
            })),
        }
        .encode_to_vec(),
    )
}

#[tokio::test]
async fn a_products_rating_follows_the_newest_aggregate_once() {
    let temp = testing::sqlite(SQLITE).await;
    let handler = CatalogHandler::new(
        Arc::new(SqliteCatalog(temp.db.clone())),
        None,
        "en".into(),
        Arc::new(Notify::new()),
    );
    let product = handler
        .create(CreateProductRequest {
            sku: "LAMP-1".into(),
            title: "Lamp".into(),
            price: Some(Money {
                currency_code: "EUR".into(),
                amount_minor: 2500,
            }),
            stock: 3,
            ..CreateProductRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(product.rating.unwrap().count, 0);
    // Read once, so the detail cache holds the unrated product.
    handler.product(&product.id, &[]).await.unwrap();

    let second = rating_changed(&product.id, 4.5, 2, 2);
    ratings::handle(&handler, &rating_changed(&product.id, 4.0, 1, 1))
        .await
        .unwrap();
    ratings::handle(&handler, &second).await.unwrap();
    ratings::handle(&handler, &second).await.unwrap();
    ratings::handle(&handler, &rating_changed(&product.id, 4.0, 1, 1))
        .await
        .unwrap();
    let rated = handler.product(&product.id, &[]).await.unwrap();
    assert_eq!(
        rated.rating.unwrap(),
        RatingSummary {
            average: 4.5,
            count: 2
        }
    );
    let record = handler.store().product(product.id.parse().unwrap()).await;
    assert_eq!(record.unwrap().unwrap().version, 3, "two changes, not four");

    // An aggregate for a product that is gone is dropped, not retried.
    ratings::handle(
        &handler,
        &rating_changed("00000000-0000-7000-8000-000000000000", 5.0, 1, 1),
    )
    .await
    .unwrap();
}
