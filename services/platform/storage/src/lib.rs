//! The storage seam. A service defines repository traits for its aggregates and implements each
//! twice: on [`cql::Cql`] (ScyllaDB in production; any CQL server in tests) and on
//! [`sqlite::Sqlite`] (the embedded default of `shopmesh up`). Both backends:
//!
//! - bind every value as a parameter (prepared statements on CQL), never format it into a query;
//! - apply the service's versioned, idempotent [`Migration`]s at start-up, refusing a database
//!   whose history differs from the binary's;
//! - run the same contract tests (`shopmesh_testkit::contract_suite!`), so a repository
//!   behaves the same whichever backend it runs on.
//!
//! Uniqueness and conditional updates are the store's job (a lightweight transaction on CQL, a
//! constraint or transaction on SQLite), never check-then-write in the service.

#![forbid(unsafe_code)]

pub mod config;
pub mod cql;
pub mod migration;
pub mod sqlite;

pub use config::{CqlConfig, StorageConfig};
pub use migration::Migration;

/// A storage failure. Repository methods return their own errors built from this one.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The CQL cluster could not be reached or did not answer in time; worth retrying.
    #[error("cql unavailable: {0}")]
    CqlUnavailable(String),
    #[error("cql: {0}")]
    Cql(String),
    #[error("schema migration: {0}")]
    Migration(String),
    /// Stored data that this code cannot read (a bug or a manual edit, never user input).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("storage worker: {0}")]
    Worker(String),
}

/// What a repository operation fails with: the outcomes a service acts on, or a storage failure.
/// Services' repository traits return it, on both backends alike.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A unique key is taken, or the record changed since it was read.
    #[error("conflict")]
    Conflict,
    #[error("not found")]
    NotFound,
    /// The operation does not fit the record's current state; the text says why.
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<rusqlite::Error> for RepoError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Storage(error.into())
    }
}

impl From<scylla::errors::ExecutionError> for RepoError {
    fn from(error: scylla::errors::ExecutionError) -> Self {
        Self::Storage(cql::classify(error))
    }
}

impl From<serde_json::Error> for RepoError {
    fn from(error: serde_json::Error) -> Self {
        Self::Storage(StorageError::Corrupt(error.to_string()))
    }
}

impl RepoError {
    /// As an API error, with `missing` for a record that is not there (a service names its own,
    /// e.g. `USER_NOT_FOUND`).
    pub fn or_missing(self, missing: impl FnOnce() -> shopmesh_kit::Error) -> shopmesh_kit::Error {
        use shopmesh_kit::Error;
        match self {
            Self::Conflict => Error::aborted("CONCURRENT_UPDATE", "the record changed; retry"),
            Self::NotFound => missing(),
            Self::Precondition(message) => Error::failed_precondition("PRECONDITION", message),
            Self::Storage(error) => error.into(),
        }
    }
}

/// Conflicts retry, missing records are `NOT_FOUND`, preconditions fail, the rest is ours.
impl From<RepoError> for shopmesh_kit::Error {
    fn from(error: RepoError) -> Self {
        error.or_missing(|| shopmesh_kit::Error::not_found("NOT_FOUND", "no such record"))
    }
}

impl From<StorageError> for shopmesh_kit::Error {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::CqlUnavailable(_) => {
                tracing::warn!(%error, "storage unavailable");
                shopmesh_kit::Error::unavailable(
                    "STORAGE_UNAVAILABLE",
                    "storage is unavailable, try again",
                )
            }
            other => shopmesh_kit::Error::internal("storage failed", other),
        }
    }
}

impl From<StorageError> for tonic::Status {
    fn from(error: StorageError) -> Self {
        shopmesh_kit::Error::from(error).into()
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
