//! Planning strategy-conditioned continuations (the ESConv-SRA experiment): cut a
//! conversation before a supporter turn and ask a model for that turn once per strategy.
//!
//! Pure planning: this module decides the cut points, the unit keys and the chat messages;
//! the runner sends them through a `Backend`, and `clean_reply` tidies what comes back.
//!
//! The two prompt layouts follow ESConv-SRA's "full" and "partial" prompt constructors, in
//! agora's own wording. Both open with a system message that casts the model as a caring
//! friend, states the seeker's situation, names the strategy with its description, and asks
//! for one short paragraph. They differ in where the earlier conversation goes:
//! - `Full`: every earlier turn is its own chat message (seeker = user, supporter =
//!   assistant), ending with the seeker's last message;
//! - `Partial`: the earlier turns are written out as a transcript at the top of the system
//!   message, and only the seeker's last message is a chat message. This is the layout of
//!   the published ESConv-SRA outputs (one turn kept as a message, the history first), and
//!   the one its strategy-relevant-attention analysis reads.
//!
//! Like the origin, consecutive turns by the same side are joined into one message (chat
//! templates expect alternation), a leading supporter turn is dropped (the transcript starts
//! with the seeker), and turns by other roles (system, moderator) are left out of the prompt.

use agora_core::{Conversation, Message, Role};
use serde::{Deserialize, Serialize};

use crate::strategies::StrategyDef;

/// Where the earlier conversation goes in the prompt (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryLayout {
    Full,
    #[default]
    Partial,
}

/// Where to cut a conversation. A cut point `n` means: keep turns `0..n` as the history and
/// generate turn `n` as the responder's. It is valid when turn `n - 1` is the other side's
/// (a continuation answers the other side) and some turn of that side precedes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CutSpec {
    /// Every place where a turn of `role` follows the other side, plus the end of the
    /// conversation when it ends on the other side. `role` is the responder: `assistant`
    /// (the supporter, in agora's roles) unless the file says otherwise.
    EveryTurn {
        #[serde(default = "supporter_role")]
        role: Role,
    },
    /// Only the last valid cut point: the end when the seeker spoke last (as in ESConv-SRA's
    /// data), otherwise before the last supporter turn that answers the seeker.
    Last,
    /// The given cut points (turn indices); those that are not valid cut points in a
    /// conversation are skipped for that conversation (`cut_points` says which remain).
    Turns { turns: Vec<u32> },
}

fn supporter_role() -> Role {
    Role::Assistant
}

impl CutSpec {
    /// The role whose turn the continuations write.
    pub fn responder(&self) -> Role {
        match self {
            CutSpec::EveryTurn { role } => *role,
            CutSpec::Last | CutSpec::Turns { .. } => Role::Assistant,
        }
    }
}

/// One continuation to generate: a unit of work with a stable key, so a resumed job can
/// tell which continuations exist already.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContinuationItem {
    /// `<conversation id>/<cut turn>/<strategy name>`.
    pub key: String,
    pub conversation_id: String,
    /// Index of the turn being written; turns before it are the history.
    pub cut_turn: u32,
    pub strategy: String,
    pub messages: Vec<Message>,
}

/// The valid cut points of `conversation` under `cuts`, ascending and without repeats.
pub fn cut_points(conversation: &Conversation, cuts: &CutSpec) -> Vec<u32> {
    let responder = cuts.responder();
    let turns = &conversation.turns;
    let is_valid = |cut: usize| -> bool {
        cut >= 1
            && cut <= turns.len()
            && is_other_side(turns[cut - 1].role, responder)
            && turns.get(cut).is_none_or(|turn| turn.role == responder)
    };
    let every: Vec<u32> =
        (1..=turns.len()).filter(|&cut| is_valid(cut)).filter_map(|cut| u32::try_from(cut).ok()).collect();
    match cuts {
        CutSpec::EveryTurn { .. } => every,
        CutSpec::Last => every.last().copied().into_iter().collect(),
        CutSpec::Turns { turns: wanted } => {
            let mut chosen: Vec<u32> = wanted.iter().copied().filter(|cut| every.contains(cut)).collect();
            chosen.sort_unstable();
            chosen.dedup();
            chosen
        }
    }
}

/// The side that speaks to the responder: the seeker when the supporter responds.
fn is_other_side(role: Role, responder: Role) -> bool {
    matches!(role, Role::User | Role::Assistant) && role != responder
}

/// Plans one continuation per (cut point, strategy), cut points ascending and strategies in
/// the given order. `situation` is the seeker's problem as ESConv states it; without it the
/// prompt says only that a friend came to talk.
pub fn plan_continuations(
    conversation: &Conversation,
    situation: Option<&str>,
    cuts: &CutSpec,
    strategies: &[StrategyDef],
    layout: HistoryLayout,
) -> Vec<ContinuationItem> {
    let responder = cuts.responder();
    let mut items = Vec::new();
    for cut_turn in cut_points(conversation, cuts) {
        let exchanges = exchanges_before(conversation, cut_turn as usize, responder);
        for strategy in strategies {
            let instructions = instructions(situation, strategy);
            items.push(ContinuationItem {
                key: format!("{}/{cut_turn}/{}", conversation.id, strategy.name),
                conversation_id: conversation.id.clone(),
                cut_turn,
                strategy: strategy.name.clone(),
                messages: layout_messages(&instructions, &exchanges, layout),
            });
        }
    }
    items
}

