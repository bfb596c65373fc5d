//! `agora quickstart`: the main job on the bundled examples — import every example
//! corpus and collection, build SFT/DPO/KTO training data with seeded splits, export
//! ConvoKit and Parquet, run the example experiment (a discussion with a moderator,
//! annotators, a judge) on the default model, and say where everything went.

use std::path::{Path, PathBuf};

use agora_corpus::{Format, ImportOptions, sdf};
use agora_store::NamedText;
use anyhow::{Context, bail};

use super::experiment::Stage;
use crate::args::{BuildArgs, BuildKind, ExportArgs, ExportFormat, SftLayout, StageArgs};
use crate::settings::Settings;

/// The example corpora: (format, file under the examples folder, corpus name).
const CORPORA: [(Format, &str, &str); 3] = [
    (Format::Cmv, "cmv_sample.jsonlist", "cmv"),
    (Format::Esconv, "esconv_sample.json", "esconv"),
    (Format::PersonaChat, "personachat_sample.txt", "personachat"),
];

/// Training data to build: (kind, corpus, output folder under `exports/`).
const BUILDS: [(BuildKind, &str, &str); 5] = [
    (BuildKind::Sft, "cmv", "cmv-sft"),
    (BuildKind::Dpo, "cmv", "cmv-dpo"),
    (BuildKind::Kto, "cmv", "cmv-kto"),
    (BuildKind::Sft, "esconv", "esconv-sft"),
    (BuildKind::Sft, "personachat", "personachat-sft"),
];

pub fn run(settings: &Settings, args: &crate::args::QuickstartArgs) -> anyhow::Result<()> {
    let examples = match &args.examples {
        Some(path) => path.clone(),
        None => default_examples()?,
    };
    let mut store = settings.open_or_create_store()?;
    eprintln!("workspace: {}", settings.workspace.display());

    for (format, file, name) in CORPORA {
        let path = examples.join(file);
        let (report, counts) =
            super::import::import_corpus(&store, format, &path, name, &ImportOptions::default())
                .with_context(|| format!("import {} {}", format.name(), path.display()))?;
        println!(
            "imported {name}: {} conversations, {} turns ({} new, {} unchanged)",
            report.conversations, report.turns, counts.added, counts.unchanged
        );
    }
    let personas = sdf::read_personas(&examples.join("sdf/personas")).context("import sdf-personas")?;
    store.put_personas("sdf-personas", &personas)?;
    let topics: Vec<NamedText> = sdf::read_texts(&examples.join("sdf/topics"))
        .context("import sdf-texts")?
        .into_iter()
        .map(|text| NamedText { name: text.name, text: text.text })
        .collect();
    store.put_texts("sdf-topics", &topics)?;
    println!("imported sdf-personas: {} personas; sdf-topics: {} topics", personas.len(), topics.len());
    drop(store);

    let exports = settings.workspace.join("exports");
    for (kind, corpus, folder) in BUILDS {
        let build = BuildArgs {
            kind,
            corpus: corpus.to_string(),
            out: exports.join(folder),
            split: "0.8,0.1,0.1".to_string(),
            seed: 42,
            layout: SftLayout::Messages,
            standard: false,
            negatives: 1,
            system: None,
            any_giver: false,
        };
        super::build::run(settings, &build)?;
    }
    super::export::run(
        settings,
        &ExportArgs {
            format: ExportFormat::Convokit,
            corpus: "cmv".to_string(),
            out: exports.join("cmv-convokit"),
        },
    )?;
    for (_, _, corpus) in CORPORA {
        super::export::run(
            settings,
            &ExportArgs {
                format: ExportFormat::Parquet,
                corpus: corpus.to_string(),
                out: exports.join(format!("{corpus}.parquet")),
            },
        )?;
    }
    if !args.skip_model {
        run_experiment(settings, args, &examples)?;
        if args.backend == "native" && !args.skip_train {
            run_training_example(settings, args, &exports)?;
        }
    }
    println!();
    println!("done. Look at:");
    println!(
        "  {}  (the store: `agora corpora -w {}`)",
        settings.store_path().display(),
        settings.workspace.display()
    );
    println!("  {}/  (TRL JSONL per split, build.json, ConvoKit, Parquet)", exports.display());
    println!("  `agora show cmv:q1 -w {}` prints a thread with its deltas", settings.workspace.display());
    if !args.skip_model {
        let workspace = settings.workspace.display();
        println!("  `agora show sim-quickstart:d0000 -w {workspace}` prints the simulated discussion");
        println!(
            "  `agora report quickstart -w {workspace}` summarises the experiment (labels, agreement, judge scores)"
        );
        println!(
            "  `agora experiment export quickstart --format csv --out DIR -w {workspace}` exports its tables"
        );
        if args.backend == "native" && !args.skip_train {
            println!(
                "  `agora runs -w {workspace}` lists the training run; `agora runs show RUN -w {workspace}` draws its curves"
            );
        }
    }
    Ok(())
}

