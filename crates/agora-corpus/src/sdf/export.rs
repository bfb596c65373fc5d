//! Agora's discussions and annotations as the framework's own output JSON (the late-2025
//! shapes of sdl/syndisco), so the framework's analysis notebooks and
//! [`super::import_conversations`] / [`super::read_annotations_for`] read them as they are.
//!
//! Discussions (shape 2 of `conversations.rs`): `id`, `timestamp`, `users`, `moderator`,
//! `user_prompts`, `moderator_prompt`, `ctx_length`, `logs` of `{name, text, model}`, one
//! entry per turn, silent (empty) turns included as the framework logged them. Prompts are
//! written as JSON objects `{context, instructions, type, persona}` rather than JSON text:
//! the importer reads both, but an object is real structure (a persona that fails to parse
//! is an error there, where a string that is not JSON is quietly taken as prose), and
//! the persona is what agora has to give back. Agora keeps the prompts it sent only as
//! hashes, so `context` and `instructions` are empty; the per-turn `prompt_hash` and
//! `finish_reason` have no place in the framework's log and are not written.
//!
//! Annotations (shape 2 of `annotations.rs`): one file per annotator and discussion,
//! `conv_id`, `timestamp`, `annotator_model`, `annotator_prompt`, `ctx_length`, and `logs`
//! of `[comment, reply]` pairs for the annotated comments only, as the framework wrote
//! when it left moderator comments out; [`super::read_annotations_for`] joins them back to
//! their turns by text, as the framework's analysis did. A reply is `Label=<value>` lines
//! (`toxicity` -> `Toxicity`, `argument_quality` -> `ArgumentQuality`), or the raw reply of
//! a score that did not parse.

use std::path::Path;

use agora_core::{Annotation, Conversation, Persona, Role, Score};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{CorpusError, Location};

/// The framework's actor types, as its prompts record them.
const USER_TYPE: &str = "1";
const MODERATOR_TYPE: &str = "2";
const ANNOTATOR_TYPE: &str = "3";

/// The model name the framework logs for text it did not generate (the opening post).
const HARDCODED: &str = "hardcoded";

/// A place in the conversation being exported, for errors.
fn at(conversation: &Conversation, field: impl Into<String>) -> Location {
    Location::default().with_record(format!("conversation {}", conversation.id)).with_field(field)
}

/// `conversation` as the framework's discussion output JSON.
///
/// `users` lists the user participants except a speaker that only posted hardcoded text
/// without a persona (the opening post's author, like the framework's seed-opinion user);
/// `moderator` is the moderator participant or null; `ctx_length` is `meta.context_window`
/// (null when absent); each log entry's `model` is `labels.extra.model` ("" when unknown,
/// which the importer reads as no model).
///
/// Errors (naming the conversation and field) where the framework's shape cannot hold the
/// conversation: turns by an assistant or system speaker, several moderators, moderator
/// turns by someone else, persona facts, persona attributes named like the persona
/// fields (`username`, `special_instructions`, `intent`), a non-text `model` label.
pub fn discussion_json(conversation: &Conversation, timestamp: &str) -> Result<Value, CorpusError> {
    let moderators: Vec<_> =
        conversation.participants.iter().filter(|participant| participant.role == Role::Moderator).collect();
    let moderator = match moderators.as_slice() {
        [] => None,
        [moderator] => Some(*moderator),
        [first, second, ..] => {
            return Err(CorpusError::invalid(
                at(conversation, "participants"),
                format!("two moderators ({} and {}); the framework has at most one", first.name, second.name),
            ));
        }
    };

    let mut logs = Vec::with_capacity(conversation.turns.len());
    for (position, turn) in conversation.turns.iter().enumerate() {
        let field = |name: &str| at(conversation, format!("turns[{position}].{name}"));
        match turn.role {
            Role::User => {}
            Role::Moderator if moderator.is_some_and(|moderator| moderator.name == turn.speaker) => {}
            Role::Moderator => {
                return Err(CorpusError::invalid(
                    field("speaker"),
                    format!(
                        "moderator turn by {}, who is not the discussion's moderator participant",
                        turn.speaker
                    ),
                ));
            }
            Role::Assistant | Role::System => {
                return Err(CorpusError::invalid(
                    field("role"),
                    format!(
                        "{} turn: the framework's discussions have only users and a moderator",
                        turn.role.as_str()
                    ),
                ));
            }
        }
        let model = match turn.labels.extra.get("model") {
            None | Some(Value::Null) => "",
            Some(Value::String(model)) => model.as_str(),
            Some(_) => return Err(CorpusError::invalid(field("labels.extra.model"), "expected a string")),
        };
        logs.push(json!({"name": turn.speaker, "text": turn.text, "model": model}));
    }

    let only_hardcoded = |name: &str| {
        let mut spoken = conversation.turns.iter().filter(|turn| turn.speaker == name).peekable();
        spoken.peek().is_some()
            && spoken.all(|turn| turn.labels.extra.get("model").and_then(Value::as_str) == Some(HARDCODED))
    };
    let users: Vec<_> = conversation
        .participants
        .iter()
        .filter(|participant| participant.role == Role::User)
        .filter(|participant| participant.persona.is_some() || !only_hardcoded(&participant.name))
        .collect();
    let mut user_prompts = Vec::with_capacity(users.len());
    for (index, user) in users.iter().enumerate() {
        let field = format!("participants[{index}].persona");
        user_prompts.push(prompt(conversation, user.persona.as_ref(), USER_TYPE, &field)?);
    }
    let moderator_prompt = match moderator {
        Some(moderator) => {
            prompt(conversation, moderator.persona.as_ref(), MODERATOR_TYPE, "moderator.persona")?
        }
        None => Value::Null,
    };

    Ok(json!({
        "id": conversation.source.original_id,
        "timestamp": timestamp,
        "users": users.iter().map(|user| user.name.as_str()).collect::<Vec<_>>(),
        "moderator": moderator.map(|moderator| moderator.name.as_str()),
        "user_prompts": user_prompts,
        "moderator_prompt": moderator_prompt,
        "ctx_length": conversation.meta.get("context_window").cloned().unwrap_or(Value::Null),
        "logs": logs,
    }))
}

