//! Personas: who an agent (or a corpus speaker) is, as open attributes, Persona-Chat
//! style facts, and free-text instructions.

use serde::{Deserialize, Serialize};

use crate::Meta;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Persona {
    /// Display name (SDF `username`, or `self`/`partner` for Persona-Chat).
    pub name: String,
    /// Open key/value attributes (age, sex, employment, personality characteristics...),
    /// kept in the order and with the JSON types of the source file.
    #[serde(default, skip_serializing_if = "Meta::is_empty")]
    pub attributes: Meta,
    /// Persona-Chat style facts ("i read twenty books a year.").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<String>,
    /// Free-text instructions or intent (SDF `special_instructions` / `intent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
}

impl Persona {
    /// Renders the attributes as "key: value" pairs, the way prompts describe a persona.
    pub fn describe(&self) -> String {
        let mut parts = Vec::with_capacity(self.attributes.len() + self.facts.len());
        for (key, value) in &self.attributes {
            let rendered = match value {
                serde_json::Value::String(text) => text.clone(),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|item| match item {
                        serde_json::Value::String(text) => text.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                other => other.to_string(),
            };
            parts.push(format!("{key}: {rendered}"));
        }
        parts.extend(self.facts.iter().cloned());
        parts.join("; ")
    }
}
