//! agora's experiments: multi-agent discussions between persona agents with a moderator,
//! strategy-conditioned continuations of conversations, LLM annotators and LLM judges.
//!
//! Everything here is plain data in, plain data out, and a `&dyn Backend` for the model's
//! words: no files, no store, no clock. The command-line layer reads inputs, writes each
//! finished unit to the store and resumes from it; this crate only decides what to ask and
//! how to read the answer, deterministically from a seed.

pub mod continuation;
pub mod parse;
pub mod rubric;
pub mod strategies;
pub mod template;
