//! TRL's JSONL dataset files (the ones agora-corpus's `trl` module writes) turned into
//! token ids with the model's tokenizer and chat template: SFT examples with a loss mask,
//! and DPO preference pairs.
//!
//! Layouts read (huggingface.co/docs/trl/dataset_formats), each standard (strings) or
//! conversational (lists of `{"role", "content"}` messages):
//! - SFT: `messages` / `text` (language modeling) and `prompt` + `completion`;
//! - preferences: `prompt` + `chosen` + `rejected`, and TRL's implicit prompt (no `prompt`
//!   key; `chosen` and `rejected` are whole conversations that share their beginning).
//!
//! As in TRL, a prompt and what follows it are tokenized separately and concatenated, so
//! the boundary between masked and learned tokens is exact; conversational text is cut at
//! the boundaries the chat template itself renders (the prompt rendered with
//! `add_generation_prompt`, then the whole conversation, which must start with it). Standard
//! prompts take the tokenizer's own special tokens (a BOS for Llama-style tokenizers),
//! rendered conversations only what the template writes. Standard completions end with
//! the EOS token; a rendered assistant turn is learned up to and including its end-of-turn
//! token (`<|im_end|>`), and what the template writes after it (a newline) is masked.
//!
//! Bad data is an error naming the file, line and field (not JSON, wrong layout, wrong
//! types, no records); records that are well formed but unusable are skipped and counted
//! in the [`LoadReport`] by reason, never dropped silently.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use agora_core::json_kind;
use agora_model::{ChatTemplate, Message, Tokenizer};
use serde_json::{Map, Value};

use crate::error::{Result, TrainError};

/// Skip reason: the sequence is longer than `max_length` after prompt truncation.
pub const SKIP_TOO_LONG: &str = "longer than max_length";
/// Skip reason: a preference record whose chosen and rejected completions are the same.
pub const SKIP_CHOSEN_EQUALS_REJECTED: &str = "chosen equal to rejected";
/// Skip reason: nothing to learn (an empty completion, chosen, rejected or text).
pub const SKIP_EMPTY_COMPLETION: &str = "empty completion";
/// Skip reason: a `messages` conversation without an assistant message.
pub const SKIP_NO_ASSISTANT: &str = "no assistant message";

/// One SFT sequence: `targets[i]` says whether token i is predicted with loss (from token
/// i - 1), so `targets[0]` is always false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    pub tokens: Vec<u32>,
    pub targets: Vec<bool>,
    /// The 1-based line of the record in its file (for PersonaGPT examples, the 1-based
    /// position of the conversation).
    pub line: usize,
}

impl TokenizedExample {
    /// How many tokens carry loss.
    pub fn target_count(&self) -> usize {
        self.targets.iter().filter(|&&target| target).count()
    }
}

/// One DPO pair: the prompt's ids and each completion's ids (which follow the prompt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferencePair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub line: usize,
}

/// Length limits, as in TRL's configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOptions {
    /// The longest sequence kept (prompt + completion, for pairs prompt + the longer of
    /// chosen and rejected); longer ones are skipped and reported. 0 means no limit.
    pub max_length: usize,
    /// Prompts longer than this keep their last tokens (TRL's "keep_end"); the lines
    /// truncated are reported.
    pub max_prompt_length: Option<usize>,
}

impl Default for DataOptions {
    fn default() -> DataOptions {
        DataOptions { max_length: 1024, max_prompt_length: None }
    }
}

/// What became of a file's records: every record is kept, skipped for a reason, or the
/// load fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub file: PathBuf,
    /// Non-blank lines read.
    pub records: usize,
    pub kept: usize,
    /// Skip reason ([`SKIP_TOO_LONG`]...) to the 1-based lines skipped for it.
    pub skipped: BTreeMap<String, Vec<usize>>,
    /// Lines whose prompt was cut to `max_prompt_length`.
    pub truncated: Vec<usize>,
}

impl LoadReport {
    pub fn new(file: &Path) -> LoadReport {
        LoadReport {
            file: file.to_path_buf(),
            records: 0,
            kept: 0,
            skipped: BTreeMap::new(),
            truncated: Vec::new(),
        }
    }

    /// Records skipped, all reasons together.
    pub fn skipped_count(&self) -> usize {
        self.skipped.values().map(Vec::len).sum()
    }

