//! The one error type of the model crate: every failure names the file, tensor or
//! setting that caused it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model file (config, weights, tokenizer, GGUF) is missing, truncated or wrong.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A configuration value is unsupported or inconsistent.
    #[error("{0}")]
    Config(String),
    /// Tokenizing or rendering a chat template failed.
    #[error("{0}")]
    Text(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ModelError {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> ModelError {
        ModelError::File { path: path.into(), message: message.into() }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
