//! Training on agora's own models: supervised fine-tuning and direct preference
//! optimisation (with its loss variants), full or through LoRA adapters, on a CPU.
//!
//! The tensor arithmetic (losses, LoRA layers, the optimizer) lives in agora-model, the
//! only crate that touches candle; this crate turns TRL-format files into token batches
//! and runs the loop around them: schedules, gradient accumulation and clipping,
//! evaluation, sample generations, run folders with metrics and checkpoints, resume, and
//! sweeps.

pub mod config;
pub mod data;
pub mod error;
pub mod model;
pub mod personagpt;
pub mod plot;
pub mod reference;
pub mod run;
pub mod schedule;
pub mod sweep;
pub mod trainer;

pub use config::{Method, TrainConfig};
pub use data::{DataOptions, LoadReport, PreferencePair, TokenizedExample, load_preferences, load_sft};
pub use error::{Result, TrainError};
pub use personagpt::{PERSONAGPT_TOKENS, personagpt_examples};
pub use plot::{Series, line_chart_svg};
pub use run::{RunDir, RunSummary};
pub use sweep::{
    Distribution, Goal, Sweep, SweepMethod, SweepMetric, SweepParameter, Trial, apply_overrides, rank_trials,
    read_sweep,
};
pub use trainer::{Dataset, Observer, TrainData, TrainOptions, train};
