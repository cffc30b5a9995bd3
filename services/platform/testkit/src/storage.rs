//! Support for contract suites: fresh databases for tests on every backend, and the
//! [`contract_suite!`](crate::contract_suite) macro that runs one suite against each.

use std::sync::atomic::{AtomicU32, Ordering};

use shopmesh_storage::CqlConfig;
use shopmesh_storage::Migration;
use shopmesh_storage::cql::Cql;
use shopmesh_storage::sqlite::Sqlite;

/// Variable naming the test bed's CQL server (`127.0.0.1:9042`).
pub const CQL_VARIABLE: &str = "SHOPMESH_TEST_CQL";

/// A SQLite database in a temporary directory that lives as long as the value.
pub struct TempSqlite {
    pub db: Sqlite,
    _dir: tempfile::TempDir,
}

/// A fresh SQLite database with `migrations` applied.
pub async fn sqlite(migrations: &'static [Migration]) -> TempSqlite {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let db = Sqlite::open(dir.path().join("test.db"), migrations)
        .await
        .expect("open test sqlite");
    TempSqlite { db, _dir: dir }
}

/// A fresh keyspace on the test bed's CQL server with `migrations` applied, or `None` when a local
/// run has no test bed (see [`crate::testbed`]).
pub async fn cql(migrations: &'static [Migration]) -> Option<Cql> {
    let node = crate::testbed::address(CQL_VARIABLE, "cql")?;
    let config = CqlConfig {
        nodes: vec![node],
        ..CqlConfig::default()
    };
    let keyspace = unique_keyspace();
    let cql = Cql::connect(&config, &keyspace, migrations)
        .await
        .unwrap_or_else(|e| panic!("{CQL_VARIABLE} is set but the CQL server failed: {e}"));
    Some(cql)
}

/// A keyspace name no other test (in this or a concurrent run) uses.
fn unique_keyspace() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let run = uuid::Uuid::new_v4().simple().to_string();
    format!("t_{}_{}", &run[..12], NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs one contract suite against several backends: a test module per backend, a test per
/// suite function. Each backend names an async factory returning `Option<Subject>` (`None` skips,
/// as [`crate::testbed::address`] decides); each suite function takes the subject.
///
/// ```ignore
/// contract_suite! {
///     sqlite => sqlite_repo,
///     cql => cql_repo;
///     [creates_and_reads, rejects_duplicates]
/// }
/// ```
#[macro_export]
macro_rules! contract_suite {
    ($($backend:ident => $factory:ident),+ $(,)? ; $tests:tt) => {
        $( $crate::contract_suite!(@backend $backend, $factory, $tests); )+
    };
    (@backend $backend:ident, $factory:ident, [$($test:ident),+ $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if let Some(subject) = super::$factory().await {
                        super::$test(subject).await;
                    }
                }
            )+
        }
    };
}
