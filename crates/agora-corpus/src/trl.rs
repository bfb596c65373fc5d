//! Writers for the JSONL dataset formats TRL documents (huggingface.co/docs/trl/dataset_formats):
//! language modeling (`messages` / `text`), prompt-completion, preference
//! (`prompt`/`chosen`/`rejected`) and unpaired preference (KTO, with `label`), each in the
//! conversational layout (lists of `{"role", "content"}` messages) or the standard one
//! (plain strings).
//!
//! Standard layouts flatten messages to text: the contents in order (a system message
//! first), joined by a blank line ("\n\n"). A flattened prompt ends with that blank line
//! too, so `prompt + completion` reads exactly like the flattened whole conversation.
//! Records hold only the keys TRL expects (its `is_conversational` looks at the keys);
//! `meta` is added only on request.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use agora_core::{Message, Meta};
use serde::Serialize;

use crate::build::{ChatExample, KtoExample, PreferenceExample};
use crate::{CorpusError, Location};

/// Which TRL dataset type a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrlLayout {
    /// Language modeling: `{"messages": [...]}` (conversational) or `{"text": "..."}`.
    Messages,
    /// `{"prompt", "completion"}` from a chat example whose last message is the assistant's.
    PromptCompletion,
    /// `{"prompt", "chosen", "rejected"}` (DPO and friends).
    Preference,
    /// `{"prompt", "completion", "label"}` (KTO).
    Unpaired,
}

impl TrlLayout {
    pub fn name(self) -> &'static str {
        match self {
            TrlLayout::Messages => "messages",
            TrlLayout::PromptCompletion => "prompt_completion",
            TrlLayout::Preference => "preference",
            TrlLayout::Unpaired => "unpaired",
        }
    }

    /// The kind of example this layout is written from.
    fn takes(self) -> &'static str {
        match self {
            TrlLayout::Messages | TrlLayout::PromptCompletion => "chat examples",
            TrlLayout::Preference => "preference examples",
            TrlLayout::Unpaired => "KTO examples",
        }
    }
}

/// Writes one JSON object per line in a [`TrlLayout`].
pub struct TrlWriter<W: Write> {
    writer: W,
    /// Named in errors: the output file, or a placeholder for other writers.
    path: PathBuf,
    layout: TrlLayout,
    conversational: bool,
    with_meta: bool,
    records: u64,
}

impl<W: Write> std::fmt::Debug for TrlWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrlWriter")
            .field("path", &self.path)
            .field("layout", &self.layout)
            .field("conversational", &self.conversational)
            .field("records", &self.records)
            .finish()
    }
}

impl TrlWriter<BufWriter<File>> {
    /// Creates (or truncates) `path` and writes to it.
    pub fn create(path: &Path, layout: TrlLayout, conversational: bool) -> Result<Self, CorpusError> {
        let file = File::create(path).map_err(|error| CorpusError::io(path, error))?;
        let mut writer = TrlWriter::new(BufWriter::new(file), layout, conversational);
        writer.path = path.to_path_buf();
        Ok(writer)
    }
}

impl<W: Write> TrlWriter<W> {
    pub fn new(writer: W, layout: TrlLayout, conversational: bool) -> TrlWriter<W> {
        TrlWriter {
            writer,
            path: PathBuf::from("<trl output>"),
            layout,
            conversational,
            with_meta: false,
            records: 0,
        }
    }

    /// Adds each example's `meta` object to its record (off by default).
    pub fn with_meta(mut self, with_meta: bool) -> TrlWriter<W> {
        self.with_meta = with_meta;
        self
    }

