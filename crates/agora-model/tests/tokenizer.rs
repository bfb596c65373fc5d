//! Tokenizers reproduce the token ids transformers gives for SmolLM2 (goldens from
//! scripts/goldens/make_text_goldens.py), whether loaded from tokenizer.json or rebuilt from
//! GGUF metadata; streaming decode, added special tokens and load errors.

use std::path::{Path, PathBuf};

use agora_model::{Message, Tokenizer};
use candle_core::quantized::gguf_file::{self, Value as GgufValue};
use serde_json::Value;

fn test_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test_data/text")
}

fn smollm2_folder() -> PathBuf {
    test_data().join("smollm2")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn golden_ids() -> Value {
    read_json(&smollm2_folder().join("token_ids.json"))
}

fn ids(value: &Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).unwrap()
}

/// The default model, when it has been fetched (it is not part of the repository).
fn default_model_gguf() -> Option<PathBuf> {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&models)
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
            name.starts_with("SmolLM2-135M-Instruct") && name.ends_with(".gguf")
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Every golden text encodes to the golden ids, and decodes back to the golden strings.
fn check_goldens(label: &str, tokenizer: &Tokenizer) {
    let goldens = golden_ids();
    let mut failures = Vec::new();
    for case in goldens["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        let encoded = tokenizer.encode(text, false).unwrap();
        if encoded != expected {
            failures.push(format!("{text:?}: ids {encoded:?}, expected {expected:?}"));
            continue;
        }
        let with_special = tokenizer.encode(text, true).unwrap();
        if with_special != ids(&case["ids_add_special"]) {
            failures.push(format!("{text:?}: with special tokens {with_special:?}"));
        }
        let decoded = tokenizer.decode(&encoded, false).unwrap();
        if decoded != case["decoded"].as_str().unwrap() || decoded != text {
            failures.push(format!("{text:?}: decoded {decoded:?}"));
        }
        let skipped = tokenizer.decode(&encoded, true).unwrap();
        if skipped != case["decoded_skip_special"].as_str().unwrap() {
            failures.push(format!("{text:?}: decoded without special tokens {skipped:?}"));
        }
    }
    assert!(goldens["cases"].as_array().unwrap().len() >= 30);
    assert!(failures.is_empty(), "{label}: {} failures:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(tokenizer.vocab_size() as u64, goldens["vocab_size"].as_u64().unwrap(), "{label}");
}

fn check_smollm2_specials(label: &str, tokenizer: &Tokenizer) {
    assert_eq!(tokenizer.eos_token(), Some("<|im_end|>"), "{label}");
    assert_eq!(tokenizer.bos_token(), Some("<|im_start|>"), "{label}");
    assert_eq!(tokenizer.pad_token(), Some("<|im_end|>"), "{label}");
    assert_eq!(tokenizer.token_to_id("<|im_end|>"), Some(2), "{label}");
    assert_eq!(tokenizer.bos_token_id(), Some(1), "{label}");
    assert_eq!(tokenizer.pad_token_id(), Some(2), "{label}");
    // <|im_end|> ends a turn, <|endoftext|> a document: both stop generation.
    assert_eq!(tokenizer.eos_token_ids(), &[2, 0], "{label}");
    let template = tokenizer.chat_template().unwrap();
    assert!(!template.is_fallback(), "{label}");
    let rendered = template.render(&[Message::user("Hi")], true).unwrap();
    assert_eq!(
        rendered,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "{label}"
    );
}

#[test]
fn tokenizer_json_reproduces_golden_ids() {
    let tokenizer = Tokenizer::from_folder(&smollm2_folder()).unwrap();
    check_goldens("tokenizer.json", &tokenizer);
    check_smollm2_specials("tokenizer.json", &tokenizer);
}

/// The goldens catch a missing digit split: a tokenizer without it gives other ids.
#[test]
fn goldens_detect_a_missing_digit_split() {
    let tokenizer = Tokenizer::from_folder(&smollm2_folder()).unwrap();
    let mut without_digits = tokenizer.inner().clone();
    without_digits
        .with_pre_tokenizer(Some(tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true)));
    let goldens = golden_ids();
    let mut checked = 0;
    for case in goldens["cases"].as_array().unwrap() {
        let Some(plain) = case.get("ids_without_digit_split") else { continue };
        let text = case["text"].as_str().unwrap();
        let encoded = without_digits.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(encoded, ids(plain), "{text:?}");
        assert_ne!(encoded, ids(&case["ids"]), "{text:?}");
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} golden texts depend on the digit split");
}

