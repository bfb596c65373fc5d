//! `agora train sft|dpo|merge`: a training configuration (file and flags) resolved,
//! its data loaded and reported, and the run trained in a run folder registered in the
//! workspace store. `--resume RUN` continues a stopped run from its last checkpoint.

use std::path::{Path, PathBuf};

use agora_model::fetch::{fetch_default, models_dir, resolve_model};
use agora_store::Store;
use agora_train::config::Layout;
use agora_train::data::{DataOptions, LoadReport, load_preferences, load_sft};
use agora_train::model::{TrainModel, load_model};
use agora_train::trainer::{self, Dataset, Observer, TrainData, TrainOptions};
use agora_train::{Method, RunDir, RunSummary, TrainConfig};
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

use crate::args::{TrainArgs, TrainCommand};
use crate::settings::Settings;

pub fn run(settings: &Settings, command: &TrainCommand) -> anyhow::Result<()> {
    match command {
        TrainCommand::Sft(args) => train(settings, args, Method::Sft),
        TrainCommand::Dpo(args) => train(settings, args, Method::Dpo),
        TrainCommand::Merge { run, out } => merge(settings, run, out),
    }
}

fn train(settings: &Settings, args: &TrainArgs, method: Method) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        agora_model::engine::set_threads(threads);
    }
    let store = settings.open_or_create_store()?;
    let runs_dir = args.runs_dir.clone().unwrap_or_else(|| trainer::runs_dir(&settings.workspace));
    let resumed = match &args.resume {
        Some(id) => {
            let run = open_run(&store, id)?;
            let config = run.read_config()?;
            anyhow::ensure!(
                config.method == method,
                "run {} trained with {}, not {}",
                run.id,
                config.method.name(),
                method.name()
            );
            Some((config, run))
        }
        None => None,
    };
    let config = match &resumed {
        Some((config, _)) => config.clone(),
        None => resolve_config(args, method)?,
    };
    // Model and data first: a bad file stops here, before any run folder exists.
    let prepared = prepare(settings, &store, &config, args.models_dir.as_deref())?;
    let run = match resumed {
        Some((_, run)) => run,
        None => {
            let run = RunDir::create(&runs_dir, method.name())?;
            run.write_config(&config)?;
            run
        }
    };
    let summary = run_training(settings, &store, &config, &run, prepared, &runs_dir, None)?;
    print_summary(settings, &run, &summary)
}

/// A model loaded for training and its data, tokenized and reported.
pub struct Prepared {
    model: TrainModel,
    data: TrainData,
    model_path: PathBuf,
}

/// Loads the model and the data a configuration names.
pub fn prepare(
    settings: &Settings,
    store: &Store,
    config: &TrainConfig,
    models_dir_flag: Option<&Path>,
) -> anyhow::Result<Prepared> {
    let model_path = training_model_path(&config.model, models_dir_flag)?;
    let mut model = load_model(&model_path, &trainer::device(), config.lora.as_ref(), config.seed)
        .with_context(|| format!("load {}", model_path.display()))?;
    let data = load_data(settings, store, config, &mut model)?;
    Ok(Prepared { model, data, model_path })
}

/// Trains a prepared model in `run` (registered in the store, with `sweep` when it is a
/// trial) and records how it ended.
pub fn run_training(
    settings: &Settings,
    store: &Store,
    config: &TrainConfig,
    run: &RunDir,
    prepared: Prepared,
    runs_dir: &Path,
    sweep: Option<&str>,
) -> anyhow::Result<RunSummary> {
    let Prepared { mut model, data, model_path } = prepared;
    store.register_run(
        &run.id,
        &run.path.display().to_string(),
        config.method.name(),
        &config.model,
        &config.to_json(),
        sweep,
    )?;
    eprintln!(
        "run {} in {}: {} on {} (f32{})",
        run.id,
        run.path.display(),
        config.method.name(),
        model_path.display(),
        if config.lora.is_some() { ", LoRA" } else { "" }
    );
    for report in &data.reports {
        eprintln!("{report}");
    }
    let mut options = TrainOptions::new(runs_dir.join(".reference-cache"));
    options.halt_after_step = halt_after_step();
    let mut progress = Progress::new(settings.json);
    let outcome = trainer::train(config, &mut model, &data, run, &options, &mut progress);
    progress.bar.finish_and_clear();
    match &outcome {
        Ok(summary) => store.finish_run(&run.id, &summary.status, &serde_json::to_value(summary)?)?,
        Err(error) => {
            store.finish_run(&run.id, "failed", &serde_json::json!({"error": error.to_string()}))?;
        }
    }
    Ok(outcome?)
}