    /// Lines skipped for `reason` (empty when none).
    pub fn skipped_for(&self, reason: &str) -> &[usize] {
        self.skipped.get(reason).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn skip(&mut self, reason: &str, line: usize) {
        self.skipped.entry(reason.to_owned()).or_default().push(line);
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {} records, {} kept", self.file.display(), self.records, self.kept)?;
        if !self.skipped.is_empty() {
            let reasons: Vec<String> =
                self.skipped.iter().map(|(reason, lines)| format!("{} {reason}", lines.len())).collect();
            write!(formatter, ", {} skipped ({})", self.skipped_count(), reasons.join(", "))?;
        }
        if !self.truncated.is_empty() {
            write!(formatter, ", {} prompts truncated to max_prompt_length", self.truncated.len())?;
        }
        Ok(())
    }
}

/// Reads an SFT file: `messages` (loss on every assistant message, its end-of-turn token
/// included), `text` (loss on every token after the first, EOS appended) or `prompt` +
/// `completion` (loss on the completion). A conversational record needs `template`.
pub fn load_sft(
    path: &Path,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    options: &DataOptions,
) -> Result<(Vec<TokenizedExample>, LoadReport)> {
    let encoder = Encoder::new(path, tokenizer, template)?;
    let mut report = LoadReport::new(path);
    let mut examples = Vec::new();
    for_each_record(path, &mut report, |line, record, report| {
        let at = Place { file: path, line };
        let outcome = match sft_layout(&at, record)? {
            SftLayout::Messages => encoder.messages(&at, record)?,
            SftLayout::Text => encoder.text(&at, record)?,
            SftLayout::PromptCompletion => encoder.prompt_completion(&at, record, options, report)?,
        };
        match outcome.and_then(|example| check_length(example, options)) {
            Ok(example) => {
                examples.push(example);
                report.kept += 1;
            }
            Err(reason) => report.skip(reason, line),
        }
        Ok(())
    })?;
    Ok((examples, report))
}

/// Reads a preference file: `prompt`/`chosen`/`rejected`, standard or conversational, or
/// `chosen`/`rejected` alone with the prompt implicit in their shared beginning.
pub fn load_preferences(
    path: &Path,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    options: &DataOptions,
) -> Result<(Vec<PreferencePair>, LoadReport)> {
    let encoder = Encoder::new(path, tokenizer, template)?;
    let mut report = LoadReport::new(path);
    let mut pairs = Vec::new();
    for_each_record(path, &mut report, |line, record, report| {
        let at = Place { file: path, line };
        match encoder.preference(&at, record, options, report)? {
            Ok(pair) => {
                pairs.push(pair);
                report.kept += 1;
            }
            Err(reason) => report.skip(reason, line),
        }
        Ok(())
    })?;
    Ok((pairs, report))
}

/// Where a record is, for errors.
#[derive(Clone, Copy)]
struct Place<'a> {
    file: &'a Path,
    line: usize,
}

impl Place<'_> {
    fn error(&self, field: &str, message: impl Into<String>) -> TrainError {
        TrainError::data(self.file, self.line, field, message)
    }
}

/// A record's outcome when it is well formed: an item, or the reason it is skipped.
type Kept<T> = std::result::Result<T, &'static str>;

/// Calls `handle` with every non-blank line parsed as a JSON object; an empty file is an
/// error.
fn for_each_record(
    path: &Path,
    report: &mut LoadReport,
    mut handle: impl FnMut(usize, &Map<String, Value>, &mut LoadReport) -> Result<()>,
) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::io(path, source))?;
    let text = String::from_utf8(bytes)
        .map_err(|error| TrainError::data(path, 0, "", format!("not UTF-8 text: {error}")))?;
    for (index, line_text) in text.lines().enumerate() {
        let line = index + 1;
        let line_text = line_text.trim_start_matches('\u{feff}').trim();
        if line_text.is_empty() {
            continue;
        }
        report.records += 1;
        let value: Value = serde_json::from_str(line_text)
            .map_err(|error| TrainError::data(path, line, "", format!("not JSON: {error}")))?;
        let Value::Object(record) = value else {
            return Err(TrainError::data(
                path,
                line,
                "",
                format!("expected a JSON object per line, found {}", json_kind(&value)),
            ));
        };
        handle(line, &record, report)?;
    }
    if report.records == 0 {
        return Err(TrainError::data(path, 0, "", "empty file: no records"));
    }
    Ok(())
}

