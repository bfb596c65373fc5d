//! SDF experiment inputs: persona JSON, topic and instruction text folders, and the
//! conversation configs (JSON `other_configs`, generated `conv_data`, 2026 `run_config.yml`).

use std::path::Path;

use agora_core::{Meta, Persona, json_kind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{file_stem, folder_files, read_json, yaml};
use crate::{CorpusError, Location, input};

/// A text input of the SDF: a topic, user, moderator or annotator instructions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedText {
    /// The file stem: `polarized_1`, `vanilla`, `toxicity`.
    pub name: String,
    /// The file's text, trimmed.
    pub text: String,
}

/// How a discussion is run: its length, the context each agent sees, and the turn policy.
///
/// Read from `other_configs/*.json` (2024: `conv_len`, `history_ctx_len`,
/// `turn_manager_type`, `turn_manager_config{respond_probability}`), from the generated
/// `conv_data/*.json` of late 2024 (the same fields next to `context`, `user_names`,
/// `user_attributes`, ... which land in `extra`), from annotation `other_configs` (only
/// `history_ctx_len`), and from the 2026 `run_config.yml` (see [`read_conversation_config`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SdfConversationConfig {
    /// Turns in the discussion (`conv_len`; `num_turns` in 2026).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv_len: Option<u32>,
    /// How many previous comments each agent sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_ctx_len: Option<u32>,
    /// `round_robin`, `random_weighted` (2024 names; the 2026 runner takes `round-robin`,
    /// `random-weighted` or `random` on its command line, so its YAML has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_manager_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_manager_config: Option<TurnManagerConfig>,
    /// Every other field, as written.
    #[serde(flatten)]
    pub extra: Meta,
}

/// Settings of the turn manager.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnManagerConfig {
    /// For `random_weighted`: the chance that the previous speaker answers the comment
    /// that followed theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond_probability: Option<f64>,
    #[serde(flatten)]
    pub extra: Meta,
}

/// Personas from a JSON file (one object, or a list of objects) or from a folder of
/// `.json` files read in name order; hidden files are skipped, any other entry is an error.
///
/// Both spellings of the free-text field are accepted: `special_instructions` (2024 chill
/// personas, all 2025-2026 files) and `intent` (2024 helpful/troll personas, 2024 annotator
/// personas). An empty one gives `instructions: None`. Ages come as numbers (2024) or
/// strings (2026: `"25-34"`, `"-1"`) and are kept with their JSON type. Every field but
/// `username` and the instructions becomes an attribute, in file order (agora's `Meta`
/// preserves insertion order), which is the order prompts describe a persona in.
pub fn read_personas(path: &Path) -> Result<Vec<Persona>, CorpusError> {
    let mut personas = Vec::new();
    for file in folder_files(path, "json")? {
        match read_json(&file)? {
            Value::Object(object) => {
                personas.push(persona_from_object(&object, &Location::file(&file), "")?);
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let location = Location::file(&file).with_record(format!("persona {index}"));
                    let Value::Object(object) = item else {
                        return Err(CorpusError::invalid(
                            location,
                            format!("expected an object, found {}", json_kind(item)),
                        ));
                    };
                    personas.push(persona_from_object(object, &location, "")?);
                }
            }
            other => {
                return Err(CorpusError::invalid(
                    Location::file(&file),
                    format!("expected a persona object or a list of them, found {}", json_kind(&other)),
                ));
            }
        }
    }
    Ok(personas)
}

