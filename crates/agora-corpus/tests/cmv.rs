//! End-to-end tests of the r/changemyview importer over the fixtures in test_data/cmv/,
//! and its throughput benchmark (run with AGORA_BENCH=1, in release mode).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use agora_core::Conversation;
use agora_corpus::{CorpusError, ImportOptions, ImportReport, Location, cmv, input};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/cmv").join(name)
}

fn import_all(
    path: &Path,
    options: &ImportOptions,
) -> Result<(Vec<Conversation>, ImportReport), CorpusError> {
    let mut conversations = Vec::new();
    let report = cmv::import(path, options, &mut |conversation| {
        conversations.push(conversation);
        Ok(())
    })?;
    Ok((conversations, report))
}

/// One line per turn: `index original_id ^reply_to speaker role [gives] [delta ...]`.
fn render(conversation: &Conversation) -> String {
    let mut lines = Vec::new();
    for turn in &conversation.turns {
        let mut line = format!(
            "{} {} ^{} {} {}",
            turn.index,
            turn.original_id.as_deref().unwrap_or("-"),
            turn.reply_to.map_or("-".to_string(), |parent| parent.to_string()),
            turn.speaker,
            turn.role.as_str(),
        );
        if turn.labels.gives_delta {
            line.push_str(" gives");
        }
        if let Some(delta) = &turn.labels.delta {
            line.push_str(&format!(" delta {}->{} in {}", delta.giver, delta.receiver, delta.given_in));
            if delta.confirmed {
                line.push_str(" confirmed");
            }
            if delta.by_op {
                line.push_str(" op");
            }
        }
        lines.push(line);
    }
    lines.join("\n")
}

fn check_tree(conversation: &Conversation, expected: &str) {
    let expected: Vec<&str> = expected.trim().lines().map(str::trim).collect();
    assert_eq!(render(conversation), expected.join("\n"), "conversation {}", conversation.id);
}

fn check_error(name: &str, expected: &str) {
    let error = import_all(&fixture(name), &ImportOptions::default()).unwrap_err().to_string();
    let path = fixture(name);
    assert_eq!(error, format!("{}{expected}", path.display()), "{name}");
    assert!(!error.contains('\n'), "one line: {error}");
}

#[test]
fn threads_rebuild_the_reply_tree_and_deltas() {
    let (conversations, report) =
        import_all(&fixture("threads.jsonlist"), &ImportOptions::default()).unwrap();
    assert_eq!(conversations.len(), 3);
    let first = &conversations[0];
    assert_eq!(first.id, "cmv:3abcde");
    assert_eq!(first.source.corpus, "cmv");
    assert_eq!(first.source.original_id, "3abcde");
    // Depth-first, siblings in file order; ca8 comes before its parent ca9 in the file,
    // ca11's duplicate is dropped, ca12's parent is missing so it answers the post.
    check_tree(
        first,
        "
        0 3abcde ^- alice_op user
        1 ca1 ^0 bob assistant delta alice_op->bob in 2 confirmed op
        2 ca2 ^1 alice_op user gives
        3 ca3 ^2 DeltaBot moderator
        4 ca9 ^1 erin assistant delta alice_op->erin in 5 confirmed op
        5 ca8 ^4 alice_op user gives
        6 ca10 ^5 DeltaBot moderator
        7 ca11 ^1 [deleted] assistant
        8 ca4 ^0 carol assistant delta alice_op->carol in 10 op
        9 ca5 ^8 dave assistant
        10 ca6 ^8 alice_op user gives
        11 ca14 ^8 carol assistant
        12 ca12 ^0 gina assistant delta dave->gina in 13
        13 ca13 ^12 dave assistant gives
        ",
    );
    // The footnote is gone, quotes stay lines of their own, trailing spaces go.
    assert_eq!(
        first.turns[0].text,
        "Carbon pricing is efficient.\n\n> A tax on carbon\n> is a tax on pollution.\n\nChange my view!"
    );
    assert_eq!(
        first.turns[1].text,
        "I think the tax is regressive.\n\n> quoted line one\n> quoted line two\n\nMy answer: it hurts the poor & the young."
    );
    assert_eq!(first.turns[10].text, "You changed my view \u{2206} on the politics.");
    assert_eq!(first.turns[12].text, "My parent was removed <sad>.");
    assert_eq!(first.turns[7].text, "[deleted]");
    assert_eq!(first.turns[7].labels.extra.get("deleted"), Some(&serde_json::json!(true)));
    assert_eq!(first.turns[7].labels.extra.get("score"), None, "a null score is left out");
    assert_eq!(first.turns[1].labels.extra.get("score"), Some(&serde_json::json!(25)));
    assert_eq!(
        serde_json::Value::Object(first.meta.clone()),
        serde_json::json!({
            "title": "CMV: Carbon taxes & dividends are the best climate policy",
            "created_utc": 1420070400,
            "url": "https://www.reddit.com/r/changemyview/comments/3abcde/cmv_carbon_taxes/",
            "score": 42,
        })
    );
    let participants: Vec<(&str, &str)> =
        first.participants.iter().map(|p| (p.name.as_str(), p.role.as_str())).collect();
    assert_eq!(
        participants,
        [
            ("alice_op", "user"),
            ("bob", "assistant"),
            ("DeltaBot", "moderator"),
            ("erin", "assistant"),
            ("carol", "assistant"),
            ("dave", "assistant"),
            ("gina", "assistant"),
        ]
    );

    // A deleted OP is nobody's namesake; DeltaBot naming nobody above is counted.
    let second = &conversations[1];
    check_tree(
        second,
        "
        0 3bcdef ^- [deleted] user
        1 cb1 ^0 [deleted] assistant
        2 cb2 ^1 DeltaBot moderator
        ",
    );
    assert_eq!(second.turns[0].text, "Some view here.");
    assert_eq!(second.meta.get("created_utc"), Some(&serde_json::json!(1420080400)));

    // A link post without comments: one turn; a string score becomes a number.
    let third = &conversations[2];
    check_tree(third, "0 3cdefg ^- harry user");
    assert_eq!(third.turns[0].text, "");
    assert_eq!(third.meta.get("score"), Some(&serde_json::json!(7)));

    assert_eq!(report.conversations, 3);
    assert_eq!(report.turns, 14 + 3 + 1);
    assert_eq!(report.skipped, 0);
    let notes: Vec<(&str, u64)> = report.notes.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        notes,
        [
            ("CMV moderator footnotes removed", 2),
            ("DeltaBot confirmations with no matching comment", 1),
            ("blank lines skipped", 1),
            ("comments whose parent is missing, attached to the post", 1),
            ("deleted comments", 2),
            ("delta signs replying to the post or to one's own comment (not awarded)", 1),
            ("deltas by OP", 3),
            ("deltas confirmed by DeltaBot", 2),
            ("deltas found", 4),
            ("duplicate comment ids (first kept)", 1),
        ]
    );
}

