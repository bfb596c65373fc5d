//! The one way agora asks a model for a reply.
//!
//! Everything that needs a model's words (discussions, continuations, annotators, judges,
//! the OpenAI-compatible server) holds a `dyn Backend` and sends it a [`Request`]: a chat
//! or a raw text prompt, sampling parameters, and optionally a number of top log-probs.
//! The reply says what was generated, why it stopped, how many tokens it took, and which
//! backend and model produced it ([`BackendInfo`]), so every stored result can name its
//! source.
//!
//! Backends: [`FakeBackend`] (deterministic or scripted replies for tests of everything
//! above this crate); the native backend on agora-model and the OpenAI-compatible HTTP
//! client live beside it. A [`BackendSpec`] (`native:PATH`, `openai:URL#MODEL`,
//! `fake:seeded`) is how users pick one on the command line and in experiment files.
//!
//! Cancellation is Rust's: dropping the future returned by [`Backend::generate`] abandons
//! the request (an HTTP request is closed, a native generation row is stopped).

mod backend;
mod error;
mod fake;
mod native;
mod openai;
mod request;
mod spec;

pub use backend::{Backend, BackendInfo, BoxFuture, StreamSink};
pub use error::{LlmError, Result};
pub use fake::{FakeBackend, FakeMode};
pub use native::{MAX_TOP_LOGPROBS, NativeBackend, NativeOptions, NativeStats, sampling_config};
pub use openai::{ApiKey, OpenAiBackend, OpenAiConfig};
pub use request::{Chunk, FinishReason, Prompt, Reply, Request, Sampling, TokenLogprob, TopLogprob, Usage};
pub use spec::BackendSpec;
