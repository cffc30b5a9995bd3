//! The catalog repository contract, on SQLite and on the test bed's CQL server, with the stock
//! hammer: many concurrent reservations on one product never take it below zero.

use std::sync::Arc;

use shopmesh_catalog::store::cql::CqlCatalog;
use shopmesh_catalog::store::sqlite::SqliteCatalog;
use shopmesh_catalog::store::{
    Announce, CQL, CatalogStore, CategoryRecord, Line, ProductRecord, ProductText,
    ReservationState, SQLITE, StockChange, StoreError,
};
use shopmesh_events::Event;
use shopmesh_testkit::contract_suite;
use shopmesh_testkit::storage::{self as testing, TempSqlite};
use uuid::Uuid;

type Subject = (Arc<dyn CatalogStore>, Option<TempSqlite>);

async fn sqlite_store() -> Option<Subject> {
    let temp = testing::sqlite(SQLITE).await;
    Some((Arc::new(SqliteCatalog(temp.db.clone())), Some(temp)))
}

async fn cql_store() -> Option<Subject> {
    let cql = testing::cql(CQL).await?;
    Some((Arc::new(CqlCatalog::new(cql).await.unwrap()), None))
}

fn event(id: Uuid) -> Event {
    Event::new(id.to_string(), "test.ProductEvent", vec![])
}

fn announce() -> Announce {
    Arc::new(|change: &StockChange| event(change.product_id))
}

fn category(slug: &str, parent: Option<Uuid>) -> CategoryRecord {
    CategoryRecord {
        id: Uuid::now_v7(),
        parent_id: parent,
        slug: slug.into(),
        name: slug.into(),
        translations: [("de".to_owned(), format!("{slug}-de"))].into(),
        position: 0,
    }
}

fn product(sku: &str, category: Option<Uuid>, created_at_ms: i64, stock: i32) -> ProductRecord {
    ProductRecord {
        id: Uuid::now_v7(),
        sku: sku.into(),
        category_id: category,
        currency: "EUR".into(),
        amount_minor: 1999,
        stock,
        rating_average: 0.0,
        rating_count: 0,
        text: ProductText {
            title: format!("Product {sku}"),
            description: "A thing".into(),
            attributes: [("colour".to_owned(), "red".to_owned())].into(),
            translations: [(
                "de".to_owned(),
                ("Produkt".to_owned(), "Ein Ding".to_owned()),
            )]
            .into(),
        },
        created_at_ms,
        updated_at_ms: created_at_ms,
        version: 1,
    }
}

async fn categories_are_unique_by_slug_and_deleted_only_when_empty((store, _keep): Subject) {
    let shoes = category("shoes", None);
    store.create_category(&shoes).await.unwrap();
    let boots = category("boots", Some(shoes.id));
    store.create_category(&boots).await.unwrap();
    assert!(matches!(
        store.create_category(&category("shoes", None)).await,
        Err(StoreError::Conflict)
    ));
    let listed = store.categories().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&boots));
    assert!(matches!(
        store.delete_category(shoes.id).await,
        Err(StoreError::Precondition(_))
    ));
    let renamed = CategoryRecord {
        slug: "winter-boots".into(),
        ..boots.clone()
    };
    store.update_category(&renamed).await.unwrap();
    store
        .create_category(&category("boots", None))
        .await
        .unwrap();
    store.delete_category(renamed.id).await.unwrap();
    assert!(matches!(
        store.delete_category(renamed.id).await,
        Err(StoreError::NotFound)
    ));
}

