//! Persona-Chat / ConvAI2 importer: hand-written fixtures, malformed inputs, and the real
//! validation file when the shared data folder has it.

use std::path::{Path, PathBuf};

use agora_core::{Conversation, Role};
use agora_corpus::{ImportOptions, ImportReport, personachat};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/personachat").join(name)
}

fn import(path: &Path, options: &ImportOptions) -> (Vec<Conversation>, ImportReport) {
    let mut conversations = Vec::new();
    let report = personachat::import(path, options, &mut |conversation| {
        conversations.push(conversation);
        Ok(())
    })
    .unwrap();
    (conversations, report)
}

fn note(report: &ImportReport, key: &str) -> u64 {
    report.notes.get(key).copied().unwrap_or(0)
}

/// `speaker: text` per turn, to compare dialogues at a glance.
fn transcript(conversation: &Conversation) -> Vec<String> {
    conversation.turns.iter().map(|turn| format!("{}: {}", turn.speaker, turn.text)).collect()
}

fn facts(conversation: &Conversation, name: &str) -> Vec<String> {
    conversation
        .participants
        .iter()
        .find(|participant| participant.name == name)
        .and_then(|participant| participant.persona.as_ref())
        .map(|persona| persona.facts.clone())
        .unwrap_or_default()
}

/// Imports `text` written to a file named `name` and expects an error containing `expected`.
fn check_error(name: &str, text: &[u8], expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let error = personachat::import(&path, &ImportOptions::default(), &mut |_| Ok(())).unwrap_err();
    let message = error.to_string();
    assert!(!message.contains('\n'), "one line: {message}");
    let expected = format!("{}{expected}", path.display());
    assert!(message.starts_with(&expected), "{message:?} should start with {expected:?}");
}

#[test]
fn reads_dialogues_personas_and_silence() {
    let path = fixture("toy_both_original_no_cands.txt");
    let (conversations, report) = import(&path, &ImportOptions::default());
    assert_eq!(report.conversations, 3);
    assert_eq!(report.turns, 4 + 5 + 2);
    assert_eq!(report.bytes, std::fs::metadata(&path).unwrap().len());
    let ids: Vec<&str> = conversations.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "personachat:toy_both_original_no_cands:0",
            "personachat:toy_both_original_no_cands:1",
            "personachat:toy_both_original_no_cands:2"
        ]
    );

    let first = &conversations[0];
    assert_eq!(facts(first, "self"), ["i like to ski.", "my wife does not like me anymore."]);
    assert_eq!(facts(first, "partner"), ["i am a retired postman.", "i grow tomatoes ."]);
    assert_eq!(
        transcript(first),
        [
            "partner: hi , how are you doing today ?",
            "self: i am doing well , just back from skiing .",
            "partner: skiing sounds fun . i just water my tomatoes .",
            "self: do you sell them ?"
        ]
    );
    let roles: Vec<Role> = first.turns.iter().map(|turn| turn.role).collect();
    assert_eq!(roles, [Role::User, Role::Assistant, Role::User, Role::Assistant]);
    assert_eq!(first.participants[0].name, "partner");

    // __SILENCE__: the self side opens, no turn for the placeholder.
    let second = &conversations[1];
    assert_eq!(
        transcript(second),
        [
            "self: hello , anyone there ?",
            "partner: yes , sorry , my cats were fighting .",
            "self: how many cats do you have ?",
            "partner: three of them .",
            "self: that is a lot of cats !"
        ]
    );
    assert_eq!(second.participants[0].name, "self", "order of first appearance");
    assert_eq!(note(&report, "__SILENCE__ openings (self speaks first)"), 1);

    // The last dialogue of the file is kept.
    assert_eq!(conversations[2].turns.len(), 2);
    assert_eq!(facts(&conversations[2], "partner"), ["i work at a bank."]);
}

#[test]
fn drops_candidates_with_a_count_and_keeps_a_one_line_last_dialogue() {
    let path = fixture("toy_self_original.txt");
    let (conversations, report) = import(&path, &ImportOptions::default());
    assert_eq!(report.conversations, 2);
    let first = &conversations[0];
    assert_eq!(
        transcript(first),
        [
            "partner: hello , how is your day ?",
            "self: great , i spent it at the beach .",
            "partner: what do you drive ?",
            "self: a red truck ."
        ]
    );
    assert_eq!(facts(first, "self").len(), 2);
    assert!(first.participants.iter().all(|p| p.name == "self" || p.persona.is_none()));
    assert_eq!(note(&report, "lines with candidates"), 2);
    assert_eq!(note(&report, "candidates dropped"), 5);

    let last = &conversations[1];
    assert_eq!(last.id, "personachat:toy_self_original:1");
    assert_eq!(transcript(last), ["partner: hi there", "self: hi ! how are you ?"]);
    assert!(last.participants.iter().all(|p| p.persona.is_none()));
}

