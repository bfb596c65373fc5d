//! Training on agora's own models: supervised fine-tuning and direct preference
//! optimisation (with its loss variants), full or through LoRA adapters, on a CPU.
//!
//! The tensor arithmetic (losses, LoRA layers, the optimizer) lives in agora-model, the
//! only crate that touches candle; this crate turns TRL-format files into token batches
//! and runs the loop around them: schedules, gradient accumulation and clipping,
//! evaluation, sample generations, run folders with metrics and checkpoints, resume, and
//! sweeps.
