//! End-to-end tests of experiments on the fake backend: the example experiment run,
//! reported and exported; `--max-units` interruptions and SIGKILL at random moments, each
//! resumed to exactly the units of an uninterrupted run; the real SDF inputs in
//! ../shared/data planned and run without edits (when that folder exists); bad files.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{agora, command, fails, json, ok};

mod support;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn quickstart_file() -> PathBuf {
    repo().join("examples/experiments/quickstart.toml")
}

fn path(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Every exported table of an experiment, as text (the comparison of two runs).
fn exported(workspace: &Path, experiment: &str) -> Vec<(String, String)> {
    let out = workspace.join(format!("export-{}", std::process::id()));
    ok(workspace, &["experiment", "export", experiment, "--format", "jsonl", "--out", path(&out)]);
    let mut files: Vec<(String, String)> = std::fs::read_dir(&out)
        .unwrap()
        .map(|entry| {
            let file = entry.unwrap().path();
            (
                file.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&file).unwrap(),
            )
        })
        .collect();
    files.sort();
    std::fs::remove_dir_all(&out).unwrap();
    files
}

#[test]
fn the_example_experiment_runs_reports_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let file = quickstart_file();
    let plans = json(ws, &["experiment", "plan", path(&file)]);
    let plans = plans.as_array().unwrap();
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0]["users"].as_array().unwrap().len(), 4);
    assert_eq!(plans[0]["moderator"]["name"], "moderator");

    let summary = ok(ws, &["experiment", "run", path(&file), "--backend", "fake:seeded"]);
    assert!(summary.contains("quickstart/simulate:"), "{summary}");
    assert!(summary.contains("quickstart/annotate:"), "{summary}");
    assert!(summary.contains("quickstart/judge:"), "{summary}");

    let report = json(ws, &["report", "quickstart"]);
    let stages: Vec<&str> =
        report["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["simulate", "annotate", "judge"]);
    let simulate = &report["stages"][0];
    // 6 user turns; the moderator after every 2nd non-empty one.
    assert!(simulate["turns"].as_u64().unwrap() >= 6, "{simulate}");
    assert_eq!(simulate["user_turns"], 6);
    let annotate = &report["stages"][1];
    // The fake model never writes "Toxicity=<n>": every label is unparsed, kept and counted.
    assert_eq!(annotate["labels"], annotate["unparsed"]);
    assert!(annotate["labels"].as_u64().unwrap() >= 2 * 7);
    let text = ok(ws, &["report", path(&file)]);
    assert!(text.contains("Krippendorff's alpha"), "{text}");

    // The discussion is a corpus like any other.
    let shown = ok(ws, &["show", "sim-quickstart:d0000"]);
    assert!(shown.contains("moderator"), "{shown}");

    for format in ["jsonl", "csv", "parquet"] {
        let out = ws.join(format!("out-{format}"));
        let files =
            json(ws, &["experiment", "export", "quickstart", "--format", format, "--out", path(&out)]);
        assert_eq!(files.as_array().unwrap().len(), 3, "{files}");
        for table in ["turns", "annotations", "judgements"] {
            assert!(out.join(format!("{table}.{format}")).is_file(), "{table}.{format}");
        }
    }
    let csv = std::fs::read_to_string(ws.join("out-csv/turns.csv")).unwrap();
    assert!(csv.starts_with("discussion,turn,speaker,role,text,empty,"), "{csv}");

    // The framework's own JSON, read back by agora's SDF importer.
    let sdf = ws.join("out-sdf");
    ok(ws, &["experiment", "export", "quickstart", "--format", "sdf", "--out", path(&sdf)]);
    let imported = json(ws, &["import", "sdf", path(&sdf.join("discussions")), "--name", "roundtrip"]);
    assert_eq!(imported["conversations"], 1);
    assert_eq!(
        imported["turns"].as_u64().unwrap(),
        simulate["turns"].as_u64().unwrap() + 1,
        "plus the opening post"
    );

    // Running again does nothing new.
    let again = ok(ws, &["experiment", "run", path(&file), "--backend", "fake:seeded"]);
    assert!(again.contains("quickstart/simulate: 0 new"), "{again}");
    assert!(again.contains("quickstart/judge: 0 new"), "{again}");
}

