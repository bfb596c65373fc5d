use thiserror::Error;

pub type Result<T, E = LlmError> = std::result::Result<T, E>;

/// Why a backend could not produce a reply. Every variant names where it happened (a URL,
/// a field of the reply, the model), and none carries an API key.
#[derive(Debug, Error)]
pub enum LlmError {
    /// The server answered with an error status that retrying cannot fix (4xx other than
    /// 408/429), or a retryable status after the last retry.
    #[error("{url}: HTTP {status}: {message}")]
    Status { url: String, status: u16, message: String },
    /// The connection failed, was dropped, or timed out (after the last retry).
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    /// The server's reply is not what the API promises (bad JSON, a missing field).
    #[error("{url}: invalid reply: {message}")]
    InvalidReply { url: String, message: String },
    /// The request cannot be served (bad parameters, prompt longer than the context).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The native model failed.
    #[error("model: {0}")]
    Model(String),
    /// The caller or the server shut the request down.
    #[error("request cancelled")]
    Cancelled,
    /// A backend spec (`--backend`, experiment file) that does not parse or cannot be opened.
    #[error("backend `{spec}`: {message}")]
    Spec { spec: String, message: String },
}
