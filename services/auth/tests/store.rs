//! The auth repository contract, on SQLite and on the test bed's CQL server.

use std::sync::Arc;

use shopmesh_auth::store::cql::CqlAuth;
use shopmesh_auth::store::sqlite::SqliteAuth;
use shopmesh_auth::store::{AuthStore, CQL, RefreshToken, SQLITE, StoredKey};
use shopmesh_kit::clock::now_ms;
use shopmesh_testkit::contract_suite;
use shopmesh_testkit::storage::{self as testing, TempSqlite};
use uuid::Uuid;

type Subject = (Arc<dyn AuthStore>, Option<TempSqlite>);

async fn sqlite_store() -> Option<Subject> {
    let temp = testing::sqlite(SQLITE).await;
    Some((Arc::new(SqliteAuth(temp.db.clone())), Some(temp)))
}

async fn cql_store() -> Option<Subject> {
    let cql = testing::cql(CQL).await?;
    Some((Arc::new(CqlAuth::new(cql).await.unwrap()), None))
}

fn token(family: Uuid, user: Uuid) -> RefreshToken {
    RefreshToken {
        hash: Uuid::new_v4().as_bytes().to_vec(),
        family,
        user_id: user,
        expires_at_ms: now_ms() + 3_600_000,
        spent: false,
    }
}

async fn keys_are_added_and_retired((store, _keep): Subject) {
    let key = |kid: &str, at: i64| StoredKey {
        kid: kid.into(),
        sealed_private: vec![7; 40],
        created_at_ms: at,
        retired_at_ms: None,
        remove_after_ms: None,
    };
    store.add_key(&key("a", 1_000), &[]).await.unwrap();
    store
        .add_key(&key("b", 2_000), &[("a".into(), 9_000)])
        .await
        .unwrap();
    let mut keys = store.keys().await.unwrap();
    keys.sort_by_key(|k| k.created_at_ms);
    assert_eq!(keys.len(), 2);
    assert_eq!(
        (keys[0].retired_at_ms, keys[0].remove_after_ms),
        (Some(2_000), Some(9_000))
    );
    assert_eq!(keys[1], key("b", 2_000));
}

async fn a_token_is_spent_once_even_under_concurrency((store, _keep): Subject) {
    let first = token(Uuid::now_v7(), Uuid::now_v7());
    store.start_family(&first).await.unwrap();
    assert_eq!(store.token(&first.hash).await.unwrap(), Some(first.clone()));
    let spends = (0..8).map(|_| {
        let (store, hash) = (store.clone(), first.hash.clone());
        tokio::spawn(async move { store.spend(&hash).await.unwrap() })
    });
    let won = futures::future::join_all(spends)
        .await
        .into_iter()
        .filter(|spent| *spent.as_ref().unwrap())
        .count();
    assert_eq!(won, 1);
    assert!(store.token(&first.hash).await.unwrap().unwrap().spent);
    assert_eq!(store.token(b"unknown").await.unwrap(), None);
}

async fn families_are_revoked_one_by_one_or_per_user((store, _keep): Subject) {
    let user = Uuid::now_v7();
    let (one, two) = (Uuid::now_v7(), Uuid::now_v7());
    store.start_family(&token(one, user)).await.unwrap();
    let successor = token(one, user);
    store.add_token(&successor).await.unwrap();
    store.start_family(&token(two, user)).await.unwrap();
    assert!(!store.family_revoked(one).await.unwrap());
    assert!(
        store.family_revoked(Uuid::now_v7()).await.unwrap(),
        "an unknown family counts as revoked"
    );

    store.revoke_family(one).await.unwrap();
    assert!(store.family_revoked(one).await.unwrap());
    assert!(!store.family_revoked(two).await.unwrap());
    assert_eq!(
        store.token(&successor.hash).await.unwrap().unwrap().family,
        one
    );

    assert_eq!(
        store.revoke_user(user, now_ms()).await.unwrap(),
        1,
        "only the live family"
    );
    assert!(store.family_revoked(two).await.unwrap());
    assert_eq!(store.revoke_user(user, now_ms()).await.unwrap(), 0);
}

contract_suite! {
    sqlite => sqlite_store,
    cql => cql_store;
    [
        keys_are_added_and_retired,
        a_token_is_spent_once_even_under_concurrency,
        families_are_revoked_one_by_one_or_per_user,
    ]
}
