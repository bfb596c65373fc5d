//! ESConv.json importer: hand-written fixtures in the thu-coai format, malformed inputs,
//! and the real file when the shared data folder has it.

use std::path::{Path, PathBuf};

use agora_core::{Conversation, Role, Strategy};
use agora_corpus::{ImportOptions, ImportReport, esconv};
use serde_json::json;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/esconv/ESConv.json")
}

fn import(path: &Path, options: &ImportOptions) -> (Vec<Conversation>, ImportReport) {
    let mut conversations = Vec::new();
    let report = esconv::import(path, options, &mut |conversation| {
        conversations.push(conversation);
        Ok(())
    })
    .unwrap();
    (conversations, report)
}

fn note(report: &ImportReport, key: &str) -> u64 {
    report.notes.get(key).copied().unwrap_or(0)
}

/// Imports `bytes` written to a file named `name` and expects an error that contains
/// every one of `expected` parts.
fn check_error(name: &str, bytes: &[u8], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let error = esconv::import(&path, &ImportOptions::default(), &mut |_| Ok(())).unwrap_err();
    let message = error.to_string();
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(message.starts_with(&path.display().to_string()), "names the file: {message}");
    for part in expected {
        assert!(message.contains(part), "{message:?} should contain {part:?}");
    }
}

#[test]
fn reads_every_message_as_a_turn() {
    let (conversations, report) = import(&fixture(), &ImportOptions::default());
    assert_eq!(report.conversations, 3);
    assert_eq!(report.turns, 13);
    assert_eq!(report.bytes, std::fs::metadata(fixture()).unwrap().len());
    let ids: Vec<&str> = conversations.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["esconv:0", "esconv:1", "esconv:custom-7"]);

    let first = &conversations[0];
    assert_eq!(first.participants.len(), 2);
    assert_eq!((first.participants[0].name.as_str(), first.participants[0].role), ("seeker", Role::User));
    assert_eq!(
        (first.participants[1].name.as_str(), first.participants[1].role),
        ("supporter", Role::Assistant)
    );
    let strategies: Vec<Option<Strategy>> = first.turns.iter().map(|turn| turn.labels.strategy).collect();
    assert_eq!(
        strategies,
        [
            Some(Strategy::Question),
            None,
            Some(Strategy::Question),
            None,
            Some(Strategy::AffirmationAndReassurance)
        ]
    );
    assert_eq!(first.turns[1].text, "I lost my job last month.", "content is trimmed");
    assert_eq!(first.turns[3].labels.feedback.as_deref(), Some("5"));
    assert_eq!(first.turns[3].role, Role::User);
    assert_eq!(first.meta["emotion_type"], json!("anxiety"));
    assert_eq!(first.meta["supporter_question2"], json!("The seeker was open."));
    assert_eq!(
        first.meta["survey_score"],
        json!({
            "seeker": {"initial_emotion_intensity": 4, "empathy": 5, "relevance": 5,
                       "final_emotion_intensity": 2},
            "supporter": {"relevance": 5}
        })
    );

    // Variant spellings are normalised and each mapping is reported.
    assert_eq!(note(&report, "strategy \"Questions\" -> \"Question\""), 1);
    assert_eq!(note(&report, "strategy \"Other\" -> \"Others\""), 1);
    assert_eq!(note(&report, "strategy \"Affirmation & Reassurance\" -> \"Affirmation and Reassurance\""), 1);
    assert_eq!(note(&report, "speaker \"usr\" -> \"seeker\""), 1);
    assert_eq!(note(&report, "speaker \"sys\" -> \"supporter\""), 1);
    assert_eq!(note(&report, "speaker \"listener\" -> \"supporter\""), 1);
    assert_eq!(note(&report, "consecutive messages merged"), 0);
}

#[test]
fn missing_and_empty_survey_scores_are_kept_and_counted() {
    let (conversations, report) = import(&fixture(), &ImportOptions::default());
    assert_eq!(
        conversations[1].meta["survey_score"],
        json!({"seeker": {"initial_emotion_intensity": 5, "empathy": "",
                          "final_emotion_intensity": 3}})
    );
    assert_eq!(note(&report, "survey_score.seeker.empathy not a number (kept as written)"), 1);
    assert_eq!(note(&report, "survey_score.seeker.relevance missing"), 1);
    assert_eq!(note(&report, "survey_score.supporter.relevance missing"), 1);
    assert!(!conversations[2].meta.contains_key("survey_score"));
    assert_eq!(note(&report, "survey_score missing"), 1);
    // The empty seeker message is kept as an empty turn, with its feedback.
    let last = conversations[1].turns.last().unwrap();
    assert_eq!((last.text.as_str(), last.labels.feedback.as_deref()), ("", Some("4")));
    assert_eq!(note(&report, "empty content kept"), 1);
}

#[test]
fn merges_consecutive_messages_of_one_speaker() {
    let options = ImportOptions { merge_consecutive: true, ..ImportOptions::default() };
    let (conversations, report) = import(&fixture(), &options);
    assert_eq!(report.turns, 10);
    assert_eq!(note(&report, "consecutive messages merged"), 3);

    let second = &conversations[1];
    let texts: Vec<&str> = second.turns.iter().map(|turn| turn.text.as_str()).collect();
    assert_eq!(
        texts,
        ["Hi. My partner left me yesterday.", "That sounds very painful. I am here for you.", ""]
    );
    let supporter = &second.turns[1];
    assert_eq!(supporter.labels.strategy, Some(Strategy::ReflectionOfFeelings), "the first one");
    assert_eq!(supporter.labels.extra["strategies"], json!(["Reflection of feelings", "Others"]));
    let indices: Vec<u32> = second.turns.iter().map(|turn| turn.index).collect();
    assert_eq!(indices, [0, 1, 2]);

    // Same strategy twice: no list.
    let third = &conversations[2];
    assert_eq!(third.turns.len(), 2);
    assert_eq!(third.turns[1].labels.strategy, Some(Strategy::ProvidingSuggestions));
    assert!(!third.turns[1].labels.extra.contains_key("strategies"));
}