/// A GGUF written from the golden tokenizer.json's vocabulary, as llama.cpp's converter
/// writes SmolLM2's: tokens, merges, token types (control = special), ids, pre = "smollm".
fn write_smollm2_like_gguf(path: &Path, pre: Option<&str>, model: &str) {
    let tokenizer_json = read_json(&smollm2_folder().join("tokenizer.json"));
    let vocab = tokenizer_json["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (token, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = token.clone();
    }
    let mut token_types = vec![1i32; tokens.len()];
    for added in tokenizer_json["added_tokens"].as_array().unwrap() {
        if added["special"].as_bool().unwrap() {
            token_types[added["id"].as_u64().unwrap() as usize] = 3;
        }
    }
    let merges: Vec<GgufValue> = tokenizer_json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| GgufValue::String(format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap())))
        .collect();
    let strings = |items: &[String]| GgufValue::Array(items.iter().cloned().map(GgufValue::String).collect());
    let template = std::fs::read_to_string(smollm2_folder().join("chat_template.jinja")).unwrap();
    let mut metadata: Vec<(&str, GgufValue)> = vec![
        ("general.architecture", GgufValue::String("llama".to_owned())),
        ("tokenizer.ggml.model", GgufValue::String(model.to_owned())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.token_type",
            GgufValue::Array(token_types.into_iter().map(GgufValue::I32).collect()),
        ),
        ("tokenizer.ggml.merges", GgufValue::Array(merges)),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
        ("tokenizer.ggml.unknown_token_id", GgufValue::U32(0)),
        ("tokenizer.ggml.padding_token_id", GgufValue::U32(2)),
        ("tokenizer.ggml.add_bos_token", GgufValue::Bool(false)),
        ("tokenizer.chat_template", GgufValue::String(template)),
    ];
    if let Some(pre) = pre {
        metadata.push(("tokenizer.ggml.pre", GgufValue::String(pre.to_owned())));
    }
    write_gguf(path, &metadata);
}

fn write_gguf(path: &Path, metadata: &[(&str, GgufValue)]) {
    let references: Vec<(&str, &GgufValue)> = metadata.iter().map(|(key, value)| (*key, value)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &references, &[]).unwrap();
}

#[test]
fn gguf_metadata_tokenizer_reproduces_golden_ids() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("smollm2-tokenizer.gguf");
    write_smollm2_like_gguf(&path, Some("smollm"), "gpt2");
    let tokenizer = Tokenizer::from_gguf(&path).unwrap();
    check_goldens("GGUF written from tokenizer.json", &tokenizer);
    check_smollm2_specials("GGUF written from tokenizer.json", &tokenizer);
}

/// The real default model's GGUF (skipped when it has not been fetched).
#[test]
fn default_model_gguf_reproduces_golden_ids() {
    let Some(path) = default_model_gguf() else {
        eprintln!(
            "skipped: no models/SmolLM2-135M-Instruct*.gguf (fetch the default model to run this test)"
        );
        return;
    };
    let tokenizer = Tokenizer::from_gguf(&path).unwrap();
    check_goldens("default model GGUF", &tokenizer);
    check_smollm2_specials("default model GGUF", &tokenizer);
}

#[test]
fn streaming_decode_emits_whole_characters() {
    let tokenizer = Tokenizer::from_folder(&smollm2_folder()).unwrap();
    let mut held_back = 0;
    for case in golden_ids()["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let mut decoder = tokenizer.incremental_decoder(false);
        let mut streamed = String::new();
        for id in ids(&case["ids"]) {
            match decoder.step(id).unwrap() {
                Some(chunk) => {
                    assert!(!chunk.contains('\u{FFFD}'), "{text:?}: chunk {chunk:?}");
                    streamed.push_str(&chunk);
                }
                None => held_back += 1,
            }
        }
        streamed.push_str(&decoder.finish().unwrap());
        assert_eq!(streamed, text);
    }
    // Emoji and CJK characters span several byte-level tokens.
    assert!(held_back > 0);
    // An incomplete character at the end comes out as U+FFFD, as a full decode gives it.
    let emoji = tokenizer.encode("🙂", false).unwrap();
    assert!(emoji.len() > 1, "{emoji:?}");
    let mut decoder = tokenizer.incremental_decoder(false);
    assert_eq!(decoder.step(emoji[0]).unwrap(), None);
    assert_eq!(decoder.finish().unwrap(), tokenizer.decode(&emoji[..1], false).unwrap());
}

