//! agora's HTTP side: the OpenAI-compatible API served by `agora serve` (and, later, the
//! local web viewer). The only crate that serves HTTP.
//!
//! [`serve`] answers `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`
//! (streamed as server-sent events or not, with log-probs when asked) and `GET /health`
//! for any [`agora_llm::Backend`], so the official `openai` clients, vLLM-style tools and
//! agora's own HTTP backend can talk to agora's models. [`router`] is the same API without
//! a listener. Requests run concurrently: batching them is the backend's job.
//!
//! Safety by default: it binds 127.0.0.1, checks an optional bearer token in constant
//! time, limits body size, `max_tokens` and concurrent requests, and answers every error
//! in OpenAI's JSON error envelope. A client that disconnects mid-stream cancels its
//! backend request.

mod api;
mod error;
mod server;
pub mod wire;

pub use error::{ApiError, ServeError};
pub use server::{BoundServer, ServeConfig, bind, router, serve};