/// The example experiment: a 4-persona discussion with a moderator, toxicity labels by two
/// annotator personas and a judge pass, through the chosen backend; then its report.
fn run_experiment(
    settings: &Settings,
    args: &crate::args::QuickstartArgs,
    examples: &Path,
) -> anyhow::Result<()> {
    let file = examples.join("../experiments/quickstart.toml");
    let Ok(file) = std::fs::canonicalize(&file) else {
        bail!("cannot find the example experiment {}", file.display());
    };
    let stage_args = StageArgs {
        file: file.clone(),
        backend: Some(args.backend.clone()),
        concurrency: None,
        max_units: None,
        model: args.model.clone(),
    };
    println!();
    println!("running the example experiment {} on backend {}", file.display(), args.backend);
    super::experiment::run_stages(
        settings,
        &stage_args,
        &[Stage::Simulate, Stage::Continue, Stage::Annotate, Stage::Judge],
    )?;
    let name = super::experiment::report::experiment_name(&file.display().to_string())?;
    let store = settings.open_store()?;
    println!();
    print!("{}", super::experiment::report::render(&super::experiment::report::build(&store, &name)?));
    Ok(())
}

/// Two LoRA DPO steps on the default model with the CMV pairs just built, then the base
/// and the tuned model's replies to one prompt side by side (README's training example,
/// cut short).
fn run_training_example(
    settings: &Settings,
    args: &crate::args::QuickstartArgs,
    exports: &Path,
) -> anyhow::Result<()> {
    let prompt = "Should cities ban cars from their centres?";
    let train_args = crate::args::TrainArgs {
        config: None,
        data: Some(exports.join("cmv-dpo/train.jsonl")),
        eval: None,
        layout: None,
        model: args.model.model.clone(),
        lora_rank: Some(8),
        lora_targets: Vec::new(),
        steps: Some(2),
        epochs: None,
        batch_size: Some(1),
        learning_rate: Some(1e-4),
        beta: None,
        loss: None,
        max_length: Some(256),
        sample: Vec::new(),
        set: Vec::new(),
        resume: None,
        runs_dir: None,
        models_dir: args.model.models_dir.clone(),
        threads: args.model.threads,
    };
    println!();
    println!("training: 2 LoRA DPO steps on the default model with the CMV preference pairs");
    let config = super::train::resolve_config(&train_args, agora_train::Method::Dpo)?;
    let store = settings.open_store()?;
    let prepared = super::train::prepare(settings, &store, &config, args.model.models_dir.as_deref())?;
    let runs_dir = agora_train::trainer::runs_dir(&settings.workspace);
    let run = agora_train::RunDir::create(&runs_dir, "dpo")?;
    run.write_config(&config)?;
    let summary = super::train::run_training(settings, &store, &config, &run, prepared, &runs_dir, None)?;
    println!(
        "run {}: {} steps, loss {:.4}, rewards/accuracies {}",
        run.id,
        summary.steps,
        summary.final_train_loss.unwrap_or(f64::NAN),
        summary.last_metrics.get("rewards/accuracies").map_or("-".to_string(), |value| value.to_string())
    );
    super::runs::print_side_by_side(
        settings,
        &run.id,
        &[prompt.to_string()],
        32,
        args.model.models_dir.as_deref(),
    )
}

/// `examples/data` of the repository this binary was built from, else of the current folder.
fn default_examples() -> anyhow::Result<PathBuf> {
    let candidates =
        [Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data"), PathBuf::from("examples/data")];
    match candidates.iter().find(|path| path.is_dir()) {
        Some(path) => Ok(path.clone()),
        None => {
            bail!("cannot find the examples folder (looked in {}); pass --examples", candidates[1].display())
        }
    }
}
