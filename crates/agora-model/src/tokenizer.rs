//! Tokenizers from a Hugging Face folder (tokenizer.json and its config files) or from a
//! GGUF file's metadata, with the special tokens, end-of-sequence ids and chat template that
//! generation needs.
//!
//! A GGUF holds no tokenizer.json, only llama.cpp's description of one (vocabulary, merges,
//! token types, a pre-tokenizer name). [`Tokenizer::from_gguf`] rebuilds the equivalent
//! `tokenizers` pipeline; the pre-tokenizer name matters: SmolLM ("smollm") splits digits one
//! by one before the GPT-2 byte-level split, Llama 3 and Qwen2 have their own split regexes,
//! and a tokenizer rebuilt without them encodes numbers and whitespace differently.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use serde_json::Value as JsonValue;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::chat_template::ChatTemplate;
use crate::gguf_meta::{GgufMetadata, read_gguf_content};
use crate::{ModelError, Result};

/// Tokens llama.cpp treats as end of generation whenever the vocabulary has them as special
/// tokens (chat models end a turn with one and a document with another).
const END_OF_GENERATION_TOKENS: &[&str] =
    &["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<EOT>"];

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama 3's split (GGUF `tokenizer.ggml.pre` = "llama-bpe" and relatives).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: like Llama 3's but one digit at a time.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A named chat template from tokenizer_config.json (a plain string is named "default").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedChatTemplate {
    pub name: String,
    pub source: String,
}

/// A tokenizer and what generation needs to know about its special tokens.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it was loaded from, for errors.
    origin: PathBuf,
    bos_token: Option<String>,
    eos_token: Option<String>,
    unk_token: Option<String>,
    pad_token: Option<String>,
    eos_token_ids: Vec<u32>,
    chat_templates: Vec<NamedChatTemplate>,
}

