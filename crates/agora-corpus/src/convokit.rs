//! ConvoKit corpus folders (`convokit.Corpus(filename=DIR)` loads them): utterances.jsonl,
//! speakers.json, conversations.json, corpus.json and index.json, with the keys and the
//! index type strings ConvoKit's own `Corpus.dump` writes.
//!
//! Conventions, following ConvoKit's:
//! - The root utterance (turn 0) has the conversation's id as its id, and every utterance's
//!   `conversation_id` is that root id. Other turns are `<conversation id>:<turn index>`;
//!   the corpus's own turn id is kept in meta `original_id`.
//! - `reply-to` (ConvoKit's key) is the parent's utterance id for Reddit-style trees, the
//!   previous utterance for linear dialogues, and null for the root.
//! - `timestamp` is the turn index (agora keeps no times), so ConvoKit's chronological
//!   order is reading order.
//! - Turn labels (role, strategy, delta, gives_delta, feedback, extra labels) go to the
//!   utterance meta; conversation meta, the source and the participants (with personas)
//!   to the conversation meta. Conversation-scoped speakers carry their persona too.
//!
//! Utterances are streamed to disk as conversations arrive; the speaker and conversation
//! maps (one entry each) are kept and written by [`ConvokitWriter::finish`].

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use agora_core::{Conversation, Meta, ReplyTree};
use serde::Serialize;
use serde_json::Value;

use crate::{CorpusError, Location};

/// Whether speaker ids are shared across conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpeakerScope {
    /// Global for reply trees (Reddit user names are real accounts), per conversation for
    /// linear dialogues (where names like `seeker` or `self` are only roles).
    #[default]
    Auto,
    /// The speaker name is the id everywhere.
    Global,
    /// `<conversation id>:<speaker>`, so one dialogue's personas never merge with another's.
    PerConversation,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConvokitConfig {
    /// Written to corpus.json as `name` (the folder name when `None`).
    pub corpus_name: Option<String>,
    pub speaker_scope: SpeakerScope,
}

/// What a ConvoKit export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvokitSummary {
    pub conversations: u64,
    pub utterances: u64,
    pub speakers: u64,
    /// Turns of a reply tree other than the first that answer nothing: written with a
    /// null `reply-to`, so ConvoKit sees more than one root in their conversation.
    pub extra_roots: u64,
}

pub struct ConvokitWriter {
    dir: PathBuf,
    config: ConvokitConfig,
    utterances: BufWriter<File>,
    speakers: BTreeMap<String, Meta>,
    conversations: BTreeMap<String, Meta>,
    seen_conversations: HashSet<String>,
    index: ConvokitIndex,
    summary: ConvokitSummary,
}

impl std::fmt::Debug for ConvokitWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvokitWriter").field("dir", &self.dir).field("summary", &self.summary).finish()
    }
}

/// One line of utterances.jsonl, keys as ConvoKit's `dump_utterances` writes them.
#[derive(Serialize)]
struct UtteranceRecord<'a> {
    id: &'a str,
    conversation_id: &'a str,
    text: &'a str,
    speaker: &'a str,
    meta: &'a Meta,
    #[serde(rename = "reply-to")]
    reply_to: Option<&'a str>,
    timestamp: u32,
    vectors: [(); 0],
}

/// A speakers.json / conversations.json entry, as ConvoKit's `dump_corpus_component`
/// writes it.
#[derive(Serialize)]
struct ComponentRecord<'a> {
    meta: &'a Meta,
    vectors: [(); 0],
}

impl ConvokitWriter {
    pub fn new(dir: &Path) -> Result<ConvokitWriter, CorpusError> {
        ConvokitWriter::with_config(dir, ConvokitConfig::default())
    }

