//! The workspace store: one SQLite file per workspace (WAL mode) holding corpora,
//! conversations and turns, personas and texts, annotations, the job ledger that
//! lets long jobs resume after a crash with nothing lost and nothing duplicated, and the
//! register of training runs.
//!
//! This is the only crate that writes SQL. Callers see plain agora-core types.

mod conversations;
mod error;
mod jobs;
mod library;
mod runs;
mod schema;

use std::path::{Path, PathBuf};

use rusqlite::Connection;

pub use conversations::{CorpusSummary, ImportBatch, ImportCounts, Stats};
pub use error::StoreError;
pub use jobs::{JobInfo, JobStatus, Unit};
pub use library::NamedText;
pub use runs::RunRecord;

/// The file name of the store inside a workspace folder.
pub const STORE_FILE: &str = "agora.sqlite";

/// An open workspace store.
#[derive(Debug)]
pub struct Store {
    connection: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens the store at `path`, creating it and applying migrations as needed.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let connection = Connection::open(path).map_err(|e| StoreError::open(path, e))?;
        // WAL lets readers (the viewer) run beside a writer (a job); NORMAL sync is
        // durable at every commit boundary under WAL, which is what resume relies on.
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA busy_timeout = 10000;",
            )
            .map_err(|e| StoreError::open(path, e))?;
        let mut store = Store { connection, path: path.to_path_buf() };
        schema::migrate(&mut store.connection).map_err(|e| StoreError::open(path, e))?;
        Ok(store)
    }

    /// Opens an existing store; a missing file is an error rather than a new store.
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        Store::open(path)
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<Store, StoreError> {
        let mut connection = Connection::open_in_memory()?;
        connection.execute_batch("PRAGMA foreign_keys = ON;")?;
        schema::migrate(&mut connection)?;
        Ok(Store { connection, path: PathBuf::from(":memory:") })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version the store is at.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self.connection.query_row("PRAGMA user_version", [], |row| row.get(0))?)
    }
}

/// The current time as RFC 3339 UTC text (seconds precision), for `created_at` columns.
pub(crate) fn now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_utc(seconds)
}

pub use agora_core::time::format_utc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_is_migrated_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let store = Store::open(&path).unwrap();
        let version = store.schema_version().unwrap();
        assert_eq!(version, schema::MIGRATIONS.len() as u32);
        drop(store);
        let store = Store::open_existing(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), version);
        let missing = Store::open_existing(&dir.path().join("nope.sqlite")).unwrap_err();
        assert!(missing.to_string().contains("nope.sqlite"), "{missing}");
    }
}
