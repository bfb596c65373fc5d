//! Simulated discussions and their annotations written as the framework's output JSON
//! and read back with the crate's own SDF readers.

use std::path::Path;

use agora_core::{
    Annotation, Conversation, Meta, Participant, Persona, Role, Score, Source, Turn, TurnLabels,
};
use agora_corpus::sdf;
use agora_corpus::{ImportOptions, ImportReport};
use serde_json::{Value, json};

fn object(value: Value) -> Meta {
    match value {
        Value::Object(object) => object,
        _ => unreachable!(),
    }
}

fn persona(name: &str, attributes: Value, instructions: Option<&str>) -> Persona {
    Persona {
        name: name.into(),
        attributes: object(attributes),
        facts: Vec::new(),
        instructions: instructions.map(str::to_string),
    }
}

fn turn(index: u32, speaker: &str, role: Role, text: &str, model: &str) -> Turn {
    let mut extra = Meta::new();
    extra.insert("model".into(), model.into());
    if model != "hardcoded" {
        extra.insert("prompt_hash".into(), format!("h{index}").into());
        extra.insert("finish_reason".into(), "stop".into());
    }
    if text.is_empty() {
        extra.insert("empty".into(), true.into());
    }
    Turn {
        index,
        original_id: None,
        speaker: speaker.into(),
        role,
        text: text.into(),
        reply_to: None,
        labels: TurnLabels { extra, ..TurnLabels::default() },
    }
}

/// A discussion as agora-sim stores one: opening post, two users, a moderator, one silent
/// moderator turn, text with quotes, newlines and unicode.
fn simulated() -> Conversation {
    let alice = persona(
        "alice",
        json!({"age": 34, "sex": "female", "personality_characteristics": ["curious", "blunt"]}),
        Some("Disagree politely."),
    );
    let bob = persona("bob", json!({"age": "25-34", "education": "PhD"}), None);
    let moderator = persona("mod", json!({"sex": "unknown"}), Some("Keep it civil."));
    Conversation {
        id: "sim-pets:d0003".into(),
        source: Source { corpus: "sim-pets".into(), original_id: "d0003".into() },
        participants: vec![
            Participant { name: "OP".into(), role: Role::User, persona: None },
            Participant { name: "alice".into(), role: Role::User, persona: Some(alice) },
            Participant { name: "bob".into(), role: Role::User, persona: Some(bob) },
            Participant { name: "mod".into(), role: Role::Moderator, persona: Some(moderator) },
        ],
        turns: vec![
            turn(0, "OP", Role::User, "Cats > dogs, \"obviously\".", "hardcoded"),
            turn(1, "alice", Role::User, "@OP no.\nDogs are loyal 🐕.", "smollm2"),
            turn(2, "mod", Role::Moderator, "", "smollm2"),
            turn(3, "bob", Role::User, "Both are fine — ça va.", "smollm2"),
            turn(4, "mod", Role::Moderator, "Please stay on topic.", "smollm2"),
            turn(5, "alice", Role::User, "", "smollm2"),
        ],
        meta: object(json!({
            "experiment": "pets",
            "topic": "pets_1",
            "seed": 7,
            "context_window": 4,
            "turn_policy": {"type": "round_robin"},
        })),
    }
}

fn import(path: &Path) -> (Conversation, ImportReport) {
    let mut conversations = Vec::new();
    let report = sdf::import_conversations(path, &ImportOptions::default(), &mut |conversation| {
        conversations.push(conversation);
        Ok(())
    })
    .unwrap();
    assert_eq!(conversations.len(), 1);
    (conversations.remove(0), report)
}

fn participant<'a>(conversation: &'a Conversation, name: &str) -> &'a Participant {
    conversation.participants.iter().find(|participant| participant.name == name).unwrap()
}

#[test]
fn discussion_json_has_the_framework_shape() {
    let value = sdf::discussion_json(&simulated(), "26-01-02-03-04").unwrap();
    let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["id", "timestamp", "users", "moderator", "user_prompts", "moderator_prompt", "ctx_length", "logs"]
    );
    assert_eq!(value["id"], "d0003");
    assert_eq!(value["users"], json!(["alice", "bob"]));
    assert_eq!(value["moderator"], "mod");
    assert_eq!(value["ctx_length"], 4);
    assert_eq!(
        value["logs"][0],
        json!({"name": "OP", "text": "Cats > dogs, \"obviously\".", "model": "hardcoded"})
    );
    assert_eq!(value["logs"][2], json!({"name": "mod", "text": "", "model": "smollm2"}));
    assert_eq!(
        value["user_prompts"][1],
        json!({"context": "", "instructions": "", "type": "1", "persona": {
            "username": "bob", "age": "25-34", "education": "PhD", "special_instructions": ""}})
    );
    assert_eq!(value["moderator_prompt"]["type"], "2");
    assert_eq!(value["moderator_prompt"]["persona"]["special_instructions"], "Keep it civil.");
}

