//! Conversations: an ordered list of turns, where Reddit-style threads form a tree
//! through `reply_to`.

use serde::{Deserialize, Serialize};

use crate::{Meta, Strategy};

/// Where a conversation came from: the corpus (format + name) and the id it had there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Format or corpus family, e.g. `cmv`, `esconv`, `personachat`, `sdf`.
    pub corpus: String,
    /// The identifier the record had in its original file (submission id, dialogue number...).
    pub original_id: String,
}

/// One conversation: a dialogue, a discussion or a whole Reddit thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Stable id, unique within a workspace: `<corpus>:<original id>`.
    pub id: String,
    pub source: Source,
    /// Speakers taking part, in order of first appearance; personas where the corpus has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<Participant>,
    /// Turns in reading order. For trees (Reddit) a parent always precedes its replies.
    pub turns: Vec<Turn>,
    /// Corpus-specific fields (title, situation, survey scores...).
    #[serde(default, skip_serializing_if = "Meta::is_empty")]
    pub meta: Meta,
}

/// A speaker of a conversation, with its persona when the corpus provides one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persona: Option<crate::Persona>,
}

/// The part a speaker plays in a conversation. Builders map these to chat roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The person seeking something: a CMV original poster, an ESConv seeker,
    /// the Persona-Chat partner who speaks first.
    User,
    /// The side a model learns to play: a CMV commenter, an ESConv supporter,
    /// the Persona-Chat speaker whose persona is "your persona".
    Assistant,
    System,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
            Role::Moderator => "moderator",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "system" => Some(Role::System),
            "moderator" => Some(Role::Moderator),
            _ => None,
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// Position in `Conversation::turns`.
    pub index: u32,
    /// The turn's id in the original corpus (Reddit comment id), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_id: Option<String>,
    pub speaker: String,
    pub role: Role,
    pub text: String,
    /// Index of the turn this one answers (Reddit trees); `None` for roots and for
    /// linear dialogues where every turn answers the previous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u32>,
    #[serde(default, skip_serializing_if = "TurnLabels::is_empty")]
    pub labels: TurnLabels,
}

/// Labels a corpus or an experiment attaches to a turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnLabels {
    /// Support strategy (ESConv supporter turns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// A delta this turn won (CMV): set on the awarded comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    /// The turn awards a delta itself (contains `∆`, `&#8710;` or `!delta`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gives_delta: bool,
    /// Seeker feedback score (ESConv), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
    /// Other labels, open-ended.
    #[serde(default, skip_serializing_if = "Meta::is_empty")]
    pub extra: Meta,
}

impl TurnLabels {
    pub fn is_empty(&self) -> bool {
        self.strategy.is_none()
            && self.delta.is_none()
            && !self.gives_delta
            && self.feedback.is_none()
            && self.extra.is_empty()
    }
}

/// A CMV delta: `giver` says their view was changed by the comment it is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Author of the comment containing the delta sign.
    pub giver: String,
    /// Author of the awarded comment.
    pub receiver: String,
    /// Index of the comment in which the delta was given.
    pub given_in: u32,
    /// True when DeltaBot confirmed it ("Confirmed: 1 delta awarded to /u/NAME").
    pub confirmed: bool,
    /// True when the giver is the original poster (the deltas persuasion research uses).
    pub by_op: bool,
}

impl Conversation {
    /// Builds the conventional id `<corpus>:<original id>`.
    pub fn make_id(corpus: &str, original_id: &str) -> String {
        format!("{corpus}:{original_id}")
    }

    pub fn turn(&self, index: u32) -> Option<&Turn> {
        self.turns.get(index as usize)
    }

    /// Whether the turns form a tree (some turn names its parent) rather than a line.
    pub fn is_tree(&self) -> bool {
        self.turns.iter().any(|turn| turn.reply_to.is_some())
    }
}