/// The keys that decide a record's layout; others (`meta`, ids) are ignored.
const LAYOUT_KEYS: [&str; 7] = ["messages", "text", "prompt", "completion", "chosen", "rejected", "label"];

fn layout_keys(record: &Map<String, Value>) -> Vec<&'static str> {
    LAYOUT_KEYS.iter().copied().filter(|key| record.contains_key(*key)).collect()
}

fn wrong_layout(at: &Place<'_>, record: &Map<String, Value>, expected: &str) -> TrainError {
    let found: Vec<String> = record.keys().map(|key| format!("`{key}`")).collect();
    let found = if found.is_empty() { "none".to_owned() } else { found.join(", ") };
    at.error(
        "",
        format!("the record's keys ({found}) match no layout this file is read as; expected {expected}"),
    )
}

enum SftLayout {
    Messages,
    Text,
    PromptCompletion,
}

const SFT_LAYOUTS: &str = "`messages`, `text`, or `prompt` + `completion` (SFT)";
const PREFERENCE_LAYOUTS: &str =
    "`prompt` + `chosen` + `rejected`, or `chosen` + `rejected` with an implicit prompt (preferences)";

fn sft_layout(at: &Place<'_>, record: &Map<String, Value>) -> Result<SftLayout> {
    match layout_keys(record).as_slice() {
        ["messages"] => Ok(SftLayout::Messages),
        ["text"] => Ok(SftLayout::Text),
        ["prompt", "completion"] => Ok(SftLayout::PromptCompletion),
        _ => Err(wrong_layout(at, record, SFT_LAYOUTS)),
    }
}

/// A field's value: a plain string (standard) or a list of messages (conversational).
#[derive(PartialEq)]
enum Content {
    Standard(String),
    Conversation(Vec<Message>),
}

impl Content {
    fn is_conversational(&self) -> bool {
        matches!(self, Content::Conversation(_))
    }

    /// Nothing to learn: an empty string, or messages whose contents are all empty.
    fn is_blank(&self) -> bool {
        match self {
            Content::Standard(text) => text.trim().is_empty(),
            Content::Conversation(messages) => {
                messages.iter().all(|message| message.content.trim().is_empty())
            }
        }
    }
}

fn read_content(at: &Place<'_>, record: &Map<String, Value>, field: &str) -> Result<Content> {
    match record.get(field) {
        Some(Value::String(text)) => Ok(Content::Standard(text.clone())),
        Some(Value::Array(items)) => read_messages(at, field, items).map(Content::Conversation),
        Some(other) => {
            Err(at
                .error(field, format!("expected a string or a list of messages, found {}", json_kind(other))))
        }
        None => Err(at.error(field, "missing")),
    }
}

fn read_messages(at: &Place<'_>, field: &str, items: &[Value]) -> Result<Vec<Message>> {
    let mut messages = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Value::Object(object) = item else {
            return Err(at.error(
                &format!("{field}[{index}]"),
                format!("expected a message object {{\"role\", \"content\"}}, found {}", json_kind(item)),
            ));
        };
        let text_of = |key: &str| match object.get(key) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(other) => Err(at.error(
                &format!("{field}[{index}].{key}"),
                format!("expected a string, found {}", json_kind(other)),
            )),
            None => Err(at.error(&format!("{field}[{index}].{key}"), "missing")),
        };
        messages.push(Message::new(text_of("role")?, text_of("content")?));
    }
    Ok(messages)
}

/// Skips an SFT example longer than `max_length`, or one with nothing to learn.
fn check_length(mut example: TokenizedExample, options: &DataOptions) -> Kept<TokenizedExample> {
    if let Some(first) = example.targets.first_mut() {
        *first = false;
    }
    if example.target_count() == 0 {
        return Err(SKIP_EMPTY_COMPLETION);
    }
    if options.max_length > 0 && example.tokens.len() > options.max_length {
        return Err(SKIP_TOO_LONG);
    }
    Ok(example)
}

/// Keeps the last `max_prompt_length` tokens of a prompt, noting the line when it cuts.
fn truncate_prompt(prompt: &mut Vec<u32>, options: &DataOptions, line: usize, report: &mut LoadReport) {
    if let Some(limit) = options.max_prompt_length
        && prompt.len() > limit
    {
        prompt.drain(..prompt.len() - limit);
        report.truncated.push(line);
    }
}

