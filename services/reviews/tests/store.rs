//! The reviews repository contract, on SQLite and on the test bed's CQL server: purchases come
//! from paid orders once per event, one review per user and product, changes apply over the
//! version read, the aggregate is a recount of published reviews announced with each change,
//! listings show the published reviews and the viewer's own, and the moderation queues.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shopmesh_events::Event;
use shopmesh_reviews::store::cql::CqlReviews;
use shopmesh_reviews::store::sqlite::SqliteReviews;
use shopmesh_reviews::store::{
    Aggregate, Announce, CQL, PlacedOrder, Processed, Queue, Ranking, ReviewRecord, ReviewStore,
    SQLITE, Sort, Status, StoreError,
};
use shopmesh_testkit::contract_suite;
use shopmesh_testkit::storage::{self as testing, TempSqlite};
use uuid::Uuid;

type Subject = (Arc<dyn ReviewStore>, Option<TempSqlite>);

async fn sqlite_store() -> Option<Subject> {
    let temp = testing::sqlite(SQLITE).await;
    Some((Arc::new(SqliteReviews(temp.db.clone())), Some(temp)))
}

async fn cql_store() -> Option<Subject> {
    let cql = testing::cql(CQL).await?;
    Some((Arc::new(CqlReviews::new(cql).await.unwrap()), None))
}

/// An announcer that counts the aggregates it announced.
fn announcer() -> (Announce, Arc<AtomicUsize>) {
    let told = Arc::new(AtomicUsize::new(0));
    let counter = told.clone();
    let announce: Announce = Arc::new(move |aggregate: &Aggregate| {
        counter.fetch_add(1, Ordering::SeqCst);
        Event::new(
            aggregate.product_id.to_string(),
            "test.ReviewEvent",
            aggregate.version.to_le_bytes().to_vec(),
        )
    });
    (announce, told)
}

fn review(product_id: Uuid, user_id: Uuid, rating: i32, status: Status, at: i64) -> ReviewRecord {
    ReviewRecord {
        id: Uuid::now_v7(),
        product_id,
        user_id,
        status,
        rating,
        title: "<b>Bright</b> & \"warm\"".into(),
        body: "<script>alert(1)</script> Works well.".into(),
        language: "en".into(),
        moderation_reason: String::new(),
        report_count: 0,
        reported_at_ms: None,
        helpful_count: 0,
        created_at_ms: at,
        updated_at_ms: at,
        version: 1,
    }
}

fn changed(previous: &ReviewRecord, edit: impl FnOnce(&mut ReviewRecord)) -> ReviewRecord {
    let mut next = previous.clone();
    edit(&mut next);
    next.version = previous.version + 1;
    next.updated_at_ms = previous.updated_at_ms + 1;
    next
}

fn processed(event_id: &str) -> Processed<'_> {
    Processed {
        subscription: "reviews-purchases",
        event_id,
    }
}

