//! agora's model engine on candle: the only crate that touches candle.
//!
//! Architectures are written here, one self-contained file each, because candle's stock
//! models drop gradients (fused ops without a backward pass), return last-position
//! logits only, hide attention probabilities, and take minutes to build.

mod error;
mod lm;

pub mod checkpoint;
pub mod gpt2;
pub mod llama;
pub mod ops;
pub mod scoring;
pub mod weights;

pub use candle_core::{DType, Device, Tensor};
pub use error::{ModelError, Result};
pub use lm::{Cache, LanguageModel};
pub use weights::{Model, Precision, Trainable};