/// Tokenizes records for one file with one tokenizer and template.
struct Encoder<'a> {
    tokenizer: &'a Tokenizer,
    template: Option<&'a ChatTemplate>,
    /// Appended to standard completions and text.
    eos_id: u32,
    /// Tokens that end an assistant turn: learned, and nothing after them in the turn is.
    end_of_turn_ids: Vec<u32>,
}

impl<'a> Encoder<'a> {
    fn new(path: &Path, tokenizer: &'a Tokenizer, template: Option<&'a ChatTemplate>) -> Result<Encoder<'a>> {
        let eos_id = tokenizer
            .eos_token()
            .and_then(|token| tokenizer.token_to_id(token))
            .or_else(|| tokenizer.eos_token_ids().first().copied())
            .ok_or_else(|| {
                TrainError::config(
                    path,
                    "the tokenizer has no end-of-sequence token, which completions end with",
                )
            })?;
        let mut end_of_turn_ids = tokenizer.eos_token_ids().to_vec();
        if !end_of_turn_ids.contains(&eos_id) {
            end_of_turn_ids.push(eos_id);
        }
        Ok(Encoder { tokenizer, template, eos_id, end_of_turn_ids })
    }

    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text, add_special_tokens)?)
    }

    fn template(&self, at: &Place<'_>, field: &str) -> Result<&'a ChatTemplate> {
        self.template.ok_or_else(|| {
            at.error(field, "a conversational record (a list of messages) needs the model's chat template")
        })
    }

    fn render(
        &self,
        at: &Place<'_>,
        field: &str,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.template(at, field)?;
        template.render(messages, add_generation_prompt).map_err(|error| at.error(field, error.to_string()))
    }

    /// Prompt ids: a standard prompt with the tokenizer's special tokens, a conversation
    /// rendered with the generation prompt. Also returns the rendered text, which the
    /// rendered completion must start with.
    fn prompt(&self, at: &Place<'_>, prompt: &Content) -> Result<(Vec<u32>, String)> {
        let (mut ids, text) = match prompt {
            Content::Standard(text) => (self.encode(text, true)?, text.clone()),
            Content::Conversation(messages) => {
                let text = self.render(at, "prompt", messages, true)?;
                (self.encode(&text, false)?, text)
            }
        };
        if ids.is_empty() {
            // The first completion token needs a token before it to be predicted from.
            match self.tokenizer.bos_token_id() {
                Some(bos) => ids.push(bos),
                None => {
                    return Err(at.error(
                        "prompt",
                        "the prompt tokenizes to nothing and the tokenizer has no BOS token to stand for it",
                    ));
                }
            }
        }
        Ok((ids, text))
    }

    /// A completion's ids and loss mask. Standard: the text and EOS, all learned.
    /// Conversational: what the whole conversation renders after the rendered prompt,
    /// learned up to its last end-of-turn token.
    fn completion(
        &self,
        at: &Place<'_>,
        field: &str,
        prompt: &Content,
        prompt_text: &str,
        completion: &Content,
    ) -> Result<(Vec<u32>, Vec<bool>)> {
        match (prompt, completion) {
            (Content::Standard(_), Content::Standard(text)) => {
                let mut ids = self.encode(text, false)?;
                ids.push(self.eos_id);
                let targets = vec![true; ids.len()];
                Ok((ids, targets))
            }
            (Content::Conversation(prompt_messages), Content::Conversation(messages)) => {
                let whole: Vec<Message> = prompt_messages.iter().chain(messages).cloned().collect();
                let rendered = self.render(at, field, &whole, false)?;
                let Some(rest) = rendered.strip_prefix(prompt_text) else {
                    return Err(at.error(field, PREFIX_MISMATCH));
                };
                let ids = self.encode(rest, false)?;
                let targets = self.assistant_targets(&ids);
                Ok((ids, targets))
            }
            _ => Err(at.error(
                field,
                "the prompt and the completion must both be strings or both be lists of messages",
            )),
        }
    }

    /// Learned up to and including the last end-of-turn token; the rest (a newline the
    /// template writes after the turn) is masked. All learned when there is none.
    fn assistant_targets(&self, ids: &[u32]) -> Vec<bool> {
        match ids.iter().rposition(|id| self.end_of_turn_ids.contains(id)) {
            Some(last) => (0..ids.len()).map(|index| index <= last).collect(),
            None => vec![true; ids.len()],
        }
    }

    fn messages(&self, at: &Place<'_>, record: &Map<String, Value>) -> Result<Kept<TokenizedExample>> {
        let messages = match read_content(at, record, "messages")? {
            Content::Conversation(messages) => messages,
            Content::Standard(_) => {
                return Err(at.error("messages", "expected a list of messages, found a string (use `text`)"));
            }
        };
        if !messages.iter().any(|message| message.role == "assistant") {
            return Ok(Err(SKIP_NO_ASSISTANT));
        }
        let mut example = TokenizedExample { tokens: Vec::new(), targets: Vec::new(), line: at.line };
        // Masked text is tokenized in one piece up to the next assistant message, so only
        // the boundaries the template draws around assistant turns split the tokenization.
        let mut masked = String::new();
        let mut rendered_so_far = String::new();
        for index in 0..messages.len() {
            let rendered = self.render(at, "messages", &messages[..=index], false)?;
            let field = format!("messages[{index}]");
            if messages[index].role == "assistant" {
                let with_header = self.render(at, "messages", &messages[..index], true)?;
                let (Some(header), Some(body)) =
                    (with_header.strip_prefix(&rendered_so_far), rendered.strip_prefix(&with_header))
                else {
                    return Err(at.error(&field, PREFIX_MISMATCH));
                };
                masked.push_str(header);
                self.push_text(&mut example, &masked, false)?;
                masked.clear();
                let ids = self.encode(body, false)?;
                example.targets.extend(self.assistant_targets(&ids));
                example.tokens.extend(ids);
            } else {
                let Some(added) = rendered.strip_prefix(&rendered_so_far) else {
                    return Err(at.error(&field, PREFIX_MISMATCH));
                };
                masked.push_str(added);
            }
            rendered_so_far = rendered;
        }
        self.push_text(&mut example, &masked, false)?;
        Ok(Ok(example))
    }

    fn push_text(&self, example: &mut TokenizedExample, text: &str, target: bool) -> Result<()> {
        if !text.is_empty() {
            let ids = self.encode(text, false)?;
            example.targets.extend(std::iter::repeat_n(target, ids.len()));
            example.tokens.extend(ids);
        }
        Ok(())
    }

    fn text(&self, at: &Place<'_>, record: &Map<String, Value>) -> Result<Kept<TokenizedExample>> {
        let text = match read_content(at, record, "text")? {
            Content::Standard(text) => text,
            Content::Conversation(_) => {
                return Err(at.error("text", "expected a string, found a list (use `messages`)"));
            }
        };
        if text.trim().is_empty() {
            return Ok(Err(SKIP_EMPTY_COMPLETION));
        }
        let mut tokens = self.encode(&text, true)?;
        if tokens.last() != Some(&self.eos_id) {
            tokens.push(self.eos_id);
        }
        let targets = (0..tokens.len()).map(|index| index > 0).collect();
        Ok(Ok(TokenizedExample { tokens, targets, line: at.line }))
    }

    fn prompt_completion(
        &self,
        at: &Place<'_>,
        record: &Map<String, Value>,
        options: &DataOptions,
        report: &mut LoadReport,
    ) -> Result<Kept<TokenizedExample>> {
        let prompt = read_content(at, record, "prompt")?;
        let completion = read_content(at, record, "completion")?;
        if completion.is_blank() {
            return Ok(Err(SKIP_EMPTY_COMPLETION));
        }
        let (mut tokens, prompt_text) = self.prompt(at, &prompt)?;
        let (completion_ids, completion_targets) =
            self.completion(at, "completion", &prompt, &prompt_text, &completion)?;
        truncate_prompt(&mut tokens, options, at.line, report);
        let mut targets = vec![false; tokens.len()];
        tokens.extend(completion_ids);
        targets.extend(completion_targets);
        Ok(Ok(TokenizedExample { tokens, targets, line: at.line }))
    }

    fn preference(
        &self,
        at: &Place<'_>,
        record: &Map<String, Value>,
        options: &DataOptions,
        report: &mut LoadReport,
    ) -> Result<Kept<PreferencePair>> {
        let (prompt, chosen, rejected) = match layout_keys(record).as_slice() {
            ["prompt", "chosen", "rejected"] => (
                read_content(at, record, "prompt")?,
                read_content(at, record, "chosen")?,
                read_content(at, record, "rejected")?,
            ),
            ["chosen", "rejected"] => {
                let chosen = read_content(at, record, "chosen")?;
                let rejected = read_content(at, record, "rejected")?;
                if chosen == rejected {
                    return Ok(Err(SKIP_CHOSEN_EQUALS_REJECTED));
                }
                split_implicit_prompt(at, chosen, rejected)?
            }
            _ => return Err(wrong_layout(at, record, PREFERENCE_LAYOUTS)),
        };
        if chosen.is_conversational() != prompt.is_conversational()
            || rejected.is_conversational() != prompt.is_conversational()
        {
            let field =
                if chosen.is_conversational() != prompt.is_conversational() { "chosen" } else { "rejected" };
            return Err(at.error(
                field,
                "the prompt, chosen and rejected must all be strings or all be lists of messages",
            ));
        }
        if chosen == rejected {
            return Ok(Err(SKIP_CHOSEN_EQUALS_REJECTED));
        }
        if chosen.is_blank() || rejected.is_blank() {
            return Ok(Err(SKIP_EMPTY_COMPLETION));
        }
        let (mut prompt_ids, prompt_text) = self.prompt(at, &prompt)?;
        let chosen_ids = self.scored_completion(at, "chosen", &prompt, &prompt_text, &chosen)?;
        let rejected_ids = self.scored_completion(at, "rejected", &prompt, &prompt_text, &rejected)?;
        if chosen_ids == rejected_ids {
            return Ok(Err(SKIP_CHOSEN_EQUALS_REJECTED));
        }
        let longest = chosen_ids.len().max(rejected_ids.len());
        let prompt_limit = options.max_prompt_length.map(|limit| limit.min(prompt_ids.len()));
        let kept_prompt = prompt_limit.unwrap_or(prompt_ids.len());
        if options.max_length > 0 && kept_prompt + longest > options.max_length {
            return Ok(Err(SKIP_TOO_LONG));
        }
        truncate_prompt(&mut prompt_ids, options, at.line, report);
        Ok(Ok(PreferencePair {
            prompt: prompt_ids,
            chosen: chosen_ids,
            rejected: rejected_ids,
            line: at.line,
        }))
    }

    /// A DPO completion: every token is scored, so a rendered turn is cut after its
    /// end-of-turn token (or given an EOS when it has none).
    fn scored_completion(
        &self,
        at: &Place<'_>,
        field: &str,
        prompt: &Content,
        prompt_text: &str,
        completion: &Content,
    ) -> Result<Vec<u32>> {
        let (mut ids, targets) = self.completion(at, field, prompt, prompt_text, completion)?;
        let learned = targets.iter().rposition(|&target| target).map_or(0, |last| last + 1);
        ids.truncate(learned);
        if completion.is_conversational() && ids.last().is_none_or(|id| !self.end_of_turn_ids.contains(id)) {
            ids.push(self.eos_id);
        }
        Ok(ids)
    }
}

