//! SDF discussion output JSON -> conversations.
//!
//! The shapes the framework wrote, oldest first (all UTF-8 JSON, one discussion per file):
//!
//! 1. 2024 (llm_moderation_research, sdl until Jan 2025): `id`, `timestamp`, `users`,
//!    `user_types`, `moderator` (name or null), `moderator_type`, `user_prompts` (text),
//!    `moderator_prompt`, `ctx_length`, and `logs` as `[username, text]` pairs; silent
//!    moderator turns are logged with empty text; the topic is quoted inside the prompts.
//! 2. 2025 (sdl/syndisco, Jan 2025 - Mar 2026): `id`, `timestamp`, `users`, `moderator`,
//!    `user_prompts`, `moderator_prompt`, `ctx_length`, `logs` as objects
//!    `{name, text, model}`. From late 2025 the prompts are JSON objects (or JSON text of
//!    objects) `{context, instructions, type, persona{...}}`, and seed opinions (the
//!    topic, written into the log before the models speak) carry `model: "hardcoded"`.
//! 3. syndisco Apr 2026: `timestamp`, `logs`, `id`, `users`, `user_prompts`, `ctx_length`
//!    (moderators became ordinary actors: no `moderator` field).
//! 4. syndisco May 2026: only `timestamp` and `logs` of `{name, text, model, prompt}`.
//!
//! A turn's role is `Moderator` when its speaker is the file's `moderator`; without that
//! field, when the name contains "moderator" (the framework's own test, in its 2025
//! annotation code), which is counted in the report.

use std::path::Path;

use agora_core::{Conversation, Meta, Participant, Persona, Role, Source, Turn, TurnLabels, json_kind};
use serde_json::Value;

use super::inputs::persona_from_object;
use super::{CORPUS, file_stem, is_hidden, read_json};
use crate::{CorpusError, ImportOptions, ImportReport, Location, Sink};

/// Imports SDF discussion output: one `.json` file, or every `.json` file of a folder in
/// name order (other files are counted in the report and left alone; hidden ones skipped).
///
/// Each file becomes one conversation `sdf:<id>` (the file stem when the file has no
/// `id`, as syndisco 2026 writes). Turns keep every log entry in order, silent (empty)
/// ones included, so turn indices equal log positions, which annotation files refer to.
/// Per-turn `model`, `prompt` and `seed_opinion` (model `hardcoded`) go in
/// `labels.extra`; personas come from structured prompts (late 2025 on); the rest of the
/// file's fields (timestamp, ctx_length, prompts...) and a `topic` found in 2024 prompts go
/// in `meta`.
pub fn import_conversations(
    path: &Path,
    options: &ImportOptions,
    sink: &mut Sink<'_>,
) -> Result<ImportReport, CorpusError> {
    let mut report = ImportReport::default();
    for file in json_files(path, &mut report)? {
        let mut file_report = ImportReport::default();
        match conversation_from_file(&file, &mut file_report) {
            Ok(conversation) => {
                file_report.conversations += 1;
                file_report.turns += conversation.turns.len() as u64;
                file_report.bytes += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                report.merge(file_report);
                sink(conversation)?;
            }
            Err(error) => report.skip_or_fail(options.keep_going, error)?,
        }
    }
    Ok(report)
}