impl Tokenizer {
    /// Loads a Hugging Face tokenizer folder: tokenizer.json (required), tokenizer_config.json
    /// (special tokens, `chat_template`), chat_template.jinja, special_tokens_map.json and
    /// generation_config.json (extra end-of-sequence ids) when present.
    pub fn from_folder(folder: &Path) -> Result<Tokenizer> {
        let tokenizer_path = folder.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(ModelError::file(
                &tokenizer_path,
                "not found (a Hugging Face tokenizer folder needs tokenizer.json)",
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|error| {
            ModelError::file(&tokenizer_path, format!("not a valid tokenizer.json: {error}"))
        })?;
        let config = read_optional_json(&folder.join("tokenizer_config.json"))?;
        let special_tokens_map = read_optional_json(&folder.join("special_tokens_map.json"))?;
        let generation_config = read_optional_json(&folder.join("generation_config.json"))?;

        let special_token = |name: &str| {
            config
                .as_ref()
                .and_then(|config| token_text(config.get(name)))
                .or_else(|| special_tokens_map.as_ref().and_then(|map| token_text(map.get(name))))
        };
        let mut tokenizer = Tokenizer {
            inner,
            origin: folder.to_path_buf(),
            bos_token: special_token("bos_token"),
            eos_token: special_token("eos_token"),
            unk_token: special_token("unk_token"),
            pad_token: special_token("pad_token"),
            eos_token_ids: Vec::new(),
            chat_templates: Vec::new(),
        };

        let config_path = folder.join("tokenizer_config.json");
        if let Some(templates) = config.as_ref().and_then(|config| config.get("chat_template")) {
            tokenizer.chat_templates = parse_chat_templates(templates, &config_path)?;
        }
        // transformers 4.43+ saves the template in its own file, which wins over the config.
        let jinja_path = folder.join("chat_template.jinja");
        if jinja_path.is_file() {
            let source = std::fs::read_to_string(&jinja_path)
                .map_err(|source| ModelError::Io { path: jinja_path.clone(), source })?;
            tokenizer.chat_templates.retain(|template| template.name != "default");
            tokenizer.chat_templates.insert(0, NamedChatTemplate { name: "default".to_owned(), source });
        }

        let mut eos_ids: Vec<u32> =
            tokenizer.eos_token.as_deref().and_then(|eos| tokenizer.token_to_id(eos)).into_iter().collect();
        if let Some(generation_config) = &generation_config {
            match generation_config.get("eos_token_id") {
                Some(JsonValue::Number(id)) => {
                    eos_ids.extend(id.as_u64().and_then(|id| u32::try_from(id).ok()))
                }
                Some(JsonValue::Array(ids)) => eos_ids
                    .extend(ids.iter().filter_map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()))),
                _ => {}
            }
        }
        tokenizer.set_eos_token_ids(eos_ids);
        Ok(tokenizer)
    }

    /// Rebuilds the tokenizer a GGUF file describes (see [`from_gguf_content`](Self::from_gguf_content)).
    pub fn from_gguf(path: &Path) -> Result<Tokenizer> {
        let content = read_gguf_content(path)?;
        Tokenizer::from_gguf_content(path, &content)
    }

    /// The tokenizer of an already-read GGUF header. Supported: `tokenizer.ggml.model` =
    /// "gpt2" (byte-level BPE) with pre-tokenizers "smollm" (and the other llama.cpp names
    /// that split digits singly), "gpt2", "llama-bpe"/"llama3" and "qwen2" families.
    /// SentencePiece ("llama") vocabularies are refused with an error that says so.
    pub fn from_gguf_content(path: &Path, content: &Content) -> Result<Tokenizer> {
        let metadata = GgufMetadata::new(path, content);
        let Some(model) = metadata.optional_string("tokenizer.ggml.model")? else {
            return Err(ModelError::file(
                path,
                "this GGUF file holds no tokenizer (no `tokenizer.ggml.model`); give a tokenizer folder instead",
            ));
        };
        match model {
            "gpt2" => byte_level_from_gguf(&metadata),
            "llama" => Err(ModelError::file(
                path,
                "SentencePiece GGUF tokenizers (`tokenizer.ggml.model` = \"llama\") are not supported yet; give the model's tokenizer.json folder instead",
            )),
            other => Err(ModelError::file(
                path,
                format!(
                    "unsupported GGUF tokenizer type `tokenizer.ggml.model` = {other:?} (supported: \"gpt2\")"
                ),
            )),
        }
    }

    /// Token ids of `text`. `add_special_tokens` adds what the tokenizer's post-processor adds
    /// (a BOS for Llama-style tokenizers, nothing for SmolLM2 or GPT-2). Special tokens
    /// written in the text (`<|im_end|>`) become their single ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, add_special_tokens).map_err(|error| {
            ModelError::Text(format!("{}: cannot encode text: {error}", self.origin.display()))
        })?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|error| {
            ModelError::Text(format!("{}: cannot decode token ids: {error}", self.origin.display()))
        })
    }

    /// A decoder for streaming: text comes out only once its characters are complete.
    pub fn incremental_decoder(&self, skip_special_tokens: bool) -> IncrementalDecoder<'_> {
        IncrementalDecoder {
            tokenizer: self,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Every id, added tokens included (the embedding rows the model needs).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Every id that ends generation: the configured EOS, generation_config.json's extra ones,
    /// and the end-of-turn/document tokens llama.cpp recognises (`<|im_end|>`,
    /// `<|endoftext|>`, `<|eot_id|>`...) when this vocabulary has them as special tokens.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn pad_token(&self) -> Option<&str> {
        self.pad_token.as_deref()
    }

    pub fn unk_token(&self) -> Option<&str> {
        self.unk_token.as_deref()
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|token| self.token_to_id(token))
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token.as_deref().and_then(|token| self.token_to_id(token))
    }

    /// The chat templates the model ships (a plain template is named "default").
    pub fn chat_templates(&self) -> &[NamedChatTemplate] {
        &self.chat_templates
    }

    /// The model's chat template (the one named "default", or the only one), compiled with
    /// this tokenizer's special tokens; the built-in ChatML when the model has none
    /// ([`ChatTemplate::is_fallback`] then says so).
    pub fn chat_template(&self) -> Result<ChatTemplate> {
        let chosen = self
            .chat_templates
            .iter()
            .find(|template| template.name == "default")
            .or(if self.chat_templates.len() == 1 { self.chat_templates.first() } else { None });
        let template = match (chosen, self.chat_templates.is_empty()) {
            (Some(template), _) => ChatTemplate::new(template.source.clone()).map_err(|error| {
                ModelError::file(&self.origin, format!("chat template {:?}: {error}", template.name))
            })?,
            (None, true) => ChatTemplate::chatml_fallback(),
            (None, false) => {
                let names: Vec<&str> =
                    self.chat_templates.iter().map(|template| template.name.as_str()).collect();
                return Err(ModelError::file(
                    &self.origin,
                    format!(
                        "several chat templates ({}) and none named \"default\"; pick one with chat_template_named",
                        names.join(", ")
                    ),
                ));
            }
        };
        Ok(self.with_special_tokens(template))
    }

    /// A chat template by name, with this tokenizer's special tokens.
    pub fn chat_template_named(&self, name: &str) -> Result<ChatTemplate> {
        let Some(template) = self.chat_templates.iter().find(|template| template.name == name) else {
            return Err(ModelError::file(&self.origin, format!("no chat template named {name:?}")));
        };
        let compiled = ChatTemplate::new(template.source.clone())
            .map_err(|error| ModelError::file(&self.origin, format!("chat template {name:?}: {error}")))?;
        Ok(self.with_special_tokens(compiled))
    }

    fn with_special_tokens(&self, template: ChatTemplate) -> ChatTemplate {
        template.with_special_tokens(self.bos_token(), self.eos_token(), self.unk_token(), self.pad_token())
    }

    /// Adds special tokens (PersonaGPT's `<|sep|>`, `<|p1|>`...) that are matched whole in
    /// text and skipped when decoding with `skip_special_tokens`. Returns the id of each, in
    /// order; tokens new to the vocabulary get consecutive ids from the old vocabulary size,
    /// so the model grows its embeddings to [`vocab_size`](Self::vocab_size).
    pub fn add_special_tokens(&mut self, tokens: &[&str]) -> Result<Vec<u32>> {
        let added: Vec<AddedToken> = tokens.iter().map(|token| AddedToken::from(*token, true)).collect();
        self.inner
            .add_special_tokens(added)
            .map_err(|error| ModelError::Text(format!("cannot add special tokens: {error}")))?;
        tokens
            .iter()
            .map(|token| {
                self.token_to_id(token).ok_or_else(|| {
                    ModelError::Text(format!("special token {token:?} was not added to the vocabulary"))
                })
            })
            .collect()
    }

    /// Writes a Hugging Face tokenizer folder that [`Tokenizer::from_folder`] (and
    /// transformers) read back: tokenizer.json, and tokenizer_config.json with the
    /// special tokens and the chat templates. A tokenizer rebuilt from a GGUF file thus
    /// travels with a model saved as a Hugging Face folder.
    pub fn save_folder(&self, folder: &Path) -> Result<()> {
        std::fs::create_dir_all(folder)
            .map_err(|source| ModelError::Io { path: folder.to_path_buf(), source })?;
        let tokenizer_path = folder.join("tokenizer.json");
        self.inner
            .save(&tokenizer_path, false)
            .map_err(|error| ModelError::file(&tokenizer_path, format!("cannot write: {error}")))?;
        let mut config = serde_json::Map::new();
        for (name, token) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("unk_token", &self.unk_token),
            ("pad_token", &self.pad_token),
        ] {
            if let Some(token) = token {
                config.insert(name.to_string(), JsonValue::String(token.clone()));
            }
        }
        match self.chat_templates.as_slice() {
            [] => {}
            [only] if only.name == "default" => {
                config.insert("chat_template".to_string(), JsonValue::String(only.source.clone()));
            }
            templates => {
                let list = templates
                    .iter()
                    .map(|template| serde_json::json!({"name": template.name, "template": template.source}))
                    .collect();
                config.insert("chat_template".to_string(), JsonValue::Array(list));
            }
        }
        let config_path = folder.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&JsonValue::Object(config))
            .map_err(|error| ModelError::file(&config_path, format!("cannot serialise: {error}")))?;
        std::fs::write(&config_path, text + "\n")
            .map_err(|source| ModelError::Io { path: config_path, source })
    }

    /// The `tokenizers` object underneath, for what this type does not wrap (offsets, batches).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Sets the end-of-sequence ids: `configured` first, then the known end-of-generation
    /// tokens this vocabulary has as special tokens.
    fn set_eos_token_ids(&mut self, configured: Vec<u32>) {
        let special_ids: BTreeSet<u32> = self
            .inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| *id)
            .collect();
        let mut ids = Vec::new();
        let known = END_OF_GENERATION_TOKENS
            .iter()
            .filter_map(|token| self.token_to_id(token))
            .filter(|id| special_ids.contains(id));
        for id in configured.into_iter().chain(known) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        self.eos_token_ids = ids;
    }
}