#[test]
fn added_special_tokens_get_consecutive_ids() {
    let mut tokenizer = Tokenizer::from_folder(&smollm2_folder()).unwrap();
    let before = tokenizer.vocab_size() as u32;
    let persona_tokens = ["<|sep|>", "<|cls|>", "<|start|>", "<|p1|>", "<|p2|>", "<|act|>"];
    let added = tokenizer.add_special_tokens(&persona_tokens).unwrap();
    assert_eq!(added, (before..before + 6).collect::<Vec<_>>());
    assert_eq!(tokenizer.vocab_size() as u32, before + 6);
    let p1 = tokenizer.token_to_id("<|p1|>").unwrap();
    let encoded = tokenizer.encode("<|p1|>hello<|sep|>", false).unwrap();
    assert_eq!(encoded.first(), Some(&p1));
    assert_eq!(encoded.last(), Some(&added[0]));
    assert_eq!(tokenizer.encode("<|p1|>", false).unwrap(), vec![p1]);
    assert_eq!(tokenizer.decode(&encoded, true).unwrap(), "hello");
    // Adding again changes nothing; a token already in the vocabulary keeps its id.
    assert_eq!(tokenizer.add_special_tokens(&["<|p1|>", "<|im_end|>"]).unwrap(), vec![p1, 2]);
    assert_eq!(tokenizer.vocab_size() as u32, before + 6);
}

fn error_of(result: agora_model::Result<Tokenizer>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn load_errors_are_clear() {
    let folder = tempfile::tempdir().unwrap();
    let check = |result: agora_model::Result<Tokenizer>, expected: &str| {
        let error = error_of(result);
        assert!(error.contains(expected), "{error:?} should mention {expected:?}");
    };

    check(Tokenizer::from_folder(folder.path()), "tokenizer.json: not found");

    std::fs::write(folder.path().join("tokenizer.json"), "{\"version\": \"1.0\", \"model\": 42}").unwrap();
    check(Tokenizer::from_folder(folder.path()), "not a valid tokenizer.json");

    std::fs::copy(smollm2_folder().join("tokenizer.json"), folder.path().join("tokenizer.json")).unwrap();
    std::fs::write(folder.path().join("tokenizer_config.json"), "{not json").unwrap();
    check(Tokenizer::from_folder(folder.path()), "tokenizer_config.json: not valid JSON");

    std::fs::write(folder.path().join("tokenizer_config.json"), "{\"chat_template\": 3}").unwrap();
    check(Tokenizer::from_folder(folder.path()), "chat_template must be a string or a list");

    // No template anywhere: the built-in ChatML, flagged as a fallback.
    std::fs::write(
        folder.path().join("tokenizer_config.json"),
        "{\"eos_token\": {\"content\": \"<|im_end|>\"}}",
    )
    .unwrap();
    let tokenizer = Tokenizer::from_folder(folder.path()).unwrap();
    assert_eq!(tokenizer.eos_token(), Some("<|im_end|>"));
    assert!(tokenizer.chat_template().unwrap().is_fallback());

    // Several named templates, none the default.
    let named =
        r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "rag", "template": "R"}]}"#;
    std::fs::write(folder.path().join("tokenizer_config.json"), named).unwrap();
    let tokenizer = Tokenizer::from_folder(folder.path()).unwrap();
    assert!(tokenizer.chat_template().unwrap_err().to_string().contains("none named \"default\""));
    assert_eq!(tokenizer.chat_template_named("rag").unwrap().render(&[], false).unwrap(), "R");

    // A template that does not compile is reported when it is asked for.
    std::fs::write(folder.path().join("tokenizer_config.json"), r#"{"chat_template": "{% if %}"}"#).unwrap();
    let tokenizer = Tokenizer::from_folder(folder.path()).unwrap();
    assert!(tokenizer.chat_template().unwrap_err().to_string().contains("does not compile"));

    let gguf = folder.path().join("weights-only.gguf");
    write_gguf(&gguf, &[("general.architecture", GgufValue::String("llama".to_owned()))]);
    check(Tokenizer::from_gguf(&gguf), "holds no tokenizer");

    write_gguf(
        &gguf,
        &[
            ("tokenizer.ggml.model", GgufValue::String("gpt2".to_owned())),
            ("tokenizer.ggml.tokens", GgufValue::U32(3)),
        ],
    );
    check(Tokenizer::from_gguf(&gguf), "`tokenizer.ggml.tokens` should be an array");

    write_gguf(&gguf, &[("tokenizer.ggml.model", GgufValue::String("gpt2".to_owned()))]);
    check(Tokenizer::from_gguf(&gguf), "GGUF metadata has no `tokenizer.ggml.tokens`");

    write_byte_alphabet_gguf(&gguf, "no-such-pre");
    check(
        Tokenizer::from_gguf(&gguf),
        "unsupported GGUF pre-tokenizer `tokenizer.ggml.pre` = \"no-such-pre\"",
    );

    write_gguf(&gguf, &[("tokenizer.ggml.model", GgufValue::String("llama".to_owned()))]);
    check(Tokenizer::from_gguf(&gguf), "SentencePiece GGUF tokenizers");

    std::fs::write(&gguf, b"GGUF but truncated").unwrap();
    check(Tokenizer::from_gguf(&gguf), "not a readable GGUF file");

    check(Tokenizer::from_gguf(&folder.path().join("missing.gguf")), "missing.gguf");
}

