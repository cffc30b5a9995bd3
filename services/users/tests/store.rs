//! The users repository contract, on SQLite and on the test bed's CQL server.

use std::sync::Arc;

use shopmesh_events::Event;
use shopmesh_testkit::contract_suite;
use shopmesh_testkit::storage::{self as testing, TempSqlite};
use shopmesh_users::config::ThrottleConfig;
use shopmesh_users::store::cql::CqlUsers;
use shopmesh_users::store::sqlite::SqliteUsers;
use shopmesh_users::store::{
    Attempt, CQL, FAILURE_MEMORY_MS, SQLITE, StoreError, UserRecord, UserStore,
};
use uuid::Uuid;

/// A repository and what must outlive it.
type Subject = (Arc<dyn UserStore>, Option<TempSqlite>);

async fn sqlite_store() -> Option<Subject> {
    let temp = testing::sqlite(SQLITE).await;
    Some((Arc::new(SqliteUsers(temp.db.clone())), Some(temp)))
}

async fn cql_store() -> Option<Subject> {
    let cql = testing::cql(CQL).await?;
    Some((Arc::new(CqlUsers::new(cql).await.unwrap()), None))
}

const DAY_MS: i64 = 24 * 3600 * 1000;

fn user(email: &str, created_at_ms: i64) -> UserRecord {
    UserRecord {
        id: Uuid::now_v7(),
        email_index: email.as_bytes().to_vec(),
        password_hash: "$2b$04$hash".into(),
        profile: vec![1, 2, 3],
        locale: "en".into(),
        roles: vec!["customer".into()],
        created_at_ms,
        updated_at_ms: created_at_ms,
        version: 1,
    }
}

fn registered(record: &UserRecord) -> Event {
    Event::new(record.id.to_string(), "test.UserRegistered", vec![])
}

async fn creates_and_finds((store, _keep): Subject) {
    let ada = user("ada", 1_700_000_000_000);
    store.create(&ada, &registered(&ada)).await.unwrap();
    assert_eq!(store.get(ada.id).await.unwrap(), Some(ada.clone()));
    assert_eq!(
        store.find_by_email(b"ada").await.unwrap(),
        Some(ada.clone())
    );
    assert_eq!(store.find_by_email(b"bob").await.unwrap(), None);
    assert_eq!(store.get(Uuid::now_v7()).await.unwrap(), None);
}

async fn one_of_many_registrations_of_an_email_wins((store, _keep): Subject) {
    let attempts = (0..10).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let record = user("same@example.com", 1_700_000_000_000);
            store.create(&record, &registered(&record)).await
        })
    });
    let mut created = 0;
    for attempt in futures::future::join_all(attempts).await {
        match attempt.unwrap() {
            Ok(()) => created += 1,
            Err(StoreError::Conflict) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(created, 1);
}

async fn updates_apply_only_over_the_version_read((store, _keep): Subject) {
    let mut ada = user("ada", 1_700_000_000_000);
    store.create(&ada, &registered(&ada)).await.unwrap();
    ada.version = 2;
    ada.roles = vec!["admin".into()];
    store.update(&ada, None).await.unwrap();
    assert_eq!(store.get(ada.id).await.unwrap().unwrap().roles, ["admin"]);
    // A writer that read version 1 as well loses.
    let stale = UserRecord {
        locale: "de".into(),
        ..ada.clone()
    };
    assert!(matches!(
        store.update(&stale, None).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.get(ada.id).await.unwrap().unwrap().locale, "en");
}

async fn lists_oldest_first_across_months((store, _keep): Subject) {
    let start = 1_700_000_000_000;
    // Ten accounts 20 days apart: several month partitions on CQL.
    let mut records: Vec<UserRecord> = (0..10)
        .map(|n| user(&format!("u{n}"), start + n * 20 * DAY_MS))
        .collect();
    records.reverse();
    for record in &records {
        store.create(record, &registered(record)).await.unwrap();
    }
    records.reverse();
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(after, 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|last| (last.created_at_ms, last.id));
        listed.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(listed, records.iter().map(|r| r.id).collect::<Vec<_>>());
}

async fn attempts_are_counted_atomically_and_cleared((store, _keep): Subject) {
    let throttle = ThrottleConfig::default();
    let now = 1_700_000_000_000;
    // A burst of guesses at one moment: only the free ones get to check a password.
    let guesses = (0..12).map(|_| {
        let (store, throttle) = (store.clone(), throttle.clone());
        tokio::spawn(async move { store.begin_attempt(b"ada", now, &throttle).await.unwrap() })
    });
    let allowed = futures::future::join_all(guesses)
        .await
        .into_iter()
        .filter(|attempt| attempt.as_ref().unwrap() == &Attempt::Allowed)
        .count();
    assert_eq!(allowed as u32, throttle.free_failures);
    assert_eq!(
        store
            .begin_attempt(b"ada", now + 500, &throttle)
            .await
            .unwrap(),
        Attempt::Blocked {
            until_ms: now + 1_000
        }
    );
    // Once the block has passed another attempt may run; a success clears the streak.
    assert_eq!(
        store
            .begin_attempt(b"ada", now + 1_000, &throttle)
            .await
            .unwrap(),
        Attempt::Allowed
    );
    store.clear_failures(b"ada").await.unwrap();
    for _ in 0..throttle.free_failures - 1 {
        assert_eq!(
            store
                .begin_attempt(b"ada", now + 2_000, &throttle)
                .await
                .unwrap(),
            Attempt::Allowed
        );
    }
    // A streak older than a day is forgotten.
    let later = now + FAILURE_MEMORY_MS + 10_000;
    assert_eq!(
        store.begin_attempt(b"bob", now, &throttle).await.unwrap(),
        Attempt::Allowed
    );
    for _ in 0..throttle.free_failures {
        assert_eq!(
            store.begin_attempt(b"ada", later, &throttle).await.unwrap(),
            Attempt::Allowed
        );
    }
}

contract_suite! {
    sqlite => sqlite_store,
    cql => cql_store;
    [
        creates_and_finds,
        one_of_many_registrations_of_an_email_wins,
        updates_apply_only_over_the_version_read,
        lists_oldest_first_across_months,
        attempts_are_counted_atomically_and_cleared,
    ]
}