#[test]
fn a_folder_imports_every_text_file_in_name_order() {
    let (conversations, report) = import(&fixture(""), &ImportOptions::default());
    assert_eq!(report.conversations, 5);
    assert_eq!(conversations[0].id, "personachat:toy_both_original_no_cands:0");
    assert_eq!(conversations[4].id, "personachat:toy_self_original:1");
}

#[test]
fn malformed_lines_name_file_and_line() {
    check_error("a.txt", b"", ": empty file: no dialogues");
    check_error("a.txt", b"\n\n", ": empty file: no dialogues");
    check_error(
        "a.txt",
        b"1 your persona: i ski.\nhello\tthere\n",
        ":2: field `line number`: the line does not start",
    );
    check_error(
        "a.txt",
        b"1 your persona: i ski.\n2 hi\tho\n3 a\tb\n2 c\td\n",
        ":4: field `line number`: line number 2 goes back after 3",
    );
    check_error(
        "a.txt",
        b"2 hi\tho\n",
        ":1: field `line number`: the first dialogue starts at line number 2",
    );
    check_error(
        "a.txt",
        b"1 your persona: i ski.\n2 hello there\n",
        ":2: field `utterances`: expected `partner utterance<TAB>self utterance`",
    );
    check_error("a.txt", b"1 hi\tho\n2 caf\xe9\tbar\n", ":2: invalid UTF-8");
}

#[test]
fn keep_going_skips_bad_lines_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.txt");
    std::fs::write(&path, "1 hi\tho\n2 no tab here\n3 a\tb\n1 x\ty\n").unwrap();
    let options = ImportOptions { keep_going: true, ..ImportOptions::default() };
    let (conversations, report) = import(&path, &options);
    assert_eq!(conversations.len(), 2);
    assert_eq!(conversations[0].turns.len(), 4, "line 3 still belongs to the first dialogue");
    assert_eq!(report.skipped, 1);
    assert!(report.skipped_examples[0].contains("b.txt:2: field `utterances`"));
}

#[test]
fn real_validation_file_imports_every_dialogue_and_fact() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/personachat/valid_both_original_no_cands.txt");
    if !path.exists() {
        eprintln!("skipped: {} is not here", path.display());
        return;
    }
    // Expected counts come from the file itself, read independently of the importer.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut persona_lines = 0;
    let mut utterances = 0;
    for line in text.lines() {
        let content = line.split_once(' ').unwrap().1;
        if content.starts_with("your persona:") || content.starts_with("partner's persona:") {
            persona_lines += 1;
        } else {
            let fields: Vec<&str> = content.split('\t').collect();
            utterances += 2 - usize::from(fields[0] == "__SILENCE__");
        }
    }

    let (conversations, report) = import(&path, &ImportOptions::default());
    assert_eq!(report.conversations, 1000);
    assert_eq!(conversations.len(), 1000);
    assert_eq!(report.skipped, 0);
    let facts: usize = conversations
        .iter()
        .flat_map(|c| &c.participants)
        .filter_map(|p| p.persona.as_ref())
        .map(|persona| persona.facts.len())
        .sum();
    assert_eq!(facts, persona_lines);
    assert_eq!(persona_lines, 4483 + 4495);
    assert_eq!(report.turns as usize, utterances);
    assert_eq!(conversations.iter().map(|c| c.turns.len()).sum::<usize>(), utterances);
    assert_eq!(conversations[999].id, "personachat:valid_both_original_no_cands:999");
    assert!(!conversations[999].turns.is_empty(), "the last dialogue is kept whole");
}

#[test]
fn gaps_blank_lines_and_late_silence_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.txt");
    std::fs::write(&path, "1 a\tb\n3 c\td\n\n4 __SILENCE__\te\n5 f\t\n").unwrap();
    let (conversations, report) = import(&path, &ImportOptions::default());
    assert_eq!(
        transcript(&conversations[0]),
        ["partner: a", "self: b", "partner: c", "self: d", "self: e", "partner: f", "self: "]
    );
    assert_eq!(note(&report, "line numbers that skip forward (lines missing?)"), 1);
    assert_eq!(note(&report, "blank lines ignored"), 1);
    assert_eq!(note(&report, "__SILENCE__ partner utterances after the first dropped"), 1);
    assert_eq!(note(&report, "empty utterances kept"), 1);
}