    /// Creates `dir` (and its parents) and starts utterances.jsonl in it.
    pub fn with_config(dir: &Path, config: ConvokitConfig) -> Result<ConvokitWriter, CorpusError> {
        fs::create_dir_all(dir).map_err(|error| CorpusError::io(dir, error))?;
        let path = dir.join("utterances.jsonl");
        let file = File::create(&path).map_err(|error| CorpusError::io(&path, error))?;
        Ok(ConvokitWriter {
            dir: dir.to_path_buf(),
            config,
            utterances: BufWriter::new(file),
            speakers: BTreeMap::new(),
            conversations: BTreeMap::new(),
            seen_conversations: HashSet::new(),
            index: ConvokitIndex::default(),
            summary: ConvokitSummary::default(),
        })
    }

    /// Writes the conversation's utterances and records its speakers and meta. A
    /// conversation id given twice is an error (the utterance ids would collide).
    pub fn write(&mut self, conversation: &Conversation) -> Result<(), CorpusError> {
        let utterances_path = self.dir.join("utterances.jsonl");
        if !self.seen_conversations.insert(conversation.id.clone()) {
            return Err(CorpusError::invalid(
                Location::file(&utterances_path).with_record(format!("conversation {}", conversation.id)),
                "conversation id written twice",
            ));
        }
        if conversation.turns.is_empty() {
            return Err(CorpusError::invalid(
                Location::file(&utterances_path).with_record(format!("conversation {}", conversation.id)),
                "a conversation without turns has no root utterance",
            ));
        }
        let per_conversation = match self.config.speaker_scope {
            SpeakerScope::Auto => !conversation.is_tree(),
            SpeakerScope::Global => false,
            SpeakerScope::PerConversation => true,
        };
        let tree = ReplyTree::new(conversation);
        let utterance_ids: Vec<String> =
            (0..conversation.turns.len()).map(|position| utterance_id(&conversation.id, position)).collect();
        let mut line = Vec::new();
        for (position, turn) in conversation.turns.iter().enumerate() {
            let speaker = if per_conversation {
                format!("{}:{}", conversation.id, turn.speaker)
            } else {
                turn.speaker.clone()
            };
            if !self.speakers.contains_key(&speaker) {
                let mut meta = Meta::new();
                if per_conversation {
                    meta.insert("name".into(), Value::from(turn.speaker.clone()));
                    meta.insert("conversation_id".into(), Value::from(conversation.id.clone()));
                    let persona = conversation
                        .participants
                        .iter()
                        .find(|participant| participant.name == turn.speaker)
                        .and_then(|participant| participant.persona.as_ref());
                    if let Some(persona) = persona {
                        meta.insert("persona".into(), serde_json::to_value(persona).unwrap_or(Value::Null));
                    }
                }
                self.index.observe(ObjectType::Speaker, &meta);
                self.speakers.insert(speaker.clone(), meta);
            }
            let parent = tree.parent(position as u32);
            if parent.is_none() && position > 0 {
                self.summary.extra_roots += 1;
            }
            let reply_to = parent.and_then(|parent| utterance_ids.get(parent as usize)).map(String::as_str);
            let meta = utterance_meta(turn, &utterance_ids);
            self.index.observe(ObjectType::Utterance, &meta);
            let record = UtteranceRecord {
                id: &utterance_ids[position],
                conversation_id: &conversation.id,
                text: &turn.text,
                speaker: &speaker,
                meta: &meta,
                reply_to,
                timestamp: position as u32,
                vectors: [],
            };
            line.clear();
            serde_json::to_writer(&mut line, &record).map_err(|error| {
                CorpusError::invalid(
                    Location::file(&utterances_path)
                        .with_record(format!("conversation {}", conversation.id))
                        .with_field(format!("turns[{position}]")),
                    error.to_string(),
                )
            })?;
            line.push(b'\n');
            self.utterances.write_all(&line).map_err(|error| CorpusError::io(&utterances_path, error))?;
            self.summary.utterances += 1;
        }
        let meta = conversation_meta(conversation);
        self.index.observe(ObjectType::Conversation, &meta);
        self.conversations.insert(conversation.id.clone(), meta);
        self.summary.conversations += 1;
        Ok(())
    }