    pub fn write_chat(&mut self, example: &ChatExample) -> Result<(), CorpusError> {
        let meta = self.meta(&example.meta);
        match (self.layout, self.conversational) {
            (TrlLayout::Messages, true) => {
                self.write_record(&MessagesRecord { messages: &example.messages, meta })
            }
            (TrlLayout::Messages, false) => {
                let text = flatten(&example.messages);
                self.write_record(&TextRecord { text, meta })
            }
            (TrlLayout::PromptCompletion, conversational) => {
                let Some((completion, prompt)) = example.messages.split_last() else {
                    return Err(self.error(&example.group, "a chat example without messages"));
                };
                if completion.role != agora_core::ChatRole::Assistant || prompt.is_empty() {
                    return Err(self.error(
                        &example.group,
                        "prompt-completion needs a prompt and a final assistant message",
                    ));
                }
                if conversational {
                    let completion = std::slice::from_ref(completion);
                    self.write_record(&PromptCompletionRecord { prompt, completion, label: None, meta })
                } else {
                    let record = PromptCompletionRecord {
                        prompt: flatten_prompt(prompt),
                        completion: completion.content.clone(),
                        label: None,
                        meta,
                    };
                    self.write_record(&record)
                }
            }
            (layout, _) => Err(self.wrong_kind(layout, &example.group, "a chat example")),
        }
    }

    pub fn write_preference(&mut self, example: &PreferenceExample) -> Result<(), CorpusError> {
        if self.layout != TrlLayout::Preference {
            return Err(self.wrong_kind(self.layout, &example.group, "a preference example"));
        }
        let meta = self.meta(&example.meta);
        if self.conversational {
            self.write_record(&PreferenceRecord {
                prompt: example.prompt.as_slice(),
                chosen: std::slice::from_ref(&example.chosen),
                rejected: std::slice::from_ref(&example.rejected),
                meta,
            })
        } else {
            self.write_record(&PreferenceRecord {
                prompt: flatten_prompt(&example.prompt),
                chosen: example.chosen.content.as_str(),
                rejected: example.rejected.content.as_str(),
                meta,
            })
        }
    }

    pub fn write_kto(&mut self, example: &KtoExample) -> Result<(), CorpusError> {
        if self.layout != TrlLayout::Unpaired {
            return Err(self.wrong_kind(self.layout, &example.group, "a KTO example"));
        }
        let meta = self.meta(&example.meta);
        if self.conversational {
            self.write_record(&PromptCompletionRecord {
                prompt: example.prompt.as_slice(),
                completion: std::slice::from_ref(&example.completion),
                label: Some(example.label),
                meta,
            })
        } else {
            self.write_record(&PromptCompletionRecord {
                prompt: flatten_prompt(&example.prompt),
                completion: example.completion.content.as_str(),
                label: Some(example.label),
                meta,
            })
        }
    }

    /// Flushes and returns how many records were written.
    pub fn finish(mut self) -> Result<u64, CorpusError> {
        self.writer.flush().map_err(|error| CorpusError::io(&self.path, error))?;
        Ok(self.records)
    }

    fn meta<'m>(&self, meta: &'m Meta) -> Option<&'m Meta> {
        self.with_meta.then_some(meta)
    }

    fn write_record(&mut self, record: &impl Serialize) -> Result<(), CorpusError> {
        // serde_json writes non-ASCII characters as UTF-8, not as \u escapes.
        let mut line = serde_json::to_vec(record).map_err(|error| {
            let record = format!("record {}", self.records + 1);
            CorpusError::invalid(Location::file(&self.path).with_record(record), error.to_string())
        })?;
        line.push(b'\n');
        self.writer.write_all(&line).map_err(|error| CorpusError::io(&self.path, error))?;
        self.records += 1;
        Ok(())
    }

    fn error(&self, group: &str, message: &str) -> CorpusError {
        let record = format!("record {} (group {group})", self.records + 1);
        CorpusError::invalid(Location::file(&self.path).with_record(record), message)
    }

    fn wrong_kind(&self, layout: TrlLayout, group: &str, got: &str) -> CorpusError {
        let message = format!("the `{}` layout is written from {}, got {got}", layout.name(), layout.takes());
        self.error(group, &message)
    }
}

/// The contents of `messages` joined by blank lines.
pub fn flatten(messages: &[Message]) -> String {
    messages.iter().map(|message| message.content.as_str()).collect::<Vec<_>>().join("\n\n")
}