#[test]
fn conversations_reach_the_sink_one_at_a_time() {
    // A sink error stops the import after the first conversation.
    let mut seen = 0;
    let error = esconv::import(&fixture(), &ImportOptions::default(), &mut |_| {
        seen += 1;
        Err(agora_corpus::CorpusError::Sink("store full".into()))
    })
    .unwrap_err();
    assert_eq!(seen, 1);
    assert_eq!(error.to_string(), "store full");
}

const ONE_MESSAGE: &str = r#"{"speaker": "seeker", "annotation": {}, "content": "hi"}"#;

#[test]
fn truncated_json_names_line_and_conversation() {
    let text = format!("[\n{{\"dialog\": [{ONE_MESSAGE}]}},\n{{\"dialog\": [\n{ONE_MESSAGE}");
    check_error("ESConv.json", text.as_bytes(), &["ESConv.json:4: conversation 1: EOF while parsing"]);
}

#[test]
fn invalid_utf8_names_line_and_conversation() {
    let mut bytes = format!("[\n{{\"dialog\": [{ONE_MESSAGE}]}},\n{{\"situation\": \"").into_bytes();
    bytes.extend_from_slice(b"caf\xe9\", \"dialog\": []}\n]\n");
    check_error("ESConv.json", &bytes, &["ESConv.json:3: conversation 1: invalid UTF-8"]);
}

#[test]
fn missing_content_names_the_field() {
    let text = r#"[{"dialog": [{"speaker": "seeker", "content": "hi"}, {"speaker": "supporter", "annotation": {"strategy": "Question"}}]}]"#;
    check_error(
        "ESConv.json",
        text.as_bytes(),
        &["ESConv.json: conversation 0: field `dialog[1].content`: missing field"],
    );
}

#[test]
fn missing_dialog_names_the_field() {
    check_error(
        "ESConv.json",
        b"[{\"situation\": \"x\"}]",
        &["conversation 0: field `dialog`: missing field"],
    );
}

#[test]
fn unknown_strategy_names_the_place_and_the_known_labels() {
    let text = format!(
        "[{{\"dialog\": []}}, {{\"dialog\": [{ONE_MESSAGE}, {{\"speaker\": \"supporter\", \
         \"annotation\": {{\"strategy\": \"Sarcasm\"}}, \"content\": \"sure\"}}]}}]"
    );
    check_error(
        "ESConv.json",
        text.as_bytes(),
        &["ESConv.json: conversation 1: field `dialog[1].annotation.strategy`: unknown strategy \
             \"Sarcasm\" (known: Question, Restatement or Paraphrasing,"],
    );
}

#[test]
fn unknown_speaker_names_the_place() {
    let text = r#"[{"dialog": [{"speaker": "narrator", "content": "once"}]}]"#;
    check_error(
        "ESConv.json",
        text.as_bytes(),
        &["conversation 0: field `dialog[0].speaker`: unknown speaker \"narrator\""],
    );
}

#[test]
fn empty_file_and_wrong_shapes_are_refused() {
    check_error("ESConv.json", b"", &["ESConv.json: empty file: no conversations"]);
    check_error(
        "ESConv.json",
        b"{\"dialog\": []}",
        &["ESConv.json:1: invalid type: map, expected a JSON array"],
    );
    check_error("ESConv.json", b"[{\"dialog\": []}] x", &["ESConv.json:1: after the array of conversations"]);
    check_error("ESConv.json", b"[3]", &["ESConv.json: conversation 0: expected an object, found a number"]);
}

#[test]
fn keep_going_skips_bad_conversations_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ESConv.json");
    let text = format!(
        "[{{\"dialog\": [{ONE_MESSAGE}]}}, {{\"dialog\": [{{\"speaker\": \"supporter\", \
         \"annotation\": {{\"strategy\": \"Sarcasm\"}}, \"content\": \"sure\"}}]}}, \
         {{\"dialog\": [{ONE_MESSAGE}]}}]"
    );
    std::fs::write(&path, text).unwrap();
    let options = ImportOptions { keep_going: true, ..ImportOptions::default() };
    let (conversations, report) = import(&path, &options);
    let ids: Vec<&str> = conversations.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["esconv:0", "esconv:2"]);
    assert_eq!(report.skipped, 1);
    assert!(report.skipped_examples[0].contains("conversation 1: field `dialog[0].annotation.strategy`"));
}

#[test]
fn real_esconv_file_when_present() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/esconv/ESConv.json");
    if !path.exists() {
        eprintln!("skipped: {} is not here", path.display());
        return;
    }
    let (conversations, report) = import(&path, &ImportOptions::default());
    assert_eq!(report.conversations, 1300);
    assert_eq!(conversations.len(), 1300);
    assert_eq!(report.skipped, 0);
}

#[test]
fn each_conversation_is_delivered_before_the_rest_is_read() {
    // Conversation 0 reaches the sink although the file breaks later: nothing waits for
    // the whole array.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ESConv.json");
    std::fs::write(&path, format!("[{{\"dialog\": [{ONE_MESSAGE}]}}, {{\"dialog\": [")).unwrap();
    let mut delivered = Vec::new();
    let error = esconv::import(&path, &ImportOptions::default(), &mut |conversation| {
        delivered.push(conversation.id);
        Ok(())
    })
    .unwrap_err();
    assert_eq!(delivered, ["esconv:0"]);
    assert!(error.to_string().contains("conversation 1: EOF while parsing"), "{error}");
}
