//! The tensor side of training: losses (SFT cross-entropy, DPO and its variants), the
//! optimizer (AdamW) with gradient accumulation and clipping. agora-train drives them.
//!
//! Everything here is checked against PyTorch, transformers and TRL by
//! `tests/train_parity.rs`, on goldens that `scripts/goldens/make_train_goldens.py`
//! writes into `test_data/train/`.

pub mod loss;
pub mod optim;

pub use loss::{DpoConfig, DpoLossKind, DpoMetrics, DpoOutput, dpo_loss, sft_loss};
pub use optim::{AdamW, AdamWConfig, Gradients, Parameters};
