use std::future::Future;
use std::pin::Pin;

use agora_core::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::{Chunk, Reply, Request, Result, Sampling};

/// A boxed future, so that `Backend` can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where streamed pieces of a reply go. The complete [`Reply`] is still returned at the
/// end; the concatenated chunks equal its text. A backend that finds the receiver gone
/// treats the request as cancelled.
pub type StreamSink = UnboundedSender<Chunk>;

/// Which backend and model produced a reply: recorded with every stored output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// `native`, `openai` or `fake`.
    pub kind: String,
    /// The spec that opens this backend again (see [`crate::BackendSpec`]); never holds an
    /// API key.
    pub spec: String,
    /// The model's name (a file name, a served model id).
    pub model: String,
}

/// Something that answers [`Request`]s.
pub trait Backend: Send + Sync {
    fn info(&self) -> &BackendInfo;

    /// Generates a reply, sending pieces to `stream` as they are produced when one is
    /// given. Dropping the returned future cancels the request.
    fn generate(&self, request: Request, stream: Option<StreamSink>) -> BoxFuture<'_, Result<Reply>>;
}

impl dyn Backend + '_ {
    /// A chat reply, not streamed.
    pub async fn chat(&self, messages: Vec<Message>, sampling: Sampling) -> Result<Reply> {
        self.generate(Request::chat(messages, sampling), None).await
    }

    /// A continuation of raw text, not streamed.
    pub async fn complete(&self, text: impl Into<String>, sampling: Sampling) -> Result<Reply> {
        self.generate(Request::text(text, sampling), None).await
    }
}

impl std::fmt::Debug for dyn Backend + '_ {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_tuple("Backend").field(&self.info().spec).finish()
    }
}
