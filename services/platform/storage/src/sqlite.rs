//! Embedded SQLite: one file per service, WAL mode, one writer and a few readers, every call on a
//! blocking thread so the async runtime never waits on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use tokio::sync::Semaphore;

use crate::migration::{Migration, pending};
use crate::{Result, StorageError};

/// Readers kept open beside the writer; WAL lets them read while it writes.
const READERS: usize = 4;

/// A SQLite database shared by one service. Cheap to clone.
#[derive(Clone)]
pub struct Sqlite {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    read_slots: Semaphore,
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path` and applies `migrations`.
    pub async fn open(path: impl AsRef<Path>, migrations: &'static [Migration]) -> Result<Self> {
        let path = path.as_ref().to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, migrations))
            .await
            .map_err(|e| StorageError::Worker(e.to_string()))?
    }

    fn open_blocking(path: PathBuf, migrations: &'static [Migration]) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StorageError::Worker(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let mut writer = connect(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        migrate(&mut writer, migrations)?;
        let readers = (0..READERS)
            .map(|_| connect(&path, OpenFlags::SQLITE_OPEN_READ_ONLY))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                readers: Mutex::new(readers),
                read_slots: Semaphore::new(READERS),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a reader connection.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let _slot = self
            .inner
            .read_slots
            .acquire()
            .await
            .map_err(|e| StorageError::Worker(e.to_string()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let connection = lock(&inner.readers)
                .pop()
                .ok_or_else(|| StorageError::Worker("no free reader".into()))?;
            let result = f(&connection);
            lock(&inner.readers).push(connection);
            result
        })
        .await
        .map_err(|e| StorageError::Worker(e.to_string()))?
    }

    /// Runs `f` in one write transaction, committed when `f` returns `Ok` and rolled back when it
    /// returns `Err`. Writes are serialised (SQLite allows one writer), so `f` must not wait.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = lock(&inner.writer);
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StorageError::from)?;
            let value = f(&transaction)?;
            transaction.commit().map_err(StorageError::from)?;
            Ok(value)
        })
        .await
        .map_err(|e| StorageError::Worker(e.to_string()))?
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic inside a closure leaves a connection usable (its transaction rolled back on drop).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn connect(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let connection = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(connection)
}

fn migrate(connection: &mut Connection, migrations: &'static [Migration]) -> Result<()> {
    connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        [],
    )?;
    let applied: Vec<(u32, String)> = connection
        .prepare("SELECT version, name FROM schema_migrations ORDER BY version")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for migration in pending(migrations, &applied)? {
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for statement in migration.split() {
            transaction.execute_batch(&statement).map_err(|e| {
                StorageError::Migration(format!(
                    "version {} ({}): {e}",
                    migration.version, migration.name
                ))
            })?;
        }
        transaction.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, unixepoch())",
            rusqlite::params![migration.version, migration.name],
        )?;
        transaction.commit()?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied sqlite migration"
        );
    }
    Ok(())
}

/// A column whose stored text does not read as what the record needs.
pub fn unreadable(
    column: usize,
    error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, error.into())
}

/// Column `column`: a UUID stored as text.
pub fn uuid_at(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<uuid::Uuid> {
    uuid::Uuid::parse_str(&row.get::<_, String>(column)?).map_err(|e| unreadable(column, e))
}

/// Column `column`: a UUID stored as text, or NULL.
pub fn optional_uuid_at(
    row: &rusqlite::Row<'_>,
    column: usize,
) -> rusqlite::Result<Option<uuid::Uuid>> {
    row.get::<_, Option<String>>(column)?
        .map(|text| uuid::Uuid::parse_str(&text).map_err(|e| unreadable(column, e)))
        .transpose()
}

/// Column `column`: a value stored as JSON text.
pub fn json_at<T: serde::de::DeserializeOwned>(
    row: &rusqlite::Row<'_>,
    column: usize,
) -> rusqlite::Result<T> {
    serde_json::from_str(&row.get::<_, String>(column)?).map_err(|e| unreadable(column, e))
}
