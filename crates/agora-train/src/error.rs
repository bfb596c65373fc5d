//! The one error type of the training crate: every failure names the file, and for
//! training data the line and field, that caused it.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A training record (or a whole data file) is unusable. `line` is 1-based; 0 means the
    /// file as a whole. `field` is empty when no single field is at fault.
    #[error("{}", describe_data(file, *line, field, message))]
    Data { file: PathBuf, line: usize, field: String, message: String },
    /// A training or sweep configuration is invalid.
    #[error("{}: {message}", file.display())]
    Config { file: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] agora_model::ModelError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl TrainError {
    pub fn data(
        file: impl Into<PathBuf>,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> TrainError {
        TrainError::Data { file: file.into(), line, field: field.into(), message: message.into() }
    }

    pub fn config(file: impl Into<PathBuf>, message: impl Into<String>) -> TrainError {
        TrainError::Config { file: file.into(), message: message.into() }
    }

    pub fn io(path: &Path, source: std::io::Error) -> TrainError {
        TrainError::Io { path: path.to_path_buf(), source }
    }
}

/// `file:line: field `x`: message`, leaving out the line and field when they are unknown.
fn describe_data(file: &Path, line: usize, field: &str, message: &str) -> String {
    let mut text = file.display().to_string();
    if line > 0 {
        text.push_str(&format!(":{line}"));
    }
    if !field.is_empty() {
        text.push_str(&format!(": field `{field}`"));
    }
    text.push_str(": ");
    text.push_str(message);
    text
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_name_file_line_and_field() {
        let error = TrainError::data("train.jsonl", 3, "chosen", "not a string");
        assert_eq!(error.to_string(), "train.jsonl:3: field `chosen`: not a string");
        let whole_file = TrainError::data("train.jsonl", 0, "", "empty file: no records");
        assert_eq!(whole_file.to_string(), "train.jsonl: empty file: no records");
    }
}