#[test]
fn interrupted_at_every_unit_boundary_the_next_run_resumes_to_the_same_result() {
    let reference = tempfile::tempdir().unwrap();
    let file = quickstart_file();
    ok(reference.path(), &["experiment", "run", path(&file), "--backend", "fake:seeded"]);
    let expected = exported(reference.path(), "quickstart");

    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs < 200, "the experiment never completed");
        // One unit per run: every unit boundary of every stage is an interruption.
        let out = ok(ws, &["experiment", "run", path(&file), "--backend", "fake:seeded", "--max-units", "1"]);
        if !out.contains("incomplete") && out.contains("quickstart/judge:") {
            break;
        }
    }
    assert!(runs > 30, "the experiment should take one run per unit, took {runs}");
    assert_eq!(exported(ws, "quickstart"), expected);
}

/// A changed experiment (here: another backend) is refused rather than mixed in.
#[test]
fn resuming_with_another_backend_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let file = quickstart_file();
    ok(ws, &["simulate", path(&file), "--backend", "fake:seeded", "--max-units", "2"]);
    let error = fails(ws, &["simulate", path(&file), "--backend", "fake:echo"]);
    assert!(error.contains("quickstart/simulate") && error.contains("different configuration"), "{error}");
}

#[test]
fn bad_experiment_files_get_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let write = |name: &str, text: &str| {
        let file = ws.join(name);
        std::fs::write(&file, text).unwrap();
        file
    };
    let unknown = write(
        "unknown.toml",
        "name = \"x\"\ncolour = \"red\"\n[judge]\nrubric = { type = \"likert\" }\ntarget = { type = \"turns\" }\n",
    );
    let error = fails(ws, &["experiment", "run", path(&unknown), "--backend", "fake:seeded"]);
    assert!(error.contains("unknown.toml") && error.contains("colour"), "{error}");

    let empty = write("empty.toml", "name = \"x\"\n");
    let error = fails(ws, &["experiment", "run", path(&empty)]);
    assert!(error.contains("nothing to run"), "{error}");

    let missing = write(
        "missing.toml",
        "name = \"x\"\n[discussions]\npersonas = \"no/such/folder\"\ntopics = \"no/such/topics\"\n",
    );
    let error = fails(ws, &["experiment", "plan", path(&missing)]);
    assert!(error.contains("discussions.personas") && error.contains("no/such/folder"), "{error}");

    let policy = write(
        "policy.toml",
        "name = \"x\"\n[discussions]\npersonas = \"p\"\ntopics = \"t\"\nturn_policy = { type = \"respond_back\", probability = 2.0 }\n",
    );
    let error = fails(ws, &["experiment", "plan", path(&policy)]);
    assert!(error.contains("turn_policy") && error.contains("probability"), "{error}");

    let error = fails(ws, &["simulate", path(&quickstart_file()), "--backend", "telepathy"]);
    assert!(error.contains("telepathy"), "{error}");
    let error = fails(ws, &["report", "never-ran"]);
    assert!(error.contains("never-ran"), "{error}");
}

/// A bigger experiment for the crash test: 24 discussions of 30 turns (plus the
/// moderator's) between the example personas.
fn crash_experiment(dir: &Path) -> PathBuf {
    let data = repo().join("examples/data/sdf");
    let file = dir.join("crash.toml");
    let text = format!(
        "name = \"crash\"\nseed = 9\n[sampling]\nmax_tokens = 24\n[discussions]\npersonas = \"{}\"\ntopics = \"{}\"\nuser_instructions = \"{}\"\nusers = 3\nrepeats = 12\nturns = 30\n[discussions.moderator]\ninstructions = \"{}\"\n",
        path(&data.join("personas")),
        path(&data.join("topics")),
        path(&data.join("user_instructions")),
        path(&data.join("mod_instructions")),
    );
    std::fs::write(&file, text).unwrap();
    file
}

fn unit_count(workspace: &Path, experiment: &str) -> u64 {
    let report = agora(workspace, &["report", experiment, "--json"]);
    if !report.status.success() {
        return 0;
    }
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    report["stages"][0]["turns"].as_u64().unwrap_or(0)
}

/// Rows in the store's turns table, read directly (a quick poll while a run writes);
/// 0 while the store does not exist yet or is busy.
fn stored_turns(workspace: &Path) -> u64 {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    rusqlite::Connection::open_with_flags(workspace.join("agora.sqlite"), flags)
        .and_then(|db| db.query_row("SELECT count(*) FROM turns", [], |row| row.get(0)))
        .unwrap_or(0)
}