/// A structured prompt around a persona; "" for a participant without one (a free-text
/// prompt, which the importer reads as no persona).
fn prompt(
    conversation: &Conversation,
    persona: Option<&Persona>,
    actor_type: &str,
    field: &str,
) -> Result<Value, CorpusError> {
    let Some(persona) = persona else {
        return Ok(Value::String(String::new()));
    };
    Ok(json!({
        "context": "",
        "instructions": "",
        "type": actor_type,
        "persona": persona_object(conversation, persona, field)?,
    }))
}

/// The framework's persona object: `username`, the attributes in order, then
/// `special_instructions` ("" for none, as the framework's files write it).
fn persona_object(conversation: &Conversation, persona: &Persona, field: &str) -> Result<Value, CorpusError> {
    if !persona.facts.is_empty() {
        return Err(CorpusError::invalid(
            at(conversation, format!("{field}.facts")),
            format!("persona {} has facts, which the framework's persona format cannot hold", persona.name),
        ));
    }
    let mut object = Map::new();
    object.insert("username".into(), Value::String(persona.name.clone()));
    for (key, value) in &persona.attributes {
        if matches!(key.as_str(), "username" | "special_instructions" | "intent") {
            return Err(CorpusError::invalid(
                at(conversation, format!("{field}.attributes.{key}")),
                format!("persona {} has an attribute named like a persona field", persona.name),
            ));
        }
        object.insert(key.clone(), value.clone());
    }
    object.insert(
        "special_instructions".into(),
        Value::String(persona.instructions.clone().unwrap_or_default()),
    );
    Ok(Value::Object(object))
}