/// The `.json` files of `path` in name order; other non-hidden files are counted.
pub(super) fn json_files(
    path: &Path,
    report: &mut ImportReport,
) -> Result<Vec<std::path::PathBuf>, CorpusError> {
    if !path.is_dir() {
        return crate::input::files_in(path, &[".json"]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| CorpusError::io(path, e))? {
        let file = entry.map_err(|e| CorpusError::io(path, e))?.path();
        if is_hidden(&file) {
            continue;
        }
        if file.is_file() && file.extension().and_then(|ext| ext.to_str()) == Some("json") {
            files.push(file);
        } else {
            report.note("entries other than .json files ignored", 1);
        }
    }
    files.sort();
    Ok(files)
}

/// One log entry, whatever its shape.
struct LogEntry {
    speaker: String,
    text: String,
    extra: Meta,
}

fn conversation_from_file(file: &Path, report: &mut ImportReport) -> Result<Conversation, CorpusError> {
    let location = Location::file(file);
    let mut object = match read_json(file)? {
        Value::Object(object) => object,
        other => {
            return Err(CorpusError::invalid(
                location,
                format!("expected a discussion object, found {}", json_kind(&other)),
            ));
        }
    };
    let field = |name: &str| location.clone().with_field(name.to_string());

    let original_id = match object.remove("id") {
        Some(Value::String(id)) if !id.trim().is_empty() => id,
        Some(Value::Number(id)) => id.to_string(),
        None | Some(Value::Null) => {
            report.note("conversation ids taken from file names (no `id` field)", 1);
            file_stem(file)
        }
        Some(other) => {
            return Err(CorpusError::invalid(
                field("id"),
                format!("expected a non-empty string, found {}", json_kind(&other)),
            ));
        }
    };
    let logs = match object.remove("logs") {
        Some(Value::Array(logs)) => logs,
        None => return Err(CorpusError::invalid(field("logs"), "missing")),
        Some(other) => {
            return Err(CorpusError::invalid(
                field("logs"),
                format!("expected a list, found {}", json_kind(&other)),
            ));
        }
    };
    let moderator = match object.get("moderator") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(name)) => Some(Some(name.clone())),
        Some(other) => {
            return Err(CorpusError::invalid(
                field("moderator"),
                format!("expected a string or null, found {}", json_kind(other)),
            ));
        }
    };
    let users = string_list(object.get("users"), &field("users"))?;

    let mut personas: Vec<Persona> = Vec::new();
    let mut topic = None;
    if let Some(prompts) = object.get("user_prompts") {
        let Value::Array(prompts) = prompts else {
            return Err(CorpusError::invalid(
                field("user_prompts"),
                format!("expected a list, found {}", json_kind(prompts)),
            ));
        };
        for (index, prompt) in prompts.iter().enumerate() {
            let prefix = format!("user_prompts[{index}].persona.");
            if let Some(persona) = structured_persona(prompt, &location, &prefix)? {
                personas.push(persona);
            }
            topic = topic.or_else(|| prompt.as_str().and_then(topic_from_prompt));
        }
    }
    if let Some(prompt) = object.get("moderator_prompt") {
        if let Some(persona) = structured_persona(prompt, &location, "moderator_prompt.persona.")? {
            personas.push(persona);
        }
        topic = topic.or_else(|| prompt.as_str().and_then(topic_from_prompt));
    }

    let mut entries = Vec::with_capacity(logs.len());
    for (index, entry) in logs.into_iter().enumerate() {
        entries.push(log_entry(entry, &location, index)?);
    }
    if moderator.is_none() && entries.iter().any(|entry| entry.speaker.to_lowercase().contains("moderator")) {
        report.note("moderators recognised by name (no `moderator` field)", 1);
    }
    let is_moderator = |speaker: &str| match &moderator {
        Some(Some(name)) => speaker == name,
        Some(None) => false,
        None => speaker.to_lowercase().contains("moderator"),
    };

    let mut turns = Vec::with_capacity(entries.len());
    let mut participants: Vec<Participant> = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let role = if is_moderator(&entry.speaker) { Role::Moderator } else { Role::User };
        if entry.text.trim().is_empty() {
            report.note("silent turns (empty text) kept", 1);
        }
        if !participants.iter().any(|participant| participant.name == entry.speaker) {
            participants.push(Participant { name: entry.speaker.clone(), role, persona: None });
        }
        turns.push(Turn {
            index: index as u32,
            original_id: None,
            speaker: entry.speaker,
            role,
            text: entry.text,
            reply_to: None,
            labels: TurnLabels { extra: entry.extra, ..TurnLabels::default() },
        });
    }
    // Listed users and the moderator who never spoke are participants too.
    let listed = users.iter().flatten().cloned().chain(moderator.clone().flatten());
    for name in listed {
        if !participants.iter().any(|participant| participant.name == name) {
            let role = if is_moderator(&name) { Role::Moderator } else { Role::User };
            participants.push(Participant { name, role, persona: None });
        }
    }
    for persona in personas {
        match participants.iter_mut().find(|participant| participant.name == persona.name) {
            Some(participant) => participant.persona = Some(persona),
            None => {
                let role = if is_moderator(&persona.name) { Role::Moderator } else { Role::User };
                participants.push(Participant { name: persona.name.clone(), role, persona: Some(persona) });
            }
        }
    }

    object.remove("users");
    let mut meta = object;
    if let Some(topic) = topic {
        meta.insert("topic".into(), Value::String(topic));
    }
    Ok(Conversation {
        id: Conversation::make_id(CORPUS, &original_id),
        source: Source { corpus: CORPUS.into(), original_id },
        participants,
        turns,
        meta,
    })
}

