//! Training-data builders: corpora to SFT, DPO and KTO examples, and seeded grouped splits.
//!
//! Builders are pure functions from one [`Conversation`](agora_core::Conversation) to
//! examples; they do no IO, so the CLI can stream a corpus through them and hand each
//! example to a writer ([`crate::trl`], [`crate::parquet_export`]). Everything a builder
//! leaves out (a deleted delta winner, a prompt without negatives) is counted in
//! [`BuildStats`], never dropped quietly.

pub mod cmv;
pub mod esconv;
pub mod personachat;
pub mod split;

use std::collections::BTreeMap;
use std::fmt;

use agora_core::{ChatRole, Message, Meta, Role};
use serde::Serialize;

/// A chat transcript for supervised fine-tuning: the last message is the one to learn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatExample {
    /// The split key: the conversation id, so every example of one post or dialogue lands
    /// in the same split.
    pub group: String,
    pub messages: Vec<Message>,
    pub meta: Meta,
}

/// A paired preference (DPO): one prompt, a preferred and a dispreferred reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreferenceExample {
    pub group: String,
    pub prompt: Vec<Message>,
    pub chosen: Message,
    pub rejected: Message,
    pub meta: Meta,
}

/// An unpaired preference (KTO): one prompt, one reply, and whether it is desirable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KtoExample {
    pub group: String,
    pub prompt: Vec<Message>,
    pub completion: Message,
    pub label: bool,
    pub meta: Meta,
}

/// What a build did: examples made, and a named counter for everything skipped or
/// adjusted, so the CLI can print why a corpus gave fewer examples than expected.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BuildStats {
    pub conversations: u64,
    pub examples: u64,
    pub counts: BTreeMap<String, u64>,
}

impl BuildStats {
    pub fn note(&mut self, key: impl Into<String>, count: u64) {
        *self.counts.entry(key.into()).or_default() += count;
    }

    /// The value of a named counter (0 when it was never noted).
    pub fn count(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    pub fn merge(&mut self, other: BuildStats) {
        self.conversations += other.conversations;
        self.examples += other.examples;
        for (key, count) in other.counts {
            self.note(key, count);
        }
    }
}

impl fmt::Display for BuildStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conversations: {}", self.conversations)?;
        writeln!(f, "examples: {}", self.examples)?;
        for (key, count) in &self.counts {
            writeln!(f, "{key}: {count}")?;
        }
        Ok(())
    }
}

/// The chat role a corpus role plays in training data: everything that is not the
/// assistant or the system prompt is someone the assistant talks to.
pub fn chat_role(role: Role) -> ChatRole {
    match role {
        Role::Assistant => ChatRole::Assistant,
        Role::System => ChatRole::System,
        Role::User | Role::Moderator => ChatRole::User,
    }
}

/// Appends `message`, merging it into the previous message (with a blank line) when both
/// have the same role, because chat templates expect user and assistant to alternate.
pub fn push_merged(messages: &mut Vec<Message>, message: Message) {
    match messages.last_mut() {
        Some(last) if last.role == message.role => {
            last.content.push_str("\n\n");
            last.content.push_str(&message.content);
        }
        _ => messages.push(message),
    }
}

/// Keeps the last `limit` items (all of them when `limit` is `None`).
pub(crate) fn last_items<T>(items: &[T], limit: Option<usize>) -> &[T] {
    match limit {
        Some(limit) if items.len() > limit => &items[items.len() - limit..],
        _ => items,
    }
}

/// Shorthand for building example metadata.
pub(crate) fn meta_from(pairs: impl IntoIterator<Item = (&'static str, serde_json::Value)>) -> Meta {
    pairs.into_iter().map(|(key, value)| (key.to_string(), value)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_joins_same_role_with_a_blank_line() {
        let mut messages = vec![Message::user("a")];
        push_merged(&mut messages, Message::user("b"));
        push_merged(&mut messages, Message::assistant("c"));
        assert_eq!(messages, vec![Message::user("a\n\nb"), Message::assistant("c")]);
    }

    #[test]
    fn last_items_limits_from_the_end() {
        assert_eq!(last_items(&[1, 2, 3], Some(2)), &[2, 3]);
        assert_eq!(last_items(&[1, 2, 3], None), &[1, 2, 3]);
        assert_eq!(last_items(&[1, 2, 3], Some(5)), &[1, 2, 3]);
    }
}
