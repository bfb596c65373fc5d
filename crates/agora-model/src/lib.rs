//! agora's model engine on candle: the only crate that touches candle.
//!
//! Architectures are written here, one self-contained file each, because candle's stock
//! models drop gradients (fused ops without a backward pass), return last-position
//! logits only, hide attention probabilities, and take minutes to build.

mod chat_template;
pub mod checkpoint;
pub mod convert;
pub mod engine;
mod error;
pub mod fetch;
pub mod fused;
pub mod generate;
pub mod gguf_meta;
pub mod gpt2;
pub mod llama;
mod lm;
pub mod lora;
mod memory;
pub mod ops;
pub mod quant_kernels;
pub mod sampling;
pub mod scoring;
mod sgemm;
mod tokenizer;
pub mod train;
pub mod weights;

pub use candle_core::{DType, Device, Tensor, Var};
pub use candle_nn::VarMap;
pub use chat_template::{CHATML_TEMPLATE, ChatTemplate, FALLBACK_NOTICE, Message};
pub use engine::Engine;
pub use error::{ModelError, Result};
pub use generate::{BatchGenerator, RowEvent, RowId, RowRequest, TokenLogprobs};
pub use lm::{Cache, LanguageModel};
pub use sampling::{Sampler, SamplingConfig};
pub use tokenizer::{IncrementalDecoder, NamedChatTemplate, Tokenizer};
pub use weights::{Model, Precision, Trainable};