/// A log entry: `[username, text]` (2024) or `{name, text, model?, prompt?}` (2025 on).
fn log_entry(entry: Value, location: &Location, index: usize) -> Result<LogEntry, CorpusError> {
    let at = |field: &str| location.clone().with_field(format!("logs[{index}]{field}"));
    match entry {
        Value::Array(pair) => match <[Value; 2]>::try_from(pair) {
            Ok([Value::String(speaker), Value::String(text)]) => {
                Ok(LogEntry { speaker, text, extra: Meta::new() })
            }
            Ok(_) => Err(CorpusError::invalid(at(""), "expected [username, text] strings")),
            Err(pair) => Err(CorpusError::invalid(
                at(""),
                format!("expected a [username, text] pair, found {} items", pair.len()),
            )),
        },
        Value::Object(mut object) => {
            let speaker = match object.remove("name") {
                Some(Value::String(name)) => name,
                None => return Err(CorpusError::invalid(at(".name"), "missing")),
                Some(other) => {
                    return Err(CorpusError::invalid(
                        at(".name"),
                        format!("expected a string, found {}", json_kind(&other)),
                    ));
                }
            };
            let text = match object.remove("text") {
                Some(Value::String(text)) => text,
                None => return Err(CorpusError::invalid(at(".text"), "missing")),
                Some(other) => {
                    return Err(CorpusError::invalid(
                        at(".text"),
                        format!("expected a string, found {}", json_kind(&other)),
                    ));
                }
            };
            // Empty model names and prompts carry nothing: the 2026 placeholder entries.
            object.retain(|_, value| value.as_str() != Some(""));
            if object.get("model").and_then(Value::as_str) == Some("hardcoded") {
                object.insert("seed_opinion".into(), Value::Bool(true));
            }
            Ok(LogEntry { speaker, text, extra: object })
        }
        other => Err(CorpusError::invalid(
            at(""),
            format!("expected a [username, text] pair or an object, found {}", json_kind(&other)),
        )),
    }
}

fn string_list(value: Option<&Value>, location: &Location) -> Result<Option<Vec<String>>, CorpusError> {
    let Some(value) = value else { return Ok(None) };
    let Value::Array(items) = value else {
        return Err(CorpusError::invalid(
            location.clone(),
            format!("expected a list, found {}", json_kind(value)),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::String(text) => Ok(text.clone()),
            other => Err(CorpusError::invalid(
                location.clone(),
                format!("item {index}: expected a string, found {}", json_kind(other)),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The persona of a structured prompt (late 2025 on): an object, or the JSON text of one,
/// with a `persona` object. Free-text prompts (2024-2025) give `None`: their persona is
/// prose, kept in `meta` with the prompt.
pub(super) fn structured_persona(
    prompt: &Value,
    location: &Location,
    field_prefix: &str,
) -> Result<Option<Persona>, CorpusError> {
    let parsed;
    let object = match prompt {
        Value::Object(object) => object,
        Value::String(text) if text.trim_start().starts_with('{') => {
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(object)) => {
                    parsed = object;
                    &parsed
                }
                _ => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    match object.get("persona") {
        Some(Value::Object(persona)) => persona_from_object(persona, location, field_prefix).map(Some),
        _ => Ok(None),
    }
}

/// The topic quoted in a 2024 prompt: "You see the following post on a social media
/// site: '<topic>'". It ends at the first `'` followed by an optional `.`, then the end or
/// whitespace and a capital letter ("' Write a brief...", "'. Your instructions").
fn topic_from_prompt(prompt: &str) -> Option<String> {
    const MARKER: &str = "following post on a social media site:";
    let start = prompt.find(MARKER)? + MARKER.len();
    let rest = prompt[start..].trim_start().strip_prefix('\'')?;
    let mut search_from = 0;
    while let Some(offset) = rest[search_from..].find('\'') {
        let end = search_from + offset;
        let after = &rest[end + 1..];
        let after = after.strip_prefix('.').unwrap_or(after);
        let closes = after.is_empty()
            || (after.starts_with(char::is_whitespace)
                && after.trim_start().starts_with(|c: char| c.is_ascii_uppercase()));
        if closes {
            let topic = rest[..end].trim();
            return (!topic.is_empty()).then(|| topic.to_string());
        }
        search_from = end + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_topic(prompt: &str, expected: Option<&str>) {
        assert_eq!(topic_from_prompt(prompt).as_deref(), expected, "{prompt}");
    }

    #[test]
    fn topics_from_2024_prompts() {
        check_topic(
            "Prompt: You are A. You see the following post on a social media site:'It's not brown enough for ya.' Write a brief comment.",
            Some("It's not brown enough for ya."),
        );
        check_topic(
            "You are B. Context: You see the following post on a social media site:  'Don't you know?\n'. Your instructions: be nice",
            Some("Don't you know?"),
        );
        check_topic("You are C. Your instructions: none", None);
        check_topic("following post on a social media site: 'never closed", None);
    }
}
