//! SDF annotation output JSON -> annotations, one per comment per scale, with scores
//! parsed from replies such as `Toxicity=3` or `Toxicity=4\nArgumentQuality=2`.
//!
//! The shapes the framework wrote (one annotator over one discussion per file):
//!
//! 1. 2024 (llm_moderation_research, sdl): `conv_id`, `timestamp`, `annotator_type`,
//!    `annotator_prompt` (text), `ctx_length`, `logs` as `[comment text, reply]` pairs.
//! 2. 2025 (sdl/syndisco to Mar 2026): the same with `annotator_model` in place of
//!    `annotator_type`. Moderator comments may be left out of the log
//!    (`include_moderator_comments = false`), so log positions are not turn indices: the
//!    framework joined annotations to comments by (conversation id, comment text), and so
//!    does [`read_annotations_for`].
//! 3. syndisco Apr 2026: `timestamp`, `logs` as `{name, text: reply, model}` (one per
//!    discussion log entry), `conv_id`, `annotator_model`, `annotator_prompt`, `ctx_length`.
//! 4. syndisco May 2026: `timestamp`, `logs` as `{name, text: reply, model, prompt}`; no
//!    `conv_id` at all, so the discussion must be given by the caller.
//!
//! A reply that does not parse is kept as [`Score::Unparsed`] with its raw text and
//! counted in the report: dropping them silently biased the origins' means.

use std::path::Path;

use agora_core::{Annotation, Conversation, Score, json_kind};
use serde_json::Value;

use super::conversations::{json_files, structured_persona};
use super::{CORPUS, file_stem, read_json};
use crate::{CorpusError, ImportReport, Location};

/// Annotations from an SDF annotation file, or from every `.json` file of a folder in name
/// order. Each file must name its discussion (`conv_id`); files of syndisco May 2026 do not,
/// use [`read_annotations_for`] for them. Turn indices are positions in the file's log,
/// which equal the discussion's turn indices except where a 2024-2025 run left moderator
/// comments out (counted in the report); [`read_annotations_for`] aligns those exactly.
pub fn read_annotations(path: &Path, report: &mut ImportReport) -> Result<Vec<Annotation>, CorpusError> {
    let mut annotations = Vec::new();
    for file in json_files(path, report)? {
        annotations.extend(annotations_from_file(&file, None, report)?);
    }
    Ok(annotations)
}

/// Annotations of `conversation` (as imported by [`super::import_conversations`]) from one
/// annotation file or a folder of them: checks that each file names this discussion (or
/// names none), and resolves each annotated comment to its turn, by position for logs of
/// objects and by text, in order, for the `[comment, reply]` pairs of 2024-2025.
pub fn read_annotations_for(
    path: &Path,
    conversation: &Conversation,
    report: &mut ImportReport,
) -> Result<Vec<Annotation>, CorpusError> {
    let mut annotations = Vec::new();
    for file in json_files(path, report)? {
        annotations.extend(annotations_from_file(&file, Some(conversation), report)?);
    }
    Ok(annotations)
}

/// One annotated comment of the log.
struct Entry {
    /// The comment's author (logs of objects) ...
    speaker: Option<String>,
    /// ... or the comment's text (pairs).
    comment: Option<String>,
    reply: String,
    model: Option<String>,
    prompt: Option<Value>,
}

