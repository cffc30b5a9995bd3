//! The storage seam proven on a small aggregate: a wallet with a unique owner and a balance that
//! never goes below zero. The two patterns every service needs (store-enforced uniqueness and
//! conditional updates under concurrency) run as one suite against SQLite and a real CQL server.

use std::sync::Arc;

use async_trait::async_trait;
use scylla::statement::prepared::PreparedStatement;
use shopmesh_storage::cql::{Cql, classify, lwt_applied};
use shopmesh_storage::sqlite::Sqlite;
use shopmesh_storage::{Migration, StorageError};
use shopmesh_testkit::contract_suite;
use shopmesh_testkit::storage::{self as testing, TempSqlite};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Wallet {
    id: Uuid,
    owner: String,
    balance: i64,
}

#[derive(Debug)]
enum WalletError {
    OwnerTaken,
    NotFound,
    Insufficient,
    Storage(#[allow(dead_code)] StorageError),
}

impl From<StorageError> for WalletError {
    fn from(error: StorageError) -> Self {
        Self::Storage(error)
    }
}

impl From<rusqlite::Error> for WalletError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Storage(error.into())
    }
}

#[async_trait]
trait WalletRepo: Send + Sync {
    async fn create(&self, owner: &str, balance: i64) -> Result<Wallet, WalletError>;
    async fn get(&self, id: Uuid) -> Result<Wallet, WalletError>;
    /// Takes `amount` if the balance covers it; never lets the balance go below zero.
    async fn withdraw(&self, id: Uuid, amount: i64) -> Result<i64, WalletError>;
}

// ---- SQLite -------------------------------------------------------------------------------

const SQLITE: &[Migration] = &[Migration {
    version: 1,
    name: "wallets",
    statements: "CREATE TABLE wallets (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL UNIQUE,
        balance INTEGER NOT NULL CHECK (balance >= 0)
    );",
}];

