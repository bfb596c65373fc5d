//! The one error type of agora-sim. Every variant names the place that failed: the
//! experiment field, the discussion or unit, the template placeholder.

use agora_llm::LlmError;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An experiment file or its inputs say something impossible.
    #[error("{place}: {message}")]
    Config { place: String, message: String },
    /// A backend failed for one unit; the unit is not recorded and a resumed run retries it.
    #[error("{unit}: {source}")]
    Backend {
        unit: String,
        #[source]
        source: LlmError,
    },
    /// The sink (the store) refused a finished unit.
    #[error("{unit}: could not record: {message}")]
    Record { unit: String, message: String },
}

impl SimError {
    pub fn config(place: impl Into<String>, message: impl Into<String>) -> SimError {
        SimError::Config { place: place.into(), message: message.into() }
    }
}

pub type Result<T, E = SimError> = std::result::Result<T, E>;
