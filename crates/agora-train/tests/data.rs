//! TRL files and Persona-Chat conversations to token ids: every layout on the fixtures
//! in test_data/, loss masks checked by decoding exactly what is learned, and every kind
//! of bad data checked for its error or its reported skip.
//!
//! The tokenizer is SmolLM2's (tokenizer.json and chat template in agora-model's
//! test_data); the default model's GGUF tokenizer is compared with it when models/ has it.

use std::path::{Path, PathBuf};

use agora_core::{Conversation, Participant, Persona, Role, Source, Turn};
use agora_model::{ChatTemplate, Message, Tokenizer};
use agora_train::data::{
    SKIP_CHOSEN_EQUALS_REJECTED, SKIP_EMPTY_COMPLETION, SKIP_NO_ASSISTANT, SKIP_TOO_LONG,
};
use agora_train::{
    DataOptions, PERSONAGPT_TOKENS, TokenizedExample, load_preferences, load_sft, personagpt_examples,
};

const IM_START: u32 = 1;
const IM_END: u32 = 2;
const DEFAULT_SYSTEM: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    crate_dir().join("test_data").join(name)
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_folder(&crate_dir().join("../agora-model/test_data/text/smollm2")).unwrap()
}

fn template(tokenizer: &Tokenizer) -> ChatTemplate {
    let template = tokenizer.chat_template().unwrap();
    assert!(!template.is_fallback());
    template
}

fn options() -> DataOptions {
    DataOptions { max_length: 1024, max_prompt_length: None }
}

fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    tokenizer.decode(ids, false).unwrap()
}

/// The learned stretches of an example, each decoded.
fn learned(tokenizer: &Tokenizer, example: &TokenizedExample) -> Vec<String> {
    assert_eq!(example.tokens.len(), example.targets.len());
    assert!(!example.targets[0], "the first token is never a target");
    let mut spans = Vec::new();
    let mut current: Vec<u32> = Vec::new();
    for (token, target) in example.tokens.iter().zip(&example.targets) {
        if *target {
            current.push(*token);
        } else if !current.is_empty() {
            spans.push(decode(tokenizer, &std::mem::take(&mut current)));
        }
    }
    if !current.is_empty() {
        spans.push(decode(tokenizer, &current));
    }
    spans
}

#[test]
fn messages_learn_every_assistant_turn_with_its_end_of_turn_token() {
    let tokenizer = tokenizer();
    let template = template(&tokenizer);
    let (examples, report) =
        load_sft(&fixture("sft_messages.jsonl"), &tokenizer, Some(&template), &options()).unwrap();
    assert_eq!((report.records, report.kept, report.skipped_count()), (2, 2, 0));

    let whole = "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nIs 12 a lot?<|im_end|>\n\
                 <|im_start|>assistant\nTwelve is a dozen.<|im_end|>\n<|im_start|>user\nThanks<|im_end|>\n\
                 <|im_start|>assistant\nYou're welcome!<|im_end|>\n";
    let first = &examples[0];
    assert_eq!(first.line, 1);
    assert_eq!(decode(&tokenizer, &first.tokens), whole);
    // Cutting at the template's turn boundaries tokenizes exactly like the whole text.
    assert_eq!(first.tokens, tokenizer.encode(whole, false).unwrap());
    assert_eq!(learned(&tokenizer, first), ["Twelve is a dozen.<|im_end|>", "You're welcome!<|im_end|>"]);
    assert_eq!(first.targets.last(), Some(&false), "the newline after the last turn is masked");

    let second = &examples[1];
    assert_eq!(second.line, 2);
    let whole =
        format!("{DEFAULT_SYSTEM}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n");
    assert_eq!(decode(&tokenizer, &second.tokens), whole);
    assert_eq!(learned(&tokenizer, second), ["Hello.<|im_end|>"]);
}

#[test]
fn text_learns_every_token_after_the_first_and_ends_with_eos() {
    let tokenizer = tokenizer();
    let (examples, report) = load_sft(&fixture("sft_text.jsonl"), &tokenizer, None, &options()).unwrap();
    assert_eq!(report.kept, 1);
    let example = &examples[0];
    let text = "Be kind.\n\nIs 12 a lot?\n\nTwelve is a dozen.";
    let mut expected = tokenizer.encode(text, true).unwrap();
    expected.push(IM_END);
    assert_eq!(example.tokens, expected);
    assert_eq!(example.target_count(), example.tokens.len() - 1);
}