async fn purchases_come_from_paid_orders_once((store, _db): Subject) {
    let (ada, lamp, bulb) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let order = PlacedOrder {
        order_id: Uuid::now_v7(),
        user_id: ada,
        product_ids: vec![lamp, bulb],
    };
    assert!(store.order_placed(&order, processed("e1")).await.unwrap());
    assert!(!store.order_placed(&order, processed("e1")).await.unwrap());
    assert!(
        !store.purchased(ada, lamp).await.unwrap(),
        "placed is not paid"
    );
    assert!(
        store
            .order_paid(order.order_id, processed("e2"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .order_paid(order.order_id, processed("e2"))
            .await
            .unwrap()
    );
    assert!(
        store
            .order_paid(order.order_id, processed("e3"))
            .await
            .unwrap()
    );
    assert!(store.purchased(ada, lamp).await.unwrap());
    assert!(store.purchased(ada, bulb).await.unwrap());
    assert!(!store.purchased(Uuid::now_v7(), lamp).await.unwrap());
    assert!(!store.purchased(ada, Uuid::now_v7()).await.unwrap());
    assert!(matches!(
        store.order_paid(Uuid::now_v7(), processed("e4")).await,
        Err(StoreError::NotFound)
    ));
    // The failed event was not recorded: once the order is known, a redelivery applies.
    let late = PlacedOrder {
        order_id: Uuid::now_v7(),
        user_id: ada,
        product_ids: vec![Uuid::now_v7()],
    };
    assert!(matches!(
        store.order_paid(late.order_id, processed("e5")).await,
        Err(StoreError::NotFound)
    ));
    store.order_placed(&late, processed("e6")).await.unwrap();
    assert!(
        store
            .order_paid(late.order_id, processed("e5"))
            .await
            .unwrap()
    );
    assert!(store.purchased(ada, late.product_ids[0]).await.unwrap());
}

async fn one_review_per_user_and_product((store, _db): Subject) {
    let (announce, _) = announcer();
    let (ada, bob, lamp) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let first = review(lamp, ada, 4, Status::Pending, 1_000);
    assert_eq!(store.create(&first, &announce).await.unwrap(), None);
    assert_eq!(store.review(first.id).await.unwrap(), Some(first.clone()));
    let again = review(lamp, ada, 5, Status::Pending, 2_000);
    assert!(matches!(
        store.create(&again, &announce).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.review(again.id).await.unwrap(), None);
    store
        .create(&review(lamp, bob, 3, Status::Pending, 3_000), &announce)
        .await
        .unwrap();
    store
        .create(
            &review(Uuid::now_v7(), ada, 3, Status::Pending, 4_000),
            &announce,
        )
        .await
        .unwrap();
    // Once deleted, the author may review the product again.
    store.delete(&first, &announce).await.unwrap();
    assert_eq!(store.review(first.id).await.unwrap(), None);
    store.create(&again, &announce).await.unwrap();
}

async fn changes_apply_over_the_version_read((store, _db): Subject) {
    let (announce, _) = announcer();
    let original = review(Uuid::now_v7(), Uuid::now_v7(), 4, Status::Pending, 1_000);
    store.create(&original, &announce).await.unwrap();
    let edited = changed(&original, |r| {
        r.rating = 2;
        r.body = "Broke after a week.".into();
    });
    store
        .update(&original, &edited, &[], &announce)
        .await
        .unwrap();
    assert_eq!(
        store.review(original.id).await.unwrap(),
        Some(edited.clone())
    );
    let stale = changed(&original, |r| r.rating = 5);
    assert!(matches!(
        store.update(&original, &stale, &[], &announce).await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store.delete(&original, &announce).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.review(original.id).await.unwrap(), Some(edited));
}

async fn the_aggregate_recounts_published_reviews_with_each_change((store, _db): Subject) {
    let (announce, told) = announcer();
    let lamp = Uuid::now_v7();
    let empty = store.aggregate(lamp).await.unwrap();
    assert_eq!((empty.count(), empty.version), (0, 0));

    let pending = review(lamp, Uuid::now_v7(), 2, Status::Pending, 1_000);
    assert_eq!(store.create(&pending, &announce).await.unwrap(), None);
    assert_eq!(
        told.load(Ordering::SeqCst),
        0,
        "a pending review counts for nothing"
    );

    let approved = changed(&pending, |r| r.status = Status::Published);
    let counted = store
        .update(&pending, &approved, &[], &announce)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((counted.stars, counted.version), ([0, 1, 0, 0, 0], 1));

    let five = review(lamp, Uuid::now_v7(), 5, Status::Published, 2_000);
    let counted = store.create(&five, &announce).await.unwrap().unwrap();
    assert_eq!((counted.stars, counted.version), ([0, 1, 0, 0, 1], 2));
    assert_eq!(counted.count(), 2);
    assert!((counted.average() - 3.5).abs() < 1e-9);

    let rejected = changed(&approved, |r| {
        r.status = Status::Rejected;
        r.moderation_reason = "off topic".into();
    });
    let counted = store
        .update(&approved, &rejected, &[], &announce)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((counted.stars, counted.version), ([0, 0, 0, 0, 1], 3));

    let counted = store.delete(&five, &announce).await.unwrap().unwrap();
    assert_eq!((counted.stars, counted.version), ([0; 5], 4));
    assert_eq!(store.aggregate(lamp).await.unwrap(), counted);
    assert_eq!(
        told.load(Ordering::SeqCst),
        4,
        "one announcement per change"
    );

    // A change between unpublished states leaves the aggregate alone.
    let edited = changed(&rejected, |r| r.status = Status::Pending);
    assert_eq!(
        store
            .update(&rejected, &edited, &[], &announce)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.aggregate(lamp).await.unwrap().version, 4);
    let other = store.aggregate(Uuid::now_v7()).await.unwrap();
    assert_eq!(other.version, 0, "aggregates are per product");

    // A recount on demand agrees with the reviews and is announced as a new version.
    let recounted = store.recount(lamp, &announce).await.unwrap();
    assert_eq!((recounted.stars, recounted.version), ([0; 5], 5));
    assert_eq!(told.load(Ordering::SeqCst), 5);
}

async fn listings_show_published_reviews_and_the_viewers_own((store, _db): Subject) {
    let (announce, _) = announcer();
    let (lamp, ada) = (Uuid::now_v7(), Uuid::now_v7());
    let mut published = Vec::new();
    for at in 1..=5 {
        let r = review(lamp, Uuid::now_v7(), 4, Status::Published, at * 1_000);
        store.create(&r, &announce).await.unwrap();
        published.push(r);
    }
    let own = review(lamp, ada, 1, Status::Pending, 2_500);
    store.create(&own, &announce).await.unwrap();
    let hidden = review(lamp, Uuid::now_v7(), 1, Status::Pending, 3_500);
    store.create(&hidden, &announce).await.unwrap();
    store
        .create(
            &review(Uuid::now_v7(), Uuid::now_v7(), 3, Status::Published, 4_500),
            &announce,
        )
        .await
        .unwrap();

    let ids = |reviews: &[ReviewRecord]| reviews.iter().map(|r| r.id).collect::<Vec<_>>();
    let newest_first: Vec<Uuid> = published.iter().rev().map(|r| r.id).collect();
    let anyone = store
        .product_reviews(lamp, None, &Ranking::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(ids(&anyone), newest_first);
    let first = store
        .product_reviews(lamp, None, &Ranking::default(), None, 2)
        .await
        .unwrap();
    assert_eq!(ids(&first), newest_first[..2]);
    let last = first.last().unwrap();
    let rest = store
        .product_reviews(
            lamp,
            None,
            &Ranking::default(),
            Some((last.created_at_ms, last.id)),
            10,
        )
        .await
        .unwrap();
    assert_eq!(ids(&rest), newest_first[2..]);

    let seen_by_ada = store
        .product_reviews(lamp, Some(ada), &Ranking::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(seen_by_ada.len(), 6);
    assert!(seen_by_ada.iter().any(|r| r.id == own.id));
    assert!(seen_by_ada.iter().all(|r| r.id != hidden.id));
    // Text comes back exactly as written.
    assert_eq!(seen_by_ada[0].body, "<script>alert(1)</script> Works well.");
    assert_eq!(seen_by_ada[0].title, "<b>Bright</b> & \"warm\"");
}

async fn moderation_queues_hold_pending_and_reported_reviews((store, _db): Subject) {
    let (announce, _) = announcer();
    let product = Uuid::now_v7();
    let base = 1_000_000;
    let older = review(product, Uuid::now_v7(), 3, Status::Pending, base);
    let newer = review(product, Uuid::now_v7(), 3, Status::Pending, base + 1);
    let published = review(product, Uuid::now_v7(), 5, Status::Published, base + 2);
    for r in [&newer, &older, &published] {
        store.create(r, &announce).await.unwrap();
    }
    let pending = store.queue(Queue::Pending, None, 10).await.unwrap();
    let ids: Vec<Uuid> = pending.iter().map(|r| r.id).collect();
    assert_eq!(ids, [older.id, newer.id]);
    let after_first = store
        .queue(Queue::Pending, Some((older.created_at_ms, older.id)), 10)
        .await
        .unwrap();
    assert_eq!(after_first[0].id, newer.id);

    let approved = changed(&older, |r| r.status = Status::Published);
    store
        .update(&older, &approved, &[], &announce)
        .await
        .unwrap();
    let pending = store.queue(Queue::Pending, None, 10).await.unwrap();
    assert_eq!(pending.iter().map(|r| r.id).collect::<Vec<_>>(), [newer.id]);

    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    assert!(
        store
            .report(published.id, ada, "spam", base + 10)
            .await
            .unwrap()
    );
    assert!(
        !store
            .report(published.id, ada, "spam", base + 11)
            .await
            .unwrap()
    );
    assert!(
        store
            .report(published.id, bob, "rude", base + 12)
            .await
            .unwrap()
    );
    assert!(matches!(
        store.report(Uuid::now_v7(), ada, "spam", base).await,
        Err(StoreError::NotFound)
    ));
    let reported = store.review(published.id).await.unwrap().unwrap();
    assert_eq!(reported.report_count, 2);
    assert_eq!(reported.reported_at_ms, Some(base + 10));
    let queue = store.queue(Queue::Reported, None, 10).await.unwrap();
    assert_eq!(queue.first().map(|r| r.id), Some(published.id));

    // Moderation takes it out of the reported queue, and an edit keeps the report count.
    let kept = changed(&reported, |r| r.reported_at_ms = None);
    store
        .update(&reported, &kept, &[], &announce)
        .await
        .unwrap();
    let queue = store.queue(Queue::Reported, None, 10).await.unwrap();
    assert!(queue.iter().all(|r| r.id != published.id));
    assert_eq!(
        store
            .review(published.id)
            .await
            .unwrap()
            .unwrap()
            .report_count,
        2
    );
}

async fn helpful_votes_count_once_and_order_listings((store, _db): Subject) {
    let (announce, _) = announcer();
    let lamp = Uuid::now_v7();
    let one = review(lamp, Uuid::now_v7(), 1, Status::Published, 1_000);
    let five = review(lamp, Uuid::now_v7(), 5, Status::Published, 2_000);
    let three = review(lamp, Uuid::now_v7(), 3, Status::Published, 3_000);
    let also_five = review(lamp, Uuid::now_v7(), 5, Status::Published, 4_000);
    for r in [&one, &five, &three, &also_five] {
        store.create(r, &announce).await.unwrap();
    }
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(store.vote(three.id, ada).await.unwrap(), Some(1));
    assert_eq!(store.vote(three.id, ada).await.unwrap(), None);
    assert_eq!(store.vote(three.id, bob).await.unwrap(), Some(2));
    assert_eq!(store.vote(one.id, bob).await.unwrap(), Some(1));
    assert!(matches!(
        store.vote(Uuid::now_v7(), ada).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store.review(three.id).await.unwrap().unwrap().helpful_count,
        2
    );

    let order = |sort: Sort| {
        let store = store.clone();
        async move {
            let mut ids = Vec::new();
            let mut before = None;
            // Pages of two, so every order is also paged by its token.
            loop {
                let ranking = Ranking {
                    sort,
                    language: None,
                };
                let page = store
                    .product_reviews(lamp, None, &ranking, before, 2)
                    .await
                    .unwrap();
                ids.extend(page.iter().map(|r| r.id));
                match page.last() {
                    Some(last) if page.len() == 2 => before = Some((ranking.rank(last), last.id)),
                    _ => return ids,
                }
            }
        }
    };
    assert_eq!(
        order(Sort::Newest).await,
        [also_five.id, three.id, five.id, one.id]
    );
    assert_eq!(
        order(Sort::Highest).await,
        [also_five.id, five.id, three.id, one.id]
    );
    assert_eq!(
        order(Sort::Lowest).await,
        [one.id, three.id, also_five.id, five.id]
    );
    assert_eq!(
        order(Sort::MostHelpful).await,
        [three.id, one.id, also_five.id, five.id]
    );
}

async fn listings_put_the_preferred_language_first((store, _db): Subject) {
    let (announce, _) = announcer();
    let lamp = Uuid::now_v7();
    let in_language = |rating: i32, language: &str, at: i64| {
        let mut r = review(lamp, Uuid::now_v7(), rating, Status::Published, at);
        r.language = language.into();
        r
    };
    let old_german = in_language(2, "de", 1_000);
    let english = in_language(5, "en", 2_000);
    let austrian = in_language(4, "de-at", 3_000);
    let newest_english = in_language(3, "en-gb", 4_000);
    for r in [&old_german, &english, &austrian, &newest_english] {
        store.create(r, &announce).await.unwrap();
    }
    let listed = |sort: Sort, language: Option<&str>| {
        let store = store.clone();
        let ranking = Ranking {
            sort,
            language: language.map(str::to_owned),
        };
        async move {
            let mut ids = Vec::new();
            let mut before = None;
            loop {
                let page = store
                    .product_reviews(lamp, None, &ranking, before, 3)
                    .await
                    .unwrap();
                ids.extend(page.iter().map(|r| r.id));
                match page.last() {
                    Some(last) if page.len() == 3 => before = Some((ranking.rank(last), last.id)),
                    _ => return ids,
                }
            }
        }
    };
    assert_eq!(
        listed(Sort::Newest, Some("de")).await,
        [austrian.id, old_german.id, newest_english.id, english.id]
    );
    assert_eq!(
        listed(Sort::Highest, Some("de")).await,
        [austrian.id, old_german.id, english.id, newest_english.id]
    );
    assert_eq!(
        listed(Sort::Newest, Some("fr")).await,
        [newest_english.id, austrian.id, english.id, old_german.id],
        "no review in the language: the order is the sort's"
    );
}

contract_suite! {
    sqlite => sqlite_store, cql => cql_store;
    [
        purchases_come_from_paid_orders_once,
        one_review_per_user_and_product,
        changes_apply_over_the_version_read,
        the_aggregate_recounts_published_reviews_with_each_change,
        listings_show_published_reviews_and_the_viewers_own,
        moderation_queues_hold_pending_and_reported_reviews,
        helpful_votes_count_once_and_order_listings,
        listings_put_the_preferred_language_first,
    ]
}