/// Builds a persona from an SDF persona object; `location` names the file and record.
/// `field_prefix` is put before field names in errors (`user_prompts[2].persona.`).
pub(super) fn persona_from_object(
    object: &Map<String, Value>,
    location: &Location,
    field_prefix: &str,
) -> Result<Persona, CorpusError> {
    let field_location = |field: &str| location.clone().with_field(format!("{field_prefix}{field}"));
    let name = match object.get("username") {
        None => return Err(CorpusError::invalid(field_location("username"), "missing")),
        Some(Value::String(name)) if !name.trim().is_empty() => name.clone(),
        Some(Value::String(_)) => {
            return Err(CorpusError::invalid(field_location("username"), "empty"));
        }
        Some(other) => {
            return Err(CorpusError::invalid(
                field_location("username"),
                format!("expected a string, found {}", json_kind(other)),
            ));
        }
    };
    let mut instructions: Option<(&str, String)> = None;
    for field in ["special_instructions", "intent"] {
        let text = match object.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::String(text)) => text.trim(),
            Some(other) => {
                return Err(CorpusError::invalid(
                    field_location(field),
                    format!("expected a string, found {}", json_kind(other)),
                ));
            }
        };
        if text.is_empty() {
            continue;
        }
        if let Some((first_field, first_text)) = &instructions
            && first_text != text
        {
            return Err(CorpusError::invalid(
                field_location(field),
                format!("differs from `{first_field}`; give one of the two"),
            ));
        }
        instructions = Some((field, text.to_string()));
    }
    let attributes = object
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "username" | "special_instructions" | "intent"))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    Ok(Persona { name, attributes, facts: Vec::new(), instructions: instructions.map(|(_, text)| text) })
}

/// The `.txt` files of a folder (or one `.txt` file) as (file stem, trimmed text), sorted
/// by name; hidden files are skipped, any other entry is an error, and so is an empty file.
///
/// Text is kept verbatim apart from trimming. In particular the two-character sequence
/// `\n` in `annotation-inputs-2024/instructions/toxicity.txt` is NOT turned into a line
/// break: the framework read the file as is, and its 2024-2025 annotation outputs show the
/// prompt with the literal backslash-n the model saw (e.g. `annotation_output/test/
/// 25-01-05-10-40.json` in synthetic_moderation_experiments). Reproducing an experiment
/// means sending the same characters.
pub fn read_texts(path: &Path) -> Result<Vec<NamedText>, CorpusError> {
    let mut texts = Vec::new();
    for file in folder_files(path, "txt")? {
        let text = input::read_to_string(&file)?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text).trim();
        if text.is_empty() {
            return Err(CorpusError::invalid(Location::file(&file), "empty file"));
        }
        texts.push(NamedText { name: file_stem(&file), text: text.to_string() });
    }
    Ok(texts)
}

/// A conversation config: JSON (`other_configs/*.json`, generated `conv_data/*.json`) or,
/// by extension `.yml`/`.yaml`, the 2026 `run_config.yml`.
///
/// From the YAML, `discussions.turn_taking.num_turns` becomes `conv_len`,
/// `discussions.turn_taking.history_ctx_len` becomes `history_ctx_len`, and
/// `discussions.turn_taking.respond_probability` becomes
/// `turn_manager_config.respond_probability`; the rest of the document (logging, model
/// settings, file paths, experiment variables) is kept nested in `extra`. Only the block
/// mappings and scalars the SDF's configs use are understood; anything else (sequences,
/// anchors, flow collections) is refused with the line that has it.
pub fn read_conversation_config(path: &Path) -> Result<SdfConversationConfig, CorpusError> {
    let extension = path.extension().and_then(|ext| ext.to_str()).unwrap_or_default();
    if matches!(extension, "yml" | "yaml") {
        return config_from_yaml(path);
    }
    let location = Location::file(path);
    match read_json(path)? {
        Value::Object(object) => config_from_object(object, &location),
        other => Err(CorpusError::invalid(
            location,
            format!("expected a config object, found {}", json_kind(&other)),
        )),
    }
}

