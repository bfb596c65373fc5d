//! End-to-end tests of the `agora` binary over temporary workspaces: every command, the
//! one-line errors for malformed input, idempotent imports and the quickstart.

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{agora, fails, json, ok};

mod support;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn import_is_idempotent_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    ok(ws, &["init"]);
    let cmv = examples().join("cmv_sample.jsonlist");
    let first = json(ws, &["import", "cmv", cmv.to_str().unwrap()]);
    assert_eq!(first["conversations"], 3);
    assert_eq!(first["store"]["added"], 3);
    let again = json(ws, &["import", "cmv", cmv.to_str().unwrap()]);
    assert_eq!(again["store"]["added"], 0);
    assert_eq!(again["store"]["unchanged"], 3);
    let corpora = json(ws, &["corpora"]);
    assert_eq!(corpora["corpora"][0]["conversations"], 3);
    assert_eq!(corpora["corpora"][0]["imports"], 2);
    let stats = json(ws, &["stats", "--corpus", "cmv"]);
    assert_eq!(stats["conversations"], 3);
    assert_eq!(stats["deltas"], 3);
    assert_eq!(stats["deltas_confirmed"], 2);
    let shown = ok(ws, &["show", "cmv:q1"]);
    assert!(shown.contains("delta from maple_reader, confirmed"), "{shown}");
    assert!(!shown.contains("Hello, users of CMV"), "the footnote is removed:\n{shown}");
}

#[test]
fn every_example_corpus_imports_builds_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let out = dir.path().join("out");
    let summary = ok(&ws, &["quickstart", "--skip-model", "--examples", examples().to_str().unwrap()]);
    assert!(summary.contains("imported esconv: 2 conversations"), "{summary}");
    assert!(summary.contains("imported personachat: 3 conversations"), "{summary}");
    for name in ["cmv-sft", "cmv-dpo", "cmv-kto", "esconv-sft", "personachat-sft"] {
        let folder = ws.join("exports").join(name);
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("build.json")).unwrap()).unwrap();
        let records: u64 = ["train", "validation", "test"]
            .iter()
            .map(|split| manifest["records"][split].as_u64().unwrap())
            .sum();
        assert!(records > 0, "{name} built nothing: {manifest}");
    }
    assert!(ws.join("exports/cmv-convokit/utterances.jsonl").is_file());
    assert!(ws.join("exports/personachat.parquet").is_file());

    // Splits are grouped: one conversation's examples never land in two splits.
    let build = json(
        &ws,
        &["build", "dpo", "--corpus", "cmv", "--out", out.to_str().unwrap(), "--split", "0.34,0.33,0.33"],
    );
    assert_eq!(build["kind"], "dpo");
    let mut seen = std::collections::HashMap::new();
    for split in ["train", "validation", "test"] {
        for line in std::fs::read_to_string(out.join(format!("{split}.jsonl"))).unwrap().lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            let prompt = record["prompt"].to_string();
            let previous = seen.insert(prompt, split);
            assert!(previous.is_none() || previous == Some(split), "a prompt leaked between splits");
        }
    }
    let jsonl = dir.path().join("esconv.jsonl");
    ok(&ws, &["export", "jsonl", "--corpus", "esconv", "--out", jsonl.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&jsonl).unwrap().lines().count(), 2);
    let error = fails(&ws, &["build", "dpo", "--corpus", "esconv", "--out", out.to_str().unwrap()]);
    assert!(error.contains("no dpo builder for esconv corpora"), "{error}");
    let error = fails(
        &ws,
        &["build", "sft", "--corpus", "cmv", "--out", out.to_str().unwrap(), "--split", "0.5,0.5"],
    );
    assert!(error.contains("--split"), "{error}");
}

#[test]
fn malformed_inputs_fail_with_one_line_naming_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "cmv",
            write(ws, "truncated.jsonlist", b"{\"id\": \"x1\", \"title\": \"t\", \"comments\": [\n"),
            "truncated.jsonlist:1",
        ),
        ("cmv", write(ws, "empty.jsonlist", b""), "empty.jsonlist"),
        (
            "personachat",
            write(ws, "bad_utf8.txt", b"1 your persona: i like tea.\n2 hello \xff there\tyes\n"),
            "bad_utf8.txt:2",
        ),
        (
            "esconv",
            write(
                ws,
                "missing.json",
                br#"[{"situation": "s", "dialog": [{"speaker": "seeker", "annotation": {}}]}]"#,
            ),
            "content",
        ),
        (
            "esconv",
            write(
                ws,
                "strategy.json",
                br#"[{"situation": "s", "dialog": [{"speaker": "supporter", "annotation": {"strategy": "Sarcasm"}, "content": "hm"}]}]"#,
            ),
            "Sarcasm",
        ),
        ("esconv", write(ws, "empty.json", b""), "empty.json"),
    ];
    for (format, path, expected) in cases {
        let error = fails(ws, &["import", format, path.to_str().unwrap()]);
        assert!(error.contains(expected), "{format} {}: {error}", path.display());
    }
    // Nothing half-imported is left behind.
    let corpora = json(ws, &["corpora"]);
    assert_eq!(corpora["corpora"].as_array().map(Vec::len), Some(0), "{corpora}");
}