/// A run of consecutive turns by one side, joined.
#[derive(Debug)]
struct Exchange {
    from_responder: bool,
    text: String,
}

/// The history before `cut`, as alternating exchanges that start with the other side and
/// end with it (the cut is valid, so the last turn is the other side's).
fn exchanges_before(conversation: &Conversation, cut: usize, responder: Role) -> Vec<Exchange> {
    let mut exchanges: Vec<Exchange> = Vec::new();
    for turn in conversation.turns.iter().take(cut) {
        if !matches!(turn.role, Role::User | Role::Assistant) {
            continue;
        }
        let from_responder = turn.role == responder;
        let text = turn.text.trim();
        match exchanges.last_mut() {
            Some(last) if last.from_responder == from_responder => {
                if !text.is_empty() {
                    if !last.text.is_empty() {
                        last.text.push('\n');
                    }
                    last.text.push_str(text);
                }
            }
            None if from_responder => {}
            _ => exchanges.push(Exchange { from_responder, text: text.to_string() }),
        }
    }
    exchanges
}

/// The system instructions: persona, situation, strategy, answer shape.
fn instructions(situation: Option<&str>, strategy: &StrategyDef) -> String {
    let situation = match situation.map(str::trim).filter(|situation| !situation.is_empty()) {
        Some(situation) => {
            format!("Your close friend has come to you about this situation: \"{situation}\".")
        }
        None => {
            "Your close friend has come to talk to you about something that is troubling them.".to_string()
        }
    };
    let description = strategy.description.trim();
    format!(
        "You are a warm and caring friend. {situation} Write your next reply in the conversation, and use the \
         \"{name}\" support strategy in it ({name}: {description}) Keep the reply short and to the point, add \
         nothing beyond it, and answer in one short paragraph that applies the {name} strategy.",
        name = strategy.name,
    )
}

fn layout_messages(instructions: &str, exchanges: &[Exchange], layout: HistoryLayout) -> Vec<Message> {
    let as_message = |exchange: &Exchange| {
        if exchange.from_responder {
            Message::assistant(exchange.text.clone())
        } else {
            Message::user(exchange.text.clone())
        }
    };
    match layout {
        HistoryLayout::Full => {
            std::iter::once(Message::system(instructions)).chain(exchanges.iter().map(as_message)).collect()
        }
        HistoryLayout::Partial => {
            let (last, earlier) = match exchanges.split_last() {
                Some((last, earlier)) => (Some(last), earlier),
                None => (None, exchanges),
            };
            let mut system = String::from("The conversation so far:\n");
            if earlier.is_empty() {
                system.push_str("(this is your friend's first message)\n");
            }
            for exchange in earlier {
                let speaker = if exchange.from_responder { "You" } else { "Friend" };
                system.push_str(&format!("{speaker}: {}\n", exchange.text));
            }
            system.push('\n');
            system.push_str(instructions);
            std::iter::once(Message::system(system)).chain(last.map(as_message)).collect()
        }
    }
}

/// Tidies a continuation: trims it and removes a leading speaker label the model added
/// (`assistant:`, `supporter:`, `you:`, also in bold), which ESConv-SRA's prompt even asked
/// for. When the model went on to write the seeker's next turn too (a line starting with
/// `user:`, `seeker:` or `friend:`), that part is cut off.
pub fn clean_reply(text: &str) -> String {
    let mut reply = text.trim();
    loop {
        let unlabelled = strip_label(reply, &["assistant", "supporter", "you"]);
        if unlabelled.len() == reply.len() {
            break;
        }
        reply = unlabelled.trim_start();
    }
    let mut kept: Vec<&str> = Vec::new();
    for line in reply.lines() {
        if strip_label(line.trim_start(), &["user", "seeker", "friend"]).len() != line.trim_start().len() {
            break;
        }
        kept.push(line);
    }
    kept.join("\n").trim().to_string()
}

/// `text` without a leading `label:` (ASCII case-insensitive, markdown `*` allowed around
/// the label), or `text` unchanged.
fn strip_label<'a>(text: &'a str, labels: &[&str]) -> &'a str {
    let unstarred = text.trim_start_matches('*');
    for label in labels {
        let Some(head) = unstarred.get(..label.len()) else { continue };
        if !head.eq_ignore_ascii_case(label) {
            continue;
        }
        let after = unstarred[label.len()..].trim_start_matches('*');
        if let Some(rest) = after.strip_prefix(':') {
            return rest.trim_start_matches('*');
        }
    }
    text
}