#[test]
fn standard_prompt_completion_learns_the_completion_and_eos() {
    let tokenizer = tokenizer();
    let (examples, report) =
        load_sft(&fixture("sft_prompt_completion.jsonl"), &tokenizer, None, &options()).unwrap();
    assert_eq!(report.kept, 2);
    let prompt = tokenizer.encode("Be kind.\n\nIs 12 a lot?\n\n", true).unwrap();
    let first = &examples[0];
    assert_eq!(&first.tokens[..prompt.len()], prompt.as_slice());
    assert!(first.targets[..prompt.len()].iter().all(|target| !target));
    assert!(first.targets[prompt.len()..].iter().all(|target| *target));
    assert_eq!(learned(&tokenizer, first), ["Twelve is a dozen.<|im_end|>"]);

    // An empty prompt stands as the BOS token (SmolLM2's is <|im_start|>).
    let second = &examples[1];
    assert_eq!(second.tokens[0], IM_START);
    assert_eq!(&second.tokens[1..], [tokenizer.encode("Hello.", false).unwrap(), vec![IM_END]].concat());
    assert_eq!(learned(&tokenizer, second), ["Hello.<|im_end|>"]);
}

#[test]
fn conversational_prompt_completion_cuts_at_the_generation_prompt() {
    let tokenizer = tokenizer();
    let template = template(&tokenizer);
    let (examples, _) =
        load_sft(&fixture("sft_prompt_completion_chat.jsonl"), &tokenizer, Some(&template), &options())
            .unwrap();
    let example = &examples[0];
    let prompt =
        template.render(&[Message::system("Be kind."), Message::user("Is 12 a lot?")], true).unwrap();
    let prompt_ids = tokenizer.encode(&prompt, false).unwrap();
    assert_eq!(&example.tokens[..prompt_ids.len()], prompt_ids.as_slice());
    assert_eq!(learned(&tokenizer, example), ["Twelve is a dozen.<|im_end|>"]);
    assert_eq!(decode(&tokenizer, &example.tokens), format!("{prompt}Twelve is a dozen.<|im_end|>\n"));
}

#[test]
fn standard_preferences_with_their_skips() {
    let tokenizer = tokenizer();
    let (pairs, report) =
        load_preferences(&fixture("preference.jsonl"), &tokenizer, None, &options()).unwrap();
    assert_eq!((report.records, report.kept), (3, 1));
    assert_eq!(report.skipped_for(SKIP_CHOSEN_EQUALS_REJECTED), [2]);
    assert_eq!(report.skipped_for(SKIP_EMPTY_COMPLETION), [3]);
    assert_eq!(
        report.to_string(),
        format!(
            "{}: 3 records, 1 kept, 2 skipped (1 chosen equal to rejected, 1 empty completion)",
            fixture("preference.jsonl").display()
        )
    );
    let pair = &pairs[0];
    assert_eq!(pair.line, 1);
    assert_eq!(pair.prompt, tokenizer.encode("Change my view: cats are better.\n\n", true).unwrap());
    assert_eq!(decode(&tokenizer, &pair.chosen), "Dogs guard the house.<|im_end|>");
    assert_eq!(decode(&tokenizer, &pair.rejected), "No.<|im_end|>");
}

#[test]
fn conversational_and_implicit_prompt_preferences() {
    let tokenizer = tokenizer();
    let template = template(&tokenizer);
    let expected_prompt =
        format!("{DEFAULT_SYSTEM}<|im_start|>user\nCats are better.<|im_end|>\n<|im_start|>assistant\n");
    for file in ["preference_chat.jsonl", "preference_implicit.jsonl"] {
        let (pairs, report) =
            load_preferences(&fixture(file), &tokenizer, Some(&template), &options()).unwrap();
        assert_eq!(report.skipped_count(), 0, "{file}");
        let pair = &pairs[0];
        assert_eq!(decode(&tokenizer, &pair.prompt), expected_prompt, "{file}");
        // Scored up to the end-of-turn token; the template's trailing newline is not scored.
        assert_eq!(decode(&tokenizer, &pair.chosen), "Dogs guard the house.<|im_end|>", "{file}");
        assert_eq!(decode(&tokenizer, &pair.rejected), "No.<|im_end|>", "{file}");
    }
    // The standard implicit prompt: the shared characters, the space going with the answers.
    let (pairs, _) =
        load_preferences(&fixture("preference_implicit.jsonl"), &tokenizer, Some(&template), &options())
            .unwrap();
    let pair = &pairs[1];
    assert_eq!(decode(&tokenizer, &pair.prompt), "Cats are better.");
    assert_eq!(decode(&tokenizer, &pair.chosen), " Dogs guard the house.<|im_end|>");
    assert_eq!(decode(&tokenizer, &pair.rejected), " No.<|im_end|>");
}