async fn products_are_unique_by_sku_and_change_by_version((store, _keep): Subject) {
    let item = product("SKU-1", None, 1_700_000_000_000, 5);
    store.create_product(&item, &event(item.id)).await.unwrap();
    assert_eq!(store.product(item.id).await.unwrap(), Some(item.clone()));
    let twin = product("SKU-1", None, 1_700_000_000_001, 5);
    assert!(matches!(
        store.create_product(&twin, &event(twin.id)).await,
        Err(StoreError::Conflict)
    ));

    let changed = ProductRecord {
        sku: "SKU-1B".into(),
        amount_minor: 2499,
        version: 2,
        ..item.clone()
    };
    store
        .update_product(&changed, "SKU-1", &event(item.id))
        .await
        .unwrap();
    assert_eq!(store.product(item.id).await.unwrap(), Some(changed.clone()));
    // The old SKU is free again; a stale writer loses.
    let other = product("SKU-1", None, 1_700_000_000_002, 1);
    store
        .create_product(&other, &event(other.id))
        .await
        .unwrap();
    let stale = ProductRecord {
        amount_minor: 1,
        ..changed.clone()
    };
    assert!(matches!(
        store
            .update_product(&stale, "SKU-1B", &event(item.id))
            .await,
        Err(StoreError::Conflict)
    ));
    let taken = ProductRecord {
        sku: "SKU-1".into(),
        version: 3,
        ..changed.clone()
    };
    assert!(matches!(
        store
            .update_product(&taken, "SKU-1B", &event(item.id))
            .await,
        Err(StoreError::Conflict)
    ));

    store
        .delete_product(&changed, &event(item.id))
        .await
        .unwrap();
    assert_eq!(store.product(item.id).await.unwrap(), None);
}

async fn listings_page_in_creation_order_within_category_trees((store, _keep): Subject) {
    let shoes = category("shoes", None);
    let boots = category("boots", Some(shoes.id));
    let hats = category("hats", None);
    for c in [&shoes, &boots, &hats] {
        store.create_category(c).await.unwrap();
    }
    let start = 1_700_000_000_000;
    let day = 24 * 3600 * 1000;
    let mut made = Vec::new();
    for n in 0..9i64 {
        let home = [Some(shoes.id), Some(boots.id), Some(hats.id)][n as usize % 3];
        let item = product(&format!("P{n}"), home, start + n * 20 * day, 1);
        store.create_product(&item, &event(item.id)).await.unwrap();
        made.push(item);
    }
    let page_through = |categories: Option<Vec<Uuid>>| {
        let store = store.clone();
        async move {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = store
                    .list_products(categories.as_deref(), after, 2)
                    .await
                    .unwrap();
                if page.is_empty() {
                    return seen;
                }
                after = page.last().map(|p| (p.created_at_ms, p.id));
                seen.extend(page.into_iter().map(|p| p.sku));
            }
        }
    };
    let all: Vec<String> = made.iter().map(|p| p.sku.clone()).collect();
    assert_eq!(page_through(None).await, all);
    let footwear: Vec<String> = made
        .iter()
        .filter(|p| p.category_id != Some(hats.id))
        .map(|p| p.sku.clone())
        .collect();
    assert_eq!(page_through(Some(vec![shoes.id, boots.id])).await, footwear);
}

async fn reservations_are_all_or_nothing_and_idempotent((store, _keep): Subject) {
    let a = product("A", None, 1_700_000_000_000, 3);
    let b = product("B", None, 1_700_000_000_001, 1);
    for p in [&a, &b] {
        store.create_product(p, &event(p.id)).await.unwrap();
    }
    let order = Uuid::now_v7();
    let lines = [
        Line {
            product_id: a.id,
            quantity: 2,
        },
        Line {
            product_id: b.id,
            quantity: 2,
        },
    ];
    let rejected = store
        .reserve(order, &lines, 1, announce(), None)
        .await
        .unwrap();
    assert_eq!(rejected.state, ReservationState::Rejected);
    assert_eq!(rejected.shortages.len(), 1);
    assert_eq!(
        (
            rejected.shortages[0].product_id,
            rejected.shortages[0].available
        ),
        (b.id, 1)
    );
    assert_eq!(
        store.product(a.id).await.unwrap().unwrap().stock,
        3,
        "nothing was taken"
    );

    let order = Uuid::now_v7();
    let lines = [Line {
        product_id: a.id,
        quantity: 2,
    }];
    let reserved = store
        .reserve(order, &lines, 2, announce(), None)
        .await
        .unwrap();
    assert_eq!(reserved.state, ReservationState::Reserved);
    assert_eq!(
        store
            .reserve(order, &lines, 3, announce(), None)
            .await
            .unwrap(),
        reserved
    );
    assert_eq!(store.product(a.id).await.unwrap().unwrap().stock, 1);
    assert!(matches!(
        store
            .reserve(
                order,
                &[Line {
                    product_id: a.id,
                    quantity: 1
                }],
                4,
                announce(),
                None
            )
            .await,
        Err(StoreError::Conflict)
    ));

    let committed = store.commit(order, 5).await.unwrap();
    assert_eq!(committed.state, ReservationState::Committed);
    assert_eq!(
        store.commit(order, 6).await.unwrap().state,
        ReservationState::Committed
    );
    let released = store.release(order, 7, announce()).await.unwrap();
    assert_eq!(released.state, ReservationState::Released);
    store.release(order, 8, announce()).await.unwrap();
    assert_eq!(
        store.product(a.id).await.unwrap().unwrap().stock,
        3,
        "given back once"
    );

    // A release that comes first keeps a late reservation out.
    let early = Uuid::now_v7();
    assert_eq!(
        store.release(early, 9, announce()).await.unwrap().state,
        ReservationState::Released
    );
    let late = store
        .reserve(early, &lines, 10, announce(), None)
        .await
        .unwrap();
    assert_eq!(late.state, ReservationState::Released);
    assert_eq!(store.product(a.id).await.unwrap().unwrap().stock, 3);
    assert!(matches!(
        store.commit(early, 11).await,
        Err(StoreError::Precondition(_))
    ));
}