#[test]
fn discussion_round_trips_through_the_importer() {
    let original = simulated();
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("26-01-02-03-04.json");
    sdf::write_discussion(&path, &original, "26-01-02-03-04").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("{\n    \"id\": \"d0003\",\n    \"timestamp\""), "{text}");

    let (read, report) = import(&path);
    assert_eq!(read.id, "sdf:d0003");
    assert_eq!(read.turns.len(), original.turns.len());
    for (read, original) in read.turns.iter().zip(&original.turns) {
        assert_eq!(read.index, original.index);
        assert_eq!(read.speaker, original.speaker);
        assert_eq!(read.role, original.role);
        assert_eq!(read.text, original.text);
        assert_eq!(read.labels.extra.get("model"), original.labels.extra.get("model"));
    }
    assert_eq!(read.turns[0].labels.extra.get("seed_opinion"), Some(&Value::Bool(true)));
    assert_eq!(report.notes.get("silent turns (empty text) kept").copied(), Some(2), "{report:?}");
    for original in &original.participants {
        let read = participant(&read, &original.name);
        assert_eq!(read.role, original.role, "{}", original.name);
        assert_eq!(read.persona, original.persona, "{}", original.name);
    }
    assert_eq!(read.participants.len(), 4);
    assert_eq!(read.meta.get("ctx_length"), Some(&json!(4)));
}

#[test]
fn discussion_without_moderator_or_models() {
    let mut conversation = simulated();
    conversation.participants.retain(|participant| participant.role != Role::Moderator);
    conversation.turns.retain(|turn| turn.role != Role::Moderator);
    for (index, turn) in conversation.turns.iter_mut().enumerate() {
        turn.index = index as u32;
        turn.labels.extra.remove("model");
    }
    conversation.meta.remove("context_window");
    let value = sdf::discussion_json(&conversation, "t").unwrap();
    assert_eq!(value["moderator"], Value::Null);
    assert_eq!(value["moderator_prompt"], Value::Null);
    assert_eq!(value["ctx_length"], Value::Null);
    // Without the hardcoded label the opening speaker is an ordinary user.
    assert_eq!(value["users"], json!(["OP", "alice", "bob"]));
    assert_eq!(value["user_prompts"][0], "");

    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("d.json");
    sdf::write_discussion(&path, &conversation, "t").unwrap();
    let (read, _) = import(&path);
    assert!(
        read.turns.iter().all(|turn| turn.role == Role::User && !turn.labels.extra.contains_key("model"))
    );
    assert_eq!(participant(&read, "OP").persona, None);
}

#[test]
fn discussions_the_framework_cannot_hold_are_errors() {
    let check = |change: &dyn Fn(&mut Conversation), expected: &[&str]| {
        let mut conversation = simulated();
        change(&mut conversation);
        let error = sdf::discussion_json(&conversation, "t").unwrap_err().to_string();
        for part in expected {
            assert!(error.contains(part), "{error} lacks {part}");
        }
    };
    check(&|c| c.turns[3].role = Role::Assistant, &["sim-pets:d0003", "turns[3].role", "assistant"]);
    check(&|c| c.turns[1].role = Role::Moderator, &["turns[1].speaker", "alice"]);
    check(&|c| c.participants[1].role = Role::Moderator, &["two moderators", "alice", "mod"]);
    check(
        &|c| c.participants[2].persona.as_mut().unwrap().facts.push("i like cats.".into()),
        &["facts", "bob"],
    );
    check(
        &|c| {
            let persona = c.participants[1].persona.as_mut().unwrap();
            persona.attributes.insert("intent".into(), "x".into());
        },
        &["attributes.intent", "alice"],
    );
    check(
        &|c| _ = c.turns[2].labels.extra.insert("model".into(), json!(3)),
        &["turns[2].labels.extra.model"],
    );
}

fn annotation(turn_index: u32, annotator: &str, scale: &str, score: Score) -> Annotation {
    Annotation {
        conversation_id: "sim-pets:d0003".into(),
        turn_index,
        annotator: annotator.into(),
        model: Some("smollm2".into()),
        scale: scale.into(),
        score,
    }
}

fn value(value: f64) -> Score {
    Score::Value { value }
}

/// Sorted the way the reader returns them: by turn, then scale in prompt order.
fn sorted(mut annotations: Vec<Annotation>, scales: &[&str]) -> Vec<Annotation> {
    annotations.sort_by_key(|annotation| {
        (annotation.turn_index, scales.iter().position(|scale| *scale == annotation.scale))
    });
    annotations
}

