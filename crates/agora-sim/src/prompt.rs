//! Prompt layouts of discussion agents and annotators. The default follows the Synthetic
//! Discussion Framework: a system message "You are {name} {attributes}. Context: ...
//! Your instructions: ...", then the visible part of the discussion as "User X posted: ..."
//! lines ending with the cue for the speaker. Every part is a template, so an experiment
//! file can change the wording without code.

use agora_core::{Message, Persona};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::template::Template;
use crate::{Result, SimError};

/// One agent: a persona and what it was told to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub name: String,
    pub persona: Persona,
    /// The instruction text (user, moderator or annotator instructions).
    pub instructions: String,
    /// Where the instructions came from (file stem), for reports.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instructions_name: String,
}

impl Agent {
    /// The persona's attributes as the prompt shows them: "(age: 29; sex: male)", or
    /// nothing. The persona's own instructions (SDF `intent`) follow the given ones.
    fn attributes(&self) -> String {
        let described = self.persona.describe();
        if described.is_empty() { String::new() } else { format!("({described})") }
    }

    fn all_instructions(&self) -> String {
        match self.persona.instructions.as_deref().map(str::trim) {
            Some(own) if !own.is_empty() => format!("{} {own}", self.instructions.trim()),
            _ => self.instructions.trim().to_string(),
        }
    }
}

/// A line of visible history.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub speaker: &'a str,
    pub text: &'a str,
}

/// How a discussion agent's prompt is laid out. Placeholders: system — `{name}`,
/// `{attributes}`, `{context}`, `{instructions}`, `{topic}`; user — `{opening_speaker}`,
/// `{topic}`, `{history}`, `{name}`; line — `{speaker}`, `{text}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscussionLayout {
    pub system: Template,
    pub user: Template,
    pub line: Template,
}

impl Default for DiscussionLayout {
    fn default() -> DiscussionLayout {
        DiscussionLayout {
            system: fixed(
                "You are {name} {attributes}. Context: {context} Your instructions: {instructions}",
            ),
            user: fixed("User {opening_speaker} posted: {topic}\n{history}\nUser {name} posted:"),
            line: fixed("User {speaker} posted: {text}"),
        }
    }
}

/// How an annotator's prompt is laid out (the framework's annotator: its persona and
/// instructions as the system message, then "Conversation so far:" and the comments up to
/// the one to label). Placeholders: system as [`DiscussionLayout`]; user — `{history}`,
/// `{comment}`, `{speaker}`; line — `{speaker}`, `{text}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnotationLayout {
    pub system: Template,
    pub user: Template,
    pub line: Template,
}

impl Default for AnnotationLayout {
    fn default() -> AnnotationLayout {
        AnnotationLayout {
            system: fixed(
                "You are {name} {attributes}. Context: {context} Your instructions: {instructions}",
            ),
            user: fixed("Conversation so far:\n\n{history}\nOutput:"),
            line: fixed("User {speaker} posted: {text}"),
        }
    }
}

fn fixed(text: &str) -> Template {
    // The built-in layouts are constants checked by the tests below.
    Template::parse(text).unwrap_or_else(|_| unreachable!("built-in layout {text:?} parses"))
}

fn template_error(part: &str, error: impl std::fmt::Display) -> SimError {
    SimError::config(format!("layout.{part}"), error.to_string())
}