fn annotations_from_file(
    file: &Path,
    conversation: Option<&Conversation>,
    report: &mut ImportReport,
) -> Result<Vec<Annotation>, CorpusError> {
    let location = Location::file(file);
    let field = |name: &str| location.clone().with_field(name.to_string());
    let object = match read_json(file)? {
        Value::Object(object) => object,
        other => {
            return Err(CorpusError::invalid(
                location,
                format!("expected an annotation object, found {}", json_kind(&other)),
            ));
        }
    };

    let conversation_id = match (object.get("conv_id"), conversation) {
        (Some(Value::String(id)), Some(conversation)) if *id != conversation.source.original_id => {
            return Err(CorpusError::invalid(
                field("conv_id"),
                format!("annotates discussion {id}, not {}", conversation.source.original_id),
            ));
        }
        (Some(Value::String(id)), _) if !id.trim().is_empty() => id.clone(),
        (None | Some(Value::Null), Some(conversation)) => conversation.source.original_id.clone(),
        (None | Some(Value::Null), None) => {
            return Err(CorpusError::invalid(
                field("conv_id"),
                "missing: this file does not say which discussion it annotates \
                 (syndisco 2026 output); read it with read_annotations_for",
            ));
        }
        (Some(other), _) => {
            return Err(CorpusError::invalid(
                field("conv_id"),
                format!("expected a non-empty string, found {}", json_kind(other)),
            ));
        }
    };
    let file_model = match object.get("annotator_model") {
        None | Some(Value::Null) => None,
        Some(Value::String(model)) => Some(model.clone()),
        Some(other) => {
            return Err(CorpusError::invalid(
                field("annotator_model"),
                format!("expected a string, found {}", json_kind(other)),
            ));
        }
    };
    let logs = match object.get("logs") {
        Some(Value::Array(logs)) => logs,
        None => return Err(CorpusError::invalid(field("logs"), "missing")),
        Some(other) => {
            return Err(CorpusError::invalid(
                field("logs"),
                format!("expected a list, found {}", json_kind(other)),
            ));
        }
    };
    let entries = logs
        .iter()
        .enumerate()
        .map(|(index, entry)| log_entry(entry, &location, index))
        .collect::<Result<Vec<_>, _>>()?;

    // The annotator's prompt says who it is and which scales it answers on.
    let prompt = object
        .get("annotator_prompt")
        .filter(|prompt| !prompt.is_null())
        .or_else(|| entries.iter().find_map(|entry| entry.prompt.as_ref()));
    let annotator = match prompt {
        Some(prompt) => annotator_name(prompt, &location)?,
        None => None,
    };
    let annotator = annotator.unwrap_or_else(|| {
        report.note("annotator names taken from file names (no name in the prompt)", 1);
        format!("annotator:{}", file_stem(file))
    });
    let mut scales = prompt.map(prompt_text).map(|text| scales_in_prompt(&text)).unwrap_or_default();
    if scales.is_empty() {
        // No "Label=<number>" in the prompt: the labels the replies use are the scales.
        for entry in &entries {
            for (scale, _) in parse_reply(&entry.reply).values {
                if !scales.contains(&scale) {
                    scales.push(scale);
                }
            }
        }
    }
    if scales.is_empty() {
        report.note("annotation files with no recognisable scale (scale `unknown`)", 1);
        scales.push("unknown".to_string());
    }

    let turn_indices = resolve_turns(&entries, conversation, &location, report)?;
    let mut annotations = Vec::with_capacity(entries.len() * scales.len());
    for (entry, turn_index) in entries.iter().zip(turn_indices) {
        let parsed = parse_reply(&entry.reply);
        if parsed.repeated {
            report.note("replies repeating a label (first value kept)", 1);
        }
        if parsed.values.iter().any(|(label, _)| !scales.contains(label)) {
            report.note("reply labels outside the prompt's scales ignored", 1);
        }
        let bare_number = match scales.as_slice() {
            [_] if parsed.values.is_empty() => entry.reply.trim().parse::<f64>().ok(),
            _ => None,
        };
        for scale in &scales {
            let found = parsed.values.iter().find(|(label, _)| label == scale).map(|(_, value)| *value);
            let score = match found.or(bare_number) {
                Some(value) => {
                    if found.is_none() {
                        report.note("bare-number replies read on the prompt's one scale", 1);
                    }
                    Score::Value { value }
                }
                None => {
                    report.note("unparsed annotation replies (kept as unparsed)", 1);
                    Score::Unparsed { raw: entry.reply.clone() }
                }
            };
            annotations.push(Annotation {
                conversation_id: Conversation::make_id(CORPUS, &conversation_id),
                turn_index,
                annotator: annotator.clone(),
                model: entry.model.clone().or_else(|| file_model.clone()),
                scale: scale.clone(),
                score,
            });
        }
    }
    report.note("annotations read", annotations.len() as u64);
    Ok(annotations)
}

fn log_entry(entry: &Value, location: &Location, index: usize) -> Result<Entry, CorpusError> {
    let at = |field: &str| location.clone().with_field(format!("logs[{index}]{field}"));
    match entry {
        Value::Array(pair) => match pair.as_slice() {
            [Value::String(comment), Value::String(reply)] => Ok(Entry {
                speaker: None,
                comment: Some(comment.clone()),
                reply: reply.clone(),
                model: None,
                prompt: None,
            }),
            _ => Err(CorpusError::invalid(at(""), "expected a [comment, reply] pair of strings")),
        },
        Value::Object(object) => {
            let text = |field: &str| match object.get(field) {
                Some(Value::String(text)) => Ok(Some(text.clone())),
                None | Some(Value::Null) => Ok(None),
                Some(other) => Err(CorpusError::invalid(
                    at(&format!(".{field}")),
                    format!("expected a string, found {}", json_kind(other)),
                )),
            };
            let speaker = text("name")?.ok_or_else(|| CorpusError::invalid(at(".name"), "missing"))?;
            let reply = text("text")?.ok_or_else(|| CorpusError::invalid(at(".text"), "missing"))?;
            Ok(Entry {
                speaker: Some(speaker),
                comment: None,
                reply,
                model: text("model")?.filter(|model| !model.is_empty()),
                prompt: object.get("prompt").filter(|prompt| prompt.as_str() != Some("")).cloned(),
            })
        }
        other => Err(CorpusError::invalid(
            at(""),
            format!("expected a [comment, reply] pair or an object, found {}", json_kind(other)),
        )),
    }
}