#[test]
fn long_sequences_are_skipped_and_long_prompts_truncated_from_the_left() {
    let tokenizer = tokenizer();
    let template = template(&tokenizer);
    let short = DataOptions { max_length: 20, max_prompt_length: None };
    let (examples, report) =
        load_sft(&fixture("sft_messages.jsonl"), &tokenizer, Some(&template), &short).unwrap();
    assert!(examples.is_empty());
    assert_eq!(report.skipped_for(SKIP_TOO_LONG), [1, 2]);
    assert!(report.to_string().ends_with("2 records, 0 kept, 2 skipped (2 longer than max_length)"));

    let full_prompt = tokenizer.encode("Change my view: cats are better.\n\n", true).unwrap();
    let truncating = DataOptions { max_length: 1024, max_prompt_length: Some(3) };
    let (pairs, report) =
        load_preferences(&fixture("preference.jsonl"), &tokenizer, None, &truncating).unwrap();
    assert_eq!(pairs[0].prompt, full_prompt[full_prompt.len() - 3..]);
    assert_eq!(report.truncated, [1]);

    // The limit counts the truncated prompt and the longer completion.
    let chosen_length = pairs[0].chosen.len();
    let exact = DataOptions { max_length: 3 + chosen_length, max_prompt_length: Some(3) };
    let (pairs, _) = load_preferences(&fixture("preference.jsonl"), &tokenizer, None, &exact).unwrap();
    assert_eq!(pairs.len(), 1);
    let too_short = DataOptions { max_length: 2 + chosen_length, max_prompt_length: Some(3) };
    let (pairs, report) =
        load_preferences(&fixture("preference.jsonl"), &tokenizer, None, &too_short).unwrap();
    assert!(pairs.is_empty());
    assert_eq!(report.skipped_for(SKIP_TOO_LONG), [1]);
}

/// Writes `contents` to a temporary file and returns the SFT (or preference) load error,
/// with the file's path replaced by `FILE`.
fn load_error(contents: &str, preferences: bool) -> String {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("data.jsonl");
    std::fs::write(&path, contents).unwrap();
    let tokenizer = tokenizer();
    let template = template(&tokenizer);
    let error = if preferences {
        load_preferences(&path, &tokenizer, Some(&template), &options()).unwrap_err()
    } else {
        load_sft(&path, &tokenizer, Some(&template), &options()).unwrap_err()
    };
    error.to_string().replace(&path.display().to_string(), "FILE")
}

#[test]
fn bad_data_gives_one_line_errors_naming_line_and_field() {
    let sft = |contents: &str| load_error(contents, false);
    let dpo = |contents: &str| load_error(contents, true);
    let cases: [(String, &str); 10] = [
        (sft(""), "FILE: empty file: no records"),
        (sft("\n  \n"), "FILE: empty file: no records"),
        (sft("{\"text\":\"a\"}\n{\"text\": oops}\n"), "FILE:2: not JSON: expected value at line 1 column 10"),
        (sft("[1, 2]\n"), "FILE:1: expected a JSON object per line, found a list"),
        (
            sft("{\"question\":\"a\",\"answer\":\"b\"}\n"),
            "FILE:1: the record's keys (`question`, `answer`) match no layout this file is read as; \
             expected `messages`, `text`, or `prompt` + `completion` (SFT)",
        ),
        (
            sft("{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n"),
            "FILE:1: the record's keys (`prompt`, `chosen`, `rejected`) match no layout this file is read as; \
             expected `messages`, `text`, or `prompt` + `completion` (SFT)",
        ),
        (
            sft("{\"prompt\":3,\"completion\":\"b\"}\n"),
            "FILE:1: field `prompt`: expected a string or a list of messages, found a number",
        ),
        (
            sft(
                "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":null}]}\n",
            ),
            "FILE:1: field `messages[1].content`: expected a string, found null",
        ),
        (
            dpo(
                "{\"prompt\":\"a\",\"chosen\":[{\"role\":\"assistant\",\"content\":\"b\"}],\"rejected\":\"c\"}\n",
            ),
            "FILE:1: field `chosen`: the prompt, chosen and rejected must all be strings or all be lists of messages",
        ),
        (
            dpo("{\"messages\":[]}\n"),
            "FILE:1: the record's keys (`messages`) match no layout this file is read as; expected `prompt` + \
             `chosen` + `rejected`, or `chosen` + `rejected` with an implicit prompt (preferences)",
        ),
    ];
    for (got, expected) in cases {
        assert_eq!(got, expected);
    }
    let missing =
        load_sft(Path::new("/nonexistent/train.jsonl"), &tokenizer(), None, &options()).unwrap_err();
    assert!(missing.to_string().starts_with("/nonexistent/train.jsonl: "), "{missing}");
}