#[test]
fn keep_going_skips_and_counts_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let good = std::fs::read_to_string(examples().join("cmv_sample.jsonlist")).unwrap();
    let mixed = format!("{good}{{\"id\": \"broken\"\n");
    let path = write(ws, "mixed.jsonlist", mixed.as_bytes());
    fails(ws, &["import", "cmv", path.to_str().unwrap()]);
    let report = json(ws, &["import", "cmv", path.to_str().unwrap(), "--keep-going"]);
    assert_eq!(report["conversations"], 3);
    assert_eq!(report["skipped"], 1);
    assert!(report["skipped_examples"][0].as_str().unwrap().contains("mixed.jsonlist:4"), "{report}");
}

#[test]
fn sdf_collections_import() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let personas = examples().join("sdf/personas");
    let topics = examples().join("sdf/topics");
    ok(ws, &["import", "sdf-personas", personas.to_str().unwrap()]);
    ok(ws, &["import", "sdf-texts", topics.to_str().unwrap()]);
    let corpora = json(ws, &["corpora"]);
    let collections = corpora["collections"].as_array().unwrap();
    assert_eq!(collections.len(), 2, "{corpora}");
    assert_eq!(collections[0]["count"], 4);
    assert_eq!(collections[1]["count"], 2);
}

#[test]
fn a_missing_workspace_or_conversation_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let error = fails(&dir.path().join("nowhere"), &["corpora"]);
    assert!(error.contains("no workspace store here"), "{error}");
    ok(dir.path(), &["init"]);
    let error = fails(dir.path(), &["show", "cmv:nope"]);
    assert!(error.contains("no conversation `cmv:nope`"), "{error}");
}

#[test]
fn real_shared_files_import_when_present() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if !shared.is_dir() {
        eprintln!("skipping: {} is absent", shared.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let personachat = shared.join("personachat/valid_both_original_no_cands.txt");
    let report = json(ws, &["import", "personachat", personachat.to_str().unwrap()]);
    assert_eq!(report["conversations"], 1000);
    for folder in
        ["sdf/inputs-2024/personas", "sdf/annotation-inputs-2024/personas", "sdf/inputs-2026/personas"]
    {
        ok(ws, &["import", "sdf-personas", shared.join(folder).to_str().unwrap(), "--name", folder]);
    }
    for folder in
        ["sdf/inputs-2024/topics", "sdf/inputs-2024/user_instructions", "sdf/inputs-2024/mod_instructions"]
    {
        ok(ws, &["import", "sdf-texts", shared.join(folder).to_str().unwrap(), "--name", folder]);
    }
    let out = dir.path().join("pc");
    let build = json(ws, &["build", "sft", "--corpus", "personachat", "--out", out.to_str().unwrap()]);
    assert!(build["examples"].as_u64().unwrap() > 1000, "{build}");
}

/// The default model, when it has been fetched into the repository's models folder.
fn default_model() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    path.is_file().then_some(path)
}

#[test]
fn generate_and_model_info_on_the_default_model_when_present() {
    let Some(model) = default_model() else {
        eprintln!("skipping: the default model is not in models/ (agora model fetch)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = model.to_str().unwrap();
    let info = json(dir.path(), &["model", "info", model]);
    assert_eq!(info["architecture"], "llama");
    assert_eq!(info["layers"], 30);
    assert_eq!(info["vocab_size"], 49152);
    let args = ["generate", "-m", model, "-p", "Say hello.", "-p", "Name a colour.", "--max-new-tokens", "8"];
    let first = json(dir.path(), &args);
    let again = json(dir.path(), &args);
    assert_eq!(first["outputs"], again["outputs"], "the same seed gives the same text");
    assert_eq!(first["outputs"].as_array().map(Vec::len), Some(2));
    assert!(first["outputs"][0]["generated_tokens"].as_u64().unwrap() > 0);
    let error = fails(dir.path(), &["generate", "-m", "/nonexistent/model.gguf", "-p", "hi"]);
    assert!(error.contains("/nonexistent/model.gguf"), "{error}");
}

#[test]
fn generate_asks_any_backend_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path();
    let output = json(
        workspace,
        &[
            "generate",
            "--backend",
            "fake:echo",
            "-p",
            "one two three",
            "-p",
            "four five",
            "--max-new-tokens",
            "2",
        ],
    );
    assert_eq!(output["backend"]["spec"], "fake:echo");
    assert_eq!(output["backend"]["model"], "fake-echo");
    let outputs = output["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    assert_eq!(outputs[0]["text"], "one two");
    assert_eq!(outputs[0]["finish_reason"], "length");
    assert_eq!(outputs[1]["text"], "four five");
    assert_eq!(outputs[1]["finish_reason"], "stop");
    assert_eq!(output["sampling"]["max_tokens"], 2);

    // A bad spec is a usage error from the argument parser, naming what is expected.
    let output = agora(workspace, &["generate", "--backend", "openai:http://127.0.0.1:1/v1", "-p", "x"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("expected openai:URL#MODEL"), "{stderr}");
}