/// `AGORA_TRAIN_HALT_AFTER_STEP=N` stops a run after step N as a crash would (no final
/// checkpoint): what the resume tests use to cut a run at a known place.
fn halt_after_step() -> Option<usize> {
    std::env::var("AGORA_TRAIN_HALT_AFTER_STEP").ok().and_then(|value| value.parse().ok())
}

/// The file a configuration's `model` names: `default` is the embedded model's original
/// GGUF (not the q8_0 conversion generation uses), dequantized to f32 for training.
pub fn training_model_path(reference: &str, models_dir_flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if reference == "default" {
        return Ok(fetch_default(&models_dir(models_dir_flag))?);
    }
    Ok(resolve_model(reference)?)
}

fn load_data(
    settings: &Settings,
    store: &Store,
    config: &TrainConfig,
    model: &mut TrainModel,
) -> anyhow::Result<TrainData> {
    let options =
        DataOptions { max_length: config.data.max_length, max_prompt_length: config.data.max_prompt_length };
    if config.data.layout == Layout::Personagpt {
        model.add_special_tokens(&agora_train::personagpt::PERSONAGPT_TOKENS)?;
        let read = |corpus: &Path| -> anyhow::Result<(Vec<agora_train::data::TokenizedExample>, LoadReport)> {
            let name = corpus.display().to_string();
            let mut conversations = Vec::new();
            store
                .for_each_conversation(&name, |conversation| -> anyhow::Result<()> {
                    conversations.push(conversation);
                    Ok(())
                })
                .with_context(|| format!("corpus `{name}` (data.train names a Persona-Chat corpus)"))?;
            anyhow::ensure!(
                !conversations.is_empty(),
                "corpus `{name}` has no conversations in {}",
                settings.workspace.display()
            );
            Ok(agora_train::personagpt::personagpt_examples(&conversations, &model.tokenizer, &options)?)
        };
        let (train, train_report) = read(&config.data.train)?;
        let mut reports = vec![train_report];
        let eval = match &config.data.eval {
            Some(corpus) => {
                let (examples, report) = read(corpus)?;
                reports.push(report);
                Some(Dataset::Sft(examples))
            }
            None => None,
        };
        return Ok(TrainData { train: Dataset::Sft(train), eval, reports });
    }
    let template = Some(&model.template);
    let load = |path: &Path| -> anyhow::Result<(Dataset, LoadReport)> {
        Ok(match config.method {
            Method::Sft => {
                let (examples, report) = load_sft(path, &model.tokenizer, template, &options)?;
                (Dataset::Sft(examples), report)
            }
            Method::Dpo => {
                let (pairs, report) = load_preferences(path, &model.tokenizer, template, &options)?;
                (Dataset::Preferences(pairs), report)
            }
        })
    };
    let (train, train_report) = load(&config.data.train)?;
    let mut reports = vec![train_report];
    let eval = match &config.data.eval {
        Some(path) => {
            let (eval, report) = load(path)?;
            reports.push(report);
            Some(eval)
        }
        None => None,
    };
    Ok(TrainData { train, eval, reports })
}