/// The turn each entry annotates.
fn resolve_turns(
    entries: &[Entry],
    conversation: Option<&Conversation>,
    location: &Location,
    report: &mut ImportReport,
) -> Result<Vec<u32>, CorpusError> {
    let Some(conversation) = conversation else {
        if entries.iter().any(|entry| entry.comment.is_some()) {
            report.note("annotation turn indices are log positions (no discussion to align with)", 1);
        }
        return Ok((0..entries.len() as u32).collect());
    };
    let mut indices = Vec::with_capacity(entries.len());
    let mut next_turn = 0;
    for (index, entry) in entries.iter().enumerate() {
        let turn_index = if let Some(comment) = &entry.comment {
            // The framework's own join: the next turn with exactly this text.
            let found = conversation.turns[next_turn.min(conversation.turns.len())..]
                .iter()
                .position(|turn| turn.text == *comment)
                .map(|offset| next_turn + offset);
            let Some(found) = found else {
                return Err(CorpusError::invalid(
                    location.clone().with_field(format!("logs[{index}]")),
                    format!("comment not found in discussion {} after turn {next_turn}", conversation.id),
                ));
            };
            if found > next_turn {
                report.note(
                    "discussion turns not annotated (left out of the annotation log)",
                    (found - next_turn) as u64,
                );
            }
            found
        } else {
            let speaker = entry.speaker.as_deref().unwrap_or_default();
            match conversation.turns.get(index) {
                Some(turn) if turn.speaker == speaker => index,
                Some(turn) => {
                    return Err(CorpusError::invalid(
                        location.clone().with_field(format!("logs[{index}].name")),
                        format!(
                            "is {speaker}, but turn {index} of {} is by {}",
                            conversation.id, turn.speaker
                        ),
                    ));
                }
                None => {
                    return Err(CorpusError::invalid(
                        location.clone().with_field(format!("logs[{index}]")),
                        format!("{} has only {} turns", conversation.id, conversation.turns.len()),
                    ));
                }
            }
        };
        next_turn = turn_index + 1;
        indices.push(turn_index as u32);
    }
    Ok(indices)
}

/// The annotator's name: the persona's `username` of a structured prompt, else the
/// `username: X,` or `Your name is X.` of a 2025 text prompt; `None` when neither is there
/// (2024 prompts describe the annotator without a name).
fn annotator_name(prompt: &Value, location: &Location) -> Result<Option<String>, CorpusError> {
    if let Some(persona) = structured_persona(prompt, location, "annotator_prompt.persona.")? {
        return Ok(Some(persona.name));
    }
    let Value::String(text) = prompt else {
        return Ok(None);
    };
    let between = |start: &str, end: char| {
        let from = text.find(start)? + start.len();
        let name = text[from..].split(end).next()?.trim();
        (!name.is_empty()).then(|| name.to_string())
    };
    Ok(between("username: ", ',').or_else(|| between("Your name is ", '.')))
}

/// The text of a prompt: itself, or the `instructions` of a structured one.
fn prompt_text(prompt: &Value) -> String {
    match prompt {
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => prompt_text(&Value::Object(object)),
            _ => text.clone(),
        },
        Value::Object(object) => {
            object.get("instructions").and_then(Value::as_str).unwrap_or_default().to_string()
        }
        _ => String::new(),
    }
}

/// The scales a prompt asks for, in order of first mention: each `Label=<...>` or
/// `Label: <...>` of its output format, and each `Label=3` of its example outputs (some
/// 2025 prompts give only `Toxicity=<number>` as the format but show
/// `Toxicity=4\nArgumentQuality=5` in their example, and the models answer both).
fn scales_in_prompt(prompt: &str) -> Vec<String> {
    let mut found: Vec<(usize, String)> = Vec::new();
    for (offset, _) in prompt.match_indices(['<', '=']) {
        let (before, after) = (&prompt[..offset], &prompt[offset + 1..]);
        let label = if prompt[offset..].starts_with('<') {
            let Some(before) = before.trim_end().strip_suffix(['=', ':']) else {
                continue;
            };
            trailing_label(before.trim_end())
        } else if after.starts_with(|c: char| c.is_ascii_digit()) {
            // An example answer: `Label=3`, written without spaces like the format.
            trailing_label(before)
        } else {
            None
        };
        if let Some(label) = label {
            let scale = snake_case(label);
            if !found.iter().any(|(_, known)| *known == scale) {
                found.push((offset, scale));
            }
        }
    }
    found.sort_by_key(|(offset, _)| *offset);
    found.into_iter().map(|(_, scale)| scale).collect()
}

