//! Tests of the Synthetic Discussion Framework readers on hand-written fixtures in the
//! framework's real shapes (test_data/sdf), on malformed inputs, and on the real input
//! files under /work/shared/data/sdf when that folder exists.

use std::path::{Path, PathBuf};

use agora_core::{Conversation, Role, Score};
use agora_corpus::sdf::{
    NamedText, import_conversations, read_annotations, read_annotations_for, read_conversation_config,
    read_personas, read_texts,
};
use agora_corpus::{ImportOptions, ImportReport};
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/sdf").join(name)
}

fn import(path: &Path, options: &ImportOptions) -> (Vec<Conversation>, ImportReport) {
    let mut conversations = Vec::new();
    let report = import_conversations(path, options, &mut |conversation| {
        conversations.push(conversation);
        Ok(())
    })
    .unwrap();
    (conversations, report)
}

/// Writes `files` (name, bytes) into a fresh folder and returns it.
fn folder_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}

/// Reads personas from a folder made of `files` and checks the error's tail.
fn check_persona_error(files: &[(&str, &[u8])], expected_tail: &str) {
    let dir = folder_with(files);
    let error = read_personas(dir.path()).unwrap_err().to_string();
    assert!(error.ends_with(expected_tail), "{error:?} should end with {expected_tail:?}");
}

#[test]
fn personas_from_a_folder_with_both_spellings_and_age_types() {
    let personas = read_personas(&fixture("personas")).unwrap();
    let names: Vec<&str> = personas.iter().map(|persona| persona.name.as_str()).collect();
    assert_eq!(names, ["CalmCarla40", "GrumpyGus55", "P001"]);

    let carla = &personas[0];
    assert_eq!(carla.attributes["age"], json!(40));
    assert_eq!(carla.attributes["personality_characteristics"], json!(["calm", "curious"]));
    // `\n` in JSON is a real line break; the instructions are trimmed.
    assert_eq!(
        carla.instructions.as_deref(),
        Some("Scores: * Stay on topic: +1 points \n * Insult someone: -5 points")
    );
    let keys: Vec<&str> = carla.attributes.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        // File order (serde_json's `preserve_order`), the order prompts describe them in.
        ["age", "sex", "education_level", "current_employment", "personality_characteristics"]
    );

    let gus = &personas[1];
    assert_eq!(gus.instructions.as_deref(), Some("Troll"));
    assert_eq!(gus.attributes["age"], json!("45-54"));
    assert!(!gus.attributes.contains_key("intent"));

    let unknown = &personas[2];
    assert_eq!(unknown.instructions, None);
    assert_eq!(unknown.attributes["age"], json!("-1"));
}

#[test]
fn persona_single_object_file_with_leading_space() {
    let personas = read_personas(&fixture("personas/calm_1.json")).unwrap();
    assert_eq!(personas.len(), 1);
    assert_eq!(personas[0].name, "CalmCarla40");
}

