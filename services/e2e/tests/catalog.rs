//! The catalog end to end through `shopmesh up`: an administrator builds a category tree and
//! products, shoppers browse them through the edge in their language, and the order pipeline's
//! stock calls hold under concurrency.

mod support;

use shopmesh_proto::shopmesh::catalog::v1::catalog_service_client::CatalogServiceClient;
use shopmesh_proto::shopmesh::catalog::v1::{
    CreateCategoryRequest, ReserveStockRequest, StockLine, StockReservationState,
};
use support::{Answer, PASSWORD, Platform, admin, bearer, embedded, http};

fn catalog(platform: &Platform) -> CatalogServiceClient<tonic::transport::Channel> {
    CatalogServiceClient::new(platform.channel("catalog"))
}

async fn create_product(platform: &Platform, token: &str, body: serde_json::Value) -> Answer {
    http(
        &platform.edge,
        "POST",
        "/v1/products",
        &[("authorization", token)],
        &serde_json::to_vec(&body).unwrap(),
    )
    .await
}

#[tokio::test]
async fn administrators_build_the_catalog_and_shoppers_browse_it() {
    let (platform, _dir) = embedded().await;
    let token = admin(&platform).await;
    let token_header = token.clone();
    let token_value = token.trim_start_matches("Bearer ");
    let shoes = catalog(&platform)
        .create_category(bearer(
            CreateCategoryRequest {
                slug: "test-shoes".into(),
                name: "Shoes".into(),
                translations: [("de".to_owned(), "Schuhe".to_owned())].into(),
                ..CreateCategoryRequest::default()
            },
            token_value,
        ))
        .await
        .unwrap()
        .into_inner();
    let boots = catalog(&platform)
        .create_category(bearer(
            CreateCategoryRequest {
                parent_id: shoes.id.clone(),
                slug: "test-boots".into(),
                name: "Boots".into(),
                ..CreateCategoryRequest::default()
            },
            token_value,
        ))
        .await
        .unwrap()
        .into_inner();

    let mut ids = Vec::new();
    for (n, category) in [&shoes.id, &boots.id, &shoes.id].iter().enumerate() {
        let created = create_product(
            &platform,
            &token,
            serde_json::json!({
                "sku": format!("SHOE-{n}"),
                "title": format!("Trail shoe {n}"),
                "description": "Grippy and light.",
                "price": {"currency_code": "EUR", "amount_minor": "8999"},
                "category_id": category,
                "attributes": {"colour": "green"},
                "stock": 5,
                "translations": {"de": {"title": format!("Laufschuh {n}"), "description": "Griffig."}},
            }),
        )
        .await;
        assert_eq!(created.status, 201, "{created:?}");
        ids.push(created.json()["id"].as_str().unwrap().to_owned());
    }
    let duplicate = create_product(
        &platform,
        &token,
        serde_json::json!({"sku": "SHOE-0", "title": "Again", "category_id": shoes.id, "price": {"currency_code": "EUR", "amount_minor": "1"}}),
    )
    .await;
    assert_eq!(duplicate.status, 409);

    // A customer may browse but not create.
    platform.register("kay@example.com").await.unwrap();
    let customer = platform.login("kay@example.com", PASSWORD).await.unwrap();
    let refused = create_product(
        &platform,
        &format!("Bearer {}", customer.access_token),
        serde_json::json!({"sku": "X-1", "title": "Nope", "category_id": shoes.id, "price": {"currency_code": "EUR", "amount_minor": "1"}}),
    )
    .await;
    assert_eq!(refused.status, 403);

    let categories = http(
        &platform.edge,
        "GET",
        "/v1/categories",
        &[("accept-language", "de")],
        b"",
    )
    .await;
    let categories = categories.json();
    let names: Vec<&str> = categories["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"Schuhe"), "{names:?}");

    // Pages of two, in creation order; the shoes category includes its boots.
    let first = http(
        &platform.edge,
        "GET",
        &format!("/v1/products?category={}&page_size=2", shoes.id),
        &[],
        b"",
    )
    .await;
    assert_eq!(first.status, 200, "{first:?}");
    let token = first.json()["next_page_token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    let second = http(
        &platform.edge,
        "GET",
        &format!(
            "/v1/products?category={}&page_size=2&page_token={token}",
            shoes.id
        ),
        &[],
        b"",
    )
    .await;
    let listed: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|page| {
            page.json()["products"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(second.json()["next_page_token"], "");
    let only_boots = http(
        &platform.edge,
        "GET",
        &format!("/v1/products?category={}", boots.id),
        &[],
        b"",
    )
    .await;
    assert_eq!(only_boots.json()["products"].as_array().unwrap().len(), 1);

    let german = http(
        &platform.edge,
        "GET",
        &format!("/v1/products/{}", ids[0]),
        &[("accept-language", "de-CH, en;q=0.5")],
        b"",
    )
    .await;
    assert_eq!(german.json()["title"], "Laufschuh 0");
    assert_eq!(german.json()["locale"], "de");
    assert_eq!(german.json()["price"]["amount_minor"], "8999");

    // An update is visible in the details at once (the detail cache forgets it).
    let renamed = http(
        &platform.edge,
        "PATCH",
        &format!("/v1/products/{}", ids[0]),
        &[("authorization", &token_header)],
        &serde_json::to_vec(&serde_json::json!({"title": "Trail shoe, renamed"})).unwrap(),
    )
    .await;
    assert_eq!(renamed.status, 200, "{renamed:?}");
    let details = http(
        &platform.edge,
        "GET",
        &format!("/v1/products/{}", ids[0]),
        &[],
        b"",
    )
    .await;
    assert_eq!(details.json()["title"], "Trail shoe, renamed");
    assert_eq!(details.json()["stock"], 5, "fields outside the mask stay");

    let bad_token = http(
        &platform.edge,
        "GET",
        "/v1/products?page_token=nonsense",
        &[],
        b"",
    )
    .await;
    assert_eq!(bad_token.status, 400);
    platform.stop().await;
}

#[tokio::test]
async fn concurrent_orders_never_oversell_a_product() {
    let (platform, _dir) = embedded().await;
    let token = admin(&platform).await;
    let category = catalog(&platform)
        .create_category(bearer(
            CreateCategoryRequest {
                slug: "limited".into(),
                name: "Limited editions".into(),
                ..CreateCategoryRequest::default()
            },
            token.trim_start_matches("Bearer "),
        ))
        .await
        .unwrap()
        .into_inner();
    let created = create_product(
        &platform,
        &token,
        serde_json::json!({"sku": "LAST-FEW", "title": "Limited", "category_id": category.id, "price": {"currency_code": "EUR", "amount_minor": "100"}, "stock": 7}),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            let mut client = catalog(&platform);
            let id = id.clone();
            tokio::spawn(async move {
                client
                    .reserve_stock(ReserveStockRequest {
                        order_id: uuid::Uuid::now_v7().to_string(),
                        items: vec![StockLine {
                            product_id: id,
                            quantity: 1,
                        }],
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .state
            })
        })
        .collect();
    let mut reserved = 0;
    for attempt in attempts {
        if attempt.await.unwrap() == StockReservationState::Reserved as i32 {
            reserved += 1;
        }
    }
    assert_eq!(reserved, 7);
    let product = http(
        &platform.edge,
        "GET",
        &format!("/v1/products/{id}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(product.json()["stock"], 0);
    platform.stop().await;
}

#[tokio::test]
async fn the_demo_catalog_lists_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(
        dir.path(),
        &["services.catalog.demo_catalog=true".to_owned()],
    )
    .await;
    let mut seen = std::collections::BTreeSet::new();
    let mut path = "/v1/products?page_size=100".to_owned();
    loop {
        let page = http(
            &platform.edge,
            "GET",
            &path,
            &[("accept-language", "de")],
            b"",
        )
        .await;
        assert_eq!(page.status, 200);
        let body = page.json();
        for product in body["products"].as_array().unwrap() {
            let price: i64 = product["price"]["amount_minor"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((100..=50_000).contains(&price), "{price}");
            assert_eq!(product["locale"], "de");
            assert!(
                seen.insert(product["id"].as_str().unwrap().to_owned()),
                "listed twice"
            );
        }
        match body["next_page_token"].as_str().unwrap() {
            "" => break,
            token => path = format!("/v1/products?page_size=100&page_token={token}"),
        }
    }
    assert!(seen.len() >= 200, "a few hundred products ({})", seen.len());
    let categories = http(&platform.edge, "GET", "/v1/categories", &[], b"").await;
    assert!(categories.json()["categories"].as_array().unwrap().len() >= 10);
    platform.stop().await;
}

/// Searches through the edge until `check` accepts the answer (the index follows writes
/// through events), or fails after `patience`.
async fn search_until(
    platform: &Platform,
    query: &str,
    patience: std::time::Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let answer = http(
            &platform.edge,
            "GET",
            &format!("/v1/products:search?{query}"),
            &[],
            b"",
        )
        .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let body = answer.json();
        if check(&body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "search never answered as expected: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn search_tolerates_typos_filters_facets_and_follows_updates() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(
        dir.path(),
        &["services.catalog.demo_catalog=true".to_owned()],
    )
    .await;
    let patience = std::time::Duration::from_secs(10);
    let found = |body: &serde_json::Value| body["total"].as_i64().unwrap_or(0) > 0;
    let exact = search_until(&platform, "q=kestrel", patience, found).await;
    // Two letters swapped still finds the brand.
    let typo = search_until(&platform, "q=kestrle", patience, found).await;
    assert_eq!(typo["total"], exact["total"]);
    for hit in typo["results"].as_array().unwrap() {
        assert!(hit["title"].as_str().unwrap().contains("Kestrel"), "{hit}");
    }
    assert!(!typo["facets"]["categories"].as_array().unwrap().is_empty());
    assert!(typo["facets"]["categories"][0]["label"].as_str().is_some());

    let ranged = search_until(
        &platform,
        "min_price=1000&max_price=5000&page_size=100",
        patience,
        found,
    )
    .await;
    for hit in ranged["results"].as_array().unwrap() {
        let price: i64 = hit["price"]["amount_minor"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1000..=5000).contains(&price), "{price}");
    }
    let bad = http(
        &platform.edge,
        "GET",
        "/v1/products:search?min_price=9&max_price=1",
        &[],
        b"",
    )
    .await;
    assert_eq!(bad.status, 400);

    // An administrator's rename reaches search through the product events.
    let token = admin(&platform).await;
    let id = exact["results"][0]["id"].as_str().unwrap().to_owned();
    let renamed = http(
        &platform.edge,
        "PATCH",
        &format!("/v1/products/{id}"),
        &[("authorization", &token)],
        &serde_json::to_vec(&serde_json::json!({"title": "Zephyrine travel kettle"})).unwrap(),
    )
    .await;
    assert_eq!(renamed.status, 200, "{renamed:?}");
    let after = search_until(
        &platform,
        "q=zephyrine",
        std::time::Duration::from_secs(3),
        found,
    )
    .await;
    assert_eq!(after["results"][0]["id"], id.as_str());
    platform.stop().await;
}

#[tokio::test]
async fn seeding_adds_generated_products_that_search_finds() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(dir.path(), &[]).await;
    let seed = |count: &str| {
        let output = std::process::Command::new(shopmesh_testkit::binaries::path("shopmesh"))
            .args(["seed", "--products", count, "--data-dir"])
            .arg(dir.path())
            .args(["--set", "log.level=\"warn\""])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    assert!(seed("60").starts_with("added 60 of 60 products"));
    assert!(
        seed("60").starts_with("added 0 of 60 products"),
        "a second run adds nothing"
    );
    let listed = search_until(
        &platform,
        "page_size=100",
        std::time::Duration::from_secs(10),
        |body| body["total"].as_i64() == Some(60),
    )
    .await;
    assert_eq!(listed["results"].as_array().unwrap().len(), 60);
    platform.stop().await;
}

#[tokio::test]
async fn importing_json_lines_adds_the_valid_products_and_explains_each_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(dir.path(), &[]).await;
    let token = admin(&platform).await;
    let lamps = catalog(&platform)
        .create_category(bearer(
            CreateCategoryRequest {
                slug: "lamps".into(),
                name: "Lamps".into(),
                ..CreateCategoryRequest::default()
            },
            token.trim_start_matches("Bearer "),
        ))
        .await
        .unwrap()
        .into_inner();
    let product = |sku: &str, title: &str| {
        serde_json::json!({
            "sku": sku,
            "title": title,
            "category_id": lamps.id,
            "description": "Imported for the test.",
            "price": {"currency_code": "EUR", "amount_minor": "4990"},
            "attributes": {"colour": "teal"},
            "stock": 12,
            "translations": {"de": {"title": format!("{title} (de)")}},
        })
        .to_string()
    };
    let lines = [
        product("IMP-1", "Quillback lantern"),
        product("IMP-2", "Quillback stove"),
        String::new(),
        r#"{"sku": "IMP-3", "title": "No price"}"#.to_owned(),
        r#"{"sku": "IMP-4", "title": "Typo", "price": {"currency_code": "EUR", "amount_minor": "1"}, "stokc": 3}"#.to_owned(),
        "{\"sku\": \"IMP-5\"".to_owned(),
        product("IMP-1", "Same SKU again"),
        format!(r#"{{"sku": "IMP-6", "title": "{}"}}"#, "x".repeat(1024 * 1024)),
        r#"{"sku": "IMP-7", "title": "Nowhere", "category_id": "0190a4c6-2b4e-7c1a-9f3e-0123456789ab", "price": {"currency_code": "EUR", "amount_minor": "1"}}"#.to_owned(),
        product("IMP-8", "Quillback kettle"),
    ];
    let file = dir.path().join("products.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let import = || {
        std::process::Command::new(shopmesh_testkit::binaries::path("shopmesh"))
            .args(["catalog", "import"])
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--set", "log.level=\"warn\""])
            .output()
            .unwrap()
    };
    let output = import();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        !output.status.success(),
        "rejected lines make the exit status non-zero"
    );
    assert!(
        stdout.starts_with("imported 3 of 9 products from"),
        "{stdout}"
    );
    assert!(stdout.contains("6 line(s) rejected"), "{stdout}");
    for (line, reason) in [
        (4, "price"),
        (5, "stokc"),
        (6, "not a product"),
        (7, "SKU_TAKEN"),
        (8, "longer than 1048576 bytes"),
        (9, "no such category"),
    ] {
        let rejection = stderr
            .lines()
            .map(|l| l.trim_start_matches('\r'))
            .find(|l| l.starts_with(&format!("line {line}: ")))
            .unwrap_or_else(|| panic!("no rejection of line {line}: {stderr}"));
        assert!(rejection.contains(reason), "{rejection}");
    }

    // The imported products reach search through the product events, with their texts.
    let found = search_until(
        &platform,
        "q=quillback",
        std::time::Duration::from_secs(10),
        |body| body["total"].as_i64() == Some(3),
    )
    .await;
    let id = found["results"][0]["id"].as_str().unwrap().to_owned();
    let german = http(
        &platform.edge,
        "GET",
        &format!("/v1/products/{id}"),
        &[("accept-language", "de")],
        b"",
    )
    .await;
    assert!(german.json()["title"].as_str().unwrap().ends_with("(de)"));
    assert_eq!(german.json()["stock"], 12);

    // A second import adds nothing: every SKU is taken.
    let again = String::from_utf8(import().stdout).unwrap();
    assert!(again.starts_with("imported 0 of 9 products"), "{again}");
    platform.stop().await;
}
