//! The one error type of the corpus crate. Every error names where it happened, so the
//! CLI can print a single line a researcher can act on.

use std::fmt;
use std::path::{Path, PathBuf};

/// A place in an input: the file, then optionally a line (1-based) or a record, and a field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: Option<u64>,
    /// A record that is not a line: "dialogue 3", "conversation 12", "submission abc12".
    pub record: Option<String>,
    /// A JSON path or column: `comments[3].parent_id`, `dialog[2].annotation.strategy`.
    pub field: Option<String>,
}

impl Location {
    pub fn file(file: &Path) -> Location {
        Location { file: file.to_path_buf(), ..Location::default() }
    }

    pub fn line(file: &Path, line: u64) -> Location {
        Location { line: Some(line), ..Location::file(file) }
    }

    pub fn with_record(mut self, record: impl Into<String>) -> Location {
        self.record = Some(record.into());
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Location {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(record) = &self.record {
            write!(f, ": {record}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The input is malformed at `location`.
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The consumer of imported conversations (usually the store) failed.
    #[error("{0}")]
    Sink(Box<dyn std::error::Error + Send + Sync>),
}

impl CorpusError {
    pub fn invalid(location: Location, message: impl Into<String>) -> CorpusError {
        CorpusError::Invalid { location, message: message.into() }
    }

    pub fn io(path: &Path, source: std::io::Error) -> CorpusError {
        CorpusError::Io { path: path.to_path_buf(), source }
    }

    /// The location of a malformed-input error, for skip reports.
    pub fn location(&self) -> Option<&Location> {
        match self {
            CorpusError::Invalid { location, .. } => Some(location),
            _ => None,
        }
    }
}