/// Turns token ids into text as they are generated. Bytes of one character can be spread over
/// several byte-level tokens; a step returns text only once the characters are complete, and
/// decodes with a little context so tokenizers that drop a leading space do not glue words.
#[derive(Debug)]
pub struct IncrementalDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    /// Ids from the context window on (older ones are dropped).
    ids: Vec<u32>,
    /// Start of the context decoded before the new text.
    prefix_offset: usize,
    /// Ids before this have been returned as text.
    read_offset: usize,
}

impl IncrementalDecoder<'_> {
    /// Adds one token; returns the new text if it completes at least one character.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special_tokens)?;
        let text = self.tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        // A trailing U+FFFD is a character whose remaining bytes are still to come.
        if text.len() <= prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let new_text = match text.get(prefix.len()..) {
            Some(new_text) if text.starts_with(&prefix) => new_text.to_owned(),
            // The context decoded differently on its own: give the whole window's new part.
            _ => text.chars().skip(prefix.chars().count()).collect(),
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        // Keep only the context window.
        self.ids.drain(..self.prefix_offset);
        self.read_offset -= self.prefix_offset;
        self.prefix_offset = 0;
        Ok(Some(new_text))
    }

    /// Whatever is held back at the end of the stream (an incomplete character comes out as
    /// U+FFFD, as a full decode would give it).
    pub fn finish(&mut self) -> Result<String> {
        let prefix = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special_tokens)?;
        let text = self.tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        self.ids.clear();
        self.prefix_offset = 0;
        self.read_offset = 0;
        Ok(match text.get(prefix.len()..) {
            Some(rest) if text.starts_with(&prefix) => rest.to_owned(),
            _ => text.chars().skip(prefix.chars().count()).collect(),
        })
    }
}