/// The repository, and the temporary directory that must outlive it in tests.
struct SqliteWallets(Sqlite, #[allow(dead_code)] Option<TempSqlite>);

#[async_trait]
impl WalletRepo for SqliteWallets {
    async fn create(&self, owner: &str, balance: i64) -> Result<Wallet, WalletError> {
        let wallet = Wallet {
            id: Uuid::new_v4(),
            owner: owner.to_owned(),
            balance,
        };
        let row = wallet.clone();
        self.0
            .write(move |tx| {
                let inserted = tx.execute(
                    "INSERT INTO wallets (id, owner, balance) VALUES (?1, ?2, ?3) ON CONFLICT (owner) DO NOTHING",
                    rusqlite::params![row.id.to_string(), row.owner, row.balance],
                )?;
                if inserted == 0 { Err(WalletError::OwnerTaken) } else { Ok(()) }
            })
            .await?;
        Ok(wallet)
    }

    async fn get(&self, id: Uuid) -> Result<Wallet, WalletError> {
        self.0
            .read(move |db| {
                let mut statement =
                    db.prepare_cached("SELECT owner, balance FROM wallets WHERE id = ?1")?;
                let mut rows = statement.query([id.to_string()])?;
                let row = rows.next()?.ok_or(WalletError::NotFound)?;
                Ok(Wallet {
                    id,
                    owner: row.get(0)?,
                    balance: row.get(1)?,
                })
            })
            .await
    }

    async fn withdraw(&self, id: Uuid, amount: i64) -> Result<i64, WalletError> {
        self.0
            .write(move |tx| {
                let balance: Option<i64> = tx
                    .query_row(
                        "UPDATE wallets SET balance = balance - ?1 WHERE id = ?2 AND balance >= ?1 RETURNING balance",
                        rusqlite::params![amount, id.to_string()],
                        |row| row.get(0),
                    )
                    .map(Some)
                    .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
                match balance {
                    Some(balance) => Ok(balance),
                    None => {
                        let exists: bool =
                            tx.query_row("SELECT EXISTS (SELECT 1 FROM wallets WHERE id = ?1)", [id.to_string()], |r| r.get(0))?;
                        Err(if exists { WalletError::Insufficient } else { WalletError::NotFound })
                    }
                }
            })
            .await
    }
}

// ---- CQL ----------------------------------------------------------------------------------

const CQL: &[Migration] = &[Migration {
    version: 1,
    name: "wallets",
    statements:
        "CREATE TABLE IF NOT EXISTS wallets (id uuid PRIMARY KEY, owner text, balance bigint);
        CREATE TABLE IF NOT EXISTS wallets_by_owner (owner text PRIMARY KEY, id uuid);",
}];

struct CqlWallets {
    cql: Cql,
    claim_owner: PreparedStatement,
    insert: PreparedStatement,
    select: PreparedStatement,
    update_if: PreparedStatement,
}

impl CqlWallets {
    async fn new(cql: Cql) -> Self {
        Self {
            claim_owner: cql
                .prepare("INSERT INTO wallets_by_owner (owner, id) VALUES (?, ?) IF NOT EXISTS")
                .await
                .unwrap(),
            insert: cql
                .prepare("INSERT INTO wallets (id, owner, balance) VALUES (?, ?, ?)")
                .await
                .unwrap(),
            select: cql
                .prepare("SELECT owner, balance FROM wallets WHERE id = ?")
                .await
                .unwrap(),
            update_if: cql
                .prepare("UPDATE wallets SET balance = ? WHERE id = ? IF balance = ?")
                .await
                .unwrap(),
            cql,
        }
    }
}

#[async_trait]
impl WalletRepo for CqlWallets {
    async fn create(&self, owner: &str, balance: i64) -> Result<Wallet, WalletError> {
        let wallet = Wallet {
            id: Uuid::new_v4(),
            owner: owner.to_owned(),
            balance,
        };
        let claimed = self
            .cql
            .session()
            .execute_unpaged(&self.claim_owner, (owner, wallet.id))
            .await
            .map_err(classify)?;
        if !lwt_applied(claimed)? {
            return Err(WalletError::OwnerTaken);
        }
        self.cql
            .session()
            .execute_unpaged(&self.insert, (wallet.id, owner, balance))
            .await
            .map_err(classify)?;
        Ok(wallet)
    }

    async fn get(&self, id: Uuid) -> Result<Wallet, WalletError> {
        let result = self
            .cql
            .session()
            .execute_unpaged(&self.select, (id,))
            .await
            .map_err(classify)?;
        let rows = result
            .into_rows_result()
            .map_err(|e| StorageError::Cql(e.to_string()))?;
        let (owner, balance) = rows
            .maybe_first_row::<(String, i64)>()
            .map_err(|e| StorageError::Corrupt(e.to_string()))?
            .ok_or(WalletError::NotFound)?;
        Ok(Wallet { id, owner, balance })
    }

    async fn withdraw(&self, id: Uuid, amount: i64) -> Result<i64, WalletError> {
        loop {
            let balance = self.get(id).await?.balance;
            if balance < amount {
                return Err(WalletError::Insufficient);
            }
            let result = self
                .cql
                .session()
                .execute_unpaged(&self.update_if, (balance - amount, id, balance))
                .await
                .map_err(classify)?;
            if lwt_applied(result)? {
                return Ok(balance - amount);
            }
            // Another writer changed the balance between our read and our write: read again.
        }
    }
}

// ---- the suite ----------------------------------------------------------------------------

type Repo = Arc<dyn WalletRepo>;

async fn sqlite_repo() -> Option<Repo> {
    let temp = testing::sqlite(SQLITE).await;
    Some(Arc::new(SqliteWallets(temp.db.clone(), Some(temp))))
}

async fn cql_repo() -> Option<Repo> {
    let cql = testing::cql(CQL).await?;
    Some(Arc::new(CqlWallets::new(cql).await))
}

async fn creates_and_reads(repo: Repo) {
    let wallet = repo.create("ada", 100).await.unwrap();
    assert_eq!(repo.get(wallet.id).await.unwrap(), wallet);
    assert!(matches!(
        repo.get(Uuid::new_v4()).await,
        Err(WalletError::NotFound)
    ));
}

async fn owner_is_unique(repo: Repo) {
    repo.create("grace", 1).await.unwrap();
    assert!(matches!(
        repo.create("grace", 2).await,
        Err(WalletError::OwnerTaken)
    ));
}

async fn concurrent_creates_of_one_owner_have_one_winner(repo: Repo) {
    let attempts = (0..8).map(|i| {
        let repo = repo.clone();
        tokio::spawn(async move { repo.create("linus", i).await })
    });
    let results = futures::future::join_all(attempts).await;
    let winners = results
        .into_iter()
        .filter(|r| matches!(r, Ok(Ok(_))))
        .count();
    assert_eq!(winners, 1);
}

async fn balance_never_goes_below_zero_under_concurrency(repo: Repo) {
    let wallet = repo.create("barbara", 10).await.unwrap();
    let withdrawals = (0..25).map(|_| {
        let repo = repo.clone();
        tokio::spawn(async move { repo.withdraw(wallet.id, 1).await })
    });
    let results = futures::future::join_all(withdrawals).await;
    let succeeded = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(WalletError::Insufficient))))
        .count();
    assert_eq!((succeeded, refused), (10, 15));
    assert_eq!(repo.get(wallet.id).await.unwrap().balance, 0);
}

async fn withdraw_from_missing_wallet_is_not_found(repo: Repo) {
    assert!(matches!(
        repo.withdraw(Uuid::new_v4(), 1).await,
        Err(WalletError::NotFound | WalletError::Insufficient)
    ));
}

contract_suite! {
    sqlite => sqlite_repo,
    cql => cql_repo;
    [
        creates_and_reads,
        owner_is_unique,
        concurrent_creates_of_one_owner_have_one_winner,
        balance_never_goes_below_zero_under_concurrency,
        withdraw_from_missing_wallet_is_not_found,
    ]
}

#[tokio::test]
async fn reopening_keeps_data_and_skips_applied_migrations() {
    let temp = testing::sqlite(SQLITE).await;
    let path = temp.db.path().to_owned();
    let repo = SqliteWallets(temp.db.clone(), None);
    let wallet = repo.create("edsger", 5).await.unwrap();
    let reopened = SqliteWallets(Sqlite::open(&path, SQLITE).await.unwrap(), None);
    assert_eq!(reopened.get(wallet.id).await.unwrap(), wallet);
    drop(temp);
}

#[tokio::test]
async fn a_database_from_a_newer_binary_is_refused() {
    const NEWER: &[Migration] = &[
        SQLITE[0],
        Migration {
            version: 2,
            name: "audit",
            statements: "CREATE TABLE audit (at INTEGER);",
        },
    ];
    let temp = testing::sqlite(NEWER).await;
    let error = Sqlite::open(temp.db.path(), SQLITE).await.unwrap_err();
    assert!(error.to_string().contains("run a newer binary"), "{error}");
}