    /// Writes speakers.json, conversations.json, corpus.json and index.json.
    pub fn finish(mut self) -> Result<ConvokitSummary, CorpusError> {
        let utterances_path = self.dir.join("utterances.jsonl");
        self.utterances.flush().map_err(|error| CorpusError::io(&utterances_path, error))?;
        let components = |map: &BTreeMap<String, Meta>| -> Value {
            map.iter()
                .map(|(id, meta)| {
                    let record = ComponentRecord { meta, vectors: [] };
                    (id.clone(), serde_json::to_value(record).unwrap_or(Value::Null))
                })
                .collect::<serde_json::Map<String, Value>>()
                .into()
        };
        write_json(&self.dir.join("speakers.json"), &components(&self.speakers))?;
        write_json(&self.dir.join("conversations.json"), &components(&self.conversations))?;
        let name = self.config.corpus_name.clone().unwrap_or_else(|| {
            self.dir.file_name().map_or_else(String::new, |name| name.to_string_lossy().into_owned())
        });
        let mut corpus_meta = Meta::new();
        corpus_meta.insert("name".into(), Value::from(name));
        corpus_meta.insert("exported_by".into(), Value::from("agora"));
        self.index.observe(ObjectType::Corpus, &corpus_meta);
        write_json(&self.dir.join("corpus.json"), &Value::Object(corpus_meta))?;
        write_json(&self.dir.join("index.json"), &self.index.to_json())?;
        self.summary.speakers = self.speakers.len() as u64;
        Ok(self.summary)
    }
}

/// The root keeps the conversation id, so `conversation_id` names the root utterance.
fn utterance_id(conversation_id: &str, position: usize) -> String {
    if position == 0 { conversation_id.to_string() } else { format!("{conversation_id}:{position}") }
}

/// Utterance meta: fixed keys (null when absent, so every utterance has the same keys),
/// then the open-ended labels; one whose name is taken is stored as `extra_<name>`.
fn utterance_meta(turn: &agora_core::Turn, utterance_ids: &[String]) -> Meta {
    let labels = &turn.labels;
    // The delta names the comment it was given in by turn index; ConvoKit users look
    // utterances up by id, so that id is added as `given_in_utterance`.
    let delta = labels.delta.as_ref().map_or(Value::Null, |delta| {
        let mut value = serde_json::to_value(delta).unwrap_or(Value::Null);
        if let (Value::Object(fields), Some(id)) = (&mut value, utterance_ids.get(delta.given_in as usize)) {
            fields.insert("given_in_utterance".into(), Value::from(id.clone()));
        }
        value
    });
    let mut meta = Meta::new();
    meta.insert("turn_index".into(), Value::from(turn.index));
    meta.insert("role".into(), Value::from(turn.role.as_str()));
    meta.insert("original_id".into(), turn.original_id.clone().map_or(Value::Null, Value::from));
    meta.insert(
        "strategy".into(),
        labels.strategy.map_or(Value::Null, |strategy| Value::from(strategy.name())),
    );
    meta.insert("delta".into(), delta);
    meta.insert("gives_delta".into(), Value::from(labels.gives_delta));
    meta.insert("feedback".into(), labels.feedback.clone().map_or(Value::Null, Value::from));
    for (key, value) in &labels.extra {
        let key = if meta.contains_key(key) { format!("extra_{key}") } else { key.clone() };
        meta.insert(key, value.clone());
    }
    meta
}

/// Conversation meta: the corpus's own fields, then the source and the participants.
fn conversation_meta(conversation: &Conversation) -> Meta {
    let mut meta = conversation.meta.clone();
    meta.insert("corpus".into(), Value::from(conversation.source.corpus.clone()));
    meta.insert("original_id".into(), Value::from(conversation.source.original_id.clone()));
    if !conversation.participants.is_empty() {
        let participants = serde_json::to_value(&conversation.participants).unwrap_or(Value::Null);
        meta.insert("participants".into(), participants);
    }
    meta
}

