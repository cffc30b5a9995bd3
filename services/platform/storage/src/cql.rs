//! CQL storage through the `scylla` driver: ScyllaDB in production, any CQL server (the test bed
//! runs Cassandra) in tests. One session per service, bound to the service's own keyspace.

use std::collections::BTreeMap;
use std::sync::Arc;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::query_result::{QueryResult, QueryRowsResult};
use scylla::serialize::batch::BatchValues;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

pub mod listing;

use crate::config::{CqlConfig, valid_identifier};
use crate::migration::{Migration, pending};
use crate::{Result, StorageError};

/// A service's CQL session, bound to its keyspace. Cheap to clone.
#[derive(Clone)]
pub struct Cql {
    session: Arc<Session>,
    keyspace: String,
}

impl std::fmt::Debug for Cql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cql")
            .field("keyspace", &self.keyspace)
            .finish()
    }
}

impl Cql {
    /// Connects, creates `keyspace` if needed, applies `migrations` and binds the session to it.
    pub async fn connect(
        config: &CqlConfig,
        keyspace: &str,
        migrations: &[Migration],
    ) -> Result<Self> {
        if !valid_identifier(keyspace) {
            return Err(StorageError::Cql(format!(
                "invalid keyspace name {keyspace:?}"
            )));
        }
        let mut builder = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .connection_timeout(config.connect_timeout);
        if let Some(user) = &config.username {
            builder = builder.user(user, config.password.expose());
        }
        let session = builder.build().await.map_err(|e| {
            StorageError::CqlUnavailable(format!("cannot connect to {:?}: {e}", config.nodes))
        })?;
        // DDL cannot take bound values; the keyspace name and replication map are validated
        // identifiers from configuration, never request data.
        let create = format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}",
            config.replication_cql()
        );
        session.query_unpaged(create, ()).await.map_err(classify)?;
        session
            .await_schema_agreement()
            .await
            .map_err(|e| StorageError::Cql(e.to_string()))?;
        session
            .use_keyspace(keyspace, false)
            .await
            .map_err(|e| StorageError::Cql(e.to_string()))?;
        let cql = Self {
            session: Arc::new(session),
            keyspace: keyspace.to_owned(),
        };
        cql.migrate(migrations).await?;
        Ok(cql)
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// Prepares a statement; repositories prepare all of theirs once, at construction.
    pub async fn prepare(&self, statement: &str) -> Result<PreparedStatement> {
        self.session
            .prepare(statement)
            .await
            .map_err(|e| StorageError::Cql(format!("prepare `{statement}`: {e}")))
    }

    /// Runs a prepared statement, unpaged (for single-partition reads and writes).
    pub async fn execute(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryResult> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(classify)
    }

    /// Runs a prepared query and reads every row as `T` (for bounded results).
    pub async fn rows<T>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<T>>
    where
        T: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        self.query(statement, values)
            .await?
            .rows::<T>()
            .map_err(|e| StorageError::Cql(e.to_string()))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| StorageError::Corrupt(e.to_string()))
    }

    /// Runs a prepared query and reads its first row, if any.
    pub async fn first_row<T>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<T>>
    where
        T: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        self.query(statement, values)
            .await?
            .maybe_first_row::<T>()
            .map_err(|e| StorageError::Corrupt(e.to_string()))
    }

    async fn query(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryRowsResult> {
        self.execute(statement, values)
            .await?
            .into_rows_result()
            .map_err(|e| StorageError::Cql(e.to_string()))
    }

    /// Applies `statements` with `values` (a tuple, one row of values per statement) as one
    /// logged batch: all of them take effect, or none.
    pub async fn logged_batch(
        &self,
        statements: &[&PreparedStatement],
        values: impl BatchValues,
    ) -> Result<()> {
        let mut batch = Batch::new(BatchType::Logged);
        for statement in statements {
            batch.append_statement((*statement).clone());
        }
        self.session.batch(&batch, values).await.map_err(classify)?;
        Ok(())
    }

    async fn migrate(&self, migrations: &[Migration]) -> Result<()> {
        let ddl = "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text, applied_at timestamp)";
        self.session
            .query_unpaged(ddl, ())
            .await
            .map_err(classify)?;
        self.session
            .await_schema_agreement()
            .await
            .map_err(|e| StorageError::Cql(e.to_string()))?;
        let select = self
            .prepare("SELECT version, name FROM schema_migrations")
            .await?;
        let rows = self
            .session
            .execute_unpaged(&select, ())
            .await
            .map_err(classify)?;
        let mut applied: Vec<(u32, String)> = rows
            .into_rows_result()
            .map_err(|e| StorageError::Cql(e.to_string()))?
            .rows::<(i32, String)>()
            .map_err(|e| StorageError::Cql(e.to_string()))?
            .map(|row| row.map(|(version, name)| (version as u32, name)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        applied.sort();
        let record = self
            .prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, toTimestamp(now()))")
            .await?;
        for migration in pending(migrations, &applied)? {
            for statement in migration.split() {
                self.session
                    .query_unpaged(statement, ())
                    .await
                    .map_err(|e| {
                        StorageError::Migration(format!(
                            "version {} ({}): {e}",
                            migration.version, migration.name
                        ))
                    })?;
            }
            self.session
                .await_schema_agreement()
                .await
                .map_err(|e| StorageError::Cql(e.to_string()))?;
            self.session
                .execute_unpaged(&record, (migration.version as i32, migration.name))
                .await
                .map_err(classify)?;
            tracing::info!(keyspace = %self.keyspace, version = migration.version, name = migration.name, "applied cql migration");
        }
        Ok(())
    }
}

/// Sorts a driver error into "try again later" and "something is wrong".
pub fn classify(error: ExecutionError) -> StorageError {
    let transient = match &error {
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::EmptyPlan => true,
        ExecutionError::LastAttemptError(attempt) => match attempt {
            RequestAttemptError::BrokenConnectionError(_)
            | RequestAttemptError::UnableToAllocStreamId => true,
            RequestAttemptError::DbError(db, _) => matches!(
                db,
                DbError::Unavailable { .. }
                    | DbError::Overloaded
                    | DbError::IsBootstrapping
                    | DbError::ReadTimeout { .. }
                    | DbError::WriteTimeout { .. }
            ),
            _ => false,
        },
        _ => false,
    };
    if transient {
        StorageError::CqlUnavailable(error.to_string())
    } else {
        StorageError::Cql(error.to_string())
    }
}

/// The `[applied]` flag of a lightweight transaction's result (`INSERT … IF NOT EXISTS`,
/// `UPDATE … IF …`): whether the condition held and the write happened.
pub fn lwt_applied(result: QueryResult) -> Result<bool> {
    Ok(lwt_outcome(result)?.applied)
}

/// What a lightweight transaction did.
#[derive(Debug, Clone, PartialEq)]
pub struct LwtOutcome {
    pub applied: bool,
    /// When it did not apply: the current values of the row that failed the condition, by column
    /// name (empty when the row does not exist).
    pub current: BTreeMap<String, CqlValue>,
}

impl LwtOutcome {
    pub fn get(&self, column: &str) -> Option<&CqlValue> {
        self.current.get(column)
    }
}

/// Reads a lightweight transaction's result.
pub fn lwt_outcome(result: QueryResult) -> Result<LwtOutcome> {
    let rows = result
        .into_rows_result()
        .map_err(|e| StorageError::Cql(e.to_string()))?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|spec| spec.name().to_owned())
        .collect();
    let mut rows = rows
        .rows::<Row>()
        .map_err(|e| StorageError::Cql(e.to_string()))?;
    let row = rows
        .next()
        .ok_or_else(|| StorageError::Cql("conditional statement returned no row".into()))?
        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
    let mut current = BTreeMap::new();
    let mut applied = None;
    for (name, value) in names.into_iter().zip(row.columns) {
        match (name.as_str(), value) {
            ("[applied]", Some(CqlValue::Boolean(flag))) => applied = Some(flag),
            (_, Some(value)) => {
                current.insert(name, value);
            }
            (_, None) => {}
        }
    }
    let applied = applied.ok_or_else(|| {
        StorageError::Cql("result of a conditional statement has no [applied] flag".into())
    })?;
    Ok(LwtOutcome { applied, current })
}