/// `agora simulate` killed with SIGKILL at several random moments and started again ends
/// with exactly the turns of an uninterrupted run: none lost, none twice.
#[test]
fn simulate_survives_sigkill_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let file = crash_experiment(dir.path());
    let reference = dir.path().join("reference");
    let started = Instant::now();
    ok(&reference, &["simulate", path(&file), "--backend", "fake:seeded", "--concurrency", "4"]);
    let full_run = started.elapsed();
    let expected = exported(&reference, "crash");
    let expected_turns = unit_count(&reference, "crash");
    let total_turns = stored_turns(&reference);

    let ws = dir.path().join("killed");
    // Each kill lands once the store holds a drawn share of the turns still missing, so
    // the kills interrupt real work however fast the machine is (a resumed run has less
    // left to do than the first, so moments drawn as times would miss).
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut interrupted = 0;
    for _ in 0..6 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let fraction = 0.05 + (state % 1000) as f64 / 1000.0 * 0.3;
        let before = stored_turns(&ws);
        let target = before + ((total_turns - before) as f64 * fraction).ceil() as u64;
        let mut child =
            command(&ws, &["simulate", path(&file), "--backend", "fake:seeded", "--concurrency", "4"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
        let deadline = Instant::now() + full_run * 20 + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none()
            && unit_count(&ws, "crash") < target
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        let recorded = unit_count(&ws, "crash");
        if !status.success() && recorded < expected_turns {
            interrupted += 1;
        }
    }
    assert!(interrupted >= 2, "only {interrupted} of 6 kills interrupted a run (full run took {full_run:?})");
    ok(&ws, &["simulate", path(&file), "--backend", "fake:seeded", "--concurrency", "4"]);
    assert_eq!(unit_count(&ws, "crash"), expected_turns);
    assert_eq!(exported(&ws, "crash"), expected);
}

fn shared_sdf() -> Option<PathBuf> {
    let folder = repo().join("../shared/data/sdf");
    if folder.is_dir() {
        Some(folder)
    } else {
        eprintln!("skipped: {} is absent", folder.display());
        None
    }
}

/// The framework's real 2024 inputs (personas, topics, instructions, its other_configs
/// JSON) plan into 7 topics x 3 user x 3 moderator instructions and run without edits.
#[test]
fn real_sdf_2024_inputs_plan_and_run() {
    let Some(_) = shared_sdf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let file = repo().join("examples/experiments/sdf_2024.toml");
    let plans = json(ws, &["experiment", "plan", path(&file)]);
    let plans = plans.as_array().unwrap();
    assert_eq!(plans.len(), 63);
    // standard_multi_user.json: conv_len 14, history_ctx_len 4, random_weighted 0.3.
    assert_eq!(plans[0]["turns"], 14);
    assert_eq!(plans[0]["context_window"], 4);
    assert_eq!(plans[0]["turn_policy"]["probability"], 0.3);
    assert!(plans.iter().all(|plan| plan["users"].as_array().unwrap().len() == 4));
    ok(ws, &["experiment", "run", path(&file), "--backend", "fake:seeded"]);
    let report = json(ws, &["report", "sdf-2024"]);
    assert_eq!(report["stages"][0]["discussions"], 63);
    assert_eq!(report["stages"][0]["user_turns"], 63 * 14);
    assert!(report["stages"][1]["labels"].as_u64().unwrap() > 63 * 14 * 6);
}