async fn the_stock_hammer_never_goes_below_zero((store, _keep): Subject) {
    let item = product("HAMMER", None, 1_700_000_000_000, 20);
    store.create_product(&item, &event(item.id)).await.unwrap();
    let orders: Vec<_> = (0..30)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let lines = [Line {
                    product_id: item.id,
                    quantity: 1,
                }];
                store
                    .reserve(Uuid::now_v7(), &lines, 1, announce(), None)
                    .await
                    .unwrap()
                    .state
            })
        })
        .collect();
    let mut reserved = 0;
    for order in orders {
        if order.await.unwrap() == ReservationState::Reserved {
            reserved += 1;
        }
    }
    assert_eq!(reserved, 20, "exactly the stock was sold");
    assert_eq!(store.product(item.id).await.unwrap().unwrap().stock, 0);
}

async fn ratings_apply_once_and_never_go_back((store, _keep): Subject) {
    let lamp = product("RATED-1", None, 1_000, 5);
    store.create_product(&lamp, &event(lamp.id)).await.unwrap();
    let rated = |from: &ProductRecord, average: f64, count: i32| {
        let mut next = from.clone();
        next.rating_average = average;
        next.rating_count = count;
        next.version += 1;
        next
    };
    let first = rated(&lamp, 4.0, 1);
    assert!(store.rate(&first, 1, &event(lamp.id)).await.unwrap());
    assert_eq!(store.product(lamp.id).await.unwrap().unwrap(), first);
    // The same aggregate again (a redelivery) changes nothing.
    let again = rated(&first, 4.0, 1);
    assert!(!store.rate(&again, 1, &event(lamp.id)).await.unwrap());
    let second = rated(&first, 4.5, 2);
    assert!(store.rate(&second, 2, &event(lamp.id)).await.unwrap());
    // An older aggregate arriving late is ignored.
    let late = rated(&second, 4.0, 1);
    assert!(!store.rate(&late, 1, &event(lamp.id)).await.unwrap());
    assert_eq!(store.product(lamp.id).await.unwrap().unwrap(), second);
    // A rating over a version that changed meanwhile is a conflict.
    let stale = rated(&first, 3.0, 3);
    assert!(matches!(
        store.rate(&stale, 3, &event(lamp.id)).await,
        Err(StoreError::Conflict)
    ));
}

contract_suite! {
    sqlite => sqlite_store,
    cql => cql_store;
    [
        categories_are_unique_by_slug_and_deleted_only_when_empty,
        products_are_unique_by_sku_and_change_by_version,
        listings_page_in_creation_order_within_category_trees,
        reservations_are_all_or_nothing_and_idempotent,
        the_stock_hammer_never_goes_below_zero,
        ratings_apply_once_and_never_go_back,
    ]
}