#[test]
fn annotations_round_trip_through_read_annotations_for() {
    let conversation = simulated();
    // Like agora-sim: the non-empty comments, moderator ones included, two scales, one
    // reply that did not parse.
    let annotations = vec![
        annotation(0, "ann-1", "toxicity", value(1.0)),
        annotation(1, "ann-1", "toxicity", value(3.0)),
        annotation(3, "ann-1", "toxicity", Score::Unparsed { raw: "I cannot rate this.".into() }),
        annotation(4, "ann-1", "toxicity", value(1.0)),
        annotation(0, "ann-1", "argument_quality", value(2.0)),
        annotation(1, "ann-1", "argument_quality", value(4.5)),
        annotation(3, "ann-1", "argument_quality", Score::Unparsed { raw: "I cannot rate this.".into() }),
        annotation(4, "ann-1", "argument_quality", value(5.0)),
    ];
    let json = sdf::annotation_json(&conversation, &annotations, "26-01-02-05-00").unwrap();
    assert_eq!(json["conv_id"], "d0003");
    assert_eq!(json["annotator_model"], "smollm2");
    assert_eq!(json["logs"][0], json!(["Cats > dogs, \"obviously\".", "Toxicity=1\nArgumentQuality=2"]));
    assert_eq!(json["logs"][1], json!(["@OP no.\nDogs are loyal 🐕.", "Toxicity=3\nArgumentQuality=4.5"]));
    assert_eq!(json["logs"][2], json!(["Both are fine — ça va.", "I cannot rate this."]));
    assert_eq!(json["logs"].as_array().unwrap().len(), 4);

    let folder = tempfile::tempdir().unwrap();
    let discussion = folder.path().join("discussion.json");
    sdf::write_discussion(&discussion, &conversation, "26-01-02-03-04").unwrap();
    let (imported, _) = import(&discussion);
    let path = folder.path().join("annotations.json");
    sdf::write_annotations(&path, &conversation, &annotations, "26-01-02-05-00").unwrap();

    let mut report = ImportReport::default();
    let read = sdf::read_annotations_for(&path, &imported, &mut report).unwrap();
    let expected: Vec<Annotation> = sorted(annotations, &["toxicity", "argument_quality"])
        .into_iter()
        .map(|annotation| Annotation { conversation_id: "sdf:d0003".into(), ..annotation })
        .collect();
    assert_eq!(read, expected);
    assert_eq!(report.notes.get("unparsed annotation replies (kept as unparsed)").copied(), Some(2));
    assert_eq!(
        report.notes.get("discussion turns not annotated (left out of the annotation log)").copied(),
        Some(1),
        "{report:?}"
    );
}

#[test]
fn annotations_of_every_turn_round_trip_through_read_annotations() {
    let mut conversation = simulated();
    conversation.turns.truncate(2);
    let annotations = vec![
        annotation(0, "ann-2", "toxicity", value(2.0)),
        annotation(1, "ann-2", "toxicity", Score::Unparsed { raw: "Toxicity=??".into() }),
    ];
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("annotations.json");
    sdf::write_annotations(&path, &conversation, &annotations, "t").unwrap();
    let mut report = ImportReport::default();
    let read = sdf::read_annotations(&path, &mut report).unwrap();
    let expected: Vec<Annotation> = annotations
        .into_iter()
        .map(|annotation| Annotation { conversation_id: "sdf:d0003".into(), ..annotation })
        .collect();
    assert_eq!(read, expected);
}

#[test]
fn annotations_per_annotator_and_refusals() {
    let conversation = simulated();
    let annotations = vec![
        annotation(1, "ann-1", "toxicity", value(3.0)),
        annotation(1, "ann-2", "toxicity", value(4.0)),
        annotation(3, "ann-1", "toxicity", value(1.0)),
    ];
    let files = sdf::annotation_json_per_annotator(&conversation, &annotations, "t").unwrap();
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["ann-1", "ann-2"]);
    assert_eq!(files[0].1["logs"].as_array().unwrap().len(), 2);
    assert_eq!(files[1].1["annotator_prompt"]["persona"]["username"], "ann-2");

    let error = |annotations: &[Annotation]| {
        sdf::annotation_json(&conversation, annotations, "t").unwrap_err().to_string()
    };
    let two_annotators = error(&annotations);
    assert!(
        two_annotators.contains("ann-1 and ann-2") && two_annotators.contains("annotations[1]"),
        "{two_annotators}"
    );
    assert!(error(&[]).contains("no annotations"));
    let other = Annotation { conversation_id: "sim-pets:d0009".into(), ..annotations[0].clone() };
    assert!(error(&[other]).contains("sim-pets:d0009"));
    let bad_scale = annotation(1, "ann-1", "toxicity-1-5", value(3.0));
    assert!(error(&[bad_scale]).contains("toxicity-1-5"));
    let missing_turn = annotation(17, "ann-1", "toxicity", value(3.0));
    assert!(error(&[missing_turn]).contains("turn 17"));
    let other_model = Annotation { model: Some("gpt".into()), ..annotations[2].clone() };
    assert!(error(&[annotations[0].clone(), other_model]).contains("smollm2 and gpt"));

    // A skipped turn with the same text as an annotated one would mislead the reader's join.
    let mut repeated = simulated();
    repeated.turns[3].text = repeated.turns[1].text.clone();
    let ambiguous = sdf::annotation_json(&repeated, &[annotation(3, "ann-1", "toxicity", value(1.0))], "t")
        .unwrap_err()
        .to_string();
    assert!(ambiguous.contains("same text as turn 1"), "{ambiguous}");
}