/// One annotator's annotations of `conversation` as the framework's annotation output
/// JSON. Every annotation must be of this conversation and by one annotator (split a
/// mixed list with [`annotation_json_per_annotator`]); they may cover several scales.
///
/// `annotator_prompt` is a structured prompt whose persona is the annotator's name and
/// whose instructions give the output format (`Toxicity=<number>`), from which the reader
/// takes the scales; `annotator_model` is the annotations' model (null when none; an
/// error when they name different models: the shape has one per file); `ctx_length` is
/// null (the annotator's context window is not part of an annotation).
///
/// Scales must be lowercase ASCII words joined by `_` (all but the last word at least two
/// letters) so their `Label=` spelling reads back as the same scale. A `Score::Label` is
/// written `Label=<label>`, which the reader keeps as unparsed (it reads numbers only).
pub fn annotation_json(
    conversation: &Conversation,
    annotations: &[Annotation],
    timestamp: &str,
) -> Result<Value, CorpusError> {
    let Some(first) = annotations.first() else {
        return Err(CorpusError::invalid(at(conversation, "annotations"), "no annotations to write"));
    };
    let annotator = first.annotator.as_str();
    let mut scales: Vec<&str> = Vec::new();
    let mut model: Option<&str> = None;
    for (index, annotation) in annotations.iter().enumerate() {
        let field = |name: &str| at(conversation, format!("annotations[{index}].{name}"));
        if annotation.conversation_id != conversation.id {
            return Err(CorpusError::invalid(
                field("conversation_id"),
                format!("annotates {}, not this conversation", annotation.conversation_id),
            ));
        }
        if annotation.annotator != annotator {
            return Err(CorpusError::invalid(
                field("annotator"),
                format!(
                    "two annotators ({annotator} and {}); the framework writes one file per annotator \
                     (see annotation_json_per_annotator)",
                    annotation.annotator
                ),
            ));
        }
        match (model, annotation.model.as_deref()) {
            (Some(known), Some(other)) if known != other => {
                return Err(CorpusError::invalid(
                    field("model"),
                    format!(
                        "two models ({known} and {other}); the framework's file names one annotator model"
                    ),
                ));
            }
            (None, Some(other)) => model = Some(other),
            _ => {}
        }
        if conversation.turns.get(annotation.turn_index as usize).is_none() {
            return Err(CorpusError::invalid(
                field("turn_index"),
                format!("turn {} does not exist ({} turns)", annotation.turn_index, conversation.turns.len()),
            ));
        }
        if !scales.contains(&annotation.scale.as_str()) {
            check_scale(&annotation.scale, || field("scale"))?;
            scales.push(&annotation.scale);
        }
    }

    // Annotated turns in discussion order, each with its scales' scores.
    let mut turn_indices: Vec<u32> = annotations.iter().map(|annotation| annotation.turn_index).collect();
    turn_indices.sort_unstable();
    turn_indices.dedup();
    let mut logs = Vec::with_capacity(turn_indices.len());
    let mut next_turn = 0;
    for turn_index in turn_indices {
        let index = turn_index as usize;
        let Some(turn) = conversation.turns.get(index) else { continue };
        // The reader finds each comment as the next turn with exactly its text; a skipped
        // turn with the same text in between would take this turn's annotations.
        if let Some(earlier) =
            conversation.turns[next_turn..index].iter().find(|earlier| earlier.text == turn.text)
        {
            return Err(CorpusError::invalid(
                at(conversation, format!("turns[{index}].text")),
                format!(
                    "turn {index} has the same text as turn {}, which is not annotated: \
                     the framework's [comment, reply] log could not tell them apart",
                    earlier.index
                ),
            ));
        }
        next_turn = index + 1;
        let scores: Vec<(&str, &Score)> = scales
            .iter()
            .filter_map(|scale| {
                annotations
                    .iter()
                    .find(|annotation| annotation.turn_index == turn_index && annotation.scale == *scale)
                    .map(|annotation| (*scale, &annotation.score))
            })
            .collect();
        logs.push(json!([turn.text, reply(&scores)]));
    }

    let format: Vec<String> = scales.iter().map(|scale| format!("{}=<number>", label(scale))).collect();
    let instructions = format!("Your output must be of the form \n\"{}\"", format.join("\n"));
    Ok(json!({
        "conv_id": conversation.source.original_id,
        "timestamp": timestamp,
        "annotator_model": model,
        "annotator_prompt": {
            "context": "",
            "instructions": instructions,
            "type": ANNOTATOR_TYPE,
            "persona": {"username": annotator, "special_instructions": ""},
        },
        "ctx_length": Value::Null,
        "logs": logs,
    }))
}

/// [`annotation_json`] for each annotator of `annotations`, in order of first appearance:
/// (annotator name, JSON), one framework file each.
pub fn annotation_json_per_annotator(
    conversation: &Conversation,
    annotations: &[Annotation],
    timestamp: &str,
) -> Result<Vec<(String, Value)>, CorpusError> {
    let mut annotators: Vec<&str> = Vec::new();
    for annotation in annotations {
        if !annotators.contains(&annotation.annotator.as_str()) {
            annotators.push(&annotation.annotator);
        }
    }
    annotators
        .into_iter()
        .map(|annotator| {
            let own: Vec<Annotation> =
                annotations.iter().filter(|annotation| annotation.annotator == annotator).cloned().collect();
            Ok((annotator.to_string(), annotation_json(conversation, &own, timestamp)?))
        })
        .collect()
}

