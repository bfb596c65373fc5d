//! Store errors: SQLite and JSON failures, with the store file named where it helps.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: cannot open the workspace store: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{}: no workspace store here (run `agora init` first, or pass --workspace)", .0.display())]
    Missing(PathBuf),
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: stored JSON in {what} is invalid: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("store: {0}")]
    Conflict(String),
}

impl StoreError {
    pub(crate) fn open(path: &std::path::Path, source: rusqlite::Error) -> StoreError {
        StoreError::Open { path: path.to_path_buf(), source }
    }

    pub(crate) fn json(what: impl Into<String>, source: serde_json::Error) -> StoreError {
        StoreError::Json { what: what.into(), source }
    }
}
