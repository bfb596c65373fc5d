//! Synthetic Discussion Framework inputs (personas, topics, instructions, configs) and outputs.
//!
//! The SDF is the Python framework of dimits-ts (`synthetic_moderation_experiments`, its
//! library later published as `syndisco`). Its file formats changed several times; each
//! reader here accepts every variant found in the framework's history and says in its doc
//! comment which version wrote which shape:
//!
//! - [`read_personas`]: persona JSON (one object, a list, or a folder of files).
//! - [`read_texts`]: topic and instruction `.txt` folders.
//! - [`read_conversation_config`]: `other_configs/*.json`, generated `conv_data/*.json`,
//!   and the 2026 `run_config.yml`.
//! - [`import_conversations`]: discussion output JSON -> [`agora_core::Conversation`].
//! - [`read_annotations`] / [`read_annotations_for`]: annotation output JSON ->
//!   [`agora_core::Annotation`] with scores parsed from replies like `Toxicity=3`.
//! - [`discussion_json`] / [`annotation_json`]: the way back, agora's discussions and
//!   annotations as the framework's late-2025 output JSON.

mod annotations;
mod conversations;
mod export;
mod inputs;
mod yaml;

use std::path::Path;

use serde_json::Value;

use crate::{CorpusError, Location, input};

pub use annotations::{read_annotations, read_annotations_for};
pub use conversations::import_conversations;
pub use export::{
    annotation_json, annotation_json_per_annotator, discussion_json, write_annotations, write_discussion,
    write_json,
};
pub use inputs::{
    NamedText, SdfConversationConfig, TurnManagerConfig, read_conversation_config, read_personas, read_texts,
};

/// The corpus name of SDF conversations in agora ids: `sdf:<original id>`.
pub const CORPUS: &str = "sdf";

/// Reads a whole JSON file: UTF-8 checked, a leading byte-order mark and leading
/// whitespace accepted (the 2024 persona files start with a space), an empty file refused.
fn read_json(path: &Path) -> Result<Value, CorpusError> {
    let text = input::read_to_string(path)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if text.trim().is_empty() {
        return Err(CorpusError::invalid(Location::file(path), "empty file"));
    }
    serde_json::from_str(text).map_err(|error| {
        CorpusError::invalid(Location::line(path, error.line() as u64), format!("invalid JSON: {error}"))
    })
}

/// Whether a folder entry is hidden (`.DS_Store`, editor swap files): those are skipped.
fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with('.'))
}

/// The entries of a folder, sorted by name, hidden ones left out; the path itself when it
/// is a file. Entries without `extension` are an error: a stray file in an input folder
/// is more likely a mistake than something to ignore.
fn folder_files(path: &Path, extension: &str) -> Result<Vec<std::path::PathBuf>, CorpusError> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(CorpusError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| CorpusError::io(path, e))? {
        let entry = entry.map_err(|e| CorpusError::io(path, e))?;
        let file = entry.path();
        if is_hidden(&file) {
            continue;
        }
        let has_extension = file.extension().and_then(|ext| ext.to_str()) == Some(extension);
        if !file.is_file() || !has_extension {
            return Err(CorpusError::invalid(
                Location::file(&file),
                format!("not a .{extension} file (expected only .{extension} files in this folder)"),
            ));
        }
        files.push(file);
    }
    files.sort();
    Ok(files)
}

/// The file name without extension, as the SDF uses it for topics and instructions.
fn file_stem(path: &Path) -> String {
    path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default()
}
