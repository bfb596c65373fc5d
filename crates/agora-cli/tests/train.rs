//! `agora train`, `agora runs` and `agora sweep` end to end on the tiny random GPT-2 of
//! agora-model's test data (with a character-level tokenizer): a run folder with config,
//! metrics, checkpoints and final weights, registered in the store; a run killed by the
//! operating system resumes to the same result; a sweep ranks its trials; bad data ends
//! in one clear line. On the default model (when fetched): the README's LoRA DPO example.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use support::{agora, command, fails, json, ok};

fn tiny_gpt2(dir: &Path) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let source = root.join("agora-model/test_data/models/gpt2");
    let tokenizer = root.join("agora-train/test_data/char_tokenizer");
    let target = dir.join("gpt2");
    std::fs::create_dir_all(&target).unwrap();
    for (from, file) in [
        (&source, "config.json"),
        (&source, "model.safetensors"),
        (&tokenizer, "tokenizer.json"),
        (&tokenizer, "tokenizer_config.json"),
    ] {
        std::fs::copy(from.join(file), target.join(file)).unwrap();
    }
    target
}

fn sft_data(dir: &Path) -> PathBuf {
    let path = dir.join("sft.jsonl");
    let records = [
        ("colour of grass:", " green"),
        ("colour of sky:", " blue"),
        ("opposite of up:", " down"),
        ("opposite of hot:", " cold"),
        ("a b c:", " d e f"),
    ];
    let text: String = records
        .iter()
        .map(|(prompt, completion)| {
            format!("{}\n", serde_json::json!({"prompt": prompt, "completion": completion}))
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn train_args<'a>(model: &'a str, data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "sft",
        "--model",
        model,
        "--data",
        data,
        "--threads",
        "1",
        "--set",
        "training.batch_size=2",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_run_writes_its_folder_registers_and_shows_its_curves() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("ws");
    let model = tiny_gpt2(dir.path());
    let data = sft_data(dir.path());
    let (model, data) = (model.display().to_string(), data.display().to_string());
    let summary = json(
        &workspace,
        &train_args(
            &model,
            &data,
            &["--steps", "4", "--learning-rate", "1e-3", "--set", "training.save_every=2"],
        ),
    );
    assert_eq!(summary["status"], "finished");
    assert_eq!(summary["steps"], 4);
    let id = summary["id"].as_str().unwrap().to_string();
    let run_dir = workspace.join("runs").join(&id);
    for file in [
        "config.json",
        "metrics.jsonl",
        "metrics.csv",
        "summary.json",
        "final/model.safetensors",
        "final/tokenizer.json",
    ] {
        assert!(run_dir.join(file).is_file(), "{file} missing");
    }
    let checkpoint = run_dir.join("checkpoints/step-000004");
    for file in ["model.safetensors", "optimizer.safetensors", "trainer_state.json"] {
        assert!(checkpoint.join(file).is_file(), "checkpoint {file} missing");
    }
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["optimizer"]["learning_rate"], 1e-3);
    assert_eq!(config["training"]["batch_size"], 2);

    let runs = json(&workspace, &["runs"]);
    assert_eq!(runs.as_array().unwrap().len(), 1);
    assert_eq!(runs[0]["status"], "finished");
    let shown = ok(&workspace, &["runs", "show", id.rsplit('-').next().unwrap()]);
    assert!(shown.contains("finished after 4/4 steps"), "{shown}");
    let svg = std::fs::read_to_string(run_dir.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("train loss"), "{svg}");

    // The tuned full model is a Hugging Face folder that generation loads.
    let generated = ok(
        &workspace,
        &[
            "generate",
            "--model",
            run_dir.join("final").to_str().unwrap(),
            "--raw",
            "-p",
            "a b",
            "--max-new-tokens",
            "3",
        ],
    );
    assert!(!generated.is_empty());
}

#[test]
fn a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("ws");
    let model = tiny_gpt2(dir.path());
    let data = sft_data(dir.path());
    let (model, data) = (model.display().to_string(), data.display().to_string());
    let extra = ["--steps", "6", "--set", "training.save_every=2", "--set", "schedule.kind=\"cosine\""];

    let straight = json(&workspace, &train_args(&model, &data, &extra));
    // Halted after step 3, as a crash between the checkpoints of steps 2 and 4 would.
    let mut halted = command(&workspace, &[train_args(&model, &data, &extra), vec!["--json"]].concat());
    let output = halted.env("AGORA_TRAIN_HALT_AFTER_STEP", "3").stderr(Stdio::null()).output().unwrap();
    assert!(output.status.success());
    let halted: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(halted["status"], "halted");
    let id = halted["id"].as_str().unwrap();
    let listed = json(&workspace, &["runs"]);
    assert!(listed.as_array().unwrap().iter().any(|run| run["id"] == id && run["status"] == "halted"));

    let resumed = json(&workspace, &["train", "sft", "--resume", id, "--threads", "1"]);
    assert_eq!(resumed["status"], "finished");
    assert_eq!(resumed["steps"], 6);
    let weights =
        |id: &str| std::fs::read(workspace.join("runs").join(id).join("final/model.safetensors")).unwrap();
    assert_eq!(weights(id), weights(straight["id"].as_str().unwrap()));
    let steps = |id: &str| -> Vec<u64> {
        std::fs::read_to_string(workspace.join("runs").join(id).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap()["step"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(steps(id), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_sweep_trains_each_trial_and_ranks_them() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("ws");
    let model = tiny_gpt2(dir.path());
    let data = sft_data(dir.path());
    let base = dir.path().join("base.toml");
    std::fs::write(
        &base,
        format!(
            "method = \"sft\"\nmodel = {:?}\n[data]\ntrain = {:?}\n[training]\nbatch_size = 2\nmax_steps = 3\n",
            model.display().to_string(),
            data.display().to_string()
        ),
    )
    .unwrap();
    let sweep = dir.path().join("sweep.json");
    std::fs::write(
        &sweep,
        r#"{"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
            "parameters": {"learning_rate": {"values": [1e-5, 3e-3]}, "lr_scheduler_type": {"values": ["constant"]}}}"#,
    )
    .unwrap();
    let table = json(
        &workspace,
        &["sweep", sweep.to_str().unwrap(), "--base", base.to_str().unwrap(), "--threads", "1"],
    );
    let trials = table["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2);
    assert_eq!(table["metric"], "loss");
    let first = trials[0]["value"].as_f64().unwrap();
    let second = trials[1]["value"].as_f64().unwrap();
    assert!(first <= second, "ranked by loss: {first} then {second}");
    let sweep_id = table["sweep"].as_str().unwrap();
    let runs = json(&workspace, &["runs", "--sweep", sweep_id]);
    assert_eq!(runs.as_array().unwrap().len(), 2);
    // Resuming the sweep trains nothing again.
    let again = json(
        &workspace,
        &[
            "sweep",
            sweep.to_str().unwrap(),
            "--base",
            base.to_str().unwrap(),
            "--resume",
            sweep_id,
            "--threads",
            "1",
        ],
    );
    assert_eq!(again["trials"].as_array().unwrap().len(), 2);
}

#[test]
fn bad_training_data_ends_in_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("ws");
    let model = tiny_gpt2(dir.path()).display().to_string();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let error = fails(&workspace, &train_args(&model, empty.to_str().unwrap(), &[]));
    assert!(error.contains("empty.jsonl"), "{error}");
    let wrong = dir.path().join("wrong.jsonl");
    std::fs::write(&wrong, "{\"question\": \"x\"}\n").unwrap();
    let error = fails(&workspace, &train_args(&model, wrong.to_str().unwrap(), &[]));
    assert!(error.contains("wrong.jsonl:1"), "{error}");
    let missing = fails(&workspace, &train_args(&model, "nope.jsonl", &[]));
    assert!(missing.contains("nope.jsonl"), "{missing}");
    let error =
        fails(&workspace, &train_args(&model, wrong.to_str().unwrap(), &["--set", "training.batch_size=0"]));
    assert!(error.contains("training.batch_size"), "{error}");
    // No run folder was made for any of these.
    assert!(
        !workspace.join("runs").exists() || std::fs::read_dir(workspace.join("runs")).unwrap().count() == 0
    );
}

/// The default model, when fetched (tests never download it).
fn default_model() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    path.is_file().then_some(path)
}

#[test]
fn lora_dpo_on_the_default_model_as_the_readme_shows() {
    let Some(model) = default_model() else {
        eprintln!("skipped: models/SmolLM2-135M-Instruct.Q4_1.gguf is not fetched");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("ws");
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/data");
    ok(&workspace, &["import", "cmv", examples.join("cmv_sample.jsonlist").to_str().unwrap()]);
    let out = dir.path().join("dpo");
    ok(&workspace, &["build", "dpo", "--corpus", "cmv", "--out", out.to_str().unwrap()]);
    let train = out.join("train.jsonl");
    let summary = json(
        &workspace,
        &[
            "train",
            "dpo",
            "--model",
            model.to_str().unwrap(),
            "--data",
            train.to_str().unwrap(),
            "--lora-rank",
            "4",
            "--steps",
            "2",
            "--batch-size",
            "1",
            "--max-length",
            "256",
            "--threads",
            "2",
        ],
    );
    assert_eq!(summary["steps"], 2, "{summary}");
    let id = summary["id"].as_str().unwrap();
    let side_by_side = json(
        &workspace,
        &[
            "runs",
            "generate",
            id,
            "-p",
            "Should cities ban cars?",
            "--max-new-tokens",
            "8",
            "--models-dir",
            "unused",
        ],
    );
    let replies = side_by_side["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 1);
    assert!(replies[0]["base"].is_string() && replies[0]["tuned"].is_string());
    let _ = agora(&workspace, &["runs"]);
}

#[test]
fn personagpt_layout_grows_the_vocabulary_and_trains_on_a_persona_chat_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("ws");
    let model = tiny_gpt2(dir.path()).display().to_string();
    // Short lines: the tiny GPT-2 has 64 positions and the tokenizer reads characters.
    let corpus = dir.path().join("personachat.txt");
    std::fs::write(
        &corpus,
        "1 your persona: i fish.\n2 hi\they\n3 fish ?\tyes\n1 your persona: i sing.\n2 yo\thi\n3 sing ?\tla\n",
    )
    .unwrap();
    ok(&workspace, &["import", "personachat", corpus.to_str().unwrap(), "--name", "pc"]);
    let summary = json(
        &workspace,
        &[
            "train",
            "sft",
            "--layout",
            "personagpt",
            "--data",
            "pc",
            "--model",
            &model,
            "--steps",
            "2",
            "--max-length",
            "64",
            "--threads",
            "1",
        ],
    );
    assert_eq!(summary["status"], "finished", "{summary}");
    let final_dir = workspace.join("runs").join(summary["id"].as_str().unwrap()).join("final");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(final_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vocab_size"], 134, "128 + PersonaGPT's 6 special tokens");
    let tokenizer = std::fs::read_to_string(final_dir.join("tokenizer.json")).unwrap();
    assert!(tokenizer.contains("<|p2|>") && tokenizer.contains("<|sep|>"));
    let error = fails(
        &workspace,
        &["train", "sft", "--layout", "personagpt", "--data", "pc", "--model", &model, "--lora-rank", "2"],
    );
    assert!(error.contains("full fine-tuning"), "{error}");
}