fn config_from_object(
    mut object: Map<String, Value>,
    location: &Location,
) -> Result<SdfConversationConfig, CorpusError> {
    let conv_len = take_count(&mut object, "conv_len", location)?;
    if conv_len == Some(0) {
        return Err(CorpusError::invalid(location.clone().with_field("conv_len"), "must be at least 1"));
    }
    let history_ctx_len = take_count(&mut object, "history_ctx_len", location)?;
    let turn_manager_type = match object.remove("turn_manager_type") {
        None | Some(Value::Null) => None,
        Some(Value::String(kind)) => Some(kind),
        Some(other) => {
            return Err(CorpusError::invalid(
                location.clone().with_field("turn_manager_type"),
                format!("expected a string, found {}", json_kind(&other)),
            ));
        }
    };
    let turn_manager_config = match object.remove("turn_manager_config") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut settings)) => {
            let field = "turn_manager_config.respond_probability";
            let respond_probability = match settings.remove("respond_probability") {
                None | Some(Value::Null) => None,
                Some(value) => Some(probability(&value, &location.clone().with_field(field))?),
            };
            Some(TurnManagerConfig { respond_probability, extra: settings })
        }
        Some(other) => {
            return Err(CorpusError::invalid(
                location.clone().with_field("turn_manager_config"),
                format!("expected an object, found {}", json_kind(&other)),
            ));
        }
    };
    Ok(SdfConversationConfig {
        conv_len,
        history_ctx_len,
        turn_manager_type,
        turn_manager_config,
        extra: object,
    })
}

fn config_from_yaml(path: &Path) -> Result<SdfConversationConfig, CorpusError> {
    let text = input::read_to_string(path)?;
    if text.trim().is_empty() {
        return Err(CorpusError::invalid(Location::file(path), "empty file"));
    }
    let mut document = yaml::parse_block_mapping(&text, path)?;
    let location = Location::file(path);
    let mut config = SdfConversationConfig::default();
    let turn_taking = document
        .get_mut("discussions")
        .and_then(Value::as_object_mut)
        .and_then(|discussions| discussions.get_mut("turn_taking"))
        .and_then(Value::as_object_mut);
    if let Some(turn_taking) = turn_taking {
        let field = |name: &str| location.clone().with_field(format!("discussions.turn_taking.{name}"));
        if let Some(value) = turn_taking.remove("num_turns") {
            config.conv_len = Some(count(&value, &field("num_turns"))?);
        }
        if let Some(value) = turn_taking.remove("history_ctx_len") {
            config.history_ctx_len = Some(count(&value, &field("history_ctx_len"))?);
        }
        if let Some(value) = turn_taking.remove("turn_manager_type") {
            match value {
                Value::String(kind) => config.turn_manager_type = Some(kind),
                other => {
                    return Err(CorpusError::invalid(
                        field("turn_manager_type"),
                        format!("expected a string, found {}", json_kind(&other)),
                    ));
                }
            }
        }
        if let Some(value) = turn_taking.remove("respond_probability") {
            let respond_probability = probability(&value, &field("respond_probability"))?;
            config.turn_manager_config = Some(TurnManagerConfig {
                respond_probability: Some(respond_probability),
                extra: Meta::new(),
            });
        }
    }
    config.extra = document;
    Ok(config)
}

fn take_count(
    object: &mut Map<String, Value>,
    field: &str,
    location: &Location,
) -> Result<Option<u32>, CorpusError> {
    match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => count(&value, &location.clone().with_field(field)).map(Some),
    }
}

fn count(value: &Value, location: &Location) -> Result<u32, CorpusError> {
    value.as_u64().and_then(|number| u32::try_from(number).ok()).ok_or_else(|| {
        CorpusError::invalid(location.clone(), format!("expected a whole number >= 0, found {value}"))
    })
}

fn probability(value: &Value, location: &Location) -> Result<f64, CorpusError> {
    match value.as_f64() {
        Some(chance) if (0.0..=1.0).contains(&chance) => Ok(chance),
        _ => Err(CorpusError::invalid(
            location.clone(),
            format!("expected a probability between 0 and 1, found {value}"),
        )),
    }
}