/// The 2026 inputs: persona lists, user and moderator instructions, and run_config.yml
/// (15 turns, window 3, respond probability 0.4, 7 users, its context prompt).
#[test]
fn real_sdf_2026_inputs_plan_and_run() {
    let Some(sdf) = shared_sdf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let file = ws.join("sdf_2026.toml");
    let inputs = sdf.join("inputs-2026");
    std::fs::write(
        &file,
        format!(
            "name = \"sdf-2026\"\n[sampling]\nmax_tokens = 30\n[discussions]\npersonas = \"{}\"\ntopics = \"{}\"\nuser_instructions = \"{}\"\nframework_config = \"{}\"\ncount = 3\n[discussions.moderator]\ninstructions = \"{}\"\n",
            path(&inputs.join("personas/personas_generic.json")),
            path(&sdf.join("inputs-2024/topics")),
            path(&inputs.join("user_instructions")),
            path(&inputs.join("run_config.yml")),
            path(&inputs.join("mod_instructions")),
        ),
    )
    .unwrap();
    let plans = json(ws, &["experiment", "plan", path(&file)]);
    let plans = plans.as_array().unwrap();
    assert_eq!(plans.len(), 3);
    assert_eq!(plans[0]["turns"], 15);
    assert_eq!(plans[0]["context_window"], 3);
    assert_eq!(plans[0]["turn_policy"]["probability"], 0.4);
    assert_eq!(plans[0]["users"].as_array().unwrap().len(), 7);
    assert!(plans[0]["context"].as_str().unwrap().starts_with("Pretend that you are a human"));
    ok(ws, &["simulate", path(&file), "--backend", "fake:seeded"]);
    let report = json(ws, &["report", "sdf-2026"]);
    assert_eq!(report["stages"][0]["user_turns"], 3 * 15);
}

/// With the native backend (the embedded model, when `models/` has it), the same seeds give
/// the same transcript, sampled at temperature 0.9 — run twice, and once interrupted
/// every 3 turns and resumed.
#[test]
fn native_backend_transcripts_repeat_with_the_same_seed() {
    let model = repo().join("models/SmolLM2-135M-Instruct.Q8_0.gguf");
    if !model.is_file() {
        eprintln!("skipped: {} is absent (agora model fetch)", model.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = repo().join("examples/data/sdf");
    let file = dir.path().join("native.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"native\"\nseed = 3\n[sampling]\ntemperature = 0.9\nmax_tokens = 12\n[discussions]\npersonas = \"{}\"\ntopics = \"{}\"\nusers = 3\nturns = 4\n[discussions.moderator]\ninstructions = \"{}\"\n",
            path(&data.join("personas")),
            path(&data.join("topics/remote_work.txt")),
            path(&data.join("mod_instructions")),
        ),
    )
    .unwrap();
    let backend = format!("native:{}", path(&model));
    let mut transcripts = Vec::new();
    for name in ["first", "second"] {
        let ws = dir.path().join(name);
        ok(&ws, &["simulate", path(&file), "--backend", &backend]);
        transcripts.push(exported(&ws, "native"));
    }
    let ws = dir.path().join("interrupted");
    while ok(&ws, &["simulate", path(&file), "--backend", &backend, "--max-units", "3"])
        .contains("incomplete")
    {}
    transcripts.push(exported(&ws, "native"));
    assert!(transcripts[0][0].1.lines().count() >= 6, "{}", transcripts[0][0].1);
    assert_eq!(transcripts[0], transcripts[1]);
    assert_eq!(transcripts[0], transcripts[2]);
}

/// ESConv-SRA's design: continue each conversation once per ESConv strategy, then judge
/// every strategy's reply against the baseline's, in both orders.
#[test]
fn continuations_per_strategy_and_a_pairwise_judge() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let esconv = repo().join("examples/data/esconv_sample.json");
    ok(ws, &["import", "esconv", path(&esconv)]);
    let file = repo().join("examples/experiments/esconv_strategies.toml");
    ok(ws, &["experiment", "run", path(&file), "--backend", "fake:seeded"]);
    let report = json(ws, &["report", "esconv-strategies"]);
    let continuations = &report["stages"][0];
    assert_eq!(continuations["stage"], "continue");
    // Two conversations, cut once each, eight strategies.
    assert_eq!(continuations["replies"], 16);
    assert_eq!(continuations["strategies"].as_array().unwrap().len(), 8);
    let judge = &report["stages"][1];
    assert_eq!(judge["rubric"], "pairwise_strategy");
    // Seven strategies against the baseline, both orders, two conversations.
    assert_eq!(judge["replies"], 28);
    let out = ws.join("tables");
    ok(ws, &["experiment", "export", "esconv-strategies", "--format", "csv", "--out", path(&out)]);
    let table = std::fs::read_to_string(out.join("judgements.csv")).unwrap();
    assert_eq!(table.lines().count(), 1 + 28);
    assert!(table.lines().skip(1).any(|line| line.contains(",true,")), "swapped rows are marked");
}