fn write_json(path: &Path, value: &Value) -> Result<(), CorpusError> {
    let file = File::create(path).map_err(|error| CorpusError::io(path, error))?;
    let mut writer = BufWriter::new(file);
    serde_json::to_writer(&mut writer, value)
        .map_err(|error| CorpusError::io(path, std::io::Error::other(error)))?;
    writer.flush().map_err(|error| CorpusError::io(path, error))
}

#[derive(Debug, Clone, Copy)]
enum ObjectType {
    Utterance,
    Speaker,
    Conversation,
    Corpus,
}

/// The metadata type index ConvoKit keeps in index.json: for each meta key, the Python
/// type names of the values seen, in the order first seen. A key first seen with null
/// gets an empty list, as ConvoKit does ("any type, not known yet").
#[derive(Debug, Default)]
struct ConvokitIndex {
    utterances: BTreeMap<String, Vec<&'static str>>,
    speakers: BTreeMap<String, Vec<&'static str>>,
    conversations: BTreeMap<String, Vec<&'static str>>,
    overall: BTreeMap<String, Vec<&'static str>>,
}

impl ConvokitIndex {
    fn observe(&mut self, object_type: ObjectType, meta: &Meta) {
        let index = match object_type {
            ObjectType::Utterance => &mut self.utterances,
            ObjectType::Speaker => &mut self.speakers,
            ObjectType::Conversation => &mut self.conversations,
            ObjectType::Corpus => &mut self.overall,
        };
        for (key, value) in meta {
            let types = index.entry(key.clone()).or_default();
            if let Some(name) = python_type_name(value)
                && !types.contains(&name)
            {
                types.push(name);
            }
        }
    }

    fn to_json(&self) -> Value {
        serde_json::json!({
            "utterances-index": self.utterances,
            "speakers-index": self.speakers,
            "conversations-index": self.conversations,
            "overall-index": self.overall,
            "version": 1,
            "vectors": [],
        })
    }
}

/// `str(type(value))` of the value Python's json module reads from `value`.
fn python_type_name(value: &Value) -> Option<&'static str> {
    match value {
        Value::Null => None,
        Value::Bool(_) => Some("<class 'bool'>"),
        Value::Number(number) if number.is_f64() => Some("<class 'float'>"),
        Value::Number(_) => Some("<class 'int'>"),
        Value::String(_) => Some("<class 'str'>"),
        Value::Array(_) => Some("<class 'list'>"),
        Value::Object(_) => Some("<class 'dict'>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_type_names_match_convokit() {
        let check = |json: &str, expected: Option<&str>| {
            let value: Value = serde_json::from_str(json).unwrap();
            assert_eq!(python_type_name(&value), expected, "{json}");
        };
        check("1", Some("<class 'int'>"));
        check("-1", Some("<class 'int'>"));
        check("1.0", Some("<class 'float'>"));
        check("true", Some("<class 'bool'>"));
        check("\"x\"", Some("<class 'str'>"));
        check("[]", Some("<class 'list'>"));
        check("{}", Some("<class 'dict'>"));
        check("null", None);
    }

    #[test]
    fn index_keeps_first_seen_order_and_nulls_as_empty_lists() {
        let mut index = ConvokitIndex::default();
        let meta = |value: Value| Meta::from_iter([("k".to_string(), value)]);
        index.observe(ObjectType::Utterance, &meta(Value::Null));
        index.observe(ObjectType::Utterance, &meta(Value::from("a")));
        index.observe(ObjectType::Utterance, &meta(Value::from(1)));
        index.observe(ObjectType::Utterance, &meta(Value::from("b")));
        assert_eq!(index.utterances["k"], vec!["<class 'str'>", "<class 'int'>"]);
    }
}