fn render_lines(line: &Template, lines: &[Line<'_>]) -> Result<String> {
    let mut history = String::new();
    for entry in lines {
        let rendered = line
            .fill(&[("speaker", entry.speaker), ("text", entry.text)])
            .map_err(|e| template_error("line", e))?;
        history.push_str(&rendered);
        history.push('\n');
    }
    Ok(history.trim_end_matches('\n').to_string())
}

fn system_message(system: &Template, agent: &Agent, context: &str, topic: &str) -> Result<Message> {
    let attributes = agent.attributes();
    let instructions = agent.all_instructions();
    let text = system
        .fill(&[
            ("name", &agent.name),
            ("attributes", &attributes),
            ("context", context.trim()),
            ("instructions", &instructions),
            ("topic", topic.trim()),
        ])
        .map_err(|e| template_error("system", e))?;
    // "You are Ann . Context" when a persona has no attributes: tidy the gap.
    Ok(Message::system(text.replace(" .", ".").trim()))
}

impl DiscussionLayout {
    pub fn render(
        &self,
        agent: &Agent,
        context: &str,
        opening_speaker: &str,
        topic: &str,
        visible: &[Line<'_>],
    ) -> Result<Vec<Message>> {
        let history = render_lines(&self.line, visible)?;
        let user = self
            .user
            .fill(&[
                ("opening_speaker", opening_speaker),
                ("topic", topic.trim()),
                ("history", &history),
                ("name", &agent.name),
            ])
            .map_err(|e| template_error("user", e))?;
        Ok(vec![
            system_message(&self.system, agent, context, topic)?,
            Message::user(user.replace("\n\n\n", "\n\n")),
        ])
    }
}

impl AnnotationLayout {
    /// `visible` ends with the comment to label.
    pub fn render(&self, annotator: &Agent, context: &str, visible: &[Line<'_>]) -> Result<Vec<Message>> {
        let history = render_lines(&self.line, visible)?;
        let (speaker, comment) = visible.last().map_or(("", ""), |line| (line.speaker, line.text));
        let user = self
            .user
            .fill(&[("history", &history), ("comment", comment), ("speaker", speaker)])
            .map_err(|e| template_error("user", e))?;
        Ok(vec![system_message(&self.system, annotator, context, "")?, Message::user(user)])
    }
}

/// A short stable hash of exactly what was sent (the messages as JSON): stored with every
/// result so two results can be checked to come from the same prompt.
pub fn prompt_hash(messages: &[Message]) -> String {
    text_hash(&serde_json::to_string(messages).unwrap_or_default())
}

/// The first 8 bytes of a text's SHA-256, in hex.
pub fn text_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().take(8).map(|byte| format!("{byte:02x}")).collect()
}

/// What a model wrote, made into a comment: whitespace trimmed, and a leading echo of the
/// cue ("User Ann posted:", "Ann:") removed — small models often repeat it.
pub fn clean_comment(text: &str, speaker: &str) -> String {
    let mut text = text.trim();
    for prefix in [format!("User {speaker} posted:"), format!("{speaker} posted:"), format!("{speaker}:")] {
        if let Some(rest) = strip_prefix_ignore_case(text, &prefix) {
            text = rest.trim_start();
        }
    }
    text.trim().to_string()
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Agent {
        let mut persona = Persona { name: "Ann".into(), ..Persona::default() };
        persona.attributes.insert("age".into(), serde_json::json!(29));
        persona.instructions = Some("Troll".into());
        Agent { name: "Ann".into(), persona, instructions: "Be brief.".into(), instructions_name: "v".into() }
    }

    #[test]
    fn the_default_layout_reads_like_the_framework() {
        let lines = [Line { speaker: "Bo", text: "Dogs are great." }];
        let messages =
            DiscussionLayout::default().render(&agent(), "A forum.", "OP", "Cats?", &lines).unwrap();
        assert_eq!(
            messages[0].content,
            "You are Ann (age: 29). Context: A forum. Your instructions: Be brief. Troll"
        );
        assert_eq!(
            messages[1].content,
            "User OP posted: Cats?\nUser Bo posted: Dogs are great.\nUser Ann posted:"
        );
        let bare = Agent { persona: Persona::default(), ..agent() };
        let messages = DiscussionLayout::default().render(&bare, "A forum.", "OP", "Cats?", &[]).unwrap();
        assert_eq!(messages[0].content, "You are Ann. Context: A forum. Your instructions: Be brief.");
        assert_eq!(messages[1].content, "User OP posted: Cats?\n\nUser Ann posted:");
    }

    #[test]
    fn annotation_prompt_ends_with_the_comment() {
        let lines = [Line { speaker: "Bo", text: "one" }, Line { speaker: "Cy", text: "two" }];
        let messages = AnnotationLayout::default().render(&agent(), "", &lines).unwrap();
        assert_eq!(
            messages[1].content,
            "Conversation so far:\n\nUser Bo posted: one\nUser Cy posted: two\nOutput:"
        );
    }

    #[test]
    fn echoed_cues_are_removed() {
        assert_eq!(clean_comment("  User Ann posted: hello ", "Ann"), "hello");
        assert_eq!(clean_comment("ann: hi", "Ann"), "hi");
        assert_eq!(clean_comment("Annette: hi", "Ann"), "Annette: hi");
        assert_eq!(clean_comment("   ", "Ann"), "");
    }

    #[test]
    fn prompt_hash_is_stable_and_short() {
        let messages = [Message::user("x")];
        assert_eq!(prompt_hash(&messages), prompt_hash(&messages));
        assert_eq!(prompt_hash(&messages).len(), 16);
        assert_ne!(prompt_hash(&messages), prompt_hash(&[Message::user("y")]));
    }
}
