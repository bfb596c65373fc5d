//! Chat messages as training data and chat templates see them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

impl ChatRole {
    /// The role's name in chat templates and the OpenAI API.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: ChatRole,
    pub content: String,
}

impl Message {
    pub fn new(role: ChatRole, content: impl Into<String>) -> Message {
        Message { role, content: content.into() }
    }

    pub fn system(content: impl Into<String>) -> Message {
        Message::new(ChatRole::System, content)
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message::new(ChatRole::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new(ChatRole::Assistant, content)
    }
}
