//! Persona-Chat dialogues to persona-conditioned SFT examples: the "self" persona as the
//! system message, the partner as the user, and each "self" turn as the reply to learn.

use agora_core::{Conversation, Message, Role};
use serde_json::Value;

use super::{BuildStats, ChatExample, chat_role, last_items, meta_from, push_merged};

/// How Persona-Chat dialogues become training examples.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonaBuildConfig {
    /// The line before the persona facts in the system message.
    pub persona_header: String,
    /// Also describe the partner's persona (when the corpus gives it).
    pub include_partner_persona: bool,
    /// Keep at most this many turns of history before the reply (all when `None`).
    pub max_history: Option<usize>,
    /// One example per dialogue holding every turn (up to the last "self" turn), instead
    /// of one example per "self" turn.
    pub one_per_dialogue: bool,
}

impl Default for PersonaBuildConfig {
    fn default() -> PersonaBuildConfig {
        PersonaBuildConfig {
            persona_header: "Your persona:".to_string(),
            include_partner_persona: false,
            max_history: None,
            one_per_dialogue: false,
        }
    }
}

/// Examples for one dialogue; see [`PersonaBuildConfig::one_per_dialogue`].
pub fn persona_examples(
    conversation: &Conversation,
    config: &PersonaBuildConfig,
    stats: &mut BuildStats,
) -> Vec<ChatExample> {
    stats.conversations += 1;
    let system = system_message(conversation, config, stats);
    let mut examples = Vec::new();
    if config.one_per_dialogue {
        let last_self = conversation.turns.iter().rposition(|turn| turn.role == Role::Assistant);
        match last_self {
            Some(last_self) => {
                let trailing = conversation.turns.len() - last_self - 1;
                stats.note("trailing partner turns left out of whole-dialogue examples", trailing as u64);
                let mut messages: Vec<Message> = system.iter().cloned().collect();
                for turn in &conversation.turns[..=last_self] {
                    push_merged(&mut messages, Message::new(chat_role(turn.role), turn.text.trim()));
                }
                let meta = meta_from([
                    ("conversation_id", Value::from(conversation.id.clone())),
                    ("turns", Value::from(last_self + 1)),
                ]);
                examples.push(ChatExample { group: conversation.id.clone(), messages, meta });
            }
            None => stats.note("dialogues skipped: no self turn", 1),
        }
    } else {
        for (position, turn) in conversation.turns.iter().enumerate() {
            if turn.role != Role::Assistant {
                continue;
            }
            if turn.text.trim().is_empty() {
                stats.note("self turns skipped: empty text", 1);
                continue;
            }
            let mut messages: Vec<Message> = system.iter().cloned().collect();
            for earlier in last_items(&conversation.turns[..position], config.max_history) {
                push_merged(&mut messages, Message::new(chat_role(earlier.role), earlier.text.trim()));
            }
            messages.push(Message::assistant(turn.text.trim()));
            let meta = meta_from([
                ("conversation_id", Value::from(conversation.id.clone())),
                ("turn_index", Value::from(turn.index)),
            ]);
            examples.push(ChatExample { group: conversation.id.clone(), messages, meta });
        }
    }
    stats.examples += examples.len() as u64;
    examples
}

/// "Your persona:" followed by one "- fact" line per fact of the assistant participant,
/// then optionally the partner's. `None` (counted) when no persona facts exist at all.
fn system_message(
    conversation: &Conversation,
    config: &PersonaBuildConfig,
    stats: &mut BuildStats,
) -> Option<Message> {
    let facts_of = |role: Role| {
        conversation
            .participants
            .iter()
            .find(|participant| participant.role == role)
            .and_then(|participant| participant.persona.as_ref())
            .map(|persona| persona.facts.clone())
            .unwrap_or_default()
    };
    let self_facts = facts_of(Role::Assistant);
    let mut sections = Vec::new();
    if self_facts.is_empty() {
        stats.note("dialogues without self persona facts", 1);
    } else {
        sections.push(render_facts(&config.persona_header, &self_facts));
    }
    if config.include_partner_persona {
        let partner_facts = facts_of(Role::User);
        if partner_facts.is_empty() {
            stats.note("dialogues without partner persona facts", 1);
        } else {
            sections.push(render_facts("Your partner's persona:", &partner_facts));
        }
    }
    (!sections.is_empty()).then(|| Message::system(sections.join("\n\n")))
}

fn render_facts(header: &str, facts: &[String]) -> String {
    let mut text = header.to_string();
    for fact in facts {
        text.push_str("\n- ");
        text.push_str(fact.trim());
    }
    text
}