/// A GGUF vocabulary of the 256 byte-level characters and no merges.
fn write_byte_alphabet_gguf(path: &Path, pre: &str) {
    let tokenizer = Tokenizer::from_folder(&smollm2_folder()).unwrap();
    // SmolLM2's ids 17..273 are the byte alphabet, in order.
    let tokens: Vec<GgufValue> =
        (17..273).map(|id| GgufValue::String(tokenizer.id_to_token(id).unwrap())).collect();
    write_gguf(
        path,
        &[
            ("tokenizer.ggml.model", GgufValue::String("gpt2".to_owned())),
            ("tokenizer.ggml.pre", GgufValue::String(pre.to_owned())),
            ("tokenizer.ggml.tokens", GgufValue::Array(tokens)),
            ("tokenizer.ggml.merges", GgufValue::Array(Vec::new())),
        ],
    );
}

#[test]
fn gguf_pre_tokenizers_build_and_round_trip() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("bytes.gguf");
    let text = "Hello, world! 12345 don't\n\n  ünïcode 🙂";
    for pre in ["gpt2", "smollm", "llama-bpe", "llama3", "qwen2"] {
        write_byte_alphabet_gguf(&path, pre);
        let tokenizer = Tokenizer::from_gguf(&path).unwrap_or_else(|error| panic!("{pre}: {error}"));
        assert_eq!(tokenizer.vocab_size(), 256, "{pre}");
        let encoded = tokenizer.encode(text, true).unwrap();
        assert_eq!(encoded.len(), text.len(), "{pre}: one token per byte without merges");
        assert_eq!(tokenizer.decode(&encoded, false).unwrap(), text, "{pre}");
        assert!(tokenizer.eos_token_ids().is_empty());
        assert!(tokenizer.chat_template().unwrap().is_fallback());
    }
}

#[test]
fn folder_config_files_add_eos_ids_and_tokens() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::copy(smollm2_folder().join("tokenizer.json"), folder.path().join("tokenizer.json")).unwrap();
    std::fs::write(
        folder.path().join("special_tokens_map.json"),
        r#"{"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}"#,
    )
    .unwrap();
    std::fs::write(folder.path().join("generation_config.json"), r#"{"eos_token_id": [2, 5]}"#).unwrap();
    let template =
        r#"{"chat_template": [{"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"}]}"#;
    std::fs::write(folder.path().join("tokenizer_config.json"), template).unwrap();
    let tokenizer = Tokenizer::from_folder(folder.path()).unwrap();
    assert_eq!(tokenizer.eos_token_ids(), &[2, 5, 0]);
    assert_eq!(tokenizer.bos_token_id(), Some(1));
    assert_eq!(
        tokenizer.chat_template().unwrap().render(&[Message::user("x")], false).unwrap(),
        "<|im_start|>x"
    );
}

#[test]
fn a_saved_tokenizer_folder_loads_back_the_same() {
    let original = Tokenizer::from_folder(&smollm2_folder()).unwrap();
    let mut grown = original.clone();
    grown.add_special_tokens(&["<|p1|>"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    grown.save_folder(dir.path()).unwrap();
    let reloaded = Tokenizer::from_folder(dir.path()).unwrap();
    let text = "Numbers 12345 and <|p1|> a persona token.";
    assert_eq!(reloaded.encode(text, false).unwrap(), grown.encode(text, false).unwrap());
    assert_eq!(reloaded.eos_token_ids(), original.eos_token_ids());
    assert_eq!(reloaded.vocab_size(), original.vocab_size() + 1);
    let messages = [Message::user("Hi"), Message::assistant("Hello")];
    assert_eq!(
        reloaded.chat_template().unwrap().render(&messages, true).unwrap(),
        original.chat_template().unwrap().render(&messages, true).unwrap()
    );
}
