//! ESConv dialogues to strategy-conditioned SFT examples: for every supporter turn with a
//! strategy, a system message naming the strategy, the dialogue so far, and the reply.

use agora_core::{Conversation, Message, Role};
use serde_json::Value;

use super::{BuildStats, ChatExample, chat_role, last_items, meta_from, push_merged};

/// How ESConv dialogues become training examples.
#[derive(Debug, Clone, PartialEq)]
pub struct EsconvBuildConfig {
    /// The system message; `{strategy}` and `{description}` are replaced by the strategy's
    /// name and its one-sentence definition.
    pub system_template: String,
    /// Append the seeker's situation (conversation meta `situation`) to the system message.
    pub include_situation: bool,
    /// Keep at most this many turns of history before the reply (all when `None`).
    pub max_history: Option<usize>,
}

impl Default for EsconvBuildConfig {
    fn default() -> EsconvBuildConfig {
        EsconvBuildConfig {
            system_template: "You are a supportive listener. Respond using the strategy: \
                              {strategy} — {description}"
                .to_string(),
            include_situation: true,
            max_history: None,
        }
    }
}

/// One example per supporter turn that has a strategy and at least one turn before it.
pub fn strategy_examples(
    conversation: &Conversation,
    config: &EsconvBuildConfig,
    stats: &mut BuildStats,
) -> Vec<ChatExample> {
    stats.conversations += 1;
    let situation = conversation.meta.get("situation").and_then(Value::as_str).map(str::trim);
    let mut examples = Vec::new();
    for (position, turn) in conversation.turns.iter().enumerate() {
        if turn.role != Role::Assistant {
            continue;
        }
        let Some(strategy) = turn.labels.strategy else {
            stats.note("supporter turns skipped: no strategy", 1);
            continue;
        };
        if position == 0 {
            stats.note("supporter turns skipped: first turn (no history)", 1);
            continue;
        }
        if turn.text.trim().is_empty() {
            stats.note("supporter turns skipped: empty text", 1);
            continue;
        }
        let mut system = config
            .system_template
            .replace("{strategy}", strategy.name())
            .replace("{description}", strategy.description());
        if config.include_situation {
            match situation {
                Some(situation) if !situation.is_empty() => {
                    system.push_str("\n\nThe seeker's situation: ");
                    system.push_str(situation);
                }
                _ => stats.note("examples without a situation", 1),
            }
        }
        let mut messages = vec![Message::system(system)];
        for earlier in last_items(&conversation.turns[..position], config.max_history) {
            push_merged(&mut messages, Message::new(chat_role(earlier.role), earlier.text.trim()));
        }
        // The reply stays its own message even after a supporter turn, so that the
        // example always ends with exactly the turn being learnt.
        messages.push(Message::assistant(turn.text.trim()));
        let mut meta = meta_from([
            ("conversation_id", Value::from(conversation.id.clone())),
            ("turn_index", Value::from(turn.index)),
            ("strategy", Value::from(strategy.name())),
        ]);
        for key in ["emotion_type", "problem_type"] {
            if let Some(value) = conversation.meta.get(key) {
                meta.insert(key.to_string(), value.clone());
            }
        }
        examples.push(ChatExample { group: conversation.id.clone(), messages, meta });
    }
    stats.examples += examples.len() as u64;
    examples
}