/// The configuration file (if any) with the flags applied over it.
pub fn resolve_config(args: &TrainArgs, method: Method) -> anyhow::Result<TrainConfig> {
    let (mut value, origin) = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let value: toml::Value = toml::from_str(&text).map_err(|error| {
                anyhow::anyhow!("{}: {}", path.display(), error.to_string().replace('\n', " "))
            })?;
            (value, path.clone())
        }
        None => (toml::Value::Table(Default::default()), PathBuf::from("(command line)")),
    };
    let mut overrides: Vec<(String, Value)> = vec![("method".to_string(), Value::from(method.name()))];
    let path_text = |path: &PathBuf| Value::from(path.display().to_string());
    let flags: [(&str, Option<Value>); 12] = [
        ("data.train", args.data.as_ref().map(path_text)),
        ("data.eval", args.eval.as_ref().map(path_text)),
        ("data.layout", args.layout.clone().map(Value::from)),
        ("data.max_length", args.max_length.map(Value::from)),
        ("model", args.model.clone().map(Value::from)),
        ("lora.rank", args.lora_rank.map(Value::from)),
        ("training.max_steps", args.steps.map(Value::from)),
        ("training.epochs", args.epochs.map(Value::from)),
        ("training.batch_size", args.batch_size.map(Value::from)),
        ("optimizer.learning_rate", args.learning_rate.map(Value::from)),
        ("dpo.beta", args.beta.map(Value::from)),
        ("dpo.loss", args.loss.clone().map(Value::from)),
    ];
    overrides
        .extend(flags.into_iter().filter_map(|(path, value)| value.map(|value| (path.to_string(), value))));
    if !args.lora_targets.is_empty() {
        overrides.push(("lora.target_modules".to_string(), Value::from(args.lora_targets.clone())));
    }
    if !args.sample.is_empty() {
        overrides.push(("samples.prompts".to_string(), Value::from(args.sample.clone())));
    }
    for assignment in &args.set {
        overrides.push(parse_assignment(assignment)?);
    }
    agora_train::sweep::apply_overrides(&mut value, &overrides)?;
    if let Some(table) = value.as_table_mut() {
        let model = table.entry("model").or_insert_with(|| toml::Value::String("default".to_string()));
        let model = model.as_str().unwrap_or("default").to_string();
        if let Some(toml::Value::Table(lora)) = table.get_mut("lora") {
            let gpt2 = is_gpt2(&training_model_path(&model, args.models_dir.as_deref())?);
            complete_lora(lora, gpt2);
        }
    }
    Ok(TrainConfig::from_toml(value, &origin)?)
}

/// LoRA settings a researcher who only gave a rank expects: alpha twice the rank, a
/// little dropout, and the attention's query and value projections (GPT-2 fuses q, k
/// and v into `c_attn`).
fn complete_lora(lora: &mut toml::map::Map<String, toml::Value>, gpt2: bool) {
    let rank = lora.get("rank").and_then(toml::Value::as_integer).unwrap_or(8);
    lora.entry("rank").or_insert(toml::Value::Integer(rank));
    lora.entry("alpha").or_insert(toml::Value::Float(2.0 * rank as f64));
    lora.entry("dropout").or_insert(toml::Value::Float(0.05));
    let targets: &[&str] = if gpt2 { &["c_attn"] } else { &["q_proj", "v_proj"] };
    lora.entry("target_modules").or_insert_with(|| {
        toml::Value::Array(targets.iter().map(|name| toml::Value::String(name.to_string())).collect())
    });
}

/// Whether a model folder holds a GPT-2 checkpoint (GGUF files are Llama-family).
fn is_gpt2(model_path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(model_path.join("config.json")) else {
        return false;
    };
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|config| config.get("model_type").and_then(Value::as_str).map(|kind| kind == "gpt2"))
        .unwrap_or(false)
}

/// `PATH=VALUE`, the value read as TOML (`0.1`, `true`, `[1, 2]`, `"x"`), else as text.
pub fn parse_assignment(assignment: &str) -> anyhow::Result<(String, Value)> {
    let (path, text) = assignment.split_once('=').ok_or_else(|| {
        anyhow::anyhow!("--set {assignment}: expected PATH=VALUE, e.g. optimizer.learning_rate=1e-4")
    })?;
    let path = path.trim();
    anyhow::ensure!(!path.is_empty(), "--set {assignment}: the path before `=` is empty");
    let text = text.trim();
    let value = match toml::from_str::<toml::Table>(&format!("value = {text}")) {
        Ok(mut table) => match table.remove("value") {
            Some(value) => serde_json::to_value(value)?,
            None => Value::from(text),
        },
        Err(_) => Value::from(text),
    };
    Ok((path.to_string(), value))
}

