//! Reviews end to end through `shopmesh up` and the edge: only a customer with a paid order may
//! review a product, a new review waits for a moderator, others vote it helpful once, and once
//! approved the product's details and search results carry its rating; after a `kill -9` in a
//! burst of reviews the rating still equals a count of the reviews.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shopmesh_proto::shopmesh::catalog::v1::CreateCategoryRequest;
use shopmesh_proto::shopmesh::catalog::v1::catalog_service_client::CatalogServiceClient;
use support::{Answer, Platform, admin, bearer, customer, embedded, http};

/// Creates a product (in a category of its own) through the edge; returns its id.
async fn product(platform: &Platform, token: &str, sku: &str, title: &str) -> String {
    let category = CatalogServiceClient::new(platform.channel("catalog"))
        .create_category(bearer(
            CreateCategoryRequest {
                slug: sku.to_ascii_lowercase(),
                name: format!("Lamps {sku}"),
                ..CreateCategoryRequest::default()
            },
            token.trim_start_matches("Bearer "),
        ))
        .await
        .unwrap()
        .into_inner();
    let created = call(
        platform,
        "POST",
        "/v1/products",
        token,
        json!({
            "sku": sku,
            "title": title,
            "price": {"currency_code": "EUR", "amount_minor": "2500"},
            "category_id": category.id,
            "stock": 10,
        }),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    created.json()["id"].as_str().unwrap().to_owned()
}

/// A JSON call through the edge; `token` may be empty.
async fn call(platform: &Platform, method: &str, path: &str, token: &str, body: Value) -> Answer {
    let headers: Vec<(&str, &str)> = if token.is_empty() {
        Vec::new()
    } else {
        vec![("authorization", token)]
    };
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    http(&platform.edge, method, path, &headers, &body).await
}

fn reason(answer: &Answer) -> String {
    answer.json()["details"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn violated_fields(answer: &Answer) -> Vec<String> {
    answer.json()["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|detail| detail["field_violations"].as_array())
        .flatten()
        .filter_map(|v| v["field"].as_str().map(str::to_owned))
        .collect()
}

/// Polls `probe` every 100 ms until it returns `Some`, for at most `patience`.
async fn within<T, F, Fut>(patience: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Places an order of one `product` and waits until it is paid.
async fn buy(platform: &Platform, token: &str, product: &str) {
    let placed = http(
        &platform.edge,
        "POST",
        "/v1/orders",
        &[
            ("authorization", token),
            ("idempotency-key", "review-order-1"),
        ],
        &serde_json::to_vec(&json!({
            "items": [{"product_id": product, "quantity": 1}],
            "shipping_address": {
                "name": "Ada Lovelace", "line1": "12 St James's Square", "city": "London",
                "postal_code": "SW1Y 4JH", "country": "GB"
            },
            "payment_method": "pm_card_visa",
        }))
        .unwrap(),
    )
    .await;
    assert_eq!(placed.status, 202, "{placed:?}");
    let id = placed.json()["id"].as_str().unwrap().to_owned();
    within(Duration::from_secs(20), "payment", || async {
        let order = call(
            platform,
            "GET",
            &format!("/v1/orders/{id}"),
            token,
            Value::Null,
        )
        .await;
        (order.json()["status"] == "ORDER_STATUS_PAID").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_verified_purchasers_review_is_moderated_and_rates_the_product() {
    let (platform, _dir) = embedded().await;
    let staff = admin(&platform).await;
    let lamp = product(&platform, &staff, "GLOW-1", "Glowbug reading lamp").await;
    let ada = customer(&platform, "ada@example.com").await;
    let reviews = format!("/v1/products/{lamp}/reviews");
    let review = json!({
        "rating": 5,
        "title": "Bright <b>and</b> warm",
        "body": "<script>alert('hi')</script> Lights my desk.",
    });

    // Bad input is refused field by field, before anything else.
    let bad = call(&platform, "POST", &reviews, &ada, json!({"rating": 6})).await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(violated_fields(&bad), ["rating"]);

    // Not bought yet.
    let refused = call(&platform, "POST", &reviews, &ada, review.clone()).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(reason(&refused), "NOT_A_VERIFIED_PURCHASER");

    // Bought and paid: the same review is accepted once the purchase has been learnt.
    buy(&platform, &ada, &lamp).await;
    let created = within(Duration::from_secs(10), "the purchase to count", || async {
        let answer = call(&platform, "POST", &reviews, &ada, review.clone()).await;
        (answer.status != 403).then_some(answer)
    })
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let created = created.json();
    assert_eq!(created["status"], "REVIEW_STATUS_PENDING");
    assert_eq!(
        created["body"], "<script>alert('hi')</script> Lights my desk.",
        "text comes back as written, as JSON text"
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let again = call(&platform, "POST", &reviews, &ada, review.clone()).await;
    assert_eq!(again.status, 409, "{again:?}");
    assert_eq!(reason(&again), "REVIEW_EXISTS");

    // Pending: its author sees it, others do not, and it counts for nothing yet.
    let own = call(&platform, "GET", &reviews, &ada, Value::Null)
        .await
        .json();
    assert_eq!(own["reviews"].as_array().unwrap().len(), 1);
    let public = call(&platform, "GET", &reviews, "", Value::Null)
        .await
        .json();
    assert!(public["reviews"].as_array().unwrap().is_empty(), "{public}");

    // Customers cannot moderate; the administrator finds it in the queue and approves it.
    let approve = json!({"status": "REVIEW_STATUS_PUBLISHED"});
    let moderate = format!("/v1/reviews/{id}:moderate");
    let forbidden = call(&platform, "POST", &moderate, &ada, approve.clone()).await;
    assert_eq!(forbidden.status, 403, "{forbidden:?}");
    let queue = call(
        &platform,
        "GET",
        "/v1/reviews:moderation",
        &staff,
        Value::Null,
    )
    .await;
    assert_eq!(queue.status, 200, "{queue:?}");
    assert_eq!(queue.json()["reviews"][0]["id"], id.as_str());
    let approved = call(&platform, "POST", &moderate, &staff, approve).await;
    assert_eq!(approved.status, 200, "{approved:?}");

    let public = call(&platform, "GET", &reviews, "", Value::Null)
        .await
        .json();
    assert_eq!(public["reviews"][0]["id"], id.as_str());
    assert_eq!(public["rating"]["count"], 1);
    assert_eq!(public["histogram"]["stars"], json!([0, 0, 0, 0, 1]));

    // Another customer finds it helpful, once; listings sort by it.
    let bob = customer(&platform, "bob@example.com").await;
    let helpful = format!("/v1/reviews/{id}:helpful");
    let voted = call(&platform, "POST", &helpful, &bob, json!({})).await;
    assert_eq!(voted.status, 200, "{voted:?}");
    assert_eq!(voted.json()["helpful_count"], 1);
    let twice = call(&platform, "POST", &helpful, &bob, json!({})).await;
    assert_eq!(twice.status, 409, "{twice:?}");
    assert_eq!(reason(&twice), "ALREADY_VOTED");
    let sorted = call(
        &platform,
        "GET",
        &format!("{reviews}?sort=REVIEW_SORT_MOST_HELPFUL"),
        "",
        Value::Null,
    )
    .await;
    assert_eq!(sorted.status, 200, "{sorted:?}");
    assert_eq!(sorted.json()["reviews"][0]["helpful_count"], 1);

    // The rating reaches the product's details and its search results.
    within(
        Duration::from_secs(5),
        "the rating in the details",
        || async {
            let details = call(
                &platform,
                "GET",
                &format!("/v1/products/{lamp}"),
                "",
                Value::Null,
            )
            .await
            .json();
            (details["rating"]["count"] == 1 && details["rating"]["average"] == 5.0).then_some(())
        },
    )
    .await;
    within(Duration::from_secs(5), "the rating in search", || async {
        let found = call(
            &platform,
            "GET",
            "/v1/products:search?q=glowbug&min_rating=4.5&sort=rating",
            "",
            Value::Null,
        )
        .await
        .json();
        let first = &found["results"][0];
        (first["id"] == lamp.as_str() && first["rating"]["count"] == 1).then_some(())
    })
    .await;
}

/// The published reviews of `product` as listed, and the rating the listing reports.
async fn listed(platform: &Platform, product: &str) -> (usize, i64) {
    let page = call(
        platform,
        "GET",
        &format!("/v1/products/{product}/reviews?page_size=100"),
        "",
        Value::Null,
    )
    .await;
    assert_eq!(page.status, 200, "{page:?}");
    let page = page.json();
    (
        page["reviews"].as_array().unwrap().len(),
        page["rating"]["count"].as_i64().unwrap_or(0),
    )
}

#[tokio::test]
async fn a_kill_in_a_burst_of_reviews_never_miscounts() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ["services.reviews.post_moderation=true".to_owned()];
    let platform = Platform::start(dir.path(), &settings).await;
    let staff = admin(&platform).await;
    let lamp = product(&platform, &staff, "BURST-1", "Burst lamp").await;
    let mut buyers = Vec::new();
    for n in 0..8 {
        let token = customer(&platform, &format!("buyer{n}@example.com")).await;
        buy(&platform, &token, &lamp).await;
        buyers.push(token);
    }
    let reviews = format!("/v1/products/{lamp}/reviews");
    // A burst of reviews, and SIGKILL in the middle of it.
    let edge = platform.edge.clone();
    let burst: Vec<_> = buyers
        .iter()
        .enumerate()
        .map(|(n, token)| {
            let (edge, token, path) = (edge.clone(), token.clone(), reviews.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(40 * n as u64)).await;
                let body = json!({"rating": 1 + (n % 5), "body": format!("review {n}")});
                http(
                    &edge,
                    "POST",
                    &path,
                    &[("authorization", token.as_str())],
                    &serde_json::to_vec(&body).unwrap(),
                )
                .await
            })
        })
        .collect();
    // Killed once some reviews are in, with the rest still coming.
    within(Duration::from_secs(10), "the first reviews", || async {
        (listed(&platform, &lamp).await.0 >= 2).then_some(())
    })
    .await;
    platform.kill().await;
    // Requests the kill cut off fail in their tasks (the helper panics there); that is the point.
    for task in burst {
        let _ = task.await;
    }

    // After a restart the rating equals a count of the reviews, and catalog agrees.
    let platform = Platform::start(dir.path(), &settings).await;
    let (reviewed, counted) = listed(&platform, &lamp).await;
    assert_eq!(
        reviewed as i64, counted,
        "the aggregate is a count of the reviews"
    );
    // Every buyer tries again (once their purchase is known): a review that was stored is
    // refused as a duplicate.
    for (n, token) in buyers.iter().enumerate() {
        let body = json!({"rating": 1 + (n % 5), "body": format!("review {n}")});
        let again = within(Duration::from_secs(10), "the purchase to count", || async {
            let answer = call(&platform, "POST", &reviews, token, body.clone()).await;
            (answer.status != 403).then_some(answer)
        })
        .await;
        assert!(
            again.status == 201 || reason(&again) == "REVIEW_EXISTS",
            "{again:?}"
        );
    }
    let (reviewed, counted) = listed(&platform, &lamp).await;
    assert_eq!((reviewed, counted), (8, 8));
    within(Duration::from_secs(5), "catalog to agree", || async {
        let details = call(
            &platform,
            "GET",
            &format!("/v1/products/{lamp}"),
            "",
            Value::Null,
        )
        .await
        .json();
        (details["rating"]["count"] == 8).then_some(())
    })
    .await;
    // 1+2+3+4+5+1+2+3 stars.
    let details = call(
        &platform,
        "GET",
        &format!("/v1/products/{lamp}"),
        "",
        Value::Null,
    )
    .await
    .json();
    assert_eq!(details["rating"]["average"], 21.0 / 8.0);
}