fn read_optional_json(path: &Path) -> Result<Option<JsonValue>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| ModelError::file(path, format!("not valid JSON: {error}")))
}

/// A special token in tokenizer_config.json: a string or an `AddedToken` object.
fn token_text(value: Option<&JsonValue>) -> Option<String> {
    match value? {
        JsonValue::String(text) => Some(text.clone()),
        JsonValue::Object(fields) => fields.get("content").and_then(JsonValue::as_str).map(str::to_owned),
        _ => None,
    }
}

/// `chat_template` is a string or a list of `{"name", "template"}`.
fn parse_chat_templates(value: &JsonValue, path: &Path) -> Result<Vec<NamedChatTemplate>> {
    match value {
        JsonValue::Null => Ok(Vec::new()),
        JsonValue::String(source) => {
            Ok(vec![NamedChatTemplate { name: "default".to_owned(), source: source.clone() }])
        }
        JsonValue::Array(entries) => entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let name = entry.get("name").and_then(JsonValue::as_str);
                let source = entry.get("template").and_then(JsonValue::as_str);
                match (name, source) {
                    (Some(name), Some(source)) => {
                        Ok(NamedChatTemplate { name: name.to_owned(), source: source.to_owned() })
                    }
                    _ => Err(ModelError::file(
                        path,
                        format!("chat_template[{index}] needs a string `name` and `template`"),
                    )),
                }
            })
            .collect(),
        _ => Err(ModelError::file(path, "chat_template must be a string or a list of {name, template}")),
    }
}

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the others map to
/// code points from 256 on, so that every byte sequence is a string of visible characters.
fn byte_level_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[byte as usize] = if printable {
            char::from(byte)
        } else {
            let character = char::from_u32(next_extra).unwrap_or('\u{FFFD}');
            next_extra += 1;
            character
        };
    }
    table
}