/// [`flatten`] followed by the blank line that separates a prompt from its completion.
pub fn flatten_prompt(messages: &[Message]) -> String {
    let mut text = flatten(messages);
    if !text.is_empty() {
        text.push_str("\n\n");
    }
    text
}

#[derive(Serialize)]
struct MessagesRecord<'a> {
    messages: &'a [Message],
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Meta>,
}

#[derive(Serialize)]
struct TextRecord<'a> {
    text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Meta>,
}

/// Prompt-completion and unpaired preference records (the latter with `label`).
#[derive(Serialize)]
struct PromptCompletionRecord<'a, P: Serialize, C: Serialize> {
    prompt: P,
    completion: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Meta>,
}

#[derive(Serialize)]
struct PreferenceRecord<'a, P: Serialize, C: Serialize> {
    prompt: P,
    chosen: C,
    rejected: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Meta>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(messages: Vec<Message>) -> ChatExample {
        ChatExample { group: "g".into(), messages, meta: Meta::new() }
    }

    fn check_chat(layout: TrlLayout, conversational: bool, example: &ChatExample, expected: &str) {
        let mut writer = TrlWriter::new(Vec::new(), layout, conversational);
        writer.write_chat(example).unwrap();
        let records = writer.records;
        let bytes = writer.writer.clone();
        assert_eq!(records, 1);
        assert_eq!(String::from_utf8(bytes).unwrap(), format!("{expected}\n"));
    }

    #[test]
    fn chat_layouts() {
        let example =
            chat(vec![Message::system("Be kind."), Message::user("Ça va ?"), Message::assistant("Oui ∆")]);
        check_chat(
            TrlLayout::Messages,
            true,
            &example,
            r#"{"messages":[{"role":"system","content":"Be kind."},{"role":"user","content":"Ça va ?"},{"role":"assistant","content":"Oui ∆"}]}"#,
        );
        check_chat(TrlLayout::Messages, false, &example, r#"{"text":"Be kind.\n\nÇa va ?\n\nOui ∆"}"#);
        check_chat(
            TrlLayout::PromptCompletion,
            true,
            &example,
            r#"{"prompt":[{"role":"system","content":"Be kind."},{"role":"user","content":"Ça va ?"}],"completion":[{"role":"assistant","content":"Oui ∆"}]}"#,
        );
        check_chat(
            TrlLayout::PromptCompletion,
            false,
            &example,
            r#"{"prompt":"Be kind.\n\nÇa va ?\n\n","completion":"Oui ∆"}"#,
        );
    }

    #[test]
    fn wrong_kinds_are_errors() {
        let example = chat(vec![Message::user("hi"), Message::assistant("hello")]);
        let mut writer = TrlWriter::new(Vec::new(), TrlLayout::Preference, true);
        let error = writer.write_chat(&example).unwrap_err().to_string();
        assert!(error.contains("`preference` layout is written from preference examples"), "{error}");
        let ends_with_user = chat(vec![Message::assistant("hello"), Message::user("hi")]);
        let mut writer = TrlWriter::new(Vec::new(), TrlLayout::PromptCompletion, true);
        assert!(writer.write_chat(&ends_with_user).is_err());
        assert!(writer.write_chat(&chat(vec![Message::assistant("alone")])).is_err());
        assert_eq!(writer.finish().unwrap(), 0);
    }

    #[test]
    fn meta_is_written_only_on_request() {
        let mut example = chat(vec![Message::user("q"), Message::assistant("a")]);
        example.meta.insert("turn_index".into(), 3.into());
        let mut writer = TrlWriter::new(Vec::new(), TrlLayout::Messages, true).with_meta(true);
        writer.write_chat(&example).unwrap();
        let text = String::from_utf8(writer.writer.clone()).unwrap();
        assert!(text.ends_with(",\"meta\":{\"turn_index\":3}}\n"), "{text}");
    }
}