#[test]
fn conversational_records_need_a_template() {
    let tokenizer = tokenizer();
    let error = load_sft(&fixture("sft_messages.jsonl"), &tokenizer, None, &options()).unwrap_err();
    assert!(
        error.to_string().ends_with(
            "sft_messages.jsonl:1: field `messages`: a conversational record (a list of messages) needs the model's chat template"
        ),
        "{error}"
    );
}

#[test]
fn unusable_sft_records_are_skipped_and_counted() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("data.jsonl");
    let lines = [
        r#"{"prompt":"Q\n\n","completion":""}"#,
        r#"{"messages":[{"role":"user","content":"alone"}]}"#,
        r#"{"text":"   "}"#,
        r#"{"prompt":"Q\n\n","completion":"A"}"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let tokenizer = tokenizer();
    let template = template(&tokenizer);
    let (examples, report) = load_sft(&path, &tokenizer, Some(&template), &options()).unwrap();
    assert_eq!(examples.len(), 1);
    assert_eq!(examples[0].line, 4);
    assert_eq!(report.skipped_for(SKIP_EMPTY_COMPLETION), [1, 3]);
    assert_eq!(report.skipped_for(SKIP_NO_ASSISTANT), [2]);
    assert_eq!((report.records, report.kept, report.skipped_count()), (4, 1, 3));
}

#[test]
fn the_default_models_gguf_tokenizer_gives_the_same_ids() {
    let gguf = crate_dir().join("../../models/SmolLM2-135M-Instruct.Q8_0.gguf");
    if !gguf.is_file() {
        eprintln!("skipped: {} is absent", gguf.display());
        return;
    }
    let from_gguf = Tokenizer::from_gguf(&gguf).unwrap();
    let from_folder = tokenizer();
    let gguf_template = from_gguf.chat_template().unwrap();
    let folder_template = template(&from_folder);
    for file in ["sft_messages.jsonl", "sft_prompt_completion_chat.jsonl"] {
        let (expected, _) =
            load_sft(&fixture(file), &from_folder, Some(&folder_template), &options()).unwrap();
        let (got, _) = load_sft(&fixture(file), &from_gguf, Some(&gguf_template), &options()).unwrap();
        assert_eq!(got, expected, "{file}");
    }
}

fn turn(index: u32, role: Role, text: &str) -> Turn {
    let speaker = if role == Role::Assistant { "self" } else { "partner" };
    Turn {
        index,
        original_id: None,
        speaker: speaker.to_owned(),
        role,
        text: text.to_owned(),
        reply_to: None,
        labels: Default::default(),
    }
}

/// A Persona-Chat dialogue as agora's importer stores it.
fn persona_chat(turns: Vec<Turn>) -> Conversation {
    let persona = |name: &str, facts: &[&str]| Persona {
        name: name.to_owned(),
        facts: facts.iter().map(|fact| fact.to_string()).collect(),
        ..Persona::default()
    };
    Conversation {
        id: "personachat:valid:0".to_owned(),
        source: Source { corpus: "personachat".to_owned(), original_id: "valid:0".to_owned() },
        participants: vec![
            Participant {
                name: "partner".to_owned(),
                role: Role::User,
                persona: Some(persona("partner", &["i hate cats."])),
            },
            Participant {
                name: "self".to_owned(),
                role: Role::Assistant,
                persona: Some(persona("self", &["i like cats.", "i am a nurse."])),
            },
        ],
        turns,
        meta: Default::default(),
    }
}

fn persona_tokenizer() -> Tokenizer {
    let mut tokenizer = tokenizer();
    tokenizer.add_special_tokens(&PERSONAGPT_TOKENS).unwrap();
    tokenizer
}