#[test]
fn gzip_and_bzip2_copies_import_the_same() {
    let text = std::fs::read(fixture("threads.jsonlist")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("threads.jsonlist.gz");
    let mut encoder = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
    encoder.write_all(&text).unwrap();
    encoder.finish().unwrap();
    let bz = dir.path().join("threads.jsonlist.bz2");
    let mut encoder = bzip2::write::BzEncoder::new(File::create(&bz).unwrap(), Default::default());
    encoder.write_all(&text).unwrap();
    encoder.finish().unwrap();

    let (plain, plain_report) = import_all(&fixture("threads.jsonlist"), &ImportOptions::default()).unwrap();
    for path in [&gz, &bz] {
        let (compressed, report) = import_all(path, &ImportOptions::default()).unwrap();
        assert_eq!(compressed, plain, "{}", path.display());
        assert_eq!(report.notes, plain_report.notes);
        assert_eq!(report.bytes, text.len() as u64, "bytes count decompressed input");
    }
    // A folder imports every CMV file in it, in name order.
    let (all, report) = import_all(dir.path(), &ImportOptions::default()).unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(report.notes.get("deltas found"), Some(&8));
}

#[test]
fn malformed_inputs_name_file_line_and_field() {
    check_error("truncated.jsonlist", ":2: invalid JSON: EOF while parsing a string at column 60");
    check_error("invalid_utf8.jsonlist", ":2: invalid UTF-8 at byte 42");
    check_error(
        "missing_parent.jsonlist",
        ":2: submission 3mp: field `comments[1].parent_id`: missing required field",
    );
    check_error(
        "missing_comment_id.jsonlist",
        ":1: submission 3mc: field `comments[0].id`: missing required field",
    );
    check_error("missing_id.jsonlist", ":1: field `id`: missing required field");
    check_error("empty.jsonlist", ": empty file: no submissions");
    check_error("blank.jsonlist", ": empty file: no submissions");
}

#[test]
fn wrong_types_are_reported_with_their_column() {
    let error = cmv::parse_submission(
        r#"{"id": "3x", "comments": [{"id": 5, "parent_id": "t3_3x"}]}"#,
        &Location::line(Path::new("x.jsonlist"), 7),
        &mut ImportReport::default(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        error,
        "x.jsonlist:7: unexpected JSON value: invalid type: integer `5`, expected a string at column 34"
    );
}

#[test]
fn keep_going_skips_and_counts_bad_lines() {
    let options = ImportOptions { keep_going: true, ..ImportOptions::default() };
    for name in ["truncated.jsonlist", "invalid_utf8.jsonlist", "missing_parent.jsonlist"] {
        let (conversations, report) = import_all(&fixture(name), &options).unwrap();
        let expected = if name == "missing_parent.jsonlist" { 1 } else { 2 };
        assert_eq!(conversations.len(), expected, "{name}");
        assert_eq!(report.skipped, 1, "{name}");
        assert!(
            report.skipped_examples[0].contains(&format!("{name}:2: ")),
            "{name}: {:?}",
            report.skipped_examples
        );
    }
}

#[test]
fn sink_errors_stop_the_import() {
    let error = cmv::import(&fixture("threads.jsonlist"), &ImportOptions::default(), &mut |_| {
        Err(CorpusError::Sink("store is full".into()))
    })
    .unwrap_err();
    assert_eq!(error.to_string(), "store is full");
}

#[test]
fn synthetic_corpus_is_deterministic_and_realistic() {
    let mut first = Vec::new();
    let written = cmv::write_synthetic(&mut first, 400_000, 7).unwrap();
    assert_eq!(written, first.len() as u64);
    assert!(written >= 400_000);
    let mut again = Vec::new();
    cmv::write_synthetic(&mut again, 400_000, 7).unwrap();
    assert!(first == again, "same seed, same bytes");
    let mut other = Vec::new();
    cmv::write_synthetic(&mut other, 400_000, 8).unwrap();
    assert!(first != other, "another seed, other bytes");

    let text = String::from_utf8(first).unwrap();
    let mut report = ImportReport::default();
    let location = Location::file(Path::new("synthetic.jsonlist"));
    let mut listing_replies = 0;
    for line in text.lines() {
        let conversation = cmv::parse_submission(line, &location, &mut report).unwrap();
        assert!((41..=200).contains(&conversation.turns.len()), "{}", conversation.turns.len());
        for turn in &conversation.turns[1..] {
            let parent = turn.reply_to.unwrap();
            assert!(parent < turn.index, "a parent precedes its replies");
        }
        listing_replies += line.matches(r#""replies":{"kind":"Listing""#).count();
    }
    assert!(listing_replies > 0);
    for note in [
        "deltas found",
        "deltas confirmed by DeltaBot",
        "deltas by OP",
        "CMV moderator footnotes removed",
        "deleted comments",
        "comments whose parent is missing, attached to the post",
    ] {
        assert!(report.notes.get(note).is_some_and(|&count| count > 0), "{note}: {report}");
    }
    // Every DeltaBot confirmation written finds its comment.
    assert_eq!(report.notes.get("DeltaBot confirmations with no matching comment"), None, "{report}");
    assert_eq!(report.notes.get("deltas found only through DeltaBot's confirmation"), None, "{report}");
}

/// Throughput of parse + tree rebuild + delta detection on one core. Slow (it writes
/// ~200 MB), so it runs only with AGORA_BENCH=1 (size in MB from AGORA_BENCH_MB):
/// `AGORA_BENCH=1 cargo test --release -p agora-corpus cmv_throughput -- --nocapture`
#[test]
fn cmv_throughput() {
    if std::env::var_os("AGORA_BENCH").is_none() {
        eprintln!("cmv_throughput: set AGORA_BENCH=1 to run (in release mode)");
        return;
    }
    let megabytes: u64 = std::env::var("AGORA_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synthetic.jsonlist");
    let started = Instant::now();
    let mut out = BufWriter::new(File::create(&path).unwrap());
    let written = cmv::write_synthetic(&mut out, megabytes * 1_000_000, 2016).unwrap();
    drop(out);
    eprintln!("generated {:.1} MB in {:.2?}", written as f64 / 1e6, started.elapsed());

    // Parsing alone, over lines already in memory.
    let text = input::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let location = Location::file(&path);
    let mut report = ImportReport::default();
    let mut turns = 0usize;
    let started = Instant::now();
    for line in &lines {
        turns += cmv::parse_submission(line, &location, &mut report).unwrap().turns.len();
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "parse_submission: {} submissions, {turns} turns, {:.1} MB in {seconds:.2} s = {:.0} MB/s",
        lines.len(),
        written as f64 / 1e6,
        written as f64 / 1e6 / seconds
    );
    drop(lines);
    drop(text);

    // The whole import, reading the file line by line.
    let started = Instant::now();
    let mut conversations = 0;
    let report = cmv::import(&path, &ImportOptions::default(), &mut |_| {
        conversations += 1;
        Ok(())
    })
    .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "import: {conversations} conversations, {:.0} MB/s\n{report}",
        report.bytes as f64 / 1e6 / seconds
    );
}
