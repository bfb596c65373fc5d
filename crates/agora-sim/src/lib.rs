//! agora's experiments: multi-agent discussions between persona agents with a moderator,
//! strategy-conditioned continuations of conversations, LLM annotators and LLM judges.
//!
//! Everything here is plain data in, plain data out, and a `&dyn Backend` for the model's
//! words: no files, no store, no clock. The command-line layer reads inputs, writes each
//! finished unit to the store and resumes from it; this crate only decides what to ask and
//! how to read the answer, deterministically from a seed.
//!
//! - [`experiment`]: the experiment file (TOML). [`plan`]: its inputs expanded into
//!   concrete discussions.
//! - [`discussion`] with [`policy`] (turn and moderator policies) and [`prompt`] (layouts,
//!   on [`template`]s).
//! - [`continuation`]: strategy-conditioned continuations ([`strategies`]: ESConv, ExTES).
//! - [`annotation`]: annotators label comments; [`parse`] reads scores and labels.
//! - [`judging`]: judges score replies under a [`rubric`].
//! - [`runner`]: units and discussions run against a backend, several at once, each
//!   finished unit handed to a sink as it completes.

pub mod annotation;
pub mod continuation;
pub mod discussion;
mod error;
pub mod experiment;
pub mod judging;
pub mod parse;
pub mod plan;
pub mod policy;
pub mod prompt;
pub mod rubric;
pub mod runner;
pub mod strategies;
pub mod template;

pub use error::{Result, SimError};