#[test]
fn personagpt_layout_learns_the_bots_replies_only() {
    let tokenizer = persona_tokenizer();
    let conversation = persona_chat(vec![
        turn(0, Role::User, "hi there"),
        turn(1, Role::Assistant, "hello! i like cats."),
        turn(2, Role::User, "what do you do?"),
        turn(3, Role::Assistant, "i am a nurse."),
    ]);
    let (examples, report) = personagpt_examples(&[conversation], &tokenizer, &options()).unwrap();
    assert_eq!((report.records, report.kept), (2, 2));
    let persona = "<|p2|>i like cats.<|im_end|>i am a nurse.<|im_end|><|sep|><|start|>";
    assert_eq!(
        decode(&tokenizer, &examples[0].tokens),
        format!("{persona}hi there<|im_end|>hello! i like cats.<|im_end|>")
    );
    assert_eq!(learned(&tokenizer, &examples[0]), ["hello! i like cats.<|im_end|>"]);
    assert_eq!(
        decode(&tokenizer, &examples[1].tokens),
        format!(
            "{persona}hi there<|im_end|>hello! i like cats.<|im_end|>what do you do?<|im_end|>i am a nurse.<|im_end|>"
        )
    );
    assert_eq!(learned(&tokenizer, &examples[1]), ["i am a nurse.<|im_end|>"]);
    assert_eq!(examples[1].line, 1);
}

#[test]
fn personagpt_bot_opening_is_p1_and_learns_the_start_token() {
    let tokenizer = persona_tokenizer();
    let conversation = persona_chat(vec![
        turn(0, Role::Assistant, "hello!"),
        turn(1, Role::User, "hey"),
        turn(2, Role::Assistant, ""),
    ]);
    let (examples, report) = personagpt_examples(&[conversation], &tokenizer, &options()).unwrap();
    assert_eq!(report.skipped_for(SKIP_EMPTY_COMPLETION), [1]);
    assert_eq!(examples.len(), 1);
    assert_eq!(
        decode(&tokenizer, &examples[0].tokens),
        "<|p1|>i like cats.<|im_end|>i am a nurse.<|im_end|><|sep|><|start|>hello!<|im_end|>"
    );
    assert_eq!(learned(&tokenizer, &examples[0]), ["<|start|>hello!<|im_end|>"]);
}

#[test]
fn personagpt_drops_the_oldest_turns_to_fit_max_length() {
    let tokenizer = persona_tokenizer();
    let conversation = persona_chat(vec![
        turn(0, Role::User, "a very long opening line about many things"),
        turn(1, Role::Assistant, "ok."),
        turn(2, Role::User, "and?"),
        turn(3, Role::Assistant, "fine."),
    ]);
    let (full, _) = personagpt_examples(std::slice::from_ref(&conversation), &tokenizer, &options()).unwrap();
    let opening = tokenizer.encode("a very long opening line about many things", false).unwrap().len() + 1;
    let limit = DataOptions { max_length: full[1].tokens.len() - opening, max_prompt_length: None };
    let (cut, report) = personagpt_examples(std::slice::from_ref(&conversation), &tokenizer, &limit).unwrap();
    assert_eq!(report.truncated, [1, 1], "both replies lost the opening line");
    assert!(report.skipped_for(SKIP_TOO_LONG).is_empty());
    assert!(!decode(&tokenizer, &cut[0].tokens).contains("opening"));
    assert!(
        decode(&tokenizer, &cut[1].tokens).ends_with("<|start|>ok.<|im_end|>and?<|im_end|>fine.<|im_end|>")
    );
    assert_eq!(learned(&tokenizer, &cut[1]), ["fine.<|im_end|>"]);

    let tiny = DataOptions { max_length: 5, max_prompt_length: None };
    let (none, report) = personagpt_examples(&[conversation], &tokenizer, &tiny).unwrap();
    assert!(none.is_empty());
    assert_eq!(report.skipped_for(SKIP_TOO_LONG), [1, 1]);
}

#[test]
fn personagpt_needs_its_special_tokens() {
    let conversation = persona_chat(vec![turn(0, Role::User, "hi"), turn(1, Role::Assistant, "hello")]);
    let error = personagpt_examples(&[conversation], &tokenizer(), &options()).unwrap_err();
    assert!(
        error.to_string().contains("lacks PersonaGPT's special tokens <|sep|> <|cls|> <|start|>"),
        "{error}"
    );
    assert!(error.to_string().contains("add_special_tokens"), "{error}");
}