pub fn open_run(store: &Store, id: &str) -> anyhow::Result<RunDir> {
    let record = store
        .run(id)?
        .ok_or_else(|| anyhow::anyhow!("no run `{id}` in this workspace (see `agora runs`)"))?;
    Ok(RunDir::open(Path::new(&record.dir))?)
}

fn print_summary(settings: &Settings, run: &RunDir, summary: &RunSummary) -> anyhow::Result<()> {
    if settings.json {
        return crate::output::print_json(summary);
    }
    let loss = |value: Option<f64>| value.map_or("-".to_string(), |value| format!("{value:.4}"));
    println!(
        "{}: {} after {}/{} steps, train loss {}, eval loss {} (best {}), {} tokens in {:.1} s ({:.0} tokens/s)",
        run.id,
        summary.status,
        summary.steps,
        summary.total_steps,
        loss(summary.final_train_loss),
        loss(summary.final_eval_loss),
        loss(summary.best_eval_loss),
        summary.trained_tokens,
        summary.seconds,
        summary.trained_tokens as f64 / summary.seconds.max(1e-9)
    );
    if let Some(accuracy) = summary.last_metrics.get("rewards/accuracies").and_then(Value::as_f64) {
        println!(
            "rewards/accuracies {accuracy:.3}, rewards/margins {}",
            metric(&summary.last_metrics, "rewards/margins")
        );
    }
    println!("run folder: {}", run.path.display());
    println!(
        "next: agora runs show {}   agora runs generate {} -p \"...\"",
        short_id(&run.id),
        short_id(&run.id)
    );
    Ok(())
}

fn metric(metrics: &Map<String, Value>, name: &str) -> String {
    metrics.get(name).and_then(Value::as_f64).map_or("-".to_string(), |value| format!("{value:.4}"))
}

/// The random suffix of a run id (enough to name it).
pub fn short_id(id: &str) -> &str {
    id.rsplit('-').next().unwrap_or(id)
}

fn merge(settings: &Settings, id: &str, out: &Path) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    let run = open_run(&store, id)?;
    let config = run.read_config()?;
    anyhow::ensure!(
        config.lora.is_some(),
        "run {} is a full fine-tune: its final/ folder already is a full model",
        run.id
    );
    let final_dir = run.path.join("final");
    anyhow::ensure!(final_dir.is_dir(), "run {} has no final/ adapter yet (did it finish?)", run.id);
    let model_path = training_model_path(&config.model, None)?;
    let mut model = agora_train::model::load_tuned(&model_path, &final_dir, &trainer::device())?;
    model.save_final(out, &config.model, true)?;
    println!("{} + {} -> {}", model_path.display(), final_dir.display(), out.display());
    Ok(())
}

/// A progress bar over optimizer steps, showing the last loss.
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(hidden: bool) -> Progress {
        let bar = if hidden { ProgressBar::hidden() } else { ProgressBar::new(0) };
        let style = ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Progress { bar }
    }
}

impl Observer for Progress {
    fn started(&mut self, total_steps: usize, first_step: usize) {
        self.bar.set_length(total_steps as u64);
        self.bar.set_position(first_step as u64);
        if first_step > 0 {
            self.bar.println(format!("resuming at step {first_step} of {total_steps}"));
        }
    }

    fn step(&mut self, step: usize, record: &Map<String, Value>) {
        self.bar.set_position(step as u64);
        if let Some(loss) = record.get("eval/loss").and_then(Value::as_f64) {
            self.bar.println(format!("step {step}: eval loss {loss:.4}"));
        } else if let Some(loss) = record.get("loss").and_then(Value::as_f64) {
            self.bar.set_message(format!("loss {loss:.4}"));
        }
    }

    fn message(&mut self, text: &str) {
        self.bar.println(text);
    }
}