/// The pre-tokenizer that llama.cpp's `tokenizer.ggml.pre` names, as a `tokenizers` pipeline.
fn byte_level_pre_tokenizer(pre: Option<&str>, path: &Path) -> Result<PreTokenizerWrapper> {
    let gpt2 = || PreTokenizerWrapper::from(ByteLevel::new(false, true, true));
    let split_then_bytes = |pattern: &str| -> Result<PreTokenizerWrapper> {
        let split =
            Split::new(SplitPattern::Regex(pattern.to_owned()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|error| ModelError::Text(format!("split regex: {error}")))?;
        Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
    };
    match pre {
        // Older files name none; llama.cpp then uses the GPT-2 split too.
        None | Some("gpt2" | "gpt-2" | "mpt" | "olmo" | "jais") => Ok(gpt2()),
        // llama.cpp: `\p{N}` first, then the GPT-2 split; SmolLM2's tokenizer.json says the
        // same as Digits(individual) + ByteLevel.
        Some("smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva") => {
            Ok(Sequence::new(vec![Digits::new(true).into(), gpt2()]).into())
        }
        Some(
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
            | "dbrx" | "smaug-bpe",
        ) => split_then_bytes(LLAMA3_SPLIT),
        Some("qwen2" | "deepseek-r1-qwen" | "megrez") => split_then_bytes(QWEN2_SPLIT),
        Some(other) => Err(ModelError::file(
            path,
            format!(
                "unsupported GGUF pre-tokenizer `tokenizer.ggml.pre` = {other:?} (supported: smollm, gpt2, llama-bpe/llama3, qwen2 and their aliases)"
            ),
        )),
    }
}

/// A byte-level BPE tokenizer (`tokenizer.ggml.model` = "gpt2") from GGUF metadata, built as
/// transformers' GGUF conversion builds it, plus the pre-tokenizer the file names.
fn byte_level_from_gguf(metadata: &GgufMetadata<'_>) -> Result<Tokenizer> {
    let path = metadata.path();
    let tokens = metadata.string_array("tokenizer.ggml.tokens")?;
    let merges = metadata.string_array("tokenizer.ggml.merges")?;
    let token_types = metadata.optional_integer_array("tokenizer.ggml.token_type")?;
    if let Some(types) = &token_types
        && types.len() != tokens.len()
    {
        return Err(ModelError::file(
            path,
            format!("`tokenizer.ggml.token_type` has {} entries for {} tokens", types.len(), tokens.len()),
        ));
    }

    // Tokens are stored in the byte alphabet already; the odd one that is not (a user-defined
    // token written as plain text) is respelled, as transformers does.
    let alphabet = byte_level_alphabet();
    let in_alphabet: BTreeSet<char> = alphabet.iter().copied().collect();
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let id = u32::try_from(id).map_err(|_| ModelError::file(path, "more than 2^32 tokens"))?;
        let spelled = if token.chars().all(|character| in_alphabet.contains(&character)) {
            (*token).to_owned()
        } else {
            token.bytes().map(|byte| alphabet[byte as usize]).collect()
        };
        vocab.insert(spelled, id);
    }
    let merges = merges
        .iter()
        .enumerate()
        .map(|(index, merge)| match merge.split_once(' ') {
            Some((left, right)) => Ok((left.to_owned(), right.to_owned())),
            None => Err(ModelError::file(
                path,
                format!("`tokenizer.ggml.merges[{index}]` = {merge:?} is not two tokens"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    let model = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|error| {
        ModelError::file(path, format!("cannot build the BPE model from the GGUF vocabulary: {error}"))
    })?;

    let mut inner = tokenizers::Tokenizer::new(model);
    inner.with_pre_tokenizer(Some(byte_level_pre_tokenizer(
        metadata.optional_string("tokenizer.ggml.pre")?,
        path,
    )?));
    inner.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens become special added tokens (matched whole, skippable); user-defined
    // ones plain added tokens. A "control" token outside the byte alphabet is a llama.cpp
    // mislabel that transformers skips, and so do we.
    if let Some(types) = &token_types {
        let control: Vec<AddedToken> = tokens
            .iter()
            .zip(types)
            .filter(|(token, kind)| {
                **kind == TOKEN_TYPE_CONTROL
                    && token.chars().all(|character| in_alphabet.contains(&character))
            })
            .map(|(token, _)| AddedToken::from(*token, true).normalized(false))
            .collect();
        inner
            .add_special_tokens(control)
            .map_err(|error| ModelError::file(path, format!("cannot add the control tokens: {error}")))?;
        let user_defined: Vec<AddedToken> = tokens
            .iter()
            .zip(types)
            .filter(|(token, kind)| **kind == TOKEN_TYPE_USER_DEFINED && inner.token_to_id(token).is_some())
            .map(|(token, _)| AddedToken::from(*token, false).normalized(false))
            .collect();
        inner.add_tokens(user_defined).map_err(|error| {
            ModelError::file(path, format!("cannot add the user-defined tokens: {error}"))
        })?;
    }

    let token_at = |key: &str| -> Result<Option<String>> {
        match metadata.optional_u32(key)? {
            None => Ok(None),
            Some(id) => tokens.get(id as usize).map(|token| Some((*token).to_owned())).ok_or_else(|| {
                ModelError::file(path, format!("`{key}` = {id} is outside the {} tokens", tokens.len()))
            }),
        }
    };
    let bos_token = token_at("tokenizer.ggml.bos_token_id")?;
    let eos_token = token_at("tokenizer.ggml.eos_token_id")?;
    let add_bos = metadata.optional_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = metadata.optional_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let post_processor = special_token_template(
        if add_bos { bos_token.as_deref() } else { None },
        if add_eos { eos_token.as_deref() } else { None },
        &inner,
        path,
    )?;
    inner.with_post_processor(Some(post_processor));

    let mut tokenizer = Tokenizer {
        inner,
        origin: path.to_path_buf(),
        bos_token,
        eos_token,
        unk_token: token_at("tokenizer.ggml.unknown_token_id")?,
        pad_token: token_at("tokenizer.ggml.padding_token_id")?,
        eos_token_ids: Vec::new(),
        chat_templates: Vec::new(),
    };
    if let Some(source) = metadata.optional_string("tokenizer.chat_template")? {
        tokenizer
            .chat_templates
            .push(NamedChatTemplate { name: "default".to_owned(), source: source.to_owned() });
    }
    let mut configured: Vec<u32> =
        tokenizer.eos_token.as_deref().and_then(|eos| tokenizer.token_to_id(eos)).into_iter().collect();
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        configured.extend(metadata.optional_u32(key)?);
    }
    tokenizer.set_eos_token_ids(configured);
    Ok(tokenizer)
}

/// The post-processor that adds BOS/EOS around a sequence (as `add_bos_token` asks).
fn special_token_template(
    bos: Option<&str>,
    eos: Option<&str>,
    inner: &tokenizers::Tokenizer,
    path: &Path,
) -> Result<TemplateProcessing> {
    let mut single: Vec<String> = Vec::new();
    let mut pair: Vec<String> = Vec::new();
    let mut special_tokens: Vec<(String, u32)> = Vec::new();
    for token in [bos, eos].into_iter().flatten() {
        let id = inner.token_to_id(token).ok_or_else(|| {
            ModelError::file(path, format!("special token {token:?} is not in the vocabulary"))
        })?;
        if !special_tokens.iter().any(|(known, _)| known == token) {
            special_tokens.push((token.to_owned(), id));
        }
    }
    for (sequence, out) in [(vec!["$A"], &mut single), (vec!["$A", "$B:1"], &mut pair)] {
        for piece in sequence {
            if let Some(bos) = bos {
                out.push(format!("{bos}:{}", if piece == "$A" { 0 } else { 1 }));
            }
            out.push(piece.to_owned());
            if let Some(eos) = eos {
                out.push(format!("{eos}:{}", if piece == "$A" { 0 } else { 1 }));
            }
        }
    }
    let build_error =
        |error: String| ModelError::file(path, format!("cannot build the special-token template: {error}"));
    TemplateProcessing::builder()
        .try_single(single)
        .map_err(build_error)?
        .try_pair(pair)
        .map_err(build_error)?
        .special_tokens(special_tokens)
        .build()
        .map_err(|error| build_error(error.to_string()))
}
