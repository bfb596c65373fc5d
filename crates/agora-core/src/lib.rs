//! Domain types shared by every agora crate: conversations and their turns, personas,
//! support strategies, annotations, judgements and chat messages.
//!
//! This crate does no IO and pulls in nothing heavier than serde, so that every other
//! crate (importers, the store, the model engine, the simulator) can agree on one shape
//! of the data without depending on each other.

mod conversation;
mod json;
mod judgement;
mod message;
mod persona;
mod rng;
mod strategy;
pub mod time;
mod tree;

pub use conversation::{Conversation, Delta, Participant, Role, Source, Turn, TurnLabels};
pub use json::json_kind;
pub use judgement::{Annotation, Judgement, Score};
pub use message::{ChatRole, Message};
pub use persona::Persona;
pub use rng::{SplitMix64, mix64};
pub use strategy::{Strategy, StrategyMatch};
pub use tree::ReplyTree;

/// Free-form metadata attached to conversations, turns and personas.
pub type Meta = serde_json::Map<String, serde_json::Value>;