const PREFIX_MISMATCH: &str = "the chat template renders the conversation so that it does not start with \
     its rendered beginning, so the learned part cannot be cut out exactly";

/// TRL's implicit prompt: the longest shared beginning of `chosen` and `rejected` (whole
/// messages for conversations; for strings, characters, not cutting after a space).
fn split_implicit_prompt(
    at: &Place<'_>,
    chosen: Content,
    rejected: Content,
) -> Result<(Content, Content, Content)> {
    match (chosen, rejected) {
        (Content::Conversation(chosen), Content::Conversation(rejected)) => {
            let shared = chosen.iter().zip(&rejected).take_while(|(left, right)| left == right).count();
            let prompt = chosen[..shared].to_vec();
            Ok((
                Content::Conversation(prompt),
                Content::Conversation(chosen[shared..].to_vec()),
                Content::Conversation(rejected[shared..].to_vec()),
            ))
        }
        (Content::Standard(chosen), Content::Standard(rejected)) => {
            let mut shared = chosen
                .char_indices()
                .zip(rejected.chars())
                .find(|((_, left), right)| left != right)
                .map_or(chosen.len().min(rejected.len()), |((index, _), _)| index);
            // Keep a separating space with the completions, as TRL does.
            if chosen[..shared].ends_with(' ') {
                shared -= 1;
            }
            Ok((
                Content::Standard(chosen[..shared].to_owned()),
                Content::Standard(chosen[shared..].to_owned()),
                Content::Standard(rejected[shared..].to_owned()),
            ))
        }
        _ => Err(
            at.error("rejected", "`chosen` and `rejected` must both be strings or both be lists of messages")
        ),
    }
}