/// The reply an annotator would have given: the raw text of a score that did not parse
/// (the model's whole reply), with a `Label=value` line before it for each parsed scale
/// the raw text does not already answer; otherwise one `Label=value` line per scale.
fn reply(scores: &[(&str, &Score)]) -> String {
    let raw = scores.iter().find_map(|(_, score)| match score {
        Score::Unparsed { raw } => Some(raw.as_str()),
        _ => None,
    });
    let mut lines: Vec<String> = Vec::new();
    for (scale, score) in scores {
        let label = label(scale);
        let value = match score {
            Score::Value { value } => value.to_string(),
            Score::Label { label } => label.clone(),
            Score::Unparsed { raw: other } => {
                // A second, different unparsed reply on another scale: keep its text too.
                if Some(other.as_str()) != raw {
                    lines.push(other.clone());
                }
                continue;
            }
        };
        let answered =
            raw.is_some_and(|raw| raw.contains(&format!("{label}=")) || raw.contains(&format!("{label}:")));
        if !answered {
            lines.push(format!("{label}={value}"));
        }
    }
    if let Some(raw) = raw {
        lines.push(raw.to_string());
    }
    lines.join("\n")
}

/// `argument_quality` -> `ArgumentQuality`, the framework's spelling of a scale.
fn label(scale: &str) -> String {
    scale
        .split('_')
        .map(|word| {
            let mut characters = word.chars();
            characters
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + characters.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Whether `label(scale)` reads back as `scale`: the reader splits words before a capital
/// that follows a lowercase letter, so every word but the last needs two letters.
fn check_scale(scale: &str, location: impl Fn() -> Location) -> Result<(), CorpusError> {
    let words: Vec<&str> = scale.split('_').collect();
    let last = words.len() - 1;
    let readable = words.iter().enumerate().all(|(index, word)| {
        let minimum = if index == last { 1 } else { 2 };
        word.len() >= minimum && word.bytes().all(|byte| byte.is_ascii_lowercase())
    });
    if readable {
        Ok(())
    } else {
        Err(CorpusError::invalid(
            location(),
            format!(
                "scale `{scale}` has no `Label=` spelling that reads back as the same scale \
                 (use lowercase ASCII words joined by `_`)"
            ),
        ))
    }
}

/// Writes JSON the way the framework's `json.dump(..., indent=4)` laid it out (UTF-8
/// rather than Python's `\u` escapes; JSON readers see the same text).
pub fn write_json(path: &Path, value: &Value) -> Result<(), CorpusError> {
    let mut bytes = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, formatter);
    value.serialize(&mut serializer).map_err(|error| CorpusError::io(path, std::io::Error::other(error)))?;
    std::fs::write(path, bytes).map_err(|error| CorpusError::io(path, error))
}

/// [`discussion_json`] written to `path` (see [`write_json`]).
pub fn write_discussion(
    path: &Path,
    conversation: &Conversation,
    timestamp: &str,
) -> Result<(), CorpusError> {
    write_json(path, &discussion_json(conversation, timestamp)?)
}

/// [`annotation_json`] written to `path` (see [`write_json`]).
pub fn write_annotations(
    path: &Path,
    conversation: &Conversation,
    annotations: &[Annotation],
    timestamp: &str,
) -> Result<(), CorpusError> {
    write_json(path, &annotation_json(conversation, annotations, timestamp)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(value: f64) -> Score {
        Score::Value { value }
    }

    fn unparsed(raw: &str) -> Score {
        Score::Unparsed { raw: raw.into() }
    }

    #[test]
    fn labels_and_scales() {
        assert_eq!(label("toxicity"), "Toxicity");
        assert_eq!(label("argument_quality"), "ArgumentQuality");
        let location = Location::default;
        assert!(check_scale("toxicity", location).is_ok());
        assert!(check_scale("argument_quality", location).is_ok());
        assert!(check_scale("ab_c", location).is_ok());
        for bad in ["a_b", "Toxicity", "toxicity2", "tox-icity", "", "_x", "x_"] {
            assert!(check_scale(bad, location).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies() {
        assert_eq!(reply(&[("toxicity", &value(3.0))]), "Toxicity=3");
        assert_eq!(
            reply(&[("toxicity", &value(2.5)), ("argument_quality", &value(-1.0))]),
            "Toxicity=2.5\nArgumentQuality=-1"
        );
        assert_eq!(reply(&[("toxicity", &unparsed("no idea"))]), "no idea");
        // A reply the reader split into a value and an unparsed scale is written once.
        let raw = "Toxicity=2\nArgumentQuality=?";
        assert_eq!(reply(&[("toxicity", &value(2.0)), ("argument_quality", &unparsed(raw))]), raw);
        // Scores from separate replies are all kept.
        assert_eq!(
            reply(&[("toxicity", &value(4.0)), ("argument_quality", &unparsed("hmm"))]),
            "Toxicity=4\nhmm"
        );
        assert_eq!(reply(&[("stance", &Score::Label { label: "pro".into() })]), "Stance=pro");
    }
}