#[test]
fn malformed_personas_name_file_record_and_field() {
    check_persona_error(
        &[("cut.json", b" {\n  \"username\": \"A\",\n  \"age\": 3")],
        "cut.json:3: invalid JSON: EOF while parsing an object at line 3 column 10",
    );
    check_persona_error(
        &[("personas.json", br#"[{"username": "A"}, {"age": 3}]"#)],
        "personas.json: persona 1: field `username`: missing",
    );
    check_persona_error(
        &[("one.json", br#"{"username": 7}"#)],
        "one.json: field `username`: expected a string, found a number",
    );
    check_persona_error(&[("one.json", br#"{"username": " "}"#)], "one.json: field `username`: empty");
    check_persona_error(
        &[("one.json", br#"{"username": "A", "intent": "Troll", "special_instructions": "Helpful"}"#)],
        "one.json: field `intent`: differs from `special_instructions`; give one of the two",
    );
    check_persona_error(
        &[("one.json", br#"{"username": "A", "intent": 3}"#)],
        "one.json: field `intent`: expected a string, found a number",
    );
    check_persona_error(&[("bad.json", b"{\"username\":\n \"A\xff\"}")], "bad.json:2: invalid UTF-8");
    check_persona_error(&[("empty.json", b"  \n")], "empty.json: empty file");
    check_persona_error(&[("list.json", b"[1]")], "list.json: persona 0: expected an object, found a number");
    check_persona_error(
        &[("text.json", b"\"hi\"")],
        "text.json: expected a persona object or a list of them, found a string",
    );
    check_persona_error(
        &[("a.json", br#"{"username": "A"}"#), ("notes.txt", b"x")],
        "notes.txt: not a .json file (expected only .json files in this folder)",
    );
}

#[test]
fn hidden_files_in_a_persona_folder_are_skipped() {
    let dir = folder_with(&[("a.json", br#"{"username": "A"}"#), (".DS_Store", b"\0\0")]);
    let personas = read_personas(dir.path()).unwrap();
    assert_eq!(personas.len(), 1);
}

#[test]
fn topic_and_instruction_texts() {
    let topics = read_texts(&fixture("topics")).unwrap();
    assert_eq!(
        topics,
        [
            NamedText {
                name: "pets_1".into(),
                text: "Cats are better than dogs, and anyone who disagrees has never owned a cat.".into()
            },
            NamedText { name: "pets_2".into(), text: "Pineapple belongs on pizza. Fight me.".into() },
        ]
    );
    // Kept verbatim, as the framework sent it to the model: `\n` stays two characters.
    let instructions = read_texts(&fixture("instructions/heat.txt")).unwrap();
    assert_eq!(instructions.len(), 1);
    assert!(instructions[0].text.starts_with("You will rate comments.\\n\\nThe possible labels"));
    assert!(instructions[0].text.ends_with("\\\"Heat=<number>\\\"."));

    let dir = folder_with(&[("a.txt", b"fine"), ("b.txt", b" \n\n")]);
    let error = read_texts(dir.path()).unwrap_err().to_string();
    assert!(error.ends_with("b.txt: empty file"), "{error}");
    let dir = folder_with(&[("a.txt", b"fine"), ("b.md", b"x")]);
    assert!(read_texts(dir.path()).is_err());
}

#[test]
fn conversation_configs_json_and_yaml() {
    let config = read_conversation_config(&fixture("configs/multi_user.json")).unwrap();
    assert_eq!(config.conv_len, Some(6));
    assert_eq!(config.history_ctx_len, Some(2));
    assert_eq!(config.turn_manager_type.as_deref(), Some("random_weighted"));
    assert_eq!(config.turn_manager_config.unwrap().respond_probability, Some(0.25));
    assert!(config.extra.is_empty());

    let config = read_conversation_config(&fixture("configs/run_config.yml")).unwrap();
    assert_eq!(config.conv_len, Some(8));
    assert_eq!(config.history_ctx_len, Some(3));
    assert_eq!(config.turn_manager_type, None);
    assert_eq!(config.turn_manager_config.unwrap().respond_probability, Some(0.4));
    assert_eq!(config.extra["discussions"]["experiment_variables"]["num_users"], json!(3));
    assert_eq!(config.extra["discussions"]["files"]["topics_path"], json!("/data/topics.csv"));
    assert_eq!(config.extra["discussions"]["turn_taking"], json!({}));
    assert_eq!(config.extra["logging"]["print_to_terminal"], json!(true));

    // Unknown fields are kept; bad values name their field.
    let dir = folder_with(&[
        ("extra.json", br#"{"history_ctx_len": 2, "context": "A forum.", "user_names": ["a"]}"#),
        ("bad_p.json", br#"{"turn_manager_config": {"respond_probability": 1.5}}"#),
        ("bad_len.json", br#"{"conv_len": "ten"}"#),
        ("zero.json", br#"{"conv_len": 0}"#),
    ]);
    let config = read_conversation_config(&dir.path().join("extra.json")).unwrap();
    assert_eq!(config.history_ctx_len, Some(2));
    assert_eq!(config.extra["user_names"], json!(["a"]));
    let error = |name: &str| read_conversation_config(&dir.path().join(name)).unwrap_err().to_string();
    assert!(error("bad_p.json").ends_with(
        "bad_p.json: field `turn_manager_config.respond_probability`: expected a probability between 0 and 1, found 1.5"
    ));
    assert!(
        error("bad_len.json")
            .ends_with("bad_len.json: field `conv_len`: expected a whole number >= 0, found \"ten\"")
    );
    assert!(error("zero.json").ends_with("zero.json: field `conv_len`: must be at least 1"));
}

#[test]
fn conversations_of_every_output_shape() {
    let (conversations, report) = import(&fixture("conversations"), &ImportOptions::default());
    assert_eq!(report.conversations, 3);
    assert_eq!(report.turns, 5 + 4 + 3);
    assert_eq!(report.notes["silent turns (empty text) kept"], 2);
    assert_eq!(report.notes["conversation ids taken from file names (no `id` field)"], 1);
    assert_eq!(report.notes["moderators recognised by name (no `moderator` field)"], 1);

    // 2024: [username, text] pairs, topic quoted in the prompts.
    let old = &conversations[0];
    assert_eq!(old.id, "sdf:c2024-a1");
    assert_eq!(old.source.original_id, "c2024-a1");
    let speakers: Vec<(&str, Role)> =
        old.turns.iter().map(|turn| (turn.speaker.as_str(), turn.role)).collect();
    assert_eq!(
        speakers,
        [
            ("CalmCarla40", Role::User),
            ("mod01", Role::Moderator),
            ("GrumpyGus55", Role::User),
            ("mod01", Role::Moderator),
            ("CalmCarla40", Role::User),
        ]
    );
    assert_eq!(old.turns[2].text, "Cats? Seriously? Dogs don't ignore you.");
    assert_eq!(
        old.meta["topic"],
        json!("Cats are better than dogs, and anyone who disagrees has never owned a cat.")
    );
    assert_eq!(old.meta["ctx_length"], json!(4));
    assert_eq!(old.meta["timestamp"], json!("24-06-01-10-00"));
    assert_eq!(old.meta["moderator_type"], json!("LlmActor"));
    assert!(old.meta["user_prompts"][0].as_str().unwrap().contains("You are CalmCarla40"));
    assert!(old.participants.iter().all(|participant| participant.persona.is_none()));

    // Late 2025: objects, structured prompts with personas, a seed opinion.
    let newer = &conversations[1];
    assert_eq!(newer.id, "sdf:c2025-b2");
    assert_eq!(newer.turns[0].labels.extra["seed_opinion"], json!(true));
    assert_eq!(newer.turns[1].labels.extra["model"], json!("tiny-llm-1b"));
    assert!(!newer.turns[1].labels.extra.contains_key("seed_opinion"));
    assert_eq!(newer.turns[2].role, Role::Moderator);
    let names: Vec<&str> = newer.participants.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["loud-heron", "quiet-otter", "moderator"]);
    let heron = newer.participants[0].persona.as_ref().unwrap();
    assert_eq!(heron.instructions.as_deref(), Some("Post comments intended to provoke."));
    assert_eq!(heron.attributes["age"], json!(-1));
    let moderator = &newer.participants[2];
    assert_eq!(moderator.role, Role::Moderator);
    assert_eq!(
        moderator.persona.as_ref().unwrap().attributes["personality_characteristics"],
        json!(["fair"])
    );

    // May 2026: timestamp and logs only.
    let latest = &conversations[2];
    assert_eq!(latest.id, "sdf:26-05-01-10-00-00");
    assert_eq!(latest.turns[2].role, Role::Moderator);
    assert_eq!(latest.turns[1].labels.extra["prompt"], json!("You are tired-crow. Write a comment."));
    assert!(!latest.turns[0].labels.extra.contains_key("prompt"));
}

#[test]
fn malformed_conversations_are_skipped_with_keep_going() {
    let good = std::fs::read(fixture("conversations/24-06-01-10-00.json")).unwrap();
    let dir = folder_with(&[
        ("a.json", &good),
        ("b.json", br#"{"id": "x", "logs": [["A", "hi"], ["B"]]}"#),
        ("c.json", br#"{"id": "y", "logs": [{"text": "no name"}]}"#),
        ("d.json", br#"{"id": "z"}"#),
        ("e.json", b"{\"id\": \"w\", \"logs\": ["),
        ("notes.md", b"ignored but counted"),
    ]);
    let mut seen = 0;
    let error = import_conversations(dir.path(), &ImportOptions::default(), &mut |_| {
        seen += 1;
        Ok(())
    })
    .unwrap_err()
    .to_string();
    assert!(
        error.ends_with("b.json: field `logs[1]`: expected a [username, text] pair, found 1 items"),
        "{error}"
    );
    assert_eq!(seen, 1);

    let options = ImportOptions { keep_going: true, ..ImportOptions::default() };
    let (conversations, report) = import(dir.path(), &options);
    assert_eq!(conversations.len(), 1);
    assert_eq!(report.skipped, 4);
    assert!(report.skipped_examples[1].ends_with("c.json: field `logs[0].name`: missing"));
    assert!(report.skipped_examples[2].ends_with("d.json: field `logs`: missing"));
    assert!(report.skipped_examples[3].contains("e.json:1: invalid JSON"));
    assert_eq!(report.notes["entries other than .json files ignored"], 1);
    // Notes of skipped files are not counted.
    assert_eq!(report.notes["silent turns (empty text) kept"], 1);
}

fn conversation(name: &str) -> Conversation {
    let (mut conversations, _) =
        import(&fixture(&format!("conversations/{name}")), &ImportOptions::default());
    conversations.remove(0)
}

#[test]
fn annotations_2024_pairs_with_an_unparseable_reply() {
    let file = fixture("annotations/24-06-01-11-00.json");
    let mut report = ImportReport::default();
    let annotations = read_annotations(&file, &mut report).unwrap();
    assert_eq!(annotations.len(), 3);
    assert!(annotations.iter().all(|a| a.conversation_id == "sdf:c2024-a1" && a.scale == "toxicity"));
    assert_eq!(annotations[0].score, Score::Value { value: 1.0 });
    assert_eq!(annotations[2].score, Score::Unparsed { raw: "I cannot rate this comment.".into() });
    assert_eq!(annotations[0].annotator, "annotator:24-06-01-11-00");
    let indices: Vec<u32> = annotations.iter().map(|a| a.turn_index).collect();
    assert_eq!(indices, [0, 1, 2]);
    assert_eq!(report.notes["unparsed annotation replies (kept as unparsed)"], 1);
    assert_eq!(report.notes["annotation turn indices are log positions (no discussion to align with)"], 1);

    // Aligned with the discussion: moderator comments were left out of the annotation log.
    let mut report = ImportReport::default();
    let annotations = read_annotations_for(&file, &conversation("24-06-01-10-00.json"), &mut report).unwrap();
    let indices: Vec<u32> = annotations.iter().map(|a| a.turn_index).collect();
    assert_eq!(indices, [0, 2, 4]);
    assert_eq!(report.notes["discussion turns not annotated (left out of the annotation log)"], 2);

    // The wrong discussion is refused.
    let error = read_annotations_for(&file, &conversation("25-11-20-09-30.json"), &mut report)
        .unwrap_err()
        .to_string();
    assert!(
        error.ends_with("24-06-01-11-00.json: field `conv_id`: annotates discussion c2024-a1, not c2025-b2"),
        "{error}"
    );
}

#[test]
fn annotations_2026_objects_on_two_scales() {
    let mut report = ImportReport::default();
    let file = fixture("annotations/26-04-02-08-00-00.json");
    let annotations = read_annotations_for(&file, &conversation("25-11-20-09-30.json"), &mut report).unwrap();
    assert_eq!(annotations.len(), 8);
    let first = &annotations[0];
    assert_eq!(
        (first.annotator.as_str(), first.model.as_deref(), first.scale.as_str(), first.turn_index),
        ("annotator01", Some("tiny-llm-1b"), "toxicity", 0)
    );
    assert_eq!(annotations[1].scale, "argument_quality");
    assert_eq!(annotations[1].score.value(), Some(4.0));
    // The moderator's reply has no ArgumentQuality: kept as unparsed, with the raw reply.
    assert_eq!(annotations[4].score.value(), Some(1.0));
    assert_eq!(annotations[5].score, Score::Unparsed { raw: "Toxicity=1".into() });
    assert_eq!(report.notes["unparsed annotation replies (kept as unparsed)"], 1);
}

#[test]
fn annotations_without_conv_id_need_their_discussion() {
    let file = fixture("annotations/26-05-01-12-00-00.json");
    let mut report = ImportReport::default();
    let error = read_annotations(&file, &mut report).unwrap_err().to_string();
    assert!(error.contains("26-05-01-12-00-00.json: field `conv_id`: missing"), "{error}");

    let annotations =
        read_annotations_for(&file, &conversation("26-05-01-10-00-00.json"), &mut report).unwrap();
    assert_eq!(annotations.len(), 3);
    assert!(
        annotations.iter().all(|a| a.conversation_id == "sdf:26-05-01-10-00-00" && a.annotator == "rater7")
    );
    // A bare "2" on a one-scale prompt is that scale's value, and counted.
    assert_eq!(annotations[1].score.value(), Some(2.0));
    assert_eq!(report.notes["bare-number replies read on the prompt's one scale"], 1);

    // A log naming another speaker than the discussion's turn is refused.
    let mut report = ImportReport::default();
    let error = read_annotations_for(&file, &conversation("25-11-20-09-30.json"), &mut report)
        .unwrap_err()
        .to_string();
    assert!(
        error.ends_with("field `logs[0].name`: is happy-lynx, but turn 0 of sdf:c2025-b2 is by loud-heron"),
        "{error}"
    );
}

// ---- The real input files, when the shared data folder is there. ----

fn real_data() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/sdf");
    if root.is_dir() {
        Some(root)
    } else {
        eprintln!("skipping: {} not found", root.display());
        None
    }
}

#[test]
fn real_persona_files_read() {
    let Some(root) = real_data() else { return };
    let expected = [
        ("inputs-2024/personas", 6),
        ("annotation-inputs-2024/personas", 6),
        ("inputs-2026/personas/no_sdbs.json", 13),
        ("inputs-2026/personas/personas_generic.json", 45),
        ("inputs-2026/personas", 58),
    ];
    for (path, count) in expected {
        let personas = read_personas(&root.join(path)).unwrap();
        assert_eq!(personas.len(), count, "{path}");
    }
    let personas = read_personas(&root.join("inputs-2024/personas")).unwrap();
    let with_instructions = personas.iter().filter(|persona| persona.instructions.is_some()).count();
    assert_eq!(with_instructions, 6, "both `intent` and `special_instructions` files carry text");
    let annotators = read_personas(&root.join("annotation-inputs-2024/personas")).unwrap();
    assert!(annotators.iter().all(|persona| persona.instructions.is_none()), "their `intent` is empty");
}

#[test]
fn real_text_folders_and_configs_read() {
    let Some(root) = real_data() else { return };
    let expected = [
        ("inputs-2024/topics", 7),
        ("inputs-2024/user_instructions", 3),
        ("inputs-2024/mod_instructions", 3),
        ("annotation-inputs-2024/instructions", 1),
        ("inputs-2026/user_instructions", 3),
        ("inputs-2026/mod_instructions", 3),
    ];
    for (path, count) in expected {
        let texts = read_texts(&root.join(path)).unwrap();
        assert_eq!(texts.len(), count, "{path}");
        assert!(texts.iter().all(|text| !text.text.is_empty() && text.text == text.text.trim()));
    }
    let config =
        read_conversation_config(&root.join("inputs-2024/other_configs/standard_multi_user.json")).unwrap();
    assert_eq!((config.conv_len, config.history_ctx_len), (Some(14), Some(4)));
    assert_eq!(config.turn_manager_type.as_deref(), Some("random_weighted"));
    assert_eq!(config.turn_manager_config.unwrap().respond_probability, Some(0.3));
    let config = read_conversation_config(&root.join("inputs-2026/run_config.yml")).unwrap();
    assert_eq!((config.conv_len, config.history_ctx_len), (Some(15), Some(3)));
    assert_eq!(config.turn_manager_config.unwrap().respond_probability, Some(0.4));
    assert_eq!(config.extra["discussions"]["experiment_variables"]["num_users"], json!(7));
}