/// What a reply says: `(scale, value)` in order of appearance, first value per scale.
struct ParsedReply {
    values: Vec<(String, f64)>,
    /// A label appeared more than once (the model annotated several comments at once).
    repeated: bool,
}

/// Reads every `Label=number` or `Label: number` of a reply.
fn parse_reply(reply: &str) -> ParsedReply {
    let mut parsed = ParsedReply { values: Vec::new(), repeated: false };
    for (offset, _) in reply.match_indices(['=', ':']) {
        let Some(label) = trailing_label(reply[..offset].trim_end()) else {
            continue;
        };
        let Some(value) = leading_number(reply[offset + 1..].trim_start()) else {
            continue;
        };
        let scale = snake_case(label);
        if parsed.values.iter().any(|(known, _)| *known == scale) {
            parsed.repeated = true;
        } else {
            parsed.values.push((scale, value));
        }
    }
    parsed
}

/// The run of ASCII letters and underscores that ends `text`, if it is a whole word.
fn trailing_label(text: &str) -> Option<&str> {
    let start = text
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphabetic() || *c == '_')
        .last()
        .map(|(index, _)| index)?;
    let before = text[..start].chars().next_back();
    if before.is_some_and(|c| c.is_alphanumeric()) {
        return None;
    }
    Some(&text[start..])
}

/// A number at the start of `text` (`3`, `-1`, `2.5`) that is not the start of a word.
fn leading_number(text: &str) -> Option<f64> {
    let length = text
        .char_indices()
        .take_while(|(index, c)| c.is_ascii_digit() || *c == '.' || (*index == 0 && *c == '-'))
        .count();
    let number = text[..length].trim_end_matches('.');
    if text[length..].starts_with(|c: char| c.is_alphanumeric()) {
        return None;
    }
    number.parse().ok()
}

/// `ArgumentQuality` -> `argument_quality`, `Toxicity` -> `toxicity`.
fn snake_case(label: &str) -> String {
    let mut scale = String::with_capacity(label.len() + 4);
    let mut previous_lower = false;
    for character in label.chars() {
        if character.is_ascii_uppercase() && previous_lower {
            scale.push('_');
        }
        previous_lower = character.is_ascii_lowercase();
        scale.push(character.to_ascii_lowercase());
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_reply(reply: &str, expected: &[(&str, f64)], repeated: bool) {
        let parsed = parse_reply(reply);
        let values: Vec<(&str, f64)> = parsed.values.iter().map(|(s, v)| (s.as_str(), *v)).collect();
        assert_eq!(values, expected, "{reply:?}");
        assert_eq!(parsed.repeated, repeated, "{reply:?}");
    }

    #[test]
    fn replies() {
        check_reply("Toxicity=3", &[("toxicity", 3.0)], false);
        check_reply(" Toxicity: 5", &[("toxicity", 5.0)], false);
        check_reply("Toxicity=4 \nArgumentQuality=2", &[("toxicity", 4.0), ("argument_quality", 2.0)], false);
        check_reply("```\nToxicity=2\n```python", &[("toxicity", 2.0)], false);
        check_reply("Toxicity=2\nToxicity=4", &[("toxicity", 2.0)], true);
        check_reply("Toxicity=?  # Your annotation here", &[], false);
        check_reply("3: Not Toxic", &[], false);
        check_reply("Note: the 2nd user", &[], false);
        check_reply("", &[], false);
    }

    #[test]
    fn scales_of_prompts() {
        assert_eq!(scales_in_prompt("only of the form \\\"Toxicity=<number>\\\", do NOT"), ["toxicity"]);
        assert_eq!(scales_in_prompt("Output is of the form \"Toxicity: <number>\"."), ["toxicity"]);
        assert_eq!(
            scales_in_prompt("of the form \n\"Toxicity=<number>\nArgumentQuality=<number>\""),
            ["toxicity", "argument_quality"]
        );
        assert!(scales_in_prompt("no scales <here>, 1: Not Toxic, a = 3").is_empty());
        assert_eq!(
            scales_in_prompt(
                "of the form \"Toxicity=<number>\".\nExample output:\nToxicity=4\nArgumentQuality=5"
            ),
            ["toxicity", "argument_quality"]
        );
    }
}
